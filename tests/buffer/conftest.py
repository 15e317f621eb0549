"""Buffer-test fixtures: real RawSegments cut by the real segmenter from the sim camera."""
from __future__ import annotations

import pytest

from capture.segmenter import RawSegment, Segmenter
from hw_sim.camera import SimCamera
from hw_sim.clock import SimClock

SEG_FRAMES = 15  # 0.5 s segments at 30 fps


@pytest.fixture(scope="session")
def raw_segments() -> list[RawSegment]:
    """Sixteen contiguous 0.5 s RawSegments (320x240, libx264), exactly what the agent seals."""
    clock = SimClock()
    cam = SimCamera(clock, width=320, height=240, fps=30, bitrate=200_000,
                    keyframe_interval=SEG_FRAMES, serial="BWV-TEST-0001")
    out: list[RawSegment] = []
    seg = Segmenter(cam.info, SEG_FRAMES / 30, out.append)
    cam.start(seg.push)
    for _ in range(16 * SEG_FRAMES + 1):  # one frame more: its keyframe closes the 16th
        cam.capture_next()
        clock.advance(cam.frame_interval_ns)
    cam.stop()
    assert len(out) == 16, len(out)
    return out
