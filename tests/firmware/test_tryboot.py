"""firmware.tryboot: autoboot.txt and the tryboot flow, against a fake boot partition and a
fake Pi firmware that does what the Raspberry Pi documentation says it does."""
from __future__ import annotations

import pytest

from firmware.bootconfig import BootConfigError
from firmware.slots import Slots
from firmware.tryboot import (MAX_BYTES, PARTITIONS, Booted, Tryboot, decide, parse_autoboot_txt,
                              read_bootloader, render_autoboot_txt)
from hw_sim.clock import SimClock
from tests.firmware.update_helpers import bundles  # noqa: F401


def test_render_matches_the_documented_layout_and_parses_back():
    text = render_autoboot_txt("a")
    body = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert body == ["[all]", "tryboot_a_b=1", "boot_partition=2", "[tryboot]", "boot_partition=3"]
    assert len(text.encode()) <= MAX_BYTES
    assert parse_autoboot_txt(text).committed == "a" and parse_autoboot_txt(text).trial == "b"
    swapped = parse_autoboot_txt(render_autoboot_txt("b"))
    assert (swapped.committed, swapped.trial, swapped.tryboot_a_b) == ("b", "a", True)
    assert render_autoboot_txt("a") == render_autoboot_txt("a", "b")  # pure, deterministic


@pytest.mark.parametrize("text", [
    "[all]\nboot_partition=4\n",                 # not a slot partition
    "[all]\nboot_partition=2\nboot_partition=3\n",
    "[pi5]\nboot_partition=2\n",                 # a filter we do not manage
    "[all]\nboot_partition=2\nkernel=evil.img\n",
    "[tryboot]\nboot_partition=3\n",             # no committed partition
    "#" * 600 + "\n[all]\nboot_partition=2\n",    # beyond the firmware's 512 bytes
    "[all]\nboot_partition=\u00b2\n",            # "²".isdigit(), but int() refuses it
    "[all]\nboot_partition=\u0662\n",            # an Arabic-Indic 2 is not a partition
])
def test_files_we_do_not_understand_are_refused(text):
    with pytest.raises(BootConfigError):
        parse_autoboot_txt(text)


@pytest.mark.parametrize("trying, attempts, booted, want", [
    (None, 0, Booted(False, 2), "run"),
    ("b", 0, Booted(True, 3), "check"),
    ("b", 1, Booted(False, 2), "retry"),     # the trial crashed or failed: firmware fell back
    ("b", 2, Booted(True, 2), "retry"),      # tryboot flag but not the trial partition
    ("b", 3, Booted(False, 2), "give_up"),
])
def test_decide(trying, attempts, booted, want):
    assert decide(trying=trying, attempts=attempts, max_attempts=3, booted=booted) == want


class FakePi:
    """The boot firmware: reads autoboot.txt, honours the one-shot tryboot flag (cleared
    before the OS runs), and publishes how it booted in the device tree."""

    def __init__(self, tmp_path):
        self.boot = tmp_path / "bootfs"
        self.dt = tmp_path / "dt"
        self.boot.mkdir()
        self.dt.mkdir()
        self.flag = False
        self.reboots: list[str] = []

    def reboot(self, arg: str) -> None:
        self.reboots.append(arg)
        self.flag = arg.split()[1:] == ["tryboot"]

    def power_on(self) -> Booted:
        ab = parse_autoboot_txt((self.boot / "autoboot.txt").read_text())
        slot = ab.trial if self.flag and ab.trial else ab.committed
        (self.dt / "tryboot").write_bytes((1 if self.flag else 0).to_bytes(4, "big"))
        (self.dt / "partition").write_bytes(PARTITIONS[slot].to_bytes(4, "big"))
        self.flag = False  # one shot: cleared before the OS starts
        return read_bootloader(self.dt)


def one_start(pi: FakePi, root, health_ok: bool) -> str:
    """What bwv does on each start of the Pi, with fresh objects (state only on disk)."""
    booted = pi.power_on()
    slots = Slots(root, clock=SimClock())
    tb = Tryboot(pi.boot, reboot=pi.reboot, dt_dir=pi.dt)
    st = slots.read_state()
    step = decide(trying=st["trying"], attempts=st["attempts"], max_attempts=3, booted=booted)
    if step == "check":
        assert booted.slot == slots.on_boot().slot  # counts this start
        if health_ok:
            slots.record_health(True)
            tb.commit(booted.slot)
        else:
            slots.record_health(False, ["camera: no key frame"])
            tb.fall_back()
    elif step == "retry":
        tb.reboot("0 tryboot")
    elif step == "give_up":
        assert slots.on_boot().action == "rolled_back"
    return step


@pytest.fixture
def pi_with_trial(tmp_path, bundles):
    pi = FakePi(tmp_path)
    (pi.boot / "autoboot.txt").write_text(render_autoboot_txt("a"))
    root = tmp_path / "data" / "slots"
    slots = Slots(root, clock=SimClock())
    slots.install(*bundles["0.1.0"])  # factory: slot a committed
    slots.install(*bundles["0.2.0"])  # the update, written into slot b (partition 3)
    Tryboot(pi.boot, reboot=pi.reboot, dt_dir=pi.dt).start_trial("a", "b")
    assert pi.reboots == ["0 tryboot"]
    return pi, root


def test_trial_boot_then_commit(pi_with_trial):
    pi, root = pi_with_trial
    assert one_start(pi, root, health_ok=True) == "check"
    assert parse_autoboot_txt((pi.boot / "autoboot.txt").read_text()).committed == "b"
    assert pi.power_on() == Booted(False, 3)  # a normal boot now runs the new slot
    assert one_start(pi, root, health_ok=True) == "run"


def test_failed_checks_retry_then_roll_back_and_the_counter_survives_power_cuts(pi_with_trial):
    pi, root = pi_with_trial
    steps = []
    for _ in range(3):
        steps.append(one_start(pi, root, health_ok=False))  # trial boot: check fails
        if len(steps) == 1:
            pi.flag = False  # power cut during the fallback reboot: the flag is gone anyway
        steps.append(one_start(pi, root, health_ok=False))  # committed boot
    assert steps == ["check", "retry", "check", "retry", "check", "run"]
    st = Slots(root, clock=SimClock()).read_state()
    assert st["trying"] is None and st["slots"]["b"]["state"] == "failed"
    assert st["last_result"]["result"] == "rolled_back"
    assert parse_autoboot_txt((pi.boot / "autoboot.txt").read_text()).committed == "a"


def test_a_trial_that_hangs_falls_back_and_gives_up_after_its_starts(pi_with_trial):
    pi, root = pi_with_trial
    steps = []
    for _ in range(3):
        pi.power_on()  # the trial boots, counts nothing, and hangs: the watchdog resets it
        Slots(root, clock=SimClock()).on_boot()  # … after the counter saw the start
        steps.append(one_start(pi, root, health_ok=True))
    assert steps == ["retry", "retry", "give_up"]
    assert parse_autoboot_txt((pi.boot / "autoboot.txt").read_text()).committed == "a"


def test_a_damaged_autoboot_txt_is_never_rewritten(tmp_path):
    (tmp_path / "autoboot.txt").write_text("[all]\nboot_partition=2\nos_prefix=evil/\n")
    tb = Tryboot(tmp_path, reboot=lambda a: pytest.fail("must not reboot"), dt_dir=tmp_path)
    with pytest.raises(BootConfigError):
        tb.commit("b")
    assert "os_prefix" in (tmp_path / "autoboot.txt").read_text()
