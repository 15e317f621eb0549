"""Back-office export: verify a clip, decrypt it with the agency identity, remux to MP4.

The H.264 frames and the AAC packets are copied, never re-encoded, so every frame and
every audio packet in the MP4 can be checked against the SHA-256 the device signed for
it; export does that check on its own output before it reports success. Timestamps
keep the device's capture timeline, so a gap in the clip (or a hole in its audio: mute,
a microphone dropout, pre-record without audio) stays a gap in the MP4 and is listed in
the report (never closed up). Segments without audio simply have no audio in the MP4
for their time span.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import av
import pyrage

from buffer import envelope
from buffer.agency import load_identity
from buffer.verify import ClipReport, verify_clip
from capture.framehash import frame_hash_annexb, frame_hash_avcc
from capture.segmenter import AUDIO_HASH_ALG, audio_packet_hash
from drivers.keystore import DeviceRecord

EXPORT_FORMAT = "bwv-export-report/1"


class ExportError(Exception):
    """Export refused or failed; the message says why (verification, key, media)."""


def frame_hash_sample(data: bytes) -> str:
    """MP4 samples are normally length-prefixed; accept Annex-B too (muxer's choice)."""
    if data.startswith(b"\x00\x00\x01") or data.startswith(b"\x00\x00\x00\x01"):
        return frame_hash_annexb(data)
    return frame_hash_avcc(data)


@dataclass
class ExportResult:
    mp4: Path
    report_path: Path
    report: dict


def _decrypt(payload: bytes, identity, seq: int, identity_path: Path | str = "this identity") -> bytes:
    try:
        return pyrage.decrypt(payload, [identity])
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"segment {seq}: cannot decrypt with identity {identity_path} ({exc}); "
                          "is it the agency key this camera encrypts to?") from None


def _remux(ts_parts: list[bytes], out_path: Path) -> tuple[int, int]:
    """Copy every video and audio packet of the TS segments into one MP4 (the mp4
    muxer's automatic ``aac_adtstoasc`` filter turns ADTS into raw samples + esds).
    Returns (video packets, audio packets) written."""
    video = audio = 0
    base = None
    audio_template = None  # the first segment that has audio gives the track's layout
    for ts in ts_parts:
        with av.open(io.BytesIO(ts), "r", format="mpegts") as inp:
            if base is None:
                base = next(p.dts for p in inp.demux(inp.streams.video[0]) if p.dts is not None)
            if inp.streams.audio:
                audio_template = ts
                break
    with av.open(str(out_path), "w", format="mp4") as out:
        vout = aout = None
        if audio_template is not None:
            # Both tracks must exist before the first packet is written.
            with av.open(io.BytesIO(audio_template), "r", format="mpegts") as inp:
                vout = out.add_stream_from_template(inp.streams.video[0])
                aout = out.add_stream_from_template(inp.streams.audio[0])
        for ts in ts_parts:
            with av.open(io.BytesIO(ts), "r", format="mpegts") as inp:
                vin = inp.streams.video[0]
                ain = inp.streams.audio[0] if inp.streams.audio else None
                if vout is None:
                    vout = out.add_stream_from_template(vin)
                streams = [vin] + ([ain] if ain is not None else [])
                for pkt in inp.demux(streams):
                    if pkt.dts is None or pkt.size == 0:
                        continue  # demuxer flush packet
                    if base is None:
                        base = pkt.dts
                    pkt.pts -= base
                    pkt.dts -= base
                    if pkt.stream is vin:
                        pkt.stream = vout
                        video += 1
                    else:
                        pkt.stream = aout
                        audio += 1
                    out.mux(pkt)
    return video, audio


def _check_mp4_frames(mp4: Path, expected: list[str]) -> tuple[int, list[int]]:
    """Hash each MP4 sample and compare with the device-signed frame hashes in order."""
    got: list[str] = []
    with av.open(str(mp4)) as c:
        for pkt in c.demux(c.streams.video[0]):
            if pkt.size:
                got.append(frame_hash_sample(bytes(pkt)))
    mismatched = [i for i, (a, b) in enumerate(zip(got, expected)) if a != b]
    if len(got) != len(expected):
        mismatched.append(min(len(got), len(expected)))
    return len(got), mismatched


def _check_mp4_audio(mp4: Path, expected: list[str]) -> tuple[int, list[int]]:
    """Hash each MP4 audio sample (``sha256-aac-raw``) against the signed packet hashes."""
    got: list[str] = []
    with av.open(str(mp4)) as c:
        if c.streams.audio:
            for pkt in c.demux(c.streams.audio[0]):
                if pkt.size:
                    got.append(audio_packet_hash(bytes(pkt)))
    mismatched = [i for i, (a, b) in enumerate(zip(got, expected)) if a != b]
    if len(got) != len(expected):
        mismatched.append(min(len(got), len(expected)))
    return len(got), mismatched


def _audio_report(headers: list[dict], checked: int) -> dict | None:
    """What the report says about audio: format, counts, and every hole in the audio
    timeline between the clip's first and last audio packet (inside a segment, or
    between segments: mute, dropout, a segment without audio)."""
    with_audio = [h for h in headers if h.get("audio")]
    if not with_audio:
        return None
    first = with_audio[0]["audio"]
    holes: list[dict] = []
    prev_end = None
    for h in with_audio:
        a = h["audio"]
        step = round(a["samples_per_packet"] * 10**9 / a["sample_rate"])
        if prev_end is not None and a["start_mono_ns"] - prev_end > step // 2:
            holes.append({"start_mono_ns": prev_end, "duration_ns": a["start_mono_ns"] - prev_end})
        holes += [{"start_mono_ns": g["at_mono_ns"], "duration_ns": g["duration_ns"]}
                  for g in a.get("gaps", [])]
        prev_end = a["end_mono_ns"]
    return {
        "codec": first["codec"], "sample_rate": first["sample_rate"],
        "channels": first["channels"],
        "packet_count": sum(h["audio"]["packet_count"] for h in with_audio),
        "packets_checked_against_signatures": checked,
        "packet_hash_alg": AUDIO_HASH_ALG,
        "segments_with_audio": len(with_audio),
        "first_packet_utc": first["start_utc"],
        "holes": holes,
    }


def export_clip(clip_dir: Path, identity_path: Path, out_mp4: Path, *,
                device: DeviceRecord | None = None, key_source: str = "given",
                progress: Callable[[int, int], None] | None = None) -> ExportResult:
    report: ClipReport = verify_clip(clip_dir, device, key_source)
    if not report.ok:
        raise ExportError("clip failed verification; refusing to export:\n  "
                          + "\n  ".join(report.all_failures()))
    identity = load_identity(identity_path)
    mine = str(identity.to_public())
    for seg in report.segments:  # the signed header names the recipient: fail early and clearly
        theirs = (seg.header or {}).get("payload", {}).get("recipient")
        if theirs != mine:
            raise ExportError(f"identity {identity_path} is for recipient {mine}, but segment "
                              f"{seg.seq} is encrypted to {theirs}: wrong agency identity")
    out_mp4 = Path(out_mp4)
    out_mp4.parent.mkdir(parents=True, exist_ok=True)
    ts_parts, expected, expected_audio = [], [], []
    total = len(report.segments)
    for i, seg in enumerate(report.segments):
        data = (Path(clip_dir) / seg.file).read_bytes()
        env = envelope.parse(data, envelope.SEGMENT_MAGIC)
        ts_parts.append(_decrypt(data[env.payload_offset:], identity, seg.seq or -1, identity_path))
        expected += list(seg.header["frame_hashes"])  # type: ignore[index]
        audio = seg.header.get("audio")  # type: ignore[union-attr]
        if audio:
            expected_audio += list(audio["packet_hashes"])
        if progress:
            progress(i + 1, total)
    tmp = out_mp4.with_name(f".{out_mp4.name}.tmp")
    try:
        written, written_audio = _remux(ts_parts, tmp)
        checked, mismatched = _check_mp4_frames(tmp, expected)
        checked_audio, mismatched_audio = _check_mp4_audio(tmp, expected_audio)
    except av.error.FFmpegError as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"remux failed: {exc}") from None
    if mismatched or written != len(expected):
        tmp.unlink(missing_ok=True)
        raise ExportError(f"exported frames do not match the signed frame hashes "
                          f"(first mismatch at frame {mismatched[0] if mismatched else written})")
    if mismatched_audio or written_audio != len(expected_audio):
        tmp.unlink(missing_ok=True)
        first_bad = mismatched_audio[0] if mismatched_audio else written_audio
        raise ExportError(f"exported audio does not match the signed audio packet hashes "
                          f"(first mismatch at audio packet {first_bad})")
    os.replace(tmp, out_mp4)
    m = report.manifest or {}
    headers = [s.header for s in report.segments if s.header]
    doc = {
        "format": EXPORT_FORMAT,
        "clip_id": m.get("clip_id"),
        "device_id": m.get("device_id"),
        "officer_id": m.get("officer_id"),
        "started_utc": m.get("started_utc"),
        "stopped_utc": m.get("stopped_utc"),
        "start_reason": m.get("start_reason"),
        "stop_reason": m.get("stop_reason"),
        "first_frame_utc": headers[0]["capture"]["start_utc"] if headers else None,
        "last_frame_end_utc": headers[-1]["capture"]["end_utc"] if headers else None,
        "clock": headers[0]["clock"] if headers else None,
        "video": {k: headers[0]["video"][k] for k in ("codec", "width", "height", "fps")} if headers else None,
        "segment_count": len(report.segments),
        "frame_count": len(expected),
        "frames_checked_against_signatures": checked,
        "audio": _audio_report(headers, checked_audio),
        "gaps": report.gaps,
        "verification": report.as_dict(),
        "mp4": {"file": out_mp4.name, "sha256": hashlib.sha256(out_mp4.read_bytes()).hexdigest(),
                "size": out_mp4.stat().st_size},
    }
    report_path = out_mp4.with_suffix(".report.json")
    report_path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return ExportResult(out_mp4, report_path, doc)
