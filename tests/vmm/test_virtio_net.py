"""virtio-net (:mod:`hvcore.vmm.virtio.net`) and its backends, rings built by hand in RAM, on each backend.

The device with an in-memory backend (transmit, receive into posted buffers, the backlog, frames
and buffers of the wrong size, a hostile ring); over a socket pair (to a test, to a second machine),
the reader thread and descriptors released by ``close()``; over a TAP interface where the host lets
this process make one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hvcore import BackendUnavailable, GuestDataError, Hypervisor, InvalidArgument, StateError
from hvcore.vmm.machine import Machine
from hvcore.vmm.virtio import (
    STATUS_DEVICE_NEEDS_RESET,
    VIRTQ_DESC_F_NEXT,
    CallbackBackend,
    SocketBackend,
    TapBackend,
    VirtioConsole,
    VirtioMmio,
    VirtioNet,
    add_virtio_mmio,
)
from hvcore.vmm.virtio.net import (
    NET_HEADER,
    VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS,
    format_mac,
    parse_mac,
)
from tests.vmm.test_virtio_console import BUFFERS, RINGS, Driver
from tests.vmm.test_virtio_mmio import FEATURES, FEATURES_SEL, INTERRUPT_ACK, INTERRUPT_STATUS, STATUS, Line

MAC = "52:54:00:12:34:56"
PEER = bytes.fromhex("525400abcdef")
RX_HEADER = struct.pack("<BBHHHHH", 0, 0, 0, 0, 0, 0, 1)  # no offloads, num_buffers 1
RX_BUFFER = NET_HEADER + 1518
"""What Linux posts without mergeable buffers: the header and a 1500-byte frame with a VLAN tag."""
EXPERIMENTAL = 0x88B5
"""IEEE 802 local experimental EtherType: frames no host stack answers."""


def frame(payload: bytes, destination: bytes = bytes.fromhex(MAC.replace(":", "")), source: bytes = PEER) -> bytes:
    return destination + source + struct.pack(">H", EXPERIMENTAL) + payload


def transmitted(payload: bytes) -> list[bytes]:
    """The chain a driver transmits ``frame(payload)`` with: its header, then the frame."""
    return [bytes(NET_HEADER), frame(payload)]


class Recorder:
    """Frames the backend was given, with a wait for them (they may come from another thread)."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.arrived = threading.Condition()

    def __call__(self, data: bytes) -> None:
        with self.arrived:
            self.frames.append(data)
            self.arrived.notify_all()

    def wait(self, count: int, timeout: float = 5.0) -> list[bytes]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.frames) >= count, timeout)
            return list(self.frames)


@pytest.fixture
def machine(hv: Hypervisor) -> Iterator[Machine]:
    with Machine(hv, memory=1 << 20, irqchip=False) as m:
        yield m


def test_the_device_says_what_it_is(machine: Machine) -> None:
    net = VirtioNet(CallbackBackend(Recorder()), mac=MAC, mtu=1400)
    device = VirtioMmio(net, machine)
    assert device.read(0x8, 4) == 1
    device.write(FEATURES_SEL, 4, 0)
    assert device.read(FEATURES, 4) & 0xFFFFFF == VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS | VIRTIO_NET_F_MTU
    assert bytes(device.read(0x100 + i, 1) for i in range(6)) == parse_mac(MAC)
    assert (device.read(0x106, 2), device.read(0x10A, 2)) == (1, 1400)  # link up; mtu
    assert device.read(0x10C, 4) == 0xFFFFFFFF
    assert net.max_frame == 1400 + 18
    other = VirtioNet(CallbackBackend(Recorder()))
    assert other.mac[0] & 3 == 2 and format_mac(other.mac) != MAC  # random, unicast, locally administered


def test_a_transmitted_frame_reaches_the_backend_without_its_header(machine: Machine) -> None:
    line, sent = Line(), Recorder()
    net = VirtioNet(CallbackBackend(sent), mac=MAC)
    driver = Driver(machine, VirtioMmio(net, machine, line))
    first = driver.offer(1, transmitted(b"split"))  # header and frame in two descriptors
    second = driver.offer(1, [bytes(NET_HEADER) + frame(b"whole")])  # in one, as Linux does with VERSION_1
    assert driver.used(1) == [(first, 0), (second, 0)]
    assert sent.frames == [frame(b"split"), frame(b"whole")]
    assert net.tx_frames == 2 and line.level


def test_malformed_or_undeliverable_transmits_are_counted_and_returned(machine: Machine) -> None:
    def refuse(data: bytes) -> None:
        raise BlockingIOError("full")

    net = VirtioNet(CallbackBackend(refuse), mac=MAC)
    driver = Driver(machine, VirtioMmio(net, machine))
    driver.offer(1, [bytes(5)])  # shorter than the header
    driver.offer(1, [bytes(NET_HEADER) + b"short"])  # shorter than an Ethernet header
    driver.offer(1, [bytes(NET_HEADER), frame(bytes(1600))])  # over max_frame
    driver.offer(1, transmitted(b"fine"))  # the backend cannot take it
    assert [length for _, length in driver.used(1)] == [0, 0, 0, 0]
    assert (net.tx_frames, net.tx_errors, net.tx_dropped) == (0, 3, 1)


def test_a_received_frame_fills_a_posted_buffer_with_the_header(machine: Machine) -> None:
    line = Line()
    backend = CallbackBackend(Recorder())
    net = VirtioNet(backend, mac=MAC)
    device = VirtioMmio(net, machine, line)
    driver = Driver(machine, device)
    chain = driver.offer(0, [RX_BUFFER])
    assert driver.used(0) == [] and not line.level  # a buffer with no frame for it stays with the device
    backend.deliver(frame(b"ping"))
    packet = RX_HEADER + frame(b"ping")
    assert driver.used(0) == [(chain, len(packet))]
    assert driver.read(0, chain, len(packet)) == packet
    assert device.read(INTERRUPT_STATUS, 4) == 1 and line.level and net.rx_frames == 1
    device.write(INTERRUPT_ACK, 4, 1)
    split = driver.offer(0, [NET_HEADER, 40, 2000])  # the header and the frame over three buffers
    backend.deliver(frame(b"x" * 100))
    assert driver.used(0) == [(split, NET_HEADER + 114)]
    pieces = b"".join(machine.read(driver.buffer(0, split, i), n) for i, n in enumerate((NET_HEADER, 40, 74)))
    assert pieces == RX_HEADER + frame(b"x" * 100)


def test_received_frames_wait_for_buffers_in_a_bounded_backlog(machine: Machine) -> None:
    net = VirtioNet(CallbackBackend(Recorder()), mac=MAC, backlog=2)
    device = VirtioMmio(net, machine)
    assert net.receive(frame(b"one"))  # before the driver is even there
    driver = Driver(machine, device)
    assert net.receive(frame(b"two"))
    assert not net.receive(frame(b"three"))  # the backlog is full: dropped
    assert (net.queued_frames, net.rx_dropped) == (2, 1)
    assert driver.used(0) == []
    first, second = driver.offer(0, [RX_BUFFER]), driver.offer(0, [RX_BUFFER])
    assert [n for n, _ in driver.used(0)] == [first, second]
    assert driver.read(0, first, NET_HEADER + 17)[NET_HEADER:] == frame(b"one")
    assert driver.read(0, second, NET_HEADER + 17)[NET_HEADER:] == frame(b"two")
    assert net.queued_frames == 0 and net.rx_frames == 2


def test_frames_and_buffers_of_the_wrong_size(machine: Machine) -> None:
    net = VirtioNet(CallbackBackend(Recorder()), mac=MAC, mtu=1500)
    driver = Driver(machine, VirtioMmio(net, machine))
    assert not net.receive(b"\x01" * 13)  # shorter than an Ethernet header
    assert not net.receive(frame(bytes(1505)))  # over mtu + 18
    assert net.receive(frame(bytes(1500)))  # 1518 bytes: a full frame with a VLAN tag
    assert net.rx_errors == 2
    small = driver.offer(0, [64])  # too small for the frame: returned empty, the frame dropped
    assert driver.used(0) == [(small, 0)] and net.rx_errors == 3 and net.queued_frames == 0
    assert net.receive(frame(b"fits"))
    chain = driver.offer(0, [64])
    assert driver.used(0) == [(chain, NET_HEADER + 18)]


def test_a_hostile_ring_needs_a_reset_and_the_other_devices_carry_on(machine: Machine) -> None:
    backend = CallbackBackend(Recorder())
    net = VirtioNet(backend, mac=MAC)
    device = add_virtio_mmio(machine, net)
    console = VirtioConsole()
    console_driver = Driver(machine, add_virtio_mmio(machine, console), second=True)
    driver = Driver(machine, device)
    table, avail, _ = RINGS[1]
    machine.write(table, struct.pack("<QIHH", BUFFERS[1], NET_HEADER, VIRTQ_DESC_F_NEXT, 1))
    machine.write(table + 16, struct.pack("<QIHH", 0xFFFF_0000, 64, 0, 0))  # the frame outside RAM
    machine.write(avail + 4, struct.pack("<H", 0))
    machine.write(avail + 2, struct.pack("<H", 1))
    driver.notify(1)
    assert device.read(STATUS, 4) & STATUS_DEVICE_NEEDS_RESET
    assert isinstance(device.problem, GuestDataError) and "not in guest RAM" in str(device.problem)
    backend.deliver(frame(b"ignored"))
    assert net.queued_frames == 1  # it waits: the queues are ignored until the reset
    console_driver.offer(1, [b"still here"])
    assert console.data == b"still here"
    device.write(STATUS, 4, 0)  # the reset drops the backlog
    assert (net.queued_frames, net.rx_dropped) == (0, 1)
    driver = Driver(machine, device)
    backend.deliver(frame(b"after"))
    chain = driver.offer(0, [RX_BUFFER])
    assert driver.used(0) == [(chain, NET_HEADER + 19)] and device.problem is None


def test_a_hostile_receive_ring_found_by_a_received_frame_needs_a_reset(machine: Machine) -> None:
    """The frame's own thread (the backend's) processes the queue: the transport catches the guest's error there."""
    backend = CallbackBackend(Recorder())
    net = VirtioNet(backend, mac=MAC)
    device = VirtioMmio(net, machine)
    Driver(machine, device)
    _, avail, _ = RINGS[0]
    machine.write(avail + 4, struct.pack("<H", 99))  # a head outside the table of 16
    machine.write(avail + 2, struct.pack("<H", 1))
    receiver = threading.Thread(target=backend.deliver, args=(frame(b"hostile"),))
    receiver.start()
    receiver.join()
    assert device.read(STATUS, 4) & STATUS_DEVICE_NEEDS_RESET
    assert device.problem is not None and "outside the descriptor table" in str(device.problem)
    assert net.queued_frames == 1 and net.rx_frames == 0  # the frame was not taken


# -- the socket backend ---------------------------------------------------------------------------


def reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("hvcore-net-")]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("kind", [socket.SOCK_SEQPACKET, socket.SOCK_DGRAM])
def test_a_socket_pair_carries_frames_both_ways(hv: Hypervisor, kind: socket.SocketKind) -> None:
    fds, threads = open_fds(), len(reader_threads())
    ours, theirs = socket.socketpair(socket.AF_UNIX, kind)
    with theirs, Machine(hv, memory=1 << 20, irqchip=False) as machine:
        net = VirtioNet(SocketBackend(ours, name="test"), mac=MAC)
        driver = Driver(machine, add_virtio_mmio(machine, net))
        assert [t.name for t in reader_threads()][threads:] == ["hvcore-net-test"]
        driver.offer(1, transmitted(b"to the test"))
        theirs.settimeout(5)
        assert theirs.recv(4096) == frame(b"to the test")
        chain = driver.offer(0, [RX_BUFFER])
        theirs.send(frame(b"to the guest"))  # the reader thread fills the buffer
        assert driver.wait_used(0) == [(chain, NET_HEADER + 26)]
        assert driver.read(0, chain, NET_HEADER + 26) == RX_HEADER + frame(b"to the guest")
    # the machine closed the device, which closed its backend: the thread joined, the socket closed
    assert len(reader_threads()) == threads and open_fds() == fds
    assert ours.fileno() == -1
    net.close()  # again: nothing happens


def test_two_machines_talk_over_a_socket_pair(hv: Hypervisor) -> None:
    left_socket, right_socket = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with (
        Machine(hv, memory=1 << 20, irqchip=False) as left_machine,
        Machine(hv, memory=1 << 20, irqchip=False) as right_machine,
    ):
        left = Driver(left_machine, add_virtio_mmio(left_machine, VirtioNet(SocketBackend(left_socket), mac=MAC)))
        right_net = VirtioNet(SocketBackend(right_socket), mac=PEER)
        right = Driver(right_machine, add_virtio_mmio(right_machine, right_net))
        chain = right.offer(0, [RX_BUFFER])
        left.offer(1, transmitted(b"hello, right"))
        assert right.wait_used(0) == [(chain, NET_HEADER + 26)]
        assert right.read(0, chain, NET_HEADER + 26)[NET_HEADER:] == frame(b"hello, right")
        chain = left.offer(0, [RX_BUFFER])
        right.offer(1, [bytes(NET_HEADER) + frame(b"hello, left", destination=PEER, source=parse_mac(MAC))])
        assert left.wait_used(0) == [(chain, NET_HEADER + 25)]
        assert right_net.tx_frames == 1


def test_a_peer_that_closes_ends_the_reader() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    backend = SocketBackend(ours, name="closing")
    VirtioNet(backend)
    theirs.close()
    deadline = time.monotonic() + 5
    while any(t.name == "hvcore-net-closing" for t in reader_threads()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "hvcore-net-closing" for t in reader_threads())
    backend.close()
    backend.close()


def test_backend_misuse_is_refused() -> None:
    stream, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with stream, other, pytest.raises(InvalidArgument, match="one frame per message"):
        SocketBackend(stream)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    backend = SocketBackend(ours)
    VirtioNet(backend)
    with pytest.raises(StateError, match="already attached"):
        VirtioNet(backend)
    backend.close()
    theirs.close()
    with pytest.raises(StateError, match="no device"):
        CallbackBackend(print).deliver(b"x" * 14)
    with pytest.raises(TypeError):
        VirtioNet(object())  # type: ignore[arg-type]
    for mac in ("01:00:5e:00:00:01", "52:54:00:12:34", "zz:54:00:12:34:56", b"12345"):
        with pytest.raises(InvalidArgument):
            VirtioNet(CallbackBackend(print), mac=mac)


# -- the TAP backend ------------------------------------------------------------------------------

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def _bring_up(interface: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as control:
        request = struct.pack("16sH22x", interface.encode(), 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(control, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(control, SIOCSIFFLAGS, struct.pack("16sH22x", interface.encode(), flags | IFF_UP))


def test_a_tap_interface_carries_frames_both_ways() -> None:
    """The host's stack sees what the device sends, through a packet socket on the interface, and back."""
    fds, threads = open_fds(), len(reader_threads())
    try:
        tap = TapBackend("hvtest%d")
    except BackendUnavailable as error:
        pytest.skip(f"no TAP interface here: {error.message}")
    try:
        _bring_up(tap.interface)
        packets = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(EXPERIMENTAL))
    except PermissionError as error:
        tap.close()
        pytest.skip(f"cannot bring {tap.interface} up or open a packet socket on it: {error.strerror}")
    assert tap.interface.startswith("hvtest") and Path(f"/sys/class/net/{tap.interface}").exists()
    received = Recorder()
    with packets:
        packets.bind((tap.interface, EXPERIMENTAL))
        packets.settimeout(5)
        tap.attach(received)
        tap.send(frame(b"from the guest", destination=b"\xff" * 6))
        assert packets.recv(4096) == frame(b"from the guest", destination=b"\xff" * 6)
        packets.send(frame(b"from the host"))
        deadline = time.monotonic() + 5
        while frame(b"from the host") not in received.frames and time.monotonic() < deadline:
            received.wait(len(received.frames) + 1, timeout=0.1)  # the host's own frames (IPv6) come too
        assert frame(b"from the host") in received.frames
    tap.close()
    tap.close()
    assert not Path(f"/sys/class/net/{tap.interface}").exists()  # the interface went with the descriptor
    assert len(reader_threads()) == threads and open_fds() == fds
    with pytest.raises(OSError, match="closed"):
        tap.send(frame(b"late"))


def test_a_tap_name_is_checked() -> None:
    with pytest.raises(InvalidArgument, match="interface name"):
        TapBackend("x" * 16)
    with contextlib.suppress(BackendUnavailable), pytest.raises(InvalidArgument):
        TapBackend("a/b")
