"""Which hardware bwv runs on: the simulator or a Raspberry Pi.

``choose`` is called once at start-up with the configured/CLI platform
(``"sim" | "pi" | "auto"``). ``auto`` picks the Pi only when the device tree names a
Raspberry Pi *and* picamera2 is importable; anything else is the simulator. Nothing
Pi-only is imported here: picamera2 is looked up with ``importlib.util.find_spec``,
never imported, so this module is safe on any machine.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

DEVICE_TREE_MODEL = "/proc/device-tree/model"
PLATFORMS = ("sim", "pi", "auto")


class PlatformError(Exception):
    """The requested platform cannot run here; the message says why."""


@dataclass(frozen=True)
class PlatformInfo:
    platform: str  # "sim" | "pi"
    board_model: str | None  # device-tree model string, e.g. "Raspberry Pi Zero 2 W Rev 1.0"
    reason: str  # one line: why this platform was chosen

    def as_dict(self) -> dict:
        return {"platform": self.platform, "board_model": self.board_model, "reason": self.reason}


def _module_importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def read_board_model(model_path: str | Path = DEVICE_TREE_MODEL) -> str | None:
    """The device-tree model string (NUL-terminated in the kernel's file), or None."""
    try:
        raw = Path(model_path).read_bytes()
    except OSError:
        return None
    text = raw.split(b"\x00", 1)[0].decode("utf-8", "replace").strip()
    return text or None


def is_raspberry_pi(model: str | None) -> bool:
    return bool(model) and model.startswith("Raspberry Pi")


def detect(model_path: str | Path = DEVICE_TREE_MODEL,
           importable: Callable[[str], bool] = _module_importable) -> PlatformInfo:
    """What ``auto`` would choose here, and why."""
    model = read_board_model(model_path)
    if not is_raspberry_pi(model):
        why = (f"device-tree model {model!r} is not a Raspberry Pi" if model
               else f"no device-tree model at {model_path} (not a Raspberry Pi)")
        return PlatformInfo("sim", model, why)
    if not importable("picamera2"):
        return PlatformInfo("sim", model, f"{model} but picamera2 is not importable "
                                          "(install python3-picamera2 and use a venv with "
                                          "--system-site-packages)")
    return PlatformInfo("pi", model, f"{model} with picamera2 importable")


def choose(requested: str, model_path: str | Path = DEVICE_TREE_MODEL,
           importable: Callable[[str], bool] = _module_importable) -> PlatformInfo:
    """Resolve the configured platform. ``"pi"`` on a non-Pi raises ``PlatformError``."""
    if requested not in PLATFORMS:
        raise PlatformError(f"platform {requested!r} is not one of {', '.join(PLATFORMS)}")
    if requested == "sim":
        return PlatformInfo("sim", read_board_model(model_path), "requested sim")
    found = detect(model_path, importable)
    if requested == "auto":
        return PlatformInfo(found.platform, found.board_model, f"auto: {found.reason}")
    if found.platform != "pi":
        raise PlatformError(f"platform \"pi\" requested, but {found.reason}")
    return PlatformInfo("pi", found.board_model, f"requested pi: {found.reason}")
