"""The signed envelope shared by sealed segments and clip manifests (docs/FORMAT.md).

    magic (8 bytes) | body_len (u32 big-endian) | body (UTF-8 JSON) | signature (64) | payload

The Ed25519 signature covers every byte before it (magic, length and body), so the
signed bytes are exactly the bytes on disk: a verifier never has to re-serialise JSON.
The envelope's *hash* is SHA-256 of those bytes plus the signature; it names a segment
in the hash chain and in clip manifests. The body carries the payload's SHA-256 and
size, so the hash commits to the payload too.
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

SEGMENT_MAGIC = b"BWVSEG1\n"
CLIP_MAGIC = b"BWVCLP1\n"
SIG_LEN = 64
MAX_BODY = 4 * 1024 * 1024  # a body this large is a corrupt length field, not a header
_PREFIX = struct.Struct(">8sI")


class EnvelopeError(ValueError):
    """The bytes are not a well-formed bwv envelope; the message says where."""


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON: sorted keys, no spaces, ASCII only (so bytes are stable)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


@dataclass(frozen=True)
class Envelope:
    magic: bytes
    body_bytes: bytes
    signature: bytes
    payload_offset: int

    @property
    def signed_bytes(self) -> bytes:
        return _PREFIX.pack(self.magic, len(self.body_bytes)) + self.body_bytes

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.signed_bytes + self.signature).hexdigest()

    def body(self) -> dict:
        try:
            obj = json.loads(self.body_bytes.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise EnvelopeError(f"body is not UTF-8 JSON ({exc})") from None
        except RecursionError:  # a crafted body of deeply nested arrays/objects
            raise EnvelopeError("body JSON is nested too deeply") from None
        if not isinstance(obj, dict):
            raise EnvelopeError("body is not a JSON object")
        return obj


def build(magic: bytes, body: dict, sign) -> tuple[bytes, str]:
    """Serialise and sign; returns (envelope bytes without payload, envelope hash)."""
    body_bytes = canonical_json(body)
    signed = _PREFIX.pack(magic, len(body_bytes)) + body_bytes
    sig = sign(signed)
    if len(sig) != SIG_LEN:
        raise ValueError("signer returned a signature that is not 64 bytes")
    return signed + sig, hashlib.sha256(signed + sig).hexdigest()


def parse(data: bytes, expect_magic: bytes) -> Envelope:
    """Split bytes into an envelope; checks structure only, not the signature."""
    if len(data) < _PREFIX.size:
        raise EnvelopeError(f"file is {len(data)} bytes, shorter than an envelope prefix")
    magic, body_len = _PREFIX.unpack_from(data)
    if magic != expect_magic:
        raise EnvelopeError(f"magic {magic!r} is not {expect_magic!r}")
    if body_len > MAX_BODY:
        raise EnvelopeError(f"body length {body_len} is implausible")
    end = _PREFIX.size + body_len
    if len(data) < end + SIG_LEN:
        raise EnvelopeError("file ends inside the header or signature (truncated)")
    return Envelope(magic, data[_PREFIX.size:end], data[end:end + SIG_LEN], end + SIG_LEN)
