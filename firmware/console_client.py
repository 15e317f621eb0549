"""The technician's side of the console: ``bwv console --port PORT COMMAND``.

Each request is one frame with a fresh request id; the answer is the response or error
frame that echoes it (stream frames before it carry a ``log``). A request whose answer
does not come within its timeout, or that the device reports garbled (an error frame
with request id 0), is sent again with the *same* id: the device answers a repeated
request from its memory instead of running it twice.

Example::

    with ConsoleClient("/dev/ttyACM0") as c:
        print(c.info())
        c.authenticate(load_technician_private(Path("technician.key")))
        c.flash(Path("bwv-0.2.0.bundle"), progress=lambda done, total: ...)
"""
from __future__ import annotations

import base64
import hashlib
import secrets
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Self

import serial
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware.console_frame import (
    FRAME_ERRORS,
    FrameError,
    FrameReader,
    MsgType,
    auth_message,
    encode,
)

DEFAULT_TIMEOUT_S = 10.0
SLOW_TIMEOUTS_S = {"selftest": 60.0, "flash_commit": 900.0, "log": 60.0}


class ConsoleError(Exception):
    """The device refused or failed a request; ``code`` is its named reason."""

    def __init__(self, code: str, message: str, data: dict | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.data = data or {}


class ConsoleTimeout(ConsoleError):
    def __init__(self, message: str) -> None:
        super().__init__("timeout", message)


class ConsoleClient:
    def __init__(self, port, *, baud: int = 115200, timeout_s: float = DEFAULT_TIMEOUT_S,
                 retries: int = 2, timer: Callable[[], float] = time.monotonic) -> None:
        self.ser = (serial.serial_for_url(port, baudrate=baud, timeout=0.05, write_timeout=5.0)
                    if isinstance(port, str) else port)
        self.timeout_s = timeout_s
        self.retries = retries
        self._timer = timer
        self._reader = FrameReader(timer)
        self._rid = secrets.randbelow(1 << 30) + 1
        self.session: str | None = None
        self.nonce: str | None = None
        self.device_id: str | None = None

    def close(self) -> None:
        self.ser.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ requests
    def next_request_id(self) -> int:
        self._rid = self._rid % 0xFFFFFFFF + 1
        return self._rid

    def request(self, cmd: str, args: dict | None = None, *, timeout_s: float | None = None,
                on_stream: Callable[[dict], None] | None = None) -> dict:
        rid = self.next_request_id()
        frame = encode(MsgType.REQUEST, rid, {"cmd": cmd, "args": args or {}, "session": self.session})
        timeout = timeout_s or SLOW_TIMEOUTS_S.get(cmd, self.timeout_s)
        for attempt in range(self.retries + 1):
            self.ser.write(frame)
            self.ser.flush()
            answer = self._await(rid, timeout, on_stream)
            if answer is not None:
                return answer
        raise ConsoleTimeout(f"no answer to {cmd} after {self.retries + 1} tries of {timeout:g} s "
                             "(is the port right and the camera on?)")

    def _await(self, rid: int, timeout: float, on_stream) -> dict | None:
        deadline = self._timer() + timeout
        while self._timer() < deadline:
            data = self.ser.read(1)
            if data:
                waiting = self.ser.in_waiting
                if waiting:
                    data += self.ser.read(waiting)
            for item in self._reader.feed(data):
                if isinstance(item, FrameError):
                    continue  # a garbled answer: wait, then ask again (same id)
                if item.type is MsgType.ERROR and item.request_id == 0 and \
                        item.payload.get("error") in FRAME_ERRORS:
                    return None  # the device got our request garbled: send it again
                if item.request_id != rid:
                    continue  # a late answer to an earlier try
                if item.type is MsgType.STREAM:
                    deadline = self._timer() + timeout
                    if on_stream is not None:
                        on_stream(item.payload)
                elif item.type is MsgType.RESPONSE:
                    return item.payload
                elif item.type is MsgType.ERROR:
                    p = dict(item.payload)
                    raise ConsoleError(str(p.pop("error", "error")), str(p.pop("message", "")), p)
            self._reader.expire()
        return None

    # ------------------------------------------------------------------ commands
    def hello(self) -> dict:
        r = self.request("hello")
        self.session, self.nonce, self.device_id = r["session"], r["nonce"], r["device_id"]
        return r

    def sign_challenge(self, key: Ed25519PrivateKey) -> tuple[str, str]:
        """(public key hex, signature base64) for the current session's challenge."""
        pub = key.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw).hex()
        sig = key.sign(auth_message(self.device_id, self.session, self.nonce, pub))
        return pub, base64.b64encode(sig).decode()

    def authenticate(self, key: Ed25519PrivateKey) -> dict:
        if self.session is None:
            self.hello()
        pub, sig = self.sign_challenge(key)
        return self.request("auth", {"public_key": pub, "signature": sig})

    def bye(self) -> dict:
        r = self.request("bye")
        self.session = None
        return r

    def info(self) -> dict:
        return self.request("info")

    def selftest(self) -> dict:
        return self.request("selftest")

    def log(self, tail: int | None = None, on_line: Callable[[str], None] | None = None) -> int:
        """The audit log's records, each line as stored (``body TAB signature``), to
        ``on_line`` as they arrive; returns how many the device sent."""
        buf = [""]

        def got(payload: dict) -> None:
            buf[0] += payload.get("text", "")
            *complete, buf[0] = buf[0].split("\n")
            for line in complete:
                if on_line is not None:
                    on_line(line)
        r = self.request("log", {"tail": tail} if tail else {}, on_stream=got)
        if buf[0]:
            raise ConsoleError("bad_stream", "the log ended inside a record")
        return r["records"]

    def assign(self, officer_id: str) -> dict:
        return self.request("assign", {"officer_id": officer_id})

    def provision(self, request: dict) -> dict:
        return self.request("provision", request)

    def flash(self, path: Path, *, progress: Callable[[int, int], None] | None = None,
              chunk: int | None = None, stop_after: int | None = None) -> dict:
        """Send a bundle: ask where the device stands, send the rest in CRC-checked
        chunks, then commit (the device checks the SHA-256 and installs).
        ``stop_after`` stops after that many bytes (tests: a cable pulled mid-flash)."""
        path = Path(path)
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        sha, size = h.hexdigest(), path.stat().st_size
        begin = self.request("flash_begin", {"sha256": sha, "size": size, "name": path.name})
        offset, step = begin["offset"], min(chunk or begin["chunk_max"], begin["chunk_max"])
        if progress:
            progress(offset, size)
        with open(path, "rb") as f:
            while offset < size:
                if stop_after is not None and offset >= stop_after:
                    return {"stopped_at": offset, "sha256": sha, "size": size}
                f.seek(offset)
                data = f.read(step)
                try:
                    r = self.request("flash_chunk", {"sha256": sha, "offset": offset, "crc32": zlib.crc32(data),
                                                     "data": base64.b64encode(data).decode()})
                    offset = r["offset"]
                except ConsoleError as exc:
                    if exc.code != "flash_offset" or "expected" not in exc.data:
                        raise
                    offset = int(exc.data["expected"])  # the device knows better: go on from there
                if progress:
                    progress(offset, size)
        return self.request("flash_commit", {"sha256": sha})
