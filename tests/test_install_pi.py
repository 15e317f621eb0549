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
    # The A/B slots are the only code directory the agent may write.
    assert any("install -d -o bwv -g bwv -m 0750 /opt/bwv/firmware" in a for a in actions)
    # The console port is bwv's own: no login shell may share it.
    assert any("systemctl mask serial-getty@ttyGS0.service" in a for a in actions)
    assert not any("enable serial-getty" in a for a in actions)
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


def _dry_run(tmp_path, toml: str | None, *extra: str) -> subprocess.CompletedProcess:
    root = tmp_path / "root"
    (root / "boot" / "firmware").mkdir(parents=True)
    (root / "boot" / "firmware" / "config.txt").write_text("arm_64bit=1\n")
    (root / "boot" / "firmware" / "cmdline.txt").write_text(CMDLINE)
    if toml is not None:
        (root / "etc" / "bwv").mkdir(parents=True)
        (root / "etc" / "bwv" / "bwv.toml").write_text(toml)
    before = snapshot(root)
    p = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--root", str(root), *extra],
                       capture_output=True, text=True, timeout=30)
    assert snapshot(root) == before, "dry run wrote into --root"
    return p


def test_pps_pin_and_chrony_files_follow_the_device_config(tmp_path):
    p = _dry_run(tmp_path, "[gps]\npps_pin = 4\nnmea_offset_ms = 150\n")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "+dtoverlay=pps-gpio,gpiopin=4" in out and "gpiopin=18" not in out
    assert "etc/chrony/conf.d/bwv-gps.conf" in out
    assert "| refclock SOCK /run/chrony.bwv-nmea.sock refid NMEA offset 0.150 delay 0.2 noselect" in out
    assert "| refclock PPS /dev/pps0 lock NMEA refid PPS prefer" in out
    assert "etc/systemd/system/chrony.service.d/bwv-nmea-socket.conf" in out
    assert "chgrp bwv /run/chrony.bwv-nmea.sock" in out


def test_no_pps_wired_and_gps_off(tmp_path):
    p = _dry_run(tmp_path / "a", None, "--pps-gpio", "0")  # the flag overrides the default 18
    assert p.returncode == 0, p.stderr
    assert "dtoverlay=pps-gpio" not in p.stdout and "refclock PPS" not in p.stdout
    assert "| refclock SOCK /run/chrony.bwv-nmea.sock refid NMEA offset 0.000 delay 0.2" in p.stdout
    p = _dry_run(tmp_path / "b", "[gps]\nenabled = false\n")
    assert p.returncode == 0, p.stderr
    assert "dtoverlay=pps-gpio" not in p.stdout and "bwv-gps.conf" not in p.stdout
    assert "skipped: GPS" in p.stdout


def test_a_config_it_cannot_read_stops_the_install(tmp_path):
    p = _dry_run(tmp_path, "[gps]\npps_pin = 17\n")  # the record button's pin
    assert p.returncode == 2
    assert "gps.pps_pin" in p.stderr and "cannot generate the chrony files" in p.stderr


def test_unit_gives_lgpio_a_writable_working_directory():
    lines = UNIT.read_text().splitlines()
    assert "RuntimeDirectory=bwv" in lines and "WorkingDirectory=/run/bwv" in lines
