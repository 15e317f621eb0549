"""The officer's physical interface: two buttons in, two LEDs, a haptic motor and a buzzer out.

This driver owns the GPIO I/O only: raw button edges in, output levels out, through
gpiozero devices, so the same code runs on any gpiozero pin factory (lgpio on a Pi 5,
the default factory elsewhere, ``MockFactory`` in ``hw_sim``). It does *no* timing:
debounce, double press and hold live in :mod:`firmware.gestures` on the injected clock,
because gpiozero's own ``bounce_time`` is ignored by mock pins and its ``when_held``
runs on real time in a thread (useless under the simulator's accelerated clock). For the
same reason buttons are created with ``bounce_time=None`` and no ``when_held``.

Example::

    controls = Controls(ControlPins.DEFAULT)          # pins come from config
    controls.on_record_edge = lambda pressed: ...     # True = pressed
    controls.set_output("red", True)
    controls.close()

A note on threads
-----------------
``on_record_edge`` / ``on_function_edge`` are called from whatever thread the pin
factory reports edges on. On real pins (lgpio, rpigpio, native) that is gpiozero's
event thread, never the agent's own thread, and the two buttons may report
concurrently with each other and with the agent loop. On ``MockFactory`` pins (hw_sim,
tests) the callback runs synchronously inside ``press``/``release``, on the caller's
thread. So the agent must take its own lock in these callbacks (and in its loop) and
keep them short: read the clock, hand the edge to the gesture recogniser, return. The
callback attributes are read at the moment of each edge, so the agent may set them
after construction; a plain attribute assignment is atomic in CPython, no lock needed
for that. ``set_output`` may be called from any one thread at a time (gpiozero output
devices lock internally).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import ClassVar

from gpiozero import LED, Button, Buzzer, DigitalOutputDevice

#: Button names accepted by :meth:`Controls.is_pressed` (and hw_sim's press/release).
BUTTONS: tuple[str, ...] = ("record", "function")
#: Output names accepted by :meth:`Controls.set_output`.
OUTPUTS: tuple[str, ...] = ("green", "red", "haptic", "buzzer")

_FIELD_FOR = {
    "record": "record_button", "function": "function_button",
    "green": "green_led", "red": "red_led", "haptic": "haptic", "buzzer": "buzzer",
}


@dataclass(frozen=True)
class ControlPins:
    """BCM GPIO numbers of the controls. These come from configuration; only this class
    holds defaults (:attr:`DEFAULT`: record 17, function 27, green LED 22, red LED 23,
    haptic 24, buzzer 25). Buttons are wired to ground (active-low, internal pull-up);
    outputs are active-high."""

    DEFAULT: ClassVar[ControlPins]

    record_button: int
    function_button: int
    green_led: int
    red_led: int
    haptic: int
    buzzer: int

    def __post_init__(self) -> None:
        seen: dict[int, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 53:
                raise ValueError(f"{f.name} must be a BCM GPIO number 0..53, got {value!r}")
            if value in seen:
                raise ValueError(f"{f.name} and {seen[value]} both use GPIO{value}")
            seen[value] = f.name

    def pin_for(self, name: str) -> int:
        """GPIO number for a button ("record", "function") or output ("green", ...)."""
        try:
            return getattr(self, _FIELD_FOR[name])
        except KeyError:
            raise ValueError(f"unknown control {name!r}; expected one of "
                             f"{BUTTONS + OUTPUTS}") from None


ControlPins.DEFAULT = ControlPins(record_button=17, function_button=27, green_led=22,
                                  red_led=23, haptic=24, buzzer=25)


class Controls:
    """Both buttons and all outputs behind one small class (see the module docstring)."""

    def __init__(self, pins: ControlPins, pin_factory=None) -> None:
        self.pins = pins
        self.on_record_edge: Callable[[bool], None] | None = None
        self.on_function_edge: Callable[[bool], None] | None = None
        self._buttons: dict[str, Button] = {}
        self._outputs: dict[str, DigitalOutputDevice] = {}
        try:
            for name in BUTTONS:
                self._buttons[name] = Button(pins.pin_for(name), pull_up=True,
                                             bounce_time=None, pin_factory=pin_factory)
            self._outputs["green"] = LED(pins.green_led, pin_factory=pin_factory)
            self._outputs["red"] = LED(pins.red_led, pin_factory=pin_factory)
            self._outputs["haptic"] = DigitalOutputDevice(pins.haptic, pin_factory=pin_factory)
            self._outputs["buzzer"] = Buzzer(pins.buzzer, pin_factory=pin_factory)
        except BaseException:
            self.close()
            raise
        rec, fn = self._buttons["record"], self._buttons["function"]
        rec.when_pressed = lambda: self._edge("record", True)
        rec.when_released = lambda: self._edge("record", False)
        fn.when_pressed = lambda: self._edge("function", True)
        fn.when_released = lambda: self._edge("function", False)

    def _edge(self, button: str, pressed: bool) -> None:
        callback = self.on_record_edge if button == "record" else self.on_function_edge
        if callback is not None:
            callback(pressed)

    def set_output(self, name: str, on: bool) -> None:
        """Switch output ``name`` ("green", "red", "haptic", "buzzer") on or off."""
        try:
            device = self._outputs[name]
        except KeyError:
            raise ValueError(f"unknown output {name!r}; expected one of {OUTPUTS}") from None
        if on:
            device.on()
        else:
            device.off()

    def output_level(self, name: str) -> bool:
        """The level gpiozero reads back from output ``name``'s pin (a self-test checks
        that a switched output really changed)."""
        try:
            device = self._outputs[name]
        except KeyError:
            raise ValueError(f"unknown output {name!r}; expected one of {OUTPUTS}") from None
        return bool(device.value)

    def is_pressed(self, button: str) -> bool:
        """Current raw (not debounced) level of button "record" or "function"."""
        try:
            device = self._buttons[button]
        except KeyError:
            raise ValueError(f"unknown button {button!r}; expected one of {BUTTONS}") from None
        return bool(device.is_pressed)

    def close(self) -> None:
        """Release every pin (outputs go back to inputs). Safe to call twice.

        gpiozero's Button keeps an (unused) hold thread that waits on real time: closing
        while a button is held down can block for up to gpiozero's ``hold_time`` (1 s)."""
        for device in (*self._buttons.values(), *self._outputs.values()):
            device.close()
        self._buttons.clear()
        self._outputs.clear()
