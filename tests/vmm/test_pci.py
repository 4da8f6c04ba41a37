"""PCI (:mod:`hvcore.vmm.pci`): configuration space, BARs, INTx, MSI and MSI-X, on each backend.

Accesses go through the machine's buses, the path a guest's IN/OUT and MMIO exits take; one test
has a guest do them itself. The function under test is a small device with an IO BAR, a 32-bit
and a 64-bit memory BAR, INTA, MSI and MSI-X.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from hvcore import BusConflict, Hypervisor, InvalidArgument, ResourceExhausted
from hvcore.vmm.devices import DebugExit
from hvcore.vmm.loaders import BootPlan
from hvcore.vmm.machine import Machine, MachineResult
from hvcore.vmm.pci import (
    BAR_IO,
    BAR_MEMORY32,
    BAR_MEMORY64,
    CAPABILITY_MSI,
    CAPABILITY_MSIX,
    COMMAND_INTX_DISABLE,
    COMMAND_IO,
    COMMAND_MEMORY,
    CONFIG_PORT,
    ECAM_BASE,
    FIRST_PCI_GSI,
    MEMORY_WINDOW,
    MsiCapability,
    MsixCapability,
    PciFunction,
    PciHost,
    add_pci_host,
)
from tests.vmm.test_devices import FakeLine

COMMAND, STATUS, BAR0, INTERRUPT_LINE, CAPABILITIES = 0x04, 0x06, 0x10, 0x3C, 0x34


class Registers:
    """A device that remembers what was written at each offset."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.written: dict[int, int] = {}

    def read(self, offset: int, size: int) -> int:
        return self.written.get(offset, 0x5A5A5A5A) & ((1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        self.written[offset] = value


class Probe(PciFunction):
    """The function under test."""

    def __init__(self) -> None:
        super().__init__("probe", vendor_id=0x1234, device_id=0x5678, class_code=0xFF0000, interrupt_pin=1)
        self.io, self.memory, self.memory64 = Registers("probe-io"), Registers("probe-mem"), Registers("probe-mem64")
        self.add_bar(0, BAR_IO, 16, self.io)
        self.add_bar(1, BAR_MEMORY32, 0x1000, self.memory)
        self.add_bar(2, BAR_MEMORY64, 0x4000, self.memory64, prefetchable=True)
        self.msi_capability = MsiCapability(self)
        self.msix = MsixCapability(self, 4, 5, 0, 0x800)
        self.add_bar(5, BAR_MEMORY32, 0x1000, self.msix.table_device)
        self.messages: list[tuple[int, int]] = []


@pytest.fixture
def machine(hv: Hypervisor) -> Iterator[Machine]:
    with Machine(hv, memory=16 << 20) as m:
        yield m


@pytest.fixture
def lines(machine: Machine, monkeypatch: pytest.MonkeyPatch) -> dict[int, FakeLine]:
    recorded: dict[int, FakeLine] = {}
    monkeypatch.setattr(machine, "irq", lambda gsi: recorded.setdefault(gsi, FakeLine()))
    return recorded


def conf1_read(machine: Machine, slot: int, offset: int, size: int = 4) -> int:
    machine.io_bus.write(CONFIG_PORT, 4, 1 << 31 | slot << 11 | offset & 0xFC)
    return machine.io_bus.read(0xCFC + (offset & 3), size)


def conf1_write(machine: Machine, slot: int, offset: int, value: int, size: int = 4) -> None:
    machine.io_bus.write(CONFIG_PORT, 4, 1 << 31 | slot << 11 | offset & 0xFC)
    machine.io_bus.write(0xCFC + (offset & 3), size, value)


def ecam_read(machine: Machine, slot: int, offset: int, size: int = 4) -> int:
    return machine.mmio_bus.read(ECAM_BASE + (slot << 15) + offset, size)


def ecam_write(machine: Machine, slot: int, offset: int, value: int, size: int = 4) -> None:
    machine.mmio_bus.write(ECAM_BASE + (slot << 15) + offset, size, value)


def plugged(machine: Machine) -> tuple[PciHost, Probe, int]:
    host = add_pci_host(machine)
    probe = Probe()
    slot = host.add(probe) >> 3
    probe.msi = lambda address, data: probe.messages.append((address, data))
    return host, probe, slot


def test_the_chipset_answers_both_configuration_mechanisms(machine: Machine) -> None:
    host, _, slot = plugged(machine)
    assert machine.pci is host and slot == 2
    for read in (conf1_read, ecam_read):
        assert read(machine, 0, 0) == 0x1237_8086  # i440FX
        assert read(machine, 1, 0) == 0x7000_8086  # PIIX3
        assert read(machine, 1, 0x0E, 1) == 0x80  # multi-function header
        assert read(machine, slot, 0) == 0x5678_1234
        assert read(machine, slot, 0x0A, 2) == 0xFF00  # class
        assert read(machine, 7, 0) == 0xFFFF_FFFF  # an empty slot
    machine.io_bus.write(CONFIG_PORT, 4, 1 << 31 | 1 << 16)  # bus 1: nothing there
    assert machine.io_bus.read(0xCFC, 4) == 0xFFFF_FFFF
    machine.io_bus.write(CONFIG_PORT, 4, 0)  # enable bit clear: the data port answers nothing
    assert machine.io_bus.read(0xCFC, 4) == 0xFFFF_FFFF
    assert machine.io_bus.read(CONFIG_PORT, 4) == 0


def test_the_capability_list_links_msi_and_msix(machine: Machine) -> None:
    _, _, slot = plugged(machine)
    assert conf1_read(machine, slot, STATUS, 2) & 1 << 4  # "has capabilities"
    found, at = [], conf1_read(machine, slot, CAPABILITIES, 1)
    while at:
        found.append(conf1_read(machine, slot, at, 1))
        at = conf1_read(machine, slot, at + 1, 1)
    assert found == [CAPABILITY_MSI, CAPABILITY_MSIX]


def test_bars_are_assigned_sized_and_read_only_where_hardware_is(machine: Machine) -> None:
    host, _, slot = plugged(machine)
    io = conf1_read(machine, slot, BAR0)
    assert io & 1 and 0xC000 <= io & ~3 < 0x10000
    memory = conf1_read(machine, slot, BAR0 + 4)
    assert MEMORY_WINDOW[0] <= memory < sum(MEMORY_WINDOW) and memory % 0x1000 == 0
    assert conf1_read(machine, slot, BAR0 + 8) & 0xF == 0xC  # 64-bit, prefetchable
    assert conf1_read(machine, slot, COMMAND, 2) & (COMMAND_IO | COMMAND_MEMORY) == COMMAND_IO | COMMAND_MEMORY
    for index, size, flags in ((0, 16, 0x1), (1, 0x1000, 0x0), (5, 0x1000, 0x0)):
        conf1_write(machine, slot, BAR0 + 4 * index, 0xFFFF_FFFF)
        mask = 0xFFFF if index == 0 else 0xFFFF_FFFF  # an IO BAR's upper half reads as written
        assert conf1_read(machine, slot, BAR0 + 4 * index) & mask == (~(size - 1) | flags) & mask
    ecam_write(machine, slot, BAR0 + 8, 0xFFFF_FFFF)
    ecam_write(machine, slot, BAR0 + 12, 0xFFFF_FFFF)
    assert ecam_read(machine, slot, BAR0 + 8) == 0xFFFF_C00C
    assert ecam_read(machine, slot, BAR0 + 12) == 0xFFFF_FFFF
    assert all(host.bar_address(slot << 3, index) is None for index in (0, 1, 2, 5))  # sizing: nothing decodes
    conf1_write(machine, slot, 0, 0)  # the IDs are read-only
    conf1_write(machine, slot, INTERRUPT_LINE, 0x0B, 1)  # the line is the guest's
    assert conf1_read(machine, slot, 0) == 0x5678_1234 and conf1_read(machine, slot, INTERRUPT_LINE, 1) == 0x0B


def test_a_bar_the_guest_moves_decodes_at_its_new_address_only(machine: Machine) -> None:
    host, probe, slot = plugged(machine)
    old = conf1_read(machine, slot, BAR0 + 4)
    machine.mmio_bus.write(old + 8, 4, 0x11)
    assert probe.memory.written == {8: 0x11}
    conf1_write(machine, slot, BAR0 + 4, 0xC800_0000)
    machine.mmio_bus.write(old + 8, 4, 0x22)
    machine.mmio_bus.write(0xC800_0008, 4, 0x33)
    assert probe.memory.written == {8: 0x33} and host.bar_address(slot << 3, 1) == 0xC800_0000
    ecam_write(machine, slot, BAR0 + 8, 0x2_0000, 4)  # 64-bit BAR: low then high half
    ecam_write(machine, slot, BAR0 + 12, 0x1, 4)
    assert host.bar_address(slot << 3, 2) == 0x1_0002_0000
    machine.mmio_bus.write(0x1_0002_0010, 8, 0x44)
    assert probe.memory64.written == {0x10: 0x44}
    io = conf1_read(machine, slot, BAR0) & ~3
    machine.io_bus.write(io + 2, 1, 0x55)
    assert probe.io.written == {2: 0x55}
    conf1_write(machine, slot, COMMAND, COMMAND_IO, 2)  # memory decoding off
    assert machine.mmio_bus.read(0xC800_0008, 4) == 0xFFFF_FFFF  # nobody answers
    assert host.bar_address(slot << 3, 1) is None and host.bar_address(slot << 3, 0) == io
    conf1_write(machine, slot, COMMAND, COMMAND_IO | COMMAND_MEMORY, 2)
    assert machine.mmio_bus.read(0xC800_0008, 4) == 0x33


def test_a_bar_over_ram_or_another_device_decodes_nothing_until_moved(machine: Machine) -> None:
    host, probe, slot = plugged(machine)
    conf1_write(machine, slot, BAR0 + 4, 0x10_0000)  # into RAM
    assert host.unmapped == 1 and host.bar_address(slot << 3, 1) is None
    conf1_write(machine, slot, BAR0 + 4, ECAM_BASE)  # onto ECAM
    assert host.unmapped == 2 and ecam_read(machine, 0, 0) == 0x1237_8086
    conf1_write(machine, slot, BAR0 + 4, 0xC900_0000)
    machine.mmio_bus.write(0xC900_0000, 4, 1)
    assert probe.memory.written == {0: 1}


def test_intx_is_shared_routed_and_masked_by_the_command_register(machine: Machine, lines: dict[int, FakeLine]) -> None:
    host, probe, slot = plugged(machine)
    other = Probe()
    other_slot = slot + 4  # the same PIRQ
    host.plug(other, other_slot)
    pirq = PciHost.pirq(slot, 1)
    assert pirq == PciHost.pirq(other_slot, 1) == (slot % 4)
    gsi = FIRST_PCI_GSI + pirq
    assert conf1_read(machine, slot, INTERRUPT_LINE, 1) == gsi
    probe.set_intx(True)
    other.set_intx(True)
    assert lines[gsi].events == [True]
    assert conf1_read(machine, slot, STATUS, 2) & 1 << 3  # interrupt status
    probe.set_intx(False)
    assert lines[gsi].level  # the other function still asserts
    other.set_intx(False)
    assert lines[gsi].events == [True, False]
    conf1_write(machine, slot, COMMAND, COMMAND_IO | COMMAND_MEMORY | COMMAND_INTX_DISABLE, 2)
    probe.set_intx(True)
    assert not lines[gsi].level and conf1_read(machine, slot, STATUS, 2) & 1 << 3
    conf1_write(machine, slot, COMMAND, COMMAND_IO | COMMAND_MEMORY, 2)
    assert lines[gsi].level  # the pending level reaches the line once allowed
    conf1_write(machine, 1, 0x60 + pirq, 11, 1)  # PIIX3: PIRQ routed to ISA IRQ 11, as SeaBIOS does
    assert lines[11].level
    probe.set_intx(False)
    assert not lines[11].level and not lines[gsi].level
    conf1_write(machine, 1, 0x60 + pirq, 0x80, 1)
    probe.set_intx(True)
    assert lines[11].events == [True, False] and lines[gsi].level


def _msix_entry(machine: Machine, table: int, vector: int, address: int, data: int, masked: bool) -> None:
    for offset, value in enumerate((address, 0, data, int(masked))):
        machine.mmio_bus.write(table + 16 * vector + 4 * offset, 4, value)


def test_msix_sends_unmasked_vectors_and_holds_masked_ones_pending(machine: Machine) -> None:
    _, probe, slot = plugged(machine)
    table = conf1_read(machine, slot, BAR0 + 20)
    control = probe.msix.offset + 2
    assert conf1_read(machine, slot, control, 2) == 3  # 4 vectors, disabled
    _msix_entry(machine, table, 1, 0xFEE0_0000, 0x41, masked=False)
    _msix_entry(machine, table, 2, 0xFEE0_1000, 0x42, masked=True)
    assert probe.msix.signal(1) and probe.messages == []  # MSI-X not enabled yet: pending
    conf1_write(machine, slot, control, 1 << 15, 2)
    assert probe.messages == [(0xFEE0_0000, 0x41)]  # enabling released it
    assert probe.msix.signal(2) and machine.mmio_bus.read(table + 0x800, 8) == 1 << 2
    assert not probe.msix.signal(9)  # no such vector
    machine.mmio_bus.write(table + 16 * 2 + 12, 4, 0)  # unmask vector 2
    assert probe.messages[-1] == (0xFEE0_1000, 0x42) and machine.mmio_bus.read(table + 0x800, 8) == 0
    conf1_write(machine, slot, control, 3 << 14, 2)  # function mask
    probe.msix.signal(1)
    assert len(probe.messages) == 2
    conf1_write(machine, slot, control, 1 << 15, 2)
    assert probe.messages[-1] == (0xFEE0_0000, 0x41)


def test_msi_sends_its_message_and_honours_the_mask(machine: Machine) -> None:
    _, probe, slot = plugged(machine)
    at = probe.msi_capability.offset
    conf1_write(machine, slot, at + 4, 0xFEE0_0000)
    conf1_write(machine, slot, at + 12, 0x4455, 2)
    probe.msi_capability.signal()
    assert probe.messages == []  # not enabled
    conf1_write(machine, slot, at + 2, 1, 2)
    probe.msi_capability.signal()
    assert probe.messages == [(0xFEE0_0000, 0x4455)]
    conf1_write(machine, slot, at + 16, 1)  # mask
    probe.msi_capability.signal()
    assert len(probe.messages) == 1 and conf1_read(machine, slot, at + 20) == 1
    conf1_write(machine, slot, at + 16, 0)
    assert probe.messages[-1] == (0xFEE0_0000, 0x4455) and conf1_read(machine, slot, at + 20) == 0


def test_an_msi_reaches_the_vm(machine: Machine) -> None:
    host = add_pci_host(machine)
    probe = Probe()
    host.add(probe)
    assert probe.msi is not None
    vcpu = machine.vcpus[0]
    vcpu.set_lapic(vcpu.get_lapic().with_register(0xF0, 0x1FF))  # software-enable the LAPIC (SVR)
    assert not vcpu.get_lapic().register(0x210) & 1 << 16
    probe.msi(0xFEE0_0000, 0x30)  # KVM_SIGNAL_MSI to APIC 0, fixed, vector 0x30
    assert vcpu.get_lapic().register(0x210) & 1 << 16  # IRR: vector 0x30 (bit 16 of the second word) is pending


def test_plugging_mistakes_are_refused(machine: Machine) -> None:
    host = add_pci_host(machine)
    with pytest.raises(BusConflict, match="i440fx"):
        host.plug(Probe(), 0)
    with pytest.raises(InvalidArgument, match="slot 32"):
        host.plug(Probe(), 32)
    probe = Probe()
    with pytest.raises(InvalidArgument, match="taken"):
        probe.add_bar(2, BAR_MEMORY32, 0x1000, probe.memory)
    with pytest.raises(InvalidArgument, match="powers of two"):
        probe.add_bar(3, BAR_MEMORY32, 0x1800, probe.memory)
    with pytest.raises(InvalidArgument, match="interrupt pin"):
        PciFunction("bad", vendor_id=1, device_id=2, class_code=0, interrupt_pin=5)
    for _ in range(30):
        host.add(PciFunction("filler", vendor_id=1, device_id=2, class_code=0))
    with pytest.raises(ResourceExhausted, match="32 PCI slots"):
        host.add(Probe())


def test_reset_control_resets_the_machine(machine: Machine) -> None:
    add_pci_host(machine)
    machine.io_bus.write(0xCF9, 1, 0x02)  # "hard reset" armed, not yet
    assert machine.wait(0) is None
    machine.io_bus.write(0xCF9, 1, 0x06)
    assert machine.wait(0) == MachineResult("reset")


# Protected mode at 0x1000: reads slot 2's IDs by mechanism #1 and by ECAM, sizes its BAR 1 through
# ECAM, and reports each dword at port 0x90; then isa-debug-exit.
GUEST = (
    b"\xb8\x00\x10\x00\x80"  # mov eax,0x80001000
    b"\x66\xba\xf8\x0c"  # mov dx,0xcf8
    b"\xef"  # out dx,eax
    b"\x66\xba\xfc\x0c"  # mov dx,0xcfc
    b"\xed"  # in eax,dx
    b"\x66\xba\x90\x00"  # mov dx,0x90
    b"\xef"  # out dx,eax
    b"\xa1" + struct.pack("<I", ECAM_BASE + (2 << 15)) + b"\xef"  # mov eax,[ecam]; out dx,eax
    b"\xc7\x05"
    + struct.pack("<II", ECAM_BASE + (2 << 15) + 0x14, 0xFFFF_FFFF)  # mov [bar1],-1
    + b"\xa1"
    + struct.pack("<I", ECAM_BASE + (2 << 15) + 0x14)
    + b"\xef"  # mov eax,[bar1]; out dx,eax
    b"\xb0\x00\xe6\xf4"  # mov al,0; out 0xf4,al
)


def test_a_guest_reaches_configuration_space_through_exits(machine: Machine) -> None:
    plugged(machine)
    reported = Registers("report")
    values: list[int] = []
    reported.write = lambda offset, size, value: values.append(value)  # type: ignore[method-assign]
    machine.add_io_device(0x90, 4, reported)
    machine.add_io_device(DebugExit.PORT, 1, DebugExit(machine.device_host))
    machine.write(0x1000, GUEST)
    machine.boot(BootPlan("protected", entry=0x1000))
    assert machine.run(timeout=30) == MachineResult("debug-exit", 1)
    assert values == [0x5678_1234, 0x5678_1234, 0xFFFF_F000]
