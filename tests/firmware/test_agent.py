"""The agent's state machine on hw_sim: real gpiozero devices on mock pins, virtual time."""
from __future__ import annotations

import pytest

from buffer.verify import verify_path
from firmware.agent import State
from hw_sim.runner import Rig
from tests.conftest import small_config

MS = 1_000_000


@pytest.fixture
def rig(tmp_path):
    r = Rig(small_config(), tmp_path / "w").start()
    yield r
    r.close()


def double_press(rig: Rig) -> None:
    rig.press()
    rig.advance(0.12)
    rig.release()
    rig.advance(0.18)
    rig.press()
    rig.advance(0.12)
    rig.release()


def hold(rig: Rig, seconds: float) -> None:
    rig.press()
    rig.advance(seconds)
    rig.release()


def on_spans(history, start_ns=0):
    """[(on_at, off_at)] from a pin history, in ns, from ``start_ns`` on."""
    spans, on_at = [], None
    for t, level in history:
        if t < start_ns:
            continue
        if level and on_at is None:
            on_at = t
        elif not level and on_at is not None:
            spans.append((on_at, t))
            on_at = None
    return spans


def test_second_press_starts_recording_with_no_delay(rig):
    rig.advance(5)
    rig.press(); rig.advance(0.12); rig.release(); rig.advance(0.18)
    assert rig.agent.state is State.BUFFERING
    rig.press()  # the edge itself switches state: button-to-recording latency is 0 virtual ms
    assert rig.agent.state is State.RECORDING
    assert rig.gpio.level("red") and not rig.gpio.level("green")


def test_indications_buffering_recording_and_stop(rig):
    rig.advance(6)
    green = on_spans(rig.gpio.history("green"))
    assert len(green) >= 3 and all(off - on == 100 * MS for on, off in green)
    assert all(b[0] - a[0] == 2000 * MS for a, b in zip(green, green[1:]))
    assert not rig.gpio.history("red")
    t_start = rig.clock.monotonic_ns()
    double_press(rig)
    rig.advance(2)
    buzz = on_spans(rig.gpio.history("haptic"), t_start)
    assert [off - on for on, off in buzz] == [150 * MS, 150 * MS]  # two buzzes at start
    assert on_spans(rig.gpio.history("buzzer"), t_start) == buzz
    assert rig.gpio.level("red")
    t_stop = rig.clock.monotonic_ns()
    hold(rig, 3.2)
    rig.advance(2)
    long_buzz = on_spans(rig.gpio.history("haptic"), t_stop)
    assert [off - on for on, off in long_buzz] == [800 * MS]  # one long buzz at stop
    assert not rig.gpio.level("red")
    assert rig.agent.state is State.BUFFERING


def test_hold_stops_and_closes_a_clip_that_verifies(rig):
    rig.advance(5)
    double_press(rig)
    rig.advance(4)
    hold(rig, 3.1)
    rig.advance(2)  # the segment in progress at the stop still belongs to the clip
    res = rig.close()
    assert len(res.clip_ids) == 1
    report = verify_path(res.store_dir / "clips" / res.clip_ids[0])
    assert report.ok, report.all_failures()
    assert report.manifest["stop_reason"] == "record_button_hold"
    # the clip covers the hold: its last segment ends after the hold was recognised
    last = report.segments[-1].header["capture"]["end_mono_ns"]
    assert last >= res.press_mono_ns[-1] + 3000 * MS


def test_short_hold_and_single_press_do_not_stop_or_start(rig):
    rig.advance(3)
    rig.press(); rig.advance(0.1); rig.release(); rig.advance(2)
    assert rig.agent.state is State.BUFFERING
    double_press(rig)
    rig.advance(1)
    hold(rig, 2.0)  # shorter than hold_ms
    rig.advance(1)
    assert rig.agent.state is State.RECORDING


def test_press_during_start_up_is_harmless(tmp_path):
    r = Rig(small_config(), tmp_path / "w")
    r.gpio.press("record")  # held while the camera boots
    r.start()
    r.advance(1)
    r.gpio.release("record")
    r.advance(2)
    assert r.agent.state is State.BUFFERING
    double_press(r)
    assert r.agent.state is State.RECORDING
    r.close()


def test_bounce_during_double_press_gives_one_clip(rig):
    rig.advance(4)
    for _ in range(2):
        rig.gpio.chatter("record", [True, False, True, False, True])
        rig.advance(0.12)
        rig.gpio.chatter("record", [False, True, False])
        rig.advance(0.005)
        rig.gpio.release("record")
        rig.advance(0.15)
    assert rig.agent.state is State.RECORDING
    rig.advance(3)
    res = rig.close()
    assert len(res.clip_ids) == 1


def test_both_buttons_at_once(rig):
    rig.advance(4)
    rig.press("function")
    double_press(rig)
    assert rig.agent.state is State.RECORDING
    rig.release("function")
    rig.advance(1)
    rig.press("function")
    hold(rig, 3.2)
    rig.release("function")
    rig.advance(2)
    assert rig.agent.state is State.BUFFERING


def test_clean_shutdown_while_recording_seals_the_clip(rig):
    rig.advance(4)
    double_press(rig)
    rig.advance(2.5)
    res = rig.close()
    report = verify_path(res.store_dir / "clips" / res.clip_ids[0])
    assert report.ok and report.manifest["stop_reason"] == "shutdown"


def test_storage_full_stops_the_clip_and_never_evicts_it(tmp_path):
    cfg = small_config(buffer__max_bytes=1024 * 1024, buffer__pre_record_seconds=2)
    r = Rig(cfg, tmp_path / "w").start()
    r.advance(3)
    double_press(r)
    for _ in range(120):  # ~50 kB a second at 400 kbit/s: the budget fills in ~20 s
        r.advance(1)
        if r.agent.fault:
            break
    assert r.agent.fault and "store full" in r.agent.fault
    assert r.agent.state is State.BUFFERING
    r.advance(2)
    assert r.gpio.history("red")  # the store-full pattern alternates red and green
    double_press(r)  # a new clip is refused, loudly
    r.advance(2)
    assert r.agent.state is State.BUFFERING
    res = r.close()
    assert len(res.clip_ids) == 1  # the refused clip left nothing behind
    report = verify_path(res.store_dir)
    assert report.ok, report.all_failures()
    first = next(c for c in report.clips if c.manifest["stop_reason"] == "storage_full")
    pinned = [s.seq for s in first.segments]
    acked_in_clip = [a.seq for a in res.acks if a.clip_id == first.clip_id]
    assert set(acked_in_clip) <= set(pinned)  # nothing pinned was evicted
    audit = (res.store_dir / "audit.log").read_text()
    assert '"kind":"storage_full"' in audit
    assert '"refused_clip":' in audit  # the second double press was refused
    assert audit.index('"kind":"storage_nearly_full"') < audit.index('"kind":"storage_full"')


def test_threaded_store_worker_as_on_the_pi(tmp_path):
    r = Rig(small_config(), tmp_path / "w", threaded=True).start()
    r.advance(4)
    double_press(r)
    r.advance(3)
    hold(r, 3.1)
    r.advance(2)
    res = r.close()
    report = verify_path(res.store_dir)
    assert report.ok, report.all_failures()
    assert len(res.clip_ids) == 1 and res.acks
