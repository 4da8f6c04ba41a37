"""Guest-physical memory as one engine sees it: slots mapped in place, MMIO everywhere else.

Each slot's ``GuestMemory`` is mapped with ``mem_map_ptr`` (zero copies both
ways). Read-only slots, and slots that log dirty pages, are mapped without write
permission, so the first write to a page stops in a hook. Every gap between
slots, up to 2**52, is one ``mmio_map`` region, so any access there reaches the
MMIO callbacks. Unmapping a large Unicorn region costs time in proportion to its
size (a 2**48-byte gap would take hours), so a layout change is never patched in
place: the vCPU builds a fresh engine with the new layout (about 1 ms) and moves
its CPU state over.

Also the host's own memory as the simulator touches it below ``GuestMemory``'s API: stores
straight into a slot's buffer that are not host writes (:func:`store_in_place`), a buffer's address, and
whether a host page is populated (``mincore``). With :mod:`hvcore_sim.unicorn_internals`, the one
simulator module that imports ``ctypes`` (pyproject.toml's import contract).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from hvcore.memory import PAGE_SIZE, GuestMemory, MemorySlot, SlotChange
from hvcore.types import SlotFlags

__all__ = [
    "PHYSICAL_LIMIT",
    "DeviceRegion",
    "DirtyLog",
    "HostWrites",
    "MmioRead",
    "MmioWrite",
    "buffer_address",
    "host_page_populated",
    "map_layout",
    "store_in_place",
]

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
    *,
    gated: bool = False,
) -> None:
    """Map ``slots``, the simulator's ``devices`` where no slot is, and MMIO gaps everywhere else.

    ``gated``: reads of the gaps and writes to the devices reach the protection hooks before their
    callbacks (an engine that runs fast gives such an instruction a block of its own there).
    """
    import unicorn

    slots = list(slots)
    taken = [(s.guest_address, s.end) for s in slots]
    read_only = unicorn.UC_PROT_READ | unicorn.UC_PROT_EXEC
    for s in slots:
        logging = bool(s.flags & SlotFlags.LOG_DIRTY_PAGES) and not s.readonly
        present = dirty.present.get(s.kvm_slot) if logging else None
        if present is not None:  # pages KVM has not mapped yet: the first access of any kind is caught
            uc.mem_map_ptr(s.guest_address, s.size, unicorn.UC_PROT_NONE, s.host_address)
            for page in present:
                uc.mem_protect(s.guest_address + page * PAGE_SIZE, PAGE_SIZE, read_only)
        else:
            perms = read_only if s.readonly or logging else unicorn.UC_PROT_ALL
            uc.mem_map_ptr(s.guest_address, s.size, perms, s.host_address)
        if logging:
            for page in dirty.writable_pages(s.kvm_slot):  # already dirty: no need to catch them again
                uc.mem_protect(s.guest_address + page * PAGE_SIZE, PAGE_SIZE, unicorn.UC_PROT_ALL)
    for device in devices:
        if not any(start < device.base + device.size and device.base < end for start, end in taken):
            uc.mmio_map(device.base, device.size, device.read, None, device.write, None)
            if gated:
                uc.mem_protect(device.base, device.size, unicorn.UC_PROT_READ)
            taken.append((device.base, device.base + device.size))
    for base, size in _gaps(taken):
        uc.mmio_map(base, size, read, base, write, base)
        if gated:
            uc.mem_protect(base, size, unicorn.UC_PROT_WRITE)


def store_in_place(address: int, data: bytes) -> None:
    """Copy ``data`` to host address ``address`` (inside a slot's buffer: what the simulated CPU stores itself)."""
    ctypes.memmove(address, data, len(data))


def buffer_address(buffer: Any) -> int:
    """The host address of a writable buffer (an ``mmap``) the simulator maps into its engines."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


@functools.cache
def _mincore() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    mincore = libc.mincore
    mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
    mincore.restype = ctypes.c_int
    return mincore


def host_page_populated(address: int) -> bool:
    """Whether the host page at ``address`` is populated (``mincore``): what KVM can map writable.

    An anonymous page nobody has touched is not; KVM would map the zero page read-only for a
    guest read. Where ``mincore`` fails the page counts as populated.
    """
    vector = ctypes.create_string_buffer(1)
    if _mincore()(address & ~(PAGE_SIZE - 1), PAGE_SIZE, vector) != 0:
        return True
    return bool(vector.raw[0] & 1)


class HostWrites:
    """Host writes to the memories behind one VM's slots: ``count`` goes up by one for each.

    Unicorn does not see host writes to guest memory (``GuestMemory.write``, ``fill``; also the
    simulator's own ``kvm_write_guest``-like stores), and code it translated from the old bytes
    would run on. Each vCPU compares ``count`` with what it saw before every run and, when it
    moved, drops the code translated from the memories whose ``version`` changed. A memory is
    watched (``GuestMemory.watch_writes``) while a slot of the VM uses it; a memory newly watched
    counts as written, as its earlier writes were not seen.
    """

    __slots__ = ("_watched", "count")

    def __init__(self) -> None:
        self.count = 0
        """Host writes seen so far."""
        self._watched: dict[int, tuple[GuestMemory, int, Callable[[], None]]] = {}  # id -> memory, slots, unwatch

    def __call__(self) -> None:
        """One host write (the memory's watcher)."""
        self.count += 1

    def slot_changed(self, change: SlotChange) -> None:
        """Watch the memory of the new slot, stop watching the old one's once no slot uses it."""
        if change.new is not None:
            memory = change.new.memory
            entry = self._watched.get(id(memory))
            if entry is None:
                self._watched[id(memory)] = (memory, 1, memory.watch_writes(self))
                self.count += 1
            else:
                self._watched[id(memory)] = (memory, entry[1] + 1, entry[2])
        if change.old is not None:
            memory, users, unwatch = self._watched[id(change.old.memory)]
            if users > 1:
                self._watched[id(memory)] = (memory, users - 1, unwatch)
            else:
                del self._watched[id(memory)]
                unwatch()

    def release_all(self) -> None:
        """Stop watching every memory (the VM is closed)."""
        for _, _, unwatch in self._watched.values():
            unwatch()
        self._watched.clear()


@dataclass
class DirtyLog:
    """Dirty pages per logging slot, shared by every vCPU of a VM, and the pages KVM has mapped.

    A page is recorded when a vCPU's first write to it stops in the write-protect
    hook; that engine then makes the page writable. Reading the log clears it and
    write-protects the pages again in every engine (``reprotect``).

    Upstream KVM also logs a page when the guest's first access of any kind maps it (a read or
    an instruction fetch included): it maps a page writable whenever the host's page is
    writable (``hva_to_pfn``: "map read fault as writable if possible"), and ``make_spte`` logs
    every writable mapping of a logging slot. Pages the host never populated map read-only (the
    shared zero page) and are not logged. ``present`` follows KVM's mappings: for a slot created
    (or moved) with logging on, the pages the guest has touched since; None where every page
    counts as mapped (logging turned on for a slot already in use, whose earlier mappings KVM
    keeps write-protected). Reading the log write-protects, it does not unmap.
    """

    pages: dict[int, set[int]] = field(default_factory=dict)
    generation: int = 0
    present: dict[int, set[int] | None] = field(default_factory=dict)

    def map_first(self, slot: int, page: int, populated: bool) -> bool:
        """The guest's first access to ``page`` of ``slot``: mapped now, and logged if the host page is populated."""
        mapped = self.present.get(slot)
        if mapped is not None:
            mapped.add(page)
        if populated:
            self.record(slot, page)
        return populated

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
        self.present.pop(slot, None)
        if self.pages.pop(slot, None) is not None:
            self.generation += 1

    def unmapped(self, slot: int) -> None:
        """``slot`` is new or moved with logging on: KVM has no mapping of any of its pages yet."""
        self.present[slot] = set()
