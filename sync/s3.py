"""The S3 evidence store: any S3-compatible bucket, through boto3.

Why it is shaped this way (DESIGN invariants 4-5, issue #4):

- **Create-only.** ``put`` first asks what the store holds under the key. Identical
  content (size and SHA-256) is a no-op, different content is ``ObjectConflict``; only
  a missing key is written, and the write carries ``If-None-Match: *`` so a race with
  another writer (or our own earlier attempt whose answer was lost) can never replace
  an object: the store answers 412 and we look again.
- **The store checks the bytes.** Every upload carries ``x-amz-checksum-sha256`` (the
  base64 of the SHA-256 the sealer recorded), so a store that implements S3 additional
  checksums rejects a body damaged in transit, and ``stat`` later reports that checksum
  back (``HeadObject`` with ``ChecksumMode=ENABLED``). Whether a release may trust that
  report is the engine's decision; ``trust_store_checksums=False`` makes ``stat`` report
  ``sha256=None`` so the engine reads every object back (moto 5.2.5, the test server,
  stores the checksum it is *given* without computing it: it is such a store).
- **One retry loop.** botocore's own retries are switched off (``total_max_attempts=1``)
  so the policy is visible and testable here: bounded exponential backoff with full
  jitter, at most ``max_attempts`` tries, the ``sleep`` and ``rng`` injectable.
- **Named causes.** Every failure leaves as ``TransientError`` (worth retrying later) or
  ``PermanentError`` whose message tells a technician what to fix; ``classify_error``
  is the one place that decides which.
"""
from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import os
import random
import stat as statmod
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import boto3
import botocore.exceptions as bce
from botocore.config import Config

from sync.target import (ObjectConflict, ObjectStat, PermanentError, ProbeResult,
                         TargetError, TransientError)

T = TypeVar("T")

READ_CHUNK = 1 << 20  # read-back hashing streams in 1 MiB pieces: memory stays bounded

# Error codes a retry can heal: the store is busy, restarting or timed out.
TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException",
    "RequestThrottled", "RequestThrottledException", "TooManyRequests",
    "TooManyRequestsException", "RequestLimitExceeded", "RequestTimeout",
    "RequestTimeoutException", "InternalError", "InternalFailure", "ServiceUnavailable",
    "ServiceFailure", "OperationAborted", "PriorRequestNotComplete",
    # The body the store received does not match what was signed or checksummed:
    # ``put`` has already checked the data against its SHA-256, so this is damage in
    # transit, and sending again heals it.
    "BadDigest", "XAmzContentSHA256Mismatch", "IncompleteBody",
})
TRANSIENT_STATUS = frozenset({408, 429})

# Error codes that will not heal, with what a technician should do about each.
PERMANENT_CAUSES: dict[str, str] = {
    "AccessDenied": "access denied by the evidence store: check the device's credentials "
                    "/ bucket policy",
    "403": "access denied by the evidence store (HTTP 403): check the device's "
           "credentials / bucket policy",
    "InvalidAccessKeyId": "the evidence store does not know the device's access key id: "
                          "check the credentials file (or AWS_ACCESS_KEY_ID)",
    "SignatureDoesNotMatch": "the evidence store rejected the request signature: check "
                             "the device's secret access key",
    "InvalidToken": "the evidence store rejected the device's credentials as invalid: "
                    "re-provision the credentials",
    "ExpiredToken": "the device's credentials have expired: re-provision them",
    "TokenRefreshRequired": "the device's credentials have expired: re-provision them",
    "AccountProblem": "the evidence store reports a problem with the agency's account: "
                      "contact the store's administrator",
    "NoSuchBucket": "the evidence store has no bucket {bucket!r}: check the configured "
                    "bucket name (or create it with `bwv store init`)",
    "AllAccessDisabled": "all access to bucket {bucket!r} is disabled by the store: "
                         "contact the store's administrator",
    "InvalidBucketName": "{bucket!r} is not a valid bucket name: fix the configuration",
    "PermanentRedirect": "bucket {bucket!r} lives in another region or endpoint: fix the "
                         "configured region/endpoint",
    "AuthorizationHeaderMalformed": "the evidence store expects another region: fix the "
                                    "configured region",
    "RequestTimeTooSkewed": "the device clock is too far from the evidence store's time "
                            "for signed requests: correct the clock (the dock probe "
                            "measures the store's time) and retry",
    "NotImplemented": "the evidence store does not implement a feature bwv needs "
                      "(conditional create-only writes or checksums): use a store that "
                      "supports S3 If-None-Match and additional checksums",
    "InvalidTag": "the evidence store refused the object tags: check the classification "
                  "tag names and values",
    "InvalidRequest": "the evidence store refused the request as invalid",
}

DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 30.0


def _error_code(exc: bce.ClientError) -> tuple[str, int]:
    err = exc.response.get("Error", {}) or {}
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    code = str(err.get("Code") or status or "")
    return code, status


def classify_error(exc: BaseException, *, where: str, bucket: str,
                   op: str = "", key: str | None = None) -> TargetError | None:
    """Decide whether a failure is worth retrying; None for what is not a store failure.

    ``where`` names the store (``S3Target.description``); the returned error's message
    carries it, the operation and key, and for permanent causes what to do. Anything
    that is neither a botocore/network failure nor an S3 error answer (a bug in our own
    code, say) returns None so the caller re-raises it unchanged rather than disguising
    it as a store problem.
    """
    what = f"{op} {key}" if key else op
    prefix = f"{where}: {what}: " if what else f"{where}: "
    if isinstance(exc, bce.ClientError):
        code, status = _error_code(exc)
        message = (exc.response.get("Error", {}) or {}).get("Message") or ""
        if code in PERMANENT_CAUSES:
            cause = PERMANENT_CAUSES[code].format(bucket=bucket)
            detail = f" ({code}: {message})" if message and code != str(status) else ""
            return PermanentError(prefix + cause + detail)
        if code in TRANSIENT_CODES or status >= 500 or status in TRANSIENT_STATUS:
            return TransientError(f"{prefix}the evidence store is busy or failing "
                                  f"(HTTP {status} {code}{': ' + message if message else ''})")
        if code == "404" or code == "NoSuchKey":
            # Callers that expect a missing key handle 404 themselves; reaching here
            # means a bucket-level 404 (HEAD answers carry no code).
            return PermanentError(prefix + PERMANENT_CAUSES["NoSuchBucket"].format(bucket=bucket))
        return PermanentError(f"{prefix}the evidence store refused the request "
                              f"(HTTP {status} {code}{': ' + message if message else ''})")
    if isinstance(exc, bce.SSLError):
        return PermanentError(f"{prefix}TLS verification of the evidence store failed: "
                              f"check the store's certificate and the configured CA bundle "
                              f"({exc})")
    if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError)):
        return PermanentError(f"{prefix}no credentials for the evidence store: configure "
                              f"a credentials file or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    if isinstance(exc, (bce.ConnectionError, bce.HTTPClientError, bce.IncompleteReadError,
                        ConnectionError, TimeoutError)):
        # Connection refused/reset/closed, connect and read timeouts, a response body
        # cut short: the network or the store is away for now.
        return TransientError(f"{prefix}cannot reach the evidence store: {exc}")
    if isinstance(exc, OSError):
        return TransientError(f"{prefix}network error talking to the evidence store: {exc}")
    return None


def backoff_delay(attempt: int, *, base_s: float, max_s: float,
                  rng: Callable[[], float]) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(max, base * 2**attempt)).

    Full jitter spreads a fleet of cameras docking after an outage instead of letting
    them hammer the store in lock step.
    """
    return rng() * min(max_s, base_s * (2 ** attempt))


def load_credentials(path: str | os.PathLike[str] | None) -> tuple[str, str]:
    """The device's access key id and secret, from a 0600 file or the environment.

    The file holds either two lines (key id, secret) or ``key = value`` lines with
    ``aws_access_key_id`` and ``aws_secret_access_key`` (an AWS ``credentials`` file with
    one profile works; ``[section]`` lines and ``#`` comments are skipped). A file that
    group or others can read is refused: the secret lets anyone write into the evidence
    locker under this device's name.
    """
    if path is None:
        key_id = os.environ.get("AWS_ACCESS_KEY_ID", "").strip()
        secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "").strip()
        if not key_id or not secret:
            raise PermanentError("no credentials for the evidence store: configure a "
                                 "credentials file or set AWS_ACCESS_KEY_ID and "
                                 "AWS_SECRET_ACCESS_KEY")
        return key_id, secret
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise PermanentError(f"credentials file {p}: cannot read it ({exc.strerror})") from exc
    mode = statmod.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise PermanentError(f"credentials file {p} is readable by group/others (mode "
                             f"{mode:04o}): refusing to use it; run `chmod 600 {p}`")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PermanentError(f"credentials file {p}: cannot read it ({exc})") from exc
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(("#", ";", "["))]
    if any("=" in ln for ln in lines):
        values: dict[str, str] = {}
        for ln in lines:
            name, sep, value = ln.partition("=")
            if sep:
                values[name.strip().lower()] = value.strip()
        key_id = values.get("aws_access_key_id", "")
        secret = values.get("aws_secret_access_key", "")
        if not key_id or not secret:
            raise PermanentError(f"credentials file {p}: needs aws_access_key_id and "
                                 f"aws_secret_access_key")
        return key_id, secret
    if len(lines) == 2:
        return lines[0], lines[1]
    raise PermanentError(f"credentials file {p}: expected two lines (access key id, secret) "
                         f"or aws_access_key_id=/aws_secret_access_key= lines")


def _b64_sha256(hex_digest: str) -> str:
    try:
        raw = bytes.fromhex(hex_digest)
    except ValueError as exc:
        raise ValueError(f"sha256 {hex_digest!r} is not hex") from exc
    if len(raw) != 32:
        raise ValueError(f"sha256 {hex_digest!r} is not 32 bytes")
    return base64.b64encode(raw).decode("ascii")


def _hex_from_b64(value: str | None) -> str | None:
    """A full-object SHA-256 from its base64 form; None for composite (multipart) sums."""
    if not value or "-" in value:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None


def _http_date_ns(headers: dict[str, str]) -> int | None:
    value = headers.get("date") or headers.get("Date")
    if not value:
        return None
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if dt.tzinfo is None:
        return None
    return int(dt.timestamp()) * 1_000_000_000


def check_key(key: str) -> None:
    """Keys are relative '/'-separated paths without empty, '.' or '..' parts."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"bad object key {key!r}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"bad object key {key!r}")


class S3Target:
    """An S3-compatible evidence store (``sync.target.Target``).

    ``prefix`` (e.g. ``devices/BWV-0001/``) is prepended to every key and stripped from
    ``list`` results, so the engine speaks device-relative keys. ``credentials`` None
    means the environment (``load_credentials(None)``): bwv never falls through to
    boto3's wider credential chain (instance metadata lookups stall on a dock network).
    """

    def __init__(self, endpoint_url: str | None, bucket: str, *, prefix: str = "",
                 region: str = "us-east-1", credentials: tuple[str, str] | None = None,
                 verify_tls: bool = True, ca_bundle: str | None = None,
                 max_attempts: int = 5, backoff_base_s: float = 0.2,
                 backoff_max_s: float = 5.0,
                 sleep: Callable[[float], None] = time.sleep,
                 rng: Callable[[], float] = random.random,
                 connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
                 read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
                 trust_store_checksums: bool = True,
                 list_page_size: int = 1000) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.endpoint_url = endpoint_url
        self.bucket = bucket
        prefix = prefix.lstrip("/")
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.region = region
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._sleep = sleep
        self._rng = rng
        self.trust_store_checksums = trust_store_checksums
        self.list_page_size = list_page_size
        key_id, secret = credentials if credentials is not None else load_credentials(None)
        verify: bool | str = ca_bundle if (verify_tls and ca_bundle) else verify_tls
        config = Config(
            region_name=region,
            # total_max_attempts=1: botocore tries once; our loop is the only retry.
            # (``max_attempts`` in botocore's retries dict counts *retries*: 1 would
            # still mean two tries.)
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            # We send our own SHA-256 and hash read-backs ourselves; botocore must not
            # add CRC32s or reject a body whose stored checksum is wrong (read_sha256
            # must report what the store actually holds, not raise).
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region,
            aws_access_key_id=key_id, aws_secret_access_key=secret,
            verify=verify, config=config)
        where = endpoint_url or f"aws:{region}"
        tls = "" if verify_tls or not (endpoint_url or "").startswith("https") else ", TLS unverified"
        self.description = f"s3://{bucket}/{self.prefix} ({where}{tls})"
        self._object_lock: bool | None = None  # cached answer of the bucket's lock probe
        self._bucket_checked = False

    # -- plumbing --------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The underlying boto3 client (for ``sync.bucket.init_bucket``)."""
        return self._client

    def _full(self, key: str) -> str:
        check_key(key)
        return self.prefix + key

    def classify(self, exc: BaseException, op: str, key: str | None = None) -> TargetError | None:
        return classify_error(self._named(exc), where=self.description, bucket=self.bucket,
                              op=op, key=key)

    def _named(self, exc: BaseException) -> BaseException:
        """HEAD answers carry no error body: a bare 400/403/404 is re-asked with a GET
        (one listing of at most one key) so the technician reads the actual cause
        (unknown key id, bad signature, skewed clock, missing bucket)."""
        if not isinstance(exc, bce.ClientError):
            return exc
        code, status = _error_code(exc)
        if code not in ("400", "403", "404"):
            return exc
        named = self._named_cause(code)
        if named == code:
            return exc
        meta = exc.response.get("ResponseMetadata", {})
        return bce.ClientError({"Error": {"Code": named, "Message": ""},
                                "ResponseMetadata": meta}, exc.operation_name)

    def call(self, op: str, fn: Callable[[], T], key: str | None = None,
             passthrough: Callable[[BaseException], bool] | None = None) -> T:
        """Run ``fn`` with bounded retries; classify what escapes.

        ``passthrough(exc)`` lets a caller take an expected answer (404, 412) as-is
        instead of having it classified.
        """
        for attempt in range(self.max_attempts):
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - classified below, unknowns re-raised
                if passthrough is not None and passthrough(exc):
                    raise
                err = self.classify(exc, op, key)
                if err is None:
                    raise
                if isinstance(err, PermanentError) or attempt + 1 >= self.max_attempts:
                    if isinstance(err, TransientError) and self.max_attempts > 1:
                        err = TransientError(f"{err} (gave up after {self.max_attempts} attempts)")
                    raise err from exc
                self._sleep(backoff_delay(attempt, base_s=self.backoff_base_s,
                                          max_s=self.backoff_max_s, rng=self._rng))
        raise AssertionError("unreachable")  # the loop always returns or raises

    @staticmethod
    def _is_status(exc: BaseException, *codes: str) -> bool:
        if not isinstance(exc, bce.ClientError):
            return False
        code, status = _error_code(exc)
        return code in codes or str(status) in codes

    def _ensure_bucket(self) -> None:
        """A HEAD 404 cannot say whether the key or the bucket is missing; ask once."""
        if self._bucket_checked:
            return
        self.call("head bucket", lambda: self._client.head_bucket(Bucket=self.bucket))
        self._bucket_checked = True

    def object_lock(self) -> bool:
        """Whether the bucket has Object Lock (legal holds possible); asked once."""
        if self._object_lock is None:
            self._object_lock = self._read_object_lock()[0]
        return self._object_lock

    def _read_object_lock(self) -> tuple[bool, str]:
        try:
            resp = self.call(
                "get object lock configuration",
                lambda: self._client.get_object_lock_configuration(Bucket=self.bucket),
                passthrough=lambda e: self._is_status(
                    e, "ObjectLockConfigurationNotFoundError", "AccessDenied", "403",
                    "NotImplemented", "501"))
        except bce.ClientError as exc:
            code, _ = _error_code(exc)
            if code == "ObjectLockConfigurationNotFoundError":
                return False, "bucket has no Object Lock: legal holds are not possible"
            return False, (f"cannot read the bucket's Object Lock configuration ({code}): "
                           f"legal holds will not be requested; grant "
                           f"s3:GetBucketObjectLockConfiguration to the device")
        enabled = resp.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
        return enabled, "" if enabled else "bucket has no Object Lock: legal holds are not possible"

    # -- Target ------------------------------------------------------------------------

    def probe(self) -> ProbeResult:
        """One cheap request: is the store there, what time does it say, can it hold?

        Not retried: the RTT must be one request's, and the engine's dock loop is the
        retry. Network failures answer ``reachable=False``; credential and bucket
        problems raise ``PermanentError`` (retrying will not heal them). A store that
        refuses us only because our clock is off still answers with its ``Date``: that
        is returned (reachable, with detail) so the engine can correct the clock.
        """
        t0 = time.monotonic_ns()
        try:
            resp = self._client.head_bucket(Bucket=self.bucket)
        except Exception as exc:  # noqa: BLE001 - classified
            rtt = time.monotonic_ns() - t0
            if isinstance(exc, bce.ClientError):
                headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
                exc = self._named(exc)
                if _error_code(exc)[0] == "RequestTimeTooSkewed":
                    return ProbeResult(True, _http_date_ns(headers), rtt, False,
                                       detail=PERMANENT_CAUSES["RequestTimeTooSkewed"])
            err = self.classify(exc, "probe")
            if err is None:
                raise
            if isinstance(err, PermanentError):
                raise err from exc
            return ProbeResult(False, None, None, False, detail=str(err))
        rtt = time.monotonic_ns() - t0
        self._bucket_checked = True
        server_ns = _http_date_ns(resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}))
        try:
            lock, detail = self._read_object_lock()
        except TransientError as exc:
            return ProbeResult(False, server_ns, rtt, False, detail=str(exc))
        self._object_lock = lock
        return ProbeResult(True, server_ns, rtt, lock, detail=detail)

    def _named_cause(self, fallback: str) -> str:
        try:
            self._client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except bce.ClientError as exc:
            return _error_code(exc)[0] or fallback
        except Exception:  # noqa: BLE001 - best effort: keep the HEAD's own answer
            return fallback
        return fallback

    def stat(self, key: str) -> ObjectStat | None:
        """Size and, when the store keeps one, the full-object SHA-256; None if absent."""
        full = self._full(key)
        try:
            resp = self.call(
                "stat", lambda: self._client.head_object(
                    Bucket=self.bucket, Key=full, ChecksumMode="ENABLED"),
                key=full, passthrough=lambda e: self._is_status(e, "404", "NoSuchKey"))
        except bce.ClientError:
            self._ensure_bucket()  # a missing bucket is a fault, not a missing key
            return None
        sha = _hex_from_b64(resp.get("ChecksumSHA256"))
        if resp.get("ChecksumType") == "COMPOSITE":
            sha = None
        return ObjectStat(size=int(resp["ContentLength"]),
                          sha256=sha if self.trust_store_checksums else None)

    def put(self, key: str, data: bytes, *, sha256: str, tags: dict[str, str],
            legal_hold: bool = False, replace_corrupt: bool = False) -> None:
        """Create ``key`` with ``data`` unless it exists; never replace different bytes.

        ``sha256`` is the SHA-256 (hex) the caller recorded for these bytes; it is sent
        as the object's checksum, so the store refuses a body that does not match it (an
        S3 store answers BadDigest). It is not recomputed here: the caller hashes once.
        No lookup before the write: ``If-None-Match: *`` makes the write itself the
        existence check, and only a refused write is looked into (same bytes → done;
        other bytes → ObjectConflict).
        """
        full = self._full(key)
        sha256 = sha256.lower()
        hold = legal_hold and self.object_lock()
        params: dict[str, Any] = dict(
            Bucket=self.bucket, Key=full, Body=data, ContentLength=len(data),
            ChecksumAlgorithm="SHA256", ChecksumSHA256=_b64_sha256(sha256),
            ContentType="application/octet-stream")
        if not replace_corrupt:  # create-only; a replacement is a new version of our own key
            params["IfNoneMatch"] = "*"
        if tags:
            params["Tagging"] = urllib.parse.urlencode(tags, quote_via=urllib.parse.quote)
        if hold:
            params["ObjectLockLegalHoldStatus"] = "ON"
        try:
            self.call("put", lambda: self._client.put_object(**params), key=full,
                      passthrough=lambda e: self._is_status(
                          e, "PreconditionFailed", "412", "ConditionalRequestConflict"))
        except bce.ClientError:
            # Someone (often our own earlier attempt, whose answer was lost) created it
            # between our stat and our put: it is fine only if it is the same bytes.
            existing = self.stat(key)
            if existing is None:
                raise TransientError(f"{self.description}: put {full}: the store refused a "
                                     f"create-only write but holds no object; retry") from None
            self._same_or_conflict(key, existing, len(data), sha256)
            if legal_hold:
                self._hold_existing(full)

    def _same_or_conflict(self, key: str, existing: ObjectStat, size: int, sha256: str) -> None:
        have = existing.sha256
        if existing.size == size and have is None:
            have = self.read_sha256(key)  # the store cannot vouch: compare by reading back
        if existing.size != size or have != sha256:
            raise ObjectConflict(
                f"{self.description}: {key} already holds different content "
                f"({existing.size} bytes, sha256 {have or 'unknown'}; ours {size} bytes, "
                f"sha256 {sha256}); it is never overwritten")

    def _hold_existing(self, full: str) -> None:
        """Legal hold only ever goes on: a clip classified evidential later is held."""
        if not self.object_lock():
            return
        self.call("legal hold", lambda: self._client.put_object_legal_hold(
            Bucket=self.bucket, Key=full, LegalHold={"Status": "ON"}), key=full)

    def _get_or_none(self, full: str):
        """GET an object; None when the store has no such key (other errors raise)."""
        try:
            return self._client.get_object(Bucket=self.bucket, Key=full)
        except bce.ClientError as exc:
            if self._is_status(exc, "404", "NoSuchKey"):
                return None
            raise

    def read_sha256(self, key: str) -> str | None:
        """Read the object back and hash it in bounded memory; None if it is absent."""
        full = self._full(key)

        def fetch() -> str | None:
            resp = self._get_or_none(full)
            if resp is None:
                return None
            h = hashlib.sha256()
            body = resp["Body"]
            try:
                for chunk in body.iter_chunks(READ_CHUNK):
                    h.update(chunk)
            finally:
                body.close()
            return h.hexdigest()

        return self.call("read back", fetch, key=full)

    def get(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError if the store has no such key."""
        full = self._full(key)

        def fetch() -> bytes | None:
            resp = self._get_or_none(full)
            if resp is None:
                return None
            body = resp["Body"]
            try:
                return body.read()
            finally:
                body.close()

        data = self.call("get", fetch, key=full)
        if data is None:
            raise FileNotFoundError(f"{self.description}: no object {full}")
        return data

    def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (relative to the target's prefix), sorted."""
        full_prefix = self.prefix + prefix
        keys: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full_prefix,
                                      "MaxKeys": self.list_page_size}
            if token:
                kwargs["ContinuationToken"] = token
            page = self.call("list", lambda: self._client.list_objects_v2(**kwargs),
                             key=full_prefix)
            keys.extend(obj["Key"][len(self.prefix):] for obj in page.get("Contents", []))
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
            if not token:
                raise TransientError(f"{self.description}: list {full_prefix}: truncated "
                                     f"listing without a continuation token")
        return sorted(keys)
