"""Target ``segment``: a sealed segment file, read the way the verifier reads it.

Bytes go through ``envelope.parse`` + ``body`` (only ``EnvelopeError`` allowed), then
the verifier's per-file checks (``check_segment``, which must record failures, never
raise), and — only when the header parsed, because it costs file writes and a few
Ed25519 checks — ``verify_store`` over a real store where the input sits as the last
and first segment of a closed clip, as a ring segment and in a clip that was never closed, so
every header field the verifier reads (seq, prev_hash, stream, capture times, video
fps, payload size/hash) meets the input. Its report must serialise to JSON.

The custom mutator (``reframe_mutation``) keeps the envelope framing consistent most of
the time, so mutations reach the header logic instead of dying at the length check or
in the JSON decoder.
"""
from __future__ import annotations

from buffer import envelope, verify
from buffer.store import parse_seg_name
from fuzz.harness import Defect, named
from fuzz.targets._evidence import CHECKS, check_report, make_backdrop, reframe_mutation

_bd = None


def _backdrop():
    global _bd
    if _bd is None:
        _bd = make_backdrop("segment")
    return _bd


def check(data: bytes) -> None:
    bd = _backdrop()
    try:
        envelope.parse(data, envelope.SEGMENT_MAGIC).body()
    except envelope.EnvelopeError as exc:
        named(exc)
    slot = bd.segments[-1]
    verdict = verify.SegmentVerdict(seq=parse_seg_name(slot), file=slot)
    verify.check_segment(data, bd.device, verdict)
    for check_name, message in verdict.failures:
        if check_name not in CHECKS or not message:
            raise Defect(f"check_segment recorded {check_name!r}: {message!r}")
    if verdict.header is None:
        return  # structurally broken: the store walk would only repeat that finding
    for name in (bd.segments[0], slot):  # first (no predecessor) and last (chained)
        (bd.clip / name).write_bytes(data)
    (bd.open_clip / slot).write_bytes(data)
    (bd.ring / slot).write_bytes(data)
    check_report(verify.verify_store(bd.root, bd.device))


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    import atheris
    return reframe_mutation(data, max_size, seed, envelope.SEGMENT_MAGIC, atheris.Mutate)
