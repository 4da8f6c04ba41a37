"""What every virtio transport does, whatever its registers: status, features, queues, notifications.

:class:`VirtioTransport` holds the driver's side of the device-independent state (virtio spec
1.2, sections 2.1-2.6 and 3.1): the status byte, feature negotiation, each queue's set-up, and
the queues' processing when the driver notifies one or the device has input for one
(:meth:`VirtioTransport.wake`). A transport (virtio-mmio, virtio-pci) maps its registers onto
it and says how an interrupt reaches the guest (:meth:`VirtioTransport.interrupt`).

A guest that hands the device a malformed queue (:class:`hvcore.GuestDataError`) gets
``DEVICE_NEEDS_RESET`` and a configuration-change interrupt; the device ignores its queues until
the driver writes status 0. The VMM and other devices carry on.
"""

from __future__ import annotations

import threading
from typing import Final

from hvcore.errors import GuestDataError
from hvcore.log import get_logger
from hvcore.vmm.virtio.device import (
    STATUS_DEVICE_NEEDS_RESET,
    STATUS_DRIVER_OK,
    STATUS_FEATURES_OK,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_F_VERSION_1,
    VirtioDevice,
)
from hvcore.vmm.virtio.queue import QueueMemory, SplitQueue

__all__ = ["CONFIG_CHANGE", "TRANSPORT_FEATURES", "USED_BUFFER", "QueueSetup", "VirtioTransport"]

_log = get_logger("vmm.virtio")

TRANSPORT_FEATURES: Final = VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_RING_EVENT_IDX
"""The feature bits every hvcore transport offers besides the device's own."""
USED_BUFFER: Final = 1
"""Interrupt cause: the device returned buffers on a queue (bit 0 of the interrupt status / ISR)."""
CONFIG_CHANGE: Final = 2
"""Interrupt cause: the configuration (or the device status: NEEDS_RESET) changed (bit 1)."""


class QueueSetup:
    """What the driver programmed for one queue."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.size = maximum
        self.ready = False
        self.addresses = [0, 0, 0]
        """Descriptor table, driver (available) ring, device (used) ring."""
        self.vector = 0xFFFF
        """The MSI-X vector (virtio-pci; ``NO_VECTOR`` until the driver sets one)."""
        self.queue: SplitQueue | None = None


class VirtioTransport:
    """The state a virtio transport keeps for ``device``; subclasses map registers onto it."""

    def __init__(self, device: VirtioDevice, memory: QueueMemory) -> None:
        self.device = device
        self.memory = memory
        self.lock = threading.RLock()
        """Held for every register access and every queue processing (vCPU threads, device threads)."""
        self.reset()
        device.attach(self.wake)

    def reset(self) -> None:
        """The state after a reset (status 0): nothing negotiated, no queue live."""
        self.status = 0
        """The device status register (ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK, NEEDS_RESET, FAILED bits)."""
        self.driver_features = 0
        self.problem: GuestDataError | None = None
        """The guest error that put the device in DEVICE_NEEDS_RESET, until the driver resets it."""
        self.queues = [QueueSetup(size) for size in self.device.queue_sizes]

    @property
    def offered(self) -> int:
        """Every feature bit the device offers (its own and the transport's)."""
        return self.device.features | TRANSPORT_FEATURES

    def offered_word(self, select: int) -> int:
        """32 bits of :attr:`offered`: word ``select`` (0 or 1; 0 beyond)."""
        return (self.offered >> (32 * select)) & 0xFFFF_FFFF if select < 2 else 0

    def accept_word(self, select: int, value: int) -> None:
        """The driver's features, word ``select``; ignored once FEATURES_OK is set (or beyond word 1)."""
        if select < 2 and not self.status & STATUS_FEATURES_OK:
            shift = 32 * select
            self.driver_features = self.driver_features & ~(0xFFFF_FFFF << shift) | value << shift

    def selected(self, index: int) -> QueueSetup | None:
        """Queue ``index``'s set-up, or ``None`` past the last queue."""
        return self.queues[index] if index < len(self.queues) else None

    def write_status(self, value: int) -> None:
        """The driver writes the status: 0 resets; FEATURES_OK is refused for features not offered or no VERSION_1."""
        if value == 0:
            self.device.reset()
            self.reset()
            return
        if value & STATUS_FEATURES_OK and not self.status & STATUS_FEATURES_OK:
            accepted = self.driver_features
            if accepted & ~self.offered or not accepted & VIRTIO_F_VERSION_1:
                value &= ~STATUS_FEATURES_OK  # refused: the driver reads it back and gives up
        self.status = value | (self.status & STATUS_DEVICE_NEEDS_RESET)

    def enable(self, setup: QueueSetup) -> None:
        """The driver made the queue live: check its size and rings (a bad one needs a reset)."""
        if not setup.size or setup.size > setup.maximum or setup.size & (setup.size - 1):
            self.broken(GuestDataError(f"queue size {setup.size} is not a power of two up to {setup.maximum}"))
            return
        try:
            setup.queue = SplitQueue(
                self.memory,
                setup.size,
                *setup.addresses,
                event_idx=bool(self.driver_features & VIRTIO_F_RING_EVENT_IDX),
                indirect=bool(self.driver_features & VIRTIO_F_INDIRECT_DESC),
            )
        except GuestDataError as error:
            self.broken(error)
            return
        setup.ready = True

    def disable(self, setup: QueueSetup) -> None:
        """The queue is no longer live."""
        setup.ready, setup.queue = False, None

    def notify(self, index: int) -> None:
        """The driver notified queue ``index``: the device processes it; an interrupt if the driver wants one."""
        with self.lock:
            if index >= len(self.queues) or self.problem is not None or not self.status & STATUS_DRIVER_OK:
                return
            queue = self.queues[index].queue
            if queue is None:
                return
            before = queue.used_index
            try:
                self.device.process(index, queue)
                used = queue.used_index != before and queue.needs_interrupt()
            except GuestDataError as error:
                self.broken(error)
                return
            if used:
                self.interrupt(USED_BUFFER, index)

    wake = notify
    """The device has input for queue ``index`` (a packet, console bytes): process it now, from any thread."""

    def broken(self, error: GuestDataError) -> None:
        """DEVICE_NEEDS_RESET, told to the driver by a configuration-change interrupt."""
        self.problem = error
        self.status |= STATUS_DEVICE_NEEDS_RESET
        _log.warning("%s needs a reset: %s", self.device.name, error)
        self.interrupt(CONFIG_CHANGE, None)

    def interrupt(self, cause: int, index: int | None) -> None:
        """Tell the driver: ``cause`` is :data:`USED_BUFFER` (on queue ``index``) or :data:`CONFIG_CHANGE`."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the device model, if it holds anything (a disk image); the machine calls this when it closes."""
        close = getattr(self.device, "close", None)
        if callable(close):
            close()
