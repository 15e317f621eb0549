"""Run a campaign's cases in forked worker processes, the pre-made environment handed
to each worker once (``initializer``), results in case order.

Shared by the power-cut, I/O-error and read-error campaigns: each case mounts its own
FUSE disk and runs a real agent, so cases run as processes (a crash or a wedged mount
stays in its worker), and ``fork`` lets a worker inherit the imported agent cheaply.
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
from collections.abc import Callable, Sequence
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
