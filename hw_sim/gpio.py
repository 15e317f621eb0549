"""Simulated GPIO: gpiozero's MockFactory with pins that live on the virtual clock.

This module owns the simulator's side of the controls: a pin factory to hand to
:class:`drivers.controls.Controls` (``Controls(pins, pin_factory=sim.factory)``), a
finger to press the buttons, and a record of every output level change stamped with the
*virtual* monotonic time, so a scenario can assert "red went on 30 ms after the double
press" across a 12 h shift run in seconds.

Nothing above ``drivers/`` imports this; the agent only sees ``Controls``.

Example::

    clock = SimClock()
    sim = SimGpio(clock, ControlPins.DEFAULT)
    controls = Controls(ControlPins.DEFAULT, pin_factory=sim.factory)
    sim.press("record")      # on_record_edge(True) runs now, on this thread
    sim.close()              # closes devices still open, resets the factory

Mock pins do not apply ``bounce_time`` and call edge callbacks synchronously; that is why
``chatter`` exists: it feeds raw bounces to our own debounce code.
"""
from __future__ import annotations

import collections

from gpiozero.pins.mock import MockFactory, MockPin, PinState

from drivers.clock import Clock
from drivers.controls import BUTTONS, OUTPUTS, ControlPins


class VirtualTimePin(MockPin):
    """A MockPin whose timestamps (``states``, edge ticks) come from the factory's
    virtual clock, and which records ``history``: ``(mono_ns, level)`` for every change
    after creation."""

    def __init__(self, factory: SimPinFactory, info) -> None:
        # Bounded: a 12 h simulated shift toggles the LEDs ~80,000 times.
        self.history: collections.deque[tuple[int, bool]] = collections.deque(maxlen=50_000)
        super().__init__(factory, info)

    def _change_state(self, value):
        if self._state != value:
            mono_ns = self.factory.clock.monotonic_ns()
            t = mono_ns / 1e9
            self._state = value
            self.states.append(PinState(t - self._last_change, value))
            self._last_change = t
            self.history.append((mono_ns, bool(value)))
            return True
        return False

    def clear_states(self):
        self._last_change = self.factory.clock.monotonic_ns() / 1e9
        self.states = [PinState(0.0, self._state)]


class SimPinFactory(MockFactory):
    """MockFactory whose ``ticks`` (seconds) follow the virtual clock and whose pins are
    :class:`VirtualTimePin`."""

    def __init__(self, clock: Clock, revision: str | None = None) -> None:
        self.clock = clock
        super().__init__(revision=revision, pin_class=VirtualTimePin)

    def ticks(self) -> float:  # MockFactory's is a staticmethod on real time
        return self.clock.monotonic_ns() / 1e9


class SimGpio:
    """The simulator's GPIO: a pin factory plus hands on the buttons and eyes on outputs."""

    def __init__(self, clock: Clock, pins: ControlPins = ControlPins.DEFAULT) -> None:
        self.clock = clock
        self.pins = pins
        self.factory = SimPinFactory(clock)

    def _pin(self, name: str) -> VirtualTimePin:
        return self.factory.pin(self.pins.pin_for(name))

    def _button_pin(self, button: str) -> VirtualTimePin:
        if button not in BUTTONS:
            raise ValueError(f"unknown button {button!r}; expected one of {BUTTONS}")
        return self._pin(button)

    def _output_pin(self, name: str) -> VirtualTimePin:
        if name not in OUTPUTS:
            raise ValueError(f"unknown output {name!r}; expected one of {OUTPUTS}")
        return self._pin(name)

    def press(self, button: str) -> None:
        """Press ``button`` ("record"/"function"): active-low, so the pin is driven low."""
        self._button_pin(button).drive_low()

    def release(self, button: str) -> None:
        self._button_pin(button).drive_high()

    def chatter(self, button: str, levels: list[bool]) -> None:
        """Drive a burst of raw levels (True = pressed) at the current virtual instant,
        as contact bounce does. Repeated levels are no edge and are dropped, as on a pin."""
        pin = self._button_pin(button)
        for pressed in levels:
            if pressed:
                pin.drive_low()
            else:
                pin.drive_high()

    def set_input(self, pin: int, high: bool) -> None:
        """Drive any other input pin (e.g. the dock's VBUS sense) to a level."""
        p = self.factory.pin(pin)
        p.drive_high() if high else p.drive_low()

    def level(self, output_name: str) -> bool:
        """Current level of output ``output_name`` (True = on; outputs are active-high)."""
        return bool(self._output_pin(output_name).state)

    def history(self, output_name: str) -> list[tuple[int, bool]]:
        """Every level change of an output since its pin was created: (mono_ns, on)."""
        return list(self._output_pin(output_name).history)

    def close(self) -> None:
        """Close any device still holding a pin of this factory, then reset it."""
        devices = {id(d): d for refs in self.factory._reservations.values()
                   for r in refs if (d := r()) is not None}
        for device in devices.values():
            device.close()
        self.factory.reset()
        self.factory.close()
