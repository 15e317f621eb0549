"""``bwv release``: the TUF repository the back office signs (python-tuf metadata API)."""
from __future__ import annotations

import datetime as dt
import io
import json
import os
import stat
import tarfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root

from firmware import release
from firmware.cli import main as bwv
from tests.release_helpers import NOW, fake_bundle, make_repo


def _md(repo: Path, name: str) -> Metadata:
    return Metadata.from_file(str(repo / "metadata" / name))


def test_init_creates_signed_v1_metadata_and_private_keys(tmp_path):
    res = release.init_repo(tmp_path / "repo", tmp_path / "keys", now=NOW)
    keys = tmp_path / "keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    pems = sorted(p.name for p in keys.iterdir())
    assert pems == ["root-1.pem", "root-2.pem", "root-3.pem", "snapshot-1.pem",
                    "targets-1.pem", "timestamp-1.pem"]
    assert all(stat.S_IMODE((keys / p).stat().st_mode) == 0o600 for p in pems)
    root = _md(tmp_path / "repo", "1.root.json")
    assert res.root == tmp_path / "repo" / "metadata" / "1.root.json"
    assert root.signed.consistent_snapshot is True
    assert root.signed.roles["root"].threshold == 2 and len(root.signed.roles["root"].keyids) == 3
    for role in ("targets", "snapshot", "timestamp"):
        assert root.signed.roles[role].threshold == 1
    root.signed.verify_delegate("root", root.signed_bytes, root.signatures)
    assert root.signed.expires == NOW + dt.timedelta(days=365)
    for role in ("targets", "snapshot", "timestamp"):
        md = _md(tmp_path / "repo", f"{role}.json")
        assert md.signed.version == 1
        root.signed.verify_delegate(role, md.signed_bytes, md.signatures)
    assert (tmp_path / "repo" / "metadata" / "1.targets.json").is_file()
    assert (tmp_path / "repo" / "metadata" / "1.snapshot.json").is_file()


def test_root_threshold_needs_two_root_signatures(tmp_path):
    release.init_repo(tmp_path / "repo", tmp_path / "keys", now=NOW)
    root = _md(tmp_path / "repo", "root.json")
    one = dict(list(root.signatures.items())[:1])
    with pytest.raises(UnsignedMetadataError):
        root.signed.verify_delegate("root", root.signed_bytes, one)


def test_init_refuses_to_overwrite(tmp_path):
    release.init_repo(tmp_path / "repo", tmp_path / "keys", now=NOW)
    with pytest.raises(release.ReleaseError, match="already holds release keys"):
        release.init_repo(tmp_path / "repo2", tmp_path / "keys", now=NOW)
    with pytest.raises(release.ReleaseError, match="a repository exists already"):
        release.init_repo(tmp_path / "repo", tmp_path / "keys2", now=NOW)
    with pytest.raises(release.ReleaseError, match="threshold 4"):
        release.init_repo(tmp_path / "r3", tmp_path / "k3", now=NOW, root_threshold=4)


def test_loose_key_permissions_are_refused(tmp_path):
    release.init_repo(tmp_path / "repo", tmp_path / "keys", now=NOW)
    os.chmod(tmp_path / "keys" / "targets-1.pem", 0o644)
    with pytest.raises(release.ReleaseError, match="targets-1.pem: mode 0644"):
        release.load_signers(tmp_path / "keys")


def test_add_publishes_a_target_with_custom_fields(tmp_path):
    repo, keys = make_repo(tmp_path)
    bundle = fake_bundle(tmp_path / "b", "0.2.0", hardware=("sim", "pi-5"), min_version="0.1.0")
    seen = []
    res = release.add_bundle(repo, keys, bundle, now=NOW, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (bundle.stat().st_size,) * 2
    assert res.target == "bwv-firmware-0.2.0.tar" and not res.already_published
    targets = _md(repo, "targets.json")
    assert targets.signed.version == 2 == res.targets_version
    t = targets.signed.targets["bwv-firmware-0.2.0.tar"]
    assert t.custom == {"bwv": {"format": "bwv-firmware-bundle/1", "version": "0.2.0",
                                "hardware": ["pi-5", "sim"], "min_version": "0.1.0"}}
    assert (repo / "targets" / f"{t.hashes['sha256']}.bwv-firmware-0.2.0.tar").read_bytes() \
        == bundle.read_bytes()
    snap, ts = _md(repo, "snapshot.json"), _md(repo, "timestamp.json")
    assert snap.signed.meta["targets.json"].version == 2
    assert ts.signed.snapshot_meta.version == snap.signed.version == 2
    assert ts.signed.version == 2
    assert (repo / "metadata" / "2.targets.json").read_bytes() == \
        (repo / "metadata" / "targets.json").read_bytes()


def test_published_versions_are_immutable(tmp_path):
    repo, keys = make_repo(tmp_path, "0.2.0")
    again = release.add_bundle(repo, keys, fake_bundle(tmp_path / "bundles", "0.2.0"), now=NOW)
    assert again.already_published and again.targets_version == 2
    other = fake_bundle(tmp_path / "other", "0.2.0", payload=b"different agent")
    with pytest.raises(release.ReleaseError, match="0.2.0 is already published with other bytes"):
        release.add_bundle(repo, keys, other, now=NOW)
    assert _md(repo, "targets.json").signed.version == 2


def test_add_refuses_a_bad_bundle_naming_it(tmp_path):
    repo, keys = make_repo(tmp_path)
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all")
    before = _md(repo, "timestamp.json").signed.version
    with pytest.raises(release.ReleaseError, match="junk.tar: not a valid bundle"):
        release.add_bundle(repo, keys, junk, now=NOW)
    assert _md(repo, "timestamp.json").signed.version == before
    assert list((repo / "targets").iterdir()) == []


def test_refresh_renews_the_timestamp_and_what_is_near_expiry(tmp_path):
    repo, keys = make_repo(tmp_path, "0.2.0")
    later = NOW + dt.timedelta(days=3)
    out = release.refresh(repo, keys, now=later)
    assert out["renewed"] == ["timestamp"]
    ts = _md(repo, "timestamp.json")
    assert ts.signed.version == 3 and ts.signed.expires == later + dt.timedelta(days=7)
    assert _md(repo, "snapshot.json").signed.version == 2
    much_later = NOW + dt.timedelta(days=20)  # snapshot (30 d) now expires within 14 d
    out = release.refresh(repo, keys, now=much_later)
    assert out["renewed"] == ["snapshot", "timestamp"]
    assert _md(repo, "snapshot.json").signed.version == 3
    out = release.refresh(repo, keys, now=much_later, everything=True)
    assert out["renewed"] == ["targets", "snapshot", "timestamp"]
    assert out["roles"]["targets"]["version"] == 3


def test_archive_holds_metadata_and_the_newest_bundle(tmp_path):
    repo, keys = make_repo(tmp_path, "0.2.0", "0.3.0")
    release.add_bundle(repo, keys, fake_bundle(tmp_path / "p5", "0.2.5", hardware=("pi-5",)),
                       now=NOW)
    out = release.make_archive(repo, tmp_path / "a.tar", now=NOW)
    assert out["targets"] == ["bwv-firmware-0.2.5.tar", "bwv-firmware-0.3.0.tar"]
    assert out["valid_until"] == "2031-03-08T12:00:00Z"
    with tarfile.open(tmp_path / "a.tar") as tar:
        names = tar.getnames()
        index = json.loads(tar.extractfile("archive.json").read())
    assert names[0] == "archive.json" and index["format"] == "bwv-update-archive/1"
    assert "metadata/1.root.json" in names and "metadata/timestamp.json" in names
    assert "metadata/4.snapshot.json" in names and "metadata/4.targets.json" in names
    assert sorted(n.split(".", 1)[1] for n in names if n.startswith("targets/")) == \
        ["bwv-firmware-0.2.5.tar", "bwv-firmware-0.3.0.tar"]
    only = release.make_archive(repo, tmp_path / "s.tar", now=NOW, hardware=["sim"])
    assert only["targets"] == ["bwv-firmware-0.3.0.tar"]


def test_archive_refuses_expired_metadata_and_empty_repos(tmp_path):
    repo, keys = make_repo(tmp_path)
    with pytest.raises(release.ReleaseError, match="no published bundle"):
        release.make_archive(repo, tmp_path / "a.tar", now=NOW)
    release.add_bundle(repo, keys, fake_bundle(tmp_path / "b", "0.2.0"), now=NOW)
    with pytest.raises(release.ReleaseError, match="run bwv release refresh"):
        release.make_archive(repo, tmp_path / "a.tar", now=NOW + dt.timedelta(days=8))
    assert not (tmp_path / "a.tar").exists()


def _run(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = bwv(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_bwv_release_commands(tmp_path):
    repo, keys = str(tmp_path / "repo"), str(tmp_path / "keys")
    code, out, _ = _run("release", "init", "--repo", repo, "--keys", keys, "--timestamp-days", "2")
    assert code == 0 and json.loads(out)["root_threshold"] == 2
    assert "update-root.json" in json.loads(out)["next"]
    bundle = fake_bundle(tmp_path / "b", "0.2.0")
    code, out, err = _run("release", "add", str(bundle), "--repo", repo, "--keys", keys)
    assert code == 0 and json.loads(out)["target"] == "bwv-firmware-0.2.0.tar"
    assert "publishing bundle (MB)" in err  # progress for a person watching
    code, out, _ = _run("release", "refresh", "--repo", repo, "--keys", keys)
    assert code == 0 and json.loads(out)["roles"]["timestamp"]["version"] == 3
    code, out, err = _run("release", "archive", "--repo", repo, "--out", str(tmp_path / "a.tar"))
    assert code == 0 and json.loads(out)["targets"] == ["bwv-firmware-0.2.0.tar"]
    assert "writing archive (MB)" in err
    code, out, _ = _run("release", "status", "--repo", repo)
    assert code == 0 and json.loads(out)["targets"][0]["version"] == "0.2.0"


def test_bwv_release_errors_are_one_line(tmp_path):
    code, out, err = _run("release", "add", str(tmp_path / "x.tar"), "--repo",
                          str(tmp_path / "none"), "--keys", str(tmp_path / "keys"))
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [f"bwv: error: {tmp_path / 'keys'}: no such release keys "
                                        "directory"]
    release.init_repo(tmp_path / "repo", tmp_path / "keys", now=NOW)
    code, _, err = _run("release", "add", str(tmp_path / "x.tar"), "--repo",
                        str(tmp_path / "repo"), "--keys", str(tmp_path / "keys"))
    assert code == 2 and "x.tar: no such bundle" in err and len(err.strip().splitlines()) == 1


def test_root_is_a_valid_ngclient_trust_anchor(tmp_path):
    """The pinned root must load as ngclient's bootstrap (self-signed by threshold)."""
    repo, _ = make_repo(tmp_path)
    md = Metadata[Root].from_bytes((repo / "metadata" / "1.root.json").read_bytes())
    md.signed.verify_delegate("root", md.signed_bytes, md.signatures)


def test_damaged_repository_metadata_is_named(tmp_path):
    repo, keys = make_repo(tmp_path)
    (repo / "metadata" / "targets.json").write_text("{ damaged")
    with pytest.raises(release.ReleaseError, match=r"targets.json: not valid TUF metadata"):
        release.add_bundle(repo, keys, fake_bundle(tmp_path / "b", "0.2.0"), now=NOW)


def test_bwv_release_rotate(tmp_path):
    repo, keys = make_repo(tmp_path, "0.2.0")
    code, out, _ = _run("release", "rotate", "snapshot", "--repo", str(repo), "--keys", str(keys))
    assert code == 0 and json.loads(out)["root_version"] == 2
    root = _md(repo, "2.root.json")
    assert root.signed.roles["snapshot"].keyids == [json.loads(out)["new"]]
    snap = _md(repo, "snapshot.json")
    root.signed.verify_delegate("snapshot", snap.signed_bytes, snap.signatures)
    code, _, err = _run("release", "rotate", "targets", "--number", "2", "--repo", str(repo),
                        "--keys", str(keys))
    assert code == 2 and "targets-2.pem: no such key to rotate" in err
