"""The standard PC devices on a :class:`Machine`: COM1, debug console, debug exit, i8042, CMOS, fw_cfg, HPET,
ACPI PM1, GPE0 and CPU hotplug registers, PCI."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from hvcore.errors import StateError
from hvcore.vmm import smbios as smbios_
from hvcore.vmm.acpi.tables import SCI_IRQ
from hvcore.vmm.devices import I8042, AcpiPm, Cmos, DebugConsole, DebugExit, FwCfg, Hpet, PcTestdev, Uart16550
from hvcore.vmm.devices.cpu_hotplug import CpuHotplug, Gpe0Block
from hvcore.vmm.devices.pm_timer import PmTimer
from hvcore.vmm.machine import HIGH_RAM_START, Machine
from hvcore.vmm.pci import add_pci_host
from hvcore.vmm.pci.pm import Piix4Pm, add_power_management

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
    gpe0: Gpe0Block | None = None
    """The GPE0 block (SCI on IRQ 9); ``None`` when ``add_pc_devices`` was told ``cpu_hotplug=False``."""
    cpu_hotplug: CpuHotplug | None = None
    """The ACPI CPU hotplug registers (also ``machine.cpu_hotplug``); ``None`` with ``cpu_hotplug=False``."""
    pm_timer: PmTimer | None = None
    """The ACPI PM timer (PM block + 8)."""
    power_management: Piix4Pm | None = None
    """PIIX4's PM function (00:01.3), with the APM ports' SMI; ``None`` with ``pci=False``."""


def add_pc_devices(
    machine: Machine,
    *,
    serial: BinaryIO | None = None,
    serial_input: BinaryIO | None = None,
    debugcon: BinaryIO | None = None,
    hpet: bool = True,
    pci: bool = True,
    cpu_hotplug: bool = True,
) -> PcDevices:
    """Plug the PC's devices into ``machine``; serial and debug-console output go to the given streams.

    COM1 at 0x3f8 (GSI 4 when there is an irqchip), the debug console at 0x402 (SeaBIOS logs
    there), isa-debug-exit at 0xf4, the i8042 at 0x60/0x64 (0xfe to 0x64 resets: the machine
    stops), CMOS/RTC at 0x70 with the memory-size registers, fw_cfg at 0x510 (DMA at 0x514) with
    RAM size, CPU count, SeaBIOS's no-boot-menu setting and SMBIOS tables (:mod:`hvcore.vmm.smbios`),
    QEMU's pc-testdev (0xE0-0xEB, interrupt lines at 0x2000: what kvm-unit-tests expect beside
    isa-debug-exit), and (unless
    ``hpet`` is false, as QEMU's ``-machine hpet=off``) the HPET at 0xFED00000, its legacy route
    taking IRQ 0 from the PIT, the ACPI PM1 registers and PM timer at 0x600 that the ACPI tables
    point at (``hvcore.vmm.devices.acpi_pm``: power-off), and (unless ``pci`` is false) the PCI bus:
    the i440FX host bridge (its SMRAM register maps the SMRAM window), PIIX3 and PIIX4's PM function
    (:mod:`hvcore.vmm.pci`: it decodes the PM registers where PMBA says, and the APM port 0xB2
    raises SMIs once firmware enables them), where ``add_virtio_pci`` plugs devices,
    and (unless ``cpu_hotplug`` is false) the GPE0 block at 0xAFE0 and QEMU's CPU hotplug registers
    at 0x0CD8 (:mod:`hvcore.vmm.devices.cpu_hotplug`: the guest hears of ``plug_vcpu`` and
    ``request_vcpu_unplug``, and its ``_EJ0`` unplugs the vCPU). CMOS and fw_cfg count the vCPUs
    present now (fw_cfg's maximum: all of them), as QEMU's boot CPUs. Firmware loaded afterwards
    finds the machine's ACPI tables in fw_cfg.
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
    present = machine.cpus - len(machine.unplugged)
    cmos = Cmos(machine.ram_size, machine.high_ram_size, present)
    machine.add_io_device(Cmos.PORT, 2, cmos)
    fw_cfg = FwCfg(dma_memory=machine)
    fw_cfg.set_ram_size(machine.ram_size + machine.high_ram_size)
    fw_cfg.set_cpus(present, max_cpus=machine.cpus)
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
    acpi_pm, pm_timer = AcpiPm(host), PmTimer(host)
    power_management: Piix4Pm | None = None
    if pci:
        power_management = add_power_management(machine, machine.pci or add_pci_host(machine), acpi_pm, pm_timer)
    else:
        machine.add_io_device(AcpiPm.PORT, AcpiPm.LENGTH, acpi_pm)
        machine.add_io_device(AcpiPm.PORT + AcpiPm.TIMER_OFFSET, PmTimer.LENGTH, pm_timer)
    timer: Hpet | None = None
    if hpet:
        timer = Hpet(host, pit_legacy=machine.set_pit_hpet_legacy)
        machine.add_mmio_device(Hpet.BASE, Hpet.LENGTH, timer)
    gpe0: Gpe0Block | None = None
    hotplug: CpuHotplug | None = None
    if cpu_hotplug:
        gpe0 = Gpe0Block(machine.irq(SCI_IRQ))
        machine.add_io_device(Gpe0Block.PORT, Gpe0Block.LENGTH, gpe0)
        present_ids = set(range(machine.cpus)) - machine.unplugged
        hotplug = CpuHotplug(machine.cpus, gpe0, present=present_ids, eject=_unplug_ejected(machine))
        machine.add_io_device(CpuHotplug.PORT, CpuHotplug.LENGTH, hotplug)
        machine.cpu_hotplug = hotplug
    return PcDevices(
        uart,
        console,
        debug_exit,
        i8042,
        cmos,
        fw_cfg,
        testdev,
        acpi_pm,
        timer,
        gpe0,
        hotplug,
        pm_timer,
        power_management,
    )


def _unplug_ejected(machine: Machine) -> Callable[[int], None]:
    """What a guest's eject does: unplug the vCPU (unless the VMM took it out meanwhile)."""

    def eject(vcpu_id: int) -> None:
        with contextlib.suppress(StateError):  # unplugged already
            machine.unplug_vcpu(vcpu_id)

    return eject


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
