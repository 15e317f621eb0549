"""A simulated microphone: a test tone plus noise with sync clicks, encoded to real AAC.

It stands in for the Pi's microphone + picamera2's AAC encoder behind
``drivers.microphone.Microphone``: packets are raw AAC-LC access units (PyAV's native
``aac`` encoder, 1024 samples each), delivered as ``VideoPacket(audio=True)`` with the
capture instant of each packet's first sample.

Like :class:`hw_sim.camera.SimCamera` it is *pull-based*: the simulation advances the
SimClock and calls :meth:`SimMicrophone.deliver_until`; every sample whose capture
instant has passed is generated, and each complete 1024-sample frame is encoded. (A real
ALSA driver also hands over whole periods, so up to one frame of latency is realistic;
the encoder adds one more frame of look-ahead.)

Sample ``i`` of a run is captured at ``t0 + i / sample_rate`` where ``t0`` is the clock's
monotonic time at :meth:`start`. Packet capture times come from the encoder's packet
``pts`` on that grid, so the encoder's priming packet (pts −1024) is stamped one frame
before ``t0``: decoded samples land exactly at their capture instants.

**Sync marks**: a short loud burst starts at every mono time ``sync_origin_mono_ns + k·1e9``
(k ≥ 0). Give it the mono time at which the simulated camera captures frame 0, and each
click coincides with the capture of frames 0, 30, 60, … (at 30 fps). A test finds the
clicks in decoded audio and compares them with the frames' timestamps.

**Dropouts**: :meth:`dropout` stops capture for a while (a driver hiccup): the samples
in the hole are never captured, the encoder is flushed and reopened afterwards, and the
packets after the hole carry their true capture times, so the hole stays a hole.

Threading: everything runs in the caller's thread; the sink is called from
``deliver_until``/``dropout``/``stop``.
"""
from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from drivers.camera import PacketSink, VideoPacket
from drivers.clock import Clock
from drivers.microphone import AAC_FRAME_SAMPLES, AudioInfo

TONE_LEVEL = 0.1  # peak amplitude of the test tone (full scale = 1.0)
CLICK_LEVEL = 0.9  # peak amplitude of a sync click
CLICK_SECONDS = 0.005  # a 5 ms burst
CLICK_HZ = 3000.0


class SimMicrophone:
    """Tone + noise + sync clicks, AAC-LC encoded with PyAV's native ``aac`` encoder."""

    def __init__(self, clock: Clock, *, sample_rate: int = 48_000, tone_hz: float = 1000.0,
                 noise: float = 0.05, sync_origin_mono_ns: int | None = None,
                 bitrate: int = 64_000, seed: int = 0) -> None:
        if sample_rate <= 0 or bitrate <= 0:
            raise ValueError("sample_rate and bitrate must be positive")
        self.clock = clock
        self.sample_rate = sample_rate
        self.tone_hz = tone_hz
        self.noise = noise
        self.bitrate = bitrate
        self.sync_origin_mono_ns = sync_origin_mono_ns
        self._rng = np.random.default_rng(seed)
        probe = self._new_encoder()  # the AudioSpecificConfig is known once it is open
        self.info = AudioInfo(sample_rate=sample_rate, channels=1, codec="aac",
                              extradata=bytes(probe.extradata or b"") or None)
        del probe
        self._codec: av.CodecContext | None = None
        self._sink: PacketSink | None = None
        self._t0: int | None = None  # mono_ns of sample 0 of this run
        self._utc_offset = 0
        self._next = 0  # index of the next sample to capture
        self._run_base = 0  # sample index where the current encoder's pts 0 lies
        self.packets_delivered = 0
        self.dropouts: list[tuple[int, int]] = []  # (first missing sample's mono_ns, ns)

    def _new_encoder(self) -> av.CodecContext:
        codec = av.CodecContext.create("aac", "w")
        codec.sample_rate = self.sample_rate
        codec.layout = "mono"
        codec.format = "fltp"
        codec.bit_rate = self.bitrate
        codec.time_base = Fraction(1, self.sample_rate)
        codec.open()
        return codec

    # ------------------------------------------------------------- time grid
    def sample_mono_ns(self, index: int) -> int:
        """Capture instant of sample ``index`` of this run (may be negative: priming)."""
        assert self._t0 is not None
        return self._t0 + (index * 10**9 + self.sample_rate // 2) // self.sample_rate

    def _samples_before(self, mono_ns: int) -> int:
        """Number of samples of this run captured strictly before ``mono_ns``."""
        assert self._t0 is not None
        return -(-(mono_ns - self._t0) * self.sample_rate // 10**9)  # ceil

    # -------------------------------------------------------------- lifecycle
    def start(self, sink: PacketSink) -> None:
        """Start capturing at the clock's current instant; packets go to ``sink``."""
        if self._codec is not None:
            raise RuntimeError("microphone already started")
        self._codec = self._new_encoder()
        self._sink = sink
        self._t0 = self.clock.monotonic_ns()
        self._utc_offset = self.clock.utc_ns() - self._t0
        self._next = 0
        self._run_base = 0

    def deliver_until(self, mono_ns: int | None = None) -> int:
        """Capture and encode every whole frame captured before ``mono_ns`` (default:
        now); deliver the packets the encoder emits. Returns how many were delivered."""
        if self._codec is None:
            return 0
        if mono_ns is None:
            mono_ns = self.clock.monotonic_ns()
        available = self._samples_before(mono_ns) - self._next
        n = 0
        while available >= AAC_FRAME_SAMPLES:
            n += self._encode(self._render(self._next, AAC_FRAME_SAMPLES))
            available -= AAC_FRAME_SAMPLES
        return n

    def dropout(self, seconds: float) -> None:
        """A driver hiccup starting now: nothing is captured for ``seconds``. What was
        captured before is encoded and delivered; capture resumes on the same time grid
        (sample ``i`` is still captured at ``t0 + i/rate``) once the hole has passed."""
        if self._codec is None:
            raise RuntimeError("microphone not started")
        if seconds <= 0:
            return
        now = self.clock.monotonic_ns()
        self.deliver_until(now)
        self._flush_encoder()
        resume = self._samples_before(now + round(seconds * 1e9))
        self.dropouts.append((self.sample_mono_ns(self._next),
                              self.sample_mono_ns(resume) - self.sample_mono_ns(self._next)))
        self._next = resume
        self._run_base = resume
        self._codec = self._new_encoder()

    def stop(self) -> None:
        """Deliver what was captured up to now, flush the encoder and close it."""
        if self._codec is None:
            return
        try:
            self.deliver_until()
            self._flush_encoder()
        finally:
            self._codec = None
            self._sink = None

    # ------------------------------------------------------------ internals
    def _render(self, start: int, count: int) -> np.ndarray:
        """Samples ``start .. start+count-1`` of this run as float32 in [-1, 1]."""
        idx = np.arange(start, start + count, dtype=np.int64)
        t = idx / self.sample_rate
        pcm = TONE_LEVEL * np.sin(2 * np.pi * self.tone_hz * t)
        if self.noise:
            pcm += self.noise * self._rng.standard_normal(count)
        if self.sync_origin_mono_ns is not None:
            mono = self._t0 + (idx * 10**9 + self.sample_rate // 2) // self.sample_rate
            since = (mono - self.sync_origin_mono_ns) % 10**9  # ns since the latest mark
            on = (mono >= self.sync_origin_mono_ns) & (since < round(CLICK_SECONDS * 1e9))
            if on.any():
                burst = CLICK_LEVEL * np.sign(np.sin(2 * np.pi * CLICK_HZ * since / 1e9 + 0.5))
                pcm = np.where(on, burst, pcm)
        self._next = start + count
        return np.clip(pcm, -1.0, 1.0).astype(np.float32)

    def _encode(self, pcm: np.ndarray) -> int:
        assert self._codec is not None
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="fltp", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._next - len(pcm) - self._run_base
        frame.time_base = Fraction(1, self.sample_rate)
        return self._deliver(self._codec.encode(frame))

    def _flush_encoder(self) -> int:
        assert self._codec is not None
        return self._deliver(self._codec.encode(None))

    def _deliver(self, packets: list[av.Packet]) -> int:
        assert self._sink is not None and self._t0 is not None
        for p in packets:
            if p.pts is None:
                raise RuntimeError("AAC encoder returned a packet without pts")
            first = self._run_base + p.pts  # sample index of the packet's first sample
            mono = self.sample_mono_ns(first)
            self._sink(VideoPacket(data=bytes(p), keyframe=True,
                                   timestamp_us=(mono - self._t0) // 1000, mono_ns=mono,
                                   utc_ns=mono + self._utc_offset, audio=True))
            self.packets_delivered += 1
        return len(packets)
