"""The technician console's wire format: COBS-framed, CRC-32-checked frames.

A serial line loses, repeats and flips bytes, and a USB cable is pulled mid-frame. So
every frame carries its own length and a CRC-32, and frames are delimited by a zero
byte after COBS encoding (Consistent Overhead Byte Stuffing removes every zero from the
frame body, so a receiver resynchronises at the next zero whatever came before). A
frame that fails any check is *rejected* with a named reason and never executed.

Frame, before COBS (all integers big-endian; docs/FORMAT.md "Technician console")::

    0   1  version (1)
    1   1  type: 1 request, 2 response, 3 error, 4 stream
    2   4  request id (client's choice; echoed in every answer; 0 = "unknown")
    6   4  payload length n (at most MAX_PAYLOAD)
    10  n  payload: UTF-8 JSON object
    10+n 4 CRC-32 (IEEE 802.3, as zlib.crc32) of bytes 0 .. 10+n-1

On the wire: ``COBS(frame) + b"\\x00"``.

Example::

    reader = FrameReader()
    for item in reader.feed(port.read(4096)):
        if isinstance(item, FrameError): ...   # answer with an error frame
        else: handle(item)                      # a Frame whose CRC and length checked out
"""
from __future__ import annotations

import enum
import json
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

VERSION = 1
HEADER = struct.Struct(">BBII")  # version, type, request id, payload length
CRC = struct.Struct(">I")
MAX_PAYLOAD = 65536
MAX_FRAME = HEADER.size + MAX_PAYLOAD + CRC.size
#: COBS adds one byte per 254 (plus one); anything longer without a delimiter is noise.
MAX_ENCODED = MAX_FRAME + MAX_FRAME // 254 + 2
DELIMITER = b"\x00"
#: A frame whose bytes stop arriving for this long is dropped as truncated.
FRAME_TIMEOUT_S = 2.0

AUTH_DOMAIN = b"bwv-console-auth/1\n"


class MsgType(enum.IntEnum):
    REQUEST = 1
    RESPONSE = 2
    ERROR = 3
    STREAM = 4


#: Why a frame was rejected; the ``error`` of the error frame the device answers with.
FRAME_ERRORS = ("bad_cobs", "truncated", "too_long", "bad_length", "bad_crc", "bad_version",
                "bad_type", "bad_json")


@dataclass(frozen=True)
class Frame:
    type: MsgType
    request_id: int
    payload: dict


@dataclass(frozen=True)
class FrameError:
    """A rejected frame: ``reason`` is one of FRAME_ERRORS; ``request_id`` when known."""

    reason: str
    detail: str
    request_id: int = 0


class FrameEncodeError(ValueError):
    pass


# ------------------------------------------------------------------------------- COBS
def cobs_encode(data: bytes) -> bytes:
    """COBS (Cheshire & Baker 1999): the output has no zero byte. As usual, a final
    full block (code 0xFF) at the very end is not followed by an empty block."""
    out = bytearray()
    block = bytearray()
    last_full = False
    for byte in data:
        last_full = False
        if byte == 0:
            out.append(len(block) + 1)
            out += block
            block.clear()
        else:
            block.append(byte)
            if len(block) == 254:
                out.append(255)
                out += block
                block.clear()
                last_full = True
    if block or not last_full:
        out.append(len(block) + 1)
        out += block
    return bytes(out)


class CobsTruncated(ValueError):
    """A block announces more bytes than the frame holds: the frame was cut short."""


def cobs_decode(data: bytes) -> bytes:
    """Inverse of :func:`cobs_encode`; ValueError for a zero or a code past the end."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise ValueError(f"zero byte at {i} inside a COBS block")
        end = i + code
        if end > n:
            raise CobsTruncated(f"block at {i} (code {code}) runs past the end ({n} bytes)")
        block = data[i + 1:end]
        if 0 in block:
            raise ValueError(f"zero byte inside the COBS block at {i}")
        out += block
        i = end
        if code < 255 and i < n:
            out.append(0)
    return bytes(out)


# ------------------------------------------------------------------------------ frames
def encode(type_: MsgType, request_id: int, payload: dict) -> bytes:
    """One frame, COBS-encoded, with its trailing delimiter: ready for ``port.write``."""
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    if len(body) > MAX_PAYLOAD:
        raise FrameEncodeError(f"payload of {len(body)} bytes exceeds {MAX_PAYLOAD}")
    if not 0 <= request_id <= 0xFFFFFFFF:
        raise FrameEncodeError(f"request id {request_id} is not a uint32")
    raw = HEADER.pack(VERSION, int(type_), request_id, len(body)) + body
    return cobs_encode(raw + CRC.pack(zlib.crc32(raw))) + DELIMITER


def decode(encoded: bytes) -> Frame | FrameError:
    """One frame (without its delimiter) → a Frame, or the reason it is rejected."""
    try:
        raw = cobs_decode(encoded)
    except CobsTruncated as exc:
        return FrameError("truncated", f"cut inside its COBS encoding: {exc}")
    except ValueError as exc:
        return FrameError("bad_cobs", str(exc))
    if len(raw) < HEADER.size + CRC.size:
        return FrameError("truncated", f"{len(raw)} bytes is shorter than a header and CRC")
    version, type_, rid, length = HEADER.unpack_from(raw)
    if length > MAX_PAYLOAD:
        return FrameError("too_long", f"length field {length} exceeds {MAX_PAYLOAD}")
    expected = HEADER.size + length + CRC.size
    if len(raw) < expected:
        return FrameError("truncated", f"{len(raw)} of {expected} bytes")
    if len(raw) > expected:
        return FrameError("bad_length", f"{len(raw)} bytes, length field says {expected}")
    (crc,) = CRC.unpack_from(raw, expected - CRC.size)
    if zlib.crc32(raw[:expected - CRC.size]) != crc:
        return FrameError("bad_crc", "CRC-32 does not match")
    # From here on the header is known good: answers can name the request.
    if version != VERSION:
        return FrameError("bad_version", f"version {version}, expected {VERSION}", rid)
    try:
        mtype = MsgType(type_)
    except ValueError:
        return FrameError("bad_type", f"message type {type_}", rid)
    try:
        payload = json.loads(raw[HEADER.size:HEADER.size + length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return FrameError("bad_json", f"payload is not UTF-8 JSON ({exc.__class__.__name__})", rid)
    if not isinstance(payload, dict):
        return FrameError("bad_json", "payload is not a JSON object", rid)
    return Frame(mtype, rid, payload)


class FrameReader:
    """Splits a byte stream into frames at zero bytes; never buffers more than one frame.

    ``clock`` (seconds, monotonic) times out a frame whose bytes stopped arriving: a
    sender cut off mid-frame leaves a *truncated* rejection, not a stale prefix glued
    to the next frame. Over-long input is rejected once and skipped to the next zero.
    """

    def __init__(self, clock: Callable[[], float], frame_timeout_s: float = FRAME_TIMEOUT_S) -> None:
        self._clock = clock
        self.frame_timeout_s = frame_timeout_s
        self._buf = bytearray()
        self._skipping = False
        self._last_byte_at = 0.0

    @property
    def pending(self) -> int:
        return len(self._buf)

    def expire(self) -> FrameError | None:
        """A partial frame idle longer than the timeout is dropped (call on each tick)."""
        if (self._buf or self._skipping) and \
                self._clock() - self._last_byte_at > self.frame_timeout_s:
            n, skipping = len(self._buf), self._skipping
            self._buf.clear()
            self._skipping = False
            if skipping:
                return None  # already reported as too_long
            return FrameError("truncated", f"{n} bytes, then nothing for {self.frame_timeout_s:g} s")
        return None

    def feed(self, data: bytes) -> Iterator[Frame | FrameError]:
        if data:
            self._last_byte_at = self._clock()
        start = 0
        while start < len(data):
            zero = data.find(0, start)
            piece = data[start:] if zero < 0 else data[start:zero]
            start = len(data) if zero < 0 else zero + 1
            if not self._skipping:
                self._buf += piece
                if len(self._buf) > MAX_ENCODED:
                    self._buf.clear()
                    self._skipping = True
                    yield FrameError("too_long", f"more than {MAX_ENCODED} bytes without a delimiter")
            if zero < 0:
                break
            if self._skipping:
                self._skipping = False
                continue
            if not self._buf:
                continue  # an empty frame: a delimiter sent to flush the line
            encoded = bytes(self._buf)
            self._buf.clear()
            yield decode(encoded)


# -------------------------------------------------------------------------------- auth
def auth_message(device_id: str, session: str, nonce: str, public_key: str) -> bytes:
    """What a technician signs to open a session (docs/FORMAT.md): the device id, the
    session id and nonce the device just sent, and the key that signs, so a signature
    is good for this device, this session and this key only."""
    return AUTH_DOMAIN + f"{device_id}\n{session}\n{nonce}\n{public_key}\n".encode("ascii")
