"""DirectoryTarget: create-only, durable, traversal-proof, honest about what it cannot vouch for."""
from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from sync.directory import DirectoryTarget
from sync.target import ObjectConflict, ObjectStat, PermanentError, TransientError


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*"))


@pytest.fixture
def share(tmp_path) -> DirectoryTarget:
    root = tmp_path / "dock"
    root.mkdir()
    return DirectoryTarget(root)


def test_round_trip_and_read_back(share):
    data = os.urandom(100_000)
    share.put("devices/D1/clips/c1/000001.bwvseg", data, sha256=sha(data),
              tags={"bwv-classification": "evidential"}, legal_hold=True)
    assert share.stat("devices/D1/clips/c1/000001.bwvseg") == ObjectStat(len(data), None)
    assert share.read_sha256("devices/D1/clips/c1/000001.bwvseg") == sha(data)
    assert share.get("devices/D1/clips/c1/000001.bwvseg") == data
    assert share.list("devices/D1/") == ["devices/D1/clips/c1/000001.bwvseg"]
    assert share.list("devices/D1/clips/c1/0000") == ["devices/D1/clips/c1/000001.bwvseg"]
    assert share.list("devices/D2/") == []
    side = share.tags("devices/D1/clips/c1/000001.bwvseg")
    assert side["tags"] == {"bwv-classification": "evidential"}
    assert side["legal_hold"] is True and side["legal_hold_enforced"] is False
    assert leftovers(share.root) == []
    assert share.description == f"dir:{share.root}"


def test_read_back_sees_a_changed_file(share):
    """stat cannot vouch (sha256 None); read_sha256 hashes what is really there."""
    data = b"A" * 5000
    share.put("k", data, sha256=sha(data), tags={})
    with open(share.root / "k", "r+b") as f:
        f.seek(1234)
        f.write(b"B")
    assert share.stat("k") == ObjectStat(5000, None)
    assert share.read_sha256("k") != sha(data)


def test_missing(share):
    assert share.stat("a/b") is None
    assert share.read_sha256("a/b") is None
    with pytest.raises(FileNotFoundError):
        share.get("a/b")


def test_create_only_identical_is_a_no_op_and_different_is_a_conflict(share):
    data = b"first"
    share.put("a/seg", data, sha256=sha(data), tags={})
    inode = (share.root / "a/seg").stat().st_ino
    share.put("a/seg", data, sha256=sha(data), tags={})
    assert (share.root / "a/seg").stat().st_ino == inode  # not rewritten
    for other in (b"other", b"longer content"):
        with pytest.raises(ObjectConflict, match="never overwritten"):
            share.put("a/seg", other, sha256=sha(other), tags={})
    assert share.get("a/seg") == data
    assert leftovers(share.root) == []


def test_lost_race_on_link_compares_instead_of_overwriting(share, monkeypatch):
    """Another writer publishes the name between our exists-check and our link."""
    data, theirs = b"ours", b"them"
    real_link = os.link

    def link_after_rival(src, dst, *a, **kw):
        Path(dst).write_bytes(theirs)
        return real_link(src, dst, *a, **kw)

    monkeypatch.setattr(os, "link", link_after_rival)
    with pytest.raises(ObjectConflict):
        share.put("r/seg", data, sha256=sha(data), tags={})
    assert share.get("r/seg") == theirs
    assert leftovers(share.root) == []


def test_filesystem_without_hard_links_falls_back_to_rename(share, monkeypatch):
    def no_links(src, dst, *a, **kw):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    data = b"fat32"
    share.put("f/seg", data, sha256=sha(data), tags={})
    assert share.get("f/seg") == data
    other = b"fat33"
    with pytest.raises(ObjectConflict):
        share.put("f/seg", other, sha256=sha(other), tags={})
    assert leftovers(share.root) == []


def test_failure_after_writing_leaves_no_temp_file(share, monkeypatch):
    def broken_link(src, dst, *a, **kw):
        assert Path(src).exists() and Path(src).name.startswith(".")  # the temp was real
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "link", broken_link)
    data = b"x" * 1000
    with pytest.raises(TransientError, match="I/O error"):
        share.put("d/seg", data, sha256=sha(data), tags={})
    assert not (share.root / "d/seg").exists()
    assert leftovers(share.root) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_is_a_permanent_error_and_leaves_nothing(share):
    (share.root / "ro").mkdir()
    os.chmod(share.root / "ro", 0o555)
    try:
        with pytest.raises(PermanentError, match="cannot write to the dock share"):
            share.put("ro/seg", b"x", sha256=sha(b"x"), tags={})
        assert sorted(p.name for p in (share.root / "ro").iterdir()) == []
    finally:
        os.chmod(share.root / "ro", 0o755)


@pytest.mark.parametrize("bad", ["../escape", "a/../../escape", "/etc/passwd", "a\\b", "",
                                 "a//b", "./a", "a/.hidden", "a/seg.tags.json", "a/\x00"])
def test_keys_that_could_escape_or_collide_are_refused(share, bad):
    with pytest.raises(ValueError):
        share.put(bad, b"x", sha256=sha(b"x"), tags={})
    with pytest.raises(ValueError):
        share.stat(bad)
    assert list(share.root.iterdir()) == []
    assert not (share.root.parent / "escape").exists()


def test_wrong_sha256_is_refused_and_writes_nothing(share):
    with pytest.raises(ValueError, match="does not match"):
        share.put("a/b", b"abc", sha256=sha(b"abd"), tags={})
    assert list(share.root.iterdir()) == []


def test_legal_hold_is_recorded_only_ever_upwards_and_sidecar_repaired(share):
    data = b"clip"
    share.put("c/seg", data, sha256=sha(data), tags={"bwv-classification": "non-evidential"})
    assert share.tags("c/seg")["legal_hold"] is False
    share.put("c/seg", data, sha256=sha(data), tags={}, legal_hold=True)
    assert share.tags("c/seg")["legal_hold"] is True
    share.put("c/seg", data, sha256=sha(data), tags={}, legal_hold=False)
    assert share.tags("c/seg")["legal_hold"] is True  # never taken off
    (share.root / "c/seg.tags.json").unlink()
    share.put("c/seg", data, sha256=sha(data), tags={"bwv-classification": "evidential"})
    assert share.tags("c/seg")["tags"] == {"bwv-classification": "evidential"}
    assert share.list("") == ["c/seg"]  # sidecars are not keys


def test_probe(share, tmp_path):
    p = share.probe()
    assert p.reachable and p.server_utc_ns is None and p.object_lock is False
    assert "not enforced" in p.detail
    assert leftovers(share.root) == []
    gone = DirectoryTarget(tmp_path / "not-mounted")
    assert gone.probe().reachable is False
    with pytest.raises(TransientError, match="not present"):
        gone.put("a", b"x", sha256=sha(b"x"), tags={})
    assert not (tmp_path / "not-mounted").exists()  # the mount point is never created


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_probe_of_a_read_only_share_names_the_cause(share):
    os.chmod(share.root, 0o555)
    try:
        with pytest.raises(PermanentError, match="cannot write"):
            share.probe()
    finally:
        os.chmod(share.root, 0o755)


def test_full_share_is_a_permanent_error_and_leaves_no_temp_file(share, monkeypatch):
    real_write = os.write
    calls = []

    def write_then_full(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, data[: len(data) // 2])  # half lands, then the disk fills
        raise OSError(errno.ENOSPC, "No space left on device")

    data = b"y" * 4096
    monkeypatch.setattr(os, "write", write_then_full)
    # the sidecar's write is the first os.write: let it and the object's first half through
    monkeypatch.setattr(share, "_write_sidecar", lambda *a, **k: None)
    with pytest.raises(PermanentError, match="dock share is full"):
        share.put("full/seg", data, sha256=sha(data), tags={})
    assert len(calls) == 2
    assert not (share.root / "full/seg").exists()
    assert leftovers(share.root) == []
