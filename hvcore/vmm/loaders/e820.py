"""The PC memory map the loaders share, and where a loader may put things in guest RAM.

A PC's physical memory as its firmware reports it (BIOS INT 15h E820, multiboot's ``mmap``, the
``e820_table`` of Linux's zero page): conventional memory up to the extended BIOS data area
at ``0x9FC00``, a reserved hole up to 1 MiB (EBDA, VGA window, option and BIOS ROMs), RAM from
1 MiB up to the 32-bit PCI hole (``LoadTarget.ram_size``) and RAM again from 4 GiB
(``LoadTarget.high_ram_size``). :func:`pc_memory_map` builds that list once for every loader.

The rest are the placement checks every loader makes: :func:`check_in_ram` (an image part lies
wholly in RAM, else :class:`~hvcore.ImageError` naming the part and the fix) and
:func:`choose_boot_areas` (where the machine may build the GDT and page tables of a
``"protected"`` / ``"long"`` :class:`~hvcore.vmm.loaders.BootPlan` without overwriting the
image: the defaults ``0x500`` / ``0x9000`` when they are free, else the first free pages of
conventional memory).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from hvcore.errors import ImageError
from hvcore.vmm.loaders import LoadTarget

__all__ = [
    "DEFAULT_GDT",
    "DEFAULT_PAGE_TABLES",
    "E820_RAM",
    "E820_RESERVED",
    "FOUR_GIB",
    "GDT_SIZE",
    "HIGH_MEMORY",
    "IDENTITY_MAPPED",
    "LOW_MEMORY_END",
    "PAGE_SIZE",
    "PAGE_TABLES_SIZE",
    "BootAreas",
    "MemoryRegion",
    "align_down",
    "align_up",
    "check_in_ram",
    "choose_boot_areas",
    "describe_ram",
    "find_free",
    "overlaps",
    "pc_memory_map",
]

E820_RAM: Final = 1
"""E820 / multiboot memory type: usable RAM."""
E820_RESERVED: Final = 2
"""E820 / multiboot memory type: reserved (firmware, holes)."""

PAGE_SIZE: Final = 0x1000
"""The x86 page size."""
LOW_MEMORY_END: Final = 0x9FC00
"""End of conventional memory: the extended BIOS data area (EBDA) starts here on a PC."""
HIGH_MEMORY: Final = 0x100000
"""1 MiB: where extended memory starts, and where kernels load."""
FOUR_GIB: Final = 1 << 32
"""4 GiB: the end of 32-bit physical memory, where the firmware ROM ends."""
IDENTITY_MAPPED: Final = 1 << 30
"""The first GiB: what ``hvcore.x86``'s long-mode page tables identity-map."""

DEFAULT_GDT: Final = 0x500
"""Where the machine builds the flat GDT unless a loader says otherwise (after the BIOS data area)."""
GDT_SIZE: Final = 0x100
"""Bytes kept free for the GDT (``hvcore.x86`` writes six descriptors; room for 32)."""
DEFAULT_PAGE_TABLES: Final = 0x9000
"""Where the machine builds the identity page tables unless a loader says otherwise."""
PAGE_TABLES_SIZE: Final = 3 * PAGE_SIZE
"""PML4, PDPT and one page directory of 2 MiB pages (``hvcore.x86.write_identity_page_tables``)."""


def align_up(value: int, alignment: int) -> int:
    """``value`` rounded up to a multiple of ``alignment`` (a power of two)."""
    return (value + alignment - 1) & ~(alignment - 1)


def align_down(value: int, alignment: int) -> int:
    """``value`` rounded down to a multiple of ``alignment`` (a power of two)."""
    return value & ~(alignment - 1)


@dataclass(frozen=True)
class MemoryRegion:
    """One entry of the PC memory map: ``[base, base + length)`` of ``type`` (``E820_RAM``, ...)."""

    base: int
    length: int
    type: int

    @property
    def end(self) -> int:
        """One past the last byte."""
        return self.base + self.length


def pc_memory_map(ram_size: int, high_ram_size: int = 0) -> list[MemoryRegion]:
    """The PC memory map of a machine with ``ram_size`` bytes from 0 and ``high_ram_size`` from 4 GiB.

    Usable ``[0, 0x9FC00)``, reserved ``[0x9FC00, 1 MiB)`` (EBDA, VGA, option ROMs and the
    BIOS at ``0xF0000``), usable ``[1 MiB, ram_size)`` and usable ``[4 GiB, 4 GiB +
    high_ram_size)``; parts a small machine does not have are left out.
    """
    regions: list[MemoryRegion] = []
    if ram_size > 0:
        regions.append(MemoryRegion(0, min(ram_size, LOW_MEMORY_END), E820_RAM))
    regions.append(MemoryRegion(LOW_MEMORY_END, HIGH_MEMORY - LOW_MEMORY_END, E820_RESERVED))
    if ram_size > HIGH_MEMORY:
        regions.append(MemoryRegion(HIGH_MEMORY, ram_size - HIGH_MEMORY, E820_RAM))
    if high_ram_size > 0:
        regions.append(MemoryRegion(FOUR_GIB, high_ram_size, E820_RAM))
    return regions


def describe_ram(target: LoadTarget) -> str:
    """The machine's RAM as a phrase for error messages, e.g. ``"RAM 0..0x4000000"``."""
    text = f"RAM 0..{target.ram_size:#x}"
    if target.high_ram_size:
        text += f" and {FOUR_GIB:#x}..{FOUR_GIB + target.high_ram_size:#x}"
    return text


def check_in_ram(target: LoadTarget, address: int, length: int, what: str, fix: str) -> None:
    """Raise ``ImageError`` unless ``[address, address + length)`` lies wholly in one RAM range.

    ``what`` names the part (``"ELF segment 1"``) and ``fix`` says what would make it fit.
    """
    end = address + length
    low = address >= 0 and end <= target.ram_size
    high = target.high_ram_size > 0 and address >= FOUR_GIB and end <= FOUR_GIB + target.high_ram_size
    if not (low or high):
        raise ImageError(
            f"{what} at {address:#x}..{end:#x} ({length} bytes) is outside the machine's {describe_ram(target)}: {fix}"
        )


def overlaps(start: int, length: int, ranges: Iterable[tuple[int, int]]) -> tuple[int, int] | None:
    """The first ``(start, length)`` of ``ranges`` that ``[start, start + length)`` overlaps, or None."""
    end = start + length
    for other_start, other_length in ranges:
        if other_length > 0 and length > 0 and start < other_start + other_length and other_start < end:
            return other_start, other_length
    return None


def find_free(
    occupied: Sequence[tuple[int, int]],
    size: int,
    *,
    preferred: int | None = None,
    start: int = PAGE_SIZE,
    end: int = LOW_MEMORY_END,
    alignment: int = PAGE_SIZE,
) -> int | None:
    """An address for ``size`` bytes in ``[start, end)`` overlapping none of ``occupied``.

    ``preferred`` is taken when it is free (and inside ``[0, end)``); otherwise the lowest
    ``alignment``-aligned free address from ``start``. None when nothing fits.
    """
    if preferred is not None and preferred + size <= end and overlaps(preferred, size, occupied) is None:
        return preferred
    address = align_up(start, alignment)
    while address + size <= end:
        hit = overlaps(address, size, occupied)
        if hit is None:
            return address
        address = align_up(max(address + alignment, hit[0] + hit[1]), alignment)
    return None


@dataclass(frozen=True)
class BootAreas:
    """Where the machine may build the GDT and the identity page tables for a plan."""

    gdt: int
    page_tables: int


def choose_boot_areas(target: LoadTarget, occupied: Sequence[tuple[int, int]], *, page_tables: bool) -> BootAreas:
    """GDT (and, for long mode, page-table) addresses in conventional memory that ``occupied`` leaves free.

    ``occupied`` lists the ``(address, length)`` ranges the loader filled. The defaults
    (``0x500``, ``0x9000``) are used when free. ``ImageError`` when the image leaves no room
    below ``0x9FC00`` (or below the end of a smaller RAM).
    """
    end = min(LOW_MEMORY_END, target.ram_size)
    gdt = find_free(occupied, GDT_SIZE, preferred=DEFAULT_GDT, end=end, alignment=16)
    if gdt is None:
        raise ImageError(
            f"the image fills conventional memory (below {end:#x}): no room is left for the "
            f"{GDT_SIZE}-byte GDT the machine builds; load the image at 1 MiB or above"
        )
    if not page_tables:
        return BootAreas(gdt=gdt, page_tables=DEFAULT_PAGE_TABLES)
    taken = [*occupied, (gdt, GDT_SIZE)]
    tables = find_free(taken, PAGE_TABLES_SIZE, preferred=DEFAULT_PAGE_TABLES, end=end)
    if tables is None:
        raise ImageError(
            f"the image fills conventional memory (below {end:#x}): no room is left for the "
            f"{PAGE_TABLES_SIZE // PAGE_SIZE} pages of identity page tables long mode needs; "
            "load the image at 1 MiB or above"
        )
    return BootAreas(gdt=gdt, page_tables=tables)
