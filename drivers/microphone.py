"""The microphone interface: encoded AAC access units, one call per packet.

On the Pi, picamera2 hands audio to its outputs through the same call as video:
``Output.outputframe(None, True, timestamp_us, audio_packet, True)``. bwv keeps that
shape: a microphone delivers :class:`drivers.camera.VideoPacket` objects with
``audio=True`` to the same kind of sink as the camera, so one ``on_packet`` takes both.

Each audio packet carries:

* ``data``: one AAC access unit (1024 samples for AAC-LC). Raw (as an encoder and an MP4
  sample hold it) or ADTS-framed (``0xFFF`` sync word); the segmenter accepts both.
* ``keyframe``: always True (every AAC frame is independently decodable after priming).
* ``timestamp_us``: µs since the microphone's first sample (informational).
* ``mono_ns`` / ``utc_ns``: the capture instant of the packet's **first sample** on the
  injected clock's two time lines. For the encoder's priming packet (AAC-LC encoders
  emit one packet of ``initial_padding`` samples before the first real sample) that is
  the instant one packet *before* the first sample, so decoded samples land exactly at
  their capture time. This is what keeps audio and video on one timeline.

A hole in the audio (driver hiccup, mute) is a jump in ``mono_ns``, never a shift:
packets after a hole carry their own capture times.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from drivers.camera import PacketSink

#: Samples in one AAC-LC access unit.
AAC_FRAME_SAMPLES = 1024

#: MPEG-4 sampling frequency index table (ISO/IEC 14496-3, 1.6.3.4).
_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000,
              11025, 8000, 7350)


@dataclass(frozen=True)
class AudioInfo:
    """What the audio encoder produces; recorded in segment headers.

    ``extradata`` is the AAC AudioSpecificConfig the encoder reports (``None``: the
    segmenter derives the AAC-LC one from ``sample_rate`` and ``channels``).
    """

    sample_rate: int
    channels: int
    codec: str = "aac"
    extradata: bytes | None = None


def aac_lc_config(sample_rate: int, channels: int) -> bytes:
    """The 2-byte AudioSpecificConfig of AAC-LC at this rate and channel count."""
    if sample_rate not in _AAC_RATES:
        raise ValueError(f"AAC has no sampling frequency index for {sample_rate} Hz")
    if not 1 <= channels <= 7:
        raise ValueError(f"AAC channel configuration for {channels} channels not supported")
    word = (2 << 11) | (_AAC_RATES.index(sample_rate) << 7) | (channels << 3)  # AOT 2 = LC
    return word.to_bytes(2, "big")


class Microphone(Protocol):
    """A microphone with an AAC encoder that hands packets to one sink."""

    info: AudioInfo

    def start(self, sink: PacketSink) -> None: ...
    def stop(self) -> None: ...
