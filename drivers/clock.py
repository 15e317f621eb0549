"""The clock interface: every timestamp in bwv comes from one injected Clock.

Two time lines are kept apart on purpose. ``monotonic_ns`` orders events and measures
durations (it never jumps); ``utc_ns`` says when something happened in the world and may
be wrong or corrected later. Evidence records both, plus the clock's sync state, so a
court can tell how much the wall time is worth.
"""
from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass
from typing import Protocol

#: Before this instant a wall clock is treated as "not set" (an RTC with a dead cell
#: boots at 1970 or at the kernel build date).
CLOCK_FLOOR_UTC_NS = 1_704_067_200 * 10**9  # 2024-01-01T00:00:00Z


@dataclass(frozen=True)
class ClockState:
    """How far the wall clock can be trusted, as recorded in every sealed segment."""

    synced: bool
    source: str  # "ntp", "rtc", "gps", "sim", "none"
    last_offset_ns: int | None = None  # last measured correction, if any

    def as_dict(self) -> dict:
        return {"synced": self.synced, "source": self.source,
                "last_offset_ns": self.last_offset_ns}


class Clock(Protocol):
    """What the rest of bwv may ask of time."""

    def monotonic_ns(self) -> int: ...
    def utc_ns(self) -> int: ...
    def state(self) -> ClockState: ...
    def sleep(self, seconds: float) -> None: ...
    def correct(self, offset_ns: int, source: str) -> bool: ...


class SystemClock:
    """The device's own clocks. Sync state comes from the caller (chrony/RTC drivers)."""

    def __init__(self, state: ClockState | None = None) -> None:
        self._state = state or ClockState(synced=False, source="none")

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()

    def utc_ns(self) -> int:
        return time.time_ns()

    def state(self) -> ClockState:
        now = self.utc_ns()
        if now < CLOCK_FLOOR_UTC_NS:
            return ClockState(synced=False, source="none", last_offset_ns=self._state.last_offset_ns)
        return self._state

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def correct(self, offset_ns: int, source: str) -> bool:
        """Step the wall clock by ``offset_ns`` if this process may (CAP_SYS_TIME);
        the offset and its source are recorded either way. Returns whether it stepped."""
        stepped = False
        try:
            time.clock_settime_ns(time.CLOCK_REALTIME, time.clock_gettime_ns(time.CLOCK_REALTIME)
                                  + offset_ns)
            stepped = True
        except (PermissionError, OSError):
            pass
        self._state = ClockState(synced=stepped or self._state.synced, source=source,
                                 last_offset_ns=offset_ns)
        return stepped


def iso_utc(ns: int, *, digits: int = 6) -> str:
    """ISO 8601 UTC with a ``Z``; ``digits`` fractional digits (0 for whole seconds)."""
    secs, rem = divmod(ns, 10**9)
    base = _dt.datetime.fromtimestamp(secs, tz=_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    if digits <= 0:
        return base + "Z"
    frac = f"{rem:09d}"[:digits]
    return f"{base}.{frac}Z"


def parse_iso_utc(text: str) -> int:
    """Inverse of :func:`iso_utc`; refuses anything that is not UTC with a ``Z``."""
    if not text.endswith("Z"):
        raise ValueError(f"timestamp {text!r} is not UTC (must end in 'Z')")
    body = text[:-1]
    frac_ns = 0
    if "." in body:
        body, frac = body.split(".", 1)
        if not frac.isdigit() or len(frac) > 9:
            raise ValueError(f"timestamp {text!r} has a bad fraction")
        frac_ns = int(frac.ljust(9, "0"))
    dt = _dt.datetime.strptime(body, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=_dt.timezone.utc)
    return int(dt.timestamp()) * 10**9 + frac_ns
