"""Fetching firmware on the device: TUF (python-tuf's ngclient) decides what is genuine.

The device trusts one thing it was given at provisioning: the update repository's
root metadata (``trusted_root``, by default ``<keys_dir>/update-root.json``). Every
other byte — timestamp, snapshot and targets metadata and the bundle itself — is
checked by ``tuf.ngclient.Updater`` against it, so signature thresholds, rollback
(version numbers may never go down, checked against the metadata this device already
saw in ``metadata_dir``), freeze (expiry), mix-and-match (snapshot/timestamp hashes)
and key rotation are handled by the standard, not by bwv.

What bwv adds around it:

* **Where from.** An ``http(s)://`` base URL (the dock or the evidence store serves a
  ``bwv release`` repository: ``<base>/metadata/``, ``<base>/targets/``) through
  ngclient's default urllib3 fetcher, or a local directory of the same layout (a dock
  share, a USB stick, an unpacked offline archive) through ``DirectoryFetcher``.
* **Which one.** ``policy.choose`` (the firmware layer's ``BundlePolicy``; sync may not
  import firmware) picks a target from the *signed* custom fields before anything is
  downloaded; ``policy.check`` re-reads the downloaded bundle (its own manifest and
  payload hashes, hardware, version order, minimum version). A policy signals a
  rejection by raising a ``ValueError`` subclass with a ``reason`` attribute
  (``firmware.bundle.BundleError``); it reaches the caller as ``BundleRejected``.
* **When.** TUF compares expiry with a reference time. On a device whose clock is not
  set (the same rule as the agent's ``clock_not_set`` alarm: the clock's state is not
  synced, or it reads before ``CLOCK_FLOOR_UTC_NS``) expired metadata could look
  fresh, so the fetch is refused with ``ClockNotSet`` before any metadata is read. The
  reference time is the injected clock's UTC, not the host's.
* **Named errors.** Every rejection is an ``UpdateError`` subclass whose ``reason`` and
  message name the check (TUF's own exception class is named in the message).

Nothing is written into ``metadata_dir`` except what ngclient itself persists after
verifying it (root history, timestamp, snapshot, targets); a rejected bundle is removed
from ``download_dir``. Layouts: docs/FORMAT.md, "Firmware bundle and update metadata".
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib import parse

from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater, UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface

from drivers.clock import CLOCK_FLOOR_UTC_NS, Clock, iso_utc
from sync.untrusted_tar import TAR_FAILURES, open_untrusted_tar

PINNED_ROOT_NAME = "update-root.json"
ARCHIVE_FORMAT = "bwv-update-archive/1"
ARCHIVE_INDEX = "archive.json"
METADATA_SUBDIR = "metadata"
TARGETS_SUBDIR = "targets"
MAX_ARCHIVE_MEMBER = 4 << 30
MAX_ARCHIVE_MEMBERS = 10_000
_CHUNK = 1 << 16
_META_NAME_RE = re.compile(r"([1-9][0-9]*\.)?(root|timestamp|snapshot|targets)\.json")

Progress = Callable[[int, int], None]


# ---------------------------------------------------------------------------- errors

class UpdateError(Exception):
    """An update that was refused. ``reason`` is a stable code; the message names the
    check, the role or file, and TUF's exception class where TUF decided."""

    reason = "update-error"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class BadSignature(UpdateError):
    """Metadata not signed by a threshold of the keys its delegator trusts."""
    reason = "bad-signature"


class HashMismatch(UpdateError):
    """Metadata or a bundle whose length or hash differs from what was signed."""
    reason = "hash-mismatch"


class Rollback(UpdateError):
    """Metadata older than what this device already trusted (a rollback attack)."""
    reason = "rollback"


class Freeze(UpdateError):
    """Expired metadata: someone may be replaying an old repository (freeze attack)."""
    reason = "expired"


class ClockNotSet(UpdateError):
    """The device cannot tell expired metadata from fresh: no update until it can."""
    reason = "clock-not-set"


class SourceUnavailable(UpdateError):
    """The repository could not be read (network, missing files, bad archive path)."""
    reason = "unavailable"


class BadMetadata(UpdateError):
    """Metadata that does not parse or is inconsistent (not a signature/version issue)."""
    reason = "bad-metadata"


class BadArchive(UpdateError):
    """An offline update archive that is not safe or not complete."""
    reason = "bad-archive"


class BundleRejected(UpdateError):
    """The policy refused the bundle (other hardware, not newer, below min_version,
    manifest or payload checks); ``reason`` is the policy's."""
    reason = "bundle-rejected"


def _translate(exc: BaseException, what: str) -> UpdateError:
    """TUF's exception → our named error (most specific class first)."""
    name = type(exc).__name__
    msg = f"{what}: {name}: {exc}" if str(exc) else f"{what}: {name}"
    if isinstance(exc, tuf_exc.UnsignedMetadataError):
        return BadSignature(f"{msg} (bad signature)")
    if isinstance(exc, tuf_exc.ExpiredMetadataError):
        return Freeze(f"{msg} (expired metadata: possible freeze attack)")
    if isinstance(exc, tuf_exc.BadVersionNumberError):
        return Rollback(f"{msg} (metadata version lower than trusted: rollback)")
    if isinstance(exc, (tuf_exc.LengthOrHashMismatchError, tuf_exc.DownloadLengthMismatchError)):
        return HashMismatch(f"{msg} (length or hash mismatch)")
    if isinstance(exc, tuf_exc.DownloadError):
        return SourceUnavailable(msg)
    if isinstance(exc, tuf_exc.RepositoryError):
        return BadMetadata(msg)
    return BadMetadata(msg)


# ---------------------------------------------------------------------------- fetchers

class DirectoryFetcher(FetcherInterface):
    """ngclient's fetcher for a repository in a local directory (dock share, USB stick,
    unpacked offline archive). Accepts only ``file:`` URLs under ``root``; anything
    outside it (``..``, a symlink out) is refused. A missing file is reported as HTTP
    404, which is how ngclient learns that no newer root version exists."""

    def __init__(self, root: Path, chunk_size: int = _CHUNK) -> None:
        self.root = Path(root).resolve()
        self.chunk_size = chunk_size

    def base_url(self, sub: str) -> str:
        return (self.root / sub).as_uri() + "/"

    def _fetch(self, url: str) -> Iterator[bytes]:
        u = parse.urlparse(url)
        if u.scheme != "file" or u.netloc not in ("", "localhost"):
            raise tuf_exc.DownloadError(f"{url}: DirectoryFetcher reads only file: URLs")
        path = Path(parse.unquote(u.path))
        try:
            real = path.resolve(strict=True)
        except FileNotFoundError:
            raise tuf_exc.DownloadHTTPError(f"{path}: not found", 404) from None
        if not real.is_relative_to(self.root):
            raise tuf_exc.DownloadHTTPError(f"{path}: outside {self.root}", 403)
        if not real.is_file():
            raise tuf_exc.DownloadHTTPError(f"{path}: not a regular file", 404)
        f = open(real, "rb")  # opened now, so a missing file fails here, not mid-iteration
        return self._chunks(f)

    def _chunks(self, f) -> Iterator[bytes]:
        with f:
            while chunk := f.read(self.chunk_size):
                yield chunk


class _ProgressFetcher(FetcherInterface):
    """Counts target bytes for a person watching (the console's flash, the CLI)."""

    def __init__(self, inner: FetcherInterface) -> None:
        self.inner = inner
        self.progress: Progress | None = None
        self.total = 0

    def _fetch(self, url: str) -> Iterator[bytes]:
        chunks = self.inner.fetch(url)
        return self._count(chunks) if self.progress else chunks

    def _count(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        done = 0
        for c in chunks:
            done += len(c)
            if self.progress:
                self.progress(done, self.total)
            yield c


# ---------------------------------------------------------------------------- policy

@dataclass(frozen=True)
class Offer:
    """A bundle the signed targets metadata offers: its path, length, hashes and the
    ``custom`` fields (version, hardware, min_version) the policy chooses by."""

    path: str
    length: int
    hashes: dict[str, str]
    custom: Any


class UpdatePolicy(Protocol):
    def choose(self, offers: Sequence[Offer], *, explicit: bool = False) -> Offer | None:
        """The offer to install, or None (nothing newer). With ``explicit`` (a
        technician asked for this update) "nothing suitable" is a rejection instead."""
        ...

    def check(self, bundle: Path, offer: Offer) -> Any:
        """Re-read the downloaded bundle; return its manifest or raise."""
        ...


@dataclass(frozen=True)
class VerifiedUpdate:
    """A bundle that passed TUF and the policy, ready for the slot installer."""

    path: Path  # the verified bundle in download_dir
    manifest: Any  # what policy.check returned (firmware.bundle.BundleManifest)
    target: str  # TUF target path
    length: int
    sha256: str
    custom: Any
    metadata_versions: dict[str, int] = field(default_factory=dict)  # for the audit log
    source: str = ""

    def audit_fields(self) -> dict[str, Any]:
        return {"target": self.target, "sha256": self.sha256, "length": self.length,
                "source": self.source, "metadata_versions": dict(self.metadata_versions)}


def _wrap_policy(exc: ValueError) -> BundleRejected:
    return BundleRejected(str(exc), getattr(exc, "reason", None) or BundleRejected.reason)


# ---------------------------------------------------------------------------- the fetch

def _reference_time(clock: Clock) -> _dt.datetime:
    state = clock.state()
    now_ns = clock.utc_ns()
    if not state.synced or now_ns < CLOCK_FLOOR_UTC_NS:
        raise ClockNotSet(f"clock not set (state {state.source!r}, synced={state.synced}, reads "
                          f"{iso_utc(now_ns, digits=0)}): expired update metadata could not be "
                          "told from fresh; sync the clock (dock, NTP, GPS) first")
    return _dt.datetime.fromtimestamp(now_ns // 10**9, tz=_dt.UTC)


def _root_bytes(trusted_root: Path | bytes) -> bytes:
    if isinstance(trusted_root, bytes):
        return trusted_root
    try:
        return Path(trusted_root).read_bytes()
    except OSError as exc:
        raise BadMetadata(f"pinned update root {trusted_root}: {exc.strerror or exc} (installed "
                          "at provisioning)") from None


def _offers(updater: Updater) -> list[Offer]:
    """Every target of the top-level targets role (bwv publishes no delegations)."""
    targets = updater._trusted_set.targets  # refreshed and verified by the updater
    return [Offer(t.path, t.length, dict(t.hashes), t.custom) for t in targets.targets.values()]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(metadata_dir: Path) -> None:
    """Make what ngclient persisted durable. ngclient writes by rename without fsync; a
    power cut could then leave an empty ``timestamp.json``, and the next refresh would
    have no trusted version to refuse a rollback against."""
    for d in (metadata_dir, metadata_dir / "root_history"):
        if not d.is_dir():
            continue
        for f in d.iterdir():
            if f.is_file() and not f.is_symlink():
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        _fsync_dir(d)


def _safe_name(target_path: str) -> str:
    """A local file name for a signed target path: one name, no ``/``, and within a
    file system's 255 bytes even for a long non-ASCII or lone-surrogate path (signed
    does not mean sensible)."""
    raw = target_path.encode("utf-8", "surrogatepass")
    name = parse.quote(raw, "")
    if len(name) > 200 or name.startswith(".") or not name:  # "..", or our ".X.part" temps
        name = "sha256-" + hashlib.sha256(raw).hexdigest()
    return name


def _make_updater(source: str | Path, metadata_dir: Path, trusted_root: Path | bytes,
                  fetcher: FetcherInterface | None) -> tuple[Updater, str, _ProgressFetcher]:
    src = str(source)
    if src.startswith(("http://", "https://")):
        base = src.rstrip("/")
        inner = fetcher
        meta_url, targets_url, desc = f"{base}/{METADATA_SUBDIR}/", f"{base}/{TARGETS_SUBDIR}/", base
        if inner is None:
            from tuf.ngclient.urllib3_fetcher import Urllib3Fetcher
            inner = Urllib3Fetcher(app_user_agent="bwv-firmware")
    else:
        root = Path(src.removeprefix("file://"))
        if not (root / METADATA_SUBDIR).is_dir():
            raise SourceUnavailable(f"{root}: no {METADATA_SUBDIR}/ directory (not an update "
                                    "repository, a dock share with one, or an unpacked archive)")
        dfetch = DirectoryFetcher(root)
        inner = fetcher or dfetch
        meta_url, targets_url = dfetch.base_url(METADATA_SUBDIR), dfetch.base_url(TARGETS_SUBDIR)
        desc = f"dir:{dfetch.root}"
    counting = _ProgressFetcher(inner)
    metadata_dir = Path(metadata_dir)
    metadata_dir.mkdir(parents=True, exist_ok=True)
    try:
        updater = Updater(str(metadata_dir), meta_url, target_base_url=targets_url,
                          fetcher=counting, config=UpdaterConfig(app_user_agent="bwv-firmware"),
                          bootstrap=_root_bytes(trusted_root))
    except tuf_exc.RepositoryError as exc:
        raise _translate(exc, "pinned update root") from exc
    return updater, desc, counting


def fetch_update(source: str | Path, metadata_dir: Path, download_dir: Path, *,
                 trusted_root: Path | bytes, policy: UpdatePolicy, clock: Clock,
                 target: str | None = None, explicit: bool = False,
                 progress: Progress | None = None,
                 fetcher: FetcherInterface | None = None) -> VerifiedUpdate | None:
    """Refresh the TUF metadata from ``source`` and, if the policy finds a newer bundle
    for this camera, download and verify it into ``download_dir``.

    ``source``: ``http(s)://`` base URL or a directory (``<source>/metadata``,
    ``<source>/targets``). ``target`` names one target path to install (implies
    ``explicit``). Returns None when there is nothing newer (and not ``explicit``).
    Raises an ``UpdateError`` subclass naming the reason otherwise.
    """
    reference = _reference_time(clock)
    updater, desc, counting = _make_updater(source, metadata_dir, trusted_root, fetcher)
    # ngclient takes its reference time from the host clock when the Updater is built;
    # bwv's injected clock governs instead (tuf 7.0.1 keeps it on the trusted set).
    trusted_set = getattr(updater, "_trusted_set", None)
    if trusted_set is None or not hasattr(trusted_set, "reference_time"):
        raise BadMetadata("tuf ngclient internals changed: cannot set the reference time "
                          "(pinned tuf 7.0.1 expected)")
    trusted_set.reference_time = reference
    try:
        updater.refresh()
        offers = _offers(updater)
    except (tuf_exc.RepositoryError, tuf_exc.DownloadError) as exc:
        raise _translate(exc, f"update metadata from {desc}") from exc
    finally:
        _sync_tree(Path(metadata_dir))
    versions = {r: updater._trusted_set[r].version
                for r in ("root", "timestamp", "snapshot", "targets")}
    explicit = explicit or target is not None
    if target is not None:
        offers = [o for o in offers if o.path == target]
        if not offers:
            raise BundleRejected(f"target {target!r} is not in the signed targets metadata of "
                                 f"{desc}", "no-such-target")
    try:
        offer = policy.choose(offers, explicit=explicit)
    except ValueError as exc:
        raise _wrap_policy(exc) from exc
    if offer is None:
        return None
    try:
        info = updater.get_targetinfo(offer.path)
    except (tuf_exc.RepositoryError, tuf_exc.DownloadError) as exc:
        raise _translate(exc, f"target {offer.path}") from exc
    if info is None:  # cannot happen for an offer from the same metadata; be explicit
        raise BadMetadata(f"target {offer.path}: vanished from the verified metadata")
    path = _download(updater, info, Path(download_dir), counting, progress, desc)
    try:
        manifest = policy.check(path, offer)
    except ValueError as exc:
        path.unlink(missing_ok=True)
        _fsync_dir(path.parent)
        raise _wrap_policy(exc) from exc
    return VerifiedUpdate(path=path, manifest=manifest, target=info.path, length=info.length,
                          sha256=info.hashes.get("sha256", ""), custom=info.custom,
                          metadata_versions=versions, source=desc)


def _download(updater: Updater, info: TargetFile, download_dir: Path,
              counting: _ProgressFetcher, progress: Progress | None, desc: str) -> Path:
    """The verified bundle in ``download_dir`` under its URL-quoted target name, written
    durably (temp file, fsync, rename, fsync dir). An existing file that still matches
    the signed length and hashes is reused (a dock session cut mid-way resumes cheaply)."""
    download_dir.mkdir(parents=True, exist_ok=True)
    final = download_dir / _safe_name(info.path)
    if updater.find_cached_target(info, str(final)):
        if progress:
            progress(info.length, info.length)
        return final
    tmp = download_dir / f".{final.name}.part"
    counting.progress, counting.total = progress, info.length
    try:
        updater.download_target(info, str(tmp))
        with open(tmp, "rb") as f:  # ngclient verified its temp copy; check what we keep
            info.verify_length_and_hashes(f)
            os.fsync(f.fileno())
    except (tuf_exc.RepositoryError, tuf_exc.DownloadError) as exc:
        tmp.unlink(missing_ok=True)
        raise _translate(exc, f"bundle {info.path} from {desc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        counting.progress = None
    os.replace(tmp, final)
    _fsync_dir(download_dir)
    return final


# ---------------------------------------------------------------------------- archives

def _archive_name_ok(name: str) -> bool:
    p = PurePosixPath(name)
    if name.startswith("/") or "\\" in name or any(x in ("", ".", "..") for x in name.split("/")):
        return False
    if name == ARCHIVE_INDEX:
        return True
    if len(p.parts) != 2:
        return False
    if p.parts[0] == METADATA_SUBDIR:
        return bool(_META_NAME_RE.fullmatch(p.parts[1]))
    return p.parts[0] == TARGETS_SUBDIR and not p.parts[1].startswith(".")


def unpack_archive(archive: Path, dest: Path) -> dict[str, Any]:
    """Unpack an offline update archive (``bwv release archive``) into ``dest`` safely:
    only regular files named ``archive.json``, ``metadata/<role>.json`` /
    ``metadata/<N>.<role>.json`` and ``targets/<name>``, each once, none over
    ``MAX_ARCHIVE_MEMBER``. Nothing here is trusted yet: TUF verifies it next."""
    try:
        tar = open_untrusted_tar(archive)
    except FileNotFoundError:
        raise BadArchive(f"{archive}: no such archive") from None
    except (*TAR_FAILURES, OSError) as exc:
        raise BadArchive(f"{archive}: not an uncompressed tar ({exc})") from None
    seen: set[str] = set()
    with tar:
        try:
            for n, m in enumerate(tar):
                if n >= MAX_ARCHIVE_MEMBERS:
                    raise BadArchive(f"{archive}: more than {MAX_ARCHIVE_MEMBERS} members")
                if not m.isreg():
                    raise BadArchive(f"{archive}: member {m.name!r} is not a regular file "
                                     "(links, devices and directories are refused)")
                if not _archive_name_ok(m.name):
                    raise BadArchive(f"{archive}: member {m.name!r} is not an allowed name")
                if m.name in seen:
                    raise BadArchive(f"{archive}: member {m.name!r} appears twice")
                if m.size > MAX_ARCHIVE_MEMBER:
                    raise BadArchive(f"{archive}: member {m.name!r} is {m.size} bytes")
                seen.add(m.name)
                out = dest.joinpath(*PurePosixPath(m.name).parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                assert src is not None
                with open(out, "xb") as f:
                    copied = 0
                    while copied < m.size and (chunk := src.read(min(_CHUNK, m.size - copied))):
                        f.write(chunk)
                        copied += len(chunk)
                if copied != m.size:
                    raise BadArchive(f"{archive}: member {m.name!r} is truncated")
        except TAR_FAILURES as exc:
            raise BadArchive(f"{archive}: damaged tar ({exc})") from None
    if ARCHIVE_INDEX not in seen:
        raise BadArchive(f"{archive}: no {ARCHIVE_INDEX} (not a bwv offline update archive)")
    try:
        index = json.loads((dest / ARCHIVE_INDEX).read_text("utf-8"))
    except ValueError as exc:  # not UTF-8, not JSON, or an integer over 4300 digits
        raise BadArchive(f"{archive}: {ARCHIVE_INDEX} is not JSON ({exc})") from None
    if not isinstance(index, dict) or index.get("format") != ARCHIVE_FORMAT:
        raise BadArchive(f"{archive}: {ARCHIVE_INDEX} format is not {ARCHIVE_FORMAT!r}")
    targets = index.get("targets")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise BadArchive(f"{archive}: {ARCHIVE_INDEX} lists no targets")
    return index


def verify_offline_archive(archive: Path, metadata_dir: Path, download_dir: Path, *,
                           trusted_root: Path | bytes, policy: UpdatePolicy, clock: Clock,
                           progress: Progress | None = None,
                           work_dir: Path | None = None) -> VerifiedUpdate:
    """The USB-stick / serial-console path: unpack the archive into a private temp dir
    and run exactly the same ngclient verification as a dock update, through
    ``DirectoryFetcher``. The archive's metadata must still be newer than or equal to
    what this device already trusts, and unexpired. A technician asked for this update,
    so "nothing newer" or "not for this hardware" is a ``BundleRejected`` error.
    ``work_dir`` holds the temporary unpacked copy (default: the system temp dir; on a
    camera with a small RAM-backed /tmp, a directory on the data partition)."""
    _reference_time(clock)  # refuse before unpacking anything if the clock is not set
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bwv-archive-", dir=work_dir) as tmp:
        root = Path(tmp)
        index = unpack_archive(Path(archive), root)
        upd = fetch_update(root, metadata_dir, download_dir, trusted_root=trusted_root,
                           policy=_OnlyPresent(policy, set(index["targets"])), clock=clock,
                           explicit=True, progress=progress)
        assert upd is not None  # explicit: a policy returns an offer or raises
        return VerifiedUpdate(path=upd.path, manifest=upd.manifest, target=upd.target,
                              length=upd.length, sha256=upd.sha256, custom=upd.custom,
                              metadata_versions=upd.metadata_versions,
                              source=f"archive:{Path(archive).name}")


@dataclass(frozen=True)
class _OnlyPresent:
    """Offer the policy only the targets an archive actually carries."""

    inner: UpdatePolicy
    present: set[str]

    def choose(self, offers: Sequence[Offer], *, explicit: bool = False) -> Offer | None:
        return self.inner.choose([o for o in offers if o.path in self.present],
                                 explicit=explicit)

    def check(self, bundle: Path, offer: Offer) -> Any:
        return self.inner.check(bundle, offer)


__all__ = [
    "ARCHIVE_FORMAT",
    "ARCHIVE_INDEX",
    "PINNED_ROOT_NAME",
    "BadArchive",
    "BadMetadata",
    "BadSignature",
    "BundleRejected",
    "ClockNotSet",
    "DirectoryFetcher",
    "Freeze",
    "HashMismatch",
    "Offer",
    "Rollback",
    "SourceUnavailable",
    "UpdateError",
    "UpdatePolicy",
    "VerifiedUpdate",
    "fetch_update",
    "unpack_archive",
    "verify_offline_archive",
]
