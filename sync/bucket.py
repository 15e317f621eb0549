"""``bwv store init``: make a bucket fit to be the agency's evidence locker.

What bwv needs from a bucket, and why:

- **Object Lock**, so evidential clips can carry a legal hold that no lifecycle rule,
  operator or stolen credential can delete. It can only be switched on when the bucket
  is created (or, on some stores, irreversibly later), so an existing bucket without it
  is *reported*, never silently changed: that decision belongs to the agency.
- **Versioning**, which Object Lock requires (and which keeps a replaced object's
  earlier version, should anything other than bwv ever write there).
- **A lifecycle rule** expiring objects tagged ``bwv-classification=non-evidential``
  after the retention period (30 days in the founding deployment), and their
  noncurrent versions a day after that, so non-evidential footage really goes away.
  Evidential objects do not match the rule's tag filter, and a legal hold would stop
  any deletion anyway.

Idempotent: run it twice and the second run changes nothing (``changed`` is empty).
Other lifecycle rules on the bucket are kept; only bwv's own rule (by ID) is replaced.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import botocore.exceptions as bce

from sync.s3 import S3Target, classify_error
from sync.target import PermanentError

T = TypeVar("T")

CLASSIFICATION_TAG = "bwv-classification"
NON_EVIDENTIAL = "non-evidential"
EVIDENTIAL = "evidential"
RULE_ID = "bwv-expire-non-evidential"
NONCURRENT_DAYS = 1


def lifecycle_rule(retention_days: int) -> dict[str, Any]:
    """bwv's lifecycle rule for a retention period, in the API's own shape."""
    return {
        "ID": RULE_ID,
        "Status": "Enabled",
        "Filter": {"Tag": {"Key": CLASSIFICATION_TAG, "Value": NON_EVIDENTIAL}},
        "Expiration": {"Days": retention_days},
        "NoncurrentVersionExpiration": {"NoncurrentDays": NONCURRENT_DAYS},
    }


def _same_rule(have: dict[str, Any], want: dict[str, Any]) -> bool:
    def norm(rule: dict[str, Any]) -> tuple[Any, ...]:
        tag = (rule.get("Filter") or {}).get("Tag") or {}
        return (rule.get("ID"), rule.get("Status"), tag.get("Key"), tag.get("Value"),
                (rule.get("Expiration") or {}).get("Days"),
                (rule.get("NoncurrentVersionExpiration") or {}).get("NoncurrentDays"))
    return norm(have) == norm(want)


def _code(exc: bce.ClientError) -> str:
    err = exc.response.get("Error", {}) or {}
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(err.get("Code") or status or "")


def init_bucket(client_or_target: Any, bucket: str | None = None, *, retention_days: int = 30,
                create: bool = True) -> dict[str, Any]:
    """Configure (or check) ``bucket`` for bwv; returns what it found and what it did.

    ``client_or_target`` is a boto3 S3 client or an ``S3Target`` (whose retry policy is
    then used, and whose bucket is the default). The summary has ``bucket``,
    ``created``, ``object_lock``, ``versioning``, ``lifecycle_rule``, ``changed`` (a list
    of what this call modified) and ``warnings`` (what a technician must still fix).
    Raises ``PermanentError`` (named cause) for credential/bucket problems, or when the
    bucket is missing and ``create`` is False.
    """
    if retention_days < 1:
        raise ValueError("retention_days must be at least 1")
    if isinstance(client_or_target, S3Target):
        target = client_or_target
        client = target.client
        bucket = bucket or target.bucket
        region = target.region
        where = target.description

        def call(op: str, fn: Callable[[], T], ok: tuple[str, ...] = ()) -> T:
            return target.call(op, fn, passthrough=lambda e: isinstance(
                e, bce.ClientError) and _code(e) in ok)
    else:
        client = client_or_target
        if not bucket:
            raise ValueError("bucket is required with a plain client")
        region = client.meta.region_name or "us-east-1"
        where = f"s3://{bucket}"

        def call(op: str, fn: Callable[[], T], ok: tuple[str, ...] = ()) -> T:
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - classified
                if isinstance(exc, bce.ClientError) and _code(exc) in ok:
                    raise
                err = classify_error(exc, where=where, bucket=bucket, op=op)
                if err is None:
                    raise
                raise err from exc
    assert bucket is not None
    summary: dict[str, Any] = {"bucket": bucket, "created": False, "object_lock": False,
                               "versioning": None, "lifecycle_rule": None,
                               "changed": [], "warnings": []}

    try:
        call("head bucket", lambda: client.head_bucket(Bucket=bucket), ok=("404", "NoSuchBucket"))
        exists = True
    except bce.ClientError:
        exists = False
    if not exists:
        if not create:
            raise PermanentError(f"{where}: bucket {bucket!r} does not exist (run "
                                 f"`bwv store init` with creation allowed)")
        kwargs: dict[str, Any] = {"Bucket": bucket, "ObjectLockEnabledForBucket": True}
        if region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        call("create bucket", lambda: client.create_bucket(**kwargs))
        summary["created"] = True
        summary["changed"].append("created bucket with Object Lock")

    try:
        lock = call("get object lock configuration",
                    lambda: client.get_object_lock_configuration(Bucket=bucket),
                    ok=("ObjectLockConfigurationNotFoundError",))
        summary["object_lock"] = (lock.get("ObjectLockConfiguration", {})
                                  .get("ObjectLockEnabled") == "Enabled")
    except bce.ClientError:
        summary["object_lock"] = False
    if not summary["object_lock"]:
        summary["warnings"].append(
            f"bucket {bucket!r} has no Object Lock: evidential clips cannot be put on legal "
            f"hold. Enabling it is irreversible, so bwv does not do it: use a new bucket "
            f"(`bwv store init` creates it with Object Lock) or enable it in the store's "
            f"console")

    versioning = call("get versioning", lambda: client.get_bucket_versioning(Bucket=bucket))
    if versioning.get("Status") != "Enabled":
        call("put versioning", lambda: client.put_bucket_versioning(
            Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}))
        summary["changed"].append("enabled versioning")
    summary["versioning"] = "Enabled"

    want = lifecycle_rule(retention_days)
    try:
        current = call("get lifecycle",
                       lambda: client.get_bucket_lifecycle_configuration(Bucket=bucket),
                       ok=("NoSuchLifecycleConfiguration",))
        rules = list(current.get("Rules", []))
    except bce.ClientError:
        rules = []
    ours = [r for r in rules if r.get("ID") == RULE_ID]
    if len(ours) != 1 or not _same_rule(ours[0], want):
        others = [r for r in rules if r.get("ID") != RULE_ID]
        call("put lifecycle", lambda: client.put_bucket_lifecycle_configuration(
            Bucket=bucket, LifecycleConfiguration={"Rules": others + [want]}))
        summary["changed"].append(
            f"lifecycle: non-evidential objects expire after {retention_days} days")
    summary["lifecycle_rule"] = want
    return summary
