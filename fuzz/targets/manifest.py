"""Target ``manifest``: a clip manifest, read the way ``bwv verify CLIP`` reads it.

The input replaces ``manifest.bwvclip`` in a real clip (three genuine sealed segments
beside it) and the whole clip is verified: envelope and body (``ManifestInvalid``),
signature, device, the segment list (seq numbers become file names), streams and gaps.
The verifier may only ever return a report — naming known checks, with messages, that
serialises to JSON — never raise. The mutator keeps the envelope framing valid most of
the time and changes the manifest's JSON structurally.
"""
from __future__ import annotations

from buffer import envelope, verify
from buffer.clip import MANIFEST_NAME
from fuzz.harness import named
from fuzz.targets._evidence import check_report, make_backdrop, reframe_mutation

_bd = None


def check(data: bytes) -> None:
    global _bd
    if _bd is None:
        _bd = make_backdrop("manifest")
    try:
        envelope.parse(data, envelope.CLIP_MAGIC).body()
    except envelope.EnvelopeError as exc:
        named(exc)
    (_bd.clip / MANIFEST_NAME).write_bytes(data)
    check_report(verify.verify_clip(_bd.clip, _bd.device, "fuzz"))


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    import atheris
    return reframe_mutation(data, max_size, seed, envelope.CLIP_MAGIC, atheris.Mutate)
