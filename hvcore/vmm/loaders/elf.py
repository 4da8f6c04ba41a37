"""ELF executables: x86 ELF32 and ELF64 ``ET_EXEC`` files, loaded by their ``PT_LOAD`` segments.

Each ``PT_LOAD`` segment's file bytes go to its *physical* address (``p_paddr``) and the rest
of its memory size (``.bss``) is zeroed. An ELF64 file starts in long mode (the first GiB
identity-mapped), an ELF32 file in 32-bit protected mode, at the entry point (``e_entry``; a
virtual entry inside a segment's ``p_vaddr`` range is translated to the physical address).

Checked: the ELF magic, class (32/64), little-endian data and ident version; ``e_type`` is
``ET_EXEC``; ``e_machine`` is ``EM_386`` (ELF32) or ``EM_X86_64`` (ELF64); the program
headers and every segment's file bytes lie inside the file (truncated files and any parse
failure of pyelftools raise ``ImageError``); at least one non-empty ``PT_LOAD``;
``p_filesz <= p_memsz``; segments lie in RAM and do not overlap each other; the entry point
lies in a loaded segment and is reachable in the start mode; the segments leave room for the
GDT / page tables the machine builds (see :func:`~hvcore.vmm.loaders.e820.choose_boot_areas`).
"""

from __future__ import annotations

import io
import itertools
import struct
from dataclasses import dataclass
from typing import Final

# Recent pyelftools releases ship type hints (py.typed); older ones are untyped.
from elftools.common.exceptions import ELFError  # type: ignore[import-untyped, unused-ignore]
from elftools.construct import ConstructError  # type: ignore[import-untyped, unused-ignore]
from elftools.elf.elffile import ELFFile  # type: ignore[import-untyped, unused-ignore]

from hvcore.errors import ImageError
from hvcore.vmm.loaders import BootMode, BootPlan, LoadTarget
from hvcore.vmm.loaders.e820 import FOUR_GIB, IDENTITY_MAPPED, check_in_ram, choose_boot_areas

__all__ = ["ElfImage", "ElfSegment", "check_segments", "load_elf", "looks_like_elf", "parse_elf", "write_segments"]

ELF_MAGIC: Final = b"\x7fELF"
_MACHINES: Final = {32: ("EM_386", 3), 64: ("EM_X86_64", 62)}


@dataclass(frozen=True)
class ElfSegment:
    """One ``PT_LOAD`` segment: ``data`` (its file bytes) at ``paddr``, zero-filled up to ``memsz``."""

    index: int
    paddr: int
    vaddr: int
    data: bytes
    memsz: int

    @property
    def end(self) -> int:
        """One past the segment's last physical byte (bss included)."""
        return self.paddr + self.memsz


@dataclass(frozen=True)
class ElfImage:
    """A checked ELF executable: class (32 or 64 bits), entry point as written, loadable segments."""

    bits: int
    entry: int
    segments: tuple[ElfSegment, ...]

    def physical_entry(self) -> int | None:
        """``entry`` as a physical address: as is inside a segment's physical range, else translated
        from the segment whose virtual range holds it; None when no segment holds it."""
        for segment in self.segments:
            if segment.paddr <= self.entry < segment.end:
                return self.entry
        for segment in self.segments:
            if segment.vaddr <= self.entry < segment.vaddr + segment.memsz:
                return self.entry - segment.vaddr + segment.paddr
        return None

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """``(paddr, memsz)`` of every segment."""
        return [(s.paddr, s.memsz) for s in self.segments]


def looks_like_elf(image: bytes) -> bool:
    """True when ``image`` starts with the ELF magic ``7f 45 4c 46``."""
    return image[:4] == ELF_MAGIC


def parse_elf(image: bytes, what: str = "ELF") -> ElfImage:
    """Check ``image`` as an x86 ELF executable and return its loadable segments.

    Does not look at the machine: :func:`check_segments` checks the placement. ``what`` starts
    every error message (``"multiboot ELF kernel"``).
    """
    if not looks_like_elf(image):
        raise ImageError(f"{what}: bad magic {image[:4].hex(' ') or '(empty)'}: not an ELF file (expected 7f 45 4c 46)")
    if len(image) < 16:
        raise ImageError(f"{what}: truncated: {len(image)} bytes is shorter than the 16-byte ELF ident")
    elf_class, data, version = image[4], image[5], image[6]
    if elf_class not in (1, 2):
        raise ImageError(f"{what}: bad ELF class {elf_class} (EI_CLASS must be 1 for ELF32 or 2 for ELF64)")
    if data != 1:
        raise ImageError(f"{what}: ELF data encoding {data} is not little-endian (EI_DATA 1): not an x86 file")
    if version != 1:
        raise ImageError(f"{what}: ELF ident version {version} is not 1 (EV_CURRENT)")
    bits = 32 if elf_class == 1 else 64
    header_size = 52 if bits == 32 else 64
    if len(image) < header_size:
        raise ImageError(
            f"{what}: truncated: {len(image)} bytes is shorter than the {header_size}-byte ELF{bits} header"
        )
    try:
        elf = ELFFile(io.BytesIO(image))
        header = elf.header
        e_type, e_machine, entry = str(header["e_type"]), str(header["e_machine"]), int(header["e_entry"])
        phoff, phnum, phentsize = int(header["e_phoff"]), int(elf.num_segments()), int(header["e_phentsize"])
        _check_type_and_machine(what, bits, e_type, e_machine)
        if phnum and phoff + phnum * phentsize > len(image):
            raise ImageError(
                f"{what}: truncated: the {phnum} program headers end at {phoff + phnum * phentsize:#x}, "
                f"past the file's {len(image)} bytes"
            )
        segments: list[ElfSegment] = []
        for index, segment in enumerate(elf.iter_segments()):
            if str(segment["p_type"]) != "PT_LOAD":
                continue
            offset, filesz, memsz = int(segment["p_offset"]), int(segment["p_filesz"]), int(segment["p_memsz"])
            paddr, vaddr = int(segment["p_paddr"]), int(segment["p_vaddr"])
            if filesz > memsz:
                raise ImageError(
                    f"{what}: segment {index} has p_filesz {filesz:#x} > p_memsz {memsz:#x}: the file is malformed"
                )
            if offset + filesz > len(image):
                raise ImageError(
                    f"{what}: truncated: segment {index}'s bytes {offset:#x}..{offset + filesz:#x} "
                    f"run past the file's {len(image)} bytes"
                )
            if memsz:
                segments.append(ElfSegment(index, paddr, vaddr, bytes(image[offset : offset + filesz]), memsz))
    except ImageError:
        raise
    except (ELFError, ConstructError, struct.error, ValueError, EOFError, KeyError) as exc:
        raise ImageError(f"{what}: malformed or truncated ELF file ({type(exc).__name__}: {exc})") from exc
    if not segments:
        raise ImageError(f"{what}: no PT_LOAD segment with memory: nothing to load (link it as an executable)")
    ordered = sorted(segments, key=lambda s: s.paddr)
    for first, second in itertools.pairwise(ordered):
        if second.paddr < first.end:
            raise ImageError(
                f"{what}: segments {first.index} ({first.paddr:#x}..{first.end:#x}) and {second.index} "
                f"({second.paddr:#x}..{second.end:#x}) overlap in physical memory: fix the link addresses"
            )
    return ElfImage(bits=bits, entry=entry, segments=tuple(segments))


def _check_type_and_machine(what: str, bits: int, e_type: str, e_machine: str) -> None:
    if e_type != "ET_EXEC":
        raise ImageError(
            f"{what}: e_type is {e_type}, not ET_EXEC: only statically linked executables load "
            "(link without -shared / -pie)"
        )
    name, number = _MACHINES[bits]
    if e_machine != name:
        raise ImageError(
            f"{what}: wrong machine {e_machine} for an ELF{bits} file: expected {name} ({number}); build it for x86"
        )


def check_segments(elf: ElfImage, target: LoadTarget, what: str = "ELF") -> None:
    """``ImageError`` unless every segment (bss included) lies in the machine's RAM."""
    for segment in elf.segments:
        check_in_ram(
            target,
            segment.paddr,
            segment.memsz,
            f"{what} segment {segment.index}",
            "link it at a physical address inside RAM or give the machine more RAM",
        )


def write_segments(elf: ElfImage, target: LoadTarget) -> None:
    """Write every segment's bytes at its physical address and zero its bss (after :func:`check_segments`)."""
    for segment in elf.segments:
        target.write(segment.paddr, segment.data + bytes(segment.memsz - len(segment.data)))


def load_elf(image: bytes, target: LoadTarget) -> BootPlan:
    """Load an x86 ELF executable's segments at their physical addresses; ELF64 starts in long mode, ELF32 in
    protected mode, at the entry point.

    ``ImageError`` for anything the module docstring lists as checked.
    """
    elf = parse_elf(image)
    entry = elf.physical_entry()
    if entry is None:
        raise ImageError(
            f"ELF: entry point {elf.entry:#x} lies in no PT_LOAD segment: the file is malformed or not an executable"
        )
    mode: BootMode = "long" if elf.bits == 64 else "protected"
    limit = IDENTITY_MAPPED if mode == "long" else FOUR_GIB
    if entry >= limit:
        raise ImageError(
            f"ELF: entry point {entry:#x} is out of reach: {mode} mode starts with addresses below "
            f"{limit:#x} only; link the entry code lower"
        )
    check_segments(elf, target)
    areas = choose_boot_areas(target, elf.ranges, page_tables=mode == "long")
    write_segments(elf, target)
    low = min(s.paddr for s in elf.segments)
    high = max(s.end for s in elf.segments)
    return BootPlan(
        mode=mode,
        entry=entry,
        gdt=areas.gdt,
        page_tables=areas.page_tables,
        description=f"ELF{elf.bits} kernel, {len(elf.segments)} segments at {low:#x}..{high:#x}, entry {entry:#x}",
    )
