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

from typing import TYPE_CHECKING, Final

from hvcore.errors import ResourceExhausted
from hvcore.vmm.acpi import AcpiDevice
from hvcore.vmm.device import IrqLine
from hvcore.vmm.virtio.device import VirtioDevice
from hvcore.vmm.virtio.queue import QueueMemory
from hvcore.vmm.virtio.transport import VirtioTransport

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
_QUEUE_ADDRESSES: Final = frozenset(at + high for at in (_QUEUE_DESC, _QUEUE_DRIVER, _QUEUE_DEVICE) for high in (0, 4))
_CONFIG_GENERATION, _CONFIG = 0x0FC, 0x100


class VirtioMmio(VirtioTransport):
    """A virtio device behind virtio-mmio registers (a ``Device`` for the MMIO bus, :data:`LENGTH` bytes)."""

    def __init__(self, device: VirtioDevice, memory: QueueMemory, irq: IrqLine | None = None) -> None:
        self.name = f"virtio-mmio:{device.name}"
        self.irq = irq
        super().__init__(device, memory)

    def reset(self) -> None:
        """The state after a reset, the interrupt status cleared and the line lowered."""
        super().reset()
        self.interrupt_status = 0
        self._device_features_sel = self._driver_features_sel = self._queue_sel = 0
        self._set_irq()

    # -- the bus ----------------------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        """A driver read: a 32-bit register, or any width of configuration space."""
        with self.lock:
            if offset >= _CONFIG:
                return self.device.read_config(offset - _CONFIG, size)
            if size != 4 or offset % 4:
                return (1 << (8 * size)) - 1
            queue = self.selected(self._queue_sel)
            values = {
                _MAGIC: MAGIC,
                _VERSION: 2,
                _DEVICE_ID: self.device.device_id,
                _VENDOR_ID: VENDOR_ID,
                _DEVICE_FEATURES: self.offered_word(self._device_features_sel),
                _QUEUE_NUM_MAX: queue.maximum if queue is not None else 0,
                _QUEUE_READY: int(queue is not None and queue.ready),
                _INTERRUPT_STATUS: self.interrupt_status,
                _STATUS: self.status,
                _CONFIG_GENERATION: 0,
            }
            return values.get(offset, 0)

    def write(self, offset: int, size: int, value: int) -> None:
        """A driver write: a 32-bit register, or configuration space."""
        with self.lock:
            if offset >= _CONFIG:
                self.device.write_config(offset - _CONFIG, size, value)
            elif size == 4 and not offset % 4:
                self._write_register(offset, value)

    def _write_register(self, offset: int, value: int) -> None:
        queue = self.selected(self._queue_sel)
        if offset == _STATUS:
            self.write_status(value)
        elif offset == _DEVICE_FEATURES_SEL:
            self._device_features_sel = value
        elif offset == _DRIVER_FEATURES_SEL:
            self._driver_features_sel = value
        elif offset == _DRIVER_FEATURES:
            self.accept_word(self._driver_features_sel, value)
        elif offset == _QUEUE_SEL:
            self._queue_sel = value
        elif offset == _INTERRUPT_ACK:
            self.interrupt_status &= ~value
            self._set_irq()
        elif offset == _QUEUE_NOTIFY:
            self.notify(value)
        elif queue is not None and not queue.ready:  # the queue's set-up, while it is not live
            if offset == _QUEUE_NUM:
                queue.size = value
            elif offset in _QUEUE_ADDRESSES:
                which, shift = (offset - _QUEUE_DESC) // 16, 32 if offset % 16 == 4 else 0
                queue.addresses[which] = queue.addresses[which] & ~(0xFFFF_FFFF << shift) | value << shift
            elif offset == _QUEUE_READY and value & 1:
                self.enable(queue)
        elif queue is not None and offset == _QUEUE_READY and not value & 1:
            self.disable(queue)

    def interrupt(self, cause: int, index: int | None) -> None:
        """Set ``cause`` in the interrupt status; the level-triggered line follows it."""
        self.interrupt_status |= cause
        self._set_irq()

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
