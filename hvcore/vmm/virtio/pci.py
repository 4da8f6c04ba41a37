"""The virtio-pci transport (virtio spec 1.2, section 4.1): a modern (virtio 1.x only) PCI function.

IDs ``1af4:1040+n`` (``n`` the virtio device ID), revision 1. BAR 4 (64-bit memory, 16 KiB)
holds the four structures the vendor capabilities point at: common configuration at 0x0000, the
ISR at 0x1000, device configuration at 0x2000 and notifications at 0x3000 (queue ``i`` at
``0x3000 + 4 * i``). BAR 1 holds the MSI-X table (one vector per queue plus one for configuration
changes) and its PBA. A fifth capability, ``VIRTIO_PCI_CAP_PCI_CFG``, is a window into BAR 4
through configuration space, for firmware that cannot reach the BAR (SeaBIOS in 16-bit code).

Interrupts: with MSI-X enabled, the vector the driver chose for a queue or for configuration
changes (none while it is ``NO_VECTOR``); otherwise INTx (level), with the cause in the ISR, which
a read clears.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Final

from hvcore.vmm.pci import BAR_MEMORY32, BAR_MEMORY64, MsixCapability, PciFunction, add_pci_host
from hvcore.vmm.virtio.device import VirtioDevice
from hvcore.vmm.virtio.queue import QueueMemory
from hvcore.vmm.virtio.transport import CONFIG_CHANGE, QueueSetup, VirtioTransport

if TYPE_CHECKING:
    from hvcore.vmm.machine import Machine

__all__ = ["NO_VECTOR", "VENDOR_ID", "VirtioPci", "add_virtio_pci"]

VENDOR_ID: Final = 0x1AF4
"""Red Hat's (Qumranet's) PCI vendor ID, which every virtio-pci device carries."""
NO_VECTOR: Final = 0xFFFF
"""``VIRTIO_MSI_NO_VECTOR``: the driver wants no MSI-X message for this queue (or configuration change)."""
REGIONS_BAR, MSIX_BAR = 4, 1
COMMON, ISR, DEVICE, NOTIFY = 0x0000, 0x1000, 0x2000, 0x3000
NOTIFY_MULTIPLIER: Final = 4
_REGIONS_SIZE, _MSIX_SIZE, _PBA = 0x4000, 0x1000, 0x800
_COMMON_LENGTH: Final = 0x38
_CAP_VENDOR = 0x09
_COMMON_CFG, _NOTIFY_CFG, _ISR_CFG, _DEVICE_CFG, _PCI_CFG = 1, 2, 3, 4, 5
_CLASS: Final = {1: 0x020000, 2: 0x010000, 3: 0x078000}  # network, storage, communication; else "other"

# common configuration: offset -> (field, width)
_FIELDS: Final = {
    0x00: ("device_feature_select", 4),
    0x04: ("device_feature", 4),
    0x08: ("driver_feature_select", 4),
    0x0C: ("driver_feature", 4),
    0x10: ("config_msix_vector", 2),
    0x12: ("num_queues", 2),
    0x14: ("device_status", 1),
    0x15: ("config_generation", 1),
    0x16: ("queue_select", 2),
    0x18: ("queue_size", 2),
    0x1A: ("queue_msix_vector", 2),
    0x1C: ("queue_enable", 2),
    0x1E: ("queue_notify_off", 2),
    0x20: ("queue_desc", 4),
    0x24: ("queue_desc_high", 4),
    0x28: ("queue_driver", 4),
    0x2C: ("queue_driver_high", 4),
    0x30: ("queue_device", 4),
    0x34: ("queue_device_high", 4),
}
_ADDRESS_FIELDS: Final = ("queue_desc", "queue_driver", "queue_device")
_COMMON = struct.Struct("<IIIIHHBBHHHHHQQQ")


class _Function(PciFunction):
    """The PCI function, whose ``VIRTIO_PCI_CAP_PCI_CFG`` data reads come from BAR 4."""

    window: int = 0
    transport: VirtioPci

    def config_read(self, offset: int, size: int) -> int:
        data = self.window + 16
        if self.window and data <= offset < data + 4:
            return self.transport.window_access(None) >> (8 * (offset - data)) & ((1 << (8 * size)) - 1)
        return super().config_read(offset, size)

    def close(self) -> None:
        """Close the device model (the host calls this when the machine closes)."""
        self.transport.close()


class VirtioPci(VirtioTransport):
    """A virtio device as a PCI function (:attr:`function`), for :meth:`hvcore.vmm.pci.PciHost.add`."""

    def __init__(self, device: VirtioDevice, memory: QueueMemory) -> None:
        self.name = f"virtio-pci:{device.name}"
        function = _Function(
            self.name,
            vendor_id=VENDOR_ID,
            device_id=0x1040 + device.device_id,
            class_code=_CLASS.get(device.device_id, 0xFF0000),
            revision=1,
            subsystem_vendor_id=VENDOR_ID,
            subsystem_id=0x1100,
            interrupt_pin=1,
        )
        function.transport = self
        self.function = function
        self._regions = _Regions(self)
        self.msix = MsixCapability(function, len(device.queue_sizes) + 1, MSIX_BAR, 0, _PBA)
        function.add_bar(MSIX_BAR, BAR_MEMORY32, _MSIX_SIZE, self.msix.table_device)
        function.add_bar(REGIONS_BAR, BAR_MEMORY64, _REGIONS_SIZE, self._regions, prefetchable=True)
        self._capability(_COMMON_CFG, COMMON, _COMMON_LENGTH)
        self._capability(_NOTIFY_CFG, NOTIFY, 0x1000, struct.pack("<I", NOTIFY_MULTIPLIER))
        self._capability(_ISR_CFG, ISR, 4)
        self._capability(_DEVICE_CFG, DEVICE, 0x1000)
        function.window = self._capability(_PCI_CFG, 0, 0, bytes(4), writable=True)
        super().__init__(device, memory)

    def _capability(self, kind: int, offset: int, length: int, extra: bytes = b"", *, writable: bool = False) -> int:
        body = struct.pack("<BBBBxxII", 16 + len(extra), kind, REGIONS_BAR, 0, offset, length) + extra
        # for the window: the BAR, offset, length and data fields are the driver's
        mask = b"\0" * 4 + b"\0\xff" + b"\0" * 2 + b"\xff" * 8 + b"\xff" * 4 if writable else b""
        return self.function.add_capability(
            _CAP_VENDOR, body, writable=mask, written=self._window_written if writable else None
        )

    def reset(self) -> None:
        """The state after a reset: no vectors, the ISR clear and INTx low."""
        super().reset()
        self.config_vector = NO_VECTOR
        self.isr = 0
        self._device_feature_select = self._driver_feature_select = self._queue_select = 0
        self.function.set_intx(False)

    # -- common configuration ---------------------------------------------------------------------------

    def _common_bytes(self) -> bytes:
        queue = self.selected(self._queue_select)
        q = queue or QueueSetup(0)
        return _COMMON.pack(
            self._device_feature_select,
            self.offered_word(self._device_feature_select),
            self._driver_feature_select,
            (self.driver_features >> (32 * self._driver_feature_select)) & 0xFFFF_FFFF
            if self._driver_feature_select < 2
            else 0,
            self.config_vector,
            len(self.queues),
            self.status,
            0,
            self._queue_select,
            q.size if queue is not None else 0,
            q.vector if queue is not None else NO_VECTOR,
            int(q.ready),
            self._queue_select if queue is not None else 0,
            *q.addresses,
        )

    def read_common(self, offset: int, size: int) -> int:
        """A driver read of the common configuration structure."""
        with self.lock:
            return int.from_bytes(self._common_bytes()[offset : offset + size].ljust(size, b"\0"), "little")

    def write_common(self, offset: int, size: int, value: int) -> None:
        """A driver write to the common configuration structure (a field, or half of a 64-bit one)."""
        with self.lock:
            if size == 8 and offset in (0x20, 0x28, 0x30):
                self.write_common(offset, 4, value & 0xFFFF_FFFF)
                self.write_common(offset + 4, 4, value >> 32)
                return
            field = _FIELDS.get(offset)
            if field is None or field[1] != size:
                return
            self._write_field(field[0], value)

    def _write_field(self, field: str, value: int) -> None:
        queue = self.selected(self._queue_select)
        vectors = self.msix.vectors
        if field == "device_feature_select":
            self._device_feature_select = value
        elif field == "driver_feature_select":
            self._driver_feature_select = value
        elif field == "driver_feature":
            self.accept_word(self._driver_feature_select, value)
        elif field == "config_msix_vector":
            self.config_vector = value if value < vectors else NO_VECTOR
        elif field == "device_status":
            self.write_status(value)
        elif field == "queue_select":
            self._queue_select = value
        elif queue is None:
            return
        elif field == "queue_msix_vector":
            queue.vector = value if value < vectors else NO_VECTOR
        elif queue.ready:
            return  # the rest is the queue's set-up, fixed while it is live
        elif field == "queue_size":
            queue.size = value
        elif field == "queue_enable" and value == 1:
            self.enable(queue)
        elif field.startswith("queue_") and field.removesuffix("_high") in (
            "queue_desc",
            "queue_driver",
            "queue_device",
        ):
            which = ("queue_desc", "queue_driver", "queue_device").index(field.removesuffix("_high"))
            shift = 32 if field.endswith("_high") else 0
            queue.addresses[which] = queue.addresses[which] & ~(0xFFFF_FFFF << shift) | value << shift

    # -- ISR, interrupts ----------------------------------------------------------------------------------

    def read_isr(self) -> int:
        """The ISR: the causes since the last read, which this read clears (and lowers INTx)."""
        with self.lock:
            isr, self.isr = self.isr, 0
            self.function.set_intx(False)
            return isr

    def interrupt(self, cause: int, index: int | None) -> None:
        """MSI-X to the chosen vector when enabled; else the ISR bit and INTx."""
        if self.msix.enabled:
            vector = self.config_vector if cause == CONFIG_CHANGE or index is None else self.queues[index].vector
            if vector != NO_VECTOR:
                self.msix.signal(vector)
            return
        self.isr |= cause
        self.function.set_intx(True)

    # -- the configuration-space window -----------------------------------------------------------------

    def _window(self) -> tuple[int, int, int]:
        at = self.function.window
        bar, offset, length = struct.unpack_from("<BxxxII", self.function.config, at + 4)
        return int(bar), int(offset), int(length)

    def window_access(self, value: int | None) -> int:
        """A read (``value`` None) or write through the ``PCI_CFG`` window: BAR 4 at the window's offset."""
        bar, offset, length = self._window()
        if bar != REGIONS_BAR or length not in (1, 2, 4):
            return 0
        if value is None:
            return self._regions.read(offset, length)
        self._regions.write(offset, length, value & ((1 << (8 * length)) - 1))
        return 0

    def _window_written(self, offset: int, size: int) -> None:
        data = self.function.window + 16
        if offset < data + 4 and offset + size > data:
            self.window_access(int.from_bytes(self.function.config[data : data + 4], "little"))


class _Regions:
    """BAR 4: common configuration, ISR, device configuration, notifications."""

    def __init__(self, transport: VirtioPci) -> None:
        self.transport = transport
        self.name = f"{transport.name}:bar4"

    def read(self, offset: int, size: int) -> int:
        t = self.transport
        if offset < COMMON + _COMMON_LENGTH:
            return t.read_common(offset, size)
        if ISR <= offset < ISR + 4:
            return t.read_isr() if offset == ISR else 0
        if DEVICE <= offset < NOTIFY:
            with t.lock:
                return t.device.read_config(offset - DEVICE, size)
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        t = self.transport
        if offset < COMMON + _COMMON_LENGTH:
            t.write_common(offset, size, value)
        elif DEVICE <= offset < NOTIFY:
            with t.lock:
                t.device.write_config(offset - DEVICE, size, value)
        elif NOTIFY <= offset < NOTIFY + 4 * len(t.queues) and not offset % NOTIFY_MULTIPLIER:
            t.notify((offset - NOTIFY) // NOTIFY_MULTIPLIER)


def add_virtio_pci(machine: Machine, device: VirtioDevice) -> VirtioPci:
    """Put ``device`` on ``machine``'s PCI bus (given one if it has none) in the next free slot."""
    host = machine.pci if machine.pci is not None else add_pci_host(machine)
    transport = VirtioPci(device, machine)
    host.add(transport.function)
    return transport
