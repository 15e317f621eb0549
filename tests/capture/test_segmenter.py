"""Segmenter: self-contained keyframe-aligned TS segments, contiguous frames, true hashes."""
from __future__ import annotations

import dataclasses
import io
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from capture.framehash import frame_hash_annexb, frame_hash_avcc, split_annexb
from capture.overlay import BurnIn
from capture.segmenter import PTS_OFFSET, RawSegment, Segmenter
from drivers.camera import VideoPacket
from hw_sim import framecode
from hw_sim.camera import SimCamera
from hw_sim.clock import SimClock

W, H, FPS, K = 320, 240, 30, 30
SKIP = 45  # the segmenter joins mid-GOP: frames 45..59 precede its first keyframe
TOTAL = 285  # frames 60..284 are accepted: 60 + 60 + 60 + 45


@dataclasses.dataclass
class Run:
    segments: list[RawSegment]
    packets: list[VideoPacket]  # every video packet the segmenter was offered
    seg: Segmenter
    before_flush: int
    audio_sent: int


@pytest.fixture(scope="module")
def run() -> Run:
    clock = SimClock()
    cam = SimCamera(clock, width=W, height=H, fps=FPS, bitrate=400_000, keyframe_interval=K)
    cam.set_overlay(BurnIn("BWV-SIM-0001", "4711", W, H))
    segments: list[RawSegment] = []
    seg = Segmenter(cam.info, 2.0, segments.append)
    offered: list[VideoPacket] = []
    audio = 0

    def sink(p: VideoPacket) -> None:
        nonlocal audio
        if cam.frames_captured - 1 < SKIP:
            return
        offered.append(p)
        seg.push(p)
        if len(offered) % 10 == 0:  # picamera2 interleaves audio through the same call
            seg.push(VideoPacket(b"\xff\xf1audio", True, p.timestamp_us, p.mono_ns,
                                 p.utc_ns, audio=True))
            audio += 1

    cam.start(sink)
    for _ in range(TOTAL):
        cam.capture_next()
        clock.advance(cam.frame_interval_ns)
    cam.stop()
    before_flush = len(segments)
    seg.flush()
    return Run(segments, offered, seg, before_flush, audio)


def ts_packets(ts: bytes) -> list[av.Packet]:
    with av.open(io.BytesIO(ts), format="mpegts") as c:
        return [p for p in c.demux(video=0) if p.size]


def decode_codes(data: bytes, fmt: str) -> list[int | None]:
    with av.open(io.BytesIO(data), format=fmt) as c:
        return [framecode.read(f.to_ndarray(format="yuv420p")[:H]) for f in c.decode(video=0)]


def test_counts(run: Run) -> None:
    assert [s.frame_count for s in run.segments] == [60, 60, 60, 45]
    assert sum(s.frame_count for s in run.segments) == TOTAL - 60 == run.seg.frames_accepted
    assert run.seg.dropped_before_keyframe == 60 - SKIP
    assert run.seg.skipped_audio == run.audio_sent > 0
    assert run.before_flush == 3, "the open segment is only closed by flush()"
    assert run.seg.segments_closed == 4


def test_segments_start_with_keyframe_and_span_segment_seconds(run: Run) -> None:
    interval = round(1e9 / FPS)
    for s in run.segments:
        first = ts_packets(s.ts)[0]
        assert first.is_keyframe
        assert {n[0] & 0x1F for n in split_annexb(bytes(first))} >= {5, 7, 8}
        assert s.keyframe_count == -(-s.frame_count // K)
        assert (s.info.width, s.info.height, s.info.fps) == (W, H, FPS)
    for s in run.segments[:-1]:
        assert abs((s.end_mono_ns - s.start_mono_ns) - 2 * 10**9) <= interval // 2
    assert run.segments[-1].end_mono_ns - run.segments[-1].start_mono_ns == 45 * interval


def test_capture_times_are_contiguous(run: Run) -> None:
    accepted = run.packets[60 - SKIP:]
    i = 0
    for s in run.segments:
        first, last = accepted[i], accepted[i + s.frame_count - 1]
        assert (s.start_mono_ns, s.start_utc_ns) == (first.mono_ns, first.utc_ns)
        assert s.first_timestamp_us == first.timestamp_us
        assert s.end_mono_ns == last.mono_ns + round(1e9 / FPS)
        assert s.end_utc_ns == last.utc_ns + round(1e9 / FPS)
        i += s.frame_count
    # picamera2 semantics: µs since the camera's first frame (frame 0), not the segment's
    assert run.segments[0].first_timestamp_us == 60 * round(1e9 / FPS) // 1000
    for a, b in zip(run.segments, run.segments[1:]):
        assert a.end_mono_ns == b.start_mono_ns and a.end_utc_ns == b.start_utc_ns


def test_each_segment_probes_and_decodes_cleanly(run: Run, tmp_path: Path) -> None:
    for i, s in enumerate(run.segments):
        f = tmp_path / f"seg{i}.ts"
        f.write_bytes(s.ts)
        probe = subprocess.run(["ffprobe", "-v", "error", "-show_streams", str(f)],
                               capture_output=True, text=True, check=True)
        assert probe.stderr == ""
        assert "codec_name=h264" in probe.stdout and f"width={W}" in probe.stdout
        dec = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(f), "-f", "null", "-"],
                             capture_output=True, text=True, check=True)
        assert dec.stderr == ""


def test_frames_are_contiguous_across_segments(run: Run) -> None:
    """Each segment decoded on its own; frame codes run 60, 61, ... with no gap or repeat."""
    codes: list[int | None] = []
    for s in run.segments:
        got = decode_codes(s.ts, "mpegts")
        assert len(got) == s.frame_count
        codes += got
    assert codes == list(range(60, TOTAL))


def test_frame_hashes_match_the_ts(run: Run) -> None:
    for s in run.segments:
        assert list(s.frame_hashes) == [frame_hash_annexb(bytes(p)) for p in ts_packets(s.ts)]
    everything = [h for s in run.segments for h in s.frame_hashes]
    assert len(set(everything)) == len(everything)
    assert everything == [frame_hash_annexb(p.data) for p in run.packets[60 - SKIP:]]


def test_pts_share_one_timeline(run: Run) -> None:
    origin = run.segments[0].start_mono_ns
    for s in run.segments:
        pts = [p.pts for p in ts_packets(s.ts)]
        assert pts[0] == PTS_OFFSET + round((s.start_mono_ns - origin) * 90_000 / 1e9)
        assert all(b - a == 3000 for a, b in zip(pts, pts[1:]))


def test_mp4_remux_checks_frame_by_frame(run: Run, tmp_path: Path) -> None:
    """DESIGN invariant 3: an MP4 remux of the segments matches the signed frame hashes."""
    ts = tmp_path / "all.ts"
    ts.write_bytes(b"".join(s.ts for s in run.segments))
    mp4 = tmp_path / "all.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(ts), "-c", "copy", str(mp4)],
                   check=True, capture_output=True)
    with av.open(str(mp4)) as c:
        stream = c.streams.video[0]
        extradata = stream.codec_context.extradata
        assert extradata and extradata[0] == 1, "expected an avcC box"
        length_size = (extradata[4] & 3) + 1
        mp4_hashes = [frame_hash_avcc(bytes(p), length_size) for p in c.demux(stream) if p.size]
    assert mp4_hashes == [h for s in run.segments for h in s.frame_hashes]
    assert decode_codes(mp4.read_bytes(), "mp4") == list(range(60, TOTAL))


def test_half_frame_tolerance_and_long_gops() -> None:
    """A keyframe a little early still closes the segment; a GOP longer than the segment
    makes segments of whole GOPs."""
    for step_ns, keyint, seconds, expected in [
        (33_200_000, 30, 2.0, [60, 60, 30]),  # clock 0.4 % fast: 60 frames = 1.992 s
        (33_333_333, 45, 1.0, [45, 45, 45, 15]),
    ]:
        clock = SimClock()
        cam = SimCamera(clock, width=W, height=H, keyframe_interval=keyint)
        segs: list[RawSegment] = []
        seg = Segmenter(cam.info, seconds, segs.append)
        cam.start(seg.push)
        for _ in range(150):
            cam.capture_next()
            clock.advance(step_ns)
        cam.stop()
        seg.flush()
        assert [s.frame_count for s in segs] == expected


def test_capture_gap_keeps_its_place_on_the_timeline() -> None:
    clock = SimClock()
    cam = SimCamera(clock, width=W, height=H, keyframe_interval=15)
    segs: list[RawSegment] = []
    seg = Segmenter(cam.info, 0.5, segs.append)
    cam.start(seg.push)
    for i in range(45):
        cam.capture_next()
        clock.advance(cam.frame_interval_ns + (7 * 10**9 if i == 29 else 0))
    cam.stop()
    seg.flush()
    starts = [ts_packets(s.ts)[0].pts for s in segs]
    assert starts == [90_000, 90_000 + 45_000, 90_000 + 90_000 + 7 * 90_000]
    assert segs[2].start_mono_ns - segs[1].end_mono_ns == 7 * 10**9


def test_flush_then_resume_waits_for_keyframe() -> None:
    clock = SimClock()
    cam = SimCamera(clock, width=W, height=H, keyframe_interval=10)
    segs: list[RawSegment] = []
    seg = Segmenter(cam.info, 60.0, segs.append)
    cam.start(seg.push)
    for i in range(25):
        cam.capture_next()
        clock.advance(cam.frame_interval_ns)
        if i == 4:
            seg.flush()
    cam.stop()
    seg.flush()
    seg.flush()  # nothing open: no empty segment
    assert [s.frame_count for s in segs] == [5, 15]
    assert seg.dropped_before_keyframe == 5
    assert decode_codes(segs[1].ts, "mpegts") == list(range(10, 25))


def test_bad_input_is_refused() -> None:
    clock = SimClock()
    cam = SimCamera(clock, width=W, height=H, keyframe_interval=10)
    packets: list[VideoPacket] = []
    cam.start(packets.append)
    for _ in range(3):
        cam.capture_next()
        clock.advance(cam.frame_interval_ns)
    cam.stop()
    seg = Segmenter(cam.info, 2.0, lambda s: None)
    seg.push(packets[0])
    with pytest.raises(ValueError, match="backwards"):
        seg.push(packets[0])
    # a keyframe without in-band SPS/PPS would make a segment that cannot decode alone
    slices = b"".join(b"\x00\x00\x00\x01" + n for n in split_annexb(packets[0].data)
                      if n[0] & 0x1F == 5)
    fresh = Segmenter(cam.info, 2.0, lambda s: None)
    with pytest.raises(ValueError, match="SPS/PPS"):
        fresh.push(dataclasses.replace(packets[0], data=slices))
    assert fresh.frames_accepted == 0
    # refused at a boundary: the open segment stays open and intact
    closed: list[RawSegment] = []
    short = Segmenter(cam.info, 0.01, closed.append)
    short.push(packets[0])
    with pytest.raises(ValueError, match="SPS/PPS"):
        short.push(dataclasses.replace(packets[1], data=slices, keyframe=True))
    assert closed == [] and short.frames_accepted == 1
    short.push(packets[1])
    short.flush()
    assert [s.frame_count for s in closed] == [2]
    with pytest.raises(ValueError):
        Segmenter(cam.info, 0, lambda s: None)


def test_segment_is_frozen(run: Run) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.segments[0].frame_count = 1  # type: ignore[misc]
    assert isinstance(run.segments[0].ts, bytes) and len(run.segments[0].ts) % 188 == 0
    assert np.all(np.diff([s.start_mono_ns for s in run.segments]) > 0)


def test_720p_segment_decodes(tmp_path: Path) -> None:
    clock = SimClock()
    cam = SimCamera(clock, width=1280, height=720, keyframe_interval=10)
    cam.set_overlay(BurnIn("BWV-SIM-0001", "4711", 1280, 720))
    segs: list[RawSegment] = []
    seg = Segmenter(cam.info, 1 / 3, segs.append)
    cam.start(seg.push)
    for _ in range(20):
        cam.capture_next()
        clock.advance(cam.frame_interval_ns)
    cam.stop()
    seg.flush()
    assert [s.frame_count for s in segs] == [10, 10]
    for i, s in enumerate(segs):
        f = tmp_path / f"s{i}.ts"
        f.write_bytes(s.ts)
        dec = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(f), "-f", "null", "-"],
                             capture_output=True, text=True, check=True)
        assert dec.stderr == ""
        with av.open(io.BytesIO(s.ts), format="mpegts") as c:
            codes = [framecode.read(fr.to_ndarray(format="yuv420p")[:720]) for fr in c.decode(video=0)]
        assert codes == list(range(10 * i, 10 * i + 10))
