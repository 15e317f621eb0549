"""Confidentiality (DESIGN invariants 1–2): the camera cannot read its own footage, the
agency can, and so can a third-party tool (Debian's ``age``) without any bwv code."""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pyrage
import pytest
from cryptography.hazmat.primitives import serialization

from buffer.envelope import SEGMENT_MAGIC, parse
from buffer.export import load_identity
from drivers.keystore import FileKeyStore, KeyStoreError

AGE_IDENTITY = re.compile(rb"AGE-SECRET-KEY-1[0-9A-Z]+", re.IGNORECASE)


@pytest.fixture(scope="module")
def sample(recorded):
    """One clip segment of the recording: (file, payload bytes, header)."""
    path = sorted((recorded.store_dir / "clips").rglob("*.bwvseg"))[0]
    data = path.read_bytes()
    env = parse(data, SEGMENT_MAGIC)
    return path, data[env.payload_offset:], env.body()


def _decrypts(payload: bytes, identity) -> bool:
    try:
        pyrage.decrypt(payload, [identity])
        return True
    except Exception:  # noqa: BLE001 — pyrage.DecryptError and friends
        return False


def candidate_identities(directory: Path):
    """Everything in a directory that could possibly be an age identity."""
    for p in sorted(directory.rglob("*")):
        if not p.is_file():
            continue
        raw = p.read_bytes()
        tokens = set(AGE_IDENTITY.findall(raw)) | set(raw.split())
        for tok in tokens:
            try:
                yield p.name, pyrage.x25519.Identity.from_str(tok.decode("ascii", "replace").upper())
            except Exception:  # noqa: BLE001
                pass
        try:  # the Ed25519 signing key, converted as age's ssh-ed25519 would use it
            key = serialization.load_pem_private_key(raw, password=None)
            ssh = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption())
            yield p.name + " (as ssh-ed25519)", pyrage.ssh.Identity.from_buffer(ssh)
        except Exception:  # noqa: BLE001
            pass


def test_nothing_the_device_holds_decrypts_its_footage(recorded, sample):
    _, payload, _ = sample
    work = recorded.store_dir.parent
    keys_dir, store_dir = work / "keys", work / "store"
    assert sorted(p.name for p in keys_dir.iterdir()) == ["agency.recipient", "device.json", "device.key"]
    for directory in (keys_dir, store_dir):
        for p in directory.rglob("*"):
            if p.is_file():
                assert not AGE_IDENTITY.search(p.read_bytes()), f"{p} holds an age identity"
    tried = 0
    for name, ident in candidate_identities(keys_dir):
        tried += 1
        assert not _decrypts(payload, ident), f"{name} in the device key dir decrypts footage"
    assert tried >= 1  # the signing key was really tried (as ssh-ed25519)
    for p in keys_dir.iterdir():
        with pytest.raises(Exception):
            pyrage.decrypt(payload, [load_identity(p)])


def test_the_agency_identity_decrypts(recorded, sample):
    _, payload, header = sample
    ident = load_identity(recorded.identity)
    assert header["payload"]["recipient"] == str(ident.to_public())
    ts = pyrage.decrypt(payload, [ident])
    assert ts[:1] == b"\x47" and len(ts) % 188 == 0  # MPEG-TS packets
    assert header["payload"]["encryption"] == "age-v1-x25519"
    assert payload.startswith(b"age-encryption.org/v1\n")


def test_debian_age_cli_decrypts_a_payload_cut_per_the_docs(recorded, sample, tmp_path):
    path, _, _ = sample
    data = path.read_bytes()
    body_len = int.from_bytes(data[8:12], "big")  # docs/FORMAT.md: 8 + 4 + body + 64
    (tmp_path / "p.age").write_bytes(data[8 + 4 + body_len + 64:])
    age = subprocess.run(["age", "-d", "-i", str(recorded.identity), "-o", str(tmp_path / "p.ts"),
                          str(tmp_path / "p.age")], capture_output=True, text=True, timeout=30)
    assert age.returncode == 0, age.stderr
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                            "format=format_name:stream=codec_name", "-of", "json",
                            str(tmp_path / "p.ts")], capture_output=True, text=True, timeout=30)
    assert probe.returncode == 0 and probe.stderr == "", probe.stderr
    info = json.loads(probe.stdout)
    assert info["format"]["format_name"] == "mpegts"
    assert [s["codec_name"] for s in info["streams"]] == ["h264"]


def test_device_key_is_0600_and_a_readable_key_is_refused(recorded, tmp_path):
    src = recorded.store_dir.parent / "keys"
    assert stat.S_IMODE((src / "device.key").stat().st_mode) == 0o600
    keys = tmp_path / "keys"
    shutil.copytree(src, keys)
    assert FileKeyStore(keys).sign(b"x")  # the control: usable at 0600
    os.chmod(keys / "device.key", 0o644)
    for use in (lambda ks: ks.sign(b"x"), lambda ks: ks.device()):
        with pytest.raises(KeyStoreError, match=re.escape(str(keys / "device.key"))) as exc:
            use(FileKeyStore(keys))
        assert "0644" in str(exc.value)
