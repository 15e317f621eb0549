"""The battery fuel gauge behind one small interface.

The Pi implementation (an I2C gauge such as the MAX17048) comes with the Pi drivers
issue; the simulator's gauge is ``hw_sim.battery.SimBattery``. A gauge can fail or
answer nonsense (a loose connector, a cold cell): ``read`` then raises
``GaugeError`` or returns a reading that ``validate`` refuses, and the agent keeps
recording and raises the fault — a camera must not stop because a gauge lies.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol


class GaugeError(Exception):
    """The gauge could not be read or answered something impossible."""


@dataclass(frozen=True)
class BatteryReading:
    percent: float
    voltage: float | None
    charging: bool


class Battery(Protocol):
    def read(self) -> BatteryReading: ...


def validate(r: BatteryReading) -> BatteryReading:
    """Refuse readings no real cell gives (so they never drive a shutdown)."""
    if not isinstance(r.percent, (int, float)) or math.isnan(r.percent) or not 0 <= r.percent <= 100:
        raise GaugeError(f"state of charge {r.percent!r} % is impossible")
    if r.voltage is not None and (math.isnan(r.voltage) or not 2.5 <= r.voltage <= 4.5):
        raise GaugeError(f"cell voltage {r.voltage!r} V is impossible for a Li-ion cell")
    return r
