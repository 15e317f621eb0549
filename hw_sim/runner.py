"""Scripted scenarios: the whole camera on simulated hardware, on virtual time.

The runner owns the simulation loop. It advances the SimClock in 10 ms ticks, presses
and releases buttons by driving MockFactory pins at the scripted instants, lets the
agent poll its timers, and asks the simulated camera for a frame at every frame time.
The agent is the production agent; it is handed simulated drivers and cannot tell.
"""
from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyrage

from buffer.store import Ack
from drivers.controls import ControlPins, Controls
from drivers.keystore import FileKeyStore
from firmware.agent import Agent
from firmware.config import Config
from hw_sim.camera import SimCamera
from hw_sim.clock import SimClock
from hw_sim.gpio import SimGpio

SIM_DEVICE_ID = "BWV-SIM-0001"
TICK_NS = 10_000_000


class ScenarioError(Exception):
    """A scenario file that cannot be run; the message names the step."""


@dataclass(frozen=True)
class Step:
    at_s: float
    action: str  # press | release
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
    """Buffer 60 s, double-press, record 30 s, hold record 3 s to stop, run 3 s more."""
    steps = double_press(buffer_s) + hold(buffer_s + record_s, 3.3)
    return Scenario(steps, end_s=buffer_s + record_s + 3.3 + 3.0, name="default")


def load_scenario(path: Path) -> Scenario:
    """TOML: ``end = 96.0`` and ``[[step]]`` tables with ``at``, ``action``
    (double_press | hold | press | release), ``button`` and, for hold, ``seconds``."""
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


def write_agency_identity(directory: Path) -> str:
    """An age identity in age-keygen's file format (so the ``age`` CLI reads it)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ident = pyrage.x25519.Identity.generate()
    recipient = str(ident.to_public())
    path = directory / "agency.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"# bwv agency identity: keep in the back office, never on a camera\n"
                f"# public key: {recipient}\n{ident}\n")
    (directory / "agency.recipient").write_text(recipient + "\n")
    return recipient


@dataclass
class SimResult:
    store_dir: Path
    identity: Path
    acks: list[Ack] = field(default_factory=list)
    clip_ids: list[str] = field(default_factory=list)
    frames: int = 0
    press_mono_ns: list[int] = field(default_factory=list)
    agent: Agent | None = None


def run(cfg: Config, workdir: Path, scenario: Scenario, *, speed: float | None = None,
        threaded: bool = False, ack_log: Path | None = None,
        on_frame: Callable[[int, SimClock], None] | None = None,
        progress: Callable[[float, float], None] | None = None,
        device_id: str = SIM_DEVICE_ID) -> SimResult:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    keys, identity = ensure_keys(workdir, device_id)
    store_dir = workdir / "store"
    clock = SimClock(speed=speed)
    cam_cfg = cfg.camera
    keyint = max(1, round(cam_cfg.fps * cam_cfg.segment_seconds))
    camera = SimCamera(clock, width=cam_cfg.width, height=cam_cfg.height, fps=cam_cfg.fps,
                       bitrate=cam_cfg.bitrate, keyframe_interval=keyint,
                       serial=keys.device().device_id)
    c = cfg.controls
    pins = ControlPins(record_button=c.record_button, function_button=c.function_button,
                       green_led=c.green_led, red_led=c.red_led, haptic=c.haptic, buzzer=c.buzzer)
    gpio = SimGpio(clock, pins)
    controls = Controls(pins, pin_factory=gpio.factory)
    result = SimResult(store_dir=store_dir, identity=identity)
    ack_file = open(ack_log, "a", buffering=1) if ack_log else None

    def on_ack(ack: Ack) -> None:
        result.acks.append(ack)
        if ack_file:  # outside the store: what the camera promised, for crash tests
            ack_file.write(json.dumps({"seq": ack.seq, "hash": ack.hash, "clip_id": ack.clip_id}) + "\n")
            ack_file.flush()
            os.fsync(ack_file.fileno())

    agent = Agent(cfg, clock=clock, camera=camera, controls=controls, keys=keys,
                  store_dir=store_dir, threaded=threaded, on_ack=on_ack)
    result.agent = agent
    agent.start()
    t0 = clock.monotonic_ns()
    frame_ns = camera.frame_interval_ns
    end_ns = t0 + int(scenario.end_s * 1e9)
    steps = sorted(scenario.steps, key=lambda s: s.at_s)
    i = 0
    try:
        frame = 0
        while True:
            frame_at = t0 + frame * frame_ns
            if frame_at >= end_ns:
                break
            # Ticks and scripted button edges up to the next frame, in time order.
            now = clock.monotonic_ns()
            while True:
                next_step = t0 + int(steps[i].at_s * 1e9) if i < len(steps) else None
                tick = min(now + TICK_NS, frame_at)
                if next_step is not None and next_step <= tick:
                    clock.advance_to(max(next_step, now))
                    s = steps[i]
                    i += 1
                    if s.action == "press":
                        gpio.press(s.button)
                        if s.button == "record":
                            result.press_mono_ns.append(clock.monotonic_ns())
                    else:
                        gpio.release(s.button)
                else:
                    clock.advance_to(tick)
                agent.poll()
                now = clock.monotonic_ns()
                if now >= frame_at:
                    break
            camera.capture_next()
            frame += 1
            if on_frame:
                on_frame(frame, clock)
            if progress and frame % (cam_cfg.fps * 10) == 0:
                progress((frame_at - t0) / 1e9, scenario.end_s)
        result.frames = frame
    finally:
        agent.stop()
        controls.close()
        gpio.close()
        if ack_file:
            ack_file.close()
    clips = store_dir / "clips"
    result.clip_ids = sorted(p.name for p in clips.iterdir() if p.is_dir()) if clips.is_dir() else []
    return result
