"""Sync against a real S3-compatible server process (moto) through a fault-injecting proxy.

For every fault: no local release without proof, no duplicate objects, and in the end
the clip verifies *from the store* (fetched back, checked with the pinned device key).
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from buffer.store import Store, StoreSettings
from buffer.verify import verify_clip, verify_store
from drivers.keystore import FileKeyStore
from firmware.cli import main as bwv
from hw_sim.clock import SimClock
from hw_sim.s3proxy import FaultProxy
from sync.access import StoreView
from sync.engine import SyncEngine, SyncSettings
from sync.fetch import fetch_clip
from sync.s3 import S3Target
from sync.state import SyncState
from tests.sync.conftest import CREDS, s3_client

DEVICE = "BWV-SIM-0001"


def open_store(work: Path) -> Store:
    return Store.open(work / "store", FileKeyStore(work / "keys"), SimClock(),
                      StoreSettings(pre_record_ns=3 * 10**9), officer_id="T")


def target(url: str, bucket: str, **kw) -> S3Target:
    kw.setdefault("sleep", lambda s: None)  # backoff is tested in test_s3; keep this fast
    kw.setdefault("read_timeout_s", 3)
    return S3Target(url, bucket, credentials=CREDS, **kw)


def run_sync(store: Store, tgt, verify: str = "checksum", stop=None):
    eng = SyncEngine(store=StoreView(store), target=tgt, state=SyncState(store.root / "sync.sqlite"),
                     clock=store.clock, settings=SyncSettings(device_id=DEVICE, verify=verify),
                     stop=stop)
    return eng.run()


def versions(moto_url: str, bucket: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in s3_client(moto_url).list_object_versions(Bucket=bucket).get("Versions", []):
        out[v["Key"]] = out.get(v["Key"], 0) + 1
    return out


def verifies_from_store(moto_url: str, bucket: str, clip_id: str, device, tmp: Path) -> bool:
    local = fetch_clip(target(moto_url, bucket), f"devices/{DEVICE}/clips/{clip_id}", tmp)
    return verify_clip(local, device).ok


def test_sync_to_s3_then_verify_and_export_from_the_bucket(store_copy, moto_url, bucket, tmp_path,
                                                          monkeypatch, capsys):
    store = open_store(store_copy)
    older, newer = [c.clip_id for c in store.closed_clips()]
    store.set_classification(newer, "evidential", reason="marker")
    rep = run_sync(store, target(moto_url, bucket))
    assert rep.status == "complete" and sorted(rep.released) == sorted([older, newer])
    assert all(n == 1 for n in versions(moto_url, bucket).values())  # no duplicates
    s3 = s3_client(moto_url)
    key = f"devices/{DEVICE}/clips/{newer}/manifest.bwvclip"
    assert s3.get_object_legal_hold(Bucket=bucket, Key=key)["LegalHold"]["Status"] == "ON"
    tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}
    assert tags["bwv-classification"] == "evidential"
    old_tags = s3.get_object_tagging(Bucket=bucket, Key=f"devices/{DEVICE}/clips/{older}/manifest.bwvclip")
    assert {"Key": "bwv-classification", "Value": "non-evidential"} in old_tags["TagSet"]
    device_json = store_copy / "keys" / "device.json"
    store.close()
    assert verify_store(store_copy / "store").ok
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDS[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDS[1])
    url = f"s3://{bucket}/devices/{DEVICE}/clips/{newer}"
    assert bwv(["verify", url, "--s3-endpoint", moto_url, "--device-key", str(device_json)]) == 0
    assert "RESULT: OK" in capsys.readouterr().out
    out = tmp_path / "exp" / "clip.mp4"
    assert bwv(["export", url, "--s3-endpoint", moto_url, "--device-key", str(device_json),
                "--identity", str(store_copy / "agency" / "agency.key"), "-o", str(out)]) == 0
    assert out.stat().st_size > 0
    probe = subprocess.run(["ffprobe", "-v", "error", str(out)], capture_output=True, text=True)
    assert probe.returncode == 0 and probe.stderr == ""


FAULTS = {
    "reset_mid_body": lambda p, key: p.reset_mid_body(2, key=key),
    "burst_503": lambda p, key: p.fail(4, status=503, key=key),
    "slow": lambda p, key: p.slow(2, 4.0, method="PUT", key=key),
    "missing_after_200": lambda p, key: p.drop_put(1, key=key),
    "different_after_200": lambda p, key: p.alter_put(1, key=key, checksum="keep"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_faults_never_release_early_and_end_verified(store_copy, moto_url, bucket, tmp_path, fault):
    store = open_store(store_copy)
    clips = store.closed_clips()
    victim = clips[0].files[2].name
    device = store.device
    proxy = FaultProxy(moto_url, seed=7, timeout_s=10)
    proxy.start()
    try:
        FAULTS[fault](proxy, f"{clips[0].clip_id}/{victim}")
        # read-back: moto echoes the client's checksum, so only a read-back sees a store
        # that keeps other bytes than it was sent (a real S3 would reject them)
        verify = "read-back" if fault == "different_after_200" else "checksum"
        released: list[str] = []
        for _ in range(3):  # rounds, as while docked
            rep = run_sync(store, target(proxy.url, bucket, max_attempts=3), verify=verify)
            for cid in rep.released:  # anything released must already verify from the store
                assert verifies_from_store(moto_url, bucket, cid, device, tmp_path / cid)
            released += rep.released
            if rep.status == "complete":
                break
        assert sorted(released) == sorted(c.clip_id for c in clips)
        counts = versions(moto_url, bucket)
        victim_key = f"devices/{DEVICE}/clips/{clips[0].clip_id}/{victim}"
        extra = {k: n for k, n in counts.items() if n != 1}
        if fault == "different_after_200":  # the corrupt version stays as the record
            assert extra == {victim_key: 2}
        else:
            assert extra == {}, f"duplicate objects: {extra}"
        assert not any((store.root / "clips").iterdir())
    finally:
        proxy.stop()
        store.close()


def test_after_a_cut_at_most_one_segment_is_sent_again(store_copy, moto_url, bucket):
    store = open_store(store_copy)
    clips = store.closed_clips()
    sizes = {f.name: f.size for c in clips for f in c.files}
    total = sum(sizes.values())
    proxy = FaultProxy(moto_url, seed=3, timeout_s=10)
    proxy.start()
    try:
        import threading
        stop = threading.Event()
        # the cut: the 5th segment's upload is reset mid-body and the camera is undocked
        victim = f"{clips[0].clip_id}/{clips[0].files[4].name}"
        proxy.reset_mid_body(99, key=victim)
        rep1 = run_sync(store, target(proxy.url, bucket, max_attempts=1), stop=stop)
        assert rep1.status == "interrupted" and rep1.released == []
        proxy.clear()
        rep2 = run_sync(store, target(proxy.url, bucket))
        assert rep2.status == "complete"
        sent = {k.split("/")[-1]: n for k, n in proxy.put_bytes.items() if "/clips/" in k}
        resent = sum(sent.values()) - total
        assert resent <= max(sizes.values()), f"{resent} bytes sent twice"
    finally:
        proxy.stop()
        store.close()


def test_missing_bucket_is_a_named_fault(store_copy, moto_url):
    store = open_store(store_copy)
    try:
        rep = run_sync(store, target(moto_url, "bwv-no-such-bucket"))
        assert rep.status in ("fault", "unreachable")
        assert "bucket" in rep.message.lower()
        assert rep.released == []
        assert len(list((store.root / "clips").iterdir())) == 2
    finally:
        store.close()


def test_sigkill_during_sync_then_resume(store_copy, moto_url, bucket, tmp_path):
    """Power cut (SIGKILL) mid-sync at random points; restart: completes, nothing early."""
    rng = random.Random(11)
    proxy = FaultProxy(moto_url, seed=5, timeout_s=30)
    proxy.start()
    cfg = tmp_path / "bwv.toml"
    cfg.write_text(f'[sync]\ntarget = "s3"\ns3_endpoint = "{proxy.url}"\n'
                   f's3_bucket = "{bucket}"\n')
    env = dict(os.environ, AWS_ACCESS_KEY_ID=CREDS[0], AWS_SECRET_ACCESS_KEY=CREDS[1])
    cmd = [sys.executable, "-m", "firmware.cli", "sync", "--config", str(cfg),
           "--store", str(store_copy / "store"), "--keys", str(store_copy / "keys")]
    device = FileKeyStore(store_copy / "keys").device()
    try:
        for cut in range(3):
            proxy.slow(1000, 0.05)  # every answer 50 ms late: a wide window to cut in
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            time.sleep(rng.uniform(0.5, 2.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proxy.clear()
            events = [json.loads(ln.rsplit("\t", 1)[0]) for ln in
                      (store_copy / "store" / "audit.log").read_text().splitlines()
                      if "\t" in ln]
            for e in events:  # whatever was released is already whole in the store
                if e["event"] == "clip_released":
                    cid = e["data"]["clip_id"]
                    assert verifies_from_store(moto_url, bucket, cid, device, tmp_path / f"{cut}-{cid}")
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout.strip().splitlines()[-1])["status"] == "complete"
        assert not any((store_copy / "store" / "clips").iterdir())
        assert verify_store(store_copy / "store").ok
        assert all(n == 1 for n in versions(moto_url, bucket).values())
    finally:
        proxy.stop()
