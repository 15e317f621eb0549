"""Run every fuzz target under atheris for N inputs each, and report.

    .venv/bin/python -m fuzz.run                          # all targets, 100,000 inputs each
    .venv/bin/python -m fuzz.run --inputs 20000 --targets segment,nmea --jobs 2
    .venv/bin/python -m fuzz.run --json out/fuzz.json     # also write the JSON report
    .venv/bin/python -m fuzz.run --list                   # targets, and which are skipped
    .venv/bin/python -m fuzz.run --targets segment --replay fuzz/crashes/segment/crash-…

Each target runs in its own process (``python -m fuzz.one``), ``--jobs`` at a time,
with ``-runs=N`` plus a per-input timeout (a hang is a crash) and a memory limit. New
corpus entries go to a temporary directory (the committed seeds in ``fuzz/corpus`` are
only read). Crash inputs are saved in ``fuzz/crashes/<target>/``; the run ends with a
table (target | inputs | crashes | unique | seconds | CPU s | inputs/CPU s | coverage:
wall seconds depend on what else the machine runs, CPU seconds do not) and exits 1 if any
target crashed, 2 if a target could not run to N inputs. To keep a crash as a
regression test, copy its input to ``fuzz/regressions/<target>/`` (``make test``
replays those through the same ``check``).

JSON report (``--json``), format ``bwv-fuzz-report/1``::

    {"format": "bwv-fuzz-report/1", "ok": bool, "inputs_per_target": int, "jobs": int,
     "seed": int, "started_utc": str, "wall_seconds": float, "cpu_seconds": float,
     "totals": {"targets": int, "inputs": int, "crashes": int, "unique_crashes": int},
     "skipped": [{"target": str, "reason": str}],
     "targets": [{"target": str, "status": "ok" | "crash" | "error", "inputs": int,
                  "crashes": int, "unique_crashes": int, "seconds": float,
                  "cpu_seconds": float, "inputs_per_second": float,
                  "inputs_per_cpu_second": float, "coverage": int | null,
                  "features": int | null, "message": str,
                  "signatures": [{"signature": str, "count": int, "message": str,
                                  "files": [str]}]}]}
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fuzz import harness

REPORT_FORMAT = "bwv-fuzz-report/1"
PROGRESS_EVERY_S = 60.0
_STATUS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+)")
_LIBFUZZER_DEATH = re.compile(r"ERROR: libFuzzer: (timeout|out-of-memory|deadly signal|"
                              r"fuzz target exited|malloc limit)[^\n]*")


@dataclass
class TargetResult:
    target: str
    status: str = "ok"
    inputs: int = 0
    crashes: int = 0
    unique_crashes: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    inputs_per_second: float = 0.0
    inputs_per_cpu_second: float = 0.0
    coverage: int | None = None
    features: int | None = None
    message: str = ""
    signatures: list[dict] = field(default_factory=list)


class _Printer:
    def __init__(self) -> None:
        self.lock = threading.Lock()

    def __call__(self, text: str) -> None:
        with self.lock:
            print(text, flush=True)


def run_target(name: str, inputs: int, *, seed: int, timeout_s: int, work: Path,
               crashes: Path, progress: dict, say) -> TargetResult:
    spec = harness.REGISTRY[name]
    res = TargetResult(name)
    crash_dir = crashes / name
    crash_dir.mkdir(parents=True, exist_ok=True)
    out_corpus = work / name / "corpus"
    scratch = work / name / "scratch"
    out_corpus.mkdir(parents=True)
    scratch.mkdir()
    crash_log = work / name / "crashes.jsonl"
    cmd = [sys.executable, "-m", "fuzz.one", name, "--inputs", str(inputs),
           "--crash-dir", str(crash_dir), "--crash-log", str(crash_log),
           f"-max_len={spec.max_len}", f"-timeout={timeout_s}", f"-seed={seed}",
           "-rss_limit_mb=2048", "-print_final_stats=1", "-print_pcs=0",
           f"-artifact_prefix={crash_dir}/"]
    dictionary = harness.FUZZ / "dicts" / f"{name}.dict"
    if dictionary.is_file():
        cmd.append(f"-dict={dictionary}")
    cmd.append(str(out_corpus))
    if (harness.CORPUS / name).is_dir():
        cmd.append(str(harness.CORPUS / name))
    env = dict(os.environ, BWV_FUZZ_SCRATCH=str(scratch), PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(harness.ROOT), env.get("PYTHONPATH")]))
    say(f"[fuzz] {name}: started ({inputs} inputs)")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=harness.ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, errors="replace")
    tail: list[str] = []
    last = 0
    for line in proc.stderr:  # libFuzzer reports on stderr
        m = _STATUS.match(line)
        if m:
            progress[name] = last = int(m[1])
            res.coverage, res.features = int(m[2]), int(m[3])
        if line.startswith("stat::number_of_executed_units:"):
            res.inputs = int(line.rsplit(":", 1)[1])
        if not line.startswith(("INFO: Instrumenting", "#")):
            tail = (tail + [line.rstrip()])[-60:]
    _, status, usage = os.wait4(proc.pid, 0)  # the child's own CPU time: load-independent
    rc = proc.returncode = os.waitstatus_to_exitcode(status)
    res.seconds = round(time.monotonic() - t0, 1)
    res.cpu_seconds = round(usage.ru_utime + usage.ru_stime, 1)
    progress.pop(name, None)
    _collect_crashes(res, crash_log)
    text = "\n".join(tail)
    death = _LIBFUZZER_DEATH.search(text)
    if death:  # the process died on an input (hang, memory): libFuzzer saved it
        kind = death[1]
        files = sorted(str(p) for p in crash_dir.iterdir()
                       if p.name.startswith(("timeout-", "oom-", "crash-", "slow-unit-"))
                       and p.stat().st_mtime >= time.time() - res.seconds - 5)
        res.signatures.append({"signature": f"libFuzzer {kind}", "count": 1,
                               "message": death[0], "files": files[-3:]})
        res.crashes += 1
        res.unique_crashes += 1
        res.inputs = res.inputs or last
    if res.crashes:
        res.status = "crash"
        res.message = "; ".join(s["signature"] for s in res.signatures)
    elif rc != 0 or res.inputs < inputs:
        res.status = "error"
        res.message = (f"exit code {rc} after {res.inputs} of {inputs} inputs: "
                       + " | ".join(tail[-8:]))[:2000]
    res.inputs_per_second = round(res.inputs / res.seconds, 1) if res.seconds else 0.0
    res.inputs_per_cpu_second = round(res.inputs / res.cpu_seconds, 1) if res.cpu_seconds else 0.0
    try:  # keep the folder only when it holds something (another run may share it)
        if not any(crash_dir.iterdir()):
            crash_dir.rmdir()
    except OSError:
        pass
    say(f"[fuzz] {name}: {res.status}, {res.inputs} inputs, {res.crashes} crashes, "
        f"{res.seconds:.0f} s ({res.cpu_seconds:.0f} s CPU, {res.inputs_per_cpu_second:.0f}/CPU s)")
    return res


def _collect_crashes(res: TargetResult, crash_log: Path) -> None:
    by_sig: dict[str, dict] = {}
    if crash_log.exists():
        for line in crash_log.read_text().splitlines():
            rec = json.loads(line)
            s = by_sig.setdefault(rec["signature"], {"signature": rec["signature"], "count": 0,
                                                     "message": rec["message"], "files": []})
            s["count"] += 1
            if rec["file"] and rec["file"] not in s["files"]:
                s["files"].append(rec["file"])
    res.signatures = sorted(by_sig.values(), key=lambda s: -s["count"])
    res.crashes = sum(s["count"] for s in res.signatures)
    res.unique_crashes = len(res.signatures)


def table(results: list[TargetResult]) -> str:
    rows = [("target", "inputs", "crashes", "unique", "seconds", "CPU s", "inputs/CPU s", "coverage")]
    rows += [(r.target, str(r.inputs), str(r.crashes), str(r.unique_crashes), f"{r.seconds:.0f}",
              f"{r.cpu_seconds:.0f}", f"{r.inputs_per_cpu_second:.0f}",
              "" if r.coverage is None else str(r.coverage)) for r in results]
    rows.append(("total", str(sum(r.inputs for r in results)), str(sum(r.crashes for r in results)),
                 str(sum(r.unique_crashes for r in results)), "",
                 f"{sum(r.cpu_seconds for r in results):.0f}", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    fmt = lambda row: " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(row, widths)))
    sep = "-+-".join("-" * w for w in widths)
    return "\n".join([fmt(rows[0]), sep] + [fmt(r) for r in rows[1:-1]] + [sep, fmt(rows[-1])])


def replay(name: str, path: Path) -> int:
    """Run one input through a target's check without atheris; print what escapes."""
    target = harness.load(name)
    try:
        target.check(path.read_bytes())
    except BaseException:  # noqa: BLE001 — show the defect
        traceback.print_exc()
        return 1
    print(f"{path}: no defect")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=100_000, help="inputs per target (-runs)")
    ap.add_argument("--targets", help="comma-separated target names (default: all available)")
    ap.add_argument("--json", type=Path, help="write the JSON report here")
    ap.add_argument("--jobs", type=int, default=2, help="targets run at once (default 2)")
    ap.add_argument("--seed", type=int, default=1, help="libFuzzer -seed (0 = random)")
    ap.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    ap.add_argument("--crash-dir", type=Path, default=harness.CRASHES,
                    help="where crash inputs go, one folder per target (default fuzz/crashes)")
    ap.add_argument("--list", action="store_true", help="list targets and exit")
    ap.add_argument("--replay", type=Path, help="run one input through one target's check")
    args = ap.parse_args(argv)
    try:
        selected = [t.strip() for t in args.targets.split(",") if t.strip()] if args.targets else None
        names = harness.target_names(selected)
    except ValueError as exc:
        print(f"fuzz.run: {exc}", file=sys.stderr)
        return 2
    everything = selected or [n for n in harness.REGISTRY if not n.startswith("_")]
    skipped = [{"target": n, "reason": f"{harness.REGISTRY[n].needs} does not exist yet"}
               for n in everything if n not in names]
    if args.list:
        ready = harness.target_names()
        for n in (n for n in harness.REGISTRY if not n.startswith("_")):
            print(f"{n:15} " + ("ready" if n in ready else f"skipped: {harness.REGISTRY[n].needs} does not exist yet"))
        return 0
    if args.replay:
        if len(names) != 1:
            print("fuzz.run: --replay needs exactly one --targets name", file=sys.stderr)
            return 2
        return replay(names[0], args.replay)
    if args.inputs < 1 or args.jobs < 1:
        print("fuzz.run: --inputs and --jobs must be at least 1", file=sys.stderr)
        return 2
    say = _Printer()
    for s in skipped:
        say(f"[fuzz] {s['target']}: skipped ({s['reason']})")
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    work = Path(tempfile.mkdtemp(prefix="bwv-fuzz-run-", dir=base))
    progress: dict[str, int] = {}
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    stop = threading.Event()

    def report_progress() -> None:
        while not stop.wait(PROGRESS_EVERY_S):
            if progress:
                say("[fuzz] running: " + ", ".join(f"{n} {k}/{args.inputs}"
                                                   for n, k in sorted(progress.items())))

    threading.Thread(target=report_progress, daemon=True).start()
    try:
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(run_target, n, args.inputs, seed=args.seed + i if args.seed else 0,
                                   timeout_s=args.timeout, work=work, crashes=args.crash_dir,
                                   progress=progress, say=say)
                       for i, n in enumerate(names)]
            results = [f.result() for f in futures]
    finally:
        stop.set()
        shutil.rmtree(work, ignore_errors=True)
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = round(time.monotonic() - t0, 1)
    cpu = round((cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime), 1)
    print()
    print(table(results))
    print(f"\n{len(results)} targets x {args.inputs} inputs in {wall:.0f} s wall, "
          f"{cpu:.0f} s CPU, {args.jobs} at a time")
    for r in results:
        for s in r.signatures:
            print(f"CRASH {r.target}: {s['signature']} x{s['count']}: {s['message'][:200]}"
                  + (f"\n      input: {s['files'][0]}" if s["files"] else ""))
        if r.status == "error":
            print(f"ERROR {r.target}: {r.message}")
    ok = all(r.status == "ok" for r in results)
    if args.json:
        doc = {"format": REPORT_FORMAT, "ok": ok, "inputs_per_target": args.inputs,
               "jobs": args.jobs, "seed": args.seed, "started_utc": started,
               "wall_seconds": wall, "cpu_seconds": cpu,
               "totals": {"targets": len(results), "inputs": sum(r.inputs for r in results),
                          "crashes": sum(r.crashes for r in results),
                          "unique_crashes": sum(r.unique_crashes for r in results)},
               "skipped": skipped, "targets": [asdict(r) for r in results]}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    if any(r.status == "crash" for r in results):
        return 1
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
