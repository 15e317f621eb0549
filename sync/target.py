"""The evidence-store target interface: where sync puts sealed files.

Two implementations sit behind it: ``sync.s3.S3Target`` (any S3-compatible store, via
boto3) and ``sync.directory.DirectoryTarget`` (a dock share; the embedded default).
The sync engine speaks only this interface, so adding a target never touches the rules
about what may be released.

Every object is *create-only*: a put never replaces different content under the same
key (``ObjectConflict``), and putting identical content again is a no-op, so a retry
after a cut can never make a second copy or overwrite a different one. The one
exception is ``replace_corrupt=True``: the engine uses it only for a key it wrote
itself, with exactly these bytes, that the store then failed to hold intact (a store
that corrupted our upload). On S3 that is a new version (the corrupt one stays, under
object lock, as a record of the fault); on a directory an atomic replace.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class TargetError(Exception):
    """Base of target failures; the message names the target and the cause."""


class TransientError(TargetError):
    """Worth retrying (connection reset, timeout, 5xx, throttling)."""


class PermanentError(TargetError):
    """Will not heal by retrying (bad credentials, missing bucket, access denied):
    sync stops with a fault naming the cause."""


class ObjectConflict(PermanentError):
    """A different object already exists under this key; it is never overwritten."""


@dataclass(frozen=True)
class ObjectStat:
    """What the store says it holds under a key."""

    size: int
    sha256: str | None  # hex; None when the store cannot report one (then read back)


@dataclass(frozen=True)
class ProbeResult:
    reachable: bool
    server_utc_ns: int | None  # from the store's HTTP Date (1 s resolution), if any
    rtt_ns: int | None  # round trip of the probe request (bounds the offset's error)
    object_lock: bool  # legal holds are possible
    detail: str = ""


class Target(Protocol):
    """An evidence store. Keys are '/'-separated relative paths (no leading '/')."""

    description: str  # e.g. "s3://bucket (http://127.0.0.1:9000)" or "dir:/mnt/dock"

    def probe(self) -> ProbeResult: ...
    def stat(self, key: str) -> ObjectStat | None: ...
    def put(self, key: str, data: bytes, *, sha256: str, tags: dict[str, str],
            legal_hold: bool = False, replace_corrupt: bool = False) -> None: ...
    def read_sha256(self, key: str) -> str | None: ...
    def get(self, key: str) -> bytes: ...
    def list(self, prefix: str) -> list[str]: ...
