"""virtio-console (:mod:`hvcore.vmm.virtio.console`) behind virtio-mmio, rings built by hand in RAM, on each backend.

:class:`Driver` is a driver for a two-queue device (receive 0, transmit 1), also used by the
virtio-net tests.
"""

from __future__ import annotations

import io
import struct
import threading
import time
from collections.abc import Iterator, Sequence

import pytest

from hvcore import GuestDataError, Hypervisor, InvalidArgument, ResourceExhausted
from hvcore.vmm.machine import Machine
from hvcore.vmm.virtio import (
    STATUS_DEVICE_NEEDS_RESET,
    STATUS_FEATURES_OK,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VirtioConsole,
    VirtioMmio,
    VirtioRng,
    add_virtio_mmio,
)
from hvcore.vmm.virtio.console import MAX_TRANSMIT, VIRTIO_CONSOLE_F_EMERG_WRITE, VIRTIO_CONSOLE_F_SIZE
from tests.vmm.test_virtio_mmio import (
    BUFFER,
    DRIVER_FEATURES,
    DRIVER_FEATURES_SEL,
    FEATURES,
    FEATURES_SEL,
    INTERRUPT_ACK,
    INTERRUPT_STATUS,
    QUEUE_DESC,
    QUEUE_DEVICE,
    QUEUE_DRIVER,
    QUEUE_NOTIFY,
    QUEUE_NUM,
    QUEUE_NUM_MAX,
    QUEUE_READY,
    QUEUE_SEL,
    STATUS,
    TABLE,
    USED,
    Line,
    _driver_up,
    _offer,
)

QUEUE_SIZE = 16
CHAIN_SLOTS = 4
"""Chains each queue may have outstanding: chain ``n`` uses descriptors 4 (n % 4) onwards."""
RINGS = ((0x80000, 0x81000, 0x82000), (0x88000, 0x89000, 0x8A000))
"""Descriptor table, available and used ring of queue 0 and queue 1 (clear of test_virtio_mmio's)."""
BUFFERS = (0x90000, 0xB0000)
"""Each queue's buffers: 4 KiB per descriptor."""
SECOND = 0x4000
"""A second driver on the same machine (``Driver(..., second=True)``) has everything this much higher."""
SEGMENT = 0x1000


@pytest.fixture
def machine(hv: Hypervisor) -> Iterator[Machine]:
    with Machine(hv, memory=1 << 20, irqchip=False) as m:
        yield m


class Driver:
    """A driver for a device with a receive (0) and a transmit (1) queue, as Linux's would be."""

    def __init__(self, machine: Machine, device: VirtioMmio, *, second: bool = False) -> None:
        self.machine, self.device = machine, device
        shift = SECOND if second else 0
        self.rings = [tuple(address + shift for address in rings) for rings in RINGS]
        self.buffers = [address + shift for address in BUFFERS]
        self.offered = [0, 0]
        self.seen = [0, 0]
        self.heads: list[dict[int, int]] = [{}, {}]  # head -> chain number, for the chains outstanding
        for status in (1, 3):
            device.write(STATUS, 4, status)
        device.write(DRIVER_FEATURES_SEL, 4, 0)
        device.write(DRIVER_FEATURES, 4, self.device_features(0) & ~(3 << 28))  # no indirect, no event index
        device.write(DRIVER_FEATURES_SEL, 4, 1)
        device.write(DRIVER_FEATURES, 4, 1)  # VERSION_1
        device.write(STATUS, 4, 3 | STATUS_FEATURES_OK)
        assert device.read(STATUS, 4) & STATUS_FEATURES_OK
        for queue, rings in enumerate(self.rings):
            device.write(QUEUE_SEL, 4, queue)
            device.write(QUEUE_NUM, 4, QUEUE_SIZE)
            for register, address in zip((QUEUE_DESC, QUEUE_DRIVER, QUEUE_DEVICE), rings, strict=True):
                device.write(register, 4, address)
                device.write(register + 4, 4, 0)
            device.write(QUEUE_READY, 4, 1)
        device.write(STATUS, 4, 0xF)

    def device_features(self, word: int) -> int:
        self.device.write(FEATURES_SEL, 4, word)
        return self.device.read(FEATURES, 4)

    def buffer(self, queue: int, chain: int, segment: int = 0) -> int:
        """Where segment ``segment`` of the ``chain``-th chain offered on ``queue`` lives."""
        return self.buffers[queue] + SEGMENT * (CHAIN_SLOTS * (chain % CHAIN_SLOTS) + segment)

    def offer(self, queue: int, segments: Sequence[bytes | int], *, notify: bool = True) -> int:
        """Make a chain available: bytes are device-readable data, an int a device-writable buffer of that size.

        Returns the chain's number (for :meth:`buffer`).
        """
        number = self.offered[queue]
        table, avail, _ = self.rings[queue]
        head = CHAIN_SLOTS * (number % CHAIN_SLOTS)
        for i, segment in enumerate(segments):
            address = self.buffer(queue, number, i)
            if isinstance(segment, int):
                length, flags = segment, VIRTQ_DESC_F_WRITE
                self.machine.write(address, b"\xee" * min(segment, SEGMENT))
            else:
                length, flags = len(segment), 0
                self.machine.write(address, segment)
            flags |= VIRTQ_DESC_F_NEXT if i < len(segments) - 1 else 0
            self.machine.write(table + 16 * (head + i), struct.pack("<QIHH", address, length, flags, head + i + 1))
        self.heads[queue][head] = number
        self.machine.write(avail + 4 + 2 * (number % QUEUE_SIZE), struct.pack("<H", head))
        self.offered[queue] = number + 1
        self.machine.write(avail + 2, struct.pack("<H", self.offered[queue]))
        if notify:
            self.notify(queue)
        return number

    def notify(self, queue: int) -> None:
        self.device.write(QUEUE_NOTIFY, 4, queue)

    def used(self, queue: int) -> list[tuple[int, int]]:
        """The (chain number, length) pairs the device returned on ``queue`` since the last call."""
        used = self.rings[queue][2]
        index = struct.unpack("<H", self.machine.read(used + 2, 2))[0]
        entries = []
        while self.seen[queue] != index:
            head, length = struct.unpack("<II", self.machine.read(used + 4 + 8 * (self.seen[queue] % QUEUE_SIZE), 8))
            entries.append((self.heads[queue].pop(head), length))
            self.seen[queue] += 1
        return entries

    def wait_used(self, queue: int, count: int = 1, timeout: float = 5.0) -> list[tuple[int, int]]:
        """:meth:`used`, waiting until ``count`` entries came (the device fills from another thread)."""
        entries: list[tuple[int, int]] = []
        deadline = time.monotonic() + timeout
        while len(entries) < count and time.monotonic() < deadline:
            entries += self.used(queue)
            time.sleep(0.001)
        return entries

    @property
    def outstanding(self) -> int:
        """Chains offered on either queue and not yet returned."""
        return sum(len(heads) for heads in self.heads)

    def read(self, queue: int, chain: int, length: int) -> bytes:
        """``length`` bytes of the chain's first buffer."""
        return self.machine.read(self.buffer(queue, chain), length)


def test_the_device_says_what_it_is(machine: Machine) -> None:
    device = VirtioMmio(VirtioConsole(size=(132, 43)), machine)
    assert device.read(0x8, 4) == 3
    device.write(FEATURES_SEL, 4, 0)
    assert device.read(FEATURES, 4) & 0xFFFFFF == VIRTIO_CONSOLE_F_SIZE | VIRTIO_CONSOLE_F_EMERG_WRITE
    assert (device.read(0x100, 2), device.read(0x102, 2), device.read(0x104, 4)) == (132, 43, 1)
    assert device.read(0x10C, 4) == 0xFFFFFFFF  # beyond the configuration space
    for queue, maximum in ((0, 64), (1, 64), (2, 0)):  # receiveq, transmitq, and no control queues
        device.write(QUEUE_SEL, 4, queue)
        assert device.read(QUEUE_NUM_MAX, 4) == maximum
    plain = VirtioMmio(VirtioConsole(size=None), machine)
    plain.write(FEATURES_SEL, 4, 0)
    assert plain.read(FEATURES, 4) & VIRTIO_CONSOLE_F_SIZE == 0


def test_guest_output_reaches_the_stream_and_data(machine: Machine) -> None:
    line, stream = Line(), io.BytesIO()
    console = VirtioConsole(stream)
    driver = Driver(machine, VirtioMmio(console, machine, line))
    assert not console.wait_for(b"hello", timeout=0)
    chain = driver.offer(1, [b"hello, ", b"world\n"])
    assert driver.used(1) == [(chain, 0)]
    assert stream.getvalue() == b"hello, world\n" == console.data
    assert console.text() == "hello, world\n"
    assert console.wait_for(b"world", timeout=0)
    assert driver.device.read(INTERRUPT_STATUS, 4) == 1 and line.level
    driver.device.write(0x108, 4, ord("!"))  # emerg_wr
    assert console.data.endswith(b"!")


def test_an_output_chain_over_the_limit_is_cut_and_counted(machine: Machine) -> None:
    console = VirtioConsole()
    driver = Driver(machine, VirtioMmio(console, machine))
    table, avail, _ = RINGS[1]
    machine.write(table, struct.pack("<QIHH", 0, MAX_TRANSMIT + 5, 0, 0))  # 1 MiB + 5 bytes from address 0
    machine.write(avail + 4, struct.pack("<H", 0))
    machine.write(avail + 2, struct.pack("<H", 1))
    driver.notify(1)
    assert len(console.data) == MAX_TRANSMIT and console.output_dropped == 5


def test_input_waits_for_the_guest_to_offer_buffers(machine: Machine) -> None:
    line = Line()
    console = VirtioConsole()
    device = VirtioMmio(console, machine, line)
    console.feed(b"before the driver")  # nothing to deliver to yet
    driver = Driver(machine, device)
    assert console.queued_input == 17 and driver.used(0) == []
    first = driver.offer(0, [6])  # the notification delivers what fits
    assert driver.used(0) == [(first, 6)] and driver.read(0, first, 6) == b"before"
    assert console.queued_input == 11 and line.level
    second = driver.offer(0, [4, 100])  # a chain of two buffers takes the rest
    assert driver.used(0) == [(second, 11)]
    assert driver.read(0, second, 4) + machine.read(driver.buffer(0, second, 1), 7) == b" the driver"
    assert console.queued_input == 0
    third = driver.offer(0, [64])  # an offered buffer with nothing to put in it stays with the device
    assert driver.used(0) == []
    device.write(INTERRUPT_ACK, 4, 1)
    console.feed(b"typed")  # a feed fills it at once, and interrupts
    assert driver.used(0) == [(third, 5)] and driver.read(0, third, 5) == b"typed"
    assert device.read(INTERRUPT_STATUS, 4) == 1 and line.level


def test_input_is_bounded(machine: Machine) -> None:
    console = VirtioConsole(input_limit=8)
    console.feed(b"12345678")
    with pytest.raises(ResourceExhausted, match="input limit of 8"):
        console.feed(b"9")
    assert console.queued_input == 8  # the refused feed queued nothing
    driver = Driver(machine, VirtioMmio(console, machine))
    chain = driver.offer(0, [3])
    assert driver.read(0, chain, 3) == b"123"
    console.feed(b"abc")  # room again
    chain = driver.offer(0, [64])
    assert driver.used(0) == [(0, 3), (chain, 8)] and driver.read(0, chain, 8) == b"45678abc"


def test_feeds_from_many_threads_arrive_whole_and_in_order(machine: Machine) -> None:
    """Typists feed while the guest offers buffers: the feeds' threads fill the buffers the driver offered."""
    console = VirtioConsole()
    driver = Driver(machine, VirtioMmio(console, machine))
    chunks = [bytes([65 + t]) * 10 for t in range(4)]

    def typist(chunk: bytes) -> None:
        for _ in range(50):
            console.feed(chunk)

    threads = [threading.Thread(target=typist, args=(chunk,)) for chunk in chunks]
    for thread in threads:
        thread.start()
    received = bytearray()
    deadline = time.monotonic() + 30
    while len(received) < 2000 and time.monotonic() < deadline:
        if driver.outstanding < CHAIN_SLOTS:
            driver.offer(0, [100])
        for number, length in driver.used(0):
            received += driver.read(0, number, length)
    for thread in threads:
        thread.join()
    assert len(received) == 2000 and console.queued_input == 0
    assert all(received[i : i + 10] in chunks for i in range(0, 2000, 10))  # each feed whole, none interleaved
    assert sorted(received) == sorted(b"".join(chunks) * 50)


def test_a_hostile_ring_needs_a_reset_and_the_other_devices_carry_on(machine: Machine) -> None:
    console = VirtioConsole()
    device = add_virtio_mmio(machine, console)
    rng = add_virtio_mmio(machine, VirtioRng())
    _driver_up(rng)  # its rings at test_virtio_mmio's addresses
    driver = Driver(machine, device)
    table, avail, _ = RINGS[1]
    machine.write(table, struct.pack("<QIHH", BUFFERS[1], 4, VIRTQ_DESC_F_NEXT, 0))  # descriptor 0 loops
    machine.write(avail + 4, struct.pack("<H", 0))
    machine.write(avail + 2, struct.pack("<H", 1))
    driver.notify(1)
    assert device.read(STATUS, 4) & STATUS_DEVICE_NEEDS_RESET
    assert isinstance(device.problem, GuestDataError) and "loops" in str(device.problem)
    console.feed(b"kept")  # input waits through the broken state and the reset
    assert console.queued_input == 4
    machine.write(TABLE, struct.pack("<QIHH", BUFFER, 16, VIRTQ_DESC_F_WRITE, 0))  # the rng next to it serves
    _offer(machine, 0, 0)
    rng.write(QUEUE_NOTIFY, 4, 0)
    assert struct.unpack("<HHII", machine.read(USED, 12)) == (0, 1, 0, 16) and rng.problem is None
    device.write(STATUS, 4, 0)
    driver = Driver(machine, device)
    chain = driver.offer(0, [16])
    assert driver.used(0) == [(chain, 4)] and driver.read(0, chain, 4) == b"kept"
    driver.offer(1, [b"again"])
    assert console.data == b"again" and device.problem is None and rng.problem is None


def test_a_hostile_receive_ring_found_by_a_feed_needs_a_reset(machine: Machine) -> None:
    console = VirtioConsole()
    device = VirtioMmio(console, machine)
    driver = Driver(machine, device)
    table, avail, _ = RINGS[0]
    machine.write(table, struct.pack("<QIHH", 0xFFFF_0000, 16, VIRTQ_DESC_F_WRITE, 0))  # a buffer outside RAM
    machine.write(avail + 4, struct.pack("<H", 0))
    machine.write(avail + 2, struct.pack("<H", 1))
    typist = threading.Thread(target=console.feed, args=(b"input",))
    typist.start()
    typist.join()
    assert device.read(STATUS, 4) & STATUS_DEVICE_NEEDS_RESET
    assert device.problem is not None and "not in guest RAM" in str(device.problem)
    assert console.queued_input == 5  # nothing was lost
    device.write(STATUS, 4, 0)
    driver = Driver(machine, device)
    chain = driver.offer(0, [16])
    assert driver.used(0) == [(chain, 5)] and driver.read(0, chain, 5) == b"input"


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"size": (80,)}, InvalidArgument),
        ({"size": (1 << 16, 25)}, InvalidArgument),
        ({"input_limit": 0}, InvalidArgument),
        ({"name": 3}, TypeError),
    ],
)
def test_bad_arguments_are_refused(arguments: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        VirtioConsole(**arguments)  # type: ignore[arg-type]


def test_feed_takes_bytes_only() -> None:
    with pytest.raises(TypeError):
        VirtioConsole().feed("text")  # type: ignore[arg-type]
