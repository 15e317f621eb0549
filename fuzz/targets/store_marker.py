"""Target ``store_marker``: ``STORE/bwv-store.json``, read each time the agent opens its
store (``init_store`` and ``Store``'s marker check). A damaged marker must stop the
start with ``NotAStore``/``StoreError`` naming the file — a clear fault a technician can
act on — not an unexpected exception in the agent's start-up."""
from __future__ import annotations

import random
import types

from buffer.store import MARKER, Store, StoreError, init_store
from drivers.keystore import DeviceRecord
from fuzz.harness import FIXTURES, named, scratch
from fuzz.jsonmut import mutate_json_bytes

_state: dict = {}


def check(data: bytes) -> None:
    if not _state:
        root = scratch() / "store"
        root.mkdir(exist_ok=True)
        _state.update(root=root, device=DeviceRecord.from_json((FIXTURES / "device.json").read_text()))
    root, device = _state["root"], _state["device"]
    (root / MARKER).write_bytes(data)
    try:
        init_store(root, device)
    except StoreError as exc:
        named(exc)
    try:  # the marker check alone, without taking the store's lock or opening its index
        Store._check_marker(types.SimpleNamespace(root=root, device=device))
    except StoreError as exc:
        named(exc)


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    import atheris
    rng = random.Random(seed)
    out = mutate_json_bytes(data, rng) if rng.random() < 0.6 else None
    return out[:max_size] if out is not None else atheris.Mutate(data, max_size)
