"""The PC's CMOS RAM and real-time clock (Motorola MC146818): ``Cmos``.

Two ports at 0x70: the index register (bit 7 masks NMI and is not part of the index; reads
answer 0xFF, as QEMU's) and the data register at 0x71, over 128 bytes:

- 0x00-0x09 and the century at 0x32: the clock, BCD unless status B bit 2 (binary) is set,
  24-hour unless status B bit 1 is clear (then hours 1-12 with bit 7 = PM); day of week 1 =
  Sunday;
- 0x01/0x03/0x05 (alarm) are plain storage: no alarm fires;
- status A (0x26 at reset: 32.768 kHz divider, 1024 Hz rate): the update-in-progress bit reads
  set during the last 244 us of each second, as QEMU's;
- status B (0x02 at reset: 24-hour BCD): while bit 7 (SET) is on the clock registers hold what
  the guest writes; clearing it starts the clock from them. A clock register written while SET
  is off sets the time at once, as on QEMU;
- status C: the update-ended and periodic flags (with IRQF when enabled in status B), computed
  when read from the time passed since the previous read; reading clears them;
- status D: 0x80 (battery good), read-only;
- the memory sizes QEMU writes for SeaBIOS: 0x15/0x16 base memory (KiB, at most 640),
  0x17/0x18 and 0x30/0x31 memory from 1 MiB (KiB, capped 0xFFFF), 0x34/0x35 memory from 16
  MiB below 4 GiB (64 KiB units, capped 0xFFFF), 0x5B-0x5D memory above 4 GiB (64 KiB units,
  24 bits), 0x5F the CPU count - 1 (0 above 255 CPUs), 0x14 equipment byte (FPU present);
- every other byte is battery-backed RAM the guest may read and write.

Time is the ``clock`` callback's value (default: the host's UTC time) plus an offset that the
guest's settings adjust; the clock's wall-clock fields are what the guest reads. No interrupt
(IRQ 8) is generated: a guest that waits for RTC interrupts must poll status C instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import ClassVar

from hvcore.errors import InvalidArgument

__all__ = ["Cmos"]

_SECONDS = 0x00
_MINUTES = 0x02
_HOURS = 0x04
_WEEKDAY = 0x06
_DAY = 0x07
_MONTH = 0x08
_YEAR = 0x09
_REG_A = 0x0A
_REG_B = 0x0B
_REG_C = 0x0C
_REG_D = 0x0D
_EQUIPMENT = 0x14
_CENTURY = 0x32
_CLOCK_REGISTERS = (_SECONDS, _MINUTES, _HOURS, _WEEKDAY, _DAY, _MONTH, _YEAR, _CENTURY)

_A_UIP = 0x80
_A_DIVIDER = 0x70
_A_DIVIDER_NORMAL = 0x20
_A_RATE = 0x0F
_B_SET = 0x80
_B_PIE = 0x40
_B_AIE = 0x20
_B_UIE = 0x10
_B_BINARY = 0x04
_B_24H = 0x02
_C_IRQF = 0x80
_C_PF = 0x40
_C_UF = 0x10
_D_VRT = 0x80

_UIP_MICROSECONDS = 244
_KIB = 1024
_MIB = 1024 * _KIB
_GIB = 1024 * _MIB


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _periodic_hz(rate: int) -> int:
    """The periodic interrupt frequency of status A rate bits ``rate`` (non-zero) at 32.768 kHz."""
    if rate == 1:
        return 256
    if rate == 2:
        return 128
    return 32768 >> (rate - 1)


class Cmos:
    """CMOS RAM and RTC: register at ``PORT`` (``LENGTH`` ports); RAM sizes in bytes."""

    PORT: ClassVar[int] = 0x70
    """Where the index port goes (the data port is the next one)."""
    LENGTH: ClassVar[int] = 2
    """How many ports to register."""

    def __init__(
        self,
        ram_below_4g: int,
        ram_above_4g: int = 0,
        cpus: int = 1,
        clock: Callable[[], datetime] | None = None,
        name: str = "cmos",
    ) -> None:
        if not 0 <= ram_below_4g <= 4 * _GIB:
            raise InvalidArgument(f"{name}: ram_below_4g {ram_below_4g:#x} is not within 0..4 GiB", operation="Cmos")
        if not 0 <= ram_above_4g < (1 << 24) * 64 * _KIB:
            raise InvalidArgument(
                f"{name}: ram_above_4g {ram_above_4g:#x} is not within 0..1 TiB (24 bits of 64 KiB)", operation="Cmos"
            )
        if cpus < 1:
            raise InvalidArgument(f"{name}: cpus must be at least 1, not {cpus}", operation="Cmos")
        self.name = name
        self._clock = clock if clock is not None else _utc_now
        self._lock = threading.Lock()
        self._index = 0
        self._nmi_masked = False
        self._offset = timedelta(0)
        self._held: dict[int, int] | None = None
        self._ram = bytearray(128)
        self._ram[_REG_A] = _A_DIVIDER_NORMAL | 0x06
        self._ram[_REG_B] = _B_24H
        self._ram[_REG_D] = _D_VRT
        self._ram[_EQUIPMENT] = 0x02
        self._store_memory_sizes(ram_below_4g, ram_above_4g, cpus)
        self._last_c = self._now()

    def _store_memory_sizes(self, below: int, above: int, cpus: int) -> None:
        def put16(index: int, value: int) -> None:
            self._ram[index] = value & 0xFF
            self._ram[index + 1] = (value >> 8) & 0xFF

        put16(0x15, min(below // _KIB, 640))
        extended = min(max(below - _MIB, 0) // _KIB, 0xFFFF)
        put16(0x17, extended)
        put16(0x30, extended)
        put16(0x34, min(max(below - 16 * _MIB, 0) // (64 * _KIB), 0xFFFF))
        high = above // (64 * _KIB)
        self._ram[0x5B] = high & 0xFF
        self._ram[0x5C] = (high >> 8) & 0xFF
        self._ram[0x5D] = (high >> 16) & 0xFF
        self._ram[0x5F] = cpus - 1 if cpus <= 0xFF else 0

    # -- the Device protocol -------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        """Port 0 answers 0xFF, port 1 the selected byte; a wider access reads both in turn."""
        value = 0
        with self._lock:
            for i in range(size):
                port = offset + i
                byte = 0xFF
                if port == 1:
                    byte = self._read_data()
                value |= byte << (8 * i)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        """Port 0 selects the byte (bit 7: NMI mask), port 1 writes it; a wider access does both."""
        with self._lock:
            for i in range(size):
                port = offset + i
                byte = (value >> (8 * i)) & 0xFF
                if port == 0:
                    self._index = byte & 0x7F
                    self._nmi_masked = bool(byte & 0x80)
                elif port == 1:
                    self._write_data(byte)

    # -- host side -----------------------------------------------------------------------

    @property
    def nmi_masked(self) -> bool:
        """Bit 7 of the last index write: the guest masked NMIs (nothing here raises one)."""
        with self._lock:
            return self._nmi_masked

    def now(self) -> datetime:
        """The time the guest's clock shows (naive, in the clock callback's wall time)."""
        with self._lock:
            return self._now()

    def get_byte(self, index: int) -> int:
        """Read CMOS RAM byte ``index`` (0x0E-0x7F, not the century) without side effects."""
        self._check_ram_index(index)
        with self._lock:
            return self._ram[index]

    def set_byte(self, index: int, value: int) -> None:
        """Preset CMOS RAM byte ``index`` (0x0E-0x7F, not the century), e.g. the boot order."""
        self._check_ram_index(index)
        if not 0 <= value <= 0xFF:
            raise InvalidArgument(f"{self.name}: {value:#x} is not a byte", operation="set_byte")
        with self._lock:
            self._ram[index] = value

    def _check_ram_index(self, index: int) -> None:
        if not 0x0E <= index <= 0x7F or index == _CENTURY:
            raise InvalidArgument(
                f"{self.name}: byte {index:#x} is not plain CMOS RAM (0x0e-0x7f, except the century 0x32)",
                operation="cmos",
            )

    # -- with the lock held ---------------------------------------------------------------

    def _now(self) -> datetime:
        return self._clock().replace(tzinfo=None) + self._offset

    def _encode(self, value: int) -> int:
        if self._ram[_REG_B] & _B_BINARY:
            return value
        return ((value // 10) << 4) | (value % 10)

    def _decode(self, value: int, b: int) -> int:
        if b & _B_BINARY:
            return value
        return (value >> 4) * 10 + (value & 0x0F)

    def _clock_registers(self, when: datetime) -> dict[int, int]:
        if self._ram[_REG_B] & _B_24H:
            hours = self._encode(when.hour)
        else:
            hours = self._encode(when.hour % 12 or 12) | (0x80 if when.hour >= 12 else 0)
        return {
            _SECONDS: self._encode(when.second),
            _MINUTES: self._encode(when.minute),
            _HOURS: hours,
            _WEEKDAY: self._encode(when.isoweekday() % 7 + 1),
            _DAY: self._encode(when.day),
            _MONTH: self._encode(when.month),
            _YEAR: self._encode(when.year % 100),
            _CENTURY: self._encode(when.year // 100),
        }

    def _set_clock(self, registers: dict[int, int], b: int) -> None:
        """Start the clock from ``registers`` (in status B ``b``'s format); invalid dates are ignored."""
        raw_hours = registers[_HOURS]
        if b & _B_24H:
            hour = self._decode(raw_hours, b)
        else:
            hour = self._decode(raw_hours & 0x7F, b) % 12 + (12 if raw_hours & 0x80 else 0)
        try:
            when = datetime(
                self._decode(registers[_CENTURY], b) * 100 + self._decode(registers[_YEAR], b),
                self._decode(registers[_MONTH], b),
                self._decode(registers[_DAY], b),
                hour,
                self._decode(registers[_MINUTES], b),
                self._decode(registers[_SECONDS], b),
            )
        except ValueError:
            return  # a real RTC would count garbage; keeping the old time is kinder
        self._offset = when - self._clock().replace(tzinfo=None)
        self._last_c = when

    def _updating(self) -> bool:
        if self._ram[_REG_B] & _B_SET or (self._ram[_REG_A] & _A_DIVIDER) != _A_DIVIDER_NORMAL:
            return False
        return self._now().microsecond >= 1_000_000 - _UIP_MICROSECONDS

    def _status_c(self) -> int:
        now = self._now()
        last, self._last_c = self._last_c, now
        flags = 0
        running = not self._ram[_REG_B] & _B_SET and (self._ram[_REG_A] & _A_DIVIDER) == _A_DIVIDER_NORMAL
        if running and now.replace(microsecond=0) > last.replace(microsecond=0):
            flags |= _C_UF
        rate = self._ram[_REG_A] & _A_RATE
        if rate and now - last >= timedelta(seconds=1) / _periodic_hz(rate):
            flags |= _C_PF
        if flags & self._ram[_REG_B] & (_B_PIE | _B_AIE | _B_UIE):
            flags |= _C_IRQF
        return flags

    def _read_data(self) -> int:
        index = self._index
        if index in _CLOCK_REGISTERS:
            if self._held is not None:
                return self._held[index]
            return self._clock_registers(self._now())[index]
        if index == _REG_A:
            return (self._ram[_REG_A] & ~_A_UIP) | (_A_UIP if self._updating() else 0)
        if index == _REG_C:
            return self._status_c()
        return self._ram[index]

    def _write_data(self, value: int) -> None:
        index = self._index
        b = self._ram[_REG_B]
        if index in _CLOCK_REGISTERS:
            if self._held is not None:
                self._held[index] = value
            else:
                registers = self._clock_registers(self._now())
                registers[index] = value
                self._set_clock(registers, b)
        elif index == _REG_A:
            self._ram[_REG_A] = value & ~_A_UIP
        elif index == _REG_B:
            if value & _B_SET:
                if self._held is None:
                    self._held = self._clock_registers(self._now())
                value &= ~_B_UIE
            elif self._held is not None:
                held, self._held = self._held, None
                self._set_clock(held, b)  # in the format the registers were written in, as QEMU
            self._ram[_REG_B] = value
        elif index in (_REG_C, _REG_D):
            pass  # read-only
        else:
            self._ram[index] = value
