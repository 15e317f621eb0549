"""Storage faults: an I/O error never takes the camera down; it is an alarm that clears.

A card that returns EIO or ENOSPC (worn out, full, a loose contact) must not crash the
agent — a crash loop leaves the officer with a dark camera and no indication — and it
must not be silent either. Every store operation runs through :class:`StorageGuard` on
the store worker:

- a storage error (``OSError``, ``sqlite3.Error``) is caught, counted, and reported to
  the agent once per episode (``storage_error``); the agent raises the ``fault`` alarm
  and audits it when it can;
- an operation that *must* eventually happen (closing a clip, opening the clip the
  officer asked for, clearing the "recording" mark) is kept and run again, in order,
  when storage works again; segments are not retried (the gap they leave is stated in
  the clip's manifest);
- the first segment acknowledged after the episode reports ``storage_ok``, runs the
  retries and clears the alarm;
- while the store could not even be opened (``available`` is false) operations are
  skipped; the agent keeps trying to open it.

The guard never takes the agent lock: reports go through ``report`` (a deque append).
"""
from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

from drivers.clock import Clock, iso_utc
from firmware.log import event

log = logging.getLogger("bwv.storage")

#: What a failing card raises through the store (the OS, or SQLite about its files).
STORAGE_ERRORS: tuple[type[BaseException], ...] = (OSError, sqlite3.Error)


def without_store(fn: Callable[[], None]) -> Callable[[], None]:
    """Mark an operation that runs even while no store is open (it checks for itself)."""
    fn.without_store = True  # type: ignore[attr-defined]
    return fn


def must_happen(key: str, fn: Callable[[], None]) -> Callable[[], None]:
    """Mark an operation that is kept (under ``key``) while no store is open, and run
    once one is. (An operation that fails with a storage error keeps itself: see the
    agent's ops, which call ``retry_later`` with the same key.)"""
    fn.retry_key = key  # type: ignore[attr-defined]
    return fn


class StorageGuard:
    """Runs store operations for the worker; turns storage errors into a fault episode."""

    def __init__(self, report: Callable[[str, dict], None], available: Callable[[], bool],
                 clock: Clock) -> None:
        self._report = report
        self._available = available
        self._clock = clock
        self.failing = False
        self.failed_ops = 0  # in this episode
        self.total_failed_ops = 0
        self.skipped_ops = 0
        self.episodes = 0
        self._since_utc: int | None = None
        self._first_error: str | None = None
        self._retries: list[tuple[str, Callable[[], None]]] = []

    def run(self, fn: Callable[[], None]) -> None:
        if not getattr(fn, "without_store", False) and not self._available():
            key = getattr(fn, "retry_key", None)
            if key is not None:
                self.retry_later(key, fn)
            self.skipped_ops += 1
            return
        if self._retries and self._available():
            self._run_retries()  # older than fn: they go first, so order is kept
        try:
            fn()
        except STORAGE_ERRORS as exc:
            self.failed(exc)

    def failed(self, exc: BaseException) -> None:
        self.failed_ops += 1
        self.total_failed_ops += 1
        if self.failing:
            return
        self.failing = True
        self.episodes += 1
        self._since_utc = self._clock.utc_ns()
        self._first_error = f"{type(exc).__name__}: {exc}"
        event(log, "storage error", level=logging.ERROR, error=self._first_error)
        self._report("storage_error", {"error": self._first_error,
                                       "errno": getattr(exc, "errno", None)})

    def retry_later(self, key: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` again before the next operation (and until it succeeds). A later
        request with the same ``key`` replaces the earlier one (the newest intent wins)."""
        self.forget(key)
        self._retries.append((key, fn))

    def forget(self, key: str) -> None:
        self._retries = [(k, f) for k, f in self._retries if k != key]

    def pending(self) -> list[str]:
        return [k for k, _ in self._retries]

    def succeeded(self) -> None:
        """A segment was acknowledged: the storage works, the episode ends (the agent
        hears ``storage_ok`` and clears the alarm)."""
        if not self.failing:
            return
        self._run_retries()
        if self._retries:
            return  # something that must happen still fails: the episode goes on
        self.failing = False
        data = {"failed_ops": self.failed_ops, "first_error": self._first_error,
                "since_utc": iso_utc(self._since_utc) if self._since_utc else None,
                "still_pending": self.pending()}
        self.failed_ops = 0
        event(log, "storage recovered", **data)
        self._report("storage_ok", data)

    def _run_retries(self) -> None:
        """The kept operations, oldest first; one that fails again stays kept."""
        retries, self._retries = self._retries, []
        for i, (key, fn) in enumerate(retries):
            try:
                fn()
            except STORAGE_ERRORS as exc:
                # keep it and everything after it, in order (an op may have re-registered
                # itself meanwhile: the kept entry stands for it)
                rest = retries[i:]
                keys = {k for k, _ in rest}
                self._retries = rest + [r for r in self._retries if r[0] not in keys]
                self.failed_ops += 1
                self.total_failed_ops += 1
                event(log, "storage retry failed", level=logging.WARNING, op=key, error=str(exc))
                return
            except Exception:  # noqa: BLE001 — overtaken by events (e.g. recovery closed it)
                log.exception("storage retry %s dropped", key)
