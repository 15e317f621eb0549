"""The power-cut campaign: the real agent, its store on a disk that loses power, at scale.

::

    python -m hw_sim.campaign_powercut --cuts 200 --seed 1 --json out/powercut.json

Each case copies a pre-made store (made once by the real agent on the same filesystem),
runs ``bwv sim`` (the production agent on simulated hardware) on it — buffering, a
double press that promotes the pre-record window, an event marker, a held stop, ring
eviction (a 3 s window and a small byte budget), docking with a sync to a dock share
*outside* the mount (clips released after confirmation) — while the agent appends every
acknowledged segment to a log outside the mount. The disk cuts power at a seeded random
operation (mode ``torn`` or ``prefix``), SIGKILLing the agent at that instant. Then the
agent's own recovery runs (``bwv recover``) on the surviving image and
``hw_sim.powercut_check`` asks whether every promise still holds; then recovery runs a
second time and must change nothing.

Besides the random cuts: *compound* cases cut the first recovery too (at a seeded
operation of it) and recover again; the *sweep* cuts a short workload right after each
of its durability barriers, one case per barrier (counted first by an uncut run); the
*torn sweep* cuts just before each of those barriers, tearing what is pending. Cases
can also be pinned to a moment of a protocol (``on_op``/``on_path``: "right after the
clip directory's fsync"), which is how the regression tests keep the cuts that found
defects.

Every case is reproducible from the spec printed with it (``--replay``). The summary
(JSON and a table on stderr) has cuts made, acknowledged segments, segments lost (must
be 0), cases whose recovery failed (must be 0) and recovery times. Exit status: 0 when
nothing was lost and every recovery held, 1 otherwise, 2 when the campaign cannot run
here (no ``/dev/fuse``: it fails, it never passes silently).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, asdict
from pathlib import Path

from hw_sim.campaign_pool import failure_digest, format_rows, run_cases, write_reports
from hw_sim.powercut import PowerCutDisk, PowerCutError, refuse_without_fuse

ROOT = Path(__file__).resolve().parent.parent
DEVICE = "BWV-SIM-0001"
CONFIG = """
[device]
officer_id = "PC-0042"
[camera]
width = 320
height = 240
fps = 15
bitrate = 300000
segment_seconds = 1.0
[buffer]
pre_record_seconds = 3
max_bytes = 1048576
[controls]
hold_ms = 800
[audio]
enabled = false
[gps]
enabled = false
"""
# The pre-made store: a closed clip waiting for sync and a ring, left by a clean stop.
PRELUDE = """
end = 8.0
[[step]]
at = 2.0
action = "double_press"
[[step]]
at = 5.5
action = "hold"
seconds = 1.0
"""
# The cut workload: buffer, record with the pre-record window, mark, stop, dock (sync +
# release of both clips), undock, buffer on.
WORKLOAD = """
end = 13.0
[[step]]
at = 2.5
action = "double_press"
[[step]]
at = 4.0
action = "press"
button = "function"
[[step]]
at = 4.1
action = "release"
button = "function"
[[step]]
at = 6.5
action = "hold"
seconds = 1.0
[[step]]
at = 8.5
action = "dock"
[[step]]
at = 10.5
action = "undock"
"""
# The sweep's short workload: every barrier of it is a cut point.
SWEEP = """
end = 6.0
[[step]]
at = 1.2
action = "double_press"
[[step]]
at = 3.0
action = "hold"
seconds = 1.0
[[step]]
at = 4.6
action = "dock"
"""
RUN_TIMEOUT_S = 180
SQLITE_OWN = ("-wal", "-journal", "-shm")  # SQLite creates and deletes these itself


@dataclass(frozen=True)
class CaseSpec:
    """Everything a case needs to be run again, exactly."""

    kind: str               # random | compound | sweep | sweep-torn | regression
    index: int
    seed: int
    workload: str           # workload | sweep
    at_op: int = 0          # random/compound: cut before this operation of the agent run
    mode: str = "torn"
    barrier: int = 0        # sweep: cut right after this barrier
    recovery_op: int = 0    # compound: cut before this operation of the first recovery
    recovery_mode: str = "torn"
    on_op: str = ""         # pinned: cut at the on_n-th on_op on a path matching on_path
    on_path: str = ""
    on_n: int = 1
    on_after: bool = False  #   (before it runs, or right after it)
    recovery_on_op: str = ""  # compound, pinned: cut the first recovery at this op/path
    recovery_on_path: str = ""
    recovery_on_n: int = 1

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.index:04d}"


@dataclass
class Env:
    base: Path
    template: Path          # template/{backing, acks.jsonl}
    keys: Path
    agency: Path
    files: Path             # config + scenarios


# ---------------------------------------------------------------------------- setup
def _write_files(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.toml").write_text(CONFIG)
    (d / "prelude.toml").write_text(PRELUDE)
    (d / "workload.toml").write_text(WORKLOAD)
    (d / "sweep.toml").write_text(SWEEP)


def bwv_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "firmware.cli", *args]


def _sim_args(work: Path, files: Path, scenario: str, ack_log: Path) -> list[str]:
    return bwv_cmd("sim", "--workdir", str(work), "--config", str(files / "config.toml"),
                   "--scenario", str(files / f"{scenario}.toml"), "--quiet", "--ack-log", str(ack_log))


def _popen(cmd: list[str], log: Path) -> subprocess.Popen:
    out = open(log, "ab")
    try:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                env=dict(os.environ, PYTHONPATH=str(ROOT)))
    finally:
        out.close()


def prepare(base: Path) -> Env:
    """Keys and the pre-made store, made once by the real agent on the power-cut disk."""
    from hw_sim.runner import ensure_keys
    files = base / "files"
    _write_files(files)
    tpl = base / "template"
    work = tpl / "work"
    work.mkdir(parents=True, exist_ok=True)
    ensure_keys(work, DEVICE)
    backing = tpl / "backing"
    backing.mkdir(exist_ok=True)
    with PowerCutDisk(backing, work / "store", seed=0):
        r = subprocess.run(_sim_args(work, files, "prelude", tpl / "acks.jsonl"), cwd=ROOT,
                           capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    if r.returncode != 0:
        raise RuntimeError(f"making the pre-made store failed: {r.stderr.strip()[-500:]}")
    return Env(base, tpl, work / "keys", work / "agency", files)


def _case_dirs(env: Env, spec: CaseSpec) -> tuple[Path, Path, Path, Path]:
    d = env.base / "cases" / spec.name
    if d.exists():
        shutil.rmtree(d)
    work = d / "work"
    work.mkdir(parents=True)
    (work / "keys").symlink_to(env.keys)
    (work / "agency").symlink_to(env.agency)
    (work / "dock-share").mkdir()
    backing = d / "backing"
    shutil.copytree(env.template / "backing", backing)
    acks = d / "acks.jsonl"
    shutil.copyfile(env.template / "acks.jsonl", acks)
    return d, work, backing, acks


# -------------------------------------------------------------------------- running
def run_agent(env: Env, work: Path, backing: Path, acks: Path, scenario: str, *, seed: int,
              arm, log: Path, mode: str | None) -> tuple[dict | None, list[str], int, dict]:
    """One agent run on the disk, cut as ``arm`` says (or, if the run ends first, with
    ``mode`` right after it; no cut when None); returns (cut, removed, rc, status)."""
    with PowerCutDisk(backing, work / "store", seed=seed) as disk:
        proc = _popen(_sim_args(work, env.files, scenario, acks), log)
        try:
            disk.kill_on_cut(proc.pid)
            if arm is not None:
                arm(disk)
            rc = proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        cut = disk.wait_cut(0)
        status = disk.status()
        if cut is None and mode is not None:
            cut = dict(disk.cut(mode), after_exit=True)
        removed = disk.removed()
    return cut, removed, rc, status


def recover_in_process(env: Env, work: Path) -> tuple[dict | None, float, str]:
    """``bwv recover`` (the store's own power-loss recovery, as the agent runs it at start)."""
    from firmware import cli
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(["recover", "--store", str(work / "store"), "--keys", str(work / "keys"),
                           "--config", str(env.files / "config.toml"), "--sim-clock"])
        except Exception as exc:  # noqa: BLE001 — a crash of recovery is a finding, named
            rc, err = 99, io.StringIO(f"{type(exc).__name__}: {exc}")
    elapsed = time.perf_counter() - t0
    if rc != 0:
        return None, elapsed, err.getvalue().strip() or f"exit {rc}"
    return json.loads(out.getvalue()), elapsed, ""


def run_case(env: Env, spec: CaseSpec, keep: bool = False) -> dict:
    from hw_sim import powercut_check as chk
    t_start = time.perf_counter()
    d, work, backing, acks = _case_dirs(env, spec)
    log = d / "agent.log"
    result: dict = {"case": spec.name, "spec": asdict(spec), "lost": [], "problems": [], "cuts": 0}
    removed: list[str] = []
    acks_before = set(chk.read_acks(acks))
    try:
        # 1. The agent runs until the power goes.
        if spec.on_op:
            arm = lambda disk: disk.arm_cut_on(spec.on_op, spec.on_path, n=spec.on_n,  # noqa: E731
                                               mode=spec.mode, after=spec.on_after)
            mode = spec.mode
        elif spec.kind == "sweep":
            arm = lambda disk: disk.arm_cut_after_barrier(spec.barrier, "barrier")  # noqa: E731
            mode = "barrier"
        else:
            arm = lambda disk: disk.arm_cut_at_op(spec.at_op, spec.mode)  # noqa: E731
            mode = spec.mode
        cut, rm, rc, status = run_agent(env, work, backing, acks, spec.workload, seed=spec.seed,
                                        arm=arm, log=log, mode=mode)
        removed += rm
        if cut.get("after_exit"):  # the run ended before the cut point: cut right after it
            result["cut_after_exit"] = True
            if rc != 0:
                result["problems"].append(f"agent exited {rc} before the cut: {_tail(log)}")
        result["cuts"] += 1
        result["cut"] = {k: cut[k] for k in ("mode", "at_op", "barriers", "pending_ops", "surviving_ops")}
        result["ops_in_run"] = status["ops"]
        first_cut_clean = chk.clean_flag(backing)
        audit_after_cut = (backing / "audit.log").read_bytes() if (backing / "audit.log").exists() else b""
        try:
            open_clips = [c[0] for c in chk.read_index(backing)["clips"] if c[1] == "open"]
        except Exception as exc:  # noqa: BLE001
            open_clips = []
            result["problems"].append(f"index unreadable after the cut: {exc}")
        # 2. Compound: the first recovery is cut too.
        if spec.kind == "compound":
            result["recovery_ops"] = _cut_recovery(env, spec, work, backing, log, removed)
            result["cuts"] += 1
        # 3. The agent's recovery, then the checks on the surviving image; 4. recovery
        #    again (a clean checkpoint of the disk between them, no remount).
        before_final = chk.clean_flag(backing)
        with PowerCutDisk(backing, work / "store", seed=spec.seed) as disk:
            report, elapsed, err = recover_in_process(env, work)
            removed += disk.checkpoint()
            result["recovery_s"] = round(elapsed, 4)
            if report is None:
                result["problems"].append(f"recovery failed: {err}")
                return result
            result["recovery"] = {k: v for k, v in report.items() if v}
            verdict = check_image(env, work, backing, acks, acks_before, removed, report,
                                  audit_after_cut=audit_after_cut, open_clips=open_clips,
                                  unclean=before_final == "0", unclean_record=first_cut_clean == "0",
                                  result=result)
            snap = chk.snapshot(backing)
            audit1 = (backing / "audit.log").read_bytes()
            report2, _, err2 = recover_in_process(env, work)
            removed2 = [r for r in disk.checkpoint() if not r.endswith(SQLITE_OWN)]
        if report2 is None:
            verdict.problems.append(f"second recovery failed: {err2}")
        else:
            busy = {k: v for k, v in report2.items() if v}
            if busy:
                verdict.problems.append(f"second recovery still had work: {busy}")
            verdict.problems += [f"second recovery changed {x}"
                                 for x in chk.diff_snapshots(snap, chk.snapshot(backing))]
            if not (backing / "audit.log").read_bytes().startswith(audit1):
                verdict.problems.append("second recovery rewrote the audit log")
            if removed2:
                verdict.problems.append(f"second recovery deleted {removed2}")
        result["lost"] += verdict.lost
        result["problems"] += verdict.problems
        result.update(kept_device=verdict.kept_device, kept_share=verdict.kept_share,
                      evicted=verdict.evicted)
    except PowerCutError as exc:
        result["problems"].append(f"power-cut disk: {exc}")
    except Exception as exc:  # noqa: BLE001 — the harness names its own failure too
        import traceback
        result["problems"].append(f"harness: {type(exc).__name__}: {exc} "
                                  f"{traceback.format_exc(limit=3)[-600:]}")
    finally:
        result["seconds"] = round(time.perf_counter() - t_start, 2)
        if not keep and not result["lost"] and not result["problems"]:
            shutil.rmtree(d, ignore_errors=True)
        else:
            result["dir"] = str(d)
    return result


def check_image(env: Env, work: Path, backing: Path, acks: Path, acks_before: set[int],
                removed: list[str], report: dict, *, audit_after_cut: bytes, open_clips: list[str],
                unclean: bool, unclean_record: bool, result: dict):
    """Every check of ``hw_sim.powercut_check`` on the recovered image."""
    from hw_sim import powercut_check as chk
    from buffer.agency import load_identity
    from drivers.keystore import FileKeyStore
    all_acks = chk.read_acks(acks)
    result["acked"] = len(all_acks)
    result["acked_in_run"] = len(set(all_acks) - acks_before)
    verdict = chk.Verdict()
    device = FileKeyStore(env.keys).device()
    identity = load_identity(env.agency / "agency.key")
    share = work / "dock-share" / "devices" / DEVICE
    chk.check_acks(backing, share, all_acks, set(removed), identity, device, verdict)
    chk.check_index(backing, verdict)
    chk.check_tmp(backing, verdict)
    for db in ("index.sqlite", "sync.sqlite"):
        if (backing / db).exists():
            ic = chk.sqlite_integrity(backing / db)
            if ic != "ok":
                verdict.problems.append(f"{db}: integrity_check: {ic}")
    chk.check_verify(backing, share, verdict)
    chk.check_audit(backing, audit_before=audit_after_cut, unclean=unclean,
                    unclean_record=unclean_record,
                    acked_this_run=sorted(set(all_acks) - acks_before), open_clips=open_clips,
                    report=report, verdict=verdict)
    return verdict


def _cut_recovery(env: Env, spec: CaseSpec, work: Path, backing: Path, log: Path,
                  removed: list[str]) -> int:
    """Count the first recovery's operations on a copy, then cut the real one at a seeded
    point of it (a ``bwv recover`` process, killed with the power)."""
    dry = backing.with_name("dry-backing")
    shutil.copytree(backing, dry)
    with PowerCutDisk(dry, work / "store", seed=spec.seed) as disk:
        recover_in_process(env, work)
        n_ops = disk.ops()
    shutil.rmtree(dry)
    at = spec.recovery_op or random.Random(f"{spec.seed}:recovery").randint(1, max(1, n_ops))
    with PowerCutDisk(backing, work / "store", seed=spec.seed + 1) as disk:
        proc = _popen(bwv_cmd("recover", "--store", str(work / "store"), "--keys", str(work / "keys"),
                              "--config", str(env.files / "config.toml"), "--sim-clock"), log)
        disk.kill_on_cut(proc.pid)
        if spec.recovery_on_op:
            disk.arm_cut_on(spec.recovery_on_op, spec.recovery_on_path, n=spec.recovery_on_n,
                            mode=spec.recovery_mode)
        else:
            disk.arm_cut_at_op(at, spec.recovery_mode)
        try:
            proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if disk.wait_cut(0) is None:
            disk.cut(spec.recovery_mode)
        removed += disk.removed()
    return n_ops


def _tail(log: Path) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])[-400:]
    except OSError:
        return ""


# ----------------------------------------------------------------------- calibration
def count_run(env: Env, workload: str) -> dict:
    """An uncut run of a workload: how many operations and barriers it makes."""
    spec = CaseSpec("calibrate", 0, 0, workload)
    d, work, backing, acks = _case_dirs(env, spec)
    _, _, rc, status = run_agent(env, work, backing, acks, workload, seed=0, arm=None,
                                 log=d / "agent.log", mode=None)
    if rc != 0:
        raise RuntimeError(f"the uncut {workload} run failed: {_tail(d / 'agent.log')}")
    shutil.rmtree(d)
    return status


def plan(seed: int, cuts: int, compound: int, ops: int, barriers: int, sweep: bool,
         torn_sweep: bool) -> list[CaseSpec]:
    rng = random.Random(seed)
    specs = []
    for i in range(cuts):
        specs.append(CaseSpec("random", i, rng.randrange(2**31), "workload",
                              at_op=rng.randint(1, ops), mode=rng.choice(("torn", "prefix"))))
    for i in range(compound):
        specs.append(CaseSpec("compound", i, rng.randrange(2**31), "workload",
                              at_op=rng.randint(1, ops), mode=rng.choice(("torn", "prefix")),
                              recovery_mode=rng.choice(("torn", "prefix"))))
    if sweep:
        for k in range(1, barriers + 1):
            specs.append(CaseSpec("sweep", k, seed, "sweep", barrier=k, mode="barrier"))
    if torn_sweep:  # the same barriers, cut just before each one with its writes torn
        for k in range(1, barriers + 1):
            specs.append(CaseSpec("sweep-torn", k, seed + k, "sweep", mode="torn",
                                  on_op="sync", on_path="*", on_n=k))
    return specs


# ----------------------------------------------------------------------------- main
_ENV: Env | None = None


def _worker_init(env: Env) -> None:
    global _ENV
    _ENV = env
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _work(spec: CaseSpec) -> dict:
    return run_case(_ENV, spec)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, max(0, int(round(q / 100 * len(s) + 0.5)) - 1))], 4)


def summarize(results: list[dict], *, seed: int, command: str, elapsed: float, calib: dict) -> dict:
    failed = [r for r in results if r["problems"]]
    lost = [x for r in results for x in r["lost"]]
    times = [r["recovery_s"] for r in results if "recovery_s" in r]
    by_kind: dict[str, int] = {}
    modes: dict[str, int] = {}
    for r in results:
        by_kind[r["spec"]["kind"]] = by_kind.get(r["spec"]["kind"], 0) + 1
        if "cut" in r:
            modes[r["cut"]["mode"]] = modes.get(r["cut"]["mode"], 0) + 1
    return {
        "command": command, "seed": seed, "elapsed_s": round(elapsed, 1),
        "cases": len(results), "cases_by_kind": by_kind,
        "cuts": sum(r["cuts"] for r in results), "cut_modes": modes,
        "acked_segments": sum(r.get("acked", 0) for r in results),
        "acked_in_cut_runs": sum(r.get("acked_in_run", 0) for r in results),
        "kept_on_device": sum(r.get("kept_device", 0) for r in results),
        "kept_on_dock_share": sum(r.get("kept_share", 0) for r in results),
        "evicted_by_the_store": sum(r.get("evicted", 0) for r in results),
        "lost": len(lost), "failed_recoveries": len(failed),
        "recovery_time_s": {"p50": pct(times, 50), "p99": pct(times, 99),
                            "max": round(max(times), 4) if times else None},
        "workload": calib,
        "failures": failure_digest([r for r in results if r["lost"] or r["problems"]],
                                   lost=5, problems=8, limit=30),
    }


def table(s: dict) -> str:
    rows = [("cuts made", s["cuts"]), ("  by case kind", s["cases_by_kind"]),
            ("acknowledged segments checked", s["acked_segments"]),
            ("  acknowledged in cut runs", s["acked_in_cut_runs"]),
            ("segments lost (must be 0)", s["lost"]),
            ("cuts whose recovery failed (must be 0)", s["failed_recoveries"]),
            ("recovery time p50 / p99 (s)", f"{s['recovery_time_s']['p50']} / {s['recovery_time_s']['p99']}"),
            ("elapsed (s)", s["elapsed_s"])]
    return format_rows(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hw_sim.campaign_powercut", description=__doc__.split("\n")[0])
    ap.add_argument("--cuts", type=int, default=200, help="seeded random cuts of the workload")
    ap.add_argument("--compound", type=int, default=20, help="cases that also cut the first recovery")
    ap.add_argument("--no-sweep", dest="sweep", action="store_false",
                    help="skip both barrier sweeps")
    ap.add_argument("--no-torn-sweep", dest="torn_sweep", action="store_false",
                    help="skip the sweep that cuts just before every barrier, tearing what is pending")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write the summary here")
    ap.add_argument("--workdir", type=Path, help="keep everything here (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep every case's directory")
    ap.add_argument("--replay", help="run one case from its printed spec (JSON) and print the result")
    args = ap.parse_args(argv)
    refused = refuse_without_fuse("power-cut campaign", args.json, {"cuts": 0})
    if refused is not None:
        return refused
    command = "python -m hw_sim.campaign_powercut " + " ".join(argv if argv is not None else sys.argv[1:])
    base = args.workdir or Path(tempfile.mkdtemp(prefix="bwv-powercut-"))
    base = base.resolve()
    t0 = time.perf_counter()
    print(f"power-cut campaign in {base}: making the pre-made store", file=sys.stderr)
    env = prepare(base)
    if args.replay:
        spec = CaseSpec(**json.loads(args.replay))
        res = run_case(env, spec, keep=True)
        print(json.dumps(res, indent=2))
        return 0 if not res["lost"] and not res["problems"] else 1
    calib = {"workload": count_run(env, "workload")}
    args.torn_sweep = args.torn_sweep and args.sweep
    calib["sweep"] = count_run(env, "sweep") if args.sweep else {"barriers": 0}
    ops, barriers = calib["workload"]["ops"], calib["sweep"]["barriers"]
    print(f"workload: {ops} operations, {calib['workload']['barriers']} barriers; "
          f"sweep workload: {barriers} barriers", file=sys.stderr)
    specs = plan(args.seed, args.cuts, args.compound, ops, barriers, args.sweep, args.torn_sweep)
    def on_result(i: int, r: dict, results: list[dict]) -> None:
        if r["lost"] or r["problems"]:
            print(f"FAIL {r['case']} spec={json.dumps(r['spec'])}: "
                  f"{(r['lost'] + r['problems'])[:3]}", file=sys.stderr)
        if i % 10 == 0 or i == len(specs):
            print(f"power cuts: {i}/{len(specs)} cases, lost {sum(len(x['lost']) for x in results)}, "
                  f"failed {sum(1 for x in results if x['problems'])}, "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)

    results = run_cases(specs, _work, jobs=args.jobs, worker_init=_worker_init, env=env,
                        on_result=on_result)
    summary = summarize(results, seed=args.seed, command=command,
                        elapsed=time.perf_counter() - t0, calib=calib)
    print(table(summary), file=sys.stderr)
    write_reports(args.json, summary, results)
    if not args.workdir and not summary["failures"]:
        shutil.rmtree(base, ignore_errors=True)
    return 0 if summary["lost"] == 0 and summary["failed_recoveries"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
