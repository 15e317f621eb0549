"""`make reliability`: every fault campaign of issue #7, then one table.

::

    python -m hw_sim.reliability                   # the full run (what CI runs)
    python -m hw_sim.reliability --quick           # a smoke run of the same parts (minutes)
    python -m hw_sim.reliability --only ioerrors,recovery

Five parts, each its own process, one after the other (each uses ``--jobs`` cores):

``powercut``  ``hw_sim.campaign_powercut``: the real agent on the power-loss FUSE disk,
              >= 200 seeded random cuts (torn / prefix), compound cuts (recovery cut
              too), and the exhaustive sweep that cuts after every durability barrier
              of a short workload;
``ioerrors``  ``hw_sim.campaign_ioerrors``: EIO and ENOSPC at every Nth write, fsync,
              rename and create of a short workload (sticky and one-off);
``readerrors`` ``hw_sim.campaign_readerrors``: EIO at every Nth read of the card while
              the docked camera syncs (a bad sector): nothing released early, and the
              next dock releases everything;
``fuzz``      ``fuzz.run``: every atheris target, >= 100,000 inputs each;
``recovery``  ``hw_sim.recovery_bench``: recovery time of a 30,000-segment store.

Each part writes its JSON report under ``--out`` (``out/reliability``); this driver
reads them and ends with ONE table — cuts made, acknowledged segments, segments lost,
cuts whose recovery failed, recovery time p50/p99 and on the 30k store, I/O fault points
and their outcomes, fuzz inputs and crashes per target — also written as
``summary.json`` and ``table.md`` (the figures docs/RELIABILITY.md quotes).

Exit status: 0 when every part ran and every must-be-zero figure is zero; 1 otherwise;
2 when this machine cannot run the campaigns (no ``/dev/fuse``: it fails, saying so,
rather than passing without the power-loss disk).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("powercut", "ioerrors", "readerrors", "fuzz", "recovery")


@dataclass(frozen=True)
class Part:
    name: str
    argv: list[str]
    report: Path


def parts(out: Path, *, quick: bool, jobs: int, seed: int) -> dict[str, Part]:
    py = [sys.executable, "-m"]
    cuts, compound, inputs = (8, 2, 2000) if quick else (200, 20, 100_000)
    pc = py + ["hw_sim.campaign_powercut", "--cuts", str(cuts), "--compound", str(compound),
               "--seed", str(seed), "--jobs", str(jobs), "--json", str(out / "powercut.json")]
    io = py + ["hw_sim.campaign_ioerrors", "--jobs", str(jobs), "--json", str(out / "ioerrors.json")]
    rd = py + ["hw_sim.campaign_readerrors", "--jobs", str(jobs), "--json", str(out / "readerrors.json")]
    if quick:
        pc.append("--no-sweep")
        io += ["--max-per-kind", "4", "--max-per-kind-once", "2"]
        rd += ["--max-per-mode", "4"]
    fz = py + ["fuzz.run", "--inputs", str(inputs), "--jobs", str(jobs), "--seed", str(seed),
               "--json", str(out / "fuzz.json")]
    rb = py + ["hw_sim.recovery_bench", "--segments", "2000" if quick else "30000",
               "--json", str(out / "recovery.json")]
    return {"powercut": Part("powercut", pc, out / "powercut.json"),
            "ioerrors": Part("ioerrors", io, out / "ioerrors.json"),
            "readerrors": Part("readerrors", rd, out / "readerrors.json"),
            "fuzz": Part("fuzz", fz, out / "fuzz.json"),
            "recovery": Part("recovery", rb, out / "recovery.json")}


def run_part(part: Part) -> dict:
    """Run one part, its progress straight to the console; return how it went."""
    part.report.unlink(missing_ok=True)  # never read a stale report as this run's
    print(f"\n=== reliability: {part.name}: {' '.join(part.argv[1:])}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    try:
        rc = subprocess.run(part.argv, cwd=ROOT, stdout=sys.stderr).returncode
    except KeyboardInterrupt:
        raise
    seconds = time.monotonic() - t0
    report = None
    if part.report.exists():
        try:
            report = json.loads(part.report.read_text())
        except ValueError as exc:
            report = {"error": f"unreadable report {part.report}: {exc}"}
    print(f"=== reliability: {part.name}: exit {rc} after {seconds:.0f} s", file=sys.stderr,
          flush=True)
    return {"rc": rc, "seconds": round(seconds, 1), "report": report}


# -------------------------------------------------------------------------- summary
def summarize(results: dict[str, dict]) -> dict:
    """The figures, and every reason the run fails (empty: it passed)."""
    fails: list[str] = []
    rows: list[tuple[str, str]] = []

    def part_failed(name: str) -> dict | None:
        r = results.get(name)
        if r is None:
            return None
        rep = r.get("report")
        if r["rc"] != 0:
            fails.append(f"{name}: exited {r['rc']}" + (f" ({rep['error']})" if rep and "error" in rep else ""))
        if rep is None:
            fails.append(f"{name}: wrote no report")
        return rep

    pc = part_failed("powercut")
    if pc is not None and "error" not in pc:
        lost, failed = pc.get("lost"), pc.get("failed_recoveries")
        rt = pc.get("recovery_time_s", {})
        rows += [("power cuts made", f"{pc.get('cuts')} ({_kinds(pc.get('cases_by_kind'))})"),
                 ("acknowledged segments checked", str(pc.get("acked_segments"))),
                 ("segments lost (must be 0)", str(lost)),
                 ("cuts whose recovery failed (must be 0)", str(failed)),
                 ("recovery time after a cut, p50 / p99", f"{_s(rt.get('p50'))} / {_s(rt.get('p99'))}")]
        if lost != 0:
            fails.append(f"powercut: {lost} acknowledged segments lost")
        if failed != 0:
            fails.append(f"powercut: {failed} cuts whose recovery failed")
    rb = part_failed("recovery")
    if rb is not None and "error" not in rb:
        rows.append((f"recovery time, {rb.get('segments'):,}-segment store (median / max of "
                     f"{rb.get('cuts')}, page cache {rb.get('page_cache')})",
                     f"{_s(rb.get('recovery_s_median'))} / {_s(rb.get('recovery_s_max'))}"))
    io = part_failed("ioerrors")
    if io is not None and "error" not in io:
        sampled = io.get("sampled") or {}
        rows += [("I/O fault points tried (EIO and ENOSPC; sticky and once)", str(io.get("fault_points"))),
                 ("  storage ops per kind in the fault window", _kinds(io.get("ops_in_fault_window"))),
                 ("  sampled (else every N)", _kinds(sampled) or "none"),
                 ("  their outcomes", _kinds(io.get("outcomes"))),
                 ("  crash loops / lost segments / failed (must be 0)",
                  f"{io.get('crash_loops')} / {io.get('lost')} / {io.get('failed')}")]
        for key in ("crash_loops", "lost", "failed"):
            if io.get(key) != 0:
                fails.append(f"ioerrors: {key} = {io.get(key)}")
    rd = part_failed("readerrors")
    if rd is not None and "error" not in rd:
        sampled = f"; sampled {_kinds(rd['sampled'])}" if rd.get("sampled") else ""
        window = f"{rd.get('reads_in_fault_window')} reads in the fault window{sampled}"
        must_be_zero = " / ".join(str(rd.get(k)) for k in ("crash_loops", "early_releases",
                                                           "lost", "failed"))
        rows += [("read fault points tried while syncing (EIO; sticky and once)",
                  f"{rd.get('fault_points')} ({window})"),
                 ("  their outcomes", _kinds(rd.get("outcomes"))),
                 ("  crash loops / early releases / lost / failed (must be 0)", must_be_zero)]
        for key in ("crash_loops", "early_releases", "lost", "failed"):
            if rd.get(key) != 0:
                fails.append(f"readerrors: {key} = {rd.get(key)}")
    fz = part_failed("fuzz")
    if fz is not None and "error" not in fz:
        for t in fz.get("targets", []):
            rows.append((f"fuzz {t['target']}: inputs / crashes (must be 0)",
                         f"{t.get('inputs'):,} / {t.get('crashes')}"
                         + ("" if t.get("status") == "ok" else f" [{t.get('status')}]")))
            if t.get("crashes"):
                fails.append(f"fuzz {t['target']}: {t['crashes']} crashes")
        for s in fz.get("skipped", []):
            rows.append((f"fuzz {s['target']}", f"skipped: {s['reason']}"))
    total = sum(r["seconds"] for r in results.values())
    rows += [(f"{name} took", f"{r['seconds']:.0f} s") for name, r in results.items()]
    rows.append(("total", f"{total:.0f} s ({total / 60:.1f} min)"))
    return {"ok": not fails, "fails": fails, "rows": rows, "seconds": round(total, 1),
            "parts": {k: {"rc": v["rc"], "seconds": v["seconds"]} for k, v in results.items()}}


def _s(x) -> str:
    return "?" if x is None else f"{x:.3f} s"


def _kinds(d) -> str:
    return ", ".join(f"{k} {v}" for k, v in (d or {}).items())


def table(summary: dict, markdown: bool = False) -> str:
    rows = summary["rows"]
    if markdown:
        return "\n".join(["| figure | value |", "|---|---|"]
                         + [f"| {k} | {v} |" for k, v in rows])
    w = max((len(k) for k, _ in rows), default=0)
    lines = [f"{k:<{w}}  {v}" for k, v in rows]
    verdict = "PASS" if summary["ok"] else "FAIL: " + "; ".join(summary["fails"])
    return "\n".join(["", "reliability — bwv under power cuts, I/O and read errors, and fuzzed input",
                      "-" * (w + 20), *lines, "-" * (w + 20), verdict])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hw_sim.reliability",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "reliability")
    ap.add_argument("--only", help=f"comma-separated parts of {','.join(PARTS)}")
    ap.add_argument("--quick", action="store_true", help="a smoke run: few cuts, inputs, points")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    names = [p for p in (args.only.split(",") if args.only else PARTS) if p]
    unknown = [p for p in names if p not in PARTS]
    if unknown:
        print(f"reliability: error: unknown part(s) {unknown}; choose from {', '.join(PARTS)}",
              file=sys.stderr)
        return 2
    from hw_sim.powercut import fuse_available
    reason = fuse_available()
    if reason and ({"powercut", "ioerrors", "readerrors"} & set(names)):
        print(f"reliability: FAIL: the power-cut, I/O-error and read-error campaigns need the power-loss "
              f"FUSE filesystem, which cannot run here: {reason}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    plan = parts(args.out, quick=args.quick, jobs=args.jobs, seed=args.seed)
    results = {name: run_part(plan[name]) for name in names}
    summary = summarize(results)
    summary["quick"] = args.quick
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "table.md").write_text(table(summary, markdown=True) + "\n")
    print(table(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
