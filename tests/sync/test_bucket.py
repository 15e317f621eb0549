"""`bwv store init` against a real moto server: object lock, versioning, lifecycle."""
from __future__ import annotations

import pytest

from sync.bucket import CLASSIFICATION_TAG, NON_EVIDENTIAL, RULE_ID, init_bucket
from sync.s3 import S3Target
from sync.target import PermanentError
from tests.sync.conftest import CREDS, unique_bucket


def bwv_rule(s3, bucket: str) -> dict:
    rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    ours = [r for r in rules if r["ID"] == RULE_ID]
    assert len(ours) == 1, rules
    return ours[0]


def test_init_creates_a_locked_versioned_bucket_with_the_retention_rule(s3):
    name = unique_bucket()
    summary = init_bucket(s3, name, retention_days=30)
    assert summary["created"] is True and summary["object_lock"] is True
    assert summary["warnings"] == []
    lock = s3.get_object_lock_configuration(Bucket=name)["ObjectLockConfiguration"]
    assert lock["ObjectLockEnabled"] == "Enabled"
    assert s3.get_bucket_versioning(Bucket=name)["Status"] == "Enabled"
    rule = bwv_rule(s3, name)
    assert rule["Status"] == "Enabled"
    assert rule["Filter"]["Tag"] == {"Key": CLASSIFICATION_TAG, "Value": NON_EVIDENTIAL}
    assert rule["Expiration"]["Days"] == 30
    assert rule["NoncurrentVersionExpiration"]["NoncurrentDays"] == 1


def test_init_is_idempotent(s3):
    name = unique_bucket()
    first = init_bucket(s3, name)
    assert first["changed"]
    second = init_bucket(s3, name)
    assert second["created"] is False and second["changed"] == []
    assert second["object_lock"] is True
    assert len(s3.get_bucket_lifecycle_configuration(Bucket=name)["Rules"]) == 1


def test_existing_bucket_without_object_lock_is_reported_not_changed(s3, plain_bucket):
    s3.put_bucket_lifecycle_configuration(Bucket=plain_bucket, LifecycleConfiguration={
        "Rules": [{"ID": "agency-logs", "Status": "Enabled", "Filter": {"Prefix": "logs/"},
                   "Expiration": {"Days": 400}}]})
    summary = init_bucket(s3, plain_bucket, retention_days=45)
    assert summary["created"] is False and summary["object_lock"] is False
    assert any("no Object Lock" in w for w in summary["warnings"])
    assert "enabled versioning" in summary["changed"]
    assert s3.get_bucket_versioning(Bucket=plain_bucket)["Status"] == "Enabled"
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=plain_bucket)["Rules"]}
    assert set(rules) == {"agency-logs", RULE_ID}  # the agency's own rule is kept
    assert rules[RULE_ID]["Expiration"]["Days"] == 45


def test_changed_retention_updates_the_rule(s3):
    name = unique_bucket()
    init_bucket(s3, name, retention_days=30)
    summary = init_bucket(s3, name, retention_days=60)
    assert summary["changed"] == ["lifecycle: non-evidential objects expire after 60 days"]
    assert bwv_rule(s3, name)["Expiration"]["Days"] == 60


def test_missing_bucket_without_create_is_a_named_error(s3):
    name = unique_bucket()
    with pytest.raises(PermanentError, match=f"bucket '{name}' does not exist"):
        init_bucket(s3, name, create=False)


def test_init_through_a_target_uses_its_bucket(moto_url, s3):
    name = unique_bucket()
    t = S3Target(moto_url, name, credentials=CREDS, sleep=lambda s: None)
    summary = init_bucket(t)
    assert summary["bucket"] == name and summary["object_lock"] is True
    assert t.probe().object_lock is True


def test_bad_retention_is_refused(s3):
    with pytest.raises(ValueError):
        init_bucket(s3, unique_bucket(), retention_days=0)
