"""The firmware bundle (format ``bwv-firmware-bundle/1``): one plain tar a technician or
the dock carries to a camera.

A bundle is *content*; whether it may be installed is decided by TUF metadata signed in
the back office (``firmware/release.py``, checked on the device by
``sync/firmware_fetch.py``). The manifest inside repeats what matters for installing
(version, hardware, minimum version, payload hashes) so a bundle that arrives with
valid metadata is still re-checked file by file before and after it is written into a
slot: the bytes a slot boots from are exactly the bytes that were signed.

The reader is strict on purpose. A tar is a hostile input (path traversal, links,
devices, duplicate names, members larger than announced): only regular files named in
``bundle.json`` are accepted, each exactly once, each with the announced length and
SHA-256. Layout and fields: docs/FORMAT.md, "Firmware bundle and update metadata".
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from sync.untrusted_tar import TAR_FAILURES, open_untrusted_tar

FORMAT = "bwv-firmware-bundle/1"
MANIFEST_NAME = "bundle.json"
BUNDLE_SUFFIX = ".tar"
#: Hardware ids a bundle may name (``hardware_id`` maps a board to one of these).
HARDWARE_IDS = ("sim", "pi-zero-2-w", "pi-4", "pi-5", "cm4", "cm5")
MAX_MANIFEST_BYTES = 1 << 20
MAX_PAYLOAD_FILES = 1000
_CHUNK = 1 << 16
_VERSION_RE = re.compile(r"(0|[1-9][0-9]{0,8})(\.(0|[1-9][0-9]{0,8})){0,3}")
_UTC_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_MANIFEST_KEYS = {"format", "version", "hardware", "min_version", "created_utc", "payload"}
_PAYLOAD_KEYS = {"path", "sha256", "length"}


class BundleError(ValueError):
    """A bundle that must not be installed. It is a ``ValueError`` because that is how a
    policy reports a rejection to ``sync.firmware_fetch``, which may not import firmware.
    ``reason`` is a stable code for callers and tests (``malformed``, ``unsafe-member``,
    ``missing-file``, ``unlisted-file``, ``length-mismatch``, ``hash-mismatch``,
    ``other-hardware``, ``not-newer``, ``below-min-version``, ``bad-version``,
    ``unknown-hardware``); the message names the file and the check."""

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class PayloadFile:
    path: str
    sha256: str
    length: int


@dataclass(frozen=True)
class BundleManifest:
    version: str
    hardware: tuple[str, ...]
    min_version: str
    payload: tuple[PayloadFile, ...]
    created_utc: str

    def as_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": self.version, "hardware": list(self.hardware),
                "min_version": self.min_version, "created_utc": self.created_utc,
                "payload": [{"path": p.path, "sha256": p.sha256, "length": p.length}
                            for p in self.payload]}

    def to_json(self) -> bytes:
        return (json.dumps(self.as_dict(), indent=2, sort_keys=True) + "\n").encode()

    def file(self, path: str) -> PayloadFile | None:
        return next((p for p in self.payload if p.path == path), None)


# ---------------------------------------------------------------------------- versions

def parse_version(v: str) -> tuple[int, ...]:
    """Dotted numeric, 1–4 parts, no leading zeros, no suffixes: ``0.1.0``, ``2.10``.
    Anything else (``1.0rc1``, ``0+source``, ``01.2``) is refused: an ordering that has
    to guess is an ordering an attacker can bend."""
    if not isinstance(v, str) or not _VERSION_RE.fullmatch(v):
        raise BundleError(f"version {v!r} is not a dotted numeric version like 1.2.3",
                          "bad-version")
    return tuple(int(x) for x in v.split("."))


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as ``a`` is older than, equal to or newer than ``b``; missing trailing
    parts count as 0 (``1.2`` == ``1.2.0``)."""
    pa, pb = parse_version(a), parse_version(b)
    n = max(len(pa), len(pb))
    pa, pb = pa + (0,) * (n - len(pa)), pb + (0,) * (n - len(pb))
    return (pa > pb) - (pa < pb)


# ---------------------------------------------------------------------------- hardware

_BOARDS = (  # device-tree model prefix → hardware id (the most specific first)
    ("Raspberry Pi Zero 2 W", "pi-zero-2-w"),
    ("Raspberry Pi Compute Module 4", "cm4"),
    ("Raspberry Pi Compute Module 5", "cm5"),
    ("Raspberry Pi 4 Model B", "pi-4"),
    ("Raspberry Pi 5 Model B", "pi-5"),
)


def hardware_id(platform_info: Any) -> str:
    """The bundle hardware id of the board we run on, from ``firmware.platform``'s
    ``PlatformInfo`` (its ``platform`` and device-tree ``board_model``). A board not in
    the list is refused rather than guessed: installing firmware built for another board
    is how a camera is bricked in the field."""
    platform = getattr(platform_info, "platform", None)
    if platform == "sim":
        return "sim"
    model = getattr(platform_info, "board_model", None) or ""
    for prefix, hw in _BOARDS:
        if model.startswith(prefix):
            return hw
    raise BundleError(f"board {model!r} (platform {platform!r}) is not a supported hardware "
                      f"id ({', '.join(HARDWARE_IDS)})", "unknown-hardware")


# ---------------------------------------------------------------------------- manifest

def _check_rel_path(path: Any, where: str) -> str:
    """A payload path is relative, POSIX, normalised, without ``..``/``.``/empty parts."""
    if not isinstance(path, str) or not path:
        raise BundleError(f"{where}: path must be a non-empty string", "unsafe-member")
    if "\\" in path or "\x00" in path or any(ord(c) < 32 for c in path):
        raise BundleError(f"{where}: path {path!r} has a backslash or control character",
                          "unsafe-member")
    if path.startswith("/"):
        raise BundleError(f"{where}: path {path!r} is absolute", "unsafe-member")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise BundleError(f"{where}: path {path!r} has an empty, '.' or '..' part",
                          "unsafe-member")
    if path == MANIFEST_NAME:
        raise BundleError(f"{where}: a payload file may not be called {MANIFEST_NAME}",
                          "unsafe-member")
    if len(path) > 255:
        raise BundleError(f"{where}: path {path[:40]!r}… is longer than 255 characters",
                          "unsafe-member")
    # a file system's limit is 255 *bytes* a name: 128 "é" are 256 (ENAMETOOLONG in a slot)
    long_part = next((p for p in parts if len(p.encode("utf-8", "surrogatepass")) > 255), None)
    if long_part is not None:
        raise BundleError(f"{where}: path part {long_part[:40]!r}… is longer than 255 bytes "
                          "in UTF-8", "unsafe-member")
    return path


def _check_utc(s: Any) -> str:
    if not isinstance(s, str) or not _UTC_RE.fullmatch(s):
        raise BundleError(f"{MANIFEST_NAME}: created_utc {s!r} is not ISO 8601 UTC "
                          "like 2025-01-31T12:00:00Z")
    try:
        _dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        raise BundleError(f"{MANIFEST_NAME}: created_utc {s!r} is not a real date") from None
    return s


def _check_hardware(hw: Any) -> tuple[str, ...]:
    if not isinstance(hw, (list, tuple)) or not hw:
        raise BundleError(f"{MANIFEST_NAME}: hardware must be a non-empty list")
    for h in hw:
        if h not in HARDWARE_IDS:
            raise BundleError(f"{MANIFEST_NAME}: hardware {h!r} is not one of "
                              f"{', '.join(HARDWARE_IDS)}", "unknown-hardware")
    if len(set(hw)) != len(hw):
        raise BundleError(f"{MANIFEST_NAME}: hardware lists an id twice")
    return tuple(sorted(hw))


def manifest_from_dict(raw: Any) -> BundleManifest:
    """Validate a parsed ``bundle.json``; unknown or missing keys are refused."""
    if not isinstance(raw, dict):
        raise BundleError(f"{MANIFEST_NAME}: must be a JSON object")
    if raw.get("format") != FORMAT:
        raise BundleError(f"{MANIFEST_NAME}: format {raw.get('format')!r} is not {FORMAT!r}")
    missing = _MANIFEST_KEYS - raw.keys()
    extra = raw.keys() - _MANIFEST_KEYS
    if missing or extra:
        raise BundleError(f"{MANIFEST_NAME}: missing keys {sorted(missing)}, "
                          f"unknown keys {sorted(extra)}")
    version, min_version = raw["version"], raw["min_version"]
    parse_version(version)
    parse_version(min_version)
    if compare_versions(min_version, version) > 0:
        raise BundleError(f"{MANIFEST_NAME}: min_version {min_version} is newer than "
                          f"version {version}", "bad-version")
    payload_raw = raw["payload"]
    if not isinstance(payload_raw, list) or not payload_raw:
        raise BundleError(f"{MANIFEST_NAME}: payload must be a non-empty list")
    if len(payload_raw) > MAX_PAYLOAD_FILES:
        raise BundleError(f"{MANIFEST_NAME}: more than {MAX_PAYLOAD_FILES} payload files")
    files: list[PayloadFile] = []
    seen: set[str] = set()
    for i, p in enumerate(payload_raw):
        where = f"{MANIFEST_NAME} payload[{i}]"
        if not isinstance(p, dict) or p.keys() != _PAYLOAD_KEYS:
            raise BundleError(f"{where}: must have exactly the keys {sorted(_PAYLOAD_KEYS)}")
        path = _check_rel_path(p["path"], where)
        if path in seen:
            raise BundleError(f"{where}: {path} is listed twice", "unsafe-member")
        for other in seen:  # a file may not also be a directory of another file
            if other.startswith(path + "/") or path.startswith(other + "/"):
                raise BundleError(f"{where}: {path} and {other} collide (file vs directory)",
                                  "unsafe-member")
        seen.add(path)
        if not isinstance(p["sha256"], str) or not _SHA256_RE.fullmatch(p["sha256"]):
            raise BundleError(f"{where}: sha256 of {path} is not 64 lowercase hex digits")
        length = p["length"]
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise BundleError(f"{where}: length of {path} is not a non-negative integer")
        files.append(PayloadFile(path, p["sha256"], length))
    return BundleManifest(version=version, hardware=_check_hardware(raw["hardware"]),
                          min_version=min_version, payload=tuple(files),
                          created_utc=_check_utc(raw["created_utc"]))


def _parse_manifest_bytes(data: bytes) -> BundleManifest:
    try:
        raw = json.loads(data.decode("utf-8"))
    except ValueError as exc:  # not UTF-8, not JSON, or an integer over 4300 digits
        raise BundleError(f"{MANIFEST_NAME}: not valid JSON ({exc})") from None
    except RecursionError:  # a nesting bomb (fuzz target `bundle`)
        raise BundleError(f"{MANIFEST_NAME}: not valid JSON (nested too deeply)") from None
    return manifest_from_dict(raw)


# ---------------------------------------------------------------------------- building

def bundle_name(version: str) -> str:
    return f"bwv-firmware-{version}{BUNDLE_SUFFIX}"


def _sha256_file(path: Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def build_bundle(out_dir: Path, *, version: str, hardware: list[str], min_version: str,
                 files: dict[str, Path], created_utc: str) -> Path:
    """Write ``out_dir/bwv-firmware-<version>.tar``: ``bundle.json`` first, then the
    payload files in path order, all owned by 0:0 with mode 0644 and the mtime of
    ``created_utc``, so the same inputs give the same bytes (a reproducible bundle can
    be rebuilt and compared by an independent engineer)."""
    entries = []
    for path in sorted(files):
        _check_rel_path(path, f"payload file {path!r}")
        src = Path(files[path])
        if not src.is_file():
            raise BundleError(f"payload file {path}: source {src} is not a regular file",
                              "missing-file")
        digest, length = _sha256_file(src)
        entries.append((path, src, PayloadFile(path, digest, length)))
    manifest = manifest_from_dict({
        "format": FORMAT, "version": version, "hardware": list(hardware),
        "min_version": min_version, "created_utc": created_utc,
        "payload": [{"path": e[2].path, "sha256": e[2].sha256, "length": e[2].length}
                    for e in entries]})
    mtime = int(_dt.datetime.strptime(created_utc, "%Y-%m-%dT%H:%M:%SZ")
                .replace(tzinfo=_dt.UTC).timestamp())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / bundle_name(version)
    tmp = out_dir / f".{final.name}.tmp"

    def info(name: str, size: int) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode, ti.mtime = size, 0o644, mtime
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        return ti

    with open(tmp, "wb") as raw_out:
        with tarfile.open(fileobj=raw_out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            mjson = manifest.to_json()
            tar.addfile(info(MANIFEST_NAME, len(mjson)), io.BytesIO(mjson))
            for path, src, pf in entries:
                with open(src, "rb") as f:
                    tar.addfile(info(path, pf.length), f)
        raw_out.flush()
        os.fsync(raw_out.fileno())
    # the source could have changed while we copied it: read back before publishing
    try:
        read_manifest(tmp)
    except BundleError:
        tmp.unlink()
        raise
    os.replace(tmp, final)
    _fsync_dir(out_dir)
    return final


# ---------------------------------------------------------------------------- reading

def _open(bundle: Path) -> tarfile.TarFile:
    try:
        return open_untrusted_tar(bundle)
    except FileNotFoundError:
        raise BundleError(f"{bundle}: no such bundle", "missing-file") from None
    except (*TAR_FAILURES, OSError) as exc:
        raise BundleError(f"{bundle}: not an uncompressed tar ({exc})") from None


def _check_member_kind(m: tarfile.TarInfo) -> None:
    if m.issym() or m.islnk():
        raise BundleError(f"member {m.name!r} is a link (to {m.linkname!r}); bundles hold "
                          "regular files only", "unsafe-member")
    if not m.isreg():
        kind = ("directory" if m.isdir() else "device" if (m.ischr() or m.isblk())
                else "fifo" if m.isfifo() else f"type {m.type!r}")
        raise BundleError(f"member {m.name!r} is a {kind}; bundles hold regular files only",
                          "unsafe-member")


def _members(tar: tarfile.TarFile) -> Iterable[tarfile.TarInfo]:
    try:
        yield from tar
    except TAR_FAILURES as exc:
        raise BundleError(f"tar structure is damaged ({exc})") from None


def _read_head(tar: tarfile.TarFile, members: Iterator[tarfile.TarInfo],
               bundle: Path) -> BundleManifest:
    first = next(members, None)
    if first is None or first.name != MANIFEST_NAME:
        raise BundleError(f"{bundle}: the first member must be {MANIFEST_NAME} "
                          f"(found {first.name if first else 'an empty tar'!r})", "missing-file")
    _check_member_kind(first)
    if first.size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{MANIFEST_NAME}: {first.size} bytes is more than "
                          f"{MAX_MANIFEST_BYTES}")
    f = tar.extractfile(first)
    assert f is not None  # a regular file always has a file object
    return _parse_manifest_bytes(f.read(MAX_MANIFEST_BYTES + 1))


def _walk(bundle: Path, sink=None) -> BundleManifest:
    """Check every member against the manifest; ``sink(pf)`` returns a writable for
    each payload file (or None to only hash)."""
    bundle = Path(bundle)
    try:
        return _walk_tar(bundle, sink)
    except BundleError:  # a ValueError too: already names what is wrong
        raise
    except TAR_FAILURES as exc:  # a member's data cut short or damaged
        raise BundleError(f"{bundle}: tar structure is damaged ({exc})") from None


def _walk_tar(bundle: Path, sink) -> BundleManifest:
    with _open(bundle) as tar:
        members = iter(_members(tar))
        manifest = _read_head(tar, members, bundle)
        wanted = {p.path: p for p in manifest.payload}
        seen: set[str] = set()
        for m in members:
            name = m.name
            if name == MANIFEST_NAME:
                raise BundleError(f"{MANIFEST_NAME} appears twice", "unsafe-member")
            _check_rel_path(name, f"member {name!r}")
            _check_member_kind(m)
            if name in seen:
                raise BundleError(f"member {name!r} appears twice", "unsafe-member")
            seen.add(name)
            pf = wanted.get(name)
            if pf is None:
                raise BundleError(f"member {name!r} is not listed in {MANIFEST_NAME}",
                                  "unlisted-file")
            if m.size != pf.length:
                raise BundleError(f"{name}: {m.size} bytes in the tar, {pf.length} in "
                                  f"{MANIFEST_NAME}", "length-mismatch")
            src = tar.extractfile(m)
            assert src is not None
            out = sink(pf) if sink else None
            h, n = hashlib.sha256(), 0
            while n < pf.length and (chunk := src.read(min(_CHUNK, pf.length - n))):
                h.update(chunk)
                n += len(chunk)
                if out is not None:
                    out.write(chunk)
            if n != pf.length:
                raise BundleError(f"{name}: tar ends after {n} of {pf.length} bytes",
                                  "length-mismatch")
            if h.hexdigest() != pf.sha256:
                raise BundleError(f"{name}: SHA-256 {h.hexdigest()} does not match "
                                  f"{MANIFEST_NAME} ({pf.sha256})", "hash-mismatch")
            if out is not None:
                out.close()
        missing = sorted(wanted.keys() - seen)
        if missing:
            raise BundleError(f"payload file {missing[0]} listed in {MANIFEST_NAME} is not in "
                              f"the bundle" + (f" (and {len(missing) - 1} more)"
                                               if len(missing) > 1 else ""), "missing-file")
    return manifest


def read_manifest(bundle: Path) -> BundleManifest:
    """Parse and validate ``bundle.json`` and check every payload member's kind, name,
    length and SHA-256 against it. Nothing is written."""
    return _walk(bundle)


class _DurableWriter:
    """A file created exclusively (never over something already there), fsynced on close."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def close(self) -> None:
        if self._fd >= 0:
            try:
                os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = -1


def extract_payload(bundle: Path, dest: Path) -> BundleManifest:
    """Write the payload files under ``dest`` (which must be absent or empty) and return
    the manifest. Each file is created exclusively, written only up to its announced
    length, fsynced, and its directory fsynced; afterwards every file is read back and
    hashed again. On any failure everything this call created is removed and
    ``BundleError`` is raised, so a half-written slot never looks complete."""
    bundle, dest = Path(bundle), Path(dest)
    read_manifest(bundle)  # refuse a bad bundle before touching dest at all
    dest_existed = dest.exists()
    if dest_existed and (not dest.is_dir() or dest.is_symlink() or any(dest.iterdir())):
        raise BundleError(f"{dest}: extraction target must be an absent or empty directory",
                          "unsafe-member")
    dest.mkdir(parents=True, exist_ok=True)
    dest_real = dest.resolve()
    created: list[Path] = []
    writers: list[_DurableWriter] = []

    def sink(pf: PayloadFile) -> _DurableWriter:
        target = dest_real.joinpath(*PurePosixPath(pf.path).parts)
        parent = target.parent
        missing_dirs = []
        p = parent
        while p != dest_real and not p.exists():
            missing_dirs.append(p)
            p = p.parent
        for d in reversed(missing_dirs):
            d.mkdir()
            created.append(d)
        if parent.resolve() != parent or not parent.resolve().is_relative_to(dest_real):
            raise BundleError(f"{pf.path}: directory escapes {dest}", "unsafe-member")
        w = _DurableWriter(target)
        created.append(target)
        writers.append(w)
        return w

    try:
        manifest = _walk(bundle, sink)
        for d in sorted({c.parent for c in created} | {dest_real}, key=lambda x: -len(x.parts)):
            _fsync_dir(d)
        _fsync_dir(dest_real.parent)
        for pf in manifest.payload:
            digest, length = _sha256_file(dest_real.joinpath(*PurePosixPath(pf.path).parts))
            if (digest, length) != (pf.sha256, pf.length):
                raise BundleError(f"{pf.path}: read back from {dest} as {length} bytes with "
                                  f"SHA-256 {digest}, expected {pf.length} / {pf.sha256}",
                                  "hash-mismatch")
        return manifest
    except BaseException:
        for w in writers:
            try:
                w.close()
            except OSError:
                pass
        for c in reversed(created):
            try:
                c.rmdir() if c.is_dir() and not c.is_symlink() else c.unlink()
            except OSError:
                pass
        if not dest_existed:
            try:
                dest.rmdir()
            except OSError:
                pass
        raise


# ---------------------------------------------------------------------------- policy

def _check_running(running_version: str) -> None:
    try:
        parse_version(running_version)
    except BundleError:
        raise BundleError(f"running version {running_version!r} is not a release version; "
                          "cannot order an update against it", "bad-version") from None


def check_compatible(m: BundleManifest, *, hardware: str, running_version: str) -> None:
    """May this camera install ``m``? Other hardware, the same or an older version
    (rollback), or a running version below the bundle's ``min_version`` are refused."""
    if hardware not in m.hardware:
        raise BundleError(f"bundle {m.version} is for {', '.join(m.hardware)}, not for this "
                          f"{hardware}", "other-hardware")
    _check_running(running_version)
    if compare_versions(m.version, running_version) <= 0:
        raise BundleError(f"bundle version {m.version} is not newer than the running "
                          f"version {running_version} (downgrade or same version refused)",
                          "not-newer")
    if compare_versions(running_version, m.min_version) < 0:
        raise BundleError(f"running version {running_version} is below the bundle's "
                          f"min_version {m.min_version}; install an intermediate release "
                          "first", "below-min-version")


def target_fields(m: BundleManifest) -> dict[str, Any]:
    """The custom fields of this bundle's TUF target entry (signed in targets.json)."""
    return {"bwv": {"format": FORMAT, "version": m.version, "hardware": list(m.hardware),
                    "min_version": m.min_version}}


@dataclass(frozen=True)
class BundlePolicy:
    """The firmware layer's rules, handed to ``sync.firmware_fetch`` (which may not import
    firmware): ``choose`` picks the newest signed target this camera may install from
    the targets' custom fields, *before* anything is downloaded; ``check`` re-reads the
    downloaded bundle and requires it to agree with the signed fields."""

    hardware: str
    running_version: str

    def choose(self, offers: Sequence[Any], *, explicit: bool = False) -> Any | None:
        """``offers``: objects with ``.path`` and ``.custom`` (the target's custom dict).
        Returns the newest offer for this hardware, or None if there is nothing newer.
        With ``explicit`` (a technician asked for this update: console flash, USB
        archive, a named target) "nothing for this hardware" and "nothing newer" are
        errors that name why. Raises BundleError if the newest offer for this hardware
        needs a newer running version than ours (step through an intermediate release)."""
        _check_running(self.running_version)
        best, best_v = None, None
        others: set[str] = set()
        for o in offers:
            f = _offer_fields(o)
            if f is None:
                continue
            if self.hardware not in f["hardware"]:
                others.update(f["hardware"])
                continue
            if best_v is None or compare_versions(f["version"], best_v) > 0:
                best, best_v = o, f["version"]
        if best is None:
            if explicit:
                raise BundleError(f"no signed bundle for this {self.hardware} (offered for: "
                                  f"{', '.join(sorted(others)) or 'nothing'})", "other-hardware")
            return None
        if compare_versions(best_v, self.running_version) <= 0:
            if explicit:
                raise BundleError(f"newest signed bundle {best_v} for {self.hardware} is not "
                                  f"newer than the running version {self.running_version} "
                                  "(downgrade or same version refused)", "not-newer")
            return None
        f = _offer_fields(best)
        if compare_versions(self.running_version, f["min_version"]) < 0:
            raise BundleError(f"newest release {best_v} for {self.hardware} needs running "
                              f"version {f['min_version']} or later (running "
                              f"{self.running_version})", "below-min-version")
        return best

    def check(self, bundle: Path, offer: Any) -> BundleManifest:
        m = read_manifest(bundle)
        f = _offer_fields(offer)
        signed = {"version": m.version, "hardware": list(m.hardware),
                  "min_version": m.min_version}
        if f is None or {k: f[k] for k in signed} != signed:
            raise BundleError(f"{Path(bundle).name}: bundle.json {signed} does not match the "
                              f"signed target fields {f}", "malformed")
        check_compatible(m, hardware=self.hardware, running_version=self.running_version)
        return m


def _offer_fields(offer: Any) -> Mapping[str, Any] | None:
    """The validated ``bwv`` custom fields of a target, or None if it is not a bundle."""
    custom = getattr(offer, "custom", None) or {}
    f = custom.get("bwv") if isinstance(custom, Mapping) else None
    if not isinstance(f, Mapping) or f.get("format") != FORMAT:
        return None
    try:
        parse_version(f["version"])
        parse_version(f["min_version"])
        hw = f["hardware"]
        if not isinstance(hw, list) or not all(isinstance(h, str) for h in hw):
            return None
    except (KeyError, TypeError, BundleError):
        return None
    return {"version": f["version"], "hardware": sorted(hw), "min_version": f["min_version"]}
