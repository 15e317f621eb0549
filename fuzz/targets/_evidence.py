"""The backdrop the segment and manifest targets verify against: a real store.

A copy (in scratch space) of the tiny clip in ``fuzz/fixtures/clips`` — three sealed segments
and their signed manifest, recorded by the real agent — inside a store directory with
its marker and device record, so ``verify_store`` walks every path a verifier takes:
a closed clip, the ring, and a clip that was never closed.
"""
from __future__ import annotations

import json
import random
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from buffer import envelope, verify
from buffer.store import MARKER
from drivers.keystore import DeviceRecord
from fuzz.harness import FIXTURES, Defect, scratch
from fuzz.jsonmut import mutate_json_bytes

#: Every check name a report may carry (the VerifyFailure subclasses).
CHECKS = {c.__name__ for c in verify.VerifyFailure.__subclasses__()}


@dataclass(frozen=True)
class Backdrop:
    root: Path
    clip: Path
    open_clip: Path
    ring: Path
    device: DeviceRecord
    segments: tuple[str, ...]  # file names in the closed clip, in order


def make_backdrop(name: str) -> Backdrop:
    root = scratch() / name
    if root.exists():
        shutil.rmtree(root)
    device = DeviceRecord.from_json((FIXTURES / "device.json").read_text())
    (src,) = (FIXTURES / "clips").iterdir()
    clip_id = src.name
    clip = root / "clips" / clip_id
    shutil.copytree(src, clip)
    open_clip = root / "clips" / f"{clip_id}-unclosed"
    open_clip.mkdir()
    (root / "ring").mkdir()
    (root / MARKER).write_text(json.dumps({"format": "bwv-store/1", "device_id": device.device_id}))
    (root / "device.json").write_text(device.to_json())
    segs = tuple(sorted(p.name for p in clip.glob("*.bwvseg")))
    return Backdrop(root, clip, open_clip, root / "ring", device, segs)


def check_report(report) -> None:
    """A report must name only known checks, each with a message, and serialise to
    JSON (``bwv verify --json`` prints it)."""
    failures = report.all_failures()
    items = (report.failures if isinstance(report, verify.ClipReport) else
             [f for c in report.clips for f in c.failures])
    segs = (report.segments if isinstance(report, verify.ClipReport) else
            [s for c in report.clips for s in c.segments] + list(report.ring))
    for check, message in list(items) + [f for s in segs for f in s.failures]:
        if check not in CHECKS:
            raise Defect(f"report names an unknown check {check!r}")
        if not str(message).strip():
            raise Defect(f"check {check} has no message")
    if not all(isinstance(f, str) for f in failures):
        raise Defect("all_failures() returned a non-string")
    verify.dumps(report)


def reframe_mutation(data: bytes, max_size: int, seed: int, magic: bytes, mutate_bytes) -> bytes:
    """Half the time a structural change of the JSON body, a third of the time a byte
    mutation of the body, each re-framed with a correct length (the old signature and
    payload kept: the verifier must name the mismatch); otherwise libFuzzer's own
    mutation of the whole file (framing, signature, payload)."""
    rng = random.Random(seed)
    try:
        env = envelope.parse(data, magic)
    except Exception:  # noqa: BLE001 — a mutator must never raise (atheris stalls)
        env = None
    r = rng.random()
    if env is None or r >= 0.85:
        return mutate_bytes(data, max_size)
    body = mutate_json_bytes(env.body_bytes, rng) if r < 0.5 else None
    if body is None:
        body = mutate_bytes(env.body_bytes, len(env.body_bytes) + 256)
    rest = data[env.payload_offset - envelope.SIG_LEN:]
    return (magic + struct.pack(">I", len(body)) + body + rest)[:max_size]
