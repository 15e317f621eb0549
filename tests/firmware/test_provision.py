"""Provisioning: the device key is made here and guarded, technician keys are checked,
and a re-provisioning or factory reset never goes ahead while evidence is unsynced."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from buffer.audit import read_events, verify_audit
from drivers.keystore import (
    DEVICE_KEY_FILE,
    TECHNICIANS_FILE,
    FileKeyStore,
    KeyStoreError,
    TechnicianKey,
)
from firmware import config as config_mod
from firmware import provision as prov
from firmware.cli import main as bwv
from firmware.config import ConfigError
from hw_sim.clock import SimClock
from hw_sim.runner import write_agency_identity


@pytest.fixture
def recipient(tmp_path) -> str:
    return write_agency_identity(tmp_path / "agency")


@pytest.fixture
def tech(tmp_path) -> dict:
    return prov.write_technician_keypair(tmp_path / "tech", "alice")


def events(store: Path) -> list[dict]:
    return read_events(store / "audit.log")


def config_for(tmp_path: Path, keys: Path, store: Path) -> Path:
    cfg = tmp_path / "bwv.toml"
    cfg.write_text(f'[device]\nkeys_dir = "{keys}"\nstore_dir = "{store}"\n')
    return cfg


# ------------------------------------------------------------------ the key store
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o666])
def test_file_keystore_refuses_a_device_key_looser_than_0600(tmp_path, recipient, mode):
    FileKeyStore.create(tmp_path / "k", "CAM-1", recipient)
    os.chmod(tmp_path / "k" / DEVICE_KEY_FILE, mode)
    with pytest.raises(KeyStoreError, match="readable by group/others.*chmod 600"):
        FileKeyStore(tmp_path / "k").sign(b"x")


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_file_keystore_uses_a_0600_or_stricter_key(tmp_path, recipient, mode):
    ks = FileKeyStore.create(tmp_path / "k", "CAM-1", recipient)
    assert os.stat(tmp_path / "k" / DEVICE_KEY_FILE).st_mode & 0o777 == 0o600  # as created
    os.chmod(tmp_path / "k" / DEVICE_KEY_FILE, mode)
    ks = FileKeyStore(tmp_path / "k")
    assert ks.device().verifies(ks.sign(b"msg"), b"msg")


def test_technician_list_round_trips_and_is_refused_when_others_can_write_it(tmp_path, recipient):
    ks = FileKeyStore.create(tmp_path / "k", "CAM-1", recipient)
    assert ks.technician_keys() == []
    keys = [TechnicianKey("alice", b"\x01" * 32), TechnicianKey("bob", b"\x02" * 32)]
    ks.set_technician_keys(keys)
    assert ks.technician_keys() == keys
    os.chmod(tmp_path / "k" / TECHNICIANS_FILE, 0o664)
    with pytest.raises(KeyStoreError, match="writable by group/others"):
        ks.technician_keys()
    os.chmod(tmp_path / "k" / TECHNICIANS_FILE, 0o644)
    (tmp_path / "k" / TECHNICIANS_FILE).write_text('{"format": "bwv-technicians/1", "keys": [{"name": "x"}]}')
    with pytest.raises(KeyStoreError, match="not a technician key list"):
        ks.technician_keys()


# --------------------------------------------------------------- technician keys
def test_technician_public_keys_openssh_and_pem_are_accepted(tmp_path, tech):
    k = prov.load_technician_key(Path(tech["public_key"]))
    assert k.name == "alice" and len(k.public_key) == 32 and k.fingerprint == tech["fingerprint"]
    priv = prov.load_technician_private(Path(tech["private_key"]))
    pem = priv.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "bob.pem").write_bytes(pem)
    os.chmod(tmp_path / "bob.pem", 0o644)
    b = prov.load_technician_key(tmp_path / "bob.pem")
    assert b.name == "bob" and b.public_key == k.public_key


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_a_technician_key_file_others_could_write_is_refused(tech, mode):
    os.chmod(tech["public_key"], mode)
    with pytest.raises(prov.LooseKeyPermissions, match="LooseKeyPermissions"):
        prov.load_technician_key(Path(tech["public_key"]))


def test_a_technician_private_key_others_could_read_is_refused(tech):
    os.chmod(tech["private_key"], 0o640)
    with pytest.raises(prov.LooseKeyPermissions, match="readable by group/others"):
        prov.load_technician_private(Path(tech["private_key"]))


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def test_malformed_technician_keys_are_refused_by_name(tmp_path, tech):
    rsa_pub = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    cases = {"garbage.pub": b"not a key at all\n", "rsa.pub": rsa_pub + b" carol\n",
             "truncated.pub": Path(tech["public_key"]).read_bytes()[:40],
             "private.pub": Path(tech["private_key"]).read_bytes()}
    for name, data in cases.items():
        with pytest.raises(prov.MalformedTechnicianKey, match="MalformedTechnicianKey"):
            prov.load_technician_key(_write(tmp_path / name, data))


# ------------------------------------------------------------------- bwv provision
def test_provision_a_new_device(tmp_path, recipient, tech, capsys):
    keys, store = tmp_path / "dev" / "keys", tmp_path / "dev" / "store"
    cfg = config_for(tmp_path, keys, store)
    assert bwv(["provision", "--id", "CAM-0042", "--recipient", recipient, "--officer", "PC-1234",
                "--technician-key", tech["public_key"], "--sync-target", "s3",
                "--sync", "s3_bucket=evidence-locker", "--sync", "s3_endpoint=https://s3.example",
                "--sync", "verify=read-back", "--config", str(cfg), "--sim-clock"]) == 0
    record = json.loads(capsys.readouterr().out)
    ks = FileKeyStore(keys)
    assert record == {"device_id": "CAM-0042", "public_key": ks.device().public_key.hex()}
    assert os.stat(keys / DEVICE_KEY_FILE).st_mode & 0o777 == 0o600
    assert [t.name for t in ks.technician_keys()] == ["alice"]
    # The evidence-store settings are laid over the configuration by its loader.
    loaded = config_mod.load(cfg)
    assert (loaded.sync.target, loaded.sync.s3_bucket, loaded.sync.verify) == \
        ("s3", "evidence-locker", "read-back")
    assert "provisioning.toml" in loaded.source
    evs = events(store)
    prov_ev = next(e for e in evs if e["event"] == "provisioned")
    assert prov_ev["data"]["technicians"][0]["fingerprint"] == tech["fingerprint"]
    assert prov_ev["data"]["public_key"] == record["public_key"]
    assign = next(e for e in evs if e["event"] == "assignment")
    assert assign["data"]["officer_id"] == "PC-1234"
    n, problems = verify_audit(store / "audit.log", ks.device().verifies, "CAM-0042")
    assert n >= 3 and problems == []
    # A second provisioning of the same (empty) store is allowed and replaces the key.
    old_pub = record["public_key"]
    assert bwv(["provision", "--id", "CAM-0042", "--recipient", recipient,
                "--technician-key", tech["public_key"], "--config", str(cfg), "--sim-clock"]) == 0
    new = json.loads(capsys.readouterr().out)
    assert new["public_key"] != old_pub
    assert config_mod.load(cfg).sync.target == "directory"  # no settings given: the file's own


def test_provision_refuses_loose_or_malformed_technician_keys_and_changes_nothing(tmp_path, recipient,
                                                                                 tech, capsys):
    keys, store = tmp_path / "dev" / "keys", tmp_path / "dev" / "store"
    os.chmod(tech["public_key"], 0o666)
    assert bwv(["provision", "--id", "CAM-1", "--recipient", recipient, "--technician-key",
                tech["public_key"], "--keys", str(keys), "--store", str(store)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bwv: error: LooseKeyPermissions:") and "\n" not in err
    bad = _write(tmp_path / "bad.pub", b"ssh-ed25519 AAAAnotbase64!! x\n")
    assert bwv(["provision", "--id", "CAM-1", "--recipient", recipient, "--technician-key",
                str(bad), "--keys", str(keys), "--store", str(store)]) == 2
    assert "MalformedTechnicianKey" in capsys.readouterr().err
    os.chmod(tech["public_key"], 0o644)
    assert bwv(["provision", "--id", "CAM-1", "--recipient", recipient,  # none at all
                "--keys", str(keys), "--store", str(store)]) == 2
    assert "technician public key" in capsys.readouterr().err
    assert bwv(["provision", "--id", "CAM-1", "--recipient", recipient, "--technician-key",
                tech["public_key"], "--sync", "s3_bucket_name=x", "--keys", str(keys),
                "--store", str(store)]) == 2
    assert "sync.s3_bucket_name: unknown key" in capsys.readouterr().err
    assert bwv(["provision", "--id", "CAM-1", "--recipient", recipient, "--technician-key",
                tech["public_key"], "--sync-target", "s3", "--keys", str(keys),
                "--store", str(store)]) == 2
    assert "sync.s3_bucket: required" in capsys.readouterr().err
    assert not keys.exists() and not store.exists()


def test_reprovision_and_factory_reset_wait_for_the_sync(store_copy, recipient, tech, tmp_path, capsys):
    """A recorded camera with two closed clips: both refused (the count named, the
    refusal audited, the key untouched); after the clips are synced and released both
    are allowed, audited in the old log before the key changes."""
    keys, store = store_copy / "keys", store_copy / "store"
    old_key = (keys / DEVICE_KEY_FILE).read_bytes()
    old_record = FileKeyStore(keys).device()
    base = ["--keys", str(keys), "--store", str(store), "--sim-clock"]
    assert bwv(["provision", "--id", "CAM-NEW", "--recipient", recipient,
                "--technician-key", tech["public_key"], *base]) == 2
    err = capsys.readouterr().err
    assert "refusing to re-provision: 2 clip(s)" in err and "dock the camera" in err
    assert bwv(["provision", "--factory-reset", *base]) == 2
    assert "refusing to factory-reset: 2 clip(s)" in capsys.readouterr().err
    assert (keys / DEVICE_KEY_FILE).read_bytes() == old_key
    refusals = [e for e in events(store) if e["event"] == "provisioning_refused"]
    assert [r["data"]["action"] for r in refusals] == ["re-provision", "factory-reset"]
    assert all(r["data"]["unsynced_clips"] == 2 for r in refusals)

    share = tmp_path / "share"
    share.mkdir()
    assert bwv(["sync", "--store", str(store), "--keys", str(keys), "--directory", str(share)]) == 0
    capsys.readouterr()
    assert bwv(["provision", "--id", "CAM-NEW", "--recipient", recipient, "--officer", "PC-9",
                "--technician-key", tech["public_key"], *base]) == 0
    out = capsys.readouterr()
    record = json.loads(out.out)
    assert record["device_id"] == "CAM-NEW" and record["public_key"] != old_record.public_key.hex()
    retired = Path(out.err.split("retired to ")[1].strip())
    assert retired.parent == store.parent and retired.name.startswith("store.retired-")
    # The old log: its last records say what happened, signed by the old key, verifiable.
    old_events = events(retired)
    rep = next(e for e in old_events if e["event"] == "reprovision")
    assert rep["data"]["new_public_key"] == record["public_key"] and rep["data"]["device_id"] == "CAM-NEW"
    _, problems = verify_audit(retired / "audit.log", old_record.verifies, old_record.device_id)
    assert problems == []
    assert len(list((retired / "clips").iterdir())) == 0  # released before, nothing lost
    new_events = events(store)
    assert [e["event"] for e in new_events if e["event"] in ("provisioned", "assignment")] == \
        ["provisioned", "assignment"]
    assert FileKeyStore(keys).device().device_id == "CAM-NEW"

    # Factory reset of the re-provisioned (clip-free) camera: audited, keys gone, store kept aside.
    new_device = FileKeyStore(keys).device()
    assert bwv(["provision", "--factory-reset", "--by", "bench 3", *base]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["factory_reset"] and DEVICE_KEY_FILE in res["removed"]
    assert not (keys / DEVICE_KEY_FILE).exists() and not store.exists()
    last = Path(res["retired_store"])
    fr = next(e for e in events(last) if e["event"] == "factory_reset")
    assert fr["data"]["by"] == "bench 3" and fr["data"]["device_id"] == "CAM-NEW"
    assert verify_audit(last / "audit.log", new_device.verifies, "CAM-NEW")[1] == []


def test_a_staged_provisioning_is_refused_when_a_clip_appeared_meanwhile(store_copy, recipient, tech):
    """The console's path: staged while the agent runs, applied at the next start — and
    refused then if the camera recorded in between (the request is discarded)."""
    keys, store = store_copy / "keys", store_copy / "store"
    cfg = config_mod.load(None)
    req = prov.ProvisionRequest("CAM-NEW", recipient, None,
                                (prov.load_technician_key(Path(tech["public_key"])),), {}, via="console")
    prov.stage(req, keys)
    assert prov.has_pending(keys)
    with pytest.raises(prov.UnsyncedEvidence, match="2 clip"):
        prov.apply_pending(keys, store, cfg, SimClock())
    assert not prov.pending_dir(keys).exists()
    assert FileKeyStore(keys).device().device_id == "BWV-SIM-0001"
    assert prov.apply_pending(keys, store, cfg, SimClock()) is None  # nothing left to apply


def test_a_provisioning_overlay_others_could_write_is_refused(tmp_path, recipient, tech):
    keys, store = tmp_path / "keys", tmp_path / "store"
    cfg = config_for(tmp_path, keys, store)
    prov.provision(prov.ProvisionRequest("CAM-1", recipient, None,
                                         (prov.load_technician_key(Path(tech["public_key"])),),
                                         {"target": "directory", "directory": "/mnt/share"}),
                   keys_dir=keys, store_dir=store, cfg=config_mod.load(cfg), clock=SimClock())
    assert config_mod.load(cfg).sync.directory == "/mnt/share"
    os.chmod(keys / "provisioning.toml", 0o666)
    with pytest.raises(ConfigError, match="provisioning.toml: writable by group/others"):
        config_mod.load(cfg)
    os.chmod(keys / "provisioning.toml", 0o644)
    (keys / "provisioning.toml").write_text("[device]\nofficer_id = \"x\"\n")
    with pytest.raises(ConfigError, match="only a \\[sync\\] table"):
        config_mod.load(cfg)


def test_keys_technician_makes_a_0600_pair_and_refuses_to_overwrite(tmp_path, capsys):
    assert bwv(["keys", "technician", "--out", str(tmp_path / "t"), "--name", "dave"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert os.stat(out["private_key"]).st_mode & 0o777 == 0o600
    assert Path(out["public_key"]).read_text().startswith("ssh-ed25519 ")
    assert bwv(["keys", "technician", "--out", str(tmp_path / "t"), "--name", "dave"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_provision_pins_only_a_genuine_update_root(tmp_path, recipient, tech, capsys):
    """``--update-root``: the update repository's root metadata, signed by its own root
    keys, pinned as KEYS/update-root.json with the provisioning — anything else is
    refused in one line and nothing is provisioned."""
    import datetime as dt
    import hashlib

    from firmware.release import init_repo
    init = init_repo(tmp_path / "repo", tmp_path / "release-keys", now=dt.datetime.now(dt.UTC))
    keys, store = tmp_path / "dev" / "keys", tmp_path / "dev" / "store"
    base = ["provision", "--id", "CAM-1", "--recipient", recipient, "--technician-key",
            tech["public_key"], "--keys", str(keys), "--store", str(store), "--sim-clock"]
    doc = json.loads(init.root.read_text())
    doc["signed"]["expires"] = "2099-01-01T00:00:00Z"  # a longer life than the root keys signed
    tampered = _write(tmp_path / "tampered.root.json", json.dumps(doc).encode())
    for bad, why in ((tmp_path / "missing.json", "No such file"),
                     (tmp_path / "repo" / "metadata" / "1.targets.json", "targets metadata, not root"),
                     (tampered, "UnsignedMetadataError"),
                     (Path(tech["public_key"]), "not signed TUF root metadata")):
        assert bwv([*base, "--update-root", str(bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("bwv: error: update root") and why in err and "\n" not in err, err
    assert not keys.exists() and not store.exists()
    assert bwv([*base, "--update-root", str(init.root)]) == 0
    capsys.readouterr()
    pinned = init.root.read_bytes()
    assert (keys / "update-root.json").read_bytes() == pinned
    rec = next(e for e in events(store) if e["event"] == "provisioned")
    assert rec["data"]["update_root_sha256"] == hashlib.sha256(pinned).hexdigest()
    assert bwv(base) == 0  # a re-provisioning without --update-root keeps the pinned root
    assert (keys / "update-root.json").read_bytes() == pinned
    assert "update_root_sha256" not in [e for e in events(store) if e["event"] == "provisioned"][-1]["data"]
