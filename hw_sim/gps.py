"""A simulated NMEA 0183 GPS receiver on a real pty, paced by the virtual clock.

The production :class:`drivers.gps.GpsReader` opens a serial device by path; here that
device is the slave side of an ``os.openpty()`` pair and this simulator writes to the
master, so the reader's pyserial code runs unchanged against a real tty. The reader is
given :attr:`SimGpsReceiver.port`, a symlink this simulator owns in a temporary
directory (like the udev symlink ``/dev/bwv-gps`` on the device). ``disappear`` closes
the pty and removes the link (a USB receiver pulled out); ``reappear`` makes a new pty
and points the same link at it (plugged back in, udev recreates the link), so the reader
recovers by reopening the path it was given — exactly what it must do on the device.

Sentences are due at whole multiples of ``1/rate_hz`` of *true* UTC (receivers align
epochs to UTC seconds) and are written by :meth:`SimGpsReceiver.emit_until`, which the
simulation calls after advancing the clock. True UTC is the clock's UTC when the
receiver is built (``true_utc_offset_ns`` overrides it); later steps of the clock's
wall time (a GPS or NTP correction) do not move the satellites' time. Each epoch is an
RMC then a GGA (u-blox order), rendered by pynmea2 (correct checksums), for a position
walked along ``route`` at ``speed_mps`` from the moment of construction; the receiver
stands still at the last point.

Faults on demand: :meth:`lose_fix`, :meth:`send_garbage`, :meth:`bad_checksums`,
:meth:`disappear`/:meth:`reappear`. The master is non-blocking and writes that do not
fit are dropped and counted (``stats["dropped_bytes"]``), as a UART drops characters
nobody reads, so the simulation can never block on a reader that is not there.
One thread drives a receiver; it is not thread-safe.
"""
from __future__ import annotations

import datetime as _dt
import math
import os
import random
import shutil
import tempfile
import tty
from collections import Counter
from pathlib import Path

import pynmea2

from drivers.clock import Clock

#: A walk around a block in Westminster, London (about 800 m; 10 min at 1.4 m/s).
DEFAULT_ROUTE: list[tuple[float, float]] = [
    (51.50100, -0.12600), (51.50100, -0.12300), (51.50280, -0.12300),
    (51.50280, -0.12600), (51.50100, -0.12600),
]
EARTH_RADIUS_M = 6_371_008.8
MPS_TO_KNOTS = 3600.0 / 1852.0


def _local_metres(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    """(east, north) metres from a to b; an equirectangular projection is exact enough
    for the tens-to-hundreds of metres between route points."""
    mean_lat = math.radians((a[0] + b[0]) / 2)
    east = math.radians(b[1] - a[1]) * math.cos(mean_lat) * EARTH_RADIUS_M
    north = math.radians(b[0] - a[0]) * EARTH_RADIUS_M
    return east, north


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Ground distance between two (lat, lon) points in metres (short distances)."""
    east, north = _local_metres(a, b)
    return math.hypot(east, north)


def _dm(value: float, deg_digits: int) -> str:
    """Degrees → NMEA ddmm.mmmmm (dddmm.mmmmm for longitude), 5 decimals ≈ 2 cm."""
    value = abs(value)
    deg = int(value)
    minutes = round((value - deg) * 60, 5)
    if minutes >= 60:
        deg, minutes = deg + 1, 0.0
    return f"{deg:0{deg_digits}d}{minutes:08.5f}"


class SimGpsReceiver:
    """A receiver on a pty whose slave is reachable at :attr:`port` (see module doc)."""

    def __init__(self, clock: Clock, *, route: list[tuple[float, float]] | None = None,
                 speed_mps: float = 1.4, rate_hz: float = 1.0, talker: str = "GP",
                 true_utc_offset_ns: int | None = None, link_dir: str | os.PathLike | None = None,
                 seed: int = 0, max_burst_epochs: int = 5) -> None:
        if rate_hz <= 0 or speed_mps < 0 or max_burst_epochs < 1:
            raise ValueError("rate_hz must be > 0, speed_mps >= 0, max_burst_epochs >= 1")
        self.clock = clock
        self.route = list(route or DEFAULT_ROUTE)
        if not self.route:
            raise ValueError("route needs at least one point")
        self.speed_mps = speed_mps
        self.talker = talker
        self.period_ns = round(1e9 / rate_hz)
        self.max_burst_epochs = max_burst_epochs
        self.start_mono_ns = clock.monotonic_ns()
        self.utc_offset_ns = (true_utc_offset_ns if true_utc_offset_ns is not None
                              else clock.utc_ns() - self.start_mono_ns)
        first_utc = self.start_mono_ns + self.utc_offset_ns
        self._next_epoch_utc = -(-first_utc // self.period_ns) * self.period_ns
        self._legs = [distance_m(a, b) for a, b in zip(self.route, self.route[1:])]
        self._rng = random.Random(seed)
        self._no_fix = False
        self._bad_checksums = 0
        self.stats: Counter[str] = Counter()
        self._own_dir = link_dir is None
        self._dir = Path(tempfile.mkdtemp(prefix="bwv-gps-") if link_dir is None else link_dir)
        #: The path the reader opens: a symlink to the current pty slave.
        self.port = str(self._dir / "bwv-gps")
        self._master: int | None = None
        self._slave: int | None = None
        self.slave_path: str | None = None
        self._plug()

    # ---------------------------------------------------------------- the pty

    def _plug(self) -> None:
        master, slave = os.openpty()
        # Raw like a UART (no echo, no line editing) from the start; pyserial sets the
        # same when it opens, but data may arrive before that.
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.slave_path = os.ttyname(slave)
        tmp = self.port + ".new"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(self.slave_path, tmp)
        os.replace(tmp, self.port)  # atomic: the reader never sees a half-made link

    def _unplug(self) -> None:
        if os.path.lexists(self.port):
            os.unlink(self.port)
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None
        self.slave_path = None

    @property
    def present(self) -> bool:
        return self._master is not None

    def _write(self, data: bytes) -> None:
        if self._master is None:
            return
        try:
            n = os.write(self._master, data)
        except (BlockingIOError, OSError):
            n = 0
        self.stats["written_bytes"] += n
        self.stats["dropped_bytes"] += len(data) - n

    # ---------------------------------------------------------------- truth

    def position_at(self, mono_ns: int) -> tuple[float, float, float, float | None]:
        """(lat, lon, speed_mps, course_deg) of the walker at monotonic ``mono_ns``."""
        walked = max(0.0, self.speed_mps * (mono_ns - self.start_mono_ns) / 1e9)
        for (a, b), leg in zip(zip(self.route, self.route[1:]), self._legs):
            if walked <= leg and leg > 0:
                f = walked / leg
                east, north = _local_metres(a, b)
                course = math.degrees(math.atan2(east, north)) % 360.0
                speed = self.speed_mps if self.speed_mps > 0 else 0.0
                return (a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, speed,
                        course if speed > 0 else None)
            walked -= leg
        lat, lon = self.route[-1]
        return lat, lon, 0.0, None

    def utc_at(self, mono_ns: int) -> int:
        """True UTC (ns) at monotonic ``mono_ns``."""
        return mono_ns + self.utc_offset_ns

    # ---------------------------------------------------------------- output

    def _checksummed(self, msg: pynmea2.NMEASentence) -> bytes:
        text = msg.render(checksum=True, dollar=True)
        if self._bad_checksums > 0:
            self._bad_checksums -= 1
            self.stats["bad_checksum_sentences"] += 1
            good = int(text[-2:], 16)
            text = f"{text[:-2]}{good ^ 0x5A:02X}"
        self.stats["sentences"] += 1
        return text.encode("ascii") + b"\r\n"

    def _epoch(self, utc_ns: int) -> bytes:
        mono = utc_ns - self.utc_offset_ns
        moment = _dt.datetime.fromtimestamp(utc_ns // 10**9, tz=_dt.timezone.utc)
        hhmmss = moment.strftime("%H%M%S") + f".{(utc_ns % 10**9) // 10**7:02d}"
        ddmmyy = moment.strftime("%d%m%y")
        if self._no_fix:
            # What receivers send while searching: time from the satellites they can
            # see, no position, status V / quality 0.
            rmc = (hhmmss, "V", "", "", "", "", "", "", ddmmyy, "", "", "N")
            gga = (hhmmss, "", "", "", "", "0", "03", "99.9", "", "", "", "", "", "")
        else:
            lat, lon, speed, course = self.position_at(mono)
            ns, ew = ("N" if lat >= 0 else "S"), ("E" if lon >= 0 else "W")
            rmc = (hhmmss, "A", _dm(lat, 2), ns, _dm(lon, 3), ew,
                   f"{speed * MPS_TO_KNOTS:.3f}", "" if course is None else f"{course:.2f}",
                   ddmmyy, "", "", "A")
            gga = (hhmmss, _dm(lat, 2), ns, _dm(lon, 3), ew, "1", "08", "0.9", "35.0", "M",
                   "47.0", "M", "", "")
        return (self._checksummed(pynmea2.RMC(self.talker, "RMC", rmc))
                + self._checksummed(pynmea2.GGA(self.talker, "GGA", gga)))

    def emit_until(self, mono_ns: int) -> int:
        """Write every epoch due up to virtual ``mono_ns``; returns sentences written.

        After a long jump of the clock only the last ``max_burst_epochs`` epochs are
        written (a real receiver would have sent the rest in real time, to nobody).
        While unplugged the schedule advances and nothing is written."""
        end_utc = mono_ns + self.utc_offset_ns
        if end_utc < self._next_epoch_utc:
            return 0
        due = (end_utc - self._next_epoch_utc) // self.period_ns + 1
        first = self._next_epoch_utc + max(0, due - self.max_burst_epochs) * self.period_ns
        self._next_epoch_utc += due * self.period_ns
        if not self.present:
            self.stats["epochs_unplugged"] += due
            return 0
        written = 0
        for utc in range(first, self._next_epoch_utc, self.period_ns):
            self._write(self._epoch(utc))
            written += 2
        return written

    def emit_now(self) -> int:
        return self.emit_until(self.clock.monotonic_ns())

    # ---------------------------------------------------------------- faults

    def lose_fix(self, on: bool = True) -> None:
        """From the next epoch: RMC status V and GGA quality 0, no position."""
        self._no_fix = on

    def bad_checksums(self, n: int) -> None:
        """The next ``n`` sentences go out with a wrong checksum."""
        self._bad_checksums += n

    def send_garbage(self, n: int) -> list[bytes]:
        """Write ``n`` bad lines now (returned): line noise, non-ASCII bytes, an
        over-long line, a truncated sentence without checksum, an unknown sentence
        type. Each is one CR LF-terminated line that the reader must reject exactly
        once (none is empty, none is a valid sentence)."""
        rng, lines = self._rng, []
        for i in range(n):
            kind = i % 5
            if kind == 0:
                body = "".join(rng.choice("ABCXYZ0123456789,.*#!") for _ in range(rng.randint(8, 60)))
                line = ("G" + body).encode("ascii")
            elif kind == 1:
                line = bytes([0x24] + [rng.choice([b for b in range(256) if b not in (10, 13)])
                                       for _ in range(rng.randint(8, 60))] + [0xFF])
            elif kind == 2:
                line = b"$GPRMC," + b"9" * rng.randint(130, 300)
            elif kind == 3:
                line = b"$GPGGA,1235" + str(rng.randint(0, 99)).encode()
            else:
                body = f"GPZZZ,{rng.randint(0, 9999)},X"
                cs = pynmea2.NMEASentence.checksum(body)
                line = f"${body}*{cs:02X}".encode("ascii")
            lines.append(line)
            self._write(line + b"\r\n")
            self.stats["garbage_lines"] += 1
        return lines

    def disappear(self) -> None:
        """Unplug: the pty closes (the reader's next read fails) and the link goes."""
        self._unplug()

    def reappear(self) -> None:
        """Plug back in: a new pty, and :attr:`port` points at it again."""
        if not self.present:
            self._plug()

    def close(self) -> None:
        """Unplug and remove the temporary link directory. Safe to call twice."""
        self._unplug()
        if self._own_dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> SimGpsReceiver:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
