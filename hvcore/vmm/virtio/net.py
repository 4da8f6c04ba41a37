"""virtio-net (network device, ID 1; virtio spec 1.2, section 5.1): one receive and one transmit queue.

Offered: VIRTIO_NET_F_MAC (the configuration space holds the MAC address), VIRTIO_NET_F_STATUS
(the link is up) and VIRTIO_NET_F_MTU; no offloads, no mergeable receive buffers, no control
queue, no multiqueue. With VERSION_1 every packet starts with the 12-byte ``virtio_net_hdr_v1``
(section 5.1.6): the device writes it with no offload flags and ``num_buffers`` 1, and ignores
the one the driver sends (a conforming driver leaves its offload fields 0, none being offered).

Frames go to and come from a :class:`~hvcore.vmm.virtio.net_backends.NetBackend`. Received frames
(:meth:`VirtioNet.receive`, any thread) wait in a bounded backlog until the guest offers receive
buffers; beyond ``backlog`` frames they are dropped and counted, as a NIC without descriptors
drops. Each receive chain takes one whole frame and its header, mergeable buffers not being
negotiated: a chain too small for the next frame is returned with nothing written (used length
0, which Linux counts as a length error before it refills) and that frame is dropped and counted.
Frames shorter than an Ethernet header, or longer than :attr:`VirtioNet.max_frame` (``mtu`` plus
an Ethernet header and one VLAN tag, what Linux sizes its receive buffers for), are dropped either way.
A device reset drops the backlog. The device closes its backend when it closes.
"""

from __future__ import annotations

import os
import struct
import threading
from collections import deque
from collections.abc import Callable
from typing import Final

from hvcore.arguments import check_bytes, check_implements, check_int, check_str
from hvcore.errors import InvalidArgument
from hvcore.vmm.virtio.net_backends import NetBackend
from hvcore.vmm.virtio.queue import SplitQueue

__all__ = [
    "ETHERNET_HEADER",
    "NET_HEADER",
    "VIRTIO_NET_F_MAC",
    "VIRTIO_NET_F_MTU",
    "VIRTIO_NET_F_STATUS",
    "VIRTIO_NET_S_LINK_UP",
    "VirtioNet",
    "format_mac",
    "parse_mac",
]

VIRTIO_NET_F_MTU: Final = 1 << 3
"""The configuration space holds the largest MTU the device takes."""
VIRTIO_NET_F_MAC: Final = 1 << 5
"""The configuration space holds the MAC address."""
VIRTIO_NET_F_STATUS: Final = 1 << 16
"""The configuration space holds the link status."""
VIRTIO_NET_S_LINK_UP: Final = 1
"""``status``: the link is up."""
NET_HEADER: Final = 12
"""Bytes of ``virtio_net_hdr_v1`` before every frame (flags, gso_type, hdr_len, gso_size, csum_start,
csum_offset, num_buffers)."""
ETHERNET_HEADER: Final = 14
"""Destination, source, EtherType: the shortest frame the device passes."""
_VLAN_TAG: Final = 4
_RECEIVEQ, _TRANSMITQ = 0, 1
_RX_HEADER: Final = struct.pack("<BBHHHHH", 0, 0, 0, 0, 0, 0, 1)  # no flags, GSO_NONE, num_buffers 1


def parse_mac(mac: str | bytes) -> bytes:
    """A unicast MAC address from ``"52:54:00:12:34:56"`` or 6 bytes; ``InvalidArgument`` otherwise."""
    if isinstance(mac, str):
        parts = mac.split(":")
        try:
            value = bytes(int(part, 16) for part in parts) if all(len(p) == 2 for p in parts) else b""
        except ValueError:
            value = b""
    elif isinstance(mac, bytes | bytearray):
        value = bytes(mac)
    else:
        raise InvalidArgument(f"mac must be a str or bytes, not {type(mac).__name__}", operation="parse_mac")
    if len(value) != 6:
        raise InvalidArgument(
            f"mac {mac!r} is not a MAC address (six bytes, e.g. '52:54:00:12:34:56')", operation="parse_mac"
        )
    if value[0] & 1:
        raise InvalidArgument(
            f"mac {format_mac(value)} is a multicast address; a NIC needs a unicast one", operation="parse_mac"
        )
    return value


def format_mac(mac: bytes) -> str:
    """``aa:bb:cc:dd:ee:ff``."""
    return ":".join(f"{b:02x}" for b in mac)


class VirtioNet:
    """A NIC on ``backend``: MAC ``mac`` (default: random, locally administered), link up, ``mtu``."""

    device_id = 1

    def __init__(
        self,
        backend: NetBackend,
        *,
        mac: str | bytes | None = None,
        mtu: int = 1500,
        name: str = "virtio-net",
        backlog: int = 256,
        queue_size: int = 256,
    ) -> None:
        check_implements("backend", backend, NetBackend, "VirtioNet")
        check_str("name", name, "VirtioNet")
        check_int("mtu", mtu, "VirtioNet", 68, 1 << 16)
        check_int("backlog", backlog, "VirtioNet", 1)
        check_int("queue_size", queue_size, "VirtioNet", 1)
        self.name = name
        self.mac = parse_mac(mac) if mac is not None else bytes((os.urandom(1)[0] & 0xFC | 0x02,)) + os.urandom(5)
        """The MAC address the configuration space holds."""
        self.mtu = mtu
        self.max_frame = mtu + ETHERNET_HEADER + _VLAN_TAG
        """The longest frame passed either way (without the virtio header)."""
        self.backlog = backlog
        """The most received frames kept waiting for guest buffers."""
        self.features = VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS | VIRTIO_NET_F_MTU
        self.queue_sizes: tuple[int, ...] = (queue_size, queue_size)
        self._config = struct.pack("<6sHHH", self.mac, VIRTIO_NET_S_LINK_UP, 1, mtu)
        self.tx_frames = 0
        """Frames the guest transmitted that went to the backend."""
        self.tx_dropped = 0
        """Frames the backend could not take (it raised ``OSError``)."""
        self.tx_errors = 0
        """Transmit chains not sent: shorter than the header, or a frame shorter than 14 bytes or over ``max_frame``."""
        self.rx_frames = 0
        """Frames delivered into guest buffers."""
        self.rx_dropped = 0
        """Received frames dropped for want of guest buffers: the backlog was full, or the device was reset."""
        self.rx_errors = 0
        """Received frames dropped for their size: under 14 bytes, over ``max_frame``, or over the guest's buffer."""
        self.backend = backend
        self._frames: deque[bytes] = deque()
        self._lock = threading.Lock()  # the backlog and the counters
        self._wake: Callable[[int], None] | None = None
        backend.attach(self.receive)

    # -- the host side ----------------------------------------------------------------------------

    def receive(self, frame: bytes) -> bool:
        """A frame from the network, for the guest; any thread. False if it was dropped (see the module docstring)."""
        check_bytes("frame", frame, "receive")
        with self._lock:
            if not ETHERNET_HEADER <= len(frame) <= self.max_frame:
                self.rx_errors += 1
                return False
            if len(self._frames) >= self.backlog:
                self.rx_dropped += 1
                return False
            self._frames.append(bytes(frame))
        wake = self._wake
        if wake is not None:
            wake(_RECEIVEQ)
        return True

    @property
    def queued_frames(self) -> int:
        """Received frames waiting for guest buffers."""
        with self._lock:
            return len(self._frames)

    def close(self) -> None:
        """Close the backend (idempotent); the machine calls this when it closes."""
        self.backend.close()

    # -- the VirtioDevice protocol ------------------------------------------------------------------

    def read_config(self, offset: int, size: int) -> int:
        """``mac``, ``status`` (link up), ``max_virtqueue_pairs`` (1), ``mtu``; all-ones beyond."""
        data = self._config[offset : offset + size]
        return int.from_bytes(data.ljust(size, b"\xff"), "little")

    def write_config(self, offset: int, size: int, value: int) -> None:
        """Read-only configuration (the MAC is fixed without VIRTIO_NET_F_CTRL_MAC_ADDR): ignored."""

    def process(self, index: int, queue: SplitQueue) -> None:
        """Receive queue: fill offered buffers with waiting frames. Transmit queue: send every frame."""
        if index == _RECEIVEQ:
            self._fill(queue)
        else:
            self._transmit(queue)

    def reset(self) -> None:
        """Drop the frames waiting for buffers (counted in ``rx_dropped``)."""
        with self._lock:
            self.rx_dropped += len(self._frames)
            self._frames.clear()

    def attach(self, wake: Callable[[int], None]) -> None:
        """Keep the transport's callback: :meth:`receive` wakes the receive queue with it."""
        self._wake = wake

    # -- inside -------------------------------------------------------------------------------------

    def _fill(self, queue: SplitQueue) -> None:
        # Only this method and reset() take frames out, and the transport serialises both.
        while self.queued_frames:
            chain = queue.pop()
            if chain is None:
                return  # the rest wait for the next buffers
            with self._lock:
                frame = self._frames.popleft()
            packet = _RX_HEADER + frame
            if chain.writable_length < len(packet):
                with self._lock:
                    self.rx_errors += 1
                queue.push(chain, 0)
                continue
            queue.write(chain, packet)
            queue.push(chain, len(packet))
            with self._lock:
                self.rx_frames += 1

    def _transmit(self, queue: SplitQueue) -> None:
        for chain in queue:
            length = chain.readable_length - NET_HEADER
            if not ETHERNET_HEADER <= length <= self.max_frame:
                with self._lock:
                    self.tx_errors += 1
                queue.push(chain, 0)
                continue
            frame = queue.read(chain)[NET_HEADER:]
            queue.push(chain, 0)
            try:
                self.backend.send(frame)
            except OSError:
                sent = False
            else:
                sent = True
            with self._lock:
                if sent:
                    self.tx_frames += 1
                else:
                    self.tx_dropped += 1
