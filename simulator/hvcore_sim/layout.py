"""Where Unicorn keeps the CPU state the simulator needs, found by calibration at start-up.

Unicorn's ``context_save()`` blob is QEMU 5.0's ``CPUX86State`` behind a small
header, and ``uc_struct`` holds the instruction counter of ``count`` runs. The
public API does not reach the hidden segment caches, ``hflags``, EFER with LMA,
the pending error code, the SVM intercept state, XCR0, PKRU or the instruction counter, so the
simulator reads and writes them in place. Rather than trusting hard-coded offsets, :func:`calibrate`
writes known values through the public API (or makes the CPU produce them) and
finds them; if anything is not where QEMU 5.0's layout puts it relative to the
rest, the backend refuses to run and names the Unicorn version.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from typing import Any

from hvcore_sim import unicorn_internals

__all__ = [
    "CR0_READ_INTERCEPT",
    "CR4_WRITE_INTERCEPT",
    "EXCP_VMEXIT",
    "HF_GUEST",
    "HF_INHIBIT_IRQ",
    "IRET_INTERCEPT",
    "SVM_EXIT_INTR",
    "SVM_EXIT_IRET",
    "SVM_EXIT_MSR",
    "SVM_EXIT_NMI",
    "SVM_EXIT_RDTSC",
    "SVM_EXIT_READ_CR0",
    "SVM_EXIT_READ_CR8",
    "SVM_EXIT_WRITE_CR4",
    "SVM_EXIT_WRITE_CR8",
    "SVM_EXIT_WRITE_DR7",
    "SVM_INTERCEPT_BASE",
    "VMCB_MSRPM",
    "ContextLayout",
    "LayoutError",
    "calibrate",
]

# QEMU 5.0 CPUX86State, relative to regs[0] (what calibration confirms):
_EIP, _EFLAGS, _HFLAGS, _HFLAGS2, _SEGS = 128, 136, 176, 180, 184
_SEGMENT_CACHE = 24  # u32 selector, (pad), u64 base, u32 limit, u32 flags
_LDT, _TR, _GDT, _IDT, _CR = 328, 352, 376, 400, 424
_MARKERS = {"rax": 0x1122334455667788, "rip": 0x0000123456789ABC, "cr3": 0x7654321000, "efer": 0xD01}
# QEMU 5.0 svm.h: offsets in the VMCB, exit codes, and cpu.h's HF_GUEST_MASK and EXCP_VMEXIT
_VMCB_INTERCEPT, VMCB_MSRPM, _VMCB_SAVE = 0x0C, 0x48, 0x400
SVM_EXIT_RDTSC, SVM_EXIT_IRET, SVM_EXIT_MSR = 0x6E, 0x74, 0x7C
SVM_EXIT_READ_CR0, SVM_EXIT_READ_CR8, SVM_EXIT_WRITE_CR4, SVM_EXIT_WRITE_CR8 = 0x00, 0x08, 0x14, 0x18
SVM_EXIT_INTR, SVM_EXIT_NMI = 0x60, 0x61
SVM_EXIT_WRITE_DR7 = 0x37
_VMCB_INTERCEPT_CR = 0x00  # u16 intercept_cr_read, then u16 intercept_cr_write
_CR_READ_MARK, _CR_WRITE_MARK = 0x5A00, 0xA400  # bits of CR9..CR15 only: nothing the run touches
SVM_INTERCEPT_BASE = 0x60
IRET_INTERCEPT = 1 << (SVM_EXIT_IRET - SVM_INTERCEPT_BASE)
"""The IRET bit of ``env->intercept`` (:mod:`hvcore_sim.resume` lets one IRET through at a time)."""
CR0_READ_INTERCEPT = 1 << 0
"""The CR0 bit of ``intercept_cr_read`` (reads of CR0: :mod:`hvcore_sim.smsw`)."""
CR4_WRITE_INTERCEPT = 1 << 4
"""The CR4 bit of ``intercept_cr_write`` (MOV to CR4 with KVM's checks: :mod:`hvcore_sim.cpufeatures`)."""
"""Intercept bit ``n`` of ``env->intercept`` stands for exit code ``SVM_INTERCEPT_BASE + n``."""
EXCP_VMEXIT = 0x100
"""Unicorn's interrupt hook sees an intercept as ``EXCP_VMEXIT + exit code``."""
HF_GUEST = 1 << 21
HF_INHIBIT_IRQ = 1 << 3  # the STI / MOV SS interrupt shadow
"""QEMU's ``HF_GUEST_MASK``: SVM intercepts are checked (set by VMRUN)."""


class LayoutError(RuntimeError):
    """Unicorn's internals are not laid out as this simulator expects."""


@dataclass(frozen=True)
class ContextLayout:
    """Byte offsets into a context blob (and into ``uc_struct`` for the counters)."""

    size: int
    env: int
    eip: int
    eflags: int
    hflags: int
    hflags2: int
    segs: int
    ldt: int
    tr: int
    gdt: int
    idt: int
    cr: int
    efer: int
    error_code: int
    old_exception: int
    vm_vmcb: int
    intercept: int
    intercept_cr: int
    """``intercept_cr_read`` (u16); ``intercept_cr_write`` follows it."""
    counter: int
    count: int
    xcr0: int
    pkru: int

    def segment(self, index: int) -> int:
        """Offset of ``segs[index]`` (QEMU order: ES, CS, SS, DS, FS, GS)."""
        return self.segs + _SEGMENT_CACHE * index


def _offsets(blob: bytes, value: int, fmt: str) -> list[int]:
    size = struct.calcsize(fmt)
    return [i for i in range(0, len(blob) - size + 1, 4) if struct.unpack_from(fmt, blob, i)[0] == value]


def _one(blob: bytes, value: int, fmt: str, what: str) -> int:
    found = _offsets(blob, value, fmt)
    if len(found) != 1:
        raise LayoutError(f"{what}: expected one place holding {value:#x}, found {len(found)}")
    return found[0]


def _engine() -> Any:
    from hvcore_sim.cpumodel import new_uc

    return new_uc()


def _context_fields() -> tuple[int, int, int, int]:
    """Find env (regs[0]) and EFER; check RIP, CR3 and the descriptor tables where QEMU 5.0 has them."""
    from unicorn import x86_const as x

    uc = _engine()
    uc.reg_write(x.UC_X86_REG_RAX, _MARKERS["rax"])
    uc.reg_write(x.UC_X86_REG_RIP, _MARKERS["rip"])
    uc.reg_write(x.UC_X86_REG_CR3, _MARKERS["cr3"])
    uc.reg_write(x.UC_X86_REG_MSR, (0xC0000080, _MARKERS["efer"]))
    uc.reg_write(x.UC_X86_REG_GDTR, (0, 0xABCDE000, 0x1FF, 0))
    ctx = uc.context_save()
    blob = bytes(ctx)
    env = _one(blob, _MARKERS["rax"], "<Q", "RAX")
    checks = {
        "RIP": (env + _EIP, _MARKERS["rip"]),
        "CR3": (env + _CR + 3 * 8, _MARKERS["cr3"]),
        "GDTR.base": (env + _GDT + 8, 0xABCDE000),
    }
    for what, (offset, value) in checks.items():
        if struct.unpack_from("<Q", blob, offset)[0] != value:
            raise LayoutError(f"{what} is not at context offset {offset}")
    efer = _one(blob, _MARKERS["efer"], "<Q", "EFER")
    return len(blob), env, efer, int(ctx.size)


@functools.cache
def calibrate() -> ContextLayout:
    """Find and check every offset; raise :class:`LayoutError` naming what did not fit."""
    size, env, efer, _ = _context_fields()
    error_code, old_exception = _exception_fields(env)
    vm_vmcb, intercept, intercept_cr = _intercept_fields(env, efer, error_code)
    counters = unicorn_internals.counter_offsets()
    if counters is None:
        raise LayoutError("instruction counter not found in uc_struct")
    counter, count = counters
    xcr0, pkru = _xsave_fields(env)
    return ContextLayout(
        size=size,
        env=env,
        eip=env + _EIP,
        eflags=env + _EFLAGS,
        hflags=env + _HFLAGS,
        hflags2=env + _HFLAGS2,
        segs=env + _SEGS,
        ldt=env + _LDT,
        tr=env + _TR,
        gdt=env + _GDT,
        idt=env + _IDT,
        cr=env + _CR,
        efer=efer,
        error_code=error_code,
        old_exception=old_exception,
        vm_vmcb=vm_vmcb,
        intercept=intercept,
        intercept_cr=intercept_cr,
        counter=counter,
        count=count,
        xcr0=xcr0,
        pkru=pkru,
    )


def _exception_fields(env: int) -> tuple[int, int]:
    """Make the CPU raise #GP(0x1230) and find where it keeps the error code and the sticky exception number."""
    import unicorn
    from unicorn import x86_const as x

    uc = _engine()
    uc.mem_map(0, 0x2000, unicorn.UC_PROT_ALL)
    uc.mem_write(0x1000, b"\xea\x00\x00\x00\x00\x30\x12")  # jmp far 0x1230:0
    blob = bytearray(bytes(uc.context_save()))
    flat32 = (0xB << 8) | (1 << 12) | (1 << 15) | (1 << 22) | (1 << 23)
    for i in range(6):
        struct.pack_into("<IxxxxQII", blob, env + _SEGS + _SEGMENT_CACHE * i, 0x8, 0, 0xFFFFFFFF, flat32)
    struct.pack_into("<IxxxxQII", blob, env + _GDT, 0, 0, 0x17, 0)  # GDT too small for 0x1230
    struct.pack_into("<Q", blob, env + _CR, 0x11)  # CR0.PE
    struct.pack_into("<I", blob, env + _HFLAGS, 0x80 | 0x20 | 0x10)  # PE, SS32, CS32
    ctx = uc.context_save()
    unicorn_internals.write_context(ctx, blob)
    uc.context_restore(ctx)
    before = bytes(uc.context_save())
    seen: list[int] = []

    def on_interrupt(engine: Any, number: int, _: object) -> None:
        seen.append(number)
        engine.emu_stop()

    uc.hook_add(unicorn.UC_HOOK_INTR, on_interrupt)
    uc.emu_start(0x1000, 0, 0, 1)
    if seen != [13]:
        raise LayoutError(f"a far jump beyond the GDT limit raised {seen}, not #GP (13)")
    after = bytes(uc.context_save())
    codes = [o for o in _offsets(after, 0x1230, "<i") if struct.unpack_from("<i", before, o)[0] != 0x1230]
    sticky = [o for o in _offsets(after, 13, "<i") if struct.unpack_from("<i", before, o)[0] == -1 and o > env + _CR]
    if len(codes) != 1 or len(sticky) != 1:
        raise LayoutError(f"error code / old_exception not found (candidates {codes}, {sticky})")
    # A software interrupt: QEMU marks it (exception_is_int) and keeps the return address next to the error code.
    uc.mem_write(0x1800, b"\xcd\x30")  # int 0x30
    uc.reg_write(x.UC_X86_REG_RIP, 0x1800)
    uc.emu_start(0x1800, 0, 0, 1)
    is_int, next_eip = struct.unpack_from("<iQ", bytes(uc.context_save()), codes[0] + 4)
    if seen[-1] != 0x30 or (is_int, next_eip) != (1, 0x1802):
        raise LayoutError(f"int 0x30 left is_int={is_int}, next_eip={next_eip:#x} beside the error code")
    return codes[0], sticky[0]


_CR4_OSXSAVE, _CR4_PKE = 1 << 18, 1 << 22
_PKRU_MARK = 0x5AC3A53C  # access/write-disable bits of a pattern no other field holds

_CALIBRATION_VMCB = 0x7E5D3000  # a guest-physical address no other field of the calibration run holds
_CALIBRATION_MARK = 0x3C5AA50000000000  # intercept bits of exit codes no instruction of the run can raise


def _intercept_fields(env: int, efer: int, error_code: int) -> tuple[int, int, int]:
    """Find ``vm_vmcb`` and ``intercept`` from a VMRUN, and check the intercepts the simulator relies on.

    The VMCB intercepts RDTSC, IRET and (through an all-ones permission bitmap) every MSR; the
    guest it starts runs ``rdtsc; rdmsr; wrmsr; iret; hlt``. Each of the four must reach the
    interrupt hook as ``EXCP_VMEXIT`` + its exit code, with RIP still at the instruction and
    exit_info_1 (0 read, 1 write) as the error code, and the run must go on once the hook moves
    RIP past it (:mod:`hvcore_sim.msrs`, :mod:`hvcore_sim.resume`).
    """
    import unicorn
    from unicorn import x86_const as x

    uc = _engine()
    uc.ctl_exits_enabled(True)
    low = bytearray(0x10000)  # code at 0x1000 / 0x2000, host save area, MSR bitmap
    vmcb = bytearray(0x1000)
    low[0x1000:0x1003] = b"\x0f\x01\xd8"  # vmrun
    code = b"\x0f\x31\x0f\x32\x0f\x30\xcf\xf4"  # rdtsc; rdmsr; wrmsr; iret; hlt
    low[0x2000 : 0x2000 + len(code)] = code
    low[0x8000:0xA000] = b"\xff" * 0x2000
    bits = sum(1 << (code - SVM_INTERCEPT_BASE) for code in (SVM_EXIT_RDTSC, SVM_EXIT_IRET, SVM_EXIT_MSR))
    struct.pack_into("<Q", vmcb, _VMCB_INTERCEPT, _CALIBRATION_MARK | bits)
    struct.pack_into("<HH", vmcb, _VMCB_INTERCEPT_CR, _CR_READ_MARK, _CR_WRITE_MARK)
    struct.pack_into("<Q", vmcb, VMCB_MSRPM, 0x8000)
    code32, data32 = 0xC9B, 0xC93  # VMCB segment attributes (G, D, P, S, type): flat 32-bit code and data
    for i, attrib in enumerate((data32, code32, data32, data32)):  # ES, CS, SS, DS
        struct.pack_into("<HHIQ", vmcb, _VMCB_SAVE + 16 * i, 0x8 if i == 1 else 0x10, attrib, 0xFFFFFFFF, 0)
    for offset, value in ((0xD0, 1 << 12), (0x158, 0x11), (0x170, 0x2), (0x178, 0x2000), (0x1D8, 0x3000)):
        struct.pack_into("<Q", vmcb, _VMCB_SAVE + offset, value)  # EFER.SVME, CR0, RFLAGS, RIP, RSP
    uc.mem_map(0, len(low), unicorn.UC_PROT_ALL)
    uc.mem_write(0, bytes(low))
    uc.mem_map(_CALIBRATION_VMCB, len(vmcb), unicorn.UC_PROT_ALL)
    uc.mem_write(_CALIBRATION_VMCB, bytes(vmcb))
    uc.reg_write(x.UC_X86_REG_MSR, (0xC0010117, 0x6000))  # VM_HSAVE_PA: where VMRUN saves the host
    uc.reg_write(x.UC_X86_REG_RCX, 0x174)
    uc.reg_write(x.UC_X86_REG_RAX, _CALIBRATION_VMCB)
    blob = bytearray(bytes(uc.context_save()))
    flat32 = (0xB << 8) | (1 << 12) | (1 << 15) | (1 << 22) | (1 << 23)
    for i in range(6):
        struct.pack_into("<IxxxxQII", blob, env + _SEGS + _SEGMENT_CACHE * i, 0x8, 0, 0xFFFFFFFF, flat32)
    struct.pack_into("<Q", blob, env + _CR, 0x11)  # CR0.PE
    struct.pack_into("<Q", blob, efer, 1 << 12)  # EFER.SVME: VMRUN is allowed
    struct.pack_into("<I", blob, env + _HFLAGS, 0x80 | 0x20 | 0x10 | (1 << 20))  # PE, SS32, CS32, SVME
    ctx = uc.context_save()
    unicorn_internals.write_context(ctx, blob)
    uc.context_restore(ctx)
    seen: list[tuple[int, int, int]] = []
    snapshot: list[bytes] = []

    def on_interrupt(engine: Any, number: int, _: object) -> None:
        now = bytes(engine.context_save())
        snapshot.append(now)
        rip = engine.reg_read(x.UC_X86_REG_RIP)
        seen.append((number, rip, struct.unpack_from("<i", now, error_code)[0]))
        engine.reg_write(x.UC_X86_REG_RIP, rip + (1 if number == EXCP_VMEXIT + SVM_EXIT_IRET else 2))

    uc.hook_add(unicorn.UC_HOOK_INTR, on_interrupt)
    uc.emu_start(0x1000, 0, 0, 10)
    expected = [
        (EXCP_VMEXIT + SVM_EXIT_RDTSC, 0x2000, 0),
        (EXCP_VMEXIT + SVM_EXIT_MSR, 0x2002, 0),
        (EXCP_VMEXIT + SVM_EXIT_MSR, 0x2004, 1),
        (EXCP_VMEXIT + SVM_EXIT_IRET, 0x2006, 0),
    ]
    if seen != expected or uc.reg_read(x.UC_X86_REG_RIP) != 0x2008:
        raise LayoutError(f"intercepted rdtsc/rdmsr/wrmsr/iret after VMRUN gave {seen}, not {expected}")
    guest = snapshot[0]
    if not struct.unpack_from("<I", guest, env + _HFLAGS)[0] & HF_GUEST:
        raise LayoutError(f"VMRUN did not set HF_GUEST ({HF_GUEST:#x}) in hflags")
    vm_vmcb = _one(guest, _CALIBRATION_VMCB, "<Q", "vm_vmcb")
    intercept = _one(guest, _CALIBRATION_MARK | bits, "<Q", "intercept")
    if not error_code < vm_vmcb < intercept == vm_vmcb + 16:  # vm_vmcb, tsc_offset, intercept: QEMU 5.0's order
        raise LayoutError(f"vm_vmcb ({vm_vmcb}) and intercept ({intercept}) are not laid out as in QEMU 5.0")
    if struct.unpack_from("<HH", guest, intercept + 8) != (_CR_READ_MARK, _CR_WRITE_MARK):
        raise LayoutError("intercept_cr_read / intercept_cr_write do not follow intercept as in QEMU 5.0")
    return vm_vmcb, intercept, intercept + 8


def _xsave_fields(env: int) -> tuple[int, int]:
    """Find ``xcr0`` and ``pkru`` from a guest XSETBV and WRPKRU (QEMU 5.0 keeps ``pkru`` after ``xcr0``)."""
    import unicorn
    from unicorn import x86_const as x

    uc = _engine()
    uc.mem_map(0, 0x1000, unicorn.UC_PROT_ALL)
    code = b"\x0f\x01\xd1\x0f\x01\xef"  # xsetbv; wrpkru (ECX = EDX = 0)
    uc.mem_write(0, code)
    uc.ctl_exits_enabled(True)
    uc.reg_write(x.UC_X86_REG_CR4, uc.reg_read(x.UC_X86_REG_CR4) | _CR4_OSXSAVE | _CR4_PKE)
    before = bytes(uc.context_save())
    uc.reg_write(x.UC_X86_REG_RAX, 0x3)
    uc.emu_start(0, 0, 0, 1)
    uc.reg_write(x.UC_X86_REG_RAX, _PKRU_MARK)
    uc.emu_start(3, 0, 0, 1)
    after = bytes(uc.context_save())
    if uc.reg_read(x.UC_X86_REG_RIP) != len(code):
        raise LayoutError("XSETBV / WRPKRU did not run on the calibration engine")
    xcr0 = [o for o in _offsets(after, 0x3, "<Q") if o > env and struct.unpack_from("<Q", before, o)[0] != 0x3]
    pkru = [o for o in _offsets(after, _PKRU_MARK, "<I") if o > env]
    if len(xcr0) != 1 or len(pkru) != 1 or not xcr0[0] < pkru[0] < xcr0[0] + 0x400:
        raise LayoutError(f"xcr0 / pkru not found (candidates {xcr0}, {pkru})")
    return xcr0[0], pkru[0]
