"""firmware.watchdog against a real AF_UNIX datagram socket standing in for systemd."""
from __future__ import annotations

import os
import shutil
import socket
import tempfile

import pytest

from firmware.watchdog import Watchdog, interval_from_env, notify


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def systemd():
    d = tempfile.mkdtemp(prefix="bwv-nt-", dir="/tmp")  # AF_UNIX paths are short
    path = os.path.join(d, "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.setblocking(False)

    def received() -> list[str]:
        out = []
        while True:
            try:
                out.append(s.recv(4096).decode())
            except BlockingIOError:
                return out
    yield path, received
    s.close()
    shutil.rmtree(d)


def pings(msgs):
    return [m for m in msgs if m == "WATCHDOG=1"]


def test_ready_status_stopping_are_sent(systemd):
    path, received = systemd
    wd = Watchdog(interval_s=5, clock=Clock(), notify_socket=path)
    assert wd.ready("buffering") and wd.status("recording") and wd.stopping()
    assert received() == ["READY=1\nSTATUS=buffering", "STATUS=recording", "STOPPING=1"]


def test_watchdog_cadence_with_injected_clock(systemd):
    path, received = systemd
    clk = Clock()
    wd = Watchdog(interval_s=5, clock=clk, notify_socket=path, default_staleness_s=10)
    sent_at = []
    for _ in range(200):  # 20 s of agent loop at 10 Hz, all loops healthy
        for loop in ("capture", "storage", "gps"):
            wd.progress(loop)
        if wd.tick():
            sent_at.append(clk.t - 1000.0)
        clk.t += 0.1
    assert sent_at == pytest.approx([0.0, 5.0, 10.0, 15.0])
    assert len(pings(received())) == 4


def test_no_ping_while_a_loop_is_stuck_and_resumes_after_progress(systemd):
    path, received = systemd
    clk = Clock()
    wd = Watchdog(interval_s=1, clock=clk, notify_socket=path,
                  staleness_s={"capture": 2.0, "storage": 5.0, "gps": 30.0})
    stuck_pings, recovered = [], []
    for step in range(100):  # 10 s; capture stops making progress at t = 3 s
        t = step * 0.1
        wd.progress("storage")
        wd.progress("gps")
        if t < 3.0 or t >= 8.0:
            wd.progress("capture")
        sent = wd.tick()
        if 5.05 <= t < 8.0:
            stuck_pings.append(sent)
        if t >= 8.0 and sent:
            recovered.append(t)
        clk.t += 0.1
    assert not any(stuck_pings)
    assert wd.stuck() == []
    assert recovered and recovered[0] == pytest.approx(8.0)
    msgs = received()
    assert "STATUS=stuck: capture" in msgs and "STATUS=running" in msgs


def test_a_loop_that_never_reports_is_stuck(systemd):
    path, received = systemd
    clk = Clock()
    wd = Watchdog(interval_s=1, loops=["capture", "storage"], clock=clk, notify_socket=path,
                  default_staleness_s=3)
    assert wd.tick()
    clk.t += 3.5
    wd.progress("capture")
    assert not wd.tick() and wd.stuck() == ["storage"]
    wd.unregister("storage")
    assert wd.tick()


def test_abstract_socket(systemd):
    name = f"bwv-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    try:
        assert notify("READY=1", "@" + name)
        assert s.recv(100) == b"READY=1"
    finally:
        s.close()


def test_no_op_without_notify_socket():
    wd = Watchdog(interval_s=1, clock=Clock(), env={})
    assert not wd.enabled and not wd.ready() and not wd.tick()
    assert notify("READY=1", env={}) is False


def test_interval_is_half_of_watchdog_usec():
    assert interval_from_env({"WATCHDOG_USEC": "10000000"}) == 5.0
    assert interval_from_env({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}) is None
    assert interval_from_env({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}) == 5.0
    assert interval_from_env({}) is None
    wd = Watchdog(clock=Clock(), env={"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "4000000"})
    assert wd.interval_s == 2.0


def test_send_failure_is_not_fatal(tmp_path):
    wd = Watchdog(interval_s=1, clock=Clock(), notify_socket=str(tmp_path / "gone"))
    assert wd.tick() is False
