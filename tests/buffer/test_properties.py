"""Properties of the evidence formats (issue #7): round trips, and every single-bit flip
or truncation is rejected and named.

tests/buffer/test_envelope.py already samples byte flips and cuts of a segment and a
manifest through ``verify_clip``; this file adds what it does not cover: the sealed
segment *header* round trip through the verifier, manifests built from arbitrary
segment lists, the audit log (round trip, flips, cuts), and exhaustive sweeps — every
bit of a real segment's envelope and of a real manifest, every truncation length —
at the check-function level, where each costs microseconds.
"""
from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import shutil
import tempfile
from pathlib import Path

import pyrage
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buffer import envelope, seal, verify
from buffer.audit import GENESIS, AuditLog, read_events, verify_audit
from buffer.clip import ClipSegmentRef, build_manifest, manifest_body
from drivers.clock import ClockState
from drivers.keystore import DeviceRecord
from hw_sim.clock import SimClock

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
KEY = Ed25519PrivateKey.generate()
DEVICE = DeviceRecord("BWV-PROP-0001", KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
RECIPIENT = str(pyrage.x25519.Identity.generate().to_public())
CHECKS = {c.__name__ for c in verify.VerifyFailure.__subclasses__()}

hexes = st.text("0123456789abcdef", min_size=64, max_size=64)
idents = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-",
                 min_size=1, max_size=24)
json_scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**63)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=16))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def failures_of(data: bytes) -> set[str]:
    v = verify.SegmentVerdict(seq=None, file="x")
    verify.check_segment(data, DEVICE, v)
    assert all(c in CHECKS and m for c, m in v.failures), v.failures
    return {c for c, _ in v.failures}


# ------------------------------------------------------------------ sealed segments
@pytest.fixture(scope="module")
def sealed(raw_segments) -> bytes:
    """A real segment (320x240, 15 frames), sealed by ``seal.seal`` with this file's key."""
    ctx = seal.SealContext("BWV-PROP-0001", "f" * 32, "PC 1", RECIPIENT, KEY.sign)
    return seal.seal(raw_segments[0], ctx=ctx, seq=7, prev_hash="a" * 64,
                     clock=ClockState(True, "ntp", 12)).data


@FAST
@given(seq=st.integers(0, 10**12 - 1), prev=hexes, stream=st.text("0123456789abcdef", min_size=32, max_size=32),
       officer=idents, clock=st.builds(ClockState, st.booleans(), st.sampled_from(["ntp", "rtc", "gps", "none"]),
                                       st.none() | st.integers(-10**15, 10**15)),
       gps=st.none() | st.fixed_dictionaries({"lat": st.floats(-90, 90), "lon": st.floats(-180, 180),
                                              "alt_m": st.none() | st.floats(-500, 9000),
                                              "sources": st.lists(st.sampled_from(["GPRMC", "GNGGA"]))}),
       which=st.integers(0, 15))
def test_segment_header_round_trips_through_the_verifier(raw_segments, seq, prev, stream, officer,
                                                         clock, gps, which):
    ctx = seal.SealContext("BWV-PROP-0001", stream, officer, RECIPIENT, KEY.sign)
    s = seal.seal(raw_segments[which], ctx=ctx, seq=seq, prev_hash=prev, clock=clock, gps=gps)
    env = envelope.parse(s.data, envelope.SEGMENT_MAGIC)
    assert env.body() == json.loads(envelope.canonical_json(s.header))
    assert env.hash == s.hash and s.data[env.payload_offset:] != b""
    assert failures_of(s.data) == set()  # signature, device, format, payload size and hash
    h = env.body()
    assert (h["seq"], h["prev_hash"], h["stream_id"], h["clock"]) == (seq, prev, stream, clock.as_dict())
    assert h["frame_hashes"] == list(raw_segments[which].frame_hashes)


def test_every_bit_flip_of_a_segment_envelope_is_named(sealed):
    """Exhaustive over prefix, header and signature (~13k flips); payload bits are
    sampled in test_envelope.py and below."""
    end = envelope.parse(sealed, envelope.SEGMENT_MAGIC).payload_offset
    buf = bytearray(sealed)
    for pos in range(end):
        for bit in range(8):
            buf[pos] ^= 1 << bit
            got = failures_of(bytes(buf))
            buf[pos] ^= 1 << bit
            assert got & {"EnvelopeMalformed", "SignatureInvalid", "PayloadTruncated"}, (pos, bit, got)


@settings(max_examples=300, deadline=None)
@given(where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_any_bit_flip_of_a_segment_payload_is_named(sealed, where, bit):
    start = envelope.parse(sealed, envelope.SEGMENT_MAGIC).payload_offset
    buf = bytearray(sealed)
    buf[start + int(where * (len(sealed) - start))] ^= 1 << bit
    assert failures_of(bytes(buf)) == {"PayloadHashMismatch"}


def test_every_truncation_of_a_segment_is_named(sealed):
    """Every cut inside the envelope; in the payload (one code path: the size) every
    64th length plus the last 64."""
    end = envelope.parse(sealed, envelope.SEGMENT_MAGIC).payload_offset
    cuts = set(range(end + 1)) | set(range(end, len(sealed), 64)) | set(range(len(sealed) - 64, len(sealed)))
    for keep in sorted(cuts):
        want = "PayloadTruncated" if keep >= end else "EnvelopeMalformed"
        assert want in failures_of(sealed[:keep]), keep


# ----------------------------------------------------------------------- manifests
@st.composite
def clip_segments(draw) -> list[ClipSegmentRef]:
    n = draw(st.integers(0, 12))
    seq, t, out = draw(st.integers(0, 10**9)), draw(st.integers(0, 10**15)), []
    stream = "a" * 32
    for _ in range(n):
        if draw(st.integers(0, 9)) == 0:
            stream = draw(st.sampled_from(["b" * 32, "c" * 32]))
        t += draw(st.sampled_from([0, 0, 0, 33_333_333, 10**9]))  # contiguous, or a gap
        dur = draw(st.integers(1, 4 * 10**9))
        out.append(ClipSegmentRef(seq, draw(hexes), stream, t, t + dur))
        seq, t = seq + 1, t + dur
    return out


@FAST
@given(segs=clip_segments(), clip_id=idents, notes=st.lists(st.text(max_size=30), max_size=3),
       reasons=st.tuples(st.sampled_from(["record_button", "trigger", "split", "resumed"]),
                         st.sampled_from(["record_button_hold", "docked", "power_loss_recovery"])),
       markers=st.lists(st.fixed_dictionaries({"utc": st.text(max_size=27), "mono_ns": st.integers(0, 2**62),
                                               "gps": st.none(), "source": st.just("function_button")}),
                        max_size=3),
       fps=st.sampled_from([5, 25, 30, 60]), times=st.tuples(*[st.integers(0, 2**62)] * 3))
def test_manifest_round_trips_and_lists_what_it_was_given(segs, clip_id, notes, reasons, markers, fps, times):
    body = manifest_body(clip_id=clip_id, device_id=DEVICE.device_id, officer_id="PC 1", segments=segs,
                         started_utc_ns=times[0], stopped_utc_ns=times[1], start_reason=reasons[0],
                         stop_reason=reasons[1], pre_record_ns=30 * 10**9, frame_interval_ns=10**9 // fps,
                         closed_utc_ns=times[2], notes=notes, markers=markers)
    data, h = build_manifest(body, KEY.sign)
    env = verify.check_envelope(data, envelope.CLIP_MAGIC)
    verify.check_signature(env, DEVICE)
    got = env.body()
    assert got == json.loads(envelope.canonical_json(body)) and env.hash == h
    assert verify._listed_segments(got["segments"]) == [(s.seq, s.hash) for s in segs]
    assert got["segment_count"] == len(segs) and set(got["streams"]) == {s.stream_id for s in segs}
    stated = {(g["after_seq"], g["before_seq"]) for g in got["gaps"]}
    for a, b in itertools.pairwise(segs):  # every discontinuity is stated, nothing else is
        broken = a.stream_id != b.stream_id or b.start_mono_ns - a.end_mono_ns > (10**9 // fps) // 2
        assert ((a.seq, b.seq) in stated) == broken


@pytest.fixture(scope="module")
def manifest_bytes() -> bytes:
    segs = [ClipSegmentRef(i, hashlib.sha256(bytes([i])).hexdigest(), "a" * 32, i * 10**9, (i + 1) * 10**9)
            for i in range(6)]
    body = manifest_body(clip_id="BWV-PROP-0001-0001", device_id=DEVICE.device_id, officer_id="PC 1",
                         segments=segs, started_utc_ns=1, stopped_utc_ns=2, start_reason="record_button",
                         stop_reason="record_button_hold", pre_record_ns=0, frame_interval_ns=33_333_333,
                         closed_utc_ns=3, notes=[])
    return build_manifest(body, KEY.sign)[0]


def _manifest_verdict(data: bytes) -> str | None:
    """The first check a verifier fails on this manifest (None: it passes)."""
    try:
        env = verify.check_envelope(data, envelope.CLIP_MAGIC)
        body = env.body()
        if body.get("format") != "bwv-clip/1" or not isinstance(body.get("segments"), list):
            return "ManifestInvalid"
        verify.check_signature(env, DEVICE)
    except verify.VerifyFailure as exc:
        assert str(exc)
        return exc.check
    return None


def test_every_bit_flip_and_truncation_of_a_manifest_is_named(manifest_bytes):
    buf = bytearray(manifest_bytes)
    for pos in range(len(buf)):
        for bit in range(8):
            buf[pos] ^= 1 << bit
            got = _manifest_verdict(bytes(buf))
            buf[pos] ^= 1 << bit
            assert got in ("EnvelopeMalformed", "ManifestInvalid", "SignatureInvalid"), (pos, bit, got)
    for keep in range(len(manifest_bytes)):
        assert _manifest_verdict(manifest_bytes[:keep]) == "EnvelopeMalformed", keep


# ------------------------------------------------------------------------ audit log
events = st.lists(st.tuples(st.sampled_from(["power_on", "record_start", "marker", "fault", "dock"]),
                            st.dictionaries(st.text("abcdefghij_", min_size=1, max_size=8), json_values,
                                            max_size=4)),
                  min_size=1, max_size=5)


def write_log(path: Path, evs) -> bytes:
    log = AuditLog(path, device_id=DEVICE.device_id, sign=KEY.sign, clock=SimClock())
    for name, data in evs:
        log.append(name, **data)
    return path.read_bytes()


def problems_of(path: Path, data: bytes) -> list[str]:
    path.write_bytes(data)
    return verify_audit(path, DEVICE.verifies, DEVICE.device_id)[1]


@FAST
@given(evs=events)
def test_audit_records_round_trip(tmp_path_factory, evs):
    path = tmp_path_factory.mktemp("audit") / "audit.log"
    data = write_log(path, evs)
    assert verify_audit(path, DEVICE.verifies, DEVICE.device_id) == (len(evs), [])
    bodies = read_events(path)
    prev = GENESIS
    for i, (body, line, (name, fields)) in enumerate(zip(bodies, data.split(b"\n"), evs)):
        assert (body["seq"], body["event"], body["prev"]) == (i, name, prev)
        assert body["data"] == json.loads(envelope.canonical_json(fields))
        prev = hashlib.sha256(line).hexdigest()
    reopened = AuditLog(path, device_id=DEVICE.device_id, sign=KEY.sign, clock=SimClock())
    assert reopened.head == (len(evs) - 1, prev) and not reopened.damaged_tail


@FAST
@given(evs=events, where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_any_bit_flip_in_an_audit_log_is_named(tmp_path_factory, evs, where, bit):
    path = tmp_path_factory.mktemp("audit") / "audit.log"
    data = bytearray(write_log(path, evs))
    pos = int(where * len(data))
    data[pos] ^= 1 << bit
    lineno = data[:pos].count(b"\n") + 1
    problems = problems_of(path, bytes(data))
    assert problems, (pos, bit)
    assert any(f"audit line {lineno}:" in p or "last line is incomplete" in p for p in problems), problems


def test_every_bit_flip_of_a_real_audit_log_is_named(tmp_path):
    """Exhaustive over a two-record log. Before issue #7 a flip in the last base64
    character of the last record (…Cg== → …Co==, same decoded signature) went unseen."""
    shm = Path("/dev/shm")
    work = Path(tempfile.mkdtemp(dir=shm)) if os.access(shm, os.W_OK) else tmp_path
    try:
        path = work / "audit.log"
        data = write_log(path, [("power_on", {"firmware_version": "0.1.0"}),
                                ("record_start", {"clip_id": "c1"})])
        buf = bytearray(data)
        for pos in range(len(buf)):
            for bit in range(8):
                buf[pos] ^= 1 << bit
                assert problems_of(path, bytes(buf)), (pos, bit)
                buf[pos] ^= 1 << bit
    finally:
        if work != tmp_path:
            shutil.rmtree(work)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=100))
def test_a_non_canonical_signature_spelling_is_rejected(tmp_path_factory, junk):
    path = tmp_path_factory.mktemp("audit") / "audit.log"
    line, _ = write_log(path, [("power_on", {})]).split(b"\n")
    body, sig = line.rsplit(b"\t", 1)
    raw = base64.b64decode(sig)
    for spelling in {sig[:-3] + bytes([c]) + b"==" for c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"}:
        if spelling != sig and base64.b64decode(spelling) == raw:  # decodes to the same 64 bytes
            assert problems_of(path, body + b"\t" + spelling + b"\n")
    assert problems_of(path, body + b"\t" + base64.b64encode(junk) + b"\n")


@FAST
@given(evs=events, cut=st.floats(0, 1, exclude_max=True))
def test_any_cut_inside_an_audit_line_is_named(tmp_path_factory, evs, cut):
    """A file cut mid-line is named (torn tail); a line cut short with its newline kept
    is named on that line. (A cut exactly at a line end removes whole records from the
    end; a hash chain alone cannot see that — the store's own records must.)"""
    path = tmp_path_factory.mktemp("audit") / "audit.log"
    data = write_log(path, evs)
    n = int(cut * len(data))
    if data[n - 1:n] != b"\n" and n:
        assert any("last line is incomplete" in p for p in problems_of(path, data[:n]))
        end = data.index(b"\n", n)
        lineno = data[:n].count(b"\n") + 1
        short = data[:n] + data[end:]
        assert end == n or any(f"audit line {lineno}:" in p for p in problems_of(path, short)), (n, end)
