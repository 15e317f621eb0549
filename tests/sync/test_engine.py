"""The sync engine against a dock share: push, prove, release — and never release early."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from buffer.store import Store, StoreSettings
from buffer.verify import verify_clip, verify_store
from drivers.keystore import FileKeyStore
from hw_sim.clock import SimClock
from sync.access import StoreView
from sync.directory import DirectoryTarget
from sync.engine import SyncEngine, SyncSettings
from sync.state import SyncState
from sync.target import PermanentError, ProbeResult

DEVICE = "BWV-SIM-0001"


def share_at(tmp_path: Path) -> DirectoryTarget:
    """A mounted dock share (an absent one is 'unreachable', as when not docked)."""
    (tmp_path / "share").mkdir(exist_ok=True)
    return DirectoryTarget(tmp_path / "share")


def open_store(work: Path) -> Store:
    return Store.open(work / "store", FileKeyStore(work / "keys"), SimClock(),
                      StoreSettings(pre_record_ns=3 * 10**9), officer_id="T")


def engine(store: Store, target, **kw) -> SyncEngine:
    settings = SyncSettings(device_id=DEVICE, verify=kw.pop("verify", "checksum"),
                            correct_clock=kw.pop("correct_clock", True))
    return SyncEngine(store=StoreView(store), target=target,
                      state=SyncState(store.root / "sync.sqlite"), clock=store.clock,
                      settings=settings, **kw)


def audit_events(store_dir: Path) -> list[dict]:
    return [json.loads(line.rsplit("\t", 1)[0]) for line in
            (store_dir / "audit.log").read_text().splitlines()]


class Recording:
    """A target wrapper that records and can misbehave; the real target underneath."""

    def __init__(self, inner, *, drop_after_ok=(), alter=(), fail_permanent=False,
                 server_offset_ns=None, on_put=None, times=10**6):
        self.inner, self.description = inner, inner.description
        self.puts: list[str] = []
        self.drop, self.alter = set(drop_after_ok), set(alter)
        self.times = {n: times for n in self.drop | self.alter}  # lies per name
        self.fail_permanent, self.server_offset_ns, self.on_put = fail_permanent, server_offset_ns, on_put
        self.clock = None

    def probe(self):
        p = self.inner.probe()
        if self.server_offset_ns is not None:
            return ProbeResult(True, self.clock.utc_ns() + self.server_offset_ns, 1_000_000, False)
        return p

    def stat(self, key):
        return self.inner.stat(key)

    def read_sha256(self, key):
        return self.inner.read_sha256(key)

    def get(self, key):
        return self.inner.get(key)

    def list(self, prefix):
        return self.inner.list(prefix)

    def put(self, key, data, *, sha256, tags, legal_hold=False, replace_corrupt=False):
        if self.fail_permanent:
            raise PermanentError("access denied by the evidence store (test)")
        self.puts.append(key)
        if self.on_put:
            self.on_put(key)
        name = key.rsplit("/", 1)[-1]
        lie = self.times.get(name, 0) > 0
        if lie:
            self.times[name] -= 1
        if lie and name in self.drop:
            return  # says OK, stores nothing
        if lie and name in self.alter:
            data = data[:-1] + bytes([data[-1] ^ 1])  # says OK, stores other bytes
            import hashlib
            sha256 = hashlib.sha256(data).hexdigest()
        self.inner.put(key, data, sha256=sha256, tags=tags, legal_hold=legal_hold,
                       replace_corrupt=replace_corrupt)


def test_sync_releases_every_clip_and_the_share_verifies(store_copy, tmp_path):
    store = open_store(store_copy)
    clips = [c.clip_id for c in store.closed_clips()]
    share = share_at(tmp_path)
    rep = engine(store, share).run()
    assert rep.status == "complete", rep.as_dict()
    assert sorted(rep.released) == sorted(clips)
    assert not any((store.root / "clips").iterdir())  # space freed
    for cid in clips:  # the back office verifies from the share, pinning the device key
        report = verify_clip(tmp_path / "share" / "devices" / DEVICE / "clips" / cid,
                             store.device)
        assert report.ok, report.all_failures()
    audit_keys = share.list(f"devices/{DEVICE}/audit/")
    assert audit_keys
    store.close()
    assert verify_store(store_copy / "store").ok  # released clips are accounted for
    released = [e for e in audit_events(store_copy / "store") if e["event"] == "clip_released"]
    assert {e["data"]["clip_id"] for e in released} == set(clips)
    assert all(o["method"] == "read-back" for e in released for o in e["data"]["objects"])


def test_second_sync_sends_nothing_again(store_copy, tmp_path):
    store = open_store(store_copy)
    share = share_at(tmp_path)
    engine(store, share).run()
    again = engine(store, share).run()
    assert again.status == "complete"
    assert again.objects_sent <= 1  # only the audit log's new records
    store.close()


def test_stop_mid_clip_releases_nothing_and_resume_resends_nothing(store_copy, tmp_path):
    store = open_store(store_copy)
    share = Recording(share_at(tmp_path))
    eng = engine(store, share)
    share.on_put = lambda key: eng.stop.set() if len(share.puts) == 4 else None
    rep = eng.run()
    assert rep.status == "stopped" and rep.released == []
    assert len(list((store.root / "clips").iterdir())) == 2  # nothing freed
    sent_before = list(share.puts)
    share2 = Recording(share_at(tmp_path))
    rep2 = engine(store, share2).run()
    assert rep2.status == "complete" and len(rep2.released) == 2
    assert not set(share2.puts) & set(sent_before), "a confirmed object was sent again"
    store.close()


@pytest.mark.parametrize("fault", ["drop", "alter"])
def test_a_lying_store_never_leads_to_a_release(store_copy, tmp_path, fault):
    store = open_store(store_copy)
    first = store.closed_clips()[0]
    victim = first.files[2].name
    kw = {"drop_after_ok": [victim]} if fault == "drop" else {"alter": [victim]}
    share = Recording(share_at(tmp_path), **kw)
    rep = engine(store, share).run()
    assert first.clip_id not in rep.released
    assert any(first.clip_id in f for f in rep.failures)
    assert (store.root / "clips" / first.clip_id).is_dir()
    assert verify_clip(store.root / "clips" / first.clip_id, store.device).ok
    faults = [e for e in audit_events(store.root) if e["event"] == "fault"]
    assert any(e["data"].get("clip_id") == first.clip_id for e in faults)
    if fault == "drop":  # the store really lost it: the next sync sends it and completes
        rep2 = engine(store, share_at(tmp_path)).run()
        assert first.clip_id in rep2.released
    store.close()


@pytest.mark.parametrize("fault", ["drop", "alter"])
def test_a_store_that_corrupts_our_upload_once_gets_it_again(store_copy, tmp_path, fault):
    """Our own bytes under our own key, not held intact: sent once more, then proven."""
    store = open_store(store_copy)
    first = store.closed_clips()[0]
    victim = first.files[1].name
    kw = {"drop_after_ok": [victim]} if fault == "drop" else {"alter": [victim]}
    share = Recording(share_at(tmp_path), times=1, **kw)
    rep = engine(store, share, verify="read-back").run()
    assert rep.status == "complete" and first.clip_id in rep.released
    assert [k for k in share.puts if k.endswith(victim)].__len__() == 2
    assert verify_clip(tmp_path / "share" / "devices" / DEVICE / "clips" / first.clip_id,
                       store.device).ok
    assert any(e["event"] == "fault" and e["data"]["kind"] == "sync_store_corrupted_upload"
               for e in audit_events(store.root))
    store.close()


def test_a_file_damaged_on_the_device_is_never_passed_off_or_released(store_copy, tmp_path):
    store = open_store(store_copy)
    clip = store.closed_clips()[0]
    p = clip.files[3].path
    data = bytearray(p.read_bytes())
    data[-10] ^= 1  # storage damage after sealing
    p.write_bytes(bytes(data))
    rep = engine(store, share_at(tmp_path)).run()
    assert clip.clip_id not in rep.released
    assert any("local storage damage" in f for f in rep.failures)
    assert (store.root / "clips" / clip.clip_id).is_dir()
    store.close()


def test_buffer_refuses_a_proof_that_does_not_match_what_it_wrote(store_copy, tmp_path):
    store = open_store(store_copy)
    clip = store.closed_clips()[0]

    class Forged(StoreView):
        def release_clip(self, clip_id, *, target, proof):
            proof = [dict(p) for p in proof]
            proof[2]["sha256"] = "0" * 64  # a confirmation for other bytes
            super().release_clip(clip_id, target=target, proof=proof)

    eng = engine(store, share_at(tmp_path))
    eng.store = Forged(store)
    rep = eng.run()
    assert clip.clip_id not in rep.released
    assert any("does not match the file the device wrote" in f for f in rep.failures)
    assert (store.root / "clips" / clip.clip_id).is_dir()
    store.close()


def test_permanent_error_stops_with_a_named_fault(store_copy, tmp_path):
    store = open_store(store_copy)
    rep = engine(store, Recording(share_at(tmp_path), fail_permanent=True)).run()
    assert rep.status == "fault" and "access denied" in rep.message
    assert rep.released == []
    assert any(e["event"] == "fault" and e["data"]["kind"] == "sync_permanent"
               for e in audit_events(store.root))
    store.close()


def test_evidential_clips_go_first(store_copy, tmp_path):
    store = open_store(store_copy)
    older, newer = [c.clip_id for c in store.closed_clips()]
    store.set_classification(newer, "evidential", reason="test")
    share = Recording(share_at(tmp_path))
    engine(store, share).run()
    order = [k.split("/clips/")[1].split("/")[0] for k in share.puts if "/clips/" in k]
    assert order.index(newer) < order.index(older)
    tags = share.inner.tags(f"devices/{DEVICE}/clips/{newer}/manifest.bwvclip")
    assert tags["tags"]["bwv-classification"] == "evidential" and tags["legal_hold"] is True
    store.close()


def test_clock_offset_against_the_store_is_audited_and_corrected(store_copy, tmp_path):
    store = open_store(store_copy)
    share = Recording(share_at(tmp_path), server_offset_ns=30 * 10**9)
    share.clock = store.clock
    before = store.clock.utc_ns()
    rep = engine(store, share).run()
    assert 29 * 10**9 < rep.clock_offset_ns < 31 * 10**9
    assert store.clock.utc_ns() - before >= 29 * 10**9  # stepped (monotonic time untouched)
    events = audit_events(store.root)
    off = next(e for e in events if e["event"] == "clip_released" or e["event"] == "clock_offset")
    assert off["event"] == "clock_offset" and off["data"]["corrected"] is True
    assert any(e["event"] == "alarm" and e["data"]["kind"] == "clock_offset_large" for e in events)
    store.close()
