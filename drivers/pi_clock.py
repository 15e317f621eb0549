"""The Pi's clock: chrony's time-discipline state, else the RTC, else "clock not set".

``ChronyClock`` is a ``SystemClock`` (same monotonic/UTC reads, same ``correct``) whose
``state()`` says who vouches for the wall time:

1. chrony is synchronised (``chronyc -c tracking``: leap status ``Normal`` and
   stratum < 16) → ``ClockState(synced=True, source="ntp", last_offset_ns=<last offset>)``
   (with a GPS PPS refclock chrony is the discipline too; the source stays "ntp").
2. else, if this process corrected the clock itself (GPS time, the store's ``Date``) →
   the state ``correct`` recorded (source "gps"/"store"...).
3. else a battery-backed RTC is present (``/dev/rtc0`` exists) and its time
   (``/sys/class/rtc/rtc0/since_epoch``) is at or after ``CLOCK_FLOOR_UTC_NS`` →
   ``ClockState(synced=True, source="rtc")``: the RTC vouches (README: the
   ``clock_not_set`` alarm is raised only when neither sync nor RTC nor GPS vouches).
4. else ``ClockState(synced=False, source="none")``: clock not set.

A wall clock before the floor is always "none", whatever chrony says.

``chronyc -c tracking`` prints one CSV line; the fields, in order (chrony 4.x):

    0 reference ID (hex)        1 reference name / address   2 stratum
    3 reference time (s, epoch) 4 system time offset (s; positive = system clock slow)
    5 last offset (s, signed)   6 RMS offset (s)             7 frequency (ppm; +fast)
    8 residual frequency (ppm)  9 skew (ppm)                 10 root delay (s)
    11 root dispersion (s)      12 update interval (s)       13 leap status

Leap status is one of ``Normal``, ``Insert second``, ``Delete second``,
``Not synchronised``. The answer is cached for ``cache_s`` seconds on the monotonic
clock (the agent polls ``state()`` often; chronyc is a subprocess).
"""
from __future__ import annotations

import csv
import io
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from drivers.clock import CLOCK_FLOOR_UTC_NS, ClockState, SystemClock

TRACKING_FIELDS = ("ref_id", "ref_name", "stratum", "ref_time", "system_offset", "last_offset",
                   "rms_offset", "frequency_ppm", "resid_freq_ppm", "skew_ppm", "root_delay",
                   "root_dispersion", "update_interval", "leap_status")
CHRONYC = ("chronyc", "-c", "tracking")


class TrackingParseError(ValueError):
    """chronyc printed something that is not a tracking CSV line."""


@dataclass(frozen=True)
class Tracking:
    ref_id: str
    ref_name: str
    stratum: int
    ref_time: float
    system_offset: float
    last_offset: float
    rms_offset: float
    frequency_ppm: float
    resid_freq_ppm: float
    skew_ppm: float
    root_delay: float
    root_dispersion: float
    update_interval: float
    leap_status: str

    @property
    def synced(self) -> bool:
        return self.leap_status == "Normal" and self.stratum < 16

    @property
    def last_offset_ns(self) -> int:
        return round(self.last_offset * 1e9)


def parse_tracking(text: str) -> Tracking:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) != 1:
        raise TrackingParseError(f"expected one CSV line from chronyc, got {len(lines)}")
    row = next(csv.reader(io.StringIO(lines[0])))
    if len(row) != len(TRACKING_FIELDS):
        raise TrackingParseError(f"expected {len(TRACKING_FIELDS)} fields, got {len(row)}: {lines[0]!r}")
    try:
        return Tracking(row[0], row[1], int(row[2]), *(float(x) for x in row[3:13]), row[13].strip())
    except ValueError as exc:
        raise TrackingParseError(f"bad tracking field in {lines[0]!r}: {exc}") from None


def run_chronyc(timeout_s: float = 2.0) -> str:
    """Default runner: stdout of ``chronyc -c tracking``. Raises OSError when chronyc is
    missing, CalledProcessError / TimeoutExpired when chronyd does not answer."""
    return subprocess.run(CHRONYC, capture_output=True, text=True, timeout=timeout_s,
                          check=True).stdout


class ChronyClock(SystemClock):
    def __init__(self, runner: Callable[[], str] = run_chronyc, *,
                 rtc_device: str | Path = "/dev/rtc0",
                 rtc_since_epoch: str | Path = "/sys/class/rtc/rtc0/since_epoch",
                 cache_s: float = 5.0, monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._runner = runner
        self._rtc_device = Path(rtc_device)
        self._rtc_since_epoch = Path(rtc_since_epoch)
        self._cache_s = cache_s
        self._mono = monotonic
        self._cached: tuple[float, ClockState] | None = None
        self._corrected = False
        self.last_error: str | None = None  # why chrony could not vouch, for logs / bench

    def tracking(self) -> Tracking | None:
        try:
            return parse_tracking(self._runner())
        except (OSError, subprocess.SubprocessError, TrackingParseError) as exc:
            self.last_error = f"chronyc: {exc}"
            return None

    def rtc_vouches(self) -> bool:
        if not self._rtc_device.exists():
            return False
        try:
            secs = int(self._rtc_since_epoch.read_text().strip())
        except (OSError, ValueError):
            return False
        return secs * 10**9 >= CLOCK_FLOOR_UTC_NS

    def _compute(self) -> ClockState:
        t = self.tracking()
        if t is not None:
            if t.synced:
                self.last_error = None
                return ClockState(synced=True, source="ntp", last_offset_ns=t.last_offset_ns)
            self.last_error = f"chrony not synchronised (leap status {t.leap_status!r}, stratum {t.stratum})"
        if self._corrected:
            return self._state
        if self.rtc_vouches():
            return ClockState(synced=True, source="rtc", last_offset_ns=self._state.last_offset_ns)
        return ClockState(synced=False, source="none", last_offset_ns=self._state.last_offset_ns)

    def state(self) -> ClockState:
        if self.utc_ns() < CLOCK_FLOOR_UTC_NS:
            return ClockState(synced=False, source="none", last_offset_ns=self._state.last_offset_ns)
        now = self._mono()
        if self._cached is not None and now - self._cached[0] < self._cache_s:
            return self._cached[1]
        st = self._compute()
        self._cached = (now, st)
        return st

    def correct(self, offset_ns: int, source: str) -> bool:
        stepped = super().correct(offset_ns, source)
        self._corrected = True
        self._cached = None
        return stepped
