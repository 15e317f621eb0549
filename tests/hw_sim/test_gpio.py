"""hw_sim.SimGpio: virtual-time pin history, buttons, chatter, close/reset."""
from __future__ import annotations

import pytest

from drivers.controls import ControlPins, Controls
from firmware.gestures import MS, Gesture, GestureRecognizer
from hw_sim.clock import SimClock
from hw_sim.gpio import SimGpio

PINS = ControlPins.DEFAULT


@pytest.fixture
def rig():
    clock = SimClock()
    sim = SimGpio(clock, PINS)
    controls = Controls(PINS, pin_factory=sim.factory)
    yield clock, sim, controls
    sim.close()


def test_history_is_stamped_with_virtual_time(rig):
    clock, sim, controls = rig
    t0 = clock.monotonic_ns()
    controls.set_output("red", True)
    clock.advance(12 * 3600 * 10**9)                 # a whole shift, instantly
    controls.set_output("red", False)
    controls.set_output("red", False)                # no change, no entry
    assert sim.history("red") == [(t0, True), (t0 + 12 * 3600 * 10**9, False)]
    assert sim.history("green") == []


def test_factory_ticks_follow_the_virtual_clock(rig):
    clock, sim, controls = rig
    sim.press("record")
    clock.advance(5 * 10**9)
    assert controls._buttons["record"].active_time == pytest.approx(5.0)
    sim.release("record")        # a button left pressed makes gpiozero's close wait 1 s


def test_press_is_active_low(rig):
    _, sim, controls = rig
    pin = sim.factory.pin(PINS.record_button)
    assert pin.state                                  # pulled up: released reads high
    sim.press("record")
    assert not pin.state and controls.is_pressed("record")
    sim.release("record")
    assert pin.state and not controls.is_pressed("record")


def test_chatter_feeds_raw_edges_which_our_debounce_absorbs(rig):
    clock, sim, controls = rig
    rec = GestureRecognizer()
    raw, gestures = [], []

    def on_edge(pressed: bool) -> None:
        raw.append(pressed)
        gestures.extend(rec.edge(pressed, clock.monotonic_ns()))

    controls.on_record_edge = on_edge
    sim.chatter("record", [True, False, True, False, True])   # bouncy press
    assert raw == [True, False, True, False, True]             # mock applies no debounce
    clock.advance(100 * MS)
    sim.chatter("record", [False, True, False])                # bouncy release
    clock.advance(700 * MS)
    gestures.extend(rec.poll(clock.monotonic_ns()))
    assert gestures == [Gesture.SINGLE_PRESS]
    assert not rec.pressed


def test_chatter_drops_repeated_levels_like_a_pin(rig):
    _, sim, controls = rig
    raw = []
    controls.on_function_edge = raw.append
    sim.chatter("function", [True, True, False, False, True])
    assert raw == [True, False, True]
    sim.release("function")


def test_unknown_names_raise(rig):
    _, sim, _ = rig
    with pytest.raises(ValueError):
        sim.press("green")
    with pytest.raises(ValueError):
        sim.level("record")
    with pytest.raises(ValueError):
        sim.history("amber")


def test_close_closes_devices_and_resets_the_factory():
    clock = SimClock()
    sim = SimGpio(clock, PINS)
    controls = Controls(PINS, pin_factory=sim.factory)
    controls.set_output("green", True)
    sim.close()
    assert controls._buttons["record"].closed if controls._buttons else True
    assert not sim.factory.pins
    assert not any(sim.factory._reservations.values())
    again = SimGpio(clock, PINS)                       # a fresh rig on the same pins works
    Controls(PINS, pin_factory=again.factory).close()
    again.close()
