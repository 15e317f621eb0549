"""drivers.max17048 against a fake SMBus that answers register words (SMBus byte order)."""
from __future__ import annotations

import errno

import pytest

from drivers.battery import GaugeError, validate
from drivers.max17048 import ADDRESS, MAX17048, soc_percent, swap16, vcell_volts


class FakeBus:
    def __init__(self, regs: dict[int, int], fail: set[int] = frozenset()):
        self.regs = regs  # big-endian register values, as in the datasheet
        self.fail = set(fail)
        self.reads: list[tuple[int, int]] = []

    def read_word_data(self, addr: int, reg: int) -> int:
        self.reads.append((addr, reg))
        if reg in self.fail:
            raise OSError(errno.EREMOTEIO, "Remote I/O error")
        return swap16(self.regs[reg])  # SMBus returns the low byte first


def regs(vcell=0xC350, soc=0x4B80, version=0x0012):
    return {0x02: vcell, 0x04: soc, 0x08: version}


def test_conversion_of_register_values():
    assert vcell_volts(0xC350) == pytest.approx(50000 * 78.125e-6)  # 3.90625 V
    assert soc_percent(0x4B80) == pytest.approx(75.5)
    assert swap16(0x1234) == 0x3412


def test_read_gives_a_valid_reading_and_charging_from_the_callable():
    bus = FakeBus(regs())
    docked = [False]
    g = MAX17048(charging=lambda: docked[0], bus=bus)
    r = validate(g.read())
    assert r.voltage == pytest.approx(3.90625) and r.percent == pytest.approx(75.5)
    assert r.charging is False
    docked[0] = True
    assert g.read().charging is True
    assert {a for a, _ in bus.reads} == {ADDRESS}
    assert g.version == 0x0012


def test_full_cell_overshoot_is_clamped_but_nonsense_is_left_for_validate():
    assert MAX17048(bus=FakeBus(regs(soc=0x6480))).read().percent == 100.0  # 100.5 %
    r = MAX17048(bus=FakeBus(regs(soc=0xFF00))).read()  # 255 %
    with pytest.raises(GaugeError):
        validate(r)


@pytest.mark.parametrize("reg", [0x02, 0x04, 0x08])
def test_i2c_error_is_a_gauge_error(reg):
    with pytest.raises(GaugeError, match=f"0x{reg:02x}"):
        MAX17048(bus=FakeBus(regs(), fail={reg})).read()


def test_a_stuck_bus_is_not_a_gauge():
    with pytest.raises(GaugeError, match="no gauge"):
        MAX17048(bus=FakeBus(regs(version=0xFFFF))).read()


def test_charging_flag_failure_is_a_gauge_error():
    def broken():
        raise RuntimeError("gpio gone")
    with pytest.raises(GaugeError, match="charging"):
        MAX17048(charging=broken, bus=FakeBus(regs())).read()


def test_without_smbus2_opening_the_bus_is_a_gauge_error(monkeypatch):
    import builtins
    real = builtins.__import__

    def no_smbus(name, *a, **k):
        if name == "smbus2":
            raise ImportError("No module named 'smbus2'")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_smbus)
    with pytest.raises(GaugeError, match="I2C bus 1"):
        MAX17048().read()
