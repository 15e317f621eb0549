"""hw_sim.SimGpsReceiver on a real pty, read by the production drivers.gps.GpsReader.

Every wait polls a condition with a deadline; the virtual clock is advanced by the test
and the simulator writes what is due, so nothing depends on real-time pacing.
"""
from __future__ import annotations

import os
import time

import pytest
import serial

from drivers.clock import parse_iso_utc
from drivers.gps import GpsReader, ParsedSentence, parse_line
from hw_sim.clock import SimClock
from hw_sim.gps import SimGpsReceiver, distance_m

S = 10**9


def wait_for(predicate, timeout=3.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.002)
    raise AssertionError(f"timed out waiting for {what}")


class Rig:
    def __init__(self, clock: SimClock, sim: SimGpsReceiver, reader: GpsReader, faults: list):
        self.clock, self.sim, self.reader, self.faults = clock, sim, reader, faults

    def lines(self) -> int:
        return self.reader.stats.get("lines", 0)

    def tick(self, seconds: int = 1) -> None:
        """Advance virtual time 1 s at a time; wait until the reader has every line."""
        for _ in range(seconds):
            expected = self.lines()
            self.clock.advance(S)
            expected += self.sim.emit_now()
            wait_for(lambda: self.lines() >= expected, what=f"{expected} lines")

    def fault_names(self) -> list[str]:
        return [name for name, _ in self.faults]


@pytest.fixture
def rig():
    clock = SimClock()
    sim = SimGpsReceiver(clock)
    faults: list[tuple[str, str]] = []
    reader = GpsReader(sim.port, clock=clock, on_fault=lambda n, d: faults.append((n, d)),
                       reopen_interval_s=0.02, read_timeout_s=0.05).start()
    wait_for(lambda: reader.connected, what="reader open")
    assert sim.emit_now() == 2                # the epoch at t = 0; each tick adds one
    wait_for(lambda: reader.stats.get("fixes") == 1, what="first fix")
    yield Rig(clock, sim, reader, faults)
    reader.stop()
    sim.close()


# ------------------------------------------------------------------ the simulator alone

def test_sim_writes_checked_sentences_on_the_pty_and_never_blocks():
    clock = SimClock()
    with SimGpsReceiver(clock) as sim:
        assert os.path.islink(sim.port) and os.readlink(sim.port) == sim.slave_path
        port = serial.Serial(sim.port, 9600, timeout=0.5)
        try:
            assert sim.emit_until(clock.monotonic_ns() + 2 * S) == 6     # epochs 0, 1, 2
            data = b""
            deadline = time.monotonic() + 2
            while data.count(b"\n") < 6 and time.monotonic() < deadline:
                data += port.read(max(1, port.in_waiting))
            parsed = [parse_line(line) for line in data.splitlines(keepends=True)]
            assert all(isinstance(p, ParsedSentence) for p in parsed), parsed
            assert [p.kind for p in parsed] == ["RMC", "GGA"] * 3
        finally:
            port.close()
        # nobody reading for an hour of virtual time at 10 Hz: writes drop, never block
        burst = SimGpsReceiver(clock, rate_hz=10.0, max_burst_epochs=10_000)
        try:
            t0 = time.monotonic()
            burst.emit_until(clock.monotonic_ns() + 3600 * S)
            assert time.monotonic() - t0 < 5
            assert burst.stats["dropped_bytes"] > 0
        finally:
            burst.close()


def test_a_long_clock_jump_writes_only_the_last_epochs():
    clock = SimClock()
    with SimGpsReceiver(clock, max_burst_epochs=3) as sim:
        assert sim.emit_until(clock.monotonic_ns() + 3600 * S) == 6
        assert sim.emit_until(clock.monotonic_ns() + 3600 * S) == 0     # nothing new due


def test_reappear_points_the_same_path_at_a_new_pty():
    clock = SimClock()
    with SimGpsReceiver(clock) as sim:
        first = sim.slave_path
        sim.disappear()
        assert not os.path.lexists(sim.port) and not sim.present
        assert sim.emit_now() == 0
        sim.reappear()
        assert os.path.realpath(sim.port) == sim.slave_path and sim.present
        assert first is not None


# ------------------------------------------------------------------ reader + simulator

def test_reader_follows_the_walk(rig):
    rig.tick(1)
    first = rig.reader.latest()
    assert first is not None and first.sources == ("GPRMC", "GPGGA")
    for _ in range(30):
        rig.tick(1)
        fix = rig.reader.latest(max_age_s=2)
        assert fix is not None
        truth_mono = parse_iso_utc(fix.fix_utc) - rig.sim.utc_offset_ns
        lat, lon, speed, course = rig.sim.position_at(truth_mono)
        assert distance_m((fix.lat, fix.lon), (lat, lon)) < 0.5
        assert fix.speed_mps == pytest.approx(1.4, abs=0.01)
        assert fix.course_deg == pytest.approx(course, abs=0.1)
        assert (fix.alt_m, fix.satellites, fix.hdop) == (35.0, 8, 0.9)
    moved = distance_m((first.lat, first.lon), (fix.lat, fix.lon))
    assert 30 * 1.4 - 1 < moved < 30 * 1.4 + 1
    epochs = rig.sim.stats["sentences"] // 2          # 0 s .. 31 s: 32 epochs
    assert epochs == 32
    assert rig.reader.stats["fixes"] == epochs and rig.reader.stats["gga_merged"] == epochs
    assert rig.faults == []


def test_lost_fix_ages_out_and_is_never_refreshed(rig):
    rig.tick(3)
    before = rig.reader.latest()
    rig.sim.lose_fix(True)
    rig.tick(4)                               # V / quality 0 for 4 s
    assert rig.reader.latest(max_age_s=5) is before     # still the old fix, 4 s old
    assert before.as_dict(rig.clock.monotonic_ns())["age_s"] == pytest.approx(4.0)
    rig.tick(2)
    assert rig.reader.latest(max_age_s=5) is None
    assert not rig.reader.has_fix(rig.clock.monotonic_ns(), 5)
    assert rig.reader.latest() is before      # kept, with its true (old) receive time
    assert rig.reader.stats["no_fix"] == 12
    rig.sim.lose_fix(False)
    rig.tick(1)
    again = rig.reader.latest(max_age_s=1)
    assert again is not None and again.received_mono_ns == rig.clock.monotonic_ns()


def test_garbage_and_bad_checksums_are_counted_and_fixes_continue(rig):
    rig.tick(1)
    start = rig.lines()
    garbage = rig.sim.send_garbage(10)
    wait_for(lambda: rig.lines() >= start + len(garbage), what="garbage lines")
    stats = rig.reader.stats
    for reason in ("malformed", "non_ascii", "too_long", "no_checksum", "unknown_type"):
        assert stats[reason] == 2, (reason, stats)
    rig.sim.bad_checksums(4)                  # both sentences of the next two epochs
    rig.tick(3)
    stats = rig.reader.stats
    assert stats["bad_checksum"] == 4
    assert stats["fixes"] == 3                # epochs 0 and 1, two bad ones, then epoch 4
    fix = rig.reader.latest(max_age_s=0)
    assert fix is not None and fix.received_mono_ns == rig.clock.monotonic_ns()
    assert rig.faults == []


def test_port_vanishes_and_comes_back(rig):
    rig.tick(2)
    rig.sim.disappear()
    wait_for(lambda: rig.fault_names() == ["gps_port_lost"], what="gps_port_lost")
    opened_failures = rig.reader.stats.get("open_failed", 0)
    wait_for(lambda: rig.reader.stats.get("open_failed", 0) >= opened_failures + 5,
             what="several reopen attempts")
    assert rig.fault_names() == ["gps_port_lost"]          # once, not per retry
    rig.clock.advance(5 * S)
    assert rig.sim.emit_now() == 0                          # unplugged: nothing sent
    old = rig.reader.latest()
    rig.sim.reappear()
    wait_for(lambda: rig.fault_names() == ["gps_port_lost", "gps_port_back"],
             what="gps_port_back")
    wait_for(lambda: rig.reader.connected, what="connected")
    rig.tick(1)
    fix = rig.reader.latest(max_age_s=1)
    assert fix is not None and fix is not old
    assert rig.reader.stats["port_lost"] == 1 and rig.reader.stats["port_opened"] == 2


def test_gps_time_matches_the_sim_clock(rig):
    rig.tick(3)
    got = rig.reader.gps_time_utc_ns()
    assert got is not None
    utc_now = got.utc_ns + (rig.clock.monotonic_ns() - got.received_mono_ns)
    assert abs(utc_now - rig.clock.utc_ns()) < S


def test_gps_time_is_the_satellites_time_when_the_clock_is_not_set():
    truth_clock = SimClock()
    unset = SimClock(utc_start_ns=0)                          # RTC lost: 1970
    offset = truth_clock.utc_ns() - unset.monotonic_ns()
    with SimGpsReceiver(unset, true_utc_offset_ns=offset) as sim:
        reader = GpsReader(sim.port, clock=unset, reopen_interval_s=0.02).start()
        try:
            wait_for(lambda: reader.connected, what="open")
            unset.advance(S)
            sentences = sim.emit_now()       # the epochs at +0 s and +1 s: wait for both
            wait_for(lambda: reader.stats.get("lines", 0) >= sentences, what="every sentence read")
            assert reader.gps_time_utc_ns() is not None
            utc, at = reader.gps_time_utc_ns()
            assert abs(utc + (unset.monotonic_ns() - at) - (truth_clock.utc_ns() + S)) < S
        finally:
            reader.stop()


def test_stop_is_prompt(rig):
    rig.tick(1)
    t0 = time.monotonic()
    rig.reader.stop()
    assert time.monotonic() - t0 < 0.5 and not rig.reader.connected
    assert not rig.reader._thread.is_alive()
