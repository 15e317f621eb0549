"""Audio in the segments: AAC next to H.264 in each MPEG-TS, on the capture timeline.

The simulated microphone puts a loud click at every whole second after the instant the
simulated camera captures frame 0, i.e. exactly when frames 0, 30, 60 … are captured.
Decoding a segment (or the exported MP4), finding the clicks in the audio and the frame
codes in the pictures measures the A/V offset the way a court's expert would.
"""
from __future__ import annotations

import dataclasses
import io
import json
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from buffer.agency import write_agency_identity
from buffer.export import _remux, export_clip
from buffer.seal import SealContext, segment_header
from buffer.store import Store, StoreSettings, init_store
from capture.segmenter import (AUDIO_HASH_ALG, PTS_OFFSET, RawSegment, Segmenter,
                               adts_header_length, audio_packet_hash)
from drivers.camera import VideoPacket
from drivers.clock import ClockState
from drivers.keystore import FileKeyStore
from hw_sim import framecode
from hw_sim.camera import SimCamera
from hw_sim.clock import SimClock
from hw_sim.microphone import SimMicrophone

W, H, FPS = 320, 240, 30
FRAME_S = 1 / FPS
TICK_NS = 10_000_000
PACKET_NS = round(1024 * 1e9 / 48_000)
DROPOUT_AT_S, DROPOUT_S = 3.3, 0.4


@dataclasses.dataclass
class Run:
    segments: list[RawSegment]
    seg: Segmenter
    mic: SimMicrophone
    origin: int  # mono_ns of frame 0 = the first sync mark


def simulate(seconds: float, *, segment_seconds: float = 2.0, dropout: tuple | None = None,
             audio_window: tuple[float, float] | None = None,
             hold: float = 0.5) -> Run:
    """Camera + microphone + segmenter on virtual time in 10 ms ticks, like the Rig.
    ``audio_window`` (start_s, stop_s): audio is pushed only then (recording / mute)."""
    clock = SimClock()
    cam = SimCamera(clock, width=W, height=H, fps=FPS, bitrate=300_000,
                    keyframe_interval=round(FPS * segment_seconds))
    origin = clock.monotonic_ns()
    mic = SimMicrophone(clock, sync_origin_mono_ns=origin)
    segments: list[RawSegment] = []
    seg = Segmenter(cam.info, segment_seconds, segments.append, audio=mic.info,
                    audio_hold_seconds=hold)

    def sink(p: VideoPacket) -> None:
        if p.audio and audio_window is not None:
            t = (clock.monotonic_ns() - origin) / 1e9
            if not audio_window[0] <= t < audio_window[1]:
                return  # what the agent does while not recording / muted
        seg.push(p)

    cam.start(sink)
    mic.start(sink)
    next_frame, end = origin, origin + round(seconds * 1e9)
    dropped = False
    while clock.monotonic_ns() < end:
        now = clock.monotonic_ns()
        if now >= next_frame:
            cam.capture_next()
            next_frame += cam.frame_interval_ns
        mic.deliver_until(now)
        if dropout and not dropped and now >= origin + round(dropout[0] * 1e9):
            mic.dropout(dropout[1])
            dropped = True
        clock.advance_to(min(now + TICK_NS, next_frame))
    mic.stop()
    cam.stop()
    seg.flush()
    return Run(segments, seg, mic, origin)


@pytest.fixture(scope="module")
def run() -> Run:
    return simulate(8.0, dropout=(DROPOUT_AT_S, DROPOUT_S))


# ----------------------------------------------------------------- measuring
def video_times(data: bytes, fmt: str) -> dict[int, float]:
    """frame code -> presentation time (s) of that decoded frame."""
    out = {}
    with av.open(io.BytesIO(data), format=fmt) as c:
        for f in c.decode(video=0):
            n = framecode.read(f.to_ndarray(format="yuv420p")[:H])
            assert n is not None
            out[n] = float(f.pts * f.time_base)
    return out


def audio_frames(data: bytes, fmt: str) -> list[tuple[float, np.ndarray]]:
    """Decoded audio as (presentation time of its first sample, samples)."""
    with av.open(io.BytesIO(data), format=fmt) as c:
        if not c.streams.audio:
            return []
        return [(float(f.pts * f.time_base), f.to_ndarray()[0]) for f in c.decode(audio=0)]


def clicks(frames: list[tuple[float, np.ndarray]], rate: int = 48_000) -> list[float]:
    """Onset times of the sync clicks: where the RMS over the next 1 ms first exceeds 0.6
    after at least 0.5 s without one. (An RMS, not a single sample, so the codec's
    pre-echo ahead of the burst is not taken for its start.)"""
    runs: list[tuple[float, list[np.ndarray]]] = []  # gap-free runs of decoded frames
    end = None
    for start, x in sorted(frames, key=lambda f: f[0]):
        if end is None or abs(start - end) > 0.5 / rate:
            runs.append((start, []))
        runs[-1][1].append(x)
        end = start + len(x) / rate
    found: list[float] = []
    win = rate // 1000
    for start, parts in runs:
        x = np.concatenate(parts).astype(np.float64)
        c = np.concatenate([[0.0], np.cumsum(x * x)])
        rms = np.sqrt((c[win:] - c[:-win]) / win)
        for i in np.flatnonzero(rms > 0.6):
            t = start + i / rate
            if not found or t - found[-1] > 0.5:
                found.append(t)
    return found


def av_offsets(video: dict[int, float], audio: list[tuple[float, np.ndarray]]) -> dict[int, float]:
    """For every frame whose number is a multiple of 30: click time − frame time (s)."""
    got = clicks(audio)
    out = {}
    for n, t in video.items():
        if n % FPS == 0 and got:
            nearest = min(got, key=lambda c: abs(c - t))
            if abs(nearest - t) < 0.5:
                out[n] = nearest - t
    return out


def probe(path: Path) -> list[dict]:
    r = subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                        "stream=codec_type,codec_name,start_time,sample_rate,channels",
                        "-of", "json", str(path)], capture_output=True, text=True, check=True)
    assert r.stderr == ""
    return json.loads(r.stdout)["streams"]


def decode_clean(path: Path) -> None:
    r = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr


# -------------------------------------------------------------------- tests
def test_every_segment_has_h264_and_aac_and_decodes_alone(run: Run, tmp_path: Path) -> None:
    assert [s.frame_count for s in run.segments] == [60, 60, 60, 60, 1]
    for i, s in enumerate(run.segments[:4]):
        f = tmp_path / f"s{i}.ts"
        f.write_bytes(s.ts)
        streams = probe(f)
        kinds = {st["codec_type"]: st for st in streams}
        assert kinds["video"]["codec_name"] == "h264"
        assert kinds["audio"]["codec_name"] == "aac"
        assert (int(kinds["audio"]["sample_rate"]), kinds["audio"]["channels"]) == (48_000, 1)
        # audio from the segment's start: streams start within one frame
        skew = float(kinds["audio"]["start_time"]) - float(kinds["video"]["start_time"])
        assert 0 <= skew < PACKET_NS / 1e9 <= FRAME_S
        decode_clean(f)


def test_audio_goes_to_the_segment_its_capture_time_falls_in(run: Run) -> None:
    for s in run.segments:
        if s.audio is None:
            continue
        assert s.start_mono_ns <= s.audio.start_mono_ns < s.start_mono_ns + PACKET_NS
        assert s.audio.end_mono_ns - PACKET_NS < s.end_mono_ns  # last packet starts inside
    assert run.seg.audio_accepted == sum(s.audio.packet_count for s in run.segments if s.audio)
    # only the encoder's priming packet (before frame 0) and the tail after the last
    # frame have no segment
    assert run.seg.audio_dropped <= 3
    with_audio = [s.audio for s in run.segments if s.audio]
    for a, b in zip(with_audio, with_audio[1:]):
        assert b.start_mono_ns - a.end_mono_ns == 0 or abs(b.start_mono_ns - a.end_mono_ns) <= 1


def test_av_offset_below_one_frame_in_each_ts_segment(run: Run) -> None:
    """Each segment decoded alone: the click in its middle (frames 30, 90, …). The click on
    a segment's very first frame is not measurable there: an AAC decoder that starts
    mid-stream lacks the previous packet's overlap, so the first 21 ms of a segment
    decoded alone come out attenuated (inherent to AAC, not a timing error). Decoded as
    the byte-for-byte concatenation of the segments, every click is there."""
    measured = {}
    for s in run.segments[:4]:
        measured.update(av_offsets(video_times(s.ts, "mpegts"), audio_frames(s.ts, "mpegts")))
    assert sorted(measured) == [30, 90, 150, 210]
    joined = b"".join(s.ts for s in run.segments)
    measured_joined = av_offsets(video_times(joined, "mpegts"), audio_frames(joined, "mpegts"))
    # one a second; frame 0's click is in the stream's very first audio packet, which no
    # decoder can reconstruct fully (no previous packet at all)
    assert sorted(measured_joined) == [30, 60, 90, 120, 150, 180, 210]
    worst = max(abs(v) for v in [*measured.values(), *measured_joined.values()])
    assert worst < FRAME_S
    assert worst < 0.003, (measured, measured_joined)  # in fact within a few AAC samples


def test_dropout_leaves_a_hole_and_later_audio_stays_in_place(run: Run) -> None:
    seg = next(s for s in run.segments if s.audio and s.audio.gaps)
    (at, duration), = seg.audio.gaps
    assert abs((at - run.origin) / 1e9 - DROPOUT_AT_S) < 0.03
    # the new encoder's priming packet sits in the last 21 ms of the hole
    assert DROPOUT_S - 2 * PACKET_NS / 1e9 - 0.011 < duration / 1e9 <= DROPOUT_S + 0.011
    assert run.mic.dropouts and abs(run.mic.dropouts[0][1] / 1e9 - DROPOUT_S) < 0.011
    # decoded audio has the hole (no samples there), clicks after it still aligned
    frames = audio_frames(seg.ts, "mpegts")
    starts = np.array([t for t, _ in frames])
    hole_start = (at - run.origin) / 1e9 + 1.0  # PTS = capture time + 1 s
    inside = (starts > hole_start + 0.001) & (starts < hole_start + duration / 1e9 - 0.001)
    assert not inside.any()
    joined = b"".join(s.ts for s in run.segments)
    offsets = av_offsets(video_times(joined, "mpegts"), audio_frames(joined, "mpegts"))
    assert {90, 120, 150} <= set(offsets)  # the clicks just before and after the hole
    assert max(abs(offsets[n]) for n in (90, 120, 150)) < 0.003


def test_audio_hashes_are_container_independent(run: Run, tmp_path: Path) -> None:
    for s in run.segments:
        if s.audio is None:
            continue
        assert s.audio.hash_alg == AUDIO_HASH_ALG
        with av.open(io.BytesIO(s.ts), format="mpegts") as c:
            ts_pkts = [bytes(p) for p in c.demux(audio=0) if p.size]
        assert all(adts_header_length(p) == 7 for p in ts_pkts)  # ADTS in the TS
        assert [audio_packet_hash(p) for p in ts_pkts] == list(s.audio.packet_hashes)
        assert len(ts_pkts) == s.audio.packet_count
    # and in an MP4 (raw samples), in order
    mp4 = tmp_path / "all.mp4"
    _remux([s.ts for s in run.segments], mp4)
    with av.open(str(mp4)) as c:
        mp4_pkts = [bytes(p) for p in c.demux(audio=0) if p.size]
    assert all(adts_header_length(p) == 0 for p in mp4_pkts)
    assert [audio_packet_hash(p) for p in mp4_pkts] == \
        [h for s in run.segments if s.audio for h in s.audio.packet_hashes]


def test_exported_mp4_keeps_sync_the_hole_and_the_signatures(run: Run, tmp_path: Path) -> None:
    """The back office's path: seal into a store, close a clip, verify and export."""
    store, identity = make_clip_store(tmp_path, run.segments)
    out = export_clip(store.clips / store.clip_ids()[0], identity, tmp_path / "clip.mp4")
    streams = probe(out.mp4)
    kinds = {st["codec_type"]: st for st in streams}
    assert (kinds["video"]["codec_name"], kinds["audio"]["codec_name"]) == ("h264", "aac")
    assert abs(float(kinds["audio"]["start_time"]) - float(kinds["video"]["start_time"])) < FRAME_S
    decode_clean(out.mp4)
    a = out.report["audio"]
    assert a["packets_checked_against_signatures"] == a["packet_count"] > 300
    assert len(a["holes"]) == 1 and abs(a["holes"][0]["duration_ns"] / 1e9 - DROPOUT_S) < 0.05
    data = out.mp4.read_bytes()
    offsets = av_offsets(video_times(data, "mp4"), audio_frames(data, "mp4"))
    assert sorted(offsets) == [30, 60, 90, 120, 150, 180, 210]  # see the TS test for 0
    assert max(abs(v) for v in offsets.values()) < 0.003, offsets
    store.close()


def make_clip_store(tmp_path: Path, segments: list[RawSegment]):
    agency = tmp_path / "agency"
    write_agency_identity(agency)
    recipient = (agency / "agency.recipient").read_text().strip()
    keys = FileKeyStore.create(tmp_path / "keys", "BWV-TEST-0001", recipient)
    init_store(tmp_path / "store", keys.device())
    settings = StoreSettings(pre_record_ns=0, frame_interval_ns=round(1e9 / FPS))
    store = Store.open(tmp_path / "store", keys, SimClock(), settings, officer_id="OFF-7")
    cid = store.open_clip(press_mono_ns=segments[0].start_mono_ns,
                          started_utc_ns=segments[0].start_utc_ns, pre_record=False)
    for raw in segments:
        store.append(raw, clip_id=cid)
    store.close_clip(cid, stop_reason="record_button_hold", stopped_utc_ns=segments[-1].end_utc_ns)
    return store, agency / "agency.key"


def test_header_carries_the_audio_summary(run: Run) -> None:
    ctx = SealContext("BWV-TEST-0001", "0" * 32, "OFF-7", "age1x", lambda b: b"")
    clock = ClockState(True, "sim", 0)
    s = run.segments[0]
    h = segment_header(s, ctx=ctx, seq=0, prev_hash="0" * 64, clock=clock, payload=b"x")
    a = h["audio"]
    assert a["codec"] == "aac" and a["container"] == "mpegts-adts"
    assert (a["sample_rate"], a["channels"], a["samples_per_packet"]) == (48_000, 1, 1024)
    assert a["packet_count"] == len(a["packet_hashes"]) == s.audio.packet_count
    assert a["packet_hash_alg"] == "sha256-aac-raw"
    assert a["start_mono_ns"] == s.audio.start_mono_ns and a["start_utc"].endswith("Z")
    assert a["gaps"] == []
    assert json.loads(json.dumps(h)) == h
    no_audio = dataclasses.replace(s, audio=None)
    assert segment_header(no_audio, ctx=ctx, seq=0, prev_hash="0" * 64, clock=clock,
                          payload=b"x")["audio"] is None


def test_segments_without_audio_and_audio_starting_or_stopping_mid_segment(tmp_path: Path) -> None:
    """Pre-record without audio, recording from 2.5 s (mid-segment), mute at 5.2 s:
    segments without audio have no audio stream and still decode alone; a segment whose
    audio starts late keeps its place on the timeline; the export carries both."""
    r = simulate(8.0, audio_window=(2.5, 5.2))
    assert [s.audio is not None for s in r.segments] == [False, True, True, False, False]
    for i, s in enumerate(r.segments):
        f = tmp_path / f"s{i}.ts"
        f.write_bytes(s.ts)
        types = [st["codec_type"] for st in probe(f)]
        assert types == (["video", "audio"] if s.audio else ["video"])
        decode_clean(f)
    late = r.segments[1]
    assert abs((late.audio.start_mono_ns - r.origin) / 1e9 - 2.5) < 0.05
    assert abs((late.audio.end_mono_ns - r.origin) / 1e9 - 4.0) < 0.03  # continues into seg 2
    # the sink decides by arrival time, and audio arrives ~60 ms after its capture
    assert abs((r.segments[2].audio.end_mono_ns - r.origin) / 1e9 - 5.2) < 0.1
    offsets = av_offsets(video_times(late.ts, "mpegts"), audio_frames(late.ts, "mpegts"))
    assert list(offsets) == [90] and abs(offsets[90]) < 0.003
    store, identity = make_clip_store(tmp_path, r.segments)
    out = export_clip(store.clips / store.clip_ids()[0], identity, tmp_path / "clip.mp4")
    streams = {st["codec_type"]: st for st in probe(out.mp4)}
    assert float(streams["video"]["start_time"]) == 0.0
    assert abs(float(streams["audio"]["start_time"]) - 2.5) < 0.05  # audio where it began
    decode_clean(out.mp4)
    assert out.report["audio"]["segments_with_audio"] == 2
    assert out.report["audio"]["holes"] == []
    data = out.mp4.read_bytes()
    offsets = av_offsets(video_times(data, "mp4"), audio_frames(data, "mp4"))
    assert sorted(offsets) == [90, 120, 150] and max(map(abs, offsets.values())) < 0.003
    store.close()


def _streams(seconds: float) -> tuple[list[VideoPacket], list[VideoPacket], SimCamera, SimMicrophone]:
    clock = SimClock()
    cam = SimCamera(clock, width=W, height=H, fps=FPS, bitrate=300_000, keyframe_interval=30)
    mic = SimMicrophone(clock, sync_origin_mono_ns=clock.monotonic_ns())
    video: list[VideoPacket] = []
    audio: list[VideoPacket] = []
    cam.start(video.append)
    mic.start(audio.append)
    for _ in range(round(seconds * FPS)):
        cam.capture_next()
        clock.advance(cam.frame_interval_ns)
        mic.deliver_until()
    mic.stop()
    cam.stop()
    return video, audio, cam, mic


@pytest.mark.parametrize("audio_lag_ms", [-80, 0, 45, 200])
def test_routing_does_not_depend_on_arrival_order(audio_lag_ms: int) -> None:
    """Audio ahead of video or behind it (encoder latencies differ on real hardware):
    every segment gets the same audio packets, decided by capture time alone."""
    video, audio, cam, mic = _streams(3.0)
    lag = audio_lag_ms * 10**6
    arrivals = sorted([(p.mono_ns, 0, p) for p in video] + [(p.mono_ns + lag, 1, p) for p in audio],
                      key=lambda x: (x[0], x[1]))
    segs: list[RawSegment] = []
    seg = Segmenter(cam.info, 1.0, segs.append, audio=mic.info)
    for _, _, p in arrivals:
        seg.push(p)
    seg.flush()
    assert [s.frame_count for s in segs] == [30, 30, 30]
    for s in segs:
        assert s.start_mono_ns <= s.audio.start_mono_ns < s.start_mono_ns + PACKET_NS
    expected = [audio_packet_hash(p.data) for p in audio if segs[0].start_mono_ns <= p.mono_ns
                < segs[-1].end_mono_ns]
    assert [h for s in segs for h in s.audio.packet_hashes] == expected


def test_held_segment_waits_for_late_audio_but_not_forever() -> None:
    video, audio, cam, mic = _streams(3.0)
    segs: list[RawSegment] = []
    seg = Segmenter(cam.info, 1.0, segs.append, audio=mic.info, audio_hold_seconds=0.2)
    first_audio = [p for p in audio if p.mono_ns < video[30].mono_ns - 50_000_000]
    for p in first_audio:  # audio stops ~50 ms before the first boundary ...
        seg.push(p)
    for i, p in enumerate(video):  # ... and video runs on
        seg.push(p)
        if i == 30:
            assert segs == [], "segment 0 is held for its late audio"
        if i == 30 + 7:  # 7 frames = 233 ms of video past the end
            assert len(segs) == 1, "... for at most audio_hold_seconds of video"
    seg.flush()
    assert [s.audio is not None for s in segs] == [True, False, False]
    assert segs[0].audio.packet_count == len(first_audio) - 1  # less the priming packet
    # a segment whose audio passes its end is released at once
    segs.clear()
    seg = Segmenter(cam.info, 1.0, segs.append, audio=mic.info)
    ai = 0
    for i, p in enumerate(video[:40]):
        seg.push(p)
        while ai < len(audio) and audio[ai].mono_ns < p.mono_ns - 45_000_000:
            seg.push(audio[ai])
            ai += 1
        if i == 30:
            assert segs == []
        if i == 33:
            assert len(segs) == 1


def test_audio_is_refused_when_it_runs_backwards_and_skipped_without_audio_info() -> None:
    video, audio, cam, mic = _streams(1.0)
    seg = Segmenter(cam.info, 1.0, lambda s: None, audio=mic.info)
    seg.push(video[0])
    seg.push(audio[2])
    with pytest.raises(ValueError, match="audio capture time"):
        seg.push(audio[1])
    plain = Segmenter(cam.info, 1.0, lambda s: None)
    plain.push(audio[1])
    assert plain.skipped_audio == 1 and plain.audio_accepted == 0
    with pytest.raises(ValueError, match="AAC"):
        Segmenter(cam.info, 1.0, lambda s: None,
                  audio=dataclasses.replace(mic.info, codec="opus"))


def test_audio_pts_share_the_video_timeline(run: Run) -> None:
    s = run.segments[2]  # no dropout in it
    assert not s.audio.gaps
    with av.open(io.BytesIO(s.ts), format="mpegts") as c:
        pts = [p.pts for p in c.demux(audio=0) if p.size]
    origin = run.segments[0].start_mono_ns
    assert pts[0] == PTS_OFFSET + round((s.audio.start_mono_ns - origin) * 90_000 / 1e9)
    assert all(b - a == 1920 for a, b in zip(pts, pts[1:]))  # 1024 samples at 48 kHz
