"""The Raspberry Pi's drivers, built from the config: what ``bwv run`` and ``bwv bench``
start on a Pi. Imported only when the Pi platform is chosen (or by tests with the real
picamera2 package and its stand-ins).

Every hardware factory is a parameter, defaulting to the real one, so that the wiring
itself (which driver gets which config key, in which order things start) is exercised on
x86 against picamera2's own classes: tests pass the picamera2 harness
(tests/drivers/pi_harness.py), gpiozero's ``MockFactory`` and a clock; the bench passes
``MockFactory`` (it never drives the device's real pins) and throwaway keys.

Things that would fail on a real board and are handled here:

* lgpio creates its notification pipes in the *current directory* when imported; under
  the service's ``ProtectSystem=strict`` "/" is read-only, so the import fails and
  gpiozero silently falls back to another factory (or none). The unit sets
  ``WorkingDirectory=/run/bwv``; :func:`lgpio_factory` also moves to
  ``$RUNTIME_DIRECTORY`` (or the temp dir) when the current one is not writable.
* The fuel gauge is on ``/dev/i2c-1`` (``dtparam=i2c_arm=on``: GPIO2/3 on every 40-pin
  Pi, Pi 5 included).
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from firmware.config import Config

log = logging.getLogger("bwv.pi")

GAUGE_I2C_BUS = 1


def lgpio_factory() -> Any:
    """gpiozero's lgpio pin factory (the only one that works on a Pi 5), created from a
    writable working directory (see the module docstring)."""
    cwd = os.getcwd()
    if not os.access(cwd, os.W_OK):
        target = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or tempfile.gettempdir()
        log.warning("working directory %s is not writable (lgpio needs one); using %s", cwd, target)
        os.chdir(target)
    from gpiozero.pins.lgpio import LGPIOFactory
    return LGPIOFactory()  # chip: gpiozero picks gpiochip4 on a Pi 5 with the old numbering


@dataclass
class PiDevices:
    clock: Any
    keys: Any
    camera: Any
    microphone: Any
    controls: Any
    dock: Any
    trigger: Any
    gps: Any
    battery: Any
    pin_factory: Any
    chrony_feed: Any = None
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def poll(self) -> None:
        """Per tick of the service loop: hand new GPS times to chrony."""
        if self.chrony_feed is not None:
            self.chrony_feed.poll()

    def close(self) -> None:
        """Release pins, the GPS port and the chrony socket (after the agent stopped)."""
        for close in reversed(self._closers):
            try:
                close()
            except Exception:  # noqa: BLE001 - closing the rest matters more
                log.exception("closing a Pi device failed")
        self._closers.clear()


def build(cfg: Config, *, clock: Any = None, keys: Any = None, pin_factory: Any = None,
          gps: bool = True, battery: Any = None, picamera2_factory: Callable[[], Any] | None = None,
          encoder_factory: Callable[..., Any] | None = None,
          audio_input_format: str = "alsa") -> PiDevices:
    """The Pi's drivers for ``cfg``. Nothing is started except the GPS reader: the agent
    starts the camera (and the microphone on it) in ``Agent.start``."""
    from drivers.controls import ControlPins, Controls
    from drivers.inputs import DockSense, TriggerInput
    from drivers.keystore import FileKeyStore
    from drivers.pi_camera import PiCamera
    from drivers.pi_microphone import PiMicrophone

    if clock is None:
        from drivers.pi_clock import ChronyClock
        clock = ChronyClock()
    if keys is None:
        keys = FileKeyStore(Path(cfg.device.keys_dir))
    serial = keys.device().device_id  # fails early (one line) when the keys are missing
    closers: list[Callable[[], None]] = []
    try:
        factory = pin_factory if pin_factory is not None else lgpio_factory()
        if pin_factory is None:
            closers.append(factory.close)
        c = cfg.controls
        pins = ControlPins(record_button=c.record_button, function_button=c.function_button,
                           green_led=c.green_led, red_led=c.red_led, haptic=c.haptic,
                           buzzer=c.buzzer)
        controls = Controls(pins, pin_factory=factory)
        closers.append(controls.close)
        dock = DockSense(cfg.dock.pin, pin_factory=factory)
        closers.append(dock.close)
        trigger = TriggerInput(c.trigger_pin, pin_factory=factory)
        closers.append(trigger.close)
        cam = cfg.camera
        camera = PiCamera(clock, width=cam.width, height=cam.height, fps=cam.fps,
                          bitrate=cam.bitrate, segment_seconds=cam.segment_seconds, serial=serial,
                          picamera2_factory=picamera2_factory, encoder_factory=encoder_factory)
        microphone = None
        if cfg.audio.enabled:
            microphone = PiMicrophone(camera, device=cfg.audio.device,
                                      input_format=audio_input_format,
                                      sample_rate=cfg.audio.sample_rate,
                                      bitrate=min(64_000, 2 * cfg.audio.sample_rate))
        if battery is None:
            from drivers.max17048 import MAX17048
            battery = MAX17048(charging=lambda: dock.active, bus_number=GAUGE_I2C_BUS)
        reader = feed = None
        if gps and cfg.gps.enabled:
            from drivers.gps import GpsReader
            reader = GpsReader(cfg.gps.port, clock=clock, baudrate=cfg.gps.baudrate).start()
            closers.append(reader.stop)
            if cfg.gps.chrony_socket:
                from drivers.chrony_refclock import NmeaChronyFeed
                feed = NmeaChronyFeed(reader, clock, cfg.gps.chrony_socket)
                closers.append(feed.close)
    except BaseException:
        for close in reversed(closers):
            try:
                close()
            except Exception:  # noqa: BLE001
                pass
        raise
    return PiDevices(clock=clock, keys=keys, camera=camera, microphone=microphone,
                     controls=controls, dock=dock, trigger=trigger, gps=reader, battery=battery,
                     pin_factory=factory, chrony_feed=feed, _closers=closers)
