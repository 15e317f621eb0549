"""The I/O-error campaign: EIO and ENOSPC at the Nth storage operation, for every N.

::

    python -m hw_sim.campaign_ioerrors --json out/ioerrors.json
    python -m hw_sim.campaign_ioerrors --replay '{"op": "fsync", "n": 17, "err": "EIO", "mode": "sticky"}'

The real agent runs in this process on simulated hardware (``hw_sim.runner.Rig``), its
store on the power-loss FUSE disk (``hw_sim.powercut.PowerCutDisk``), which can fail the
Nth write, fsync, rename or create (the issue's four) — and the Nth directory fsync,
link, mkdir or unlink, the rest of the store's durable paths. Every case starts from the same pre-made store (a
closed clip awaiting sync — *pinned* evidence — and a ring) and runs one timeline:

    0 s   power on (store recovery, power-on audit)        ─┐
    2 s   double press: record (pre-record promoted)        │ the fault window: the disk
    4 s   event marker                                      │ fails from op N on (of one
    8 s   the fault clears (``clear_faults``)              ─┘ kind, one errno), sticky
   11 s   hold: stop
   14 s   double press: a second clip; 17 s hold: stop; 20 s clean shutdown

A first, fault-free run counts each kind's operations in the fault window; the campaign
then runs one case per (kind, N, errno, mode) for N = 1 … that count. Mode ``sticky``:
the Nth operation and every later one of that kind fail until the fault clears (a worn
or full card); every N is tried. Mode ``once``: only the Nth fails (a glitch); N is
sampled evenly where a kind has more than ``--max-per-kind-once`` (40) operations, and
the summary says so. The agent's promise, checked in every case:

- it never crashes in a loop: an exception escaping the agent is an *exit*; the harness
  restarts it at once on the still-failing disk (as systemd would); one exit is
  tolerated, a second is a crash loop;
- it raises the storage fault alarm (the ``fault`` alarm is active, its cue played on
  the haptic motor) whenever the fault actually fired;
- it keeps recording: at the end of the fault window it is still RECORDING, and once
  the fault clears new segments are stored again — into the clip being recorded;
- it recovers: after the fault clears the alarm clears, a second clip records and
  closes normally, and the clean shutdown succeeds;
- nothing is lost: the pinned clip is intact (every file, same manifest, verifies);
  every acknowledged segment is on the device, verifies, decrypts with the agency
  identity and sits in the chain (or was evicted from the ring by the store itself);
  the whole store verifies, its index agrees with the files, SQLite's integrity check
  passes and no temporary file is left.

A failing case prints its spec; ``--replay`` runs it again. Exit status 0 when every
case kept every promise, 1 otherwise, 2 when the campaign cannot run here (no
``/dev/fuse``: it fails, it never passes silently).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

from hw_sim.campaign_pool import failure_digest, format_rows, run_cases, write_reports
from hw_sim.powercut import PowerCutDisk, PowerCutError, refuse_without_fuse

#: The issue's four, plus the other operations the store's durable paths make (directory
#: fsync, the link of a durable move, mkdir of a clip, unlink of an eviction).
KINDS = ("write", "fsync", "rename", "create", "fsyncdir", "link", "mkdir", "unlink")
ERRNOS = ("EIO", "ENOSPC")
DEVICE = "BWV-SIM-0001"
CONFIG = {
    "device": {"officer_id": "IO-0042"},
    "camera": {"width": 320, "height": 240, "fps": 15, "bitrate": 300_000,
               "segment_seconds": 1.0},
    "buffer": {"pre_record_seconds": 3},
    "controls": {"hold_ms": 800},
    "audio": {"enabled": False},
    "gps": {"enabled": False},
}
#: Faults that may fire without an error reaching the agent, and why that is right.
ABSORBED = {
    # the kernel split the write into several FUSE requests and a later piece failed:
    # the caller got a short write and wrote the rest again (os.write loops in
    # buffer.fsutil, SQLite in unixWrite)
    "write": "short write, completed by the caller's retry",
    # SQLite fsyncs the directory of a WAL file it has just created and ignores the
    # result (best effort, os_unix.c); our own directory fsyncs always raise
    "fsyncdir": "SQLite's best-effort directory sync of its new WAL",
}
FAULT_END_S = 8.0
#: (seconds from power-on, action); "clear" ends the fault window.
TIMELINE = ((2.0, "double_press"), (4.0, "marker"), (FAULT_END_S, "clear"), (11.0, "hold"),
            (14.0, "double_press"), (17.0, "hold"), (20.0, "end"))
STOP_S = 11.0  # the first clip is stopped here


MODES = ("sticky", "once")


@dataclass(frozen=True)
class CaseSpec:
    op: str      # write | fsync | rename | create
    n: int       # the n-th operation of that kind since power-on fails …
    err: str     # EIO | ENOSPC
    mode: str = "sticky"  # … and every later one until the fault clears, or only that one

    @property
    def name(self) -> str:
        return f"{self.op}-{self.err}-{self.mode}-{self.n:04d}"


@dataclass
class Env:
    base: Path
    template: Path  # the pre-made store (backing image)
    keys: Path
    agency: Path
    pinned_clip: str
    pinned_files: dict  # name -> sha256 of the pinned clip's files


def config():
    from firmware.config import validate
    return validate({k: dict(v) for k, v in CONFIG.items()}, "<campaign_ioerrors>")


# ---------------------------------------------------------------------------- setup
def prepare(base: Path) -> Env:
    """Keys, and the pre-made store with a closed (pinned) clip, by the real agent."""
    import hashlib

    from hw_sim.runner import Rig, ensure_keys
    tpl = base / "template"
    work = tpl / "work"
    work.mkdir(parents=True, exist_ok=True)
    ensure_keys(work, DEVICE)
    rig = Rig(config(), work, device_id=DEVICE, microphone=False).start()
    rig.advance(1.0)
    _double_press(rig)
    rig.advance(2.5)
    _hold(rig)
    rig.advance(2.0)
    res = rig.close()
    if len(res.clip_ids) != 1:
        raise RuntimeError(f"the pre-made store has clips {res.clip_ids}, expected one")
    clip = res.clip_ids[0]
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted((res.store_dir / "clips" / clip).iterdir())}
    return Env(base, res.store_dir, work / "keys", work / "agency", clip, files)


def _double_press(rig) -> None:
    rig.press(); rig.advance(0.12); rig.release(); rig.advance(0.18)
    rig.press(); rig.advance(0.12); rig.release()


def _hold(rig) -> None:
    rig.press(); rig.advance(1.0); rig.release()


def _marker(rig) -> None:
    rig.press("function"); rig.advance(0.1); rig.release("function")


def _case_dirs(env: Env, name: str) -> tuple[Path, Path, Path]:
    d = env.base / "cases" / name
    if d.exists():
        shutil.rmtree(d)
    work = d / "work"
    work.mkdir(parents=True)
    (work / "keys").symlink_to(env.keys)
    (work / "agency").symlink_to(env.agency)
    backing = d / "backing"
    shutil.copytree(env.template, backing)
    (backing / ".lock").unlink(missing_ok=True)
    return d, work, backing


# -------------------------------------------------------------------------- running
class Driver:
    """Runs the timeline on the agent; an exception escaping the agent is an exit, after
    which the camera is restarted at once on the same (still failing) disk."""

    def __init__(self, work: Path, acks: Path) -> None:
        self.work = work
        self.acks = acks
        self.exits: list[str] = []
        self.cues: list[str] = []  # every cue the agent asked the feedback to play
        self.storage_alarm = False  # the fault alarm went on for a storage fault
        self.errors_seen = 0  # storage errors that reached the agent
        self.rig = None
        self.elapsed_ns = 0  # virtual time since the first power-on
        self._base_ns = 0  # the current rig's monotonic time at elapsed 0
        self._utc_ns: int | None = None

    def power_on(self) -> bool:
        from hw_sim.runner import Rig
        try:
            self.rig = Rig(config(), self.work, device_id=DEVICE, microphone=False,
                           ack_log=self.acks, utc_start_ns=self._utc_ns)
            self._base_ns = self.rig.clock.monotonic_ns() - self.elapsed_ns
            feedback = self.rig.agent.feedback
            play = feedback.cue

            def spy(name: str, now_ns: int) -> None:
                self.cues.append(name)
                play(name, now_ns)
            feedback.cue = spy  # type: ignore[method-assign]
            agent = self.rig.agent
            set_alarm = agent.alarms.set

            def alarm_spy(name: str, active: bool, now_ns: int) -> bool:
                if name == "fault" and active and agent.storage_fault:
                    self.storage_alarm = True
                return set_alarm(name, active, now_ns)
            agent.alarms.set = alarm_spy  # type: ignore[method-assign]
            guard_failed = agent.storage.failed

            def failed_spy(exc: BaseException) -> None:
                self.errors_seen += 1
                guard_failed(exc)
            agent.storage.failed = failed_spy  # type: ignore[method-assign]
            self.rig.start()
            return True
        except Exception as exc:  # noqa: BLE001 — the agent failed to come up: an exit
            self._exit(exc)
            return False

    def _exit(self, exc: BaseException) -> None:
        self.exits.append(f"{type(exc).__name__}: {exc} @ {self.elapsed_ns / 1e9:.2f} s "
                          f"{traceback.format_exc(limit=-3)[-700:]}")
        rig = self.rig
        if rig is not None:  # the process is gone: the kernel drops its files and lock
            store = rig.agent._store
            if store is not None:
                try:
                    store.abandon()
                except OSError:
                    pass
            for dev in (rig.dock_sense, rig.trigger_input, rig.controls, rig.gpio):
                try:
                    dev.close()
                except Exception:  # noqa: BLE001
                    pass
            rig._closed = True
            if rig._ack_file:
                rig._ack_file.close()
            self._utc_ns = (rig.clock.utc_ns() // 10**9 + 2) * 10**9  # the RTC ran on
        self.rig = None

    def crash_loop(self) -> bool:
        return len(self.exits) > 1

    def do(self, fn) -> bool:
        """Run ``fn(rig)``; on an exception, exit and restart (False: not done)."""
        if self.rig is None and not self.power_on():
            return False
        try:
            fn(self.rig)
            return True
        except Exception as exc:  # noqa: BLE001
            self._exit(exc)
            if not self.crash_loop():
                self.power_on()
            return False

    def advance_to(self, t_s: float) -> None:
        target = int(t_s * 1e9)
        while self.elapsed_ns < target and not self.crash_loop():
            def step(rig) -> None:
                rig.advance_to_ns(min(self._base_ns + target, rig.clock.monotonic_ns() + 10**9))
            self.do(step)
            if self.rig is not None:
                self.elapsed_ns = max(self.elapsed_ns, self.rig.clock.monotonic_ns() - self._base_ns)


def run_case(env: Env, spec: CaseSpec, keep: bool = False) -> dict:
    from buffer.agency import load_identity
    from buffer.audit import read_events
    from drivers.keystore import FileKeyStore
    from hw_sim import powercut_check as chk
    t_start = time.perf_counter()
    d, work, backing = _case_dirs(env, spec.name)
    acks_path = d / "acks.jsonl"
    result: dict = {"case": spec.name, "spec": asdict(spec), "problems": [], "lost": []}
    try:
        with PowerCutDisk(backing, work / "store", seed=1) as disk:
            disk.fail_nth(spec.op, spec.n, spec.err,  # sticky: until clear_faults
                          count=None if spec.mode == "sticky" else 1)
            drv = Driver(work, acks_path)
            drv.power_on()
            state_at_clear = None
            acks_before_clear = 0
            acks_lines_before: list[dict] = []
            first_clip = None
            for t, action in TIMELINE:
                drv.advance_to(t)
                if drv.crash_loop():
                    break
                rig = drv.rig
                if rig is not None and first_clip is None and rig.agent._clip_id:
                    first_clip = rig.agent._clip_id
                if action == "clear":
                    status = disk.status()
                    result["fired"] = sum(f["failed"] for f in status["faults"])
                    if rig is not None:
                        agent = rig.agent
                        state_at_clear = agent.state.value
                        result["fault_at_clear"] = agent.storage_fault
                    acks_before_clear = len(chk.read_acks(acks_path))
                    acks_lines_before = _ack_lines(acks_path)
                    disk.clear_faults()
                elif action == "double_press":
                    drv.do(_double_press)
                elif action == "marker":
                    drv.do(_marker)
                elif action == "hold":
                    if t == STOP_S:
                        result["stored_in_clip_after_clear"] = sum(
                            1 for a in _ack_lines(acks_path)[len(acks_lines_before):] if a["clip_id"])
                    drv.do(_hold)
            final = None
            if drv.rig is not None and not drv.crash_loop():
                agent = drv.rig.agent
                final = {"fault": agent.storage_fault, "alarm": "fault" in agent.alarms.active,
                         "state": agent.state.value, "retries_pending": agent.storage.pending()}
                try:
                    drv.rig.close()
                except Exception as exc:  # noqa: BLE001
                    result["problems"].append(f"clean shutdown failed: {type(exc).__name__}: {exc}")
            removed = set(disk.removed())
        # ---- the agent's promises
        fired = result.get("fired", 0)
        cue_seen, alarm_seen = "fault" in drv.cues, drv.storage_alarm
        result["errors_seen"] = drv.errors_seen
        if fired and not drv.errors_seen and spec.op in ABSORBED:
            # The failure was absorbed below the agent (ABSORBED says how): no error
            # reached it, nothing to alarm about; the evidence checks below still apply.
            result["absorbed"] = ABSORBED[spec.op]
            fired = 0
        result["exits"] = len(drv.exits)
        if drv.exits:
            result["exit_reasons"] = drv.exits[:2]
        if drv.crash_loop():
            result["problems"].append(f"crash loop: {len(drv.exits)} exits: {drv.exits[:2]}")
        if fired and not alarm_seen:
            result["problems"].append("the fault fired but the storage fault alarm was never on")
        if fired and not cue_seen:
            result["problems"].append("the fault fired but the fault cue never played")
        audit_kinds = {e["data"].get("kind") for e in read_events(backing / "audit.log")
                       if e["event"] in ("fault", "notice")}
        if fired and not audit_kinds & {"storage_io", "storage_recovered"}:
            result["problems"].append("the fault fired but the audit log does not record it")
        if state_at_clear != "recording" and not drv.exits:
            result["problems"].append(f"not recording at the end of the fault window "
                                      f"(state {state_at_clear})")
        if state_at_clear == "recording" and not result.get("stored_in_clip_after_clear"):
            result["problems"].append("no segment stored in the clip after the fault cleared")
        if final is not None:
            if final["fault"] or final["alarm"]:
                result["problems"].append(f"the fault did not clear after clear_faults: {final}")
            if final["retries_pending"]:
                result["problems"].append(f"operations still waiting at the end: {final}")
        all_acks = chk.read_acks(acks_path)
        result["acked"] = len(all_acks)
        if len(all_acks) <= acks_before_clear:
            result["problems"].append("nothing was stored after the fault cleared")
        # ---- the evidence, on the image the disk left (unmounted)
        verdict = chk.Verdict()
        device = FileKeyStore(env.keys).device()
        identity = load_identity(env.agency / "agency.key")
        chk.check_acks(backing, None, all_acks, removed, identity, device, verdict)
        chk.check_index(backing, verdict)
        chk.check_tmp(backing, verdict)
        ic = chk.sqlite_integrity(backing / "index.sqlite")
        if ic != "ok":
            verdict.problems.append(f"index.sqlite: integrity_check: {ic}")
        chk.check_verify(backing, None, verdict)
        result["problems"] += _check_pinned(env, backing, removed)
        result["problems"] += _check_clips(backing, first_clip)
        result["lost"] += verdict.lost
        result["problems"] += verdict.problems
        result["outcome"] = _outcome(result)
    except PowerCutError as exc:
        result["problems"].append(f"power-cut disk: {exc}")
    except Exception as exc:  # noqa: BLE001 — the harness names its own failure too
        result["problems"].append(f"harness: {type(exc).__name__}: {exc} "
                                  f"{traceback.format_exc(limit=-4)[-900:]}")
    finally:
        result.setdefault("outcome", "failed")
        if result["problems"] or result["lost"]:
            result["outcome"] = "failed"
        result["seconds"] = round(time.perf_counter() - t_start, 2)
        if not keep and not result["lost"] and not result["problems"]:
            shutil.rmtree(d, ignore_errors=True)
        else:
            result["dir"] = str(d)
    return result


def _ack_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _outcome(result: dict) -> str:
    if result.get("absorbed"):
        return "absorbed"
    if not result.get("fired"):
        return "not_fired"
    return "exited_once_recovered" if result.get("exits") else "alarmed_recovered"


def _check_pinned(env: Env, backing: Path, removed: set[str]) -> list[str]:
    """The clip that was already closed and waiting for sync: untouched."""
    import hashlib

    from buffer.verify import verify_clip
    from drivers.keystore import FileKeyStore
    d = backing / "clips" / env.pinned_clip
    out = []
    if not d.is_dir():
        return [f"pinned clip {env.pinned_clip} is gone"]
    now = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}
    if now != env.pinned_files:
        out.append(f"pinned clip {env.pinned_clip} changed: {sorted(set(now) ^ set(env.pinned_files))}")
    gone = [r for r in removed if r.startswith(f"clips/{env.pinned_clip}/")]
    if gone:
        out.append(f"the store deleted files of the pinned clip: {gone}")
    report = verify_clip(d, FileKeyStore(env.keys).device())
    if not report.ok:
        out.append(f"pinned clip does not verify: {report.failures[:3]}")
    return out


def _check_clips(backing: Path, first_clip: str | None) -> list[str]:
    """Clips of this run: all closed, the first one kept its segments after the fault."""
    import sqlite3
    db = sqlite3.connect(f"file:{backing / 'index.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT clip_id, state, stop_reason FROM clips").fetchall()
        counts = dict(db.execute("SELECT clip_id, COUNT(*) FROM segments WHERE clip_id IS NOT NULL "
                                 "GROUP BY clip_id").fetchall())
    finally:
        db.close()
    out = [f"clip {c} left {s}" for c, s, _ in rows if s != "closed"]
    if first_clip is not None and not counts.get(first_clip):
        out.append(f"the clip recorded through the fault ({first_clip}) holds no segment")
    return out


# ----------------------------------------------------------------------- calibration
def count_ops(env: Env) -> dict:
    """A fault-free run: each kind's operations from power-on to the end of the window."""
    d, work, backing = _case_dirs(env, "calibrate")
    with PowerCutDisk(backing, work / "store", seed=1) as disk:
        drv = Driver(work, d / "acks.jsonl")
        drv.power_on()
        counts = None
        for t, action in TIMELINE:
            drv.advance_to(t)
            if action == "clear":
                counts = disk.op_counts()
            elif action == "double_press":
                drv.do(_double_press)
            elif action == "marker":
                drv.do(_marker)
            elif action == "hold":
                drv.do(_hold)
        if drv.exits:
            raise RuntimeError(f"the fault-free run failed: {drv.exits[0]}")
        drv.rig.close()
    shutil.rmtree(d)
    return {k: counts.get(k, 0) for k in KINDS}


def plan(counts: dict, max_per_kind: dict[str, int | None], kinds=KINDS, errnos=ERRNOS,
         modes=MODES) -> tuple[list[CaseSpec], dict]:
    """Every N of every kind, per errno and mode; where ``max_per_kind[mode]`` is set and
    a kind has more operations, N is sampled evenly (first and last included)."""
    specs, sampled = [], {}
    for mode in modes:
        cap = max_per_kind.get(mode)
        for kind in kinds:
            total = counts[kind]
            ns = list(range(1, total + 1))
            if cap and total > cap:
                step = (total - 1) / (cap - 1) if cap > 1 else total
                ns = sorted({1 + round(i * step) for i in range(cap)} | {total})
                sampled[f"{kind}/{mode}"] = f"{len(ns)} of {total}"
            for err in errnos:
                specs += [CaseSpec(kind, n, err, mode) for n in ns]
    return specs, sampled


# ----------------------------------------------------------------------------- main
_ENV: Env | None = None


def _worker_init(env: Env) -> None:
    global _ENV
    _ENV = env
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.disable(logging.CRITICAL)  # the agent's fault logs, thousands of them


def _work(spec: CaseSpec) -> dict:
    return run_case(_ENV, spec)


def summarize(results: list[dict], counts: dict, sampled: dict, elapsed: float) -> dict:
    outcomes: dict[str, int] = {}
    by_kind: dict[str, dict[str, int]] = {}
    for r in results:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
        k = by_kind.setdefault(f"{r['spec']['op']}/{r['spec']['err']}/{r['spec']['mode']}", {})
        k[r["outcome"]] = k.get(r["outcome"], 0) + 1
    failed = [r for r in results if r["outcome"] == "failed"]
    return {
        "fault_points": len(results), "ops_in_fault_window": counts, "sampled": sampled,
        "outcomes": outcomes, "by_kind": by_kind,
        "failed": len(failed), "lost": sum(len(r["lost"]) for r in results),
        "crash_loops": sum(1 for r in results if any("crash loop" in p for p in r["problems"])),
        "exits": sum(r.get("exits", 0) for r in results),
        "acked_segments": sum(r.get("acked", 0) for r in results),
        "elapsed_s": round(elapsed, 1),
        "failures": failure_digest(failed),
    }


def table(s: dict) -> str:
    rows = [("I/O fault points tried", s["fault_points"]),
            ("  storage ops in the fault window", s["ops_in_fault_window"]),
            ("  sampled", s["sampled"] or "no: every N"),
            ("outcomes", s["outcomes"]),
            ("crash loops (must be 0)", s["crash_loops"]),
            ("segments lost (must be 0)", s["lost"]),
            ("failed cases (must be 0)", s["failed"]),
            ("elapsed (s)", s["elapsed_s"])]
    return format_rows(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hw_sim.campaign_ioerrors",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--kinds", default=",".join(KINDS), help="operation kinds to fail")
    ap.add_argument("--errnos", default=",".join(ERRNOS))
    ap.add_argument("--modes", default=",".join(MODES),
                    help="sticky (fails until cleared) and/or once (only the Nth fails)")
    ap.add_argument("--max-per-kind", type=int, default=0,
                    help="sticky faults: sample at most this many N per kind (0: every N)")
    ap.add_argument("--max-per-kind-once", type=int, default=40,
                    help="one-off faults: sample at most this many N per kind (0: every N)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write the summary here")
    ap.add_argument("--workdir", type=Path, help="keep everything here (default: a temp dir)")
    ap.add_argument("--replay", help='one case, e.g. \'{"op": "fsync", "n": 17, "err": "EIO"}\'')
    args = ap.parse_args(argv)
    refused = refuse_without_fuse("I/O-error campaign", args.json, {"fault_points": 0})
    if refused is not None:
        return refused
    kinds = tuple(k for k in args.kinds.split(",") if k)
    errnos = tuple(e for e in args.errnos.split(",") if e)
    modes = tuple(m for m in args.modes.split(",") if m)
    bad = ([k for k in kinds if k not in KINDS] + [e for e in errnos if e not in ERRNOS]
           + [m for m in modes if m not in MODES])
    if bad:
        print(f"campaign_ioerrors: error: unknown kind/errno {bad}", file=sys.stderr)
        return 2
    base = (args.workdir or Path(tempfile.mkdtemp(prefix="bwv-ioerr-"))).resolve()
    t0 = time.perf_counter()
    logging.disable(logging.CRITICAL)
    print(f"I/O-error campaign in {base}: making the pre-made store", file=sys.stderr)
    env = prepare(base)
    if args.replay:
        spec = CaseSpec(**json.loads(args.replay))
        res = run_case(env, spec, keep=True)
        print(json.dumps(res, indent=2))
        return 0 if res["outcome"] != "failed" else 1
    counts = count_ops(env)
    specs, sampled = plan(counts, {"sticky": args.max_per_kind or None,
                                   "once": args.max_per_kind_once or None}, kinds, errnos, modes)
    print(f"storage operations in the fault window: {counts}; {len(specs)} cases"
          + (f" (sampled: {sampled})" if sampled else " (every N)"), file=sys.stderr)
    def on_result(i: int, r: dict, results: list[dict]) -> None:
        if r["outcome"] == "failed":
            print(f"FAIL {r['case']} replay={json.dumps(r['spec'])}: "
                  f"{(r['lost'] + r['problems'])[:2]}", file=sys.stderr)
        if i % 25 == 0 or i == len(specs):
            print(f"I/O errors: {i}/{len(specs)} cases, failed "
                  f"{sum(1 for x in results if x['outcome'] == 'failed')}, "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)

    results = run_cases(specs, _work, jobs=args.jobs, worker_init=_worker_init, env=env,
                        on_result=on_result)
    summary = summarize(results, counts, sampled, time.perf_counter() - t0)
    summary["command"] = "python -m hw_sim.campaign_ioerrors " + " ".join(
        argv if argv is not None else sys.argv[1:])
    print(table(summary), file=sys.stderr)
    write_reports(args.json, summary, results)
    if not args.workdir and not summary["failures"]:
        shutil.rmtree(base, ignore_errors=True)
    return 0 if summary["failed"] == 0 and summary["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
