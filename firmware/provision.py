"""Provisioning: who this camera is, whom it encrypts to, and who may service it.

A provisioning gives the device its id and a fresh Ed25519 signing key (made here, on
the device, through the key store: it never leaves), the agency's age recipient, the
technician public keys allowed on the serial console, the evidence-store settings,
an officer assignment and the update repository's pinned root metadata
(``KEYS/update-root.json``, the trust anchor of every firmware update). The device
record (id + public key) is what the back office keeps to verify this camera's clips.

Re-provisioning and factory reset replace or erase the key that signed everything on
the device, and retire the store. They are refused while any clip is not yet synced
and released (DESIGN invariant 5: nothing leaves the device before the evidence store
confirmed it), and, when allowed, audited in the *old* audit log (signed by the old key)
before anything changes. The old store is never deleted: it is renamed to
``<store>.retired-<UTC>`` with its audit log and device record, so it stays verifiable.

One code path for both ways in. Everything new is first written to a *pending* folder
beside the keys (``<keys_dir>.pending/``, same filesystem): the new key, record,
recipient, technician list and settings, and last ``request.json``. Applying it (check
again, audit, retire, move the files in, open the new store, audit) happens with the
agent stopped: at once for ``bwv provision``; for the console's ``provision`` (the agent
is running) at the service's restart, which the console requests. Each step can be
repeated after a power cut.

The evidence-store settings live in ``<keys_dir>/provisioning.toml`` (a ``[sync]`` table),
which ``firmware.config.load`` lays over the configuration file: the configuration is
the fleet's, the provisioning is this device's.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from buffer.store import MARKER, Store, StoreError, StoreSettings, init_store
from drivers.clock import Clock, iso_utc
from drivers.keystore import (
    AGENCY_RECIPIENT_FILE,
    DEVICE_KEY_FILE,
    DEVICE_RECORD_FILE,
    TECHNICIANS_FILE,
    DeviceRecord,
    FileKeyStore,
    KeyStoreError,
    TechnicianKey,
    validate_device_id,
    validate_recipient,
)
from firmware import config as config_mod
from firmware.config import SCHEMA, Config, ConfigError
from firmware.log import event

log = logging.getLogger("bwv.provision")

PROVISIONING_FILE = config_mod.PROVISIONING_FILE
UPDATE_ROOT_FILE = "update-root.json"  # = sync.firmware_fetch.PINNED_ROOT_NAME
REQUEST_FILE = "request.json"
_OFFICER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}\Z")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}\Z")


class ProvisionError(Exception):
    """Provisioning cannot go ahead; the message says why and what to do."""


class UnsyncedEvidence(ProvisionError):
    """Clips on the device have not been synced and released yet."""

    def __init__(self, clips: list[str], action: str) -> None:
        self.clips = clips
        super().__init__(f"refusing to {action}: {len(clips)} clip(s) on this device are not yet "
                         f"synced and released ({', '.join(clips[:3])}{' …' if len(clips) > 3 else ''});"
                         " dock the camera and let it sync first")


class TechnicianKeyError(ProvisionError):
    """A technician key file that cannot be trusted; subclasses name the problem."""


class LooseKeyPermissions(TechnicianKeyError):
    pass


class MalformedTechnicianKey(TechnicianKeyError):
    pass


# ------------------------------------------------------------------- technician keys
def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def parse_technician_public(data: bytes, origin: str, name: str | None = None) -> TechnicianKey:
    """An Ed25519 public key: OpenSSH (``ssh-ed25519 AAAA… name``) or PEM; the OpenSSH
    comment, else the file's stem, names the technician."""
    text = data.strip()
    try:
        if text.startswith(b"ssh-"):
            key = serialization.load_ssh_public_key(text)
            parts = text.split(None, 2)
            name = name or (parts[2].decode("utf-8", "replace").strip() if len(parts) > 2 else None)
        else:
            key = serialization.load_pem_public_key(text)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise MalformedTechnicianKey(f"MalformedTechnicianKey: {origin}: not an OpenSSH or PEM "
                                     f"public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise MalformedTechnicianKey(f"MalformedTechnicianKey: {origin}: not an Ed25519 key "
                                     f"({type(key).__name__})")
    name = (name or "technician").strip()
    if not _NAME.match(name):
        name = re.sub(r"[^A-Za-z0-9 ._@-]", "_", name)[:64].lstrip(" ._@-") or "technician"
    return TechnicianKey(name, _raw_public(key))


def _read_key_file(path: Path) -> tuple[int, bytes]:
    """A key file's permission bits and bytes; the caller decides which bits are too loose."""
    try:
        st = path.stat()
        return stat.S_IMODE(st.st_mode), path.read_bytes()
    except FileNotFoundError:
        raise TechnicianKeyError(f"technician key {path} does not exist") from None


def load_technician_key(path: Path) -> TechnicianKey:
    """A technician's public key file, refused when others could have written it."""
    path = Path(path)
    mode, data = _read_key_file(path)
    if mode & 0o022:
        raise LooseKeyPermissions(f"LooseKeyPermissions: {path} is writable by group/others "
                                  f"(mode {mode:04o}); anyone could have swapped the key — chmod 644")
    if b"PRIVATE KEY" in data:
        raise MalformedTechnicianKey(f"MalformedTechnicianKey: {path} is a private key; give the "
                                     "technician's public key (technician.pub)")
    return parse_technician_public(data, str(path), name=None if data.startswith(b"ssh-") else path.stem)


def load_technician_private(path: Path) -> Ed25519PrivateKey:
    """The technician's signing key for the console (PEM or OpenSSH), 0600 only."""
    path = Path(path)
    mode, data = _read_key_file(path)
    if mode & 0o077:
        raise LooseKeyPermissions(f"LooseKeyPermissions: {path} is readable by group/others "
                                  f"(mode {mode:04o}); refusing to use it — chmod 600")
    try:
        if b"OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise MalformedTechnicianKey(f"MalformedTechnicianKey: {path}: not an unencrypted PEM or "
                                     f"OpenSSH private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise MalformedTechnicianKey(f"MalformedTechnicianKey: {path}: not an Ed25519 key")
    return key


def write_technician_keypair(out: Path, name: str) -> dict:
    """``bwv keys technician``: technician.key (PEM, 0600) and technician.pub (OpenSSH)."""
    if not _NAME.match(name):
        raise ProvisionError(f"technician name {name!r} must be 1-64 of [A-Za-z0-9 ._@-]")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path, pub_path = out / "technician.key", out / "technician.pub"
    if key_path.exists():
        raise ProvisionError(f"{key_path} exists; refusing to overwrite a technician key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    ssh = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    pub_path.write_bytes(ssh + b" " + name.encode() + b"\n")
    os.chmod(pub_path, 0o644)
    return {"private_key": str(key_path), "public_key": str(pub_path),
            "fingerprint": TechnicianKey(name, _raw_public(key.public_key())).fingerprint}


def load_update_root(path: Path) -> bytes:
    """The update repository's root metadata to pin (``bwv release init``'s
    ``metadata/1.root.json``): parsed and its own signatures checked here, so a wrong
    file is refused at the bench rather than by the camera's first update."""
    from tuf.api.exceptions import RepositoryError
    from tuf.api.metadata import Metadata, Root
    path = Path(path)
    try:
        data = path.read_bytes()
        md = Metadata.from_bytes(data)
        if not isinstance(md.signed, Root):
            raise ProvisionError(f"update root {path}: {md.signed.type} metadata, not root "
                                 "(give the repository's metadata/1.root.json)")
        md.signed.verify_delegate(Root.type, md.signed_bytes, md.signatures)
    except OSError as exc:
        raise ProvisionError(f"update root {path}: {exc.strerror or exc}") from None
    except RepositoryError as exc:
        raise ProvisionError(f"update root {path}: not signed TUF root metadata "
                             f"({type(exc).__name__}: {exc})") from None
    return data


# ----------------------------------------------------------------------- the request
@dataclass(frozen=True)
class ProvisionRequest:
    device_id: str
    recipient: str
    officer_id: str | None = None
    technicians: tuple[TechnicianKey, ...] = ()
    sync: dict[str, Any] = field(default_factory=dict)
    by: str = "technician"
    via: str = "cli"

    def summary(self) -> dict:
        """What the audit log records of a provisioning (no secrets exist in it)."""
        return {"device_id": self.device_id, "recipient": self.recipient,
                "officer_id": self.officer_id, "sync": dict(self.sync), "by": self.by, "via": self.via,
                "technicians": [{"name": t.name, "fingerprint": t.fingerprint} for t in self.technicians]}

    def to_json(self) -> str:
        doc = self.summary()
        doc["technicians"] = [{"name": t.name, "public_key": t.public_key.hex()} for t in self.technicians]
        return json.dumps(doc, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> ProvisionRequest:
        d = json.loads(text)
        return ProvisionRequest(d["device_id"], d["recipient"], d.get("officer_id"),
                                tuple(TechnicianKey(t["name"], bytes.fromhex(t["public_key"]))
                                      for t in d.get("technicians", [])),
                                dict(d.get("sync", {})), d.get("by", "technician"), d.get("via", "cli"))


def parse_setting(section: str, pair: str) -> tuple[str, Any]:
    """``KEY=VALUE`` for a key of ``[section]``, typed by the configuration schema."""
    if "=" not in pair:
        raise ProvisionError(f"{section} setting {pair!r}: expected KEY=VALUE")
    key, value = pair.split("=", 1)
    key = key.strip()
    spec = SCHEMA[section].get(key)
    if spec is None:
        raise ProvisionError(f"{section}.{key}: unknown key (known: {', '.join(SCHEMA[section])})")
    try:
        if spec.type is bool:
            if value.lower() not in ("true", "false"):
                raise ValueError("expected true or false")
            return key, value.lower() == "true"
        return key, spec.type(value)
    except ValueError as exc:
        raise ProvisionError(f"{section}.{key}: {value!r} is not a {spec.type.__name__} ({exc})") from None


def validate_request(req: ProvisionRequest, cfg: Config) -> ProvisionRequest:
    """Every check before anything on the device changes."""
    try:
        validate_device_id(req.device_id)
        recipient = validate_recipient(req.recipient)
    except KeyStoreError as exc:
        raise ProvisionError(str(exc)) from None
    if req.officer_id is not None and not _OFFICER.match(req.officer_id):
        raise ProvisionError(f"officer id {req.officer_id!r} must be 1-64 of [A-Za-z0-9 ._@-]")
    if not req.technicians:
        raise ProvisionError("give at least one technician public key (--technician-key FILE): "
                             "without one nobody can open the console")
    for t in req.technicians:
        if len(t.public_key) != 32:
            raise MalformedTechnicianKey(f"MalformedTechnicianKey: {t.name}: not a 32-byte Ed25519 key")
    raw = {s: dict(v) for s, v in cfg.values.items()}
    for key, value in req.sync.items():
        if key not in SCHEMA["sync"]:
            raise ProvisionError(f"sync.{key}: unknown key")
        raw["sync"][key] = value
    try:
        config_mod.validate(raw, "provisioning")
    except ConfigError as exc:
        raise ProvisionError(f"evidence-store settings: {exc}") from None
    return ProvisionRequest(req.device_id, recipient, req.officer_id, tuple(req.technicians),
                            dict(req.sync), req.by, req.via)


# -------------------------------------------------------------------------- helpers
def pending_dir(keys_dir: Path) -> Path:
    keys_dir = Path(keys_dir)
    return keys_dir.with_name(keys_dir.name + ".pending")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def overlay_toml(sync: dict[str, Any]) -> str:
    """``[sync]`` as TOML (scalars only; JSON string escapes are valid TOML)."""
    lines = ["# Written by `bwv provision`: this device's evidence-store settings.",
             "# firmware/config.py lays them over the configuration file.", "[sync]"]
    for key in sorted(sync):
        value = sync[key]
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            text = json.dumps(str(value))
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def store_settings(cfg: Config) -> StoreSettings:
    return StoreSettings(pre_record_ns=cfg.buffer.pre_record_seconds * 10**9,
                         max_bytes=cfg.buffer.max_bytes)


def unsynced_clips_of(store: Store) -> list[str]:
    """Clips still on the device: open or closed, i.e. not released after a sync."""
    return store.clip_ids("open") + store.clip_ids("closed")


def retired_name(store_dir: Path, utc_ns: int) -> Path:
    stamp = iso_utc(utc_ns, digits=0).replace(":", "").replace("-", "")
    candidate = store_dir.with_name(f"{store_dir.name}.retired-{stamp}")
    n = 1
    while candidate.exists():
        n += 1
        candidate = store_dir.with_name(f"{store_dir.name}.retired-{stamp}-{n}")
    return candidate


# --------------------------------------------------------------------- stage / apply
def stage(req: ProvisionRequest, keys_dir: Path, *, update_root: bytes | None = None) -> DeviceRecord:
    """Write the new identity into the pending folder (the key is generated here, on
    the device); ``request.json`` last, so a pending folder without it is incomplete.
    ``update_root`` (``load_update_root``) is pinned with it; without one the device
    keeps the root it has."""
    pend = pending_dir(keys_dir)
    if pend.exists():
        shutil.rmtree(pend)
    pend.mkdir(parents=True, mode=0o700)
    ks = FileKeyStore(pend)
    record = ks.generate(req.device_id, req.recipient)
    ks.set_technician_keys(list(req.technicians))
    if req.sync:
        _write(pend / PROVISIONING_FILE, overlay_toml(req.sync).encode())
    doc = json.loads(req.to_json())
    if update_root is not None:
        _write(pend / UPDATE_ROOT_FILE, update_root)
        doc["update_root_sha256"] = hashlib.sha256(update_root).hexdigest()  # for the audit
    _write(pend / REQUEST_FILE, json.dumps(doc, sort_keys=True).encode(), 0o600)
    _fsync_dir(pend.parent)
    return record


def check_store(store_dir: Path, keys_dir: Path, cfg: Config, clock: Clock, *, action: str,
                audit: tuple[str, dict] | None = None) -> Path | None:
    """Agent stopped: refuse when unsynced clips exist; else write ``audit`` into the old
    log, close, and retire the store. Returns where it went (None: no store)."""
    store_dir = Path(store_dir)
    if not (store_dir / MARKER).exists():
        return None
    old = FileKeyStore(keys_dir)
    store = Store.open(store_dir, old, clock, store_settings(cfg), officer_id=cfg.device.officer_id)
    try:
        clips = unsynced_clips_of(store)
        if clips:
            store.audit.append("provisioning_refused", action=action, unsynced_clips=len(clips),
                               clip_ids=clips)
            raise UnsyncedEvidence(clips, action)
        target = retired_name(store_dir, clock.utc_ns())
        if audit is not None:
            store.audit.append(audit[0], retired_store=str(target), **audit[1])
    finally:
        store.close()
    os.rename(store_dir, target)
    _fsync_dir(store_dir.parent)
    event(log, "store retired", store=str(store_dir), retired=str(target))
    return target


def has_pending(keys_dir: Path) -> bool:
    return (pending_dir(keys_dir) / REQUEST_FILE).exists()


def apply_pending(keys_dir: Path, store_dir: Path, cfg: Config, clock: Clock) -> dict | None:
    """Make a staged provisioning real (agent stopped). None when nothing is staged.

    Unsynced evidence found now (a clip recorded after the request) refuses it: the
    request is discarded, the refusal audited, and the device keeps its identity."""
    keys_dir, store_dir = Path(keys_dir), Path(store_dir)
    pend = pending_dir(keys_dir)
    if not pend.exists():
        return None
    if not (pend / REQUEST_FILE).exists():  # cut while staging: nothing was promised
        shutil.rmtree(pend)
        return None
    req_text = (pend / REQUEST_FILE).read_text()
    req = ProvisionRequest.from_json(req_text)
    root_sha = json.loads(req_text).get("update_root_sha256")  # pinned with this provisioning
    new_record = DeviceRecord.from_json((pend / DEVICE_RECORD_FILE).read_text(), str(pend))
    old_id = None
    if FileKeyStore(keys_dir).provisioned():
        try:
            old_id = FileKeyStore(keys_dir).device().device_id
        except KeyStoreError:
            old_id = None
    try:
        retired = check_store(store_dir, keys_dir, cfg, clock, action="re-provision",
                              audit=("reprovision", {"previous_device_id": old_id,
                                                     "new_public_key": new_record.public_key.hex(),
                                                     **req.summary()}))
    except UnsyncedEvidence:
        shutil.rmtree(pend)
        raise
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Key first; every file by rename within one filesystem; repeated after a cut.
    for name in (DEVICE_KEY_FILE, DEVICE_RECORD_FILE, AGENCY_RECIPIENT_FILE, TECHNICIANS_FILE,
                 PROVISIONING_FILE, UPDATE_ROOT_FILE):
        src = pend / name
        if src.exists():
            os.replace(src, keys_dir / name)
        elif name == PROVISIONING_FILE and not req.sync and (keys_dir / name).exists():
            os.unlink(keys_dir / name)  # a re-provisioning without settings: the file's defaults
    _fsync_dir(keys_dir)
    keys = FileKeyStore(keys_dir)
    record = keys.device()
    init_store(store_dir, record)
    store = Store.open(store_dir, keys, clock, store_settings(cfg), officer_id=cfg.device.officer_id)
    try:
        store.audit.append("provisioned", public_key=record.public_key.hex(), previous_store=(
            str(retired) if retired else None), previous_device_id=old_id, **req.summary(),
            **({"update_root_sha256": root_sha} if root_sha else {}))
        if req.officer_id:
            store.set_setting("officer_id", req.officer_id)  # as `bwv assign` does
            store.officer_id = req.officer_id
            store.audit.append("assignment", officer_id=req.officer_id, by=f"provisioning: {req.by}")
    finally:
        store.close()
    shutil.rmtree(pend)
    _fsync_dir(pend.parent)
    event(log, "provisioned", device_id=record.device_id, retired_store=str(retired) if retired else None)
    return {"device": json.loads(record.to_json()), "retired_store": str(retired) if retired else None}


def provision(req: ProvisionRequest, *, keys_dir: Path, store_dir: Path, cfg: Config,
              clock: Clock, update_root: bytes | None = None) -> dict:
    """``bwv provision`` with the agent stopped: check, stage, apply."""
    req = validate_request(req, cfg)
    keys_dir, store_dir = Path(keys_dir), Path(store_dir)
    if (store_dir / MARKER).exists():  # refuse before generating anything
        old = FileKeyStore(keys_dir)
        store = Store.open(store_dir, old, clock, store_settings(cfg), officer_id=cfg.device.officer_id)
        try:
            clips = unsynced_clips_of(store)
            if clips:
                store.audit.append("provisioning_refused", action="re-provision",
                                   unsynced_clips=len(clips), clip_ids=clips, by=req.by)
                raise UnsyncedEvidence(clips, "re-provision")
        finally:
            store.close()
    stage(req, keys_dir, update_root=update_root)
    result = apply_pending(keys_dir, store_dir, cfg, clock)
    assert result is not None
    return result


def factory_reset(*, keys_dir: Path, store_dir: Path, cfg: Config, clock: Clock, by: str) -> dict:
    """Forget the identity (agent stopped): refused with unsynced clips; audited first."""
    keys_dir = Path(keys_dir)
    ks = FileKeyStore(keys_dir)
    old_id = None
    if ks.provisioned():
        try:
            old_id = ks.device().device_id
        except KeyStoreError:
            pass
    retired = check_store(store_dir, keys_dir, cfg, clock, action="factory-reset",
                          audit=("factory_reset", {"by": by, "device_id": old_id}))
    removed = ks.erase() if keys_dir.exists() else []
    overlay = keys_dir / PROVISIONING_FILE
    if overlay.exists():
        overlay.unlink()
        removed.append(PROVISIONING_FILE)
    pend = pending_dir(keys_dir)
    if pend.exists():
        shutil.rmtree(pend)
    event(log, "factory reset", device_id=old_id, retired_store=str(retired) if retired else None)
    return {"factory_reset": True, "device_id": old_id, "removed": removed,
            "retired_store": str(retired) if retired else None}


def apply_at_start(keys_dir: Path, store_dir: Path, cfg: Config, clock: Clock) -> dict | None:
    """``bwv run``: apply a provisioning the console staged, before the agent starts.
    A refusal (audited by ``apply_pending``) is logged and the camera keeps its identity:
    the service must start either way."""
    try:
        return apply_pending(keys_dir, store_dir, cfg, clock)
    except (ProvisionError, StoreError, KeyStoreError, OSError) as exc:
        event(log, "staged provisioning not applied", level=logging.ERROR, error=str(exc))
        return None
