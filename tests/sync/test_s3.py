"""S3Target against a real moto server process: create-only puts, checksums, holds, errors."""
from __future__ import annotations

import hashlib
import os
import random
import socket
from collections.abc import Iterator

import botocore.exceptions as bce
import pytest

from sync.s3 import (PERMANENT_CAUSES, S3Target, backoff_delay, classify_error,
                     load_credentials)
from sync.target import ObjectConflict, ObjectStat, PermanentError, TransientError
from tests.sync.conftest import CREDS, start_moto, stop_moto


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Sleeps:
    """Records the backoff sleeps instead of sleeping (tests never wait)."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, s: float) -> None:
        self.calls.append(s)


def target(url: str, bucket: str, **kw) -> S3Target:
    kw.setdefault("credentials", CREDS)
    kw.setdefault("sleep", Sleeps())
    return S3Target(url, bucket, **kw)


def closed_port_url() -> str:
    """A loopback port nothing listens on (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def versions(s3, bucket: str, key: str) -> list[dict]:
    return s3.list_object_versions(Bucket=bucket, Prefix=key).get("Versions", [])


# -- round trip and create-only -------------------------------------------------------


def test_put_stat_read_back_get_list_round_trip(moto_url, bucket, s3):
    t = target(moto_url, bucket, prefix="devices/BWV-1")
    data = os.urandom(300_000)
    t.put("clips/c1/000001.bwvseg", data, sha256=sha(data), tags={"bwv-classification": "evidential"})
    st = t.stat("clips/c1/000001.bwvseg")
    assert st == ObjectStat(size=len(data), sha256=sha(data))
    assert t.read_sha256("clips/c1/000001.bwvseg") == sha(data)
    assert t.get("clips/c1/000001.bwvseg") == data
    assert t.list("clips/") == ["clips/c1/000001.bwvseg"]
    # the prefix is real: the object sits under devices/BWV-1/ in the bucket
    head = s3.head_object(Bucket=bucket, Key="devices/BWV-1/clips/c1/000001.bwvseg")
    assert head["ContentLength"] == len(data)
    assert t.description == f"s3://{bucket}/devices/BWV-1/ ({moto_url})"


def test_missing_key_is_none_and_get_raises(moto_url, bucket):
    t = target(moto_url, bucket)
    assert t.stat("nope") is None
    assert t.read_sha256("nope") is None
    with pytest.raises(FileNotFoundError, match="nope"):
        t.get("nope")


def test_identical_reput_is_a_no_op_with_one_version(moto_url, bucket, s3):
    t = target(moto_url, bucket)
    data = b"segment-bytes" * 1000
    for _ in range(3):
        t.put("a/seg", data, sha256=sha(data), tags={})
    assert len(versions(s3, bucket, "a/seg")) == 1


def test_different_content_is_a_conflict_and_the_original_stays(moto_url, bucket, s3):
    t = target(moto_url, bucket)
    first, second = b"first" * 100, b"other" * 100
    t.put("a/seg", first, sha256=sha(first), tags={})
    with pytest.raises(ObjectConflict, match="never overwritten"):
        t.put("a/seg", second, sha256=sha(second), tags={})
    shorter = b"x"
    with pytest.raises(ObjectConflict):
        t.put("a/seg", shorter, sha256=sha(shorter), tags={})
    assert t.get("a/seg") == first
    assert len(versions(s3, bucket, "a/seg")) == 1


def test_existing_key_is_resolved_by_if_none_match_never_replaced(moto_url, bucket, s3):
    """No lookup before the write: the store refuses (412), then bytes are compared."""
    t = target(moto_url, bucket)
    data = b"same" * 100
    s3.put_object(Bucket=bucket, Key="race/same", Body=data, ChecksumSHA256=_b64(data),
                  ChecksumAlgorithm="SHA256")
    other = b"theirs" * 100
    s3.put_object(Bucket=bucket, Key="race/diff", Body=other, ChecksumSHA256=_b64(other),
                  ChecksumAlgorithm="SHA256")
    t.put("race/same", data, sha256=sha(data), tags={})  # 412 -> identical -> fine
    with pytest.raises(ObjectConflict):
        t.put("race/diff", data, sha256=sha(data), tags={})
    assert len(versions(s3, bucket, "race/same")) == 1
    assert len(versions(s3, bucket, "race/diff")) == 1
    assert s3.get_object(Bucket=bucket, Key="race/diff")["Body"].read() == other


def _b64(data: bytes) -> str:
    import base64
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_the_callers_checksum_is_what_the_store_is_told(moto_url, bucket):
    """put does not re-hash: the recorded SHA-256 goes out as the object's checksum, so
    the store (a real S3) refuses a body damaged on the way or on the device."""
    t = target(moto_url, bucket)
    t.put("a/b", b"abc", sha256=sha(b"abc"), tags={})
    assert t.stat("a/b").sha256 == sha(b"abc")


@pytest.mark.parametrize("bad", ["", "/abs", "a/../b", "a//b", "a\\b", "./a", "a/."])
def test_bad_keys_are_refused(moto_url, bucket, bad):
    with pytest.raises(ValueError):
        target(moto_url, bucket).stat(bad)


def test_untrusted_store_checksums_force_read_back(moto_url, bucket):
    t = target(moto_url, bucket, trust_store_checksums=False)
    data = b"q" * 10
    t.put("k", data, sha256=sha(data), tags={})
    assert t.stat("k") == ObjectStat(size=10, sha256=None)
    t.put("k", data, sha256=sha(data), tags={})  # still a no-op (compared by read-back)
    other = b"r" * 10
    with pytest.raises(ObjectConflict):
        t.put("k", other, sha256=sha(other), tags={})


def test_list_is_paginated_and_relative_to_the_prefix(moto_url, bucket, s3):
    t = target(moto_url, bucket, prefix="devices/D/", list_page_size=2)
    keys = [f"clips/c/{i:03d}" for i in range(5)] + ["audit.log"]
    for k in keys:
        t.put(k, k.encode(), sha256=sha(k.encode()), tags={})
    s3.put_object(Bucket=bucket, Key="devices/OTHER/clips/c/000", Body=b"x")
    assert t.list("clips/") == sorted(keys[:5])
    assert t.list("") == sorted(keys)


# -- tags and legal hold --------------------------------------------------------------


def test_tags_and_legal_hold_are_set(moto_url, bucket, s3):
    t = target(moto_url, bucket)
    data = b"evidence"
    tags = {"bwv-classification": "evidential", "bwv-clip": "c 1=2+3/4:5"}
    t.put("c/seg", data, sha256=sha(data), tags=tags, legal_hold=True)
    got = {x["Key"]: x["Value"] for x in s3.get_object_tagging(Bucket=bucket, Key="c/seg")["TagSet"]}
    assert got == tags
    assert s3.get_object_legal_hold(Bucket=bucket, Key="c/seg")["LegalHold"]["Status"] == "ON"

    plain = b"routine"
    t.put("c/other", plain, sha256=sha(plain), tags={"bwv-classification": "non-evidential"})
    head = s3.head_object(Bucket=bucket, Key="c/other")
    assert head.get("ObjectLockLegalHoldStatus") != "ON"


def test_legal_hold_goes_on_for_an_existing_identical_object(moto_url, bucket, s3):
    t = target(moto_url, bucket)
    data = b"later flagged"
    t.put("c/seg", data, sha256=sha(data), tags={})
    assert s3.head_object(Bucket=bucket, Key="c/seg").get("ObjectLockLegalHoldStatus") != "ON"
    t.put("c/seg", data, sha256=sha(data), tags={}, legal_hold=True)
    assert s3.get_object_legal_hold(Bucket=bucket, Key="c/seg")["LegalHold"]["Status"] == "ON"
    assert len(versions(s3, bucket, "c/seg")) == 1


def test_no_legal_hold_requested_where_the_bucket_has_no_object_lock(moto_url, plain_bucket, s3):
    t = target(moto_url, plain_bucket)
    probe = t.probe()
    assert probe.reachable and probe.object_lock is False
    assert "no Object Lock" in probe.detail
    data = b"evidence"
    t.put("c/seg", data, sha256=sha(data), tags={"bwv-classification": "evidential"},
          legal_hold=True)  # recorded by the tag; a lock the bucket lacks is not asked for
    assert t.stat("c/seg") == ObjectStat(len(data), sha(data))


# -- probe ----------------------------------------------------------------------------


def test_probe_measures_rtt_and_the_store_clock(moto_url, bucket):
    import time
    before = time.time_ns()
    p = target(moto_url, bucket).probe()
    after = time.time_ns()
    assert p.reachable and p.object_lock
    assert p.rtt_ns is not None and 0 < p.rtt_ns < 10_000_000_000
    # HTTP Date has 1 s resolution (truncated), and the server shares our clock
    assert before - 1_000_000_000 <= p.server_utc_ns <= after


def test_unreachable_store_probe_says_so_and_put_gives_up_after_max_attempts():
    sleeps = Sleeps()
    t = S3Target(closed_port_url(), "bucket-x", credentials=CREDS, max_attempts=4,
                 backoff_base_s=0.2, backoff_max_s=5.0, sleep=sleeps, rng=lambda: 1.0,
                 connect_timeout_s=2)
    p = t.probe()
    assert p.reachable is False and "cannot reach" in p.detail and p.server_utc_ns is None
    assert sleeps.calls == []  # the probe is a single request
    with pytest.raises(TransientError, match="gave up after 4 attempts"):
        t.put("a", b"x", sha256=sha(b"x"), tags={})
    assert sleeps.calls == pytest.approx([0.2, 0.4, 0.8])


def test_missing_bucket_is_a_permanent_error_naming_it(moto_url):
    t = target(moto_url, "bwv-no-such-bucket-here")
    with pytest.raises(PermanentError, match="no bucket 'bwv-no-such-bucket-here'"):
        t.probe()
    with pytest.raises(PermanentError, match="no bucket"):
        t.stat("k")  # a HEAD 404 is checked against the bucket, not taken as "no key"
    with pytest.raises(PermanentError, match="no bucket"):
        target(moto_url, "bwv-no-such-bucket-here").put("k", b"x", sha256=sha(b"x"), tags={})
    assert t._sleep.calls == []  # PermanentError is never retried


@pytest.fixture(scope="module")
def moto_auth_url(tmp_path_factory) -> Iterator[str]:
    """A moto server that checks access keys (INITIAL_NO_AUTH_ACTION_COUNT=0)."""
    server = start_moto(tmp_path_factory.mktemp("moto-auth"),
                        env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        yield server.url
    finally:
        stop_moto(server)


def test_wrong_credentials_are_permanent_and_name_the_cause(moto_auth_url):
    t = target(moto_auth_url, "bwv-any-bucket", credentials=("AKIANOTAREALKEY00000", "nope"))
    with pytest.raises(PermanentError, match="access key id") as probe_err:
        t.probe()
    assert "check the credentials file" in str(probe_err.value)
    with pytest.raises(PermanentError, match="access key id"):
        t.put("k", b"x", sha256=sha(b"x"), tags={})
    assert t._sleep.calls == []


# -- error classification -------------------------------------------------------------


def client_error(code: str, status: int, message: str = "msg") -> bce.ClientError:
    return bce.ClientError({"Error": {"Code": code, "Message": message},
                            "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


CLASSIFY_CASES = [
    (bce.EndpointConnectionError(endpoint_url="http://x"), TransientError, "cannot reach"),
    (bce.ConnectTimeoutError(endpoint_url="http://x"), TransientError, "cannot reach"),
    (bce.ReadTimeoutError(endpoint_url="http://x"), TransientError, "cannot reach"),
    (bce.ConnectionClosedError(endpoint_url="http://x"), TransientError, "cannot reach"),
    (ConnectionResetError(104, "reset"), TransientError, "cannot reach"),
    (client_error("InternalError", 500), TransientError, "HTTP 500"),
    (client_error("ServiceUnavailable", 503), TransientError, "HTTP 503"),
    (client_error("503", 503), TransientError, "busy"),
    (client_error("SlowDown", 503), TransientError, "SlowDown"),
    (client_error("Throttling", 400), TransientError, "Throttling"),
    (client_error("RequestTimeout", 400), TransientError, "RequestTimeout"),
    (client_error("TooManyRequests", 429), TransientError, "429"),
    (client_error("BadDigest", 400), TransientError, "BadDigest"),
    (client_error("InvalidAccessKeyId", 403), PermanentError, "access key id"),
    (client_error("SignatureDoesNotMatch", 403), PermanentError, "secret access key"),
    (client_error("AccessDenied", 403), PermanentError,
     "access denied by the evidence store: check the device's credentials / bucket policy"),
    (client_error("403", 403), PermanentError, "access denied"),
    (client_error("NoSuchBucket", 404), PermanentError, "no bucket 'evidence'"),
    (client_error("AllAccessDisabled", 403), PermanentError, "disabled"),
    (client_error("InvalidBucketName", 400), PermanentError, "not a valid bucket name"),
    (client_error("RequestTimeTooSkewed", 403), PermanentError, "device clock"),
    (client_error("NotImplemented", 501), PermanentError, "does not implement"),
    (client_error("MalformedXML", 400), PermanentError, "refused the request"),
    (bce.SSLError(endpoint_url="https://x", error="bad cert"), PermanentError, "CA bundle"),
    (bce.NoCredentialsError(), PermanentError, "no credentials"),
]


def _case_id(exc: BaseException) -> str:
    if isinstance(exc, bce.ClientError):
        return exc.response["Error"]["Code"]
    return type(exc).__name__


@pytest.mark.parametrize("exc,kind,words", CLASSIFY_CASES,
                         ids=[_case_id(c[0]) for c in CLASSIFY_CASES])
def test_error_classification(exc, kind, words):
    err = classify_error(exc, where="s3://evidence/ (http://x)", bucket="evidence",
                         op="put", key="k1")
    assert type(err) is kind
    assert words in str(err)
    assert str(err).startswith("s3://evidence/ (http://x): put k1: ")


def test_unknown_exceptions_are_not_disguised_as_store_errors():
    assert classify_error(KeyError("bug"), where="w", bucket="b") is None
    assert classify_error(ValueError("bug"), where="w", bucket="b") is None


def test_every_permanent_cause_says_what_to_do():
    for code, text in PERMANENT_CAUSES.items():
        assert ":" in text or code == "InvalidRequest", code


# -- retry policy ---------------------------------------------------------------------


def test_transient_errors_are_retried_with_full_jitter_then_succeed(moto_url, bucket):
    sleeps = Sleeps()
    rng = random.Random(7)
    t = target(moto_url, bucket, max_attempts=5, backoff_base_s=0.5, backoff_max_s=3.0,
               sleep=sleeps, rng=rng.random)
    failures = [client_error("SlowDown", 503), bce.ConnectionClosedError(endpoint_url="u"),
                client_error("InternalError", 500)]

    def flaky():
        if failures:
            raise failures.pop(0)
        return "done"

    assert t.call("op", flaky) == "done"
    assert len(sleeps.calls) == 3
    for attempt, s in enumerate(sleeps.calls):
        assert 0 <= s <= min(3.0, 0.5 * 2 ** attempt)


def test_permanent_errors_are_not_retried(moto_url, bucket):
    t = target(moto_url, bucket)
    calls = []

    def denied():
        calls.append(1)
        raise client_error("AccessDenied", 403)

    with pytest.raises(PermanentError):
        t.call("op", denied)
    assert calls == [1] and t._sleep.calls == []


def test_backoff_is_capped():
    assert [backoff_delay(i, base_s=1.0, max_s=1.5, rng=lambda: 1.0) for i in range(4)] == \
        [1.0, 1.5, 1.5, 1.5]
    assert backoff_delay(3, base_s=1.0, max_s=10, rng=lambda: 0.0) == 0.0


def test_botocore_does_not_retry_on_its_own(moto_url, bucket):
    t = target(moto_url, bucket)
    assert t.client.meta.config.retries["total_max_attempts"] == 1


# -- credentials ----------------------------------------------------------------------


def test_credentials_file_readable_by_others_is_refused(tmp_path):
    f = tmp_path / "creds"
    f.write_text("AKIAEXAMPLE\nsecret\n")
    os.chmod(f, 0o644)
    with pytest.raises(PermanentError, match=f"{f}.*0644.*chmod 600"):
        load_credentials(f)
    os.chmod(f, 0o640)
    with pytest.raises(PermanentError, match="group/others"):
        load_credentials(f)


def test_credentials_file_forms(tmp_path):
    two = tmp_path / "two"
    two.write_text("AKIAEXAMPLE\n  secret/with+chars \n")
    os.chmod(two, 0o600)
    assert load_credentials(two) == ("AKIAEXAMPLE", "secret/with+chars")
    kv = tmp_path / "kv"
    kv.write_text("[default]\n# device 7\naws_access_key_id = AKIA7\naws_secret_access_key=s=7\n")
    os.chmod(kv, 0o600)
    assert load_credentials(kv) == ("AKIA7", "s=7")
    bad = tmp_path / "bad"
    bad.write_text("only-one-line\n")
    os.chmod(bad, 0o600)
    with pytest.raises(PermanentError, match=str(bad)):
        load_credentials(bad)
    with pytest.raises(PermanentError, match="missing"):
        load_credentials(tmp_path / "missing")


def test_credentials_from_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    assert load_credentials(None) == ("AKIAENV", "envsecret")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(PermanentError, match="AWS_SECRET_ACCESS_KEY"):
        load_credentials(None)
    with pytest.raises(PermanentError, match="no credentials"):
        S3Target("http://127.0.0.1:9", "b-b-b")
