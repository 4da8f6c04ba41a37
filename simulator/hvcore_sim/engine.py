"""One Unicorn engine per vCPU: KVM-shaped register state in and out, and counted runs.

The engine is always ``UC_MODE_64`` (the only mode that can follow a guest from
real to long mode). Segment caches, control registers, EFER and ``hflags`` are
written straight into the context blob at the offsets :mod:`hvcore_sim.layout`
found, and ``hflags`` is recomputed from them the way QEMU derives it, so the
translator decodes 16-, 32- or 64-bit code as the state says. The calls into Unicorn past its
Python binding, and the engine's fields in Unicorn's memory, are
:class:`hvcore_sim.unicorn_internals.DirectCalls`, which :class:`Engine` extends.

One module: :class:`Engine` is the one door to an engine's CPU state, and the conversions
between KVM's and QEMU's forms of that state (segments, ``hflags``) sit with it.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, replace
from typing import Any, Final

from hvcore.types import DescriptorTable, Regs, Segment, Sregs
from hvcore_sim import umip, unicorn_internals
from hvcore_sim.blocks import BlockCounter
from hvcore_sim.cpumodel import limit_xcr0, new_uc
from hvcore_sim.layout import (
    CR0_READ_INTERCEPT,
    CR4_WRITE_INTERCEPT,
    HF_GUEST,
    HF_INHIBIT_IRQ,
    IRET_INTERCEPT,
    SVM_EXIT_MSR,
    SVM_EXIT_RDTSC,
    SVM_INTERCEPT_BASE,
    VMCB_MSRPM,
    ContextLayout,
)
from hvcore_sim.memory import PHYSICAL_LIMIT, buffer_address
from hvcore_sim.windows import HF2_NMI_MASK, INTERCEPTS, REQUEST_INTERRUPT, REQUEST_NMI, request_offset

__all__ = ["SVM_AREA", "CpuView", "Engine", "segment_flags", "segment_from_flags"]

_SEGMENT: Final = struct.Struct("<IxxxxQII")  # selector, base, limit, flags
_QEMU_ORDER: Final = ("es", "cs", "ss", "ds", "fs", "gs")
_U64: Final = struct.Struct("<Q")
_U32: Final = struct.Struct("<I")
_I32: Final = struct.Struct("<i")
_EXCEPTION: Final = struct.Struct("<iiQ")  # error_code, exception_is_int, exception_next_eip

# QEMU's hflags bits
HF_CPL_MASK: Final = 3
HF_CS32: Final = 1 << 4
HF_SS32: Final = 1 << 5
HF_ADDSEG: Final = 1 << 6
HF_PE: Final = 1 << 7
HF_MP_SHIFT: Final = 9
HF_LMA: Final = 1 << 14
HF_CS64: Final = 1 << 15
HF_SMM: Final = 1 << 19
HF_SVME: Final = 1 << 20
HF_OSFXSR: Final = 1 << 22
HF_SMAP: Final = 1 << 23
HF_IOBPT: Final = 1 << 24  # QEMU translates a breakpoint check after every I/O instruction
_CR4_SMAP: Final = 1 << 21
_HF_KEPT: Final = HF_INHIBIT_IRQ | HF_SMM | HF_GUEST | HF_IOBPT
EFER_LMA: Final = 1 << 10
EFER_SVME: Final = 1 << 12

SVM_AREA: Final = PHYSICAL_LIMIT
"""Guest-physical address of each engine's VMCB page and MSR permission bitmap: above anything a guest reaches."""
_MSRPM: Final = 0x1000  # the bitmap's offset in the area; every bit set: every RDMSR / WRMSR is intercepted
_MSRPM_SIZE: Final = 0x2000
_ALL_INTERCEPTED: Final = b"\xff" * _MSRPM_SIZE
_NONE_INTERCEPTED: Final = bytes(_MSRPM_SIZE)
_INTERCEPTS: Final = (
    1 << (SVM_EXIT_RDTSC - SVM_INTERCEPT_BASE)
    | 1 << (SVM_EXIT_MSR - SVM_INTERCEPT_BASE)
    | IRET_INTERCEPT
    | INTERCEPTS
    | umip.INTERCEPT_BITS
)
_WINDOWS: Final = REQUEST_INTERRUPT | REQUEST_NMI
_CFLAGS_IDLE: Final = 0xFFFFFFFF  # cflags_next_tb when no exact setting is asked for (-1)
_CR_INTERCEPTS: Final = struct.Struct("<HH")  # intercept_cr_read, intercept_cr_write
_CR8: Final = 1 << 8
_DR7: Final = 1 << 7  # intercept_dr_write (after intercept_cr_read, _write and intercept_dr_read): MOV to DR7
_DR7_IO_TRAP: Final = 0x400 | 1 | 2 << 16  # bit 10 (fixed), L0, R/W0 = I/O, LEN0 = one byte


def _in_msr_bitmap(index: int) -> bool:
    """The MSR ranges the SVM permission bitmap covers (QEMU intercepts any other index unconditionally)."""
    return index < 0x2000 or 0xC0000000 <= index < 0xC0002000 or 0xC0010000 <= index < 0xC0012000


def segment_flags(seg: Segment) -> int:
    """QEMU's SegmentCache.flags for a KVM-style segment."""
    return (
        seg.type << 8
        | seg.s << 12
        | seg.dpl << 13
        | seg.present << 15
        | seg.avl << 20
        | seg.l << 21
        | seg.db << 22
        | seg.g << 23
    )


def segment_from_flags(selector: int, base: int, limit: int, flags: int) -> Segment:
    """A KVM-style segment from QEMU's SegmentCache (the same attribute bits KVM's SMM save area holds)."""
    present = flags >> 15 & 1
    return Segment(
        base=base,
        limit=limit,
        selector=selector,
        type=flags >> 8 & 0xF,
        present=present,
        dpl=flags >> 13 & 3,
        db=flags >> 22 & 1,
        s=flags >> 12 & 1,
        l=flags >> 21 & 1,
        g=flags >> 23 & 1,
        avl=flags >> 20 & 1,
        unusable=0 if present else 1,
    )


def compute_hflags(sregs: Sregs, old: int) -> int:
    """The hflags QEMU would hold for ``sregs`` (keeping the interrupt shadow and SMM bits of ``old``)."""
    hflags = old & _HF_KEPT
    protected = sregs.cr0 & 1
    long_mode = sregs.efer & EFER_LMA
    if protected:
        hflags |= HF_PE | (sregs.ss.dpl & HF_CPL_MASK)
    hflags |= ((sregs.cr0 >> 1) & 7) << HF_MP_SHIFT
    if long_mode:
        hflags |= HF_LMA
    if long_mode and sregs.cs.l:
        hflags |= HF_CS64 | HF_CS32 | HF_SS32
    else:
        if sregs.cs.db:
            hflags |= HF_CS32
        if sregs.ss.db:
            hflags |= HF_SS32
        if not protected or not sregs.cs.db or (sregs.ds.base | sregs.es.base | sregs.ss.base):
            hflags |= HF_ADDSEG
    if sregs.cr4 & (1 << 9):
        hflags |= HF_OSFXSR
    if sregs.cr4 & _CR4_SMAP:
        hflags |= HF_SMAP
    if sregs.efer & EFER_SVME:
        hflags |= HF_SVME
    return hflags


@dataclass(frozen=True, slots=True)
class CpuView:
    """What decoding an IN/INS or a software interrupt needs: CS, ES, TR, and paging (as ``Sregs``)."""

    cs_base: int
    code_bits: int
    es_base: int
    tr_base: int
    tr_limit: int
    tr_type: int
    paging: Sregs


class Engine(unicorn_internals.DirectCalls):
    """A Unicorn x86-64 engine with KVM-shaped state accessors."""

    def __init__(self, layout: ContextLayout) -> None:
        import unicorn
        from unicorn import x86_const as x

        self._uc_mod = unicorn
        uc = new_uc()
        uc.ctl_exits_enabled(True)  # never pass `until`: it clobbers CR2 with paging on
        gprs = (
            x.UC_X86_REG_RAX,
            x.UC_X86_REG_RBX,
            x.UC_X86_REG_RCX,
            x.UC_X86_REG_RDX,
            x.UC_X86_REG_RSI,
            x.UC_X86_REG_RDI,
            x.UC_X86_REG_RSP,
            x.UC_X86_REG_RBP,
            x.UC_X86_REG_R8,
            x.UC_X86_REG_R9,
            x.UC_X86_REG_R10,
            x.UC_X86_REG_R11,
            x.UC_X86_REG_R12,
            x.UC_X86_REG_R13,
            x.UC_X86_REG_R14,
            x.UC_X86_REG_R15,
            x.UC_X86_REG_RIP,
            x.UC_X86_REG_RFLAGS,
        )
        super().__init__(uc, layout, gprs)
        self.GPRS_BY_NUMBER: Final = tuple(
            getattr(x, f"UC_X86_REG_{name}")
            for name in ("RAX", "RCX", "RDX", "RBX", "RSP", "RBP", "RSI", "RDI", *(f"R{i}" for i in range(8, 16)))
        )
        """The general registers in x86 encoding order (ModRM / REX numbers 0-15)."""
        self.RAX: Final = x.UC_X86_REG_RAX
        self.RCX: Final = x.UC_X86_REG_RCX
        self.RDX: Final = x.UC_X86_REG_RDX
        self.RFLAGS: Final = x.UC_X86_REG_RFLAGS
        self.CR0: Final = x.UC_X86_REG_CR0
        self.RSP: Final = x.UC_X86_REG_RSP
        self.CS: Final = x.UC_X86_REG_CS
        self.DR6: Final = x.UC_X86_REG_DR6
        self._msr_reg = x.UC_X86_REG_MSR
        self._intercept_msrs(unicorn)
        # QEMU's interrupt_request (:mod:`hvcore_sim.windows`) and the cflags_next_tb before it
        self._requests = unicorn_internals.interrupt_request_cell(uc, request_offset(), self.reg(self.RAX))
        self._next_cflags = unicorn_internals.cflags_next_tb_cell(self._requests)
        self.set_xcr0(1)  # KVM's vCPU starts with x87 only and PKRU 0; Unicorn with every component
        self.set_pkru(0)
        self.DR0: Final = x.UC_X86_REG_DR0
        self.DR7: Final = x.UC_X86_REG_DR7
        self._trap_saved: tuple[int, int, int] | None = None
        # a fast run needs blocks of one instruction on request (cflags_next_tb): no block counting without them
        self.blocks = BlockCounter.install(self) if self._next_cflags is not None else None
        """Counting per block instead of per instruction (:mod:`hvcore_sim.blocks`); None where unsupported."""

    @property
    def fast(self) -> bool:
        """Whether runs count blocks (:mod:`hvcore_sim.blocks`): budgets are in blocks, stops land between blocks."""
        blocks = self.blocks
        return blocks is not None and blocks.fast

    @property
    def switches_freely(self) -> bool:
        """Whether counted and fast runs keep their own translations, so a :meth:`set_fast` switch drops none."""
        blocks = self.blocks
        return blocks is not None and blocks.keeps_both

    def set_fast(self, fast: bool) -> None:
        """Count blocks (``fast``, where supported) or instructions from the next run on."""
        if self.blocks is not None:
            self.blocks.set_fast(self, fast)

    def arm_io_trap(self, port: int) -> None:
        """From an IN / OUT hook: end the run right after this I/O instruction, as a #DB the hook takes (DR0-DR7).

        QEMU checks I/O breakpoints after every I/O instruction it translated with ``HF_IOBPT``
        (which every engine keeps set); a hit sets RIP past the instruction and raises #DB at
        once, where a stop would wait for the end of the block. :meth:`disarm_io_trap` puts the
        guest's debug registers back.
        """
        if self._trap_saved is None:
            self._trap_saved = (self._dr(0), self._dr(6), self._dr(7))
        self._set_dr(0, port)
        self._set_dr(7, _DR7_IO_TRAP)

    def disarm_io_trap(self) -> None:
        """The guest's DR0, DR6 and DR7 again, after :meth:`arm_io_trap`."""
        saved, self._trap_saved = self._trap_saved, None
        if saved is not None:
            for index, value in zip((0, 6, 7), saved, strict=True):
                self._set_dr(index, value)

    def _dr(self, index: int) -> int:
        dr = self.debug_registers  # in place where found: the fields Unicorn's register calls use
        return dr[index] if dr is not None else self.reg(self.DR0 + index)

    def _set_dr(self, index: int, value: int) -> None:
        dr = self.debug_registers
        if dr is not None:
            dr[index] = value
        else:
            self.set_reg(self.DR0 + index, value)

    def keep_io_trap_translated(self) -> None:
        """Set ``HF_IOBPT`` again after the guest's MOV to DR7 (QEMU recomputes it from the guest's DR7)."""
        blob = self._blob()
        hflags = _U32.unpack_from(blob, self.layout.hflags)[0]
        if not hflags & HF_IOBPT:
            _U32.pack_into(blob, self.layout.hflags, hflags | HF_IOBPT)
            self._store(blob)

    def _intercept_msrs(self, unicorn: Any) -> None:
        """Make guest RDMSR / WRMSR / RDTSC, IRET, CR0 reads, MOV to CR4 and to/from CR8, SGDT / SIDT / SLDT / STR
        (:mod:`hvcore_sim.umip`) reach the interrupt hook first.

        Unicorn cannot hook them, but QEMU's helpers check SVM intercepts first while hflags has
        HF_GUEST: with the RDTSC, IRET and MSR intercept bits set and a permission bitmap of all
        ones, each becomes ``EXCP_VMEXIT`` + exit code in the hook, RIP still at the instruction
        (:mod:`hvcore_sim.msrs`, :mod:`hvcore_sim.resume`, :mod:`hvcore_sim.smsw`). The VMCB page
        (QEMU reads only its bitmap address) and the bitmap live at ``SVM_AREA``.
        """
        self._svm_area = mmap.mmap(-1, _MSRPM + _MSRPM_SIZE)
        _U64.pack_into(self._svm_area, VMCB_MSRPM, SVM_AREA + _MSRPM)
        self._svm_area[_MSRPM:] = _ALL_INTERCEPTED
        self.uc.mem_map_ptr(SVM_AREA, _MSRPM + _MSRPM_SIZE, unicorn.UC_PROT_READ, buffer_address(self._svm_area))
        blob = self._blob()
        _U64.pack_into(blob, self.layout.vm_vmcb, SVM_AREA)
        _U64.pack_into(blob, self.layout.intercept, _INTERCEPTS)
        reads, writes = CR0_READ_INTERCEPT | _CR8, CR4_WRITE_INTERCEPT | _CR8
        _CR_INTERCEPTS.pack_into(blob, self.layout.intercept_cr, reads, writes)
        struct.pack_into("<H", blob, self.layout.intercept_cr + 6, _DR7)
        _U32.pack_into(blob, self.layout.hflags, _U32.unpack_from(blob, self.layout.hflags)[0] | HF_GUEST | HF_IOBPT)
        self._store(blob)

    # -- the context blob ----------------------------------------------------

    # -- registers -----------------------------------------------------------

    def set_regs(self, regs: Regs) -> None:
        """Write RAX..R15, RIP, RFLAGS."""
        write = self.uc.reg_write
        for reg, value in zip(self._gprs, (getattr(regs, n) for n in Regs.__dataclass_fields__), strict=True):
            write(reg, value)

    def get_sregs(self, *, apic_base: int, interrupt_bitmap: tuple[int, int, int, int], cr8: int) -> Sregs:
        """Segments (with hidden caches), descriptor tables, CR0-4, EFER.

        The APIC base, CR8 and the pending-interrupt bitmap are the vCPU's, passed in.
        """
        blob = self._blob()
        lay = self.layout
        segs = {
            name: segment_from_flags(*_SEGMENT.unpack_from(blob, lay.segment(i))) for i, name in enumerate(_QEMU_ORDER)
        }
        gdt = _SEGMENT.unpack_from(blob, lay.gdt)
        idt = _SEGMENT.unpack_from(blob, lay.idt)
        cr = [_U64.unpack_from(blob, lay.cr + 8 * i)[0] for i in range(5)]
        return Sregs(
            cs=segs["cs"],
            ds=segs["ds"],
            es=segs["es"],
            fs=segs["fs"],
            gs=segs["gs"],
            ss=segs["ss"],
            tr=segment_from_flags(*_SEGMENT.unpack_from(blob, lay.tr)),
            ldt=segment_from_flags(*_SEGMENT.unpack_from(blob, lay.ldt)),
            gdt=DescriptorTable(gdt[1], gdt[2]),
            idt=DescriptorTable(idt[1], idt[2]),
            cr0=cr[0],
            cr2=cr[2],
            cr3=cr[3],
            cr4=cr[4],
            cr8=cr8,
            efer=_U64.unpack_from(blob, lay.efer)[0],
            apic_base=apic_base,
            interrupt_bitmap=interrupt_bitmap,
        )

    def set_sregs(self, sregs: Sregs, *, flush: bool = True) -> None:
        """Load segments, tables, control registers and EFER; recompute hflags; drop stale translations.

        ``flush=False`` keeps translations and TLB, for a hook that changes only segments (translated
        code is looked up by CS base and hflags, so it cannot be reused in the wrong mode).
        """
        blob = self._blob()
        lay = self.layout
        for i, name in enumerate(_QEMU_ORDER):
            seg: Segment = getattr(sregs, name)
            _SEGMENT.pack_into(blob, lay.segment(i), seg.selector, seg.base, seg.limit, segment_flags(seg))
        _SEGMENT.pack_into(blob, lay.tr, sregs.tr.selector, sregs.tr.base, sregs.tr.limit, segment_flags(sregs.tr))
        ldt = sregs.ldt
        _SEGMENT.pack_into(blob, lay.ldt, ldt.selector, ldt.base, ldt.limit, segment_flags(ldt))
        _SEGMENT.pack_into(blob, lay.gdt, 0, sregs.gdt.base, sregs.gdt.limit, 0)
        _SEGMENT.pack_into(blob, lay.idt, 0, sregs.idt.base, sregs.idt.limit, 0)
        for i, value in ((0, sregs.cr0), (2, sregs.cr2), (3, sregs.cr3), (4, sregs.cr4)):
            _U64.pack_into(blob, lay.cr + 8 * i, value)
        _U64.pack_into(blob, lay.efer, sregs.efer)
        hflags = _U32.unpack_from(blob, lay.hflags)[0]
        _U32.pack_into(blob, lay.hflags, compute_hflags(sregs, hflags))
        self._store(blob)
        if flush:
            self.flush()

    def drop_tlb(self) -> None:
        """Forget Unicorn's TLB (invisible to the guest: a TLB may drop entries at any time).

        Unicorn keeps a page's stores on its slow path (code-invalidation checks on every store)
        for as long as the page's TLB entry also maps it for fetches, even after its translated
        code is gone: a boot that once ran code where it now writes data (Linux's decompressor)
        stays slow until the entry goes. Dropping the TLB once per used-up fast slice costs a page
        walk per page in use and saved ~12% of Linux's boot here.
        """
        self.uc.ctl(self._uc_mod.UC_CTL_TLB_FLUSH, self._uc_mod.UC_CTL_IO_WRITE)

    def flush(self) -> None:
        """Forget translated code and TLB entries (after a mode change or a host write to guest code)."""
        self.uc.ctl_flush_tb()
        self.uc.ctl(self._uc_mod.UC_CTL_TLB_FLUSH, self._uc_mod.UC_CTL_IO_WRITE)

    def view(self) -> CpuView:
        """The segment and paging state the exit rules read, from one read of the context blob."""
        blob, lay = self._blob(), self.layout
        _, cs_base, _, cs_flags = _SEGMENT.unpack_from(blob, lay.segment(1))
        hflags = _U32.unpack_from(blob, lay.hflags)[0]
        _, tr_base, tr_limit, tr_flags = _SEGMENT.unpack_from(blob, lay.tr)
        return CpuView(
            cs_base=cs_base,
            code_bits=64 if hflags & HF_CS64 else 32 if cs_flags >> 22 & 1 else 16,
            es_base=_SEGMENT.unpack_from(blob, lay.segment(0))[1],
            tr_base=tr_base,
            tr_limit=tr_limit,
            tr_type=tr_flags >> 8 & 0xF,
            paging=Sregs(
                cr0=_U64.unpack_from(blob, lay.cr)[0],
                cr3=_U64.unpack_from(blob, lay.cr + 24)[0],
                cr4=_U64.unpack_from(blob, lay.cr + 32)[0],
                efer=_U64.unpack_from(blob, lay.efer)[0],
            ),
        )

    def code_address(self, rip: int) -> int:
        """The linear address of CS:RIP (CS's base is ignored in 64-bit code)."""
        blob, lay = self._blob(), self.layout
        if _U32.unpack_from(blob, lay.hflags)[0] & HF_CS64:
            return rip
        cs_base: int = _SEGMENT.unpack_from(blob, lay.segment(1))[1]
        return (cs_base + rip) & 0xFFFFFFFF

    def adopt(self, old: Engine) -> None:
        """Take over ``old``'s CPU state (a new engine for a new memory layout)."""
        self._store(old._blob())
        self.flush()

    # -- MSRs as Unicorn keeps them ------------------------------------------------

    def read_msr(self, index: int) -> int:
        """Unicorn's own value of MSR ``index`` (its RDMSR helper, run with the intercept bitmap cleared)."""
        self._open_msr_bitmap(index)
        try:
            return int(self.uc.reg_read(self._msr_reg, index))
        finally:
            self._svm_area[_MSRPM:] = _ALL_INTERCEPTED

    def write_msr(self, index: int, value: int) -> None:
        """Set MSR ``index`` in Unicorn's state (its WRMSR helper, run with the intercept bitmap cleared)."""
        self._open_msr_bitmap(index)
        try:
            self.uc.reg_write(self._msr_reg, (index, value))
        finally:
            self._svm_area[_MSRPM:] = _ALL_INTERCEPTED

    def _open_msr_bitmap(self, index: int) -> None:
        if not _in_msr_bitmap(index):  # QEMU would take the intercept and longjmp out of the API call
            raise ValueError(f"MSR {index:#x} is outside the SVM permission bitmap; Unicorn cannot be asked for it")
        self._svm_area[_MSRPM:] = _NONE_INTERCEPTED

    # -- XSAVE state the blob holds ----------------------------------------------

    def xcr0(self) -> int:
        """XCR0 as the guest's XSETBV left it."""
        return int(_U64.unpack_from(self._blob(), self.layout.xcr0)[0])

    def set_xcr0(self, value: int) -> None:
        """Set XCR0 (the caller checked it)."""
        blob = self._blob()
        _U64.pack_into(blob, self.layout.xcr0, value)
        self._store(blob)

    def pkru(self) -> int:
        """The protection-key rights register."""
        return int(_U32.unpack_from(self._blob(), self.layout.pkru)[0])

    def set_pkru(self, value: int) -> None:
        """Set PKRU; TLB entries are dropped, as QEMU's WRPKRU does (they carry the old rights)."""
        blob = self._blob()
        _U32.pack_into(blob, self.layout.pkru, value)
        self._store(blob)
        self.uc.ctl(self._uc_mod.UC_CTL_TLB_FLUSH, self._uc_mod.UC_CTL_IO_WRITE)

    def limit_xcr0(self, allowed: int) -> bool:
        """Let the guest's XSETBV enable only ``allowed`` (:func:`hvcore_sim.cpumodel.limit_xcr0`)."""
        return limit_xcr0(self.uc, allowed)

    # -- interrupt shadow, pending exception bookkeeping ------------------------

    @property
    def interrupt_shadow(self) -> bool:
        """The one-instruction STI / MOV SS shadow (QEMU's HF_INHIBIT_IRQ)."""
        return bool(_U32.unpack_from(self._blob(), self.layout.hflags)[0] & HF_INHIBIT_IRQ)

    @interrupt_shadow.setter
    def interrupt_shadow(self, value: bool) -> None:
        blob = self._blob()
        hflags = _U32.unpack_from(blob, self.layout.hflags)[0]
        hflags = hflags | HF_INHIBIT_IRQ if value else hflags & ~HF_INHIBIT_IRQ
        _U32.pack_into(blob, self.layout.hflags, hflags)
        self._store(blob)

    @property
    def nmi_blocked(self) -> bool:
        """NMIs are blocked until the next IRET (QEMU's HF2_NMI_MASK, which its IRET clears)."""
        return bool(_U32.unpack_from(self._blob(), self.layout.hflags2)[0] & HF2_NMI_MASK)

    @nmi_blocked.setter
    def nmi_blocked(self, value: bool) -> None:
        blob = self._blob()
        hflags2 = _U32.unpack_from(blob, self.layout.hflags2)[0]
        _U32.pack_into(blob, self.layout.hflags2, hflags2 | HF2_NMI_MASK if value else hflags2 & ~HF2_NMI_MASK)
        self._store(blob)

    def open_window(self, request: int) -> bool:
        """Stop the next runs where the guest can take a blocked event (``windows.REQUEST_*``); False if unsupported.

        The stop is an SVM_EXIT_INTR / SVM_EXIT_NMI intercept in the interrupt hook, which must
        call :meth:`close_windows`.
        """
        cell = self._requests
        if cell is None:
            return False
        cell.value |= request
        return True

    def close_windows(self) -> None:
        """Withdraw every window :meth:`open_window` asked for."""
        cell = self._requests
        if cell is not None and cell.value & _WINDOWS:
            cell.value &= ~_WINDOWS

    def one_instruction_block(self) -> bool:
        """Translate the next run's first block as one instruction (QEMU's ``cflags_next_tb``); False if unsupported.

        QEMU asks the same of itself for precise self-modifying code. Call :meth:`withdraw_one_instruction_block`
        after the run, in case it ended before the block was looked up.
        """
        cell = self._next_cflags
        if cell is None:
            return False
        cell.value = 1  # CF_COUNT 1, nothing else (Unicorn's curr_cflags() is 0)
        return True

    def withdraw_one_instruction_block(self) -> None:
        """Undo an :meth:`one_instruction_block` the run did not use."""
        cell = self._next_cflags
        if cell is not None and cell.value == 1:
            cell.value = _CFLAGS_IDLE

    def take_exception(self) -> tuple[int, int | None]:
        """The error code of the exception just raised and, for INT n / INT3 / INTO, the address after it.

        Also clears QEMU's sticky ``old_exception`` (else the next fault would become #DF) and the
        software-interrupt mark.
        """
        blob = self._blob()
        code, is_int, next_eip = _EXCEPTION.unpack_from(blob, self.layout.error_code)
        _I32.pack_into(blob, self.layout.old_exception, -1)
        _I32.pack_into(blob, self.layout.error_code + 4, 0)
        self._store(blob)
        return code & 0xFFFFFFFF, next_eip if is_int else None

    # -- running ---------------------------------------------------------------

    def stop_after_this_instruction(self) -> None:
        """From a hook: let the current instruction complete, then stop (lowers the run's instruction budget)."""
        self._count.value = self.counter_cell.value

    @property
    def within_budget(self) -> bool:
        """After a run: it ended before its budget did (a HLT, or a stop), budget lowered by a hook included."""
        return self.counter_cell.value <= self._count.value

    def retry_then_stop(self) -> None:
        """From an intercept hook, which aborted the instruction: run it once more, then stop right after it.

        The aborted attempt was counted; the retry is counted again, as the one instruction it is.
        In a fast run the retry is a block of that one instruction (the aborted block was counted).
        """
        counter = self.counter_cell
        if self.fast:
            self.one_instruction_block()
        else:
            counter.value -= 1
        self._count.value = counter.value + 1

    def reset(self) -> None:
        """KVM's x86 reset state (real mode at 0xf000:0xfff0)."""
        data = Segment(base=0, limit=0xFFFF, selector=0, type=3, present=1, s=1)
        sregs = Sregs(
            cs=replace(data, selector=0xF000, base=0xFFFF0000, type=0xB),
            ds=data,
            es=data,
            fs=data,
            gs=data,
            ss=data,
            tr=Segment(base=0, limit=0xFFFF, selector=0, type=0xB, present=1, s=0),
            ldt=Segment(base=0, limit=0xFFFF, selector=0, type=2, present=1, s=0),
            gdt=DescriptorTable(0, 0xFFFF),
            idt=DescriptorTable(0, 0xFFFF),
            cr0=0x60000010,
        )
        self.set_sregs(sregs)
        self.set_regs(Regs(rdx=0x600, rip=0xFFF0, rflags=0x2))
        self.nmi_blocked = False
        self.close_windows()
