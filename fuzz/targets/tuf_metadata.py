"""Target ``tuf_metadata``: update metadata as a docked camera fetches it
(``sync.firmware_fetch.fetch_update`` over python-tuf's ngclient).

The input is one metadata document for one role: its first byte picks the role
(timestamp, snapshot, targets, or a new root version ``2.root.json``), the rest is the
file. It replaces that file in a real ``bwv release`` repository (``fuzz/fixtures/
update``: one signed bundle), and a camera that trusts only the pinned root fetches
from it, with the firmware layer's real ``BundlePolicy`` choosing and checking the
bundle. Only ``UpdateError`` subclasses (with a message) may come out; an accepted
update must be the signed bundle, on disk, with its signed hash.

Cost: a full fetch builds an updater, verifies signatures and writes the trusted
metadata (fsynced) — milliseconds. TUF's own deserializer (``Metadata.from_bytes``,
the first thing ngclient does with the file) runs on every input; the full fetch runs
on every input that deserializes and on one in eight of those that do not (so the
error translation stays covered). The mutator re-signs mutated ``signed`` parts with
the fixture's (fuzz-only) release keys half of the time, so inputs reach TUF's
version, expiry, hash and threshold checks rather than stopping at the signature.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import shutil
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata
from tuf.api.serialization import DeserializationError

from drivers.clock import ClockState
from firmware.bundle import BundlePolicy
from fuzz.harness import FIXTURES, Defect, named, scratch
from fuzz.jsonmut import mutate_json_bytes
from sync import firmware_fetch as ff

ROLES = ("timestamp", "snapshot", "targets", "root")
NOW = dt.datetime(2026, 1, 15, 12, 0, 0, tzinfo=dt.UTC)  # when the fixture was signed
UPDATE = FIXTURES / "update"


class _Clock:
    """An hour after the fixture was signed, synced: inside every role's expiry."""

    def utc_ns(self) -> int:
        return int((NOW + dt.timedelta(hours=1)).timestamp()) * 10**9

    def monotonic_ns(self) -> int:
        return 10**12

    def state(self) -> ClockState:
        return ClockState(synced=True, source="ntp", last_offset_ns=0)


_st: dict = {}


def _setup() -> dict:
    if not _st:
        repo = scratch() / "update-repo"
        shutil.copytree(UPDATE / "repo", repo)
        meta = repo / "metadata"
        ts = json.loads((meta / "timestamp.json").read_bytes())["signed"]
        snap_v = ts["meta"]["snapshot.json"]["version"]
        snap = json.loads((meta / f"{snap_v}.snapshot.json").read_bytes())["signed"]
        files = {"timestamp": meta / "timestamp.json", "snapshot": meta / f"{snap_v}.snapshot.json",
                 "targets": meta / f"{snap['meta']['targets.json']['version']}.targets.json",
                 "root": meta / "2.root.json"}
        _st.update(repo=repo, files=files, root=(UPDATE / "repo" / "metadata" / "1.root.json").read_bytes(),
                   work=scratch() / "update-device", n=0)
    return _st


def split(data: bytes) -> tuple[str, bytes]:
    return ROLES[data[0] % len(ROLES)] if data else ROLES[0], data[1:]


def check(data: bytes) -> None:
    st = _setup()
    role, doc = split(data)
    try:
        Metadata.from_bytes(doc)
        parsed = True
    except DeserializationError as exc:
        named(exc)
        parsed = False
    st["n"] += 1
    if not parsed and st["n"] % 8:
        return
    target = st["files"][role]
    original = target.read_bytes() if target.exists() else None
    target.write_bytes(doc)
    work = st["work"]
    if work.exists():
        shutil.rmtree(work)
    try:
        got = ff.fetch_update(st["repo"], work / "metadata", work / "downloads",
                              trusted_root=st["root"], clock=_Clock(),
                              policy=BundlePolicy(hardware="sim", running_version="0.5.0"))
    except ff.UpdateError as exc:
        named(exc)
        got = None
    finally:
        if original is None:
            target.unlink()
        else:
            target.write_bytes(original)
    if got is not None and hashlib.sha256(got.path.read_bytes()).hexdigest() != got.sha256:
        raise Defect(f"accepted update {got.target} whose bytes do not match its signed hash")


# ------------------------------------------------------------------------- mutation
def _signers() -> dict[str, list[CryptoSigner]]:
    if "signers" not in _st:
        _st["signers"] = {r: [CryptoSigner(load_pem_private_key(p.read_bytes(), None))
                              for p in sorted((UPDATE / "keys").glob(f"{r}-*.pem"))] for r in ROLES}
    return _st["signers"]


def _resign(doc: dict, role: str, rng: random.Random) -> dict:
    signed = doc.get("signed") if isinstance(doc, dict) else None
    if not isinstance(signed, dict):
        return doc
    try:
        payload = encode_canonical(signed).encode()
    except Exception:  # noqa: BLE001 — floats and such cannot be canonical: keep the old signatures
        return doc
    signers = _signers()[role]
    keep = signers if rng.random() < 0.8 else signers[:1]
    doc["signatures"] = [{"keyid": s.public_key.keyid, "sig": s.sign(payload).signature} for s in keep]
    return doc


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    import atheris
    rng = random.Random(seed)
    head = data[:1] or b"\0"
    role, doc = split(data)
    if rng.random() < 0.05:
        head = bytes([rng.randrange(len(ROLES))])
        role = ROLES[head[0]]
    r = rng.random()
    if r < 0.75:
        try:
            obj = json.loads(doc)
            if isinstance(obj, dict) and isinstance(obj.get("signed"), dict) and rng.random() < 0.8:
                obj["signed"] = json.loads(mutate_json_bytes(json.dumps(obj["signed"]).encode(), rng)
                                           or b"null")
            else:
                obj = json.loads(mutate_json_bytes(doc, rng) or b"null")
            if r < 0.5:
                obj = _resign(obj, role, rng)
            return (head + json.dumps(obj, indent=rng.choice([None, 1])).encode())[:max_size]
        except Exception:  # noqa: BLE001, S110 — not JSON (or unserialisable): mutate bytes
            pass
    return (head + atheris.Mutate(doc, max_size - 1))[:max_size]


def seeds(out: Path) -> None:
    """A real repository (``bwv release init`` + ``add`` of a real bundle), signed at NOW,
    with fuzz-only keys; one seed per role."""
    import tempfile

    from firmware import release
    from fuzz.targets import bundle
    if UPDATE.exists():
        shutil.rmtree(UPDATE)
    with tempfile.TemporaryDirectory() as tmp:
        bundles = Path(tmp) / "bundles"
        bundle.seeds(bundles)
        keys = UPDATE / "keys"
        release.init_repo(UPDATE / "repo", keys, now=NOW)
        release.add_bundle(UPDATE / "repo", keys, bundles / "bwv-firmware-1.2.0.tar", now=NOW)
    _st.clear()
    st = _setup()
    out.mkdir(parents=True, exist_ok=True)
    for i, role in enumerate(ROLES[:3]):
        (out / f"{role}.json").write_bytes(bytes([i]) + st["files"][role].read_bytes())
    root = json.loads(st["root"])
    root["signed"]["version"] = 2  # a root rotation to the same keys, signed by them
    doc = _resign(root, "root", _AllKeys())
    (out / "root-v2.json").write_bytes(bytes([3]) + json.dumps(doc, indent=1).encode())


class _AllKeys(random.Random):
    """A Random whose draw keeps every signer in ``_resign``."""

    def random(self) -> float:
        return 0.0
