"""Linux bzImage kernels, started through the 64-bit boot protocol (Documentation/arch/x86/boot.rst).

A bzImage is the real-mode setup (``setup_sects + 1`` sectors of 512 bytes, ``setup_sects``
0 meaning 4) whose setup header at ``0x1F1`` starts with the magic ``"HdrS"`` at ``0x202``,
followed by the protected-mode kernel. The 64-bit protocol skips the setup code: the loader
copies the setup header into a zeroed ``struct boot_params`` (the "zero page"), fills in what
the loader owns, loads the protected-mode kernel and enters it in long mode at its load
address ``+ 0x200`` (``startup_64``) with ``rsi`` = the zero page.

Memory (all identity-mapped by the plan's page tables, which cover the first GiB):

======================  ==========================================================
``0x500``               GDT (the plan's ``gdt``)
``0x7000``              zero page (``struct boot_params``, 4 KiB)
``0x9000``-``0xC000``   identity page tables (the plan's ``page_tables``)
``0x20000``             command line, NUL-terminated
``0x100000``            protected-mode kernel (``code32_start``); a relocatable kernel
                        moves itself to ``max(align_up(0x100000, kernel_alignment),
                        pref_address)``, a fixed one to ``pref_address``, and needs
                        ``init_size`` bytes there
top of low RAM          initrd, page aligned, below ``initrd_addr_max``
======================  ==========================================================

Zero-page fields written: the setup header (``0x1F1`` up to ``0x202 + byte[0x201]``) copied
from the image, then ``type_of_loader = 0xFF`` (undefined loader), ``code32_start``,
``cmd_line_ptr``, ``ramdisk_image`` / ``ramdisk_size``, and the E820 map
(``e820_entries`` at ``0x1E8``, ``e820_table`` at ``0x2D0``) from
:func:`~hvcore.vmm.loaders.e820.pc_memory_map`. ``CAN_USE_HEAP`` and ``heap_end_ptr`` are
left alone: the heap is the real-mode setup code's, which the 64-bit protocol never runs.

Checked: the image holds the setup sectors and the header; ``"HdrS"``; protocol version
>= 2.06 (``0x206``: 64-bit entry, ``cmdline_size``); ``XLF_KERNEL_64`` in ``xloadflags`` for
versions >= 2.12 (older headers cannot say; they are trusted); ``LOADED_HIGH`` (a zImage
loads at ``0x10000`` and has no 64-bit entry); the kernel is not empty nor shorter than
``syssize`` says; the kernel and its ``init_size`` run area fit RAM and the identity-mapped
first GiB; the command line fits ``cmdline_size`` and holds no NUL; the initrd fits between
the kernel's end and ``min(ram_size, initrd_addr_max + 1)``.
"""

from __future__ import annotations

import struct
from typing import Final

from hvcore.errors import ImageError
from hvcore.vmm.loaders import BootPlan, LoadTarget
from hvcore.vmm.loaders.e820 import (
    DEFAULT_GDT,
    DEFAULT_PAGE_TABLES,
    HIGH_MEMORY,
    IDENTITY_MAPPED,
    LOW_MEMORY_END,
    PAGE_SIZE,
    align_down,
    align_up,
    describe_ram,
    pc_memory_map,
)

__all__ = [
    "CMDLINE_ADDRESS",
    "KERNEL_ADDRESS",
    "MIN_PROTOCOL",
    "ZERO_PAGE_ADDRESS",
    "load_bzimage",
    "looks_like_bzimage",
]

ZERO_PAGE_ADDRESS: Final = 0x7000
"""Where ``struct boot_params`` goes (``rsi`` at entry)."""
CMDLINE_ADDRESS: Final = 0x20000
"""Where the command line goes (``cmd_line_ptr``)."""
KERNEL_ADDRESS: Final = HIGH_MEMORY
"""Where the protected-mode kernel goes (``code32_start``), as every PC loader does."""
MIN_PROTOCOL: Final = 0x206
"""Oldest boot protocol accepted: 2.06 has the 64-bit entry point and ``cmdline_size``."""

HDRS: Final = b"HdrS"
LOADED_HIGH: Final = 1 << 0
XLF_KERNEL_64: Final = 1 << 0
TYPE_OF_LOADER_UNDEFINED: Final = 0xFF
E820_MAX_ENTRIES: Final = 128
ZERO_PAGE_SIZE: Final = 0x1000
STARTUP_64_OFFSET: Final = 0x200

# struct boot_params / struct setup_header offsets (arch/x86/include/uapi/asm/bootparam.h).
_ACPI_RSDP_ADDR: Final = 0x070
_EXT_RAMDISK_IMAGE: Final = 0x0C0
_EXT_RAMDISK_SIZE: Final = 0x0C4
_EXT_CMD_LINE_PTR: Final = 0x0C8
_E820_ENTRIES: Final = 0x1E8
_SETUP_SECTS: Final = 0x1F1
_SYSSIZE: Final = 0x1F4
_JUMP: Final = 0x200
_HEADER: Final = 0x202
_VERSION: Final = 0x206
_KERNEL_VERSION: Final = 0x20E
_TYPE_OF_LOADER: Final = 0x210
_LOADFLAGS: Final = 0x211
_CODE32_START: Final = 0x214
_RAMDISK_IMAGE: Final = 0x218
_RAMDISK_SIZE: Final = 0x21C
_CMD_LINE_PTR: Final = 0x228
_INITRD_ADDR_MAX: Final = 0x22C
_KERNEL_ALIGNMENT: Final = 0x230
_RELOCATABLE_KERNEL: Final = 0x234
_XLOADFLAGS: Final = 0x236
_CMDLINE_SIZE: Final = 0x238
_PREF_ADDRESS: Final = 0x258
_INIT_SIZE: Final = 0x260
_E820_TABLE: Final = 0x2D0


def looks_like_bzimage(image: bytes) -> bool:
    """True when ``image`` has the setup header magic ``"HdrS"`` at ``0x202``."""
    return image[_HEADER : _HEADER + 4] == HDRS


def _u8(data: bytes, offset: int) -> int:
    return data[offset]


def _u16(data: bytes, offset: int) -> int:
    return int(struct.unpack_from("<H", data, offset)[0])


def _u32(data: bytes, offset: int) -> int:
    return int(struct.unpack_from("<I", data, offset)[0])


def _u64(data: bytes, offset: int) -> int:
    return int(struct.unpack_from("<Q", data, offset)[0])


def _kernel_version(image: bytes, setup_size: int) -> str:
    pointer = _u16(image, _KERNEL_VERSION)
    if not pointer or pointer + 0x200 >= setup_size:
        return ""
    raw = image[pointer + 0x200 : min(pointer + 0x200 + 128, setup_size)].split(b"\0", 1)[0]
    return raw.decode("ascii", "replace").split(" ", 1)[0]


def load_bzimage(
    image: bytes, target: LoadTarget, *, cmdline: str = "", initrd: bytes | None = None, acpi_rsdp: int = 0
) -> BootPlan:
    """Load a Linux bzImage for the 64-bit boot protocol with ``cmdline`` and an optional ``initrd``.

    ``acpi_rsdp``, when not 0, is where the machine put its ACPI tables' RSDP (``boot_params.acpi_rsdp_addr``).
    Returns a ``"long"`` plan entering at ``0x100000 + 0x200`` with ``rsi`` = the zero page.
    ``ImageError`` for anything the module docstring lists as checked.
    """
    if not looks_like_bzimage(image):
        raise ImageError(
            f"bzImage: no setup header: expected 'HdrS' at {_HEADER:#x}, found {image[_HEADER : _HEADER + 4]!r}; "
            "not a Linux bzImage (use arch/x86/boot/bzImage, not vmlinux)"
        )
    if len(image) < _VERSION + 2:
        raise ImageError(f"bzImage: truncated: {len(image)} bytes end inside the setup header")
    version = _u16(image, _VERSION)
    if version < MIN_PROTOCOL:
        raise ImageError(
            f"bzImage: boot protocol {version >> 8}.{version & 0xFF:02d} is too old: the 64-bit entry needs "
            f"{MIN_PROTOCOL >> 8}.{MIN_PROTOCOL & 0xFF:02d} or later (Linux 2.6.22+)"
        )
    setup_sects = _u8(image, _SETUP_SECTS) or 4
    setup_size = (setup_sects + 1) * 512
    header_end = _HEADER + _u8(image, _JUMP + 1)
    if header_end > setup_size or len(image) < max(header_end, setup_size):
        raise ImageError(
            f"bzImage: truncated: the {setup_sects} setup sectors and header need {max(header_end, setup_size)} "
            f"bytes, the file has {len(image)}"
        )
    header = bytes(image[:header_end]) + bytes(max(0, 0x270 - header_end))  # absent fields read as 0

    def field(offset: int, size: int, since: int) -> int | None:
        """A header field, or None when the image's protocol or header length predates it."""
        if version < since or offset + size > header_end:
            return None
        return {1: _u8, 2: _u16, 4: _u32, 8: _u64}[size](header, offset)

    xloadflags = field(_XLOADFLAGS, 2, 0x20C)
    if xloadflags is not None and not xloadflags & XLF_KERNEL_64:
        raise ImageError(
            f"bzImage: no 64-bit support: xloadflags {xloadflags:#x} lacks XLF_KERNEL_64 (bit 0); "
            "this is a 32-bit kernel: build it with CONFIG_X86_64"
        )
    if not _u8(header, _LOADFLAGS) & LOADED_HIGH:
        raise ImageError("bzImage: loadflags lacks LOADED_HIGH: this is a zImage (loads at 0x10000); build a bzImage")

    kernel = bytes(image[setup_size:])
    if not kernel:
        raise ImageError(f"bzImage: truncated: no protected-mode kernel after the {setup_size}-byte setup")
    syssize = _u32(header, _SYSSIZE) * 16
    if syssize and len(kernel) + 15 < syssize:
        raise ImageError(
            f"bzImage: truncated: syssize says the kernel has {syssize} bytes, the file holds {len(kernel)}"
        )
    alignment = field(_KERNEL_ALIGNMENT, 4, 0x205) or 0x200000
    if alignment & (alignment - 1):
        raise ImageError(f"bzImage: kernel_alignment {alignment:#x} is not a power of two: malformed header")
    relocatable = bool(field(_RELOCATABLE_KERNEL, 1, 0x205))
    pref_address = field(_PREF_ADDRESS, 8, 0x20A) or KERNEL_ADDRESS
    run_at = max(align_up(KERNEL_ADDRESS, alignment), pref_address) if relocatable else pref_address
    init_size = field(_INIT_SIZE, 4, 0x20A) or len(kernel)
    limit = min(target.ram_size, IDENTITY_MAPPED)
    for what, start, size in (("kernel", KERNEL_ADDRESS, len(kernel)), ("kernel's run area", run_at, init_size)):
        if start + size > limit:
            raise ImageError(
                f"bzImage: the {what} at {start:#x}..{start + size:#x} ({size} bytes) does not fit the "
                f"machine's RAM below {limit:#x} ({describe_ram(target)}, identity-mapped up to "
                f"{IDENTITY_MAPPED:#x}): give the machine more RAM"
            )
    kernel_end = max(KERNEL_ADDRESS + len(kernel), run_at + init_size)

    line = cmdline.encode()
    cmdline_size = field(_CMDLINE_SIZE, 4, 0x206)
    cmdline_size = 255 if cmdline_size is None else cmdline_size
    if b"\0" in line:
        raise ImageError("bzImage: the command line contains a NUL byte")
    if len(line) > cmdline_size:
        raise ImageError(
            f"bzImage: command line too long: {len(line)} bytes, the kernel takes at most {cmdline_size} "
            "(cmdline_size; COMMAND_LINE_SIZE): shorten it"
        )
    if CMDLINE_ADDRESS + len(line) + 1 > min(LOW_MEMORY_END, target.ram_size):
        raise ImageError(
            f"bzImage: command line too long: {len(line)} bytes from {CMDLINE_ADDRESS:#x} run past conventional "
            f"memory ({min(LOW_MEMORY_END, target.ram_size):#x}): shorten it"
        )

    zero_page = bytearray(ZERO_PAGE_SIZE)
    zero_page[_SETUP_SECTS:header_end] = image[_SETUP_SECTS:header_end]
    zero_page[_TYPE_OF_LOADER] = TYPE_OF_LOADER_UNDEFINED
    struct.pack_into("<I", zero_page, _CODE32_START, KERNEL_ADDRESS)
    struct.pack_into("<I", zero_page, _CMD_LINE_PTR, CMDLINE_ADDRESS)
    struct.pack_into("<I", zero_page, _EXT_CMD_LINE_PTR, 0)
    struct.pack_into("<Q", zero_page, _ACPI_RSDP_ADDR, acpi_rsdp)

    initrd_note = ""
    if initrd:
        initrd_max = field(_INITRD_ADDR_MAX, 4, 0x203) or 0x37FFFFFF
        top = min(target.ram_size, initrd_max + 1)
        address = align_down(top - len(initrd), PAGE_SIZE)
        if address < align_up(kernel_end, PAGE_SIZE):
            raise ImageError(
                f"bzImage: initrd too big: {len(initrd)} bytes do not fit between the kernel's end "
                f"{kernel_end:#x} and {top:#x} (min of RAM end and initrd_addr_max + 1): "
                "give the machine more RAM or use a smaller initrd"
            )
        struct.pack_into("<II", zero_page, _RAMDISK_IMAGE, address & 0xFFFFFFFF, len(initrd) & 0xFFFFFFFF)
        struct.pack_into("<II", zero_page, _EXT_RAMDISK_IMAGE, address >> 32, len(initrd) >> 32)
        target.write(address, bytes(initrd))
        initrd_note = f", initrd {len(initrd)} bytes at {address:#x}"

    memory_map = pc_memory_map(target.ram_size, target.high_ram_size)[:E820_MAX_ENTRIES]
    zero_page[_E820_ENTRIES] = len(memory_map)
    for index, region in enumerate(memory_map):
        struct.pack_into("<QQI", zero_page, _E820_TABLE + 20 * index, region.base, region.length, region.type)

    target.write(KERNEL_ADDRESS, kernel)
    target.write(CMDLINE_ADDRESS, line + b"\0")
    target.write(ZERO_PAGE_ADDRESS, bytes(zero_page))
    release = _kernel_version(image, setup_size)
    return BootPlan(
        mode="long",
        entry=KERNEL_ADDRESS + STARTUP_64_OFFSET,
        regs={"rsi": ZERO_PAGE_ADDRESS},
        gdt=DEFAULT_GDT,
        page_tables=DEFAULT_PAGE_TABLES,
        description=(
            f"Linux bzImage{' ' + release if release else ''} (boot protocol {version >> 8}.{version & 0xFF:02d}), "
            f"kernel {len(kernel)} bytes at {KERNEL_ADDRESS:#x}, command line {len(line)} bytes{initrd_note}"
        ),
    )
