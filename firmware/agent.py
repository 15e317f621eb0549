"""The agent: the state machine that wires drivers → capture → buffer (→ sync on dock).

States: BUFFERING (segments go to the ring; the newest pre-record window is kept),
RECORDING (segments go to the open clip) and DOCKED (no capture; sync runs). A double
press of record (or the trigger input) starts a clip that begins with the pre-record
window; holding record stops it. The segment that is being captured when recording
stops still belongs to the clip (it ends at the next key frame), so no frame between
press and release of the hold is lost. The function button adds event markers and
toggles mute and stealth; alarms (battery, storage, clock, GPS, faults) repeat their
patterns until the condition clears. The README has the officer's tables.

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
import dataclasses
import enum
import json
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
from drivers.battery import Battery, GaugeError
from drivers.battery import validate as validate_battery
from drivers.clock import iso_utc
from drivers.inputs import DockSense, LevelInput
from firmware import FIRMWARE_VERSION
from firmware.alarms import Alarms
from drivers.keystore import KeyStore
from firmware.config import Config
from firmware.feedback import Feedback
from firmware.gestures import Gesture, GestureConfig, GestureRecognizer
from firmware.log import event
from firmware.storage_fault import STORAGE_ERRORS, StorageGuard, must_happen, without_store

log = logging.getLogger("bwv.agent")
SHUTDOWN_CUE_NS = 2_600_000_000  # the battery-critical cue lasts 2.3 s
#: Store setting naming the clip being recorded ({"clip_id", "incident_id", "part"}),
#: written before a clip opens and cleared by every deliberate end of recording; still
#: set after an unclean stop means "resume" (see Agent._resume_after_unclean_stop).
RECORDING_MARK = "recording"
STORE_RETRY_NS = 5 * 10**9  # a store that failed to open is tried again this often
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

    def __init__(self, threaded: bool, max_pending: int = 8,
                 run: Callable[[Callable[[], None]], None] | None = None) -> None:
        self.threaded = threaded
        self.max_pending = max_pending
        # How an operation is run (the agent's StorageGuard: storage errors become a
        # fault report, never an exception in the caller); plain call by default.
        self._exec: Callable[[Callable[[], None]], None] = run or (lambda fn: fn())
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
            self._exec(fn)
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
                self._exec(fn)
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
        op.without_store = True  # type: ignore[attr-defined] # always runs: the caller waits
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
                 on_dock: Callable[[bool], None] | None = None, trigger: LevelInput | None = None,
                 microphone=None, gps=None, battery: Battery | None = None,
                 firmware_version: str = FIRMWARE_VERSION, platform: str = "sim",
                 board: str | None = None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.camera = camera
        self.controls = controls
        self.keys = keys
        self.store_dir = Path(store_dir or cfg.device.store_dir)
        self.on_ack = on_ack
        self.dock = dock
        self.on_dock = on_dock  # hand-off to sync (firmware.syncing wires it)
        self.trigger = trigger
        self.microphone = microphone
        self.gps = gps
        self.battery = battery
        self.firmware_version = firmware_version
        self.platform = platform
        self.board = board
        self.frames_seen = 0  # watchdog: the capture loop is alive
        self.keyframes_seen = 0  # update health check: the encoder makes key frames
        self._dock_raw = False
        self._dock_raw_since = 0
        self._docked = False
        self.state = State.STARTING
        self.stats = AgentStats()
        self._lock = threading.RLock()
        self._events: collections.deque[tuple[str, str, dict]] = collections.deque()
        self.storage = StorageGuard(lambda kind, data: self._events.append(("storage", kind, data)),
                                    available=lambda: self._store is not None, clock=clock)
        self._worker = StoreWorker(threaded, run=self.storage.run)
        self._store: Store | None = None
        self._store_retry_at: int | None = None  # set while the store could not be opened
        self._recorded_since_power_on = False
        self._fault_cue_owed = False  # a storage fault episode's cue has not played yet
        self._platform_settings: tuple[tuple[str, str], ...] = ()
        self._clip_id: str | None = None
        self._incident: tuple[str, int, int] | None = None  # (incident id, part, part start mono)
        self._stopping_clip = False
        self._stop_request_utc: int | None = None
        self.fault: str | None = None
        self.muted = False
        self.stealth = False
        self.officer_id = cfg.device.officer_id
        self.shutdown_requested: str | None = None  # set when the agent must power down
        self._sync_mode = "docked"
        self._nearly_full_raised = False  # touched by the store worker only
        # Faults reported by other threads (store worker, GPS reader); consumed by poll()
        # under the lock, so those threads never wait for the agent lock (the capture
        # thread may hold it while it hands work to the store worker).
        self._faults: collections.deque[tuple[str, str | None]] = collections.deque()
        c = cfg.controls
        gcfg = GestureConfig(debounce_ms=c.debounce_ms, double_press_ms=c.double_press_ms,
                             hold_ms=c.hold_ms)
        self._record_btn = GestureRecognizer(gcfg)
        self._function_btn = GestureRecognizer(gcfg)
        self.feedback = Feedback(controls.set_output)
        self.alarms = Alarms(cfg.alarms.repeat_seconds * 10**9)
        info = camera.info
        self._frame_ns = 10**9 // info.fps
        audio_info = getattr(microphone, "info", None) if cfg.audio.enabled else None
        self.segmenter = Segmenter(info, cfg.camera.segment_seconds, self._on_segment,
                                   **({"audio": audio_info} if audio_info is not None else {}))
        self._next_reminder: int | None = None
        self._mic_running = False
        self._down_since: dict[str, int] = {}
        self._shutdown_at: int | None = None
        # Every live cause of the "fault" alarm (battery gauge, GPS port, stuck button…):
        # the alarm is on while any remains, so one cause clearing never hides another.
        self._fault_sources: set[str] = set()
        self._next_battery = 0
        self._next_position = 0
        self._gps_had_fix = False
        self._next_gps_check = 0

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Recover the store, then start the camera and listen to the buttons.

        A store that cannot be opened because the storage fails (EIO, ENOSPC…) does not
        stop the camera from coming up: it comes up with the fault alarm and keeps
        trying to open the store (a crash here would only be a crash loop)."""
        self._store_settings = StoreSettings(
            pre_record_ns=self.cfg.buffer.pre_record_seconds * 10**9,
            max_bytes=self.cfg.buffer.max_bytes,
            nearly_full_fraction=self.cfg.buffer.nearly_full_fraction,
            frame_interval_ns=self._frame_ns,
            default_classification=self.cfg.sync.default_classification,
            marker_makes_evidential=self.cfg.sync.marker_makes_evidential)
        self._platform_settings: tuple[tuple[str, str], ...] = ()
        # Opening runs recovery; it is done before anything is recorded, on this thread,
        # and the store is then handed over to the worker.
        opened = self._open_store()
        now = self.clock.monotonic_ns()
        with self._lock:
            self.state = State.BUFFERING
            if opened is not None:
                self._apply_opened(opened, now, resume=False)
            else:
                self._set_overlay()
                self._store_retry_at = now + STORE_RETRY_NS
            self._refresh_mode(now)
            self._check_clock(now)
        self.controls.on_record_edge = self._on_record_edge
        self.controls.on_function_edge = self._on_function_edge
        if self.trigger is not None:
            self.trigger.on_change = self._on_trigger_edge
        if self.dock is not None:
            self.dock.on_change = self._on_dock_edge
            if self.dock.active:  # powered on in the dock
                self._on_dock_edge(True)
        if opened is not None and opened["resume"] is not None:
            with self._lock:
                self._resume(opened["resume"], now)
        if self.gps is not None and hasattr(self.gps, "on_fault"):
            self.gps.on_fault = lambda kind, detail="": self._events.append(("gps", kind, {"detail": str(detail)}))
        self.camera.start(self.on_packet)
        # The camera knows its sensor and encoder once started; every manifest says where
        # it was recorded. (Replacing the settings is safe: the worker only reads them.)
        info = self.camera.info
        with self._lock:  # segment headers too (RawSegment.info is taken at segment close)
            self.segmenter.info = info
        self._platform_settings = (
            ("platform", self.platform), ("board", self.board or "unknown"),
            ("sensor", info.sensor), ("encoder", info.encoder),
            ("firmware_version", self.firmware_version))
        store = self._store
        if store is not None:
            store.settings = dataclasses.replace(store.settings, platform=self._platform_settings)
        self._mic_running = False
        self._apply_mic()
        event(log, "buffering", pre_record_s=self.cfg.buffer.pre_record_seconds,
              officer_id=self.officer_id, stealth=self.stealth)

    def _open_store(self) -> dict | None:
        """Open (recover) the store and read what survives a reboot; None when the
        storage fails (reported to the StorageGuard). Runs on the starting thread, later
        on the store worker (retries); touches no state-machine state."""
        store = None
        try:
            init_store(self.store_dir, self.keys.device())
            store = Store.open(self.store_dir, self.keys, self.clock, self._store_settings,
                               officer_id=self.cfg.device.officer_id)
            # State that survives a reboot: the officer assignment and stealth.
            officer = store.get_setting("officer_id") or self.cfg.device.officer_id
            store.officer_id = officer
            stealth = store.get_setting("stealth") == "1"
            self._audit_power_on(store, officer, stealth)
            resume = self._resume_decision(store)
        except STORAGE_ERRORS as exc:
            if store is not None:
                store.abandon()  # no clean-shutdown mark: the next open recovers
            self.storage.failed(exc)
            return None
        if self._platform_settings:
            store.settings = dataclasses.replace(store.settings, platform=self._platform_settings)
        event(log, "store opened", store=str(self.store_dir), stream_id=store.stream_id,
              recovery=store.recovery.as_dict())
        self._store = store
        return {"officer_id": officer, "stealth": stealth, "resume": resume}

    def _apply_opened(self, opened: dict, now: int, *, resume: bool = True) -> None:
        """Under the lock: what the opened store says about this device."""
        self.officer_id = opened["officer_id"]
        self.stealth = opened["stealth"]
        self.feedback.stealth = self.stealth
        self._set_overlay()
        self._store_retry_at = None
        # (a store that opened late resumes only if the officer has not recorded since)
        if resume and opened["resume"] is not None and self._clip_id is None \
                and self.state is State.BUFFERING and not self._recorded_since_power_on:
            self._resume(opened["resume"], now)
        # docked while the card failed (no store: no sync): the dock's sync starts now
        # (campaign_readerrors: otherwise it waited for the next undock/dock)
        if resume and self._docked and self.on_dock:
            self.on_dock(True)

    def _reopen_store(self) -> None:
        """Worker side: try again to open a store that failed to open."""
        if self._store is not None:
            return
        opened = self._open_store()
        if opened is not None:
            self._events.append(("storage", "store_opened", opened))
            self.storage.succeeded()

    def _resume_decision(self, store: Store) -> dict | None:
        """Recording that a crash, watchdog reset or power cut interrupted goes on by
        itself: a new clip in the same incident, linked to the interrupted one (its
        manifest states the gap). A clean stop (SIGTERM, battery critical, a technician's
        tool) or a camera powered on in its dock does not resume. Returns the interrupted
        clip (``{}`` if the store no longer has it) or None: no resume."""
        raw = store.get_setting(RECORDING_MARK)
        if not raw:
            return None
        try:
            mark = json.loads(raw)
            mark = mark if isinstance(mark, dict) else {}
        except ValueError:
            mark = {}
        docked = self.dock is not None and self.dock.active
        if not store.recovery.unclean_shutdown or docked:
            store.set_setting(RECORDING_MARK, "")
            store.audit.append("notice", kind="recording_not_resumed", clip_id=mark.get("clip_id"),
                               reason="docked" if docked else "the last stop was clean")
            return None
        return store.interrupted_clip(mark.get("clip_id"), mark.get("incident_id")) or {}

    def _resume(self, interrupted: dict, now: int) -> None:
        event(log, "resuming recording after an unclean stop", level=logging.WARNING,
              interrupted=interrupted)
        self._start_recording(now, reason="resumed", resume=interrupted)

    def _mark_recording(self, clip_id: str, incident_id: str, part: int) -> None:
        """Worker side, before the clip opens: "the officer wants this recorded"."""
        self._store.set_setting(RECORDING_MARK, json.dumps(
            {"clip_id": clip_id, "incident_id": incident_id, "part": part}, sort_keys=True))

    def _clear_recording_mark(self) -> None:
        """Worker side: recording ended on purpose (stop, dock, shutdown, storage full)."""
        try:
            if self._store.get_setting(RECORDING_MARK):
                self._store.set_setting(RECORDING_MARK, "")
            self.storage.forget("mark")
        except STORAGE_ERRORS:
            self.storage.retry_later("mark", lambda: self._clear_recording_mark())
            raise

    def _audit_power_on(self, store: Store, officer_id: str, stealth: bool) -> None:
        import hashlib
        import json as _json
        cfg_hash = hashlib.sha256(_json.dumps(self.cfg.values, sort_keys=True).encode()).hexdigest()
        store.audit.append("power_on", firmware_version=self.firmware_version, config_sha256=cfg_hash,
                           officer_id=officer_id, stealth=stealth,
                           clock=self.clock.state().as_dict())
        last_fw, last_cfg = store.get_setting("firmware_version"), store.get_setting("config_sha256")
        if last_fw is not None and last_fw != self.firmware_version:
            store.audit.append("firmware_changed", previous=last_fw, current=self.firmware_version)
        if last_cfg is not None and last_cfg != cfg_hash:
            store.audit.append("config_changed", previous_sha256=last_cfg, current_sha256=cfg_hash,
                               source=self.cfg.source)
        store.set_setting("firmware_version", self.firmware_version)
        store.set_setting("config_sha256", cfg_hash)

    def _set_overlay(self) -> None:
        self.camera.set_overlay(BurnIn(self.keys.device().device_id, self.officer_id,
                                       self.camera.info.width, self.camera.info.height))

    def stop(self, reason: str = "shutdown") -> None:
        """Clean shutdown: the open segment and clip are sealed, nothing is lost."""
        self.controls.on_record_edge = None
        self.controls.on_function_edge = None
        for inp in (self.dock, self.trigger):
            if inp is not None:
                inp.on_change = None
        if self._docked and self.on_dock:
            self.on_dock(False)  # stop a running sync at its next object boundary
        if self._mic_running:
            self.microphone.stop()  # delivers what it captured, then closes
            self._mic_running = False
        if self._store is not None:  # a clean stop: nothing to resume at the next start
            self._worker.submit(self._clear_recording_mark)
        self.camera.stop()  # delivers the encoder's last packets
        with self._lock:
            self.segmenter.flush()
            if self._clip_id is not None:
                self._close_clip(reason)
            self.state = State.STOPPED
        def close() -> None:
            store = self._store
            if store:
                try:
                    store.audit.append("power_off", reason=reason)
                    store.close()
                except STORAGE_ERRORS:
                    store.abandon()  # no clean mark: the next start recovers
                    raise
        self._worker.submit(close)
        self._worker.drain_and_stop()
        event(log, "stopped", reason=reason, **self.stats.__dict__)

    # ------------------------------------------------------------------- inputs
    def on_packet(self, packet: VideoPacket) -> None:
        """Video from the camera and audio from the microphone (picamera2's one call)."""
        if not packet.audio:  # the watchdog's "capture" loop: a stuck camera must show,
            self.frames_seen += 1  # even while the microphone (its own thread) goes on
            if packet.keyframe:
                self.keyframes_seen += 1
        with self._lock:
            if self.state in (State.BUFFERING, State.RECORDING):
                if not packet.audio or self._audio_wanted():
                    self.segmenter.push(packet)
        self._worker.throttle()  # outside the lock: back-pressure never blocks a button

    def _mic_wanted(self) -> bool:
        """The microphone runs only while its audio can be kept (recording, or buffering
        with pre-record audio configured); muting drops packets but keeps it running, so
        unmuting is instant."""
        return (self.microphone is not None and self.cfg.audio.enabled and
                (self.state is State.RECORDING or
                 (self.state is State.BUFFERING and self.cfg.audio.in_pre_record)))

    def _apply_mic(self) -> None:
        """Start or stop the microphone — called *outside* the agent lock, because a
        stopping microphone delivers its last packets through on_packet."""
        want = self._mic_wanted()
        if want and not self._mic_running:
            self.microphone.start(self.on_packet)
            self._mic_running = True
        elif not want and self._mic_running:
            self._mic_running = False
            self.microphone.stop()

    def _audio_wanted(self) -> bool:
        """Audio is kept while recording (unless muted); in the pre-record window only
        when configured."""
        if not self.cfg.audio.enabled or self.muted:
            return False
        return self.state is State.RECORDING or self.cfg.audio.in_pre_record

    def _on_record_edge(self, pressed: bool) -> None:
        with self._lock:
            for g in self._record_btn.edge(pressed, self.clock.monotonic_ns()):
                self._on_record_gesture(g)
        self._apply_mic()

    def _on_function_edge(self, pressed: bool) -> None:
        with self._lock:
            now = self.clock.monotonic_ns()
            for g in self._function_btn.edge(pressed, now):
                self._on_function_gesture(g, now)
            self._push_hold_mute(now)
        self._apply_mic()

    def _on_trigger_edge(self, active: bool) -> None:
        """Holster / light bar: starts recording when enabled; never stops one."""
        with self._lock:
            if active and self.cfg.controls.trigger_enabled and self.state is State.BUFFERING \
                    and self._clip_id is None:
                self._start_recording(self.clock.monotonic_ns(), reason="trigger")
        self._apply_mic()

    def poll(self) -> None:
        """Timers: holds, single presses, patterns, alarms, battery, GPS. Call every ≤ 10 ms."""
        with self._lock:
            now = self.clock.monotonic_ns()
            for g in self._record_btn.poll(now):
                self._on_record_gesture(g)
            for g in self._function_btn.poll(now):
                self._on_function_gesture(g, now)
            self._push_hold_mute(now)
            if self._dock_raw != self._docked and \
                    now - self._dock_raw_since >= self.cfg.dock.debounce_ms * 1_000_000:
                self._set_docked(self._dock_raw, now)
            while self._faults:
                self._apply_fault(*self._faults.popleft())
            while self._events:
                self._apply_event(*self._events.popleft(), now=now)
            if self._store_retry_at is not None and now >= self._store_retry_at:
                self._store_retry_at = now + STORE_RETRY_NS
                self._worker.submit(without_store(lambda: self._reopen_store()))
            if self._next_reminder is not None and now >= self._next_reminder:
                self.feedback.cue("reminder", now)
                self._next_reminder = now + self.cfg.controls.reminder_seconds * 10**9
            if now >= self._next_battery:
                self._next_battery = now + self.cfg.power.check_seconds * 10**9
                self._check_battery(now)
                self._check_clock(now)  # time sync may come (or go) at any point
            if self.gps is not None and now >= self._next_gps_check:
                self._next_gps_check = now + 10**9  # NMEA comes at 1 Hz: once a second is enough
                self._check_gps(now)
            self._check_stuck(now)
            if self._shutdown_at is not None and now >= self._shutdown_at:
                self.shutdown_requested = "battery_critical"
            if not self.feedback.cue_playing(now):  # an alarm waits for a cue to end:
                for cue in self.alarms.due(now):  # two at once are one unreadable buzz
                    self.feedback.cue(cue, now)
                    self._fault_cue_owed &= cue != "fault"
                if self._fault_cue_owed and not self.feedback.cue_playing(now):
                    # a storage glitch that cleared before its alarm could play: the
                    # officer still feels it once (a segment may be missing)
                    self.feedback.cue("fault", now)
                    self._fault_cue_owed = False
            self.feedback.poll(now)
        self._apply_mic()

    def next_deadline_ns(self) -> int | None:
        """When ``poll`` next has something to do (a ticker may sleep until then)."""
        with self._lock:
            now = self.clock.monotonic_ns()
            candidates = [self._record_btn.next_deadline_ns(), self._function_btn.next_deadline_ns(),
                          self.feedback.next_change_ns(now), self._next_reminder,
                          self.alarms.next_deadline_ns(), self._next_battery]
            if self._dock_raw != self._docked:
                candidates.append(self._dock_raw_since + self.cfg.dock.debounce_ms * 1_000_000)
            if self._shutdown_at is not None:
                candidates.append(self._shutdown_at)
            return min((c for c in candidates if c is not None), default=None)

    # --------------------------------------------------------- officer features
    def _on_function_gesture(self, g: Gesture, now: int) -> None:
        latched = self.cfg.controls.mute_mode == "latched"
        if g is Gesture.SINGLE_PRESS:
            self._marker(now)
        elif g is Gesture.DOUBLE_PRESS:
            if latched:
                if self.state is State.RECORDING:
                    self._set_muted(not self.muted, now)
            else:
                self._set_stealth(not self.stealth, now)
        elif g is Gesture.HOLD and latched:
            self._set_stealth(not self.stealth, now)

    def _push_hold_mute(self, now: int) -> None:
        if self.cfg.controls.mute_mode == "push-hold" and self.state is State.RECORDING:
            held = self._function_btn.pressed
            if held != self.muted:
                self._set_muted(held, now)

    def _marker(self, now: int) -> None:
        utc, gps = self.clock.utc_ns(), self._gps_fix(now)
        clip_id = self._clip_id
        self.feedback.cue("marker", now)
        if clip_id is None:
            self._worker.submit(lambda: self._store.audit.append(
                "marker", clip_id=None, utc=iso_utc(utc), gps=gps, note="not recording"))
            return
        self._worker.submit(lambda: self._store.add_marker(clip_id, utc_ns=utc, mono_ns=now, gps=gps)
                            if self._store.clip_is_open(clip_id) else None)
        event(log, "marker", clip_id=clip_id)

    def _set_muted(self, muted: bool, now: int) -> None:
        self.muted = muted
        clip_id = self._clip_id
        self.feedback.cue("mute_on" if muted else "mute_off", now)
        self._refresh_mode(now)
        self._worker.submit(lambda: self._store.audit.append("mute", on=muted, clip_id=clip_id))

    def _set_stealth(self, on: bool, now: int) -> None:
        self.stealth = on
        self.feedback.stealth = on
        self.feedback.poll(now)
        self._worker.submit(lambda: (self._store.set_setting("stealth", "1" if on else "0"),
                                     self._store.audit.append("stealth", on=on)))
        event(log, "stealth", on=on)

    def assign(self, officer_id: str, *, by: str) -> None:
        """Officer assignment (provisioning, the dock, a technician): burned into frames
        from the next second and written in every later clip's manifest."""
        with self._lock:
            self.officer_id = officer_id
            self._set_overlay()

            def op() -> None:
                self._store.officer_id = officer_id
                self._store.set_setting("officer_id", officer_id)
                self._store.audit.append("assignment", officer_id=officer_id, by=by)
            self._worker.submit(op)

    def store_call(self, fn: Callable[[Store], T]) -> T:
        """Run ``fn(store)`` on the store worker and return its result: other threads
        (the technician console) never touch the store themselves."""
        return self._worker.call(lambda: fn(self._store))

    def hardware_call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` under the agent lock, so a console self-test switching outputs
        cannot interleave with the LED patterns the state machine drives."""
        with self._lock:
            return fn()

    def _gps_fix(self, now: int) -> dict | None:
        if self.gps is None:
            return None
        fix = self.gps.latest(self.cfg.gps.fix_max_age_s)
        return fix.as_dict(now) if fix is not None else None

    def _check_gps(self, now: int) -> None:
        fix = self._gps_fix(now)
        if fix is not None and not self._gps_had_fix:
            self._worker.submit(lambda: self._store.audit.append("gps_fix", acquired=True))
        elif fix is None and self._gps_had_fix:
            self._worker.submit(lambda: self._store.audit.append("gps_fix", acquired=False))
        self._gps_had_fix = fix is not None
        if self.cfg.gps.alarm_on_loss and self.state in (State.BUFFERING, State.RECORDING):
            self.alarms.set("gps_lost", fix is None, now)
        if fix is not None and now >= self._next_position:
            every = (self.cfg.gps.log_recording_s if self.state is State.RECORDING
                     else self.cfg.gps.log_buffering_s)
            self._next_position = now + every * 10**9
            clip_id = self._clip_id
            self._worker.submit(lambda: self._store.audit.append("position", clip_id=clip_id, **fix))
        if not self.clock.state().synced and hasattr(self.gps, "gps_time_utc_ns"):
            got = self.gps.gps_time_utc_ns()
            if got is not None:
                gps_utc, at_mono = got
                offset = gps_utc + (now - at_mono) - self.clock.utc_ns()
                self.clock.correct(offset, source="gps")
                self._worker.submit(lambda: self._store.audit.append(
                    "clock_offset", offset_ns=offset, source="gps", corrected=True))
                self._check_clock(now)

    def _set_fault_source(self, source: str, on: bool, now: int) -> bool:
        """Add or clear one cause of the fault alarm; True when that cause changed."""
        if on == (source in self._fault_sources):
            return False
        (self._fault_sources.add if on else self._fault_sources.discard)(source)
        self.alarms.set("fault", bool(self._fault_sources), now)
        self._refresh_mode(now)
        return True

    def _check_stuck(self, now: int) -> None:
        """A button held far longer than any gesture is stuck (debris, a damaged
        switch): a fault the technician must see. The camera keeps working."""
        limit = self.cfg.controls.stuck_seconds * 10**9
        for name, rec in (("record", self._record_btn), ("function", self._function_btn)):
            since = self._down_since.get(name)
            if rec.pressed and since is None:
                self._down_since[name] = now
            elif not rec.pressed and since is not None:
                del self._down_since[name]
                if self._set_fault_source(f"button_stuck:{name}", False, now):
                    self._worker.submit(lambda n=name: self._store.audit.append(
                        "notice", kind="button_released", button=n))
            elif since is not None and now - since >= limit:
                if self._set_fault_source(f"button_stuck:{name}", True, now):
                    self._worker.submit(lambda n=name: self._store.audit.append(
                        "fault", kind="button_stuck", button=n))
                    event(log, "button stuck", level=logging.ERROR, button=name)

    def _check_clock(self, now: int) -> None:
        if self.alarms.set("clock_not_set", not self.clock.state().synced, now):
            synced = self.clock.state().synced
            if self._store is not None:
                self._worker.submit(lambda: self._store.audit.append(
                    "alarm", kind="clock_not_set", on=not synced))

    def _check_battery(self, now: int) -> None:
        if self.battery is None:
            return
        try:
            r = validate_battery(self.battery.read())
        except GaugeError as exc:
            message = str(exc)  # bound now: the audit runs later, on the store worker
            if self._set_fault_source("battery_gauge", True, now):
                self._worker.submit(lambda: self._store.audit.append(
                    "fault", kind="battery_gauge", message=message))
            return
        self._set_fault_source("battery_gauge", False, now)
        pct = r.percent
        if self.alarms.set("battery_low", pct <= self.cfg.power.low_percent and not r.charging, now):
            self._worker.submit(lambda: self._store.audit.append(
                "alarm", kind="battery_low", on=pct <= self.cfg.power.low_percent, percent=pct))
        if pct <= self.cfg.power.critical_percent and not r.charging and self._shutdown_at is None:
            # Tell the officer first (the cue plays now), then close the clip and power
            # down once the cue has ended.
            self.alarms.set("battery_critical", True, now)
            self.feedback.cue("battery_critical", now)
            self._worker.submit(lambda: self._store.audit.append(
                "alarm", kind="battery_critical", percent=pct, action="close clip and shut down"))
            self._shutdown_at = now + SHUTDOWN_CUE_NS
            event(log, "battery critical: shutting down", level=logging.ERROR, percent=pct)

    def _apply_event(self, source: str, kind: str, data: dict, *, now: int) -> None:
        """Faults other threads reported (GPS port lost/back), applied under the lock."""
        if source == "storage":
            self._apply_storage_event(kind, data, now)
            return
        if kind == "nearly_full":  # already audited by the store worker
            self.alarms.set("store_nearly_full", True, now)
            return
        if kind == "space_freed":
            self.alarms.set("store_nearly_full", False, now)
            self.alarms.set("store_full", False, now)
            if self.fault is not None and "store full" in self.fault:
                self.fault = None
                self._worker.submit(lambda: self._store.audit.append("alarm", kind="storage_full",
                                                                     on=False))
            self._refresh_mode(now)
            return
        self._worker.submit(lambda: self._store.audit.append("fault" if "lost" in kind else "notice",
                                                             kind=kind, source=source, **data))
        if kind.endswith("lost"):
            self._set_fault_source(source, True, now)
        elif kind.endswith("back"):
            self._set_fault_source(source, False, now)

    def _apply_storage_event(self, kind: str, data: dict, now: int) -> None:
        """The StorageGuard's reports: the fault alarm on at the first storage error of
        an episode, off when a segment is stored again (docs/RELIABILITY.md)."""
        if kind == "store_opened":  # its storage_ok follows
            self._apply_opened(data, now)
            return
        failing = kind == "storage_error"
        if not self._set_fault_source("storage", failing, now):
            return
        if failing:
            self.stats.faults += 1
            self._fault_cue_owed = True
            self._worker.submit(lambda: self._store.audit.append("fault", kind="storage_io", **data))
        else:
            self._worker.submit(lambda: self._store.audit.append(
                "notice", kind="storage_recovered", **data))

    @property
    def storage_fault(self) -> bool:
        """True while storage errors are unresolved (the fault alarm is on for them)."""
        return "storage" in self._fault_sources or self._store is None

    def _refresh_mode(self, now: int) -> None:
        if self.state is State.DOCKED:
            mode = self._sync_mode
        elif self.state is State.RECORDING:
            mode = "muted" if self.muted else "recording"
        elif self.state is State.BUFFERING:
            mode = ("store_full" if self.fault else
                    "fault" if "fault" in self.alarms.active else "buffering")
        else:
            mode = None
        self.feedback.set_mode(mode, now)

    # ------------------------------------------------------------------- docking
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
                self._worker.submit(must_happen("mark", lambda: self._clear_recording_mark()))
                self.segmenter.flush()  # the partial segment starts on a key frame: it is kept
                self._close_clip("docked")
                self._end_recording_feedback()
            else:
                self.segmenter.flush()
            self.state = State.DOCKED
            self._sync_mode = "docked"
            self._worker.submit(lambda: self._store.audit.append("dock"))
        else:
            self.state = State.BUFFERING
            self._worker.submit(lambda: self._store.audit.append("undock"))
        self._refresh_mode(now)
        event(log, "docked" if docked else "undocked")
        if self.on_dock and (self._store is not None or not docked):  # no store: no sync
            self.on_dock(docked)

    def sync_indication(self, status: str) -> None:
        """Sync reports "syncing", "complete" or a failure; shown only while docked."""
        with self._lock:
            self._sync_mode = {"syncing": "syncing", "complete": "docked"}.get(status, "sync_fault")
            if self.state is State.DOCKED:
                self._refresh_mode(self.clock.monotonic_ns())
            if status == "complete":
                def op() -> None:  # space freed by the release: clear storage alarms
                    if not self._store.nearly_full():
                        self._nearly_full_raised = False
                        self._events.append(("store", "space_freed", {}))
                self._worker.submit(op)

    # ------------------------------------------------------------ state machine
    def _on_record_gesture(self, g: Gesture) -> None:
        now = self.clock.monotonic_ns()
        if g is Gesture.DOUBLE_PRESS and self.state is State.BUFFERING and self._clip_id is None:
            self._start_recording(now)
        elif g is Gesture.HOLD and self.state is State.RECORDING:
            self._request_stop(now)

    def _new_clip_id(self) -> str:
        return f"{self.keys.device().device_id}-{uuid.uuid4().hex[:12]}"

    def _start_recording(self, now: int, reason: str = "record_button", *,
                         resume: dict | None = None) -> None:
        """``resume`` (after an unclean stop): the interrupted clip's
        ``{"clip_id", "incident_id", "part"}`` (empty when the store no longer has it)."""
        if self.fault is not None and "store full" in self.fault:
            # Known full: refuse at once, loudly (the store would refuse it too).
            self.feedback.cue("fault", now)
            msg = self.fault
            self._worker.submit(lambda: self._store.audit.append(
                "fault", kind="storage_full", message=msg, refused_clip=None, reason=reason))
            return
        clip_id = self._new_clip_id()
        utc = self.clock.utc_ns()
        self._recorded_since_power_on = True
        previous = resume.get("clip_id") if resume else None
        incident = resume.get("incident_id", clip_id) if resume else clip_id
        part = resume.get("part", 0) + 1 if resume else 1
        self._clip_id = clip_id
        self._incident = (incident, part, now)
        self.state = State.RECORDING
        self.muted = False
        self._refresh_mode(now)
        self.feedback.cue("start", now)
        reminder = self.cfg.controls.reminder_seconds
        self._next_reminder = now + reminder * 10**9 if reminder else None
        self._next_position = now  # log a position at once
        event(log, "recording", clip_id=clip_id, reason=reason)

        def op() -> None:
            try:
                self._mark_recording(clip_id, incident, part)
                self._store.open_clip(press_mono_ns=now, started_utc_ns=utc, clip_id=clip_id,
                                      start_reason=reason, incident_id=incident, part=part,
                                      previous_clip=previous, resumed_from=previous,
                                      pre_record=resume is None)
            except StoreFull as exc:
                self._clear_recording_mark()
                self._faults.append((str(exc), clip_id))
                self._store.audit.append("fault", kind="storage_full", message=str(exc),
                                         refused_clip=clip_id)
            except STORAGE_ERRORS:
                self.storage.retry_later(f"open:{clip_id}", op)  # the officer asked for it
                raise
        self._worker.submit(must_happen(f"open:{clip_id}", op))

    def _end_recording_feedback(self) -> None:
        self._next_reminder = None
        if self.muted:
            self.muted = False  # mute ends with the recording
            self._worker.submit(lambda: self._store.audit.append("mute", on=False, clip_id=None,
                                                                 reason="recording ended"))

    def _request_stop(self, now: int) -> None:
        # The segment being captured ends at the next key frame and still belongs to the
        # clip; the manifest is written right after it (see _on_segment).
        self._stopping_clip = True
        self._stop_request_utc = self.clock.utc_ns()
        self._worker.submit(must_happen("mark", lambda: self._clear_recording_mark()))
        self.state = State.BUFFERING
        self._end_recording_feedback()
        self._refresh_mode(now)
        self.feedback.cue("stop", now)
        event(log, "stop requested", clip_id=self._clip_id)

    def _close_clip(self, reason: str) -> None:
        clip_id, stopped = self._clip_id, self._stop_request_utc
        self._clip_id, self._stopping_clip, self._stop_request_utc = None, False, None

        def op() -> None:
            try:
                if f"open:{clip_id}" in self.storage.pending():
                    # its opening waits for the storage: close it right after that
                    self.storage.retry_later(f"close:{clip_id}", op)
                    return
                if self._store.clip_is_open(clip_id):
                    self._store.close_clip(clip_id, stop_reason=reason, stopped_utc_ns=stopped)
                    self.stats.clips_closed += 1
                    event(log, "clip closed", clip_id=clip_id, reason=reason)
            except STORAGE_ERRORS:
                self.storage.retry_later(f"close:{clip_id}", op)
                raise
        self._worker.submit(must_happen(f"close:{clip_id}", op))

    def _split(self, now: int) -> None:
        """Close this part at a segment boundary and continue the incident in a new clip:
        the next segment is the new part's first, so no frame is lost or repeated."""
        incident, part, _ = self._incident
        previous = self._clip_id
        self._stop_request_utc = None
        self._close_clip("split")
        clip_id = self._new_clip_id()
        self._clip_id = clip_id
        self._incident = (incident, part + 1, now)
        utc = self.clock.utc_ns()
        event(log, "clip split", incident_id=incident, part=part + 1, previous=previous)

        def op() -> None:
            try:
                self._mark_recording(clip_id, incident, part + 1)
                self._store.open_clip(press_mono_ns=now, started_utc_ns=utc, clip_id=clip_id,
                                      start_reason="split", incident_id=incident, part=part + 1,
                                      previous_clip=previous, pre_record=False)
            except StoreFull as exc:
                self._clear_recording_mark()
                self._faults.append((str(exc), clip_id))
            except STORAGE_ERRORS:
                self.storage.retry_later(f"open:{clip_id}", op)
                raise
        self._worker.submit(must_happen(f"open:{clip_id}", op))

    def _on_segment(self, raw: RawSegment) -> None:
        """Called by the segmenter (under the lock) with each finished segment."""
        clip_id = self._clip_id
        gps = self._gps_fix(raw.end_mono_ns) if self.gps is not None else None

        @without_store
        def op() -> None:
            if self._store is None:  # the storage failed before the store could open
                self.stats.segments_dropped += 1
                return
            # A clip the store closed for lack of room takes no more segments; they go
            # to the ring (which may itself be full: then they are dropped, alarmed).
            target = clip_id if clip_id and self._store.clip_is_open(clip_id) else None
            try:
                ack = self._store.append(raw, clip_id=target, gps=gps)
            except STORAGE_ERRORS:
                self.stats.segments_dropped += 1  # lost: the clip's manifest states the gap
                raise
            except StoreFull as exc:
                self.stats.segments_dropped += 1
                if target is not None:
                    self._clear_recording_mark()
                    self._store.close_clip(target, stop_reason="storage_full",
                                           stopped_utc_ns=raw.start_utc_ns)
                    self.stats.clips_closed += 1
                self._store.audit.append("fault", kind="storage_full", message=str(exc),
                                         dropped_segment_start_utc_ns=raw.start_utc_ns,
                                         closed_clip=target)
                self._faults.append((str(exc), clip_id))
                return
            self.stats.segments_acked += 1
            self.storage.succeeded()  # ends a storage fault episode, if one was on
            if not self._nearly_full_raised and self._store.nearly_full():
                self._nearly_full_raised = True
                self._store.audit.append("alarm", kind="storage_nearly_full",
                                         pinned_bytes=self._store.pinned_bytes())
                self._events.append(("store", "nearly_full", {}))
                event(log, "storage nearly full", level=logging.WARNING,
                      pinned_bytes=self._store.pinned_bytes())
            event(log, "segment", level=logging.DEBUG, seq=ack.seq, clip_id=clip_id, size=ack.size)
            if self.on_ack:
                self.on_ack(ack)
        self._worker.submit(op, heavy=True)
        if self._stopping_clip and clip_id is not None:
            self._close_clip("record_button_hold")
        elif clip_id is not None and self._incident is not None:
            max_ns = int(self.cfg.recording.max_clip_hours * 3600 * 1e9)
            if raw.end_mono_ns - self._incident[2] >= max_ns:
                self._split(raw.end_mono_ns)

    def _apply_fault(self, message: str, clip_id: str | None) -> None:
        """Storage full: the clip is already closed by the store; stop recording, alarm."""
        now = self.clock.monotonic_ns()
        self.stats.faults += 1
        self.fault = message
        if clip_id is not None and self._clip_id == clip_id:
            self._clip_id, self._stopping_clip = None, False
            self.state = State.BUFFERING
            self._end_recording_feedback()
        self.alarms.set("store_full", True, now)
        self._refresh_mode(now)
        event(log, "storage full", level=logging.ERROR, message=message)
