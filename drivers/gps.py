"""The GPS receiver: NMEA 0183 over a UART, read with pyserial and parsed with pynmea2.

Evidence wants two things from a GPS: *where* the camera was when a segment was
captured, and — when the wall clock is not set — *what time it is*. Both must be
conservative. A receiver without a fix keeps talking (status ``V``, quality 0) with
stale or invented numbers, a UART picks up noise, and a USB receiver can be unplugged
in the middle of a shift. So this driver keeps only the latest *valid* fix (RMC status
``A``, enriched by a GGA of the same epoch with quality > 0), stamps it with the injected
clock's monotonic time when it arrived, and lets callers ask for a fix no older than a
limit. Everything else is counted per reason in :attr:`GpsReader.stats` and never stops
the reader.

Parsing is one pure function, :func:`parse_line`: bytes in, a :class:`ParsedSentence`
or a :class:`Rejection` out, never an exception. pynmea2 does the NMEA work (framing
regex, checksum, field split, typed fields); this module adds only what pynmea2 does
not check: a leading ``$``, a mandatory checksum, printable ASCII, the 82-character
limit (with slack), hemisphere letters, coordinate ranges, and fields whose conversion
pynmea2 silently gives up on (it returns the raw string when a converter fails).

Example::

    gps = GpsReader("/dev/bwv-gps", clock=clock, on_fault=agent_fault).start()
    fix = gps.latest(max_age_s=10)          # None: no valid fix in the last 10 s
    header["gps"] = fix.as_dict(clock.monotonic_ns()) if fix else None
    gps.stop()

Faults (``on_fault(name, detail)``, called on the reader thread):

* ``gps_port_lost`` — the port could not be opened, or a read failed (pty closed, USB
  receiver unplugged). Reported once per outage; the reader then retries every
  ``reopen_interval_s`` of real time until it succeeds or :meth:`GpsReader.stop`.
* ``gps_port_back`` — the port opened again after ``gps_port_lost``.
* ``gps_reader_error`` — a bug escaped the read loop; the port is closed and reopened
  after ``reopen_interval_s``. Should never happen; reported so it cannot go unseen.

A note on threads
-----------------
:class:`GpsReader` runs one daemon thread that owns the serial port, the line buffer
and the pending GGA; nothing else touches them. What it shares with callers — the latest
fix, the latest GPS time and the counters — sits behind one lock (``_lock``), held only
to swap or copy a few references, never across I/O or callbacks. :meth:`latest`,
:meth:`has_fix`, :meth:`gps_time_utc_ns` and :attr:`stats` may be called from any
thread. ``on_fault`` runs on the reader thread without the lock held; it must be quick
and must not call :meth:`stop` (that would join the thread it runs on). The callback
attribute is read at each call, so it may be assigned after :meth:`start` (an attribute
assignment is atomic in CPython). The injected clock must be safe to read from another
thread (``SystemClock`` and ``SimClock`` are).
"""
from __future__ import annotations

import datetime as _dt
import logging
import math
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

import pynmea2
import serial

from drivers.clock import CLOCK_FLOOR_UTC_NS, Clock, iso_utc

log = logging.getLogger("bwv.gps")

#: NMEA 0183 caps a sentence at 82 characters including ``$`` and CR LF; some receivers
#: overrun it slightly (long proprietary sentences), so lines up to this are parsed and
#: longer ones are rejected as ``too_long`` (and never buffered beyond it).
MAX_LINE_BYTES = 120
KNOTS_TO_MPS = 1852.0 / 3600.0

#: Every :attr:`Rejection.reason` that :func:`parse_line` can return.
REJECTION_REASONS: tuple[str, ...] = (
    "empty",          # a blank line (harmless; some receivers send CR LF CR LF)
    "too_long",       # longer than MAX_LINE_BYTES: line noise or two sentences run together
    "non_ascii",      # a byte outside printable ASCII 0x20-0x7E (NMEA allows nothing else)
    "malformed",      # no '$', unparseable, or a field that is impossible (lat 95°, hour 25)
    "no_checksum",    # a sentence without '*hh'; a UART gives no other integrity check
    "bad_checksum",   # '*hh' does not match the XOR of the sentence
    "unknown_type",   # a talker sentence type pynmea2 does not know
    "ignored_type",   # well-formed, but not RMC/GGA (GSV, GSA, VTG, proprietary, ...)
    "no_fix",         # RMC status V / mode N,E,M,S, or GGA quality 0 or 6-8: no position
)

#: GGA quality values that mean a measured position. 0 is no fix; 6 (dead reckoning),
#: 7 (manual input) and 8 (simulator) are not measurements and never become evidence.
_GGA_FIX_QUALITIES = frozenset({1, 2, 3, 4, 5})
#: RMC mode indicators (NMEA 2.3+) that mean "not a measured position" even if a
#: receiver leaves the status at 'A': N not valid, E estimated, M manual, S simulator.
_RMC_NO_FIX_MODES = frozenset({"N", "E", "M", "S"})

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


@dataclass(frozen=True)
class Rejection:
    """A line that did not yield a usable sentence, and why (one of REJECTION_REASONS)."""

    reason: str
    detail: str = ""


@dataclass(frozen=True)
class ParsedSentence:
    """A checked RMC or GGA that reports a valid fix.

    RMC fills ``speed_mps``/``course_deg``/``utc_ns`` (date + time); GGA fills
    ``alt_m``/``satellites``/``hdop``. ``time_utc`` (the receiver's epoch time of day)
    ties the two sentences of one epoch together.
    """

    kind: str                      # "RMC" | "GGA"
    talker: str                    # "GP", "GN", "GL", ...
    lat: float
    lon: float
    time_utc: _dt.time | None
    utc_ns: int | None = None      # RMC with a date: date + time as ns since the epoch
    speed_mps: float | None = None
    course_deg: float | None = None
    alt_m: float | None = None
    satellites: int | None = None
    hdop: float | None = None

    @property
    def sentence_type(self) -> str:
        return self.talker + self.kind


@dataclass(frozen=True)
class Fix:
    """The latest valid position, as it goes into segment headers and manifests.

    ``received_mono_ns`` is when the RMC arrived, on the injected clock's monotonic
    line (the segment's own time line), so a fix's age is exact whatever the wall
    clock says. ``fix_utc`` is the receiver's own time for the fix (ISO 8601 ``Z``, ms),
    or None if that RMC carried no date. ``speed_mps`` and ``course_deg`` are None when
    the receiver leaves them empty (course is typically empty when standing still).
    """

    lat: float
    lon: float
    alt_m: float | None
    speed_mps: float | None
    course_deg: float | None
    fix_utc: str | None
    satellites: int | None
    hdop: float | None
    received_mono_ns: int
    sources: tuple[str, ...]       # sentence types that built it, e.g. ("GPRMC", "GPGGA")

    def age_s(self, now_mono_ns: int) -> float:
        return (now_mono_ns - self.received_mono_ns) / 1e9

    def as_dict(self, now_mono_ns: int) -> dict:
        """JSON-ready, for segment headers, manifests and the audit log; ``age_s`` is
        the fix's age at ``now_mono_ns`` (ms resolution)."""
        return {"lat": self.lat, "lon": self.lon, "alt_m": self.alt_m,
                "speed_mps": self.speed_mps, "course_deg": self.course_deg,
                "fix_utc": self.fix_utc, "satellites": self.satellites, "hdop": self.hdop,
                "age_s": round(self.age_s(now_mono_ns), 3), "sources": list(self.sources)}


class GpsTime(NamedTuple):
    """UTC from the receiver and the monotonic instant it was received.

    UTC now ≈ ``utc_ns + (now_mono_ns - received_mono_ns)``. NMEA time is the epoch's
    time, and the sentence leaves the receiver some 0.1-0.5 s later (plus UART
    transfer), so this is good to about a second — enough to replace "clock not set",
    not a substitute for PPS or NTP.
    """

    utc_ns: int
    received_mono_ns: int


# --------------------------------------------------------------------------- parsing

def _finite(value) -> float | None:
    """A float field pynmea2 converted, else None (it returns the raw str on failure)."""
    if isinstance(value, float) and math.isfinite(value):
        return value
    return None


def _opt_float(text) -> float | None:
    """An unconverted numeric field ('' = absent). Raises ValueError if present and bad."""
    if text in (None, ""):
        return None
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def _degrees(dm: str, hemi: str, *, positive: str, negative: str, limit: float) -> float:
    """ddmm.mmmm + hemisphere → signed degrees, refusing what pynmea2 lets through
    (it maps an unknown hemisphere to 0.0 and accepts 75 minutes)."""
    if not dm:
        raise ValueError("position field is empty")
    if hemi not in (positive, negative):
        raise ValueError(f"hemisphere {hemi!r} is not {positive}/{negative}")
    if float(dm) % 100 >= 60:
        raise ValueError(f"{dm!r} has 60 or more minutes")
    value = pynmea2.nmea_utils.dm_to_sd(dm)
    if not 0 <= value <= limit:
        raise ValueError(f"{dm!r} is beyond {limit:g} degrees")
    return value if hemi == positive else -value


def _time_field(msg) -> _dt.time | None:
    t = msg.timestamp
    if t is None:
        return None
    if not isinstance(t, _dt.time):
        raise ValueError(f"time {t!r} is not hhmmss.ss")
    return t


def _utc_ns(date: _dt.date, t: _dt.time) -> int:
    moment = _dt.datetime.combine(date, t.replace(tzinfo=None), tzinfo=_dt.timezone.utc)
    return (moment - _EPOCH) // _dt.timedelta(microseconds=1) * 1000


def _from_rmc(msg, talker: str) -> ParsedSentence | Rejection:
    if msg.status != "A":
        return Rejection("no_fix", f"RMC status {msg.status!r}")
    mode = msg.mode_indicator  # '' before NMEA 2.3 (pynmea2 pads missing fields)
    if mode in _RMC_NO_FIX_MODES:
        return Rejection("no_fix", f"RMC mode {mode!r}")
    t = _time_field(msg)
    date = msg.datestamp
    if date is not None and not isinstance(date, _dt.date):
        raise ValueError(f"date {date!r} is not ddmmyy")
    knots = _finite(msg.spd_over_grnd)
    if msg.spd_over_grnd is not None and (knots is None or knots < 0):
        raise ValueError(f"speed {msg.spd_over_grnd!r} is not a speed")
    course = _finite(msg.true_course)
    if msg.true_course is not None and (course is None or not 0 <= course <= 360):
        raise ValueError(f"course {msg.true_course!r} is not 0-360")
    return ParsedSentence(
        kind="RMC", talker=talker,
        lat=_degrees(msg.lat, msg.lat_dir, positive="N", negative="S", limit=90.0),
        lon=_degrees(msg.lon, msg.lon_dir, positive="E", negative="W", limit=180.0),
        time_utc=t, utc_ns=_utc_ns(date, t) if (date is not None and t is not None) else None,
        speed_mps=None if knots is None else knots * KNOTS_TO_MPS,
        course_deg=None if course is None else course % 360.0)


def _from_gga(msg, talker: str) -> ParsedSentence | Rejection:
    quality = msg.gps_qual
    if quality is None:
        return Rejection("no_fix", "GGA quality empty")
    if not isinstance(quality, int):
        raise ValueError(f"GGA quality {quality!r} is not a number")
    if quality not in _GGA_FIX_QUALITIES:
        return Rejection("no_fix", f"GGA quality {quality}")
    alt = None
    if msg.altitude is not None:
        alt = _finite(msg.altitude)
        if alt is None or (msg.altitude_units not in ("M", "")):
            raise ValueError(f"altitude {msg.altitude!r} {msg.altitude_units!r} is not metres")
    sats = None if msg.num_sats in (None, "") else int(msg.num_sats)
    hdop = _opt_float(msg.horizontal_dil)
    if (sats is not None and sats < 0) or (hdop is not None and hdop < 0):
        raise ValueError("negative satellites or HDOP")
    return ParsedSentence(
        kind="GGA", talker=talker,
        lat=_degrees(msg.lat, msg.lat_dir, positive="N", negative="S", limit=90.0),
        lon=_degrees(msg.lon, msg.lon_dir, positive="E", negative="W", limit=180.0),
        time_utc=_time_field(msg), alt_m=alt, satellites=sats, hdop=hdop)


def _short(raw: bytes) -> str:
    return repr(raw[:40]) + ("..." if len(raw) > 40 else "")


def parse_line(raw: bytes) -> ParsedSentence | Rejection:
    """Check and parse one line from the receiver; never raises (any bytes are fine).

    Returns a :class:`ParsedSentence` only for an RMC or GGA that reports a valid fix;
    everything else is a :class:`Rejection` whose ``reason`` is in REJECTION_REASONS.
    """
    try:
        line = raw.rstrip(b"\r\n")
        if len(line) > MAX_LINE_BYTES:
            return Rejection("too_long", f"{len(line)} bytes")
        line = line.strip(b" ")
        if not line:
            return Rejection("empty")
        if any(b < 0x20 or b > 0x7E for b in line):
            return Rejection("non_ascii", _short(line))
        text = line.decode("ascii")
        if not text.startswith("$"):
            return Rejection("malformed", f"no '$': {_short(line)}")
        try:
            msg = pynmea2.parse(text, check=True)
        except pynmea2.ChecksumError as exc:
            missing = "missing" in str(exc)
            return Rejection("no_checksum" if missing else "bad_checksum", _short(line))
        except pynmea2.SentenceTypeError:
            return Rejection("unknown_type", text[1:].split(",", 1)[0][:10])
        except Exception as exc:  # pynmea2.ParseError and whatever its classes raise
            return Rejection("malformed", f"{type(exc).__name__}: {_short(line)}")
        kind = getattr(msg, "sentence_type", None)
        talker = getattr(msg, "talker", None)
        if not isinstance(msg, pynmea2.TalkerSentence) or kind not in ("RMC", "GGA"):
            return Rejection("ignored_type", text[1:].split(",", 1)[0][:10])
        if kind == "RMC":
            return _from_rmc(msg, talker)
        return _from_gga(msg, talker)
    except Exception as exc:  # any field conversion that failed, in pynmea2 or here
        return Rejection("malformed", f"{type(exc).__name__}: {exc}"[:120])


# --------------------------------------------------------------------------- the reader

FaultFn = Callable[[str, str], None]


class GpsReader:
    """Reads a receiver on ``port`` in a thread and keeps the latest valid fix.

    Nothing happens until :meth:`start`. ``reopen_interval_s`` is real time (an
    unplugged receiver does not come back faster in the simulator), waited on an Event
    so :meth:`stop` interrupts it. ``read_timeout_s`` bounds how long one read blocks,
    and so how long :meth:`stop` takes. ``serial_factory`` makes the port (default
    ``serial.Serial``; anything with ``read``/``in_waiting``/``close`` will do).
    """

    def __init__(self, port: str, *, clock: Clock, baudrate: int = 9600,
                 on_fault: FaultFn | None = None, reopen_interval_s: float = 5.0,
                 read_timeout_s: float = 0.1,
                 serial_factory: Callable[..., serial.Serial] | None = None) -> None:
        if reopen_interval_s <= 0 or read_timeout_s <= 0:
            raise ValueError("reopen_interval_s and read_timeout_s must be positive")
        self.port = port
        self.baudrate = baudrate
        self.on_fault = on_fault
        self.reopen_interval_s = reopen_interval_s
        self.read_timeout_s = read_timeout_s
        self._clock = clock
        self._factory = serial_factory or serial.Serial
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # shared, under _lock
        self._fix: Fix | None = None
        self._gps_time: GpsTime | None = None
        self._stats: Counter[str] = Counter()
        self._connected = False
        # reader thread only
        self._ser = None
        self._buf = bytearray()
        self._discarding = False  # inside a line already rejected as too long
        self._pending_gga: ParsedSentence | None = None
        self._last_rmc_time: _dt.time | None = None  # epoch of the current fix's RMC
        self._lost = False  # gps_port_lost reported, gps_port_back not yet

    # ---------------------------------------------------------------- public, any thread

    def start(self) -> GpsReader:
        if self._thread is not None:
            raise RuntimeError("GpsReader already started")
        self._thread = threading.Thread(target=self._run, name="bwv-gps", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the thread and close the port; returns within about ``timeout_s``
        (a read returns within ``read_timeout_s``). Safe to call twice."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("GPS reader thread did not stop within %.1f s", timeout_s)

    def latest(self, max_age_s: float | None = None) -> Fix | None:
        """The latest valid fix, or None if there is none or it is older than
        ``max_age_s`` on the injected clock (``None``: any age)."""
        with self._lock:
            fix = self._fix
        if fix is None or max_age_s is None:
            return fix
        return fix if fix.age_s(self._clock.monotonic_ns()) <= max_age_s else None

    def has_fix(self, now_mono_ns: int, max_age_s: float) -> bool:
        with self._lock:
            fix = self._fix
        return fix is not None and fix.age_s(now_mono_ns) <= max_age_s

    def gps_time_utc_ns(self) -> GpsTime | None:
        """UTC (date + time) of the latest valid RMC and when it arrived, or None.

        Only a fix with status A counts, and a date before 2024 is refused (a receiver
        with the GPS week-rollover bug reports a date 19.6 years back)."""
        with self._lock:
            return self._gps_time

    @property
    def stats(self) -> dict[str, int]:
        """Counters: ``lines``, ``fixes`` (valid RMC), ``gga_merged``, one per
        rejection reason, ``port_lost`` (outages), ``port_opened``, ``open_failed``."""
        with self._lock:
            return dict(self._stats)

    @property
    def connected(self) -> bool:
        """The port is open right now (it may still be silent)."""
        with self._lock:
            return self._connected

    def __enter__(self) -> GpsReader:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- reader thread

    def _fault(self, name: str, detail: str) -> None:
        log.warning("GPS fault %s: %s", name, detail)
        callback = self.on_fault
        if callback is not None:
            try:
                callback(name, detail)
            except Exception:  # a broken callback must not kill the reader
                log.exception("on_fault(%s) raised", name)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._stats[key] += n

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._loop()
            except Exception as exc:  # a bug; keep the thread alive and visible
                log.exception("GPS reader loop failed")
                self._close_port()
                self._fault("gps_reader_error", f"{type(exc).__name__}: {exc}")
                self._stop.wait(self.reopen_interval_s)
        self._close_port()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._ser is None and not self._open():
                self._stop.wait(self.reopen_interval_s)
                continue
            try:
                chunk = self._ser.read(1)
                if chunk:
                    waiting = self._ser.in_waiting
                    if waiting:
                        chunk += self._ser.read(waiting)
            except (serial.SerialException, OSError) as exc:
                self._close_port()
                self._port_lost(f"read from {self.port} failed: {exc}")
                self._stop.wait(self.reopen_interval_s)
                continue
            if chunk:
                self._feed(chunk)

    def _open(self) -> bool:
        try:
            ser = self._factory(self.port, self.baudrate, timeout=self.read_timeout_s)
        except (serial.SerialException, OSError, ValueError) as exc:
            self._count("open_failed")
            self._port_lost(f"cannot open {self.port}: {exc}")
            return False
        self._ser = ser
        self._buf.clear()
        self._discarding = False
        self._pending_gga = None
        with self._lock:
            self._connected = True
            self._stats["port_opened"] += 1
        if self._lost:
            self._lost = False
            self._fault("gps_port_back", f"{self.port} open again")
        return True

    def _port_lost(self, detail: str) -> None:
        if not self._lost:
            self._lost = True
            self._count("port_lost")
            self._fault("gps_port_lost", detail)

    def _close_port(self) -> None:
        ser, self._ser = self._ser, None
        with self._lock:
            self._connected = False
        if ser is not None:
            try:
                ser.close()
            except Exception:  # closing a vanished device may fail; it is gone anyway
                pass

    def _feed(self, chunk: bytes) -> None:
        """Split the byte stream into lines, never holding more than MAX_LINE_BYTES of
        an unterminated line (the rest of an over-long line is skipped to its LF)."""
        buf = self._buf
        buf += chunk
        while True:
            end = buf.find(b"\n")
            if end < 0:
                if len(buf) > MAX_LINE_BYTES:
                    if not self._discarding:
                        self._discarding = True
                        self._count("lines")
                        self._count("too_long")
                    buf.clear()
                return
            line = bytes(buf[:end + 1])
            del buf[:end + 1]
            if self._discarding:
                self._discarding = False
                continue
            self._handle(line)

    def _handle(self, line: bytes) -> None:
        result = parse_line(line)
        now = self._clock.monotonic_ns()
        if isinstance(result, Rejection):
            with self._lock:
                self._stats["lines"] += 1
                self._stats[result.reason] += 1
            return
        if result.kind == "GGA":
            self._on_gga(result)
        else:
            self._on_rmc(result, now)

    def _on_rmc(self, rmc: ParsedSentence, now: int) -> None:
        gga = self._pending_gga
        if gga is not None and (rmc.time_utc is None or gga.time_utc != rmc.time_utc):
            gga = None
        self._pending_gga = None
        self._last_rmc_time = rmc.time_utc
        fix = Fix(lat=rmc.lat, lon=rmc.lon, alt_m=gga.alt_m if gga else None,
                  speed_mps=rmc.speed_mps, course_deg=rmc.course_deg,
                  fix_utc=iso_utc(rmc.utc_ns, digits=3) if rmc.utc_ns is not None else None,
                  satellites=gga.satellites if gga else None, hdop=gga.hdop if gga else None,
                  received_mono_ns=now,
                  sources=(rmc.sentence_type,) + ((gga.sentence_type,) if gga else ()))
        gps_time = (GpsTime(rmc.utc_ns, now)
                    if rmc.utc_ns is not None and rmc.utc_ns >= CLOCK_FLOOR_UTC_NS else None)
        with self._lock:
            self._stats["lines"] += 1
            self._stats["fixes"] += 1
            if gga is not None:
                self._stats["gga_merged"] += 1
            self._fix = fix
            if gps_time is not None:
                self._gps_time = gps_time

    def _on_gga(self, gga: ParsedSentence) -> None:
        """A GGA after its epoch's RMC enriches the current fix; one before it waits
        for the RMC (receivers differ in which they send first)."""
        with self._lock:
            self._stats["lines"] += 1
            fix = self._fix
            if (fix is not None and gga.time_utc is not None and len(fix.sources) == 1
                    and self._last_rmc_time == gga.time_utc):
                self._fix = replace(fix, alt_m=gga.alt_m, satellites=gga.satellites,
                                    hdop=gga.hdop, sources=fix.sources + (gga.sentence_type,))
                self._stats["gga_merged"] += 1
                return
        self._pending_gga = gga
