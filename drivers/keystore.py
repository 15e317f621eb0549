"""Key storage: the device's Ed25519 signing key and the agency's age recipient.

The device holds exactly two secrets-or-not: its own signing key (secret, 0600, never
leaves the device) and the agency's *public* age recipient. It never holds anything
that decrypts footage (DESIGN invariant 1). A secure element or TPM can replace
``FileKeyStore`` behind the same methods: ``KeyStore`` is what the agent uses,
``ProvisioningKeyStore`` adds what provisioning needs (generate, replace, erase, the
technician keys allowed on the serial console). Technician keys are public keys: the
device only ever checks their signatures.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

DEVICE_KEY_FILE = "device.key"  # PEM PKCS#8 Ed25519 private key, mode 0600
DEVICE_RECORD_FILE = "device.json"  # {"device_id": ..., "public_key": hex}
AGENCY_RECIPIENT_FILE = "agency.recipient"  # one line: age1...
TECHNICIANS_FILE = "technicians.json"  # console keys: {"format", "keys": [{"name", "public_key"}]}
TECHNICIANS_FORMAT = "bwv-technicians/1"

_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_AGE_RECIPIENT = re.compile(r"^age1[02-9ac-hj-np-z]{58}\Z")


class KeyStoreError(Exception):
    """A key is missing, malformed or unsafely stored; the message says which file."""


@dataclass(frozen=True)
class DeviceRecord:
    """What the back office keeps per device: its id and signature-verification key."""

    device_id: str
    public_key: bytes  # raw 32-byte Ed25519

    def to_json(self) -> str:
        return json.dumps({"device_id": self.device_id, "public_key": self.public_key.hex()},
                          sort_keys=True) + "\n"

    @staticmethod
    def from_json(text: str, origin: str = "device record") -> "DeviceRecord":
        try:
            obj = json.loads(text)
            dev, pub = obj["device_id"], bytes.fromhex(obj["public_key"])
        except RecursionError:  # a nesting bomb: device.json travels with untrusted data
            raise KeyStoreError(f"{origin}: not a device record (JSON nested too deeply)") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyStoreError(f"{origin}: not a device record ({exc})") from None
        if not isinstance(dev, str) or not _DEVICE_ID.match(dev) or len(pub) != 32:
            raise KeyStoreError(f"{origin}: device id or public key malformed")
        return DeviceRecord(dev, pub)

    def verifier(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.public_key)

    def verifies(self, signature: bytes, message: bytes) -> bool:
        """True when ``signature`` is this device's Ed25519 signature of ``message``."""
        try:
            self.verifier().verify(signature, message)
            return True
        except InvalidSignature:
            return False


@dataclass(frozen=True)
class TechnicianKey:
    """A technician's Ed25519 public key, allowed on the serial console."""

    name: str
    public_key: bytes  # raw 32-byte Ed25519

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the raw key, hex: what the audit log names a technician by."""
        return hashlib.sha256(self.public_key).hexdigest()

    def verifies(self, signature: bytes, message: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
            return True
        except InvalidSignature:
            return False


class KeyStore(Protocol):
    def device(self) -> DeviceRecord: ...
    def sign(self, message: bytes) -> bytes: ...
    def agency_recipient(self) -> str: ...
    def technician_keys(self) -> list[TechnicianKey]: ...


class ProvisioningKeyStore(KeyStore, Protocol):
    """What provisioning asks of a key store (a secure element implements the same)."""

    def provisioned(self) -> bool: ...
    def generate(self, device_id: str, agency_recipient: str, *, replace: bool = False) -> DeviceRecord: ...
    def set_technician_keys(self, keys: list[TechnicianKey]) -> None: ...
    def erase(self) -> list[str]: ...


def validate_device_id(device_id: str) -> str:
    if not _DEVICE_ID.match(device_id):
        raise KeyStoreError(f"device id {device_id!r} must be 1-64 of [A-Za-z0-9._-]")
    return device_id


def validate_recipient(text: str, origin: str = "agency recipient") -> str:
    text = text.strip()
    if not _AGE_RECIPIENT.match(text):
        raise KeyStoreError(f"{origin}: not an age X25519 recipient (expected 'age1…', 62 chars)")
    return text


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Temp file, fsync, rename over, fsync the directory: a cut leaves old or new."""
    tmp = path.with_name(f".{path.name}.new")
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class FileKeyStore:
    """Keys in a directory. Refuses a signing key that group or others could read."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._key: Ed25519PrivateKey | None = None
        self._record: DeviceRecord | None = None

    @staticmethod
    def create(directory: Path, device_id: str, agency_recipient: str) -> "FileKeyStore":
        """Generate the device key on the device (it never leaves) and store the recipient."""
        ks = FileKeyStore(directory)
        ks.generate(device_id, agency_recipient)
        return FileKeyStore(directory)

    def provisioned(self) -> bool:
        return (self.directory / DEVICE_KEY_FILE).exists()

    def generate(self, device_id: str, agency_recipient: str, *, replace: bool = False) -> DeviceRecord:
        """A new device key, made here (it never leaves), and the agency recipient.

        ``replace`` is for re-provisioning, after the caller made sure no unsynced
        evidence depends on the old key: each file is replaced atomically (key first, so
        a cut in between leaves a record that does not match, which ``device`` names)."""
        validate_device_id(device_id)
        agency_recipient = validate_recipient(agency_recipient)
        directory = self.directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if (directory / DEVICE_KEY_FILE).exists() and not replace:
            raise KeyStoreError(f"{directory / DEVICE_KEY_FILE} exists; refusing to replace a device key")
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        record = DeviceRecord(device_id, pub)
        if replace:
            _write_atomic(directory / DEVICE_KEY_FILE, pem, 0o600)
        else:
            _write_private(directory / DEVICE_KEY_FILE, pem)
        _write_atomic(directory / DEVICE_RECORD_FILE, record.to_json().encode(), 0o644)
        _write_atomic(directory / AGENCY_RECIPIENT_FILE, (agency_recipient + "\n").encode(), 0o644)
        self._key, self._record = None, None
        return record

    def technician_keys(self) -> list[TechnicianKey]:
        """The technician keys allowed on the console ([] when none were provisioned).

        A list anybody but the owner can write is refused: adding a line to it would
        let a stranger onto the console."""
        path = self.directory / TECHNICIANS_FILE
        try:
            st = path.stat()
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            return []
        except UnicodeDecodeError as exc:
            raise KeyStoreError(f"{path}: not a technician key list (not UTF-8: {exc})") from None
        if stat.S_IMODE(st.st_mode) & 0o022:
            raise KeyStoreError(f"{path} is writable by group/others (mode "
                                f"{stat.S_IMODE(st.st_mode):04o}); refusing to trust it — chmod 644")
        try:
            obj = json.loads(text)
            if obj.get("format") != TECHNICIANS_FORMAT:
                raise ValueError(f"format is {obj.get('format')!r}, expected {TECHNICIANS_FORMAT!r}")
            keys = [TechnicianKey(str(k["name"]), bytes.fromhex(k["public_key"])) for k in obj["keys"]]
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise KeyStoreError(f"{path}: not a technician key list ({exc})") from None
        if any(len(k.public_key) != 32 for k in keys):
            raise KeyStoreError(f"{path}: a public key is not 32 bytes")
        return keys

    def set_technician_keys(self, keys: list[TechnicianKey]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        doc = {"format": TECHNICIANS_FORMAT,
               "keys": [{"name": k.name, "public_key": k.public_key.hex()} for k in keys]}
        _write_atomic(self.directory / TECHNICIANS_FILE,
                      (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode(), 0o644)

    def erase(self) -> list[str]:
        """Factory reset: forget the device key, recipient and technician keys (the
        device key is overwritten before it is unlinked). Returns the files removed."""
        removed = []
        for name in (DEVICE_KEY_FILE, DEVICE_RECORD_FILE, AGENCY_RECIPIENT_FILE, TECHNICIANS_FILE):
            path = self.directory / name
            if not path.exists():
                continue
            if name == DEVICE_KEY_FILE:
                size = path.stat().st_size
                with open(path, "r+b") as f:
                    f.write(os.urandom(size))
                    f.flush()
                    os.fsync(f.fileno())
            path.unlink()
            removed.append(name)
        if self.directory.is_dir():
            dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        self._key, self._record = None, None
        return removed

    def _load_key(self) -> Ed25519PrivateKey:
        if self._key is None:
            path = self.directory / DEVICE_KEY_FILE
            try:
                st = path.stat()
            except FileNotFoundError:
                raise KeyStoreError(f"device signing key missing: {path} (run 'bwv keys device')") from None
            if stat.S_IMODE(st.st_mode) & 0o077:
                raise KeyStoreError(f"{path} is readable by group/others (mode "
                                f"{stat.S_IMODE(st.st_mode):04o}); refusing to use it — chmod 600")
            try:
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except (ValueError, TypeError) as exc:
                raise KeyStoreError(f"{path}: not a PEM private key ({exc})") from None
            if not isinstance(key, Ed25519PrivateKey):
                raise KeyStoreError(f"{path}: not an Ed25519 key")
            self._key = key
        return self._key

    def device(self) -> DeviceRecord:
        if self._record is None:
            path = self.directory / DEVICE_RECORD_FILE
            try:
                text = path.read_text()
            except FileNotFoundError:
                raise KeyStoreError(f"device record missing: {path} (run 'bwv keys device')") from None
            record = DeviceRecord.from_json(text, str(path))
            pub = self._load_key().public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            if pub != record.public_key:
                raise KeyStoreError(f"{path}: public key does not match {DEVICE_KEY_FILE}")
            self._record = record
        return self._record

    def sign(self, message: bytes) -> bytes:
        return self._load_key().sign(message)

    def agency_recipient(self) -> str:
        path = self.directory / AGENCY_RECIPIENT_FILE
        try:
            return validate_recipient(path.read_text(), str(path))
        except FileNotFoundError:
            raise KeyStoreError(f"agency recipient missing: {path}") from None
