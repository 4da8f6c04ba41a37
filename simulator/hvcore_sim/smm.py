"""System Management Mode as upstream KVM enters and leaves it (arch/x86/kvm/smm.c).

An SMI saves the vCPU's state into the 512-byte state-save area at SMBASE + 0xFE00, in the
layout of KVM's emulator (``struct kvm_smram_state_64`` when the guest's CPUID has long mode,
``struct kvm_smram_state_32`` otherwise), then runs from SMBASE + 0x8000 in a flat big-real
mode. ``rsm`` reads the area back and returns to the interrupted code. The save area is written
and read in address space 1, which the caller switches to first (``kvm_smm_changed`` comes
before the write in ``enter_smm``, and after the read in ``emulator_leave_smm``).

This module is the pure part: the byte layouts and the register states of entry and of
``rsm``. :class:`hvcore_sim.vcpu.SimVCPU` decides when, switches address spaces, and handles
NMI blocking, latched INITs and the interrupt shadow.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import Final

from hvcore.types import DescriptorTable, Regs, Segment, Sregs
from hvcore_sim.engine import segment_flags, segment_from_flags

__all__ = [
    "DR7_AT_ENTRY",
    "ENTRY_OFFSET",
    "MSR_SMBASE",
    "MSR_SMI_COUNT",
    "SAVE_AREA_OFFSET",
    "SAVE_AREA_SIZE",
    "SMBASE_RESET",
    "Saved",
    "entry_state",
    "load",
    "resumed_state",
    "save",
]

SMBASE_RESET: Final = 0x30000
"""SMBASE of a vCPU KVM created (``kvm_vcpu_reset``); INIT keeps it."""
SAVE_AREA_OFFSET: Final = 0xFE00
"""Where the state-save area starts, from SMBASE."""
SAVE_AREA_SIZE: Final = 512
DR7_AT_ENTRY: Final = 0x400
"""DR7 once SMM is entered (only its fixed bit)."""
ENTRY_OFFSET: Final = 0x8000
"""Where the SMI handler starts, from SMBASE (CS base = SMBASE, IP = 0x8000)."""
MSR_SMBASE: Final = 0x9E
"""MSR_IA32_SMBASE: only the VMM reads and writes it (the guest gets #GP), as on KVM."""
MSR_SMI_COUNT: Final = 0x34
"""MSR_SMI_COUNT: SMIs taken so far; the guest may read it, only the VMM write it."""

_REVISION_64, _REVISION_32 = 0x00020064, 0x00020000
_CR0_PE, _CR0_EM, _CR0_TS, _CR0_PG = 1, 1 << 2, 1 << 3, 1 << 31
_EFER_LME, _EFER_LMA = 1 << 8, 1 << 10
_RFLAGS_FIXED = 0x2
_GPRS_NATURAL: Final = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi")
_GPRS_64: Final = (*_GPRS_NATURAL, "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_SEGMENTS: Final = ("es", "cs", "ss", "ds", "fs", "gs")
_MASK32: Final = 0xFFFFFFFF


@dataclass(frozen=True)
class Saved:
    """What a state-save area holds, as ``rsm`` loads it."""

    gprs: dict[str, int]
    """The general-purpose registers the layout has (eight in the 32-bit one)."""
    rip: int
    rflags: int
    segments: dict[str, Segment]
    """es, cs, ss, ds, fs, gs, tr and ldt."""
    gdt: DescriptorTable
    idt: DescriptorTable
    cr0: int
    cr3: int
    cr4: int
    efer: int | None
    """None in the 32-bit layout, which has no EFER (``rsm`` leaves it as it is)."""
    dr6: int
    dr7: int
    smbase: int
    interrupt_shadow: int


# -- the 64-bit layout (struct kvm_smram_state_64), offsets from SMBASE + 0xFE00 --------------
_SEG64 = struct.Struct("<HHIQ")  # selector, attributes (flags >> 8), limit, base
_SEG64_AT: Final = {"es": 0x00, "cs": 0x10, "ss": 0x20, "ds": 0x30, "fs": 0x40, "gs": 0x50, "ldt": 0x70, "tr": 0x90}
_DT64 = struct.Struct("<4xIQ")  # a kvm_smm_seg_state_64 of which only limit and base are used
_GDTR64, _IDTR64 = 0x60, 0x80
_INT_SHADOW64, _EFER64, _REVISION64_AT, _SMBASE64 = 0xCB, 0xD0, 0xFC, 0x100
_CONTROL64 = struct.Struct("<7Q")  # cr4, cr3, cr0, dr7, dr6, rflags, rip
_CONTROL64_AT, _GPRS64_AT = 0x148, 0x180  # gprs[16], R15 first

# -- the 32-bit layout (struct kvm_smram_state_32) ----------------------------------------------
_SEG32 = struct.Struct("<III")  # flags, limit, base
_SEG32_AT: Final = {
    "ds": 0x12C, "fs": 0x138, "gs": 0x144, "tr": 0x15C, "ldt": 0x178, "es": 0x184, "cs": 0x190, "ss": 0x19C,
}  # fmt: skip
_SELECTOR32_AT: Final = {"es": 0x1A8, "cs": 0x1AC, "ss": 0x1B0, "ds": 0x1B4, "fs": 0x1B8, "gs": 0x1BC}
_SELECTOR32_AT_LDT, _SELECTOR32_AT_TR = 0x1C0, 0x1C4
_IDTR32, _GDTR32 = 0x150, 0x16C
_SMBASE32, _REVISION32_AT, _CR4_32, _INT_SHADOW32 = 0xF8, 0xFC, 0x114, 0x11A
_TAIL32 = struct.Struct("<2I8I4I")  # dr7, dr6, gprs[8] (EAX first), eip, eflags, cr3, cr0
_TAIL32_AT = 0x1C8


def save(regs: Regs, sregs: Sregs, dr6: int, dr7: int, smbase: int, interrupt_shadow: int, *, long_mode: bool) -> bytes:
    """The state-save area ``enter_smm`` writes for this state (``long_mode``: the CPUID has LM)."""
    area = bytearray(SAVE_AREA_SIZE)
    segments = {name: getattr(sregs, name) for name in (*_SEGMENTS, "tr", "ldt")}
    if long_mode:
        for name, at in _SEG64_AT.items():
            seg = segments[name]
            _SEG64.pack_into(area, at, seg.selector, segment_flags(seg) >> 8, seg.limit & _MASK32, seg.base)
        _DT64.pack_into(area, _GDTR64, sregs.gdt.limit, sregs.gdt.base)
        _DT64.pack_into(area, _IDTR64, sregs.idt.limit, sregs.idt.base)
        area[_INT_SHADOW64] = interrupt_shadow
        struct.pack_into("<Q", area, _EFER64, sregs.efer)
        struct.pack_into("<II", area, _REVISION64_AT, _REVISION_64, smbase)
        _CONTROL64.pack_into(area, _CONTROL64_AT, sregs.cr4, sregs.cr3, sregs.cr0, dr7, dr6, regs.rflags, regs.rip)
        struct.pack_into("<16Q", area, _GPRS64_AT, *(getattr(regs, name) for name in reversed(_GPRS_64)))
        return bytes(area)
    for name, at in _SEG32_AT.items():
        seg = segments[name]
        _SEG32.pack_into(area, at, segment_flags(seg), seg.limit & _MASK32, seg.base & _MASK32)
    for name, at in _SELECTOR32_AT.items():
        struct.pack_into("<I", area, at, segments[name].selector)
    struct.pack_into("<II", area, _SELECTOR32_AT_LDT, segments["ldt"].selector, segments["tr"].selector)
    _SEG32.pack_into(area, _GDTR32, 0, sregs.gdt.limit, sregs.gdt.base & _MASK32)
    _SEG32.pack_into(area, _IDTR32, 0, sregs.idt.limit, sregs.idt.base & _MASK32)
    struct.pack_into("<II", area, _SMBASE32, smbase, _REVISION_32)
    struct.pack_into("<I", area, _CR4_32, sregs.cr4 & _MASK32)
    area[_INT_SHADOW32] = interrupt_shadow
    gprs = (getattr(regs, name) & _MASK32 for name in _GPRS_NATURAL)
    control = (regs.rip, regs.rflags, sregs.cr3, sregs.cr0)
    _TAIL32.pack_into(area, _TAIL32_AT, dr7 & _MASK32, dr6 & _MASK32, *gprs, *(v & _MASK32 for v in control))
    return bytes(area)


def load(area: bytes, *, long_mode: bool) -> Saved:
    """What ``rsm`` reads from a state-save area (``long_mode``: the CPUID has LM, so the 64-bit layout)."""
    if long_mode:
        segments = {}
        for name, at in _SEG64_AT.items():
            selector, attributes, limit, base = _SEG64.unpack_from(area, at)
            segments[name] = segment_from_flags(selector, base, limit, attributes << 8)
        gdt_limit, gdt_base = _DT64.unpack_from(area, _GDTR64)
        idt_limit, idt_base = _DT64.unpack_from(area, _IDTR64)
        cr4, cr3, cr0, dr7, dr6, rflags, rip = _CONTROL64.unpack_from(area, _CONTROL64_AT)
        gprs = dict(zip(reversed(_GPRS_64), struct.unpack_from("<16Q", area, _GPRS64_AT), strict=True))
        return Saved(
            gprs=gprs,
            rip=rip,
            rflags=rflags | _RFLAGS_FIXED,
            segments=segments,
            gdt=DescriptorTable(gdt_base, gdt_limit & 0xFFFF),
            idt=DescriptorTable(idt_base, idt_limit & 0xFFFF),
            cr0=cr0,
            cr3=cr3,
            cr4=cr4,
            efer=struct.unpack_from("<Q", area, _EFER64)[0],
            dr6=dr6,
            dr7=dr7,
            smbase=struct.unpack_from("<I", area, _SMBASE64)[0],
            interrupt_shadow=area[_INT_SHADOW64],
        )
    selectors = {name: struct.unpack_from("<I", area, at)[0] for name, at in _SELECTOR32_AT.items()}
    selectors["ldt"], selectors["tr"] = struct.unpack_from("<II", area, _SELECTOR32_AT_LDT)
    segments = {}
    for name, at in _SEG32_AT.items():
        flags, limit, base = _SEG32.unpack_from(area, at)
        segments[name] = segment_from_flags(selectors[name] & 0xFFFF, base, limit, flags)
    _, gdt_limit, gdt_base = _SEG32.unpack_from(area, _GDTR32)
    _, idt_limit, idt_base = _SEG32.unpack_from(area, _IDTR32)
    dr7, dr6, *rest = _TAIL32.unpack_from(area, _TAIL32_AT)
    natural, (eip, eflags, cr3, cr0) = rest[:8], rest[8:]
    return Saved(
        gprs=dict(zip(_GPRS_NATURAL, natural, strict=True)),
        rip=eip,
        rflags=eflags | _RFLAGS_FIXED,
        segments=segments,
        gdt=DescriptorTable(gdt_base, gdt_limit & 0xFFFF),
        idt=DescriptorTable(idt_base, idt_limit & 0xFFFF),
        cr0=cr0,
        cr3=cr3,
        cr4=struct.unpack_from("<I", area, _CR4_32)[0],
        efer=None,
        dr6=dr6,
        dr7=dr7,
        smbase=struct.unpack_from("<I", area, _SMBASE32)[0],
        interrupt_shadow=area[_INT_SHADOW32],
    )


def entry_state(regs: Regs, sregs: Sregs, smbase: int, *, long_mode: bool) -> tuple[Regs, Sregs]:
    """The state ``enter_smm`` gives the vCPU once the old one is saved (DR7 becomes 0x400 too).

    CS is SMBASE >> 4 with base SMBASE, every data segment flat at 0, all with 4 GiB limits and
    16-bit defaults; CR0 loses PE, EM, TS and PG; CR4 is 0; the IDT limit is 0 (undocumented,
    as KVM says); EFER is 0 where the CPU has long mode; RFLAGS is 2 and RIP 0x8000.
    """
    flat = Segment(base=0, limit=_MASK32, selector=0, type=3, present=1, dpl=0, db=0, s=1, l=0, g=1)
    code = replace(flat, base=smbase, selector=(smbase >> 4) & 0xFFFF)
    sregs = replace(
        sregs,
        cs=code,
        ds=flat,
        es=flat,
        fs=flat,
        gs=flat,
        ss=flat,
        cr0=sregs.cr0 & ~(_CR0_PE | _CR0_EM | _CR0_TS | _CR0_PG),
        cr4=0,
        idt=DescriptorTable(0, 0),
        efer=0 if long_mode else sregs.efer,
    )
    return replace(regs, rip=ENTRY_OFFSET, rflags=_RFLAGS_FIXED), sregs


def resumed_state(saved: Saved, regs: Regs, sregs: Sregs) -> tuple[Regs, Sregs]:
    """The state ``rsm`` loads from ``saved`` over the current ``regs`` and ``sregs`` (CR2, CR8 and the
    APIC base stay, and R8-R15 in the 32-bit layout).

    EFER.LMA follows from the loaded EFER.LME and CR0.PG, as KVM's sequence of writes (EFER
    without LMA, then CR3, CR4, CR0) computes it. Whether the state is valid is the caller's
    check (KVM shuts the vCPU down when ``rsm`` cannot load it).
    """
    efer = sregs.efer if saved.efer is None else saved.efer & ~_EFER_LMA
    if efer & _EFER_LME and saved.cr0 & _CR0_PG:
        efer |= _EFER_LMA
    segments = saved.segments
    return replace(regs, **saved.gprs, rip=saved.rip, rflags=saved.rflags), replace(
        sregs,
        **segments,  # type: ignore[arg-type]
        gdt=saved.gdt,
        idt=saved.idt,
        cr0=saved.cr0,
        cr3=saved.cr3,
        cr4=saved.cr4,
        efer=efer,
    )
