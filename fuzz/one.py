"""One target under atheris, in its own process (``fuzz.run`` starts one per target).

    python -m fuzz.one TARGET --inputs N --crash-dir DIR --crash-log FILE [libFuzzer args]

Instrumentation is switched on before the target imports its parsers, so libFuzzer
sees their branches. A defect (anything escaping ``check``) is recorded and the run
goes on: the input is saved to ``DIR/crash-<sha1>`` (the first few per signature) and a
JSON line goes to ``FILE`` at once, so nothing is lost if a later input hangs and
libFuzzer kills the process. A hang or a memory blow-up is libFuzzer's to catch
(``-timeout``, ``-rss_limit_mb``); it writes that input to its ``-artifact_prefix``.
Start it through ``fuzz.run``: libFuzzer ends the process with ``exit()``, so the
runner owns the scratch directory (``BWV_FUZZ_SCRATCH``) and removes it afterwards.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from fuzz import harness

KEEP_PER_SIGNATURE = 3


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m fuzz.one")
    ap.add_argument("target")
    ap.add_argument("--inputs", type=int, required=True)
    ap.add_argument("--crash-dir", type=Path, required=True)
    ap.add_argument("--crash-log", type=Path, required=True)
    args, libfuzzer_args = ap.parse_known_args(argv)

    import atheris
    with atheris.instrument_imports(include=list(harness.REGISTRY[args.target].instrument)):
        target = harness.load(args.target)
    args.crash_dir.mkdir(parents=True, exist_ok=True)
    saved: set[Path] = set()
    saved_for: dict[str, list[Path]] = {}
    # Open for the process's life: libFuzzer ends it with exit(), never returning here;
    # line-buffered, so each record is on disk before the next input runs.
    log = open(args.crash_log, "a", buffering=1)  # noqa: SIM115
    t0 = time.monotonic()

    def one_input(data: bytes) -> None:
        try:
            target.check(data)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 — every escape is the finding
            sig = harness.signature(exc)
            path = args.crash_dir / f"crash-{hashlib.sha1(data).hexdigest()}"
            if path in saved:
                pass
            elif len(saved_for.setdefault(sig, [])) < KEEP_PER_SIGNATURE:
                args.crash_dir.mkdir(parents=True, exist_ok=True)  # a parallel run may prune it
                path.write_bytes(data)
                saved.add(path)
                saved_for[sig].append(path)
            else:
                path = None
            log.write(json.dumps({"signature": sig, "message": str(exc)[:300],
                                  "file": str(path) if path else None, "size": len(data),
                                  "at_s": round(time.monotonic() - t0, 3)}) + "\n")

    custom = getattr(target, "mutate", None)

    def mutator(data: bytes, max_size: int, seed: int) -> bytes:
        try:
            return custom(data, max_size, seed)
        except Exception:  # noqa: BLE001 — an exception in a mutator stalls atheris
            return atheris.Mutate(data, max_size)

    atheris.Setup([sys.argv[0], f"-runs={args.inputs}", *libfuzzer_args], one_input,
                  custom_mutator=mutator if custom else None)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv[1:])
