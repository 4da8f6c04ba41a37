"""The virtio-mmio transport, version 2 (virtio spec 1.2, section 4.2.2): a :class:`VirtioDevice` on the MMIO bus.

Register it at a 0x200-byte (or larger) MMIO range with ``Machine.add_mmio_device`` and tell
the guest where it is (Linux: ``virtio_mmio.device=512@0xd0000000:5`` on the command line for
an interrupt on GSI 5). The driver negotiates features (the device's own, plus VERSION_1,
INDIRECT_DESC and RING_EVENT_IDX), sets up each queue and notifies it; the device model
processes the queue in the notifying vCPU's thread, and the transport raises the level-triggered
interrupt while ``InterruptStatus`` is non-zero.

A guest that hands the device a malformed queue (:class:`hvcore.GuestDataError`) gets
``DEVICE_NEEDS_RESET`` and a configuration-change interrupt; the device ignores its queues until
the driver writes status 0. The VMM and other devices carry on.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Final

from hvcore.errors import GuestDataError, ResourceExhausted
from hvcore.vmm.acpi import AcpiDevice
from hvcore.vmm.device import IrqLine
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

if TYPE_CHECKING:
    from hvcore.vmm.machine import Machine

__all__ = ["GSIS", "LENGTH", "MAGIC", "MMIO_BASE", "VENDOR_ID", "VirtioMmio", "add_virtio_mmio"]

MAGIC: Final = 0x74726976
"""``MagicValue``: "virt" in little-endian."""
VENDOR_ID: Final = 0x554D4551
"""``VendorID``: "QEMU", which Linux's driver does not check."""
LENGTH: Final = 0x200
"""Bytes of MMIO the transport answers: the registers and 256 bytes of configuration space."""

MMIO_BASE: Final = 0xD000_0000
"""Where :func:`add_virtio_mmio` puts the first transport (the next ones 4 KiB apart), in the 32-bit hole."""
GSIS: Final = (5, 6, 7, 10, 11)
"""The interrupt of each transport :func:`add_virtio_mmio` adds, in order (ISA IRQs no PC device uses)."""
HID: Final = "LNRO0005"
"""The ACPI hardware ID of a virtio-mmio transport (Linux's ``virtio_mmio`` driver matches it)."""

_MAGIC, _VERSION, _DEVICE_ID, _VENDOR_ID = 0x000, 0x004, 0x008, 0x00C
_DEVICE_FEATURES, _DEVICE_FEATURES_SEL, _DRIVER_FEATURES, _DRIVER_FEATURES_SEL = 0x010, 0x014, 0x020, 0x024
_QUEUE_SEL, _QUEUE_NUM_MAX, _QUEUE_NUM, _QUEUE_READY, _QUEUE_NOTIFY = 0x030, 0x034, 0x038, 0x044, 0x050
_INTERRUPT_STATUS, _INTERRUPT_ACK, _STATUS = 0x060, 0x064, 0x070
_QUEUE_DESC, _QUEUE_DRIVER, _QUEUE_DEVICE = 0x080, 0x090, 0x0A0  # low word; high at + 4
_CONFIG_GENERATION, _CONFIG = 0x0FC, 0x100
_TRANSPORT_FEATURES: Final = VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_RING_EVENT_IDX
_USED_BUFFER, _CONFIG_CHANGE = 1, 2


class _QueueSetup:
    """What the driver programmed for one queue."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.size = maximum
        self.ready = False
        self.addresses = [0, 0, 0]  # descriptor table, driver (available) ring, device (used) ring
        self.queue: SplitQueue | None = None


class VirtioMmio:
    """A virtio device behind virtio-mmio registers (a ``Device`` for the MMIO bus, :data:`LENGTH` bytes)."""

    def __init__(self, device: VirtioDevice, memory: QueueMemory, irq: IrqLine | None = None) -> None:
        self.device = device
        self.name = f"virtio-mmio:{device.name}"
        self.memory = memory
        self.irq = irq
        self._lock = threading.RLock()
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        """The device status register (ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK, NEEDS_RESET, FAILED bits)."""
        self.interrupt_status = 0
        self.driver_features = 0
        self.problem: GuestDataError | None = None
        """The guest error that put the device in DEVICE_NEEDS_RESET, until the driver resets it."""
        self._device_features_sel = self._driver_features_sel = self._queue_sel = 0
        self._queues = [_QueueSetup(size) for size in self.device.queue_sizes]
        self._set_irq()

    @property
    def offered(self) -> int:
        """Every feature bit the device offers (its own and the transport's)."""
        return self.device.features | _TRANSPORT_FEATURES

    # -- the bus ----------------------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        """A driver read: a 32-bit register, or any width of configuration space."""
        with self._lock:
            if offset >= _CONFIG:
                return self.device.read_config(offset - _CONFIG, size)
            if size != 4 or offset % 4:
                return (1 << (8 * size)) - 1
            queue = self._selected()
            values = {
                _MAGIC: MAGIC,
                _VERSION: 2,
                _DEVICE_ID: self.device.device_id,
                _VENDOR_ID: VENDOR_ID,
                _DEVICE_FEATURES: (self.offered >> (32 * self._device_features_sel)) & 0xFFFF_FFFF
                if self._device_features_sel < 2
                else 0,
                _QUEUE_NUM_MAX: queue.maximum if queue is not None else 0,
                _QUEUE_READY: int(queue is not None and queue.ready),
                _INTERRUPT_STATUS: self.interrupt_status,
                _STATUS: self.status,
                _CONFIG_GENERATION: 0,
            }
            return values.get(offset, 0)

    def write(self, offset: int, size: int, value: int) -> None:
        """A driver write: a 32-bit register, or configuration space."""
        with self._lock:
            if offset >= _CONFIG:
                self.device.write_config(offset - _CONFIG, size, value)
            elif size == 4 and not offset % 4:
                self._write_register(offset, value)

    def _selected(self) -> _QueueSetup | None:
        return self._queues[self._queue_sel] if self._queue_sel < len(self._queues) else None

    def _write_register(self, offset: int, value: int) -> None:
        queue = self._selected()
        if offset == _STATUS:
            self._write_status(value)
        elif offset == _DEVICE_FEATURES_SEL:
            self._device_features_sel = value
        elif offset == _DRIVER_FEATURES_SEL:
            self._driver_features_sel = value
        elif offset == _DRIVER_FEATURES and self._driver_features_sel < 2 and not self.status & STATUS_FEATURES_OK:
            shift = 32 * self._driver_features_sel
            self.driver_features = self.driver_features & ~(0xFFFF_FFFF << shift) | value << shift
        elif offset == _QUEUE_SEL:
            self._queue_sel = value
        elif offset == _INTERRUPT_ACK:
            self.interrupt_status &= ~value
            self._set_irq()
        elif offset == _QUEUE_NOTIFY:
            self._notify(value)
        elif queue is not None and not queue.ready:  # the queue's set-up, while it is not live
            if offset == _QUEUE_NUM:
                queue.size = value
            elif offset in (
                _QUEUE_DESC,
                _QUEUE_DRIVER,
                _QUEUE_DEVICE,
                _QUEUE_DESC + 4,
                _QUEUE_DRIVER + 4,
                _QUEUE_DEVICE + 4,
            ):
                which, high = (offset - _QUEUE_DESC) // 16, offset % 16 == 4
                shift = 32 if high else 0
                queue.addresses[which] = queue.addresses[which] & ~(0xFFFF_FFFF << shift) | value << shift
            elif offset == _QUEUE_READY and value & 1:
                self._make_ready(queue)
        elif queue is not None and offset == _QUEUE_READY and not value & 1:
            queue.ready, queue.queue = False, None

    def _write_status(self, value: int) -> None:
        if value == 0:  # reset
            self.device.reset()
            self._reset()
            return
        if value & STATUS_FEATURES_OK and not self.status & STATUS_FEATURES_OK:
            accepted = self.driver_features
            if accepted & ~self.offered or not accepted & VIRTIO_F_VERSION_1:
                value &= ~STATUS_FEATURES_OK  # refused: the driver reads it back and gives up
        self.status = value | (self.status & STATUS_DEVICE_NEEDS_RESET)

    def _make_ready(self, setup: _QueueSetup) -> None:
        if not setup.size or setup.size > setup.maximum:
            self._broken(GuestDataError(f"queue size {setup.size} is not 1..{setup.maximum}", operation="virtio-mmio"))
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
            self._broken(error)
            return
        setup.ready = True

    def _notify(self, index: int) -> None:
        if index >= len(self._queues) or self.problem is not None or not self.status & STATUS_DRIVER_OK:
            return
        queue = self._queues[index].queue
        if queue is None:
            return
        before = queue.used_index
        try:
            self.device.process(index, queue)
            used = queue.used_index != before and queue.needs_interrupt()
        except GuestDataError as error:
            self._broken(error)
            return
        if used:
            self.interrupt_status |= _USED_BUFFER
            self._set_irq()

    def _broken(self, error: GuestDataError) -> None:
        """DEVICE_NEEDS_RESET, told to the driver by a configuration-change interrupt."""
        self.problem = error
        self.status |= STATUS_DEVICE_NEEDS_RESET
        self.interrupt_status |= _CONFIG_CHANGE
        self._set_irq()

    def close(self) -> None:
        """Close the device model, if it holds anything (a disk image); the machine calls this when it closes."""
        close = getattr(self.device, "close", None)
        if callable(close):
            close()

    def _set_irq(self) -> None:
        if self.irq is not None:
            self.irq.set(bool(self.interrupt_status))


def add_virtio_mmio(machine: Machine, device: VirtioDevice) -> VirtioMmio:
    """Put ``device`` on ``machine`` behind the next virtio-mmio transport, and in its ACPI tables.

    The transports go at :data:`MMIO_BASE`, 4 KiB apart, interrupting on :data:`GSIS` in turn;
    a directly booted kernel finds them in the DSDT (``ResourceExhausted`` past the last GSI).
    """
    index = sum(1 for d in machine.acpi_devices if d.hid == HID)
    if index >= len(GSIS):
        raise ResourceExhausted(
            f"a machine takes {len(GSIS)} virtio-mmio devices (GSIs {GSIS}); put the rest behind PCI",
            operation="add_virtio_mmio",
        )
    base, gsi = MMIO_BASE + 0x1000 * index, GSIS[index]
    transport = VirtioMmio(device, machine, machine.irq(gsi))
    machine.add_mmio_device(base, LENGTH, transport)
    machine.acpi_devices.append(AcpiDevice(HID, index, base, LENGTH, gsi))
    return transport
