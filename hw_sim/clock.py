"""A simulated clock that can run a 12-hour shift in seconds.

Virtual time only moves when the simulation advances it (``advance``/``advance_to``),
so a run is deterministic. ``speed`` ties virtual to real time: 1.0 is real time, 10.0
ten times faster, ``None`` as fast as the CPU allows.
"""
from __future__ import annotations

import threading
import time

from drivers.clock import ClockState

DEFAULT_EPOCH_UTC_NS = 1_796_083_200 * 10**9  # 2026-12-01T00:00:00Z
DEFAULT_BOOT_MONO_NS = 1_000 * 10**9  # a monotonic clock that is not zero at boot


class SimClock:
    """Deterministic virtual time with an optional real-time pace."""

    def __init__(self, *, utc_start_ns: int = DEFAULT_EPOCH_UTC_NS,
                 mono_start_ns: int = DEFAULT_BOOT_MONO_NS, speed: float | None = None,
                 state: ClockState | None = None) -> None:
        if speed is not None and speed <= 0:
            raise ValueError("speed must be positive or None")
        self._lock = threading.Lock()
        self._mono = mono_start_ns
        self._utc_offset = utc_start_ns - mono_start_ns
        self._speed = speed
        self._state = state or ClockState(synced=True, source="sim", last_offset_ns=0)
        self._real_anchor = time.monotonic()
        self._virtual_anchor = mono_start_ns

    def monotonic_ns(self) -> int:
        with self._lock:
            return self._mono

    def utc_ns(self) -> int:
        with self._lock:
            return self._mono + self._utc_offset

    def state(self) -> ClockState:
        return self._state

    def set_state(self, state: ClockState) -> None:
        self._state = state

    def step_utc(self, delta_ns: int) -> None:
        """Correct the wall clock (e.g. after a sync); monotonic time is untouched."""
        with self._lock:
            self._utc_offset += delta_ns

    def correct(self, offset_ns: int, source: str) -> bool:
        """What a sync does on a real device: step UTC, record source and offset."""
        self.step_utc(offset_ns)
        self._state = ClockState(synced=True, source=source, last_offset_ns=offset_ns)
        return True

    def advance(self, delta_ns: int) -> None:
        if delta_ns < 0:
            raise ValueError("time does not run backwards")
        self.advance_to(self.monotonic_ns() + delta_ns)

    def advance_to(self, mono_ns: int) -> None:
        """Move virtual time forward, pacing against real time when a speed is set."""
        with self._lock:
            if mono_ns < self._mono:
                raise ValueError("time does not run backwards")
            self._mono = mono_ns
        if self._speed is not None:
            due_real = self._real_anchor + (mono_ns - self._virtual_anchor) / 1e9 / self._speed
            wait = due_real - time.monotonic()
            if wait > 0:
                time.sleep(wait)

    def sleep(self, seconds: float) -> None:
        self.advance(int(seconds * 1e9))
