"""Run a campaign's cases in forked worker processes, the pre-made environment handed
to each worker once (``initializer``), results in case order.

Shared by the power-cut, I/O-error and read-error campaigns: each case mounts its own
FUSE disk and runs a real agent, so cases run as processes (a crash or a wedged mount
stays in its worker), and ``fork`` lets a worker inherit the imported agent cheaply.
"""
from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def run_cases(specs: Sequence[Any], work: Callable[[Any], dict], *, jobs: int,
              worker_init: Callable[[Any], None], env: Any,
              on_result: Callable[[int, dict, list[dict]], None]) -> list[dict]:
    """``work(spec)`` in ``jobs`` workers; ``on_result(i, result, results so far)`` after
    each one finishes (progress, failures); the results sorted by their ``case``."""
    results: list[dict] = []
    ctx = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx,
                                                initializer=worker_init, initargs=(env,)) as pool:
        futures = [pool.submit(work, s) for s in specs]
        for i, fut in enumerate(concurrent.futures.as_completed(futures), 1):
            r = fut.result()
            results.append(r)
            on_result(i, r, results)
    results.sort(key=lambda r: r["case"])
    return results


def failure_digest(failed: Sequence[dict], *, lost: int = 3, problems: int = 5,
                   limit: int = 40) -> list[dict]:
    """The failed cases as the summary keeps them: enough to replay and read, not the
    whole case (that is in the ``.cases.jsonl`` beside the summary)."""
    return [{"case": r["case"], "spec": r["spec"], "lost": r["lost"][:lost],
             "problems": r["problems"][:problems], "dir": r.get("dir")} for r in failed][:limit]


def format_rows(rows: Sequence[tuple[str, Any]]) -> str:
    """A campaign's table for the terminal: one ``name  value`` row a line, aligned."""
    w = max(len(r[0]) for r in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def write_reports(json_path: Path | None, summary: dict, results: Sequence[dict]) -> None:
    """The summary as JSON and every case, one JSON line each, beside it (``.cases.jsonl``)."""
    if json_path is None:
        return
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    json_path.with_suffix(".cases.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
