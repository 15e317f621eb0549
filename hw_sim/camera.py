"""A simulated camera: a moving test pattern encoded to real H.264 with libx264.

It stands in for picamera2 + H264Encoder behind ``drivers.camera.Camera``: packets carry
Annex-B access units, a keyframe flag, microseconds since the first frame (picamera2's
``timestamp``) and the capture instant on both clock time lines.

Because the simulation runs on virtual time it is *pull-based*: the scenario advances
the SimClock to a frame's capture instant and calls :meth:`SimCamera.capture_next`; the
camera never advances the clock itself. Example::

    clock = SimClock()
    cam = SimCamera(clock, width=320, height=240, fps=30)
    cam.start(packets.append)
    for _ in range(90):
        cam.capture_next()
        clock.advance(cam.frame_interval_ns)
    cam.stop()

Every picture carries its frame number twice: as digits (for people) and as a
:mod:`hw_sim.framecode` block pattern (for tests, which read it back after decoding to
prove no frame was lost or repeated). The burn-in overlay, if set, is drawn on the luma
plane before encoding, as picamera2's ``pre_callback`` does on the Pi.

Threading: everything runs in the caller's thread (the simulation's "camera thread");
the sink is called synchronously from ``capture_next``/``stop``.
"""
from __future__ import annotations

from fractions import Fraction

import av
import cv2
import numpy as np

from drivers.camera import CameraInfo, OverlayFn, PacketSink, VideoPacket
from drivers.clock import Clock
from hw_sim import framecode


class SimCamera:
    """Test-pattern camera with a libx264 encoder (ultrafast, zerolatency, no B-frames)."""

    def __init__(self, clock: Clock, *, width: int = 1280, height: int = 720, fps: int = 30,
                 bitrate: int = 8_000_000, keyframe_interval: int = 60,
                 serial: str = "sim") -> None:
        if width % 2 or height % 2:
            raise ValueError(f"4:2:0 needs even dimensions, got {width}x{height}")
        if fps <= 0 or keyframe_interval <= 0 or bitrate <= 0:
            raise ValueError("fps, keyframe_interval and bitrate must be positive")
        self.clock = clock
        self.serial = serial
        self.bitrate = bitrate
        self.keyframe_interval = keyframe_interval
        self.info = CameraInfo(width=width, height=height, fps=fps,
                               sensor="sim-pattern", encoder="libx264 (PyAV)")
        self._overlay: OverlayFn | None = None
        self._sink: PacketSink | None = None
        self._codec: av.CodecContext | None = None
        self._n = 0
        self._first_mono_ns: int | None = None
        # Capture facts per encoder pts. With zerolatency x264 emits each frame's packet
        # at once, but keeping the map makes a delaying encoder (lookahead, B-frames)
        # still stamp each packet with the capture time of the frame it encodes.
        self._pending: dict[int, tuple[int, int, int]] = {}
        # Test pattern: a diagonal gradient scrolled by adding the frame number (one
        # vectorised uint8 add per frame), constant neutral chroma.
        rows = np.arange(height, dtype=np.uint16)[:, None]
        cols = np.arange(width, dtype=np.uint16)[None, :]
        self._gradient = ((rows + cols) // 2 % 256).astype(np.uint8)
        self._box = max(16, height // 8)
        self._digits_scale = max(0.4, height / 720.0)
        # Digits go just below the frame-code grid, clear of the overlay band.
        code_bottom = framecode.ORIGIN[1] + framecode.ROWS * framecode.BLOCK
        self._digits_at = (framecode.ORIGIN[0], code_bottom + 8 + round(22 * self._digits_scale))

    @property
    def frame_interval_ns(self) -> int:
        """Nominal time between frames; the scenario advances the clock by this."""
        return round(10**9 / self.info.fps)

    @property
    def frames_captured(self) -> int:
        """Frames captured in the current run (the next frame's index)."""
        return self._n

    def set_overlay(self, overlay: OverlayFn | None) -> None:
        """Install the burn-in drawn on each frame's luma plane before encoding."""
        self._overlay = overlay

    def start(self, sink: PacketSink) -> None:
        """Open the encoder; packets of this run go to ``sink``. Frame numbers restart."""
        if self._codec is not None:
            raise RuntimeError("camera already started")
        k = self.keyframe_interval
        codec = av.CodecContext.create("libx264", "w")
        codec.width = self.info.width
        codec.height = self.info.height
        codec.pix_fmt = "yuv420p"
        codec.time_base = Fraction(1, self.info.fps)
        codec.framerate = Fraction(self.info.fps, 1)
        codec.bit_rate = self.bitrate
        # repeat-headers puts SPS/PPS in front of every IDR, so each keyframe can start a
        # self-contained segment; scenecut=0 keeps keyframes on a fixed cadence.
        codec.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "x264-params": f"keyint={k}:min-keyint={k}:scenecut=0:repeat-headers=1",
        }
        codec.open()
        self._codec = codec
        self._sink = sink
        self._n = 0
        self._first_mono_ns = None
        self._pending.clear()

    def render(self, n: int) -> np.ndarray:
        """Frame ``n`` of the test pattern as a yuv420p array of shape (H*3/2, W)."""
        w, h = self.info.width, self.info.height
        frame = np.empty((h * 3 // 2, w), dtype=np.uint8)
        y = frame[:h]
        np.add(self._gradient, np.uint8((2 * n) % 256), out=y)  # uint8 add wraps: scrolls
        b = self._box
        bx = (n * 4) % max(1, w - b)
        by = h // 2 - b // 2
        y[by:by + b, bx:bx + b] = 235 - (n % 2) * 30
        cv2.putText(y, f"#{n:06d}", self._digits_at, cv2.FONT_HERSHEY_SIMPLEX,
                    self._digits_scale, 235, 2, cv2.LINE_AA)
        framecode.draw(y, n)
        frame[h:] = 128
        return frame

    def capture_next(self) -> int:
        """Capture, overlay and encode the next frame at the clock's current time.

        Returns the frame index. Packets the encoder emits are delivered to the sink
        before this returns (with zerolatency that is this frame's own packet).
        """
        if self._codec is None or self._sink is None:
            raise RuntimeError("camera not started")
        mono, utc = self.clock.monotonic_ns(), self.clock.utc_ns()
        if self._first_mono_ns is None:
            self._first_mono_ns = mono
        n = self._n
        frame = self.render(n)
        if self._overlay is not None:
            self._overlay(frame[:self.info.height], utc)
        vf = av.VideoFrame.from_ndarray(frame, format="yuv420p")
        vf.pts = n
        self._pending[n] = ((mono - self._first_mono_ns) // 1000, mono, utc)
        self._n += 1
        self._deliver(self._codec.encode(vf))
        return n

    def _deliver(self, packets: list[av.Packet]) -> None:
        assert self._sink is not None
        for p in packets:
            if p.pts is None or p.pts not in self._pending:
                raise RuntimeError(f"encoder returned a packet for unknown frame pts={p.pts}")
            ts_us, mono, utc = self._pending.pop(p.pts)
            self._sink(VideoPacket(data=bytes(p), keyframe=bool(p.is_keyframe),
                                   timestamp_us=ts_us, mono_ns=mono, utc_ns=utc))

    def stop(self) -> None:
        """Flush the encoder, deliver what it still holds, and close it."""
        if self._codec is None:
            return
        try:
            self._deliver(self._codec.encode(None))
        finally:
            self._codec = None
            self._sink = None
            self._pending.clear()
