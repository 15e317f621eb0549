"""The camera interface: encoded H.264 access units, one call per frame.

The shape follows picamera2's ``Output.outputframe(frame, keyframe, timestamp, packet,
audio)``: the encoder thread hands each encoded frame to one callback. On the Pi that
callback is a picamera2 ``Output``; in ``hw_sim`` a simulated camera makes the same call.
Above this module nobody can tell which one is running.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np


@dataclass(frozen=True)
class VideoPacket:
    """One encoded access unit, as the encoder delivered it.

    ``timestamp_us`` has picamera2's meaning: microseconds since the first frame of this
    camera run. ``mono_ns``/``utc_ns`` are the capture instant on the injected clock's
    two time lines, so each frame carries its own capture time (pre-record included).
    """

    data: bytes  # H.264 Annex-B access unit (start codes included)
    keyframe: bool  # an IDR with SPS/PPS repeated in band, so it can start a segment
    timestamp_us: int
    mono_ns: int
    utc_ns: int
    audio: bool = False  # audio packets share the call on the Pi; video-only code skips them


@dataclass(frozen=True)
class CameraInfo:
    """What the encoder produces; recorded in segment headers."""

    width: int
    height: int
    fps: int
    codec: str = "h264"
    sensor: str = "unknown"
    encoder: str = "unknown"


#: Draws on the luma (Y) plane of a frame in place before it is encoded.
#: Arguments: the H×W uint8 Y plane, the frame's capture UTC in ns.
OverlayFn = Callable[[np.ndarray, int], None]
PacketSink = Callable[[VideoPacket], None]


class Camera(Protocol):
    """A camera that encodes frames and hands packets to one sink."""

    info: CameraInfo

    def set_overlay(self, overlay: OverlayFn | None) -> None: ...
    def start(self, sink: PacketSink) -> None: ...
    def stop(self) -> None: ...
