"""How sync reaches the device's store without owning it.

Buffer's ``Store`` is used by one thread at a time (the agent's store worker). Sync runs
on its own thread, so every call goes through ``call`` — the agent passes its worker's
``call``, which runs the function on the worker and returns its result; tools that own
the store outright (``bwv sync`` with the agent stopped, tests) call directly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

from buffer.store import ClipFiles, Store

T = TypeVar("T")


class StoreView:
    def __init__(self, store: Store, call: Callable[[Callable[[], T]], T] | None = None) -> None:
        self._store = store
        self._call = call or (lambda fn: fn())

    def closed_clips(self) -> list[ClipFiles]:
        return self._call(self._store.closed_clips)

    def release_clip(self, clip_id: str, *, target: str, proof: list[dict]) -> None:
        self._call(lambda: self._store.release_clip(clip_id, target=target, proof=proof))

    def audit(self, event: str, **data) -> None:
        self._call(lambda: self._store.audit.append(event, **data))

    def audit_log(self) -> Path:
        return self._store.root / "audit.log"

    def device_record(self) -> bytes:
        return (self._store.root / "device.json").read_bytes()
