"""drivers.pi_clock: chronyc tracking CSV → ClockState, RTC fallback, caching."""
from __future__ import annotations

import subprocess

import pytest

from drivers.clock import CLOCK_FLOOR_UTC_NS
from drivers.pi_clock import ChronyClock, TrackingParseError, parse_tracking

SYNCED = ("A29FC87B,ntp1.example.net,3,1764150000.123456789,-0.000012345,0.000001234,"
          "0.000023456,-12.345,0.001,0.012,0.012345678,0.001234567,64.5,Normal\n")
UNSYNCED = ("00000000,,0,0.000000000,0.000000000,0.000000000,0.000000000,0.000,0.000,"
            "0.000,1.000000000,1.000000000,0.0,Not synchronised\n")
STRATUM16 = SYNCED.replace(",3,", ",16,")


class Runner:
    def __init__(self, out=SYNCED, exc=None):
        self.out, self.exc, self.calls = out, exc, 0

    def __call__(self):
        self.calls += 1
        if self.exc:
            raise self.exc
        return self.out


class Mono:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def rtc(tmp_path, since_epoch: str | None, device=True):
    dev, sysf = tmp_path / "rtc0", tmp_path / "since_epoch"
    if device:
        dev.write_text("")
    if since_epoch is not None:
        sysf.write_text(since_epoch + "\n")
    return {"rtc_device": dev, "rtc_since_epoch": sysf}


GOOD_RTC = str(CLOCK_FLOOR_UTC_NS // 10**9 + 86400 * 700)


def test_parse_tracking_field_order():
    t = parse_tracking(SYNCED)
    assert (t.ref_id, t.ref_name, t.stratum, t.leap_status) == ("A29FC87B", "ntp1.example.net", 3, "Normal")
    assert t.last_offset_ns == 1234 and t.update_interval == 64.5 and t.synced
    with pytest.raises(TrackingParseError):
        parse_tracking("506 Cannot talk to daemon\n")
    with pytest.raises(TrackingParseError):
        parse_tracking(SYNCED + SYNCED)


def test_synced_chrony_is_ntp(tmp_path):
    c = ChronyClock(Runner(SYNCED), **rtc(tmp_path, None, device=False))
    st = c.state()
    assert (st.synced, st.source, st.last_offset_ns) == (True, "ntp", 1234)


@pytest.mark.parametrize("out", [UNSYNCED, STRATUM16, SYNCED.replace("Normal", "Insert second")])
def test_unsynchronised_falls_back_to_rtc_then_none(tmp_path, out):
    st = ChronyClock(Runner(out), **rtc(tmp_path, GOOD_RTC)).state()
    assert (st.synced, st.source) == (True, "rtc")
    c = ChronyClock(Runner(out), rtc_device=tmp_path / "absent",
                    rtc_since_epoch=tmp_path / "since_epoch")
    assert (c.state().synced, c.state().source) == (False, "none")
    assert "not synchronised" in c.last_error


@pytest.mark.parametrize("exc", [FileNotFoundError(2, "No such file", "chronyc"),
                                 subprocess.CalledProcessError(1, "chronyc"),
                                 subprocess.TimeoutExpired("chronyc", 2)])
def test_chronyc_missing_or_silent_uses_rtc_or_none(tmp_path, exc):
    assert ChronyClock(Runner(exc=exc), **rtc(tmp_path, GOOD_RTC)).state().source == "rtc"
    none = ChronyClock(Runner(exc=exc), **rtc(tmp_path, "0")).state()  # RTC at 1970: dead cell
    assert (none.synced, none.source) == (False, "none")
    garbage = ChronyClock(Runner(exc=exc), **rtc(tmp_path, "banana")).state()
    assert garbage.source == "none"


def test_state_is_cached_for_a_few_seconds(tmp_path):
    r, mono = Runner(SYNCED), Mono()
    c = ChronyClock(r, monotonic=mono, cache_s=5.0, **rtc(tmp_path, None, device=False))
    for _ in range(10):
        c.state()
    assert r.calls == 1
    r.out = UNSYNCED
    mono.t += 4.9
    assert c.state().source == "ntp" and r.calls == 1
    mono.t += 0.2
    assert c.state().source == "none" and r.calls == 2


def test_wall_clock_before_floor_is_never_synced(tmp_path, monkeypatch):
    c = ChronyClock(Runner(SYNCED), **rtc(tmp_path, GOOD_RTC))
    monkeypatch.setattr(c, "utc_ns", lambda: 1_000 * 10**9)
    assert (c.state().synced, c.state().source) == (False, "none")


def test_a_correction_by_gps_vouches_when_chrony_does_not(tmp_path, monkeypatch):
    monkeypatch.setattr("time.clock_settime_ns", lambda *a: (_ for _ in ()).throw(PermissionError()))
    c = ChronyClock(Runner(UNSYNCED), **rtc(tmp_path, None, device=False))
    assert c.state().source == "none"
    c.correct(2_000_000, "gps")
    st = c.state()
    assert st.source == "gps" and st.last_offset_ns == 2_000_000
