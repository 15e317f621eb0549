"""The device side of updates: python-tuf's ngclient against a real ``bwv release``
repository, over a real HTTP server on 127.0.0.1 and through the DirectoryFetcher.

Every attack is a real one: metadata re-signed by an attacker who holds the online
snapshot/timestamp keys but not the targets key, a bundle changed after signing, an
old repository served to a device that saw a newer one, a frozen (expired) repository,
a signed bundle for other hardware or not newer, malformed bundles that were signed.
Each is rejected with a named reason, and the device's metadata directory holds
nothing but what ngclient legitimately persisted.
"""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import http.server
import io
import shutil
import tarfile
import threading
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, TargetFile
from tuf.api.serialization.json import JSONSerializer

from firmware import release
from firmware.bundle import BundlePolicy, target_fields
from sync.firmware_fetch import (
    BadArchive,
    BadSignature,
    BundleRejected,
    ClockNotSet,
    DirectoryFetcher,
    Freeze,
    HashMismatch,
    Rollback,
    SourceUnavailable,
    UpdateError,
    fetch_update,
    verify_offline_archive,
)
from tests.release_helpers import (
    NOW,
    device_clock,
    fake_bundle,
    make_repo,
    manifest_bytes,
    pinned_root,
    raw_tar,
    reg,
    snapshot_repo,
    tree,
)


class Device:
    """A camera's update state: its metadata dir, download dir, clock and policy."""

    def __init__(self, tmp: Path, repo: Path, *, hardware="sim", running="0.1.0", clock=None):
        self.meta, self.dl = tmp / "device" / "metadata", tmp / "device" / "downloads"
        self.root = pinned_root(repo).read_bytes()  # pinned at provisioning
        self.policy = BundlePolicy(hardware, running)
        self.clock = clock or device_clock()

    def fetch(self, source, **kw):
        return fetch_update(source, self.meta, self.dl, trusted_root=self.root,
                            policy=self.policy, clock=self.clock, **kw)

    def archive(self, path, **kw):
        return verify_offline_archive(path, self.meta, self.dl, trusted_root=self.root,
                                      policy=self.policy, clock=self.clock, **kw)


@pytest.fixture
def repo(tmp_path):
    return make_repo(tmp_path, "0.2.0")


@pytest.fixture
def http_repo(repo):
    """The repository served by a real HTTP server on loopback (the dock's role)."""
    handler = functools.partial(_QuietHandler, directory=str(repo[0]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", repo
    server.shutdown()
    server.server_close()
    t.join(5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: ClassVar[list[str]] = []

    def log_message(self, *args) -> None:
        _QuietHandler.requests.append(self.path)


# ---------------------------------------------------------------------------- the good path

def test_valid_update_over_http(tmp_path, http_repo):
    url, (repo, _) = http_repo
    dev = Device(tmp_path, repo)
    seen = []
    _QuietHandler.requests.clear()
    upd = dev.fetch(url, progress=lambda d, t: seen.append((d, t)))
    assert upd is not None and upd.manifest.version == "0.2.0"
    assert upd.path == dev.dl / "bwv-firmware-0.2.0.tar"
    assert hashlib.sha256(upd.path.read_bytes()).hexdigest() == upd.sha256
    assert seen[-1] == (upd.length, upd.length)
    assert upd.metadata_versions == {"root": 1, "timestamp": 2, "snapshot": 2, "targets": 2}
    assert upd.source == url
    # consistent snapshots: versioned metadata, hash-prefixed bundle
    assert "/metadata/2.snapshot.json" in _QuietHandler.requests
    assert "/metadata/2.targets.json" in _QuietHandler.requests
    assert f"/targets/{upd.sha256}.bwv-firmware-0.2.0.tar" in _QuietHandler.requests
    assert sorted(tree(dev.meta)) == ["root.json", "root_history/1.root.json", "snapshot.json",
                                      "targets.json", "timestamp.json"]
    assert sorted(tree(dev.dl)) == ["bwv-firmware-0.2.0.tar"]


def test_valid_update_through_the_directory_fetcher(tmp_path, repo):
    dev = Device(tmp_path, repo[0])
    upd = dev.fetch(repo[0])
    assert upd.manifest.version == "0.2.0" and upd.source == f"dir:{repo[0].resolve()}"
    again = dev.fetch(repo[0])  # a verified download is reused, not fetched again
    assert again.path == upd.path and again.sha256 == upd.sha256


def test_the_newest_bundle_for_this_hardware_is_chosen(tmp_path):
    repo, keys = make_repo(tmp_path, "0.2.0", "0.3.0")
    release.add_bundle(repo, keys, fake_bundle(tmp_path / "p5", "0.9.0", hardware=("pi-5",)),
                       now=NOW)
    assert Device(tmp_path / "a", repo).fetch(repo).manifest.version == "0.3.0"
    assert Device(tmp_path / "b", repo, hardware="pi-5").fetch(repo).manifest.version == "0.9.0"


def test_nothing_newer_is_no_update(tmp_path, repo):
    dev = Device(tmp_path, repo[0], running="0.2.0")
    assert dev.fetch(repo[0]) is None
    assert tree(dev.dl) == {}


# ---------------------------------------------------------------------------- signatures

def _forge_targets(repo: Path, keys: Path, signer: CryptoSigner | None, tmp: Path) -> None:
    """An attacker with the online snapshot + timestamp keys (not the targets key) adds
    a bundle to targets, signs it with ``signer`` (or not at all) and re-publishes
    snapshot and timestamp correctly."""
    evil = fake_bundle(tmp / "evil", "9.9.9", payload=b"malicious agent")
    md = Metadata.from_file(str(repo / "metadata" / "targets.json"))
    tf = TargetFile.from_file(evil.name, str(evil), ["sha256"])
    from firmware.bundle import read_manifest
    tf.unrecognized_fields["custom"] = target_fields(read_manifest(evil))
    md.signed.targets[evil.name] = tf
    md.signed.version += 1
    md.signatures.clear()
    if signer is not None:
        md.sign(signer)
    data = md.to_bytes(JSONSerializer(compact=False))
    for name in (f"{md.signed.version}.targets.json", "targets.json"):
        (repo / "metadata" / name).write_bytes(data)
    shutil.copy(evil, repo / "targets" / f"{tf.hashes['sha256']}.{evil.name}")
    signers = release.load_signers(keys)
    online = release.DiskRepository(repo, {"snapshot": signers["snapshot"],
                                           "timestamp": signers["timestamp"]}, NOW)
    online.publish()


@pytest.mark.parametrize("who", ["unsigned", "wrong key", "snapshot key"])
def test_targets_not_signed_by_the_targets_key_is_rejected(tmp_path, repo, who):
    repo_dir, keys = repo
    dev = Device(tmp_path, repo_dir)
    dev.fetch(repo_dir)
    before = tree(dev.meta)
    signer = {"unsigned": None, "wrong key": CryptoSigner.generate_ed25519(),
              "snapshot key": release.load_signers(keys)["snapshot"][0]}[who]
    _forge_targets(repo_dir, keys, signer, tmp_path)
    with pytest.raises(BadSignature) as e:
        dev.fetch(repo_dir)
    assert e.value.reason == "bad-signature"
    assert "UnsignedMetadataError" in str(e.value) and "targets" in str(e.value)
    after = tree(dev.meta)
    assert after["targets.json"] == before["targets.json"]  # the forged targets never persisted
    assert sorted(tree(dev.dl)) == ["bwv-firmware-0.2.0.tar"]


def test_unsigned_timestamp_is_rejected_and_nothing_persisted(tmp_path, repo):
    repo_dir, _ = repo
    ts = repo_dir / "metadata" / "timestamp.json"
    md = Metadata.from_file(str(ts))
    md.signatures.clear()
    ts.write_bytes(md.to_bytes(JSONSerializer(compact=False)))
    dev = Device(tmp_path, repo_dir)
    with pytest.raises(BadSignature, match="UnsignedMetadataError"):
        dev.fetch(repo_dir)
    assert sorted(tree(dev.meta)) == ["root.json", "root_history/1.root.json"]


def test_a_repository_with_another_root_is_rejected(tmp_path, repo):
    """A whole repository made by someone else (their own keys) is not ours."""
    other, _ = make_repo(tmp_path / "other", "5.0.0")
    dev = Device(tmp_path, repo[0])
    with pytest.raises(BadSignature):
        dev.fetch(other)


# ---------------------------------------------------------------------------- bundle bytes

@pytest.mark.parametrize("how", ["flip", "append", "truncate"])
def test_bundle_changed_after_signing_is_rejected(tmp_path, http_repo, how):
    url, (repo_dir, _) = http_repo
    [stored] = (repo_dir / "targets").iterdir()
    data = bytearray(stored.read_bytes())
    if how == "flip":
        data[700] ^= 0x01
    elif how == "append":
        data += b"\0" * 512
    else:
        del data[-512:]
    stored.write_bytes(bytes(data))
    dev = Device(tmp_path, repo_dir)
    with pytest.raises(HashMismatch) as e:
        dev.fetch(url)
    assert e.value.reason == "hash-mismatch"
    assert "Mismatch" in str(e.value) and "bwv-firmware-0.2.0.tar" in str(e.value)
    assert tree(dev.dl) == {}  # no bundle, no partial file


# ---------------------------------------------------------------------------- rollback

def test_older_metadata_after_newer_is_a_rollback(tmp_path):
    repo, keys = make_repo(tmp_path, "0.2.0")
    old = snapshot_repo(repo, tmp_path / "old-repo")  # what an attacker recorded earlier
    release.add_bundle(repo, keys, fake_bundle(tmp_path / "b", "0.3.0"), now=NOW)
    dev = Device(tmp_path, repo)
    assert dev.fetch(repo).manifest.version == "0.3.0"
    before = tree(dev.meta)
    with pytest.raises(Rollback) as e:
        dev.fetch(old)
    assert e.value.reason == "rollback" and "BadVersionNumberError" in str(e.value)
    assert tree(dev.meta) == before


def test_a_signed_bundle_that_is_not_newer_is_refused_when_asked_for(tmp_path):
    repo, _ = make_repo(tmp_path, "0.2.0")
    dev = Device(tmp_path, repo, running="0.3.0")
    assert dev.fetch(repo) is None  # polling: nothing to do
    with pytest.raises(BundleRejected) as e:
        dev.fetch(repo, target="bwv-firmware-0.2.0.tar")
    assert e.value.reason == "not-newer" and "0.3.0" in str(e.value)
    assert tree(dev.dl) == {}


def test_a_named_target_that_was_never_signed(tmp_path, repo):
    dev = Device(tmp_path, repo[0])
    with pytest.raises(BundleRejected) as e:
        dev.fetch(repo[0], target="bwv-firmware-6.6.6.tar")
    assert e.value.reason == "no-such-target"


# ---------------------------------------------------------------------------- freeze / clock

def test_expired_metadata_is_a_freeze(tmp_path, repo):
    dev = Device(tmp_path, repo[0])
    dev.fetch(repo[0])
    before = tree(dev.meta)
    dev.clock.advance(8 * 86400 * 10**9)  # timestamp lives 7 days; nobody refreshed it
    with pytest.raises(Freeze) as e:
        dev.fetch(repo[0])
    assert e.value.reason == "expired" and "ExpiredMetadataError" in str(e.value)
    assert "timestamp.json is expired" in str(e.value)
    assert tree(dev.meta) == before


def test_a_frozen_repository_is_refused_by_a_new_device(tmp_path):
    repo, _ = make_repo(tmp_path, "0.2.0", now=NOW - dt.timedelta(days=10))
    dev = Device(tmp_path, repo)
    with pytest.raises(Freeze):
        dev.fetch(repo)
    assert tree(dev.dl) == {}


def test_refreshed_timestamp_lifts_the_freeze(tmp_path, repo):
    repo_dir, keys = repo
    dev = Device(tmp_path, repo_dir)
    dev.clock.advance(8 * 86400 * 10**9)
    release.refresh(repo_dir, keys, now=NOW + dt.timedelta(days=8))
    assert dev.fetch(repo_dir).manifest.version == "0.2.0"


def test_clock_not_set_refuses_before_reading_anything(tmp_path, repo):
    dev = Device(tmp_path, repo[0], clock=device_clock(synced=False))
    with pytest.raises(ClockNotSet) as e:
        dev.fetch(repo[0])
    assert e.value.reason == "clock-not-set"
    assert not dev.meta.exists()
    dev1970 = Device(tmp_path / "b", repo[0], clock=device_clock(dt.datetime(
        1970, 1, 2, tzinfo=dt.UTC)))
    with pytest.raises(ClockNotSet, match="1970-01-02T00:00:00Z"):
        dev1970.fetch(repo[0])


# ---------------------------------------------------------------------------- compatibility

def test_a_bundle_for_other_hardware(tmp_path):
    repo, _ = make_repo(tmp_path, "0.2.0", hardware=("pi-5",))
    dev = Device(tmp_path, repo, hardware="sim")
    assert dev.fetch(repo) is None
    with pytest.raises(BundleRejected) as e:
        dev.fetch(repo, explicit=True)
    assert e.value.reason == "other-hardware" and "pi-5" in str(e.value)
    assert tree(dev.dl) == {}


def test_running_version_below_min_version(tmp_path):
    repo, _ = make_repo(tmp_path, "0.5.0", min_version="0.4.0")
    dev = Device(tmp_path, repo, running="0.3.0")
    with pytest.raises(BundleRejected) as e:
        dev.fetch(repo)
    assert e.value.reason == "below-min-version" and "0.4.0" in str(e.value)
    assert tree(dev.dl) == {}


# ---------------------------------------------------------------------------- signed but malformed

FILES = {"bwv-0.2.0-py3-none-any.whl": b"agent" * 40, "config/default.toml": b"[log]\n"}


def _members(kind: str):
    good = [(reg("bundle.json"), manifest_bytes(FILES))] + [(reg(p), d) for p, d in FILES.items()]
    if kind == "path traversal":
        return good + [(reg("../../etc/cron.d/evil"), b"* * * * * root sh")]
    if kind == "symlink":
        ti = tarfile.TarInfo("config/default.toml")
        ti.type, ti.linkname = tarfile.SYMTYPE, "/etc/shadow"
        return good[:2] + [(ti, None)]
    if kind == "missing payload file":
        return good[:2]
    if kind == "payload hash mismatch":
        return good[:1] + [(reg("bwv-0.2.0-py3-none-any.whl"), b"AGENT" * 40), good[2]]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind, reason", [("path traversal", "unsafe-member"),
                                          ("symlink", "unsafe-member"),
                                          ("missing payload file", "missing-file"),
                                          ("payload hash mismatch", "hash-mismatch")])
def test_a_signed_but_malformed_bundle_is_rejected_and_removed(tmp_path, kind, reason):
    """TUF vouches for the bytes; the bundle reader still refuses what it cannot
    install safely (a release mistake, or a stolen targets key)."""
    repo, keys = make_repo(tmp_path)
    bad = raw_tar(tmp_path / "bwv-firmware-0.2.0.tar", _members(kind))
    tf = TargetFile.from_file(bad.name, str(bad), ["sha256"])
    tf.unrecognized_fields["custom"] = {"bwv": {"format": "bwv-firmware-bundle/1",
                                                "version": "0.2.0", "hardware": ["sim"],
                                                "min_version": "0"}}
    shutil.copy(bad, repo / "targets" / f"{tf.hashes['sha256']}.{bad.name}")
    r = release.DiskRepository(repo, release.load_signers(keys), NOW)
    with r.edit_targets() as t:
        t.targets[bad.name] = tf
    r.publish()
    dev = Device(tmp_path, repo)
    with pytest.raises(BundleRejected) as e:
        dev.fetch(repo)
    assert e.value.reason == reason
    assert tree(dev.dl) == {}
    assert not (tmp_path / "etc").exists()


# ---------------------------------------------------------------------------- offline archive

def test_offline_archive_verifies_like_a_dock_update(tmp_path, repo):
    repo_dir, _ = repo
    release.make_archive(repo_dir, tmp_path / "usb" / "update.tar", now=NOW)
    dev = Device(tmp_path, repo_dir)
    seen = []
    upd = dev.archive(tmp_path / "usb" / "update.tar", progress=lambda d, t: seen.append(d))
    assert upd.manifest.version == "0.2.0" and upd.source == "archive:update.tar"
    assert seen and upd.path.parent == dev.dl
    assert "timestamp.json" in tree(dev.meta)


def test_offline_archive_with_nothing_newer_or_other_hardware_is_refused(tmp_path, repo):
    release.make_archive(repo[0], tmp_path / "a.tar", now=NOW)
    with pytest.raises(BundleRejected) as e:
        Device(tmp_path / "d1", repo[0], running="0.2.0").archive(tmp_path / "a.tar")
    assert e.value.reason == "not-newer"
    with pytest.raises(BundleRejected) as e:
        Device(tmp_path / "d2", repo[0], hardware="cm5").archive(tmp_path / "a.tar")
    assert e.value.reason == "other-hardware"


def test_an_old_archive_after_a_newer_dock_update_is_a_rollback(tmp_path):
    repo, keys = make_repo(tmp_path, "0.2.0")
    release.make_archive(repo, tmp_path / "old.tar", now=NOW)
    release.add_bundle(repo, keys, fake_bundle(tmp_path / "b", "0.3.0"), now=NOW)
    dev = Device(tmp_path, repo)
    dev.fetch(repo)
    before = tree(dev.meta)
    with pytest.raises(Rollback):
        dev.archive(tmp_path / "old.tar")
    assert tree(dev.meta) == before


def test_an_expired_archive_is_a_freeze(tmp_path, repo):
    release.make_archive(repo[0], tmp_path / "a.tar", now=NOW)
    dev = Device(tmp_path, repo[0])
    dev.clock.advance(8 * 86400 * 10**9)
    with pytest.raises(Freeze):
        dev.archive(tmp_path / "a.tar")


def test_a_tampered_archive_is_rejected(tmp_path, repo):
    release.make_archive(repo[0], tmp_path / "a.tar", now=NOW)
    out = tmp_path / "evil.tar"
    with tarfile.open(tmp_path / "a.tar") as src, tarfile.open(out, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name.startswith("targets/"):
                data = data[:600] + bytes([data[600] ^ 0x80]) + data[601:]
            dst.addfile(m, io.BytesIO(data))
    with pytest.raises(HashMismatch):
        Device(tmp_path, repo[0]).archive(out)


@pytest.mark.parametrize("name, kind, words", [
    ("metadata/../../evil.json", tarfile.REGTYPE, "not an allowed name"),
    ("/metadata/timestamp.json", tarfile.REGTYPE, "not an allowed name"),
    ("metadata/timestamp.json", tarfile.SYMTYPE, "not a regular file"),
    ("metadata/notes.txt", tarfile.REGTYPE, "not an allowed name"),
    ("archive.json", tarfile.REGTYPE, "appears twice"),
])
def test_unsafe_archive_members_are_refused(tmp_path, repo, name, kind, words):
    release.make_archive(repo[0], tmp_path / "a.tar", now=NOW)
    out = tmp_path / "bad.tar"
    with tarfile.open(tmp_path / "a.tar") as src, tarfile.open(out, "w") as dst:
        for m in src.getmembers():
            dst.addfile(m, io.BytesIO(src.extractfile(m).read()))
        ti = tarfile.TarInfo(name)
        ti.type = kind
        if kind == tarfile.SYMTYPE:
            ti.linkname = "/etc/passwd"
            dst.addfile(ti)
        else:
            ti.size = 2
            dst.addfile(ti, io.BytesIO(b"{}"))
    dev = Device(tmp_path, repo[0])
    with pytest.raises(BadArchive, match=words):
        dev.archive(out)
    assert not dev.meta.exists() and not (tmp_path / "evil.json").exists()


def test_not_an_archive(tmp_path, repo):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\0" * 10)
    with pytest.raises(BadArchive):
        Device(tmp_path, repo[0]).archive(junk)
    empty = raw_tar(tmp_path / "e.tar", [(reg("metadata/timestamp.json"), b"{}")])
    with pytest.raises(BadArchive, match="no archive.json"):
        Device(tmp_path, repo[0]).archive(empty)


# ---------------------------------------------------------------------------- the fetcher

def test_directory_fetcher_stays_inside_its_root(tmp_path):
    from tuf.api.exceptions import DownloadError, DownloadHTTPError
    root = tmp_path / "share"
    (root / "metadata").mkdir(parents=True)
    (root / "metadata" / "x.json").write_bytes(b"hello")
    (tmp_path / "secret").write_bytes(b"s")
    (root / "metadata" / "link.json").symlink_to(tmp_path / "secret")
    f = DirectoryFetcher(root)
    assert f.download_bytes((root / "metadata" / "x.json").as_uri(), 100) == b"hello"
    with pytest.raises(DownloadHTTPError) as e:
        f.fetch((root / "metadata" / "2.root.json").as_uri())
    assert e.value.status_code == 404  # how ngclient learns there is no newer root
    for url in [(tmp_path / "secret").as_uri(), (root / "metadata" / "link.json").as_uri(),
                (root / "metadata").as_uri() + "/../../secret"]:
        with pytest.raises(DownloadHTTPError) as e:
            f.fetch(url)
        assert e.value.status_code in (403, 404)
    with pytest.raises(DownloadError):
        f.fetch("http://127.0.0.1:9/x")
    with pytest.raises(Exception, match="exceeding"):
        f.download_bytes((root / "metadata" / "x.json").as_uri(), 3)


def test_a_source_that_is_not_a_repository(tmp_path, repo):
    with pytest.raises(SourceUnavailable, match="no metadata/"):
        Device(tmp_path, repo[0]).fetch(tmp_path / "nowhere")
    with pytest.raises(SourceUnavailable):
        Device(tmp_path, repo[0]).fetch("http://127.0.0.1:9")  # nothing listens on port 9


# ---------------------------------------------------------------------------- key compromise

def _sign_timestamp_with(repo: Path, signer: CryptoSigner) -> None:
    """An attacker holding ``signer`` publishes a newer timestamp."""
    ts = repo / "metadata" / "timestamp.json"
    md = Metadata.from_file(str(ts))
    md.signed.version += 10
    md.sign(signer)
    ts.write_bytes(md.to_bytes(JSONSerializer(compact=False)))


def test_a_rotated_out_timestamp_key_signs_nothing(tmp_path, repo):
    repo_dir, keys = repo
    dev = Device(tmp_path, repo_dir)
    dev.fetch(repo_dir)
    leaked = release.load_signers(keys)["timestamp"][0]
    out = release.rotate_key(repo_dir, keys, "timestamp", now=NOW)
    assert out["root_version"] == 2 and out["revoked"] == leaked.public_key.keyid
    assert (keys / "revoked").is_dir() and len(list((keys / "revoked").iterdir())) == 1
    upd = dev.fetch(repo_dir)  # the camera walks to root v2 and trusts the new key
    assert upd.metadata_versions["root"] == 2
    assert (dev.meta / "root_history" / "2.root.json").is_file()
    before = tree(dev.meta)
    _sign_timestamp_with(repo_dir, leaked)
    with pytest.raises(BadSignature, match="timestamp"):
        dev.fetch(repo_dir)
    assert tree(dev.meta) == before


def test_a_rotated_root_key_is_followed_by_a_new_camera(tmp_path, repo):
    repo_dir, keys = repo
    release.rotate_key(repo_dir, keys, "root", number=2, now=NOW)
    release.rotate_key(repo_dir, keys, "targets", now=NOW)
    dev = Device(tmp_path, repo_dir)  # pinned to 1.root.json from provisioning
    upd = dev.fetch(repo_dir)
    assert upd.metadata_versions["root"] == 3 and upd.manifest.version == "0.2.0"
    with pytest.raises(release.ReleaseError, match="no such key"):
        release.rotate_key(repo_dir, keys, "snapshot", number=4, now=NOW)


def test_mix_and_match_of_metadata_versions_is_rejected(tmp_path):
    """An old targets.json served under the current snapshot (a mirror mixing states)."""
    repo, _ = make_repo(tmp_path, "0.2.0", "0.3.0")
    meta = repo / "metadata"
    (meta / "3.targets.json").write_bytes((meta / "2.targets.json").read_bytes())
    dev = Device(tmp_path, repo)
    with pytest.raises(HashMismatch, match="LengthOrHashMismatchError"):
        dev.fetch(repo)
    assert "targets.json" not in tree(dev.meta) and tree(dev.dl) == {}


@pytest.fixture(scope="module")
def archive_bytes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("arch")
    repo, _ = make_repo(tmp, "0.2.0")
    release.make_archive(repo, tmp / "a.tar", now=NOW)
    return pinned_root(repo).read_bytes(), (tmp / "a.tar").read_bytes()


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_a_damaged_archive_fails_only_with_a_named_error(tmp_path_factory, archive_bytes, data):
    root, good = archive_bytes
    buf = bytearray(good)
    for _ in range(data.draw(st.integers(1, 3))):
        buf[data.draw(st.integers(0, len(buf) - 1))] ^= data.draw(st.integers(1, 255))
    d = tmp_path_factory.mktemp("fz")
    (d / "a.tar").write_bytes(bytes(buf))
    try:
        upd = verify_offline_archive(d / "a.tar", d / "meta", d / "dl", trusted_root=root,
                                     policy=BundlePolicy("sim", "0.1.0"), clock=device_clock())
    except UpdateError as exc:
        assert exc.reason and str(exc)
        assert not list((d / "dl").glob("*")) if (d / "dl").exists() else True
        return
    assert hashlib.sha256(upd.path.read_bytes()).hexdigest() == upd.sha256
    assert upd.manifest.version == "0.2.0"


@pytest.mark.parametrize("path", ["bwv-firmware-1.2.0.tar", "a/b", "..", ".", "", ".x.part",
                                  "\ud800x", "\u00e9" * 128, "x" * 300])
def test_a_signed_target_path_becomes_one_safe_local_name(path):
    """Signed does not mean sensible: any target path maps to a single file name under
    the download directory, within 255 bytes, never "." / ".." or one of our temps."""
    from sync.firmware_fetch import _safe_name
    name = _safe_name(path)
    assert "/" not in name and name not in ("", ".", "..") and not name.startswith(".")
    assert len(name.encode()) <= 255
    if path == "bwv-firmware-1.2.0.tar":
        assert name == path  # ordinary names stay readable
