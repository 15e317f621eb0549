"""`bwv run`: the camera's main loop, as systemd runs it on the device.

It picks the platform (``sim`` | ``pi`` | ``auto``), builds the drivers for it, starts
the agent with its store worker and sync thread, and then ticks: ``agent.poll()`` at
least every 10 ms (sooner when a timer is due), the systemd watchdog only while the
capture and storage loops make progress. SIGTERM/SIGINT stop it cleanly (the open
segment and clip are sealed); a critical battery stops it the same way and asks for a
power-off by its exit status.

On ``sim`` the simulated hardware runs in real time (``Rig`` at speed 1): the same
service can be exercised on a laptop. Nothing Pi-only is imported unless ``pi`` is
chosen.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

from firmware.config import Config
from firmware.log import event

log = logging.getLogger("bwv.main")

EXIT_OK = 0
EXIT_POWER_OFF = 3  # a clean stop that asks the unit to power the device off


class _Stop:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason = "shutdown"

    def __call__(self, signum, _frame) -> None:
        self.reason = {signal.SIGTERM: "sigterm", signal.SIGINT: "sigint"}.get(signum, "signal")
        self.event.set()


def run(cfg: Config, *, platform: str, workdir: Path | None = None,
        max_seconds: float | None = None) -> int:
    """Run until a signal (or ``max_seconds``); returns the process exit status."""
    from firmware.platform import choose
    info = choose(platform)
    event(log, "platform", platform=info.platform, board=info.board_model, reason=info.reason)
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    from firmware.watchdog import Watchdog
    # Storage progresses once a segment (seconds); capture on every frame. GPS is not a
    # watched loop: a GPS outage is a fault to report, not a reason to restart.
    watchdog = Watchdog(loops=("capture", "storage"),
                        staleness_s={"capture": 5.0,
                                     "storage": max(30.0, 5 * cfg.camera.segment_seconds)})
    if info.platform == "sim":
        return _run_sim(cfg, watchdog, stop, workdir or Path("out/sim-run"), max_seconds)
    return _run_pi(cfg, info, watchdog, stop, max_seconds)


def _tick_loop(agent, watchdog, stop: _Stop, max_seconds: float | None, advance) -> str:
    """The ticker: poll, feed the watchdog from real progress, stop on request."""
    started = time.monotonic()
    last_frames, last_acks = agent.frames_seen, agent.stats.segments_acked
    watchdog.ready("buffering")
    while not stop.event.is_set():
        advance()
        if agent.frames_seen != last_frames:
            last_frames = agent.frames_seen
            watchdog.progress("capture")
        if agent.stats.segments_acked != last_acks or agent.state.value == "docked":
            last_acks = agent.stats.segments_acked
            watchdog.progress("storage")
        watchdog.tick()
        if agent.shutdown_requested:
            return agent.shutdown_requested
        if max_seconds is not None and time.monotonic() - started >= max_seconds:
            return "max_seconds"
    return stop.reason


def _run_sim(cfg: Config, watchdog, stop: _Stop, workdir: Path, max_seconds) -> int:
    from hw_sim.runner import Rig
    rig = Rig(cfg, workdir, speed=1.0, threaded=True, gps=cfg.gps.enabled)
    rig.start()
    reason = "shutdown"
    try:
        reason = _tick_loop(rig.agent, watchdog, stop, max_seconds, lambda: rig.advance(0.01))
    finally:
        watchdog.stopping()
        rig.agent.shutdown_requested = rig.agent.shutdown_requested or reason
        rig.close()
        event(log, "stopped", reason=reason)
    return EXIT_POWER_OFF if reason == "battery_critical" else EXIT_OK


def _run_pi(cfg: Config, info, watchdog, stop: _Stop, max_seconds) -> int:  # pragma: no cover - needs a Pi
    from gpiozero.pins.lgpio import LGPIOFactory

    from drivers.controls import ControlPins, Controls
    from drivers.gps import GpsReader
    from drivers.inputs import DockSense, TriggerInput
    from drivers.keystore import FileKeyStore
    from drivers.max17048 import MAX17048
    from drivers.pi_camera import PiCamera
    from drivers.pi_clock import ChronyClock
    from firmware.agent import Agent
    from firmware.syncing import SyncRunner
    clock = ChronyClock()
    factory = LGPIOFactory()
    c = cfg.controls
    pins = ControlPins(record_button=c.record_button, function_button=c.function_button,
                       green_led=c.green_led, red_led=c.red_led, haptic=c.haptic, buzzer=c.buzzer)
    controls = Controls(pins, pin_factory=factory)
    dock = DockSense(cfg.dock.pin, pin_factory=factory)
    trigger = TriggerInput(c.trigger_pin, pin_factory=factory)
    keys = FileKeyStore(Path(cfg.device.keys_dir))
    cam = cfg.camera
    camera = PiCamera(clock, width=cam.width, height=cam.height, fps=cam.fps, bitrate=cam.bitrate,
                      segment_seconds=cam.segment_seconds, serial=keys.device().device_id)
    gps = GpsReader(cfg.gps.port, clock=clock, baudrate=cfg.gps.baudrate).start() \
        if cfg.gps.enabled else None
    battery = MAX17048(charging=lambda: dock.active)
    runner: list[SyncRunner] = []
    agent = Agent(cfg, clock=clock, camera=camera, controls=controls, keys=keys, threaded=True,
                  dock=dock, on_dock=lambda d: runner[0].on_dock(d), trigger=trigger, gps=gps,
                  battery=battery, platform="pi", board=info.board_model)
    runner.append(SyncRunner(cfg, agent=agent, clock=clock, threaded=True))
    agent.start()
    reason = "shutdown"

    def advance() -> None:
        due = agent.next_deadline_ns()
        wait = 0.01 if due is None else min(0.01, max(0.0, (due - clock.monotonic_ns()) / 1e9))
        stop.event.wait(wait)
        agent.poll()
    try:
        reason = _tick_loop(agent, watchdog, stop, max_seconds, advance)
    finally:
        watchdog.stopping()
        runner[0].close()
        agent.stop(reason)
        for dev in (dock, trigger, controls):
            dev.close()
        if gps is not None:
            gps.stop()
    return EXIT_POWER_OFF if reason == "battery_critical" else EXIT_OK

