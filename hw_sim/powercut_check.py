"""After a power cut and recovery: is every promise the camera made still kept?

The oracle of the power-cut campaign. It reads only the surviving image (the backing
directory, unmounted), the dock share, the acknowledgement log the agent kept *outside*
the store, and the list of files the software itself deleted (the filesystem saw every
unlink, so a deletion the store asked for is told apart from a loss the cut caused).

An acknowledged segment is kept when it is on the device or (after a confirmed release)
on the dock share, and there it parses, its Ed25519 signature verifies, its envelope hash
is the acknowledged one, it decrypts with the agency identity (pyrage), its ``prev_hash``
names the acknowledged segment before it, and its clip's signed manifest lists it. It
may be absent only if the store evicted it from the ring (an unlink the filesystem saw).
Anything else is a *lost* segment.

The rest are *recovery* checks: the index agrees with the files, no temporary file is
left, SQLite's integrity check passes, no clip is left open, the audit log verifies and
records the interruption, and a second recovery changes nothing.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pyrage

from buffer import envelope
from buffer.audit import read_events
from buffer.clip import MANIFEST_NAME
from buffer.fsutil import TMP_SUFFIX
from buffer.store import SEG_SUFFIX, parse_seg_name, seg_name
from buffer.verify import verify_clip, verify_path
from drivers.keystore import DeviceRecord

#: Index files and scratch the second-recovery snapshot leaves out (they change by design:
#: the audit log is compared as a prefix, the index by its tables).
SNAPSHOT_SKIP = {".lock", "audit.log"}


@dataclass
class Ack:
    seq: int
    hash: str
    clip_id: str | None


def read_acks(path: Path) -> dict[int, Ack]:
    out: dict[int, Ack] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            out[rec["seq"]] = Ack(rec["seq"], rec["hash"], rec.get("clip_id"))
    return out


@dataclass
class Verdict:
    lost: list[str] = field(default_factory=list)        # acknowledged segments not kept
    problems: list[str] = field(default_factory=list)    # recovery did not leave a sound store
    kept_device: int = 0
    kept_share: int = 0
    evicted: int = 0

    @property
    def ok(self) -> bool:
        return not self.lost and not self.problems


def sqlite_integrity(db: Path) -> str:
    """``PRAGMA integrity_check`` on a copy (db + WAL), so checking never writes the store."""
    if not db.exists():
        return "missing"
    with tempfile.TemporaryDirectory(prefix="bwv-ic-") as tmp:
        for suffix in ("", "-wal", "-journal"):  # a hot journal rolls back on open
            src = db.with_name(db.name + suffix)
            if src.exists():
                shutil.copyfile(src, Path(tmp) / (db.name + suffix))
        con = sqlite3.connect(Path(tmp) / db.name)
        try:
            rows = con.execute("PRAGMA integrity_check").fetchall()
        except sqlite3.DatabaseError as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            con.close()
    return "ok" if rows == [("ok",)] else "; ".join(str(r[0]) for r in rows[:5])


def read_index(store: Path) -> dict:
    """The index's tables, read from a copy (never touches the store)."""
    with tempfile.TemporaryDirectory(prefix="bwv-ix-") as tmp:
        for suffix in ("", "-wal", "-journal"):  # a hot journal rolls back on open
            src = store / f"index.sqlite{suffix}"
            if src.exists():
                shutil.copyfile(src, Path(tmp) / f"index.sqlite{suffix}")
        con = sqlite3.connect(Path(tmp) / "index.sqlite")
        try:
            return {
                "segments": con.execute("SELECT seq, hash, stream_id, clip_id, size, file_sha256 "
                                        "FROM segments ORDER BY seq").fetchall(),
                "clips": con.execute("SELECT clip_id, state, classification, manifest_sha256, "
                                     "manifest_hash, stop_reason FROM clips ORDER BY clip_id").fetchall(),
                "intents": con.execute("SELECT id, op, seq, path FROM intents").fetchall(),
                "markers": con.execute("SELECT clip_id, utc_ns, source FROM markers ORDER BY id").fetchall(),
                "meta": dict(con.execute("SELECT key, value FROM meta").fetchall()),
            }
        finally:
            con.close()


def clean_flag(store: Path) -> str | None:
    """The store's own idea of how it last stopped ('1' clean, '0' running), or None."""
    try:
        return read_index(store)["meta"].get("clean_shutdown")
    except sqlite3.DatabaseError:
        return None


def snapshot(store: Path) -> dict:
    """Names and SHA-256 of every file (but the audit log and the lock), and the index's
    tables apart from ``meta`` (which records each open and close by design)."""
    files = {}
    for p in sorted(store.rglob("*")):
        if p.is_file() and p.name not in SNAPSHOT_SKIP and not p.name.startswith(("index.sqlite", "sync.sqlite")):
            files[str(p.relative_to(store))] = hashlib.sha256(p.read_bytes()).hexdigest()
    index = read_index(store)
    index.pop("meta")
    return {"files": files, "index": json.loads(json.dumps(index))}


def diff_snapshots(a: dict, b: dict) -> list[str]:
    out = []
    for name in sorted(set(a["files"]) | set(b["files"])):
        if a["files"].get(name) != b["files"].get(name):
            out.append(f"file {name}: {a['files'].get(name, 'absent')[:12]} -> {b['files'].get(name, 'absent')[:12]}")
    for table in sorted(a["index"]):
        if a["index"][table] != b["index"][table]:
            out.append(f"index table {table} changed")
    return out


def _segment_files(store: Path, share_device: Path | None) -> dict[int, list[Path]]:
    found: dict[int, list[Path]] = {}
    roots = [store / "ring", *sorted((store / "clips").glob("*")), *sorted((store / "quarantine").glob("*"))]
    if share_device is not None and (share_device / "clips").is_dir():
        roots += sorted((share_device / "clips").glob("*"))
    for d in roots:
        if d.is_dir():
            for p in d.iterdir():
                seq = parse_seg_name(p.name)
                if seq is not None:
                    found.setdefault(seq, []).append(p)
        elif d.parent.name == "quarantine" and d.name.endswith(SEG_SUFFIX):
            seq = parse_seg_name(d.name)
            if seq is not None:
                found.setdefault(seq, []).append(d)
    return found


def check_acks(store: Path, share_device: Path | None, acks: dict[int, Ack], removed: set[str],
               identity: pyrage.x25519.Identity, device: DeviceRecord, verdict: Verdict) -> None:
    found = _segment_files(store, share_device)
    headers: dict[int, dict] = {}
    for seq, ack in sorted(acks.items()):
        name = seg_name(seq)
        paths = [p for p in found.get(seq, []) if p.parent.name != "quarantine"]
        if any(p.parent.name == "quarantine" or p.parent.parent.name == "quarantine"
               for p in found.get(seq, [])):
            verdict.lost.append(f"seq {seq}: quarantined by recovery")
            continue
        if not paths:
            if f"ring/{name}" in removed:
                verdict.evicted += 1  # the store evicted it from the ring (intent, then unlink)
                continue
            verdict.lost.append(f"seq {seq}: acknowledged ({'clip ' + ack.clip_id if ack.clip_id else 'ring'}), "
                                "not on the device, not on the dock share, never deleted by the store")
            continue
        for p in paths:
            problem = _check_segment_file(p, ack, identity, device, headers)
            if problem:
                verdict.lost.append(f"seq {seq} ({p}): {problem}")
                break
        else:
            if any(store in p.parents for p in paths):
                verdict.kept_device += 1
            else:
                verdict.kept_share += 1
    for seq, ack in acks.items():  # the chain: each names the acknowledged one before it
        prev = acks.get(seq - 1)
        h = headers.get(seq)
        if prev is not None and h is not None and h.get("prev_hash") != prev.hash:
            verdict.lost.append(f"seq {seq}: prev_hash does not name acknowledged seq {seq - 1}")


def _check_segment_file(path: Path, ack: Ack, identity, device: DeviceRecord,
                        headers: dict[int, dict]) -> str | None:
    data = path.read_bytes()
    try:
        env = envelope.parse(data, envelope.SEGMENT_MAGIC)
        header = env.body()
    except envelope.EnvelopeError as exc:
        return f"not a segment envelope ({exc})"
    if env.hash != ack.hash:
        return f"envelope hash {env.hash[:16]}… is not the acknowledged {ack.hash[:16]}…"
    if not device.verifies(env.signature, env.signed_bytes):
        return "device signature does not verify"
    payload = data[env.payload_offset:]
    if hashlib.sha256(payload).hexdigest() != header["payload"]["sha256"]:
        return "payload SHA-256 differs from the signed header"
    try:
        ts = pyrage.decrypt(payload, [identity])
    except Exception as exc:  # noqa: BLE001 — pyrage raises its own types
        return f"does not decrypt with the agency identity ({exc})"
    if not ts or ts[0] != 0x47:
        return "decrypted payload is not MPEG-TS"
    headers[ack.seq] = header
    return None


def check_index(store: Path, verdict: Verdict) -> None:
    try:
        ix = read_index(store)
    except sqlite3.DatabaseError as exc:
        verdict.problems.append(f"index unreadable: {exc}")
        return
    if ix["intents"]:
        verdict.problems.append(f"delete intents left after recovery: {ix['intents']}")
    on_disk: dict[int, Path] = {}
    for d in [store / "ring", *sorted(p for p in (store / "clips").iterdir() if p.is_dir())]:
        for p in d.iterdir():
            seq = parse_seg_name(p.name)
            if seq is None:
                if p.name != MANIFEST_NAME:
                    verdict.problems.append(f"unexpected file {p.relative_to(store)}")
                continue
            if seq in on_disk:
                verdict.problems.append(f"seq {seq} is in two places: {on_disk[seq].relative_to(store)} "
                                        f"and {p.relative_to(store)}")
            on_disk[seq] = p
    rows = {r[0]: r for r in ix["segments"]}
    for seq, (_, _, _, clip_id, size, sha) in rows.items():
        p = on_disk.get(seq)
        want = store / ("ring" if clip_id is None else f"clips/{clip_id}") / seg_name(seq)
        if p is None:
            verdict.problems.append(f"index row seq {seq} has no file")
            continue
        if p != want:
            verdict.problems.append(f"index puts seq {seq} in {want.relative_to(store)}, file is in "
                                    f"{p.relative_to(store)}")
        data = p.read_bytes()
        if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
            verdict.problems.append(f"seq {seq}: file size/SHA-256 differ from the index")
    for seq in sorted(set(on_disk) - set(rows)):
        verdict.problems.append(f"file {on_disk[seq].relative_to(store)} is not in the index")
    states = {c[0]: c for c in ix["clips"]}
    for clip_id, (_, state, _, msha, _, _) in states.items():
        d = store / "clips" / clip_id
        if state == "open":
            verdict.problems.append(f"clip {clip_id} left open after recovery")
        elif state == "closed":
            m = d / MANIFEST_NAME
            if not m.is_file():
                verdict.problems.append(f"closed clip {clip_id} has no manifest")
            elif msha and hashlib.sha256(m.read_bytes()).hexdigest() != msha:
                verdict.problems.append(f"clip {clip_id}: manifest differs from the index")
        elif state == "released" and d.exists():
            verdict.problems.append(f"released clip {clip_id} still has a directory")
    for d in sorted(p for p in (store / "clips").iterdir() if p.is_dir()):
        if d.name not in states:
            verdict.problems.append(f"clip directory {d.name} has no index row")
    q = store / "quarantine"
    if q.is_dir() and any(q.iterdir()):
        verdict.problems.append(f"recovery quarantined {sorted(p.name for p in q.iterdir())}")


def check_tmp(store: Path, verdict: Verdict) -> None:
    for p in store.rglob("*"):
        if (p.name.startswith(".") and p.name.endswith(TMP_SUFFIX)) or p.name.startswith(".fuse_hidden"):
            verdict.problems.append(f"temporary file left: {p.relative_to(store)}")


def check_audit(store: Path, *, audit_before: bytes, unclean: bool, unclean_record: bool,
                acked_this_run: list[int], open_clips: list[str], report: dict,
                verdict: Verdict) -> None:
    """The audit log records the interruption (and where the recording stopped).

    ``unclean``: the store's flag just before this recovery said it was running;
    ``unclean_record``: it said so right after the (first) cut, so some recovery since
    must have written the ``unclean_shutdown`` record.
    """
    data = (store / "audit.log").read_bytes()
    # Records that survived the cut must stay; an append the cut tore (no newline, or
    # zeros where a page did not reach the disk) was never acknowledged and may go.
    whole = audit_before[:audit_before.rfind(b"\n") + 1]
    last = whole.rfind(b"\n", 0, max(len(whole) - 1, 0)) + 1
    if b"\x00" in whole[last:]:
        whole = whole[:last]
    if not data.startswith(whole):
        verdict.problems.append("audit log: recovery rewrote records that survived the cut")
    new = read_events(store / "audit.log")[len(read_events_bytes(audit_before)):]
    events = [e.get("event") for e in new]
    if unclean != bool(report.get("unclean_shutdown")):
        verdict.problems.append(f"recovery says unclean_shutdown={report.get('unclean_shutdown')}, "
                                f"the store's flag said {'running' if unclean else 'clean'}")
    if unclean_record:
        rec = next((e for e in new if e.get("event") == "unclean_shutdown"), None)
        if rec is None:
            verdict.problems.append(f"audit log: no unclean_shutdown record after the cut (new: {events})")
        else:
            head = rec["data"].get("head_seq", -1)
            if acked_this_run and head < max(acked_this_run):
                verdict.problems.append(f"audit: unclean_shutdown head_seq {head} is before the last "
                                        f"acknowledged segment {max(acked_this_run)}")
            if acked_this_run and not rec["data"].get("last_segment_end_utc"):
                verdict.problems.append("audit: unclean_shutdown does not say where recording stopped")
    for clip_id in open_clips:
        stops = [e for e in new if e.get("event") == "record_stop"
                 and e.get("data", {}).get("clip_id") == clip_id]
        if not stops:
            verdict.problems.append(f"audit: clip {clip_id} open at the cut, no record_stop from recovery")
    # Every clip the store knows has its start, and (once closed) its stop, in the log.
    events = read_events(store / "audit.log")
    said = {(e.get("event"), e.get("data", {}).get("clip_id")) for e in events
            if isinstance(e.get("data"), dict)}
    try:
        clips = read_index(store)["clips"]
    except sqlite3.DatabaseError:
        clips = []
    for clip_id, state, *_ in clips:
        if ("record_start", clip_id) not in said:
            verdict.problems.append(f"audit: clip {clip_id} has no record_start")
        if state != "open" and ("record_stop", clip_id) not in said:
            verdict.problems.append(f"audit: {state} clip {clip_id} has no record_stop")


def read_events_bytes(data: bytes) -> list[dict]:
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        return read_events(Path(f.name))


def check_verify(store: Path, share_device: Path | None, verdict: Verdict) -> None:
    rep = verify_path(store)
    if not rep.ok:
        verdict.problems += [f"verify: {f}" for f in rep.all_failures()[:10]]
    if share_device is not None and (share_device / "clips").is_dir():
        for d in sorted((share_device / "clips").iterdir()):
            if (d / MANIFEST_NAME).is_file():
                c = verify_clip(d, DeviceRecord.from_json((store / "device.json").read_text(), "store"))
                if not c.ok:
                    verdict.problems += [f"dock share verify: {f}" for f in c.all_failures()[:5]]
