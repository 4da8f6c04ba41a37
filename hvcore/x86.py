"""x86 architecture helpers: put a vCPU in real, 32-bit protected or 64-bit long mode.

VMMs that load a kernel start the vCPU directly in the mode the kernel
expects. These helpers write the GDT (and for long mode, identity page
tables) into guest memory and return the matching ``Sregs``::

    sregs = x86.long_mode_sregs(vcpu.get_sregs(), ram, gdt_address=0x500, pml4_address=0x9000)
    vcpu.set_sregs(sregs)
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from hvcore.memory import GuestMemory
from hvcore.types import DescriptorTable, Segment, Sregs

__all__ = [
    "CR0_ET",
    "CR0_NE",
    "CR0_PE",
    "CR0_PG",
    "CR0_WP",
    "CR4_OSFXSR",
    "CR4_PAE",
    "EFER_LMA",
    "EFER_LME",
    "RFLAGS_IF",
    "RFLAGS_IOPL3",
    "RFLAGS_RF",
    "SELECTORS",
    "descriptor",
    "flat_segment",
    "long_mode_sregs",
    "protected_mode_sregs",
    "real_mode_sregs",
]

CR0_PE: Final = 1 << 0
"""CR0.PE: protected mode."""
CR0_MP: Final = 1 << 1
CR0_ET: Final = 1 << 4
"""CR0.ET: the extension type bit (always 1 on modern CPUs)."""
CR0_NE: Final = 1 << 5
"""CR0.NE: x87 errors as #MF exceptions."""
CR0_WP: Final = 1 << 16
"""CR0.WP: supervisor writes honour read-only pages."""
CR0_PG: Final = 1 << 31
"""CR0.PG: paging."""
CR4_PAE: Final = 1 << 5
"""CR4.PAE: physical address extension (needed for long mode)."""
CR4_OSFXSR: Final = 1 << 9
"""CR4.OSFXSR: the OS supports FXSAVE/FXRSTOR (SSE enabled)."""
EFER_LME: Final = 1 << 8
"""EFER.LME: long mode enabled."""
EFER_LMA: Final = 1 << 10
"""EFER.LMA: long mode active (set by the CPU once paging is on)."""
RFLAGS_IF: Final = 1 << 9
"""RFLAGS.IF: maskable interrupts enabled."""
RFLAGS_IOPL3: Final = 3 << 12
"""RFLAGS.IOPL = 3: IN/OUT allowed at every privilege level."""
RFLAGS_RF: Final = 1 << 16
"""RFLAGS.RF: resume flag (suppresses an instruction breakpoint once)."""

SELECTORS: Final = {"code64": 0x08, "data": 0x10, "code32": 0x18, "user_data": 0x23, "user_code64": 0x2B}
"""Selectors of the GDT these helpers write (user ones carry RPL 3)."""

_PAGE_PRESENT, _PAGE_RW, _PAGE_USER, _PAGE_HUGE = 1, 2, 4, 0x80


def flat_segment(selector: int, *, code: bool, bits: int, dpl: int = 0) -> Segment:
    """A flat 4 GiB segment: ``bits`` is 32 or 64 for code (64 sets L), 32 for data."""
    return Segment(
        base=0,
        limit=0xFFFFFFFF,
        selector=selector,
        type=0xB if code else 0x3,
        present=1,
        dpl=dpl,
        db=0 if (code and bits == 64) else 1,
        s=1,
        l=1 if (code and bits == 64) else 0,
        g=1,
    )


def descriptor(segment: Segment) -> int:
    """The 8-byte GDT descriptor for ``segment`` (limit given in bytes, scaled by ``g``)."""
    limit = segment.limit >> 12 if segment.g else segment.limit
    access = segment.type | segment.s << 4 | segment.dpl << 5 | segment.present << 7
    flags = segment.avl | segment.l << 1 | segment.db << 2 | segment.g << 3
    return (
        (limit & 0xFFFF)
        | (segment.base & 0xFFFFFF) << 16
        | access << 40
        | ((limit >> 16) & 0xF) << 48
        | flags << 52
        | ((segment.base >> 24) & 0xFF) << 56
    )


def _gdt_segments() -> list[Segment]:
    return [
        flat_segment(SELECTORS["code64"], code=True, bits=64),
        flat_segment(SELECTORS["data"], code=False, bits=32),
        flat_segment(SELECTORS["code32"], code=True, bits=32),
        flat_segment(SELECTORS["user_data"], code=False, bits=32, dpl=3),
        flat_segment(SELECTORS["user_code64"], code=True, bits=64, dpl=3),
    ]


def _write_gdt(memory: GuestMemory, gdt_address: int, memory_base: int) -> DescriptorTable:
    table = b"\0" * 8 + b"".join(descriptor(s).to_bytes(8, "little") for s in _gdt_segments())
    memory.write(gdt_address - memory_base, table)
    return DescriptorTable(base=gdt_address, limit=len(table) - 1)


def real_mode_sregs(sregs: Sregs, code_segment: int = 0) -> Sregs:
    """Real mode with CS = ``code_segment`` and every other segment 0; paging and protection off."""

    def seg(selector: int, code: bool) -> Segment:
        return Segment(base=selector << 4, limit=0xFFFF, selector=selector, type=0xB if code else 0x3)

    data = seg(0, False)
    return replace(
        sregs,
        cs=seg(code_segment, True),
        ds=data,
        es=data,
        fs=data,
        gs=data,
        ss=data,
        cr0=sregs.cr0 & ~(CR0_PE | CR0_PG),
        efer=0,
    )


def protected_mode_sregs(sregs: Sregs, memory: GuestMemory, gdt_address: int, memory_base: int = 0) -> Sregs:
    """32-bit protected mode, flat segments, paging off; writes the GDT at ``gdt_address``."""
    gdt = _write_gdt(memory, gdt_address, memory_base)
    data = flat_segment(SELECTORS["data"], code=False, bits=32)
    return replace(
        sregs,
        cs=flat_segment(SELECTORS["code32"], code=True, bits=32),
        ds=data,
        es=data,
        fs=data,
        gs=data,
        ss=data,
        gdt=gdt,
        cr0=(sregs.cr0 | CR0_PE) & ~CR0_PG,
        efer=0,
    )


def write_identity_page_tables(memory: GuestMemory, pml4_address: int, memory_base: int = 0) -> None:
    """Identity-map the first 1 GiB with 2 MiB pages (user-accessible) in three pages from ``pml4_address``."""
    pdpt, pd = pml4_address + 0x1000, pml4_address + 0x2000
    flags = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER
    memory.write(pml4_address - memory_base, (pdpt | flags).to_bytes(8, "little") + bytes(4088))
    memory.write(pdpt - memory_base, (pd | flags).to_bytes(8, "little") + bytes(4088))
    entries = b"".join(((i << 21) | flags | _PAGE_HUGE).to_bytes(8, "little") for i in range(512))
    memory.write(pd - memory_base, entries)


def long_mode_sregs(
    sregs: Sregs,
    memory: GuestMemory,
    gdt_address: int,
    pml4_address: int,
    *,
    user: bool = False,
    memory_base: int = 0,
) -> Sregs:
    """64-bit long mode with paging (first 1 GiB identity-mapped); CPL3 segments when ``user``.

    Writes the GDT at ``gdt_address`` and three page-table pages from
    ``pml4_address``. ``memory_base`` is the guest-physical address of
    ``memory``'s first byte. KVM needs ``set_cpuid`` before long mode works.
    """
    gdt = _write_gdt(memory, gdt_address, memory_base)
    write_identity_page_tables(memory, pml4_address, memory_base)
    if user:
        code = flat_segment(SELECTORS["user_code64"], code=True, bits=64, dpl=3)
        data = flat_segment(SELECTORS["user_data"], code=False, bits=32, dpl=3)
    else:
        code = flat_segment(SELECTORS["code64"], code=True, bits=64)
        data = flat_segment(SELECTORS["data"], code=False, bits=32)
    return replace(
        sregs,
        cs=code,
        ds=data,
        es=data,
        fs=data,
        gs=data,
        ss=data,
        gdt=gdt,
        cr0=CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG,
        cr3=pml4_address,
        cr4=sregs.cr4 | CR4_PAE,
        efer=EFER_LME | EFER_LMA,
    )
