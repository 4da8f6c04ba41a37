"""Multiboot (version 1) kernels: the GNU multiboot specification 0.6.96, as GRUB and QEMU load them.

A multiboot kernel carries a header (magic ``0x1BADB002``, flags, checksum) 4-byte aligned in
its first 8192 bytes. With flag bit 16 (the "a.out kludge") the header's address fields say
where the file's bytes go (``load_addr`` .. ``load_end_addr``, bss up to ``bss_end_addr``)
and where to enter; without it the file must be ELF and loads by its ``PT_LOAD`` segments
(:mod:`hvcore.vmm.loaders.elf`). The kernel starts in 32-bit protected mode, paging off, with
``eax = 0x2BADB002`` and ``ebx`` = the multiboot information structure.

Memory: the kernel where it asks; modules after its end (bss included), each page aligned,
in the order given; the information structure (with the memory map, module list, command
lines and the boot loader name ``"hvcore"``) in conventional memory at ``0x10000`` (or the
first free page below ``0x9FC00`` if the kernel sits there); the GDT at ``0x500`` (or a
free page). Information flags set: ``mem_lower``/``mem_upper`` (bit 0), ``cmdline`` (2),
``mods`` (3), ``mmap`` (6: :func:`~hvcore.vmm.loaders.e820.pc_memory_map`) and
``boot_loader_name`` (9). Given the kernel's file ``name``, the command line starts with it
(``name cmdline``), as GRUB and QEMU pass it: kernels such as kvm-unit-tests' take that first
word as their program name (``argv[0]``).

Checked: a header is present, its checksum is right and the file holds all of its fields;
no required flag (bits 0-15) beyond page-aligned modules (0), memory information (1) and
video mode information (2) — bit 2 is accepted but, like QEMU, hvcore has no display to
describe, so no video information is passed; the a.out fields are consistent (``load_addr
<= header_addr``, load end after load start and inside the file, bss end after load end,
entry inside the loaded range) or, without them, the ELF checks; kernel, modules and
information structure fit RAM below 4 GiB; command lines hold no NUL.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from hvcore.errors import ImageError
from hvcore.vmm.loaders import BootPlan, LoadTarget
from hvcore.vmm.loaders.e820 import (
    FOUR_GIB,
    GDT_SIZE,
    HIGH_MEMORY,
    LOW_MEMORY_END,
    PAGE_SIZE,
    align_up,
    check_in_ram,
    choose_boot_areas,
    find_free,
    pc_memory_map,
)
from hvcore.vmm.loaders.elf import check_segments, looks_like_elf, parse_elf, write_segments

__all__ = [
    "BOOTLOADER_MAGIC",
    "HEADER_MAGIC",
    "INFO_ADDRESS",
    "MultibootHeader",
    "find_multiboot_header",
    "load_multiboot",
    "looks_like_multiboot",
]

HEADER_MAGIC: Final = 0x1BADB002
"""The magic that starts a multiboot header."""
BOOTLOADER_MAGIC: Final = 0x2BADB002
"""What ``eax`` holds when a multiboot kernel starts."""
SEARCH_LIMIT: Final = 8192
"""The header must lie (4-byte aligned) in this many first bytes of the file."""
INFO_ADDRESS: Final = 0x10000
"""Where the information structure goes when the kernel leaves it free."""

FLAG_PAGE_ALIGN: Final = 1 << 0
FLAG_MEMORY_INFO: Final = 1 << 1
FLAG_VIDEO_MODE: Final = 1 << 2
FLAG_AOUT_KLUDGE: Final = 1 << 16
_KNOWN_REQUIRED: Final = FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO | FLAG_VIDEO_MODE

INFO_MEMORY: Final = 1 << 0
INFO_CMDLINE: Final = 1 << 2
INFO_MODS: Final = 1 << 3
INFO_MEM_MAP: Final = 1 << 6
INFO_BOOT_LOADER_NAME: Final = 1 << 9

_INFO_SIZE: Final = 0x80
"""The 116-byte ``multiboot_info`` structure, rounded up so the memory map after it is 8-aligned."""
_LOADER_NAME: Final = b"hvcore\0"


@dataclass(frozen=True)
class MultibootHeader:
    """A multiboot header found at file ``offset``; the address fields are 0 without flag bit 16."""

    offset: int
    flags: int
    header_addr: int = 0
    load_addr: int = 0
    load_end_addr: int = 0
    bss_end_addr: int = 0
    entry_addr: int = 0


def _candidates(image: bytes) -> list[int]:
    limit = min(len(image), SEARCH_LIMIT) - 12
    magic = HEADER_MAGIC.to_bytes(4, "little")
    return [o for o in range(0, limit + 1, 4) if image[o : o + 4] == magic]


def _checksum_ok(image: bytes, offset: int) -> bool:
    magic, flags, checksum = struct.unpack_from("<3I", image, offset)
    return bool((magic + flags + checksum) & 0xFFFFFFFF == 0)


def looks_like_multiboot(image: bytes) -> bool:
    """True when the first 8 KiB hold a 4-aligned multiboot header with a valid checksum."""
    return any(_checksum_ok(image, o) for o in _candidates(image))


def find_multiboot_header(image: bytes) -> MultibootHeader:
    """The first valid multiboot header in ``image``; ``ImageError`` if there is none, its checksum is
    wrong or the file ends inside its fields."""
    candidates = _candidates(image)
    if not candidates:
        raise ImageError(
            f"no multiboot header (magic {HEADER_MAGIC:#x}, 4-byte aligned) in the first {SEARCH_LIMIT} bytes: "
            "not a multiboot kernel"
        )
    valid = [o for o in candidates if _checksum_ok(image, o)]
    if not valid:
        offset = candidates[0]
        magic, flags, checksum = struct.unpack_from("<3I", image, offset)
        raise ImageError(
            f"multiboot header at {offset:#x}: bad checksum {checksum:#010x} (magic + flags + checksum must be 0 "
            f"mod 2**32; expected {(-(magic + flags)) & 0xFFFFFFFF:#010x})"
        )
    offset = valid[0]
    flags = struct.unpack_from("<I", image, offset + 4)[0]
    if not flags & FLAG_AOUT_KLUDGE:
        return MultibootHeader(offset, flags)
    if offset + 32 > len(image):
        raise ImageError(
            f"multiboot header at {offset:#x}: truncated: flag 16 (a.out kludge) needs the address fields "
            f"up to {offset + 32:#x}, the file has {len(image)} bytes"
        )
    fields = struct.unpack_from("<5I", image, offset + 12)
    return MultibootHeader(offset, flags, *fields)


def _encode(text: str, what: str) -> bytes:
    data = text.encode()
    if b"\0" in data:
        raise ImageError(f"multiboot {what} contains a NUL byte: command lines are C strings")
    return data + b"\0"


@dataclass(frozen=True)
class _Kernel:
    start: int
    end: int
    entry: int
    ranges: list[tuple[int, int]]
    description: str


def _aout_kernel(image: bytes, header: MultibootHeader, target: LoadTarget) -> tuple[_Kernel, bytes]:
    h = header
    where = f"multiboot header at {h.offset:#x}"
    if h.load_addr > h.header_addr:
        raise ImageError(f"{where}: load_addr {h.load_addr:#x} is above header_addr {h.header_addr:#x}: malformed")
    file_offset = h.offset - (h.header_addr - h.load_addr)
    if file_offset < 0:
        raise ImageError(
            f"{where}: header_addr - load_addr ({h.header_addr - h.load_addr:#x}) puts the load start before "
            "the file's first byte: malformed address fields"
        )
    if h.load_end_addr == 0:
        size = len(image) - file_offset
    elif h.load_end_addr <= h.load_addr:
        raise ImageError(f"{where}: load_end_addr {h.load_end_addr:#x} is not above load_addr {h.load_addr:#x}")
    else:
        size = h.load_end_addr - h.load_addr
        if file_offset + size > len(image):
            raise ImageError(
                f"{where}: truncated: load_addr..load_end_addr asks for {size} bytes from file offset "
                f"{file_offset:#x}, the file has {len(image) - file_offset}"
            )
    load_end = h.load_addr + size
    if h.bss_end_addr and h.bss_end_addr < load_end:
        raise ImageError(f"{where}: bss_end_addr {h.bss_end_addr:#x} is below the load end {load_end:#x}")
    end = max(load_end, h.bss_end_addr)
    if not h.load_addr <= h.entry_addr < end:
        raise ImageError(
            f"{where}: entry_addr {h.entry_addr:#x} is outside the loaded kernel {h.load_addr:#x}..{end:#x}"
        )
    check_in_ram(target, h.load_addr, end - h.load_addr, "multiboot kernel", "give the machine more RAM")
    data = image[file_offset : file_offset + size] + bytes(end - load_end)
    kernel = _Kernel(
        h.load_addr, end, h.entry_addr, [(h.load_addr, end - h.load_addr)], f"a.out kludge {h.load_addr:#x}..{end:#x}"
    )
    return kernel, data


def load_multiboot(
    image: bytes,
    target: LoadTarget,
    *,
    cmdline: str = "",
    modules: Sequence[tuple[bytes, str]] = (),
    name: str = "",
) -> BootPlan:
    """Load a multiboot v1 kernel with its ``modules`` (``(bytes, command line)`` pairs) and ``cmdline``.

    A ``name`` (the kernel's file) goes first on the command line the kernel gets.

    Returns a ``"protected"`` plan with ``eax = 0x2BADB002`` and ``ebx`` = the information
    structure's address. ``ImageError`` for anything the module docstring lists as checked.
    """
    header = find_multiboot_header(image)
    unknown = header.flags & 0xFFFF & ~_KNOWN_REQUIRED
    if unknown:
        bits = ", ".join(str(b) for b in range(16) if unknown >> b & 1)
        raise ImageError(
            f"multiboot header at {header.offset:#x} requires features hvcore does not know (flag bits {bits} "
            f"of {header.flags:#x}); the spec says a loader must refuse such a kernel: clear those bits"
        )
    aout_data = b""
    if header.flags & FLAG_AOUT_KLUDGE:
        kernel, aout_data = _aout_kernel(image, header, target)
        elf = None
    else:
        if not looks_like_elf(image):
            raise ImageError(
                f"multiboot header at {header.offset:#x} has no a.out kludge (flag 16) address fields and the file "
                "is not ELF: set flag 16 and the address fields, or link the kernel as ELF"
            )
        elf = parse_elf(image, "multiboot ELF kernel")
        check_segments(elf, target, "multiboot ELF kernel")
        entry = elf.physical_entry()
        if entry is None:
            raise ImageError(f"multiboot ELF kernel: entry point {elf.entry:#x} lies in no PT_LOAD segment")
        start, end = min(s.paddr for s in elf.segments), max(s.end for s in elf.segments)
        kernel = _Kernel(start, end, entry, elf.ranges, f"ELF{elf.bits} {start:#x}..{end:#x}")
    if kernel.end > FOUR_GIB or kernel.entry >= FOUR_GIB:
        raise ImageError(
            f"multiboot kernel at {kernel.start:#x}..{kernel.end:#x}: a 32-bit kernel must lie below 4 GiB"
        )

    placed: list[tuple[int, bytes]] = []
    next_module = align_up(kernel.end, PAGE_SIZE)
    for index, (data, _line) in enumerate(modules):
        check_in_ram(
            target,
            next_module,
            len(data),
            f"multiboot module {index}",
            "use smaller modules or give the machine more RAM",
        )
        if next_module + len(data) > FOUR_GIB:
            raise ImageError(f"multiboot module {index} at {next_module:#x} would end above 4 GiB")
        placed.append((next_module, bytes(data)))
        next_module = align_up(next_module + len(data), PAGE_SIZE)

    occupied = [*kernel.ranges, *((a, len(d)) for a, d in placed)]
    areas = choose_boot_areas(target, occupied, page_tables=False)
    line = " ".join(part for part in (name, cmdline) if part)
    strings = [_LOADER_NAME, _encode(line, "command line")]
    strings += [_encode(line, f"module {i} command line") for i, (_, line) in enumerate(modules)]
    memory_map = pc_memory_map(target.ram_size, target.high_ram_size)
    size = _INFO_SIZE + 24 * len(memory_map) + 16 * len(placed) + sum(len(s) for s in strings)
    info_at = find_free(
        [*occupied, (areas.gdt, GDT_SIZE)],
        size,
        preferred=INFO_ADDRESS,
        end=min(LOW_MEMORY_END, target.ram_size),
        alignment=16,
    )
    if info_at is None:
        raise ImageError(
            f"no room below {LOW_MEMORY_END:#x} for the {size}-byte multiboot information "
            "(kernel and modules fill it, or the command lines are too long)"
        )

    # Layout from info_at: struct, memory map, module list, strings.
    mmap_at = info_at + _INFO_SIZE
    mods_at = mmap_at + 24 * len(memory_map)
    string_at: list[int] = []
    cursor = mods_at + 16 * len(placed)
    for s in strings:
        string_at.append(cursor)
        cursor += len(s)
    mmap = b"".join(struct.pack("<IQQI", 20, r.base, r.length, r.type) for r in memory_map)
    mods = b"".join(
        struct.pack("<4I", address, address + len(data), string_at[2 + i], 0)
        for i, (address, data) in enumerate(placed)
    )
    mem_lower = min(target.ram_size, LOW_MEMORY_END) // 1024
    mem_upper = max(0, min(target.ram_size, FOUR_GIB) - HIGH_MEMORY) // 1024
    flags = INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MEM_MAP | INFO_BOOT_LOADER_NAME
    info = bytearray(_INFO_SIZE)
    struct.pack_into("<5I", info, 0, flags, mem_lower, mem_upper, 0, string_at[1])
    struct.pack_into("<2I", info, 20, len(placed), mods_at)
    struct.pack_into("<2I", info, 44, len(mmap), mmap_at)
    struct.pack_into("<I", info, 64, string_at[0])
    blob = bytes(info) + mmap + mods + b"".join(strings)

    if elf is not None:
        write_segments(elf, target)
    else:
        target.write(kernel.start, aout_data)
    for address, data in placed:
        target.write(address, data)
    target.write(info_at, blob)
    return BootPlan(
        mode="protected",
        entry=kernel.entry,
        regs={"eax": BOOTLOADER_MAGIC, "ebx": info_at},
        gdt=areas.gdt,
        description=(
            f"multiboot kernel ({kernel.description}), entry {kernel.entry:#x}, {len(placed)} modules, "
            f"info at {info_at:#x}"
        ),
        bios_state=True,
    )
