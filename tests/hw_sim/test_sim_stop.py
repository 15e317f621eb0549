"""Ctrl-C / SIGTERM on `bwv sim`: a stop request checked at every tick, never a
KeyboardInterrupt thrown into whatever the main thread was doing, and a clean stop that
seals the open clip with the signal as its reason."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from buffer.audit import read_events
from buffer.clip import MANIFEST_NAME
from buffer.envelope import CLIP_MAGIC, parse
from buffer.verify import verify_path
from firmware.main import StopRequest
from hw_sim import runner
from tests.conftest import small_config

ROOT = Path(__file__).resolve().parents[2]


class StopAfterAcks(StopRequest):
    """Asks to stop once the camera has acknowledged ``n`` segments: the request
    lands mid-recording, at a point fixed by the work done, not by wall time."""

    def __init__(self, n: int, rig_result: list) -> None:
        super().__init__()
        self.n, self.results = n, rig_result

    def requested(self) -> bool:
        if not self.event.is_set() and self.results and len(self.results[0].acks) >= self.n:
            self.reason = "sigint"
            self.event.set()
        return self.event.is_set()


def test_a_stop_request_ends_the_scenario_at_the_next_tick_and_seals_the_clip(tmp_path):
    scenario = runner.Scenario(runner.double_press(1.0), end_s=3600.0)
    results: list = []

    def on_start(rig):
        results.append(rig.result)
        return None

    stop = StopAfterAcks(6, results)
    res = runner.run(small_config(), tmp_path / "w", scenario, threaded=True,
                     on_start=on_start, stop=stop)
    assert res.stopped_by == "sigint"
    assert 6 <= len(res.acks) < 20                  # an hour was asked for; it stopped early
    assert len(res.clip_ids) == 1
    body = parse((res.store_dir / "clips" / res.clip_ids[0] / MANIFEST_NAME).read_bytes(),
                 CLIP_MAGIC).body()
    assert body["stop_reason"] == "sigint"          # sealed by the clean stop, reason kept
    report = verify_path(res.store_dir)
    assert report.ok, report.all_failures()
    evs = read_events(res.store_dir / "audit.log")
    assert [e["data"]["reason"] for e in evs if e["event"] == "power_off"] == ["sigint"]
    assert evs[-1]["event"] == "store_close"


def _sim(tmp_path: Path, *extra: str, **kw) -> subprocess.Popen:
    kw.setdefault("preexec_fn", lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    (tmp_path / "long.toml").write_text("end = 3600.0\n")
    return subprocess.Popen([sys.executable, "-m", "firmware.cli", "sim", "--speed", "1", "--quiet",
                             "--scenario", str(tmp_path / "long.toml"), "--workdir",
                             str(tmp_path / "w"), *extra], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _wait_for_store(proc: subprocess.Popen, tmp_path: Path) -> None:
    deadline = time.monotonic() + 60
    while not (tmp_path / "w" / "store" / "audit.log").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the simulated camera did not open its store"
        time.sleep(0.05)


def test_sigterm_stops_bwv_sim_cleanly_with_the_shells_status(tmp_path):
    proc = _sim(tmp_path)
    try:
        _wait_for_store(proc, tmp_path)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert json.loads(out.splitlines()[-1])["stopped_by"] == "sigterm"
    evs = read_events(tmp_path / "w" / "store" / "audit.log")
    assert [e["data"]["reason"] for e in evs if e["event"] == "power_off"] == ["sigterm"]


def test_an_inherited_ignored_sigint_stays_ignored(tmp_path):
    """nohup and the campaigns' workers set SIGINT to be ignored: the terminal's Ctrl-C
    is theirs to handle, and the camera they run must not stop on it."""
    proc = _sim(tmp_path, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        _wait_for_store(proc, tmp_path)
        proc.send_signal(signal.SIGINT)
        time.sleep(1.0)
        assert proc.poll() is None, "an ignored SIGINT stopped the camera"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert json.loads(out.splitlines()[-1])["stopped_by"] == "sigterm"
