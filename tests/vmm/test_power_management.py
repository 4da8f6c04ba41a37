"""PIIX4's power-management function, the PM timer, the APM ports and the SMRAM register, on each backend.

The pieces SeaBIOS uses to set SMM up (``tests/vmm/test_smm_firmware.py`` boots it), each checked
through the guest's own ports: the function at 00:01.3 and its PMBA / PMREGMISC moving the ACPI PM
registers, the PM timer counting the VM clock at 3.579545 MHz, the FADT pointing at both, and the
SMRAM register deciding which address space maps the RAM at 0xA0000.
"""

from __future__ import annotations

import struct
import time

import pytest

from hvcore import Capability, Hypervisor, InvalidArgument, StateError, Unsupported
from hvcore.memory import SMM_ADDRESS_SPACE
from hvcore.vmm.acpi import build_acpi
from hvcore.vmm.devices import AcpiPm
from hvcore.vmm.devices.pm_timer import PM_TIMER_HZ
from hvcore.vmm.machine import Machine
from hvcore.vmm.pc import add_pc_devices
from hvcore.vmm.pci.host import CONFIG_PORT
from tests.vmm.test_acpi import ADDRESS, tables

PM_FUNCTION = 1 << 3 | 3  # 00:01.3
SCI_EN = 1


def conf1(machine: Machine, devfn: int, offset: int, value: int | None = None, size: int = 4) -> int:
    machine.io_bus.write(CONFIG_PORT, 4, 1 << 31 | devfn << 8 | offset & 0xFC)
    if value is not None:
        machine.io_bus.write(0xCFC + (offset & 3), size, value)
    return machine.io_bus.read(0xCFC + (offset & 3), size)


@pytest.fixture
def machine(hv: Hypervisor) -> Machine:
    m = Machine(hv, memory=16 << 20)
    add_pc_devices(m)
    return m


def test_the_pm_function_is_piix4s_and_moves_the_pm_registers(machine: Machine) -> None:
    with machine:
        assert conf1(machine, PM_FUNCTION, 0) == 0x7113_8086
        assert conf1(machine, PM_FUNCTION, 0x40) == AcpiPm.PORT | 1  # PMBA, as firmware programs it
        assert conf1(machine, PM_FUNCTION, 0x80, size=1) == 1  # PMREGMISC: decoding on
        assert machine.io_bus.read(AcpiPm.PORT + 4, 2) & SCI_EN
        conf1(machine, PM_FUNCTION, 0x40, 0xB000)
        assert conf1(machine, PM_FUNCTION, 0x40) == 0xB001  # bit 0 stays: an IO base
        assert machine.io_bus.read(0xB004, 2) & SCI_EN
        assert machine.io_bus.read(AcpiPm.PORT + 4, 2) == 0xFFFF  # nothing decodes the old base
        conf1(machine, PM_FUNCTION, 0x80, 0, size=1)
        assert machine.io_bus.read(0xB004, 2) == 0xFFFF  # PMREGMISC off: nothing decodes


def test_the_pm_timer_counts_the_vm_clock(machine: Machine) -> None:
    with machine:
        port = AcpiPm.PORT + AcpiPm.TIMER_OFFSET
        before, clock_before = machine.io_bus.read(port, 4), machine.clock()
        time.sleep(0.02)
        after, clock_after = machine.io_bus.read(port, 4), machine.clock()
        ticks = (after - before) & 0xFFFFFF
        expected = (clock_after - clock_before) * PM_TIMER_HZ // 1_000_000_000
        assert after < 1 << 24 and abs(ticks - expected) <= PM_TIMER_HZ // 100  # within the reads' own time


def test_the_fadt_points_at_the_pm_timer() -> None:
    fadt = tables(build_acpi(ADDRESS, 1))[b"FACP"][1]
    assert struct.unpack_from("<I", fadt, 76)[0] == AcpiPm.PORT + AcpiPm.TIMER_OFFSET  # PM_TMR_BLK
    assert fadt[91] == 4  # PM_TMR_LEN
    assert struct.unpack_from("<BBBBQ", fadt, 208) == (1, 32, 0, 0, AcpiPm.PORT + AcpiPm.TIMER_OFFSET)


def test_the_smram_register_decides_what_maps_0xa0000(machine: Machine) -> None:
    with machine:
        smm = machine.smm
        assert conf1(machine, 0, 0x72, size=1) == 0x02  # reset: closed, disabled (the VGA hole outside SMM)
        assert machine.smram.mapped == {0: False, SMM_ADDRESS_SPACE: False}
        conf1(machine, 0, 0x72, 0x4A, size=1)  # D_OPEN | G_SMRAME, as SeaBIOS while it installs its handler
        assert machine.smram.mapped == {0: True, SMM_ADDRESS_SPACE: smm}
        machine.write(0xA8000, b"handler")
        conf1(machine, 0, 0x72, 0x0A, size=1)  # closed: only SMM sees it
        assert machine.smram.mapped == {0: False, SMM_ADDRESS_SPACE: smm}
        assert machine.smram.read(0x8000, 7) == b"handler"
        slots = {(s.address_space, s.guest_address) for s in machine.vm.memory_slots()}
        assert (0, 0xA0000) not in slots and ((SMM_ADDRESS_SPACE, 0xA0000) in slots) == smm
        assert conf1(machine, 0, 0x72, 0xFF, size=1) == 0x7A  # C_BASE_SEG is read-only


def test_apm_commands_raise_an_smi_only_once_firmware_enables_it(machine: Machine) -> None:
    with machine:
        apmc_enabled = conf1(machine, PM_FUNCTION, 0x58) >> 25 & 1
        assert apmc_enabled == (not machine.smm)  # without SMM it reads set: firmware skips SMM set-up
        machine.io_bus.write(0xB3, 1, 0x5A)
        assert machine.io_bus.read(0xB2, 2) == 0x5A00  # APMS keeps what is written
        if machine.smm:
            machine.io_bus.write(0xB2, 1, 0x00)
            assert machine.pending_smis == frozenset()  # APMC_EN clear: nothing
            conf1(machine, PM_FUNCTION, 0x58, 1 << 25)
            machine.io_bus.write(0xB2, 1, 0x00)
            assert machine.pending_smis == {0}  # vCPU 0 takes it before its next run


def test_raise_smi_refuses_what_cannot_take_one(machine: Machine) -> None:
    with machine:
        with pytest.raises(InvalidArgument):
            machine.raise_smi(1)  # a one-vCPU machine
        if machine.smm:
            machine.raise_smi(0)
            assert machine.pending_smis == {0}
        else:
            with pytest.raises(StateError, match="no SMM"):
                machine.raise_smi(0)
            assert machine.pending_smis == frozenset()


def test_smm_off_is_qemus_smm_off(hv: Hypervisor) -> None:
    """``Machine(smm=False)``: no address space 1, APMC_EN set from reset (firmware skips SMM set-up),
    ``raise_smi`` refused; ``smm=True`` where the backend has no SMM is ``Unsupported``."""
    with Machine(hv, memory=16 << 20, smm=False) as machine:
        add_pc_devices(machine)
        assert not machine.smm and all(s.address_space == 0 for s in machine.vm.memory_slots())
        assert conf1(machine, PM_FUNCTION, 0x58) >> 25 & 1
        with pytest.raises(StateError):
            machine.raise_smi(0)
    with hv.create_vm() as vm:
        has_smm = bool(vm.check_extension(Capability.X86_SMM))
    if has_smm:
        with Machine(hv, memory=16 << 20, smm=True) as machine:
            assert machine.smm and any(s.address_space == SMM_ADDRESS_SPACE for s in machine.vm.memory_slots())
    else:
        with pytest.raises(Unsupported, match="no SMM"):
            Machine(hv, memory=16 << 20, smm=True)

