"""Guest memory owned by the VMM, and the memory-slot rules every backend enforces.

A :class:`GuestMemory` is an anonymous, page-aligned mmap. It is lazily
allocated (``MAP_NORESERVE``): declaring 4 GiB costs nothing until the guest
touches pages. A VM maps it into guest-physical space through memory slots::

    with GuestMemory(2 << 20) as ram:
        ram.write(0x1000, code)
        vm.set_memory_slot(0, guest_address=0, memory=ram)

:class:`SlotTable` holds KVM's slot rules (alignment, overlap, what an
existing slot may change) once, for every backend.
"""

from __future__ import annotations

import ctypes
import mmap
import platform
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum

from hvcore.arguments import check_bytes, check_instance, check_int, check_optional_int
from hvcore.errors import (
    AlignmentError,
    ClosedError,
    HvError,
    InvalidArgument,
    NotFound,
    SlotOverlap,
    Unsupported,
    error_for_errno,
)
from hvcore.lifetime import Closeable
from hvcore.types import DirtyLog, SlotFlags

__all__ = [
    "PAGE_SIZE",
    "SMM_ADDRESS_SPACE",
    "GuestMemory",
    "MemorySlot",
    "SlotChange",
    "SlotOwner",
    "SlotTable",
    "check_address_space",
]

PAGE_SIZE = 4096
"""The x86 page size: slots, ROMs and dirty logs work in whole pages."""
MAX_GUEST_MEMORY = 1 << 46
"""The largest buffer hvcore will reserve (64 TiB): larger requests are a bug, not a wish."""

_MAP_NORESERVE_BY_MACHINE = {"ppc64": 0x40, "ppc64le": 0x40, "sparc64": 0x40, "mips64": 0x400, "alpha": 0x10000}
# Python's mmap module only has MAP_NORESERVE from 3.13; without it a large guest would be refused
# (ENOMEM) under the kernel's heuristic overcommit. The generic Linux value is 0x4000.
_MAP_NORESERVE: int = getattr(mmap, "MAP_NORESERVE", _MAP_NORESERVE_BY_MACHINE.get(platform.machine(), 0x4000))


def _check_page_aligned(what: str, value: int) -> None:
    if value % PAGE_SIZE:
        raise AlignmentError(
            f"{what} {value:#x} is not a multiple of the page size ({PAGE_SIZE:#x}); round it to a page boundary",
            operation="set_memory_slot",
        )


class GuestMemory(Closeable):
    """A page-aligned, zero-filled, lazily allocated buffer of guest RAM.

    ``address`` is its host virtual address (what KVM's slots and Unicorn's
    ``mem_map_ptr`` take). Reads and writes copy; no views are handed out, so
    ``close()`` always succeeds once no slot uses the buffer.
    """

    def __init__(self, size: int) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise InvalidArgument(f"guest memory size must be a positive integer, got {size!r}")
        if size % PAGE_SIZE:
            raise AlignmentError(f"guest memory size {size:#x} is not a multiple of the page size ({PAGE_SIZE:#x})")
        if size > MAX_GUEST_MEMORY:
            raise InvalidArgument(f"guest memory size {size:#x} is larger than the {MAX_GUEST_MEMORY:#x} hvcore allows")
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE
        try:
            self._map: mmap.mmap | None = mmap.mmap(-1, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            raise error_for_errno(exc.errno or 0, "mmap(guest memory)", f"cannot reserve {size:#x} bytes") from exc
        anchor = ctypes.c_char.from_buffer(self._map)
        self._address = ctypes.addressof(anchor)
        del anchor  # releases the buffer export, so close() can unmap
        self._size = size
        self._slot_users = 0
        self._close_requested = False
        self._version = 0
        self._last_write = (0, 0)
        self._watchers: tuple[Callable[[], None], ...] = ()

    @property
    def size(self) -> int:
        """Size in bytes."""
        return self._size

    @property
    def address(self) -> int:
        """Host virtual address of the first byte."""
        self._live()
        return self._address

    @property
    def closed(self) -> bool:
        """True once ``close()`` has been called (the unmap may wait for the last slot to go)."""
        return self._map is None or self._close_requested

    def _live(self) -> mmap.mmap:
        if self._map is None or self._close_requested:
            raise ClosedError("guest memory is closed; allocate a new GuestMemory", operation="guest memory")
        return self._map

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise InvalidArgument(
                f"range {offset:#x}+{length:#x} is outside guest memory of size {self._size:#x}",
                operation="guest memory access",
            )

    def read(self, offset: int, length: int) -> bytes:
        """Copy ``length`` bytes starting at ``offset``."""
        check_int("offset", offset, "read")
        check_int("length", length, "read")
        m = self._live()
        self._check_range(offset, length)
        return m[offset : offset + length]

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` in at ``offset``."""
        check_int("offset", offset, "write")
        check_bytes("data", data, "write")
        m = self._live()
        self._check_range(offset, len(data))
        m[offset : offset + len(data)] = data
        self._version += 1
        self._last_write = (offset, len(data))
        for watcher in self._watchers:
            watcher()

    @property
    def version(self) -> int:
        """Counts host writes through :meth:`write`, so an emulator can drop code it translated from stale bytes."""
        return self._version

    @property
    def last_write(self) -> tuple[int, int]:
        """``(offset, length)`` of the latest :meth:`write`."""
        return self._last_write

    def watch_writes(self, watcher: Callable[[], None]) -> Callable[[], None]:
        """Call ``watcher()`` after every host :meth:`write` (and :meth:`fill`); the function returned stops it.

        For backends that keep something derived from the bytes: the simulator drops the code it
        translated from what the host changed (KVM needs nothing: the processor sees every write).
        """
        self._watchers += (watcher,)
        watching = True

        def unwatch() -> None:
            nonlocal watching
            if watching:
                watching = False
                at = next(i for i, w in enumerate(self._watchers) if w is watcher)
                self._watchers = self._watchers[:at] + self._watchers[at + 1 :]

        return unwatch

    def fill(self, offset: int, length: int, byte: int = 0) -> None:
        """Set ``length`` bytes at ``offset`` to ``byte``."""
        check_int("offset", offset, "fill")
        check_int("length", length, "fill")
        check_int("byte", byte, "fill")
        self._live()
        self._check_range(offset, length)
        if not 0 <= byte < 256:
            raise InvalidArgument(f"fill byte {byte} is not in range 0-255", operation="guest memory access")
        self.write(offset, bytes([byte]) * length)

    def _attach(self) -> None:
        self._live()
        self._slot_users += 1

    def _detach(self) -> None:
        self._slot_users -= 1
        if self._close_requested and not self._slot_users:
            self._unmap()

    def _unmap(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None

    def close(self) -> None:
        """Release the buffer. While a memory slot still maps it, the unmap waits until the slot is deleted
        or its VM closed (the guest must never see freed memory); the buffer is unusable from now on."""
        self._close_requested = True
        if not self._slot_users:
            self._unmap()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"at {self._address:#x}"
        return f"GuestMemory(size={self._size:#x}, {state})"


@dataclass(frozen=True, slots=True)
class MemorySlot:
    """A memory slot: ``size`` bytes of ``memory`` from ``offset``, seen by the guest at ``guest_address``."""

    slot: int
    guest_address: int
    size: int
    memory: GuestMemory
    offset: int = 0
    flags: SlotFlags = SlotFlags(0)
    address_space: int = 0
    """0: the normal address space; 1: what a vCPU in System Management Mode sees (KVM_CAP_MULTI_ADDRESS_SPACE)."""

    @property
    def kvm_slot(self) -> int:
        """The slot number as KVM's uAPI spells it: ``address_space << 16 | slot``."""
        return self.address_space << 16 | self.slot

    @property
    def end(self) -> int:
        """First guest-physical address past the slot."""
        return self.guest_address + self.size

    @property
    def host_address(self) -> int:
        """Host virtual address of the slot's first byte."""
        return self.memory.address + self.offset

    @property
    def readonly(self) -> bool:
        """True when guest writes to the slot become MMIO exits."""
        return bool(self.flags & SlotFlags.READONLY)

    def contains(self, guest_address: int) -> bool:
        """True when the slot maps ``guest_address``."""
        return self.guest_address <= guest_address < self.end


class SlotChangeKind(Enum):
    """What a slot request amounts to."""

    ADD = "add"
    DELETE = "delete"
    MODIFY = "modify"


@dataclass(frozen=True, slots=True)
class SlotChange:
    """A validated slot request: ``new`` is None for a delete, ``old`` is None for an add."""

    kind: SlotChangeKind
    slot: int
    old: MemorySlot | None
    new: MemorySlot | None

    @property
    def target(self) -> MemorySlot:
        """The slot as the change leaves it, or (a delete) as it was."""
        either = self.new or self.old
        assert either is not None
        return either

    @property
    def address_space(self) -> int:
        """The address space the slot is in."""
        return self.target.address_space

    @property
    def kvm_slot(self) -> int:
        """The slot number as KVM's uAPI spells it (``MemorySlot.kvm_slot``)."""
        return self.target.kvm_slot


SMM_ADDRESS_SPACE = 1
"""The address space a vCPU in System Management Mode sees (x86 KVM's second one, where SMRAM is)."""


def check_address_space(address_space: object, spaces: int, operation: str) -> int:
    """``address_space`` if this VM has it; ``Unsupported`` for SMM's on a VM without it, else ``InvalidArgument``."""
    check_int("address_space", address_space, operation)
    assert isinstance(address_space, int)
    if 0 <= address_space < spaces:
        return address_space
    if address_space == SMM_ADDRESS_SPACE:
        raise Unsupported(
            "address space 1 (SMM) needs KVM_CAP_MULTI_ADDRESS_SPACE, and this VM has one address space "
            "(its KVM has no SMM); map SMRAM only where check_extension(Capability.X86_SMM) is non-zero",
            operation=operation,
        )
    raise InvalidArgument(
        f"address space {address_space} does not exist; this VM has {spaces} (0 is the normal one"
        f"{', 1 the SMM one' if spaces > 1 else ''})",
        operation=operation,
    )


class SlotTable:
    """A VM's memory slots, with KVM's rules (Documentation/virt/kvm/api.rst, KVM_SET_USER_MEMORY_REGION).

    ``plan()`` validates a request and says what it means; the backend performs
    it, then ``apply()`` records it. The table also keeps each slot's
    ``GuestMemory`` alive and refuses to let it close while mapped. Each address space
    (``address_spaces`` of them: 2 where KVM has SMM) has its own slot ids, and slots overlap
    only those of their own space.
    """

    def __init__(self, max_slots: int, address_spaces: int = 1) -> None:
        self.max_slots = max_slots
        self.address_spaces = address_spaces
        self._slots: dict[tuple[int, int], MemorySlot] = {}  # (address space, slot id)
        self._sorted: tuple[MemorySlot, ...] = ()
        self._by_space: tuple[tuple[MemorySlot, ...], ...] = ((),) * address_spaces

    def slots(self, address_space: int | None = None) -> tuple[MemorySlot, ...]:
        """The slots of ``address_space`` by slot id, or every slot (by address space, then id)."""
        return self._sorted if address_space is None else self._by_space[address_space]

    def _check_id(self, slot: int, operation: str) -> None:
        if not 0 <= slot < self.max_slots:
            raise InvalidArgument(f"slot id {slot} is out of range; use 0 to {self.max_slots - 1}", operation=operation)

    def get(self, slot: int, address_space: int = 0) -> MemorySlot:
        """The slot with id ``slot`` in ``address_space``; :class:`NotFound` if there is none."""
        self._check_id(slot, "memory slot lookup")
        try:
            return self._slots[address_space, slot]
        except KeyError:
            where = f" in address space {address_space}" if address_space else ""
            raise NotFound(f"memory slot {slot} does not exist{where}", operation="memory slot lookup") from None

    def find(self, guest_address: int, address_space: int = 0) -> MemorySlot | None:
        """The slot of ``address_space`` that maps ``guest_address``, if any."""
        for s in self._by_space[address_space]:
            if s.contains(guest_address):
                return s
        return None

    def plan(
        self,
        slot: int,
        guest_address: int,
        memory: GuestMemory | None,
        offset: int,
        size: int,
        flags: SlotFlags,
        address_space: int = 0,
    ) -> SlotChange:
        """Check a request against KVM's rules; raise the error KVM would, with a better message."""
        op = "set_memory_slot"
        address_space = check_address_space(address_space, self.address_spaces, op)
        self._check_id(slot, op)
        unknown = int(flags) & ~int(SlotFlags.LOG_DIRTY_PAGES | SlotFlags.READONLY)
        if unknown:
            raise InvalidArgument(f"unknown slot flag bits {unknown:#x}", operation=op)
        old = self._slots.get((address_space, slot))
        if size == 0:
            if old is None:
                raise InvalidArgument(f"cannot delete memory slot {slot}: it does not exist", operation=op)
            return SlotChange(SlotChangeKind.DELETE, slot, old, None)
        if memory is None:
            raise InvalidArgument("a memory slot needs a GuestMemory to map", operation=op)
        if memory.closed:
            raise ClosedError("cannot map closed guest memory into a slot", operation=op)
        if size < 0 or offset < 0:
            raise InvalidArgument(f"size {size:#x} and offset {offset:#x} must not be negative", operation=op)
        _check_page_aligned("guest address", guest_address)
        _check_page_aligned("slot size", size)
        _check_page_aligned("offset into guest memory", offset)
        if offset + size > memory.size:
            raise InvalidArgument(
                f"slot {slot} wants {size:#x} bytes at offset {offset:#x} of a {memory.size:#x}-byte GuestMemory",
                operation=op,
            )
        if guest_address < 0 or guest_address + size > 1 << 52:
            raise InvalidArgument(
                f"guest range {guest_address:#x}+{size:#x} is beyond 52-bit physical space", operation=op
            )
        new = MemorySlot(slot, guest_address, size, memory, offset, SlotFlags(flags), address_space)
        for other in self._by_space[address_space]:
            if other.slot != slot and other.guest_address < new.end and new.guest_address < other.end:
                raise SlotOverlap(
                    f"slot {slot} at {guest_address:#x}-{new.end:#x} overlaps slot {other.slot} at "
                    f"{other.guest_address:#x}-{other.end:#x}; move or delete one of them",
                    operation=op,
                )
        if old is None:
            return SlotChange(SlotChangeKind.ADD, slot, None, new)
        if old.size != size or old.memory is not memory or old.offset != offset:
            raise InvalidArgument(
                f"slot {slot} exists with another size or buffer; delete it first (size 0), then add it again",
                operation=op,
            )
        if old.readonly != new.readonly:
            raise InvalidArgument(
                f"slot {slot}: the READONLY flag cannot change in place; use set_slot_flags(), "
                "which deletes and re-adds the slot",
                operation=op,
            )
        return SlotChange(SlotChangeKind.MODIFY, slot, old, new)

    def plan_flags(self, slot: int, flags: SlotFlags, address_space: int = 0) -> tuple[SlotChange, ...]:
        """The changes that give ``slot`` new ``flags``: one in place, or delete then add when READONLY changes.

        Everything is checked before anything is done, so a refused request leaves the slot as it was.
        """
        old = self.get(slot, check_address_space(address_space, self.address_spaces, "set_slot_flags"))
        unknown = int(flags) & ~int(SlotFlags.LOG_DIRTY_PAGES | SlotFlags.READONLY)
        if unknown:
            raise InvalidArgument(f"unknown slot flag bits {unknown:#x}", operation="set_slot_flags")
        if old.memory.closed:
            raise ClosedError(
                f"slot {slot} maps closed guest memory; its flags cannot change", operation="set_slot_flags"
            )
        new = replace(old, flags=SlotFlags(flags))
        if new.readonly == old.readonly:
            return (SlotChange(SlotChangeKind.MODIFY, slot, old, new),)
        return (SlotChange(SlotChangeKind.DELETE, slot, old, None), SlotChange(SlotChangeKind.ADD, slot, None, new))

    def apply(self, change: SlotChange) -> None:
        """Record a change the backend has carried out."""
        key = (change.address_space, change.slot)
        if change.new is not None:
            change.new.memory._attach()
            self._slots[key] = change.new
        else:
            del self._slots[key]
        if change.old is not None:
            change.old.memory._detach()
        self._sorted = tuple(sorted(self._slots.values(), key=lambda s: (s.address_space, s.slot)))
        self._by_space = tuple(
            tuple(s for s in self._sorted if s.address_space == space) for space in range(self.address_spaces)
        )

    def release_all(self) -> None:
        """Forget every slot (the VM is closing) and let their memory close."""
        for s in self._slots.values():
            s.memory._detach()
        self._slots.clear()
        self._sorted = ()
        self._by_space = ((),) * self.address_spaces


def _check_slot_arguments(
    slot: object, guest_address: object, memory: object, offset: object, size: object, flags: object
) -> None:
    """The types ``set_memory_slot`` takes (a float address would reach the backend's page tables)."""
    operation = "set_memory_slot"
    check_int("slot", slot, operation)
    check_int("guest_address", guest_address, operation)
    check_instance("memory", memory, GuestMemory, operation)
    check_int("offset", offset, operation)
    check_optional_int("size", size, operation)
    check_int("flags", flags, operation)


class SlotOwner:
    """Mixin: the memory-slot methods of :class:`hvcore.VM`, with KVM's rules, for any backend.

    A backend provides ``_slots`` (a :class:`SlotTable`), ``_live()`` (raise when closed),
    ``_commit(change)`` (carry a checked change out, then ``_slots.apply`` it) and
    ``_dirty_bitmap(slot)`` (read and clear the slot's dirty bitmap).
    """

    _slots: SlotTable

    def _live(self) -> object:
        raise NotImplementedError

    def _commit(self, change: SlotChange) -> None:
        raise NotImplementedError

    def _dirty_bitmap(self, slot: MemorySlot) -> bytes:
        raise NotImplementedError

    def set_memory_slot(
        self,
        slot: int,
        guest_address: int,
        memory: GuestMemory,
        *,
        offset: int = 0,
        size: int | None = None,
        flags: SlotFlags = SlotFlags(0),
        address_space: int = 0,
    ) -> MemorySlot:
        """Map ``size`` bytes of ``memory`` (from ``offset``; all of it by default) at ``guest_address``."""
        _check_slot_arguments(slot, guest_address, memory, offset, size, flags)
        self._live()
        if size is None:
            size = memory.size - offset
        if size == 0:
            raise InvalidArgument(
                "a slot of size 0 maps nothing; use delete_memory_slot() to remove one", operation="set_memory_slot"
            )
        self._commit(self._slots.plan(slot, guest_address, memory, offset, size, flags, address_space))
        return self._slots.get(slot, address_space)

    def delete_memory_slot(self, slot: int, *, address_space: int = 0) -> None:
        """Remove a slot; later guest accesses to its range are MMIO exits."""
        check_int("slot", slot, "delete_memory_slot")
        self._live()
        self._commit(self._slots.plan(slot, 0, None, 0, 0, SlotFlags(0), address_space))

    def set_slot_flags(self, slot: int, flags: SlotFlags, *, address_space: int = 0) -> MemorySlot:
        """Change a slot's flags; a READONLY change deletes and re-adds the slot, as QEMU does."""
        check_int("slot", slot, "set_slot_flags")
        check_int("flags", flags, "set_slot_flags")
        self._live()
        first, *rest = self._slots.plan_flags(slot, flags, address_space)
        self._commit(first)
        for change in rest:
            try:
                self._commit(change)
            except HvError:
                self._commit(SlotChange(SlotChangeKind.ADD, slot, None, first.old))
                raise
        return self._slots.get(slot, address_space)

    def memory_slots(self) -> tuple[MemorySlot, ...]:
        """The slots, by address space and id."""
        self._live()
        return self._slots.slots()

    def get_dirty_log(self, slot: int, *, address_space: int = 0) -> DirtyLog:
        """Pages written since the last call, for a slot with ``LOG_DIRTY_PAGES``; reading clears it."""
        check_int("slot", slot, "get_dirty_log")
        self._live()
        entry = self._slots.get(slot, check_address_space(address_space, self._slots.address_spaces, "get_dirty_log"))
        if not entry.flags & SlotFlags.LOG_DIRTY_PAGES:
            raise NotFound(
                f"slot {slot} does not log dirty pages; set SlotFlags.LOG_DIRTY_PAGES on it first",
                operation="get_dirty_log",
            )
        return DirtyLog(slot, entry.size // PAGE_SIZE, self._dirty_bitmap(entry))
