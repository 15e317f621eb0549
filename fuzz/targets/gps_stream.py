"""Target ``gps_stream``: the GPS reader's byte-stream handling (``GpsReader._feed``).

A UART delivers bytes in arbitrary chunks. The input is cut into chunks (sizes taken
from its own bytes, so libFuzzer explores the cuts too) and fed to a real, unstarted
``GpsReader`` the way its thread does. The reader must never raise, never buffer more
than ``MAX_LINE_BYTES`` of an unterminated line, count every line it rejects under a
known reason, and keep a latest fix (merged RMC + GGA) whose ``as_dict`` — what goes
into signed segment headers — is canonical JSON (no NaN, no infinity) with a position
in range. The mutator applies the ``nmea`` target's checksum-fixing mutation to one
line of the stream, or reorders, repeats and drops lines (RMC/GGA pairing).
"""
from __future__ import annotations

import random

from buffer.envelope import canonical_json
from drivers.clock import CLOCK_FLOOR_UTC_NS, ClockState
from drivers.gps import MAX_LINE_BYTES, REJECTION_REASONS, GpsReader
from fuzz.harness import Defect
from fuzz.targets import nmea


class _Clock:
    def __init__(self) -> None:
        self.mono = 10**12

    def monotonic_ns(self) -> int:
        return self.mono

    def utc_ns(self) -> int:
        return 1_780_000_000 * 10**9 + self.mono

    def state(self) -> ClockState:
        return ClockState(synced=True, source="sim")


def check(data: bytes) -> None:
    clock = _Clock()
    reader = GpsReader("fuzz", clock=clock, serial_factory=lambda *a, **k: None)
    sizes = data[:4] or b"\x40"
    pos, i = 0, 0
    while pos < len(data):
        n = 1 + sizes[i % len(sizes)] % 97
        reader._feed(data[pos:pos + n])
        if len(reader._buf) > MAX_LINE_BYTES:
            raise Defect(f"the reader holds {len(reader._buf)} bytes of an unterminated line")
        pos, i = pos + n, i + 1
        clock.mono += 50_000_000
    stats = reader.stats
    unknown = set(stats) - set(REJECTION_REASONS) - {"lines", "fixes", "gga_merged"}
    if unknown:
        raise Defect(f"counters outside the documented set: {sorted(unknown)}")
    if sum(stats.get(r, 0) for r in REJECTION_REASONS) + stats.get("fixes", 0) > stats.get("lines", 0):
        raise Defect(f"more verdicts than lines: {stats}")
    fix = reader.latest()
    if fix is not None:
        doc = fix.as_dict(clock.monotonic_ns())
        try:
            canonical_json(doc)
        except ValueError as exc:
            raise Defect(f"a fix that cannot go into a signed header: {doc} ({exc})") from None
        if not (-90 <= fix.lat <= 90 and -180 <= fix.lon <= 180):
            raise Defect(f"fix position out of range: {fix.lat}, {fix.lon}")
    t = reader.gps_time_utc_ns()
    if t is not None and t.utc_ns < CLOCK_FLOOR_UTC_NS:
        raise Defect(f"GPS time {t.utc_ns} before the clock floor was accepted")


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    import atheris
    rng = random.Random(seed)
    lines = data.split(b"\n")
    r = rng.random()
    if r < 0.6:
        i = rng.randrange(len(lines))
        lines[i] = nmea.mutate(lines[i], 200, rng.getrandbits(32)).rstrip(b"\n")
    elif r < 0.8 and len(lines) > 1:
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        op = rng.random()
        if op < 0.4:
            lines[i], lines[j] = lines[j], lines[i]
        elif op < 0.8:
            lines.insert(i, lines[j])
        else:
            del lines[i]
    else:
        return atheris.Mutate(data, max_size)
    return b"\n".join(lines)[:max_size]
