"""Target ``assignment``: ``devices/<id>/assignment.json`` as a docked camera fetches it
from the evidence store (``sync.engine.parse_assignment``). The store is outside the
camera, so any bytes may come back: only ``ValueError`` with a message may come out
(the engine audits it as ``assignment_invalid``), and an accepted assignment names an
officer id of 1-64 plain characters."""
from __future__ import annotations

import random
import re

from fuzz.harness import Defect, named
from fuzz.jsonmut import mutate_json_bytes
from sync.engine import parse_assignment


def check(data: bytes) -> None:
    try:
        got = parse_assignment(data)
    except ValueError as exc:
        named(exc)
        return
    if not re.fullmatch(r"[A-Za-z0-9._ -]{1,64}", got["officer_id"]) or not isinstance(got["by"], str):
        raise Defect(f"accepted {got!r}")


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    import atheris
    rng = random.Random(seed)
    out = mutate_json_bytes(data, rng) if rng.random() < 0.6 else None
    return out[:max_size] if out is not None else atheris.Mutate(data, max_size)
