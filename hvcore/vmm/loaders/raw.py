"""Raw images: a flat binary copied byte for byte into RAM and entered at its first byte.

A raw image has no header, so nothing in it can be checked; the loader checks the placement
instead: the image is not empty, lies wholly in RAM, its entry point lies inside it and is
reachable in the chosen mode (below 1 MiB in real mode, below 4 GiB in protected mode, in the
identity-mapped first GiB in long mode), and for protected and long mode the GDT and page
tables the machine builds go where the image is not.
"""

from __future__ import annotations

from typing import Final

from hvcore.errors import ImageError
from hvcore.vmm.loaders import BootMode, BootPlan, LoadTarget
from hvcore.vmm.loaders.e820 import (
    DEFAULT_GDT,
    DEFAULT_PAGE_TABLES,
    FOUR_GIB,
    HIGH_MEMORY,
    IDENTITY_MAPPED,
    check_in_ram,
    choose_boot_areas,
)

__all__ = ["DEFAULT_RAW_ADDRESS", "load_raw", "looks_like_raw"]

DEFAULT_RAW_ADDRESS: Final = 0x1000
"""Where :func:`load_raw` puts an image by default: the first page after the real-mode IVT and BIOS data."""

_ENTRY_LIMITS: Final[dict[str, tuple[int, str]]] = {
    "real": (HIGH_MEMORY, "real mode reaches only the first MiB"),
    "protected": (FOUR_GIB, "32-bit protected mode reaches only the first 4 GiB"),
    "long": (IDENTITY_MAPPED, "long mode starts with only the first GiB identity-mapped"),
}


def looks_like_raw(image: bytes) -> bool:
    """True for any non-empty image: every byte string is a flat binary (``detect``'s fallback)."""
    return len(image) > 0


def load_raw(
    image: bytes,
    target: LoadTarget,
    *,
    address: int = DEFAULT_RAW_ADDRESS,
    mode: BootMode = "real",
    entry: int | None = None,
) -> BootPlan:
    """Copy ``image`` to guest-physical ``address`` and start the boot vCPU at ``entry`` (default: ``address``).

    ``mode`` is ``"real"``, ``"protected"`` or ``"long"``. ``ImageError`` when the image is
    empty, does not fit RAM, the entry is outside the image or out of the mode's reach, or the
    image leaves no room for the mode's GDT / page tables.
    """
    if mode not in _ENTRY_LIMITS:
        raise ImageError(
            f"raw image: boot mode {mode!r} is not one of 'real', 'protected', 'long' "
            "(a reset-vector image is firmware: use load_firmware)"
        )
    if not image:
        raise ImageError("raw image is empty: give the bytes of a flat binary")
    if address < 0:
        raise ImageError(f"raw image: load address {address:#x} is negative")
    check_in_ram(target, address, len(image), "raw image", "load it lower or give the machine more RAM")
    start = address if entry is None else entry
    if not address <= start < address + len(image):
        raise ImageError(
            f"raw image: entry point {start:#x} is outside the image at {address:#x}..{address + len(image):#x}: "
            "pass an entry inside it"
        )
    limit, why = _ENTRY_LIMITS[mode]
    if start >= limit:
        raise ImageError(f"raw image: entry point {start:#x} is out of reach ({why}): load it below {limit:#x}")
    gdt, tables = DEFAULT_GDT, DEFAULT_PAGE_TABLES
    if mode != "real":
        areas = choose_boot_areas(target, [(address, len(image))], page_tables=mode == "long")
        gdt, tables = areas.gdt, areas.page_tables
    target.write(address, bytes(image))
    return BootPlan(
        mode=mode,
        entry=start,
        gdt=gdt,
        page_tables=tables,
        description=f"raw image, {len(image)} bytes at {address:#x}, {mode} mode, entry {start:#x}",
    )
