"""``PciFunction``: one PCI function's configuration space, BARs, capabilities and INTx pin.

The type 0 header (PCI Local Bus 3.0, chapter 6): vendor and device ID, command and status,
class code, the six BARs, subsystem IDs, the capability list and the interrupt line and pin.
The guest reads the header and writes only what hardware lets it: the command register, BARs
(sizing with all-ones reads back the size mask), the interrupt line, and the writable bits of
each capability. A BAR's decoding follows the command register's IO and memory enable bits;
the host bridge maps it on the machine's buses (:class:`~hvcore.vmm.pci.host.PciHost`).

A subclass adds its BARs (:meth:`PciFunction.add_bar`) and capabilities
(:meth:`PciFunction.add_capability`, with a callback for the guest's writes to them) in its constructor.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from hvcore.errors import InvalidArgument, StateError
from hvcore.vmm.device import Device

__all__ = [
    "BAR_IO",
    "BAR_MEMORY32",
    "BAR_MEMORY64",
    "COMMAND_INTX_DISABLE",
    "COMMAND_IO",
    "COMMAND_MASTER",
    "COMMAND_MEMORY",
    "CONFIG_SIZE",
    "Bar",
    "PciFunction",
]

CONFIG_SIZE: Final = 4096
"""Bytes of configuration space a function answers (256 conventional, the rest extended: zeros)."""
COMMAND_IO: Final = 1 << 0
"""Command register: the function decodes its IO BARs."""
COMMAND_MEMORY: Final = 1 << 1
"""Command register: the function decodes its memory BARs."""
COMMAND_MASTER: Final = 1 << 2
"""Command register: the function may master the bus (DMA, MSI)."""
COMMAND_INTX_DISABLE: Final = 1 << 10
"""Command register: the function's INTx pin is kept from its line."""
BAR_IO: Final = "io"
"""A BAR in port IO space."""
BAR_MEMORY32: Final = "memory32"
"""A 32-bit memory BAR."""
BAR_MEMORY64: Final = "memory64"
"""A 64-bit memory BAR (it takes the next BAR's register too)."""
_STATUS_INTERRUPT, _STATUS_CAPABILITIES = 1 << 3, 1 << 4
_VENDOR, _DEVICE, _COMMAND, _STATUS, _REVISION, _CLASS = 0x00, 0x02, 0x04, 0x06, 0x08, 0x09
_HEADER_TYPE, _BAR0, _SUBSYSTEM_VENDOR, _SUBSYSTEM = 0x0E, 0x10, 0x2C, 0x2E
_CAPABILITIES, _INTERRUPT_LINE, _INTERRUPT_PIN = 0x34, 0x3C, 0x3D
_FIRST_CAPABILITY: Final = 0x40
_HEADER_END: Final = 0x100


@dataclass
class Bar:
    """One base address register: its kind, size (a power of two) and the device behind it."""

    index: int
    kind: str
    size: int
    device: Device
    prefetchable: bool = False

    @property
    def flags(self) -> int:
        """The BAR's low, read-only bits (space, type, prefetchable)."""
        if self.kind == BAR_IO:
            return 1
        return (4 if self.kind == BAR_MEMORY64 else 0) | (8 if self.prefetchable else 0)


class PciFunction:
    """A PCI function: its configuration space and what decodes through it. Subclass it for a device."""

    def __init__(
        self,
        name: str,
        *,
        vendor_id: int,
        device_id: int,
        class_code: int,
        revision: int = 0,
        subsystem_vendor_id: int = 0,
        subsystem_id: int = 0,
        interrupt_pin: int = 0,
        multifunction: bool = False,
    ) -> None:
        if not 0 <= interrupt_pin <= 4:
            raise InvalidArgument(f"{name}: interrupt pin {interrupt_pin} is not 0 (none) or 1-4 (INTA-INTD)")
        self.name = name
        self.config = bytearray(CONFIG_SIZE)
        self._writable = bytearray(_HEADER_END)  # per byte: the bits the guest may change
        struct.pack_into("<HH", self.config, _VENDOR, vendor_id, device_id)
        struct.pack_into("<I", self.config, _REVISION, revision | class_code << 8)
        self.config[_HEADER_TYPE] = 0x80 if multifunction else 0
        struct.pack_into("<HH", self.config, _SUBSYSTEM_VENDOR, subsystem_vendor_id, subsystem_id)
        self.config[_INTERRUPT_PIN] = interrupt_pin
        struct.pack_into(
            "<H", self._writable, _COMMAND, COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER | COMMAND_INTX_DISABLE
        )
        self._writable[_INTERRUPT_LINE] = 0xFF
        self.bars: list[Bar | None] = [None] * 6
        self._next_capability = _FIRST_CAPABILITY
        self._last_capability = _CAPABILITIES
        self._capabilities: list[tuple[int, int, Callable[[int, int], None] | None]] = []
        self._intx_level = False
        self.intx: Callable[[bool], None] | None = None
        """Set by the host: drives this function's INTx pin (``None`` until plugged in)."""
        self.bars_changed: Callable[[PciFunction], None] | None = None
        """Set by the host: called after the guest changed a BAR or the command register."""
        self.msi: Callable[[int, int], None] | None = None
        """Set by the host: sends an MSI (address, data); ``None`` on a machine without an irqchip."""

    # -- identity -------------------------------------------------------------------------------

    @property
    def vendor_id(self) -> int:
        """The PCI vendor ID."""
        return int(struct.unpack_from("<H", self.config, _VENDOR)[0])

    @property
    def device_id(self) -> int:
        """The PCI device ID."""
        return int(struct.unpack_from("<H", self.config, _DEVICE)[0])

    @property
    def command(self) -> int:
        """The command register."""
        return int(struct.unpack_from("<H", self.config, _COMMAND)[0])

    # -- building ---------------------------------------------------------------------------------

    def add_bar(self, index: int, kind: str, size: int, device: Device, *, prefetchable: bool = False) -> Bar:
        """BAR ``index`` (0-5; a 64-bit one takes ``index + 1`` too), decoding ``size`` bytes to ``device``."""
        if kind not in (BAR_IO, BAR_MEMORY32, BAR_MEMORY64):
            raise InvalidArgument(f"{self.name}: BAR kind {kind!r} is not io, memory32 or memory64")
        last = index + (1 if kind == BAR_MEMORY64 else 0)
        if not 0 <= index <= last <= 5 or any(self.bars[i] is not None for i in range(index, last + 1)):
            raise InvalidArgument(f"{self.name}: BAR {index} ({kind}) is taken or out of 0-5")
        smallest = 4 if kind == BAR_IO else 16
        if size < smallest or size & (size - 1) or (kind == BAR_IO and size > 256):
            raise InvalidArgument(
                f"{self.name}: a {kind} BAR of {size:#x} bytes: sizes are powers of two from {smallest}"
            )
        bar = Bar(index, kind, size, device, prefetchable)
        self.bars[index] = bar
        struct.pack_into("<I", self.config, _BAR0 + 4 * index, bar.flags)
        mask = ~(size - 1) & 0xFFFF_FFFF & ~(0x3 if kind == BAR_IO else 0xF)
        struct.pack_into("<I", self._writable, _BAR0 + 4 * index, mask)
        if kind == BAR_MEMORY64:
            struct.pack_into("<I", self._writable, _BAR0 + 4 * index + 4, ~(size - 1) >> 32 & 0xFFFF_FFFF)
        return bar

    def add_capability(
        self,
        capability_id: int,
        body: bytes,
        writable: bytes = b"",
        written: Callable[[int, int], None] | None = None,
    ) -> int:
        """Append a capability (its ID and ``body`` after the next pointer); its offset in config space.

        ``writable`` masks the guest-writable bits of the whole capability, ID and pointer included;
        ``written(offset, size)`` is called after each guest write that touches it.
        """
        offset = self._next_capability
        length = -(-(2 + len(body)) // 4) * 4
        if offset + length > _HEADER_END:
            raise InvalidArgument(f"{self.name}: no room for capability {capability_id:#x} in the 256-byte header")
        self.config[offset] = capability_id
        self.config[offset + 2 : offset + 2 + len(body)] = body
        self._writable[offset : offset + len(writable)] = writable
        self.config[self._last_capability] = offset
        self._last_capability = offset + 1
        self._next_capability = offset + length
        self._capabilities.append((offset, length, written))
        struct.pack_into("<H", self.config, _STATUS, self._status() | _STATUS_CAPABILITIES)
        return offset

    def _status(self) -> int:
        return int(struct.unpack_from("<H", self.config, _STATUS)[0])

    # -- the guest's accesses ---------------------------------------------------------------------

    def config_read(self, offset: int, size: int) -> int:
        """A configuration read of ``size`` (1, 2 or 4) bytes at ``offset``."""
        return int.from_bytes(self.config[offset : offset + size], "little")

    def config_write(self, offset: int, size: int, value: int) -> None:
        """A configuration write: only the writable bits change; BARs and capabilities act on it."""
        if offset >= _HEADER_END:
            return
        for at in range(offset, min(offset + size, _HEADER_END)):
            mask = self._writable[at]
            self.config[at] = self.config[at] & ~mask | (value >> (8 * (at - offset))) & mask
        end = offset + size
        if (offset < _BAR0 + 24 and end > _BAR0) or (offset < _COMMAND + 2 and end > _COMMAND):
            self._command_or_bars_written()
        for start, length, written in self._capabilities:
            if written is not None and offset < start + length and end > start:
                written(offset, size)

    def _command_or_bars_written(self) -> None:
        self._drive_intx()
        if self.bars_changed is not None:
            self.bars_changed(self)

    def bar_address(self, index: int) -> int | None:
        """Where BAR ``index`` decodes now: ``None`` when it is unused, disabled by the command register
        or unassigned (zero or still all-ones from sizing)."""
        bar = self.bars[index]
        if bar is None:
            return None
        if not self.command & (COMMAND_IO if bar.kind == BAR_IO else COMMAND_MEMORY):
            return None
        low = int(struct.unpack_from("<I", self.config, _BAR0 + 4 * index)[0])
        address = low & ~(0x3 if bar.kind == BAR_IO else 0xF)
        if bar.kind == BAR_MEMORY64:
            address |= int(struct.unpack_from("<I", self.config, _BAR0 + 4 * index + 4)[0]) << 32
        sizing = ~(bar.size - 1) & ((1 << (64 if bar.kind == BAR_MEMORY64 else 32)) - 1) & ~0xF
        if address == 0 or address & ~0xF == sizing & ~0xF:
            return None
        return address

    def set_bar_address(self, index: int, address: int) -> None:
        """Program BAR ``index`` as firmware would (the VMM's own assignment for a direct kernel boot)."""
        bar = self.bars[index]
        if bar is None or address % bar.size:
            raise StateError(f"{self.name}: BAR {index} cannot take {address:#x} (unused, or not size-aligned)")
        struct.pack_into("<I", self.config, _BAR0 + 4 * index, address & 0xFFFF_FFFF | bar.flags)
        if bar.kind == BAR_MEMORY64:
            struct.pack_into("<I", self.config, _BAR0 + 4 * index + 4, address >> 32)
        self._command_or_bars_written()

    def enable(self, command: int) -> None:
        """Set command register bits as firmware would (decoding, bus mastering)."""
        struct.pack_into("<H", self.config, _COMMAND, self.command | command)
        self._command_or_bars_written()

    # -- interrupts -------------------------------------------------------------------------------

    def set_intx(self, level: bool) -> None:
        """Assert or deassert this function's INTx pin (the status register's interrupt bit follows;
        the command register's INTx disable keeps it from the line)."""
        self._intx_level = level
        status = self._status() & ~_STATUS_INTERRUPT | (_STATUS_INTERRUPT if level else 0)
        struct.pack_into("<H", self.config, _STATUS, status)
        self._drive_intx()

    def _drive_intx(self) -> None:
        if self.intx is not None and self.config[_INTERRUPT_PIN]:
            self.intx(self._intx_level and not self.command & COMMAND_INTX_DISABLE)

    def close(self) -> None:
        """Release what the function holds; the host calls it when the machine closes."""
