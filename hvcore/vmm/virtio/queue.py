"""The device side of a virtio 1.x split virtqueue (virtio spec 1.2, section 2.7).

The driver (the guest) owns three areas in guest memory: the descriptor table (``size`` entries
of 16 bytes: address, length, flags, next), the available ring (``flags``, ``idx``, ``size``
heads, ``used_event``) and the used ring (``flags``, ``idx``, ``size`` (id, length) pairs,
``avail_event``). :class:`SplitQueue` takes the chains the driver made available
(:meth:`SplitQueue.pop`), moves their data (:meth:`SplitQueue.read`, :meth:`SplitQueue.write`),
hands them back (:meth:`SplitQueue.push`) and says whether the driver wants an interrupt for
that (:meth:`SplitQueue.needs_interrupt`).

Everything the guest wrote is checked before it is used, and a guest that breaks the rules gets
:class:`hvcore.GuestDataError` (its device then needs a reset; the VMM carries on): an available
index more than ``size`` ahead, a head or ``next`` index outside the table, a chain that loops
or is longer than the table, a device-readable buffer after a device-writable one, an indirect
table that is empty, not a whole number of descriptors, nested, or chained with ``NEXT``, and a
buffer or ring outside guest RAM. A chain that fails leaves the queue where it was: nothing is
consumed, nothing is written.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Protocol

from hvcore.arguments import check_int
from hvcore.errors import GuestDataError, HvError

__all__ = [
    "MAX_QUEUE_SIZE",
    "VIRTQ_DESC_F_INDIRECT",
    "VIRTQ_DESC_F_NEXT",
    "VIRTQ_DESC_F_WRITE",
    "VRING_AVAIL_F_NO_INTERRUPT",
    "VRING_USED_F_NO_NOTIFY",
    "Buffer",
    "Chain",
    "QueueMemory",
    "SplitQueue",
]

VIRTQ_DESC_F_NEXT: Final = 1
"""The descriptor continues in the one its ``next`` field names."""
VIRTQ_DESC_F_WRITE: Final = 2
"""The buffer is device-writable (else device-readable)."""
VIRTQ_DESC_F_INDIRECT: Final = 4
"""The buffer is a table of descriptors (VIRTIO_F_INDIRECT_DESC)."""
VRING_AVAIL_F_NO_INTERRUPT: Final = 1
"""In the available ring's flags: the driver wants no interrupt for used buffers (without event index)."""
VRING_USED_F_NO_NOTIFY: Final = 1
"""In the used ring's flags: the device wants no notification for available buffers (without event index)."""
MAX_QUEUE_SIZE: Final = 32768
"""The largest split queue (the spec's limit)."""

_DESC = struct.Struct("<QIHH")  # addr, len, flags, next
_U16 = struct.Struct("<H")
_USED_ELEM = struct.Struct("<II")  # id, len


def _broken(problem: str) -> GuestDataError:
    return GuestDataError(f"{problem}; the device stops until the driver resets it", operation="virtqueue")


class QueueMemory(Protocol):
    """Guest-physical memory as a device reaches it (a :class:`~hvcore.vmm.machine.Machine` fits).

    Either call raises an :class:`hvcore.HvError` for a range that is not RAM.
    """

    def read(self, address: int, length: int) -> bytes:
        """``length`` bytes of guest memory at ``address``."""
        ...

    def write(self, address: int, data: bytes) -> None:
        """Store ``data`` in guest memory at ``address``."""
        ...


@dataclass(frozen=True)
class Buffer:
    """One guest buffer of a chain."""

    address: int
    length: int
    writable: bool
    """Device-writable (the device fills it) rather than device-readable."""


@dataclass(frozen=True)
class Chain:
    """A descriptor chain the driver made available: its head index and its buffers in order."""

    head: int
    """The index :meth:`SplitQueue.push` returns to the driver."""
    readable: tuple[Buffer, ...]
    """The device-readable buffers (they all come first)."""
    writable: tuple[Buffer, ...]
    """The device-writable buffers."""

    @property
    def readable_length(self) -> int:
        """Bytes the device can read."""
        return sum(b.length for b in self.readable)

    @property
    def writable_length(self) -> int:
        """Bytes the device can write."""
        return sum(b.length for b in self.writable)


class SplitQueue:
    """One split virtqueue of ``size`` entries at the guest-physical addresses the driver gave.

    ``event_idx`` is whether VIRTIO_F_EVENT_IDX was negotiated (``used_event`` / ``avail_event``
    instead of the flags); ``indirect`` whether VIRTIO_F_INDIRECT_DESC was. The layout is checked
    here (``size`` a power of two up to 32768; the table 16-byte, the available ring 2-byte and the
    used ring 4-byte aligned), and a wrong one is the guest's: ``GuestDataError``.
    """

    def __init__(
        self,
        memory: QueueMemory,
        size: int,
        descriptors: int,
        available: int,
        used: int,
        *,
        event_idx: bool = False,
        indirect: bool = True,
    ) -> None:
        for name, value in (("size", size), ("descriptors", descriptors), ("available", available), ("used", used)):
            check_int(name, value, "SplitQueue", 0)
        if not 0 < size <= MAX_QUEUE_SIZE or size & (size - 1):
            raise _broken(f"virtqueue size {size} is not a power of two from 1 to {MAX_QUEUE_SIZE}")
        for name, address, alignment in (("descriptor table", descriptors, 16), ("available ring", available, 2)):
            if address % alignment:
                raise _broken(f"virtqueue {name} at {address:#x} is not {alignment}-byte aligned")
        if used % 4:
            raise _broken(f"virtqueue used ring at {used:#x} is not 4-byte aligned")
        self.memory = memory
        self.size = size
        self.descriptors = descriptors
        self.available = available
        self.used = used
        self.event_idx = event_idx
        self.indirect = indirect
        self.last_available = 0
        """The free-running index of the next available entry to take."""
        self.used_index = 0
        """The free-running index the used ring's ``idx`` has (the next entry written goes there)."""
        self._signalled = 0  # used_index when the driver was last told (event index)

    # -- guest memory ----------------------------------------------------------------------------

    def _read(self, address: int, length: int, what: str) -> bytes:
        try:
            return self.memory.read(address, length)
        except HvError as error:
            raise _broken(f"virtqueue {what} at {address:#x}+{length:#x} is not in guest RAM: {error}") from None

    def _write(self, address: int, data: bytes, what: str) -> None:
        try:
            self.memory.write(address, data)
        except HvError as error:
            raise _broken(f"virtqueue {what} at {address:#x}+{len(data):#x} is not in guest RAM: {error}") from None

    def _available_index(self) -> int:
        value: int = _U16.unpack(self._read(self.available + 2, 2, "available ring"))[0]
        return value

    # -- taking chains --------------------------------------------------------------------------

    def pending(self) -> int:
        """How many chains the driver has made available that the device has not taken."""
        ahead = (self._available_index() - self.last_available) & 0xFFFF
        if ahead > self.size:
            raise _broken(f"the available ring's idx is {ahead} entries ahead of the device in a queue of {self.size}")
        return ahead

    def pop(self) -> Chain | None:
        """The next available chain, checked; None when there is none. Raises ``GuestDataError`` for a bad one."""
        if not self.pending():
            return None
        slot = self.last_available % self.size
        head: int = _U16.unpack(self._read(self.available + 4 + 2 * slot, 2, "available ring"))[0]
        chain = self._walk(head)
        self.last_available = (self.last_available + 1) & 0xFFFF
        if self.event_idx:  # avail_event: notify again for the next entry
            self._write(self.used + 4 + 8 * self.size, _U16.pack(self.last_available), "used ring")
        return chain

    def __iter__(self) -> Iterator[Chain]:
        """Every chain available now, in order (each one taken as it is yielded)."""
        while (chain := self.pop()) is not None:
            yield chain

    def _walk(self, head: int) -> Chain:
        if head >= self.size:
            raise _broken(f"available chain head {head} is outside the descriptor table of {self.size}")
        buffers: list[Buffer] = []
        table, entries, index = self.descriptors, self.size, head
        indirect = False
        seen = 0
        while True:
            seen += 1
            if seen > entries:
                what = "indirect table" if indirect else "descriptor table"
                raise _broken(f"descriptor chain from head {head} loops (longer than its {what} of {entries})")
            address, length, flags, following = _DESC.unpack(self._read(table + 16 * index, 16, "descriptor"))
            if flags & VIRTQ_DESC_F_INDIRECT:
                if indirect or not self.indirect:
                    reason = "inside an indirect table" if indirect else "without VIRTIO_F_INDIRECT_DESC"
                    raise _broken(f"descriptor {index} of chain {head} is indirect {reason}")
                if flags & VIRTQ_DESC_F_NEXT:
                    raise _broken(f"descriptor {index} of chain {head} is indirect and has NEXT")
                if not length or length % 16:
                    raise _broken(
                        f"indirect table of chain {head} is {length} bytes, not a whole number of 16-byte descriptors"
                    )
                if buffers:
                    raise _broken(f"indirect descriptor {index} of chain {head} follows direct ones")
                table, entries, index, indirect, seen = address, length // 16, 0, True, 0
                continue
            writable = bool(flags & VIRTQ_DESC_F_WRITE)
            if not writable and buffers and buffers[-1].writable:
                raise _broken(f"chain {head} has a device-readable buffer after a device-writable one")
            buffers.append(Buffer(address, length, writable))
            if not flags & VIRTQ_DESC_F_NEXT:
                break
            if following >= entries:
                raise _broken(f"descriptor {index} of chain {head} names next {following} outside its table")
            index = following
        readable = tuple(b for b in buffers if not b.writable)
        return Chain(head, readable, tuple(buffers[len(readable) :]))

    # -- moving data ----------------------------------------------------------------------------

    def read(self, chain: Chain, limit: int | None = None) -> bytes:
        """The chain's device-readable bytes in order, at most ``limit`` of them (all when None)."""
        wanted = chain.readable_length if limit is None else min(limit, chain.readable_length)
        parts: list[bytes] = []
        for buffer in chain.readable:
            if wanted <= 0:
                break
            take = min(buffer.length, wanted)
            parts.append(self._read(buffer.address, take, f"buffer of chain {chain.head}"))
            wanted -= take
        return b"".join(parts)

    def write(self, chain: Chain, data: bytes, offset: int = 0) -> int:
        """Store ``data`` in the chain's device-writable bytes from ``offset`` on; returns how many bytes fit."""
        done, skip = 0, offset
        for buffer in chain.writable:
            if done >= len(data):
                break
            if skip >= buffer.length:
                skip -= buffer.length
                continue
            piece = data[done : done + buffer.length - skip]
            self._write(buffer.address + skip, piece, f"buffer of chain {chain.head}")
            done += len(piece)
            skip = 0
        return done

    # -- giving chains back -----------------------------------------------------------------------

    def push(self, chain: Chain, written: int) -> None:
        """Return ``chain`` to the driver, ``written`` bytes of it filled (the used element, then ``idx``)."""
        check_int("written", written, "push", 0, chain.writable_length + 1)
        slot = self.used_index % self.size
        self._write(self.used + 4 + 8 * slot, _USED_ELEM.pack(chain.head, written), "used ring")
        self.used_index = (self.used_index + 1) & 0xFFFF
        self._write(self.used + 2, _U16.pack(self.used_index), "used ring")

    def needs_interrupt(self) -> bool:
        """Whether the driver wants an interrupt for what was pushed since the last one it was told of.

        Without the event index: unless the available ring's flags say NO_INTERRUPT. With it: when
        ``used_event`` lies among the entries pushed since then (the spec's ``vring_need_event``).
        """
        if not self.event_idx:
            flags: int = _U16.unpack(self._read(self.available, 2, "available ring"))[0]
            return not flags & VRING_AVAIL_F_NO_INTERRUPT
        event: int = _U16.unpack(self._read(self.available + 4 + 2 * self.size, 2, "available ring"))[0]
        new, old = self.used_index, self._signalled
        self._signalled = new
        return (new - event - 1) & 0xFFFF < (new - old) & 0xFFFF

    def set_notifications(self, enabled: bool) -> None:
        """Ask the driver for notifications of new buffers (or not), through the used ring's flags."""
        if not self.event_idx:
            self._write(self.used, _U16.pack(0 if enabled else VRING_USED_F_NO_NOTIFY), "used ring")
