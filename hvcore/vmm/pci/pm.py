"""00:01.3: PIIX4's power-management function, as QEMU's ``PIIX4_PM`` on its PC machine.

- **PMBA** (0x40, 64 bytes of IO, bits 15:6) and **PMREGMISC** (0x80, bit 0 enables it): the ACPI
  PM1 registers (:class:`~hvcore.vmm.devices.acpi_pm.AcpiPm`) at PMBA and the PM timer
  (:class:`~hvcore.vmm.devices.pm_timer.PmTimer`) at PMBA + 8 decode there; moving PMBA moves
  them. SeaBIOS programs PMBA to 0x600, where the FADT says they are; a machine booted without
  firmware gets the same values from :func:`hvcore.vmm.pc.add_pc_devices`.
- **DEVACTB** (0x58): bit 25, APMC_EN, makes a write to the APM control port (0xB2) raise an SMI
  (``on_smi``). SeaBIOS sets it when it installs its SMM handler; on a machine without SMM the bit
  is set from reset, as QEMU does, so firmware takes SMM set-up as done and never waits for an
  SMI that cannot come.
- SMBus (0x90, 0xD2) keeps what is written and decodes nothing.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from hvcore.errors import BusConflict
from hvcore.log import get_logger
from hvcore.vmm.devices.acpi_pm import AcpiPm
from hvcore.vmm.devices.apm import ApmPorts
from hvcore.vmm.devices.pm_timer import PmTimer
from hvcore.vmm.pci.chipset import INTEL
from hvcore.vmm.pci.function import PciFunction

if TYPE_CHECKING:
    from hvcore.vmm.machine import Machine
    from hvcore.vmm.pci.host import PciHost

__all__ = ["Piix4Pm", "add_power_management"]

_PMBA, _DEVACTB, _PMREGMISC, _SMBUS_BASE, _SMBUS_CONFIG = 0x40, 0x58, 0x80, 0x90, 0xD2
_APMC_EN: Final = 1 << 25
_ACPI_DISABLE, _ACPI_ENABLE = 0xF0, 0xF1  # APM commands the PM function takes itself (no SMI)
_log = get_logger("vmm.pci")


class Piix4Pm(PciFunction):
    """The PM function; ``remap(base)`` places the PM registers at ``base`` (None: decoding off)."""

    def __init__(
        self,
        pm: AcpiPm,
        timer: PmTimer,
        remap: Callable[[int | None], None],
        on_smi: Callable[[], None],
        *,
        smm: bool,
    ) -> None:
        super().__init__(
            "piix4-pm", vendor_id=INTEL, device_id=0x7113, class_code=0x068000, revision=3, interrupt_pin=1
        )
        self.pm, self.timer = pm, timer
        self._remap, self._on_smi = remap, on_smi
        self.config[_PMBA] = 0x01  # an IO base: read-only bit 0
        self._writable[_PMBA : _PMBA + 2] = b"\xc0\xff"
        self._writable[_DEVACTB : _DEVACTB + 4] = b"\xff" * 4
        self._writable[_PMREGMISC] = 0x01
        self._writable[_SMBUS_BASE : _SMBUS_BASE + 2] = b"\xf0\xff"
        self._writable[_SMBUS_CONFIG] = 0xFF
        self.smm = smm
        """Whether an APM command can raise an SMI (the machine has SMM)."""
        if not smm:
            struct.pack_into("<I", self.config, _DEVACTB, _APMC_EN)
        self._decoding: int | None = None

    @property
    def base(self) -> int | None:
        """Where the PM registers decode now (None while PMREGMISC is off)."""
        return self._decoding

    def program(self, base: int = AcpiPm.PORT) -> None:
        """Set PMBA and turn decoding on, as firmware does (for a machine booted without it)."""
        self.config_write(_PMBA, 4, base | 1)
        self.config_write(_PMREGMISC, 1, 1)

    def config_write(self, offset: int, size: int, value: int) -> None:
        """A configuration write; PMBA and PMREGMISC move the PM registers at once."""
        super().config_write(offset, size, value)
        end = offset + size
        if (offset < _PMBA + 4 and end > _PMBA) or (offset <= _PMREGMISC < end):
            enabled = self.config[_PMREGMISC] & 1
            base = struct.unpack_from("<I", self.config, _PMBA)[0] & 0xFFC0 if enabled else None
            if base != self._decoding:
                self._decoding = base
                self._remap(base)

    def apm_command(self, command: int) -> None:
        """A write to the APM control port: an SMI when APMC_EN is set (ACPI enable/disable never raise one)."""
        if command in (_ACPI_DISABLE, _ACPI_ENABLE):
            return  # the machine is always in ACPI mode (AcpiPm: SCI_EN reads 1)
        if self.smm and struct.unpack_from("<I", self.config, _DEVACTB)[0] & _APMC_EN:
            self._on_smi()


def add_power_management(machine: Machine, host: PciHost, pm: AcpiPm, timer: PmTimer) -> Piix4Pm:
    """Plug the PM function in at 00:01.3 with ``pm`` and ``timer`` at ``AcpiPm.PORT``, and the APM
    ports at 0xB2, whose commands raise SMIs on vCPU 0 once firmware sets APMC_EN (with SMM)."""

    def unmap() -> None:
        for device in (pm, timer):
            if any(entry.device is device for entry in machine.io_bus.ranges()):
                machine.io_bus.unregister(device)

    def remap(base: int | None) -> None:
        unmap()
        if base is None:
            return
        try:
            machine.add_io_device(base, AcpiPm.LENGTH, pm)
            machine.add_io_device(base + AcpiPm.TIMER_OFFSET, PmTimer.LENGTH, timer)
        except BusConflict as exc:  # as a BAR over another device: it decodes nothing until moved
            unmap()
            _log.warning("piix4-pm: PMBA %#x decodes nothing: %s", base, exc.message)

    function = Piix4Pm(pm, timer, remap, lambda: machine.raise_smi(0), smm=machine.smm)
    host.plug(function, 1, 3)
    function.program()
    machine.add_io_device(ApmPorts.PORT, ApmPorts.LENGTH, ApmPorts(function.apm_command))
    return function
