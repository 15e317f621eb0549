"""MAX17048 fuel gauge (Maxim/Analog Devices) on I2C, behind ``drivers.battery.Battery``.

Registers (16-bit, big-endian on the wire, address 0x36):

- ``VCELL`` 0x02: cell voltage, 78.125 µV per LSB (the full 16 bits).
- ``SOC``   0x04: state of charge, 1/256 % per LSB (high byte = whole percent).
- ``VERSION`` 0x08: production version (0x001_ on the MAX17048/9), read once to check
  that the chip answers.

SMBus word reads are little-endian, the chip sends big-endian: words are byte-swapped.
The gauge does not know whether the cell is charging; the caller passes a callable
(the dock/VBUS GPIO flag). ``smbus2`` is imported only when no bus is injected, so
this module loads anywhere. Every I2C failure becomes ``GaugeError``.
"""
from __future__ import annotations

from typing import Any, Callable

from drivers.battery import BatteryReading, GaugeError

ADDRESS = 0x36
REG_VCELL = 0x02
REG_SOC = 0x04
REG_VERSION = 0x08
VCELL_UV_PER_LSB = 78.125
SOC_PERCENT_PER_LSB = 1 / 256


def swap16(word: int) -> int:
    return ((word & 0xFF) << 8) | ((word >> 8) & 0xFF)


def vcell_volts(raw: int) -> float:
    """Big-endian VCELL register value → volts."""
    return raw * VCELL_UV_PER_LSB / 1_000_000


def soc_percent(raw: int) -> float:
    """Big-endian SOC register value → percent (may exceed 100 slightly on a full cell)."""
    return raw * SOC_PERCENT_PER_LSB


class MAX17048:
    """``read() -> BatteryReading``. ``bus`` is anything with ``read_word_data(addr, reg)``
    (an ``smbus2.SMBus``); without one, ``smbus2.SMBus(bus_number)`` is opened lazily."""

    def __init__(self, charging: Callable[[], bool] | None = None, *, bus: Any = None,
                 bus_number: int = 1, address: int = ADDRESS) -> None:
        self._charging = charging or (lambda: False)
        self._bus = bus
        self._bus_number = bus_number
        self.address = address
        self.version: int | None = None

    def _open(self) -> Any:
        if self._bus is None:
            try:
                import smbus2  # lazy: not installed off the Pi
                self._bus = smbus2.SMBus(self._bus_number)
            except (ImportError, OSError) as exc:
                raise GaugeError(f"cannot open I2C bus {self._bus_number}: {exc}") from exc
        return self._bus

    def _word(self, reg: int) -> int:
        bus = self._open()
        try:
            word = bus.read_word_data(self.address, reg)
        except OSError as exc:  # EREMOTEIO / ETIMEDOUT / EIO from the i2c driver
            raise GaugeError(f"MAX17048 at 0x{self.address:02x}: I2C read of register "
                             f"0x{reg:02x} failed: {exc}") from exc
        if not isinstance(word, int) or not 0 <= word <= 0xFFFF:
            raise GaugeError(f"MAX17048: register 0x{reg:02x} returned {word!r}")
        return swap16(word)

    def probe(self) -> int:
        """Read VERSION; raises GaugeError when nothing (or not a MAX1704x) answers."""
        v = self._word(REG_VERSION)
        if v in (0x0000, 0xFFFF):  # a stuck bus, not a gauge (real parts read 0x001_)
            raise GaugeError(f"MAX17048: VERSION reads 0x{v:04x}; no gauge is answering")
        self.version = v
        return v

    def read(self) -> BatteryReading:
        if self.version is None:
            self.probe()
        volts = vcell_volts(self._word(REG_VCELL))
        percent = soc_percent(self._word(REG_SOC))
        if 100.0 < percent <= 102.0:  # the gauge overshoots a little on a full cell
            percent = 100.0  # anything larger is left for battery.validate to refuse
        try:
            charging = bool(self._charging())
        except Exception as exc:  # a GPIO read failing is a gauge fault too
            raise GaugeError(f"charging flag unreadable: {exc}") from exc
        return BatteryReading(percent=round(percent, 2), voltage=round(volts, 6), charging=charging)

    def close(self) -> None:
        if self._bus is not None and hasattr(self._bus, "close"):
            self._bus.close()
        self._bus = None
