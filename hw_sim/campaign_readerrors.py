"""The read-error campaign: a card that returns EIO on read while the camera syncs.

::

    python -m hw_sim.campaign_readerrors --json out/readerrors.json
    python -m hw_sim.campaign_readerrors --replay '{"n": 7, "mode": "sticky"}'

A storage card with a bad sector answers a read with EIO. The promise at stake is the
dock-sync one (DESIGN invariant 5): a clip is released — its local space freed — only
when every object of it, and its manifest, are confirmed received by the evidence store,
and the release and its proof are in the audit log. This campaign fails reads of the
store's disk while the camera is docked and syncs to the embedded default target (the
dock share, ``sync.directory.DirectoryTarget``; the share lives outside the FUSE mount,
only the card fails).

The real agent runs in this process on simulated hardware (``hw_sim.runner.Rig``), its
store on the power-loss FUSE disk (``hw_sim.powercut.PowerCutDisk``), driven by the
I/O-error campaign's harness (``hw_sim.campaign_ioerrors``: its ``Driver`` restarts an
agent whose exception escaped, as systemd would; one exit is tolerated, a second is a
crash loop). Every case starts from the same pre-made store — two closed clips awaiting
sync, the first *evidential* (it holds an event marker, so it is pushed first, under
legal hold), the second not — and runs one timeline:

    0 s   power on (store recovery, power-on audit), buffering
    1 s   the read fault is armed; the camera goes into its dock     ─┐ the fault window:
          (0.3 s debounce, then sync: rounds with backoff)             │ the n-th read of
    4 s   the window is checked, the fault clears, the camera is      ─┘ the card fails
          taken out of the dock                                          (sticky: and every
    5 s   back into the dock: sync runs again                            later one; once:
    8 s   clean shutdown                                                 only that one)

Reads reach the disk: the FUSE mount has no ``kernel_cache``/``auto_cache``, so every
open drops the kernel's cached pages of that file and the first read of each file after
an open is a FUSE read. The campaign proves it rather than trusting it: a first,
fault-free run counts the reads of the fault window (a fault armed at a read number no
run reaches counts them without failing any); a count of 0 fails the campaign ("reads
never reached the disk"); and in the sticky case from the very first read no byte of any
clip may reach the target while the fault is active — if one did, it was served from a
cache and the case says so. The campaign then runs one case per (N, mode) for N = 1 …
that count, sampled evenly above ``--max-per-mode`` (40) with the summary saying so.

Checked in every case:

- the agent never crashes in a loop (the I/O-error campaign's rule);
- while the fault is active no clip is released (a local file of it removed) unless every
  object of it is in the target byte-identical to the sealed file that was on the device
  (the pre-made store is the copy taken before the case), and each such release is in
  the audit log with a proof naming every object by the SHA-256 the device recorded;
- no local file of a clip that was not released is ever removed;
- a fault that reached the sync is *reported*: the dock indication shows a sync fault or
  the sync's own retry finished the job, and the audit log names the local read error;
- after the fault clears and the camera is docked again, every clip is released, the
  target holds every object byte-identical, each clip verifies from the dock share
  (``buffer.verify.verify_path``, what ``bwv verify`` runs, the device key pinned); every
  acknowledged segment is kept (``powercut_check.check_acks``); the store verifies, its
  index agrees with the files, SQLite's integrity check passes, no temporary file is left.

Outcomes: ``held_then_released`` (the round ended as a sync fault — dock indication
``sync_fault``, audit ``fault``/``sync_local_storage`` per round — with every clip whose
file could not be read still on the device; the next dock released it), ``absorbed`` (the
fault fired but never reached the agent: a failed readahead that the kernel re-reads
page by page — every ``once`` fault ends so, on a real card as here — or, late in the
window, SQLite's best-effort checkpoint of ``sync.sqlite`` at close, whose WAL stays and
is replayed at the next open), ``exited_once_recovered``, ``not_fired``. SQLite's ``-shm``
wal-index is never faulted (``powercut_model``: scratch files; a card never reads it back,
FUSE would, and the EIO would be a SIGBUS in SQLite's mmap). The storage fault alarm is
not raised by a read error during sync: the docked camera shows the sync fault instead.

Exit status 0 when every case kept every promise, 1 otherwise, 2 when the campaign
cannot run here (no ``/dev/fuse``: it fails, it never passes silently).
"""
from __future__ import annotations

import argparse
import hashlib
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

from buffer.clip import MANIFEST_NAME
from hw_sim.campaign_ioerrors import (
    DEVICE,
    Driver,
    _case_dirs,
    _double_press,
    _hold,
    _marker,
    config,
)
from hw_sim.campaign_pool import failure_digest, format_rows, run_cases, write_reports
from hw_sim.powercut import PowerCutDisk, PowerCutError, refuse_without_fuse

MODES = ("sticky", "once")
ERRNOS = ("EIO",)
DOCK_S = 1.0
CLEAR_S = 4.0
REDOCK_S = 5.0
END_S = 8.0
#: A read number no run reaches: a fault armed there counts reads without failing one.
NEVER = 10**9
#: Audit events that show sync saw the card fail (the engine's own fault kinds).
READ_FAULT_KINDS = {"sync_local_storage", "storage_io"}


@dataclass(frozen=True)
class CaseSpec:
    n: int                 # the n-th read of the card since the fault was armed fails …
    mode: str = "sticky"   # … and every later one until cleared (sticky), or only it (once)
    err: str = "EIO"

    @property
    def name(self) -> str:
        return f"read-{self.err}-{self.mode}-{self.n:04d}"


@dataclass
class Env:
    base: Path
    template: Path            # the pre-made store (each case's backing image starts as it)
    keys: Path
    agency: Path
    clips: dict               # clip_id -> {file name: sha256} of its sealed files
    evidential: str           # the clip holding the event marker


# ---------------------------------------------------------------------------- setup
def prepare(base: Path) -> Env:
    """Keys, and the pre-made store with two closed clips awaiting sync, by the real agent
    on a plain (fault-free) disk: an evidential clip (an event marker) and a plain one."""
    import sqlite3

    from hw_sim.runner import Rig, ensure_keys
    tpl = base / "template"
    work = tpl / "work"
    work.mkdir(parents=True, exist_ok=True)
    ensure_keys(work, DEVICE)
    rig = Rig(config(), work, device_id=DEVICE, microphone=False).start()
    rig.advance(1.0)
    _double_press(rig)
    rig.advance(1.5)
    _marker(rig)
    rig.advance(1.0)
    _hold(rig)
    rig.advance(1.5)
    _double_press(rig)
    rig.advance(2.5)
    _hold(rig)
    rig.advance(1.0)
    res = rig.close()
    db = sqlite3.connect(f"file:{res.store_dir / 'index.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT clip_id, state, classification FROM clips").fetchall()
    finally:
        db.close()
    if len(rows) != 2 or any(s != "closed" for _, s, _ in rows):
        raise RuntimeError(f"the pre-made store has clips {rows}, expected two closed ones")
    evidential = [c for c, _, cls in rows if cls == "evidential"]
    if len(evidential) != 1:
        raise RuntimeError(f"the pre-made store has clips {rows}, expected one evidential")
    clips = {c: {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in sorted((res.store_dir / "clips" / c).iterdir())} for c, _, _ in rows}
    return Env(base, res.store_dir, work / "keys", work / "agency", clips, evidential[0])


# -------------------------------------------------------------------------- running
class DockDriver(Driver):
    """The I/O-error campaign's driver, for a camera that sits in its dock: a restarted
    agent is put back into the dock (VBUS is still there), and every sync report of every
    run of the agent is kept."""

    def __init__(self, work: Path, acks: Path) -> None:
        super().__init__(work, acks)
        self.docked = False
        self.reports: list = []

    def power_on(self) -> bool:
        if not super().power_on():
            return False
        self.rig.sync.reports = self.reports  # one list across restarts
        if self.docked:
            return self.do(lambda rig: rig.dock())
        return True

    def set_dock(self, docked: bool) -> None:
        self.docked = docked
        self.do(lambda rig: rig.dock() if docked else rig.undock())


def _share_clip(work: Path, clip_id: str) -> Path:
    return work / "dock-share" / "devices" / DEVICE / "clips" / clip_id


def _missing_in_target(env: Env, work: Path, clip_id: str) -> list[str]:
    """Objects of the clip the target does not hold byte-identical to the sealed file."""
    out = []
    for name in env.clips[clip_id]:
        there = _share_clip(work, clip_id) / name
        if not there.is_file():
            out.append(f"{name}: absent")
        elif there.read_bytes() != (env.template / "clips" / clip_id / name).read_bytes():
            out.append(f"{name}: differs")
    return out


def _objects_in_target(env: Env, work: Path) -> int:
    return sum(1 for c in env.clips for name in env.clips[c]
               if (_share_clip(work, c) / name).exists())


def run_case(env: Env, spec: CaseSpec, keep: bool = False) -> dict:
    from buffer.agency import load_identity
    from buffer.audit import read_events
    from buffer.verify import verify_path
    from drivers.keystore import FileKeyStore
    from hw_sim import powercut_check as chk
    t_start = time.perf_counter()
    d, work, backing = _case_dirs(env, spec.name)
    acks_path = d / "acks.jsonl"
    result: dict = {"case": spec.name, "spec": asdict(spec), "problems": [], "lost": []}
    try:
        with PowerCutDisk(backing, work / "store", seed=1) as disk:
            drv = DockDriver(work, acks_path)
            drv.power_on()
            drv.advance_to(DOCK_S)
            disk.fail_nth("read", spec.n, spec.err, count=None if spec.mode == "sticky" else 1)
            drv.set_dock(True)
            drv.advance_to(CLEAR_S)
            # ---- the fault window's end, faults still active: nothing here reads the card
            status = disk.status()
            result["fired"] = sum(f["failed"] for f in status["faults"])
            result["reads_in_window"] = sum(f["seen"] for f in status["faults"])
            removed_in_fault = set(disk.removed())
            released_in_fault = sorted(c for c in env.clips
                                       if any(r.startswith(f"clips/{c}/") for r in removed_in_fault))
            reported_in_fault = sorted({c for r in drv.reports for c in r.released})
            result["released_in_fault"] = released_in_fault
            result["sync_in_fault"] = [r.status for r in drv.reports]
            result["sync_failures"] = [f for r in drv.reports for f in r.failures][:3]
            result["sync_messages"] = [r.message for r in drv.reports if r.message][:3]
            if drv.rig is not None:
                result["dock_indication"] = drv.rig.agent._sync_mode
            result["objects_in_target_in_fault"] = _objects_in_target(env, work)
            for c in sorted(set(released_in_fault) | set(reported_in_fault)):
                miss = _missing_in_target(env, work, c)
                if miss:
                    result["problems"].append(f"early release: clip {c} released while the card "
                                              f"failed, the target lacks {miss[:3]}")
            if spec.mode == "sticky" and spec.n == 1 and result["objects_in_target_in_fault"]:
                result["problems"].append(
                    "every read of the card failed, yet clip objects reached the target: reads "
                    "are served from a cache, not the disk (the campaign would prove nothing)")
            n_reports = len(drv.reports)
            exits_in_fault = len(drv.exits)
            if not drv.crash_loop():
                disk.clear_faults()
                drv.set_dock(False)
                drv.advance_to(REDOCK_S)
                drv.set_dock(True)
                drv.advance_to(END_S)
            result["sync_after"] = [r.status for r in drv.reports[n_reports:]]
            if drv.rig is not None and not drv.crash_loop():
                try:
                    drv.rig.close()
                except Exception as exc:  # noqa: BLE001
                    result["problems"].append(f"clean shutdown failed: {type(exc).__name__}: {exc}")
            removed = set(disk.removed())
        # ---- the agent's promises, on the image the disk left (unmounted)
        result["exits"] = len(drv.exits)
        result["exits_in_fault"] = exits_in_fault
        result["errors_seen"] = drv.errors_seen
        result["storage_alarm"] = drv.storage_alarm
        if drv.exits:
            result["exit_reasons"] = drv.exits[:2]
        if drv.crash_loop():
            result["problems"].append(f"crash loop: {len(drv.exits)} exits: {drv.exits[:2]}")
        events = read_events(backing / "audit.log")
        result["problems"] += _check_releases(env, events, removed, released_in_fault)
        result["fault_audit"] = _fault_audit(events)
        result["problems"] += _check_reported(result)
        if not drv.crash_loop():
            result["problems"] += _check_final(env, work, backing)
        verdict = chk.Verdict()
        device = FileKeyStore(env.keys).device()
        identity = load_identity(env.agency / "agency.key")
        share_device = work / "dock-share" / "devices" / DEVICE
        chk.check_acks(backing, share_device, chk.read_acks(acks_path), removed, identity,
                       device, verdict)
        chk.check_index(backing, verdict)
        chk.check_tmp(backing, verdict)
        ic = chk.sqlite_integrity(backing / "index.sqlite")
        if ic != "ok":
            verdict.problems.append(f"index.sqlite: integrity_check: {ic}")
        chk.check_verify(backing, share_device, verdict)
        for c in env.clips:
            share = _share_clip(work, c)
            if (share / MANIFEST_NAME).is_file():  # a missing object is reported above
                rep = verify_path(share, backing / "device.json")  # bwv verify --device-key
                if not rep.ok:
                    verdict.problems.append(f"bwv verify {c} on the dock share: "
                                            f"{rep.all_failures()[:3]}")
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


def _check_releases(env: Env, events: list[dict], removed: set[str],
                    released_in_fault: list[str]) -> list[str]:
    """Every clip with a local file removed was released, with a full proof in the audit
    log naming each object by the size and SHA-256 the device sealed it with."""
    out = []
    released = {e["data"].get("clip_id"): e["data"] for e in events if e["event"] == "clip_released"}
    for c, files in env.clips.items():
        gone = sorted(r for r in removed if r.startswith(f"clips/{c}/"))
        if not gone:
            continue
        rel = released.get(c)
        if rel is None:
            when = "while the card failed" if c in released_in_fault else "after the fault"
            out.append(f"local files of clip {c} removed {when} without a release in the "
                       f"audit log: {gone[:3]}")
            continue
        proof = {o.get("key", "").rsplit("/", 1)[-1]: o.get("sha256") for o in rel.get("objects", [])}
        if proof != files:
            out.append(f"the audit log's release of clip {c} does not prove every sealed file: "
                       f"{sorted(set(proof.items()) ^ set(files.items()))[:3]}")
    return out


def _fault_audit(events: list[dict]) -> list[str]:
    """Fault/notice kinds audited between the first dock and the first undock (the
    fault window)."""
    out, inside = [], False
    for e in events:
        if e["event"] == "dock" and not inside:
            inside = True
        elif e["event"] == "undock" and inside:
            break
        elif inside and e["event"] in ("fault", "notice", "alarm"):
            out.append(str(e["data"].get("kind")))
    return out


def _check_reported(result: dict) -> list[str]:
    """A fault that reached sync is not silent: either the same dock's retry rounds
    finished the job, or the dock indication shows a sync fault and the audit log names a
    local read error."""
    if not result.get("fired") or result.get("exits_in_fault"):
        return []
    statuses = result.get("sync_in_fault", [])
    if statuses and statuses[-1] == "complete":
        return []  # absorbed by the kernel's retry, or by sync's own next round
    out = []
    if result.get("dock_indication") != "sync_fault":
        out.append(f"the card failed and sync did not finish, yet the dock indication is "
                   f"{result.get('dock_indication')!r} (sync {statuses})")
    if not set(result.get("fault_audit", [])) & READ_FAULT_KINDS:
        out.append(f"the card failed and sync did not finish, yet the audit log names no "
                   f"local read error (fault kinds {result.get('fault_audit')})")
    return out


def _check_final(env: Env, work: Path, backing: Path) -> list[str]:
    """After the fault cleared and the camera docked again: everything is off the device."""
    import sqlite3
    out = []
    db = sqlite3.connect(f"file:{backing / 'index.sqlite'}?mode=ro", uri=True)
    try:
        states = dict(db.execute("SELECT clip_id, state FROM clips").fetchall())
    finally:
        db.close()
    for c in env.clips:
        if states.get(c) != "released":
            out.append(f"clip {c} is {states.get(c)} after the fault cleared and sync ran again")
        miss = _missing_in_target(env, work, c)
        if miss:
            out.append(f"after sync the target lacks objects of clip {c}: {miss[:3]}")
    return out


def _outcome(result: dict) -> str:
    if not result.get("fired"):
        return "not_fired"
    if result.get("exits"):
        return "exited_once_recovered"
    statuses = result.get("sync_in_fault", [])
    if statuses and statuses[-1] == "complete":
        return "retried_released" if result.get("fault_audit") or result.get("sync_failures") \
            or len(statuses) > 1 else "absorbed"
    return "held_then_released"


# ----------------------------------------------------------------------- calibration
def count_reads(env: Env) -> int:
    """A fault-free run of the fault window: the reads of the card from the moment the
    fault would be armed to the window's end (a fault at read NEVER counts them)."""
    d, work, backing = _case_dirs(env, "calibrate")
    with PowerCutDisk(backing, work / "store", seed=1) as disk:
        drv = DockDriver(work, d / "acks.jsonl")
        drv.power_on()
        drv.advance_to(DOCK_S)
        disk.fail_nth("read", NEVER, "EIO")
        drv.set_dock(True)
        drv.advance_to(CLEAR_S)
        faults = disk.status()["faults"]
        if drv.exits:
            raise RuntimeError(f"the fault-free run failed: {drv.exits[0]}")
        statuses = [r.status for r in drv.reports]
        if statuses != ["complete"]:
            raise RuntimeError(f"the fault-free sync did not complete: {statuses}")
        drv.rig.close()
    shutil.rmtree(d)
    return faults[0]["seen"]


class ReadsNeverReachedDisk(RuntimeError):
    """Reads were served by the kernel's cache, not the disk: no read fault could fire."""


def prove_reads_reach_disk(env: Env) -> dict:
    """Sealed files are read from the disk, not the kernel's page cache: a segment is read
    whole (its pages now cached), then with every read failing it is opened and read
    again, and a segment never read before too; both must fail with EIO. (The mount has
    no kernel_cache: each open drops the file's cached pages.)"""
    import errno
    d, work, backing = _case_dirs(env, "sight")
    clip = sorted(env.clips)[0]
    first, second = sorted(n for n in env.clips[clip] if n != MANIFEST_NAME)[:2]
    out: dict = {}
    with PowerCutDisk(backing, work / "store", seed=1) as disk:
        mnt = work / "store" / "clips" / clip
        (mnt / first).read_bytes()
        disk.fail_nth("read", 1, "EIO")
        for label, name in (("reread", first), ("fresh", second)):
            try:
                (mnt / name).read_bytes()
                out[label] = "read (served from a cache)"
            except OSError as exc:
                out[label] = errno.errorcode.get(exc.errno, str(exc.errno))
        disk.clear_faults()
    shutil.rmtree(d)
    if out != {"reread": "EIO", "fresh": "EIO"}:
        raise ReadsNeverReachedDisk(f"reads never reached the disk: the campaign would prove "
                                    f"nothing (a sealed file read with every disk read failing: {out})")
    return out


def plan(count: int, max_per_mode: int | None, modes=MODES) -> tuple[list[CaseSpec], dict]:
    """Every N per mode, sampled evenly (first and last included) above ``max_per_mode``."""
    if count <= 0:
        raise ReadsNeverReachedDisk("reads never reached the disk: the campaign would prove nothing")
    specs, sampled = [], {}
    ns = list(range(1, count + 1))
    if max_per_mode and count > max_per_mode:
        step = (count - 1) / (max_per_mode - 1) if max_per_mode > 1 else count
        ns = sorted({1 + round(i * step) for i in range(max_per_mode)} | {count})
    for mode in modes:
        if len(ns) < count:
            sampled[f"read/{mode}"] = f"{len(ns)} of {count}"
        specs += [CaseSpec(n, mode) for n in ns]
    return specs, sampled


# ----------------------------------------------------------------------------- main
_ENV: Env | None = None


def _worker_init(env: Env) -> None:
    global _ENV
    _ENV = env
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.disable(logging.CRITICAL)


def _work(spec: CaseSpec) -> dict:
    return run_case(_ENV, spec)


def summarize(results: list[dict], count: int, sampled: dict, elapsed: float,
              sight: dict | None = None) -> dict:
    outcomes: dict[str, int] = {}
    by_mode: dict[str, dict[str, int]] = {}
    for r in results:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
        k = by_mode.setdefault(f"read/{r['spec']['err']}/{r['spec']['mode']}", {})
        k[r["outcome"]] = k.get(r["outcome"], 0) + 1
    failed = [r for r in results if r["outcome"] == "failed"]
    return {
        "fault_points": len(results), "reads_in_fault_window": count, "sampled": sampled,
        "reads_reach_disk": sight,
        "outcomes": outcomes, "by_mode": by_mode,
        "failed": len(failed), "lost": sum(len(r["lost"]) for r in results),
        "crash_loops": sum(1 for r in results if any("crash loop" in p for p in r["problems"])),
        "early_releases": sum(1 for r in results if any("early release" in p or "without a release"
                                                        in p for p in r["problems"])),
        "exits": sum(r.get("exits", 0) for r in results),
        "held_during_fault": sum(1 for r in results if r.get("fired")
                                 and len(r.get("released_in_fault", [])) < 2),
        "elapsed_s": round(elapsed, 1),
        "failures": failure_digest(failed),
    }


def table(s: dict) -> str:
    rows = [("read fault points tried", s["fault_points"]),
            ("  card reads in the fault window", s["reads_in_fault_window"]),
            ("  reads reach the disk (re-read/fresh)", s["reads_reach_disk"]),
            ("  sampled", s["sampled"] or "no: every N"),
            ("outcomes", s["outcomes"]),
            ("crash loops (must be 0)", s["crash_loops"]),
            ("early releases (must be 0)", s["early_releases"]),
            ("segments lost (must be 0)", s["lost"]),
            ("failed cases (must be 0)", s["failed"]),
            ("elapsed (s)", s["elapsed_s"])]
    return format_rows(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hw_sim.campaign_readerrors",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--modes", default=",".join(MODES),
                    help="sticky (fails until cleared) and/or once (only the Nth fails)")
    ap.add_argument("--max-per-mode", type=int, default=40,
                    help="sample at most this many N per mode, evenly (0: every N)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write the summary here")
    ap.add_argument("--workdir", type=Path, help="keep everything here (default: a temp dir)")
    ap.add_argument("--replay", help='one case, e.g. \'{"n": 7, "mode": "sticky"}\'')
    args = ap.parse_args(argv)
    refused = refuse_without_fuse("read-error campaign", args.json, {"fault_points": 0})
    if refused is not None:
        return refused
    modes = tuple(m for m in args.modes.split(",") if m)
    bad = [m for m in modes if m not in MODES]
    if bad:
        print(f"campaign_readerrors: error: unknown mode {bad} (one of {', '.join(MODES)})",
              file=sys.stderr)
        return 2
    replay = None
    if args.replay:
        try:
            replay = CaseSpec(**json.loads(args.replay))
        except (ValueError, TypeError) as exc:
            print(f"campaign_readerrors: error: bad --replay spec: {exc}", file=sys.stderr)
            return 2
        if replay.mode not in MODES or replay.err not in ERRNOS or replay.n < 1:
            print(f"campaign_readerrors: error: bad --replay spec {args.replay}", file=sys.stderr)
            return 2
    base = (args.workdir or Path(tempfile.mkdtemp(prefix="bwv-readerr-"))).resolve()
    t0 = time.perf_counter()
    logging.disable(logging.CRITICAL)
    print(f"read-error campaign in {base}: making the pre-made store", file=sys.stderr)
    env = prepare(base)
    if replay is not None:
        res = run_case(env, replay, keep=True)
        print(json.dumps(res, indent=2))
        return 0 if res["outcome"] != "failed" else 1
    try:
        sight = prove_reads_reach_disk(env)
        count = count_reads(env)
        specs, sampled = plan(count, args.max_per_mode or None, modes)
    except ReadsNeverReachedDisk as exc:
        print(f"error: {exc}", file=sys.stderr)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"error": str(exc), "fault_points": 0,
                                             "reads_in_fault_window": 0, "failed": 1}, indent=2) + "\n")
        return 1
    print(f"card reads in the fault window: {count}; {len(specs)} cases"
          + (f" (sampled: {sampled})" if sampled else " (every N)"), file=sys.stderr)
    def on_result(i: int, r: dict, results: list[dict]) -> None:
        if r["outcome"] == "failed":
            print(f"FAIL {r['case']} replay={json.dumps(r['spec'])}: "
                  f"{(r['lost'] + r['problems'])[:2]}", file=sys.stderr)
        if i % 10 == 0 or i == len(specs):
            print(f"read errors: {i}/{len(specs)} cases, failed "
                  f"{sum(1 for x in results if x['outcome'] == 'failed')}, "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)

    results = run_cases(specs, _work, jobs=args.jobs, worker_init=_worker_init, env=env,
                        on_result=on_result)
    summary = summarize(results, count, sampled, time.perf_counter() - t0, sight)
    summary["command"] = "python -m hw_sim.campaign_readerrors " + " ".join(
        argv if argv is not None else sys.argv[1:])
    print(table(summary), file=sys.stderr)
    write_reports(args.json, summary, results)
    if not args.workdir and not summary["failures"]:
        shutil.rmtree(base, ignore_errors=True)
    return 0 if summary["failed"] == 0 and summary["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
