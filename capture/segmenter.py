"""Keyframe-aligned MPEG-TS segmenter.

Cuts the camera's packet stream into self-contained MPEG-TS segments of about
``segment_seconds`` each, in memory, with the facts the sealed format signs: capture
start/end on both time lines, the frame count and each frame's hash
(:mod:`capture.framehash`). ``buffer`` seals what ``on_segment`` receives; this module
never touches disks or keys.

Why MPEG-TS: a TS file is readable up to the last complete 188-byte packet, so a segment
cut short by power loss is still recoverable, and TS segments concatenate byte for byte.

Rules:

* Every segment starts with a keyframe (an IDR with SPS/PPS in band), so it decodes on
  its own; packets before the first keyframe are dropped and counted.
* A segment closes when a keyframe arrives and the open segment already spans at least
  ``segment_seconds`` minus half a frame interval on the monotonic clock (the half frame
  absorbs capture jitter so a keyframe due exactly at the boundary is not pushed into the
  next GOP). That keyframe starts the next segment: no frame is lost or duplicated at a
  boundary.
* Audio packets (picamera2 sends them through the same call) are skipped explicitly.
* Timestamps: all segments of one segmenter share one timeline. PTS = (mono_ns −
  origin) in 90 kHz + 90000, where origin is the mono_ns of the first accepted packet;
  so a remux can put segments back in place, gaps included.

A note on locking: ``push`` runs in the encoder's thread (picamera2 calls outputs from
it); ``flush`` runs in the agent's thread at shutdown or clip end. One lock serialises
them, and ``on_segment`` is called with the lock held so segments reach the sealer in
order and a flush can never interleave with a half-built segment.
"""
from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import av

from capture.framehash import NAL_PPS, NAL_SPS, frame_hash_nals, nal_type, split_annexb
from drivers.camera import CameraInfo, VideoPacket

TS_CLOCK_HZ = 90_000
TS_TIME_BASE = Fraction(1, TS_CLOCK_HZ)
#: The first frame of a stream gets PTS 1 s rather than 0, leaving headroom for players
#: and remuxers that treat PTS 0 or a small DTS offset specially.
PTS_OFFSET = TS_CLOCK_HZ
# MPEG-TS PTS is 33 bits at 90 kHz: it wraps after 2**33 / 90000 s ≈ 26.5 h. A 12 h shift
# fits; streams longer than that must start a new segmenter (a new stream id) first.


@dataclass(frozen=True)
class RawSegment:
    """One closed, unsealed segment: an MPEG-TS file in memory plus its capture facts.

    ``end_*_ns`` are the last frame's capture instant plus one frame interval, so
    consecutive segments of an unbroken stream meet exactly (end of one = start of next).
    """

    ts: bytes
    frame_count: int
    frame_hashes: tuple[str, ...]
    start_mono_ns: int
    end_mono_ns: int
    start_utc_ns: int
    end_utc_ns: int
    first_timestamp_us: int
    keyframe_count: int
    info: CameraInfo


class _OpenSegment:
    """A segment being muxed: packets go into the TS muxer as they arrive, which spreads
    the muxing cost over the frames instead of paying it all at the boundary."""

    def __init__(self, info: CameraInfo, first: VideoPacket) -> None:
        self.buf = io.BytesIO()
        self.container = av.open(self.buf, "w", format="mpegts")
        self.stream = self.container.add_stream("h264", rate=info.fps)
        self.stream.width = info.width
        self.stream.height = info.height
        self.stream.time_base = TS_TIME_BASE
        self.first = first
        self.last = first
        self.hashes: list[str] = []
        self.keyframes = 0

    def write(self, packet: VideoPacket, pts: int, duration: int, frame_hash: str) -> None:
        pkt = av.Packet(packet.data)
        pkt.stream = self.stream
        pkt.time_base = TS_TIME_BASE
        pkt.pts = pts
        pkt.dts = pts  # the encoders we use emit no B-frames: decode order = capture order
        pkt.duration = duration
        pkt.is_keyframe = packet.keyframe
        self.container.mux(pkt)
        self.hashes.append(frame_hash)
        self.keyframes += int(packet.keyframe)
        self.last = packet

    def close(self, info: CameraInfo, interval_ns: int) -> RawSegment:
        self.container.close()
        return RawSegment(
            ts=self.buf.getvalue(),
            frame_count=len(self.hashes),
            frame_hashes=tuple(self.hashes),
            start_mono_ns=self.first.mono_ns,
            end_mono_ns=self.last.mono_ns + interval_ns,
            start_utc_ns=self.first.utc_ns,
            end_utc_ns=self.last.utc_ns + interval_ns,
            first_timestamp_us=self.first.timestamp_us,
            keyframe_count=self.keyframes,
            info=info,
        )


class Segmenter:
    """Feeds on VideoPackets, emits RawSegments through ``on_segment``.

    Example::

        seg = Segmenter(camera.info, 2.0, sealer.seal)
        camera.start(seg.push)
        ...
        camera.stop(); seg.flush()
    """

    def __init__(self, info: CameraInfo, segment_seconds: float,
                 on_segment: Callable[[RawSegment], None]) -> None:
        if segment_seconds <= 0:
            raise ValueError("segment_seconds must be positive")
        if info.codec != "h264":
            raise ValueError(f"segmenter handles H.264 only, not {info.codec!r}")
        self.info = info
        self.segment_seconds = segment_seconds
        self.on_segment = on_segment
        self.frame_interval_ns = round(10**9 / info.fps)
        self._min_span_ns = round(segment_seconds * 10**9) - self.frame_interval_ns // 2
        self._frame_ticks = round(TS_CLOCK_HZ / info.fps)
        self._lock = threading.Lock()
        self._open: _OpenSegment | None = None
        self._origin_mono_ns: int | None = None
        self._last_mono_ns: int | None = None
        self.skipped_audio = 0
        self.dropped_before_keyframe = 0
        self.segments_closed = 0
        self.frames_accepted = 0

    def pts_of(self, mono_ns: int) -> int:
        """90 kHz PTS of a frame captured at ``mono_ns`` on this segmenter's timeline."""
        if self._origin_mono_ns is None:
            raise ValueError("no timeline yet: no packet accepted")
        # Exact integer arithmetic, rounded to the nearest tick: ns * 90_000 / 1e9.
        delta = mono_ns - self._origin_mono_ns
        return (delta * 9 + 50_000) // 100_000 + PTS_OFFSET

    def push(self, packet: VideoPacket) -> None:
        """Take one packet from the encoder (encoder thread)."""
        if packet.audio:
            with self._lock:
                self.skipped_audio += 1
            return
        with self._lock:
            if self._open is None and not packet.keyframe:
                self.dropped_before_keyframe += 1
                return
            if self._last_mono_ns is not None and packet.mono_ns <= self._last_mono_ns:
                raise ValueError(f"capture time went backwards or repeated: mono_ns "
                                 f"{packet.mono_ns} after {self._last_mono_ns}")
            nals = split_annexb(packet.data)
            frame_hash = frame_hash_nals(nals)
            seg = self._open
            starts_segment = packet.keyframe and (
                seg is None or packet.mono_ns - seg.first.mono_ns >= self._min_span_ns)
            if starts_segment:
                # Checked before the open segment is closed, so a refused packet leaves
                # the segmenter exactly as it was.
                if not {NAL_SPS, NAL_PPS} <= {nal_type(n) for n in nals}:
                    raise ValueError("keyframe lacks in-band SPS/PPS: a segment starting "
                                     "here would not decode on its own (enable repeated "
                                     "headers in the encoder)")
                if seg is not None:
                    self._close_locked()
                seg = self._open = _OpenSegment(self.info, packet)
            assert seg is not None
            if self._origin_mono_ns is None:
                self._origin_mono_ns = packet.mono_ns
            seg.write(packet, self.pts_of(packet.mono_ns), self._frame_ticks, frame_hash)
            self._last_mono_ns = packet.mono_ns
            self.frames_accepted += 1

    def flush(self) -> None:
        """Close the open segment, if any (shutdown, clip end). Later packets start a
        new segment at the next keyframe, on the same timeline."""
        with self._lock:
            if self._open is not None:
                self._close_locked()

    def _close_locked(self) -> None:
        assert self._open is not None
        seg = self._open.close(self.info, self.frame_interval_ns)
        self._open = None
        self.segments_closed += 1
        self.on_segment(seg)
