"""Guest-physical memory as one engine sees it: slots mapped in place, MMIO everywhere else.

Each slot's ``GuestMemory`` is mapped with ``mem_map_ptr`` (zero copies both
ways). Read-only slots, and slots that log dirty pages, are mapped without write
permission, so the first write to a page stops in a hook. Every gap between
slots, up to 2**52, is one ``mmio_map`` region, so any access there reaches the
MMIO callbacks. Unmapping a large Unicorn region costs time in proportion to its
size (a 2**48-byte gap would take hours), so a layout change is never patched in
place: the vCPU builds a fresh engine with the new layout (about 1 ms) and moves
its CPU state over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from hvcore.memory import PAGE_SIZE, MemorySlot
from hvcore.types import SlotFlags

__all__ = ["PHYSICAL_LIMIT", "DeviceRegion", "DirtyLog", "MmioRead", "MmioWrite", "map_layout"]

PHYSICAL_LIMIT: Final = 1 << 52
"""Top of the guest-physical space the simulator maps (x86's architectural MAXPHYADDR)."""

MmioRead = Callable[[Any, int, int, int], int]  # (uc, offset, size, gap base) -> value
MmioWrite = Callable[[Any, int, int, int, int], None]  # (uc, offset, size, value, gap base)


@dataclass(frozen=True)
class DeviceRegion:
    """A guest-physical range the simulator's own devices answer (the LAPIC, the IOAPIC): never the VMM's."""

    base: int
    size: int
    read: Callable[[Any, int, int, Any], int]  # (uc, offset, size, user data) -> value
    write: Callable[[Any, int, int, int, Any], None]  # (uc, offset, size, value, user data)


def _gaps(taken: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    gaps, at = [], 0
    for start, end in sorted(taken):
        if start > at:
            gaps.append((at, start - at))
        at = max(at, end)
    if at < PHYSICAL_LIMIT:
        gaps.append((at, PHYSICAL_LIMIT - at))
    return gaps


def map_layout(
    uc: Any,
    slots: Iterable[MemorySlot],
    read: MmioRead,
    write: MmioWrite,
    dirty: DirtyLog,
    devices: Iterable[DeviceRegion] = (),
) -> None:
    """Map ``slots``, the simulator's ``devices`` where no slot is, and MMIO gaps everywhere else."""
    import unicorn

    slots = list(slots)
    taken = [(s.guest_address, s.end) for s in slots]
    for s in slots:
        protect = s.readonly or bool(s.flags & SlotFlags.LOG_DIRTY_PAGES)
        perms = unicorn.UC_PROT_READ | unicorn.UC_PROT_EXEC if protect else unicorn.UC_PROT_ALL
        uc.mem_map_ptr(s.guest_address, s.size, perms, s.host_address)
        if not s.readonly:
            for page in dirty.writable_pages(s.slot):  # already dirty: no need to catch them again
                uc.mem_protect(s.guest_address + page * PAGE_SIZE, PAGE_SIZE, unicorn.UC_PROT_ALL)
    for device in devices:
        if not any(start < device.base + device.size and device.base < end for start, end in taken):
            uc.mmio_map(device.base, device.size, device.read, None, device.write, None)
            taken.append((device.base, device.base + device.size))
    for base, size in _gaps(taken):
        uc.mmio_map(base, size, read, base, write, base)


@dataclass
class DirtyLog:
    """Dirty pages per logging slot, shared by every vCPU of a VM.

    A page is recorded when a vCPU's first write to it stops in the write-protect
    hook; that engine then makes the page writable. Reading the log clears it and
    write-protects the pages again in every engine (``reprotect``).
    """

    pages: dict[int, set[int]] = field(default_factory=dict)
    generation: int = 0

    def writable_pages(self, slot: int) -> set[int]:
        """Pages of ``slot`` already recorded (engines may leave them writable)."""
        return self.pages.get(slot, set())

    def record(self, slot: int, page: int) -> None:
        """Note a write to ``page`` (index within ``slot``)."""
        self.pages.setdefault(slot, set()).add(page)

    def take(self, slot: int, page_count: int) -> bytes:
        """The bitmap of ``slot`` (one bit a page, 64-bit words) and clear it."""
        taken = self.pages.pop(slot, set())
        self.generation += 1
        bits = sum(1 << p for p in taken)
        return bits.to_bytes((page_count + 63) // 64 * 8, "little")

    def forget(self, slot: int) -> None:
        """Drop ``slot``'s record (the slot went away or stopped logging)."""
        if self.pages.pop(slot, None) is not None:
            self.generation += 1
