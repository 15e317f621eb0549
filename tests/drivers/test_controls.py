"""Controls on real gpiozero devices over a MockFactory (through hw_sim.SimGpio)."""
from __future__ import annotations

import pytest
from gpiozero import LED, Button, Buzzer, DigitalOutputDevice
from gpiozero.pins.mock import MockFactory

from drivers.controls import BUTTONS, OUTPUTS, ControlPins, Controls
from hw_sim.clock import SimClock
from hw_sim.gpio import SimGpio

PINS = ControlPins(record_button=5, function_button=6, green_led=13, red_led=19,
                   haptic=26, buzzer=12)


@pytest.fixture
def rig():
    clock = SimClock()
    sim = SimGpio(clock, PINS)
    controls = Controls(PINS, pin_factory=sim.factory)
    edges: list[tuple[str, bool, int]] = []
    controls.on_record_edge = lambda p: edges.append(("record", p, clock.monotonic_ns()))
    controls.on_function_edge = lambda p: edges.append(("function", p, clock.monotonic_ns()))
    yield clock, sim, controls, edges
    controls.close()
    sim.close()


def test_uses_real_gpiozero_devices_on_the_configured_pins(rig):
    _, sim, controls, _ = rig
    assert isinstance(controls._buttons["record"], Button)
    assert isinstance(controls._outputs["green"], LED)
    assert isinstance(controls._outputs["buzzer"], Buzzer)
    assert type(controls._outputs["haptic"]) is DigitalOutputDevice
    assert str(controls._buttons["function"].pin) == "GPIO6"
    assert str(controls._outputs["red"].pin) == "GPIO19"
    assert controls._buttons["record"].pin.bounce is None


def test_press_and_release_reach_the_edge_callbacks(rig):
    clock, sim, controls, edges = rig
    t0 = clock.monotonic_ns()
    sim.press("record")
    assert controls.is_pressed("record")
    clock.advance(80_000_000)
    sim.release("record")
    assert not controls.is_pressed("record")
    sim.press("function")
    sim.release("function")
    assert edges == [("record", True, t0), ("record", False, t0 + 80_000_000),
                     ("function", True, t0 + 80_000_000),
                     ("function", False, t0 + 80_000_000)]


def test_both_buttons_at_once_are_independent(rig):
    _, sim, controls, edges = rig
    sim.press("record")
    sim.press("function")
    assert controls.is_pressed("record") and controls.is_pressed("function")
    sim.release("record")
    assert not controls.is_pressed("record") and controls.is_pressed("function")
    sim.release("function")
    assert [(b, p) for b, p, _ in edges] == [
        ("record", True), ("function", True), ("record", False), ("function", False)]


def test_callbacks_may_be_set_late_or_left_unset(rig):
    _, sim, controls, _ = rig
    controls.on_record_edge = None
    sim.press("record")                         # no callback: nothing happens, no error
    got = []
    controls.on_record_edge = got.append
    sim.release("record")
    assert got == [False]


def test_outputs_drive_mock_pin_levels(rig):
    _, sim, controls, _ = rig
    assert not any(sim.level(name) for name in OUTPUTS)    # all start off
    for name in OUTPUTS:
        controls.set_output(name, True)
        assert sim.level(name)
        assert sim.factory.pin(PINS.pin_for(name)).state    # active-high on the pin
        assert {n for n in OUTPUTS if sim.level(n)} == {name}
        controls.set_output(name, False)
        assert not sim.level(name)


def test_unknown_output_or_button_raises(rig):
    _, _, controls, _ = rig
    with pytest.raises(ValueError, match="amber"):
        controls.set_output("amber", True)
    with pytest.raises(ValueError, match="volume"):
        controls.is_pressed("volume")


def test_close_releases_the_pins():
    factory = MockFactory()
    controls = Controls(PINS, pin_factory=factory)
    controls.close()
    controls.close()                                         # twice is fine
    again = Controls(PINS, pin_factory=factory)              # pins are free again
    again.close()
    factory.reset()


def test_failed_construction_releases_what_it_took():
    factory = MockFactory()
    squatter = LED(PINS.buzzer, pin_factory=factory)         # buzzer pin already in use
    with pytest.raises(Exception, match="GPIO12"):
        Controls(PINS, pin_factory=factory)
    squatter.close()
    Controls(PINS, pin_factory=factory).close()              # nothing left reserved
    factory.reset()


@pytest.mark.parametrize("kwargs, field", [
    ({"haptic": 13}, "haptic"),             # same as green_led
    ({"buzzer": -1}, "buzzer"),
    ({"record_button": 99}, "record_button"),
    ({"red_led": "19"}, "red_led"),
])
def test_control_pins_validate(kwargs, field):
    base = dict(record_button=5, function_button=6, green_led=13, red_led=19, haptic=26,
                buzzer=12)
    with pytest.raises(ValueError, match=field):
        ControlPins(**{**base, **kwargs})


def test_default_pins_documented():
    d = ControlPins.DEFAULT
    assert (d.record_button, d.function_button, d.green_led, d.red_led, d.haptic,
            d.buzzer) == (17, 27, 22, 23, 24, 25)
    assert [d.pin_for(n) for n in BUTTONS + OUTPUTS] == [17, 27, 22, 23, 24, 25]
