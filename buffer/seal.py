"""Sealing: turn a captured segment into an encrypted, signed, chained evidence file.

The MPEG-TS bytes are encrypted in the age format (age-encryption.org/v1) to the
agency's X25519 recipient; the device keeps no identity, so it cannot read its own
footage (DESIGN invariants 1–2). The signed header carries everything a court needs
to place the segment (invariant 3); see docs/FORMAT.md for every field.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import pyrage

from buffer import envelope
from capture.segmenter import RawSegment
from drivers.clock import ClockState, iso_utc

SEGMENT_FORMAT = "bwv-segment/1"
GENESIS_HASH = "0" * 64  # prev_hash of a device's first segment ever


@dataclass(frozen=True)
class SealContext:
    """Who and where: the facts a segment is stamped with besides its own capture data."""

    device_id: str
    stream_id: str
    officer_id: str
    recipient: str  # age1… (agency)
    sign: Callable[[bytes], bytes]


@dataclass(frozen=True)
class SealedSegment:
    seq: int
    hash: str
    data: bytes  # the whole file: envelope + age payload
    header: dict


def audio_header(raw: RawSegment) -> dict | None:
    """The header's ``audio`` object (docs/FORMAT.md §3.1); None when the segment's TS
    has no audio stream."""
    a = raw.audio
    if a is None:
        return None
    return {
        "codec": a.codec, "container": "mpegts-adts", "sample_rate": a.sample_rate,
        "channels": a.channels, "samples_per_packet": a.samples_per_packet,
        "packet_count": a.packet_count,
        "start_utc": iso_utc(a.start_utc_ns), "end_utc": iso_utc(a.end_utc_ns),
        "start_mono_ns": a.start_mono_ns, "end_mono_ns": a.end_mono_ns,
        "gaps": [{"at_mono_ns": at, "duration_ns": d} for at, d in a.gaps],
        "packet_hash_alg": a.hash_alg,
        "packet_hashes": list(a.packet_hashes),
    }


def segment_header(raw: RawSegment, *, ctx: SealContext, seq: int, prev_hash: str,
                   clock: ClockState, payload: bytes, gps: dict | None = None) -> dict:
    info = raw.info
    return {
        "format": SEGMENT_FORMAT,
        "device_id": ctx.device_id,
        "stream_id": ctx.stream_id,
        "seq": seq,
        "prev_hash": prev_hash,
        "officer_id": ctx.officer_id,
        "capture": {
            "start_utc": iso_utc(raw.start_utc_ns),
            "end_utc": iso_utc(raw.end_utc_ns),
            "start_mono_ns": raw.start_mono_ns,
            "end_mono_ns": raw.end_mono_ns,
            "first_timestamp_us": raw.first_timestamp_us,
        },
        "clock": clock.as_dict(),
        "gps": gps,
        "video": {
            "codec": info.codec, "container": "mpegts", "width": info.width,
            "height": info.height, "fps": info.fps, "sensor": info.sensor,
            "encoder": info.encoder, "frame_count": raw.frame_count,
            "keyframes": raw.keyframe_count,
        },
        "frame_hash_alg": "sha256-vcl-len4",
        "frame_hashes": list(raw.frame_hashes),
        "audio": audio_header(raw),
        "payload": {
            "encryption": "age-v1-x25519",
            "recipient": ctx.recipient,
            "size": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
        },
    }


def encrypt(plaintext: bytes, recipient: str) -> bytes:
    return pyrage.encrypt(plaintext, [pyrage.x25519.Recipient.from_str(recipient)])


def seal(raw: RawSegment, *, ctx: SealContext, seq: int, prev_hash: str,
         clock: ClockState, gps: dict | None = None) -> SealedSegment:
    payload = encrypt(raw.ts, ctx.recipient)
    header = segment_header(raw, ctx=ctx, seq=seq, prev_hash=prev_hash, clock=clock,
                            payload=payload, gps=gps)
    head, h = envelope.build(envelope.SEGMENT_MAGIC, header, ctx.sign)
    return SealedSegment(seq=seq, hash=h, data=head + payload, header=header)
