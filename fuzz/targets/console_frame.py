"""Target ``console_frame``: bytes from the technician's serial line
(``firmware.console_frame``), before any session or signature check.

``decode`` must never raise: a ``Frame`` (known type, uint32 request id, JSON-object
payload) or a ``FrameError`` whose reason is one of ``FRAME_ERRORS`` with a detail. A
decoded frame re-encodes (``encode``; only ``FrameEncodeError`` allowed) and decodes to
the same frame. The same bytes, cut into chunks (sizes from the input itself), go
through a ``FrameReader``, which must never raise, never hold more than
``MAX_ENCODED`` bytes, and only yield frames or named rejections; its idle timeout
(``expire``) must drop a partial frame as ``truncated``.

The mutator builds most inputs as valid frames (COBS, CRC, length) around a mutated
header or JSON payload, so mutations get past the CRC to the version, type and JSON
checks; the rest are raw mutations (framing and COBS).
"""
from __future__ import annotations

import json
import random
import zlib

from firmware import console_frame as cf
from fuzz.harness import Defect
from fuzz.jsonmut import mutate_json_bytes


def _check_item(item) -> None:
    if isinstance(item, cf.FrameError):
        if item.reason not in cf.FRAME_ERRORS or not item.detail:
            raise Defect(f"rejection {item!r} has no known reason or detail")
        if not 0 <= item.request_id <= 0xFFFFFFFF:
            raise Defect(f"rejection names request id {item.request_id}")
        return
    if not isinstance(item, cf.Frame):
        raise Defect(f"the reader yielded {type(item).__name__}")
    if not isinstance(item.type, cf.MsgType) or not isinstance(item.payload, dict):
        raise Defect(f"a frame with type {item.type!r} and payload {type(item.payload).__name__}")
    if not 0 <= item.request_id <= 0xFFFFFFFF:
        raise Defect(f"a frame with request id {item.request_id}")


class _Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def check(data: bytes) -> None:
    body = data.split(cf.DELIMITER, 1)[0]
    got = cf.decode(body)
    _check_item(got)
    if isinstance(got, cf.Frame):
        try:
            again = cf.decode(cf.encode(got.type, got.request_id, got.payload)[:-1])
        except cf.FrameEncodeError as exc:
            if not str(exc):
                raise Defect("FrameEncodeError without a message") from None
        else:
            _check_item(again)
            if not isinstance(again, cf.Frame) or (again.type, again.request_id) != (got.type, got.request_id) \
                    or json.dumps(again.payload, sort_keys=True) != json.dumps(got.payload, sort_keys=True):
                raise Defect(f"re-encoding {got!r} decoded to {again!r}")
    clock = _Clock()
    reader = cf.FrameReader(clock)
    sizes = data[:3] or b"\x10"
    pos, i = 0, 0
    while pos < len(data):
        n = 1 + sizes[i % len(sizes)] * 7 % 300
        for item in reader.feed(data[pos:pos + n]):
            _check_item(item)
        if reader.pending > cf.MAX_ENCODED:
            raise Defect(f"the reader holds {reader.pending} bytes")
        pos, i = pos + n, i + 1
        clock.t += 0.01
    clock.t += cf.FRAME_TIMEOUT_S + 1
    pending = reader.pending
    left = reader.expire()
    if left is not None:
        _check_item(left)
        if left.reason != "truncated":
            raise Defect(f"an idle partial frame expired as {left.reason!r}")
    if reader.pending:
        raise Defect(f"{pending} bytes still pending after the idle timeout")


def _frame(version: int, type_: int, rid: int, payload: bytes, *, length: int | None = None,
           crc_ok: bool = True) -> bytes:
    raw = cf.HEADER.pack(version, type_, rid, len(payload) if length is None else length) + payload
    crc = zlib.crc32(raw) if crc_ok else zlib.crc32(raw) ^ 1
    return cf.cobs_encode(raw + cf.CRC.pack(crc)) + cf.DELIMITER


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    import atheris
    rng = random.Random(seed)
    if rng.random() < 0.3:
        return atheris.Mutate(data, max_size)
    frames = [f for f in data.split(cf.DELIMITER) if f]
    out = []
    for enc in frames or [b""]:
        got = cf.decode(enc)
        if isinstance(got, cf.Frame) and rng.random() < 0.7:
            payload = json.dumps(got.payload).encode()
            payload = (mutate_json_bytes(payload, rng) if rng.random() < 0.7 else None) \
                or atheris.Mutate(payload, len(payload) + 64)
            version, type_, rid = cf.VERSION, int(got.type), got.request_id
            r = rng.random()
            if r < 0.1:
                version = rng.randrange(256)
            elif r < 0.2:
                type_ = rng.randrange(256)
            elif r < 0.3:
                rid = rng.choice([0, 0xFFFFFFFF, rng.randrange(2**32)])
            length = None if rng.random() < 0.9 else rng.choice([0, len(payload) + 1, cf.MAX_PAYLOAD + 1])
            out.append(_frame(version, type_, rid, payload, length=length, crc_ok=rng.random() < 0.95))
        else:
            out.append(enc + cf.DELIMITER)
    if rng.random() < 0.2:
        rng.shuffle(out)
    return b"".join(out)[:max_size]


def seeds(out) -> None:
    """Frames as the console client and server send them."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "hello.frames").write_bytes(cf.encode(cf.MsgType.REQUEST, 1, {"cmd": "hello", "args": {}}))
    (out / "session.frames").write_bytes(
        cf.encode(cf.MsgType.REQUEST, 2, {"cmd": "auth", "args": {"key": "ab" * 32, "sig": "cd" * 64},
                                          "session": None})
        + cf.encode(cf.MsgType.RESPONSE, 2, {"ok": True, "session": "s1", "nonce": "00ff"})
        + cf.encode(cf.MsgType.STREAM, 3, {"line": "seg 41 sealed"})
        + cf.encode(cf.MsgType.ERROR, 0, {"error": "bad_crc", "detail": "CRC-32 does not match"}))
