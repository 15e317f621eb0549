"""drivers.gps: parse_line (pure, never raises) and GpsReader's framing, merging and
fault handling, against a scripted fake port (the pty tests are in tests/hw_sim)."""
from __future__ import annotations

import queue
import threading
import time

import pynmea2
import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.clock import parse_iso_utc
from drivers.gps import (MAX_LINE_BYTES, REJECTION_REASONS, Fix, GpsReader, ParsedSentence,
                         Rejection, parse_line)
from hw_sim.clock import SimClock

RMC = b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A\r\n"
GGA = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n"


def sentence(kind: str, fields: tuple[str, ...], talker: str = "GP") -> bytes:
    cls = {"RMC": pynmea2.RMC, "GGA": pynmea2.GGA}[kind]
    return cls(talker, kind, fields).render().encode() + b"\r\n"


def rmc(time_s="120000.00", status="A", lat="5130.06000", ns="N", lon="00007.56000",
        ew="W", knots="2.000", course="90.00", date="011226", mode="A") -> bytes:
    return sentence("RMC", (time_s, status, lat, ns, lon, ew, knots, course, date, "", "", mode))


def gga(time_s="120000.00", quality="1", lat="5130.06000", lon="00007.56000",
        sats="08", hdop="0.9", alt="35.0") -> bytes:
    return sentence("GGA", (time_s, lat, "N", lon, "W", quality, sats, hdop, alt, "M",
                            "47.0", "M", "", ""))


def wait_for(predicate, timeout=3.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.002)
    raise AssertionError(f"timed out waiting for {what}")


# ------------------------------------------------------------------ parse_line

def test_valid_rmc_and_gga():
    r = parse_line(RMC)
    assert isinstance(r, ParsedSentence) and r.sentence_type == "GPRMC"
    assert r.lat == pytest.approx(48.1173) and r.lon == pytest.approx(11.516666667)
    assert r.speed_mps == pytest.approx(22.4 * 1852 / 3600)
    assert r.course_deg == pytest.approx(84.4)
    assert r.utc_ns == parse_iso_utc("1994-03-23T12:35:19Z")
    g = parse_line(GGA)
    assert isinstance(g, ParsedSentence) and g.kind == "GGA"
    assert (g.alt_m, g.satellites, g.hdop) == (545.4, 8, 0.9)
    assert g.time_utc == r.time_utc


def test_southern_and_western_hemispheres_are_negative():
    r = parse_line(rmc(lat="3351.12000", ns="S", lon="15112.60000", ew="W"))
    assert r.lat == pytest.approx(-(33 + 51.12 / 60)) and r.lon == pytest.approx(-(151 + 12.6 / 60))


@pytest.mark.parametrize("line, reason", [
    (rmc(status="V"), "no_fix"),
    (rmc(mode="N"), "no_fix"),
    (rmc(mode="E"), "no_fix"),                      # dead reckoning is not a measurement
    (gga(quality="0"), "no_fix"),
    (gga(quality="6"), "no_fix"),
    (gga(quality=""), "no_fix"),
    (RMC.replace(b"*6A", b"*6B"), "bad_checksum"),
    (RMC.replace(b"*6A", b""), "no_checksum"),
    (RMC[1:], "malformed"),                         # lost its '$'
    (rmc(ns="X"), "malformed"),                     # pynmea2 would say 0.0
    (rmc(lat="9530.00000"), "malformed"),           # 95° N
    (rmc(lat="5175.00000"), "malformed"),           # 75 minutes
    (rmc(lat=""), "malformed"),                     # status A without a position
    (rmc(time_s="256199"), "malformed"),            # hour 25
    (rmc(date="320199"), "malformed"),              # 32 January
    (rmc(knots="fast"), "malformed"),
    (rmc(course="400"), "malformed"),
    (gga(sats="x"), "malformed"),
    (gga(alt="inf"), "malformed"),
    (b"$GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00*74\r\n", "ignored_type"),
    (b"$GPZZZ,1,2*" + b"%02X" % pynmea2.NMEASentence.checksum("GPZZZ,1,2") + b"\r\n",
     "unknown_type"),
    (b"$GPRMC,\xe9t\xe9*00\r\n", "non_ascii"),
    (b"$GPRMC,\x00*00\r\n", "non_ascii"),
    (b"$" + b"9" * MAX_LINE_BYTES + b"\r\n", "too_long"),
    (b"\r\n", "empty"),
    (b"garbage", "malformed"),
])
def test_rejections_name_their_reason(line, reason):
    result = parse_line(line)
    assert isinstance(result, Rejection), result
    assert result.reason == reason, result


def test_rmc_without_date_has_no_utc():
    r = parse_line(rmc(date=""))
    assert isinstance(r, ParsedSentence) and r.utc_ns is None and r.time_utc is not None


def test_stationary_rmc_has_no_course():
    r = parse_line(rmc(knots="0.000", course=""))
    assert r.speed_mps == 0.0 and r.course_deg is None


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(raw):
    result = parse_line(raw)
    assert isinstance(result, (ParsedSentence, Rejection))
    if isinstance(result, Rejection):
        assert result.reason in REJECTION_REASONS


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="$GPRMCGA0123456789.,*ANSEWV-", max_size=100))
def test_nmea_shaped_text_never_raises(text):
    result = parse_line(text.encode())
    assert isinstance(result, (ParsedSentence, Rejection))


@settings(max_examples=200, deadline=None)
@given(st.floats(-89.99, 89.99), st.floats(-179.99, 179.99))
def test_rendered_positions_round_trip(lat, lon):
    def dm(v, width):
        v = abs(v)
        d = int(v)
        m = round((v - d) * 60, 5)
        if m >= 60:
            d, m = d + 1, 0.0
        return f"{d:0{width}d}{m:08.5f}"
    line = rmc(lat=dm(lat, 2), ns="N" if lat >= 0 else "S",
               lon=dm(lon, 3), ew="E" if lon >= 0 else "W")
    r = parse_line(line)
    assert isinstance(r, ParsedSentence)
    assert r.lat == pytest.approx(lat, abs=1e-6) and r.lon == pytest.approx(lon, abs=1e-6)


# ------------------------------------------------------------------ reader, fake port

class FakePort:
    """Scripted serial port: chunks from a queue; an Exception in the queue is raised."""

    def __init__(self):
        self.chunks: queue.Queue = queue.Queue()
        self.closed = threading.Event()

    def read(self, size=1):
        try:
            item = self.chunks.get(timeout=0.02)
        except queue.Empty:
            return b""
        if isinstance(item, Exception):
            raise item
        return item

    @property
    def in_waiting(self):
        return 0

    def close(self):
        self.closed.set()


class FakeFactory:
    def __init__(self):
        self.ports: list[FakePort] = []
        self.fail_next = 0

    def __call__(self, port, baudrate, timeout):
        if self.fail_next:
            self.fail_next -= 1
            raise serial.SerialException(2, f"could not open port {port}")
        self.ports.append(FakePort())
        return self.ports[-1]


@pytest.fixture
def fake():
    clock = SimClock()
    factory = FakeFactory()
    faults: list[tuple[str, str]] = []
    reader = GpsReader("/dev/fake-gps", clock=clock, on_fault=lambda n, d: faults.append((n, d)),
                       reopen_interval_s=0.01, serial_factory=factory)
    yield clock, factory, reader, faults
    reader.stop()


def lines(reader):
    return reader.stats.get("lines", 0)


def test_lines_split_across_reads_and_gga_before_rmc_merge(fake):
    clock, factory, reader, _ = fake
    reader.start()
    wait_for(lambda: factory.ports, what="open")
    port = factory.ports[0]
    data = gga() + rmc()                      # GGA first, as some receivers do
    for i in range(0, len(data), 7):
        port.chunks.put(data[i:i + 7])
    wait_for(lambda: lines(reader) == 2, what="two lines")
    fix = reader.latest()
    assert fix.sources == ("GPRMC", "GPGGA")
    assert (fix.alt_m, fix.satellites, fix.hdop) == (35.0, 8, 0.9)
    assert fix.fix_utc == "2026-12-01T12:00:00.000Z"
    assert fix.received_mono_ns == clock.monotonic_ns()
    # a GGA of another epoch does not decorate a fix it does not belong to
    port.chunks.put(rmc(time_s="120001.00") + gga(time_s="120002.00", alt="99.0"))
    wait_for(lambda: lines(reader) == 4, what="two more lines")
    assert reader.latest().sources == ("GPRMC",) and reader.latest().alt_m is None


def test_over_long_line_is_skipped_to_its_end_without_buffering_it(fake):
    _, factory, reader, _ = fake
    reader.start()
    wait_for(lambda: factory.ports, what="open")
    port = factory.ports[0]
    for _ in range(50):                       # 5 kB of noise without a newline
        port.chunks.put(b"x" * 100)
    port.chunks.put(b"tail-of-noise\r\n" + rmc())
    wait_for(lambda: reader.stats.get("fixes") == 1, what="fix after noise")
    assert reader.stats["too_long"] == 1 and reader.stats["lines"] == 2
    assert len(reader._buf) == 0


def test_open_failure_at_start_then_recovery_and_a_raising_callback(fake):
    _, factory, reader, faults = fake
    factory.fail_next = 3

    def bad_callback(name, detail):
        faults.append((name, detail))
        raise RuntimeError("callback bug")
    reader.on_fault = bad_callback            # assigned after construction, as the agent does
    reader.start()
    wait_for(lambda: reader.connected, what="open after failures")
    assert [n for n, _ in faults] == ["gps_port_lost", "gps_port_back"]
    assert reader.stats["open_failed"] == 3 and reader.stats["port_lost"] == 1
    factory.ports[0].chunks.put(serial.SerialException("read failed: [Errno 5]"))
    wait_for(lambda: len(faults) == 4, what="lost + back again")
    assert [n for n, _ in faults][2:] == ["gps_port_lost", "gps_port_back"]
    assert factory.ports[0].closed.is_set()
    factory.ports[1].chunks.put(rmc())
    wait_for(lambda: reader.latest() is not None, what="fix on the new port")


def test_latest_max_age_uses_the_injected_clock(fake):
    clock, factory, reader, _ = fake
    reader.start()
    wait_for(lambda: factory.ports, what="open")
    factory.ports[0].chunks.put(rmc())
    wait_for(lambda: reader.latest() is not None, what="fix")
    fix = reader.latest(max_age_s=10)
    clock.advance(10 * 10**9)
    assert reader.latest(max_age_s=10) is fix
    assert reader.has_fix(clock.monotonic_ns(), 10)
    clock.advance(1)
    assert reader.latest(max_age_s=10) is None and reader.latest() is fix
    assert not reader.has_fix(clock.monotonic_ns(), 10)
    d = fix.as_dict(clock.monotonic_ns())
    assert d["age_s"] == 10.0 and d["sources"] == ["GPRMC"] and d["lat"] == fix.lat


def test_gps_time_refuses_a_week_rollover_date(fake):
    _, factory, reader, _ = fake
    reader.start()
    wait_for(lambda: factory.ports, what="open")
    factory.ports[0].chunks.put(rmc(date="160507"))       # 2007: rollover bug
    wait_for(lambda: reader.latest() is not None, what="fix")
    assert reader.gps_time_utc_ns() is None
    assert reader.latest().fix_utc.startswith("2007-05-16")   # the fix still says what it got


def test_stop_is_prompt_even_while_waiting_to_reopen():
    faults = []
    reader = GpsReader("/nonexistent/bwv-gps", clock=SimClock(), reopen_interval_s=30.0,
                       on_fault=lambda n, d: faults.append(n)).start()
    wait_for(lambda: faults == ["gps_port_lost"], what="lost fault")
    t0 = time.monotonic()
    reader.stop()
    assert time.monotonic() - t0 < 0.5
    assert not reader._thread.is_alive()


def test_fix_is_frozen():
    fix = Fix(1.0, 2.0, None, None, None, None, None, None, 0, ("GPRMC",))
    with pytest.raises(Exception):
        fix.lat = 3.0
