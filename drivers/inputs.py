"""Level inputs: the dock's USB VBUS sense (high = docked) and the trigger input
(holster sensor / vehicle light bar, high = active).

A real ``gpiozero.DigitalInputDevice`` on whatever pin factory the platform uses
(lgpio on the Pi, MockFactory in hw_sim). Like the buttons, timing is not done here:
the agent debounces the level on its own clock (gpiozero's mock ignores bounce_time).
Callbacks arrive on gpiozero's thread on real pins, synchronously on mock pins.
"""
from __future__ import annotations

from typing import Callable

from gpiozero import DigitalInputDevice


class LevelInput:
    def __init__(self, pin: int, pin_factory=None) -> None:
        self.on_change: Callable[[bool], None] | None = None
        self._dev = DigitalInputDevice(pin, pull_up=False, pin_factory=pin_factory)
        self._dev.when_activated = lambda: self._edge(True)
        self._dev.when_deactivated = lambda: self._edge(False)

    def _edge(self, active: bool) -> None:
        cb = self.on_change
        if cb is not None:
            cb(active)

    @property
    def active(self) -> bool:
        return bool(self._dev.value)

    def close(self) -> None:
        self._dev.close()


DockSense = LevelInput
TriggerInput = LevelInput
