"""Dock sync: push every closed clip to the evidence store, prove it arrived, then release.

The rule this module exists to keep (DESIGN invariant 5): a clip leaves the device only
after the evidence store has confirmed *every* object of it by its SHA-256. A store that
answers "200 OK" proves nothing; only a matching checksum reported by the store (S3
additional checksums) or a read-back hash does. The release itself is buffer's
decision: sync hands over the proof and buffer checks it against the files once more.

Order: oldest clip first (evidential clips first when configured); within a clip the
segments in sequence order and the manifest last, so a store that has a manifest has
all it names. Sending and proving overlap: while object *i+1* is being sent, a second
thread proves object *i* (asks the store for its checksum or reads it back, checks the
local bytes against the SHA-256 buffer recorded when it wrote the file) and commits the
confirmation. Every send is recorded as an attempt first, so after a cut an object
already sent is found in the store (not sent again): at most the object in flight is
re-sent. The clip is released only after all its confirmations are in.

What sync does not do: decide what is evidence. Classification comes from the store
(policy, markers, the back office) and is only copied into object tags and legal holds.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import re
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from buffer.store import ClipFiles, FileRef, ReleaseRefused
from drivers.clock import Clock
from sync.state import Confirmation, SyncState
from sync.target import ObjectConflict, PermanentError, Target, TargetError, TransientError

log = logging.getLogger("bwv.sync")


def event(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields) -> None:
    """Structured log line (the JSON formatter reads ``fields``)."""
    logger.log(level, msg, extra={"fields": fields})


#: Proofs run beside the sends: a few at once, and a bounded number of sent-but-unproven
#: objects (each held in memory until proven, for a possible re-send).
PROVERS = 3
MAX_UNPROVEN = 4
#: What the device's own storage raises through a read of a sealed file, the store's
#: index or sync's state (campaign_readerrors: a card that answers EIO).
LOCAL_STORAGE_ERRORS: tuple[type[BaseException], ...] = (OSError, sqlite3.Error)


class SyncStopped(Exception):
    """Undocked (or asked to stop) between two objects; nothing is half-confirmed."""


class NotConfirmed(TargetError):
    """The store accepted an object but cannot show the right bytes: never released."""


class StoreAccess(Protocol):
    """What sync may ask of the device's store (buffer owns it; sync only reads and asks)."""

    def closed_clips(self) -> list[ClipFiles]: ...
    def release_clip(self, clip_id: str, *, target: str, proof: list[dict]) -> None: ...
    def audit(self, event: str, **data) -> None: ...
    def audit_log(self) -> Path: ...
    def device_record(self) -> bytes: ...


@dataclass(frozen=True)
class SyncSettings:
    device_id: str
    verify: str = "checksum"  # or "read-back": hash a GET of every object
    evidential_first: bool = True
    correct_clock: bool = True
    clock_alarm_ns: int = 10 * 10**9

    @property
    def prefix(self) -> str:
        return f"devices/{self.device_id}/"


@dataclass
class ClipProgress:
    clip_id: str
    classification: str
    objects_total: int
    objects_confirmed: int = 0
    bytes_total: int = 0
    bytes_confirmed: int = 0
    state: str = "pending"  # pending | sending | released | failed


@dataclass
class SyncReport:
    status: str = "running"  # complete | interrupted | unreachable | fault | stopped
    target: str = ""
    clips: list[ClipProgress] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    objects_sent: int = 0
    bytes_sent: int = 0
    objects_already_there: int = 0
    clock_offset_ns: int | None = None
    assignment: dict | None = None  # the officer assignment the store holds for this camera
    message: str = ""

    def as_dict(self) -> dict:
        return {**{k: v for k, v in self.__dict__.items() if k != "clips"},
                "clips": [c.__dict__ for c in self.clips]}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_assignment(raw: bytes) -> dict[str, str]:
    """``assignment.json`` from the evidence store → {"officer_id", "by"}; ValueError
    (with a message) for anything else. The store is outside the camera: any bytes may
    come back, a nesting bomb included (fuzz target `assignment`)."""
    try:
        doc = json.loads(raw)
    except RecursionError:
        raise ValueError("assignment is not JSON (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"assignment is not JSON ({exc})") from None
    if not isinstance(doc, dict) or "officer_id" not in doc:
        raise ValueError("assignment is not an object with an officer_id")
    officer = doc["officer_id"]
    if not isinstance(officer, str) or not re.fullmatch(r"[A-Za-z0-9._ -]{1,64}", officer):
        raise ValueError(f"officer id {repr(officer)[:80]} is not 1-64 plain characters")
    return {"officer_id": officer, "by": str(doc.get("by", "evidence store"))}


class SyncEngine:
    def __init__(self, *, store: StoreAccess, target: Target, state: SyncState, clock: Clock,
                 settings: SyncSettings, stop: threading.Event | None = None,
                 progress: Callable[[SyncReport], None] | None = None) -> None:
        self.store = store
        self.target = target
        self.state = state
        self.clock = clock
        self.settings = settings
        self.stop = stop or threading.Event()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._inflight = threading.BoundedSemaphore(MAX_UNPROVEN)
        self.progress = progress
        self.report = SyncReport(target=target.description)

    # ------------------------------------------------------------------- steps
    def run(self) -> SyncReport:
        rep = self.report
        try:
            self.state.set_meta(last_run_started_utc_ns=str(self.clock.utc_ns()), last_status="running")
            probe = self.target.probe()
            if not probe.reachable:
                rep.status, rep.message = "unreachable", probe.detail
                return rep
            self._time_check(probe)
            self._fetch_assignment()
            self._push_object(self.settings.prefix + "device.json", self.store.device_record(),
                              tags={"bwv-device": self.settings.device_id}, legal_hold=False)
            clips = self.store.closed_clips()
            if self.settings.evidential_first:
                clips.sort(key=lambda c: (c.classification != "evidential", c.started_utc_ns))
            rep.clips = [ClipProgress(c.clip_id, c.classification, len(c.files),
                                      bytes_total=sum(f.size for f in c.files))
                         for c in clips]
            with concurrent.futures.ThreadPoolExecutor(PROVERS, thread_name_prefix="bwv-prove") as pool:
                self._pool = pool
                for clip, prog in zip(clips, rep.clips):
                    self._sync_clip(clip, prog)
            self._pool = None
            self._push_audit_log()
            rep.status = "complete" if not rep.failures else "fault"
        except SyncStopped:
            rep.status, rep.message = "stopped", "undocked or stopped; the next dock resumes"
        except PermanentError as exc:
            rep.status, rep.message = "fault", str(exc)
            self.store.audit("fault", kind="sync_permanent", message=str(exc),
                             target=self.target.description)
        except TransientError as exc:
            rep.status, rep.message = "interrupted", str(exc)
        except LOCAL_STORAGE_ERRORS as exc:
            # The device's own card failed (a bad sector answers a read with EIO): the
            # targets turn their own I/O errors into TargetError, so this is local. No
            # clip whose file could not be read was released; the round is retried like
            # an interrupted one (a glitch heals; a bad sector stays a sync fault).
            rep.status = "interrupted"
            rep.message = f"the device's storage failed: {type(exc).__name__}: {exc}"
            self._audit_quietly("fault", kind="sync_local_storage", message=rep.message)
        finally:
            try:
                self.state.set_meta(last_status=rep.status, last_message=rep.message,
                                    last_run_ended_utc_ns=str(self.clock.utc_ns()))
                self._report_progress()
            except LOCAL_STORAGE_ERRORS:  # sync's memory is on the failing card too
                pass
            event(log, "sync run ended", level=logging.INFO if rep.status == "complete"
                  else logging.WARNING, status=rep.status, released=len(rep.released),
                  failures=rep.failures, message=rep.message)
        return rep

    def _audit_quietly(self, event_name: str, **data) -> None:
        """Audit a sync fault; an audit write that fails on the same card is the storage
        fault's own business (the agent's guard), never a crash of the sync."""
        try:
            self.store.audit(event_name, **data)
        except LOCAL_STORAGE_ERRORS as exc:
            event(log, "could not audit a sync fault", level=logging.ERROR, error=str(exc),
                  audit_event=event_name, **data)

    def _fetch_assignment(self) -> None:
        """The back office assigns cameras to officers by writing
        ``devices/<id>/assignment.json`` ({"officer_id": …, "by": …}) in the evidence store;
        a docked camera picks it up (the caller applies and audits it)."""
        try:
            raw = self.target.get(self.settings.prefix + "assignment.json")
        except FileNotFoundError:
            return
        try:
            self.report.assignment = parse_assignment(raw)
        except ValueError as exc:
            self.store.audit("fault", kind="assignment_invalid", message=str(exc))

    def _time_check(self, probe) -> None:
        """Clock offset against the store's HTTP Date (1 s resolution), audited."""
        if probe.server_utc_ns is None:
            return
        rtt = probe.rtt_ns or 0
        # The Date header truncates to the second: the server's time was in [D, D + 1 s).
        # Our estimate is its middle, compared with the middle of our request.
        local_mid = self.clock.utc_ns() - rtt // 2
        offset = probe.server_utc_ns + 500_000_000 - local_mid
        uncertainty = 500_000_000 + rtt // 2
        corrected = False
        if self.settings.correct_clock and abs(offset) > uncertainty:
            corrected = self.clock.correct(offset, source="evidence-store-http-date")
        self.report.clock_offset_ns = offset
        self.store.audit("clock_offset", offset_ns=offset, uncertainty_ns=uncertainty,
                         source="http-date", target=self.target.description, corrected=corrected)
        if abs(offset) > self.settings.clock_alarm_ns:
            self.store.audit("alarm", kind="clock_offset_large", offset_ns=offset)
            event(log, "large clock offset", level=logging.ERROR, offset_ns=offset)

    def _sync_clip(self, clip: ClipFiles, prog: ClipProgress) -> None:
        prefix = f"{self.settings.prefix}clips/{clip.clip_id}/"
        tags = {"bwv-classification": clip.classification, "bwv-device": self.settings.device_id,
                "bwv-clip": clip.clip_id}
        prog.state = "sending"
        pending: list[concurrent.futures.Future] = []

        def confirmed(fut: concurrent.futures.Future, size: int) -> None:
            if not fut.exception():
                prog.objects_confirmed += 1
                prog.bytes_confirmed += size
        try:
            try:
                for f in clip.files:
                    fut = self._push_file(prefix + f.name, f, tags=tags,
                                          legal_hold=clip.classification == "evidential")
                    fut.add_done_callback(lambda fu, size=f.size: confirmed(fu, size))
                    pending.append(fut)
                    self._report_progress()
            finally:
                # Never leave a proof in flight: every started confirmation is waited for
                # (and committed) before anything else happens, stop or not.
                concurrent.futures.wait(pending)
            confs = [fut.result() for fut in pending]
            self._report_progress()
            proof = [{"name": f.name, "key": c.key, "size": c.size, "sha256": c.sha256,
                      "method": c.method} for f, c in zip(clip.files, confs)]
            self.store.release_clip(clip.clip_id, target=self.target.description, proof=proof)
        except (NotConfirmed, ObjectConflict, ReleaseRefused) as exc:
            prog.state = "failed"
            msg = f"clip {clip.clip_id}: {exc}"
            self.report.failures.append(msg)
            self.store.audit("fault", kind="sync_not_confirmed", clip_id=clip.clip_id, message=str(exc))
            event(log, "clip not released", level=logging.ERROR, clip_id=clip.clip_id, error=str(exc))
            return
        prog.state = "released"
        self.report.released.append(clip.clip_id)
        self.state.forget_prefix(prefix)
        event(log, "clip released", clip_id=clip.clip_id, objects=len(confs))

    def _push_file(self, key: str, f: FileRef, *, tags: dict[str, str],
                   legal_hold: bool) -> concurrent.futures.Future:
        """Send one file of a clip now; prove it on the confirmation thread."""
        done: concurrent.futures.Future = concurrent.futures.Future()
        known = self.state.confirmed(key, f.sha256)
        if known:
            done.set_result(known)
            return done
        if self.stop.is_set():
            raise SyncStopped()
        data = f.path.read_bytes()
        try:
            ours = self._send_if_needed(key, data, f.sha256, tags, legal_hold)
        except ValueError as exc:  # a target that checks the bytes against the checksum
            raise NotConfirmed(f"{key}: {exc} (local storage damage?)") from None

        def prove() -> Confirmation:
            try:
                # The local bytes must be what buffer wrote: a file damaged on the device
                # after sealing is never passed off as the evidence (nor released).
                if hashlib.sha256(data).hexdigest() != f.sha256:
                    raise NotConfirmed(f"{key}: the file on the device no longer matches the "
                                       "SHA-256 recorded when it was sealed (local storage damage)")
                return self._confirm_or_resend(key, data, f.sha256, tags, legal_hold, ours)
            finally:
                self._inflight.release()
        self._inflight.acquire()  # bounded: at most MAX_UNPROVEN objects held in memory
        return self._pool.submit(prove)

    def _push_audit_log(self) -> None:
        """The audit log goes up in chunks of whole records, each chunk named by the record
        range it holds, so the back office can rebuild and verify the chain."""
        data = self.store.audit_log().read_bytes()
        done = int(self.state.meta("audit_uploaded_bytes", "0"))
        if done > len(data):
            done = 0  # a different log (re-provisioned device): start over, never skip
        chunk = data[done:data.rfind(b"\n") + 1]
        if not chunk:
            return
        first = data[:done].count(b"\n")
        last = first + chunk.count(b"\n") - 1
        key = f"{self.settings.prefix}audit/{first:010d}-{last:010d}.log"
        self._push_object(key, chunk, tags={"bwv-device": self.settings.device_id,
                                            "bwv-classification": "evidential"}, legal_hold=False)
        self.state.set_meta(audit_uploaded_bytes=str(done + len(chunk)))

    # ------------------------------------------------------------ one object
    def _push_object(self, key: str, data: bytes, *, tags: dict[str, str],
                     legal_hold: bool) -> Confirmation:
        """Send and prove one small object (device record, audit chunk) synchronously."""
        sha = sha256_hex(data)
        known = self.state.confirmed(key, sha)
        if known:
            return known
        if self.stop.is_set():
            raise SyncStopped()
        ours = self._send_if_needed(key, data, sha, tags, legal_hold)
        return self._confirm_or_resend(key, data, sha, tags, legal_hold, ours)

    def _send_if_needed(self, key: str, data: bytes, sha: str, tags: dict[str, str],
                        legal_hold: bool) -> bool:
        """Put the object unless the store has it from before a cut; returns whether the
        key holds (or held) our own upload of exactly these bytes."""
        ours = self.state.attempted(key) == sha
        if not ours:
            # First time for this key: create-only put (the store refuses to replace
            # anything; identical bytes already there are accepted as ours).
            self._send(key, data, sha, tags, legal_hold)
            return True
        stat = self.target.stat(key)  # sent before a cut: look before sending again
        if stat is None:
            self._send(key, data, sha, tags, legal_hold)
        elif stat.size == len(data) and stat.sha256 in (sha, None):
            self.report.objects_already_there += 1  # not sent again
        else:
            self._send(key, data, sha, tags, legal_hold, replace_corrupt=True)
        return True

    def _confirm_or_resend(self, key: str, data: bytes, sha: str, tags: dict[str, str],
                           legal_hold: bool, ours: bool) -> Confirmation:
        try:
            conf = self._confirm(key, sha, len(data))
        except NotConfirmed as first:
            if not ours:
                raise
            # The store corrupted or lost *our own* upload of these bytes: send once more
            # (a new version on S3); a second failure stands and the clip stays here.
            event(log, "store did not hold our upload intact; sending again", level=logging.WARNING,
                  key=key, error=str(first))
            self.store.audit("fault", kind="sync_store_corrupted_upload", key=key, message=str(first))
            self._send(key, data, sha, tags, legal_hold, replace_corrupt=True)
            conf = self._confirm(key, sha, len(data))
        self.state.confirm(conf, self.clock.utc_ns())
        return conf

    def _send(self, key: str, data: bytes, sha: str, tags: dict[str, str], legal_hold: bool,
              replace_corrupt: bool = False) -> None:
        self.state.attempt(key, sha, self.clock.utc_ns())
        self.target.put(key, data, sha256=sha, tags=tags, legal_hold=legal_hold,
                        replace_corrupt=replace_corrupt)
        self.report.objects_sent += 1
        self.report.bytes_sent += len(data)

    def _confirm(self, key: str, sha: str, size: int) -> Confirmation:
        """Proof that the store holds exactly these bytes, or NotConfirmed."""
        if self.settings.verify == "checksum":
            stat = self.target.stat(key)
            if stat is None:
                raise NotConfirmed(f"{key}: the store answered success but has no such object")
            if stat.size != size:
                raise NotConfirmed(f"{key}: the store holds {stat.size} bytes, {size} were sent")
            if stat.sha256 is not None:
                if stat.sha256 != sha:
                    raise NotConfirmed(f"{key}: the store's SHA-256 {stat.sha256[:16]}… is not "
                                       f"the sent {sha[:16]}…")
                return Confirmation(key, sha, size, "checksum")
        got = self.target.read_sha256(key)  # read-back: the store cannot vouch, we look
        if got is None:
            raise NotConfirmed(f"{key}: the store answered success but has no such object")
        if got != sha:
            raise NotConfirmed(f"{key}: read back {got[:16]}…, sent {sha[:16]}…")
        return Confirmation(key, sha, size, "read-back")

    def _report_progress(self) -> None:
        total = sum(c.bytes_total for c in self.report.clips)
        done = sum(c.bytes_confirmed for c in self.report.clips)
        self.state.set_meta(progress_bytes_total=str(total), progress_bytes_done=str(done),
                            progress_clips_total=str(len(self.report.clips)),
                            progress_clips_released=str(len(self.report.released)))
        if self.progress:
            self.progress(self.report)


def run_with_retries(make_engine: Callable[[], SyncEngine], *, stop: threading.Event,
                     max_rounds: int = 5, base_s: float = 1.0, max_s: float = 30.0,
                     rng: Callable[[], float] | None = None) -> SyncReport:
    """Rounds of sync while docked: an interrupted round is tried again after bounded
    exponential backoff with full jitter; a fault or an undock ends it."""
    import random
    rng = rng or random.random
    report = SyncReport(status="interrupted")
    for attempt in range(max_rounds):
        report = make_engine().run()
        if report.status != "interrupted" or stop.is_set():
            return report
        delay = rng() * min(max_s, base_s * 2 ** attempt)
        if stop.wait(delay):  # undocked while waiting
            report.status = "stopped"
            return report
    return report
