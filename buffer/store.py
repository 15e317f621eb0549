"""The evidence store on disk: a ring of sealed segments, pinned clips, an index, recovery.

Layout (docs/ARCHITECTURE.md has the full story)::

    STORE/bwv-store.json          which device this store belongs to
    STORE/device.json             the device's public record (id + Ed25519 public key)
    STORE/index.sqlite            SQLite (WAL) index: segments, clips, delete intents
    STORE/ring/NNNNNNNNNNNN.bwvseg     unpinned segments (pre-record window)
    STORE/clips/<clip>/NNN….bwvseg     pinned segments, moved here by rename (no copy)
    STORE/clips/<clip>/manifest.bwvclip
    STORE/audit.log               signed, hash-chained audit log
    STORE/quarantine/             files recovery could not vouch for (never deleted)

Rules this module keeps (DESIGN invariants 4 and 5):
- ``append`` returns only after the sealed file and its directory entry are fsynced and
  the index row is committed; that return is the acknowledgement.
- Eviction writes a durable delete intent before unlinking, so recovery can finish it.
- Nothing pinned to a clip is ever evicted; when only pinned data is left and the byte
  budget is reached, ``append``/``open_clip`` raise ``StoreFull`` and write nothing.

Threading: a Store is used from one thread only (the agent's store worker). SQLite's
connection is created in that thread and never shared.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sqlite3
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from buffer import envelope
from buffer.audit import AuditLog
from buffer.clip import MANIFEST_NAME, ClipSegmentRef, build_manifest, manifest_body
from buffer.fsutil import (TMP_SUFFIX, fsync_dir, mkdir_durable, move_all_durable, move_durable,
                           tmp_name, unlink_durable, write_durable)
from buffer.seal import GENESIS_HASH, SealContext, seal
from capture.segmenter import RawSegment
from drivers.clock import Clock, iso_utc, parse_iso_utc
from drivers.keystore import DeviceRecord, KeyStore

STORE_FORMAT = "bwv-store/1"
MARKER = "bwv-store.json"
SEG_SUFFIX = ".bwvseg"


class StoreError(Exception):
    """A store problem a technician can act on; the message says what and where."""


class NotAStore(StoreError):
    pass


class StoreFull(StoreError):
    pass


class ReleaseRefused(StoreError):
    """Sync asked to free a clip without a complete, matching confirmation."""


@dataclass(frozen=True)
class FileRef:
    """A file to push and the SHA-256/size buffer recorded when it wrote it."""

    path: Path
    sha256: str
    size: int

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class ClipFiles:
    """A closed clip as sync sees it: what to push, in order (manifest last)."""

    clip_id: str
    started_utc_ns: int
    classification: str
    manifest_hash: str
    files: list[FileRef]


def seg_name(seq: int) -> str:
    return f"{seq:012d}{SEG_SUFFIX}"


def parse_seg_name(name: str) -> int | None:
    """The seq a segment file name holds, or None. Only ASCII digits: ``str.isdigit``
    also accepts "²" (which ``int`` refuses) and other scripts' digits, and a store's
    file names are untrusted when it is verified elsewhere."""
    stem = name[: -len(SEG_SUFFIX)] if name.endswith(SEG_SUFFIX) else None
    ok = stem is not None and len(stem) == 12 and stem.isascii() and stem.isdigit()
    return int(stem) if ok else None


@dataclass(frozen=True)
class StoreSettings:
    pre_record_ns: int = 30 * 10**9
    max_bytes: int = 8 * 1024**3
    nearly_full_fraction: float = 0.9
    frame_interval_ns: int = 33_333_333
    default_classification: str = "non-evidential"
    marker_makes_evidential: bool = True
    platform: tuple[tuple[str, str], ...] = ()  # recorded in every manifest (board, encoder…)


@dataclass(frozen=True)
class Ack:
    """A durable segment: what the agent may report as recorded."""

    seq: int
    hash: str
    path: Path
    clip_id: str | None
    size: int


@dataclass
class RecoveryReport:
    unclean_shutdown: bool = False
    discarded_tmp: list[str] = field(default_factory=list)
    finished_evictions: int = 0
    finished_releases: list[str] = field(default_factory=list)
    reindexed: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    duplicate_names: list[int] = field(default_factory=list)
    audit_completed: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    closed_clips: list[str] = field(default_factory=list)
    audit_repaired_bytes: int = 0
    audit_damaged_tail: bool = False

    def as_dict(self) -> dict:
        return dict(self.__dict__)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    seq INTEGER PRIMARY KEY, hash TEXT NOT NULL, stream_id TEXT NOT NULL,
    clip_id TEXT, size INTEGER NOT NULL,
    start_mono_ns INTEGER NOT NULL, end_mono_ns INTEGER NOT NULL,
    start_utc_ns INTEGER NOT NULL, end_utc_ns INTEGER NOT NULL,
    file_sha256 TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS segments_clip ON segments(clip_id);
CREATE TABLE IF NOT EXISTS clips (
    clip_id TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('open','closed','released')),
    classification TEXT NOT NULL DEFAULT 'non-evidential'
        CHECK (classification IN ('evidential','non-evidential')),
    incident_id TEXT, part INTEGER NOT NULL DEFAULT 1, previous_clip TEXT,
    manifest_sha256 TEXT,
    officer_id TEXT NOT NULL, started_utc_ns INTEGER NOT NULL,
    press_mono_ns INTEGER NOT NULL, start_reason TEXT NOT NULL,
    stopped_utc_ns INTEGER, stop_reason TEXT, manifest_hash TEXT,
    resume TEXT);
CREATE TABLE IF NOT EXISTS intents (
    id INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT NOT NULL, seq INTEGER NOT NULL,
    path TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS markers (
    id INTEGER PRIMARY KEY AUTOINCREMENT, clip_id TEXT NOT NULL, utc_ns INTEGER NOT NULL,
    mono_ns INTEGER NOT NULL, gps TEXT, source TEXT NOT NULL);
"""


def read_marker(marker: Path) -> dict:
    """The store marker's JSON object. A damaged marker (bad UTF-8, not JSON, a nesting
    bomb, not an object) is ``NotAStore`` naming the file, never another exception: the
    agent turns it into a fault a technician can act on (fuzz target `store_marker`)."""
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise NotAStore(f"{marker} is corrupt ({type(exc).__name__})") from None
    if not isinstance(info, dict):
        raise NotAStore(f"{marker} is corrupt (not a JSON object)")
    return info


def init_store(root: Path, device: DeviceRecord) -> None:
    """Create an empty store for this device (refuses a non-empty foreign directory)."""
    root = Path(root)
    marker = root / MARKER
    if marker.exists():
        existing = read_marker(marker)
        if existing.get("device_id") != device.device_id:
            raise StoreError(f"{root} belongs to device {existing.get('device_id')!r}")
        return
    # What a first start cut short (power, an I/O error) leaves is ours to finish; any
    # other content means this is not a fresh directory for a store.
    ours = {"device.json", tmp_name("device.json"), tmp_name(MARKER)}
    dirs = {"ring", "clips", "quarantine"}
    if root.exists() and any(not (p.name in ours or (p.name in dirs and p.is_dir()
                                                     and not any(p.iterdir())))
                             for p in root.iterdir()):
        raise NotAStore(f"{root} is not empty and not a bwv store; refusing to use it")
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("ring", "clips", "quarantine"):
        (root / sub).mkdir(exist_ok=True)
    write_durable(root, "device.json", device.to_json().encode())
    write_durable(root, MARKER, json.dumps(
        {"format": STORE_FORMAT, "device_id": device.device_id}).encode())
    fsync_dir(root.parent)


def _outbox(event: str, data: dict) -> tuple[str, tuple]:
    """The statement that parks an audit event in the index until it is in the log."""
    return ("INSERT OR REPLACE INTO meta VALUES ('audit_outbox', ?)",
            (json.dumps({"event": event, "data": data}, sort_keys=True),))


class Store:
    """The ring + clips store. Open it with :meth:`open`, which runs recovery first."""

    def __init__(self, root: Path, keys: KeyStore, clock: Clock, settings: StoreSettings,
                 *, officer_id: str) -> None:
        self.root = Path(root)
        self.keys = keys
        self.clock = clock
        self.settings = settings
        self.device = keys.device()
        self.stream_id = uuid.uuid4().hex
        self.officer_id = officer_id
        self._check_marker()
        self._lock_fd = self._take_lock()
        self.ring = self.root / "ring"
        self.clips = self.root / "clips"
        self.db: sqlite3.Connection | None = None
        try:
            # Opened (and recovered) on the starting thread, then handed to the store
            # worker: one thread at a time, never two at once, so the same-thread check
            # is lifted.
            self.db = sqlite3.connect(self.root / "index.sqlite", isolation_level=None,
                                      check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)
            if "resume" not in {r[1] for r in self.db.execute("PRAGMA table_info(clips)")}:
                # a store made before resume-after-crash: one nullable column more
                self.db.execute("ALTER TABLE clips ADD COLUMN resume TEXT")
            self.audit = AuditLog(self.root / "audit.log", device_id=self.device.device_id,
                                  sign=keys.sign, clock=clock)
        except BaseException:
            self.abandon()  # an I/O error while opening: hold no lock, no file
            raise
        self._used = 0
        self._orphans: set[Path] = set()  # files of appends whose index row failed
        self.recovery = RecoveryReport(audit_repaired_bytes=self.audit.repaired_bytes,
                                       audit_damaged_tail=self.audit.damaged_tail)

    # ----------------------------------------------------------------- opening
    @classmethod
    def open(cls, root: Path, keys: KeyStore, clock: Clock, settings: StoreSettings, *,
             officer_id: str) -> "Store":
        store = cls(root, keys, clock, settings, officer_id=officer_id)
        try:
            store._recover()
        except BaseException:
            store.abandon()  # (an I/O error: the next open recovers from the start)
            raise
        return store

    def _check_marker(self) -> None:
        marker = self.root / MARKER
        try:
            info = read_marker(marker)
        except FileNotFoundError:
            raise NotAStore(f"{self.root} is not a bwv store (no {MARKER}); "
                            "create one with 'bwv sim' or 'bwv store init'") from None
        if info.get("format") != STORE_FORMAT:
            raise NotAStore(f"{marker}: unknown store format {info.get('format')!r}")
        if info.get("device_id") != self.device.device_id:
            raise StoreError(f"{self.root} belongs to device {info.get('device_id')!r}, "
                             f"not {self.device.device_id!r}")

    def _take_lock(self) -> int:
        """One process owns a store at a time (the agent, or a technician's tool)."""
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"{self.root} is in use by another bwv process (the agent?); "
                             "stop it first") from None
        return fd

    def _meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def _set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def _recover(self) -> None:
        """Make files, index and chain agree after whatever happened last time."""
        rep = self.recovery
        rep.unclean_shutdown = self._meta("clean_shutdown", "1") == "0"
        # 0. An audit event committed with its change but not yet in the log goes in first.
        if (completed := self._flush_audit_outbox()) is not None:
            rep.audit_completed.append(completed)
        # 1. Unacknowledged temp files: their writer never returned, nobody was told
        #    they exist. They are incomplete by construction; drop them, say so.
        for directory in [self.ring, *self._clip_dirs()]:
            for p in directory.iterdir():
                if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX):
                    unlink_durable(p)
                    rep.discarded_tmp.append(str(p.relative_to(self.root)))
        # 2. Finish deletes whose intent was recorded (evictions, releases after sync).
        for iid, op, seq, path in self.db.execute(
                "SELECT id, op, seq, path FROM intents ORDER BY id").fetchall():
            if op == "release":
                self._finish_release(path.split("/", 1)[1], iid)
                rep.finished_releases.append(path)
                continue
            unlink_durable(self.root / path)
            self._tx([("DELETE FROM segments WHERE seq=?", (seq,)),
                      ("DELETE FROM intents WHERE id=?", (iid,))])
            rep.finished_evictions += 1
        # 3. Files are the truth for where a segment is; the index follows them.
        on_disk: dict[int, Path] = {}
        for directory in [self.ring, *self._clip_dirs()]:
            for p in directory.iterdir():
                seq = parse_seg_name(p.name)
                if seq is not None:
                    if seq in on_disk:  # a move to a clip cut short: one segment, two names
                        p = self._drop_duplicate(seq, on_disk[seq], p)
                    on_disk[seq] = p
        rows = {r[0]: r[1] for r in self.db.execute("SELECT seq, clip_id FROM segments")}
        for seq, p in sorted(on_disk.items()):
            clip_id = None if p.parent == self.ring else p.parent.name
            if seq not in rows:
                if self._reindex(seq, p, clip_id):
                    rep.reindexed.append(seq)
            elif rows[seq] != clip_id:
                self.db.execute("UPDATE segments SET clip_id=? WHERE seq=?", (clip_id, seq))
        for seq in sorted(set(rows) - set(on_disk)):
            rep.missing.append(seq)
            self.db.execute("DELETE FROM segments WHERE seq=?", (seq,))
        # A clip directory with no row cannot come from open_clip's order (row first);
        # it is kept and closed like any open clip, so its segments stay evidence.
        known = {r[0] for r in self.db.execute("SELECT clip_id FROM clips WHERE state!='released'")}
        for d in self._clip_dirs():
            if d.name not in known:
                first = self.db.execute("SELECT MIN(start_utc_ns), MIN(start_mono_ns) FROM segments "
                                        "WHERE clip_id=?", (d.name,)).fetchone()
                self._tx([("INSERT INTO clips(clip_id, state, officer_id, started_utc_ns, "
                           "press_mono_ns, start_reason) VALUES (?, 'open', ?, ?, ?, 'unknown')",
                           (d.name, self.officer_id, first[0] or 0, first[1] or 0))])
        # 4. The chain head: the newest segment ever acknowledged, even if evicted.
        head = self.db.execute("SELECT seq, hash FROM segments ORDER BY seq DESC LIMIT 1").fetchone()
        meta_seq = int(self._meta("head_seq", "-1"))
        if head and head[0] > meta_seq:
            self._set_meta("head_seq", str(head[0]))
            self._set_meta("head_hash", head[1])
        self._used = self.db.execute("SELECT COALESCE(SUM(size),0) FROM segments").fetchone()[0]
        # 5. Clips left open by a power cut are closed with what was acknowledged.
        for (clip_id,) in self.db.execute("SELECT clip_id FROM clips WHERE state='open'").fetchall():
            self.close_clip(clip_id, stop_reason="power_loss_recovery",
                            stopped_utc_ns=None, notes=["closed by recovery after an unclean stop"])
            rep.closed_clips.append(clip_id)
        last_end = self._meta("last_end_utc")
        if rep.unclean_shutdown:
            self.audit.append("unclean_shutdown", head_seq=int(self._meta("head_seq", "-1")),
                              last_segment_end_utc=last_end)
        if any((rep.discarded_tmp, rep.finished_evictions, rep.finished_releases,
                rep.reindexed, rep.missing, rep.duplicate_names, rep.audit_completed,
                rep.quarantined, rep.closed_clips, rep.audit_repaired_bytes,
                rep.audit_damaged_tail)):
            self.audit.append("recovery", **rep.as_dict())
        self._set_meta("clean_shutdown", "0")
        self.audit.append("store_open", stream_id=self.stream_id,
                          head_seq=int(self._meta("head_seq", "-1")), used_bytes=self._used)

    def _clip_dirs(self) -> list[Path]:
        return sorted(p for p in self.clips.iterdir() if p.is_dir())

    def _drop_duplicate(self, seq: int, a: Path, b: Path) -> Path:
        """A segment under two names: promotion links into the clip and fsyncs it before
        it unlinks from the ring, so a cut in between leaves both. The clip keeps it and
        the ring's name goes; should the two ever differ, the other one is quarantined,
        never deleted. Returns the path kept."""
        keep, extra = (b, a) if a.parent == self.ring else (a, b)
        if os.path.samefile(keep, extra) or keep.read_bytes() == extra.read_bytes():
            unlink_durable(extra)
        else:
            q = self.root / "quarantine"
            mkdir_durable(q)
            dst = move_durable(extra, q, no_replace=True)
            self.recovery.quarantined.append(f"{extra.relative_to(self.root)} -> "
                                             f"{dst.relative_to(self.root)}: differs from "
                                             f"{keep.relative_to(self.root)}")
        self.recovery.duplicate_names.append(seq)
        return keep

    def _reindex(self, seq: int, path: Path, clip_id: str | None) -> bool:
        """A durable file whose index row was not committed (cut between the two)."""
        try:
            data = path.read_bytes()
            env = envelope.parse(data, envelope.SEGMENT_MAGIC)
            self.device.verifier().verify(env.signature, env.signed_bytes)
            h = env.body()
            if h["seq"] != seq or h["device_id"] != self.device.device_id:
                raise envelope.EnvelopeError("header does not match file name or device")
            if h["payload"]["size"] != len(data) - env.payload_offset:
                raise envelope.EnvelopeError("payload size differs from header")
            if hashlib.sha256(data[env.payload_offset:]).hexdigest() != h["payload"]["sha256"]:
                raise envelope.EnvelopeError("payload SHA-256 differs from header")
            cap = h["capture"]
            self._tx([("INSERT INTO segments VALUES (?,?,?,?,?,?,?,?,?,?)",
                       (seq, env.hash, h["stream_id"], clip_id, len(data), cap["start_mono_ns"],
                        cap["end_mono_ns"], parse_iso_utc(cap["start_utc"]),
                        parse_iso_utc(cap["end_utc"]), hashlib.sha256(data).hexdigest()))])
            return True
        except Exception as exc:  # noqa: BLE001 — anything unverifiable is quarantined, not deleted
            q = self.root / "quarantine"
            mkdir_durable(q)
            dst = move_durable(path, q, no_replace=True)  # never replaces an earlier one
            self.recovery.quarantined.append(f"{path.relative_to(self.root)} -> "
                                             f"{dst.relative_to(self.root)}: {exc}")
            return False

    # ------------------------------------------------------------------ writing
    def _tx(self, statements: list[tuple[str, tuple]]) -> None:
        if self.db.in_transaction:  # a rollback an I/O error cut short last time
            self.db.execute("ROLLBACK")
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for sql, args in statements:
                self.db.execute(sql, args)
            self.db.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back by itself (an I/O error in COMMIT); a failing
            # ROLLBACK must not hide the error that caused it
            if self.db.in_transaction:
                try:
                    self.db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise

    #: Events whose record names one clip and happens once per clip: the outbox matches
    #: them by clip; any other event by its whole data.
    _ONCE_PER_CLIP = ("record_start", "record_stop")

    def _tx_audited(self, statements: list[tuple[str, tuple]], event: str, data: dict, *,
                    replaces_outbox: bool = False) -> None:
        """Commit ``statements`` and audit ``event`` as one. The event is committed with
        them (meta ``audit_outbox``), appended to the audit log, then cleared: a power cut
        between the commit and the append would otherwise leave a durable change the
        audit log never names (the campaign's compound cut found a recovery-closed clip
        with no ``record_stop``). Recovery appends what the outbox still holds.
        ``replaces_outbox``: a provisional record of this same event for this clip may be
        in the outbox (``open_clip``); this one supersedes it."""
        pending = json.loads(self._meta("audit_outbox") or "null")
        if not (replaces_outbox and pending and pending["event"] == event
                and pending["data"].get("clip_id") == data.get("clip_id")):
            self._flush_audit_outbox()
        self._tx(statements + [_outbox(event, data)])
        self.audit.append(event, **data)
        self._tx([("DELETE FROM meta WHERE key='audit_outbox'", ())])

    def _flush_audit_outbox(self) -> str | None:
        """Append the outbox's event unless it is the audit log's last record already
        (the cut came after the append, before the clear); returns the event appended."""
        pending = self._meta("audit_outbox")
        if pending is None:
            return None
        ev = json.loads(pending)
        last = self.audit.last_record() or {}
        data = last.get("data") if isinstance(last.get("data"), dict) else {}
        if ev["event"] in self._ONCE_PER_CLIP:
            done = last.get("event") == ev["event"] and data.get("clip_id") == ev["data"].get("clip_id")
        else:
            done = last.get("event") == ev["event"] and data == ev["data"]
        appended = None
        if not done:
            self.audit.append(ev["event"], **ev["data"], completed_by_recovery=True)
            appended = ev["event"]
        self._tx([("DELETE FROM meta WHERE key='audit_outbox'", ())])
        return appended

    @property
    def head(self) -> tuple[int, str]:
        return int(self._meta("head_seq", "-1")), self._meta("head_hash", GENESIS_HASH)

    @property
    def used_bytes(self) -> int:
        return self._used

    def pinned_bytes(self) -> int:
        return self.db.execute(
            "SELECT COALESCE(SUM(size),0) FROM segments WHERE clip_id IS NOT NULL").fetchone()[0]

    def nearly_full(self) -> bool:
        return self.pinned_bytes() >= self.settings.nearly_full_fraction * self.settings.max_bytes

    def append(self, raw: RawSegment, *, clip_id: str | None = None,
               gps: dict | None = None) -> Ack:
        """Seal, write durably, index. Returning is the acknowledgement."""
        if clip_id is not None and not self.clip_is_open(clip_id):
            raise StoreError(f"clip {clip_id} is not open; refusing to add a segment to it")
        if clip_id is not None:  # an open_clip that an I/O error cut short made no directory
            mkdir_durable(self.clips / clip_id)
        self._remove_orphans()  # before their seq is used again, maybe in another directory
        seq_prev, prev_hash = self.head
        seq = seq_prev + 1
        ctx = SealContext(self.device.device_id, self.stream_id, self.officer_id,
                          self.keys.agency_recipient(), self.keys.sign)
        sealed = seal(raw, ctx=ctx, seq=seq, prev_hash=prev_hash, clock=self.clock.state(), gps=gps)
        self._make_room(len(sealed.data))
        directory = self.ring if clip_id is None else self.clips / clip_id
        path = directory / seg_name(seq)
        try:
            write_durable(directory, seg_name(seq), sealed.data)
            # The whole file's SHA-256, taken from the bytes as written: what a release
            # must be proven against (sync never has to be trusted about what it was).
            self._index(seq, sealed, raw, clip_id)
        except BaseException:
            if self._indexed(seq, sealed.hash):
                raise  # committed after all (the error came late): the file stays
            if not os.path.lexists(path):
                raise
            # Not acknowledged (an I/O error after the rename: the directory's fsync, the
            # index): the file must go, or it would meet the next segment that gets this
            # seq (perhaps in a clip, not the ring).
            self._orphans.add(path)
            try:
                self._remove_orphans()
            except OSError:
                pass  # kept; tried again before the next append, which waits for it
            raise
        self._used += len(sealed.data)
        self._evict_outside_window()
        return Ack(seq, sealed.hash, path, clip_id, len(sealed.data))

    def _indexed(self, seq: int, hash_: str) -> bool:
        try:
            row = self.db.execute("SELECT hash FROM segments WHERE seq=?", (seq,)).fetchone()
        except sqlite3.Error:
            return False
        return row is not None and row[0] == hash_

    def _remove_orphans(self) -> None:
        for path in sorted(self._orphans):
            unlink_durable(path)
            self._orphans.discard(path)

    def _index(self, seq: int, sealed, raw: RawSegment, clip_id: str | None) -> None:
        self._tx([("INSERT INTO segments VALUES (?,?,?,?,?,?,?,?,?,?)",
                   (seq, sealed.hash, self.stream_id, clip_id, len(sealed.data), raw.start_mono_ns,
                    raw.end_mono_ns, raw.start_utc_ns, raw.end_utc_ns,
                    hashlib.sha256(sealed.data).hexdigest())),
                  ("INSERT OR REPLACE INTO meta VALUES ('head_seq', ?)", (str(seq),)),
                  ("INSERT OR REPLACE INTO meta VALUES ('head_hash', ?)", (sealed.hash,)),
                  ("INSERT OR REPLACE INTO meta VALUES ('last_end_utc', ?)", (str(raw.end_utc_ns),))])

    def _ring_segments(self) -> list[tuple[int, int, int, int]]:
        """Unpinned segments, oldest first: (seq, size, start_mono_ns, end_mono_ns)."""
        return self.db.execute("SELECT seq, size, start_mono_ns, end_mono_ns FROM segments "
                               "WHERE clip_id IS NULL ORDER BY seq").fetchall()

    def _evict(self, seq: int) -> None:
        path = self.ring / seg_name(seq)
        size = self.db.execute("SELECT size FROM segments WHERE seq=?", (seq,)).fetchone()[0]
        self._tx([("INSERT INTO intents(op, seq, path) VALUES ('evict', ?, ?)",
                   (seq, str(path.relative_to(self.root))))])
        unlink_durable(path)
        self._tx([("DELETE FROM segments WHERE seq=?", (seq,)),
                  ("DELETE FROM intents WHERE seq=?", (seq,))])
        self._used -= size

    def _evict_outside_window(self) -> None:
        """Keep the newest unpinned run that covers the pre-record window, drop older.

        Only the newest contiguous run of this stream can ever be promoted into a clip
        (a clip is a contiguous range), so ring segments left before a clip or from an
        earlier power-on are outside the window by definition.
        """
        ring = self._ring_segments()
        if not ring:
            return
        if self.settings.pre_record_ns == 0:
            for seq, *_ in ring:  # no pre-record window: nothing unpinned is kept
                self._evict(seq)
            return
        streams = dict(self.db.execute(
            "SELECT seq, stream_id FROM segments WHERE clip_id IS NULL").fetchall())
        run_start = len(ring) - 1
        while (run_start > 0 and ring[run_start - 1][0] == ring[run_start][0] - 1
               and streams[ring[run_start - 1][0]] == self.stream_id):
            run_start -= 1
        for seq, *_ in ring[:run_start]:
            self._evict(seq)
        run = ring[run_start:]
        newest_end = run[-1][3]
        slack = self.settings.frame_interval_ns // 2
        # Segment i may go once segment i+1 alone already reaches back a whole window.
        for (seq, _, _, _), nxt in zip(run, run[1:]):
            if newest_end - nxt[2] >= self.settings.pre_record_ns - slack:
                self._evict(seq)
            else:
                break

    def _make_room(self, need: int) -> None:
        """Evict unpinned segments (oldest first) for ``need`` bytes, or refuse."""
        budget = self.settings.max_bytes
        if self._used + need <= budget:
            return
        for seq, size, _, _ in self._ring_segments():
            self._evict(seq)
            if self._used + need <= budget:
                self.audit.append("pre_record_window_shrunk", reason="byte budget")
                return
        raise StoreFull(f"store full: {self._used} of {budget} bytes are pinned clips "
                        "awaiting sync; nothing may be overwritten")

    # -------------------------------------------------------------------- clips
    def clip_is_open(self, clip_id: str) -> bool:
        row = self.db.execute("SELECT state FROM clips WHERE clip_id=?", (clip_id,)).fetchone()
        return row is not None and row[0] == "open"

    def open_clip(self, *, press_mono_ns: int, started_utc_ns: int, clip_id: str | None = None,
                  start_reason: str = "record_button", incident_id: str | None = None,
                  part: int = 1, previous_clip: str | None = None,
                  pre_record: bool = True, classification: str | None = None,
                  resumed_from: str | None = None) -> str:
        """Pin the pre-record window (by rename) into a new clip and return its id.

        A clip that continues an incident after a file split (``part`` > 1) takes no
        pre-record: its first segment is the one after the previous part's last.
        ``resumed_from`` names the clip an unclean stop interrupted (recording resumed
        by itself at the next start): where that clip's last acknowledged segment ended
        is kept with this clip, so its manifest states the gap between the two.
        """
        # Room for at least one more segment as large as the largest recent one.
        one_segment = self.db.execute(
            "SELECT COALESCE(MAX(size),0) FROM (SELECT size FROM segments ORDER BY seq DESC LIMIT 16)"
        ).fetchone()[0]
        if self.pinned_bytes() + one_segment > self.settings.max_bytes:
            raise StoreFull(f"store full: {self.pinned_bytes()} of {self.settings.max_bytes} bytes "
                            "are clips awaiting sync; cannot start a clip (dock the camera)")
        clip_id = clip_id or f"{self.device.device_id}-{uuid.uuid4().hex[:12]}"
        row = self.db.execute("SELECT state FROM clips WHERE clip_id=?", (clip_id,)).fetchone()
        if row is not None and row[0] != "open":
            raise StoreError(f"clip {clip_id} exists already")
        # An open row is this same open, cut short by an I/O error and asked again: it goes
        # on from where it stopped (the pre-record window only while nothing is pinned yet).
        again = row is not None
        clip_dir = self.clips / clip_id
        resume = self._resume_point(resumed_from) if resumed_from else None
        # Row first, then the directory: recovery closes every open row (creating the
        # directory if the cut came in between), so no clip is ever left half-made.
        if not again:
            # The row comes with its record_start parked in the outbox: a cut before the
            # end of this method still leaves the clip's start in the audit log.
            self._flush_audit_outbox()
            self._tx([("INSERT INTO clips(clip_id, state, officer_id, started_utc_ns, press_mono_ns, "
                       "start_reason, incident_id, part, previous_clip, classification, resume) "
                       "VALUES (?, 'open', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (clip_id, self.officer_id, started_utc_ns, press_mono_ns, start_reason,
                        incident_id or clip_id, part, previous_clip,
                        classification or self.settings.default_classification,
                        json.dumps(resume) if resume else None)),
                      _outbox("record_start", {"clip_id": clip_id, "reason": start_reason,
                                               "incident_id": incident_id or clip_id, "part": part})])
        mkdir_durable(clip_dir)
        # The newest contiguous run of this stream's unpinned segments, back to the first
        # one that reaches the start of the window.
        window_start = press_mono_ns - self.settings.pre_record_ns
        chosen: list[int] = []
        # Asked again, the clip may hold segments already (appended while the move failed):
        # the window is the ring's run just before its first one, if that one does not
        # reach back a whole window by itself.
        first = self.db.execute("SELECT seq, start_mono_ns FROM segments WHERE clip_id=? "
                                "ORDER BY seq LIMIT 1", (clip_id,)).fetchone() if again else None
        if self.settings.pre_record_ns > 0 and pre_record and (first is None or first[1] > window_start):
            rows = self.db.execute(
                "SELECT seq, start_mono_ns, stream_id FROM segments WHERE clip_id IS NULL "
                "AND seq < ? ORDER BY seq DESC", (first[0] if first else 2**62,)).fetchall()
            expect = first[0] - 1 if first else None
            for seq, start, stream in rows:
                if stream != self.stream_id or (expect is not None and seq != expect):
                    break
                chosen.append(seq)
                expect = seq - 1
                if start <= window_start:
                    break
        # Link every one into the clip, fsync it, then unlink them from the ring and fsync
        # that (two fsyncs in all: this runs on the record button's path). A rename would
        # be two directory updates made durable one directory at a time, and a cut between
        # could keep the ring's removal and lose the clip's name (power-cut campaign). A
        # cut part-way leaves each segment in the clip, or in both (recovery drops the
        # ring's extra name), never in neither; one moved by an attempt cut short by an
        # I/O error counts as moved.
        if chosen:
            move_all_durable(self.ring, clip_dir, [seg_name(seq) for seq in sorted(chosen)])
        self._tx_audited([("UPDATE segments SET clip_id=? WHERE seq=?", (clip_id, seq))
                          for seq in chosen],
                         "record_start", dict(clip_id=clip_id, reason=start_reason,
                          incident_id=incident_id or clip_id, part=part,
                          pre_record_segments=len(chosen),
                          first_seq=min(chosen) if chosen else None,
                          **({"resumed_from": resumed_from,
                              "interrupted_last_seq": resume["last_seq"],
                              "interrupted_last_end_utc": resume["last_end_utc"],
                              "gap_to_start_ns": (started_utc_ns - resume["last_end_utc_ns"]
                                                  if resume["last_end_utc_ns"] is not None
                                                  else None)}
                             if resume else {})),
                         replaces_outbox=True)
        return clip_id

    def _resume_point(self, clip_id: str) -> dict:
        """Where the interrupted clip's last acknowledged segment ended (None fields
        when it holds none)."""
        row = self.db.execute("SELECT seq, end_utc_ns, end_mono_ns, stream_id FROM segments "
                              "WHERE clip_id=? ORDER BY seq DESC LIMIT 1", (clip_id,)).fetchone()
        seq, utc, mono, stream = row if row else (None, None, None, None)
        return {"clip_id": clip_id, "last_seq": seq, "last_end_utc_ns": utc,
                "last_end_utc": iso_utc(utc) if utc is not None else None,
                "last_end_mono_ns": mono, "last_stream_id": stream}

    def interrupted_clip(self, clip_id: str | None, incident_id: str | None) -> dict | None:
        """The clip a resumed recording continues: ``clip_id`` if the store has it, else
        the newest part of ``incident_id`` (a cut between a split's close and the next
        part's open); ``{"clip_id", "incident_id", "part"}`` or None."""
        row = self.db.execute("SELECT clip_id, incident_id, part FROM clips WHERE clip_id=?",
                              (clip_id,)).fetchone() if clip_id else None
        if row is None and incident_id:
            row = self.db.execute("SELECT clip_id, incident_id, part FROM clips WHERE "
                                  "incident_id=? ORDER BY part DESC, rowid DESC LIMIT 1",
                                  (incident_id,)).fetchone()
        if row is None:
            return None
        return {"clip_id": row[0], "incident_id": row[1] or row[0], "part": row[2]}

    def add_marker(self, clip_id: str, *, utc_ns: int, mono_ns: int, gps: dict | None,
                   source: str = "function_button") -> None:
        """An officer's event marker: in the clip's manifest, audited; it makes the clip
        evidential when the policy says so (``settings.marker_makes_evidential``)."""
        self._tx_audited([("INSERT INTO markers(clip_id, utc_ns, mono_ns, gps, source) "
                           "VALUES (?,?,?,?,?)",
                           (clip_id, utc_ns, mono_ns, json.dumps(gps) if gps else None, source))],
                         "marker", dict(clip_id=clip_id, utc=iso_utc(utc_ns), gps=gps, source=source))
        if self.settings.marker_makes_evidential and self.clip_is_open(clip_id):
            cls = self.db.execute("SELECT classification FROM clips WHERE clip_id=?",
                                  (clip_id,)).fetchone()[0]
            if cls != "evidential":
                self.set_classification(clip_id, "evidential", reason="event marker")

    def get_setting(self, key: str, default: str | None = None) -> str | None:
        """Device state that must survive a reboot (stealth, officer assignment…)."""
        return self._meta(f"setting:{key}", default)

    def set_setting(self, key: str, value: str) -> None:
        self._tx([("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"setting:{key}", value))])

    def close_clip(self, clip_id: str, *, stop_reason: str, stopped_utc_ns: int | None,
                   notes: list[str] | None = None) -> str:
        """Write the signed manifest durably, then mark the clip closed (idempotent)."""
        row = self.db.execute("SELECT officer_id, started_utc_ns, start_reason, state, manifest_hash, "
                              "incident_id, part, previous_clip, resume FROM clips WHERE clip_id=?",
                              (clip_id,)).fetchone()
        if row is None:
            raise StoreError(f"no clip {clip_id}")
        officer, started_utc, start_reason, state, old_hash, incident, part, previous, resume = row
        if state == "closed":
            return old_hash
        segs = [ClipSegmentRef(*r) for r in self.db.execute(
            "SELECT seq, hash, stream_id, start_mono_ns, end_mono_ns FROM segments "
            "WHERE clip_id=? ORDER BY seq", (clip_id,))]
        if stopped_utc_ns is None:
            last = self.db.execute("SELECT MAX(end_utc_ns) FROM segments WHERE clip_id=?",
                                   (clip_id,)).fetchone()[0]
            stopped_utc_ns = last if last is not None else started_utc
        body = manifest_body(clip_id=clip_id, device_id=self.device.device_id, officer_id=officer,
                             segments=segs, started_utc_ns=started_utc, stopped_utc_ns=stopped_utc_ns,
                             start_reason=start_reason, stop_reason=stop_reason,
                             pre_record_ns=self.settings.pre_record_ns,
                             frame_interval_ns=self.settings.frame_interval_ns,
                             closed_utc_ns=self.clock.utc_ns(), notes=notes or [],
                             incident_id=incident or clip_id, part=part, previous_clip=previous,
                             platform=dict(self.settings.platform) or None,
                             resumed_from=json.loads(resume)["clip_id"] if resume else None,
                             resume_gap=self._resume_gap(clip_id, json.loads(resume))
                             if resume else None,
                             markers=[{"utc": iso_utc(u), "mono_ns": m,
                                       "gps": json.loads(g) if g else None, "source": src}
                                      for u, m, g, src in self.db.execute(
                                          "SELECT utc_ns, mono_ns, gps, source FROM markers "
                                          "WHERE clip_id=? ORDER BY id", (clip_id,))])
        data, mhash = build_manifest(body, self.keys.sign)
        mkdir_durable(self.clips / clip_id)
        write_durable(self.clips / clip_id, MANIFEST_NAME, data)
        self._tx_audited([("UPDATE clips SET state='closed', stopped_utc_ns=?, stop_reason=?, "
                           "manifest_hash=?, manifest_sha256=? WHERE clip_id=?",
                           (stopped_utc_ns, stop_reason, mhash, hashlib.sha256(data).hexdigest(),
                            clip_id))],
                         "record_stop", dict(clip_id=clip_id, reason=stop_reason, segments=len(segs),
                                             manifest_hash=mhash, gaps=len(body["gaps"])))
        return mhash

    def _resume_gap(self, clip_id: str, resume: dict) -> dict:
        """From the interrupted clip's last acknowledged segment end to this clip's first
        segment start. The duration is on the UTC line: the two monotonic values belong
        to different power-ons (streams) and are kept as they were recorded."""
        first = self.db.execute("SELECT seq, start_utc_ns, start_mono_ns, stream_id FROM segments "
                                "WHERE clip_id=? ORDER BY seq LIMIT 1", (clip_id,)).fetchone()
        seq, utc, mono, stream = first if first else (None, None, None, None)
        last_utc = resume.get("last_end_utc_ns")
        return {"after_clip": resume["clip_id"], "after_seq": resume.get("last_seq"),
                "from_utc": resume.get("last_end_utc"), "from_mono_ns": resume.get("last_end_mono_ns"),
                "from_stream_id": resume.get("last_stream_id"),
                "before_seq": seq, "to_utc": iso_utc(utc) if utc is not None else None,
                "to_mono_ns": mono, "to_stream_id": stream,
                "duration_ns": utc - last_utc if utc is not None and last_utc is not None else None,
                "reason": "unclean_stop"}

    # ------------------------------------------------------------- sync's view
    def closed_clips(self) -> list[ClipFiles]:
        """Closed, unreleased clips, oldest first, with the files sync must push."""
        out = []
        for clip_id, started, cls, mhash, msha in self.db.execute(
                "SELECT clip_id, started_utc_ns, classification, manifest_hash, manifest_sha256 "
                "FROM clips WHERE state='closed' ORDER BY started_utc_ns, rowid").fetchall():
            d = self.clips / clip_id
            files = [FileRef(d / seg_name(seq), sha, size) for seq, sha, size in self.db.execute(
                "SELECT seq, file_sha256, size FROM segments WHERE clip_id=? ORDER BY seq",
                (clip_id,))]
            manifest = d / MANIFEST_NAME
            files.append(FileRef(manifest, msha or self._hash_file(manifest),
                                 manifest.stat().st_size if manifest.exists() else 0))
            out.append(ClipFiles(clip_id, started, cls, mhash, files))
        return out

    @staticmethod
    def _hash_file(path: Path) -> str:
        try:
            return hashlib.sha256(path.read_bytes()).hexdigest()
        except FileNotFoundError:
            return ""

    def set_classification(self, clip_id: str, classification: str, *, reason: str) -> None:
        """Evidential or not is decided here (policy, markers, back office), never by sync."""
        if classification not in ("evidential", "non-evidential"):
            raise StoreError(f"classification {classification!r} is not evidential/non-evidential")
        if not self.db.execute("SELECT 1 FROM clips WHERE clip_id=? AND state!='released'",
                               (clip_id,)).fetchone():
            raise StoreError(f"no clip {clip_id} on this device")
        self._tx_audited([("UPDATE clips SET classification=? WHERE clip_id=?",
                           (classification, clip_id))],
                         "classification", dict(clip_id=clip_id, classification=classification,
                                                reason=reason))

    def release_clip(self, clip_id: str, *, target: str, proof: list[dict]) -> None:
        """Free a clip's space once the evidence store has confirmed every file of it.

        ``proof`` holds one entry per file: ``{"name", "key", "size", "sha256", "method"}``
        as the store confirmed it. Buffer checks the proof against the size and SHA-256 it
        recorded when it wrote each file (not against what sync says it read), for every
        file of the clip; anything missing or different refuses the release (DESIGN
        invariant 5). The release and its proof go into the audit log before the durable
        delete intent, and the intent before any unlink.
        """
        row = self.db.execute("SELECT state, manifest_hash FROM clips WHERE clip_id=?",
                              (clip_id,)).fetchone()
        if row is None or row[0] != "closed":
            raise ReleaseRefused(f"clip {clip_id} is {'unknown' if row is None else row[0]}; "
                                 "only a closed clip can be released")
        clip_dir = self.clips / clip_id
        by_name = {p["name"]: p for p in proof}
        expected = [seg_name(s) for s in self.clip_segments(clip_id)] + [MANIFEST_NAME]
        on_disk = sorted(p.name for p in clip_dir.iterdir()) if clip_dir.is_dir() else []
        if sorted(expected) != on_disk:
            raise ReleaseRefused(f"clip {clip_id}: files on disk do not match the index")
        recorded = {seg_name(seq): (sha, size) for seq, sha, size in self.db.execute(
            "SELECT seq, file_sha256, size FROM segments WHERE clip_id=?", (clip_id,))}
        msha = self.db.execute("SELECT manifest_sha256 FROM clips WHERE clip_id=?",
                               (clip_id,)).fetchone()[0]
        recorded[MANIFEST_NAME] = (msha or self._hash_file(clip_dir / MANIFEST_NAME),
                                   (clip_dir / MANIFEST_NAME).stat().st_size)
        for name in expected:
            entry = by_name.get(name)
            if entry is None:
                raise ReleaseRefused(f"clip {clip_id}: no confirmation for {name}")
            sha, size = recorded[name]
            if entry.get("size") != size or entry.get("sha256") != sha:
                raise ReleaseRefused(f"clip {clip_id}: the store's confirmation of {name} does not "
                                     "match the file the device wrote")
        self.audit.append("clip_released", clip_id=clip_id, target=target, manifest_hash=row[1],
                          objects=[{k: by_name[n][k] for k in ("key", "size", "sha256", "method")}
                                   for n in expected])
        self._tx([("INSERT INTO intents(op, seq, path) VALUES ('release', -1, ?)",
                   (f"clips/{clip_id}",))])
        iid = self.db.execute("SELECT MAX(id) FROM intents").fetchone()[0]
        self._finish_release(clip_id, iid)

    def _finish_release(self, clip_id: str, intent_id: int) -> None:
        clip_dir = self.clips / clip_id
        if clip_dir.is_dir():
            for p in sorted(clip_dir.iterdir()):
                os.unlink(p)
            fsync_dir(clip_dir)
            os.rmdir(clip_dir)
            fsync_dir(self.clips)
        self._tx([("DELETE FROM segments WHERE clip_id=?", (clip_id,)),
                  ("UPDATE clips SET state='released' WHERE clip_id=?", (clip_id,)),
                  ("DELETE FROM intents WHERE id=?", (intent_id,))])
        self._used = self.db.execute("SELECT COALESCE(SUM(size),0) FROM segments").fetchone()[0]

    def clip_ids(self, state: str | None = None) -> list[str]:
        q = "SELECT clip_id FROM clips" + (" WHERE state=?" if state else "") + " ORDER BY rowid"
        return [r[0] for r in self.db.execute(q, (state,) if state else ())]

    def clip_segments(self, clip_id: str) -> list[int]:
        return [r[0] for r in self.db.execute(
            "SELECT seq FROM segments WHERE clip_id=? ORDER BY seq", (clip_id,))]

    def ring_seqs(self) -> list[int]:
        return [r[0] for r in self._ring_segments()]

    def abandon(self) -> None:
        """Let go of the store without the clean-shutdown mark (the storage failed under
        us): like a cut, the next open runs recovery."""
        if self._lock_fd < 0:
            return
        try:
            if self.db is not None:
                self.db.close()
        except sqlite3.Error:
            pass
        os.close(self._lock_fd)
        self._lock_fd = -1

    def close(self) -> None:
        """Clean shutdown: recorded so the next start knows nothing was cut."""
        self.audit.append("store_close", head_seq=self.head[0])
        self._tx([("INSERT OR REPLACE INTO meta VALUES ('clean_shutdown', '1')", ())])
        self.db.close()
        os.close(self._lock_fd)
        self._lock_fd = -1
