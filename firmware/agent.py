"""The agent: the state machine that wires drivers → capture → buffer.

States: BUFFERING (segments go to the ring; the newest pre-record window is kept) and
RECORDING (segments go to the open clip). A double press of record starts a clip that
begins with the pre-record window; holding record stops it. The segment that is being
captured when recording stops still belongs to the clip (it ends at the next key
frame), so no frame between press and release of the hold is lost.

A note on threads. Three kinds of caller meet here:
- the camera's encoder thread calls ``on_packet`` (picamera2 on the Pi; the simulator's
  loop in hw_sim);
- gpiozero calls the button callbacks on its own thread on real pins (synchronously on
  mock pins, i.e. from the simulator's loop);
- a ticker calls ``poll`` (timers: holds, single presses, LED patterns).
All three take ``self._lock`` (re-entrant, because mock pins call back synchronously
from inside a locked section in tests). The lock guards the state machine only; the
slow work — sealing (encryption, hashing) and fsync — runs on the store worker thread,
which receives operations in order through a queue, so a state change and the segments
around it reach the store in the order they happened.
"""
from __future__ import annotations

import collections
import enum
import logging
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from buffer.store import Ack, Store, StoreFull, StoreSettings, init_store
from capture.overlay import BurnIn
from capture.segmenter import RawSegment, Segmenter
from drivers.camera import Camera, VideoPacket
from drivers.clock import Clock
from drivers.controls import Controls
from drivers.dock import DockSense
from drivers.keystore import KeyStore
from firmware.config import Config
from firmware.feedback import Feedback
from firmware.gestures import Gesture, GestureConfig, GestureRecognizer
from firmware.log import event

log = logging.getLogger("bwv.agent")
T = TypeVar("T")


class State(enum.Enum):
    STARTING = "starting"
    BUFFERING = "buffering"
    RECORDING = "recording"
    DOCKED = "docked"
    STOPPED = "stopped"


@dataclass
class AgentStats:
    segments_acked: int = 0
    segments_dropped: int = 0
    clips_closed: int = 0
    faults: int = 0


class StoreWorker:
    """Runs store operations in submission order, on its own thread or inline.

    ``submit`` never blocks, so it can be called under the agent lock and the queue order
    is the order in which the state machine decided things. Back-pressure is separate:
    the encoder thread calls ``throttle`` *after* releasing the lock, and waits there
    while more than ``max_pending`` segments (megabytes each) are queued. So a slow disk
    slows the encoder, never the record button.
    Inline mode (``threaded=False``) is for the deterministic simulator: the operation
    runs before ``submit`` returns, so virtual time and disk state never drift apart.
    """

    def __init__(self, threaded: bool, max_pending: int = 8) -> None:
        self.threaded = threaded
        self.max_pending = max_pending
        self._ops: collections.deque[tuple[Callable[[], None] | None, bool]] = collections.deque()
        self._heavy = 0
        self._running = 0
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name="bwv-store", daemon=True)
            self._thread.start()

    def submit(self, fn: Callable[[], None], *, heavy: bool = False) -> None:
        if not self.threaded:
            fn()
            return
        with self._cv:
            self._ops.append((fn, heavy))
            self._heavy += heavy
            self._cv.notify_all()

    def pending(self) -> int:
        """Operations queued or running (0 when idle)."""
        with self._cv:
            return len(self._ops) + self._running

    def throttle(self) -> None:
        """Wait while too many segments are queued (call without holding other locks)."""
        if self.threaded:
            with self._cv:
                while self._heavy > self.max_pending:
                    self._cv.wait()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._ops:
                    self._cv.wait()
                fn, heavy = self._ops.popleft()
                self._running = 1
            if fn is None:
                return
            try:
                fn()
            except Exception:  # noqa: BLE001 — the op reports its own errors; keep working
                log.exception("store operation failed")
            finally:
                with self._cv:
                    self._heavy -= heavy
                    self._running = 0
                    self._cv.notify_all()

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the worker (after everything queued before it) and return its
        result; for the sync thread, which must not touch the store concurrently."""
        if not self.threaded:
            return fn()
        done = threading.Event()
        box: dict = {}

        def op() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # noqa: BLE001 — re-raised in the caller
                box["error"] = exc
            finally:
                done.set()
        self.submit(op)
        done.wait()
        if "error" in box:
            raise box["error"]
        return box["value"]

    def drain_and_stop(self) -> None:
        if self._thread is not None:
            with self._cv:
                self._ops.append((None, False))
                self._cv.notify_all()
            self._thread.join()


class Agent:
    def __init__(self, cfg: Config, *, clock: Clock, camera: Camera, controls: Controls,
                 keys: KeyStore, store_dir: Path | None = None, threaded: bool = True,
                 on_ack: Callable[[Ack], None] | None = None, dock: DockSense | None = None,
                 on_dock: Callable[[bool], None] | None = None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.camera = camera
        self.controls = controls
        self.keys = keys
        self.store_dir = Path(store_dir or cfg.device.store_dir)
        self.on_ack = on_ack
        self.dock = dock
        self.on_dock = on_dock  # hand-off to sync (firmware.syncing wires it)
        self._dock_raw = False
        self._dock_raw_since = 0
        self._docked = False
        self.state = State.STARTING
        self.stats = AgentStats()
        self._lock = threading.RLock()
        self._worker = StoreWorker(threaded)
        self._store: Store | None = None
        self._clip_id: str | None = None
        self._stopping_clip = False
        self._stop_request_utc: int | None = None
        self.fault: str | None = None
        self._nearly_full_raised = False  # touched by the store worker only
        # Faults reported by the store worker; consumed by poll() under the lock, so the
        # worker never waits for the agent lock (the capture thread may hold it while it
        # waits for room in the worker's queue).
        self._faults: collections.deque[tuple[str, str | None]] = collections.deque()
        c = cfg.controls
        gcfg = GestureConfig(debounce_ms=c.debounce_ms, double_press_ms=c.double_press_ms,
                             hold_ms=c.hold_ms)
        self._record_btn = GestureRecognizer(gcfg)
        self._function_btn = GestureRecognizer(gcfg)
        self.feedback = Feedback(controls.set_output)
        info = camera.info
        self._frame_ns = 10**9 // info.fps
        self.segmenter = Segmenter(info, cfg.camera.segment_seconds, self._on_segment)

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Recover the store, then start the camera and listen to the buttons."""
        device = self.keys.device()
        init_store(self.store_dir, device)
        settings = StoreSettings(
            pre_record_ns=self.cfg.buffer.pre_record_seconds * 10**9,
            max_bytes=self.cfg.buffer.max_bytes,
            nearly_full_fraction=self.cfg.buffer.nearly_full_fraction,
            frame_interval_ns=self._frame_ns)
        # Opening runs recovery; it is done before anything is recorded, on this thread,
        # and the store is then handed over to the worker.
        self._store = Store.open(self.store_dir, self.keys, self.clock, settings,
                                 officer_id=self.cfg.device.officer_id)
        rec = self._store.recovery
        event(log, "store opened", store=str(self.store_dir), stream_id=self._store.stream_id,
              recovery=rec.as_dict())
        self.camera.set_overlay(BurnIn(device.device_id, self.cfg.device.officer_id,
                                       self.camera.info.width, self.camera.info.height))
        with self._lock:
            self.state = State.BUFFERING
            self.feedback.set_mode("buffering", self.clock.monotonic_ns())
        self.controls.on_record_edge = self._on_record_edge
        self.controls.on_function_edge = self._on_function_edge
        if self.dock is not None:
            self.dock.on_change = self._on_dock_edge
            if self.dock.docked:  # powered on in the dock
                self._on_dock_edge(True)
        self.camera.start(self.on_packet)
        event(log, "buffering", pre_record_s=self.cfg.buffer.pre_record_seconds)

    def stop(self) -> None:
        """Clean shutdown: the open segment and clip are sealed, nothing is lost."""
        self.controls.on_record_edge = None
        self.controls.on_function_edge = None
        if self.dock is not None:
            self.dock.on_change = None
        if self._docked and self.on_dock:
            self.on_dock(False)  # stop a running sync at its next object boundary
        self.camera.stop()  # delivers the encoder's last packets
        with self._lock:
            self.segmenter.flush()
            if self._clip_id is not None:
                self._close_clip("shutdown")
            self.state = State.STOPPED
        store = self._store
        self._worker.submit(lambda: store.close() if store else None)
        self._worker.drain_and_stop()
        event(log, "stopped", **self.stats.__dict__)

    # ------------------------------------------------------------------- inputs
    def on_packet(self, packet: VideoPacket) -> None:
        with self._lock:
            if self.state in (State.BUFFERING, State.RECORDING):
                self.segmenter.push(packet)
        self._worker.throttle()  # outside the lock: back-pressure never blocks a button

    def _on_record_edge(self, pressed: bool) -> None:
        with self._lock:
            for g in self._record_btn.edge(pressed, self.clock.monotonic_ns()):
                self._on_record_gesture(g)

    def _on_function_edge(self, pressed: bool) -> None:
        with self._lock:
            # Markers and stealth belong to the officer-interface issue; the gestures
            # are still recognised (debounced) so the button's state stays consistent.
            self._function_btn.edge(pressed, self.clock.monotonic_ns())

    def poll(self) -> None:
        """Timers: holds, single presses and LED/haptic patterns. Call every ≤ 10 ms."""
        with self._lock:
            now = self.clock.monotonic_ns()
            for g in self._record_btn.poll(now):
                self._on_record_gesture(g)
            self._function_btn.poll(now)
            if self._dock_raw != self._docked and \
                    now - self._dock_raw_since >= self.cfg.dock.debounce_ms * 1_000_000:
                self._set_docked(self._dock_raw, now)
            while self._faults:
                self._apply_fault(*self._faults.popleft())
            self.feedback.poll(now)

    def next_deadline_ns(self) -> int | None:
        """When ``poll`` next has something to do (a ticker may sleep until then)."""
        with self._lock:
            now = self.clock.monotonic_ns()
            candidates = [self._record_btn.next_deadline_ns(), self._function_btn.next_deadline_ns(),
                          self.feedback.next_change_ns(now)]
            if self._dock_raw != self._docked:
                candidates.append(self._dock_raw_since + self.cfg.dock.debounce_ms * 1_000_000)
            return min((c for c in candidates if c is not None), default=None)

    def _on_dock_edge(self, docked: bool) -> None:
        with self._lock:
            if docked != self._dock_raw:
                self._dock_raw = docked
                self._dock_raw_since = self.clock.monotonic_ns()

    def _set_docked(self, docked: bool, now: int) -> None:
        """Docking ends an open clip, stops buffering and hands over to sync."""
        self._docked = docked
        if docked:
            if self._clip_id is not None:
                self._stopping_clip = False
                self._stop_request_utc = self.clock.utc_ns()
                self.segmenter.flush()  # the partial segment starts on a key frame: it is kept
                self._close_clip("docked")
            else:
                self.segmenter.flush()
            self.state = State.DOCKED
            self.feedback.set_mode("docked", now)
            self._worker.submit(lambda: self._store.audit.append("dock"))
        else:
            self.state = State.BUFFERING
            self.feedback.set_mode("buffering", now)
            self._worker.submit(lambda: self._store.audit.append("undock"))
        event(log, "docked" if docked else "undocked")
        if self.on_dock:
            self.on_dock(docked)

    def sync_indication(self, status: str) -> None:
        """Sync reports "syncing", "complete" or a failure; shown only while docked."""
        with self._lock:
            if self.state is State.DOCKED:
                mode = {"syncing": "syncing", "complete": "docked"}.get(status, "sync_fault")
                self.feedback.set_mode(mode, self.clock.monotonic_ns())

    # ------------------------------------------------------------ state machine
    def _on_record_gesture(self, g: Gesture) -> None:
        now = self.clock.monotonic_ns()
        if g is Gesture.DOUBLE_PRESS and self.state is State.BUFFERING and self._clip_id is None:
            self._start_recording(now)
        elif g is Gesture.HOLD and self.state is State.RECORDING:
            self._request_stop(now)

    def _start_recording(self, now: int) -> None:
        clip_id = f"{self.keys.device().device_id}-{uuid.uuid4().hex[:12]}"
        utc = self.clock.utc_ns()
        self._clip_id = clip_id
        self.state = State.RECORDING
        self.feedback.set_mode("recording", now)
        self.feedback.cue("start", now)
        event(log, "recording", clip_id=clip_id)

        def op() -> None:
            try:
                self._store.open_clip(press_mono_ns=now, started_utc_ns=utc, clip_id=clip_id)
            except StoreFull as exc:
                self._faults.append((str(exc), clip_id))
                self._store.audit.append("fault", kind="storage_full", message=str(exc),
                                         refused_clip=clip_id)
        self._worker.submit(op)

    def _request_stop(self, now: int) -> None:
        # The segment being captured ends at the next key frame and still belongs to the
        # clip; the manifest is written right after it (see _on_segment).
        self._stopping_clip = True
        self._stop_request_utc = self.clock.utc_ns()
        self.state = State.BUFFERING
        self.feedback.set_mode("buffering", now)
        self.feedback.cue("stop", now)
        event(log, "stop requested", clip_id=self._clip_id)

    def _close_clip(self, reason: str) -> None:
        clip_id, stopped = self._clip_id, self._stop_request_utc
        self._clip_id, self._stopping_clip, self._stop_request_utc = None, False, None

        def op() -> None:
            if self._store.clip_is_open(clip_id):
                self._store.close_clip(clip_id, stop_reason=reason, stopped_utc_ns=stopped)
                self.stats.clips_closed += 1
                event(log, "clip closed", clip_id=clip_id, reason=reason)
        self._worker.submit(op)

    def _on_segment(self, raw: RawSegment) -> None:
        """Called by the segmenter (under the lock) with each finished segment."""
        clip_id = self._clip_id

        def op() -> None:
            # A clip the store closed for lack of room takes no more segments; they go
            # to the ring (which may itself be full: then they are dropped, alarmed).
            target = clip_id if clip_id and self._store.clip_is_open(clip_id) else None
            try:
                ack = self._store.append(raw, clip_id=target)
            except StoreFull as exc:
                self.stats.segments_dropped += 1
                if target is not None:
                    self._store.close_clip(target, stop_reason="storage_full",
                                           stopped_utc_ns=raw.start_utc_ns)
                    self.stats.clips_closed += 1
                self._store.audit.append("fault", kind="storage_full", message=str(exc),
                                         dropped_segment_start_utc_ns=raw.start_utc_ns,
                                         closed_clip=target)
                self._faults.append((str(exc), clip_id))
                return
            self.stats.segments_acked += 1
            if not self._nearly_full_raised and self._store.nearly_full():
                self._nearly_full_raised = True
                self._store.audit.append("alarm", kind="storage_nearly_full",
                                         pinned_bytes=self._store.pinned_bytes())
                event(log, "storage nearly full", level=logging.WARNING,
                      pinned_bytes=self._store.pinned_bytes())
            event(log, "segment", level=logging.DEBUG, seq=ack.seq, clip_id=clip_id, size=ack.size)
            if self.on_ack:
                self.on_ack(ack)
        self._worker.submit(op, heavy=True)
        if self._stopping_clip and clip_id is not None:
            self._close_clip("record_button_hold")

    def _apply_fault(self, message: str, clip_id: str | None) -> None:
        """Storage full: the clip is already closed by the store; stop recording, alarm."""
        now = self.clock.monotonic_ns()
        self.stats.faults += 1
        first = self.fault is None
        self.fault = message
        if clip_id is not None and self._clip_id == clip_id:
            self._clip_id, self._stopping_clip = None, False
            self.state = State.BUFFERING
        self.feedback.set_mode("store_full", now)
        if first:
            self.feedback.cue("fault", now)
        event(log, "storage full", level=logging.ERROR, message=message)
