"""Recovery after power loss: crash states built by hand on a real store, then Store.open.

Each test leaves the store the way a cut at one point of the write path would, reopens it
(which runs recovery), and checks that the store, its index and its audit log agree again,
that nothing unverifiable was deleted, and that the store still verifies.
"""
from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from buffer.audit import verify_audit
from buffer.clip import MANIFEST_NAME
from buffer.envelope import SEGMENT_MAGIC, parse
from buffer.store import Store, StoreSettings, seg_name
from buffer.verify import verify_clip, verify_path
from drivers.keystore import FileKeyStore
from hw_sim.clock import SimClock

SETTINGS = StoreSettings(pre_record_ns=3 * 10**9)


def open_store(work: Path) -> Store:
    clock = SimClock(mono_start_ns=5_000 * 10**9, utc_start_ns=1_796_090_000 * 10**9)
    return Store.open(work / "store", FileKeyStore(work / "keys"), clock, SETTINGS,
                      officer_id="OFF-7")


def crash(store: Store) -> None:
    """The process dies: no store.close(), so no clean-shutdown mark (the kernel drops
    the dead process's store lock)."""
    store.db.close()
    os.close(store._lock_fd)


def sql(work: Path, statement: str, *args) -> list:
    db = sqlite3.connect(work / "store" / "index.sqlite", isolation_level=None)
    try:
        return db.execute(statement, args).fetchall()
    finally:
        db.close()


def audit_events(work: Path) -> list[dict]:
    return [json.loads(ln.rsplit("\t", 1)[0])
            for ln in (work / "store" / "audit.log").read_text().splitlines()]


def audit_ok(work: Path, store: Store) -> None:
    verifier = store.device.verifier()

    def vsig(sig, msg):
        try:
            verifier.verify(sig, msg)
            return True
        except Exception:  # noqa: BLE001
            return False
    _, problems = verify_audit(work / "store" / "audit.log", vsig, store.device.device_id)
    assert problems == []


def snapshot(work: Path) -> tuple:
    root = work / "store"
    listing = sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*")
                     if p.is_file() and p.name != "audit.log" and not p.name.startswith("index.sqlite"))
    tables = tuple(sql(work, f"SELECT * FROM {t} ORDER BY 1") for t in ("segments", "clips", "intents"))
    return listing, tables


def ring_files(work: Path) -> list[Path]:
    return sorted((work / "store" / "ring").glob("*.bwvseg"))


@pytest.fixture
def work(store_copy) -> Path:
    return store_copy


def test_clean_store_reopens_with_nothing_to_recover(work):
    before = snapshot(work)
    store = open_store(work)
    rec = store.recovery
    assert not rec.unclean_shutdown and not any(
        (rec.discarded_tmp, rec.finished_evictions, rec.reindexed, rec.missing, rec.quarantined,
         rec.closed_clips, rec.audit_repaired_bytes))
    store.close()
    assert snapshot(work) == before


def test_leftover_temp_files_are_removed_and_reported(work):
    ring_tmp = work / "store" / "ring" / f".{seg_name(25)}.tmp"
    ring_tmp.write_bytes(b"BWVSEG1\n\x00\x00")  # a torn, never-acknowledged write
    clip = sorted(p for p in (work / "store" / "clips").iterdir())[0]
    clip_tmp = clip / f".{MANIFEST_NAME}.tmp"
    clip_tmp.write_bytes(b"BWVCLP1\n")
    store = open_store(work)
    assert not ring_tmp.exists() and not clip_tmp.exists()
    assert sorted(store.recovery.discarded_tmp) == sorted(
        [str(ring_tmp.relative_to(work / "store")), str(clip_tmp.relative_to(work / "store"))])
    rec_events = [e for e in audit_events(work) if e["event"] == "recovery"]
    assert rec_events and sorted(rec_events[-1]["data"]["discarded_tmp"]) == sorted(
        store.recovery.discarded_tmp)
    store.close()
    assert verify_path(work / "store", work / "keys" / "device.json").ok


def test_durable_file_without_index_row_is_reindexed(work):
    newest = ring_files(work)[-1]
    seq = int(newest.name[:12])
    row = sql(work, "SELECT * FROM segments WHERE seq=?", seq)
    prev = sql(work, "SELECT seq, hash FROM segments WHERE seq=?", seq - 1)[0]
    # cut between write_durable and the index commit: no row, head still the previous one
    sql(work, "DELETE FROM segments WHERE seq=?", seq)
    sql(work, "UPDATE meta SET value=? WHERE key='head_seq'", str(prev[0]))
    sql(work, "UPDATE meta SET value=? WHERE key='head_hash'", prev[1])
    store = open_store(work)
    assert store.recovery.reindexed == [seq]
    again = sql(work, "SELECT * FROM segments WHERE seq=?", seq)
    assert again[0][:7] == row[0][:7]  # the header's ISO times carry microseconds only:
    assert all(abs(a - b) < 1000 for a, b in zip(again[0][7:9], row[0][7:9]))
    assert again[0][9] == row[0][9]  # the whole file's SHA-256, taken again from the bytes
    assert store.head == (seq, row[0][1])  # the chain continues from the reindexed segment
    store.close()
    assert verify_path(work / "store", work / "keys" / "device.json").ok


def test_unverifiable_file_is_quarantined_never_deleted(work):
    newest = ring_files(work)[-1]
    seq = int(newest.name[:12])
    data = bytearray(newest.read_bytes())
    data[parse(bytes(data), SEGMENT_MAGIC).payload_offset - 1] ^= 0xFF  # signature byte
    newest.write_bytes(bytes(data))
    sql(work, "DELETE FROM segments WHERE seq=?", seq)
    garbage = work / "store" / "ring" / seg_name(9_999)
    garbage.write_bytes(b"not a segment at all")
    quarantine = work / "store" / "quarantine"
    earlier = quarantine / newest.name  # quarantined by an earlier recovery: must survive
    earlier.write_bytes(b"quarantined last week")
    store = open_store(work)
    assert not newest.exists() and not garbage.exists()
    kept = {p.read_bytes() for p in quarantine.iterdir()}
    assert kept == {bytes(data), b"not a segment at all", b"quarantined last week"}
    assert len(store.recovery.quarantined) == 2
    assert any(newest.name in q for q in store.recovery.quarantined)
    assert store.recovery.reindexed == []
    assert not sql(work, "SELECT 1 FROM segments WHERE seq IN (?, ?)", seq, 9_999)
    assert [e for e in audit_events(work) if e["event"] == "recovery"][-1]["data"]["quarantined"]
    store.close()
    assert verify_path(work / "store", work / "keys" / "device.json").ok


def test_eviction_intent_is_finished(work):
    oldest, second = ring_files(work)[:2]
    s1, s2 = int(oldest.name[:12]), int(second.name[:12])
    # cut after the intent was recorded: once before the unlink, once after it
    sql(work, "INSERT INTO intents(op, seq, path) VALUES ('evict', ?, ?)", s1, f"ring/{oldest.name}")
    sql(work, "INSERT INTO intents(op, seq, path) VALUES ('evict', ?, ?)", s2, f"ring/{second.name}")
    second.unlink()
    store = open_store(work)
    assert store.recovery.finished_evictions == 2
    assert not oldest.exists()
    assert not sql(work, "SELECT * FROM intents")
    assert not sql(work, "SELECT 1 FROM segments WHERE seq IN (?, ?)", s1, s2)
    store.close()
    assert verify_path(work / "store", work / "keys" / "device.json").ok


def test_open_clip_is_closed_by_recovery_and_verifies(work, raw_segments):
    store = open_store(work)
    cid = store.open_clip(press_mono_ns=raw_segments[0].start_mono_ns,
                          started_utc_ns=raw_segments[0].start_utc_ns)
    acked = [store.append(raw, clip_id=cid) for raw in raw_segments[:3]]
    crash(store)
    assert not (work / "store" / "clips" / cid / MANIFEST_NAME).exists()
    store = open_store(work)
    rec = store.recovery
    assert rec.closed_clips == [cid] and rec.unclean_shutdown
    report = verify_clip(work / "store" / "clips" / cid, store.device)
    assert report.ok, report.all_failures()
    assert report.manifest["stop_reason"] == "power_loss_recovery"
    assert [(s.seq, s.hash) for s in report.segments] == [(a.seq, a.hash) for a in acked]
    events = [e["event"] for e in audit_events(work)]
    assert "unclean_shutdown" in events
    stop = [e for e in audit_events(work) if e["event"] == "record_stop"][-1]
    assert stop["data"]["clip_id"] == cid and stop["data"]["reason"] == "power_loss_recovery"
    store.close()
    assert verify_path(work / "store", work / "keys" / "device.json").ok


def test_torn_last_audit_line_is_truncated(work):
    log = work / "store" / "audit.log"
    intact = log.read_bytes()
    torn = b'{"clock_synced":true,"data":{"head_se'
    log.write_bytes(intact + torn)
    store = open_store(work)
    assert store.recovery.audit_repaired_bytes == len(torn)
    data = log.read_bytes()
    assert data.startswith(intact) and not data[len(intact):].startswith(torn)
    assert data.endswith(b"\n") and all(b"\t" in ln for ln in data.split(b"\n")[:-1])
    audit_ok(work, store)
    rec = [e for e in audit_events(work) if e["event"] == "recovery"][-1]
    assert rec["data"]["audit_repaired_bytes"] == len(torn)
    store.close()


def test_unclean_shutdown_is_recorded_in_the_audit_log(work):
    store = open_store(work)
    head = store.head
    crash(store)
    store = open_store(work)
    assert store.recovery.unclean_shutdown
    ev = [e for e in audit_events(work) if e["event"] == "unclean_shutdown"]
    assert len(ev) == 1 and ev[0]["data"]["head_seq"] == head[0]
    assert ev[0]["data"]["last_segment_end_utc"] is not None
    audit_ok(work, store)
    store.close()
    store = open_store(work)  # and a clean close is recognised as clean
    assert not store.recovery.unclean_shutdown
    store.close()


def test_recovery_twice_changes_nothing_the_second_time(work, raw_segments):
    # several crash states at once
    (work / "store" / "ring" / f".{seg_name(40)}.tmp").write_bytes(b"torn")
    oldest = ring_files(work)[0]
    sql(work, "INSERT INTO intents(op, seq, path) VALUES ('evict', ?, ?)",
        int(oldest.name[:12]), f"ring/{oldest.name}")
    newest = ring_files(work)[-1]
    sql(work, "DELETE FROM segments WHERE seq=?", int(newest.name[:12]))
    (work / "store" / "ring" / seg_name(9_999)).write_bytes(b"junk")
    store = open_store(work)
    cid = store.open_clip(press_mono_ns=raw_segments[0].start_mono_ns,
                          started_utc_ns=raw_segments[0].start_utc_ns)
    store.append(raw_segments[0], clip_id=cid)
    crash(store)
    with open(work / "store" / "audit.log", "ab") as f:
        f.write(b'{"torn')
    first = open_store(work)
    r1 = first.recovery
    assert r1.closed_clips == [cid] and r1.audit_repaired_bytes
    crash(first)  # and cut again right after recovery
    after_first = snapshot(work)
    second = open_store(work)
    r2 = second.recovery
    assert snapshot(work) == after_first
    assert not any((r2.discarded_tmp, r2.finished_evictions, r2.reindexed, r2.missing,
                    r2.quarantined, r2.closed_clips, r2.audit_repaired_bytes)), r2.as_dict()
    audit_ok(work, second)
    second.close()
    assert snapshot(work) == after_first
    assert verify_path(work / "store", work / "keys" / "device.json").ok


def test_cut_between_clip_row_and_directory_is_closed_cleanly(store_copy):
    """open_clip writes the row, then makes the directory: a cut in between leaves a row."""
    store = open_store(store_copy)
    store._tx([("INSERT INTO clips(clip_id, state, officer_id, started_utc_ns, press_mono_ns, "
                "start_reason) VALUES ('cut-clip', 'open', 'T', 1, 1, 'record_button')", ())])
    crash(store)  # no directory was made
    again = open_store(store_copy)
    assert "cut-clip" in again.recovery.closed_clips
    again.close()
    report = verify_path(store_copy / "store")
    assert report.ok, report.all_failures()


def test_clip_directory_without_a_row_is_kept_and_closed(store_copy):
    store = open_store(store_copy)
    seq = store.ring_seqs()[-1]
    crash(store)
    orphan = store_copy / "store" / "clips" / "orphan"
    orphan.mkdir()
    (store_copy / "store" / "ring" / seg_name(seq)).rename(orphan / seg_name(seq))
    again = open_store(store_copy)
    assert "orphan" in again.recovery.closed_clips
    again.close()
    report = verify_path(store_copy / "store")
    assert report.ok, report.all_failures()
    assert [s.seq for c in report.clips if c.clip_id == "orphan" for s in c.segments] == [seq]
