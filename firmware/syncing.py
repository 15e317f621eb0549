"""Wiring between the agent's dock hand-off and the sync engine.

The agent says "docked" / "undocked"; this starts a sync (rounds with backoff while the
camera stays docked) or asks the running one to stop at its next object boundary. It
also builds the configured target. On the device the sync runs on its own thread; in
the deterministic simulator it runs inline, so a docked camera is synced before virtual
time moves on.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable

from drivers.clock import Clock
from firmware.config import Config
from firmware.log import event
from sync.access import StoreView
from sync.directory import DirectoryTarget
from sync.engine import (LOCAL_STORAGE_ERRORS, SyncEngine, SyncReport, SyncSettings,
                         run_with_retries)
from sync.state import SyncState
from sync.target import Target

log = logging.getLogger("bwv.sync")

SYNC_STATE_FILE = "sync.sqlite"


def make_target(cfg: Config, device_id: str, *, directory: Path | None = None) -> Target:
    """The evidence store named by ``[sync]``; ``directory`` overrides the dock share."""
    s = cfg.sync
    if s.target == "directory":
        return DirectoryTarget(Path(directory or s.directory))
    from sync.s3 import S3Target, load_credentials
    creds = load_credentials(Path(s.credentials_file) if s.credentials_file else None)
    return S3Target(s.s3_endpoint or None, s.s3_bucket, region=s.s3_region, credentials=creds,
                    verify_tls=s.verify_tls, ca_bundle=s.ca_bundle or None,
                    max_attempts=s.max_attempts)


def sync_settings(cfg: Config, device_id: str, *, correct_clock: bool | None = None) -> SyncSettings:
    s = cfg.sync
    return SyncSettings(device_id=device_id, verify=s.verify, evidential_first=s.evidential_first,
                        correct_clock=s.correct_clock if correct_clock is None else correct_clock,
                        clock_alarm_ns=s.clock_alarm_seconds * 10**9)


def _audit_quietly(view: StoreView, event_name: str, **data) -> None:
    try:
        view.audit(event_name, **data)
    except LOCAL_STORAGE_ERRORS as exc:
        event(log, "could not audit a sync fault", level=logging.ERROR, error=str(exc), **data)


class SyncRunner:
    """Owns the sync thread; the agent calls ``on_dock`` from its state machine."""

    def __init__(self, cfg: Config, *, agent, clock: Clock, threaded: bool,
                 target_factory=None) -> None:
        self.cfg = cfg
        self.agent = agent
        self.clock = clock
        self.threaded = threaded
        self._target_factory = target_factory or (lambda: make_target(cfg, agent.keys.device().device_id))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reports: list[SyncReport] = []
        # Called with each finished sync's report (firmware.updating: a docked, idle camera
        # whose evidence is off may update now). On the sync thread; inline in the simulator.
        self.after_sync: Callable[[SyncReport], None] | None = None

    def on_dock(self, docked: bool) -> None:
        if not docked:
            self._stop.set()
            return
        if self._thread is not None and self._thread.is_alive():
            return  # a dock bounce while syncing: the running sync continues
        self._stop = threading.Event()
        if self.threaded:
            self._thread = threading.Thread(target=self._run, name="bwv-sync", daemon=True)
            self._thread.start()
        else:
            self._run()

    def _run(self) -> None:
        agent = self.agent
        store = agent._store
        device_id = agent.keys.device().device_id
        view = StoreView(store, call=agent._worker.call)
        settings = sync_settings(self.cfg, device_id)
        agent.sync_indication("syncing")
        state = None
        try:
            try:
                # sync's memory is on the device's card: a card that fails a read fails
                # this round (a sync fault shown on the dock), never the agent
                state = SyncState(store.root / SYNC_STATE_FILE)
            except LOCAL_STORAGE_ERRORS as exc:
                report = SyncReport(status="fault", message=f"the device's storage failed: {exc}")
                _audit_quietly(view, "fault", kind="sync_local_storage", message=report.message)
            else:
                try:
                    target = self._target_factory()
                except Exception as exc:  # noqa: BLE001 — a bad target config is a sync fault, not a crash
                    report = SyncReport(status="fault", message=f"cannot reach the evidence store: {exc}")
                    view.audit("fault", kind="sync_target", message=str(exc))
                else:
                    report = run_with_retries(
                        lambda: SyncEngine(store=view, target=target, state=state, clock=self.clock,
                                           settings=settings, stop=self._stop),
                        stop=self._stop, max_rounds=self.cfg.sync.rounds,
                        base_s=0.05 if not self.threaded else 1.0)
            self.reports.append(report)
            a = report.assignment
            if a and a["officer_id"] != agent.officer_id:
                agent.assign(a["officer_id"], by=f"dock: {a['by']}")
            agent.sync_indication(report.status)
            event(log, "sync finished", status=report.status, released=report.released,
                  failures=report.failures, message=report.message)
        finally:
            if state is not None:
                state.close()
        if self.after_sync is not None and not self._stop.is_set():
            try:
                self.after_sync(report)
            except Exception:  # noqa: BLE001 — an update problem must not end the dock session
                log.exception("after-sync hook failed")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
