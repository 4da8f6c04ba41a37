"""Device models for the portable VMM layer, each a :class:`hvcore.vmm.device.Device` on the IO or MMIO bus.

| class | ports or MMIO (base, length) | what |
|---|---|---|
| :class:`Uart16550` | 0x3F8, 8 (COM1, GSI 4) | 16550A serial port |
| :class:`DebugConsole` | 0x402, 1 | debug console (reads 0xE9) |
| :class:`DebugExit` | 0xF4, 1 | QEMU isa-debug-exit: stop with status ``(v << 1) | 1`` |
| :class:`I8042` | 0x60, 1 and 0x64, 1 (``ports()``) | keyboard controller (reset, A20) and its :class:`Ps2Keyboard` |
| :class:`Cmos` | 0x70, 2 | CMOS RAM, RTC, memory sizes for the BIOS |
| :class:`FwCfg` | 0x510, 2 (+ 0x514, 8 with DMA; ``ports()``) | QEMU fw_cfg |
| :class:`PcTestdev` | 0xE0, 4; 0xE4, 4; 0xE8, 4; 0x2000, 24 (``ports()``) | QEMU pc-testdev: kvm-unit-tests' GSIs |
| :class:`Hpet` | MMIO 0xFED00000, 0x400 | HPET: 100 MHz counter, 3 timers (IOAPIC pins, legacy IRQ 0/8) |
| :class:`AcpiPm` | 0x600, 6 | ACPI PM1 event and control registers (always ACPI mode; power-off) |
"""

from hvcore.vmm.devices.acpi_pm import AcpiPm
from hvcore.vmm.devices.cmos import Cmos
from hvcore.vmm.devices.debug_exit import DebugExit
from hvcore.vmm.devices.debugcon import DebugConsole
from hvcore.vmm.devices.fw_cfg import DmaMemory, FwCfg, FwCfgDma, FwCfgKey
from hvcore.vmm.devices.hpet import Hpet
from hvcore.vmm.devices.i8042 import I8042, I8042Port
from hvcore.vmm.devices.ps2 import Ps2Keyboard
from hvcore.vmm.devices.testdev import PcTestdev, PcTestdevPort
from hvcore.vmm.devices.uart import Uart16550

__all__ = [
    "I8042",
    "AcpiPm",
    "Cmos",
    "DebugConsole",
    "DebugExit",
    "DmaMemory",
    "FwCfg",
    "FwCfgDma",
    "FwCfgKey",
    "Hpet",
    "I8042Port",
    "PcTestdev",
    "PcTestdevPort",
    "Ps2Keyboard",
    "Uart16550",
]
