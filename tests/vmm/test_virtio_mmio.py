"""virtio-mmio (:mod:`hvcore.vmm.virtio.mmio`) with virtio-rng behind it, on each backend.

First the registers driven from Python as a driver would (feature negotiation, queue set-up,
notification, interrupt, a hostile ring and the reset that recovers from it); then a guest that
drives the device itself through MMIO exits and reads the used ring back.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from hvcore import GuestMemory, HltExit, Hypervisor, IoExit, MmioExit
from hvcore.vmm.bus import Bus
from hvcore.vmm.machine import Machine
from hvcore.vmm.virtio import (
    STATUS_DEVICE_NEEDS_RESET,
    STATUS_FEATURES_OK,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VirtioMmio,
    VirtioRng,
)
from hvcore.vmm.virtio.mmio import LENGTH, MAGIC, VENDOR_ID
from tests.boot import boot
from tests.guests import layout

STATUS, FEATURES, FEATURES_SEL, DRIVER_FEATURES, DRIVER_FEATURES_SEL = 0x70, 0x10, 0x14, 0x20, 0x24
QUEUE_SEL, QUEUE_NUM_MAX, QUEUE_NUM, QUEUE_READY, QUEUE_NOTIFY = 0x30, 0x34, 0x38, 0x44, 0x50
INTERRUPT_STATUS, INTERRUPT_ACK = 0x60, 0x64
QUEUE_DESC, QUEUE_DRIVER, QUEUE_DEVICE = 0x80, 0x90, 0xA0
TABLE, AVAIL, USED, BUFFER = 0x40000, 0x41000, 0x42000, 0x43000


class Line:
    """An IRQ line that remembers its level."""

    def __init__(self) -> None:
        self.level = False

    def set(self, level: bool) -> None:
        self.level = level

    def pulse(self) -> None:
        raise AssertionError("virtio-mmio's interrupt is level-triggered")


def pattern(length: int) -> bytes:
    return bytes((7 * i + 1) & 0xFF for i in range(length))


@pytest.fixture
def machine(hv: Hypervisor) -> Iterator[Machine]:
    with Machine(hv, memory=1 << 20, irqchip=False) as m:
        yield m


def _driver_up(device: VirtioMmio, *, size: int = 8, features_high: int = 1) -> None:
    """The driver's initialisation (virtio 1.2, 3.1.1), up to DRIVER_OK."""
    for status in (1, 3):
        device.write(STATUS, 4, status)
    device.write(DRIVER_FEATURES_SEL, 4, 1)
    device.write(DRIVER_FEATURES, 4, features_high)
    device.write(STATUS, 4, 3 | STATUS_FEATURES_OK)
    assert device.read(STATUS, 4) & STATUS_FEATURES_OK
    device.write(QUEUE_SEL, 4, 0)
    device.write(QUEUE_NUM, 4, size)
    for register, address in ((QUEUE_DESC, TABLE), (QUEUE_DRIVER, AVAIL), (QUEUE_DEVICE, USED)):
        device.write(register, 4, address)
        device.write(register + 4, 4, 0)
    device.write(QUEUE_READY, 4, 1)
    device.write(STATUS, 4, 0xF)


def _offer(machine: Machine, head: int, index: int) -> None:
    machine.write(AVAIL + 4 + 2 * (index % 8), struct.pack("<H", head))
    machine.write(AVAIL + 2, struct.pack("<H", index + 1))


def test_the_device_says_what_it_is_and_offers_version_1(machine: Machine) -> None:
    device = VirtioMmio(VirtioRng(), machine)
    assert [device.read(offset, 4) for offset in (0x0, 0x4, 0x8, 0xC)] == [MAGIC, 2, 4, VENDOR_ID]
    device.write(FEATURES_SEL, 4, 1)
    assert device.read(FEATURES, 4) & 1  # VIRTIO_F_VERSION_1 is bit 32
    device.write(FEATURES_SEL, 4, 0)
    assert device.read(FEATURES, 4) & (3 << 28) == 3 << 28  # INDIRECT_DESC, RING_EVENT_IDX
    assert device.read(QUEUE_NUM_MAX, 4) == 64
    device.write(QUEUE_SEL, 4, 1)
    assert device.read(QUEUE_NUM_MAX, 4) == 0  # no second queue
    assert device.read(0x2, 2) == 0xFFFF  # registers are 32-bit only
    assert LENGTH == 0x200


@pytest.mark.parametrize("features_high", [0, 1 | 2])  # without VERSION_1; with an unoffered bit 33
def test_features_the_device_did_not_offer_or_a_legacy_driver_are_refused(machine: Machine, features_high: int) -> None:
    device = VirtioMmio(VirtioRng(), machine)
    device.write(STATUS, 4, 3)
    device.write(DRIVER_FEATURES_SEL, 4, 1)
    device.write(DRIVER_FEATURES, 4, features_high)
    device.write(STATUS, 4, 3 | STATUS_FEATURES_OK)
    assert device.read(STATUS, 4) == 3  # FEATURES_OK did not stick: the driver must give up


def test_a_request_is_filled_returned_and_interrupted(machine: Machine) -> None:
    line = Line()
    rng = VirtioRng(source=pattern)
    device = VirtioMmio(rng, machine, line)
    _driver_up(device)
    machine.write(TABLE, struct.pack("<QIHH", BUFFER, 16, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1))
    machine.write(TABLE + 16, struct.pack("<QIHH", BUFFER + 0x100, 8, VIRTQ_DESC_F_WRITE, 0))
    _offer(machine, 0, 0)
    device.write(QUEUE_NOTIFY, 4, 0)
    assert machine.read(BUFFER, 16) + machine.read(BUFFER + 0x100, 8) == pattern(24)
    assert struct.unpack("<HHII", machine.read(USED, 12)) == (0, 1, 0, 24)
    assert device.read(INTERRUPT_STATUS, 4) == 1 and line.level
    device.write(INTERRUPT_ACK, 4, 1)
    assert device.read(INTERRUPT_STATUS, 4) == 0 and not line.level
    assert rng.bytes_given == 24


def test_a_hostile_ring_needs_a_reset_and_the_reset_recovers(machine: Machine) -> None:
    line = Line()
    device = VirtioMmio(VirtioRng(source=pattern), machine, line)
    _driver_up(device)
    machine.write(TABLE, struct.pack("<QIHH", BUFFER, 16, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 0))  # loops
    _offer(machine, 0, 0)
    device.write(QUEUE_NOTIFY, 4, 0)
    assert device.read(STATUS, 4) & STATUS_DEVICE_NEEDS_RESET
    assert device.read(INTERRUPT_STATUS, 4) == 2 and line.level  # a configuration change
    assert device.problem is not None and "loops" in str(device.problem)
    machine.write(TABLE, struct.pack("<QIHH", BUFFER, 16, VIRTQ_DESC_F_WRITE, 0))
    device.write(QUEUE_NOTIFY, 4, 0)
    assert struct.unpack("<H", machine.read(USED + 2, 2))[0] == 0  # ignored until the reset
    device.write(STATUS, 4, 0)
    assert (device.read(STATUS, 4), device.read(INTERRUPT_STATUS, 4), line.level) == (0, 0, False)
    assert device.read(QUEUE_READY, 4) == 0
    _driver_up(device)
    device.write(QUEUE_NOTIFY, 4, 0)
    assert struct.unpack("<HHII", machine.read(USED, 12)) == (0, 1, 0, 16)


def test_a_queue_larger_than_the_device_allows_needs_a_reset(machine: Machine) -> None:
    device = VirtioMmio(VirtioRng(queue_size=8), machine)
    _driver_up(device, size=16)
    assert device.read(STATUS, 4) & STATUS_DEVICE_NEEDS_RESET
    assert device.read(QUEUE_READY, 4) == 0


def test_one_line_puts_the_device_on_a_machine(hv: Hypervisor) -> None:
    """docs/vmm.md's line (virtio): the device, its interrupt on GSI 5 of the irqchip, answers on the MMIO bus."""
    with Machine(hv, memory=1 << 20) as machine:
        line = machine.irq(5)
        assert line is not None
        device = VirtioMmio(VirtioRng(), machine, line)
        machine.add_mmio_device(0xD0000000, LENGTH, device)
        assert machine.mmio_bus.read(0xD0000000, 4) == MAGIC
        assert machine.mmio_bus.read(0xD0000000 + 0x8, 4) == 4


# The guest: 64-bit code that brings the device up with MMIO stores, builds a one-descriptor
# request in RAM, notifies, and reports the used ring's idx (port 0x80) and length (port 0x81).
def _store(address: int, value: int) -> bytes:
    return b"\xc7\x04\x25" + struct.pack("<Ii", address, value - (1 << 32) if value >> 31 else value)


def _guest(base: int) -> bytes:
    code = b"".join(
        _store(base + offset, value)
        for offset, value in (
            (STATUS, 1),
            (STATUS, 3),
            (DRIVER_FEATURES_SEL, 1),
            (DRIVER_FEATURES, 1),
            (STATUS, 0xB),
            (QUEUE_SEL, 0),
            (QUEUE_NUM, 8),
            (QUEUE_DESC, TABLE),
            (QUEUE_DRIVER, AVAIL),
            (QUEUE_DEVICE, USED),
            (QUEUE_READY, 1),
            (STATUS, 0xF),
        )
    )
    code += (
        _store(TABLE, BUFFER) + _store(TABLE + 4, 0) + _store(TABLE + 8, 32) + _store(TABLE + 12, VIRTQ_DESC_F_WRITE)
    )
    code += _store(AVAIL + 4, 0) + _store(AVAIL, 1 << 16)  # ring[0] = head 0, then flags 0 / idx 1
    code += _store(base + QUEUE_NOTIFY, 0)
    code += b"\x8b\x04\x25" + struct.pack("<I", USED) + b"\xc1\xe8\x10" + b"\xe6\x80"  # eax = used.idx; out 0x80
    code += b"\x8b\x04\x25" + struct.pack("<I", USED + 8) + b"\xe6\x81"  # eax = used.ring[0].len; out 0x81
    return code + b"\xf4"


class _Ram:
    """The test VM's RAM slot as the device's queue memory."""

    def __init__(self, memory: GuestMemory) -> None:
        self.memory = memory

    def read(self, address: int, length: int) -> bytes:
        return self.memory.read(address, length)

    def write(self, address: int, data: bytes) -> None:
        self.memory.write(address, data)


def test_a_guest_drives_the_device_through_mmio_exits(hv: Hypervisor) -> None:
    base = layout.MMIO
    with hv.create_vm() as vm:
        vcpu = boot(hv, vm, _guest(base), "long")
        ram = next(slot.memory for slot in vm.memory_slots() if slot.slot == 0)
        device = VirtioMmio(VirtioRng(source=pattern), _Ram(ram))
        bus = Bus("mmio", 1 << 52)
        bus.register(base, LENGTH, device)
        reported = {}
        for _ in range(200):
            exit_ = vcpu.run()
            match exit_:
                case MmioExit(is_write=True):
                    bus.write(exit_.address, exit_.length, exit_.value)
                case MmioExit():
                    vcpu.complete(bus.read(exit_.address, exit_.length))
                case IoExit(port=port, data=data):
                    reported[port] = data[0]
                case HltExit():
                    break
                case other:
                    pytest.fail(f"unexpected exit {other!r}")
        assert reported == {0x80: 1, 0x81: 32}
        assert ram.read(BUFFER, 32) == pattern(32)
        assert device.status == 0xF and device.problem is None
