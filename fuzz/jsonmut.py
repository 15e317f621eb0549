"""A structure-aware mutation for JSON documents (headers, manifests, audit bodies).

Byte-level mutation of JSON mostly yields text that no longer parses, so a fuzzer
spends its time on the JSON decoder's first error. This mutation parses the document,
changes one node the way an attacker or a damaged file would — a value of another type,
a huge or negative number, a float where an int belongs, ``Infinity``, a long or odd
string, a deleted or added key, a list wrapped around a value, deep nesting — and
serialises it again, so the input reaches the code that *uses* the fields.
"""
from __future__ import annotations

import json
import random
import re
from typing import Any

_DEEP = "\x00deep:"
_DEEP_RE = re.compile(rb'"\\u0000deep:(\d+)"')

_ODD_STRINGS = ["", " ", "0" * 64, "f" * 63, "../../etc/passwd", "a" * 300, "\u00e9\u4e2d",
                "\ud800", "-1", "1e999", "NaN", "\x00", "2026-13-45T99:99:99Z", "age1"]
_ODD_NUMBERS: list[Any] = [0, -1, 1, 2**31, 2**63, -2**63, 10**30, 10**400, 0.5, -0.0,
                           1e308, float("inf"), float("-inf"), float("nan"), True, False]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if r < 0.3:
        return rng.choice(_ODD_NUMBERS)
    if r < 0.5:
        return rng.choice(_ODD_STRINGS)
    if r < 0.6:
        return None
    if r < 0.7 and depth < 3:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if r < 0.8 and depth < 3:
        return {rng.choice(["seq", "hash", "fps", "x", ""]): _random_value(rng, depth + 1)
                for _ in range(rng.randint(0, 3))}
    if r < 0.85:  # deep nesting, spliced in as text by dumps (json.dumps would recurse)
        return f"{_DEEP}{rng.choice([50, 500, 5000, 100000])}"
    return rng.randint(-10**6, 10**6)


def _nodes(obj: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _nodes(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:64]):  # long lists (frame hashes): a sample is enough
            out += _nodes(v, path + (i,))
    return out


def _get(obj: Any, path: tuple) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def mutate_value(obj: Any, rng: random.Random) -> Any:
    """One structural change somewhere in ``obj`` (a copy is changed, never ``obj``)."""
    obj = json.loads(json.dumps(obj))
    nodes = _nodes(obj)
    path = rng.choice(nodes)
    if not path:
        return _random_value(rng) if rng.random() < 0.3 else obj
    parent, key = _get(obj, path[:-1]), path[-1]
    current = parent[key]
    r = rng.random()
    if r < 0.15 and isinstance(parent, dict):
        del parent[key]
    elif r < 0.25 and isinstance(parent, list):
        parent.insert(key, _random_value(rng) if rng.random() < 0.5 else current)
    elif r < 0.32:
        parent[key] = [current]
    elif r < 0.4 and isinstance(parent, dict):
        parent[rng.choice(["x", key + "_", "", key.upper()])] = current
    elif r < 0.55 and isinstance(current, int) and not isinstance(current, bool):
        parent[key] = rng.choice([current + 1, current - 1, -current, current * 2**32,
                                  current + 0.5, str(current)])
    elif r < 0.65 and isinstance(current, str):
        parent[key] = rng.choice([current[:-1], current + current[-1:], current.upper(),
                                  current[::-1], current[: len(current) // 2]])
    else:
        parent[key] = _random_value(rng)
    return obj


def dumps(obj: Any, rng: random.Random) -> bytes:
    """Serialised the way an attacker may write it: canonical or not, NaN allowed."""
    if rng.random() < 0.7:
        out = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()
    else:
        out = json.dumps(obj, ensure_ascii=rng.random() < 0.5,
                         allow_nan=True).encode("utf-8", "surrogatepass")
    return _DEEP_RE.sub(lambda m: b"[" * int(m[1]) + b"]" * int(m[1]), out)


def mutate_json_bytes(data: bytes, rng: random.Random) -> bytes | None:
    """``data`` mutated structurally, or None when it is not JSON to begin with."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return None
    try:
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            obj = mutate_value(obj, rng)
        return dumps(obj, rng)
    except Exception:  # noqa: BLE001 — a mutator must never raise (atheris stalls)
        return None
