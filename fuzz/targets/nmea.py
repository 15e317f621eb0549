"""Target ``nmea``: one line from the GPS receiver (``drivers.gps.parse_line``).

``parse_line`` promises never to raise and to return a ``Rejection`` with one of
``REJECTION_REASONS``, or a ``ParsedSentence`` whose every field is usable evidence: a
latitude within ±90°, a longitude within ±180°, finite numbers, a speed ≥ 0, a course
in [0, 360), counts ≥ 0. A fix that breaks that would be written into signed segment
headers (where ``canonical_json`` refuses NaN outright). ``fuzz/dicts/nmea.dict``
gives libFuzzer NMEA's tokens; the mutator changes fields and then, most of the time,
writes a correct checksum, so inputs get past the checksum to the field checks.
"""
from __future__ import annotations

import datetime as dt
import math
import random
from functools import reduce

from drivers.gps import REJECTION_REASONS, ParsedSentence, Rejection, parse_line
from fuzz.harness import Defect


def _finite(name: str, v, lo: float | None = None, hi: float | None = None,
            *, hi_open: bool = False) -> None:
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise Defect(f"{name} is {v!r}, not a finite number")
    if lo is not None and v < lo:
        raise Defect(f"{name} {v!r} is below {lo}")
    if hi is not None and (v >= hi if hi_open else v > hi):
        raise Defect(f"{name} {v!r} is above {hi}")


def check_sentence(r: ParsedSentence) -> None:
    if r.kind not in ("RMC", "GGA") or not isinstance(r.talker, str):
        raise Defect(f"parsed an unexpected sentence {r.kind!r} from {r.talker!r}")
    if r.lat is None or r.lon is None:
        raise Defect("a parsed fix without a position")
    _finite("lat", r.lat, -90, 90)
    _finite("lon", r.lon, -180, 180)
    _finite("speed_mps", r.speed_mps, 0)
    _finite("course_deg", r.course_deg, 0, 360, hi_open=True)
    _finite("alt_m", r.alt_m)
    _finite("satellites", r.satellites, 0)
    _finite("hdop", r.hdop, 0)
    if r.time_utc is not None and not isinstance(r.time_utc, dt.time):
        raise Defect(f"time_utc is {r.time_utc!r}")
    if r.utc_ns is not None and (not isinstance(r.utc_ns, int) or isinstance(r.utc_ns, bool)):
        raise Defect(f"utc_ns is {r.utc_ns!r}")


def check(data: bytes) -> None:
    r = parse_line(data)
    if isinstance(r, Rejection):
        if r.reason not in REJECTION_REASONS:
            raise Defect(f"rejection reason {r.reason!r} is not one of REJECTION_REASONS")
        return
    if not isinstance(r, ParsedSentence):
        raise Defect(f"parse_line returned {type(r).__name__}")
    check_sentence(r)


_FIELDS = ["", "A", "V", "N", "S", "E", "W", "M", "0", "1", "6", "8", "-1", "9999.9999",
           "9000.0000", "18000.0000", "0959.9999", "4807.038", "01131.000", "60.0", "1e400",
           "nan", "inf", "-0", "235960", "240000", "123519.5", "999999", "310299", "290201",
           "000000", "024.4", "361.0", "-5.0", "99.9", "12a", "0x10", " 1"]


def checksummed(body: bytes) -> bytes:
    """``$body*hh`` with the XOR checksum NMEA specifies."""
    return b"$" + body + b"*%02X" % reduce(lambda a, b: a ^ b, body, 0)


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    import atheris
    rng = random.Random(seed)
    line = data.rstrip(b"\r\n")
    body = line[1:].split(b"*", 1)[0] if line.startswith(b"$") else line
    r = rng.random()
    if r < 0.45:
        fields = body.split(b",")
        for _ in range(rng.choice([1, 1, 2, 3])):
            i = rng.randrange(len(fields))
            fields[i] = rng.choice(_FIELDS).encode() if rng.random() < 0.7 else fields[rng.randrange(len(fields))]
        body = b",".join(fields)
    elif r < 0.8:
        body = atheris.Mutate(body, max(8, max_size - 8))
    else:
        return atheris.Mutate(data, max_size)
    return (checksummed(body) + (b"\r\n" if rng.random() < 0.9 else b""))[:max_size]
