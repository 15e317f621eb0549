"""The technician's and back office's sync commands: status, a manual sync, store init,
classification — each through ``bwv`` as a person would type it."""
from __future__ import annotations

import json

from firmware.cli import main as bwv
from tests.sync.conftest import CREDS, s3_client, unique_bucket


def test_status_sync_and_status_again(store_copy, tmp_path, capsys):
    store, keys = str(store_copy / "store"), str(store_copy / "keys")
    assert bwv(["sync", "--status", "--store", store, "--keys", keys, "--json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert before["total"]["clips_pending"] == 2 and before["last_run"]["last_status"] is None
    assert all(c["objects_confirmed"] == 0 for c in before["clips"])
    share = tmp_path / "share"
    share.mkdir()
    assert bwv(["sync", "--store", store, "--keys", keys, "--directory", str(share)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["status"] == "complete" and len(summary["released"]) == 2
    assert bwv(["sync", "--status", "--store", store, "--keys", keys]) == 0
    text = capsys.readouterr().out
    assert "0 clip(s) waiting" in text and "2 released" in text and "last run: complete" in text


def test_sync_without_a_mounted_share_says_so_and_keeps_everything(store_copy, tmp_path, capsys):
    store, keys = str(store_copy / "store"), str(store_copy / "keys")
    code = bwv(["sync", "--store", store, "--keys", keys, "--directory", str(tmp_path / "absent")])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code != 0 and out["status"] == "unreachable" and out["released"] == []
    assert len(list((store_copy / "store" / "clips").iterdir())) == 2


def test_classify_is_audited_and_refuses_nonsense(store_copy, capsys):
    store, keys = str(store_copy / "store"), str(store_copy / "keys")
    clip = sorted((store_copy / "store" / "clips").iterdir())[0].name
    assert bwv(["clip", "classify", clip, "evidential", "--reason", "use of force",
                "--store", store, "--keys", keys]) == 0
    assert '"event":"classification"' in (store_copy / "store" / "audit.log").read_text()
    assert bwv(["clip", "classify", "no-such-clip", "evidential", "--reason", "x",
                "--store", store, "--keys", keys]) == 2
    assert "no clip no-such-clip" in capsys.readouterr().err


def test_store_init_configures_a_bucket(moto_url, tmp_path, capsys):
    creds = tmp_path / "creds"
    creds.write_text(f"aws_access_key_id={CREDS[0]}\naws_secret_access_key={CREDS[1]}\n")
    creds.chmod(0o600)
    bucket = unique_bucket()
    assert bwv(["store", "init", "--endpoint", moto_url, "--bucket", bucket,
                "--credentials-file", str(creds), "--retention-days", "30"]) == 0
    json.loads(capsys.readouterr().out)
    s3 = s3_client(moto_url)
    assert s3.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"][
        "ObjectLockEnabled"] == "Enabled"
    rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert any(r["Expiration"]["Days"] == 30 and
               r["Filter"]["Tag"] == {"Key": "bwv-classification", "Value": "non-evidential"}
               for r in rules)
    creds.chmod(0o644)
    assert bwv(["store", "init", "--endpoint", moto_url, "--bucket", bucket,
                "--credentials-file", str(creds)]) == 2
    assert str(creds) in capsys.readouterr().err
