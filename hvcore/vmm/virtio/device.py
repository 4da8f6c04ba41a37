"""What a virtio device model is to its transport (virtio-mmio, virtio-pci).

A device says what it is (``device_id``), what it offers (``features``), how big its queues may
be (``queue_sizes``) and what its configuration space holds; the transport does feature
negotiation, status, queue set-up, notifications and interrupts, and calls :meth:`VirtioDevice.process`
when the driver notifies a queue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol, runtime_checkable

from hvcore.vmm.virtio.queue import SplitQueue

__all__ = [
    "STATUS_ACKNOWLEDGE",
    "STATUS_DEVICE_NEEDS_RESET",
    "STATUS_DRIVER",
    "STATUS_DRIVER_OK",
    "STATUS_FAILED",
    "STATUS_FEATURES_OK",
    "VIRTIO_F_INDIRECT_DESC",
    "VIRTIO_F_RING_EVENT_IDX",
    "VIRTIO_F_VERSION_1",
    "VirtioDevice",
]

STATUS_ACKNOWLEDGE: Final = 1
"""Device status: the driver found the device."""
STATUS_DRIVER: Final = 2
"""Device status: the driver knows how to drive it."""
STATUS_DRIVER_OK: Final = 4
"""Device status: the driver is set up; the device may use its queues."""
STATUS_FEATURES_OK: Final = 8
"""Device status: feature negotiation is done (the device clears it to refuse)."""
STATUS_DEVICE_NEEDS_RESET: Final = 64
"""Device status: the device met an error it cannot recover from; the driver must reset it."""
STATUS_FAILED: Final = 128
"""Device status: the driver gave up on the device."""

VIRTIO_F_INDIRECT_DESC: Final = 1 << 28
"""A descriptor may point at a table of descriptors."""
VIRTIO_F_RING_EVENT_IDX: Final = 1 << 29
"""Notifications and interrupts are suppressed by event indices (used_event, avail_event)."""
VIRTIO_F_VERSION_1: Final = 1 << 32
"""Every virtio 1.x device offers it, and a driver that does not accept it is refused."""


@runtime_checkable
class VirtioDevice(Protocol):
    """A virtio device model behind a transport."""

    name: str
    """A short name for statistics and errors, e.g. ``"virtio-rng"``."""
    device_id: int
    """The virtio device ID (1 net, 2 block, 3 console, 4 entropy, ...)."""
    features: int
    """The device-specific feature bits it offers (the transport adds the ring and version bits)."""
    queue_sizes: tuple[int, ...]
    """The largest size of each queue (a power of two up to 32768); the count is the number of queues."""

    def read_config(self, offset: int, size: int) -> int:
        """A driver read of the device configuration space (all-ones beyond it)."""
        ...

    def write_config(self, offset: int, size: int, value: int) -> None:
        """A driver write to the device configuration space (ignored where read-only)."""
        ...

    def process(self, index: int, queue: SplitQueue) -> None:
        """The driver notified queue ``index``: take its chains and push them back when done.

        ``hvcore.GuestDataError`` from the queue may propagate: the transport then marks the
        device as needing a reset.
        """
        ...

    def reset(self) -> None:
        """The driver reset the device (status 0): forget negotiated state."""
        ...

    def attach(self, wake: Callable[[int], None]) -> None:
        """The transport's callback, given once: a device with input of its own (a received packet,
        console bytes) calls ``wake(index)`` from any thread, and the transport calls :meth:`process`
        for queue ``index`` as if the driver had notified it (nothing while the driver is not ready)."""
        ...
