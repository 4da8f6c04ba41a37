"""The ACPI PM1 registers the FADT points at (ACPI 6.5, 4.8.3): event status / enable and control.

The machine is always in ACPI mode (``SCI_EN`` reads 1; the FADT has no SMI command port). Only
power-off does anything: writing ``SLP_EN`` with the ``\\_S5`` sleep type (:data:`SLEEP_TYPE_S5`,
as the DSDT says) stops the machine with ``StopRequest("poweroff")``; other sleep states are not
offered. Register it at :data:`AcpiPm.PORT`, :data:`AcpiPm.LENGTH` ports.
"""

from __future__ import annotations

import threading
from typing import ClassVar, Final

from hvcore.vmm.device import DeviceHost, StopRequest, read_registers

__all__ = ["SLEEP_TYPE_S5", "AcpiPm"]

SLEEP_TYPE_S5: Final = 0
"""``SLP_TYP`` for S5 (soft off), the value the DSDT's ``\\_S5`` package gives."""
_SCI_EN, _SLP_EN = 1, 1 << 13
_STATUS, _ENABLE, _CONTROL = 0, 2, 4


class AcpiPm:
    """PM1a event block (status, enable: 2 bytes each) and PM1a control block (2 bytes), at one base port."""

    PORT: ClassVar[int] = 0x600
    """Where the PM block is: PIIX4's PMBA as SeaBIOS programs it (its ``PORT_ACPI_PM_BASE``)."""
    LENGTH: ClassVar[int] = 6
    TIMER_OFFSET: ClassVar[int] = 8
    """Where the PM timer (:class:`~hvcore.vmm.devices.pm_timer.PmTimer`) sits in the PM block."""
    POWEROFF_REASON: ClassVar[str] = "poweroff"
    """The ``StopRequest.reason`` of a power-off."""

    def __init__(self, host: DeviceHost, name: str = "acpi-pm") -> None:
        self.name = name
        self.host = host
        self._lock = threading.Lock()
        self._registers = bytearray(self.LENGTH)
        self._registers[_CONTROL] = _SCI_EN

    def read(self, offset: int, size: int) -> int:
        """A little-endian read of the registers (all-ones past them)."""
        with self._lock:
            return read_registers(self._registers, offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        """Status bits clear where written 1; enable bits take the value; control may power off."""
        data = value.to_bytes(size, "little")
        stop = False
        with self._lock:
            for index, byte in enumerate(data):
                at = offset + index
                if at >= self.LENGTH:
                    break
                if at < _ENABLE:
                    self._registers[at] &= ~byte & 0xFF
                elif at < _CONTROL:
                    self._registers[at] = byte
                else:
                    self._registers[at] = byte | (_SCI_EN if at == _CONTROL else 0)
            control = int.from_bytes(self._registers[_CONTROL:], "little")
            if control & _SLP_EN:
                self._registers[_CONTROL + 1] &= ~(_SLP_EN >> 8) & 0xFF  # SLP_EN reads 0
                stop = (control >> 10) & 7 == SLEEP_TYPE_S5
        if stop:
            self.host.request_stop(StopRequest(self.POWEROFF_REASON))
