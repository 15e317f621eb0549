"""The power-loss filesystem: each cut mode, fault injection, and proof that it can see.

A harness that cannot catch a writer skipping an fsync proves nothing, so two broken
writers (one skips the file's fsync, one the directory's) must lose an acknowledged
record in *every* seeded cut, while a correct writer (and SQLite in WAL mode) never
does. These tests mount the real FUSE filesystem; where ``/dev/fuse`` is missing they
fail and say so (CI has it; the power-cut campaign needs it).
"""
from __future__ import annotations

import errno
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hw_sim import powercut
from hw_sim.powercut import PowerCutDisk, PowerCutUnavailable, fuse_available
from hw_sim.powercut_model import PAGE

SEEDS = range(3)


@pytest.fixture
def disk(tmp_path):
    reason = fuse_available()
    if reason:
        pytest.fail(f"power-loss filesystem unavailable: {reason}")
    backing = tmp_path / "backing"
    backing.mkdir()
    d = PowerCutDisk(backing, tmp_path / "mnt", seed=1)
    d.mount()
    yield d
    d.unmount()


def mounted(tmp_path: Path, seed: int, name: str = "b") -> PowerCutDisk:
    reason = fuse_available()
    if reason:
        pytest.fail(f"power-loss filesystem unavailable: {reason}")
    backing = tmp_path / name
    backing.mkdir(exist_ok=True)
    d = PowerCutDisk(backing, tmp_path / f"{name}-mnt", seed=seed)
    d.mount()
    return d


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(path: Path, data: bytes, *, sync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------ writers
def record(i: int) -> bytes:
    """Three and a bit pages, different for every record and every page."""
    return b"".join(bytes([(i * 7 + p) % 251 + 1]) * PAGE for p in range(3)) + f"rec {i}\n".encode()


def correct_writer(root: Path, i: int) -> None:
    tmp = root / f".rec-{i:04d}.tmp"
    write(tmp, record(i), sync=True)
    os.rename(tmp, root / f"rec-{i:04d}")
    fsync_path(root)


def skips_file_fsync(root: Path, i: int) -> None:
    tmp = root / f".rec-{i:04d}.tmp"
    write(tmp, record(i), sync=False)  # BUG: the data is never made durable
    os.rename(tmp, root / f"rec-{i:04d}")
    fsync_path(root)


def skips_dir_fsync(root: Path, i: int) -> None:
    tmp = root / f".rec-{i:04d}.tmp"
    write(tmp, record(i), sync=True)
    os.rename(tmp, root / f"rec-{i:04d}")  # BUG: the name is never made durable


def lost_records(backing: Path, acked: list[int]) -> list[int]:
    lost = []
    for i in acked:
        p = backing / f"rec-{i:04d}"
        if not p.is_file() or p.read_bytes() != record(i):
            lost.append(i)
    return lost


def run_writer(tmp_path: Path, writer, *, seed: int, mode: str, n_records: int = 6,
               cut_after_ack: bool = True) -> tuple[Path, list[int], list[int], dict]:
    """Acknowledge records until the cut; returns (image, acknowledged by ``writer``,
    acknowledged by a correct writer working beside it, cut report), disk unmounted.

    With ``cut_after_ack`` the cut comes right after ``writer``'s seeded k-th
    acknowledgement (so everything pending is a record it claimed durable); otherwise
    at a seeded operation (the writer then meets EIO and stops).
    """
    rng = random.Random(f"{writer.__name__}:{mode}:{seed}:{cut_after_ack}")
    d = mounted(tmp_path, seed, name=f"{writer.__name__}-{mode}-{seed}-{cut_after_ack}")
    acked: list[int] = []
    good: list[int] = []
    try:
        root, beside = d.mountpoint / "w", d.mountpoint / "good"
        root.mkdir()
        beside.mkdir()
        # Two records made durable by a clean checkpoint first: the cut meets old data too.
        for i in range(2):
            correct_writer(root, i)
            acked.append(i)
        d.checkpoint()
        if cut_after_ack:
            stop = rng.randint(2, n_records - 1)
            for i in range(2, stop + 1):
                correct_writer(beside, i)
                good.append(i)
                writer(root, i)
                acked.append(i)
            report = d.cut(mode)
        else:
            d.arm_cut_at_op(rng.randint(1, 10 * n_records), mode)
            try:
                for i in range(2, n_records):
                    correct_writer(beside, i)
                    good.append(i)
                    writer(root, i)
                    acked.append(i)
            except OSError as exc:
                assert exc.errno == errno.EIO
            report = d.wait_cut(0) or d.cut(mode)
    finally:
        d.unmount()
    return d.backing, acked, good, report


@pytest.mark.parametrize("writer", [skips_file_fsync, skips_dir_fsync])
@pytest.mark.parametrize("mode", ["torn", "prefix", "barrier"])
def test_a_writer_that_skips_an_fsync_loses_an_acknowledged_record_in_every_cut(tmp_path, writer, mode):
    for seed in SEEDS:
        image, acked, good, report = run_writer(tmp_path, writer, seed=seed, mode=mode)
        assert lost_records(image / "w", acked), (
            f"{writer.__name__}, mode {mode}, seed {seed}: the cut lost nothing acknowledged "
            f"(acked {acked}, cut {report})")
        assert not lost_records(image / "good", good), "the correct writer beside it lost a record"


@pytest.mark.parametrize("mode", ["torn", "prefix", "barrier"])
def test_a_correct_writer_never_loses_an_acknowledged_record(tmp_path, mode):
    for seed in range(2):  # cut at any operation (the broken-writer cases cut after acks)
        image, acked, good, report = run_writer(tmp_path, correct_writer, seed=seed, mode=mode,
                                                cut_after_ack=False)
        assert not lost_records(image / "w", acked) and not lost_records(image / "good", good), report
        for p in [*image.glob("w/rec-*"), *image.glob("good/rec-*")]:
            assert p.read_bytes() == record(int(p.name[4:])), f"{p} is half-made under its final name"


# ------------------------------------------------------------------ cut modes
def test_torn_keeps_synced_pages_and_loses_some_unsynced_ones(disk):
    root = disk.mountpoint
    f = root / "f"
    write(f, b"A" * (8 * PAGE), sync=True)
    fsync_path(root)
    fd = os.open(f, os.O_WRONLY)
    for p in range(8):  # overwrite every page, no fsync
        os.pwrite(fd, b"B" * PAGE, p * PAGE)
    os.close(fd)
    report = disk.cut("torn")
    disk.unmount()
    data = (disk.backing / "f").read_bytes()
    assert len(data) == 8 * PAGE
    pages = [data[i * PAGE:(i + 1) * PAGE] for i in range(8)]
    assert all(p in (b"A" * PAGE, b"B" * PAGE) for p in pages), "a page is old or new, never mixed"
    assert b"A" * PAGE in pages, "a torn cut loses at least one unsynced page"
    assert report["lost_pages"] == {"/f": pages.count(b"A" * PAGE)}


def test_prefix_keeps_an_in_order_prefix_of_pending_operations(disk):
    root = disk.mountpoint
    fd = os.open(root / "log", os.O_WRONLY | os.O_CREAT, 0o644)
    os.fsync(fd)
    fsync_path(root)
    for i in range(20):  # twenty appends, nothing synced
        os.pwrite(fd, f"{i:03d}\n".encode(), 4 * i)
    os.close(fd)
    report = disk.cut("prefix")
    disk.unmount()
    data = (disk.backing / "log").read_bytes()
    n = report["surviving_ops"]
    assert report["pending_ops"] == 20 and 0 <= n < 20
    assert data == b"".join(f"{i:03d}\n".encode() for i in range(n))


def test_barrier_cut_keeps_exactly_what_was_durable_at_the_kth_barrier(disk):
    root = disk.mountpoint
    disk.arm_cut_after_barrier(3)  # 1: a's data, 2: the directory, 3: b's data
    write(root / "a", b"a" * 100, sync=True)
    fsync_path(root)
    write(root / "b", b"b" * 100, sync=True)  # b's name is never made durable
    with pytest.raises(OSError) as err:  # the next operation meets a dead disk
        write(root / "c", b"c", sync=True)
    assert err.value.errno == errno.EIO
    assert disk.wait_cut(0)["barriers"] == 3
    disk.unmount()
    assert sorted(p.name for p in disk.backing.iterdir()) == ["a"]
    assert (disk.backing / "a").read_bytes() == b"a" * 100


def test_a_cut_pinned_to_an_operation_on_a_path(disk):
    """Before the 2nd fsync of a file under sub/ (its data lost), or right after one."""
    root = disk.mountpoint
    (root / "sub").mkdir()
    fsync_path(root)
    disk.arm_cut_on("fsync", "sub/*", n=2, mode="barrier")
    write(root / "sub" / "a", b"1", sync=True)
    fsync_path(root / "sub")
    write(root / "other", b"x", sync=True)  # not under sub/: not counted
    with pytest.raises(OSError):
        write(root / "sub" / "b", b"2", sync=True)
    report = disk.wait_cut(0)
    assert report["barriers"] == 4
    disk.unmount()
    assert sorted(p.name for p in (disk.backing / "sub").iterdir()) == ["a"]


def test_a_rename_between_directories_is_durable_one_directory_at_a_time(disk):
    root = disk.mountpoint
    (root / "ring").mkdir()
    (root / "clip").mkdir()
    fsync_path(root)
    write(root / "ring" / "seg", b"s" * 10, sync=True)
    fsync_path(root / "ring")
    os.rename(root / "ring" / "seg", root / "clip" / "seg")
    fsync_path(root / "clip")  # the source directory is not fsynced
    disk.cut("barrier")
    disk.unmount()
    # the new name is durable, the old one's removal is not: the file has both names
    assert (disk.backing / "clip" / "seg").read_bytes() == b"s" * 10
    assert (disk.backing / "ring" / "seg").read_bytes() == b"s" * 10
    assert os.stat(disk.backing / "clip" / "seg").st_ino == os.stat(disk.backing / "ring" / "seg").st_ino


def test_a_clean_unmount_makes_everything_durable_and_a_frozen_disk_refuses_work(tmp_path):
    d = mounted(tmp_path, 0)
    write(d.mountpoint / "unsynced", b"u" * 5000, sync=False)
    d.unmount()
    assert (d.backing / "unsynced").read_bytes() == b"u" * 5000
    d.mount()
    assert (d.mountpoint / "unsynced").read_bytes() == b"u" * 5000  # read back through the disk
    d.cut("torn")
    with pytest.raises(OSError) as err:
        (d.mountpoint / "unsynced").read_bytes()
    assert err.value.errno == errno.EIO
    d.unmount()


def test_the_writer_dies_with_the_power(disk):
    code = ("import os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)\n"
            "d = os.open(os.path.dirname(sys.argv[1]), os.O_RDONLY); os.fsync(d)\n"
            "i = 0\n"
            "while True:\n"
            "    os.pwrite(fd, b'x' * 100, 100 * i); os.fsync(fd); i += 1\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(disk.mountpoint / "w")],
                            stderr=subprocess.PIPE)
    disk.kill_on_cut(proc.pid)
    disk.arm_cut_after_barrier(26)  # the directory, then 25 appends
    assert proc.wait(timeout=30) == -9, proc.stderr.read()  # killed, never saw an error
    assert disk.wait_cut(5)["barriers"] == 26
    disk.unmount()
    assert (disk.backing / "w").stat().st_size == 2500


# ------------------------------------------------------------------ faults
def test_fail_nth_write_with_enospc_until_cleared(disk):
    root = disk.mountpoint
    fd = os.open(root / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    disk.fail_nth("write", 3, "ENOSPC")
    os.pwrite(fd, b"1", 0)
    os.pwrite(fd, b"2", 1)
    for _ in range(2):  # sticky: every write from the third on fails
        with pytest.raises(OSError) as err:
            os.pwrite(fd, b"3", 2)
        assert err.value.errno == errno.ENOSPC
    disk.clear_faults()
    os.pwrite(fd, b"3", 2)
    os.close(fd)
    assert (root / "f").read_bytes() == b"123"
    faults = disk.status()["faults"]
    assert faults == []


def test_fail_nth_once_fsync_rename_create_with_eio(disk):
    root = disk.mountpoint
    write(root / "a", b"a", sync=False)
    disk.fail_nth("fsync", 1, errno.EIO, count=1)
    fd = os.open(root / "a", os.O_WRONLY)
    with pytest.raises(OSError) as err:
        os.fsync(fd)
    assert err.value.errno == errno.EIO
    os.fsync(fd)  # count=1: only once
    os.close(fd)
    disk.fail_nth("rename", 1, "EIO", count=1)
    with pytest.raises(OSError):
        os.rename(root / "a", root / "b")
    assert (root / "a").exists() and not (root / "b").exists(), "a failed rename changes nothing"
    disk.fail_nth("create", 2, "EIO", count=1)
    write(root / "c1", b"", sync=False)
    with pytest.raises(OSError):
        write(root / "c2", b"", sync=False)
    assert not (root / "c2").exists()
    counts = disk.op_counts()
    assert counts["create"] == 3 and counts["fsync"] == 2 and counts["rename"] == 1


def test_fail_nth_refuses_what_it_cannot_inject(disk):
    with pytest.raises(ValueError, match="unknown operation"):
        disk.fail_nth("chmod", 1, "EIO")
    with pytest.raises(powercut.PowerCutError, match="not a storage error"):
        disk.fail_nth("write", 1, errno.EPERM)
    with pytest.raises(ValueError, match="unknown cut mode"):
        disk.cut("gentle")


# ------------------------------------------------------------------ SQLite
@pytest.mark.parametrize("mode", ["torn", "prefix"])
def test_sqlite_wal_full_keeps_every_committed_transaction(tmp_path, mode):
    """SQLite as the store uses it (WAL, synchronous=FULL, fcntl locks, mmap'd -shm)."""
    for seed in range(2):
        d = mounted(tmp_path, seed, name=f"sq-{mode}-{seed}")
        db = sqlite3.connect(d.mountpoint / "i.sqlite", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE t (i INTEGER PRIMARY KEY, v BLOB)")
        d.arm_cut_at_op(random.Random(seed).randint(40, 400), mode)
        committed = 0
        try:
            for i in range(200):
                db.execute("INSERT INTO t VALUES (?, ?)", (i, os.urandom(700)))
                committed = i + 1
        except sqlite3.OperationalError:
            pass
        db.close()
        assert d.wait_cut(0) is not None
        d.unmount()
        con = sqlite3.connect(d.backing / "i.sqlite")
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert con.execute("SELECT COUNT(*) FROM t").fetchone()[0] >= committed
        con.close()


# ------------------------------------------------------------------ no FUSE
def test_without_dev_fuse_the_disk_and_the_campaign_fail_and_say_why(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(powercut, "FUSE_DEVICE", tmp_path / "no-fuse")
    with pytest.raises(PowerCutUnavailable, match="no-fuse is missing"):
        PowerCutDisk(tmp_path, tmp_path / "m").mount()
    from hw_sim import campaign_powercut
    out = tmp_path / "s.json"
    assert campaign_powercut.main(["--cuts", "1", "--json", str(out)]) == 2
    assert "is missing" in capsys.readouterr().err
    assert "is missing" in out.read_text()
