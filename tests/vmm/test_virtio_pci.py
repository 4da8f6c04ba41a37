"""virtio-pci (:mod:`hvcore.vmm.virtio.pci`) with virtio-rng behind it, on each backend.

The driver's side is written here as Linux's ``virtio_pci_modern`` does it: walk the vendor
capabilities to the structures in BAR 4, negotiate, set a queue up with its MSI-X vector, notify,
and take the interrupt (MSI-X, or INTx and the ISR); then what a hostile ring and firmware's
configuration-space window do.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hvcore import Hypervisor
from hvcore.vmm.machine import Machine
from hvcore.vmm.pci import CAPABILITY_MSIX, CONFIG_PORT, FIRST_PCI_GSI, PciHost
from hvcore.vmm.virtio import (
    STATUS_DEVICE_NEEDS_RESET,
    STATUS_FEATURES_OK,
    VIRTQ_DESC_F_WRITE,
    VirtioBlock,
    VirtioRng,
)
from hvcore.vmm.virtio.pci import NO_VECTOR, VirtioPci, add_virtio_pci

TABLE, AVAIL, USED, BUFFER = 0x40000, 0x41000, 0x42000, 0x43000
# common configuration offsets
FEATURE_SELECT, FEATURE, DRIVER_SELECT, DRIVER, CONFIG_VECTOR, NUM_QUEUES, STATUS = 0, 4, 8, 12, 0x10, 0x12, 0x14
QUEUE_SELECT, QUEUE_SIZE, QUEUE_VECTOR, QUEUE_ENABLE, QUEUE_NOTIFY_OFF = 0x16, 0x18, 0x1A, 0x1C, 0x1E
QUEUE_DESC, QUEUE_DRIVER, QUEUE_DEVICE = 0x20, 0x28, 0x30


def pattern(length: int) -> bytes:
    return bytes((3 * i + 5) & 0xFF for i in range(length))


@dataclass
class Driver:
    """The guest's driver, through the machine's buses."""

    machine: Machine
    slot: int
    structures: dict[int, int]  # cfg_type -> guest-physical address
    notify_multiplier: int
    msix_table: int = 0
    msix_control: int = 0

    def config(self, offset: int, size: int = 4, value: int | None = None) -> int:
        self.machine.io_bus.write(CONFIG_PORT, 4, 1 << 31 | self.slot << 11 | offset & 0xFC)
        if value is None:
            return self.machine.io_bus.read(0xCFC + (offset & 3), size)
        self.machine.io_bus.write(0xCFC + (offset & 3), size, value)
        return 0

    def read(self, kind: int, offset: int, size: int) -> int:
        return self.machine.mmio_bus.read(self.structures[kind] + offset, size)

    def write(self, kind: int, offset: int, size: int, value: int) -> None:
        self.machine.mmio_bus.write(self.structures[kind] + offset, size, value)

    def common(self, offset: int, size: int, value: int | None = None) -> int:
        if value is None:
            return self.read(1, offset, size)
        self.write(1, offset, size, value)
        return 0

    def up(self, *, msix: bool, features_high: int = 1, vector: int = 1) -> None:
        self.common(STATUS, 1, 1)
        self.common(STATUS, 1, 3)
        self.common(DRIVER_SELECT, 4, 1)
        self.common(DRIVER, 4, features_high)
        self.common(STATUS, 1, 0xB)
        if msix:
            for index, (address, data) in enumerate(((0xFEE0_0000, 0x50), (0xFEE0_0000, 0x51))):
                for word, value in enumerate((address, 0, data, 0)):
                    self.machine.mmio_bus.write(self.msix_table + 16 * index + 4 * word, 4, value)
            self.config(self.msix_control, 2, 1 << 15)
            self.common(CONFIG_VECTOR, 2, 0)
        self.common(QUEUE_SELECT, 2, 0)
        self.common(QUEUE_SIZE, 2, 8)
        self.common(QUEUE_VECTOR, 2, vector if msix else NO_VECTOR)
        self.common(QUEUE_DESC, 8, TABLE)  # one 64-bit access
        self.common(QUEUE_DRIVER, 4, AVAIL)  # two 32-bit halves, as Linux writes them
        self.common(QUEUE_DRIVER + 4, 4, 0)
        self.common(QUEUE_DEVICE, 4, USED)
        self.common(QUEUE_DEVICE + 4, 4, 0)
        self.common(QUEUE_ENABLE, 2, 1)
        self.common(STATUS, 1, 0xF)

    def request(self, length: int = 32) -> None:
        self.machine.write(TABLE, struct.pack("<QIHH", BUFFER, length, VIRTQ_DESC_F_WRITE, 0))
        self.machine.write(AVAIL, struct.pack("<HHH", 0, 1, 0))
        self.write(2, self.common(QUEUE_NOTIFY_OFF, 2) * self.notify_multiplier, 2, 0)


@pytest.fixture
def machine(hv: Hypervisor) -> Iterator[Machine]:
    with Machine(hv, memory=1 << 20) as m:
        yield m


def plug(machine: Machine) -> tuple[VirtioPci, Driver, list[tuple[int, int]]]:
    transport = add_virtio_pci(machine, VirtioRng(source=pattern))
    messages: list[tuple[int, int]] = []
    transport.function.msi = lambda address, data: messages.append((address, data))
    slot = 2
    driver = Driver(machine, slot, {}, 0)
    bars = {index: _bar(driver, index) for index in (1, 4)}
    at = driver.config(0x34, 1)
    while at:
        kind = driver.config(at, 1)
        if kind == 0x09:  # vendor-specific: a virtio structure
            cfg_type, bar = driver.config(at + 3, 1), driver.config(at + 4, 1)
            if cfg_type != 5:
                driver.structures[cfg_type] = bars[bar] + driver.config(at + 8)
            if cfg_type == 2:
                driver.notify_multiplier = driver.config(at + 16)
        elif kind == CAPABILITY_MSIX:
            driver.msix_control = at + 2
            driver.msix_table = bars[driver.config(at + 4) & 7] + (driver.config(at + 4) & ~7)
        at = driver.config(at + 1, 1)
    return transport, driver, messages


def _bar(driver: Driver, index: int) -> int:
    low = driver.config(0x10 + 4 * index)
    high = driver.config(0x14 + 4 * index) if low & 4 else 0
    return (low & ~0xF) | high << 32


def test_the_function_says_what_it_is_and_where_its_structures_are(machine: Machine) -> None:
    _transport, driver, _ = plug(machine)
    assert driver.config(0) == 0x1044_1AF4  # 1af4:1040 + 4 (entropy)
    assert driver.config(0x08, 1) == 1  # revision 1: modern
    assert driver.config(0x2C) == 0x1100_1AF4
    assert driver.config(0x3D, 1) == 1  # INTA
    assert sorted(driver.structures) == [1, 2, 3, 4]
    assert driver.notify_multiplier == 4
    assert driver.config(driver.msix_control, 2) == 1  # 2 vectors: the queue's and configuration changes'
    assert driver.common(NUM_QUEUES, 2) == 1 and driver.common(QUEUE_SIZE, 2) == 64
    assert driver.common(CONFIG_VECTOR, 2) == NO_VECTOR
    driver.common(FEATURE_SELECT, 4, 1)
    assert driver.common(FEATURE, 4) & 1  # VERSION_1


def test_a_legacy_driver_is_refused(machine: Machine) -> None:
    _transport, driver, _ = plug(machine)
    driver.up(msix=False, features_high=0)
    assert not driver.common(STATUS, 1) & STATUS_FEATURES_OK


def test_a_request_is_filled_and_its_msix_vector_sent(machine: Machine) -> None:
    _transport, driver, messages = plug(machine)
    driver.up(msix=True)
    assert driver.common(QUEUE_VECTOR, 2) == 1 and driver.common(QUEUE_ENABLE, 2) == 1
    driver.request()
    assert machine.read(BUFFER, 32) == pattern(32)
    assert struct.unpack("<HHII", machine.read(USED, 12)) == (0, 1, 0, 32)
    assert messages == [(0xFEE0_0000, 0x51)]
    assert driver.read(3, 0, 1) == 0  # MSI-X: the ISR is not used


def test_a_vector_past_the_table_reads_back_as_no_vector(machine: Machine) -> None:
    _transport, driver, messages = plug(machine)
    driver.up(msix=True, vector=7)
    assert driver.common(QUEUE_VECTOR, 2) == NO_VECTOR
    driver.request()
    assert machine.read(BUFFER, 32) == pattern(32) and messages == []  # the driver asked for none


def test_without_msix_the_isr_and_intx_say_it(machine: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    levels: list[tuple[int, bool]] = []

    class Line:
        def __init__(self, gsi: int) -> None:
            self.gsi = gsi

        def set(self, level: bool) -> None:
            levels.append((self.gsi, level))

        def pulse(self) -> None:
            raise AssertionError

    monkeypatch.setattr(machine, "irq", Line)
    _transport, driver, messages = plug(machine)
    gsi = FIRST_PCI_GSI + (PciHost.pirq(2, 1) or 0)
    driver.up(msix=False)
    driver.request()
    assert levels[-1] == (gsi, True) and messages == []
    assert driver.read(3, 0, 1) == 1  # used buffer; reading clears it and lowers the line
    assert levels[-1] == (gsi, False) and driver.read(3, 0, 1) == 0


def test_a_hostile_ring_needs_a_reset_and_a_reset_recovers(machine: Machine) -> None:
    transport, driver, messages = plug(machine)
    driver.up(msix=True)
    machine.write(TABLE, struct.pack("<QIHH", BUFFER, 16, VIRTQ_DESC_F_WRITE | 1, 0))  # NEXT to itself: a loop
    machine.write(AVAIL, struct.pack("<HHH", 0, 1, 0))
    driver.write(2, 0, 2, 0)
    assert driver.common(STATUS, 1) & STATUS_DEVICE_NEEDS_RESET and transport.problem is not None
    assert messages == [(0xFEE0_0000, 0x50)]  # the configuration-change vector
    driver.common(STATUS, 1, 0)
    assert driver.common(STATUS, 1) == 0 and transport.problem is None
    assert driver.common(QUEUE_ENABLE, 2) == 0 and driver.common(CONFIG_VECTOR, 2) == NO_VECTOR
    machine.write(USED, bytes(12))
    driver.up(msix=True)
    driver.request(16)
    assert machine.read(BUFFER, 16) == pattern(16)


def test_firmware_reaches_the_structures_through_configuration_space(machine: Machine) -> None:
    """``VIRTIO_PCI_CAP_PCI_CFG``: BAR, offset and length in the capability, then its data dword."""
    transport, driver, _ = plug(machine)
    at = transport.function.window
    driver.config(at + 4, 1, 4)  # BAR 4
    driver.config(at + 8, 4, NUM_QUEUES)
    driver.config(at + 12, 4, 2)
    assert driver.config(at + 16, 4) == 1  # num_queues
    driver.config(at + 8, 4, STATUS)
    driver.config(at + 12, 4, 1)
    driver.config(at + 16, 4, 1)  # ACKNOWLEDGE, written through the window
    assert driver.common(STATUS, 1) == 1
    driver.config(at + 12, 4, 3)  # not 1, 2 or 4 bytes: nothing
    assert driver.config(at + 16, 4) == 0


def _open_files() -> list[str]:
    fds = os.listdir("/proc/self/fd")
    return [os.readlink(f"/proc/self/fd/{fd}") for fd in fds if os.path.exists(f"/proc/self/fd/{fd}")]


def test_the_machine_closes_what_it_plugged_in(hv: Hypervisor, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(4096))
    disk = VirtioBlock(image)  # held here: its closing must come from the machine, not the garbage collector
    assert str(image) in _open_files()
    with Machine(hv, memory=1 << 20) as machine:
        add_virtio_pci(machine, disk)
    assert str(image) not in _open_files()
