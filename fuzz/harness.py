"""What every target shares: the defect rule, scratch space, fixtures and the registry.

The rule a target enforces: a parser of untrusted bytes may fail only with its own
named error type, carrying a message. Anything else escaping it (IndexError, KeyError,
UnicodeDecodeError, struct.error, RecursionError, OverflowError, TypeError,
AttributeError, OSError from a name it built out of the input, ...) is a defect, and so
is a result that breaks the parser's promise (a NaN in an accepted config, a latitude of
95° in a parsed fix). A target says so by letting the exception escape ``check`` or by
raising :class:`Defect`.

This module imports nothing from the project, so ``fuzz.one`` can switch atheris's
coverage instrumentation on before a target pulls in the parsers it exercises.
"""
from __future__ import annotations

import atexit
import importlib
import importlib.util
import os
import shutil
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
FIXTURES = FUZZ / "fixtures"
CORPUS = FUZZ / "corpus"
REGRESSIONS = FUZZ / "regressions"
CRASHES = FUZZ / "crashes"


@dataclass(frozen=True)
class Spec:
    module: str
    instrument: tuple[str, ...]  # packages atheris instruments (the parser and its libraries)
    max_len: int                 # libFuzzer -max_len: above the largest seed, bounded
    needs: str | None = None     # the parser module; the target is skipped until it exists


#: Every target, in run order. Console frames, update bundles and TUF metadata come with
#: other issues; their targets are skipped (not failed) until the parser module exists.
REGISTRY: dict[str, Spec] = {
    "segment": Spec("fuzz.targets.segment", ("buffer", "drivers", "capture"), 24 * 1024),
    "manifest": Spec("fuzz.targets.manifest", ("buffer", "drivers", "capture"), 8 * 1024),
    "audit": Spec("fuzz.targets.audit", ("buffer", "drivers"), 8 * 1024),
    "device_record": Spec("fuzz.targets.device_record", ("drivers",), 1024),
    "store_marker": Spec("fuzz.targets.store_marker", ("buffer",), 1024),
    "config": Spec("fuzz.targets.config", ("firmware", "tomllib"), 4096),
    "nmea": Spec("fuzz.targets.nmea", ("drivers", "pynmea2"), 256),
    "gps_stream": Spec("fuzz.targets.gps_stream", ("drivers", "pynmea2"), 2048),
    "assignment": Spec("fuzz.targets.assignment", ("sync",), 1024),
    "dock_sidecar": Spec("fuzz.targets.dock_sidecar", ("sync",), 2048),
    "console_frame": Spec("fuzz.targets.console_frame", ("firmware",), 4096,
                          needs="firmware.console_frame"),
    "bundle": Spec("fuzz.targets.bundle", ("firmware", "tarfile"), 64 * 1024,
                   needs="firmware.bundle"),
    "tuf_metadata": Spec("fuzz.targets.tuf_metadata", ("sync", "tuf", "securesystemslib"),
                         16 * 1024, needs="sync.firmware_fetch"),
    # Canaries (tests/fuzz): run only when named; they prove crashes and hangs are seen.
    "_canary_crash": Spec("fuzz.targets._canary:crash", ("fuzz",), 64),
    "_canary_hang": Spec("fuzz.targets._canary:hang", ("fuzz",), 64),
}


class Defect(Exception):
    """A parser broke its promise on some input (the message says which)."""


def named(exc: BaseException) -> None:
    """An allowed error must still say what is wrong: an empty message is a defect."""
    if not str(exc).strip():
        raise Defect(f"{type(exc).__name__} raised without a message")


def available(name: str) -> bool:
    spec = REGISTRY[name]
    if spec.needs is not None and _find(spec.needs) is None:
        return False
    return _find(spec.module.split(":")[0]) is not None


def _find(module: str):
    try:
        return importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return None


def target_names(selected: list[str] | None = None) -> list[str]:
    """The registered targets whose parsers exist (all, or the ``selected`` ones)."""
    names = [n for n in REGISTRY if not n.startswith("_")] if not selected else selected
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown fuzz target(s): {', '.join(unknown)} "
                         f"(known: {', '.join(REGISTRY)})")
    return [n for n in names if available(n)]


def load(name: str):
    """Import a target module (under instrumentation when ``fuzz.one`` asks)."""
    module, _, attr = REGISTRY[name].module.partition(":")
    mod = importlib.import_module(module)
    return getattr(mod, attr) if attr else mod


_scratch: Path | None = None


def scratch() -> Path:
    """A private directory for files a target must put on a filesystem (tmpfs when the
    host has one: the parsers read files, and writing them must not be the bottleneck)."""
    global _scratch
    if _scratch is None:
        base = os.environ.get("BWV_FUZZ_SCRATCH")
        if base is None and os.access("/dev/shm", os.W_OK):
            base = "/dev/shm"
        _scratch = Path(tempfile.mkdtemp(prefix="bwv-fuzz-", dir=base))
        atexit.register(shutil.rmtree, _scratch, True)
    return _scratch


def signature(exc: BaseException) -> str:
    """``Type at path:line (function)`` of the deepest project frame: one defect, one
    signature, however many inputs reach it."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if _project_file(f.filename)]
    f = (ours or frames or [None])[-1]
    where = "?" if f is None else f"{_rel(f.filename)}:{f.lineno} ({f.name})"
    return f"{type(exc).__name__} at {where}"


def _project_file(filename: str) -> bool:
    try:
        rel = Path(filename).resolve().relative_to(ROOT)
    except ValueError:
        return False
    return rel.parts[0] in ("buffer", "drivers", "capture", "sync", "firmware")


def _rel(filename: str) -> str:
    try:
        return str(Path(filename).resolve().relative_to(ROOT))
    except ValueError:
        return Path(filename).name


def replay_files(name: str) -> list[Path]:
    """The seed corpus and the kept crash inputs of one target (regression tests)."""
    out = []
    for base in (CORPUS, REGRESSIONS):
        d = base / name
        if d.is_dir():
            out += sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith("."))
    return out
