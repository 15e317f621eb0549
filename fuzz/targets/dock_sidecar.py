"""Target ``dock_sidecar``: the tag sidecar (``<object>.tags.json``) beside each object
on a dock share (``sync.directory.DirectoryTarget``).

The share is outside the camera; a sidecar there may be damaged or edited. When a
docked camera puts an object that is already there, it re-reads the sidecar and
repairs it (a legal hold only ever goes on). That must never raise — a broken sidecar
is rewritten — and afterwards the sidecar must be an object whose ``tags`` are
strings and whose ``legal_hold`` is set when the camera asked for one.
"""
from __future__ import annotations

import hashlib
import json
import random

from fuzz.harness import Defect, scratch
from fuzz.jsonmut import mutate_json_bytes
from sync.directory import DirectoryTarget

KEY = "devices/BWV-FUZZ/clips/c1/000000000001.bwvseg"
DATA = b"sealed segment bytes"
TAGS = {"bwv-classification": "evidential", "bwv-device": "BWV-FUZZ"}
_st: dict = {}


def check(data: bytes) -> None:
    if not _st:
        share = scratch() / "dock-share"
        share.mkdir()
        t = DirectoryTarget(share)
        t.put(KEY, DATA, sha256=hashlib.sha256(DATA).hexdigest(), tags=TAGS)
        _st.update(target=t, side=t.path_of(KEY).with_name(t.path_of(KEY).name + ".tags.json"))
    t, side = _st["target"], _st["side"]
    if not side.exists():
        raise Defect(f"no sidecar at {side}")
    hold = bool(data[:1]) and data[0] & 1 == 1
    side.write_bytes(data[1:])
    t.put(KEY, DATA, sha256=hashlib.sha256(DATA).hexdigest(), tags=TAGS, legal_hold=hold)
    try:
        rec = json.loads(side.read_bytes())
    except (ValueError, RecursionError):
        rec = None
    if hold:
        if not isinstance(rec, dict) or rec.get("legal_hold") is not True:
            raise Defect(f"legal hold asked for, sidecar now {str(rec)[:80]}")
        if not isinstance(rec.get("tags"), dict):
            raise Defect(f"sidecar tags are {str(rec.get('tags'))[:80]}")


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    import atheris
    rng = random.Random(seed)
    head, body = data[:1] or b"\0", data[1:]
    if rng.random() < 0.2:
        head = bytes([rng.randrange(256)])
    out = mutate_json_bytes(body, rng) if rng.random() < 0.6 else None
    return (head + (out if out is not None else atheris.Mutate(body, max_size - 1)))[:max_size]


def seeds(out) -> None:
    """The sidecar a put writes, with and without a legal hold requested next."""
    import shutil
    import tempfile
    from pathlib import Path
    tmp = Path(tempfile.mkdtemp())
    try:
        t = DirectoryTarget(tmp)
        t.put(KEY, DATA, sha256=hashlib.sha256(DATA).hexdigest(), tags=TAGS)
        side = t.path_of(KEY).with_name(t.path_of(KEY).name + ".tags.json").read_bytes()
    finally:
        shutil.rmtree(tmp)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sidecar-then-hold.json").write_bytes(b"\x01" + side)
    (out / "sidecar.json").write_bytes(b"\x00" + side)
