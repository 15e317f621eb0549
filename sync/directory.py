"""A plain directory as the evidence store: the dock share (the embedded default).

Keys map to files under ``root``. Writes are create-only and durable:

1. the bytes go to a hidden temp file in the destination directory, which is fsynced;
2. ``os.link(tmp, final)`` publishes it: link(2) fails when the name exists, so two
   writers (or a retry racing an earlier attempt) can never overwrite each other, and
   a reader never sees a half-written object under its final name;
3. the temp name is unlinked and the directory fsynced (DESIGN invariant 4).

On filesystems without hard links (FAT/exFAT shares) step 2 falls back to "check the
name is free, then rename": the window between check and rename is open only to a
second writer into the *same device's* prefix, which bwv never runs.

A directory has no object lock. Tags and the legal-hold request are recorded in a
sidecar ``<name>.tags.json`` so the back office can see the classification, but
nothing here *enforces* a hold. Nor can a directory vouch for content: ``stat`` reports
``sha256=None``, so the engine must read every object back (``read_sha256``) before
releasing anything.

The root is never created: if the share is not mounted, writing would fill the
camera's own disk under the mount point. ``probe`` says so instead.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import time
import uuid
from pathlib import Path

from buffer.fsutil import fsync_dir, write_all_fsync, write_durable
from sync.target import (ObjectConflict, ObjectStat, PermanentError, ProbeResult,
                         TargetError, TransientError)

TAGS_SUFFIX = ".tags.json"
TMP_SUFFIX = ".tmp"
READ_CHUNK = 1 << 20
_NO_LINK = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK}
_FULL = {errno.ENOSPC, errno.EDQUOT}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}


class DirectoryTarget:
    """``sync.target.Target`` over a directory tree (a dock share)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.description = f"dir:{self.root}"

    # -- keys and errors -------------------------------------------------------------

    def path_of(self, key: str) -> Path:
        """The file a key names; refuses anything that could escape ``root``."""
        if (not key or key.startswith("/") or "\\" in key or "\x00" in key
                or any(part in ("", ".", "..") for part in key.split("/"))):
            raise ValueError(f"{self.description}: bad object key {key!r} (relative "
                             f"'/'-separated path without '.', '..' or empty parts)")
        name = key.rsplit("/", 1)[-1]
        if name.startswith(".") or name.endswith(TAGS_SUFFIX):
            raise ValueError(f"{self.description}: object key {key!r} uses a name reserved "
                             f"for temp files or tag sidecars")
        return self.root / key

    def _error(self, exc: OSError, op: str, key: str) -> TargetError:
        """Name what a technician should do: full and read-only shares will not heal."""
        where = f"{self.description}: {op} {key}"
        if exc.errno in _FULL:
            return PermanentError(f"{where}: the dock share is full ({exc.strerror}): "
                                  f"free space on it or point bwv at a larger one")
        if exc.errno in _DENIED:
            return PermanentError(f"{where}: cannot write to the dock share "
                                  f"({exc.strerror}): check it is mounted read-write and "
                                  f"owned by the bwv user")
        return TransientError(f"{where}: {exc.strerror or exc}")

    def _require_root(self, op: str, key: str) -> None:
        if not self.root.is_dir():
            raise TransientError(f"{self.description}: {op} {key}: the dock share is not "
                                 f"present (not mounted?)")

    # -- Target ------------------------------------------------------------------------

    def probe(self) -> ProbeResult:
        """The root must be a directory we can create files in (tested by doing it)."""
        t0 = time.monotonic_ns()
        if not self.root.is_dir():
            return ProbeResult(False, None, None, False,
                               detail=f"{self.description}: not a directory (share not mounted?)")
        probe = self.root / f".bwv-probe-{uuid.uuid4().hex}{TMP_SUFFIX}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            err = self._error(exc, "probe", "")
            if isinstance(err, PermanentError):
                raise err from exc
            return ProbeResult(False, None, None, False, detail=str(err))
        return ProbeResult(True, None, time.monotonic_ns() - t0, False,
                           detail="directory target: legal hold is recorded in a sidecar, "
                                  "not enforced; content is verified by reading back")

    def stat(self, key: str) -> ObjectStat | None:
        path = self.path_of(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            self._require_root("stat", key)
            return None
        except OSError as exc:
            raise self._error(exc, "stat", key) from exc
        return ObjectStat(size=st.st_size, sha256=None)

    def read_sha256(self, key: str) -> str | None:
        path = self.path_of(key)
        h = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                while chunk := f.read(READ_CHUNK):
                    h.update(chunk)
        except FileNotFoundError:
            self._require_root("read back", key)
            return None
        except OSError as exc:
            raise self._error(exc, "read back", key) from exc
        return h.hexdigest()

    def get(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError if there is no such key."""
        path = self.path_of(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            self._require_root("get", key)
            raise FileNotFoundError(f"{self.description}: no object {key}") from None
        except OSError as exc:
            raise self._error(exc, "get", key) from exc

    def list(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix``, sorted; temp files and sidecars are not keys."""
        self._require_root("list", prefix)
        base_rel = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root / base_rel if base_rel else self.root
        if not base.is_dir():
            return []
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith(".") or name.endswith(TAGS_SUFFIX):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def put(self, key: str, data: bytes, *, sha256: str, tags: dict[str, str],
            legal_hold: bool = False, replace_corrupt: bool = False) -> None:
        """Create ``key`` durably unless it exists; identical bytes are a no-op.

        ``sha256`` is checked against ``data`` first (ValueError: not the share's
        fault). The sidecar is written before the object, so an object never exists
        without its classification; a sidecar without its object is harmless (the key
        is still missing and will be put again).
        """
        path = self.path_of(key)
        sha256 = sha256.lower()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError(f"{key}: data does not match its sha256 {sha256}; not written")
        self._require_root("put", key)
        try:
            if replace_corrupt and path.exists():
                self._write_sidecar(path, key, tags, legal_hold, sha256, len(data))
                write_durable(path.parent, path.name, data)
                return
            if path.exists():
                self._same_or_conflict(key, path, len(data), sha256)
                self._ensure_sidecar(key, path, tags, legal_hold, sha256, len(data))
                return
            self._mkdirs(path.parent)
            self._write_sidecar(path, key, tags, legal_hold, sha256, len(data))
            created = self._create_only(path, data)
            if not created:  # lost a race: someone else published the name first
                self._same_or_conflict(key, path, len(data), sha256)
                self._ensure_sidecar(key, path, tags, legal_hold, sha256, len(data))
        except OSError as exc:
            raise self._error(exc, "put", key) from exc

    # -- helpers -----------------------------------------------------------------------

    def _same_or_conflict(self, key: str, path: Path, size: int, sha256: str) -> None:
        have_size = path.stat().st_size
        have = self.read_sha256(key) if have_size == size else None
        if have_size != size or have != sha256:
            raise ObjectConflict(f"{self.description}: {key} already holds different "
                                 f"content ({have_size} bytes, sha256 {have or 'not read'}; "
                                 f"ours {size} bytes, sha256 {sha256}); it is never overwritten")

    def _mkdirs(self, directory: Path) -> None:
        """Create missing directories below root, each made durable in its parent."""
        missing = []
        d = directory
        while d != self.root and not d.is_dir():
            missing.append(d)
            d = d.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                if not d.is_dir():
                    raise
            fsync_dir(d.parent)

    def _create_only(self, path: Path, data: bytes) -> bool:
        """Publish ``data`` under ``path`` unless the name exists; False if it did.

        The temp file is removed on every path out, success or failure, so a failed
        put leaves nothing behind but (at most) its harmless sidecar.
        """
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}{TMP_SUFFIX}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            try:
                write_all_fsync(fd, data)
            finally:
                os.close(fd)
            created = self._publish(tmp, path)
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        fsync_dir(path.parent)  # the new name (and the temp's removal) are durable
        return created

    @staticmethod
    def _publish(tmp: Path, path: Path) -> bool:
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            # No hard links here (FAT/exFAT): check, then rename (see module doc).
            if os.path.lexists(path):
                return False
            os.rename(tmp, path)
        return True

    def _sidecar_path(self, path: Path) -> Path:
        return path.parent / f"{path.name}{TAGS_SUFFIX}"

    def _write_sidecar(self, path: Path, key: str, tags: dict[str, str], legal_hold: bool,
                       sha256: str, size: int) -> None:
        record = {"key": key, "size": size, "sha256": sha256, "tags": dict(tags),
                  "legal_hold": bool(legal_hold),
                  "legal_hold_enforced": False}  # a directory has no object lock
        body = (json.dumps(record, sort_keys=True, indent=1) + "\n").encode()
        side = self._sidecar_path(path)
        tmp = side.parent / f".{side.name}.{uuid.uuid4().hex}{TMP_SUFFIX}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            try:
                os.write(fd, body)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, side)  # metadata may be replaced; the object never is
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        fsync_dir(side.parent)

    def _ensure_sidecar(self, key: str, path: Path, tags: dict[str, str], legal_hold: bool,
                        sha256: str, size: int) -> None:
        """Repair a missing sidecar; a legal hold only ever goes on, never off."""
        side = self._sidecar_path(path)
        try:
            old = json.loads(side.read_text())
            if not isinstance(old, dict) or not isinstance(old.get("tags"), dict):
                raise ValueError("not a sidecar record")  # damaged on the share: rewrite it
        except (FileNotFoundError, ValueError, RecursionError):
            self._write_sidecar(path, key, tags, legal_hold, sha256, size)
            return
        if legal_hold and old.get("legal_hold") is not True:  # exactly true, not just truthy
            self._write_sidecar(path, key, old["tags"], True, sha256, size)

    def tags(self, key: str) -> dict[str, object] | None:
        """The sidecar record of a key (tags, legal_hold), or None (for tests/back office)."""
        side = self._sidecar_path(self.path_of(key))
        try:
            return json.loads(side.read_text())
        except FileNotFoundError:
            return None
