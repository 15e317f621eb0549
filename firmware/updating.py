"""When and how the camera updates itself: the policy, the dock update, the offline
archive, and the boot trial that commits or rolls back a new slot.

The policy (``refusal``) is one pure function of a ``Conditions`` snapshot: an update
is fetched and installed only when the camera is docked, idle (not recording, no open
clip) and its evidence sync has finished, and the battery is at least
``update.min_battery_percent``. It is asked again between the install's steps, so
taking the camera out of the dock mid-install stops the install and leaves ``current``
as it was. Never while recording: an update competes with the evidence for CPU, disk
and power, and ends with a restart.

Verification is a parameter (``fetch`` / ``verify``): by default
``sync.firmware_fetch`` (python-tuf's ngclient against the pinned update root), then
``firmware.bundle``'s compatibility check again, then ``firmware.slots`` installs into
the inactive slot and re-verifies it from the medium. Every rejection is audited with
the verifier's named reason.

``BootTrial`` is the agent side of the boot counter: it counts the start before the
agent runs (``Slots.on_boot``), flushes the audit records that waited for the store,
runs the health check (``firmware.health``) once the camera has had a chance to show
a key frame, and reports pass or fail to the slots.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from drivers.battery import GaugeError
from drivers.battery import validate as validate_battery
from drivers.clock import Clock
from firmware import FIRMWARE_VERSION
from firmware.bundle import BundleError, BundlePolicy, check_compatible, hardware_id
from firmware.config import Config
from firmware.log import event
from firmware.slots import BootOutcome, Deferred, SlotError, Slots, from_config

log = logging.getLogger("bwv.update")

RESTART_REASON = "update_restart"  # agent.shutdown_requested after an install
Audit = Callable[..., Any]
Progress = Callable[[float, float], None]
#: (policy) -> a verified update (``.path``, ``.manifest``, optional ``audit_fields()``) or None
Fetch = Callable[[BundlePolicy], Any]


class UpdateRefused(Exception):
    """The camera is not in a state to install (recording, battery, not docked)."""

    def __init__(self, message: str, reason: str = "conditions") -> None:
        super().__init__(message)
        self.reason = reason


# ---------------------------------------------------------------------------- policy

@dataclass(frozen=True)
class Conditions:
    docked: bool
    recording: bool  # RECORDING, or a clip still open (being closed)
    sync_complete: bool
    battery_percent: float | None  # None: no gauge or it could not be read
    battery_problem: str = ""


def refusal(c: Conditions, *, min_battery_percent: int, need_dock: bool = True) -> str | None:
    """Why an update may not be installed now, or None when it may."""
    if c.recording:
        return "recording: never update while recording"
    if need_dock and not c.docked:
        return "not docked"
    if need_dock and not c.sync_complete:
        return "evidence sync has not finished"
    if c.battery_percent is None:
        return f"battery level unknown ({c.battery_problem or 'no fuel gauge'})"
    if c.battery_percent < min_battery_percent:
        return f"battery {c.battery_percent:.0f} % is below {min_battery_percent} %"
    return None


def conditions_of(agent, *, sync_complete: bool = False) -> Conditions:
    """A snapshot of the agent (its state under its lock; the gauge read outside it)."""
    with agent._lock:
        state = agent.state.value
        docked = state == "docked"
        recording = state == "recording" or agent._clip_id is not None
    pct, problem = None, ""
    if agent.battery is not None:
        try:
            pct = validate_battery(agent.battery.read()).percent
        except GaugeError as exc:
            problem = str(exc)
    return Conditions(docked=docked, recording=recording, sync_complete=sync_complete,
                      battery_percent=pct, battery_problem=problem)


def agent_audit(agent) -> Audit:
    """Audit through the agent's store worker (the store has one user at a time)."""
    def append(ev: str, **data: Any) -> None:
        agent._worker.call(lambda: agent._store.audit.append(ev, **data))
    return append


def agent_hardware(agent) -> str:
    """The bundle hardware id of the board the agent runs on."""
    from firmware.platform import PlatformInfo
    return hardware_id(PlatformInfo(agent.platform, agent.board, "agent"))


def agent_keys_dir(agent) -> Path | None:
    """Where the agent's key store keeps the pinned update root (a file key store)."""
    d = getattr(agent.keys, "directory", None)
    return Path(d) if d is not None else None


def running_version(slots: Slots) -> str:
    return slots.running_version() or FIRMWARE_VERSION


def _audit_fields(update: Any) -> dict:
    fields = getattr(update, "audit_fields", None)
    return fields() if callable(fields) else {}


def install_verified(update: Any, *, slots: Slots, hardware: str, audit: Audit | None,
                     progress: Progress | None = None,
                     keep_going: Callable[[], bool] | None = None) -> dict:
    """Install a bundle that passed verification: compatibility once more (hardware,
    newer than what runs, minimum version), then the slot installer."""
    m = update.manifest
    try:
        check_compatible(m, hardware=hardware, running_version=running_version(slots))
    except BundleError as exc:
        if audit:
            audit("update_rejected", reason=exc.reason, message=str(exc), version=m.version)
        raise
    if audit:
        audit("update_verified", version=m.version, hardware=list(m.hardware),
              min_version=m.min_version, **_audit_fields(update))
    result = slots.install(Path(update.path), m, audit=audit, progress=progress,
                           keep_going=keep_going)
    return {**result, **{k: v for k, v in _audit_fields(update).items() if k in ("target", "sha256", "source")}}


def _rejected(audit: Audit | None, exc: Exception) -> None:
    if audit:
        audit("update_rejected", reason=getattr(exc, "reason", type(exc).__name__),
              message=str(exc))
    event(log, "update rejected", level=logging.WARNING, reason=getattr(exc, "reason", ""),
          message=str(exc))


# ---------------------------------------------------------------------------- sources

def _paths(cfg: Config, keys_dir: Path | None) -> tuple[Path, Path, Path]:
    from sync.firmware_fetch import PINNED_ROOT_NAME
    md = Path(cfg.update.metadata_dir)
    return md, md.parent / "downloads", Path(keys_dir or cfg.device.keys_dir) / PINNED_ROOT_NAME


def repository_fetch(cfg: Config, clock: Clock, *, source: str | None = None,
                     keys_dir: Path | None = None, explicit: bool = False,
                     progress: Callable[[int, int], None] | None = None) -> Fetch:
    """TUF-verified fetch from ``update.source`` (dock share directory or http(s) URL)."""
    from sync.firmware_fetch import fetch_update
    md, downloads, root = _paths(cfg, keys_dir)
    src = source if source is not None else cfg.update.source

    def fetch(policy: BundlePolicy):
        return fetch_update(src, md, downloads, trusted_root=root, policy=policy, clock=clock,
                            explicit=explicit, progress=progress)
    return fetch


def archive_verify(archive: Path, cfg: Config, clock: Clock, *, keys_dir: Path | None = None,
                   progress: Callable[[int, int], None] | None = None) -> Fetch:
    """TUF-verified offline archive (USB stick, serial console's flash)."""
    from sync.firmware_fetch import verify_offline_archive
    md, downloads, root = _paths(cfg, keys_dir)

    def verify(policy: BundlePolicy):
        return verify_offline_archive(Path(archive), md, downloads, trusted_root=root,
                                      policy=policy, clock=clock, progress=progress)
    return verify


def _verification_errors() -> tuple[type[Exception], ...]:
    from sync.firmware_fetch import UpdateError
    return (UpdateError, BundleError)


def install_offline_archive(archive: Path, *, cfg: Config, clock: Clock | None = None,
                            hardware: str | None = None, agent=None, slots: Slots | None = None,
                            verify: Fetch | None = None, keys_dir: Path | None = None,
                            audit: Audit | None = None, progress: Progress | None = None,
                            verify_progress: Callable[[int, int], None] | None = None) -> dict:
    """The serial console's ``flash`` and ``bwv update --install ARCHIVE``: the same
    verification and install as a dock update. With a running ``agent`` the camera must
    not be recording and its battery must be at least ``update.min_battery_percent``
    (no dock needed: a technician is at the bench). Returns the install result; raises
    ``UpdateRefused``, ``sync.firmware_fetch.UpdateError``, ``BundleError`` or
    ``SlotError`` with a named reason, every one of them audited. ``clock`` and
    ``hardware`` default to the agent's."""
    if clock is None:
        if agent is None:
            raise TypeError("install_offline_archive needs a clock or an agent")
        clock = agent.clock
    if keys_dir is None and agent is not None:
        keys_dir = agent_keys_dir(agent)
    verify = verify or archive_verify(archive, cfg, clock, keys_dir=keys_dir, progress=verify_progress)
    return install_update(verify, cfg=cfg, clock=clock, hardware=hardware, agent=agent, slots=slots,
                          audit=audit, progress=progress, source=f"archive:{Path(archive).name}")


def install_update(verify: Fetch, *, cfg: Config, clock: Clock, hardware: str | None = None,
                   agent=None, slots: Slots | None = None, audit: Audit | None = None,
                   progress: Progress | None = None, source: str = "") -> dict:
    """Check the conditions, run ``verify`` (TUF) under this camera's policy, install.
    ``verify`` returning None means "nothing newer" (only a non-explicit fetch does)."""
    if hardware is None:
        if agent is None:
            raise TypeError("install_update needs the hardware id or an agent")
        hardware = agent_hardware(agent)
    slots = slots or from_config(cfg, clock)
    if audit is None:
        audit = agent_audit(agent) if agent is not None else Deferred(slots)
    keep_going = None
    if agent is not None:
        def why_not() -> str | None:
            return refusal(conditions_of(agent), min_battery_percent=cfg.update.min_battery_percent,
                           need_dock=False)
        why = why_not()
        if why:
            audit("update_refused", reason=why, source=source)
            raise UpdateRefused(f"not installing from {source}: {why}")
        keep_going = lambda: why_not() is None  # noqa: E731
    policy = BundlePolicy(hardware=hardware, running_version=running_version(slots))
    try:
        update = verify(policy)
    except _verification_errors() as exc:
        _rejected(audit, exc)
        raise
    if update is None:
        return {"status": "up_to_date", "version": policy.running_version}
    result = install_verified(update, slots=slots, hardware=hardware, audit=audit,
                              progress=progress, keep_going=keep_going)
    event(log, "update installed", **{k: result[k] for k in ("slot", "version", "previous_version")})
    return result


# ---------------------------------------------------------------------------- the dock

class DockUpdater:
    """After a docked camera's sync finishes: fetch, verify and install an update if the
    policy allows, then ask the service to restart into the new slot. Runs on the sync
    thread (inline in the deterministic simulator). A low battery in the dock (it is
    charging) is retried every ``retry_s`` while the camera stays docked."""

    def __init__(self, cfg: Config, *, agent, clock: Clock, slots: Slots, hardware: str,
                 fetch: Fetch | None = None, threaded: bool = False, retry_s: float = 60.0) -> None:
        self.cfg = cfg
        self.agent = agent
        self.clock = clock
        self.slots = slots
        self.hardware = hardware
        self.fetch = fetch or (repository_fetch(cfg, clock, keys_dir=agent_keys_dir(agent))
                               if cfg.update.source else None)
        self.threaded = threaded
        self.retry_s = retry_s
        self.results: list[dict] = []
        self._stop = threading.Event()

    def after_sync(self, report) -> None:
        """``SyncRunner``'s hook; ``report.status == "complete"`` means the evidence is off."""
        complete = getattr(report, "status", None) == "complete"
        while True:
            res = self.attempt(sync_complete=complete)
            if not (self.threaded and res["status"] == "deferred" and res.get("retry")):
                return
            if self._stop.wait(self.retry_s):
                return

    def close(self) -> None:
        self._stop.set()

    def _why_not(self, sync_complete: bool) -> str | None:
        return refusal(conditions_of(self.agent, sync_complete=sync_complete),
                       min_battery_percent=self.cfg.update.min_battery_percent)

    def attempt(self, *, sync_complete: bool) -> dict:
        res = self._attempt(sync_complete)
        self.results.append(res)
        event(log, "update check", **res)
        return res

    def _attempt(self, sync_complete: bool) -> dict:
        if self.fetch is None:
            return {"status": "disabled", "reason": "update.source is empty"}
        if not self.slots.exists():
            return {"status": "disabled", "reason": f"{self.slots.root} holds no slots"}
        why = self._why_not(sync_complete)
        if why:
            return {"status": "deferred", "reason": why, "retry": why.startswith("battery")}
        if self.slots.read_state()["trying"]:
            return {"status": "deferred", "reason": "a slot is on trial"}
        audit = agent_audit(self.agent)
        policy = BundlePolicy(hardware=self.hardware, running_version=running_version(self.slots))
        try:
            update = self.fetch(policy)
        except _verification_errors() as exc:
            _rejected(audit, exc)
            return {"status": "rejected", "reason": getattr(exc, "reason", ""), "message": str(exc)}
        if update is None:
            return {"status": "up_to_date", "version": policy.running_version}
        try:
            result = install_verified(update, slots=self.slots, hardware=self.hardware, audit=audit,
                                      keep_going=lambda: self._why_not(True) is None)
        except (SlotError, BundleError) as exc:
            return {"status": "failed", "reason": getattr(exc, "reason", ""), "message": str(exc)}
        if self._why_not(True) is None:  # still docked and idle: restart into the new slot
            self.agent.shutdown_requested = RESTART_REASON
        return {"status": "installed", **result}


# ---------------------------------------------------------------------------- the boot trial

class BootTrial:
    """This start of the agent, as the boot counter sees it. ``begin`` runs before the
    agent (counts the start, may roll back); ``poll`` runs on the ticker: it flushes
    waiting audit records once the store is open and runs the health check (on a
    thread: the slot probe starts a Python interpreter) once the camera has shown a key
    frame or ``update.health_timeout_seconds`` have passed."""

    def __init__(self, cfg: Config, slots: Slots | None, outcome: BootOutcome,
                 fault: str | None = None) -> None:
        self.cfg = cfg
        self.slots = slots
        self.outcome = outcome
        self.fault = fault  # the boot counter itself failed: audited, the camera still runs
        self.updater: DockUpdater | None = None
        self.console_port: str | None = None  # set by whoever starts the console service
        self.watchdog = None  # the service watchdog (firmware.watchdog), for its loop check
        self.report = None
        self.result: BootOutcome | None = None
        self._flushed = False
        self._started_ns: int | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def begin(cls, cfg: Config, clock: Clock) -> "BootTrial":
        slots = from_config(cfg, clock)
        if not slots.exists():
            return cls(cfg, None, BootOutcome("none"))
        try:
            outcome = slots.on_boot()
        except (SlotError, OSError) as exc:
            # A camera must record even when its update state is damaged.
            event(log, "boot counter failed", level=logging.ERROR, message=str(exc))
            return cls(cfg, slots, BootOutcome("error", messages=[str(exc)]), fault=str(exc))
        event(log, "boot slot", action=outcome.action, slot=outcome.slot, version=outcome.version,
              attempt=outcome.attempt, messages=outcome.messages)
        return cls(cfg, slots, outcome)

    @property
    def done(self) -> bool:
        return self.slots is None or (self._flushed and (not self.outcome.on_trial or self.result is not None))

    def poll(self, agent, watchdog=None) -> None:
        if self.done or getattr(agent, "_store", None) is None:
            return
        self.watchdog = watchdog or self.watchdog
        if not self._flushed:
            self._flushed = True
            audit = agent_audit(agent)
            if self.fault:
                audit("fault", kind="update_boot_counter", message=self.fault)
            try:
                self.slots.flush_audit(audit)
            except (SlotError, OSError) as exc:
                event(log, "pending update audit not flushed", level=logging.ERROR, message=str(exc))
        if not self.outcome.on_trial or self._thread is not None:
            return
        now = agent.clock.monotonic_ns()
        if self._started_ns is None:
            self._started_ns = now
        timed_out = now - self._started_ns >= self.cfg.update.health_timeout_seconds * 10**9
        if agent.keyframes_seen > 0 or timed_out:
            self._thread = threading.Thread(target=self.check, args=(agent,), name="bwv-health",
                                            daemon=True)
            self._thread.start()

    def check(self, agent) -> BootOutcome:
        """Run the health check now and report it (also called directly by tests)."""
        from firmware.health import run_checks
        o = self.outcome
        slot_dir = self.slots.slot_dir(o.slot) if o.slot else None
        self.report = run_checks(agent, self.cfg, slot_dir=slot_dir, version=o.version,
                                 console_port=self.console_port, watchdog=self.watchdog)
        self.result = self.slots.record_health(self.report.ok, self.report.problems,
                                               audit=agent_audit(agent))
        event(log, "health check", level=logging.INFO if self.report.ok else logging.ERROR,
              ok=self.report.ok, problems=self.report.problems, result=self.result.action)
        if self.result.action in ("trial", "rolled_back") and not conditions_of(agent).recording:
            # Another start (the trial's next attempt, or the restored slot) — never
            # while recording; then it happens at the next start the officer causes.
            agent.shutdown_requested = agent.shutdown_requested or RESTART_REASON
        return self.result

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def close(self) -> None:
        if self.updater is not None:
            self.updater.close()


def start_updates(cfg: Config, *, agent, clock: Clock, sync, threaded: bool) -> BootTrial:
    """``bwv run``'s hook, before ``agent.start()``: count this start (maybe roll back),
    and let a finished dock sync install an update. Poll the returned trial on the ticker."""
    trial = BootTrial.begin(cfg, clock)
    if trial.slots is not None:
        try:
            hardware = agent_hardware(agent)
        except BundleError as exc:
            event(log, "dock updates off", level=logging.WARNING, message=str(exc))
            return trial
        trial.updater = DockUpdater(cfg, agent=agent, clock=clock, slots=trial.slots,
                                    hardware=hardware, threaded=threaded)
        sync.after_sync = trial.updater.after_sync
    return trial
