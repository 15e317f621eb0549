"""`bwv run` as systemd runs it: Type=notify readiness, a watchdog fed only by real
progress, and a clean stop on SIGTERM that seals everything (here on the sim platform,
in real time)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from buffer.verify import verify_path

CONFIG = """
[device]
platform = "sim"
[camera]
width = 320
height = 240
bitrate = 400000
segment_seconds = 1.0
[gps]
enabled = false
[audio]
enabled = false
"""


def test_run_notifies_systemd_feeds_the_watchdog_and_stops_cleanly(tmp_path):
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.5)
    (tmp_path / "bwv.toml").write_text(CONFIG)
    env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="2000000")
    proc = subprocess.Popen([sys.executable, "-m", "firmware.cli", "run", "--config",
                             str(tmp_path / "bwv.toml"), "--workdir", str(tmp_path / "w")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    got: list[str] = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline and got.count("WATCHDOG=1") < 3:
            try:
                got += sock.recv(4096).decode().split("\n")
            except socket.timeout:
                assert proc.poll() is None, proc.stderr.read()
        assert "READY=1" in got and got.count("WATCHDOG=1") >= 3, got
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    report = verify_path(tmp_path / "w" / "store")
    assert report.ok, report.all_failures()
    audit = (tmp_path / "w" / "store" / "audit.log").read_text()
    assert '"event":"power_off"' in audit and '"reason":"sigterm"' in audit
