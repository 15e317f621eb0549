"""The A/B slots on a Raspberry Pi's boot firmware: ``autoboot.txt`` and ``tryboot``.

On a Pi the two slots can be two boot partitions (slot a = partition 2, slot b =
partition 3; partition 1 is a small FAT partition that holds only ``autoboot.txt``).
The firmware reads ``autoboot.txt``::

    [all]
    tryboot_a_b=1
    boot_partition=2
    [tryboot]
    boot_partition=3

``boot_partition`` under ``[all]`` is the committed slot. ``reboot '0 tryboot'`` sets
a one-shot flag: the next boot takes the ``[tryboot]`` section (the slot on trial) and
the flag is cleared *before* the OS starts, so any crash, hang (watchdog reset) or
plain reboot of the trial falls back to the committed slot. ``tryboot_a_b=1`` makes
the firmware read the normal ``config.txt`` inside each partition (no ``tryboot.txt``).
The OS sees how it was booted in ``/proc/device-tree/chosen/bootloader/tryboot`` and
``…/partition`` (big-endian 32-bit cells).

The firmware gives one try and keeps no count; bwv's boot counter (``firmware.slots``'s
``boot.json``, on the data partition) makes it three: ``decide`` says what a start
must do from the counter and the device tree, the health check's pass is ``commit``
(``autoboot.txt`` rewritten with the trial slot as ``boot_partition``), a failure is a
normal reboot (back to the committed slot), whose start sees attempts left and tries
again, or gives up and records the rollback. ``autoboot.txt`` is replaced atomically
(temp file, fsync, rename) and is at most 512 bytes (the firmware's limit); a file we
do not understand is refused, never rewritten.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from firmware.bootconfig import BootConfigError, _decode, _write_atomic

PARTITIONS = {"a": 2, "b": 3}
SLOT_OF = {v: k for k, v in PARTITIONS.items()}
MAX_BYTES = 512
BOOTLOADER_DT = "/proc/device-tree/chosen/bootloader"
HEADER = "# bwv A/B slots (firmware/tryboot.py): slot a = partition 2, slot b = partition 3"


def render_autoboot_txt(committed: str, trial: str | None = None) -> str:
    """``autoboot.txt`` that boots ``committed`` and, after ``reboot '0 tryboot'``,
    ``trial`` (default: the other slot) once."""
    if committed not in PARTITIONS:
        raise BootConfigError(f"autoboot.txt: slot {committed!r} is not a or b")
    trial = trial or ("b" if committed == "a" else "a")
    if trial not in PARTITIONS or trial == committed:
        raise BootConfigError(f"autoboot.txt: trial slot {trial!r} must be the other slot")
    text = (f"{HEADER}\n[all]\ntryboot_a_b=1\nboot_partition={PARTITIONS[committed]}\n"
            f"[tryboot]\nboot_partition={PARTITIONS[trial]}\n")
    assert len(text.encode()) <= MAX_BYTES
    return text


@dataclass(frozen=True)
class Autoboot:
    committed: str  # slot of [all] boot_partition
    trial: str | None  # slot of [tryboot] boot_partition
    tryboot_a_b: bool


def parse_autoboot_txt(text: str, name: str = "autoboot.txt") -> Autoboot:
    """Read what the firmware will do; refuse anything beyond the keys bwv writes."""
    if len(text.encode()) > MAX_BYTES:
        raise BootConfigError(f"{name}: {len(text.encode())} bytes; the firmware reads at most {MAX_BYTES}")
    section, parts, ab = "all", {}, False
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            if section not in ("all", "tryboot"):
                raise BootConfigError(f"{name}:{n}: filter [{section}] is not one bwv manages")
            continue
        key, sep, value = line.partition("=")
        if not sep or key not in ("boot_partition", "tryboot_a_b"):
            raise BootConfigError(f"{name}:{n}: {line!r} is not a setting bwv manages")
        if key == "tryboot_a_b":
            ab = value == "1"
            continue
        # ASCII digits only, and few: "²".isdigit() is true but int() refuses it, and
        # int() refuses more than 4300 digits
        if not (value.isascii() and value.isdigit() and len(value) <= 3) or int(value) not in SLOT_OF:
            raise BootConfigError(f"{name}:{n}: boot_partition={value} is not a bwv slot "
                                  f"partition ({', '.join(map(str, SLOT_OF))})")
        if section in parts:
            raise BootConfigError(f"{name}:{n}: boot_partition set twice under [{section}]")
        parts[section] = SLOT_OF[int(value)]
    if "all" not in parts:
        raise BootConfigError(f"{name}: no boot_partition under [all]")
    return Autoboot(parts["all"], parts.get("tryboot"), ab)


@dataclass(frozen=True)
class Booted:
    tryboot: bool
    partition: int | None

    @property
    def slot(self) -> str | None:
        return SLOT_OF.get(self.partition) if self.partition is not None else None


def _cell(path: Path) -> int | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) != 4:
        raise BootConfigError(f"{path}: expected one 32-bit cell, found {len(data)} bytes")
    return int.from_bytes(data, "big")


def read_bootloader(dt_dir: str | Path = BOOTLOADER_DT) -> Booted:
    d = Path(dt_dir)
    return Booted(tryboot=_cell(d / "tryboot") == 1, partition=_cell(d / "partition"))


def decide(*, trying: str | None, attempts: int, max_attempts: int, booted: Booted) -> str:
    """What this start does, from the boot counter and how the firmware booted us:

    ``run``      no trial pending: the committed slot runs
    ``check``    this is the trial boot: count it, run the health check, then commit
                 (pass) or reboot normally (fail: the firmware falls back)
    ``retry``    a trial is pending but we run the committed slot (the trial crashed,
                 hung or failed its check) and starts are left: ``reboot '0 tryboot'``
    ``give_up``  the trial used its starts: record the rollback; nothing to change at
                 boot level (``[all]`` never stopped naming the committed slot)
    """
    if trying is None:
        return "run"
    if booted.tryboot and booted.slot == trying:
        return "check"
    return "retry" if attempts < max_attempts else "give_up"


class Tryboot:
    """``autoboot.txt`` on the boot partition, and the reboots. ``reboot`` is injected:
    on a device it runs ``systemctl reboot ARG`` (systemd passes ARG to reboot(2),
    which is how ``0 tryboot`` reaches the firmware); tests record it."""

    def __init__(self, boot_dir: str | Path, *, reboot: Callable[[str], None],
                 dt_dir: str | Path = BOOTLOADER_DT) -> None:
        self.boot_dir = Path(boot_dir)
        self.reboot = reboot
        self.dt_dir = Path(dt_dir)

    @property
    def path(self) -> Path:
        return self.boot_dir / "autoboot.txt"

    def read(self) -> Autoboot:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise BootConfigError(f"{self.path}: missing (is {self.boot_dir} the autoboot partition?)") from None
        return parse_autoboot_txt(_decode(data, str(self.path)), str(self.path))

    def _write(self, committed: str, trial: str) -> None:
        self.read()  # refuse to replace a file we do not understand
        text = render_autoboot_txt(committed, trial)
        if self.path.read_text() != text:
            _write_atomic(self.path, text.encode())

    def start_trial(self, committed: str, trial: str) -> None:
        """The new slot is written: boot it once."""
        self._write(committed, trial)
        self.reboot("0 tryboot")

    def commit(self, slot: str) -> None:
        """The trial passed its checks: it becomes the default boot partition."""
        self._write(slot, "b" if slot == "a" else "a")

    def fall_back(self) -> None:
        """The trial failed its checks: a normal reboot boots the committed slot."""
        self.reboot("0")

    def booted(self) -> Booted:
        return read_bootloader(self.dt_dir)
