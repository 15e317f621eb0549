"""scripts/install-pi --dry-run prints every action and writes nothing; the unit verifies."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "install-pi"
UNIT = ROOT / "packaging" / "bwv.service"
CMDLINE = "console=serial0,115200 console=tty1 root=PARTUUID=1234-02 rootfstype=ext4 rootwait\n"


def snapshot(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(d.rglob("*"))}


@pytest.fixture
def dry_run(tmp_path):
    root = tmp_path / "root"
    (root / "boot" / "firmware").mkdir(parents=True)
    (root / "boot" / "firmware" / "config.txt").write_text("arm_64bit=1\n")
    (root / "boot" / "firmware" / "cmdline.txt").write_text(CMDLINE)
    before_root, before_repo = snapshot(root), snapshot(ROOT / "scripts")
    env = dict(os.environ, HOME=str(tmp_path / "home"))
    p = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--root", str(root), "--pps-gpio", "18"],
                       capture_output=True, text=True, timeout=15, env=env)
    assert p.returncode == 0, p.stderr
    assert snapshot(root) == before_root, "dry run wrote into --root"
    assert snapshot(ROOT / "scripts") == before_repo
    assert not (tmp_path / "home").exists()
    return p.stdout


def test_script_is_executable_bash():
    assert os.access(SCRIPT, os.X_OK)
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_dry_run_prints_every_action(dry_run):
    out = dry_run
    actions = [ln for ln in out.splitlines() if ln.startswith("[dry-run]")]
    assert any("apt-get install" in a and "python3-picamera2" in a and "python3-lgpio" in a
               and "chrony" in a for a in actions)
    assert any("useradd --system" in a and " bwv" in a for a in actions)
    for g in ("video", "gpio", "dialout", "audio", "i2c"):
        assert any(f"usermod -aG {g} bwv" in a for a in actions), g
    assert any("install -d -o bwv -g bwv -m 0750 /var/lib/bwv" in a for a in actions)
    assert any("venv --system-site-packages /opt/bwv/venv" in a for a in actions)
    assert any("pip install" in a for a in actions)
    assert any("etc/bwv/bwv.toml" in a for a in actions)
    assert any("firmware.bootconfig" in a and "--pps-gpio 18" in a for a in actions)
    assert "+dtoverlay=pps-gpio,gpiopin=18" in out and "-console=serial0,115200" in out  # the diff
    assert any("99-bwv.rules" in a for a in actions) and 'SYMLINK+="bwv-gps"' in out
    assert any("etc/systemd/system/bwv.service" in a for a in actions)
    assert any("systemctl enable bwv.service" in a for a in actions)


def test_unknown_options_are_refused():
    p = subprocess.run(["bash", str(SCRIPT), "--frobnicate"], capture_output=True, text=True, timeout=10)
    assert p.returncode == 2 and "unknown option" in p.stderr


def test_unit_file_contract():
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=10", "Restart=on-failure", "StartLimitAction=reboot",
                 "ProtectSystem=strict", "ReadWritePaths=/var/lib/bwv", "NoNewPrivileges=yes",
                 "PrivateTmp=yes", "DevicePolicy=closed", "User=bwv",
                 "ExecStart=/opt/bwv/venv/bin/bwv run --config /etc/bwv/bwv.toml --platform auto"):
        assert line in text.splitlines(), line
    assert "network-online" not in text.replace("# No After=network-online.target", "")
    assert "time-sync" not in text.replace("time-sync.target: the camera", "")
    for dev in ("char-video4linux", "char-media", "char-dma_heap", "char-gpiochip", "/dev/ttyAMA0",
                "/dev/ttyGS0", "/dev/bwv-gps", "char-alsa", "/dev/i2c-1", "/dev/rtc0 r"):
        assert f"DeviceAllow={dev}" in text, dev


def test_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    p = subprocess.run([tool, "verify", str(UNIT)], capture_output=True, text=True, timeout=15)
    # The ExecStart binary exists only on an installed device; every other complaint fails.
    problems = [ln for ln in (p.stdout + p.stderr).splitlines()
                if ln.strip() and "/opt/bwv/venv/bin/bwv" not in ln]
    assert not problems, problems
