"""Audio on the Pi path: picamera2's audio encoder → the agent's segmenter → sealed
segments → an exported MP4 with an AAC stream.

The real picamera2 package (0.3.38) runs here with libcamera/pykms stood in
(pi_standins) and the camera loop of ``pi_harness``: ``PiCamera`` with picamera2's own
``LibavH264Encoder`` (libx264, as on a Pi 5), ``PiMicrophone`` with picamera2's audio
path on a second, audio-only encoder, and the real ``Agent``.

* ``test_recorded_audio_calls_*``: deterministic, on a simulated clock. The capture
  device and its thread are replaced by a feeder that encodes a tone with PyAV's AAC
  encoder and hands every packet to picamera2's own ``Encoder._handle_audio_packet``
  (rebase to the first packet, ``audio_sync`` shift, µs timestamps, ``outputframe``
  fan-out) — exactly the calls picamera2's audio thread makes.
* ``test_live_audio_thread_*``: picamera2's real audio thread (``Encoder.start`` opens
  ``av.open(file=…, format=…)``) on a live, real-time lavfi tone instead of ALSA.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

from buffer.export import export_clip
from buffer.verify import verify_clip
from firmware.agent import Agent, State
from firmware.config import validate
from hw_sim.clock import SimClock
from hw_sim.runner import ensure_keys, recorded_clips

pytestmark = pytest.mark.filterwarnings("ignore:isSet:DeprecationWarning")  # picamera2's
STANDINS = Path(__file__).parent / "pi_standins"
W, H, FPS = 320, 240, 15
RATE = 48_000
BOOT_MINUS_MONO = 7_000_123_000  # sensor (BOOTTIME) = mono + this, exactly
TONE_HZ = 1000.0


@pytest.fixture(scope="module")
def pc2():
    if importlib.util.find_spec("picamera2") is None:
        pytest.skip("picamera2 not installed: pip install picamera2==0.3.38 --no-deps")
    sys.path.insert(0, str(STANDINS))
    try:
        from picamera2.encoders.libav_h264_encoder import LibavH264Encoder
        from pi_harness import harness_class

        from drivers.pi_microphone import audio_only_encoder_class

        class RecordedAudioEncoder(audio_only_encoder_class()):
            """picamera2's audio path with the capture device + thread replaced by
            :meth:`feed_until` (see the module docstring)."""

            def start(self, quality=None):
                want, self.audio = self.audio, False
                try:
                    super().start(quality)  # Encoder.start: outputs started, no device
                finally:
                    self.audio = want
                self._audio_output_container = av.open("/dev/null", "w", format="null")
                self._audio_output_stream = self._audio_output_container.add_stream(**self.audio_output)
                self.samples = 0
                self.sent: list[bytes] = []

            def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
                if audio:
                    self.sent.append(bytes(packet))
                super().outputframe(frame, keyframe, timestamp, packet, audio)

            def feed_until(self, samples_due: int) -> None:
                """Capture and encode the tone up to ``samples_due`` samples."""
                while self.samples + 1024 <= samples_due:
                    t = (self.samples + np.arange(1024)) / RATE
                    pcm = (0.3 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)
                    fr = av.AudioFrame.from_ndarray(pcm[None, :], format="fltp", layout="mono")
                    fr.sample_rate, fr.pts, fr.time_base = RATE, self.samples, Fraction(1, RATE)
                    self.samples += 1024
                    for pkt in self._audio_output_stream.encode(fr):
                        self._handle_audio_packet(pkt)

            def stop(self):
                for pkt in self._audio_output_stream.encode(None):  # the thread's flush
                    self._handle_audio_packet(pkt)
                want, self.audio = self.audio, False
                try:
                    super().stop()
                finally:
                    self.audio = want
                self._audio_output_container.close()

        yield SimpleNamespace(Harness=harness_class(), Libav=LibavH264Encoder,
                              Recorded=RecordedAudioEncoder)
    finally:
        sys.path.remove(str(STANDINS))


def _cfg(tmp_path, **audio):
    return validate({"device": {"officer_id": "4711", "store_dir": str(tmp_path / "store"),
                                "keys_dir": str(tmp_path / "keys")},
                     "camera": {"width": W, "height": H, "fps": FPS, "bitrate": 300_000,
                                "segment_seconds": 1.0},
                     "buffer": {"pre_record_seconds": 2},
                     "audio": {"sample_rate": RATE, **audio},
                     "gps": {"enabled": False}}, "<test>")


def _pins(cfg):
    from gpiozero.pins.mock import MockFactory
    return MockFactory()


def probe(path: Path) -> list[dict]:
    r = subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                        "stream=codec_type,codec_name,sample_rate,channels,duration",
                        "-of", "json", str(path)], capture_output=True, text=True, check=True)
    assert r.stderr == ""
    return json.loads(r.stdout)["streams"]


def sealed_audio_hashes(clip_dir: Path) -> list[str]:
    """The per-packet audio hashes the device signed, in clip order (clip verified)."""
    report = verify_clip(clip_dir)
    assert report.ok, report.all_failures()
    return [h for seg in report.segments
            for h in ((seg.header or {}).get("audio") or {}).get("packet_hashes", [])]


def dominant_hz(mp4: Path) -> float:
    with av.open(str(mp4)) as c:
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    spec = np.abs(np.fft.rfft(pcm[: RATE]))  # the first second of the track
    return float(np.argmax(spec[1:]) + 1) * RATE / min(len(pcm), RATE)


def _agent(cfg, keys, pc2, camera, mic, factory, clock, threaded):
    from drivers.controls import ControlPins, Controls
    c = cfg.controls
    pins = ControlPins(record_button=c.record_button, function_button=c.function_button,
                       green_led=c.green_led, red_led=c.red_led, haptic=c.haptic, buzzer=c.buzzer)
    controls = Controls(pins, pin_factory=factory)
    agent = Agent(cfg, clock=clock, camera=camera, controls=controls, keys=keys,
                  threaded=threaded, microphone=mic, platform="pi", board="test harness")
    return agent, controls


def test_recorded_audio_calls_end_up_sealed_and_in_the_exported_mp4(pc2, tmp_path):
    from drivers.pi_camera import PiCamera
    from drivers.pi_microphone import PiMicrophone
    cfg = _cfg(tmp_path)
    keys, identity = ensure_keys(tmp_path)
    clock = SimClock()
    factory = _pins(cfg)
    camera = PiCamera(clock, width=W, height=H, fps=FPS, bitrate=300_000, segment_seconds=1.0,
                      serial="BWV-PI-0001", picamera2_factory=pc2.Harness,
                      encoder_factory=pc2.Libav,
                      boottime_ns=lambda: clock.monotonic_ns() + BOOT_MINUS_MONO)
    encoders: list = []

    def make_audio_encoder():
        encoders.append(pc2.Recorded())
        return encoders[-1]
    mic = PiMicrophone(camera, device="recorded", input_format="none", sample_rate=RATE,
                       encoder_factory=make_audio_encoder)
    agent, controls = _agent(cfg, keys, pc2, camera, mic, factory, clock, threaded=False)
    agent.store_dir = Path(cfg.device.store_dir)
    seen: list = []
    on_packet = agent.on_packet

    def spy(p):
        seen.append(p)
        on_packet(p)
    agent.on_packet = spy  # what camera and microphone are handed in start()
    frame_ns = 10**9 // FPS
    agent.start()
    h = camera.picam2
    mic_start_ns: list[int] = []
    first_frame_after: list[int] = []

    def run(seconds: float) -> None:
        for _ in range(round(seconds * FPS)):
            now = clock.monotonic_ns()
            h.frame(now + BOOT_MINUS_MONO, clock.utc_ns())
            if mic.running and not first_frame_after:
                first_frame_after.append(now)
            if mic.running:
                due = (clock.monotonic_ns() - mic_start_ns[-1]) * RATE // 10**9
                encoders[-1].feed_until(due)
            clock.advance(frame_ns)
            agent.poll()

    try:
        run(3.0)  # buffering: video only, the microphone is off
        assert not mic.running and mic.starts == 0 and len(h.encoders) == 1
        assert not any(p.audio for p in seen)
        pin = factory.pin(cfg.controls.record_button)
        for level_low in (True, False, True, False):  # double press
            pin.drive_low() if level_low else pin.drive_high()
            if level_low and agent.state is State.RECORDING:
                mic_start_ns.append(clock.monotonic_ns())
            clock.advance(120_000_000)
            agent.poll()
        assert agent.state is State.RECORDING
        assert mic.running and mic.starts == 1 and len(h.encoders) == 2
        mic_start_ns.append(clock.monotonic_ns())
        run(3.0)
        # A stuck camera while the microphone (its own thread on a Pi) goes on: the
        # watchdog's "capture" progress counts video only, so it is not fed.
        frames, heard = agent.frames_seen, mic.output.audio_packets
        encoders[-1].feed_until(encoders[-1].samples + 10 * 1024)
        assert mic.output.audio_packets > heard and agent.frames_seen == frames
    finally:
        agent.stop("shutdown")
        controls.close()
    enc = encoders[0]
    assert not mic.running and not h.encoders and enc.sent
    # Timestamps: the first packet is picamera2's audio_sync (100 ms) after the first
    # frame the audio encoder saw; then one AAC frame (1024 samples, truncated µs) apart.
    audio = [p for p in seen if p.audio]
    assert [p.data for p in audio] == enc.sent
    assert audio[0].timestamp_us == 100_000
    # (picamera2 keeps whole µs of the sensor time: the origin is within 1 µs)
    assert 0 <= first_frame_after[0] + 100_000_000 - audio[0].mono_ns < 1000
    assert all(b.timestamp_us - a.timestamp_us == int(1024 * 1e6 / RATE)
               or b.timestamp_us - a.timestamp_us == int(1024 * 1e6 / RATE) + 1
               for a, b in zip(audio, audio[1:]))
    # Sealed: every packet kept, in order, except the tail captured after the last frame
    # (audio_sync puts audio 100 ms late, and the "stuck camera" packets above; the
    # segmenter drops what no segment spans, and counts it).
    clip = recorded_clips(agent.store_dir)[0]
    clip_dir = agent.store_dir / "clips" / clip
    sealed = sealed_audio_hashes(clip_dir)
    sent = [hashlib.sha256(d).hexdigest() for d in enc.sent]
    assert sealed == sent[:len(sealed)] and len(sent) - len(sealed) <= 8 + 10, (len(sent), len(sealed))
    assert agent.segmenter.audio_dropped == len(sent) - len(sealed)
    # Exported: an AAC track beside the H.264 one, carrying the tone.
    export_clip(clip_dir, identity, tmp_path / "clip.mp4")
    streams = {s["codec_type"]: s for s in probe(tmp_path / "clip.mp4")}
    assert streams["video"]["codec_name"] == "h264"
    assert streams["audio"]["codec_name"] == "aac"
    assert int(streams["audio"]["sample_rate"]) == RATE and streams["audio"]["channels"] == 1
    assert abs(dominant_hz(tmp_path / "clip.mp4") - TONE_HZ) < 5


def test_live_audio_thread_runs_only_while_recording(pc2, tmp_path):
    """picamera2's own audio thread on a live 1 kHz tone (lavfi, paced in real time)."""
    from drivers.clock import SystemClock
    from drivers.pi_camera import PiCamera
    from drivers.pi_microphone import PiMicrophone
    cfg = _cfg(tmp_path)
    keys, identity = ensure_keys(tmp_path)
    clock = SystemClock()
    factory = _pins(cfg)
    camera = PiCamera(clock, width=W, height=H, fps=FPS, bitrate=300_000, segment_seconds=1.0,
                      serial="BWV-PI-0001",
                      picamera2_factory=lambda: pc2.Harness(autorun_fps=FPS),
                      encoder_factory=pc2.Libav)
    mic = PiMicrophone(camera, device=f"sine=frequency={TONE_HZ:g}:sample_rate={RATE},arealtime",
                       input_format="lavfi", sample_rate=RATE)
    agent, controls = _agent(cfg, keys, pc2, camera, mic, factory, clock, threaded=True)
    agent.store_dir = Path(cfg.device.store_dir)
    agent.start()
    h = camera.picam2
    try:
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:
            agent.poll()
            time.sleep(0.01)
        assert not mic.running and len(h.encoders) == 1  # buffering: no microphone
        pin = factory.pin(cfg.controls.record_button)
        for low in (True, False, True, False):
            pin.drive_low() if low else pin.drive_high()
            time.sleep(0.1)
            agent.poll()
        assert agent.state is State.RECORDING and mic.running and mic.last_error is None
        enc = mic._encoder
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            agent.poll()
            time.sleep(0.01)
    finally:
        agent.stop("shutdown")
        controls.close()
    assert not mic.running and not enc._audio_thread.is_alive()
    assert mic.output.audio_packets > 50 and mic.output.errors == 0
    clip_dir = agent.store_dir / "clips" / recorded_clips(agent.store_dir)[0]
    assert len(sealed_audio_hashes(clip_dir)) > 50
    export_clip(clip_dir, identity, tmp_path / "live.mp4")
    kinds = {s["codec_type"]: s["codec_name"] for s in probe(tmp_path / "live.mp4")}
    assert kinds == {"video": "h264", "audio": "aac"}
    assert abs(dominant_hz(tmp_path / "live.mp4") - TONE_HZ) < 5


def test_microphone_that_cannot_open_is_logged_not_raised(pc2, tmp_path, caplog):
    from drivers.clock import SystemClock
    from drivers.pi_camera import PiCamera
    from drivers.pi_microphone import PiMicrophone
    camera = PiCamera(SystemClock(), width=W, height=H, fps=FPS, bitrate=300_000,
                      segment_seconds=1.0, serial="x", picamera2_factory=pc2.Harness,
                      encoder_factory=pc2.Libav)
    mic = PiMicrophone(camera, device="hw:CARD=NoSuchMic,DEV=0", input_format="alsa")
    with pytest.raises(RuntimeError, match="started camera"):
        mic.start(lambda p: None)
    camera.start(lambda p: None)
    try:
        mic.start(lambda p: None)  # no such ALSA device: logged, recording goes on
        assert not mic.running and mic.last_error and mic.starts == 0
        assert "did not start" in caplog.text
        assert len(camera.picam2.encoders) == 1  # only the video encoder runs
        mic.stop()  # nothing to stop: fine
    finally:
        camera.stop()


def test_microphone_refuses_what_aac_cannot_carry():
    from drivers.pi_microphone import PiMicrophone
    with pytest.raises(ValueError, match="sampling frequency"):
        PiMicrophone(object(), sample_rate=44_000)
    with pytest.raises(ValueError, match="device"):
        PiMicrophone(object(), device="")
    mic = PiMicrophone(object(), device="plughw:CARD=Device,DEV=0", sample_rate=32_000)
    assert mic.info.sample_rate == 32_000 and mic.info.channels == 1 and mic.info.codec == "aac"
    inp, out = mic.audio_settings()
    assert inp == {"file": "plughw:CARD=Device,DEV=0", "format": "alsa"}  # never PulseAudio
    assert out == {"codec_name": "aac", "rate": 32_000, "layout": "mono", "bit_rate": 64_000}
