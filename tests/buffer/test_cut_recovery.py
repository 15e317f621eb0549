"""Crash states the power-cut campaign found, built by hand on a real store.

- A rename between directories (ring → clip, promoting the pre-record window) can lose
  an acknowledged segment when each directory is durable only on its own fsync, and a
  cut between the two fsyncs left a segment under two names: moves now link first and
  unlink after, and recovery keeps the clip's name.
- An audit append torn by a cut (a page of zeros inside its line) was kept as damage.
- A cut between a committed change and its audit record lost the record: the record
  now waits in the index (an outbox) until it is in the log.

The campaign's own cuts are kept in tests/hw_sim/test_powercut_store.py.
"""
from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from buffer.audit import read_events
from buffer.fsutil import move_all_durable, move_durable
from buffer.store import Store, StoreSettings, seg_name
from buffer.verify import verify_path
from drivers.keystore import FileKeyStore
from hw_sim.clock import SimClock


def open_store(work: Path) -> Store:
    clock = SimClock(mono_start_ns=5_000 * 10**9, utc_start_ns=1_796_090_000 * 10**9)
    return Store.open(work / "store", FileKeyStore(work / "keys"), clock,
                      StoreSettings(pre_record_ns=3 * 10**9), officer_id="OFF-7")


def crash(store: Store) -> None:
    store.db.close()
    os.close(store._lock_fd)


def sql(work: Path, statement: str, *args) -> list:
    db = sqlite3.connect(work / "store" / "index.sqlite", isolation_level=None)
    try:
        return db.execute(statement, args).fetchall()
    finally:
        db.close()


def promoted_then_cut(work: Path) -> tuple[str, list[int]]:
    """Promote the ring's window into a clip, then put the store back the way a cut
    after the clip's fsync (before the ring's unlink and the index update) leaves it."""
    store = open_store(work)
    ring_before = sorted(int(p.name[:12]) for p in (work / "store" / "ring").glob("*.bwvseg"))
    # the same power-on as the ring's newest run (only that run can be promoted)
    store.stream_id, end = sql(work, "SELECT stream_id, end_mono_ns FROM segments WHERE clip_id "
                                     "IS NULL ORDER BY seq DESC LIMIT 1")[0]
    clip_id = store.open_clip(press_mono_ns=end, started_utc_ns=1_796_090_100 * 10**9)
    crash(store)
    moved = sorted(int(p.name[:12]) for p in (work / "store" / "clips" / clip_id).glob("*.bwvseg"))
    assert moved, "the recorded store has no ring window to promote"
    assert set(moved) <= set(ring_before)
    for seq in moved:
        os.link(work / "store" / "clips" / clip_id / seg_name(seq), work / "store" / "ring" / seg_name(seq))
        sql(work, "UPDATE segments SET clip_id=NULL WHERE seq=?", seq)
    return clip_id, moved


def test_a_segment_under_two_names_is_kept_in_the_clip_and_the_ring_name_goes(store_copy):
    work = store_copy
    clip_id, moved = promoted_then_cut(work)
    store = open_store(work)
    assert sorted(store.recovery.duplicate_names) == moved
    assert store.recovery.closed_clips == [clip_id]
    for seq in moved:
        assert not (work / "store" / "ring" / seg_name(seq)).exists()
        assert (work / "store" / "clips" / clip_id / seg_name(seq)).is_file()
    assert sql(work, "SELECT seq FROM segments WHERE clip_id=? ORDER BY seq", clip_id) == [(s,) for s in moved]
    assert store.clip_segments(clip_id) == moved
    store.close()
    assert verify_path(work / "store", work / "keys" / "device.json").ok
    again = open_store(work)  # nothing left to do
    assert not again.recovery.duplicate_names and not again.recovery.quarantined
    again.close()


def test_two_different_files_under_one_segment_name_are_never_deleted(store_copy):
    work = store_copy
    clip_id, moved = promoted_then_cut(work)
    ring_copy = work / "store" / "ring" / seg_name(moved[0])
    data = ring_copy.read_bytes()
    ring_copy.unlink()
    ring_copy.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # not the same bytes
    store = open_store(work)
    assert not ring_copy.exists()
    kept = [q for q in store.recovery.quarantined if q.startswith(f"ring/{seg_name(moved[0])}")]
    assert kept and "differs from" in kept[0]
    assert (work / "store" / "quarantine" / seg_name(moved[0])).read_bytes()[-1] == data[-1] ^ 1
    assert (work / "store" / "clips" / clip_id / seg_name(moved[0])).read_bytes() == data
    store.close()


def test_move_durable_links_before_it_unlinks_and_finishes_a_move_cut_short(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_bytes(b"x")
    os.link(a / "x", b / "x")  # a move cut between the link and the unlink
    assert move_durable(a / "x", b) == b / "x"
    assert not (a / "x").exists() and (b / "x").read_bytes() == b"x"
    (a / "x").write_bytes(b"other")
    assert move_durable(a / "x", b, no_replace=True) == b / "x.1"  # never replaces
    assert (b / "x").read_bytes() == b"x" and (b / "x.1").read_bytes() == b"other"
    (a / "y").write_bytes(b"new")
    (b / "y").write_bytes(b"old")
    move_durable(a / "y", b)  # replacing, when asked
    assert (b / "y").read_bytes() == b"new" and not (a / "y").exists()


def test_move_all_durable_counts_a_moved_name_and_refuses_to_replace(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for n in ("1", "2", "3"):
        (a / n).write_bytes(n.encode())
    os.rename(a / "1", b / "1")  # moved by an attempt cut short
    os.link(a / "2", b / "2")    # linked, not yet unlinked
    move_all_durable(a, b, ["1", "2", "3"])
    assert sorted(p.name for p in b.iterdir()) == ["1", "2", "3"] and not list(a.iterdir())
    (a / "4").write_bytes(b"mine")
    (b / "4").write_bytes(b"theirs")
    with pytest.raises(FileExistsError, match="not replaced"):
        move_all_durable(a, b, ["4"])
    assert (a / "4").read_bytes() == b"mine" and (b / "4").read_bytes() == b"theirs"


def test_an_audit_append_torn_by_a_cut_is_cut_off_not_kept_as_damage(store_copy):
    """Campaign seed 7, random cut 91 (torn, between an audit append's write and its
    fsync): the line's last page (with its newline) reached the disk, an earlier page did
    not and read as zeros. Recovery kept the line as a 'damaged' record and the audit log
    failed verification ever after. A NUL never occurs in a record: such a last line is
    an append that was never acknowledged, and it is cut off like a line without its
    newline."""
    work = store_copy
    log = work / "store" / "audit.log"
    before = log.read_bytes()
    torn = b"\x00" * 4000 + b'"tail of a record that never finished"\tQUJD\n'
    log.write_bytes(before + torn)
    store = open_store(work)
    assert store.recovery.audit_repaired_bytes == len(torn)
    assert not store.recovery.audit_damaged_tail
    store.close()
    assert log.read_bytes().startswith(before)
    assert verify_path(work / "store", work / "keys" / "device.json").ok


def test_an_audit_record_lost_between_its_commit_and_its_append_is_appended_by_recovery(
        store_copy, monkeypatch):
    work = store_copy
    store = open_store(work)
    clip_id = store.clip_ids("closed")[0]
    store.set_classification(clip_id, "evidential", reason="test")
    real_append = store.audit.append

    def cut(event, **data):
        if event == "classification":
            raise OSError(5, "the power went")
        return real_append(event, **data)
    monkeypatch.setattr(store.audit, "append", cut)
    with pytest.raises(OSError):
        store.set_classification(clip_id, "non-evidential", reason="back office")
    crash(store)
    store = open_store(work)
    assert store.recovery.audit_completed == ["classification"]
    events = [e for e in read_events(work / "store" / "audit.log") if e["event"] == "classification"]
    assert events[-1]["data"] == {"clip_id": clip_id, "classification": "non-evidential",
                                  "reason": "back office", "completed_by_recovery": True}
    store.close()
    again = open_store(work)
    assert again.recovery.audit_completed == []
    again.close()


def test_an_audit_record_appended_before_the_cut_is_not_appended_twice(store_copy):
    work = store_copy
    store = open_store(work)
    clip_id = store.clip_ids("closed")[0]
    store.set_classification(clip_id, "evidential", reason="test")
    crash(store)  # the cut came after the append, before the outbox was cleared:
    sql(work, "INSERT OR REPLACE INTO meta VALUES ('audit_outbox', ?)",
        json.dumps({"event": "classification", "data": {
            "clip_id": clip_id, "classification": "evidential", "reason": "test"}}))
    n = len(read_events(work / "store" / "audit.log"))
    store = open_store(work)
    assert store.recovery.audit_completed == []
    assert sql(work, "SELECT 1 FROM meta WHERE key='audit_outbox'") == []
    assert len([e for e in read_events(work / "store" / "audit.log")[n:]
                if e["event"] == "classification"]) == 0
    store.close()
