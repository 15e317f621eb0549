"""Scripted scenarios: the whole camera on simulated hardware, on virtual time.

The runner owns the simulation loop. It advances the SimClock in 10 ms ticks, presses
and releases buttons by driving MockFactory pins at the scripted instants, lets the
agent poll its timers, and asks the simulated camera for a frame at every frame time.
The agent is the production agent; it is handed simulated drivers and cannot tell.
"""
from __future__ import annotations

import json
import os
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from buffer.agency import write_agency_identity
from buffer.store import Ack
from drivers.controls import ControlPins, Controls
from drivers.keystore import FileKeyStore
from firmware.agent import Agent
from firmware.config import SCHEMA, Config
from firmware.syncing import SyncRunner
from drivers.clock import ClockState
from drivers.inputs import DockSense, TriggerInput
from hw_sim.battery import SimBattery
from sync.directory import DirectoryTarget
from hw_sim.camera import SimCamera
from hw_sim.clock import SimClock
from hw_sim.gpio import SimGpio

if TYPE_CHECKING:
    from firmware.main import StopRequest

SIM_DEVICE_ID = "BWV-SIM-0001"
TICK_NS = 10_000_000


class ScenarioError(Exception):
    """A scenario file that cannot be run; the message names the step."""


@dataclass(frozen=True)
class Step:
    at_s: float
    action: str  # press | release | dock | undock
    button: str = "record"


@dataclass
class Scenario:
    steps: list[Step]
    end_s: float
    name: str = "custom"


def double_press(at_s: float, button: str = "record") -> list[Step]:
    """Two 120 ms presses 300 ms apart, as an officer's thumb does."""
    return [Step(at_s, "press", button), Step(at_s + 0.12, "release", button),
            Step(at_s + 0.30, "press", button), Step(at_s + 0.42, "release", button)]


def hold(at_s: float, seconds: float, button: str = "record") -> list[Step]:
    return [Step(at_s, "press", button), Step(at_s + seconds, "release", button)]


def default_scenario(buffer_s: float = 60.0, record_s: float = 30.0) -> Scenario:
    """Buffer 60 s, double-press, record 30 s, hold record 3 s to stop, then put the
    camera in its dock (it syncs to the dock share) and let it sit there 2 s."""
    stop_at = buffer_s + record_s
    dock_at = stop_at + 3.3 + 3.0
    steps = double_press(buffer_s) + hold(stop_at, 3.3) + [Step(dock_at, "dock")]
    return Scenario(steps, end_s=dock_at + 2.0, name="default")


def load_scenario(path: Path) -> Scenario:
    """TOML: ``end = 96.0`` and ``[[step]]`` tables with ``at``, ``action``
    (double_press | hold | press | release | dock | undock), ``button`` and, for hold,
    ``seconds``."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    steps: list[Step] = []
    for i, s in enumerate(raw.get("step", [])):
        try:
            at, action, button = float(s["at"]), s["action"], s.get("button", "record")
        except (KeyError, TypeError, ValueError):
            raise ScenarioError(f"{path}: step {i + 1} needs 'at' (seconds) and 'action'") from None
        if button not in ("record", "function"):
            raise ScenarioError(f"{path}: step {i + 1}: unknown button {button!r}")
        if action == "double_press":
            steps += double_press(at, button)
        elif action == "hold":
            steps += hold(at, float(s.get("seconds", 3.3)), button)
        elif action in ("press", "release"):
            steps.append(Step(at, action, button))
        elif action in ("dock", "undock"):
            steps.append(Step(at, action))
        else:
            raise ScenarioError(f"{path}: step {i + 1}: unknown action {action!r}")
    if "end" not in raw:
        raise ScenarioError(f"{path}: 'end' (seconds) is required")
    return Scenario(sorted(steps, key=lambda s: s.at_s), float(raw["end"]), Path(path).stem)


def ensure_keys(workdir: Path, device_id: str = SIM_DEVICE_ID) -> tuple[FileKeyStore, Path]:
    """The demo's two parties in one folder: the back office's agency identity
    (``agency/``, which a real camera never holds) and the device's keys (``keys/``),
    which hold only the agency's public recipient."""
    agency = workdir / "agency"
    identity_path = agency / "agency.key"
    if not identity_path.exists():
        write_agency_identity(agency)
    recipient = (agency / "agency.recipient").read_text().strip()
    keys_dir = workdir / "keys"
    if not (keys_dir / "device.key").exists():
        FileKeyStore.create(keys_dir, device_id, recipient)
    return FileKeyStore(keys_dir), identity_path


@dataclass
class SimResult:
    store_dir: Path
    identity: Path
    acks: list[Ack] = field(default_factory=list)
    clip_ids: list[str] = field(default_factory=list)
    frames: int = 0
    press_mono_ns: list[int] = field(default_factory=list)
    agent: Agent | None = None
    dock_share: Path | None = None
    stopped_by: str | None = None  # a signal ended the scenario early ("sigint", "sigterm")

    def clip_dir(self, clip_id: str) -> Path:
        """Where the clip is now: on the device, or (after a sync) on the dock share."""
        local = self.store_dir / "clips" / clip_id
        if local.is_dir() or self.dock_share is None:
            return local
        device = json.loads((self.store_dir / "device.json").read_text())["device_id"]
        return self.dock_share / "devices" / device / "clips" / clip_id


def recorded_clips(store_dir: Path) -> list[str]:
    """Every clip the store has made, oldest first, released or not."""
    import sqlite3
    index = store_dir / "index.sqlite"
    if not index.exists():
        return []
    db = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
    try:
        return [r[0] for r in db.execute("SELECT clip_id FROM clips ORDER BY started_utc_ns, rowid")]
    finally:
        db.close()


class Rig:
    """The whole camera on simulated hardware: clock, camera, pins, and the real agent.

    ``advance(seconds)`` runs virtual time forward in 10 ms ticks, delivering a frame at
    every frame time and letting the agent poll; ``press``/``release`` drive the mock
    pins at the current instant. Tests use it directly; ``run`` drives it from a
    scenario.
    """

    def __init__(self, cfg: Config, workdir: Path, *, speed: float | None = None,
                 threaded: bool = False, ack_log: Path | None = None,
                 device_id: str = SIM_DEVICE_ID, utc_start_ns: int | None = None,
                 dock_share: Path | None = None, target_factory=None, clock_set: bool = True,
                 battery_percent: float = 100.0, gps: bool = False,
                 microphone: bool | None = None, tick_ns: int = TICK_NS,
                 stop: StopRequest | None = None) -> None:
        self.workdir = Path(workdir)
        self.stop = stop  # checked at every tick: a signal ends advance_to_ns early
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tick_ns = tick_ns  # longest step without a poll (timers also wake it exactly)
        self.keys, identity = ensure_keys(self.workdir, device_id)
        if utc_start_ns is None:
            utc_start_ns = time.time_ns() // 10**9 * 10**9  # the simulated RTC, set from the host
        state = None if clock_set else ClockState(synced=False, source="none")
        self.clock = SimClock(speed=speed, utc_start_ns=utc_start_ns, state=state)
        cam = cfg.camera
        keyint = max(1, round(cam.fps * cam.segment_seconds))
        self.camera = SimCamera(self.clock, width=cam.width, height=cam.height, fps=cam.fps,
                                bitrate=cam.bitrate, keyframe_interval=keyint,
                                serial=self.keys.device().device_id)
        c = cfg.controls
        self.pins = ControlPins(record_button=c.record_button, function_button=c.function_button,
                                green_led=c.green_led, red_led=c.red_led, haptic=c.haptic,
                                buzzer=c.buzzer)
        self.gpio = SimGpio(self.clock, self.pins)
        self.controls = Controls(self.pins, pin_factory=self.gpio.factory)
        self.result = SimResult(store_dir=self.workdir / "store", identity=identity)
        self._ack_file = open(ack_log, "a", buffering=1) if ack_log else None
        self.dock_pin = cfg.dock.pin
        self.dock_sense = DockSense(cfg.dock.pin, pin_factory=self.gpio.factory)
        self.trigger_pin = cfg.controls.trigger_pin
        self.trigger_input = TriggerInput(cfg.controls.trigger_pin, pin_factory=self.gpio.factory)
        self.battery = SimBattery(self.clock, start_percent=battery_percent)
        # GPS: a simulated receiver writes NMEA into a real pty; the production reader
        # (pyserial + pynmea2, on its own thread) reads it through a udev-like symlink.
        self.gps_sim = self.gps = None
        if gps:
            from drivers.gps import GpsReader
            from hw_sim.gps import SimGpsReceiver
            self.gps_sim = SimGpsReceiver(self.clock, link_dir=self.workdir)
            self.gps = GpsReader(self.gps_sim.port, clock=self.clock, reopen_interval_s=0.2).start()
        self.mic = None
        if (cfg.audio.enabled if microphone is None else microphone):
            from hw_sim.microphone import SimMicrophone
            self.mic = SimMicrophone(self.clock, sample_rate=cfg.audio.sample_rate,
                                     sync_origin_mono_ns=self.clock.monotonic_ns(),
                                     bitrate=min(64_000, 2 * cfg.audio.sample_rate))
        self.agent = Agent(cfg, clock=self.clock, camera=self.camera, controls=self.controls,
                           keys=self.keys, store_dir=self.result.store_dir, threaded=threaded,
                           on_ack=self._on_ack, dock=self.dock_sense,
                           on_dock=lambda docked: self.sync.on_dock(docked),
                           trigger=self.trigger_input, microphone=self.mic, gps=self.gps,
                           battery=self.battery)
        # The simulator's dock share lives in the workdir unless the config names one.
        self.dock_share = Path(dock_share) if dock_share else (
            self.workdir / "dock-share" if cfg.sync.directory == SCHEMA["sync"]["directory"].default
            else Path(cfg.sync.directory))
        if target_factory is None and cfg.sync.target == "directory":
            share = self.dock_share
            share.mkdir(parents=True, exist_ok=True)  # the simulated dock's share is mounted
            target_factory = lambda: DirectoryTarget(share)  # noqa: E731
        self.sync = SyncRunner(cfg, agent=self.agent, clock=self.clock, threaded=threaded,
                               target_factory=target_factory)
        self.result.agent = self.agent
        self._next_frame_ns = 0
        self._closed = False

    def _on_ack(self, ack: Ack) -> None:
        self.result.acks.append(ack)
        if self._ack_file:  # outside the store: what the camera promised, for crash tests
            self._ack_file.write(json.dumps({"seq": ack.seq, "hash": ack.hash,
                                             "clip_id": ack.clip_id}) + "\n")
            self._ack_file.flush()
            os.fsync(self._ack_file.fileno())

    def start(self) -> "Rig":
        self.agent.start()
        self._next_frame_ns = self.clock.monotonic_ns()
        return self

    def now_s(self) -> float:
        return self.clock.monotonic_ns() / 1e9

    def press(self, button: str = "record") -> None:
        self.gpio.press(button)
        if button == "record":
            self.result.press_mono_ns.append(self.clock.monotonic_ns())
        self.agent.poll()

    def release(self, button: str = "record") -> None:
        self.gpio.release(button)
        self.agent.poll()

    def dock(self) -> None:
        """Put the camera in its dock: VBUS appears on the dock-detect pin."""
        self.gpio.set_input(self.dock_pin, True)
        self.agent.poll()

    def undock(self) -> None:
        self.gpio.set_input(self.dock_pin, False)
        self.agent.poll()

    def trigger(self, active: bool = True) -> None:
        """The holster sensor / light bar input."""
        self.gpio.set_input(self.trigger_pin, active)
        self.agent.poll()

    def advance_to_ns(self, target: int) -> None:
        """Run virtual time to ``target``: ticks, frames at their times, agent polls.
        Stops early when the agent asks to power down (battery critical) or a stop was
        requested (a signal, see ``run``)."""
        while True:
            if self.agent.shutdown_requested or (self.stop is not None and self.stop.requested()):
                return
            now = self.clock.monotonic_ns()
            if self.mic is not None:
                self.mic.deliver_until(now)
            if self.gps_sim is not None:
                self.gps_sim.emit_until(now)
            if now >= self._next_frame_ns and self._next_frame_ns <= target:
                self.battery.recording = self.agent.state.value == "recording"
                self.camera.capture_next()
                self.result.frames += 1
                self._next_frame_ns += self.camera.frame_interval_ns
                continue
            if now >= target:
                return
            due = self.agent.next_deadline_ns()
            step = min(now + self.tick_ns, self._next_frame_ns, target)
            if due is not None and now < due < step:
                step = due  # poll exactly when a hold, blink or buzz is due
            self.clock.advance_to(step)
            self.agent.poll()

    def advance(self, seconds: float) -> None:
        self.advance_to_ns(self.clock.monotonic_ns() + int(seconds * 1e9))

    def close(self) -> SimResult:
        if not self._closed:
            self._closed = True
            try:
                self.sync.close()  # a sync thread finishes its object and stops first
                self.agent.stop(self.agent.shutdown_requested or "shutdown")
            finally:
                self.dock_sense.close()
                self.trigger_input.close()
                if self.gps is not None:
                    self.gps.stop()
                    self.gps_sim.close()
                self.controls.close()
                self.gpio.close()
                if self._ack_file:
                    self._ack_file.close()
        self.result.clip_ids = recorded_clips(self.result.store_dir)
        self.result.dock_share = self.dock_share
        return self.result


def run(cfg: Config, workdir: Path, scenario: Scenario, *, speed: float | None = None,
        threaded: bool = False, ack_log: Path | None = None,
        progress: Callable[[float, float], None] | None = None,
        device_id: str = SIM_DEVICE_ID, utc_start_ns: int | None = None,
        on_start: Callable[[Rig], Callable[[], None] | None] | None = None,
        stop: StopRequest | None = None) -> SimResult:
    """Run a scenario from power-on to a clean stop at ``scenario.end_s``.

    The simulated RTC starts at the host's UTC unless told otherwise, so a store that a
    later run reopens keeps moving forward in wall time. ``on_start(rig)`` runs once
    the agent runs (e.g. starts the technician console) and may return a closer, called
    before the agent stops. A ``stop`` request (Ctrl-C on ``bwv sim``) ends the scenario
    at the next tick and stops the camera the same clean way, with its reason."""
    rig = Rig(cfg, workdir, speed=speed, threaded=threaded, ack_log=ack_log,
              device_id=device_id, utc_start_ns=utc_start_ns, gps=cfg.gps.enabled,
              stop=stop).start()
    t0 = rig.clock.monotonic_ns()
    closer = on_start(rig) if on_start is not None else None
    try:
        for step in sorted(scenario.steps, key=lambda s: s.at_s):
            if step.at_s > scenario.end_s:
                break
            rig.advance_to_ns(t0 + int(step.at_s * 1e9))
            if stop is not None and stop.requested():
                break
            if step.action in ("dock", "undock"):
                getattr(rig, step.action)()
            else:
                (rig.press if step.action == "press" else rig.release)(step.button)
            if progress:
                progress(step.at_s, scenario.end_s)
        rig.advance_to_ns(t0 + int(scenario.end_s * 1e9))
        if progress and not (stop is not None and stop.requested()):
            progress(scenario.end_s, scenario.end_s)
    finally:
        if closer is not None:
            closer()
        if stop is not None and stop.requested():
            rig.result.stopped_by = stop.reason
            rig.agent.shutdown_requested = rig.agent.shutdown_requested or stop.reason
        result = rig.close()
    return result
