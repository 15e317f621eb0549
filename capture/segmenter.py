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
* Audio packets (picamera2 sends them through the same call) are skipped explicitly
  when the segmenter was made without ``audio``; with it, see "Audio" below.
* Timestamps: all segments of one segmenter share one timeline. PTS = (mono_ns −
  origin) in 90 kHz + 90000, where origin is the mono_ns of the first accepted video
  packet; so a remux can put segments back in place, gaps included. Audio PTS follow
  the same rule from each packet's own capture instant (its first sample).

Audio (``Segmenter(..., audio=AudioInfo)``): AAC access units arrive through the same
``push`` (``VideoPacket.audio`` True) and become a second stream (AAC, ADTS in the TS,
as ffmpeg's muxer writes it) in the video segment whose time span holds their capture
instant: an audio packet belongs to segment N when its first sample was captured at or
after N's first frame and before N+1's first frame. Audio and video encoders have
different latencies, so routing by arrival would put the last ~50 ms of each segment's
audio into the next one; routing by capture time keeps every segment's audio start
within one AAC frame (21.3 ms at 48 kHz) of its video start. Therefore:

* an audio packet captured at or after the newest video frame, or arriving while no
  segment is open, waits until the next video frame arrives (then it is known which
  segment it belongs to); the wait is capped at 1000 packets (a stalled camera);
* a segment whose successor has started is *held* (not yet handed to ``on_segment``)
  while audio is flowing, until an audio packet captured at or after its end arrives
  or video has run ``audio_hold_seconds`` past its end, whichever comes first; with no
  audio flowing it closes at once, exactly as without audio;
* audio captured when no segment spans it (before the first keyframe, after a flush,
  or more than ``audio_hold_seconds`` late) is dropped and counted
  (``audio_dropped``), like video before the first keyframe.

A segment that ends up with no audio packet (muted, pre-record without audio, a
dropout) has no audio stream at all: a declared but empty AAC stream has no sample
rate or channel count for a demuxer to find, and ffprobe, players and the MP4 remux
stumble on it. The stream layout is chosen when a segment opens (audio flowing or not);
if the packets then disagree, the segment is muxed again at close from the packets it
kept, so that choice only costs time, never correctness.

A note on locking: ``push`` runs in the encoder's thread (picamera2 calls outputs from
it); ``flush`` runs in the agent's thread at shutdown or clip end. One lock serialises
them, and ``on_segment`` is called with the lock held so segments reach the sealer in
order and a flush can never interleave with a half-built segment.
"""
from __future__ import annotations

import collections
import hashlib
import io
import threading
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import av

from capture.framehash import NAL_PPS, NAL_SPS, frame_hash_nals, nal_type, split_annexb
from drivers.camera import CameraInfo, VideoPacket
from drivers.microphone import AAC_FRAME_SAMPLES, AudioInfo, aac_lc_config

TS_CLOCK_HZ = 90_000
TS_TIME_BASE = Fraction(1, TS_CLOCK_HZ)
#: The first frame of a stream gets PTS 1 s rather than 0, leaving headroom for players
#: and remuxers that treat PTS 0 or a small DTS offset specially.
PTS_OFFSET = TS_CLOCK_HZ
# MPEG-TS PTS is 33 bits at 90 kHz: it wraps after 2**33 / 90000 s ≈ 26.5 h. A 12 h shift
# fits; streams longer than that must start a new segmenter (a new stream id) first.

#: Name of the audio packet hash rule (docs/FORMAT.md): SHA-256 of the raw AAC access
#: unit, i.e. without an ADTS header, as an MP4 sample holds it.
AUDIO_HASH_ALG = "sha256-aac-raw"
#: Audio waiting for video to catch up is capped (a stalled camera must not grow it).
_MAX_AUDIO_WAIT = 1000


def adts_header_length(data: bytes) -> int:
    """Length of the ADTS header in front of an AAC access unit, 0 if it has none.

    A packet counts as ADTS when it starts with the 12-bit sync word 0xFFF, layer 0,
    its ``aac_frame_length`` equals the packet length and it holds one raw data block
    (the form ffmpeg's ADTS muxer writes). The header is 7 bytes, 9 with a CRC.
    """
    if len(data) < 7 or data[0] != 0xFF or (data[1] & 0xF6) != 0xF0:
        return 0
    frame_length = ((data[3] & 0x03) << 11) | (data[4] << 3) | (data[5] >> 5)
    if frame_length != len(data) or data[6] & 0x03:
        return 0
    return 7 if data[1] & 0x01 else 9


def raw_aac(data: bytes) -> bytes:
    """The raw AAC access unit: ``data`` without its ADTS header, if it has one."""
    return bytes(data[adts_header_length(data):])


def audio_packet_hash(data: bytes) -> str:
    """``sha256-aac-raw``: the same digest for a packet in MPEG-TS (ADTS) and in MP4."""
    return hashlib.sha256(raw_aac(data)).hexdigest()


@dataclass(frozen=True)
class AudioSummary:
    """The audio a segment holds. ``start_*`` is the first packet's capture instant (its
    first sample), ``end_*`` the last packet's plus one packet duration. ``gaps`` are
    holes inside the segment's audio as (mono_ns where audio stops, duration_ns)."""

    codec: str
    sample_rate: int
    channels: int
    packet_count: int
    packet_hashes: tuple[str, ...]
    start_mono_ns: int
    end_mono_ns: int
    start_utc_ns: int
    end_utc_ns: int
    gaps: tuple[tuple[int, int], ...] = ()
    hash_alg: str = AUDIO_HASH_ALG
    samples_per_packet: int = AAC_FRAME_SAMPLES


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
    audio: AudioSummary | None = None  # None: the TS has no audio stream


class _OpenSegment:
    """A segment being muxed: packets go into the TS muxer as they arrive, which spreads
    the muxing cost over the frames instead of paying it all at the boundary.

    The packets are also kept (references, not copies) so that the segment can be muxed
    again at close when its audio stream layout turns out different from the guess made
    at open (see the module docstring)."""

    def __init__(self, info: CameraInfo, first: VideoPacket, audio: AudioInfo | None = None,
                 with_audio: bool = False, audio_ticks: int = 0) -> None:
        self.info = info
        self.audio_info = audio
        self.audio_ticks = audio_ticks
        self.first = first
        self.last = first
        self.end_ns: int | None = None  # the next segment's first frame, once known
        self.hashes: list[str] = []
        self.keyframes = 0
        self.video: list[tuple[VideoPacket, int, int]] = []  # (packet, pts, duration)
        self.audio: list[tuple[VideoPacket, int, str]] = []  # (packet, pts, hash)
        self._start_container(with_audio and audio is not None)

    def _start_container(self, with_audio: bool) -> None:
        self.buf = io.BytesIO()
        self.container = av.open(self.buf, "w", format="mpegts")
        self.stream = self.container.add_stream("h264", rate=self.info.fps)
        self.stream.width = self.info.width
        self.stream.height = self.info.height
        self.stream.time_base = TS_TIME_BASE
        self.astream = None
        if with_audio:
            a = self.audio_info
            assert a is not None
            st = self.container.add_stream("aac", rate=a.sample_rate)
            st.codec_context.layout = {1: "mono", 2: "stereo"}.get(a.channels, f"{a.channels}c")
            # The AudioSpecificConfig lets the muxer write ADTS headers for raw packets.
            st.codec_context.extradata = a.extradata or aac_lc_config(a.sample_rate, a.channels)
            st.time_base = TS_TIME_BASE
            self.astream = st

    def _mux_video(self, packet: VideoPacket, pts: int, duration: int) -> None:
        pkt = av.Packet(packet.data)
        pkt.stream = self.stream
        pkt.time_base = TS_TIME_BASE
        pkt.pts = pts
        pkt.dts = pts  # the encoders we use emit no B-frames: decode order = capture order
        pkt.duration = duration
        pkt.is_keyframe = packet.keyframe
        self.container.mux(pkt)

    def _mux_audio(self, packet: VideoPacket, pts: int) -> None:
        pkt = av.Packet(packet.data)
        pkt.stream = self.astream
        pkt.time_base = TS_TIME_BASE
        pkt.pts = pts
        pkt.dts = pts
        pkt.duration = self.audio_ticks
        pkt.is_keyframe = True
        self.container.mux(pkt)

    def write(self, packet: VideoPacket, pts: int, duration: int, frame_hash: str) -> None:
        self._mux_video(packet, pts, duration)
        self.video.append((packet, pts, duration))
        self.hashes.append(frame_hash)
        self.keyframes += int(packet.keyframe)
        self.last = packet

    def write_audio(self, packet: VideoPacket, pts: int, packet_hash: str) -> None:
        if self.astream is not None:
            self._mux_audio(packet, pts)
        self.audio.append((packet, pts, packet_hash))

    def _remux(self, with_audio: bool) -> None:
        """Mux the kept packets again with the right stream layout, in time order."""
        self.container.close()
        self._start_container(with_audio)
        order = sorted([(pts, 0, i) for i, (_, pts, _) in enumerate(self.video)]
                       + [(pts, 1, i) for i, (_, pts, _) in enumerate(self.audio)])
        for _, kind, i in order:
            if kind == 0:
                self._mux_video(*self.video[i])
            elif with_audio:
                self._mux_audio(self.audio[i][0], self.audio[i][1])

    def close(self, info: CameraInfo, interval_ns: int, packet_ns: int) -> RawSegment:
        has_audio = bool(self.audio)
        if has_audio != (self.astream is not None):
            self._remux(has_audio)
        self.container.close()
        summary = None
        if has_audio:
            a = self.audio_info
            assert a is not None
            first, last = self.audio[0][0], self.audio[-1][0]
            gaps = []
            for (p, _, _), (q, _, _) in zip(self.audio, self.audio[1:]):
                if q.mono_ns - p.mono_ns > packet_ns + packet_ns // 2:
                    gaps.append((p.mono_ns + packet_ns, q.mono_ns - p.mono_ns - packet_ns))
            summary = AudioSummary(
                codec=a.codec, sample_rate=a.sample_rate, channels=a.channels,
                packet_count=len(self.audio), packet_hashes=tuple(h for _, _, h in self.audio),
                start_mono_ns=first.mono_ns, end_mono_ns=last.mono_ns + packet_ns,
                start_utc_ns=first.utc_ns, end_utc_ns=last.utc_ns + packet_ns,
                gaps=tuple(gaps))
        # The kept packets are no longer needed; let them go with this object.
        self.video.clear()
        self.audio.clear()
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
            audio=summary,
        )


class Segmenter:
    """Feeds on VideoPackets (and audio packets, when made with ``audio``), emits
    RawSegments through ``on_segment``.

    Example::

        seg = Segmenter(camera.info, 2.0, sealer.seal, audio=microphone.info)
        camera.start(seg.push)
        microphone.start(seg.push)
        ...
        microphone.stop(); camera.stop(); seg.flush()
    """

    def __init__(self, info: CameraInfo, segment_seconds: float,
                 on_segment: Callable[[RawSegment], None], audio: AudioInfo | None = None,
                 *, audio_hold_seconds: float = 0.5) -> None:
        if segment_seconds <= 0:
            raise ValueError("segment_seconds must be positive")
        if info.codec != "h264":
            raise ValueError(f"segmenter handles H.264 only, not {info.codec!r}")
        if audio is not None:
            if audio.codec != "aac":
                raise ValueError(f"segmenter handles AAC audio only, not {audio.codec!r}")
            if audio.sample_rate <= 0 or audio.channels <= 0:
                raise ValueError("audio sample_rate and channels must be positive")
            if audio.extradata is None:
                aac_lc_config(audio.sample_rate, audio.channels)  # refuse what AAC cannot say
        if audio_hold_seconds < 0:
            raise ValueError("audio_hold_seconds must not be negative")
        self.info = info
        self.audio = audio
        self.segment_seconds = segment_seconds
        self.on_segment = on_segment
        self.frame_interval_ns = round(10**9 / info.fps)
        self._min_span_ns = round(segment_seconds * 10**9) - self.frame_interval_ns // 2
        self._frame_ticks = round(TS_CLOCK_HZ / info.fps)
        rate = audio.sample_rate if audio is not None else 48_000
        self.audio_packet_ns = round(AAC_FRAME_SAMPLES * 10**9 / rate)
        self._audio_ticks = round(AAC_FRAME_SAMPLES * TS_CLOCK_HZ / rate)
        self._audio_hold_ns = round(audio_hold_seconds * 10**9)
        self._lock = threading.Lock()
        self._open: _OpenSegment | None = None
        self._held: _OpenSegment | None = None  # ended, waiting for its late audio
        self._audio_wait: collections.deque[VideoPacket] = collections.deque()
        self._origin_mono_ns: int | None = None
        self._last_mono_ns: int | None = None
        self._last_audio_mono_ns: int | None = None
        self.skipped_audio = 0  # audio pushed to a segmenter made without audio
        self.dropped_before_keyframe = 0
        self.segments_closed = 0
        self.frames_accepted = 0
        self.audio_accepted = 0
        self.audio_dropped = 0  # audio no segment spans (before a keyframe, after a flush, too late)

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
                if self.audio is None:
                    self.skipped_audio += 1
                else:
                    self._push_audio_locked(packet)
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
            # Audio captured before this frame belongs with the frames before it.
            self._drain_audio_locked(packet.mono_ns)
            if starts_segment:
                if seg is not None:
                    self._end_locked(seg, packet.mono_ns)
                seg = self._open = _OpenSegment(
                    self.info, packet, self.audio, self._audio_flowing(packet.mono_ns),
                    self._audio_ticks)
            assert seg is not None
            if self._origin_mono_ns is None:
                self._origin_mono_ns = packet.mono_ns
            seg.write(packet, self.pts_of(packet.mono_ns), self._frame_ticks, frame_hash)
            self._last_mono_ns = packet.mono_ns
            self.frames_accepted += 1
            held = self._held
            if held is not None and held.end_ns is not None and \
                    packet.mono_ns - held.end_ns >= self._audio_hold_ns:
                self._release_held_locked()

    def flush(self) -> None:
        """Close the open segment, if any (shutdown, clip end). Later packets start a
        new segment at the next keyframe, on the same timeline. Audio waiting for video
        is placed if it was captured before the open segment's end, dropped otherwise."""
        with self._lock:
            if self._open is not None and self._last_mono_ns is not None:
                self._drain_audio_locked(self._last_mono_ns + self.frame_interval_ns)
            self.audio_dropped += len(self._audio_wait)
            self._audio_wait.clear()
            self._release_held_locked()
            if self._open is not None:
                self._close_locked(self._open)
                self._open = None

    # ------------------------------------------------------------------ audio
    def _push_audio_locked(self, packet: VideoPacket) -> None:
        if self._last_audio_mono_ns is not None and packet.mono_ns <= self._last_audio_mono_ns:
            raise ValueError(f"audio capture time went backwards or repeated: mono_ns "
                             f"{packet.mono_ns} after {self._last_audio_mono_ns}")
        self._last_audio_mono_ns = packet.mono_ns
        if self._open is None or self._last_mono_ns is None or \
                packet.mono_ns >= self._last_mono_ns:
            # Captured after the newest frame (or before any segment is open): which
            # segment it belongs to is known only when the next frame arrives (it may
            # start a new segment, or be the first keyframe).
            self._audio_wait.append(packet)
            if len(self._audio_wait) > _MAX_AUDIO_WAIT:  # video has stalled
                self._route_audio_locked(self._audio_wait.popleft())
            return
        self._route_audio_locked(packet)

    def _drain_audio_locked(self, before_ns: int) -> None:
        while self._audio_wait and self._audio_wait[0].mono_ns < before_ns:
            self._route_audio_locked(self._audio_wait.popleft())

    def _route_audio_locked(self, packet: VideoPacket) -> None:
        """Put one audio packet in the segment whose time span holds its capture time."""
        seg, held = self._open, self._held
        if seg is not None and packet.mono_ns >= seg.first.mono_ns:
            target = seg
        elif held is not None and packet.mono_ns >= held.first.mono_ns:
            target = held
        else:
            self.audio_dropped += 1
            return
        target.write_audio(packet, self.pts_of(packet.mono_ns), audio_packet_hash(packet.data))
        self.audio_accepted += 1
        if target is seg and held is not None:
            self._release_held_locked()  # audio has passed the held segment's end

    def _audio_flowing(self, at_ns: int) -> bool:
        """Whether audio packets are arriving around ``at_ns`` (capture time)."""
        last = self._last_audio_mono_ns
        return (self.audio is not None and last is not None
                and last + self.audio_packet_ns + self._audio_hold_ns > at_ns)

    # --------------------------------------------------------------- closing
    def _end_locked(self, seg: _OpenSegment, end_ns: int) -> None:
        """``seg``'s last frame is in; hold it for late audio if audio is flowing."""
        self._release_held_locked()
        seg.end_ns = end_ns
        audio_caught_up = bool(self._audio_wait)  # waiting audio is at/after end_ns
        if self._audio_flowing(end_ns) and not audio_caught_up and self._audio_hold_ns > 0:
            self._held = seg
        else:
            self._close_locked(seg)

    def _release_held_locked(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self._close_locked(held)

    def _close_locked(self, seg: _OpenSegment) -> None:
        raw = seg.close(self.info, self.frame_interval_ns, self.audio_packet_ns)
        self.segments_closed += 1
        self.on_segment(raw)
