"""`make reliability`'s driver: the table's figures and when the run fails; and the
30k-segment recovery bench at a small size (its checks must catch a wrong recovery)."""
from __future__ import annotations

import json

import pytest

from hw_sim import recovery_bench, reliability

POWERCUT = {"cuts": 240, "cases_by_kind": {"random": 200, "compound": 20, "sweep": 10},
            "acked_segments": 5000, "lost": 0, "failed_recoveries": 0,
            "recovery_time_s": {"p50": 0.05, "p99": 0.2}}
IOERRORS = {"fault_points": 614, "sampled": {"write/once": "40 of 173"},
            "outcomes": {"alarmed_recovered": 600, "absorbed": 14},
            "crash_loops": 0, "lost": 0, "failed": 0}
FUZZ = {"targets": [{"target": "segment", "inputs": 100_000, "crashes": 0, "status": "ok"},
                    {"target": "nmea", "inputs": 100_000, "crashes": 0, "status": "ok"}],
        "skipped": [{"target": "bundle", "reason": "no parser yet"}]}
READERRORS = {"fault_points": 42, "reads_in_fault_window": 21, "sampled": {},
              "outcomes": {"held_then_released": 16, "absorbed": 26},
              "crash_loops": 0, "early_releases": 0, "lost": 0, "failed": 0}
RECOVERY = {"segments": 30002, "cuts": 3, "page_cache": "warm", "recovery_s_median": 0.25,
            "recovery_s_max": 0.26}


def results(**override):
    base = {"powercut": POWERCUT, "ioerrors": IOERRORS, "readerrors": READERRORS, "fuzz": FUZZ,
            "recovery": RECOVERY}
    base.update(override)
    return {k: {"rc": 0, "seconds": 60.0, "report": v} for k, v in base.items()}


def test_a_clean_run_passes_and_its_table_has_every_figure():
    s = reliability.summarize(results())
    assert s["ok"] and s["fails"] == []
    text = reliability.table(s)
    for needle in ("power cuts made", "240", "segments lost (must be 0)",
                   "cuts whose recovery failed (must be 0)", "p50 / p99", "0.050 s / 0.200 s",
                   "30,002-segment store", "I/O fault points tried", "614",
                   "read fault points tried while syncing", "42 (21 reads in the fault window)",
                   "0 / 0 / 0 / 0",
                   "fuzz segment: inputs / crashes (must be 0)", "100,000 / 0", "skipped",
                   "total", "PASS"):
        assert needle in text, needle
    assert reliability.table(s, markdown=True).startswith("| figure | value |")


@pytest.mark.parametrize("part,patch,why", [
    ("powercut", {"lost": 1}, "acknowledged segments lost"),
    ("powercut", {"failed_recoveries": 2}, "recovery failed"),
    ("ioerrors", {"crash_loops": 1}, "crash_loops"),
    ("ioerrors", {"lost": 3}, "lost"),
    ("ioerrors", {"failed": 1}, "failed"),
    ("readerrors", {"early_releases": 1}, "readerrors: early_releases"),
    ("readerrors", {"crash_loops": 1}, "readerrors: crash_loops"),
    ("readerrors", {"lost": 2}, "readerrors: lost"),
    ("readerrors", {"failed": 1}, "readerrors: failed"),
])
def test_any_must_be_zero_figure_fails_the_run(part, patch, why):
    base = {"powercut": POWERCUT, "ioerrors": IOERRORS, "readerrors": READERRORS}[part]
    s = reliability.summarize(results(**{part: dict(base, **patch)}))
    assert not s["ok"] and any(why in f for f in s["fails"]), s["fails"]
    assert "FAIL" in reliability.table(s)


def test_a_fuzz_crash_fails_the_run():
    fz = dict(FUZZ, targets=[dict(FUZZ["targets"][0], crashes=1, status="crash")])
    s = reliability.summarize(results(fuzz=fz))
    assert not s["ok"] and "fuzz segment: 1 crashes" in s["fails"]


def test_a_part_that_exits_non_zero_or_writes_no_report_fails_the_run():
    r = results()
    r["recovery"] = {"rc": 1, "seconds": 3.0, "report": None}
    s = reliability.summarize(r)
    assert not s["ok"]
    assert "recovery: exited 1" in s["fails"] and "recovery: wrote no report" in s["fails"]


def test_without_dev_fuse_the_run_fails_and_says_so(monkeypatch, capsys, tmp_path):
    import hw_sim.powercut as powercut
    monkeypatch.setattr(powercut, "fuse_available", lambda: "/dev/fuse is missing")
    rc = reliability.main(["--out", str(tmp_path)])
    assert rc == 2
    assert "/dev/fuse is missing" in capsys.readouterr().err
    assert not (tmp_path / "summary.json").exists()  # nothing ran, nothing claimed


def test_unknown_part_is_a_clear_error(capsys):
    assert reliability.main(["--only", "powercut,coffee"]) == 2
    assert "coffee" in capsys.readouterr().err


# ----------------------------------------------------------------- recovery bench
def test_recovery_bench_on_a_small_store_recovers_every_kind_of_debris(tmp_path):
    res = recovery_bench.run(tmp_path / "w", segments=420, cuts=2)
    assert res["segments"] == 420 and res["cuts"] == 2
    assert len(res["recovery_s"]) == 2 and res["page_cache"] == "warm"


def test_recovery_bench_calls_a_wrong_recovery_wrong(tmp_path, monkeypatch):
    """A recovery that skips finishing the eviction intents must not pass as fast."""
    from buffer.store import Store
    real = Store._recover

    def forgetful(self):
        self.db.execute("DELETE FROM intents")
        real(self)
    monkeypatch.setattr(Store, "_recover", forgetful)
    with pytest.raises(recovery_bench.BenchError, match="eviction"):
        recovery_bench.run(tmp_path / "w", segments=420, cuts=1)


def test_recovery_bench_cli_refuses_a_tiny_store(capsys):
    assert recovery_bench.main(["--segments", "10"]) == 2
    assert "--segments" in capsys.readouterr().err


def test_recovery_bench_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert recovery_bench.main(["--segments", "400", "--cuts", "1", "--json", str(out),
                                "--workdir", str(tmp_path / "w")]) == 0
    assert json.loads(out.read_text())["segments"] == 400
