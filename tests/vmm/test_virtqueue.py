"""Split virtqueues (:mod:`hvcore.vmm.virtio.queue`) over hand-built rings in a machine's RAM, on each backend.

The rings are written here as a driver would lay them out (virtio 1.2, 2.7); every hostile
variant the spec forbids must give ``GuestDataError`` and leave the queue as it was.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from hvcore import GuestDataError, Hypervisor, InvalidArgument
from hvcore.vmm.machine import Machine
from hvcore.vmm.virtio import (
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VRING_AVAIL_F_NO_INTERRUPT,
    VRING_USED_F_NO_NOTIFY,
    Buffer,
    SplitQueue,
)

SIZE = 8
TABLE, AVAIL, USED = 0x10000, 0x11000, 0x12000
DATA = 0x20000
NEXT, WRITE, INDIRECT = VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT
MEMORY = 1 << 20


@dataclass
class Driver:
    """The guest's side, written straight into RAM."""

    machine: Machine
    size: int = SIZE
    available_index: int = 0

    def descriptor(self, index: int, address: int, length: int, flags: int = 0, following: int = 0) -> None:
        self.machine.write(TABLE + 16 * index, struct.pack("<QIHH", address, length, flags, following))

    def offer(self, *heads: int) -> None:
        for head in heads:
            slot = self.available_index % self.size
            self.machine.write(AVAIL + 4 + 2 * slot, struct.pack("<H", head))
            self.available_index = (self.available_index + 1) & 0xFFFF
        self.machine.write(AVAIL + 2, struct.pack("<H", self.available_index))

    def used(self) -> tuple[int, list[tuple[int, int]]]:
        """The used ring's idx and its first entries up to idx (mod size)."""
        index = struct.unpack("<H", self.machine.read(USED + 2, 2))[0]
        entries = [struct.unpack("<II", self.machine.read(USED + 4 + 8 * i, 8)) for i in range(min(index, self.size))]
        return index, entries


@pytest.fixture
def machine(hv: Hypervisor) -> Iterator[Machine]:
    with Machine(hv, memory=MEMORY, irqchip=False) as m:
        yield m


def _queue(machine: Machine, **options: bool) -> SplitQueue:
    return SplitQueue(machine, SIZE, TABLE, AVAIL, USED, **options)


def test_a_request_and_its_response_go_through_the_rings(machine: Machine) -> None:
    driver, queue = Driver(machine), _queue(machine)
    machine.write(DATA, b"hello, device")
    driver.descriptor(3, DATA, 13, NEXT, 5)
    driver.descriptor(5, DATA + 0x100, 4, NEXT | WRITE, 6)
    driver.descriptor(6, DATA + 0x200, 8, WRITE)
    assert queue.pop() is None
    driver.offer(3)
    chain = queue.pop()
    assert chain is not None
    assert chain.head == 3
    assert chain.readable == (Buffer(DATA, 13, False),)
    assert chain.writable == (Buffer(DATA + 0x100, 4, True), Buffer(DATA + 0x200, 8, True))
    assert (chain.readable_length, chain.writable_length) == (13, 12)
    assert queue.read(chain) == b"hello, device"
    assert queue.read(chain, limit=5) == b"hello"
    assert queue.write(chain, b"0123456789abcdefXX") == 12  # what fits
    assert machine.read(DATA + 0x100, 4) == b"0123" and machine.read(DATA + 0x200, 8) == b"456789ab"
    queue.push(chain, 12)
    assert driver.used() == (1, [(3, 12)])
    assert queue.pop() is None


def test_indices_run_free_and_wrap_at_65536(machine: Machine) -> None:
    driver, queue = Driver(machine), _queue(machine)
    driver.available_index = queue.last_available = queue.used_index = 0xFFFE
    machine.write(USED + 2, struct.pack("<H", 0xFFFE))
    for index in range(4):
        driver.descriptor(index, DATA + 0x10 * index, 0x10, WRITE)
    driver.offer(0, 1, 2, 3)
    assert queue.pending() == 4
    chains = list(queue)
    assert [chain.head for chain in chains] == [0, 1, 2, 3]
    assert queue.last_available == 2
    for chain in chains:
        queue.push(chain, 0)
    index = struct.unpack("<H", machine.read(USED + 2, 2))[0]
    assert index == 2
    slots = [struct.unpack("<II", machine.read(USED + 4 + 8 * (i % SIZE), 8))[0] for i in range(0xFFFE, 0x10002)]
    assert slots == [0, 1, 2, 3]


def test_an_indirect_table_holds_the_whole_chain(machine: Machine) -> None:
    driver, queue = Driver(machine), _queue(machine)
    table = DATA + 0x1000
    machine.write(
        table, struct.pack("<QIHH", DATA, 3, NEXT, 2) + bytes(16) + struct.pack("<QIHH", DATA + 8, 6, WRITE, 0)
    )
    driver.descriptor(0, table, 48, INDIRECT)
    driver.offer(0)
    chain = queue.pop()
    assert chain is not None
    assert chain.readable == (Buffer(DATA, 3, False),) and chain.writable == (Buffer(DATA + 8, 6, True),)


@pytest.mark.parametrize(
    ("setup", "complaint"),
    [
        (lambda d: (d.descriptor(0, DATA, 4, NEXT, 1), d.descriptor(1, DATA, 4, NEXT, 0)), "loops"),
        (lambda d: d.descriptor(0, DATA, 4, NEXT, 0), "loops"),
        (lambda d: d.descriptor(0, DATA, 4, NEXT, SIZE), "outside its table"),
        (lambda d: (d.descriptor(0, DATA, 4, WRITE | NEXT, 1), d.descriptor(1, DATA, 4)), "readable buffer after"),
        (lambda d: d.descriptor(0, DATA, 24, INDIRECT), "whole number"),
        (lambda d: d.descriptor(0, DATA, 0, INDIRECT), "whole number"),
        (lambda d: d.descriptor(0, DATA, 16, INDIRECT | NEXT, 1), "indirect and has NEXT"),
        (
            lambda d: (
                d.machine.write(DATA, struct.pack("<QIHH", DATA, 16, INDIRECT, 0)),
                d.descriptor(0, DATA, 16, INDIRECT),
            ),
            "inside an indirect table",
        ),
        (
            lambda d: (
                d.machine.write(DATA, struct.pack("<QIHH", DATA, 4, NEXT, 0)),
                d.descriptor(0, DATA, 16, INDIRECT),
            ),
            "loops",
        ),
        (
            lambda d: (d.descriptor(0, DATA, 4, NEXT, 1), d.descriptor(1, DATA + 0x100, 16, INDIRECT)),
            "follows direct ones",
        ),
        (lambda d: d.descriptor(0, 1 << 40, 16, INDIRECT), "not in guest RAM"),
    ],
)
def test_a_malformed_chain_is_refused_and_nothing_is_taken(machine: Machine, setup: object, complaint: str) -> None:
    driver, queue = Driver(machine), _queue(machine)
    setup(driver)  # type: ignore[operator]
    driver.offer(0)
    for _ in range(2):  # refused again: nothing was consumed
        with pytest.raises(GuestDataError, match=complaint) as caught:
            queue.pop()
        assert "resets it" in str(caught.value)
    assert queue.last_available == 0
    assert driver.used() == (0, [])


def test_a_head_outside_the_table_and_an_index_too_far_ahead_are_refused(machine: Machine) -> None:
    driver, queue = Driver(machine), _queue(machine)
    driver.offer(SIZE + 3)
    with pytest.raises(GuestDataError, match="head 11 is outside"):
        queue.pop()
    machine.write(AVAIL + 2, struct.pack("<H", SIZE + 1))
    with pytest.raises(GuestDataError, match="9 entries ahead"):
        queue.pop()


def test_buffers_outside_ram_and_huge_lengths_fail_when_touched(machine: Machine) -> None:
    driver, queue = Driver(machine), _queue(machine)
    driver.descriptor(0, MEMORY - 8, 0xFFFF_FFFF, NEXT, 1)
    driver.descriptor(1, 1 << 44, 0x1000, WRITE)
    driver.offer(0)
    chain = queue.pop()
    assert chain is not None and chain.readable_length == 0xFFFF_FFFF
    assert queue.read(chain, limit=8) == bytes(8)  # the RAM that is there
    with pytest.raises(GuestDataError, match="not in guest RAM"):
        queue.read(chain)
    with pytest.raises(GuestDataError, match="not in guest RAM"):
        queue.write(chain, b"x")


def test_rings_outside_ram_are_the_guests_fault(machine: Machine) -> None:
    queue = SplitQueue(machine, SIZE, TABLE, 1 << 40, USED)
    with pytest.raises(GuestDataError, match=r"available ring .* not in guest RAM"):
        queue.pop()


@pytest.mark.parametrize(
    ("size", "table", "available", "used", "complaint"),
    [
        (0, TABLE, AVAIL, USED, "power of two"),
        (12, TABLE, AVAIL, USED, "power of two"),
        (65536, TABLE, AVAIL, USED, "power of two"),
        (SIZE, TABLE + 8, AVAIL, USED, r"descriptor table .* 16-byte"),
        (SIZE, TABLE, AVAIL + 1, USED, r"available ring .* 2-byte"),
        (SIZE, TABLE, AVAIL, USED + 2, r"used ring .* 4-byte"),
    ],
)
def test_a_bad_layout_is_refused(
    machine: Machine, size: int, table: int, available: int, used: int, complaint: str
) -> None:
    with pytest.raises(GuestDataError, match=complaint):
        SplitQueue(machine, size, table, available, used)


def test_push_refuses_more_bytes_than_the_chain_can_take(machine: Machine) -> None:
    driver, queue = Driver(machine), _queue(machine)
    driver.descriptor(0, DATA, 4, WRITE)
    driver.offer(0)
    chain = queue.pop()
    assert chain is not None
    with pytest.raises(InvalidArgument):
        queue.push(chain, 5)


def test_interrupts_follow_the_flags_without_the_event_index(machine: Machine) -> None:
    driver, queue = Driver(machine), _queue(machine)
    driver.descriptor(0, DATA, 4, WRITE)
    driver.offer(0)
    chain = queue.pop()
    assert chain is not None
    queue.push(chain, 0)
    assert queue.needs_interrupt()
    machine.write(AVAIL, struct.pack("<H", VRING_AVAIL_F_NO_INTERRUPT))
    assert not queue.needs_interrupt()
    queue.set_notifications(False)
    assert struct.unpack("<H", machine.read(USED, 2))[0] == VRING_USED_F_NO_NOTIFY
    queue.set_notifications(True)
    assert struct.unpack("<H", machine.read(USED, 2))[0] == 0


def test_the_event_index_asks_for_an_interrupt_once_used_event_is_passed(machine: Machine) -> None:
    driver, queue = Driver(machine), _queue(machine, event_idx=True)
    used_event = AVAIL + 4 + 2 * SIZE
    for index in range(4):
        driver.descriptor(index, DATA, 4, WRITE)
    driver.offer(0, 1, 2, 3)
    chains = list(queue)
    assert struct.unpack("<H", machine.read(USED + 4 + 8 * SIZE, 2))[0] == 4  # avail_event: the next one
    machine.write(used_event, struct.pack("<H", 1))  # interrupt me once entry 1 is used
    queue.push(chains[0], 0)
    assert not queue.needs_interrupt()  # idx 1: entry 1 not used yet
    queue.push(chains[1], 0)
    assert queue.needs_interrupt()  # entry 1 used
    queue.push(chains[2], 0)
    assert not queue.needs_interrupt()  # already told about entry 1, used_event not moved
    machine.write(used_event, struct.pack("<H", 3))
    queue.push(chains[3], 0)
    assert queue.needs_interrupt()


def test_without_indirect_descriptors_negotiated_an_indirect_one_is_refused(machine: Machine) -> None:
    driver, queue = Driver(machine), _queue(machine, indirect=False)
    driver.descriptor(0, DATA, 16, INDIRECT)
    driver.offer(0)
    with pytest.raises(GuestDataError, match="without VIRTIO_F_INDIRECT_DESC"):
        queue.pop()
