"""firmware.platform: auto/sim/pi selection against a fake device tree."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from firmware.platform import PlatformError, choose, detect

ROOT = Path(__file__).resolve().parents[2]
yes = lambda name: name == "picamera2"  # noqa: E731
no = lambda name: False  # noqa: E731


def model(tmp_path, text: bytes | None) -> Path:
    p = tmp_path / "model"
    if text is not None:
        p.write_bytes(text)
    return p


def test_pi_model_and_picamera2_is_pi(tmp_path):
    info = detect(model(tmp_path, b"Raspberry Pi Zero 2 W Rev 1.0\x00"), importable=yes)
    assert (info.platform, info.board_model) == ("pi", "Raspberry Pi Zero 2 W Rev 1.0")
    assert choose("auto", model(tmp_path, b"Raspberry Pi 5 Model B Rev 1.0\x00"),
                  importable=yes).platform == "pi"


def test_x86_without_device_tree_is_sim(tmp_path):
    info = choose("auto", model(tmp_path, None), importable=yes)
    assert info.platform == "sim" and info.board_model is None
    assert "not a Raspberry Pi" in info.reason


def test_other_arm_board_is_sim(tmp_path):
    assert choose("auto", model(tmp_path, b"Pine64 RockPro64\x00"), importable=yes).platform == "sim"


def test_pi_without_picamera2_is_sim_and_says_why(tmp_path):
    info = choose("auto", model(tmp_path, b"Raspberry Pi 4 Model B Rev 1.5\x00"), importable=no)
    assert info.platform == "sim" and "picamera2" in info.reason


def test_pi_requested_on_non_pi_is_a_clear_error(tmp_path):
    with pytest.raises(PlatformError, match=r"pi.*requested.*not a Raspberry Pi"):
        choose("pi", model(tmp_path, None), importable=yes)
    with pytest.raises(PlatformError, match="picamera2"):
        choose("pi", model(tmp_path, b"Raspberry Pi 4 Model B\x00"), importable=no)


def test_sim_is_always_sim_and_unknown_is_refused(tmp_path):
    assert choose("sim", model(tmp_path, b"Raspberry Pi 5\x00"), importable=yes).platform == "sim"
    with pytest.raises(PlatformError, match="not one of"):
        choose("raspberry", model(tmp_path, None))


def test_real_auto_here_never_imports_picamera2():
    code = ("import sys, firmware.platform as p; i = p.choose('auto'); "
            "print(i.platform, 'picamera2' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.split()
    assert out[1] == "False"
