"""The Pi wiring on x86: PiCamera's start-up order against picamera2's own
``start_recording``, and ``bwv run``'s Pi path (firmware.main._run_pi via
firmware.pi_rig) end to end, with the real picamera2 package, its stand-ins and the
camera-loop harness (tests/drivers/pi_harness.py).
"""
from __future__ import annotations

import importlib.util
import os
import signal
import socket
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest

from buffer.verify import verify_path
from hw_sim.runner import ensure_keys

pytestmark = pytest.mark.filterwarnings("ignore:isSet:DeprecationWarning")  # picamera2's
STANDINS = Path(__file__).parent / "pi_standins"
W, H, FPS = 320, 240, 15


@pytest.fixture(scope="module")
def pc2():
    if importlib.util.find_spec("picamera2") is None:
        pytest.skip("picamera2 not installed: pip install picamera2==0.3.38 --no-deps")
    sys.path.insert(0, str(STANDINS))
    try:
        from picamera2.encoders.libav_h264_encoder import LibavH264Encoder
        from pi_harness import harness_class
        yield SimpleNamespace(Harness=harness_class(), Libav=LibavH264Encoder)
    finally:
        sys.path.remove(str(STANDINS))


def _camera(pc2, **kw):
    from drivers.clock import SystemClock
    from drivers.pi_camera import PiCamera
    made = []

    def factory():
        made.append(pc2.Harness(**kw))
        return made[-1]
    cam = PiCamera(SystemClock(), width=W, height=H, fps=FPS, bitrate=300_000,
                   segment_seconds=2.0, serial="x", picamera2_factory=factory,
                   encoder_factory=pc2.Libav)
    return cam, made


def test_start_follows_picamera2_order_and_parameters(pc2):
    cam, made = _camera(pc2)
    cam.start(lambda p: None)
    h = made[0]
    try:
        create, configure, start = h.calls
        assert create == ("create_video_configuration", {"size": (W, H), "format": "YUV420"},
                          {"FrameRate": float(FPS)}, "main")
        assert configure == ("configure",)
        # start_recording: the encoder (and its output) run, and the burn-in hook is in
        # place, before the camera's first frame.
        assert start == ("start", 1, True, [True])
        (enc,) = h.encoders
        assert (enc.bitrate, enc.repeat, enc.iperiod, enc.framerate) == (300_000, True, 2 * FPS, FPS)
        assert enc.name == "main" and enc.size == (W, H) and enc.format == "YUV420"
        assert cam.info.sensor == "imx708_wide" and cam.info.encoder == "libav libx264 (software)"
        with pytest.raises(RuntimeError, match="already started"):
            cam.start(lambda p: None)
    finally:
        cam.stop()
    assert h.calls[-2:] == [("stop",), ("close",)] and not h.encoders and h.pre_callback is None
    cam.stop()  # twice: nothing


def test_a_stream_of_another_size_is_refused_and_the_camera_closed(pc2):
    from drivers.pi_camera import CameraConfigError
    cam, made = _camera(pc2, deliver_size=(W - 64, H))
    with pytest.raises(CameraConfigError, match=f"delivers {W - 64}x{H}.*asks for {W}x{H}"):
        cam.start(lambda p: None)
    assert made[0].closed and made[0].pre_callback is None and not made[0].encoders
    assert cam.picam2 is None


def test_a_failed_configure_closes_the_camera(pc2):
    cam, made = _camera(pc2, fail_configure=RuntimeError("Failed to acquire camera: busy"))
    with pytest.raises(RuntimeError, match="busy"):
        cam.start(lambda p: None)
    assert made[0].closed and cam.picam2 is None


def test_lgpio_factory_is_made_from_a_writable_directory(monkeypatch, tmp_path):
    """lgpio creates .lgd-nfy* pipes in the working directory when imported."""
    from firmware import pi_rig
    seen = {}

    class FakeLGPIOFactory:
        def __init__(self, chip=None):
            seen["cwd"] = os.getcwd()
    mod = types.ModuleType("gpiozero.pins.lgpio")
    mod.LGPIOFactory = FakeLGPIOFactory
    monkeypatch.setitem(sys.modules, "gpiozero.pins.lgpio", mod)
    ro = tmp_path / "ro"
    ro.mkdir()
    rundir = tmp_path / "run-bwv"
    rundir.mkdir()
    monkeypatch.chdir(ro)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(rundir))
    monkeypatch.setattr(pi_rig.os, "access", lambda path, mode: Path(path) != ro)
    pi_rig.lgpio_factory()
    assert seen["cwd"] == str(rundir)
    monkeypatch.chdir(ro)
    monkeypatch.setattr(pi_rig.os, "access", lambda path, mode: True)
    pi_rig.lgpio_factory()  # writable: stays where it is
    assert seen["cwd"] == str(ro)


def _pi_config(tmp_path, **audio):
    text = f"""
[device]
platform = "pi"
officer_id = "4711"
keys_dir = "{tmp_path / 'keys'}"
store_dir = "{tmp_path / 'store'}"
[camera]
width = {W}
height = {H}
fps = {FPS}
bitrate = 300000
segment_seconds = 1.0
[gps]
enabled = false
[update]
slots_dir = "{tmp_path / 'slots'}"
"""
    (tmp_path / "bwv.toml").write_text(text)
    from firmware.config import load
    return load(tmp_path / "bwv.toml")


def test_bwv_run_on_the_pi_path_notifies_records_and_stops_cleanly(pc2, tmp_path, monkeypatch):
    """firmware.main.run(platform="pi") → _run_pi → pi_rig.build, with the Pi's hardware
    stood in only where x86 has none: the camera loop (harness, real picamera2 encoder),
    the pins (gpiozero MockFactory), the gauge, and an ALSA device (a live lavfi tone)."""
    from gpiozero.pins.mock import MockFactory

    from drivers.clock import SystemClock
    from firmware import main, pi_rig
    from firmware.platform import PlatformInfo
    from hw_sim.battery import SimBattery
    from hw_sim.clock import SimClock
    keys, _ = ensure_keys(tmp_path)
    cfg = _pi_config(tmp_path)
    assert cfg.device.keys_dir == str(tmp_path / "keys")
    built = []
    real_build = pi_rig.build

    def build(cfg_):
        dev = real_build(cfg_, clock=SystemClock(), pin_factory=MockFactory(), gps=False,
                         battery=SimBattery(SimClock()),
                         picamera2_factory=lambda: pc2.Harness(autorun_fps=FPS),
                         encoder_factory=pc2.Libav, audio_input_format="lavfi")
        built.append(dev)
        return dev
    monkeypatch.setattr(pi_rig, "build", build)
    monkeypatch.setattr("firmware.platform.choose", lambda requested: PlatformInfo(
        "pi", "Raspberry Pi 5 Model B Rev 1.0", f"test: requested {requested}"))
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.1)
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock_path))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    old_int, old_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        status = main.run(cfg, platform="pi", max_seconds=3.5)
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    got = []
    while True:
        try:
            got += sock.recv(4096).decode().split("\n")
        except (socket.timeout, BlockingIOError):
            break
    sock.close()
    assert status == main.EXIT_OK
    assert "READY=1" in got and "WATCHDOG=1" in got, got
    (dev,) = built
    assert dev.camera.picam2 is None and dev.microphone is not None and not dev.microphone.running
    report = verify_path(Path(cfg.device.store_dir))
    assert report.ok, report.all_failures()
    audit = (Path(cfg.device.store_dir) / "audit.log").read_text()
    assert '"event":"power_off"' in audit and '"reason":"max_seconds"' in audit
    segs = sorted((Path(cfg.device.store_dir)).rglob("*.bwvseg"))
    assert segs, "no sealed segment"
    from buffer import envelope
    video = envelope.parse(segs[0].read_bytes(), envelope.SEGMENT_MAGIC).body()["video"]
    assert (video["encoder"], video["sensor"], video["width"], video["fps"]) == \
        ("libav libx264 (software)", "imx708_wide", W, FPS), video


def test_bwv_bench_on_the_pi_path(pc2, tmp_path, monkeypatch):
    """``bwv bench`` on a Pi: PiCamera + picamera2's encoder, the microphone on picamera2's
    audio thread, mock pins; a throwaway store, never the configured one."""
    from drivers.clock import SystemClock
    from firmware import bench_cmd, pi_rig
    from firmware.platform import PlatformInfo
    from hw_sim.battery import SimBattery
    from hw_sim.clock import SimClock
    cfg = _pi_config(tmp_path).with_overrides(
        audio__device=f"sine=frequency=440:sample_rate=48000,arealtime")
    real_build = pi_rig.build

    def build(cfg_, **kw):
        assert kw["gps"] is False and kw["pin_factory"] is not None  # never the real pins
        kw.update(clock=SystemClock(), battery=SimBattery(SimClock()),
                  picamera2_factory=lambda: pc2.Harness(autorun_fps=FPS),
                  encoder_factory=pc2.Libav, audio_input_format="lavfi")
        return real_build(cfg_, **kw)
    monkeypatch.setattr(pi_rig, "build", build)
    monkeypatch.setattr("firmware.platform.choose", lambda requested: PlatformInfo(
        "pi", "Raspberry Pi 5 Model B Rev 1.0", "test"))
    root = tmp_path / "scratch"
    root.mkdir()
    said: list[str] = []
    res = bench_cmd.run_bench(cfg, platform="auto", seconds=2.5, root=root, seal_repeats=2,
                              say=said.append)
    assert res["platform"] == "pi" and res["board"] == "Raspberry Pi 5 Model B Rev 1.0"
    assert res["encoder"] == "libav libx264 (software)" and res["sensor"] == "imx708_wide"
    assert res["recording_started"] and res["frames"] > 0 and res["segments_sealed"] >= 1
    assert res["mic_start_ms"] > 0 and res["seal_MBps"] > 0 and res["overlay_ms_median"] > 0
    assert not (tmp_path / "store").exists() and not (tmp_path / "keys").exists()
    assert any(str(root) in s and "not touched" in s for s in said)
    report = verify_path(root / "store")
    assert report.ok, report.all_failures()
