"""Target ``audit``: the audit log file, as the device reopens it and the verifier reads it.

The input is written as ``STORE/audit.log`` and goes through every reader of that file:
``_parse_line`` per line (only ``AuditError``, with a message), ``verify_audit`` (returns
problems naming a line, never raises), ``read_events`` (bodies that are JSON objects),
the verifier's clips-against-audit cross-check, and finally the device itself opening
the log (``AuditLog``: repairs a torn tail, never refuses to start) and appending one
record, which must chain to the line before it.

The mutator changes one line's JSON body structurally most of the time (keeping the
line framing), so inputs reach the field logic behind the signature check.
"""
from __future__ import annotations

import hashlib
import json
import random

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from buffer import audit
from buffer.verify import StoreReport, check_clips_against_audit
from drivers.keystore import DeviceRecord
from fuzz.harness import FIXTURES, Defect, named, scratch
from fuzz.jsonmut import mutate_json_bytes


class _Clock:
    """A fixed clock: the target tests parsing, not time."""

    def monotonic_ns(self) -> int:
        return 10**12

    def utc_ns(self) -> int:
        return 1_780_000_000 * 10**9

    def state(self):
        from drivers.clock import ClockState
        return ClockState(synced=True, source="sim", last_offset_ns=0)


_state: dict = {}


def _setup() -> dict:
    if not _state:
        root = scratch() / "audit"
        (root / "clips").mkdir(parents=True, exist_ok=True)
        _state.update(root=root, path=root / "audit.log",
                      device=DeviceRecord.from_json((FIXTURES / "device.json").read_text()),
                      key=Ed25519PrivateKey.generate(), clock=_Clock())
    return _state


def check(data: bytes) -> None:
    st = _setup()
    path, device = st["path"], st["device"]
    for lineno, line in enumerate(data.split(b"\n")[:-1], start=1):
        try:
            audit._parse_line(line, lineno)
        except audit.AuditError as exc:
            named(exc)
    path.write_bytes(data)
    _, problems = audit.verify_audit(path, device.verifies, device.device_id)
    if not all(isinstance(p, str) and p for p in problems):
        raise Defect(f"verify_audit returned a problem that is not a message: {problems!r}")
    if not all(isinstance(e, dict) for e in audit.read_events(path)):
        raise Defect("read_events returned a body that is not an object")
    for p in check_clips_against_audit(st["root"], StoreReport(root=str(st["root"]), key_source="fuzz")):
        if not isinstance(p, str) or not p:
            raise Defect(f"check_clips_against_audit returned {p!r}")
    log = audit.AuditLog(path, device_id=device.device_id, sign=st["key"].sign, clock=st["clock"])
    log.append("fuzz", n=1)
    lines = path.read_bytes().split(b"\n")
    if lines[-1] != b"":
        raise Defect("the appended record does not end with a newline")
    before = hashlib.sha256(lines[-3]).hexdigest() if len(lines) >= 3 else audit.GENESIS
    body = json.loads(lines[-2].rsplit(b"\t", 1)[0])
    if body["prev"] != before:
        raise Defect("the appended record does not chain to the line before it")


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    import atheris
    rng = random.Random(seed)
    lines = data.split(b"\n")
    if len(lines) < 2 or rng.random() < 0.3:
        return atheris.Mutate(data, max_size)
    i = rng.randrange(len(lines) - 1)
    body, tab, sig = lines[i].rpartition(b"\t")
    new = mutate_json_bytes(body, rng) if tab and rng.random() < 0.7 else None
    if new is not None:
        lines[i] = new + b"\t" + sig
    else:
        lines[i] = atheris.Mutate(lines[i], len(lines[i]) + 64)
    if rng.random() < 0.1:
        del lines[rng.randrange(len(lines))]
    return b"\n".join(lines)[:max_size]
