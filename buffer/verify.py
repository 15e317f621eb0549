"""The verifier: checks clips and stores with no secret key, and names every failure.

Each check is one function raising one exception type, the way python-tuf's ngclient
names each trust step; the report lists every failure per segment, so a court sees a
per-segment map (authentic / altered / missing / unlisted) rather than one verdict.
Gaps the device recorded (or that the signed times show) are reported, never hidden;
a gap is not a failure — an unexplained change is.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature

from buffer import envelope
from buffer.clip import CLIP_FORMAT, MANIFEST_NAME, ClipSegmentRef, find_gaps
from buffer.seal import SEGMENT_FORMAT
from buffer.store import SEG_SUFFIX, parse_seg_name
from drivers.keystore import DeviceRecord, KeyStoreError


class VerifyFailure(Exception):
    """Base of every named check failure; the class name is the check's name."""

    @property
    def check(self) -> str:
        return type(self).__name__


class EnvelopeMalformed(VerifyFailure): pass
class SignatureInvalid(VerifyFailure): pass
class WrongDevice(VerifyFailure): pass
class PayloadTruncated(VerifyFailure): pass
class PayloadHashMismatch(VerifyFailure): pass
class SequenceMismatch(VerifyFailure): pass
class SegmentReplayed(VerifyFailure): pass
class SegmentHashMismatch(VerifyFailure): pass
class ChainBroken(VerifyFailure): pass
class StreamMismatch(VerifyFailure): pass
class SegmentMissing(VerifyFailure): pass
class SegmentNotInManifest(VerifyFailure): pass
class ManifestInvalid(VerifyFailure): pass
class AuditInvalid(VerifyFailure): pass
class ClipMissing(VerifyFailure): pass


class VerifyInputError(Exception):
    """The path given is not something the verifier can read (not a verdict on evidence)."""


@dataclass
class SegmentVerdict:
    seq: int | None
    file: str
    status: str = "authentic"  # authentic | altered | missing | unlisted
    failures: list[tuple[str, str]] = field(default_factory=list)
    header: dict | None = None
    hash: str | None = None

    def fail(self, exc: VerifyFailure, status: str = "altered") -> None:
        self.failures.append((exc.check, str(exc)))
        if self.status == "authentic":
            self.status = status


@dataclass
class ClipReport:
    clip_id: str
    path: str
    key_source: str
    manifest: dict | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)
    segments: list[SegmentVerdict] = field(default_factory=list)
    gaps: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and all(not s.failures for s in self.segments)

    def all_failures(self) -> list[str]:
        out = [f"clip {self.clip_id}: {c}: {m}" for c, m in self.failures]
        for s in self.segments:
            out += [f"clip {self.clip_id} seq {s.seq} ({s.file}): {c}: {m}" for c, m in s.failures]
        return out

    def as_dict(self) -> dict:
        return {
            "clip_id": self.clip_id, "path": self.path, "ok": self.ok,
            "key_source": self.key_source,
            "failures": [{"check": c, "message": m} for c, m in self.failures],
            "gaps": self.gaps,
            "segments": [{"seq": s.seq, "file": s.file, "status": s.status, "hash": s.hash,
                          "failures": [{"check": c, "message": m} for c, m in s.failures]}
                         for s in self.segments],
        }


# --------------------------------------------------------------------------- checks
def check_envelope(data: bytes, magic: bytes) -> envelope.Envelope:
    try:
        env = envelope.parse(data, magic)
        env.body()
        return env
    except envelope.EnvelopeError as exc:
        raise EnvelopeMalformed(str(exc)) from None


def check_signature(env: envelope.Envelope, device: DeviceRecord) -> None:
    try:
        device.verifier().verify(env.signature, env.signed_bytes)
    except InvalidSignature:
        raise SignatureInvalid(f"Ed25519 signature does not verify with device "
                               f"{device.device_id}'s key") from None


def check_device(header: dict, device: DeviceRecord) -> None:
    if header.get("device_id") != device.device_id:
        raise WrongDevice(f"header names device {header.get('device_id')!r}, "
                          f"expected {device.device_id!r}")


# The header fields the verifier reads, with the JSON type each must have (FORMAT.md §3).
# A header is parsed before its signature is checked, so a forged one can hold anything:
# typing them here keeps every later check total (fuzz target `segment`).
_SEGMENT_FIELDS: tuple[tuple[str, type, bool], ...] = (  # (name, type, required)
    ("seq", int, True), ("stream_id", str, True), ("prev_hash", str, True),
    ("capture", dict, True), ("payload", dict, True), ("frame_hashes", list, True),
    ("video", dict, False))


def check_segment_format(header: dict) -> None:
    if header.get("format") != SEGMENT_FORMAT:
        raise EnvelopeMalformed(f"header is not {SEGMENT_FORMAT} (format {header.get('format')!r})")
    for name, kind, required in _SEGMENT_FIELDS:
        if name not in header:
            if required:
                raise EnvelopeMalformed(f"header is not {SEGMENT_FORMAT}: no {name!r} field")
            continue
        value = header[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise EnvelopeMalformed(f"header is not {SEGMENT_FORMAT}: {name!r} is "
                                    f"{type(value).__name__}, not {kind.__name__}")


def check_payload(data: bytes, env: envelope.Envelope, header: dict) -> None:
    payload = data[env.payload_offset:]
    want = header["payload"].get("size")
    if len(payload) != want:
        raise PayloadTruncated(f"payload is {len(payload)} bytes, header says {want}")
    got = hashlib.sha256(payload).hexdigest()
    if got != header["payload"].get("sha256"):
        raise PayloadHashMismatch(f"ciphertext SHA-256 {got[:16]}… does not match header "
                                  f"{str(header['payload'].get('sha256'))[:16]}…")


def check_segment(data: bytes, device: DeviceRecord, verdict: SegmentVerdict) -> None:
    """All per-file checks; fills ``verdict`` with every failure found."""
    try:
        env = check_envelope(data, envelope.SEGMENT_MAGIC)
        header = env.body()
        check_segment_format(header)
    except VerifyFailure as exc:
        verdict.fail(exc)
        return
    verdict.header, verdict.hash = header, env.hash
    for check in (lambda: check_signature(env, device), lambda: check_device(header, device),
                  lambda: check_payload(data, env, header)):
        try:
            check()
        except VerifyFailure as exc:
            verdict.fail(exc)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise VerifyInputError(f"cannot read {path}: {exc.strerror}") from None


# ---------------------------------------------------------------------------- clips
def load_device_record(path: Path) -> DeviceRecord:
    try:
        return DeviceRecord.from_json(_read(path).decode("utf-8", "replace"), str(path))
    except KeyStoreError as exc:
        raise VerifyInputError(str(exc)) from None


def _find_device_record(clip_dir: Path) -> tuple[DeviceRecord, str]:
    for candidate in (clip_dir / "device.json", clip_dir.parent.parent / "device.json"):
        if candidate.is_file():
            return load_device_record(candidate), f"{candidate} (travels with the data: pin it with --device-key)"
    raise VerifyInputError(f"no device record found for {clip_dir}; pass --device-key")


def verify_clip(clip_dir: Path, device: DeviceRecord | None = None,
                key_source: str = "given") -> ClipReport:
    clip_dir = Path(clip_dir)
    manifest_path = clip_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise VerifyInputError(f"{clip_dir} is not a clip (no {MANIFEST_NAME})")
    if device is None:
        device, key_source = _find_device_record(clip_dir)
    report = ClipReport(clip_id=clip_dir.name, path=str(clip_dir), key_source=key_source)
    data = _read(manifest_path)
    try:
        env = check_envelope(data, envelope.CLIP_MAGIC)
        manifest = env.body()
        if manifest.get("format") != CLIP_FORMAT or not isinstance(manifest.get("segments"), list):
            raise ManifestInvalid(f"manifest is not {CLIP_FORMAT}")
        check_signature(env, device)
        check_device(manifest, device)
    except EnvelopeMalformed as exc:
        report.failures.append(("ManifestInvalid", str(exc)))
        return report
    except VerifyFailure as exc:
        report.failures.append((exc.check, f"manifest: {exc}"))
        if isinstance(exc, ManifestInvalid):
            return report
        manifest = env.body()
    report.manifest = manifest
    if manifest.get("clip_id") != clip_dir.name:
        report.failures.append(("ManifestInvalid", f"manifest is for clip {manifest.get('clip_id')!r}, "
                                                   f"directory is {clip_dir.name!r}"))
    try:  # reached with a manifest whose signature failed too: its body may be anything
        listed = _listed_segments(manifest["segments"])
        streams = {str(x) for x in manifest.get("streams", [])}
        gaps = list(manifest.get("gaps", []))
        if not all(isinstance(g, dict) for g in gaps):
            raise ManifestInvalid("manifest gaps: an entry is not an object")
    except ManifestInvalid as exc:
        report.failures.append(("ManifestInvalid", str(exc)))
        return report
    except (KeyError, TypeError, ValueError) as exc:
        report.failures.append(("ManifestInvalid", f"manifest segment list or gaps malformed ({exc!r})"))
        return report
    refs: list[ClipSegmentRef] = []
    prev_hash: str | None = None
    for seq, want_hash in listed:
        name = f"{seq:012d}{SEG_SUFFIX}"
        verdict = SegmentVerdict(seq=seq, file=name)
        report.segments.append(verdict)
        path = clip_dir / name
        if not path.is_file():
            verdict.fail(SegmentMissing(f"listed in the manifest, no file {name}"), "missing")
            prev_hash = want_hash
            continue
        check_segment(_read(path), device, verdict)
        h = verdict.header
        if h is not None:
            if h.get("seq") != seq:
                genuine = not any(c in ("SignatureInvalid", "WrongDevice") for c, _ in verdict.failures)
                cls = SegmentReplayed if genuine else SequenceMismatch
                verdict.fail(cls(f"file {name} holds seq {h.get('seq')} "
                                 f"(stream {str(h.get('stream_id'))[:8]}…), not seq {seq} of this clip"))
            elif verdict.hash != want_hash:
                verdict.fail(SegmentHashMismatch(f"envelope hash {verdict.hash[:16]}… is not the "
                                                 f"manifest's {want_hash[:16]}…"))
            if prev_hash is not None and h.get("prev_hash") != prev_hash:
                verdict.fail(ChainBroken(f"prev_hash {str(h.get('prev_hash'))[:16]}… does not name the "
                                         f"previous segment {prev_hash[:16]}…"))
            if streams and h.get("stream_id") not in streams:
                verdict.fail(StreamMismatch(f"stream {h.get('stream_id')} is not one of the clip's"))
            cap = h.get("capture", {})
            if _mono_ns(cap.get("start_mono_ns")) and _mono_ns(cap.get("end_mono_ns")):
                refs.append(ClipSegmentRef(seq, verdict.hash or "", str(h.get("stream_id")),
                                           cap["start_mono_ns"], cap["end_mono_ns"]))
        prev_hash = want_hash
    listed_names = {f"{s:012d}{SEG_SUFFIX}" for s, _ in listed}
    for extra in sorted(clip_dir.iterdir()):
        if extra.name.endswith(SEG_SUFFIX) and extra.name not in listed_names:
            verdict = SegmentVerdict(seq=parse_seg_name(extra.name), file=extra.name)
            verdict.fail(SegmentNotInManifest(f"{extra.name} is in the clip directory but not in "
                                              "the signed manifest (inserted)"), "unlisted")
            report.segments.append(verdict)
    report.gaps = gaps
    fps = next((s.header["video"]["fps"] for s in report.segments if s.header and
                isinstance(s.header.get("video", {}).get("fps"), int)), 30)
    # a list, not a set: a manifest's gap fields can be any JSON (lists are unhashable)
    recorded = [(g.get("after_seq"), g.get("before_seq")) for g in report.gaps]
    for g in find_gaps(refs, 10**9 // max(fps, 1)):
        if (g["after_seq"], g["before_seq"]) not in recorded:
            g["reason"] += " (seen in segment times, not stated in the manifest)"
            report.gaps.append(g)
    for s in report.segments:  # a missing segment is a gap too
        if s.status == "missing":
            report.gaps.append({"after_seq": (s.seq or 0) - 1, "before_seq": (s.seq or 0) + 1,
                                "reason": "segment_missing", "duration_ns": None})
    return report


def _mono_ns(value: object) -> bool:
    """A monotonic time a gap can be computed from: a non-negative int64. A forged
    header may hold a 4300-digit integer (JSON allows it); the gap between two of them
    has more digits than Python will print, and the report must still serialise."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _listed_segments(segments: list) -> list[tuple[int, str]]:
    """The manifest's ``segments`` as (seq, hash). Each seq becomes a file name, so it
    must be what a 12-digit name holds before it goes near the filesystem: an unsigned
    or forged manifest may list 1e400 or a 300-digit number (fuzz target `manifest`)."""
    out = []
    for i, entry in enumerate(segments):
        seq = entry.get("seq") if isinstance(entry, dict) else None
        digest = entry.get("hash") if isinstance(entry, dict) else None
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 10**12:
            raise ManifestInvalid(f"manifest segment entry {i}: seq {repr(seq)[:40]} is not a "
                                  "sequence number (an integer, 0 to 999999999999)")
        if not isinstance(digest, str):
            raise ManifestInvalid(f"manifest segment entry {i}: hash is not a string")
        out.append((seq, digest))
    return out


def _verify_unclosed_clip(clip_dir: Path, device: DeviceRecord, key_source: str) -> ClipReport:
    """A clip directory without a manifest: never closed (recovery closes it on the
    device) or its manifest was deleted. Either way nothing vouches for the set of files,
    so it is a failure, and each file is still checked and named."""
    report = ClipReport(clip_id=clip_dir.name, path=str(clip_dir), key_source=key_source)
    report.failures.append(("ManifestInvalid", f"no {MANIFEST_NAME}: the clip was never closed "
                            "(open the store on the device to recover it) or its manifest was deleted"))
    for path in sorted(clip_dir.iterdir()):
        seq = parse_seg_name(path.name)
        if seq is None:
            continue
        verdict = SegmentVerdict(seq=seq, file=path.name)
        check_segment(_read(path), device, verdict)
        if verdict.header is not None and verdict.header.get("seq") != seq:
            verdict.fail(SequenceMismatch(f"file {path.name} holds seq {verdict.header.get('seq')}"))
        report.segments.append(verdict)
    return report


# ---------------------------------------------------------------------------- store
@dataclass
class StoreReport:
    root: str
    key_source: str
    clips: list[ClipReport] = field(default_factory=list)
    ring: list[SegmentVerdict] = field(default_factory=list)
    audit_records: int = 0
    audit_problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (all(c.ok for c in self.clips) and all(not s.failures for s in self.ring)
                and not self.audit_problems)

    def all_failures(self) -> list[str]:
        out = [f for c in self.clips for f in c.all_failures()]
        out += [f"ring seq {s.seq} ({s.file}): {c}: {m}" for s in self.ring for c, m in s.failures]
        out += self.audit_problems
        return out

    def as_dict(self) -> dict:
        return {"root": self.root, "ok": self.ok, "key_source": self.key_source,
                "clips": [c.as_dict() for c in self.clips],
                "ring": [{"seq": s.seq, "status": s.status,
                          "failures": [{"check": c, "message": m} for c, m in s.failures]}
                         for s in self.ring],
                "audit": {"records": self.audit_records, "problems": self.audit_problems}}


def verify_store(root: Path, device: DeviceRecord | None = None,
                 key_source: str = "given") -> StoreReport:
    from buffer.audit import verify_audit
    from buffer.store import MARKER
    root = Path(root)
    if not (root / MARKER).is_file():
        raise VerifyInputError(f"{root} is not a bwv store or clip (no {MARKER} or {MANIFEST_NAME})")
    if device is None:
        device = load_device_record(root / "device.json")
        key_source = f"{root / 'device.json'} (travels with the data: pin it with --device-key)"
    report = StoreReport(root=str(root), key_source=key_source)
    clips_dir = root / "clips"
    for clip_dir in sorted(p for p in clips_dir.iterdir() if p.is_dir()) if clips_dir.is_dir() else []:
        if (clip_dir / MANIFEST_NAME).is_file():
            report.clips.append(verify_clip(clip_dir, device, key_source))
        else:
            report.clips.append(_verify_unclosed_clip(clip_dir, device, key_source))
    prev: tuple[int, str] | None = None
    ring = root / "ring"
    for path in sorted(ring.iterdir()) if ring.is_dir() else []:
        seq = parse_seg_name(path.name)
        if seq is None:
            continue
        verdict = SegmentVerdict(seq=seq, file=path.name)
        check_segment(_read(path), device, verdict)
        if verdict.header is not None:
            if verdict.header.get("seq") != seq:
                verdict.fail(SequenceMismatch(f"file {path.name} holds seq {verdict.header.get('seq')}"))
            if prev and prev[0] == seq - 1 and verdict.header.get("prev_hash") != prev[1]:
                verdict.fail(ChainBroken("prev_hash does not name the previous ring segment"))
        prev = (seq, verdict.hash or "")
        report.ring.append(verdict)
    if (root / "audit.log").exists():
        report.audit_records, report.audit_problems = verify_audit(
            root / "audit.log", device.verifies, device.device_id)
        report.audit_problems += check_clips_against_audit(root, report)
    return report


def check_clips_against_audit(root: Path, report: "StoreReport") -> list[str]:
    """Every clip the audit log says was closed must still be here with that manifest.

    A whole clip directory deleted (manifest and all) leaves nothing for the per-clip
    checks to find; the signed audit log still names it.
    """
    from buffer.audit import read_events
    problems = []
    present = {c.clip_id: c for c in report.clips}
    events = [ev for ev in read_events(root / "audit.log") if isinstance(ev.get("data"), dict)]
    for ev in events:  # a forged line may hold anything (named by verify_audit's signature check)
        if (ev.get("event") in ("clip_released", "record_stop")
                and not isinstance(ev["data"].get("clip_id"), str)):
            problems.append(f"{AuditInvalid.__name__}: audit record {str(ev.get('seq'))[:20]} "
                            f"names clip {repr(ev['data'].get('clip_id'))[:40]}, not a clip id")
    events = [ev for ev in events if isinstance(ev["data"].get("clip_id"), str)]
    released = {ev["data"]["clip_id"] for ev in events if ev.get("event") == "clip_released"}
    for ev in events:
        if ev.get("event") != "record_stop":
            continue
        if ev["data"]["clip_id"] in released:
            continue  # freed after the evidence store confirmed it (the record says where)
        clip_id, mhash = ev["data"]["clip_id"], ev["data"].get("manifest_hash")
        if clip_id not in present:
            problems.append(f"{ClipMissing.__name__}: audit record {ev.get('seq')} says clip "
                            f"{clip_id} was closed, but the store has no such clip")
            continue
        manifest = root / "clips" / str(clip_id) / MANIFEST_NAME
        try:
            got = envelope.parse(manifest.read_bytes(), envelope.CLIP_MAGIC).hash
        except (OSError, envelope.EnvelopeError):
            continue  # already named by the clip's own checks
        if got != mhash:
            problems.append(f"{ManifestInvalid.__name__}: clip {clip_id}'s manifest is not the one "
                            f"the audit log recorded at close ({str(mhash)[:16]}…)")
    return problems


def verify_path(path: Path, device_key: Path | None = None) -> StoreReport | ClipReport:
    """A store directory or a clip directory; the CLI's entry point."""
    path = Path(path)
    device, source = (load_device_record(device_key), str(device_key)) if device_key else (None, "")
    if not path.exists():
        raise VerifyInputError(f"{path} does not exist")
    if path.is_file():
        raise VerifyInputError(f"{path} is a file; give a clip directory or a store directory")
    if (path / MANIFEST_NAME).is_file():
        return verify_clip(path, device, source or "given")
    return verify_store(path, device, source or "given")


def dumps(report: StoreReport | ClipReport) -> str:
    return json.dumps(report.as_dict(), indent=2, sort_keys=True)
