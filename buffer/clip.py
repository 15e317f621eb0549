"""Clip manifests: the signed record that closes a clip (a contiguous range of a stream).

The manifest lists each segment by sequence number and envelope hash, so a segment
deleted, inserted, reordered or replayed from elsewhere cannot pass as part of the clip,
and it states every gap the device knows of, so no gap is ever silently closed up.
"""
from __future__ import annotations

from dataclasses import dataclass

from buffer import envelope
from drivers.clock import iso_utc

CLIP_FORMAT = "bwv-clip/1"
MANIFEST_NAME = "manifest.bwvclip"


@dataclass(frozen=True)
class ClipSegmentRef:
    seq: int
    hash: str
    stream_id: str
    start_mono_ns: int
    end_mono_ns: int


def find_gaps(segments: list[ClipSegmentRef], frame_interval_ns: int) -> list[dict]:
    """Time gaps between consecutive segments longer than 1.5 frame intervals."""
    gaps = []
    for a, b in zip(segments, segments[1:]):
        if a.stream_id != b.stream_id:
            gaps.append({"after_seq": a.seq, "before_seq": b.seq, "reason": "stream_changed",
                         "duration_ns": None})
        elif b.start_mono_ns - a.end_mono_ns > frame_interval_ns // 2:
            gaps.append({"after_seq": a.seq, "before_seq": b.seq, "reason": "frames_missing",
                         "duration_ns": b.start_mono_ns - a.end_mono_ns})
    return gaps


def manifest_body(*, clip_id: str, device_id: str, officer_id: str,
                  segments: list[ClipSegmentRef], started_utc_ns: int, stopped_utc_ns: int,
                  start_reason: str, stop_reason: str, pre_record_ns: int,
                  frame_interval_ns: int, closed_utc_ns: int, notes: list[str],
                  incident_id: str | None = None, part: int = 1,
                  previous_clip: str | None = None, markers: list[dict] | None = None,
                  platform: dict | None = None, resumed_from: str | None = None,
                  resume_gap: dict | None = None) -> dict:
    return {
        "format": CLIP_FORMAT,
        "clip_id": clip_id,
        "device_id": device_id,
        "officer_id": officer_id,
        "streams": sorted({s.stream_id for s in segments}),
        "segments": [{"seq": s.seq, "hash": s.hash} for s in segments],
        "segment_count": len(segments),
        "first_seq": segments[0].seq if segments else None,
        "last_seq": segments[-1].seq if segments else None,
        "started_utc": iso_utc(started_utc_ns),
        "stopped_utc": iso_utc(stopped_utc_ns),
        "closed_utc": iso_utc(closed_utc_ns),
        "start_reason": start_reason,
        "stop_reason": stop_reason,
        "pre_record_s": pre_record_ns / 1e9,
        "gaps": find_gaps(segments, frame_interval_ns),
        "notes": notes,
        "incident_id": incident_id or clip_id,
        "part": part,
        "previous_clip": previous_clip,
        "markers": markers or [],
        "platform": platform,
        "resumed_from": resumed_from,
        "resume_gap": resume_gap,
    }


def build_manifest(body: dict, sign) -> tuple[bytes, str]:
    return envelope.build(envelope.CLIP_MAGIC, body, sign)
