"""The frame hash must survive container changes and catch any change to a coded slice."""
from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capture.framehash import (
    frame_hash_annexb,
    frame_hash_avcc,
    frame_hash_nals,
    split_annexb,
    split_avcc,
)
from hw_sim.camera import SimCamera
from hw_sim.clock import SimClock

AUD = bytes([0x09, 0xF0])
SPS = bytes([0x67, 0x42, 0xC0, 0x1E, 0xDA, 0x02, 0x80, 0xBF, 0xE5, 0x84])
PPS = bytes([0x68, 0xCE, 0x3C, 0x80])
SEI = bytes([0x06, 0x05, 0x04, 0xDE, 0xAD, 0xBE, 0xEF, 0x80])


def escape(header: int, rbsp: bytes) -> bytes:
    """Build a valid NAL unit: header byte + emulation-prevented RBSP + stop bit byte."""
    out = bytearray([header])
    zeros = 0
    for b in rbsp + b"\x80":
        if zeros >= 2 and b <= 3:
            out.append(3)
            zeros = 0
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def annexb(nals: list[bytes], long_start: bool = True) -> bytes:
    sc = b"\x00\x00\x00\x01" if long_start else b"\x00\x00\x01"
    return b"".join(sc + n for n in nals)


def avcc(nals: list[bytes], size: int = 4) -> bytes:
    return b"".join(len(n).to_bytes(size, "big") + n for n in nals)


def reference_hash(vcl: list[bytes]) -> str:
    """The FORMAT.md definition, written out independently of the module."""
    return hashlib.sha256(b"".join(len(n).to_bytes(4, "big") + n for n in vcl)).hexdigest()


@pytest.fixture(scope="module")
def real_access_units() -> list[bytes]:
    clock = SimClock()
    cam = SimCamera(clock, width=320, height=240, bitrate=400_000, keyframe_interval=5)
    out = []
    cam.start(lambda p: out.append(p.data))
    for _ in range(7):
        cam.capture_next()
        clock.advance(cam.frame_interval_ns)
    cam.stop()
    return out


def test_real_keyframe_annexb_and_avcc_agree(real_access_units: list[bytes]) -> None:
    for au in real_access_units:
        nals = split_annexb(au)
        # every byte is accounted for: NAL bytes + 3- or 4-byte start codes
        assert sum(len(n) for n in nals) + 3 * len(nals) <= len(au) <= \
            sum(len(n) for n in nals) + 4 * len(nals)
        vcl = [n for n in nals if 1 <= (n[0] & 0x1F) <= 5]
        assert vcl, "x264 access unit without slices"
        assert frame_hash_annexb(au) == reference_hash(vcl)
        assert frame_hash_avcc(avcc(nals)) == frame_hash_annexb(au)
        assert frame_hash_avcc(avcc(nals, 2), length_size=2) == frame_hash_annexb(au)
    # keyframes carry SPS/PPS, which must not be part of the hash
    key = split_annexb(real_access_units[0])
    assert {n[0] & 0x1F for n in key} >= {7, 8, 5}
    slices_only = [n for n in key if n[0] & 0x1F == 5]
    assert frame_hash_avcc(avcc(slices_only)) == frame_hash_annexb(real_access_units[0])


def test_distinct_frames_hash_differently(real_access_units: list[bytes]) -> None:
    hashes = [frame_hash_annexb(au) for au in real_access_units]
    assert len(set(hashes)) == len(hashes)


def test_start_code_forms_and_trailing_zeros() -> None:
    idr = escape(0x65, bytes(range(0, 40)) + b"\x00\x00\x00\x00\x01")
    nals = [AUD, SPS, PPS, idr]
    h = frame_hash_annexb(annexb(nals))
    assert frame_hash_annexb(annexb(nals, long_start=False)) == h
    # trailing_zero_8bits padding and mixed start codes
    mixed = b"\x00\x00\x01" + SPS + b"\x00\x00" + b"\x00\x00\x00\x01" + idr + b"\x00\x00\x00"
    assert split_annexb(mixed) == [SPS, idr]
    assert frame_hash_annexb(mixed) == h == reference_hash([idr])
    # leading zero_byte(s) before the first start code are allowed
    assert frame_hash_annexb(b"\x00\x00" + annexb(nals)) == h


rbsp = st.binary(min_size=1, max_size=200)


@settings(max_examples=60, deadline=None)
@given(slices=st.lists(st.tuples(st.sampled_from([0x01, 0x21, 0x41, 0x65, 0x25]), rbsp),
                       min_size=1, max_size=4),
       extras=st.lists(st.tuples(st.integers(0, 4), st.sampled_from([AUD, SPS, PPS, SEI])),
                       max_size=6),
       long_start=st.booleans())
def test_non_vcl_insertion_does_not_change_hash(slices, extras, long_start) -> None:
    vcl = [escape(h, body) for h, body in slices]
    base = frame_hash_avcc(avcc(vcl))
    assert base == reference_hash(vcl)
    mixed = list(vcl)
    for pos, nal in extras:
        mixed.insert(min(pos, len(mixed)), nal)
    assert frame_hash_annexb(annexb(mixed, long_start)) == base
    assert frame_hash_avcc(avcc(mixed)) == base
    assert frame_hash_avcc(avcc(mixed, 2), length_size=2) == base


@settings(max_examples=80, deadline=None)
@given(body=rbsp, index=st.integers(min_value=0), delta=st.integers(1, 255))
def test_any_vcl_byte_change_changes_hash(body: bytes, index: int, delta: int) -> None:
    nal = escape(0x41, body)
    i = index % len(nal)
    changed = bytearray(nal)
    changed[i] = (changed[i] + delta) % 256
    if i == len(nal) - 1 and changed[i] == 0:
        changed[i] = 1  # a NAL never ends in 0x00; keep the mutation a real byte change
    changed = bytes(changed)
    if not 1 <= (changed[0] & 0x1F) <= 5 or changed[0] & 0x80:
        # the header byte changed into a non-VCL or invalid NAL: the frame loses its slice
        with pytest.raises(ValueError):
            frame_hash_avcc(avcc([SPS, changed]))
        return
    assert frame_hash_avcc(avcc([SPS, changed])) != frame_hash_avcc(avcc([SPS, nal]))


def test_order_and_boundaries_of_slices_matter() -> None:
    a, b = escape(0x41, b"first slice"), escape(0x41, b"second slice")
    assert frame_hash_nals([a, b]) != frame_hash_nals([b, a])
    # the length prefix keeps a re-split of the same bytes from colliding
    assert frame_hash_nals([a + b]) != frame_hash_nals([a, b])
    assert frame_hash_nals([a]) != frame_hash_nals([a, b])


@pytest.mark.parametrize("data, size, message", [
    (b"\x00\x00\x00\x10\x65\x88", 4, "runs past the end"),
    (b"\x00\x00\x00\x02\x65\x88\x00\x00", 4, "truncated AVCC length"),
    (b"\x00\x00\x00\x00", 4, "empty NAL"),
    (b"", 4, "empty AVCC"),
    (b"\x02\x65\x88", 3, "length size"),
    (b"\x00\x00\x00\x02\xe5\x88", 4, "forbidden_zero_bit"),
])
def test_malformed_avcc_raises(data: bytes, size: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_avcc(data, size)
    with pytest.raises(ValueError):
        frame_hash_avcc(data, size)


@pytest.mark.parametrize("data, message", [
    (b"", "start code"),
    (b"\x65\x88\x84\x00", "start code"),
    (avcc([escape(0x65, b"abc")]), "start code"),  # AVCC passed as Annex-B
    (b"\x00\x00\x01\x65\x88\x00\x00\x01", "empty NAL"),
    (annexb([SPS, PPS, SEI]), "no coded slice"),
])
def test_malformed_annexb_raises(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        frame_hash_annexb(data)
