"""firmware.bootconfig: the Pi's config.txt / cmdline.txt generator."""
from __future__ import annotations

import datetime as dt

import pytest

from firmware.bootconfig import (BEGIN, END, BootConfigError, BootOptions, apply, main, plan,
                                 render_cmdline_txt, render_config_txt)

# Raspberry Pi OS Bookworm's stock files (abridged, with their odd bits kept).
CONFIG = """# For more options and information see
# http://rptl.io/configtxt
dtparam=audio=on
camera_auto_detect=1
display_auto_detect=1
auto_initramfs=1
dtoverlay=vc4-kms-v3d
max_framebuffers=2
disable_fw_kms_setup=1
arm_64bit=1
disable_overscan=1
arm_boost=1

[cm4]
otg_mode=1

[all]
  # an indented comment   
"""
CMDLINE = ("console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 "
           "fsck.repair=yes rootwait quiet splash plymouth.ignore-serial-consoles "
           "cfg80211.ieee80211_regdom=GB\n")
NOW = dt.datetime(2026, 11, 26, 10, 0, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
def boot(tmp_path):
    (tmp_path / "config.txt").write_text(CONFIG)
    (tmp_path / "cmdline.txt").write_text(CMDLINE)
    return tmp_path


def test_config_block_added_and_everything_else_kept_byte_for_byte():
    new = render_config_txt(CONFIG, BootOptions(pps_gpio=18))
    assert new.startswith(CONFIG)
    block = new[len(CONFIG):].splitlines()
    assert block == [BEGIN, "[all]", "enable_uart=1", "dtoverlay=dwc2", "dtparam=i2c_arm=on",
                     "dtparam=watchdog=on", "dtoverlay=pps-gpio,gpiopin=18", END]
    assert "pps-gpio" not in render_config_txt(CONFIG, BootOptions())


def test_config_idempotent_and_block_replaced_in_place():
    once = render_config_txt(CONFIG, BootOptions(pps_gpio=18))
    assert render_config_txt(once, BootOptions(pps_gpio=18)) == once
    tail = once + "# a line the user added after our block\n"
    changed = render_config_txt(tail, BootOptions(pps_gpio=4, rtc="ds3231"))
    assert changed.startswith(CONFIG) and changed.endswith("# a line the user added after our block\n")
    assert "gpiopin=4" in changed and "gpiopin=18" not in changed and "i2c-rtc,ds3231" in changed
    assert changed.count(BEGIN) == 1


def test_config_without_final_newline_and_crlf():
    assert render_config_txt("arm_64bit=1", BootOptions()).startswith("arm_64bit=1\n" + BEGIN)
    crlf = render_config_txt("arm_64bit=1\r\n", BootOptions())
    assert crlf.startswith("arm_64bit=1\r\n") and f"{END}\r\n" in crlf


def test_cmdline_serial_console_removed_gadget_added_idempotent():
    new = render_cmdline_txt(CMDLINE)
    assert "console=serial0" not in new and "console=tty1" in new
    assert new.endswith("modules-load=dwc2,g_serial\n") and new.count("\n") == 1
    assert render_cmdline_txt(new) == new
    merged = render_cmdline_txt("root=/dev/mmcblk0p2 rootwait modules-load=dwc2,g_ether\n")
    assert "modules-load=dwc2,g_ether,g_serial" in merged


@pytest.mark.parametrize("text", [CMDLINE + "second line\n", "\n" + CMDLINE, "", "\n\n",
                                  "just words, no kernel parameters\n"])
def test_cmdline_odd_files_refused(text):
    with pytest.raises(BootConfigError, match="cmdline"):
        render_cmdline_txt(text, "cmdline.txt")


@pytest.mark.parametrize("name,data", [("config.txt", b"\x7fELF\x02\x01\x00\x00binary"),
                                       ("config.txt", b"arm_64bit=1\n\xff\xfe\n"),
                                       ("config.txt", (BEGIN + "\n").encode()),
                                       ("config.txt", f"{END}\n{BEGIN}\n".encode()),
                                       ("config.txt", f"{BEGIN}\n{END}\n{BEGIN}\n{END}\n".encode()),
                                       ("cmdline.txt", b"root=/dev/sda\x00\n")])
def test_files_we_do_not_understand_are_refused_and_untouched(boot, name, data):
    (boot / name).write_bytes(data)
    before = {p.name: p.read_bytes() for p in boot.iterdir()}
    with pytest.raises(BootConfigError, match=name):
        apply(boot, out=lambda s: None)
    assert {p.name: p.read_bytes() for p in boot.iterdir()} == before


def test_apply_shows_diff_writes_backup_and_second_run_changes_nothing(boot):
    lines: list[str] = []
    backups = apply(boot, BootOptions(pps_gpio=18), now=NOW, out=lines.append)
    out = "\n".join(lines)
    assert "--- a/config.txt" in out and "+++ b/config.txt" in out and "+enable_uart=1" in out
    assert "-console=serial0,115200" in out and "+console=tty1" in out
    assert "warning" in out and "otg_mode=1" in out  # a conflicting line is reported
    assert sorted(b.name for b in backups) == ["cmdline.txt.bwv-backup-20261126T100000Z",
                                               "config.txt.bwv-backup-20261126T100000Z"]
    assert (boot / "config.txt.bwv-backup-20261126T100000Z").read_text() == CONFIG
    assert (boot / "cmdline.txt.bwv-backup-20261126T100000Z").read_text() == CMDLINE
    assert (boot / "config.txt").read_text().startswith(CONFIG)
    after = {p.name: p.read_bytes() for p in boot.iterdir()}
    lines.clear()
    assert apply(boot, BootOptions(pps_gpio=18), now=NOW, out=lines.append) == []
    assert {p.name: p.read_bytes() for p in boot.iterdir()} == after
    assert all(c.changed is False for c in plan(boot, BootOptions(pps_gpio=18)))


def test_dry_run_and_check_change_nothing(boot, capsys):
    before = {p.name: p.read_bytes() for p in boot.iterdir()}
    assert main(["--boot-dir", str(boot), "--dry-run"]) == 0
    assert main(["--boot-dir", str(boot), "--check"]) == 1
    assert "+dtoverlay=dwc2" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in boot.iterdir()} == before
    assert main(["--boot-dir", str(boot)]) == 0
    assert main(["--boot-dir", str(boot), "--check"]) == 0


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    assert main(["--boot-dir", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--boot-dir", str(tmp_path), "--pps-gpio", "40"]) == 2


def test_cmdline_already_right_is_not_even_respaced():
    done = "console=tty1  root=/dev/mmcblk0p2\trootwait modules-load=dwc2,g_serial\n"
    assert render_cmdline_txt(done) == done


# ------------------------------------------------------------- GPS time for chrony
def _toml(tmp_path, text: str):
    p = tmp_path / "bwv.toml"
    p.write_text(text)
    return str(p)


def test_chrony_conf_pairs_pps_with_bwvs_nmea_or_uses_nmea_alone():
    from firmware.bootconfig import chrony_conf
    with_pps = chrony_conf("/run/chrony.bwv-nmea.sock", pps=True, nmea_offset_ms=120)
    rules = [ln for ln in with_pps.splitlines() if not ln.startswith("#")]
    assert rules == ["refclock SOCK /run/chrony.bwv-nmea.sock refid NMEA offset 0.120 delay 0.2 noselect",
                     "refclock PPS /dev/pps0 lock NMEA refid PPS prefer"]
    alone = [ln for ln in chrony_conf("/run/x.sock", pps=False).splitlines() if not ln.startswith("#")]
    assert alone == ["refclock SOCK /run/x.sock refid NMEA offset 0.000 delay 0.2"]
    assert chrony_conf("/run/x.sock", pps=True) == chrony_conf("/run/x.sock", pps=True)  # stable
    for bad in ("relative.sock", "/run/a b.sock", "/run/x.sock;reboot", "/run/$(id).sock"):
        with pytest.raises(BootConfigError, match="absolute path"):
            chrony_conf(bad, pps=True)
    with pytest.raises(BootConfigError, match="outside"):
        chrony_conf("/run/x.sock", pps=True, nmea_offset_ms=1000)


def test_chrony_unit_dropin_hands_the_socket_to_bwv_and_never_fails_chrony():
    import subprocess
    from firmware.bootconfig import chrony_unit_dropin
    text = chrony_unit_dropin("/run/chrony.bwv-nmea.sock")
    lines = text.splitlines()
    assert "[Service]" in lines
    (post,) = [ln for ln in lines if ln.startswith("ExecStartPost=")]
    assert post.startswith("ExecStartPost=-+/bin/sh -c '")  # '-': chrony starts regardless
    script = post.split("-c '", 1)[1].rstrip("'")
    assert "chgrp bwv /run/chrony.bwv-nmea.sock" in script and "chmod 0660" in script
    subprocess.run(["sh", "-n", "-c", script], check=True)  # valid shell
    with pytest.raises(BootConfigError):
        chrony_unit_dropin("/run/x.sock", group="bwv;rm")


def test_pps_pin_comes_from_the_config_and_the_flag_overrides_it(boot, tmp_path, capsys):
    cfg = _toml(tmp_path, "[gps]\npps_pin = 4\n")
    assert main(["--config", cfg, "--print", "pps-pin"]) == 0
    assert capsys.readouterr().out.strip() == "4"
    assert main(["--config", cfg, "--pps-gpio", "0", "--print", "pps-pin"]) == 0
    assert capsys.readouterr().out.strip() == "0"
    assert main(["--print", "pps-pin"]) == 0  # the default: GPIO18, as docs/HARDWARE.md wires it
    assert capsys.readouterr().out.strip() == "18"
    assert main(["--boot-dir", str(boot), "--config", cfg, "--dry-run"]) == 0
    assert "+dtoverlay=pps-gpio,gpiopin=4" in capsys.readouterr().out
    none = _toml(tmp_path, "[gps]\npps_pin = 0\n")
    assert main(["--boot-dir", str(boot), "--config", none, "--dry-run"]) == 0
    assert "pps-gpio" not in capsys.readouterr().out
    assert main(["--config", none, "--print", "chrony-conf"]) == 0
    out = capsys.readouterr().out
    assert "refclock PPS" not in out and "noselect" not in out and "refclock SOCK" in out


def test_gps_off_means_no_pps_and_no_chrony_files(boot, tmp_path, capsys):
    from firmware.bootconfig import EXIT_GPS_OFF
    off = _toml(tmp_path, "[gps]\nenabled = false\n")
    assert main(["--config", off, "--print", "chrony-conf"]) == EXIT_GPS_OFF
    assert main(["--config", off, "--print", "pps-pin"]) == 0
    assert capsys.readouterr().out.strip() == "0"
    no_sock = _toml(tmp_path, '[gps]\nchrony_socket = ""\n')
    assert main(["--config", no_sock, "--print", "chrony-unit"]) == EXIT_GPS_OFF


def test_a_bad_config_is_one_line_exit_2(tmp_path, capsys):
    clash = _toml(tmp_path, "[gps]\npps_pin = 17\n")  # the record button's pin
    assert main(["--config", clash, "--print", "chrony-conf"]) == 2
    err = capsys.readouterr().err
    assert "gps.pps_pin" in err and "already used" in err and len(err.strip().splitlines()) == 1
    assert main(["--config", str(tmp_path / "missing.toml"), "--print", "pps-pin"]) == 2
