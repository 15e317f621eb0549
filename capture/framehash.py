"""Container-independent per-frame hash of H.264 access units.

Why this exists: every sealed segment signs the SHA-256 of each encoded frame it holds
(DESIGN invariant 3). The back office exports MP4; a remux changes the container and may
add, drop or move parameter sets and delimiters, but it never changes a coded slice.
Hashing only the slices therefore lets anyone check an exported MP4 (or the original
MPEG-TS) frame by frame against the hashes signed on the device.

Definition (normative; copied into docs/FORMAT.md)
--------------------------------------------------
frame hash = SHA-256 over the access unit's VCL NAL units only (nal_unit_type 1..5, in
bitstream order), each written as a 4-byte big-endian length followed by the NAL unit
bytes exactly as in the bitstream (NAL header included, emulation-prevention bytes
kept, trailing zero bytes after the NAL stripped). The digest is written as 64 lowercase
hex digits.

Non-VCL NAL units (access unit delimiter, SPS, PPS, SEI, filler, ...) are excluded
because muxers insert or move them: ffmpeg's mpegts muxer inserts AUDs, and the mp4
muxer may move SPS/PPS out of the samples into the ``avcC`` box.

The length prefix makes the hashed byte string unambiguous (two slices cannot be
re-split into different slices with the same digest). A valid NAL unit never ends in a
zero byte (the encoder appends 0x03 after trailing cabac_zero_words), so stripping
trailing zeros only removes Annex-B padding (``trailing_zero_8bits`` and the first byte
of a following 4-byte start code); it is applied to both forms so they agree.
"""
from __future__ import annotations

import hashlib

#: nal_unit_type values of coded slices (ITU-T H.264 Table 7-1): 1 non-IDR slice,
#: 2..4 data partitions A..C, 5 IDR slice.
VCL_NAL_TYPES = frozenset(range(1, 6))
NAL_SPS = 7
NAL_PPS = 8


def _check_nal(nal: bytes, where: str) -> bytes:
    """Strip trailing zeros and refuse what cannot be a NAL unit."""
    nal = nal.rstrip(b"\x00")
    if not nal:
        raise ValueError(f"empty NAL unit {where}")
    if nal[0] & 0x80:
        raise ValueError(f"NAL unit {where} has forbidden_zero_bit set (header 0x{nal[0]:02x})")
    return nal


def split_annexb(data: bytes) -> list[bytes]:
    """Split an Annex-B byte stream into NAL units (start codes removed).

    Accepts 3-byte (``00 00 01``) and 4-byte (``00 00 00 01``) start codes and leading
    zero bytes. Raises ValueError when the data does not begin with a start code (so a
    length-prefixed buffer passed here by mistake fails loudly instead of hashing to
    garbage), or when a NAL unit is empty or has its forbidden bit set.
    """
    data = bytes(data)
    first = data.find(b"\x00\x00\x01")
    if first < 0 or data[:first].strip(b"\x00"):
        raise ValueError("not an Annex-B stream: data does not begin with a start code")
    nals: list[bytes] = []
    pos = first + 3
    while True:
        nxt = data.find(b"\x00\x00\x01", pos)
        end = len(data) if nxt < 0 else nxt
        nals.append(_check_nal(data[pos:end], f"#{len(nals)} at byte {pos}"))
        if nxt < 0:
            return nals
        pos = nxt + 3


def split_avcc(data: bytes, length_size: int = 4) -> list[bytes]:
    """Split a length-prefixed (MP4 ``avcC`` sample) buffer into NAL units.

    ``length_size`` is ``lengthSizeMinusOne + 1`` from the avcC box (1, 2 or 4).
    Raises ValueError when a length runs past the end of the buffer or a NAL is empty.
    """
    if length_size not in (1, 2, 4):
        raise ValueError(f"AVCC length size must be 1, 2 or 4, not {length_size}")
    data = bytes(data)
    nals: list[bytes] = []
    pos = 0
    while pos < len(data):
        if pos + length_size > len(data):
            raise ValueError(f"truncated AVCC length field at byte {pos} "
                             f"({len(data) - pos} of {length_size} bytes present)")
        size = int.from_bytes(data[pos:pos + length_size], "big")
        pos += length_size
        if pos + size > len(data):
            raise ValueError(f"AVCC NAL #{len(nals)} length {size} at byte {pos - length_size} "
                             f"runs past the end of the buffer ({len(data)} bytes)")
        nals.append(_check_nal(data[pos:pos + size], f"#{len(nals)} at byte {pos}"))
        pos += size
    if not nals:
        raise ValueError("empty AVCC buffer")
    return nals


def nal_type(nal: bytes) -> int:
    """nal_unit_type of one NAL unit (low 5 bits of its header byte)."""
    return nal[0] & 0x1F


def frame_hash_nals(nals: list[bytes]) -> str:
    """Hash an access unit given as NAL units; see the module docstring for the rule."""
    h = hashlib.sha256()
    vcl = 0
    for nal in nals:
        if nal_type(nal) in VCL_NAL_TYPES:
            h.update(len(nal).to_bytes(4, "big"))
            h.update(nal)
            vcl += 1
    if vcl == 0:
        raise ValueError("access unit holds no coded slice (VCL NAL type 1..5)")
    return h.hexdigest()


def frame_hash_annexb(data: bytes) -> str:
    """Frame hash (hex) of an Annex-B access unit, as the encoder and MPEG-TS carry it."""
    return frame_hash_nals(split_annexb(data))


def frame_hash_avcc(data: bytes, length_size: int = 4) -> str:
    """Frame hash (hex) of a length-prefixed access unit, as an MP4 sample carries it."""
    return frame_hash_nals(split_avcc(data, length_size))
