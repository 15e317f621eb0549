"""The Pi's microphone: picamera2's own audio path, switched on only while audio is kept.

picamera2 0.3.38 encodes audio inside an ``Encoder``: with ``encoder.audio = True``,
``Encoder.start`` opens ``av.open(**audio_input)`` (a PyAV capture device), adds an AAC
stream from ``audio_output``, and runs a thread that hands each AAC packet to the
encoder's outputs as ``outputframe(None, True, ts_us, packet, True)`` — the same call as
video. ``ts_us`` is µs since the first audio packet, shifted by ``audio_sync`` (default
−100 000, i.e. audio placed 100 ms later), and the thread starts keeping audio when the
encoder sees its first frame (``Encoder.encode`` sets ``_audio_start``).

Audio belongs to the encoder's start/stop, so switching it on the *video* encoder would
restart the video (new ``firsttimestamp``, a new GOP, a gap). bwv therefore runs the audio
on a second, audio-only encoder attached to the same ``Picamera2`` (picamera2 runs every
started encoder on each request): :class:`PiMicrophone` ``start`` = a fresh audio-only
encoder through ``Picamera2.start_encoder`` (opens the capture device, starts the
thread); ``stop`` = detach it from the camera loop, then ``Encoder.stop`` (the thread
flushes its last packets through the sink, the device is closed). So on the Pi, as in
the simulator, **the microphone runs only while the agent keeps audio** (recording, or
buffering with ``audio.in_pre_record``); **mute drops packets in the agent** and leaves
the microphone running, so unmuting is instant — both decided by
``firmware.agent.Agent._mic_wanted`` / ``_audio_wanted``, unchanged.

Timing: the audio-only encoder's ``firsttimestamp`` is the sensor time (µs, BOOTTIME)
of the first frame after the microphone started; a packet's capture instant is
``firsttimestamp + ts_us`` on the sensor clock, mapped to mono/UTC with the camera's
own :class:`drivers.pi_camera.FrameTimes` offsets. The A/V alignment is therefore
picamera2's (its ``audio_sync`` compensates the capture pipeline's latency), not the
simulator's sample-exact one: it must be measured on the board (docs/HARDWARE.md).

The capture device is ALSA (``audio.device``, e.g. ``plughw:CARD=Device,DEV=0``), not
picamera2's default PulseAudio: the service runs as a system user with no sound server,
and PyPI's PyAV wheel (the venv's) has ALSA but no PulseAudio input.

Nothing here imports picamera2 at module load.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from drivers.camera import PacketSink
from drivers.microphone import AudioInfo, aac_lc_config
from drivers.pi_camera import make_output_class

_log = logging.getLogger(__name__)

#: picamera2's default: audio timestamps advanced by −100 ms (placed 100 ms later).
PICAMERA2_AUDIO_SYNC_US = -100_000

_encoder_class: type | None = None


def audio_only_encoder_class() -> type:
    """A picamera2 ``Encoder`` that encodes no video: it only notes the first frame's
    sensor time (its ``firsttimestamp``, the audio's origin) and runs the audio thread."""
    global _encoder_class
    if _encoder_class is not None:
        return _encoder_class
    from picamera2.encoders import Encoder

    class AudioOnlyEncoder(Encoder):
        def _encode(self, stream, request):  # noqa: ANN001 - picamera2's signature
            self._timestamp(request)  # sets firsttimestamp on the first frame

        def _send_streams(self, output):  # noqa: ANN001 - no video stream to announce
            pass

    _encoder_class = AudioOnlyEncoder
    return AudioOnlyEncoder


class PiMicrophone:
    """``drivers.microphone.Microphone`` on picamera2's audio encoder.

    ``camera`` is the :class:`drivers.pi_camera.PiCamera` whose ``Picamera2`` runs the
    audio-only encoder (it must be started first, as the agent does). ``device`` /
    ``input_format`` are passed to ``av.open`` (``file=``, ``format=``). A failure to
    open the device is logged and kept in ``last_error``; it is not raised into the
    caller (a button callback), and the recording goes on without audio.
    """

    def __init__(self, camera: Any, *, device: str = "default", input_format: str = "alsa",
                 sample_rate: int = 48_000, channels: int = 1, bitrate: int = 64_000,
                 audio_sync_us: int = PICAMERA2_AUDIO_SYNC_US,
                 encoder_factory: Callable[[], Any] | None = None) -> None:
        aac_lc_config(sample_rate, channels)  # refuse what AAC-LC cannot carry, now
        if bitrate <= 0:
            raise ValueError("audio bitrate must be positive")
        if not device:
            raise ValueError("audio device must not be empty")
        self.camera = camera
        self.device = device
        self.input_format = input_format
        self.sample_rate = sample_rate
        self.channels = channels
        self.bitrate = bitrate
        self.audio_sync_us = audio_sync_us
        # ffmpeg's native AAC encoder is AAC-LC; the segmenter derives the 2-byte
        # AudioSpecificConfig from rate and channels.
        self.info = AudioInfo(sample_rate=sample_rate, channels=channels, codec="aac")
        self._encoder_factory = encoder_factory
        self._lock = threading.Lock()
        self._encoder: Any = None
        self._picam2: Any = None
        self.output: Any = None
        self.starts = 0
        self.last_error: str | None = None

    @property
    def running(self) -> bool:
        return self._encoder is not None

    def audio_settings(self) -> tuple[dict, dict]:
        """(``audio_input``, ``audio_output``) for picamera2's encoder."""
        layout = "mono" if self.channels == 1 else "stereo"
        return ({"file": self.device, "format": self.input_format},
                {"codec_name": "aac", "rate": self.sample_rate, "layout": layout,
                 "bit_rate": self.bitrate})

    def start(self, sink: PacketSink) -> None:
        with self._lock:
            if self._encoder is not None:
                raise RuntimeError("microphone already started")
            picam2 = getattr(self.camera, "picam2", None)
            times = getattr(self.camera, "times", None)
            if picam2 is None or times is None:
                raise RuntimeError("microphone needs a started camera")
            make = self._encoder_factory or audio_only_encoder_class()
            encoder = make()  # a fresh one each time: a failed start leaves it unusable
            encoder.audio = True
            encoder.audio_input, encoder.audio_output = self.audio_settings()
            encoder.audio_sync = self.audio_sync_us
            output = make_output_class()(sink, times, audio_origin=lambda: encoder.firsttimestamp)
            try:
                picam2.start_encoder(encoder, output, name="main")
            except Exception as exc:  # noqa: BLE001 - no device, busy device, bad format
                self.last_error = f"{type(exc).__name__}: {exc}"
                _log.error("microphone %s (%s) did not start: %s", self.device,
                           self.input_format, self.last_error)
                return
            self.last_error = None
            self.starts += 1
            self._encoder, self._picam2, self.output = encoder, picam2, output

    def stop(self) -> None:
        """Detach the audio encoder from the camera loop first (the camera thread never
        waits on it), then stop it: its thread flushes the last packets into the sink."""
        with self._lock:
            encoder, picam2 = self._encoder, self._picam2
            self._encoder = self._picam2 = None
        if encoder is None:
            return
        with picam2.lock:
            picam2.encoders.discard(encoder)
        if encoder.running:  # the camera's stop_recording may have stopped it already
            encoder.stop()
