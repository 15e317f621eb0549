"""The append-only, hash-chained, signed audit log (DESIGN invariant 6).

One record a line::

    <body JSON>\\t<base64 Ed25519 signature>\\n

The signature covers ``b"bwv-audit/1\\n" + body`` (the exact bytes on the line). A
record's hash is SHA-256 of the line without its newline; each body names the previous
record's hash in ``prev``, so deleting, inserting or editing a line breaks the chain.
Records are fsynced one by one: audit events are rare and each one matters.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from buffer.envelope import canonical_json
from buffer.fsutil import fsync_dir
from drivers.clock import Clock, iso_utc

AUDIT_DOMAIN = b"bwv-audit/1\n"
GENESIS = "0" * 64
#: The largest seq a record can hold (an SQLite/int64 counter; a device appending one
#: record a nanosecond would take centuries). A line claiming more is damaged: a
#: 4300-digit seq parses, but seq + 1 can no longer be written as JSON.
MAX_SEQ = 2**63 - 1


class AuditError(Exception):
    """The audit log cannot be read or appended; the message names the line."""


@dataclass(frozen=True)
class AuditRecord:
    body: dict
    hash: str


def _parse_line(line: bytes, lineno: int) -> tuple[bytes, bytes]:
    if b"\t" not in line:
        raise AuditError(f"audit line {lineno}: no signature field")
    body, sig_b64 = line.rsplit(b"\t", 1)
    try:
        sig = base64.b64decode(sig_b64, validate=True)
    except ValueError:
        raise AuditError(f"audit line {lineno}: signature is not base64") from None
    # Only the one canonical spelling: base64 ignores the unused low bits of the last
    # character, so "…Cg==" and "…Co==" decode alike; accepting both would let a byte
    # of the last record change without any check noticing (its hash is the chain's
    # only other witness, and nothing follows the last line).
    if len(sig) != 64 or base64.b64encode(sig) != sig_b64:
        raise AuditError(f"audit line {lineno}: signature is not the canonical base64 "
                         "of 64 bytes")
    return body, sig


def _seq_of(body: bytes) -> int:
    """The ``seq`` of a record body. Any bytes may sit on a damaged line (``1e400``, a
    nesting bomb, a list): all of it is an AuditError, never another exception."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise AuditError(f"record body is not JSON ({type(exc).__name__})") from None
    seq = obj.get("seq") if isinstance(obj, dict) else None
    if not _is_seq(seq):
        raise AuditError(f"record seq {repr(seq)[:40]} is not a sequence number "
                         f"(an integer, 0 to {MAX_SEQ})")
    return seq


def _is_seq(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEQ


class AuditLog:
    """Appends signed records; repairs a torn last line left by a power cut."""

    def __init__(self, path: Path, *, device_id: str, sign: Callable[[bytes], bytes],
                 clock: Clock) -> None:
        self.path = Path(path)
        self._device_id = device_id
        self._sign = sign
        self._clock = clock
        self._seq, self._prev = -1, GENESIS
        self.repaired_bytes = 0
        self.damaged_tail = False
        self._resync = False
        self._recover_tail()

    def _recover_tail(self) -> None:
        if not self.path.exists():
            self.path.touch(mode=0o640)
            fsync_dir(self.path.parent)
            return
        data = self.path.read_bytes()
        keep = data.rfind(b"\n") + 1  # a line without its newline was never acknowledged
        # A record is ASCII JSON, a tab and base64: it never holds a NUL. A last line that
        # does is an append the cut tore (its newline's page reached the disk, another
        # page of it did not and reads as zeros): never acknowledged either, so it goes
        # too. (Only the last line: each append is fsynced before the next one starts.)
        start = data.rfind(b"\n", 0, max(keep - 1, 0)) + 1
        if keep and b"\x00" in data[start:keep]:
            keep = start
        if keep < len(data):
            self.repaired_bytes = len(data) - keep
            with open(self.path, "r+b") as f:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
        if keep:
            last = data[:keep - 1].rsplit(b"\n", 1)[-1]
            self._prev = hashlib.sha256(last).hexdigest()
            try:
                body, _ = _parse_line(last, -1)
                self._seq = _seq_of(body)
            except AuditError:
                # A damaged last record must not keep the camera from starting: the chain
                # goes on from the damaged line's hash, so the damage stays visible to
                # verify (named there), and the store records it as a fault.
                self.damaged_tail = True
                self._seq = data[:keep].count(b"\n") - 1

    @property
    def head(self) -> tuple[int, str]:
        return self._seq, self._prev

    def last_record(self) -> dict | None:
        """The body of the last whole record in the file (None: no record, or not
        readable as one). Tells a caller whether an append it could not confirm (a cut
        between it and what followed) reached the log."""
        try:
            with open(self.path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 65536))
                tail = f.read()
        except OSError:
            return None
        end = tail.rfind(b"\n")
        if end < 0:
            return None
        try:
            body, _ = _parse_line(tail[:end].rsplit(b"\n", 1)[-1], -1)
            obj = json.loads(body)
        except (AuditError, ValueError, RecursionError):
            return None
        return obj if isinstance(obj, dict) else None

    def append(self, event: str, **data) -> AuditRecord:
        if self._resync:
            self._seq, self._prev = -1, GENESIS
            self._recover_tail()
            self._resync = False
        body = {
            "seq": self._seq + 1,
            "device_id": self._device_id,
            "utc": iso_utc(self._clock.utc_ns()),
            "mono_ns": self._clock.monotonic_ns(),
            "clock_synced": self._clock.state().synced,
            "event": event,
            "data": data,
            "prev": self._prev,
        }
        body_bytes = canonical_json(body)
        sig = self._sign(AUDIT_DOMAIN + body_bytes)
        line = body_bytes + b"\t" + base64.b64encode(sig)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line + b"\n")
            os.fsync(fd)
        except OSError:
            # The line may be in the file without its fsync (or part of it): the next
            # append first reads back where the log really ends, so the chain never
            # repeats a seq or skips a line that is there.
            self._resync = True
            raise
        finally:
            os.close(fd)
        self._seq += 1
        self._prev = hashlib.sha256(line).hexdigest()
        return AuditRecord(body, self._prev)


def verify_audit(path: Path, verify_sig: Callable[[bytes, bytes], bool],
                 device_id: str) -> tuple[int, list[str]]:
    """Check every line; returns (records read, problems). Never raises on bad content."""
    problems: list[str] = []
    prev, expect_seq, count = GENESIS, 0, 0
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return 0, [f"audit log unreadable: {exc}"]
    if data and not data.endswith(b"\n"):
        problems.append("audit log: last line is incomplete (torn write not yet repaired)")
    for lineno, line in enumerate(data.split(b"\n")[:-1], start=1):
        count += 1
        try:
            body_bytes, sig = _parse_line(line, lineno)
            body = json.loads(body_bytes)
            if not isinstance(body, dict):
                raise AuditError("body is not a JSON object")
        except (AuditError, ValueError, RecursionError) as exc:
            problems.append(f"audit line {lineno}: malformed ({exc})")
            prev = hashlib.sha256(line).hexdigest()
            continue
        if not verify_sig(sig, AUDIT_DOMAIN + body_bytes):
            problems.append(f"audit line {lineno}: SignatureInvalid")
        if body.get("device_id") != device_id:
            problems.append(f"audit line {lineno}: WrongDevice ({body.get('device_id')!r})")
        if body.get("prev") != prev:
            problems.append(f"audit line {lineno}: ChainBroken (prev does not match line {lineno - 1})")
        if body.get("seq") != expect_seq:
            problems.append(f"audit line {lineno}: SequenceMismatch (seq {body.get('seq')}, expected {expect_seq})")
        # a seq out of range (4300 digits) is named above; counting on from it would
        # make the next line's message unprintable
        expect_seq = (body.get("seq") if _is_seq(body.get("seq")) else expect_seq) + 1
        prev = hashlib.sha256(line).hexdigest()
    return count, problems


def read_events(path: Path) -> list[dict]:
    """Bodies of the well-formed records (for cross-checks); damaged lines are skipped —
    ``verify_audit`` is what names them."""
    out = []
    try:
        data = Path(path).read_bytes()
    except OSError:
        return out
    for line in data.split(b"\n"):
        if b"\t" not in line:
            continue
        try:
            body = json.loads(line.rsplit(b"\t", 1)[0])
        except (ValueError, RecursionError):
            continue
        if isinstance(body, dict):
            out.append(body)
    return out
