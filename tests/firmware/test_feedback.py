"""Feedback patterns on explicit instants: levels, change-only writes, cues, stealth."""
from __future__ import annotations

import pytest

from firmware.feedback import CUES, MODES, MS, OUTPUTS, Feedback, Pattern, Step, describe

T0 = 1_000 * 10**9


class Recorder:
    """A set_output stand-in that records every write and tracks levels."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.level = {name: False for name in OUTPUTS}

    def __call__(self, name: str, on: bool) -> None:
        self.calls.append((name, on))
        self.level[name] = on

    def on(self) -> set[str]:
        return {n for n, v in self.level.items() if v}


@pytest.fixture
def fb_rec():
    rec = Recorder()
    return Feedback(rec), rec


def on_at(fb: Feedback, rec: Recorder, t: int) -> set[str]:
    fb.poll(t)
    return rec.on()


@pytest.mark.parametrize("offset_ms, expected", [
    (0, {"green"}), (99, {"green"}), (100, set()), (1_999, set()),
    (2_000, {"green"}), (2_099, {"green"}), (2_100, set()), (3_600_000, {"green"}),
])
def test_buffering_blinks_green_100ms_every_2s(fb_rec, offset_ms, expected):
    fb, rec = fb_rec
    fb.set_mode("buffering", T0)
    assert on_at(fb, rec, T0 + offset_ms * MS) == expected


def test_recording_is_steady_red(fb_rec):
    fb, rec = fb_rec
    fb.set_mode("recording", T0)
    for ms in (0, 1, 999, 1_000, 1_001, 12 * 3_600_000):
        assert on_at(fb, rec, T0 + ms * MS) == {"red"}
    assert rec.calls == [("red", True)]


@pytest.mark.parametrize("offset_ms, expected", [
    (0, {"red"}), (249, {"red"}), (250, set()), (499, set()), (500, {"red"}), (750, set()),
])
def test_fault_blinks_red_250_250(fb_rec, offset_ms, expected):
    fb, rec = fb_rec
    fb.set_mode("fault", T0)
    assert on_at(fb, rec, T0 + offset_ms * MS) == expected


@pytest.mark.parametrize("offset_ms, expected", [
    (0, {"red"}), (499, {"red"}), (500, {"green"}), (999, {"green"}), (1_000, {"red"}),
])
def test_store_full_alternates_red_and_green(fb_rec, offset_ms, expected):
    fb, rec = fb_rec
    fb.set_mode("store_full", T0)
    assert on_at(fb, rec, T0 + offset_ms * MS) == expected


def test_mode_phase_runs_from_when_it_was_set_and_reasserting_keeps_it(fb_rec):
    fb, rec = fb_rec
    fb.set_mode("fault", T0)
    fb.set_mode("buffering", T0 + 300 * MS)
    assert rec.on() == {"green"}                     # phase 0 of buffering at once
    fb.set_mode("buffering", T0 + 350 * MS)          # same mode again: no restart
    assert on_at(fb, rec, T0 + 400 * MS) == set()    # 100 ms after it was first set
    fb.set_mode(None, T0 + 500 * MS)
    assert on_at(fb, rec, T0 + 2_300 * MS) == set()


def test_set_output_only_called_on_change(fb_rec):
    fb, rec = fb_rec
    fb.set_mode("buffering", T0)
    for ms in range(0, 6_000, 7):                    # many polls, few transitions
        fb.poll(T0 + ms * MS)
    assert rec.calls == [("green", True), ("green", False)] * 3
    calls = len(rec.calls)
    fb.poll(T0 + 5_999 * MS)
    assert len(rec.calls) == calls


def test_start_cue_overlays_mode_and_ends(fb_rec):
    fb, rec = fb_rec
    fb.set_mode("recording", T0)
    fb.cue("start", T0 + 10 * MS)
    c = T0 + 10 * MS
    assert rec.on() == {"red", "haptic", "buzzer"}
    assert on_at(fb, rec, c + 149 * MS) == {"red", "haptic", "buzzer"}
    assert on_at(fb, rec, c + 150 * MS) == {"red"}
    assert on_at(fb, rec, c + 300 * MS) == {"red", "haptic", "buzzer"}
    assert on_at(fb, rec, c + 449 * MS) == {"red", "haptic", "buzzer"}
    assert on_at(fb, rec, c + 450 * MS) == {"red"}
    assert on_at(fb, rec, c + 60 * 10**9) == {"red"}   # one-shot: never again


def test_stop_and_fault_cues(fb_rec):
    fb, rec = fb_rec
    fb.cue("stop", T0)
    assert on_at(fb, rec, T0 + 799 * MS) == {"haptic", "buzzer"}
    assert on_at(fb, rec, T0 + 800 * MS) == set()
    fb.cue("fault", T0 + 1_000 * MS)
    buzzes = 0
    for ms in range(0, 1_000):
        before = rec.level["buzzer"]
        fb.poll(T0 + (1_000 + ms) * MS)
        buzzes += rec.level["buzzer"] and not before
    assert buzzes + 1 == 3   # the first buzz started inside cue()


def test_cue_and_mode_share_an_output_or_is_applied():
    mode = Pattern((Step(("haptic",), 100, 100),), loop=True)
    rec = Recorder()
    fb = Feedback(rec, modes={"m": mode})
    fb.set_mode("m", T0)
    fb.cue("stop", T0 + 150 * MS)                    # haptic on through the mode's off
    assert on_at(fb, rec, T0 + 160 * MS) == {"haptic", "buzzer"}
    assert on_at(fb, rec, T0 + 1_050 * MS) == {"haptic"}  # cue over, mode on phase
    assert on_at(fb, rec, T0 + 1_150 * MS) == set()       # mode off phase


def test_stealth_forces_everything_off_and_restores(fb_rec):
    fb, rec = fb_rec
    fb.set_mode("recording", T0)
    fb.cue("stop", T0)
    fb.stealth = True
    assert on_at(fb, rec, T0 + 1 * MS) == set()
    fb.cue("start", T0 + 2 * MS)
    assert on_at(fb, rec, T0 + 3 * MS) == set()
    fb.set_mode("fault", T0 + 4 * MS)
    assert on_at(fb, rec, T0 + 5 * MS) == set()
    fb.stealth = False
    assert on_at(fb, rec, T0 + 900 * MS) == set()    # fault is off at 896 ms; cues over
    assert on_at(fb, rec, T0 + 1_004 * MS) == {"red"}


def test_unknown_names_and_backwards_time_raise(fb_rec):
    fb, _ = fb_rec
    with pytest.raises(ValueError, match="mode"):
        fb.set_mode("disco", T0)
    with pytest.raises(ValueError, match="cue"):
        fb.cue("fanfare", T0)
    fb.poll(T0 + 10)
    with pytest.raises(ValueError, match="backwards"):
        fb.poll(T0)
    with pytest.raises(ValueError):
        Step(("blue",), 100, 100)


def test_next_change_names_every_instant_an_output_changes():
    def script(fb):
        fb.set_mode("store_full", T0)
        fb.cue("start", T0 + 200 * MS)

    dense_rec = Recorder()
    dense = Feedback(lambda n, v: dense_rec.calls.append((t, n, v)))
    t = T0
    script(dense)
    for ms in range(200, 3_000):
        t = T0 + ms * MS
        dense.poll(t)
    dense_changes = sorted({(when - T0) // MS for when, _, _ in dense_rec.calls
                            if when > T0 + 200 * MS})

    fb = Feedback(Recorder())
    script(fb)
    t, stepped = T0 + 200 * MS, []
    while (t := fb.next_change_ns(t)) <= T0 + 2_999 * MS:
        fb.poll(t)
        stepped.append((t - T0) // MS)
    assert dense_changes == [350, 500, 650, 1000, 1500, 2000, 2500]
    assert set(dense_changes) <= set(stepped)


def test_describe_is_generated_from_the_same_data():
    rows = describe()
    assert [(r["kind"], r["name"]) for r in rows] == (
        [("mode", n) for n in MODES] + [("cue", n) for n in CUES])
    by = {(r["kind"], r["name"]): r for r in rows}
    assert by[("mode", "buffering")]["steps"] == [{"outputs": ["green"], "on_ms": 100,
                                                   "off_ms": 1900}]
    assert by[("mode", "buffering")]["length_ms"] == 2000
    assert by[("mode", "recording")]["summary"] == "red steady on"
    assert by[("cue", "start")]["outputs"] == ["buzzer", "haptic"]
    assert by[("cue", "stop")]["length_ms"] == 800
    assert not by[("cue", "fault")]["loop"] and by[("mode", "fault")]["loop"]
