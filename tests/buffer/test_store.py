"""The ring + clip store: pre-record window, promotion by rename, pinning, byte budget.

Real RawSegments from the sim camera's segmenter, a real FileKeyStore and a SimClock:
what is sealed here is byte for byte what the camera seals.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import pyrage
import pytest

from buffer.clip import MANIFEST_NAME
from buffer.envelope import SEGMENT_MAGIC, parse
from buffer.store import Store, StoreError, StoreFull, StoreSettings, init_store, seg_name
from buffer.verify import verify_clip
from drivers.keystore import FileKeyStore
from hw_sim.clock import SimClock

WINDOW_NS = 2 * 10**9
FRAME_NS = 33_333_333


def make_store(tmp_path: Path, **settings) -> tuple[Store, FileKeyStore]:
    recipient = str(pyrage.x25519.Identity.generate().to_public())
    keys = FileKeyStore.create(tmp_path / "keys", "BWV-TEST-0001", recipient)
    init_store(tmp_path / "store", keys.device())
    s = StoreSettings(**{"pre_record_ns": WINDOW_NS, "frame_interval_ns": FRAME_NS, **settings})
    return Store.open(tmp_path / "store", keys, SimClock(), s, officer_id="OFF-7"), keys


def files(root: Path) -> dict[str, bytes]:
    """Every segment/manifest file under the store, relative path -> SHA-256."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()
            and p.name not in ("audit.log",) and not p.name.startswith("index.sqlite")}


def rows(store: Store) -> list[tuple]:
    return store.db.execute("SELECT * FROM segments ORDER BY seq").fetchall()


def seg_times(store: Store) -> dict[int, tuple[int, int]]:
    return {s: (a, b) for s, a, b in store.db.execute(
        "SELECT seq, start_mono_ns, end_mono_ns FROM segments")}


def test_pre_record_window_keeps_at_least_the_window_and_evicts_older(tmp_path, raw_segments):
    store, _ = make_store(tmp_path)
    slack = FRAME_NS // 2
    appended: list[int] = []
    for i, raw in enumerate(raw_segments):
        ack = store.append(raw)
        appended.append(ack.seq)
        ring = store.ring_seqs()
        times = seg_times(store)
        newest_end = times[ring[-1]][1]
        recorded_span = raw.end_mono_ns - raw_segments[0].start_mono_ns
        coverage = newest_end - times[ring[0]][0]
        # keeps >= the window (or everything, while less than a window was recorded) ...
        assert coverage >= min(WINDOW_NS, recorded_span) - slack, (i, ring)
        # ... and nothing older than needed: without its oldest segment it is short.
        if len(ring) > 1:
            assert newest_end - times[ring[1]][0] < WINDOW_NS - slack, (i, ring)
        # evicted segments are gone from disk and index; kept ones are on disk
        on_disk = sorted(int(p.name[:12]) for p in store.ring.iterdir())
        assert on_disk == ring
        assert set(appended) - set(ring) == {s for s in appended if s < ring[0]}
    assert len(store.ring_seqs()) < len(raw_segments)  # something was evicted at all
    assert store.db.execute("SELECT COUNT(*) FROM intents").fetchone()[0] == 0
    store.close()


def test_open_clip_promotes_the_window_by_rename_not_copy(tmp_path, raw_segments):
    store, keys = make_store(tmp_path)
    for raw in raw_segments[:8]:
        store.append(raw)
    ring = store.ring_seqs()
    inodes = {s: os.stat(store.ring / seg_name(s)).st_ino for s in ring}
    digests = {s: hashlib.sha256((store.ring / seg_name(s)).read_bytes()).hexdigest() for s in ring}
    press = raw_segments[7].end_mono_ns + 100 * 10**6
    cid = store.open_clip(press_mono_ns=press, started_utc_ns=raw_segments[7].end_utc_ns)
    pinned = store.clip_segments(cid)
    assert pinned, "the pre-record window was not promoted"
    times = seg_times(store)
    assert times[pinned[0]][0] <= press - WINDOW_NS, "clip does not reach back a whole window"
    for s in pinned:
        p = store.clips / cid / seg_name(s)
        assert os.stat(p).st_ino == inodes[s], f"seq {s} was copied, not renamed"
        assert hashlib.sha256(p.read_bytes()).hexdigest() == digests[s]
        assert not (store.ring / seg_name(s)).exists()
    assert store.ring_seqs() == [s for s in ring if s not in pinned]
    store.close_clip(cid, stop_reason="test", stopped_utc_ns=None)
    assert verify_clip(store.clips / cid, keys.device()).ok
    store.close()


def test_pinned_segments_are_never_evicted(tmp_path, raw_segments):
    store, _ = make_store(tmp_path)
    for raw in raw_segments[:5]:
        store.append(raw)
    cid = store.open_clip(press_mono_ns=raw_segments[4].end_mono_ns,
                          started_utc_ns=raw_segments[4].end_utc_ns)
    for raw in raw_segments[5:8]:
        store.append(raw, clip_id=cid)
    store.close_clip(cid, stop_reason="test", stopped_utc_ns=None)
    clip_files = {p.name: p.read_bytes() for p in (store.clips / cid).iterdir()}
    pinned = store.clip_segments(cid)
    # Window eviction, then byte-budget eviction: neither may touch the clip.
    for raw in raw_segments[8:12]:
        store.append(raw)
    store.settings = dataclasses.replace(store.settings, max_bytes=store.pinned_bytes()
                                         + 2 * max(r[4] for r in rows(store)))
    for raw in raw_segments[12:]:
        store.append(raw)
    assert store.clip_segments(cid) == pinned
    assert {p.name: p.read_bytes() for p in (store.clips / cid).iterdir()} == clip_files
    assert store.used_bytes <= store.settings.max_bytes
    assert '"event":"pre_record_window_shrunk"' in (store.root / "audit.log").read_text()
    store.close()


def test_store_full_refuses_append_and_open_clip_and_writes_nothing(tmp_path, raw_segments):
    store, _ = make_store(tmp_path, pre_record_ns=0)
    cid = store.open_clip(press_mono_ns=raw_segments[0].start_mono_ns,
                          started_utc_ns=raw_segments[0].start_utc_ns)
    for raw in raw_segments[:4]:
        store.append(raw, clip_id=cid)
    store.close_clip(cid, stop_reason="test", stopped_utc_ns=None)
    assert store.ring_seqs() == []  # only pinned data remains
    store.settings = dataclasses.replace(store.settings, max_bytes=store.used_bytes + 1000)
    before = (files(store.root), rows(store), store.head, store.used_bytes, store.clip_ids())
    with pytest.raises(StoreFull, match="pinned"):
        store.append(raw_segments[4])
    with pytest.raises(StoreFull, match="cannot start a clip"):
        store.open_clip(press_mono_ns=raw_segments[4].start_mono_ns,
                        started_utc_ns=raw_segments[4].start_utc_ns)
    after = (files(store.root), rows(store), store.head, store.used_bytes, store.clip_ids())
    assert after == before, "a refused append/open_clip left something behind"
    assert not any(p.name.endswith(".tmp") for p in store.root.rglob("*"))
    assert sorted(p.name for p in store.clips.iterdir()) == [cid]
    store.close()


def test_close_clip_writes_a_manifest_that_verifies(tmp_path, raw_segments):
    store, keys = make_store(tmp_path)
    for raw in raw_segments[:6]:
        store.append(raw)
    cid = store.open_clip(press_mono_ns=raw_segments[5].end_mono_ns,
                          started_utc_ns=raw_segments[5].end_utc_ns)
    for raw in raw_segments[6:9]:
        store.append(raw, clip_id=cid)
    mhash = store.close_clip(cid, stop_reason="record_button_hold",
                             stopped_utc_ns=raw_segments[8].end_utc_ns)
    assert store.close_clip(cid, stop_reason="again", stopped_utc_ns=None) == mhash  # idempotent
    report = verify_clip(store.clips / cid, keys.device())
    assert report.ok, report.all_failures()
    assert report.manifest["stop_reason"] == "record_button_hold"
    assert [s["seq"] for s in report.manifest["segments"]] == store.clip_segments(cid)
    assert report.gaps == []  # contiguous: no gap invented
    assert (store.clips / cid / MANIFEST_NAME).is_file()
    store.close()


def test_append_to_a_closed_or_unknown_clip_is_refused(tmp_path, raw_segments):
    store, _ = make_store(tmp_path)
    cid = store.open_clip(press_mono_ns=raw_segments[0].start_mono_ns,
                          started_utc_ns=raw_segments[0].start_utc_ns)
    store.append(raw_segments[0], clip_id=cid)
    store.close_clip(cid, stop_reason="test", stopped_utc_ns=None)
    before = (files(store.root), rows(store), store.head)
    with pytest.raises(StoreError, match="not open"):
        store.append(raw_segments[1], clip_id=cid)
    with pytest.raises(StoreError, match="not open"):
        store.append(raw_segments[1], clip_id="no-such-clip")
    assert (files(store.root), rows(store), store.head) == before
    store.close()


def test_acknowledged_segment_is_chained_and_indexed(tmp_path, raw_segments):
    store, _ = make_store(tmp_path)
    prev = store.head[1]
    for raw in raw_segments[:3]:
        ack = store.append(raw)
        env = parse(ack.path.read_bytes(), SEGMENT_MAGIC)
        assert env.body()["prev_hash"] == prev and env.hash == ack.hash
        assert store.head == (ack.seq, ack.hash)
        prev = ack.hash
    store.close()
