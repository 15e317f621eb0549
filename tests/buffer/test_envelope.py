"""The signed envelope: round trip, and every single-byte change or cut is caught and named.

Property tests flip one byte at a sampled position of a real sealed segment and a real
clip manifest (from the recorded store) and require ``verify_clip`` to fail with the
check that belongs to the damaged region. ``parse`` of arbitrary bytes may only ever
raise ``EnvelopeError``.
"""
from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from buffer import envelope
from buffer.clip import MANIFEST_NAME
from buffer.store import seg_name
from buffer.verify import verify_clip
from drivers.keystore import DeviceRecord

FAST = settings(max_examples=80, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
SEQ = 5  # the damaged segment of clip A

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


@pytest.fixture(scope="module")
def clip(recorded, tmp_path_factory):
    """A scratch copy of clip A with the device record beside it; tests restore what they damage."""
    dirs = sorted((p for p in (recorded.store_dir / "clips").iterdir() if p.is_dir()),
                  key=lambda d: min(d.glob("*.bwvseg")).name)
    dst = tmp_path_factory.mktemp("env") / dirs[0].name
    shutil.copytree(dirs[0], dst)
    device = DeviceRecord.from_json((recorded.store_dir / "device.json").read_text())
    assert verify_clip(dst, device).ok
    return dst, device


def damaged(clip_dir: Path, device: DeviceRecord, name: str, data: bytes):
    path = clip_dir / name
    original = path.read_bytes()
    path.write_bytes(data)
    try:
        return verify_clip(clip_dir, device)
    finally:
        path.write_bytes(original)


def regions(data: bytes, magic: bytes) -> dict[str, tuple[int, int]]:
    env = envelope.parse(data, magic)
    body_end = 12 + len(env.body_bytes)
    return {"prefix": (0, 12), "body": (12, body_end), "signature": (body_end, env.payload_offset),
            "payload": (env.payload_offset, len(data))}


def seg_failures(report, seq=SEQ) -> set[str]:
    return {c for s in report.segments if s.seq == seq for c, _ in s.failures}


def other_failures(report, seq=SEQ) -> list:
    return [f for s in report.segments if s.seq != seq for f in s.failures]


# ----------------------------------------------------------------------- round trip
@FAST
@given(body=st.dictionaries(st.text(max_size=12), json_values, max_size=8),
       magic=st.sampled_from([envelope.SEGMENT_MAGIC, envelope.CLIP_MAGIC]),
       payload=st.binary(max_size=64))
def test_build_parse_round_trip(body, magic, payload):
    key = Ed25519PrivateKey.generate()
    head, h = envelope.build(magic, body, key.sign)
    env = envelope.parse(head + payload, magic)
    assert env.body() == body
    assert env.hash == h and env.payload_offset == len(head)
    assert (head + payload)[env.payload_offset:] == payload
    key.public_key().verify(env.signature, env.signed_bytes)  # raises if not
    assert envelope.build(magic, body, key.sign)[0][:len(env.signed_bytes)] == env.signed_bytes


# ----------------------------------------------------------------- single-byte flips
EXPECTED_SEG = {
    "prefix": {"EnvelopeMalformed"},
    "body": {"SignatureInvalid", "EnvelopeMalformed"},
    "signature": {"SignatureInvalid"},
    "payload": {"PayloadHashMismatch"},
}


@FAST
@given(region=st.sampled_from(list(EXPECTED_SEG)), where=st.floats(0, 1, exclude_max=True),
       xor=st.integers(1, 255))
@example(region="prefix", where=0.0, xor=1).via("magic")
@example(region="prefix", where=0.7, xor=0x80).via("body length high byte")
@example(region="prefix", where=0.95, xor=1).via("body length low byte")
@example(region="payload", where=0.999, xor=1).via("last byte")
def test_any_byte_flip_in_a_segment_is_named(clip, region, where, xor):
    clip_dir, device = clip
    data = (clip_dir / seg_name(SEQ)).read_bytes()
    lo, hi = regions(data, envelope.SEGMENT_MAGIC)[region]
    pos = lo + int(where * (hi - lo))
    bad = bytearray(data)
    bad[pos] ^= xor
    report = damaged(clip_dir, device, seg_name(SEQ), bytes(bad))
    assert not report.ok
    got = seg_failures(report)
    assert got & EXPECTED_SEG[region], (region, pos, got)
    if region == "payload":
        assert got == {"PayloadHashMismatch"}
    assert not other_failures(report), "an untouched segment was blamed"


EXPECTED_MANIFEST = {
    "prefix": {"ManifestInvalid"},
    "body": {"SignatureInvalid", "ManifestInvalid"},
    "signature": {"SignatureInvalid"},
}


@FAST
@given(region=st.sampled_from(list(EXPECTED_MANIFEST)), where=st.floats(0, 1, exclude_max=True),
       xor=st.integers(1, 255))
@example(region="body", where=-1.0, xor=1).via("inside a segment entry's \"hash\" key")
@example(region="body", where=-2.0, xor=1).via("inside a segment entry's \"seq\" key")
def test_any_byte_flip_in_a_manifest_is_named(clip, region, where, xor):
    clip_dir, device = clip
    data = (clip_dir / MANIFEST_NAME).read_bytes()
    if where < 0:  # a renamed key keeps the JSON valid: the verifier must not crash on it
        pos = data.index(b'{"hash"') + 3 if where == -1.0 else data.index(b',"seq":') + 3
    else:
        lo, hi = regions(data, envelope.CLIP_MAGIC)[region]
        pos = lo + int(where * (hi - lo))
    bad = bytearray(data)
    bad[pos] ^= xor
    report = damaged(clip_dir, device, MANIFEST_NAME, bytes(bad))
    assert not report.ok
    got = {c for c, _ in report.failures}
    assert got & EXPECTED_MANIFEST[region], (region, pos, got)


@FAST
@given(cut=st.floats(0, 1, exclude_max=True))
@example(cut=0.0)
def test_any_truncation_of_a_segment_is_named(clip, cut):
    clip_dir, device = clip
    data = (clip_dir / seg_name(SEQ)).read_bytes()
    n = int(cut * len(data))
    off = envelope.parse(data, envelope.SEGMENT_MAGIC).payload_offset
    for keep in {n, off, off - 1, len(data) - 1}:  # plus the boundaries every time
        report = damaged(clip_dir, device, seg_name(SEQ), data[:keep])
        want = "PayloadTruncated" if keep >= off else "EnvelopeMalformed"
        assert want in seg_failures(report), (keep, seg_failures(report))
        assert not other_failures(report)


@FAST
@given(cut=st.floats(0, 1, exclude_max=True))
def test_any_truncation_of_a_manifest_is_named(clip, cut):
    clip_dir, device = clip
    data = (clip_dir / MANIFEST_NAME).read_bytes()
    report = damaged(clip_dir, device, MANIFEST_NAME, data[:int(cut * len(data))])
    assert ("ManifestInvalid" in {c for c, _ in report.failures}), report.failures


# --------------------------------------------------------------------- random input
def _parse_and_read(data: bytes, magic: bytes) -> None:
    try:
        envelope.parse(data, magic).body()
    except envelope.EnvelopeError:
        pass  # the only exception allowed


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=512),
       magic=st.sampled_from([envelope.SEGMENT_MAGIC, envelope.CLIP_MAGIC]))
def test_parse_of_random_bytes_raises_envelope_error_only(data, magic):
    _parse_and_read(data, magic)
    _parse_and_read(magic + data, magic)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=256), sig=st.binary(min_size=64, max_size=80),
       extra=st.integers(-3, 3))
@example(body=b"[" * 100_000, sig=b"\0" * 64, extra=0)  # nesting bomb: RecursionError
@example(body=b"1" * 5000, sig=b"\0" * 64, extra=0)  # int too long to convert
@example(body=b'"\xff"', sig=b"\0" * 64, extra=0)  # not UTF-8
def test_parse_of_well_framed_random_bodies_raises_envelope_error_only(body, sig, extra):
    length = max(0, len(body) + extra)
    _parse_and_read(envelope.SEGMENT_MAGIC + struct.pack(">I", length) + body + sig,
                    envelope.SEGMENT_MAGIC)
