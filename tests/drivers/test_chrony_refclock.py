"""drivers.chrony_refclock: bwv's NMEA times to chrony's SOCK refclock.

The layout is checked against a C compiler's idea of chrony's ``struct sock_sample``
(copied from chrony's refclock_sock.c) on this machine; the feed is checked against a
real datagram socket bound the way chronyd binds it, fed by the production GPS reader
reading the simulated receiver over a real pty.
"""
from __future__ import annotations

import ctypes
import logging
import shutil
import socket
import subprocess
import time

import pytest

from drivers.chrony_refclock import (SOCK_MAGIC, NmeaChronyFeed, SockSample, pack_sample,
                                     unpack_sample)
from drivers.gps import GpsReader, GpsTime
from hw_sim.clock import SimClock
from hw_sim.gps import SimGpsReceiver

CHRONY_STRUCT = r"""
#include <stdio.h>
#include <stddef.h>
#include <sys/time.h>
struct sock_sample {
  struct timeval tv;
  double offset;
  int pulse;
  int leap;
  int _pad;
  int magic;
};
int main(void) {
  printf("%zu %zu %zu %zu %zu %zu\n", sizeof(struct sock_sample),
         offsetof(struct sock_sample, offset), offsetof(struct sock_sample, pulse),
         offsetof(struct sock_sample, leap), offsetof(struct sock_sample, magic),
         sizeof(((struct timeval *)0)->tv_sec));
  return 0;
}
"""


def test_layout_matches_chronys_struct_as_compiled_here(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    (tmp_path / "s.c").write_text(CHRONY_STRUCT)
    subprocess.run([cc, "-o", str(tmp_path / "s"), str(tmp_path / "s.c")], check=True)
    size, off_offset, off_pulse, off_leap, off_magic, time_t = map(
        int, subprocess.run([str(tmp_path / "s")], capture_output=True, text=True,
                            check=True).stdout.split())
    assert ctypes.sizeof(SockSample) == size
    assert (SockSample.offset.offset, SockSample.pulse.offset, SockSample.leap.offset,
            SockSample.magic.offset) == (off_offset, off_pulse, off_leap, off_magic)
    assert ctypes.sizeof(ctypes.c_long) == time_t


def test_pack_unpack_round_trip_and_bad_input():
    data = pack_sample(1_780_000_123_456_789_012, -0.125, leap=1)
    s = unpack_sample(data)
    assert (s.tv_sec, s.tv_usec, s.offset, s.pulse, s.leap, s.magic) == \
        (1_780_000_123, 456_789, -0.125, 0, 1, SOCK_MAGIC)
    with pytest.raises(ValueError, match="leap"):
        pack_sample(0, 0.0, leap=3)
    with pytest.raises(ValueError, match="bytes"):
        unpack_sample(data[:-1])
    with pytest.raises(ValueError, match="magic"):
        unpack_sample(data[:-4] + b"\0\0\0\0")


class FakeGps:
    def __init__(self):
        self.t: GpsTime | None = None

    def gps_time_utc_ns(self):
        return self.t


@pytest.fixture
def chronyd_socket(tmp_path):
    """A SOCK refclock's end, bound as chronyd binds it."""
    path = tmp_path / "chrony.bwv-nmea.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(2.0)
    yield str(path), s
    s.close()


def test_each_new_gps_time_is_sent_once_with_receipt_time_and_offset(chronyd_socket):
    path, server = chronyd_socket
    clock = SimClock()
    gps = FakeGps()
    feed = NmeaChronyFeed(gps, clock, path)
    assert not feed.poll()  # no GPS time yet
    utc_minus_mono = clock.utc_ns() - clock.monotonic_ns()
    received = clock.monotonic_ns()
    gps.t = GpsTime(utc_ns=clock.utc_ns() + 2_000_000_000, received_mono_ns=received)
    clock.advance(7_000_000)  # polled one tick later
    assert feed.poll()
    s = unpack_sample(server.recv(64))
    system_ns = received + utc_minus_mono
    assert (s.tv_sec, s.tv_usec) == (system_ns // 10**9, system_ns % 10**9 // 1000)
    assert s.offset == pytest.approx(2.0, abs=1e-6) and s.pulse == 0 and s.leap == 0
    assert not feed.poll()  # the same fix again: nothing sent
    gps.t = GpsTime(utc_ns=gps.t.utc_ns + 10**9, received_mono_ns=received + 10**9)
    assert feed.poll() and feed.sent == 2 and feed.errors == 0
    feed.close()


def test_a_missing_chrony_is_counted_and_logged_once_never_raised(tmp_path, caplog):
    clock = SimClock()
    gps = FakeGps()
    feed = NmeaChronyFeed(gps, clock, str(tmp_path / "no-chronyd.sock"))
    with caplog.at_level(logging.WARNING):
        for k in range(3):
            gps.t = GpsTime(utc_ns=clock.utc_ns() + k, received_mono_ns=clock.monotonic_ns())
            assert not feed.poll()
    assert feed.errors == 3 and feed.sent == 0 and "FileNotFoundError" in feed.last_error
    assert caplog.text.count("chrony NMEA refclock") == 1
    with pytest.raises(ValueError):
        NmeaChronyFeed(gps, clock, "")


def test_the_gps_reader_on_a_pty_feeds_chrony(chronyd_socket, tmp_path):
    """The production reader (pyserial + pynmea2) reading the simulated receiver, whose
    time runs 2.5 s ahead of the system clock: chrony is told +2.5 s."""
    path, server = chronyd_socket
    server.settimeout(0.05)
    clock = SimClock()
    ahead_ns = 2_500_000_000
    sim = SimGpsReceiver(clock, link_dir=tmp_path,
                         true_utc_offset_ns=clock.utc_ns() - clock.monotonic_ns() + ahead_ns)
    reader = GpsReader(sim.port, clock=clock, reopen_interval_s=0.2).start()
    feed = NmeaChronyFeed(reader, clock, path)
    samples = []
    try:
        deadline = time.monotonic() + 20
        while len(samples) < 3 and time.monotonic() < deadline:
            clock.advance(100_000_000)
            if not sim.emit_until(clock.monotonic_ns()):
                continue
            wait = time.monotonic() + 2  # the reader thread takes the lines (real time)
            while not feed.poll() and time.monotonic() < wait:
                time.sleep(0.002)
            try:
                samples.append(unpack_sample(server.recv(64)))
            except (socket.timeout, BlockingIOError):
                pass
    finally:
        reader.stop()
        sim.close()
        feed.close()
    assert len(samples) >= 3, (feed.sent, feed.errors, reader.stats)
    # Receipt is stamped within 0.1 s (one simulation step) of the epoch.
    assert all(abs(s.offset - ahead_ns / 1e9) <= 0.11 for s in samples), [s.offset for s in samples]
    assert len({(s.tv_sec, s.tv_usec) for s in samples}) == len(samples)


def _chronyd() -> str | None:
    import os
    path = os.environ.get("BWV_CHRONYD") or shutil.which("chronyd")
    return path if path and os.path.exists(path) else None


@pytest.mark.skipif(_chronyd() is None, reason="chronyd not installed (or set BWV_CHRONYD)")
def test_a_real_chronyd_takes_the_samples(tmp_path):
    """chronyd itself (-x: never touches the clock) reads what the feed sends, with the
    refclock lines firmware.bootconfig generates."""
    import os

    from drivers.clock import SystemClock
    from firmware.bootconfig import chrony_conf
    if os.geteuid() != 0:
        pytest.skip("chronyd binds its sockets as root")
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    sock = run / "nmea.sock"
    conf = chrony_conf(str(sock), pps=False).replace(" delay 0.2", " delay 0.2 poll 1")
    (run / "chrony.conf").write_text(
        conf + f"cmdport 0\nbindcmdaddress {run}/chronyd.sock\npidfile {run}/chronyd.pid\n"
        f"logdir {run}\nlog refclocks\n")
    proc = subprocess.Popen([_chronyd(), "-x", "-d", "-u", "root", "-f", str(run / "chrony.conf")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sock.exists(), proc.stdout.read() if proc.poll() is not None else "no socket"
        gps, clock = FakeGps(), SystemClock()
        feed = NmeaChronyFeed(gps, clock, str(sock))
        for _ in range(3):
            gps.t = GpsTime(utc_ns=clock.utc_ns() + 300_000_000, received_mono_ns=clock.monotonic_ns())
            assert feed.poll(), feed.last_error
            time.sleep(0.2)
        log = run / "refclocks.log"
        deadline = time.monotonic() + 5
        lines: list[str] = []
        while len(lines) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
            lines = [ln for ln in (log.read_text() if log.exists() else "").splitlines()
                     if " NMEA " in ln]
        assert len(lines) == 3, lines
        # raw offset; 10 ms of slack: the test and the feed each read the two clocks one
        # after the other, and a loaded machine can preempt in between
        assert all(abs(float(ln.split()[6]) - 0.3) < 10e-3 for ln in lines), lines
    finally:
        proc.terminate()
        proc.wait(timeout=10)
