"""NMEA properties (issue #7): a sentence built from values parses back to them, and
every single-bit flip of a valid sentence is rejected (the checksum is the only
integrity a UART gives) — or, where NMEA's case-insensitive hex allows it, parses to
the very same sentence. tests/drivers/test_gps.py covers positions and random bytes."""
from __future__ import annotations

import datetime as dt

import pynmea2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.gps import KNOTS_TO_MPS, ParsedSentence, Rejection, parse_line

SETTINGS = settings(max_examples=150, deadline=None)


def dm(value: float, width: int) -> str:
    """Degrees → NMEA ddmm.mmmmm (rounded to the 5 decimals a receiver sends)."""
    v = abs(value)
    d, m = int(v), round((abs(value) - int(v)) * 60, 5)
    if m >= 60:
        d, m = d + 1, 0.0
    return f"{d:0{width}d}{m:08.5f}"


def line(kind: str, fields: tuple[str, ...], talker: str = "GP") -> bytes:
    cls = {"RMC": pynmea2.RMC, "GGA": pynmea2.GGA}[kind]
    return cls(talker, kind, fields).render().encode() + b"\r\n"


times = st.times().map(lambda t: t.replace(microsecond=t.microsecond // 10_000 * 10_000))
dates = st.dates(dt.date(2000, 1, 1), dt.date(2068, 12, 31))  # ddmmyy: 69-99 read as 19xx
lats, lons = st.floats(-89.99, 89.99), st.floats(-179.99, 179.99)


@SETTINGS
@given(talker=st.sampled_from(["GP", "GN", "GL", "GA"]), t=times, d=dates, lat=lats, lon=lons,
       knots=st.floats(0, 999, allow_subnormal=False), course=st.none() | st.floats(0, 359.99))
def test_rmc_round_trip(talker, t, d, lat, lon, knots, course):
    raw = line("RMC", (t.strftime("%H%M%S.%f")[:9], "A", dm(lat, 2), "N" if lat >= 0 else "S",
                       dm(lon, 3), "E" if lon >= 0 else "W", f"{knots:.3f}",
                       "" if course is None else f"{course:.2f}", d.strftime("%d%m%y"), "", "", "A"), talker)
    r = parse_line(raw)
    assert isinstance(r, ParsedSentence) and r.sentence_type == talker + "RMC"
    assert r.lat == pytest.approx(lat, abs=1e-6) and r.lon == pytest.approx(lon, abs=1e-6)
    assert r.speed_mps == pytest.approx(round(knots, 3) * KNOTS_TO_MPS)
    assert r.course_deg == (None if course is None else pytest.approx(round(course, 2) % 360))
    moment = dt.datetime.combine(d, t, tzinfo=dt.UTC)
    assert r.time_utc == t.replace(tzinfo=dt.UTC) and r.utc_ns == int(moment.timestamp()) * 10**9 + t.microsecond * 1000


@SETTINGS
@given(t=times, lat=lats, lon=lons, quality=st.integers(1, 5), sats=st.integers(0, 64),
       hdop=st.floats(0, 99.9), alt=st.floats(-400, 9000))
def test_gga_round_trip(t, lat, lon, quality, sats, hdop, alt):
    raw = line("GGA", (t.strftime("%H%M%S.%f")[:9], dm(lat, 2), "N" if lat >= 0 else "S", dm(lon, 3),
                       "E" if lon >= 0 else "W", str(quality), f"{sats:02d}", f"{hdop:.1f}",
                       f"{alt:.1f}", "M", "47.0", "M", "", ""))
    r = parse_line(raw)
    assert isinstance(r, ParsedSentence) and r.kind == "GGA"
    assert r.lat == pytest.approx(lat, abs=1e-6) and r.lon == pytest.approx(lon, abs=1e-6)
    assert (r.satellites, r.time_utc) == (sats, t.replace(tzinfo=dt.UTC))
    assert r.hdop == pytest.approx(round(hdop, 1)) and r.alt_m == pytest.approx(round(alt, 1))


@SETTINGS
@given(t=times, d=dates, lat=lats, lon=lons)
def test_every_bit_flip_of_a_sentence_is_rejected_or_harmless(t, d, lat, lon):
    raw = line("RMC", (t.strftime("%H%M%S.%f")[:9], "A", dm(lat, 2), "N" if lat >= 0 else "S",
                       dm(lon, 3), "E" if lon >= 0 else "W", "1.000", "90.00", d.strftime("%d%m%y"),
                       "", "", "A"))
    good = parse_line(raw)
    assert isinstance(good, ParsedSentence)
    buf = bytearray(raw)
    for pos in range(len(raw) - 2):  # the line itself; CR LF are framing
        for bit in range(8):
            buf[pos] ^= 1 << bit
            got = parse_line(bytes(buf))
            buf[pos] ^= 1 << bit
            assert isinstance(got, Rejection) or got == good, (bytes(buf), pos, bit, got)
