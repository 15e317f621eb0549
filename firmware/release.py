"""``bwv release``: the back office's update repository, in The Update Framework's format.

Built on python-tuf's metadata API and its ``tuf.repository.Repository`` abstraction,
so the files are exactly what ``tuf.ngclient`` on the camera verifies
(``sync/firmware_fetch.py``). Four roles, each with Ed25519 keys (securesystemslib's
``CryptoSigner`` over pyca/cryptography):

=========  =================  ==========  =============================================
role       keys / threshold   expiry      signs
=========  =================  ==========  =============================================
root       3 keys, 2 needed   365 days    which keys may sign each role (trust anchor,
                                          pinned on every camera at provisioning)
targets    1 / 1              90 days     each bundle: length, SHA-256, custom fields
                                          version / hardware / min_version
snapshot   1 / 1              30 days     the version and hash of targets.json
timestamp  1 / 1              7 days      the version and hash of snapshot.json
=========  =================  ==========  =============================================

Root's 2-of-3 threshold means one stolen or lost root key neither lets an attacker
re-key the repository nor locks the agency out; in production the three root keys live
on separate offline media (securesystemslib also signs with HSMs), and only the
timestamp (and snapshot) keys sit on the machine that serves the repository. Here the
keys directory holds them all, 0600, refused when readable by others.

Consistent snapshots are on: metadata is published as ``<version>.<role>.json`` and
bundles as ``<sha256>.<name>``, so a camera reading the repository while a release is
being published never mixes old and new files. Layout: docs/FORMAT.md.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner
from tuf.api.exceptions import RepositoryError, StorageError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer
from tuf.repository import Repository

from firmware.bundle import BundleError, compare_versions, read_manifest, target_fields
from sync.firmware_fetch import (
    ARCHIVE_FORMAT,
    ARCHIVE_INDEX,
    METADATA_SUBDIR,
    TARGETS_SUBDIR,
)

ROLES = ("root", "targets", "snapshot", "timestamp")
EXPIRY_DAYS = {"root": 365, "targets": 90, "snapshot": 30, "timestamp": 7}
ROOT_KEYS = 3
ROOT_THRESHOLD = 2
_CHUNK = 1 << 20

Progress = Callable[[float, float], None]


class ReleaseError(Exception):
    """A release operation that cannot be done; the message names the file or role."""


def _utc(dt: _dt.datetime) -> str:
    return dt.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------- keys

def _key_file(keys_dir: Path, role: str, n: int) -> Path:
    return keys_dir / f"{role}-{n}.pem"


def generate_keys(keys_dir: Path, *, root_keys: int = ROOT_KEYS) -> dict[str, list[CryptoSigner]]:
    """New Ed25519 keys, PKCS#8 PEM, mode 0600, in a 0700 directory. Refuses to touch a
    directory that already holds release keys: replacing keys is a root rotation, not
    an init."""
    keys_dir = Path(keys_dir)
    if keys_dir.exists() and any(keys_dir.glob("*.pem")):
        raise ReleaseError(f"{keys_dir}: already holds release keys; refusing to overwrite")
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(keys_dir, 0o700)
    out: dict[str, list[CryptoSigner]] = {}
    for role in ROLES:
        out[role] = []
        for n in range(1, (root_keys if role == "root" else 1) + 1):
            signer = CryptoSigner(Ed25519PrivateKey.generate())
            fd = os.open(_key_file(keys_dir, role, n), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, signer.private_bytes)
                os.fsync(fd)
            finally:
                os.close(fd)
            out[role].append(signer)
    _fsync_dir(keys_dir)
    return out


def load_signers(keys_dir: Path) -> dict[str, list[CryptoSigner]]:
    """Every ``<role>-<n>.pem`` in ``keys_dir``. A key readable by group or others is
    refused (like the device key store): a leaked targets key signs firmware."""
    keys_dir = Path(keys_dir)
    if not keys_dir.is_dir():
        raise ReleaseError(f"{keys_dir}: no such release keys directory")
    out: dict[str, list[CryptoSigner]] = {r: [] for r in ROLES}
    for role in ROLES:
        for path in sorted(keys_dir.glob(f"{role}-*.pem")):
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                raise ReleaseError(f"{path}: mode {mode:04o} is readable by others; "
                                   "chmod 600 it (and consider it leaked)")
            try:
                key = load_pem_private_key(path.read_bytes(), None)
                out[role].append(CryptoSigner(key))
            except (ValueError, TypeError) as exc:
                raise ReleaseError(f"{path}: not an unencrypted Ed25519 PKCS#8 key ({exc})") from None
    return out


# ---------------------------------------------------------------------------- storage

def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


_NEW = {"root": lambda: Root(consistent_snapshot=True), "targets": Targets,
        "snapshot": Snapshot, "timestamp": Timestamp}


class DiskRepository(Repository):
    """python-tuf's Repository over ``<repo>/metadata`` and ``<repo>/targets``.

    ``open`` reads the newest version of a role from disk (a fresh copy each time);
    ``close`` bumps the version, sets the expiry from ``now`` and the role's period,
    re-signs with every key the keys directory holds for the role and writes
    ``<version>.<role>.json`` (not for timestamp) and ``<role>.json`` atomically."""

    def __init__(self, repo_dir: Path, signers: dict[str, list[CryptoSigner]],
                 now: _dt.datetime, expiry_days: dict[str, int] | None = None) -> None:
        self.dir = Path(repo_dir)
        self.meta_dir = self.dir / METADATA_SUBDIR
        self.targets_dir = self.dir / TARGETS_SUBDIR
        self.signers = signers
        self.now = now.astimezone(_dt.UTC).replace(microsecond=0)
        self.expiry_days = {**EXPIRY_DAYS, **(expiry_days or {})}

    def _path(self, role: str) -> Path:
        return self.meta_dir / f"{role}.json"

    def exists(self) -> bool:
        return self._path("root").is_file()

    def open(self, role: str) -> Metadata:
        path = self._path(role)
        if not path.is_file():
            md = Metadata(_NEW[role]())
            md.signed.version = 0  # close() bumps every version, the first one to 1
            return md
        try:
            return Metadata.from_file(str(path))
        except (RepositoryError, StorageError) as exc:  # name the file, not a traceback
            raise ReleaseError(f"{path}: not valid TUF metadata ({type(exc).__name__}: {exc})") from None

    def close(self, role: str, md: Metadata) -> None:
        signers = self.signers.get(role) or []
        if not signers:
            raise ReleaseError(f"no {role} key in the keys directory; cannot sign {role}.json")
        md.signed.version += 1
        md.signed.expires = self.now + _dt.timedelta(days=self.expiry_days[role])
        md.signatures.clear()
        for s in signers:
            md.sign(s, append=True)
        data = md.to_bytes(JSONSerializer(compact=False))
        self.meta_dir.mkdir(parents=True, exist_ok=True)
        if role != "timestamp":
            _write_atomic(self.meta_dir / f"{md.signed.version}.{role}.json", data)
        _write_atomic(self._path(role), data)

    @staticmethod
    def _metafile(path: Path) -> MetaFile:
        data = path.read_bytes()
        version = Metadata.from_bytes(data).signed.version
        return MetaFile(version=version, length=len(data),
                        hashes={"sha256": hashlib.sha256(data).hexdigest()})

    @property
    def targets_infos(self) -> dict[str, MetaFile]:
        return {"targets.json": self._metafile(self._path("targets"))}

    @property
    def snapshot_info(self) -> MetaFile:
        return self._metafile(self._path("snapshot"))

    def publish(self) -> None:
        """New snapshot if targets changed, then a new timestamp: the order that keeps
        a camera reading mid-publish on a consistent view."""
        self.do_snapshot()
        self.do_timestamp(force=True)


# ---------------------------------------------------------------------------- commands

@dataclass(frozen=True)
class InitResult:
    repo: Path
    root: Path  # the root metadata to pin on every camera at provisioning
    keyids: dict[str, list[str]]
    root_threshold: int

    def as_dict(self) -> dict:
        return {"repo": str(self.repo), "pinned_root": str(self.root), "keyids": self.keyids,
                "root_threshold": self.root_threshold}


def init_repo(repo_dir: Path, keys_dir: Path, *, now: _dt.datetime,
              root_keys: int = ROOT_KEYS, root_threshold: int = ROOT_THRESHOLD,
              expiry_days: dict[str, int] | None = None) -> InitResult:
    """Keys, then root v1, an empty targets v1, snapshot v1 and timestamp v1."""
    if not 1 <= root_threshold <= root_keys:
        raise ReleaseError(f"root threshold {root_threshold} must be between 1 and the number "
                           f"of root keys ({root_keys})")
    repo = DiskRepository(repo_dir, {}, now, expiry_days)
    if repo.exists():
        raise ReleaseError(f"{repo._path('root')}: a repository exists already")
    signers = generate_keys(Path(keys_dir), root_keys=root_keys)
    repo.signers = signers
    repo.targets_dir.mkdir(parents=True, exist_ok=True)
    with repo.edit_root() as root:
        for role in ROLES:
            for s in signers[role]:
                root.add_key(s.public_key, role)
        root.roles["root"].threshold = root_threshold
    with repo.edit_targets():
        pass
    repo.publish()
    return InitResult(Path(repo_dir), repo.meta_dir / "1.root.json",
                      {r: [s.public_key.keyid for s in signers[r]] for r in ROLES}, root_threshold)


def _open(repo_dir: Path, keys_dir: Path | None, now: _dt.datetime,
          expiry_days: dict[str, int] | None = None) -> DiskRepository:
    repo = DiskRepository(repo_dir, load_signers(keys_dir) if keys_dir else {}, now, expiry_days)
    if not repo.exists():
        raise ReleaseError(f"{repo_dir}: no {METADATA_SUBDIR}/root.json (run bwv release init)")
    return repo


def _copy_with_progress(src: Path, dst: Path, progress: Progress | None) -> str:
    """Copy durably, hashing as we go; returns the SHA-256 of what was written."""
    total = src.stat().st_size
    h, done = hashlib.sha256(), 0
    tmp = dst.with_name(f".{dst.name}.tmp")
    with open(src, "rb") as fi, open(tmp, "wb") as fo:
        while chunk := fi.read(_CHUNK):
            fo.write(chunk)
            h.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
        fo.flush()
        os.fsync(fo.fileno())
    if progress and total == 0:
        progress(0, 0)
    os.replace(tmp, dst)
    _fsync_dir(dst.parent)
    return h.hexdigest()


@dataclass(frozen=True)
class AddResult:
    target: str
    sha256: str
    length: int
    version: str
    hardware: tuple[str, ...]
    targets_version: int
    already_published: bool

    def as_dict(self) -> dict:
        return {"target": self.target, "sha256": self.sha256, "length": self.length,
                "version": self.version, "hardware": list(self.hardware),
                "targets_version": self.targets_version,
                "already_published": self.already_published}


def add_bundle(repo_dir: Path, keys_dir: Path, bundle: Path, *, now: _dt.datetime,
               progress: Progress | None = None,
               expiry_days: dict[str, int] | None = None) -> AddResult:
    """Publish a bundle: check it completely (``read_manifest``), copy it into
    ``targets/<sha256>.<name>``, add it to targets with its custom fields, then new
    snapshot and timestamp. A published version is immutable: the same version with
    other bytes is refused; the same bytes again change nothing."""
    repo = _open(repo_dir, keys_dir, now, expiry_days)
    try:
        manifest = read_manifest(Path(bundle))
    except BundleError as exc:
        raise ReleaseError(f"{bundle}: not a valid bundle: {exc}") from None
    name = f"bwv-firmware-{manifest.version}.tar"
    current = repo.targets()
    tf = TargetFile.from_file(name, str(bundle), ["sha256"])
    existing = current.targets.get(name)
    if existing is not None:
        if existing.hashes == tf.hashes and existing.length == tf.length:
            return AddResult(name, tf.hashes["sha256"], tf.length, manifest.version,
                             manifest.hardware, current.version, True)
        raise ReleaseError(f"version {manifest.version} is already published with other "
                           "bytes; releases are immutable, build a new version")
    repo.targets_dir.mkdir(parents=True, exist_ok=True)
    dst = repo.targets_dir / f"{tf.hashes['sha256']}.{name}"
    written = _copy_with_progress(Path(bundle), dst, progress)
    if written != tf.hashes["sha256"]:
        dst.unlink()
        raise ReleaseError(f"{bundle}: changed while it was being published; try again")
    tf.unrecognized_fields["custom"] = target_fields(manifest)
    with repo.edit_targets() as targets:
        targets.targets[name] = tf
    repo.publish()
    return AddResult(name, tf.hashes["sha256"], tf.length, manifest.version, manifest.hardware,
                     repo.targets().version, False)


def rotate_key(repo_dir: Path, keys_dir: Path, role: str, *, now: _dt.datetime,
               number: int = 1, expiry_days: dict[str, int] | None = None) -> dict:
    """Replace ``<role>-<number>.pem`` (a key that was lost or may have leaked) with a
    new key: a new root version revokes the old key id and trusts the new one (signed
    by the old root keys, and for a root key also by the new one, so cameras can walk
    the root chain), then the role's metadata is re-signed. The old key file is kept
    under ``revoked/`` for the record; metadata it signs from now on is refused."""
    if role not in ROLES:
        raise ReleaseError(f"role {role!r} is not one of {', '.join(ROLES)}")
    keys_dir = Path(keys_dir)
    repo = _open(repo_dir, keys_dir, now, expiry_days)
    path = _key_file(keys_dir, role, number)
    if not path.is_file():
        raise ReleaseError(f"{path}: no such key to rotate")
    old = load_signers(keys_dir)  # checks every key file's permissions too
    old_signer = CryptoSigner(load_pem_private_key(path.read_bytes(), None))
    if old_signer.public_key.keyid not in repo.root().roles[role].keyids:
        raise ReleaseError(f"{path}: key {old_signer.public_key.keyid[:16]}… is not a {role} "
                           "key of this repository")
    new_signer = CryptoSigner(Ed25519PrivateKey.generate())
    staged = path.with_name(f".{path.name}.new")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, new_signer.private_bytes)
        os.fsync(fd)
    finally:
        os.close(fd)
    root_signers = list(old["root"]) + ([new_signer] if role == "root" else [])
    repo.signers = {**old, "root": root_signers}
    with repo.edit_root() as root:
        root.revoke_key(old_signer.public_key.keyid, role)
        root.add_key(new_signer.public_key, role)
    revoked = keys_dir / "revoked"
    revoked.mkdir(mode=0o700, exist_ok=True)
    os.replace(path, revoked / f"{role}-{number}-{old_signer.public_key.keyid[:16]}.pem")
    os.replace(staged, path)
    _fsync_dir(revoked)
    _fsync_dir(keys_dir)
    repo.signers = load_signers(keys_dir)
    if role == "targets":
        with repo.edit_targets():
            pass
    if role in ("targets", "snapshot"):
        repo.do_snapshot(force=True)
    if role != "root":
        repo.do_timestamp(force=True)
    return {"role": role, "revoked": old_signer.public_key.keyid,
            "new": new_signer.public_key.keyid, "root_version": repo.root().version}


def refresh(repo_dir: Path, keys_dir: Path, *, now: _dt.datetime, everything: bool = False,
            expiry_days: dict[str, int] | None = None) -> dict:
    """A new timestamp (the routine job: run it well inside the timestamp's lifetime);
    snapshot and targets are re-signed too when they would expire within two
    timestamp periods, or with ``everything``."""
    repo = _open(repo_dir, keys_dir, now, expiry_days)
    horizon = repo.now + _dt.timedelta(days=2 * repo.expiry_days["timestamp"])
    renewed = []
    if everything or repo.targets().expires <= horizon:
        with repo.edit_targets():
            pass
        renewed.append("targets")
    if everything or renewed or repo.snapshot().expires <= horizon:
        repo.do_snapshot(force=True)
        renewed.append("snapshot")
    repo.do_timestamp(force=True)
    renewed.append("timestamp")
    return {"renewed": renewed, **status(repo_dir, now=now)}


def status(repo_dir: Path, *, now: _dt.datetime) -> dict:
    repo = _open(repo_dir, None, now)
    roles = {}
    for role in ROLES:
        md = repo.open(role)
        roles[role] = {"version": md.signed.version, "expires": _utc(md.signed.expires),
                       "expired": md.signed.is_expired(repo.now)}
    targets = [{"target": p, "length": t.length, "sha256": t.hashes.get("sha256"),
                **((t.custom or {}).get("bwv", {}) if isinstance(t.custom, dict) else {})}
               for p, t in sorted(repo.targets().targets.items())]
    return {"roles": roles, "targets": targets}


def _newest_targets(targets: Targets, hardware: list[str] | None) -> list[str]:
    """The newest bundle for each hardware id (usually one bundle for all)."""
    best: dict[str, tuple[str, str]] = {}
    for path, t in targets.targets.items():
        f = (t.custom or {}).get("bwv") if isinstance(t.custom, dict) else None
        if not isinstance(f, dict):
            continue
        for hw in f.get("hardware", []):
            if hardware and hw not in hardware:
                continue
            if hw not in best or compare_versions(f["version"], best[hw][0]) > 0:
                best[hw] = (f["version"], path)
    return sorted({p for _, p in best.values()})


class _ProgressReader(io.RawIOBase):
    def __init__(self, f, total: int, progress: Progress | None) -> None:
        self.f, self.total, self.progress, self.done = f, total, progress, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.f.readinto(b)
        self.done += n
        if self.progress and n:
            self.progress(self.done, self.total)
        return n


def make_archive(repo_dir: Path, out: Path, *, now: _dt.datetime,
                 hardware: list[str] | None = None, progress: Progress | None = None) -> dict:
    """The offline update archive a technician carries (serial console ``flash``, a USB
    stick): the chain of root versions, the current timestamp, snapshot and targets
    metadata, the newest bundle for each hardware id, and ``archive.json``. It verifies
    on a camera only while its metadata has not expired (``valid_until``)."""
    repo = _open(repo_dir, None, now)
    ts = repo.open("timestamp")
    snap_v = ts.signed.snapshot_meta.version
    snap = Metadata.from_file(str(repo.meta_dir / f"{snap_v}.snapshot.json"))
    targ_v = snap.signed.meta["targets.json"].version
    targets_md = Metadata.from_file(str(repo.meta_dir / f"{targ_v}.targets.json"))
    root_v = repo.root().version
    chosen = _newest_targets(targets_md.signed, hardware)
    if not chosen:
        raise ReleaseError(f"{repo_dir}: no published bundle"
                           + (f" for {', '.join(hardware)}" if hardware else ""))
    expiries = [repo.open("root").signed.expires, ts.signed.expires, snap.signed.expires,
                targets_md.signed.expires]
    valid_until = min(expiries)
    if valid_until <= repo.now:
        raise ReleaseError(f"{repo_dir}: metadata expired at {_utc(valid_until)}; run "
                           "bwv release refresh first")
    files: list[tuple[str, Path]] = [(f"{METADATA_SUBDIR}/{n}.root.json",
                                      repo.meta_dir / f"{n}.root.json") for n in range(1, root_v + 1)]
    files += [(f"{METADATA_SUBDIR}/timestamp.json", repo.meta_dir / "timestamp.json"),
              (f"{METADATA_SUBDIR}/{snap_v}.snapshot.json", repo.meta_dir / f"{snap_v}.snapshot.json"),
              (f"{METADATA_SUBDIR}/{targ_v}.targets.json", repo.meta_dir / f"{targ_v}.targets.json")]
    for path in chosen:
        t = targets_md.signed.targets[path]
        name = f"{t.hashes['sha256']}.{path}"
        files.append((f"{TARGETS_SUBDIR}/{name}", repo.targets_dir / name))
    index = {"format": ARCHIVE_FORMAT, "created_utc": _utc(repo.now), "targets": chosen,
             "valid_until": _utc(valid_until),
             "metadata_versions": {"root": root_v, "timestamp": ts.signed.version,
                                   "snapshot": snap_v, "targets": targ_v}}
    total = sum(p.stat().st_size for _, p in files)
    done = [0]

    def step(n: float, _t: float) -> None:
        if progress:
            progress(done[0] + n, total)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    mtime = int(repo.now.timestamp())
    with open(tmp, "wb") as raw:
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            data = (json.dumps(index, indent=2, sort_keys=True) + "\n").encode()
            ti = tarfile.TarInfo(ARCHIVE_INDEX)
            ti.size, ti.mtime, ti.mode = len(data), mtime, 0o644
            tar.addfile(ti, io.BytesIO(data))
            for arcname, path in files:
                if not path.is_file():
                    raise ReleaseError(f"{path}: missing from the repository")
                ti = tarfile.TarInfo(arcname)
                ti.size, ti.mtime, ti.mode = path.stat().st_size, mtime, 0o644
                with open(path, "rb") as f:
                    tar.addfile(ti, io.BufferedReader(_ProgressReader(f, ti.size, step)))
                done[0] += ti.size
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, out)
    _fsync_dir(out.parent)
    if progress:
        progress(total, total)
    return {"archive": str(out), **index}
