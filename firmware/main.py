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
EXIT_RESTART = 75  # a clean stop to start again (a new firmware slot): Restart=on-failure


class StopRequest:
    """A signal turned into a request the loop checks between steps.

    Letting SIGINT raise KeyboardInterrupt wherever the main thread happens to be can
    leave a lock held or a hand-off half done, and the clean stop that seals the open
    clip then waits forever; a flag checked at a step boundary cannot."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason = "shutdown"

    def __call__(self, signum, _frame) -> None:
        self.reason = {signal.SIGTERM: "sigterm", signal.SIGINT: "sigint"}.get(signum, "signal")
        self.event.set()

    def install(self) -> StopRequest:
        """Route SIGTERM and SIGINT here (main thread only, as Python requires). A
        signal the parent set to be ignored stays ignored (nohup, the campaigns' workers,
        whose Ctrl-C belongs to the campaign)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            if signal.getsignal(signum) is not signal.SIG_IGN:
                signal.signal(signum, self)
        return self

    def requested(self) -> bool:
        return self.event.is_set()


def run(cfg: Config, *, platform: str, workdir: Path | None = None,
        max_seconds: float | None = None) -> int:
    """Run until a signal (or ``max_seconds``); returns the process exit status."""
    from firmware.platform import choose
    info = choose(platform)
    event(log, "platform", platform=info.platform, board=info.board_model, reason=info.reason)
    stop = StopRequest().install()
    from firmware.watchdog import Watchdog
    # Storage progresses once a segment (seconds); capture on every frame. GPS is not a
    # watched loop: a GPS outage is a fault to report, not a reason to restart.
    watchdog = Watchdog(loops=("capture", "storage"),
                        staleness_s={"capture": 5.0,
                                     "storage": max(30.0, 5 * cfg.camera.segment_seconds)})
    if info.platform == "sim":
        return _run_sim(cfg, watchdog, stop, workdir or Path("out/sim-run"), max_seconds)
    return _run_pi(cfg, info, watchdog, stop, max_seconds)


def _exit_status(reason: str) -> int:
    return {"battery_critical": EXIT_POWER_OFF, "update_restart": EXIT_RESTART,
            "reprovision": EXIT_RESTART}.get(reason, EXIT_OK)


def _tick_loop(agent, watchdog, stop: StopRequest, max_seconds: float | None, advance,
               trial=None) -> str:
    """The ticker: poll, feed the watchdog from real progress, stop on request."""
    started = time.monotonic()
    last_frames, last_acks = agent.frames_seen, agent.stats.segments_acked
    watchdog.ready("buffering")
    while not stop.event.is_set():
        advance()
        if agent.frames_seen != last_frames:
            last_frames = agent.frames_seen
            watchdog.progress("capture")
        # A storage fault the agent knows of (I/O errors: alarmed, retried) is no stuck
        # loop; a restart would only make it a restart loop with the camera dark.
        if agent.stats.segments_acked != last_acks or agent.state.value == "docked" \
                or getattr(agent, "storage_fault", False):
            last_acks = agent.stats.segments_acked
            watchdog.progress("storage")
        watchdog.tick()
        if trial is not None:
            trial.poll(agent, watchdog)  # update boot trial: audit, health check, commit
        if agent.shutdown_requested:
            return agent.shutdown_requested
        if max_seconds is not None and time.monotonic() - started >= max_seconds:
            return "max_seconds"
    return stop.reason


def _run_sim(cfg: Config, watchdog, stop: StopRequest, workdir: Path, max_seconds) -> int:
    from hw_sim.runner import Rig
    from firmware.updating import start_updates
    from firmware.console_server import start_console
    from firmware.provision import apply_at_start
    from drivers.clock import SystemClock
    apply_at_start(workdir / "keys", workdir / "store", cfg, SystemClock())  # a console provisioning
    rig = Rig(cfg, workdir, speed=1.0, threaded=True, gps=cfg.gps.enabled)
    trial = start_updates(cfg, agent=rig.agent, clock=rig.clock, sync=rig.sync, threaded=True)
    rig.start()
    console = start_console(cfg, rig.agent, sim_link_dir=workdir)  # technician end: WORKDIR/console
    trial.console_port = console.server.port if console is not None else None  # health check
    reason = "shutdown"
    try:
        reason = _tick_loop(rig.agent, watchdog, stop, max_seconds, lambda: rig.advance(0.01), trial)
    finally:
        if console is not None:
            console.close()
        trial.close()
        watchdog.stopping()
        rig.agent.shutdown_requested = rig.agent.shutdown_requested or reason
        rig.close()
        event(log, "stopped", reason=reason)
        if reason == "reprovision":
            apply_at_start(workdir / "keys", workdir / "store", cfg, rig.clock)
    return _exit_status(reason)


def _run_pi(cfg: Config, info, watchdog, stop: StopRequest, max_seconds) -> int:  # pragma: no cover - needs a Pi
    from firmware import pi_rig
    from firmware.agent import Agent
    from firmware.syncing import SyncRunner
    # The Pi's drivers (lgpio pins, picamera2 camera + microphone, GPS + chrony feed,
    # MAX17048 on I2C-1, chrony clock) from the config: firmware/pi_rig.py.
    from drivers.pi_clock import ChronyClock
    from firmware.provision import apply_at_start
    apply_at_start(Path(cfg.device.keys_dir), Path(cfg.device.store_dir), cfg, ChronyClock())
    dev = pi_rig.build(cfg)
    clock = dev.clock
    runner: list[SyncRunner] = []
    agent = Agent(cfg, clock=clock, camera=dev.camera, controls=dev.controls, keys=dev.keys,
                  threaded=True, dock=dev.dock, on_dock=lambda d: runner[0].on_dock(d),
                  trigger=dev.trigger, microphone=dev.microphone, gps=dev.gps,
                  battery=dev.battery, platform="pi", board=info.board_model)
    runner.append(SyncRunner(cfg, agent=agent, clock=clock, threaded=True))
    from firmware.updating import start_updates
    trial = start_updates(cfg, agent=agent, clock=clock, sync=runner[0], threaded=True)
    agent.start()
    from firmware.console_server import start_console
    console = start_console(cfg, agent)  # the USB gadget's serial port (console.port)
    trial.console_port = console.server.port if console is not None else None  # health check
    reason = "shutdown"

    def advance() -> None:
        due = agent.next_deadline_ns()
        wait = 0.01 if due is None else min(0.01, max(0.0, (due - clock.monotonic_ns()) / 1e9))
        stop.event.wait(wait)
        agent.poll()
        dev.poll()  # new GPS times to chrony
    try:
        reason = _tick_loop(agent, watchdog, stop, max_seconds, advance, trial)
    finally:
        if console is not None:
            console.close()
        trial.close()
        watchdog.stopping()
        runner[0].close()
        agent.stop(reason)
        if reason == "reprovision":
            apply_at_start(Path(cfg.device.keys_dir), Path(cfg.device.store_dir), cfg, clock)
        dev.close()
    return _exit_status(reason)

