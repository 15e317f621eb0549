"""The bwv picamera2 Output against the real picamera2 package (0.3.38, pure Python).

libcamera, pykms and a few binary-only picamera2 imports are stood in by
tests/drivers/pi_standins (see its README). Recorded ``outputframe`` calls in each shape
picamera2 produces must give the same segments as hw_sim's SimCamera path.
"""
from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from capture.overlay import BurnIn
from capture.segmenter import Segmenter
from drivers.camera import VideoPacket
from drivers.microphone import AudioInfo
from hw_sim.camera import SimCamera
from hw_sim.clock import SimClock

STANDINS = Path(__file__).parent / "pi_standins"
W, H, FPS, SEG_S = 160, 96, 30, 1.0
N_FRAMES = 100
DROP_AT = 47  # the sensor skips one frame here: a longer interval, nothing else
BOOT_MINUS_MONO = 7_000_123_000  # multiple of 1000: sensor µs and mono µs agree


@pytest.fixture(scope="module")
def pc2():
    if importlib.util.find_spec("picamera2") is None:
        pytest.skip("picamera2 not installed: pip install picamera2==0.3.38 --no-deps")
    sys.path.insert(0, str(STANDINS))
    try:
        mods = {n: importlib.import_module(n) for n in
                ("picamera2.outputs", "picamera2.encoders.encoder", "picamera2.request",
                 "libcamera")}
        yield mods
    finally:
        sys.path.remove(str(STANDINS))


class _Req:
    """Enough of libcamera.Request for Encoder._timestamp and MappedArray."""

    def __init__(self, metadata, buffers=None):
        self.metadata = metadata
        self.buffers = buffers or {}


class _CompletedRequest:
    def __init__(self, metadata, picam2=None, config=None, stream_map=None, buffers=None):
        self.request = _Req(metadata, buffers)
        self.picam2 = picam2
        self.config = config or {}
        self.stream_map = stream_map or {}


def record_sim(*, audio: bool = False):
    """Run SimCamera (with one dropped sensor frame) and record, per frame, what the
    hardware would have reported: the encoded av.Packets, sensor ns and wall clock."""
    clock = SimClock()
    cam = SimCamera(clock, width=W, height=H, fps=FPS, bitrate=300_000,
                    keyframe_interval=round(FPS * SEG_S))
    ref: list[VideoPacket] = []
    avpk: list[av.Packet] = []
    orig = cam._deliver
    cam._deliver = lambda pkts: (avpk.extend(pkts), orig(pkts))
    frames = []  # (sensor_ns, wall_ns)
    cam.start(ref.append)
    for i in range(N_FRAMES):
        frames.append((clock.monotonic_ns() + BOOT_MINUS_MONO, clock.utc_ns()))
        cam.capture_next()
        clock.advance(cam.frame_interval_ns * (2 if i == DROP_AT else 1))
    cam.stop()
    assert len(ref) == len(avpk) == N_FRAMES
    return ref, avpk, frames


def aac_packets(n: int):
    """Real AAC packets from PyAV's aac encoder (48 kHz mono), as picamera2's audio
    thread gets them from ``audio_output_stream.encode``."""
    enc = av.CodecContext.create("aac", "w")
    enc.sample_rate = 48_000
    enc.layout = "mono"
    enc.format = "fltp"
    enc.time_base = Fraction(1, 48_000)
    enc.open()
    out, t = [], 0
    while len(out) < n:
        samples = np.sin(2 * np.pi * 440 * (t + np.arange(1024)) / 48_000).astype(np.float32)
        fr = av.AudioFrame.from_ndarray(samples[None, :], format="fltp", layout="mono")
        fr.sample_rate = 48_000
        fr.pts = t
        t += 1024
        out.extend(enc.encode(fr))
    return out[:n], enc


def segments_of(packets, audio=None):
    segs = []
    seg = Segmenter(_info(), SEG_S, segs.append, audio=audio)
    for p in packets:
        seg.push(p)
    seg.flush()
    return segs, seg


def _info():
    from drivers.camera import CameraInfo
    return CameraInfo(width=W, height=H, fps=FPS)


def facts(segs):
    return [(s.frame_count, s.frame_hashes, s.keyframe_count, s.start_mono_ns, s.end_mono_ns,
             s.start_utc_ns, s.end_utc_ns, s.first_timestamp_us, s.ts,
             s.audio and (s.audio.packet_count, s.audio.packet_hashes, s.audio.start_mono_ns))
            for s in segs]


def replay(pc2, avpk, frames, shape, *, start_at=0, wallclock=True, audio=None):
    """Feed recorded calls through picamera2's own Encoder (its _timestamp and its
    outputframe fan-out) into our Output; returns the packets our sink received."""
    from drivers.pi_camera import FrameTimes, make_output_class, make_pre_callback
    enc_mod, lc = pc2["picamera2.encoders.encoder"], pc2["libcamera"]
    clock = SimClock()
    enc = enc_mod.Encoder()
    times = FrameTimes(clock, boottime_ns=lambda: clock.monotonic_ns() + BOOT_MINUS_MONO,
                       first_sensor_us=lambda: enc.firsttimestamp)
    got: list[VideoPacket] = []
    out = make_output_class()(got.append, times)
    assert isinstance(out, pc2["picamera2.outputs"].Output)
    enc.output = out
    pre = make_pre_callback(times, lambda: None)
    pending_audio = list(audio or [])
    for i, ((sensor_ns, wall_ns), p) in enumerate(zip(frames, avpk)):
        md = {lc.controls.SensorTimestamp: sensor_ns}
        if wallclock:
            md[lc.controls.FrameWallClock] = wall_ns
        req = _CompletedRequest(md)
        ts_us = enc._timestamp(req)  # picamera2's own arithmetic
        if i < start_at:
            continue  # output attached mid-GOP: these went elsewhere
        pre(req)
        data = bytes(p)
        if shape == "hw":  # V4L2Encoder: a slice of the mmap'd capture buffer
            enc.outputframe(memoryview(bytearray(data)), bool(p.is_keyframe), ts_us)
        elif shape == "libav":  # LibavH264Encoder._encode
            enc.outputframe(data, p.is_keyframe, timestamp=ts_us, packet=p)
        elif shape == "packet-only":
            enc.outputframe(None, p.is_keyframe, timestamp=ts_us, packet=p)
        else:
            raise AssertionError(shape)
        # the audio thread delivers what it has captured by now (its own thread on a Pi)
        while pending_audio and pending_audio[0][0] <= ts_us:
            a = pending_audio.pop(0)  # Encoder._handle_audio_packet's call
            enc.outputframe(None, True, a[0], a[1], True)
    assert out.errors == 0, out.last_error
    return got, times


def _audio_calls(n):
    pkts, _ = aac_packets(n)
    # µs since first audio packet, on the video's axis (audio_sync 0 here)
    return [(round(k * 1024 * 1_000_000 / 48_000), p) for k, p in enumerate(pkts)]


@pytest.mark.parametrize("shape", ["hw", "libav", "packet-only"])
def test_output_shapes_match_sim_segments(pc2, shape):
    ref, avpk, frames = record_sim()
    got, times = replay(pc2, avpk, frames, shape)
    assert [(p.data, p.keyframe, p.timestamp_us, p.mono_ns, p.utc_ns) for p in got] == \
        [(p.data, p.keyframe, p.timestamp_us, p.mono_ns, p.utc_ns) for p in ref]
    want, _ = segments_of(ref)
    have, _ = segments_of(got)
    assert len(want) >= 3 and facts(have) == facts(want)
    assert sum(s.frame_count for s in have) == N_FRAMES
    assert times.wallclock_frames == N_FRAMES and times.fallback_frames == 0
    # the dropped sensor frame is just a longer interval inside a segment
    gaps = [b.mono_ns - a.mono_ns for a, b in zip(got, got[1:])]
    assert gaps.count(2 * round(1e9 / FPS)) == 1


def test_audio_interleaved_matches_sim(pc2):
    ref, avpk, frames = record_sim()
    calls = _audio_calls(120)
    got, _ = replay(pc2, avpk, frames, "libav", audio=calls)
    audio_got = [p for p in got if p.audio]
    assert len(audio_got) == 120 and all(p.data == bytes(a[1]) for p, a in zip(audio_got, calls))
    # Reference: sim video packets plus the same audio pushed directly, stamped on the
    # same "since first frame" axis.
    first = ref[0]
    ref_audio = [VideoPacket(data=bytes(p), keyframe=True, timestamp_us=ts,
                             mono_ns=first.mono_ns + ts * 1000, utc_ns=first.utc_ns + ts * 1000,
                             audio=True) for ts, p in calls]
    merged = []
    for p in ref:
        merged.append(p)
        while ref_audio and ref_audio[0].timestamp_us <= p.timestamp_us:
            merged.append(ref_audio.pop(0))
    info = AudioInfo(sample_rate=48_000, channels=1)
    want, _ = segments_of(merged, audio=info)
    have, seg = segments_of(got, audio=info)
    assert facts(have) == facts(want)
    assert seg.audio_accepted == 120 and have[0].audio is not None
    # and an audio-less segmenter skips them explicitly, video unchanged
    plain, pseg = segments_of(got)
    assert pseg.skipped_audio == 120
    assert [s.frame_hashes for s in plain] == [s.frame_hashes for s in segments_of(ref)[0]]


def test_mid_gop_start_drops_until_keyframe(pc2):
    ref, avpk, frames = record_sim()
    got, _ = replay(pc2, avpk, frames, "hw", start_at=5)
    assert not got[0].keyframe and got[0].timestamp_us == ref[5].timestamp_us
    have, seg = segments_of(got)
    want, _ = segments_of(ref[30:])  # from the next keyframe on (keyint 30)
    assert seg.dropped_before_keyframe == 25
    assert [s.frame_hashes for s in have] == [s.frame_hashes for s in want]
    assert [s.start_mono_ns for s in have] == [s.start_mono_ns for s in want]


def test_utc_falls_back_to_sampled_offset(pc2):
    ref, avpk, frames = record_sim()
    got, times = replay(pc2, avpk, frames, "hw", wallclock=False)
    assert times.fallback_frames == N_FRAMES
    for g, r in zip(got, ref):
        assert g.mono_ns == r.mono_ns
        assert abs(g.utc_ns - r.utc_ns) <= times.sample_error_ns + 1000


def test_pre_callback_draws_on_y_plane_of_mapped_array(pc2):
    from drivers.pi_camera import FrameTimes, make_pre_callback
    req_mod, lc = pc2["picamera2.request"], pc2["libcamera"]
    stride = W + 32  # padded rows, as the ISP delivers
    buf = bytearray(np.full(stride * H * 3 // 2, 77, np.uint8).tobytes())
    fb = object()

    class _Sync:  # DmaAllocator.DmaSync's role: hand out the mapped buffer
        def __init__(self, *a):
            pass

        def __enter__(self):
            return buf

        def __exit__(self, *a):
            return False

    class _Allocator:
        sync = _Sync
        mapped_buffers = {fb: buf}

    class _Picam2:
        allocator = _Allocator()

    picam2 = _Picam2()
    picam2.helpers = req_mod.Helpers(picam2)
    config = {"main": {"format": "YUV420", "size": (W, H), "stride": stride}}
    req = _CompletedRequest({lc.controls.SensorTimestamp: 5_000_000_000,
                             lc.controls.FrameWallClock: 1_780_000_000_123_456_789},
                            picam2=picam2, config=config, stream_map={"main": "S"},
                            buffers={"S": fb})
    clock = SimClock()
    times = FrameTimes(clock)
    burn = BurnIn("BWV-PI-0001", "4711", width=W, height=H)
    seen = []

    def overlay(y, utc):
        seen.append((y.shape, utc))
        burn(y, utc)

    make_pre_callback(times, lambda: overlay)(req)
    arr = np.frombuffer(bytes(buf), np.uint8).reshape(H * 3 // 2, stride)
    assert seen == [((H, W), 1_780_000_000_123_456_789)]
    rows, cols = burn.region
    assert np.array_equal(arr[:H, :W][rows, cols], burn.render(1_780_000_000_123_456_789))
    mask = np.ones(arr.shape, bool)
    mask[:H, :W][rows, cols] = False
    assert (arr[mask] == 77).all()  # chroma, padding and the rest of Y untouched


def test_import_is_lazy_without_picamera2():
    code = ("import sys; sys.modules['picamera2'] = None; sys.modules['libcamera'] = None\n"
            "import drivers.pi_camera as m\n"
            "cam = m.PiCamera(None, width=64, height=48, fps=30, bitrate=1, segment_seconds=2,"
            " serial='x')\n"
            "assert cam.iperiod == 60\n"
            "assert not any(k.split('.')[0] in ('picamera2', 'libcamera') and sys.modules[k]"
            " for k in sys.modules)\n"
            "try:\n    cam.start(print)\nexcept ImportError:\n    print('lazy-ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "lazy-ok"


def test_encoder_kind_from_picamera2_classes(pc2):
    from drivers.pi_camera import HW_ENCODER, SW_ENCODER, PiCamera
    from picamera2.encoders.h264_encoder import H264Encoder
    from picamera2.encoders.libav_h264_encoder import LibavH264Encoder
    assert PiCamera.encoder_kind(H264Encoder(bitrate=1, repeat=True, iperiod=60)) == HW_ENCODER
    assert PiCamera.encoder_kind(LibavH264Encoder(bitrate=1, repeat=True, iperiod=60)) == SW_ENCODER
