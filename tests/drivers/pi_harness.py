"""A camera loop for the real picamera2 package on x86 (test only).

``harness_class()`` returns a subclass of the real ``picamera2.Picamera2`` that replaces
only what needs libcamera (opening the camera, configuring and starting the sensor,
closing it) and keeps picamera2's own ``start_encoder`` / ``stop_encoder`` /
``start_recording`` / ``stop_recording`` / ``encoders``. ``frame()`` then does what
``Picamera2._process_requests`` does for one completed request, in the same order:
``pre_callback(request)`` under ``picam2.lock``, then ``encoder.encode(name, request)``
for every started encoder whose stream exists, then release. Each frame is its own
YUV420 buffer with padded rows (as the ISP delivers), mapped through picamera2's real
``MappedArray`` / ``_MappedBuffer``, so the real ``LibavH264Encoder`` (what
``H264Encoder`` is on a Pi 5) encodes it with libx264.

The stand-ins in ``pi_standins`` must be on ``sys.path`` before this is called.
"""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np

_cls = None


class _Sync:
    """``DmaAllocator.sync``'s role: hand out the mapped buffer of one frame."""

    def __init__(self, allocator, fb, write):
        self._buf = allocator.mapped_buffers[fb]

    def __enter__(self):
        return self._buf

    def __exit__(self, *exc):
        return False


class _Allocator:
    sync = _Sync

    def __init__(self) -> None:
        self.mapped_buffers: dict = {}


class _Request:
    def __init__(self, metadata, buffers):
        self.metadata = metadata
        self.buffers = buffers


class HarnessRequest:
    """What picamera2's ``CompletedRequest`` offers the encoders and pre_callback."""

    def __init__(self, picam2, metadata, fb):
        self.picam2 = picam2
        self.request = _Request(metadata, {picam2.stream_map["main"]: fb})
        self.config = dict(picam2.camera_config)
        self.stream_map = dict(picam2.stream_map)
        self._fb = fb
        self.ref_count = 1
        self._lock = threading.Lock()

    def get_metadata(self):
        return dict(self.request.metadata)

    def acquire(self):
        with self._lock:
            self.ref_count += 1

    def release(self):
        with self._lock:
            self.ref_count -= 1
            if self.ref_count == 0:  # recycled: the buffer goes back to the "camera"
                self.picam2.allocator.mapped_buffers.pop(self._fb, None)


def harness_class():
    global _cls
    if _cls is not None:
        return _cls
    from libcamera import controls
    from picamera2 import Picamera2
    from picamera2.request import Helpers

    class HarnessPicamera2(Picamera2):
        """picamera2's Picamera2 with the libcamera parts replaced (see module doc)."""

        instances: list = []

        def __init__(self, *, model: str = "imx708_wide", deliver_size=None,
                     stride_pad: int = 64, fail_configure: Exception | None = None,
                     autorun_fps: int | None = None):
            self.calls: list[tuple] = []
            self.camera = SimpleNamespace()  # "opened"
            self.camera_properties_ = {"Model": model}
            self.camera_ctrl_info = {"FrameDurationLimits": (None, SimpleNamespace(min=33333))}
            self.lock = threading.Lock()
            self.request_lock = threading.Lock()
            self._encoders = set()
            self.camera_config = None
            self.encode_stream_name = "main"
            self.stream_map = {"main": "main-stream"}
            self.pre_callback = None
            self.post_callback = None
            self.started = False
            self._preview = None
            self.allocator = _Allocator()
            self.helpers = Helpers(self)
            self.deliver_size = deliver_size
            self.stride_pad = stride_pad
            self.fail_configure = fail_configure
            self.frames = 0
            self.closed = False
            self.autorun_fps = autorun_fps  # a live camera: frames on a thread in real time
            self._run = threading.Event()
            self._thread = None
            HarnessPicamera2.instances.append(self)

        def __del__(self):
            pass

        def create_video_configuration(self, main={}, controls={}, encode="main", **kw):  # noqa: B006
            self.calls.append(("create_video_configuration", dict(main), dict(controls), encode))
            return {"use_case": "video", "main": dict(main), "lores": None, "raw": None,
                    "controls": dict(controls), "encode": encode, "display": "main",
                    "buffer_count": 6, "queue": True}

        def configure(self, camera_config=None):
            self.calls.append(("configure",))
            if self.fail_configure is not None:
                raise self.fail_configure
            cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in camera_config.items()}
            w, h = self.deliver_size or cfg["main"]["size"]
            cfg["main"].update(size=(w, h), stride=w + self.stride_pad)
            self.camera_config = cfg
            self.encode_stream_name = cfg["encode"]

        def start(self, config=None, show_preview=False):
            self.calls.append(("start", len(self._encoders), self.pre_callback is not None,
                               [e.running for e in self._encoders]))
            self.started = True
            if self.autorun_fps:
                self._run.set()
                self._thread = threading.Thread(target=self._autorun, daemon=True)
                self._thread.start()

        def _autorun(self):
            period = 10**9 // self.autorun_fps
            nxt = time.monotonic_ns()
            while self._run.is_set():
                self.frame(time.clock_gettime_ns(time.CLOCK_BOOTTIME), time.time_ns())
                nxt += period
                time.sleep(max(0.0, (nxt - time.monotonic_ns()) / 1e9))

        def stop(self):
            self.calls.append(("stop",))
            self._run.clear()
            if self._thread is not None and self._thread is not threading.current_thread():
                self._thread.join(10)
            self.started = False

        def close(self):
            self.calls.append(("close",))
            self.closed = True
            self.camera = None

        # ------------------------------------------------------------ the camera loop
        def frame(self, sensor_ns: int, wall_ns: int | None = None, luma: int = 0) -> None:
            """One completed request through pre_callback and every started encoder."""
            assert self.started, "frame() on a camera that is not started"
            w, h = self.camera_config["main"]["size"]
            stride = self.camera_config["main"]["stride"]
            buf = np.full((h * 3 // 2, stride), 128, np.uint8)
            yy, xx = np.mgrid[0:h, 0:w]
            buf[:h, :w] = ((xx + yy + 3 * self.frames + luma) % 200 + 16).astype(np.uint8)
            fb = object()
            self.allocator.mapped_buffers[fb] = memoryview(buf.reshape(-1))
            md = {controls.SensorTimestamp: int(sensor_ns)}
            if wall_ns is not None:
                md[controls.FrameWallClock] = int(wall_ns)
            req = HarnessRequest(self, md, fb)
            with self.lock:
                if self.pre_callback:
                    self.pre_callback(req)
                for encoder in list(self._encoders):
                    if encoder.name in self.stream_map:
                        encoder.encode(encoder.name, req)
                req.release()
            self.frames += 1

    _cls = HarnessPicamera2
    return HarnessPicamera2
