"""An officer's controls and alarms on hw_sim: markers, mute, stealth, trigger, reminder,
file split, battery, clock, assignment — each through real gpiozero devices on mock pins
and asserted through the pins' own history, the signed manifests and the audit log."""
from __future__ import annotations

import json

import pytest

from buffer.verify import verify_clip, verify_path
from firmware.agent import State
from hw_sim.runner import Rig
from tests.conftest import small_config
from tests.firmware.test_agent import double_press, hold, on_spans

MS = 1_000_000


def events(rig_or_dir) -> list[dict]:
    store = rig_or_dir if not isinstance(rig_or_dir, Rig) else rig_or_dir.result.store_dir
    return [json.loads(line.rsplit("\t", 1)[0]) for line in
            (store / "audit.log").read_text().splitlines()]


def tap(rig: Rig, button: str = "function") -> None:
    rig.press(button)
    rig.advance(0.1)
    rig.release(button)


def manifest(rig: Rig, clip_id: str) -> dict:
    report = verify_clip(rig.result.clip_dir(clip_id), rig.keys.device())
    assert report.ok, report.all_failures()
    return report.manifest


@pytest.fixture
def rig(tmp_path):
    r = Rig(small_config(), tmp_path / "w", microphone=False).start()
    yield r
    r.close()


def test_marker_goes_into_the_manifest_and_makes_the_clip_evidential(rig):
    rig.advance(3)
    double_press(rig)
    rig.advance(2)
    t = rig.clock.utc_ns()
    tap(rig)
    rig.advance(1)  # the single press is recognised when the double-press window closes
    hold(rig, 3.2)
    rig.advance(2)
    res = rig.close()
    m = manifest(rig, res.clip_ids[0])
    assert len(m["markers"]) == 1 and m["markers"][0]["source"] == "function_button"
    from drivers.clock import parse_iso_utc
    assert 0 <= parse_iso_utc(m["markers"][0]["utc"]) - t < 1_000 * MS
    ev = events(rig)
    assert any(e["event"] == "marker" for e in ev)
    assert any(e["event"] == "classification" and e["data"]["classification"] == "evidential"
               for e in ev)


def test_marker_while_buffering_is_only_audited(rig):
    rig.advance(2)
    tap(rig)
    rig.advance(1)
    assert rig.agent.state is State.BUFFERING
    assert any(e["event"] == "marker" and e["data"]["clip_id"] is None for e in events(rig))


def test_stealth_darkens_everything_and_survives_a_reboot(tmp_path):
    rig = Rig(small_config(), tmp_path / "w", microphone=False).start()
    rig.advance(3)
    rig.press("function")
    rig.advance(3.2)
    rig.release("function")
    assert rig.agent.stealth
    t = rig.clock.monotonic_ns()
    double_press(rig)  # recording starts, in the dark
    rig.advance(125)  # past a reminder
    for out in ("green", "red", "haptic", "buzzer"):
        assert not rig.gpio.level(out)
        assert all(not lvl for ts, lvl in rig.gpio.history(out) if ts > t), out
    rig.close()
    again = Rig(small_config(), tmp_path / "w", microphone=False).start()
    assert again.agent.stealth  # kept across the reboot
    again.press("function")
    again.advance(3.2)
    again.release("function")
    assert not again.agent.stealth
    again.advance(3)
    assert on_spans(again.gpio.history("green"))  # buffering blink is back
    again.close()
    stealth = [e["data"]["on"] for e in events(again) if e["event"] == "stealth"]
    assert stealth == [True, False]


def test_latched_mute_removes_audio_shows_and_ends_with_the_recording(tmp_path):
    rig = Rig(small_config(), tmp_path / "w").start()
    rig.advance(3)
    double_press(rig)
    rig.advance(1)
    tap(rig)
    rig.advance(0.2)
    tap(rig)  # function double press: mute
    rig.advance(0.1)
    assert rig.agent.muted
    rig.advance(1.5)
    reds = on_spans(rig.gpio.history("red"), rig.clock.monotonic_ns() - 1500 * MS)
    assert any(off - on == 700 * MS for on, off in reds)  # the muted pattern
    rig.advance(3)
    hold(rig, 3.2)
    assert not rig.agent.muted  # mute ends with the recording
    rig.advance(2)
    res = rig.close()
    report = verify_clip(res.clip_dir(res.clip_ids[0]), rig.keys.device())
    audio = [s.header.get("audio") for s in report.segments]
    assert any(a for a in audio) and any(not a for a in audio)  # audio, then none while muted
    mutes = [e["data"]["on"] for e in events(rig) if e["event"] == "mute"]
    assert mutes[:2] == [True, False]


def test_push_hold_mute_and_stealth_by_double_press(tmp_path):
    cfg = small_config(controls__mute_mode="push-hold")
    rig = Rig(cfg, tmp_path / "w", microphone=False).start()
    rig.advance(3)
    double_press(rig)
    rig.advance(1)
    rig.press("function")
    rig.advance(0.5)
    assert rig.agent.muted
    rig.release("function")
    rig.advance(0.1)
    assert not rig.agent.muted
    rig.advance(1)
    tap(rig)
    rig.advance(0.2)
    tap(rig)
    rig.advance(0.1)
    assert rig.agent.stealth
    rig.close()


def test_trigger_starts_recording_and_never_stops_it(tmp_path):
    rig = Rig(small_config(controls__trigger_enabled=True), tmp_path / "w", microphone=False).start()
    rig.advance(3)
    rig.trigger(True)
    assert rig.agent.state is State.RECORDING
    rig.advance(2)
    rig.trigger(False)
    rig.trigger(True)
    rig.advance(2)
    assert rig.agent.state is State.RECORDING
    hold(rig, 3.2)
    rig.advance(2)
    res = rig.close()
    assert len(res.clip_ids) == 1
    assert manifest(rig, res.clip_ids[0])["start_reason"] == "trigger"


def test_trigger_is_ignored_unless_enabled(rig):
    rig.advance(2)
    rig.trigger(True)
    rig.advance(1)
    assert rig.agent.state is State.BUFFERING


def test_reminder_every_two_minutes_while_recording(rig):
    rig.advance(2)
    double_press(rig)
    t0 = rig.clock.monotonic_ns()
    rig.advance(245)
    buzzer = on_spans(rig.gpio.history("buzzer"), t0 + 1000 * MS)  # after the start cue
    tones = [on for on, off in buzzer if off - on == 80 * MS]
    assert len(tones) == 4  # two tones at 120 s and two at 240 s
    assert 119_900 * MS <= tones[0] - t0 <= 121_500 * MS


def test_long_recording_splits_into_parts_of_one_incident(tmp_path):
    cfg = small_config(recording__max_clip_hours=0.005)  # 18 s
    rig = Rig(cfg, tmp_path / "w", microphone=False).start()
    rig.advance(3)
    double_press(rig)
    rig.advance(40)
    hold(rig, 3.2)
    rig.advance(2)
    res = rig.close()
    assert len(res.clip_ids) == 3
    parts = [manifest(rig, c) for c in res.clip_ids]
    assert [p["part"] for p in parts] == [1, 2, 3]
    assert len({p["incident_id"] for p in parts}) == 1
    assert parts[1]["previous_clip"] == parts[0]["clip_id"]
    assert [p["stop_reason"] for p in parts[:2]] == ["split", "split"]
    for a, b in zip(parts, parts[1:]):  # contiguous: no lost or duplicated segment
        assert b["first_seq"] == a["last_seq"] + 1
    assert all(p["gaps"] == [] for p in parts)


def test_battery_low_alarm_then_critical_closes_the_clip_and_shuts_down(tmp_path):
    rig = Rig(small_config(), tmp_path / "w", microphone=False, battery_percent=12).start()
    rig.advance(2)
    double_press(rig)
    rig.battery.set_percent(9.5)
    t = rig.clock.monotonic_ns()
    rig.advance(35)
    assert "battery_low" in rig.agent.alarms.active
    buzz = on_spans(rig.gpio.history("buzzer"), t)
    assert sum(1 for on, off in buzz if off - on == 100 * MS) >= 3  # the low-battery cue
    rig.battery.set_percent(2.0)
    rig.advance(60)
    assert rig.agent.shutdown_requested == "battery_critical"
    res = rig.close()
    m = manifest(rig, res.clip_ids[0])
    assert m["stop_reason"] == "battery_critical"
    ev = events(rig)
    assert any(e["event"] == "power_off" and e["data"]["reason"] == "battery_critical" for e in ev)
    assert verify_path(res.store_dir).ok


def test_a_lying_fuel_gauge_raises_a_fault_and_recording_goes_on(rig):
    rig.advance(2)
    double_press(rig)
    rig.battery.fault = "nonsense"
    rig.advance(35)
    assert "fault" in rig.agent.alarms.active
    assert rig.agent.state is State.RECORDING and rig.agent.shutdown_requested is None
    rig.battery.fault = "unreadable"
    rig.advance(35)
    assert rig.agent.state is State.RECORDING
    assert any(e["event"] == "fault" and e["data"]["kind"] == "battery_gauge" for e in events(rig))


def test_clock_not_set_is_an_alarm(tmp_path):
    rig = Rig(small_config(), tmp_path / "w", microphone=False, clock_set=False).start()
    rig.advance(65)  # the alarm shows at once and again a minute later
    assert "clock_not_set" in rig.agent.alarms.active
    tones = on_spans(rig.gpio.history("buzzer"))
    assert sum(1 for on, off in tones if off - on == 60 * MS) == 2
    rig.close()
    assert any(e["event"] == "alarm" and e["data"]["kind"] == "clock_not_set" for e in events(rig))


def test_assignment_is_burned_in_written_and_kept(tmp_path):
    rig = Rig(small_config(), tmp_path / "w", microphone=False).start()
    rig.agent.assign("OFC-4711", by="test")
    rig.advance(2)
    double_press(rig)
    rig.advance(3)
    hold(rig, 3.2)
    rig.advance(2)
    assert "OFC-4711" in rig.camera._overlay.text(rig.clock.utc_ns())
    res = rig.close()
    assert manifest(rig, res.clip_ids[0])["officer_id"] == "OFC-4711"
    again = Rig(small_config(), tmp_path / "w", microphone=False).start()
    assert again.agent.officer_id == "OFC-4711"
    again.close()


def test_power_config_and_firmware_changes_are_audited(tmp_path):
    Rig(small_config(), tmp_path / "w", microphone=False).start().close()
    Rig(small_config(buffer__pre_record_seconds=5), tmp_path / "w", microphone=False).start().close()
    r = Rig(small_config(buffer__pre_record_seconds=5), tmp_path / "w", microphone=False)
    r.agent.firmware_version = "9.9.9"
    r.start().close()
    ev = [e["event"] for e in events(r)]
    assert ev.count("power_on") == 3 and ev.count("power_off") == 3
    assert ev.count("config_changed") == 1 and ev.count("firmware_changed") == 1


def test_a_stuck_function_button_is_a_fault_and_recording_goes_on(rig):
    rig.advance(2)
    double_press(rig)
    rig.press("function")  # debris under the button
    rig.advance(35)
    assert "fault" in rig.agent.alarms.active
    assert rig.agent.state is State.RECORDING
    rig.release("function")
    rig.advance(1)
    assert "fault" not in rig.agent.alarms.active
    kinds = [e["data"].get("kind") for e in events(rig) if e["event"] in ("fault", "notice")]
    assert "button_stuck" in kinds and "button_released" in kinds


def test_gps_sets_an_unset_clock_and_survives_garbage_and_a_vanished_port(tmp_path):
    rig = Rig(small_config(), tmp_path / "w", microphone=False, clock_set=False, gps=True).start()
    # the RTC was wrong by a day; the receiver knows the true time
    rig.advance(3)
    assert "clock_not_set" not in rig.agent.alarms.active or rig.clock.state().synced
    for _ in range(50):
        if rig.clock.state().synced:
            break
        rig.advance(1)
    assert rig.clock.state().synced and rig.clock.state().source == "gps"
    double_press(rig)
    rig.gps_sim.send_garbage(20)
    rig.gps_sim.bad_checksums(5)
    rig.advance(5)
    assert rig.gps.latest(10) is not None  # fixes go on between the garbage
    rig.gps_sim.disappear()
    import time as _t
    deadline = _t.monotonic() + 10
    while "fault" not in rig.agent.alarms.active and _t.monotonic() < deadline:
        rig.advance(0.5)
    assert "fault" in rig.agent.alarms.active and rig.agent.state is State.RECORDING
    rig.gps_sim.reappear()
    deadline = _t.monotonic() + 10
    while "fault" in rig.agent.alarms.active and _t.monotonic() < deadline:
        rig.advance(0.5)
    assert "fault" not in rig.agent.alarms.active
    hold(rig, 3.2)
    rig.advance(2)
    res = rig.close()
    assert verify_path(res.store_dir).ok
    ev = events(rig)
    assert any(e["event"] == "clock_offset" and e["data"]["source"] == "gps" for e in ev)
    assert any(e["event"] == "fault" and e["data"].get("kind") == "gps_port_lost" for e in ev)


def spans_of(rig: Rig, output: str, since: int) -> list[int]:
    return [off - on for on, off in on_spans(rig.gpio.history(output), since)]


def test_each_alarm_shows_its_own_pattern_on_the_pins(tmp_path):
    """battery critical, storage nearly full and GPS lost, from real conditions."""
    cfg = small_config(buffer__max_bytes=1024 * 1024, buffer__nearly_full_fraction=0.2,
                       gps__alarm_on_loss=True)
    rig = Rig(cfg, tmp_path / "w", microphone=False, gps=True).start()
    rig.advance(3)
    t = rig.clock.monotonic_ns()
    double_press(rig)
    for _ in range(30):  # the clip grows past 20 % of the budget
        rig.advance(1)
        if "store_nearly_full" in rig.agent.alarms.active:
            break
    assert "store_nearly_full" in rig.agent.alarms.active
    rig.advance(3)
    assert spans_of(rig, "haptic", t).count(200 * MS) >= 2  # red+green+haptic 200 ms twice
    hold(rig, 3.2)
    rig.advance(2)
    t = rig.clock.monotonic_ns()
    rig.gps_sim.lose_fix(True)
    for _ in range(30):
        rig.advance(1)
        if "gps_lost" in rig.agent.alarms.active:
            break
    rig.advance(6)
    assert "gps_lost" in rig.agent.alarms.active
    # green 400 ms (it may run into the buffering blink), then a 300 ms buzz
    assert any(d >= 400 * MS for d in spans_of(rig, "green", t))
    assert 300 * MS in spans_of(rig, "haptic", t)
    t = rig.clock.monotonic_ns()
    rig.battery.set_percent(2.0)
    rig.advance(31)
    assert rig.agent.shutdown_requested == "battery_critical"
    assert spans_of(rig, "haptic", t).count(1000 * MS) >= 1  # 1 s buzzes: critical
    rig.close()


def test_one_fault_clearing_never_hides_another_and_threaded_audit_keeps_the_cause(tmp_path):
    """Threaded store worker, as on the device: the gauge's error message reaches the
    audit log, and a stuck button clearing leaves the gauge fault showing."""
    rig = Rig(small_config(), tmp_path / "w", microphone=False, threaded=True).start()
    rig.advance(2)
    rig.press("function")
    rig.advance(31)  # stuck
    rig.battery.fault = "unreadable"
    rig.advance(31)
    rig.release("function")
    rig.advance(1)
    assert "fault" in rig.agent.alarms.active  # the gauge is still lying
    rig.battery.fault = None
    rig.advance(31)
    assert "fault" not in rig.agent.alarms.active
    rig.close()
    gauge = [e for e in events(rig) if e["event"] == "fault" and e["data"].get("kind") == "battery_gauge"]
    assert len(gauge) == 1 and "EIO" in gauge[0]["data"]["message"]
