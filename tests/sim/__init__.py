"""Unit tests of the simulator's internals, with no Unicorn and no backend.

:class:`Ram` is the guest-physical memory the page walker and event delivery
take; :class:`PageTables` builds 8-byte-entry page tables in it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from hvcore import GuestMemory, NotFound

RAM_SIZE = 16 << 20

P, RW, US, ACCESSED, DIRTY, PS = 0x1, 0x2, 0x4, 0x20, 0x40, 0x80
NX = 1 << 63


class Ram:
    """A ``GuestMemory`` seen at guest-physical 0; anything beyond it raises ``NotFound`` as an unbacked address.

    ``writes`` records every store, so a test can check that a failed access stored nothing.
    """

    def __init__(self, memory: GuestMemory) -> None:
        self.memory = memory
        self.writes: list[tuple[int, bytes]] = []

    def _check(self, address: int, length: int) -> None:
        if address < 0 or address + length > self.memory.size:
            raise NotFound(f"no memory slot backs {address:#x}+{length:#x}")

    def read(self, address: int, length: int, /) -> bytes:
        self._check(address, length)
        return self.memory.read(address, length)

    def write(self, address: int, data: bytes, /) -> None:
        self._check(address, len(data))
        self.writes.append((address, bytes(data)))
        self.memory.write(address, data)

    def put(self, address: int, value: int, size: int) -> None:
        """Store ``value`` little-endian without recording it (test set-up)."""
        self.memory.write(address, value.to_bytes(size, "little"))

    def get(self, address: int, size: int) -> int:
        """The little-endian value of ``size`` bytes at ``address``."""
        return int.from_bytes(self.memory.read(address, size), "little")

    def words(self, address: int, count: int, size: int) -> list[int]:
        """``count`` consecutive ``size``-byte values from ``address`` (a stack frame, lowest first)."""
        return [self.get(address + i * size, size) for i in range(count)]


@contextmanager
def open_ram(size: int = RAM_SIZE) -> Iterator[Ram]:
    """A fresh zero-filled :class:`Ram`, released afterwards."""
    with GuestMemory(size) as memory:
        yield Ram(memory)


class PageTables:
    """Page tables with 8-byte entries (4- or 5-level, or PAE with ``levels=3``), tables taken from ``base`` on.

    Intermediate entries get ``upper`` flags (a PAE PDPTE only P, as its other bits are reserved).
    """

    def __init__(self, ram: Ram, base: int, *, levels: int = 4, upper: int = P | RW | US) -> None:
        self.ram = ram
        self.levels = levels
        self.upper = upper
        self._next = base
        self.root = self._table()

    def _table(self) -> int:
        address = self._next
        self._next += 0x1000
        return address

    def _index(self, linear: int, level: int) -> int:
        index = (linear >> (12 + 9 * (level - 1))) & 0x1FF
        return index & 3 if self.levels == 3 and level == 3 else index

    def map(self, linear: int, physical: int, flags: int, *, size: int = 0x1000) -> list[int]:
        """Map ``size`` bytes (4 KiB, 2 MiB or 1 GiB) at ``linear``; the addresses of the entries used, top first."""
        leaf_level = {0x1000: 1, 0x200000: 2, 0x40000000: 3}[size]
        table, entries = self.root, []
        for level in range(self.levels, leaf_level, -1):
            address = table + self._index(linear, level) * 8
            entries.append(address)
            entry = self.ram.get(address, 8)
            if not entry & P:
                upper = P if self.levels == 3 and level == 3 else self.upper
                entry = self._table() | upper
                self.ram.put(address, entry, 8)
            table = entry & 0xFFFFFFFFFF000
        address = table + self._index(linear, leaf_level) * 8
        self.ram.put(address, physical | flags | (PS if leaf_level > 1 else 0), 8)
        return [*entries, address]


def gate(offset: int, selector: int, *, kind: int = 0xE, dpl: int = 0, present: bool = True, ist: int = 0) -> bytes:
    """An 8-byte IDT gate (``kind`` 0x5 task, 0x6/0x7 16-bit, 0xE/0xF 32-bit interrupt/trap)."""
    access = kind | dpl << 5 | int(present) << 7
    low = (offset & 0xFFFF) | selector << 16 | ist << 32 | access << 40 | ((offset >> 16) & 0xFFFF) << 48
    return low.to_bytes(8, "little")


def gate64(offset: int, selector: int, *, kind: int = 0xE, dpl: int = 0, present: bool = True, ist: int = 0) -> bytes:
    """A 16-byte long-mode IDT gate with a 64-bit ``offset`` and an IST index."""
    low = gate(offset, selector, kind=kind, dpl=dpl, present=present, ist=ist)
    return low + (offset >> 32).to_bytes(4, "little") + bytes(4)
