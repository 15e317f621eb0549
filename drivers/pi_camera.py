"""The Raspberry Pi camera: picamera2 + its H264Encoder + a bwv ``Output``.

Nothing here imports picamera2 (or libcamera) at module load: this module is imported on
every platform, and picamera2 exists only on Raspberry Pi OS. picamera2 is imported in
:func:`make_output_class` and :meth:`PiCamera.start`.

How picamera2 hands us frames (read from picamera2 0.3.38):

* ``Encoder._timestamp`` turns the request's ``SensorTimestamp`` (ns, CLOCK_BOOTTIME)
  into ``int(ns / 1000) - firsttimestamp``: **µs since the first encoded frame**; the
  first sensor time in µs stays in ``encoder.firsttimestamp``.
* The hardware encoder (``H264Encoder`` = ``V4L2Encoder``, Pi 4/CM4/Zero 2 W) calls
  ``outputframe(mmap_slice, keyframe, timestamp_us)``: ``frame`` is a slice of the
  V4L2 capture buffer's mmap (reused as soon as the call returns, so we copy it), no
  ``packet``.
* The libav encoder (``LibavH264Encoder``, what ``H264Encoder`` *is* on a Pi 5) calls
  ``outputframe(bytes(packet), packet.is_keyframe, timestamp=packet.pts, packet=packet)``
  with the codec time base 1/1 000 000, so ``packet.pts`` is the same µs value.
* Audio (``encoder.audio = True``) arrives through the same call from another thread:
  ``outputframe(None, True, ts_us, aac_packet, True)``; ``ts_us`` is µs since the first
  audio packet minus ``audio_sync``, i.e. on the encoder's "since first frame" axis.
  bwv runs audio on its own audio-only encoder (:mod:`drivers.pi_microphone`), so that
  the microphone can start and stop without restarting the video; its output passes
  ``audio_origin`` (that encoder's ``firsttimestamp``).
* ``pre_callback(request)`` runs in the camera thread for every completed request before
  any encoder sees it; bwv draws the burn-in there on the main stream's Y plane and notes
  each frame's sensor time and wall clock (``FrameWallClock`` metadata) for the packet.

Time mapping (see :class:`FrameTimes`): ``mono_ns`` is the sensor timestamp moved from
CLOCK_BOOTTIME onto the injected clock's monotonic line by an offset sampled at start;
``utc_ns`` is the frame's ``FrameWallClock`` when libcamera reports it, else the sensor
timestamp plus a REALTIME−BOOTTIME offset sampled at start.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable

from drivers.camera import CameraInfo, OverlayFn, PacketSink, VideoPacket
from drivers.clock import Clock

_log = logging.getLogger(__name__)

HW_ENCODER = "hardware V4L2 H.264"
SW_ENCODER = "libav libx264 (software)"
#: Frames noted by pre_callback but not (yet) encoded are forgotten beyond this many
#: (the encoder skipped them, or the output was detached); bounds memory over a shift.
_MAX_PENDING_FRAMES = 256
#: FrameWallClock below this is taken to be in µs (µs since 1970 ≈ 1.7e15; ns ≈ 1.7e18).
_WALLCLOCK_NS_FLOOR = 10**17


def _boottime_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


class FrameTimes:
    """Maps picamera2's per-frame times onto bwv's two time lines. Pure Python.

    At :meth:`sample` it reads CLOCK_BOOTTIME around the injected clock's
    ``monotonic_ns``/``utc_ns`` and keeps two offsets:

    * ``boot_minus_mono``: sensor (BOOTTIME) ns → monotonic ns. BOOTTIME and MONOTONIC
      tick together and differ only by time spent suspended, so the offset is exact up to
      the sampling bracket unless the device suspends while recording (it does not).
    * ``utc_minus_boot``: the fallback REALTIME−BOOTTIME offset, used only when a frame
      carries no ``FrameWallClock``. Error bound of a fallback UTC: ``sample_error_ns``
      (half the bracket of the two BOOTTIME reads, typically < 10 µs) plus any step or
      slew applied to the wall clock after ``sample`` (chrony slews ≤ 0.5 ms/s; a step is
      logged by the clock driver). Re-sampled on every start.

    ``note(sensor_ns, wall)`` is called from pre_callback; ``video(ts_us)`` from the
    encoder's output call for the same frame, found by ``firsttimestamp + ts_us`` (the
    exact key ``Encoder._timestamp`` used), so each packet gets its frame's own
    nanosecond sensor time and wall clock.
    """

    def __init__(self, clock: Clock, *, boottime_ns: Callable[[], int] = _boottime_ns,
                 first_sensor_us: Callable[[], int | None] = lambda: None) -> None:
        self.clock = clock
        self._boottime_ns = boottime_ns
        self.first_sensor_us = first_sensor_us
        self.boot_minus_mono = 0
        self.utc_minus_boot = 0
        self.sample_error_ns = 0
        self._lock = threading.Lock()
        self._frames: collections.OrderedDict[int, tuple[int, int | None]] = collections.OrderedDict()
        self.wallclock_frames = 0  # packets stamped from FrameWallClock
        self.fallback_frames = 0  # packets stamped from the sampled offset
        self.sample()

    def sample(self) -> None:
        b0 = self._boottime_ns()
        mono = self.clock.monotonic_ns()
        utc = self.clock.utc_ns()
        b1 = self._boottime_ns()
        boot = (b0 + b1) // 2
        self.boot_minus_mono = boot - mono
        self.utc_minus_boot = utc - boot
        self.sample_error_ns = (b1 - b0 + 1) // 2
        with self._lock:
            self._frames.clear()

    @staticmethod
    def wallclock_ns(value: Any) -> int | None:
        """``FrameWallClock`` metadata as ns since the epoch (accepts µs or ns)."""
        if value is None:
            return None
        v = int(value)
        if v <= 0:
            return None
        return v * 1000 if v < _WALLCLOCK_NS_FLOOR else v

    def note(self, sensor_ns: int, wallclock: Any = None) -> int:
        """Remember a frame's sensor time and wall clock; returns its UTC (for the overlay)."""
        wall = self.wallclock_ns(wallclock)
        with self._lock:
            self._frames[int(sensor_ns / 1000)] = (int(sensor_ns), wall)
            while len(self._frames) > _MAX_PENDING_FRAMES:
                self._frames.popitem(last=False)
        return wall if wall is not None else int(sensor_ns) + self.utc_minus_boot

    def video(self, timestamp_us: int) -> tuple[int, int]:
        """(mono_ns, utc_ns) of the frame picamera2 stamped ``timestamp_us``."""
        first = self.first_sensor_us()
        if first is None:  # no encoder origin known: the best we have is "now"
            self.fallback_frames += 1
            return self.clock.monotonic_ns(), self.clock.utc_ns()
        key = first + int(timestamp_us)
        with self._lock:
            # Frames older than this one were skipped by the encoder: forget them.
            while self._frames and next(iter(self._frames)) < key:
                self._frames.popitem(last=False)
            noted = self._frames.pop(key, None)
        sensor_ns, wall = noted if noted is not None else (key * 1000, None)
        if wall is None:
            self.fallback_frames += 1
            wall = sensor_ns + self.utc_minus_boot
        else:
            self.wallclock_frames += 1
        return sensor_ns - self.boot_minus_mono, wall

    def audio(self, timestamp_us: int, first_us: int | None = None) -> tuple[int, int]:
        """(mono_ns, utc_ns) of an audio packet: same "µs since first frame" axis.

        ``first_us``: the sensor time (µs) the packet's encoder counts from, when it is
        not the video encoder's (the microphone's own audio-only encoder, see
        :mod:`drivers.pi_microphone`)."""
        first = self.first_sensor_us() if first_us is None else first_us
        if first is None:
            return self.clock.monotonic_ns(), self.clock.utc_ns()
        sensor_ns = (first + int(timestamp_us)) * 1000
        return sensor_ns - self.boot_minus_mono, sensor_ns + self.utc_minus_boot


def packet_bytes(frame: Any, packet: Any) -> bytes:
    """The encoded bytes of one outputframe call, whatever shape picamera2 used.

    ``frame``: bytes (libav encoder), or a memoryview/mmap slice of a V4L2 buffer that is
    recycled after the call (hardware encoder): always copied. ``frame`` None: the bytes
    are in ``packet`` (a PyAV Packet, buffer protocol)."""
    if frame is not None:
        return bytes(frame)
    if packet is not None:
        return bytes(packet)
    raise ValueError("outputframe call carries neither frame nor packet")


_output_class: type | None = None


def make_output_class() -> type:
    """A subclass of ``picamera2.outputs.Output`` that emits bwv VideoPackets.

    ``BwvOutput(sink, times, audio_origin=None)``: ``times`` is a :class:`FrameTimes`;
    ``audio_origin`` returns the first sensor time (µs) of the encoder that produces this
    output's audio when that is not the video encoder (None: the video encoder's). Errors
    in the sink are logged and counted, never raised into picamera2's encoder thread
    (which would stop recording silently); ``errors`` counts them, ``last_error`` keeps
    the last."""
    global _output_class
    if _output_class is not None:
        return _output_class
    from picamera2.outputs import Output

    class BwvOutput(Output):
        def __init__(self, sink: PacketSink, times: FrameTimes,
                     audio_origin: Callable[[], int | None] | None = None) -> None:
            super().__init__()
            self.sink = sink
            self.times = times
            self.audio_origin = audio_origin
            self.video_packets = 0
            self.audio_packets = 0
            self.errors = 0
            self.last_error: BaseException | None = None

        def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
            try:
                data = packet_bytes(frame, packet)
                if timestamp is None:  # picamera2 always stamps; be safe anyway
                    timestamp = 0
                if audio:
                    if self.audio_origin is None:
                        mono, utc = self.times.audio(timestamp)
                    else:
                        origin = self.audio_origin()
                        mono, utc = (self.times.audio(timestamp, origin) if origin is not None
                                     else (self.times.clock.monotonic_ns(),
                                           self.times.clock.utc_ns()))
                    self.audio_packets += 1
                else:
                    mono, utc = self.times.video(timestamp)
                    self.video_packets += 1
                self.sink(VideoPacket(data=data, keyframe=bool(keyframe),
                                      timestamp_us=int(timestamp), mono_ns=mono, utc_ns=utc,
                                      audio=bool(audio)))
            except Exception as exc:  # noqa: BLE001 - the encoder thread must live on
                self.errors += 1
                self.last_error = exc
                _log.exception("bwv output dropped a packet")

    _output_class = BwvOutput
    return BwvOutput


def make_pre_callback(times: FrameTimes, overlay: Callable[[], OverlayFn | None],
                      stream: str = "main", width: int | None = None,
                      height: int | None = None) -> Callable[[Any], None]:
    """picamera2 ``pre_callback``: note the frame's times, draw the burn-in on its Y plane.

    The main stream is YUV420: ``MappedArray.array`` is (H*3/2, stride) uint8; the Y
    plane is ``array[:H, :W]`` (a view, so drawing on it changes the buffer the encoder
    reads). Only the overlay's band is written."""
    from libcamera import controls
    from picamera2.request import MappedArray

    wall_id = getattr(controls, "FrameWallClock", None)

    def pre_callback(request: Any) -> None:
        md = request.request.metadata
        sensor_ns = md[controls.SensorTimestamp]
        wall = md.get(wall_id) if wall_id is not None and hasattr(md, "get") else None
        utc = times.note(sensor_ns, wall)
        fn = overlay()
        if fn is None:
            return
        with MappedArray(request, stream) as m:
            w, h = width, height
            if w is None or h is None:
                w, h = request.config[stream]["size"]
            fn(m.array[:h, :w], utc)

    return pre_callback


class CameraConfigError(RuntimeError):
    """The camera stack cannot deliver what the configuration asks for."""


class PiCamera:
    """Camera protocol on picamera2. Threading: packets reach ``sink`` from picamera2's
    encoder thread (hardware) or camera thread (libav), audio from the audio thread.

    Start-up follows picamera2's own order (``Picamera2.start_recording``): configure
    the camera, then ``start_encoder`` (encoder and outputs running before any frame),
    then start the camera; ``pre_callback`` is attached before the first frame so every
    frame carries the burn-in. ``picamera2_factory`` and ``encoder_factory`` default to
    ``picamera2.Picamera2`` and ``picamera2.encoders.H264Encoder`` (hardware V4L2 on
    Zero 2 W / Pi 4 / CM4, libx264 on a Pi 5); tests pass others (and a simulated
    sensor clock as ``boottime_ns``).
    """

    def __init__(self, clock_source: Clock, *, width: int, height: int, fps: int,
                 bitrate: int, segment_seconds: float, serial: str,
                 picamera2_factory: Callable[[], Any] | None = None,
                 encoder_factory: Callable[..., Any] | None = None,
                 boottime_ns: Callable[[], int] = _boottime_ns) -> None:
        if width % 2 or height % 2:
            raise ValueError(f"4:2:0 needs even dimensions, got {width}x{height}")
        if fps <= 0 or bitrate <= 0 or segment_seconds <= 0:
            raise ValueError("fps, bitrate and segment_seconds must be positive")
        self.clock = clock_source
        self.serial = serial
        self.bitrate = bitrate
        self.segment_seconds = segment_seconds
        self.iperiod = max(1, round(fps * segment_seconds))
        self.info = CameraInfo(width=width, height=height, fps=fps)
        self._picamera2_factory = picamera2_factory
        self._encoder_factory = encoder_factory
        self._boottime_ns = boottime_ns  # the sensor's clock (tests: a simulated one)
        self._overlay: OverlayFn | None = None
        self._picam2: Any = None
        self._encoder: Any = None
        self.output: Any = None
        self.times: FrameTimes | None = None

    @property
    def picam2(self) -> Any:
        """The running ``Picamera2`` (None when stopped); the microphone attaches to it."""
        return self._picam2

    def set_overlay(self, overlay: OverlayFn | None) -> None:
        self._overlay = overlay

    @staticmethod
    def encoder_kind(encoder: Any) -> str:
        """Which encoder class picamera2 picked (H264Encoder is libav on a Pi 5)."""
        names = {c.__name__ for c in type(encoder).__mro__}
        if "LibavH264Encoder" in names:
            return SW_ENCODER
        if "V4L2Encoder" in names:
            return HW_ENCODER
        return type(encoder).__name__

    def start(self, sink: PacketSink) -> None:
        if self._picam2 is not None:
            raise RuntimeError("camera already started")
        make_picam2 = self._picamera2_factory
        make_encoder = self._encoder_factory
        if make_picam2 is None:
            from picamera2 import Picamera2 as make_picam2
        if make_encoder is None:
            from picamera2.encoders import H264Encoder as make_encoder

        w, h, fps = self.info.width, self.info.height, self.info.fps
        picam2 = make_picam2()
        try:
            model = str(picam2.camera_properties.get("Model") or "unknown")
            config = picam2.create_video_configuration(
                main={"size": (w, h), "format": "YUV420"},
                controls={"FrameRate": float(fps)}, encode="main")
            picam2.configure(config)
            got = tuple(picam2.camera_configuration()["main"]["size"])
            if got != (w, h):
                # The burn-in, the segment headers and the overlay's plane view are all
                # sized from the config: a silently different stream would be mislabelled.
                raise CameraConfigError(
                    f"the camera delivers {got[0]}x{got[1]}, the config asks for {w}x{h}: "
                    f"set camera.width/height to a size this sensor pipeline supports")
            # Only parameters both V4L2 H264Encoder and LibavH264Encoder accept; the
            # frame rate feeds libx264's rate control (Pi 5) and the V4L2 level choice.
            # An int: LibavH264Encoder hands it to PyAV's add_stream(rate=), which takes
            # an int or a Fraction and fails on a float.
            encoder = make_encoder(bitrate=self.bitrate, repeat=True, iperiod=self.iperiod,
                                   framerate=int(fps))
            times = FrameTimes(self.clock, boottime_ns=self._boottime_ns,
                               first_sensor_us=lambda: encoder.firsttimestamp)
            output = make_output_class()(sink, times)
            picam2.pre_callback = make_pre_callback(times, lambda: self._overlay, "main", w, h)
            self.info = CameraInfo(width=w, height=h, fps=fps, sensor=model,
                                   encoder=self.encoder_kind(encoder))
            times.sample()
            picam2.start_recording(encoder, output, name="main")
        except BaseException:
            picam2.pre_callback = None
            picam2.close()
            raise
        self._picam2, self._encoder, self.output, self.times = picam2, encoder, output, times

    def stop(self) -> None:
        picam2, self._picam2 = self._picam2, None
        if picam2 is None:
            return
        try:
            # Camera first, then every encoder (the microphone's too, if still running):
            # the video encoder flushes, so its last packets reach the sink.
            picam2.stop_recording()
        finally:
            picam2.pre_callback = None
            picam2.close()
            self._encoder = None
