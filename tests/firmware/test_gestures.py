"""Gesture rules of firmware.gestures, on explicit timestamps (no real time anywhere)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.gestures import MS, Gesture, GestureConfig, GestureRecognizer

T0 = 1_000 * 10**9  # a monotonic clock that is not zero at boot
CFG = GestureConfig()
DEB, WIN, HOLD = CFG.debounce_ms * MS, CFG.double_press_ms * MS, CFG.hold_ms * MS
S, D, H = Gesture.SINGLE_PRESS, Gesture.DOUBLE_PRESS, Gesture.HOLD


def run(edges: list[tuple[int, bool]], until: int, rec: GestureRecognizer | None = None):
    """Feed edges in order, polling exactly at every deadline in between (and up to
    ``until``); return [(instant, gesture)] with the instant of the call that emitted it."""
    rec = rec or GestureRecognizer(CFG)
    out: list[tuple[int, Gesture]] = []

    def poll_to(t: int) -> None:
        while (due := rec.next_deadline_ns()) is not None and due <= t:
            out.extend((due, g) for g in rec.poll(due))
        out.extend((t, g) for g in rec.poll(t))

    for t, pressed in edges:
        poll_to(t)
        out.extend((t, g) for g in rec.edge(pressed, t))
    poll_to(until)
    return out


def tap(at: int, length: int = 80 * MS) -> list[tuple[int, bool]]:
    return [(at, True), (at + length, False)]


# -- the three gestures ----------------------------------------------------------------

def test_double_press_is_emitted_on_the_second_press_edge_without_waiting():
    rec = GestureRecognizer(CFG)
    assert rec.edge(True, T0) == []
    assert rec.edge(False, T0 + 80 * MS) == []
    assert rec.poll(T0 + 200 * MS) == []
    assert rec.edge(True, T0 + 250 * MS) == [D]          # on the edge itself
    assert rec.edge(False, T0 + 330 * MS) == []
    assert rec.poll(T0 + 10 * 10**9) == []                # nothing more: no single, no hold


def test_double_press_window_is_measured_from_the_first_press_start_and_half_open():
    just_inside = tap(T0) + tap(T0 + WIN - 1)
    assert [g for _, g in run(just_inside, T0 + 5 * 10**9)] == [D]
    at_edge = tap(T0) + tap(T0 + WIN)
    assert [g for _, g in run(at_edge, T0 + 5 * 10**9)] == [S, S]


def test_single_press_only_after_the_window_has_passed():
    rec = GestureRecognizer(CFG)
    rec.edge(True, T0)
    rec.edge(False, T0 + 80 * MS)
    assert rec.poll(T0 + WIN - 1) == []
    assert rec.poll(T0 + WIN) == [S]
    assert rec.poll(T0 + 20 * 10**9) == []


def test_press_longer_than_window_gives_single_at_release():
    assert run(tap(T0, 1_500 * MS), T0 + 10 * 10**9) == [(T0 + 1_500 * MS, S)]


def test_hold_emitted_exactly_once_at_hold_ms():
    rec = GestureRecognizer(CFG)
    rec.edge(True, T0)
    assert rec.poll(T0 + HOLD - 1) == []
    assert rec.poll(T0 + HOLD) == [H]
    assert rec.poll(T0 + HOLD + 1) == []
    assert rec.poll(T0 + 60 * 10**9) == []                # still held a minute later
    assert rec.edge(False, T0 + 61 * 10**9) == []
    assert rec.poll(T0 + 70 * 10**9) == []


def test_hold_detected_by_the_release_edge_when_nobody_polled():
    rec = GestureRecognizer(CFG)
    rec.edge(True, T0)
    assert rec.edge(False, T0 + HOLD) == [H]              # held exactly hold_ms counts
    assert rec.poll(T0 + 10 * 10**9) == []


def test_hold_never_also_gives_single_or_double():
    # a tap then a hold starting inside the window: the second press is the double
    assert [g for _, g in run(tap(T0) + [(T0 + 300 * MS, True), (T0 + 5 * 10**9, False)],
                              T0 + 9 * 10**9)] == [D]
    # a hold then a tap shortly after release: hold, then a fresh single
    gs = run([(T0, True), (T0 + 3_500 * MS, False)] + tap(T0 + 3_700 * MS), T0 + 9 * 10**9)
    assert gs == [(T0 + HOLD, H), (T0 + 3_700 * MS + WIN, S)]


def test_triple_press_is_double_then_fresh_sequence():
    edges = tap(T0) + tap(T0 + 200 * MS) + tap(T0 + 400 * MS)
    assert run(edges, T0 + 5 * 10**9) == [(T0 + 200 * MS, D), (T0 + 400 * MS + WIN, S)]
    edges = edges + tap(T0 + 600 * MS)
    assert run(edges, T0 + 5 * 10**9) == [(T0 + 200 * MS, D), (T0 + 600 * MS, D)]


def test_result_does_not_depend_on_how_often_poll_is_called():
    edges = tap(T0) + [(T0 + 2 * 10**9, True), (T0 + 6 * 10**9, False)] + tap(T0 + 7 * 10**9)
    exact = [g for _, g in run(edges, T0 + 20 * 10**9)]
    lazy = GestureRecognizer(CFG)
    got = []
    for t, p in edges:
        got += lazy.edge(p, t)
    got += lazy.poll(T0 + 20 * 10**9)
    assert exact == got == [S, H, S]


# -- debounce ----------------------------------------------------------------------------

def test_clean_press_is_accepted_at_once():
    rec = GestureRecognizer(CFG)
    rec.edge(True, T0)
    assert rec.pressed


def test_release_lost_in_chatter_is_recovered_by_poll():
    rec = GestureRecognizer(CFG)
    rec.edge(True, T0)
    rec.edge(False, T0 + 10 * MS)      # the real release, inside the debounce window
    assert rec.pressed                  # ignored as chatter for now
    assert rec.poll(T0 + 10 * MS + DEB - 1) == [] and rec.pressed
    assert rec.poll(T0 + 10 * MS + DEB) == [] and not rec.pressed
    assert rec.poll(T0 + 10 * 10**9) == [S]   # and the tap still counts


def test_press_lost_in_chatter_after_a_release_is_recovered():
    edges = tap(T0) + [(T0 + 80 * MS + 5 * MS, True)]   # pressed 5 ms after the release
    got = run(edges, T0 + 10 * 10**9)
    assert got == [(T0 + 85 * MS + DEB, D)]              # recovered; second press in window
    got = run(edges + [(T0 + 400 * MS, False)], T0 + 10 * 10**9)
    assert [g for _, g in got] == [D]


def bounces(debounce_ns: int):
    """Offsets (ns, strictly inside the debounce window) of an even number of bounces."""
    return st.lists(st.integers(1, debounce_ns - 1), unique=True, max_size=10).map(
        lambda xs: sorted(xs)[: len(xs) - len(xs) % 2])


@st.composite
def chattering_scripts(draw):
    """Clean press/release edges at least debounce apart, and the same with contact
    bounce (shorter than debounce, ending on the true level) after every edge."""
    n = draw(st.integers(1, 4))
    gaps = draw(st.lists(st.integers(DEB, 4_000 * MS), min_size=2 * n, max_size=2 * n))
    clean, noisy, t = [], [], T0
    for i, gap in enumerate(gaps):
        level = i % 2 == 0
        clean.append((t, level))
        noisy.append((t, level))
        for k, off in enumerate(draw(bounces(min(DEB, gap)))):
            noisy.append((t + off, level if k % 2 else not level))
        t += gap
    return clean, noisy


@settings(max_examples=300, deadline=None)
@given(chattering_scripts())
def test_chatter_never_adds_loses_or_moves_a_gesture(scripts):
    clean, noisy = scripts
    until = clean[-1][0] + 10 * 10**9
    expected = run(clean, until)
    assert run(noisy, until) == expected
    # and every true edge is accepted at its own instant, the release is never lost
    rec = GestureRecognizer(CFG)
    true_edges = dict(clean)
    for t, pressed in noisy:
        rec.edge(pressed, t)
        if t in true_edges:
            assert rec.pressed == true_edges[t]
    rec.poll(until)
    assert not rec.pressed


def test_chatter_model_in_the_property_test_is_real():
    # guard against a vacuous property: with bounce and no debounce there are extra gestures
    clean = tap(T0)
    noisy = [(T0, True), (T0 + 5 * MS, False), (T0 + 10 * MS, True), (T0 + 80 * MS, False)]
    tiny = GestureRecognizer(GestureConfig(debounce_ms=1, double_press_ms=600, hold_ms=3000))
    assert [g for _, g in run(noisy, T0 + 5 * 10**9, tiny)] == [D]
    assert [g for _, g in run(noisy, T0 + 5 * 10**9)] == [g for _, g in run(clean, T0 + 5 * 10**9)] == [S]


# -- config and time ---------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, field", [
    ({"debounce_ms": 0}, "debounce_ms"),
    ({"debounce_ms": -5}, "debounce_ms"),
    ({"double_press_ms": 0}, "double_press_ms"),
    ({"hold_ms": -1}, "hold_ms"),
    ({"debounce_ms": 600}, "debounce_ms"),
    ({"double_press_ms": 3000}, "double_press_ms"),
    ({"hold_ms": 500}, "hold_ms"),
    ({"debounce_ms": True}, "debounce_ms"),
    ({"hold_ms": "3000"}, "hold_ms"),
])
def test_invalid_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        GestureConfig(**kwargs)


def test_defaults_match_design():
    assert (CFG.debounce_ms, CFG.double_press_ms, CFG.hold_ms) == (30, 600, 3000)


def test_time_going_backwards_raises():
    rec = GestureRecognizer(CFG)
    rec.edge(True, T0)
    rec.poll(T0 + 100)
    with pytest.raises(ValueError, match="backwards"):
        rec.edge(False, T0 + 99)
    with pytest.raises(ValueError, match="backwards"):
        rec.poll(T0)
    assert rec.poll(T0 + 100) == []   # equal timestamps are fine
