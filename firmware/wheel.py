"""Installing a pure-Python wheel into an update slot, every file checked against RECORD.

A slot's ``lib/`` is what ``PYTHONPATH`` points the agent at, so it must hold exactly the
files the signed bundle's wheel lists — no more, no fewer, each with its RECORD hash.
The wheel itself is a payload file whose SHA-256 is in the bundle manifest (which TUF
metadata signs), so the chain from the release key to every ``.py`` the camera imports
is unbroken. pip is not used: it would need network-shaped options to stay offline, it
does not refuse a RECORD mismatch at install time, and it writes files (``INSTALLER``,
``direct_url.json``, scripts) that would then have to be explained away by the
re-verification. Only purelib wheels are accepted (``Root-Is-Purelib: true``, no
``.data`` directory): bwv is pure Python and a slot has no place for scripts or headers.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import stat
import zipfile
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path, PurePosixPath
from typing import Callable

MAX_FILES = 5000
MAX_FILE_BYTES = 64 << 20
_SIGNATURE_FILES = ("RECORD", "RECORD.jws", "RECORD.p7s")  # the only rows without a hash


class WheelError(Exception):
    """A wheel that must not go into a slot, or a slot ``lib/`` that no longer matches its
    wheel; the message names the wheel and the file."""


@dataclass(frozen=True)
class RecordEntry:
    path: str
    sha256: str | None  # hex; None only while parsing RECORD and its signature files
    size: int | None


@dataclass(frozen=True)
class WheelInfo:
    name: str
    version: str
    dist_info: str  # e.g. "bwv-0.2.0.dist-info"
    record: tuple[RecordEntry, ...]  # every file, each with its SHA-256 and size


def _safe_rel(path: str, where: str) -> str:
    if not path or "\\" in path or "\x00" in path or path.startswith("/"):
        raise WheelError(f"{where}: unsafe path {path!r}")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts) or ":" in parts[0]:
        raise WheelError(f"{where}: unsafe path {path!r}")
    return path


def _b64_to_hex(value: str, where: str) -> str:
    algo, _, digest = value.partition("=")
    if algo != "sha256" or not digest:
        raise WheelError(f"{where}: hash {value!r} is not sha256=…")
    try:
        raw = base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4))
    except ValueError:
        raise WheelError(f"{where}: hash {value!r} is not urlsafe base64") from None
    if len(raw) != 32:
        raise WheelError(f"{where}: hash {value!r} is not a SHA-256")
    return raw.hex()


def _parse_record(text: str, dist_info: str, where: str) -> tuple[RecordEntry, ...]:
    entries: list[RecordEntry] = []
    seen: set[str] = set()
    for row in csv.reader(io.StringIO(text)):
        if not row:
            continue
        if len(row) != 3:
            raise WheelError(f"{where}: RECORD row {row!r} does not have 3 fields")
        path, digest, size = row
        _safe_rel(path, f"{where} RECORD")
        if path in seen:
            raise WheelError(f"{where}: RECORD lists {path} twice")
        seen.add(path)
        if not digest:
            if path not in (f"{dist_info}/{n}" for n in _SIGNATURE_FILES):
                raise WheelError(f"{where}: RECORD has no hash for {path}")
            entries.append(RecordEntry(path, None, None))
            continue
        try:
            n = int(size)
        except ValueError:
            raise WheelError(f"{where}: RECORD size {size!r} of {path} is not a number") from None
        entries.append(RecordEntry(path, _b64_to_hex(digest, f"{where} {path}"), n))
    if len(entries) > MAX_FILES:
        raise WheelError(f"{where}: more than {MAX_FILES} files")
    return tuple(entries)


def read_wheel(wheel: Path) -> WheelInfo:
    """Check the wheel's structure and every member against its RECORD, in memory."""
    where = Path(wheel).name
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as exc:
        raise WheelError(f"{where}: not a wheel (zip): {exc}") from None
    with zf:
        return _check_zip(zf, where)


def _check_zip(zf: zipfile.ZipFile, where: str) -> WheelInfo:
    infos = [i for i in zf.infolist() if not i.filename.endswith("/")]
    names = [i.filename for i in infos]
    if len(names) != len(set(names)):
        raise WheelError(f"{where}: a member appears twice")
    dist_infos = {n.split("/", 1)[0] for n in names if n.split("/", 1)[0].endswith(".dist-info")}
    if len(dist_infos) != 1:
        raise WheelError(f"{where}: expected one .dist-info directory, found {sorted(dist_infos)}")
    dist_info = dist_infos.pop()
    if any(n.split("/", 1)[0].endswith(".data") for n in names):
        raise WheelError(f"{where}: has a .data directory (scripts/headers/data); a slot "
                         "takes pure-Python packages only")
    for i in infos:
        _safe_rel(i.filename, where)
        mode = i.external_attr >> 16
        if mode and not (stat.S_ISREG(mode) or mode & 0o170000 == 0):
            raise WheelError(f"{where}: member {i.filename} is not a regular file")
        if i.file_size > MAX_FILE_BYTES:
            raise WheelError(f"{where}: member {i.filename} is larger than {MAX_FILE_BYTES}")
    try:
        wheel_meta = HeaderParser().parsestr(zf.read(f"{dist_info}/WHEEL").decode())
        meta = HeaderParser().parsestr(zf.read(f"{dist_info}/METADATA").decode())
        record_text = zf.read(f"{dist_info}/RECORD").decode()
    except KeyError as exc:
        raise WheelError(f"{where}: {exc.args[0]} is missing") from None
    if wheel_meta.get("Root-Is-Purelib", "").strip().lower() != "true":
        raise WheelError(f"{where}: not a pure-Python wheel (Root-Is-Purelib is not true)")
    name, version = (meta.get("Name") or "").strip(), (meta.get("Version") or "").strip()
    if not name or not version:
        raise WheelError(f"{where}: METADATA has no Name or Version")
    record = _parse_record(record_text, dist_info, where)
    listed = {e.path for e in record}
    unlisted = sorted(set(names) - listed)
    if unlisted:
        raise WheelError(f"{where}: {unlisted[0]} is in the wheel but not in RECORD")
    absent = sorted(listed - set(names))
    if absent:
        raise WheelError(f"{where}: RECORD lists {absent[0]}, which is not in the wheel")
    files = []
    for e in record:
        data = zf.read(e.path)
        digest = hashlib.sha256(data).hexdigest()
        if e.sha256 is None:  # RECORD itself: pinned to the bytes of this (hashed) wheel
            e = RecordEntry(e.path, digest, len(data))
        elif len(data) != e.size or digest != e.sha256:
            raise WheelError(f"{where}: {e.path} does not match its RECORD hash/size")
        files.append(e)
    return WheelInfo(name, version, dist_info, tuple(files))


def _write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def install_wheel(wheel: Path, lib: Path, *, on_file: Callable[[str], None] | None = None) -> WheelInfo:
    """Unpack ``wheel`` into ``lib`` (created if absent; must not already hold its files).
    Each member is checked against RECORD before it is written, written exclusively and
    fsynced; every directory touched is fsynced at the end."""
    where = Path(wheel).name
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as exc:
        raise WheelError(f"{where}: not a wheel (zip): {exc}") from None
    lib = Path(lib)
    lib.mkdir(parents=True, exist_ok=True)
    dirs: set[Path] = {lib}
    with zf:
        info = _check_zip(zf, where)
        for e in info.record:
            target = lib.joinpath(*PurePosixPath(e.path).parts)
            parent = target.parent
            if not parent.exists():
                parent.mkdir(parents=True)
            p = parent
            while p != lib:
                dirs.add(p)
                p = p.parent
            data = zf.read(e.path)
            if hashlib.sha256(data).hexdigest() != e.sha256:
                raise WheelError(f"{where}: {e.path} changed while reading the wheel")
            _write_file(target, data)
            if on_file:
                on_file(e.path)
    for d in sorted(dirs, key=lambda x: -len(x.parts)):
        _fsync_dir(d)
    return info


def _drop_cache(fd: int) -> None:
    """Ask the kernel to forget the clean pages, so the read-back hashes what is on the
    medium rather than what we just wrote into memory (best effort)."""
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except (AttributeError, OSError):
        pass


def sha256_file(path: Path, *, from_medium: bool = False) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        if from_medium:
            _drop_cache(fd)
        while chunk := os.read(fd, 1 << 16):
            h.update(chunk)
            n += len(chunk)
    finally:
        os.close(fd)
    return h.hexdigest(), n


def verify_installed(info: WheelInfo, lib: Path, *, from_medium: bool = False) -> list[str]:
    """Problems with ``lib`` against the wheel's RECORD (empty = every file present with
    its hash and size). Files that belong to no wheel are checked by the caller, who
    knows every wheel of the slot."""
    problems = []
    for e in info.record:
        path = Path(lib).joinpath(*PurePosixPath(e.path).parts)
        if path.is_symlink() or not path.is_file():
            problems.append(f"lib/{e.path}: missing")
            continue
        digest, n = sha256_file(path, from_medium=from_medium)
        if digest != e.sha256 or n != e.size:
            problems.append(f"lib/{e.path}: SHA-256 or size differs from the wheel's RECORD")
    return problems
