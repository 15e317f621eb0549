"""A fault-injecting HTTP proxy between the camera and an S3-compatible store.

It is a real TCP server on loopback (one thread per client connection) that forwards
each request to the upstream store byte for byte (request line, headers in their
order and spelling, body in its original framing) and relays the answer, unless a
planned fault says otherwise. Tests use it to show that the sync path never releases
a clip on the strength of an answer alone.

Fault model (each fault fires on the next ``count`` matching requests, in plan order;
``key`` matches as a substring of the decoded ``bucket/key`` path, ``method`` exactly):

``reset_mid_body``  object PUT: read N bytes of the body (N random in [0, body length)
                    unless given), then reset the TCP connection (RST). The store never
                    sees the request.
``fail``            any request: answer ``status`` (500/503) with an S3 error document
                    without forwarding (a burst of ``count`` such answers).
``slow``            any request: forward it, then hold the answer ``delay_s`` before
                    relaying it (the store has acted; the client may time out first).
``drop_put``        object PUT: answer 200 with plausible headers (ETag, the client's own
                    checksum echoed, a version id) without forwarding: the object is
                    missing although the client was told it was stored.
``alter_put``       object PUT: flip one body byte, forward that, and answer the client as
                    if its own bytes were stored (its checksum and ETag echoed). The
                    ``checksum`` mode says what the store is given:
                    ``"keep"``      the client's x-amz-checksum-sha256 (a store that does
                                    not check checksums keeps a claim that is false);
                    ``"recompute"`` the altered bytes' SHA-256 (the store reports a hash
                                    that differs from what the client sent);
                    ``"strip"``     no SHA-256 at all, Content-MD5 of the altered bytes
                                    instead (the store cannot report a hash: read back).
                    The altered request also gets X-Amz-Content-SHA256 of the altered
                    body. Its SigV4 signature no longer matches: moto (the test store)
                    does not verify signatures; against a real S3 this fault would need
                    the proxy to re-sign, which it deliberately cannot (no keys).

Upload encodings. boto3 1.44 over plain HTTP sends ``put_object`` with a caller-given
``ChecksumSHA256`` as a plain ``Content-Length`` body with ``Expect: 100-continue`` and
the checksum in a header (aws-chunked trailers are only used over HTTPS, where this
proxy does not sit). The proxy answers ``100 Continue`` itself and forwards without the
``Expect`` header (botocore leaves ``expect`` out of the SigV4 signed headers, so this
is signature-safe) and skips any interim 1xx from upstream. It also handles
``Transfer-Encoding: chunked`` (forwarded in its chunk framing) and
``Content-Encoding: aws-chunked`` bodies (forwarded as is; decoded to count payload
bytes and, for ``alter_put``, re-sent as a plain body with the trailer's checksum moved
into a header). Object PUT = PUT on ``/bucket/key`` with no sub-resource query
(``?tagging``, ``?legal-hold``, ``?uploadId``...). Path-style addressing only.

Every answer the proxy relays or makes carries ``Connection: close`` and the client
connection is closed after it: one request per connection keeps the fault accounting
exact (moto closes every connection anyway).

Observations: ``put_bytes[bucket/key]`` sums the payload bytes the client sent for
object PUTs of that key over all attempts (cut attempts count what arrived), so a test
can prove "bytes re-sent <= one segment"; ``puts`` lists each object PUT attempt;
``requests`` lists every request with its outcome.
"""
from __future__ import annotations

import base64
import hashlib
import random
import socket
import socketserver
import struct
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from email.utils import formatdate
from typing import BinaryIO

MAX_HEAD = 64 * 1024
PIECE = 64 * 1024
_SUBRESOURCES_OK = {"x-id"}  # query params that still mean "plain object PUT"


class ProxyProtocolError(Exception):
    """The client or upstream spoke something this proxy does not parse."""


@dataclass
class Fault:
    """One planned fault; see the module docstring for the kinds."""

    kind: str  # "reset" | "fail" | "slow" | "drop" | "alter"
    count: int = 1
    method: str | None = None
    key: str | None = None
    status: int = 503
    delay_s: float = 0.0
    after_bytes: int | None = None
    checksum: str = "keep"
    offset: int | None = None
    fired: int = 0

    def matches(self, method: str, key: str, object_put: bool) -> bool:
        if self.fired >= self.count:
            return False
        if self.kind in ("reset", "drop", "alter") and not object_put:
            return False
        if self.method is not None and self.method != method:
            return False
        return self.key is None or self.key in key


@dataclass
class PutRecord:
    key: str
    body_bytes: int  # payload bytes received from the client in this attempt
    outcome: str  # forwarded | reset | fail | slow | dropped | altered
    status: int | None  # what the client was answered (None: connection reset)


@dataclass
class RequestRecord:
    method: str
    path: str
    outcome: str
    status: int | None


class _Headers:
    """Ordered raw headers; edits keep every other line as it was."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs
        self.modified = False

    def get(self, name: str) -> str | None:
        low = name.lower()
        for k, v in self.pairs:
            if k.lower() == low:
                return v
        return None

    def remove(self, name: str) -> None:
        low = name.lower()
        before = len(self.pairs)
        self.pairs = [(k, v) for k, v in self.pairs if k.lower() != low]
        self.modified |= len(self.pairs) != before

    def set(self, name: str, value: str) -> None:
        low = name.lower()
        for i, (k, _) in enumerate(self.pairs):
            if k.lower() == low:
                self.pairs[i] = (k, value)
                self.modified = True
                return
        self.pairs.append((name, value))
        self.modified = True

    def encode(self) -> bytes:
        return b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in self.pairs)


def _parse_head(raw: bytes) -> tuple[str, _Headers]:
    lines = raw.split(b"\r\n")
    start = lines[0].decode("latin-1")
    pairs = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            raise ProxyProtocolError(f"bad header line {line[:80]!r}")
        pairs.append((name.decode("latin-1").strip(), value.decode("latin-1").strip()))
    return start, _Headers(pairs)


def _read_head(rfile: BinaryIO) -> bytes | None:
    """The request/status line and headers up to the blank line; None at a clean EOF."""
    lines: list[bytes] = []
    total = 0
    while True:
        line = rfile.readline(MAX_HEAD + 1)
        if not line:
            if lines:
                raise ProxyProtocolError("connection closed inside a message head")
            return None
        total += len(line)
        if total > MAX_HEAD:
            raise ProxyProtocolError("message head too large")
        if line in (b"\r\n", b"\n"):
            if not lines:
                continue  # tolerated blank line between messages
            return b"".join(lines) + b"\r\n"
        lines.append(line)


def decode_chunked(raw: bytes) -> tuple[bytes, dict[str, str]]:
    """Payload and trailers of an HTTP-chunked or aws-chunked body.

    Both put a hex size (aws-chunked adds ``;chunk-signature=...``) before each chunk
    and trailers after the zero-size chunk.
    """
    pos = 0
    out = bytearray()
    while True:
        end = raw.find(b"\r\n", pos)
        if end < 0:
            raise ProxyProtocolError("chunk size line not terminated")
        size = int(raw[pos:end].split(b";", 1)[0].strip() or b"0", 16)
        pos = end + 2
        if size == 0:
            break
        out += raw[pos:pos + size]
        pos += size + 2
    trailers: dict[str, str] = {}
    for line in raw[pos:].split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            trailers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    return bytes(out), trailers


class _Cut(Exception):
    """The planned reset point in a request body was reached."""

    def __init__(self, received: int) -> None:
        super().__init__(received)
        self.received = received


def _read_body(rfile: BinaryIO, headers: _Headers, cut_at: int | None) -> tuple[bytes, int]:
    """The raw body (original framing) and its payload length; ``_Cut`` at ``cut_at``."""
    te = (headers.get("Transfer-Encoding") or "").lower()
    if "chunked" in te:
        raw = bytearray()
        payload = 0
        while True:
            line = rfile.readline(1024)
            if not line.endswith(b"\n"):
                raise ProxyProtocolError("chunk size line not terminated")
            raw += line
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers up to the blank line
                    t = rfile.readline(MAX_HEAD)
                    if not t:
                        raise ProxyProtocolError("connection closed in chunked trailers")
                    raw += t
                    if t in (b"\r\n", b"\n"):
                        return bytes(raw), payload
            left = size
            while left:
                n = min(PIECE, left)
                if cut_at is not None and payload + n >= cut_at:
                    n = cut_at - payload
                    raw += _read_exact(rfile, n)
                    raise _Cut(payload + n)
                piece = _read_exact(rfile, n)
                raw += piece
                payload += n
                left -= n
            raw += _read_exact(rfile, 2)
    length = int(headers.get("Content-Length") or 0)
    raw = bytearray()
    while len(raw) < length:
        n = min(PIECE, length - len(raw))
        if cut_at is not None and len(raw) + n >= cut_at:
            raw += _read_exact(rfile, cut_at - len(raw))
            raise _Cut(len(raw))
        raw += _read_exact(rfile, n)
    return bytes(raw), length


def _read_exact(rfile: BinaryIO, n: int) -> bytes:
    data = rfile.read(n) if n else b""
    if len(data) != n:
        raise ProxyProtocolError(f"connection closed after {len(data)} of {n} body bytes")
    return data


def _read_response(rfile: BinaryIO, method: str) -> tuple[int, _Headers, bytes, bytes]:
    """Status, headers, raw head and raw body of the upstream's final (non-1xx) answer."""
    while True:
        head = _read_head(rfile)
        if head is None:
            raise ProxyProtocolError("upstream closed without answering")
        start, headers = _parse_head(head.rstrip(b"\r\n"))
        parts = start.split(" ", 2)
        status = int(parts[1])
        if 100 <= status < 200:
            continue
        break
    if method == "HEAD" or status in (204, 304):
        return status, headers, head, b""
    if "chunked" in (headers.get("Transfer-Encoding") or "").lower():
        body, _ = _read_body(rfile, headers, None)
    elif headers.get("Content-Length") is not None:
        body = _read_exact(rfile, int(headers.get("Content-Length") or 0))
    else:
        body = rfile.read()  # framed by the close
    return status, headers, head, body


def _status_line(head: bytes) -> bytes:
    return head.split(b"\r\n", 1)[0]


class FaultProxy:
    """The proxy. ``start()`` returns its URL; use it as the store's endpoint_url."""

    def __init__(self, upstream: str, *, host: str = "127.0.0.1", port: int = 0,
                 seed: int | None = None, timeout_s: float = 30.0) -> None:
        u = urllib.parse.urlsplit(upstream)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"upstream must be an http:// URL, not {upstream!r}")
        self.upstream = (u.hostname, u.port or 80)
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.rng = random.Random(seed)
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self.put_bytes: dict[str, int] = {}
        self.puts: list[PutRecord] = []
        self.requests: list[RequestRecord] = []
        self.url = ""

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> str:
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._server = Server((self.host, self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="s3proxy", daemon=True)
        self._thread.start()
        self.url = f"http://{self.host}:{self.port}"
        return self.url

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> "FaultProxy":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- planning ----------------------------------------------------------------------

    def plan(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def reset_mid_body(self, count: int = 1, *, after_bytes: int | None = None,
                       key: str | None = None) -> Fault:
        return self.plan(Fault("reset", count, method="PUT", key=key, after_bytes=after_bytes))

    def fail(self, count: int, status: int = 503, *, method: str | None = None,
             key: str | None = None) -> Fault:
        return self.plan(Fault("fail", count, method=method, key=key, status=status))

    def slow(self, count: int, delay_s: float, *, method: str | None = None,
             key: str | None = None) -> Fault:
        return self.plan(Fault("slow", count, method=method, key=key, delay_s=delay_s))

    def drop_put(self, count: int = 1, *, key: str | None = None) -> Fault:
        return self.plan(Fault("drop", count, method="PUT", key=key))

    def alter_put(self, count: int = 1, *, key: str | None = None, checksum: str = "keep",
                  offset: int | None = None) -> Fault:
        if checksum not in ("keep", "recompute", "strip"):
            raise ValueError(f"checksum mode {checksum!r}")
        return self.plan(Fault("alter", count, method="PUT", key=key, checksum=checksum,
                               offset=offset))

    def clear(self) -> None:
        """Forget planned faults (observations are kept)."""
        with self._lock:
            self._faults.clear()

    def pending(self) -> int:
        """Planned fault firings not yet used."""
        with self._lock:
            return sum(f.count - f.fired for f in self._faults)

    # -- serving -----------------------------------------------------------------------

    def _take_fault(self, method: str, key: str, object_put: bool) -> Fault | None:
        with self._lock:
            for f in self._faults:
                if f.matches(method, key, object_put):
                    f.fired += 1
                    return f
        return None

    def _record(self, method: str, path: str, key: str, object_put: bool, payload: int,
                outcome: str, status: int | None) -> None:
        with self._lock:
            self.requests.append(RequestRecord(method, path, outcome, status))
            if object_put:
                self.put_bytes[key] = self.put_bytes.get(key, 0) + payload
                self.puts.append(PutRecord(key, payload, outcome, status))

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(self.timeout_s)
        with self._lock:
            self._conns.add(sock)
        rfile = sock.makefile("rb")
        try:
            self._one_request(sock, rfile)
        except (OSError, ProxyProtocolError):
            pass  # the client went away or spoke garbage: nothing to relay
        finally:
            with self._lock:
                self._conns.discard(sock)
            rfile.close()

    def _one_request(self, sock: socket.socket, rfile: BinaryIO) -> None:
        head = _read_head(rfile)
        if head is None:
            return
        start, headers = _parse_head(head.rstrip(b"\r\n"))
        method, target, _version = start.split(" ", 2)
        split = urllib.parse.urlsplit(target)
        key = urllib.parse.unquote(split.path.lstrip("/"))
        query = {k for k, _ in urllib.parse.parse_qsl(split.query, keep_blank_values=True)}
        object_put = method == "PUT" and "/" in key and query <= _SUBRESOURCES_OK
        fault = self._take_fault(method, key, object_put)

        if (headers.get("Expect") or "").lower() == "100-continue":
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            headers.remove("Expect")

        cut_at = None
        if fault is not None and fault.kind == "reset":
            length = int(headers.get("Content-Length") or 0) or PIECE
            cut_at = fault.after_bytes if fault.after_bytes is not None else self.rng.randrange(length)
        try:
            raw_body, payload = _read_body(rfile, headers, cut_at)
        except _Cut as cut:
            self._record(method, target, key, object_put, cut.received, "reset", None)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            return
        aws_chunked = "aws-chunked" in (headers.get("Content-Encoding") or "").lower()
        decoded, trailers = (decode_chunked(raw_body) if aws_chunked
                             else (None, {}))
        if decoded is not None:
            payload = len(decoded)

        if fault is not None and fault.kind == "fail":
            self._record(method, target, key, object_put, payload, "fail", fault.status)
            sock.sendall(_error_response(fault.status, method))
            return
        if fault is not None and fault.kind == "drop":
            body = decoded if decoded is not None else _plain_payload(raw_body, headers)
            self._record(method, target, key, object_put, payload, "dropped", 200)
            sock.sendall(_fake_put_ok(body, _claimed_checksums(headers, trailers)))
            return
        if fault is not None and fault.kind == "alter":
            self._alter(sock, method, target, key, headers, raw_body, decoded, trailers, fault)
            return

        if headers.modified:
            out_head = start.encode("latin-1") + b"\r\n" + headers.encode() + b"\r\n"
        else:
            out_head = head  # untouched: the exact bytes the client sent
        status, resp_head, resp_body = self._forward(method, out_head + raw_body)
        slow = fault is not None and fault.kind == "slow"
        # recorded before the delay: the store has already acted on it
        self._record(method, target, key, object_put, payload,
                     "slow" if slow else "forwarded", status)
        if slow:
            time.sleep(fault.delay_s)
        sock.sendall(_with_close(resp_head) + resp_body)

    def _forward(self, method: str, request: bytes) -> tuple[int, bytes, bytes]:
        with socket.create_connection(self.upstream, timeout=self.timeout_s) as up:
            up.sendall(request)
            with up.makefile("rb") as uf:
                status, _h, head, body = _read_response(uf, method)
        return status, head, body

    def _alter(self, sock: socket.socket, method: str, target: str, key: str,
               headers: _Headers, raw_body: bytes, decoded: bytes | None,
               trailers: dict[str, str], fault: Fault) -> None:
        original = decoded if decoded is not None else _plain_payload(raw_body, headers)
        claimed = _claimed_checksums(headers, trailers)
        altered = bytearray(original)
        if altered:
            at = fault.offset if fault.offset is not None else self.rng.randrange(len(altered))
            altered[at] ^= 0xFF
        altered_b = bytes(altered)
        start = f"{method} {target} HTTP/1.1"
        h = headers
        for name in ("Transfer-Encoding", "x-amz-decoded-content-length", "x-amz-trailer"):
            h.remove(name)
        enc = [e.strip() for e in (h.get("Content-Encoding") or "").split(",")
               if e.strip() and e.strip().lower() != "aws-chunked"]
        if enc:
            h.set("Content-Encoding", ", ".join(enc))
        else:
            h.remove("Content-Encoding")
        h.set("Content-Length", str(len(altered_b)))
        content_sha = (h.get("X-Amz-Content-SHA256") or "")
        if content_sha.upper().startswith("STREAMING") or content_sha.upper() == "UNSIGNED-PAYLOAD":
            h.set("X-Amz-Content-SHA256", "UNSIGNED-PAYLOAD")
        elif content_sha:
            h.set("X-Amz-Content-SHA256", hashlib.sha256(altered_b).hexdigest())
        if h.get("Content-MD5") is not None:
            h.set("Content-MD5", base64.b64encode(hashlib.md5(altered_b).digest()).decode())
        if fault.checksum == "keep":
            for name, value in claimed.items():  # a trailer's claim moves into a header
                h.set(name, value)
            if "x-amz-checksum-sha256" in claimed:
                h.set("x-amz-sdk-checksum-algorithm", "SHA256")
        elif fault.checksum == "recompute":
            for name in claimed:
                h.remove(name)
            h.set("x-amz-checksum-sha256",
                  base64.b64encode(hashlib.sha256(altered_b).digest()).decode())
            h.set("x-amz-sdk-checksum-algorithm", "SHA256")
        else:  # strip: the store gets no SHA-256 to keep, only an MD5 it can check
            for name in list(claimed) + ["x-amz-checksum-sha256", "x-amz-sdk-checksum-algorithm"]:
                h.remove(name)
            h.set("Content-MD5", base64.b64encode(hashlib.md5(altered_b).digest()).decode())
        out = start.encode("latin-1") + b"\r\n" + h.encode() + b"\r\n" + altered_b
        status, resp_head, resp_body = self._forward(method, out)
        if 200 <= status < 300:
            self._record(method, target, key, True, len(original), "altered", status)
            sock.sendall(_fake_put_ok(original, claimed, upstream_head=resp_head))
        else:
            self._record(method, target, key, True, len(original), "altered-refused", status)
            sock.sendall(_with_close(resp_head) + resp_body)


def _plain_payload(raw_body: bytes, headers: _Headers) -> bytes:
    if "chunked" in (headers.get("Transfer-Encoding") or "").lower():
        return decode_chunked(raw_body)[0]
    return raw_body


def _claimed_checksums(headers: _Headers, trailers: dict[str, str]) -> dict[str, str]:
    """The x-amz-checksum-* values the client sent, in headers or aws-chunked trailers."""
    out = {k.lower(): v for k, v in headers.pairs
           if k.lower().startswith("x-amz-checksum-") and k.lower() != "x-amz-checksum-type"}
    out.update({k: v for k, v in trailers.items() if k.startswith("x-amz-checksum-")})
    return out


def _with_close(head: bytes) -> bytes:
    """The response head with ``Connection: close`` (one request per connection)."""
    start, headers = _parse_head(head.rstrip(b"\r\n"))
    if (headers.get("Connection") or "").lower() == "close":
        return head
    headers.set("Connection", "close")
    return start.encode("latin-1") + b"\r\n" + headers.encode() + b"\r\n"


def _fake_put_ok(body: bytes, claimed: dict[str, str], upstream_head: bytes | None = None) -> bytes:
    """A 200 a client cannot tell from the store's, for bytes the store did not get."""
    if upstream_head is not None:
        start, h = _parse_head(upstream_head.rstrip(b"\r\n"))
        for k, _ in list(h.pairs):
            if k.lower().startswith("x-amz-checksum-"):
                h.remove(k)
    else:
        start, h = "HTTP/1.1 200 OK", _Headers([
            ("Server", "s3proxy"), ("Date", formatdate(usegmt=True)),
            ("x-amz-version-id", uuid.uuid4().hex), ("x-amz-request-id", uuid.uuid4().hex),
            ("Content-Length", "0")])
    h.set("ETag", f'"{hashlib.md5(body).hexdigest()}"')
    for name, value in claimed.items():
        h.set(name, value)
    h.set("Connection", "close")
    return start.encode("latin-1") + b"\r\n" + h.encode() + b"\r\n"


_ERRORS = {500: ("InternalError", "We encountered an internal error. Please try again."),
           503: ("ServiceUnavailable", "Please reduce your request rate.")}


def _error_response(status: int, method: str) -> bytes:
    code, message = _ERRORS.get(status, ("InternalError", "Injected failure."))
    reason = {500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "Error")
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message><RequestId>{uuid.uuid4().hex}</RequestId>"
            f"</Error>").encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\nDate: {formatdate(usegmt=True)}\r\n"
            f"Connection: close\r\n\r\n").encode()
    return head + (b"" if method == "HEAD" else body)
