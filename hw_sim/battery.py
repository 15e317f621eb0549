"""A simulated fuel gauge: a Li-ion cell draining over a shift on the virtual clock.

The discharge follows a typical Li-ion curve (steep at both ends, flat in the middle)
and drains faster while recording. Faults on demand: ``nonsense`` (impossible values)
and ``unreadable`` (I2C errors), so the agent's handling of a lying gauge is tested.
"""
from __future__ import annotations

from drivers.battery import BatteryReading, GaugeError
from drivers.clock import Clock


def cell_voltage(percent: float) -> float:
    """Open-circuit voltage for a state of charge (piecewise-linear Li-ion curve)."""
    points = [(0, 3.0), (5, 3.45), (10, 3.6), (50, 3.75), (90, 4.05), (100, 4.2)]
    for (p0, v0), (p1, v1) in zip(points, points[1:]):
        if percent <= p1:
            return v0 + (v1 - v0) * (percent - p0) / (p1 - p0)
    return 4.2


class SimBattery:
    def __init__(self, clock: Clock, *, start_percent: float = 100.0,
                 hours_buffering: float = 14.0, hours_recording: float = 8.0) -> None:
        self.clock = clock
        self._percent = start_percent
        self._last = clock.monotonic_ns()
        self.recording = False  # set by the simulator from the agent's state
        self.charging = False
        self._drain_buffering = 100.0 / (hours_buffering * 3600e9)  # % per ns
        self._drain_recording = 100.0 / (hours_recording * 3600e9)
        self.fault: str | None = None  # None | "nonsense" | "unreadable"

    def _update(self) -> None:
        now = self.clock.monotonic_ns()
        dt, self._last = now - self._last, now
        if self.charging:
            self._percent = min(100.0, self._percent + dt * 100.0 / (2 * 3600e9))
        else:
            rate = self._drain_recording if self.recording else self._drain_buffering
            self._percent = max(0.0, self._percent - dt * rate)

    def set_percent(self, percent: float) -> None:
        self._update()
        self._percent = percent

    def read(self) -> BatteryReading:
        self._update()
        if self.fault == "unreadable":
            raise GaugeError("I2C read of the fuel gauge failed (EIO)")
        if self.fault == "nonsense":
            return BatteryReading(percent=255.0, voltage=0.0, charging=False)
        return BatteryReading(round(self._percent, 2), round(cell_voltage(self._percent), 3),
                              self.charging)
