"""The standard PC devices on a :class:`Machine`: COM1, debug console, debug exit, i8042, CMOS, fw_cfg, HPET."""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

from hvcore.vmm import smbios as smbios_
from hvcore.vmm.devices import I8042, AcpiPm, Cmos, DebugConsole, DebugExit, FwCfg, Hpet, PcTestdev, Uart16550
from hvcore.vmm.machine import HIGH_RAM_START, Machine
from hvcore.vmm.pci import add_pci_host

__all__ = ["PcDevices", "add_pc_devices"]


@dataclass(frozen=True)
class PcDevices:
    """The devices :func:`add_pc_devices` plugged in."""

    uart: Uart16550
    debugcon: DebugConsole
    debug_exit: DebugExit
    i8042: I8042
    cmos: Cmos
    fw_cfg: FwCfg
    testdev: PcTestdev
    acpi_pm: AcpiPm
    hpet: Hpet | None = None
    """``None`` when ``add_pc_devices`` was told ``hpet=False``."""


def add_pc_devices(
    machine: Machine,
    *,
    serial: BinaryIO | None = None,
    serial_input: BinaryIO | None = None,
    debugcon: BinaryIO | None = None,
    hpet: bool = True,
    pci: bool = True,
) -> PcDevices:
    """Plug the PC's devices into ``machine``; serial and debug-console output go to the given streams.

    COM1 at 0x3f8 (GSI 4 when there is an irqchip), the debug console at 0x402 (SeaBIOS logs
    there), isa-debug-exit at 0xf4, the i8042 at 0x60/0x64 (0xfe to 0x64 resets: the machine
    stops), CMOS/RTC at 0x70 with the memory-size registers, fw_cfg at 0x510 (DMA at 0x514) with
    RAM size, CPU count, SeaBIOS's no-boot-menu setting and SMBIOS tables (:mod:`hvcore.vmm.smbios`),
    QEMU's pc-testdev (0xE0-0xEB, interrupt lines at 0x2000: what kvm-unit-tests expect beside
    isa-debug-exit), and (unless
    ``hpet`` is false, as QEMU's ``-machine hpet=off``) the HPET at 0xFED00000, its legacy route
    taking IRQ 0 from the PIT, the ACPI PM1 registers at 0x600 that the ACPI tables point at
    (``hvcore.vmm.devices.acpi_pm``: power-off), and (unless ``pci`` is false) the PCI bus: the
    i440FX host bridge and PIIX3 (:mod:`hvcore.vmm.pci`), where ``add_virtio_pci`` plugs devices.
    Firmware loaded afterwards finds the machine's ACPI tables in fw_cfg.
    """
    host = machine.device_host
    uart = Uart16550(output=serial, input=serial_input, irq=machine.irq(Uart16550.COM1_GSI))
    machine.add_io_device(Uart16550.COM1, Uart16550.LENGTH, uart)
    console = DebugConsole(output=debugcon)
    machine.add_io_device(DebugConsole.PORT, 1, console)
    debug_exit = DebugExit(host)
    machine.add_io_device(DebugExit.PORT, 1, debug_exit)
    i8042 = I8042(host)
    for base, length, port in i8042.ports():
        machine.add_io_device(base, length, port)
    cmos = Cmos(machine.ram_size, machine.high_ram_size, machine.cpus)
    machine.add_io_device(Cmos.PORT, 2, cmos)
    fw_cfg = FwCfg(dma_memory=machine)
    fw_cfg.set_ram_size(machine.ram_size + machine.high_ram_size)
    fw_cfg.set_cpus(machine.cpus)
    fw_cfg.seabios_defaults()
    smbios = _smbios(machine)
    fw_cfg.add_file(smbios_.TABLES_FILE, smbios.tables)
    fw_cfg.add_file(smbios_.ANCHOR_FILE, smbios.anchor)
    for base, length, port in fw_cfg.ports():
        machine.add_io_device(base, length, port)
    machine.fw_cfg = fw_cfg
    testdev = PcTestdev(host)
    for base, length, port in testdev.ports():
        machine.add_io_device(base, length, port)
    acpi_pm = AcpiPm(host)
    machine.add_io_device(AcpiPm.PORT, AcpiPm.LENGTH, acpi_pm)
    timer: Hpet | None = None
    if hpet:
        timer = Hpet(host, pit_legacy=machine.set_pit_hpet_legacy)
        machine.add_mmio_device(Hpet.BASE, Hpet.LENGTH, timer)
    if pci and machine.pci is None:
        add_pci_host(machine)
    return PcDevices(uart, console, debug_exit, i8042, cmos, fw_cfg, testdev, acpi_pm, timer)


def _smbios(machine: Machine) -> smbios_.Smbios:
    """SMBIOS tables for the machine's vCPUs and RAM, each processor ID from the first vCPU's CPUID."""
    leaf1 = next((e for e in machine.vcpus[0].get_cpuid() if e.function == 1 and e.index == 0), None)
    memory = [(0, machine.ram_size)]
    if machine.high_ram_size:
        memory.append((HIGH_RAM_START, machine.high_ram_size))
    return smbios_.build_smbios(
        cpus=machine.cpus,
        memory=memory,
        cpuid_signature=leaf1.eax if leaf1 else 0,
        cpuid_features=leaf1.edx if leaf1 else 0,
    )
