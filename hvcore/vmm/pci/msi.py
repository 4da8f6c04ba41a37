"""MSI and MSI-X for PCI functions (PCI Local Bus 3.0, section 6.8): capabilities and the vector table.

:class:`MsixCapability` puts the MSI-X capability in a function's configuration space and serves
its table and pending-bit array (PBA) from a BAR (a bus ``Device``). :meth:`MsixCapability.signal`
sends vector ``n`` through the machine (``KVM_SIGNAL_MSI`` on either backend) when MSI-X is enabled
and neither the function nor the vector is masked; otherwise the vector's pending bit is set, and
the message goes when the guest unmasks it, as the specification asks.

:class:`MsiCapability` is plain MSI (one vector, 64-bit address, per-vector masking).
"""

from __future__ import annotations

import struct
import threading
from typing import Final

from hvcore.errors import InvalidArgument
from hvcore.vmm.pci.function import PciFunction

__all__ = ["CAPABILITY_MSI", "CAPABILITY_MSIX", "MSIX_ENTRY_SIZE", "MsiCapability", "MsixCapability"]

CAPABILITY_MSI: Final = 0x05
"""The MSI capability's ID."""
CAPABILITY_MSIX: Final = 0x11
"""The MSI-X capability's ID."""
MSIX_ENTRY_SIZE: Final = 16
"""Bytes per table entry: address low, address high, data, vector control (bit 0: masked)."""
_ENABLE, _FUNCTION_MASK = 1 << 15, 1 << 14
_MAX_VECTORS: Final = 2048


class MsixCapability:
    """MSI-X for ``function``: ``vectors`` entries; the table at ``table_offset`` of BAR ``bar``, the PBA
    at ``pba_offset``. Put :attr:`table_device` behind that BAR (it answers both)."""

    def __init__(self, function: PciFunction, vectors: int, bar: int, table_offset: int, pba_offset: int) -> None:
        if not 1 <= vectors <= _MAX_VECTORS or table_offset % 8 or pba_offset % 8:
            raise InvalidArgument(
                f"{function.name}: MSI-X with {vectors} vectors, table {table_offset:#x}, PBA {pba_offset:#x}"
            )
        self.function = function
        self.vectors = vectors
        self.table_offset, self.pba_offset = table_offset, pba_offset
        self._lock = threading.Lock()
        self.table = bytearray(vectors * MSIX_ENTRY_SIZE)
        for vector in range(vectors):
            self.table[vector * MSIX_ENTRY_SIZE + 12] = 1  # masked after reset
        self.pending = [False] * vectors
        body = struct.pack("<HII", vectors - 1, table_offset | bar, pba_offset | bar)
        self.offset = function.add_capability(
            CAPABILITY_MSIX, body, writable=b"\0\0\0\xc0", written=lambda offset, size: self.release_pending()
        )
        self.table_device = _MsixTable(self, f"{function.name}:msix")

    @property
    def control(self) -> int:
        """The message control register (enable: bit 15, function mask: bit 14)."""
        return int(struct.unpack_from("<H", self.function.config, self.offset + 2)[0])

    @property
    def enabled(self) -> bool:
        """Whether the guest turned MSI-X on (then the function's INTx pin is not used)."""
        return bool(self.control & _ENABLE)

    def _masked(self, vector: int) -> bool:
        return bool(self.control & _FUNCTION_MASK or self.table[vector * MSIX_ENTRY_SIZE + 12] & 1)

    def signal(self, vector: int) -> bool:
        """Send ``vector``'s message, or leave it pending while masked; False for a vector past the table."""
        if not 0 <= vector < self.vectors:
            return False
        with self._lock:
            if self._masked(vector) or not self.enabled:
                self.pending[vector] = True
                return True
            address, data = self._message(vector)
        self._send(address, data)
        return True

    def _message(self, vector: int) -> tuple[int, int]:
        low, high, data, _ = struct.unpack_from("<IIII", self.table, vector * MSIX_ENTRY_SIZE)
        return low | high << 32, data

    def _send(self, address: int, data: int) -> None:
        if self.function.msi is not None:
            self.function.msi(address, data)

    def release_pending(self) -> None:
        """Send what is pending and no longer masked (after the guest unmasked or enabled)."""
        if not self.enabled:
            return
        with self._lock:
            due = [v for v in range(self.vectors) if self.pending[v] and not self._masked(v)]
            messages = [self._message(v) for v in due]
            for vector in due:
                self.pending[vector] = False
        for address, data in messages:
            self._send(address, data)

    def read(self, offset: int, size: int) -> int:
        """A read of the table or the PBA."""
        with self._lock:
            if self.table_offset <= offset < self.table_offset + len(self.table):
                at = offset - self.table_offset
                return int.from_bytes(self.table[at : at + size], "little")
            if self.pba_offset <= offset < self.pba_offset + -(-self.vectors // 64) * 8:
                bits = sum(1 << v for v, p in enumerate(self.pending) if p)
                return (bits >> (8 * (offset - self.pba_offset))) & ((1 << (8 * size)) - 1)
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        """A write to the table (the PBA is read-only)."""
        if not self.table_offset <= offset < self.table_offset + len(self.table):
            return
        at = offset - self.table_offset
        with self._lock:
            end = min(at + size, len(self.table))
            self.table[at:end] = value.to_bytes(size, "little")[: end - at]
        self.release_pending()


class _MsixTable:
    """The MSI-X table and PBA as a bus device (behind the BAR the capability names)."""

    def __init__(self, capability: MsixCapability, name: str) -> None:
        self.capability = capability
        self.name = name

    def read(self, offset: int, size: int) -> int:
        return self.capability.read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.capability.write(offset, size, value)


class MsiCapability:
    """Plain MSI for ``function``: one vector, a 64-bit address and per-vector masking."""

    def __init__(self, function: PciFunction) -> None:
        self.function = function
        # control (64-bit, per-vector masking), address low/high, data, reserved, mask bits, pending bits
        body = struct.pack("<HIIHHII", 1 << 7 | 1 << 8, 0, 0, 0, 0, 0, 0)
        writable = b"\0\0\x01\0" + b"\xfc\xff\xff\xff" + b"\xff" * 4 + b"\xff\xff\0\0" + b"\x01\0\0\0"
        self.offset = function.add_capability(
            CAPABILITY_MSI, body, writable=writable, written=lambda offset, size: self.written()
        )
        self.pending = False

    def _field(self, at: int, layout: str) -> int:
        return int(struct.unpack_from(layout, self.function.config, self.offset + at)[0])

    @property
    def enabled(self) -> bool:
        """Whether the guest turned MSI on."""
        return bool(self._field(2, "<H") & 1)

    def signal(self) -> None:
        """Send the message, or leave it pending while the vector is masked."""
        if not self.enabled:
            return
        if self._field(16, "<I") & 1:
            self.pending = True
            struct.pack_into("<I", self.function.config, self.offset + 20, 1)
            return
        if self.function.msi is not None:
            self.function.msi(self._field(4, "<I") | self._field(8, "<I") << 32, self._field(12, "<H"))

    def written(self) -> None:
        """The guest wrote the capability: a pending message goes once unmasked."""
        if self.pending and self.enabled and not self._field(16, "<I") & 1:
            self.pending = False
            struct.pack_into("<I", self.function.config, self.offset + 20, 0)
            self.signal()
