"""The store under I/O errors: a failed operation leaves nothing that bites later.

Regression tests for what the I/O-error campaign (``hw_sim.campaign_ioerrors``) found,
reproduced here by failing one call at the exact point (no FUSE needed), plus the
store-side repairs that campaign relies on.
"""
from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

import pytest

import buffer.audit as audit_mod
import buffer.fsutil as fsutil
import buffer.store as store_mod
from buffer.audit import AuditLog, verify_audit
from buffer.store import NotAStore, Store, StoreSettings, init_store, seg_name
from buffer.verify import verify_path
from drivers.keystore import FileKeyStore
from hw_sim.clock import SimClock
from hw_sim.runner import ensure_keys

SETTINGS = StoreSettings(pre_record_ns=3 * 10**9)


def eio(*_a, **_k):
    raise OSError(errno.EIO, "Input/output error (injected)")


@pytest.fixture
def work(tmp_path) -> Path:
    keys, _ = ensure_keys(tmp_path)
    init_store(tmp_path / "store", keys.device())
    return tmp_path


def open_store(work: Path, clock: SimClock | None = None) -> Store:
    return Store.open(work / "store", FileKeyStore(work / "keys"), clock or SimClock(), SETTINGS,
                      officer_id="OFF-1")


def feed(store: Store, raw_segments, i: int, clip_id=None):
    return store.append(raw_segments[i], clip_id=clip_id)


def test_an_index_commit_that_fails_after_the_rename_leaves_no_orphan(work, raw_segments, monkeypatch):
    """Campaign finding (write/EIO at a WAL write, fsync/ENOSPC at the WAL fsync): the
    segment file was renamed into ring/ but its index row failed; the next segment took
    the same seq inside a clip, and the stale ring file then met it at recovery ("seq 8 is
    in two places", the ring copy not the acknowledged one)."""
    store = open_store(work)
    for i in range(3):
        feed(store, raw_segments, i)
    real_index = Store._index
    calls = {"n": 0}

    def failing_index(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return real_index(self, *a, **k)
    monkeypatch.setattr(Store, "_index", failing_index)
    with pytest.raises(sqlite3.OperationalError):
        feed(store, raw_segments, 3)
    failed_seq = store.head[0] + 1
    assert not (store.ring / seg_name(failed_seq)).exists()  # gone at once
    clip = store.open_clip(press_mono_ns=raw_segments[4].start_mono_ns,
                           started_utc_ns=raw_segments[4].start_utc_ns, pre_record=False)
    ack = feed(store, raw_segments, 4, clip_id=clip)
    assert ack.seq == failed_seq
    store.close_clip(clip, stop_reason="record_button_hold", stopped_utc_ns=None)
    store.close()
    again = open_store(work)
    rep = again.recovery
    assert not (rep.reindexed or rep.missing or rep.quarantined), rep.as_dict()
    again.close()
    assert verify_path(work / "store").ok


def test_an_orphan_that_could_not_be_removed_is_removed_before_the_next_append(
        work, raw_segments, monkeypatch):
    store = open_store(work)
    feed(store, raw_segments, 0)
    monkeypatch.setattr(Store, "_index", lambda self, *a, **k: eio())
    monkeypatch.setattr(store_mod, "unlink_durable", eio)
    with pytest.raises(OSError):
        feed(store, raw_segments, 1)
    orphan = store.ring / seg_name(1)
    assert orphan.exists() and orphan in store._orphans
    with pytest.raises(OSError):  # still failing: the append waits for the orphan to go
        feed(store, raw_segments, 1)
    monkeypatch.undo()
    clip = store.open_clip(press_mono_ns=raw_segments[2].start_mono_ns,
                           started_utc_ns=raw_segments[2].start_utc_ns, pre_record=False)
    assert feed(store, raw_segments, 2, clip_id=clip).seq == 1
    assert not orphan.exists()
    store.close()


def test_a_failed_write_durable_leaves_no_temp_file(tmp_path, monkeypatch):
    monkeypatch.setattr(fsutil.os, "fsync", eio)
    with pytest.raises(OSError):
        fsutil.write_durable(tmp_path, "x.bwvseg", b"data")
    assert list(tmp_path.iterdir()) == []


def test_an_audit_line_written_but_not_synced_is_not_repeated(tmp_path):
    """fsync of the audit log failed after the write: the line is in the file; the next
    record must chain to it, not reuse its seq (which verify would call a broken chain)."""
    clock = SimClock()
    keys, _ = ensure_keys(tmp_path)
    log = AuditLog(tmp_path / "audit.log", device_id=keys.device().device_id, sign=keys.sign,
                   clock=clock)
    log.append("one")
    real = audit_mod.os.fsync
    audit_mod.os.fsync = eio
    try:
        with pytest.raises(OSError):
            log.append("two")
    finally:
        audit_mod.os.fsync = real
    log.append("three")
    n, problems = verify_audit(tmp_path / "audit.log", keys.device().verifies,
                               keys.device().device_id)
    assert (n, problems) == (3, [])


def test_a_store_that_fails_to_open_holds_no_lock(work, monkeypatch):
    """Campaign finding: an I/O error inside Store.open left the lock file descriptor
    open, so the agent's next attempt found its own store "in use by another process"
    (and the FUSE disk could not even be unmounted)."""
    monkeypatch.setattr(store_mod, "AuditLog", eio)
    with pytest.raises(OSError):
        open_store(work)
    monkeypatch.undo()
    open_store(work).close()  # the lock is free


def test_recovery_failing_part_way_releases_the_store(work, monkeypatch):
    monkeypatch.setattr(Store, "_recover", lambda self: eio())
    with pytest.raises(OSError):
        open_store(work)
    monkeypatch.undo()
    open_store(work).close()  # not "in use by another bwv process"


def test_open_clip_cut_short_by_an_io_error_goes_on_when_asked_again(work, raw_segments, monkeypatch):
    store = open_store(work)
    for i in range(4):
        feed(store, raw_segments, i)
    press = raw_segments[3].end_mono_ns
    monkeypatch.setattr(store_mod, "mkdir_durable", eio)  # row committed, directory not made
    with pytest.raises(OSError):
        store.open_clip(press_mono_ns=press, started_utc_ns=0, clip_id="C1")
    monkeypatch.undo()
    assert store.clip_is_open("C1")
    store.open_clip(press_mono_ns=press, started_utc_ns=0, clip_id="C1")  # asked again
    pinned = store.clip_segments("C1")
    assert pinned and pinned[-1] == 3  # the pre-record window is in the clip
    feed(store, raw_segments, 4, clip_id="C1")
    store.close_clip("C1", stop_reason="record_button_hold", stopped_utc_ns=None)
    store.close()
    assert verify_path(work / "store").ok


def test_a_closed_clip_is_not_reopened(work):
    store = open_store(work)
    store.open_clip(press_mono_ns=0, started_utc_ns=0, clip_id="C1", pre_record=False)
    store.close_clip("C1", stop_reason="x", stopped_utc_ns=0)
    with pytest.raises(store_mod.StoreError, match="exists already"):
        store.open_clip(press_mono_ns=0, started_utc_ns=0, clip_id="C1")
    store.close()


def test_a_transaction_left_open_by_a_failed_rollback_does_not_wedge_the_index(work):
    store = open_store(work)
    store.db.execute("BEGIN IMMEDIATE")  # what a COMMIT + ROLLBACK that both failed leave
    store.set_setting("k", "v")
    assert store.get_setting("k") == "v"
    store.close()


def test_a_first_start_cut_short_is_finished_not_refused(tmp_path):
    keys, _ = ensure_keys(tmp_path)
    root = tmp_path / "store"
    root.mkdir()
    for sub in ("ring", "clips", "quarantine"):
        (root / sub).mkdir()
    (root / fsutil.tmp_name("device.json")).write_bytes(b"{")
    init_store(root, keys.device())
    open_store(tmp_path).close()


def test_a_foreign_directory_is_still_refused(tmp_path):
    keys, _ = ensure_keys(tmp_path)
    root = tmp_path / "store"
    (root / "ring").mkdir(parents=True)
    (root / "ring" / "somebody-elses.file").write_bytes(b"x")
    with pytest.raises(NotAStore):
        init_store(root, keys.device())
    (root / "ring" / "somebody-elses.file").unlink()
    (root / "notes.txt").write_text("mine")
    with pytest.raises(NotAStore):
        init_store(root, keys.device())
    assert os.path.exists(root / "notes.txt")


def test_a_directory_fsync_that_fails_after_the_rename_leaves_no_orphan(work, raw_segments, monkeypatch):
    """Campaign finding (fsyncdir sticky): the segment was renamed into ring/, then the
    ring's fsync failed; its stale file later met the same seq in a clip."""
    store = open_store(work)
    feed(store, raw_segments, 0)
    real, calls = fsutil.fsync_dir, {"n": 0}

    def fail_first(path):
        calls["n"] += 1
        if calls["n"] == 1:
            eio()
        real(path)
    monkeypatch.setattr(fsutil, "fsync_dir", fail_first)
    with pytest.raises(OSError):
        feed(store, raw_segments, 1)
    assert not (store.ring / seg_name(1)).exists()
    monkeypatch.undo()
    clip = store.open_clip(press_mono_ns=raw_segments[2].start_mono_ns,
                           started_utc_ns=raw_segments[2].start_utc_ns, pre_record=False)
    assert feed(store, raw_segments, 2, clip_id=clip).seq == 1
    store.close_clip(clip, stop_reason="record_button_hold", stopped_utc_ns=None)
    store.close()
    rep = open_store(work).recovery
    assert not (rep.reindexed or rep.quarantined or rep.missing), rep.as_dict()


def test_a_promotion_cut_short_after_its_links_is_finished_when_asked_again(work, raw_segments,
                                                                            monkeypatch):
    """Campaign finding (unlink sticky): the pre-record window was linked into the clip but
    not unlinked from the ring; segments then went into the (open) clip, and the retried
    open saw segments and skipped the window, which the ring later evicted from under the
    clip's names ("file clips/…/7 is not in the index")."""
    store = open_store(work)
    for i in range(4):
        feed(store, raw_segments, i)
    press = raw_segments[3].end_mono_ns
    monkeypatch.setattr(fsutil.os, "unlink", eio)
    with pytest.raises(OSError):
        store.open_clip(press_mono_ns=press, started_utc_ns=0, clip_id="C1")
    monkeypatch.undo()
    feed(store, raw_segments, 4, clip_id="C1")  # recording goes on meanwhile
    store.open_clip(press_mono_ns=press, started_utc_ns=0, clip_id="C1")  # the retry
    pinned = store.clip_segments("C1")
    assert pinned[-1] == 4 and 3 in pinned and len(pinned) >= 3, pinned
    assert not any((store.ring / seg_name(s)).exists() for s in pinned)
    for i in range(5, 9):
        feed(store, raw_segments, i)  # the ring moves on; nothing of the clip is evicted
    store.close_clip("C1", stop_reason="record_button_hold", stopped_utc_ns=None)
    store.close()
    assert verify_path(work / "store").ok
