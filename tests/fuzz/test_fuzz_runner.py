"""``python -m fuzz.run`` end to end: it runs a real target to N inputs, and it sees a
defect and a hang (canary targets that crash / never return on the first input)."""
from __future__ import annotations

import json
import subprocess
import sys

from fuzz import harness


def run(tmp_path, *args):
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "fuzz.run", "--crash-dir", str(tmp_path / "crashes"),
                           "--json", str(out), *args],
                          cwd=harness.ROOT, capture_output=True, text=True, timeout=120, check=False)
    return proc, (json.loads(out.read_text()) if out.exists() else None)


def test_runner_runs_a_target_to_n_inputs(tmp_path):
    proc, doc = run(tmp_path, "--targets", "nmea", "--inputs", "300")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert doc["format"] == "bwv-fuzz-report/1" and doc["ok"]
    (t,) = doc["targets"]
    assert t["target"] == "nmea" and t["status"] == "ok" and t["inputs"] >= 300
    assert t["crashes"] == 0 and t["coverage"] > 0
    assert "nmea" in proc.stdout and "| inputs |" in proc.stdout


def test_runner_sees_a_crash_and_a_hang(tmp_path):
    proc, doc = run(tmp_path, "--targets", "_canary_crash,_canary_hang", "--inputs", "30",
                    "--timeout", "1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    by = {t["target"]: t for t in doc["targets"]}
    crash, hang = by["_canary_crash"], by["_canary_hang"]
    assert crash["status"] == "crash" and crash["signatures"][0]["signature"].startswith("IndexError")
    assert hang["status"] == "crash" and hang["signatures"][0]["signature"] == "libFuzzer timeout"
    saved = list((tmp_path / "crashes" / "_canary_crash").glob("crash-*"))
    assert saved and all(p.read_bytes() in (b"", b"\n") or len(p.read_bytes()) < 2 for p in saved)
    assert list((tmp_path / "crashes" / "_canary_hang").glob("timeout-*"))
    assert "CRASH _canary_crash" in proc.stdout


def test_unknown_target_is_a_usage_error(tmp_path):
    proc, _ = run(tmp_path, "--targets", "nope")
    assert proc.returncode == 2 and "unknown fuzz target" in proc.stderr
