"""Target ``device_record``: the key-store JSON files a verifier or the device trusts.

``device.json`` travels with every store and clip (``bwv verify`` reads it when no key
is pinned), so it is untrusted input: ``load_device_record`` may only raise
``VerifyInputError`` and ``DeviceRecord.from_json`` only ``KeyStoreError``. The same
bytes are also read as ``technicians.json`` (the console's allowed keys), which may
only raise ``KeyStoreError``. Every error carries a message.
"""
from __future__ import annotations

import os
import random

from buffer.verify import VerifyInputError, load_device_record
from drivers.keystore import DeviceRecord, FileKeyStore, KeyStoreError
from fuzz.harness import Defect, named, scratch
from fuzz.jsonmut import mutate_json_bytes

_dir = None


def check(data: bytes) -> None:
    global _dir
    if _dir is None:
        _dir = scratch() / "keys"
        _dir.mkdir(exist_ok=True)
    try:
        rec = DeviceRecord.from_json(data.decode("utf-8", "replace"))
        if len(rec.public_key) != 32 or not rec.device_id:
            raise Defect(f"accepted a malformed device record {rec!r}")
    except KeyStoreError as exc:
        named(exc)
    path = _dir / "device.json"
    path.write_bytes(data)
    try:
        load_device_record(path)
    except VerifyInputError as exc:
        named(exc)
    tech = _dir / "technicians.json"
    tech.write_bytes(data)
    os.chmod(tech, 0o644)
    try:
        for k in FileKeyStore(_dir).technician_keys():
            if len(k.public_key) != 32 or not isinstance(k.name, str):
                raise Defect(f"accepted a malformed technician key {k!r}")
    except KeyStoreError as exc:
        named(exc)


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    import atheris
    rng = random.Random(seed)
    out = mutate_json_bytes(data, rng) if rng.random() < 0.6 else None
    return out[:max_size] if out is not None else atheris.Mutate(data, max_size)
