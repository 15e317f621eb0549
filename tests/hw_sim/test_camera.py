"""SimCamera: real H.264, picamera2 timing semantics, readable frame numbers.

The frame-code unit tests live here too: the code is the camera's test instrument.
"""
from __future__ import annotations

import av
import numpy as np
import pytest

from capture.framehash import split_annexb
from capture.overlay import BurnIn
from drivers.camera import Camera, CameraInfo, VideoPacket
from hw_sim import framecode
from hw_sim.camera import SimCamera
from hw_sim.clock import SimClock


def run(cam: SimCamera, clock: SimClock, frames: int, step_ns: int | None = None) -> list[VideoPacket]:
    out: list[VideoPacket] = []
    cam.start(out.append)
    for _ in range(frames):
        cam.capture_next()
        clock.advance(step_ns or cam.frame_interval_ns)
    cam.stop()
    return out


def decode_luma(packets: list[VideoPacket], height: int) -> list[np.ndarray]:
    codec = av.CodecContext.create("h264", "r")
    planes = []
    for p in packets:
        for frame in codec.decode(av.Packet(p.data)):
            planes.append(frame.to_ndarray(format="yuv420p")[:height])
    for frame in codec.decode(None):
        planes.append(frame.to_ndarray(format="yuv420p")[:height])
    return planes


# --- frame code -----------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 2, 255, 256, 4711, 123_456, framecode.MAX_N])
def test_framecode_roundtrip(n: int) -> None:
    y = np.random.default_rng(n).integers(0, 256, (240, 320), dtype=np.uint8)
    framecode.draw(y, n)
    assert framecode.read(y) == n


def test_framecode_rejects_what_is_not_a_code() -> None:
    assert framecode.read(np.zeros((240, 320), np.uint8)) is None
    assert framecode.read(np.full((240, 320), 255, np.uint8)) is None
    assert framecode.read(np.full((240, 320), 128, np.uint8)) is None
    y = np.zeros((240, 320), np.uint8)
    framecode.draw(y, 1000)
    x0, y0 = framecode.ORIGIN
    for bit in (0, 17, 31):  # one wrong block, in data or in the check byte
        bad = y.copy()
        r, c = divmod(bit, framecode.COLS)
        blk = bad[y0 + r * 16:y0 + r * 16 + 16, x0 + c * 16:x0 + c * 16 + 16]
        blk[:] = framecode.WHITE if blk[0, 0] == framecode.BLACK else framecode.BLACK
        assert framecode.read(bad) is None


def test_framecode_bounds() -> None:
    y = np.zeros((240, 320), np.uint8)
    with pytest.raises(ValueError):
        framecode.draw(y, -1)
    with pytest.raises(ValueError):
        framecode.draw(y, framecode.MAX_N + 1)
    with pytest.raises(ValueError, match="too small"):
        framecode.draw(np.zeros((64, 128), np.uint8), 1)


# --- camera -----------------------------------------------------------------------------

def test_is_a_camera() -> None:
    cam: Camera = SimCamera(SimClock(), width=320, height=240)
    assert cam.info == CameraInfo(320, 240, 30, sensor="sim-pattern", encoder="libx264 (PyAV)")
    assert SimCamera(SimClock(), fps=25).frame_interval_ns == 40_000_000


def test_packet_timing_follows_the_clock() -> None:
    """timestamp_us is µs since the first frame; mono/utc are the clock at capture."""
    clock = SimClock()
    cam = SimCamera(clock, width=320, height=240, keyframe_interval=10)
    out: list[VideoPacket] = []
    cam.start(out.append)
    expected = []
    steps = [33_000_000, 34_000_000, 33_333_333, 100_000_000, 1_000]  # jitter and a stall
    for i in range(12):
        expected.append((clock.monotonic_ns(), clock.utc_ns()))
        assert cam.capture_next() == i
        assert len(out) == i + 1, "zerolatency: each frame's packet arrives at once"
        if i == 6:
            clock.step_utc(-2 * 10**9)  # a wall-clock correction must show up in utc only
        clock.advance(steps[i % len(steps)])
    cam.stop()
    assert len(out) == 12
    first_mono = expected[0][0]
    for p, (mono, utc) in zip(out, expected):
        assert (p.mono_ns, p.utc_ns) == (mono, utc)
        assert p.timestamp_us == (mono - first_mono) // 1000
        assert not p.audio
        assert p.data.startswith(b"\x00\x00\x00\x01") or p.data.startswith(b"\x00\x00\x01")
    assert out[0].timestamp_us == 0
    assert out[7].utc_ns - out[6].utc_ns == (out[7].mono_ns - out[6].mono_ns) - 2 * 10**9


def test_keyframe_cadence_and_inband_headers() -> None:
    clock = SimClock()
    k = 7
    packets = run(SimCamera(clock, width=320, height=240, keyframe_interval=k), clock, 30)
    assert [i for i, p in enumerate(packets) if p.keyframe] == list(range(0, 30, k))
    for p in packets:
        types = {n[0] & 0x1F for n in split_annexb(p.data)}
        if p.keyframe:
            assert {5, 7, 8} <= types, "keyframes must repeat SPS/PPS and be IDR"
        else:
            assert 5 not in types and 1 in types


def test_framecode_survives_low_bitrate_encode() -> None:
    clock = SimClock()
    cam = SimCamera(clock, width=320, height=240, bitrate=150_000, keyframe_interval=30)
    cam.set_overlay(BurnIn("BWV-SIM-0001", "4711", 320, 240))
    packets = run(cam, clock, 60)
    planes = decode_luma(packets, 240)
    assert [framecode.read(y) for y in planes] == list(range(60))


def test_720p_decodes_with_overlay_from_clock() -> None:
    clock = SimClock()
    cam = SimCamera(clock, width=1280, height=720, keyframe_interval=5)
    calls: list[tuple[tuple[int, ...], int]] = []
    burn = BurnIn("BWV-SIM-0001", "4711", 1280, 720)

    def overlay(y: np.ndarray, utc_ns: int) -> None:
        calls.append((y.shape, utc_ns))
        burn(y, utc_ns)

    cam.set_overlay(overlay)
    packets = run(cam, clock, 8)
    assert calls == [((720, 1280), p.utc_ns) for p in packets]
    planes = decode_luma(packets, 720)
    assert len(planes) == 8 and planes[0].shape == (720, 1280)
    assert [framecode.read(y) for y in planes] == list(range(8))
    # the burn-in band survived encoding: dark band, close to what was drawn
    rows, cols = burn.region
    drawn = burn.render(packets[-1].utc_ns).astype(int)
    assert np.abs(planes[-1][rows, cols].astype(int) - drawn).mean() < 12


def test_lifecycle() -> None:
    clock = SimClock()
    cam = SimCamera(clock, width=320, height=240)
    with pytest.raises(RuntimeError):
        cam.capture_next()
    out: list[VideoPacket] = []
    cam.start(out.append)
    with pytest.raises(RuntimeError):
        cam.start(out.append)
    cam.capture_next()
    cam.stop()
    cam.stop()  # idempotent
    with pytest.raises(RuntimeError):
        cam.capture_next()
    # a new run restarts frame numbers and the µs timeline at its own first frame
    clock.advance(5 * 10**9)
    second: list[VideoPacket] = []
    cam.start(second.append)
    assert cam.capture_next() == 0
    cam.stop()
    assert second[0].timestamp_us == 0 and second[0].keyframe
    assert second[0].mono_ns == out[0].mono_ns + 5 * 10**9
    with pytest.raises(ValueError):
        SimCamera(clock, width=321, height=240)
