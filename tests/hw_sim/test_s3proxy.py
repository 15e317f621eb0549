"""The fault proxy, observed through S3Target against a real moto server process.

Each fault must be visible from the camera's side in the way the sync engine relies on:
resets and 5xx are retried without duplicates, and a "success" that stored nothing or
stored other bytes is exposed by stat / read-back, never by the PUT's answer.
"""
from __future__ import annotations

import base64
import hashlib
import os
import socket
import time
from collections.abc import Iterator

import pytest

from hw_sim.s3proxy import FaultProxy, decode_chunked
from sync.s3 import S3Target
from sync.target import ObjectStat, TransientError
from tests.sync.conftest import (CREDS, s3_client, start_moto, stop_moto, unique_bucket)

SEG = 256 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def moto_url(tmp_path_factory) -> Iterator[str]:
    server = start_moto(tmp_path_factory.mktemp("moto-proxy"))
    try:
        yield server.url
    finally:
        stop_moto(server)


@pytest.fixture
def bucket(moto_url) -> str:
    name = unique_bucket()
    s3_client(moto_url).create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


@pytest.fixture
def proxy(moto_url) -> Iterator[FaultProxy]:
    p = FaultProxy(moto_url, seed=1234, timeout_s=10)
    p.start()
    try:
        yield p
    finally:
        p.stop()


class Sleeps(list):
    def __call__(self, s: float) -> None:
        self.append(s)


def via(proxy: FaultProxy, bucket: str, **kw) -> S3Target:
    kw.setdefault("credentials", CREDS)
    kw.setdefault("sleep", Sleeps())
    kw.setdefault("read_timeout_s", 5)
    return S3Target(proxy.url, bucket, **kw)


def direct(moto_url: str, bucket: str) -> S3Target:
    return S3Target(moto_url, bucket, credentials=CREDS, sleep=Sleeps())


def test_clean_forwarding_is_faithful(proxy, moto_url, bucket):
    t = via(proxy, bucket, prefix="devices/D")
    data = os.urandom(SEG)
    t.put("clips/c/1", data, sha256=sha(data), tags={"bwv-classification": "evidential"},
          legal_hold=True)
    assert direct(moto_url, bucket).stat("devices/D/clips/c/1") == ObjectStat(SEG, sha(data))
    assert t.get("clips/c/1") == data
    assert t.list("clips/") == ["clips/c/1"]
    assert t.stat("clips/c/1") == ObjectStat(SEG, sha(data))  # a HEAD through the proxy
    assert proxy.put_bytes == {f"{bucket}/devices/D/clips/c/1": SEG}
    assert [p.outcome for p in proxy.puts] == ["forwarded"]
    assert {r.method for r in proxy.requests} >= {"HEAD", "PUT", "GET"}


def test_reset_mid_body_is_transient_then_succeeds_without_a_duplicate(proxy, moto_url, bucket):
    t = via(proxy, bucket)
    data = os.urandom(SEG)
    proxy.reset_mid_body(1)
    t.put("seg", data, sha256=sha(data), tags={})
    cut, ok = proxy.puts
    assert cut.outcome == "reset" and cut.status is None and 0 <= cut.body_bytes < SEG
    assert ok.outcome == "forwarded"
    assert len(t._sleep) == 1  # one retry, through the target's own backoff
    # bytes sent for this key: one full segment plus the cut prefix, never two full ones
    assert proxy.put_bytes[f"{bucket}/seg"] == SEG + cut.body_bytes < 2 * SEG
    s3 = s3_client(moto_url)
    assert len(s3.list_object_versions(Bucket=bucket, Prefix="seg")["Versions"]) == 1
    assert t.read_sha256("seg") == sha(data)


def test_resets_beyond_max_attempts_raise_transient(proxy, bucket):
    t = via(proxy, bucket, max_attempts=3)
    data = b"z" * 5000
    proxy.reset_mid_body(10, after_bytes=100)
    with pytest.raises(TransientError, match="gave up after 3 attempts"):
        t.put("seg", data, sha256=sha(data), tags={})
    assert [p.body_bytes for p in proxy.puts] == [100, 100, 100]
    proxy.clear()
    assert t.stat("seg") is None


def test_503_burst_is_retried(proxy, bucket):
    t = via(proxy, bucket, max_attempts=5)
    data = b"burst" * 1000
    proxy.fail(3, 503, method="PUT")
    t.put("seg", data, sha256=sha(data), tags={})
    assert [p.outcome for p in proxy.puts] == ["fail", "fail", "fail", "forwarded"]
    assert len(t._sleep) == 3
    assert proxy.pending() == 0
    assert t.stat("seg") == ObjectStat(len(data), sha(data))


def test_500_burst_on_heads_is_retried_too(proxy, bucket):
    t = via(proxy, bucket)
    proxy.fail(2, 500, method="HEAD")
    assert t.stat("nothing") is None
    assert [r.outcome for r in proxy.requests if r.method == "HEAD"][:3] == ["fail", "fail", "forwarded"]


def test_slow_answer_times_out_then_the_retry_finds_the_object(proxy, moto_url, bucket):
    """The store acted but the answer came too late: the retry must not make a copy."""
    t = via(proxy, bucket, read_timeout_s=0.5)
    data = os.urandom(10_000)
    proxy.slow(1, 1.5, method="PUT")
    t0 = time.monotonic()
    t.put("seg", data, sha256=sha(data), tags={})
    assert time.monotonic() - t0 < 10
    # the slow PUT was stored; the retry's create-only PUT is refused (412) and the
    # re-stat finds identical bytes
    assert [(p.outcome, p.status) for p in proxy.puts] == [("slow", 200), ("forwarded", 412)]
    s3 = s3_client(moto_url)
    assert len(s3.list_object_versions(Bucket=bucket, Prefix="seg")["Versions"]) == 1
    assert t.read_sha256("seg") == sha(data)


def test_dropped_put_claims_success_but_stat_finds_nothing(proxy, bucket):
    t = via(proxy, bucket)
    data = b"vanishes" * 100
    proxy.drop_put(1)
    t.put("seg", data, sha256=sha(data), tags={})  # the answer says all is well...
    assert proxy.puts[-1].outcome == "dropped" and proxy.puts[-1].status == 200
    assert t.stat("seg") is None  # ...the store says otherwise
    assert t.read_sha256("seg") is None


@pytest.mark.parametrize("mode", ["keep", "recompute", "strip"])
def test_altered_put_is_exposed_by_read_back(proxy, moto_url, bucket, mode):
    t = via(proxy, bucket)
    data = os.urandom(20_000)
    proxy.alter_put(1, checksum=mode, offset=777)
    t.put("seg", data, sha256=sha(data), tags={})
    assert proxy.puts[-1].outcome == "altered"
    stored = direct(moto_url, bucket).get("seg")
    assert len(stored) == len(data) and stored != data
    assert sum(a != b for a, b in zip(stored, data)) == 1 and stored[777] == data[777] ^ 0xFF
    assert t.read_sha256("seg") == sha(stored) != sha(data)
    reported = t.stat("seg")
    if mode == "keep":
        # a store that does not check checksums repeats the claim: only read-back tells
        assert reported == ObjectStat(len(data), sha(data))
    elif mode == "recompute":
        assert reported == ObjectStat(len(data), sha(stored))
    else:
        assert reported == ObjectStat(len(data), None)


def test_bytes_are_counted_per_key(proxy, bucket):
    t = via(proxy, bucket)
    a, b = os.urandom(1000), os.urandom(3000)
    t.put("k/a", a, sha256=sha(a), tags={})
    t.put("k/b", b, sha256=sha(b), tags={})
    t.put("k/a", a, sha256=sha(a), tags={})  # identical: refused (412), compared, fine
    proxy.fail(1, 503, method="PUT", key="k/c")
    c = b"c" * 10
    t.put("k/c", c, sha256=sha(c), tags={})
    assert proxy.put_bytes == {f"{bucket}/k/a": 2000, f"{bucket}/k/b": 3000,
                               f"{bucket}/k/c": 20}


def test_tagging_and_legal_hold_subresources_are_not_object_puts(proxy, moto_url, bucket):
    t = via(proxy, bucket)
    data = b"x"
    t.put("h", data, sha256=sha(data), tags={})
    t.put("h", data, sha256=sha(data), tags={}, legal_hold=True)  # PUT ?legal-hold
    holds = [r for r in proxy.requests if r.method == "PUT" and "legal-hold" in r.path]
    assert len(holds) == 1 and holds[0].status == 200
    assert s3_client(moto_url).get_object_legal_hold(
        Bucket=bucket, Key="h")["LegalHold"]["Status"] == "ON"
    assert proxy.put_bytes == {f"{bucket}/h": 2}  # the second write was refused (412)


def _raw_put(url: str, path: str, head_lines: list[str], body: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    req = (f"PUT {path} HTTP/1.1\r\nHost: {host}:{port}\r\n" + "".join(
        f"{h}\r\n" for h in head_lines) + "\r\n").encode() + body
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(req)
        out = b""
        for _ in range(1000):
            piece = s.recv(65536)
            if not piece:
                break
            out += piece
    return out


def _aws_chunked(payload: bytes, trailer: str) -> bytes:
    out = b""
    for i in range(0, len(payload), 4000):
        piece = payload[i:i + 4000]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    return out + b"0\r\n" + trailer.encode() + b"\r\n\r\n"


def test_decode_chunked_handles_signatures_and_trailers():
    raw = (b"5;chunk-signature=abc\r\nhello\r\n6;chunk-signature=def\r\n world\r\n"
           b"0;chunk-signature=0\r\nx-amz-checksum-sha256:Zm9v\r\n\r\n")
    payload, trailers = decode_chunked(raw)
    assert payload == b"hello world"
    assert trailers == {"x-amz-checksum-sha256": "Zm9v"}


def test_aws_chunked_upload_is_counted_decoded_and_forwarded(proxy, moto_url, bucket):
    """What boto3 sends over HTTPS without a caller checksum (unsigned trailer)."""
    payload = os.urandom(10_000)
    b64 = base64.b64encode(hashlib.sha256(payload).digest()).decode()
    body = _aws_chunked(payload, f"x-amz-checksum-sha256:{b64}")
    resp = _raw_put(proxy.url, f"/{bucket}/aws/chunked", [
        "Content-Encoding: aws-chunked", f"Content-Length: {len(body)}",
        f"x-amz-decoded-content-length: {len(payload)}",
        "x-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "x-amz-trailer: x-amz-checksum-sha256", "x-amz-sdk-checksum-algorithm: SHA256",
        "Authorization: AWS4-HMAC-SHA256 Credential=testing-key-id/20250101/us-east-1/s3/"
        "aws4_request, SignedHeaders=host, Signature=0"], body)
    assert resp.startswith(b"HTTP/1.1 200"), resp[:300]
    assert proxy.put_bytes == {f"{bucket}/aws/chunked": len(payload)}
    t = direct(moto_url, bucket)
    assert t.get("aws/chunked") == payload


def test_aws_chunked_upload_can_be_altered_too(proxy, moto_url, bucket):
    payload = os.urandom(9000)
    b64 = base64.b64encode(hashlib.sha256(payload).digest()).decode()
    body = _aws_chunked(payload, f"x-amz-checksum-sha256:{b64}")
    proxy.alter_put(1, checksum="keep", offset=5)
    resp = _raw_put(proxy.url, f"/{bucket}/aws/alt", [
        "Content-Encoding: aws-chunked", f"Content-Length: {len(body)}",
        f"x-amz-decoded-content-length: {len(payload)}",
        "x-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "x-amz-trailer: x-amz-checksum-sha256", "x-amz-sdk-checksum-algorithm: SHA256",
        "Authorization: AWS4-HMAC-SHA256 Credential=testing-key-id/20250101/us-east-1/s3/"
        "aws4_request, SignedHeaders=host, Signature=0"], body)
    assert resp.startswith(b"HTTP/1.1 200") and f"{b64}".encode() in resp
    t = direct(moto_url, bucket)
    stored = t.get("aws/alt")
    assert stored[5] == payload[5] ^ 0xFF and stored[6:] == payload[6:]
    assert t.stat("aws/alt") == ObjectStat(len(payload), sha(payload))  # the false claim


def test_http_chunked_body_is_forwarded_in_its_framing(proxy, moto_url, bucket):
    payload = os.urandom(7000)
    body = b"".join(f"{len(payload[i:i + 3000]):x}\r\n".encode() + payload[i:i + 3000] + b"\r\n"
                    for i in range(0, len(payload), 3000)) + b"0\r\n\r\n"
    resp = _raw_put(proxy.url, f"/{bucket}/http/chunked", [
        "Transfer-Encoding: chunked", "x-amz-content-sha256: UNSIGNED-PAYLOAD",
        "Authorization: AWS4-HMAC-SHA256 Credential=testing-key-id/20250101/us-east-1/s3/"
        "aws4_request, SignedHeaders=host, Signature=0"], body)
    assert resp.startswith(b"HTTP/1.1 200"), resp[:300]
    assert proxy.put_bytes == {f"{bucket}/http/chunked": len(payload)}
    assert direct(moto_url, bucket).get("http/chunked") == payload


def test_proxy_stops_and_frees_its_port(moto_url):
    p = FaultProxy(moto_url)
    url = p.start()
    p.stop()
    host, port = url.removeprefix("http://").split(":")
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=1).close()
