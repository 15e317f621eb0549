"""The simulated microphone: real AAC packets on an exact capture-time grid, sync clicks
where the camera captures frames 0, 30, 60 …, and dropouts that leave holes."""
from __future__ import annotations

import av
import numpy as np
import pytest

from capture.segmenter import adts_header_length
from drivers.camera import VideoPacket
from drivers.microphone import AudioInfo, aac_lc_config
from hw_sim.clock import SimClock
from hw_sim.microphone import SimMicrophone

RATE = 48_000
PACKET_NS = 1024 * 10**9 / RATE  # 21.333… ms


def record(seconds: float, *, dropout_at: float | None = None, dropout_s: float = 0.0,
           tick_ns: int = 10_000_000) -> tuple[list[VideoPacket], SimMicrophone, int]:
    clock = SimClock()
    t0 = clock.monotonic_ns()
    mic = SimMicrophone(clock, sync_origin_mono_ns=t0)
    packets: list[VideoPacket] = []
    mic.start(packets.append)
    end = t0 + round(seconds * 1e9)
    while clock.monotonic_ns() < end:
        clock.advance(tick_ns)
        mic.deliver_until(clock.monotonic_ns())
        if dropout_at is not None and clock.monotonic_ns() >= t0 + dropout_at * 1e9:
            mic.dropout(dropout_s)
            dropout_at = None
    mic.stop()
    return packets, mic, t0


def decode(packets: list[VideoPacket], info: AudioInfo) -> list[tuple[int, np.ndarray]]:
    """Decode each packet and place its samples at the packet's capture time."""
    dec = av.CodecContext.create("aac", "r")
    dec.extradata = info.extradata
    out = []
    for p in packets:
        for f in dec.decode(av.Packet(p.data)):
            out.append((p.mono_ns, f.to_ndarray()[0]))
    return out


def click_times(decoded: list[tuple[int, np.ndarray]]) -> list[int]:
    found: list[int] = []
    for mono, x in decoded:
        for i in np.flatnonzero(np.abs(x) > 0.7):
            t = mono + round(i * 1e9 / RATE)
            if not found or t - found[-1] > 5 * 10**8:
                found.append(t)
    return found


def test_info_and_packet_shape() -> None:
    packets, mic, t0 = record(1.0)
    assert mic.info.sample_rate == RATE and mic.info.channels == 1 and mic.info.codec == "aac"
    assert mic.info.extradata[:2] == aac_lc_config(RATE, 1) == b"\x11\x88"
    assert all(p.audio and p.keyframe for p in packets)
    assert all(adts_header_length(p.data) == 0 for p in packets)  # raw access units
    # the encoder's priming packet is stamped one frame before the first sample
    assert packets[0].mono_ns == t0 - round(PACKET_NS)
    for i, p in enumerate(packets):
        assert p.mono_ns == t0 + round((i - 1) * PACKET_NS)
        assert p.utc_ns - p.mono_ns == packets[0].utc_ns - packets[0].mono_ns
        assert p.timestamp_us == (p.mono_ns - t0) // 1000
    # stop() delivers every whole frame captured: audio reaches the stop within a frame
    assert 0 <= t0 + 10**9 - (packets[-1].mono_ns + PACKET_NS) < PACKET_NS


def test_pull_based_nothing_without_deliver_until() -> None:
    clock = SimClock()
    mic = SimMicrophone(clock)
    got: list[VideoPacket] = []
    mic.start(got.append)
    clock.advance(10**9)
    assert got == []  # the simulation pulls; nothing runs on its own
    assert mic.deliver_until(clock.monotonic_ns() - 10**9 + 21_000_000) == 0  # < one frame
    n = mic.deliver_until()
    assert n == len(got) == 45  # 46 whole frames captured; the encoder lags one packet
    with pytest.raises(RuntimeError):
        mic.start(got.append)
    mic.stop()
    mic.stop()  # idempotent


def test_sync_clicks_sit_on_whole_seconds_after_the_origin() -> None:
    packets, mic, t0 = record(3.5)
    times = click_times(decode(packets, mic.info))
    assert len(times) == 4
    for k, t in enumerate(times):
        assert abs(t - (t0 + k * 10**9)) < 1_000_000, (k, t - t0)  # < 1 ms


def test_dropout_leaves_a_hole_on_the_same_time_grid() -> None:
    packets, mic, t0 = record(4.0, dropout_at=1.5, dropout_s=0.5)
    (start, length), = mic.dropouts
    assert abs(length / 1e9 - 0.5) < 0.011
    steps = np.diff([p.mono_ns for p in packets])
    holes = [(packets[i].mono_ns, d) for i, d in enumerate(steps) if d > 1.5 * PACKET_NS]
    assert len(holes) == 1
    assert abs(holes[0][1] - PACKET_NS - length) <= PACKET_NS + 1  # the priming packet sits in the hole
    # every packet is still on the sample grid of the run: nothing shifted
    for p in packets:
        samples = (p.mono_ns - t0) * RATE / 1e9
        assert abs(samples - round(samples)) < 0.01
    # and the clicks after the hole are where they belong
    times = click_times(decode(packets, mic.info))
    assert len(times) == 4
    for t in times:
        k = round((t - t0) / 1e9)
        assert abs(t - (t0 + k * 10**9)) < 1_000_000


def test_aac_lc_config_refuses_what_aac_cannot_say() -> None:
    assert aac_lc_config(44_100, 2) == bytes([0x12, 0x10])
    with pytest.raises(ValueError):
        aac_lc_config(47_000, 1)
