"""vCPU state that is not general-purpose or segment registers: FPU/XSAVE, CPUID, XCR0, debug registers.

MSRs are :mod:`hvcore_sim.msrs`. XCR0 and PKRU live in the engine (the guest's XSETBV and WRPKRU
change them there); the rules for them and for the CPUID bits that follow them are
:mod:`hvcore_sim.cpufeatures`.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Final

from hvcore.checks import check_cpuid
from hvcore.errors import InvalidArgument
from hvcore.types import CpuidEntry, DebugRegs, Fpu, Xsave
from hvcore_sim import cpufeatures, validity
from hvcore_sim.cpumodel import XCR0_PKRU

if TYPE_CHECKING:
    from hvcore_sim.engine import Engine

__all__ = ["VcpuState"]

_FXSAVE: Final = struct.Struct("<HHBxHQQII")  # fcw, fsw, ftw (abridged), fop, fip, fdp, mxcsr, mxcsr_mask
_XSTATE_BV: Final = 512
_PKRU_OFFSET: Final = 0xA80  # the PKRU component in the standard-format area (CPUID.0xD.9:EBX)
_X87, _SSE, _YMM = 1, 2, 4
_FCW_INIT, _MXCSR_INIT = 0x37F, 0x1F80
_ZERO_FPR, _ZERO_XMM = bytes(10), bytes(16)


def _in_use(fpu: Fpu) -> int:
    """The x87 and SSE bits of XSTATE_BV an XSAVES of this state gives: components not in their init state.

    MXCSR counts with SSE, so a VMM that reads the area and writes it back keeps it (KVM copies
    MXCSR only with the SSE or AVX bit).
    """
    x87 = fpu.fcw != _FCW_INIT or fpu.fsw or fpu.ftwx or fpu.last_opcode or any(r[:10] != _ZERO_FPR for r in fpu.fpr)
    sse = fpu.mxcsr != _MXCSR_INIT or any(x != _ZERO_XMM for x in fpu.xmm)
    return (_X87 if x87 else 0) | (_SSE if sse else 0)


def _regs() -> tuple[int, int, int, int, int, tuple[int, ...], tuple[int, ...]]:
    from unicorn import x86_const as x

    return (
        x.UC_X86_REG_FPCW,
        x.UC_X86_REG_FPSW,
        x.UC_X86_REG_FPTAG,
        x.UC_X86_REG_FOP,
        x.UC_X86_REG_MXCSR,
        tuple(getattr(x, f"UC_X86_REG_FP{i}") for i in range(8)),
        tuple(getattr(x, f"UC_X86_REG_XMM{i}") for i in range(16)),
    )


_FPCW, _FPSW, _FPTAG, _FOP, _MXCSR, _FP, _XMM = _regs()


def _abridged_tag(full: int) -> int:
    """FXSAVE's 8-bit tag (1 = valid) from the 16-bit x87 tag word (11 = empty)."""
    return sum(1 << i for i in range(8) if (full >> (2 * i)) & 3 != 3)


def _full_tag(abridged: int) -> int:
    return sum(3 << (2 * i) for i in range(8) if not abridged >> i & 1)


@dataclass
class VcpuState:
    """FPU/SSE access through Unicorn's registers, and the state the simulator keeps itself."""

    cpuid: list[CpuidEntry] = field(default_factory=list)
    debugregs: DebugRegs = field(default_factory=DebugRegs)
    apic_base: int = 0xFEE00900
    xfeatures: int = 0
    """The x87 and SSE bits of the XSTATE_BV ``set_xsave`` last loaded: KVM reports them until the guest runs."""

    def reset_fpu(self, engine: Engine) -> None:
        """A new vCPU's FPU, as KVM allocates it (``fpstate_init_fxstate``): FCW 0x37F, MXCSR 0x1F80, the rest 0."""
        self.set_fpu(engine, Fpu(fcw=_FCW_INIT, mxcsr=_MXCSR_INIT))

    def get_fpu(self, engine: Engine) -> Fpu:
        """x87 and SSE registers."""
        read = engine.uc.reg_read
        fpr = []
        for reg in _FP:
            mantissa, exponent = read(reg)
            fpr.append(mantissa.to_bytes(8, "little") + exponent.to_bytes(2, "little") + bytes(6))
        return Fpu(
            fpr=tuple(fpr),
            fcw=read(_FPCW),
            fsw=read(_FPSW),
            ftwx=_abridged_tag(read(_FPTAG)),
            last_opcode=read(_FOP),
            xmm=tuple(read(reg).to_bytes(16, "little") for reg in _XMM),
            mxcsr=read(_MXCSR),
        )

    def set_fpu(self, engine: Engine, fpu: Fpu) -> None:
        """Load x87 and SSE registers."""
        write = engine.uc.reg_write
        for reg, raw in zip(_FP, fpu.fpr, strict=False):
            write(reg, (int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:10], "little")))
        for reg, raw in zip(_XMM, fpu.xmm, strict=False):
            write(reg, int.from_bytes(raw, "little"))
        write(_FPCW, fpu.fcw)
        write(_FPSW, fpu.fsw)
        write(_FPTAG, _full_tag(fpu.ftwx))
        write(_MXCSR, fpu.mxcsr)

    def get_xsave(self, engine: Engine) -> Xsave:
        """The legacy FXSAVE region, the XSAVE header, and PKRU where the vCPU's CPUID lists it (as KVM).

        XSTATE_BV has x87 and SSE where they are not in their init state or ``set_xsave`` gave them
        (0 on a new vCPU, as KVM's ``fpu_alloc_guest_fpstate``); MXCSR_MASK is the simulated
        CPU's (:data:`hvcore_sim.validity.MXCSR_MASK`).
        """
        fpu = self.get_fpu(engine)
        region = bytearray(4096)
        _FXSAVE.pack_into(region, 0, fpu.fcw, fpu.fsw, fpu.ftwx, fpu.last_opcode, 0, 0, fpu.mxcsr, validity.MXCSR_MASK)
        for i, raw in enumerate(fpu.fpr):
            region[32 + 16 * i : 48 + 16 * i] = raw
        for i, raw in enumerate(fpu.xmm):
            region[160 + 16 * i : 176 + 16 * i] = raw
        xstate_bv = self.xfeatures | _in_use(fpu)
        if cpufeatures.guest_supported_xcr0(self.cpuid) & XCR0_PKRU:
            xstate_bv |= XCR0_PKRU
            struct.pack_into("<I", region, _PKRU_OFFSET, engine.pkru())
        struct.pack_into("<Q", region, _XSTATE_BV, xstate_bv)
        return Xsave(bytes(region))

    def set_xsave(self, engine: Engine, xsave: Xsave) -> None:
        """Load the components an XSAVE area carries (per XSTATE_BV); the others in their init state, as KVM.

        KVM keeps the header, and the guest's next entry (XRSTORS) initialises every component whose
        XSTATE_BV bit is clear: x87 to FCW 0x37F and zeros, the XMM registers to 0, MXCSR (without
        SSE and AVX) to 0x1F80, PKRU to 0.

        The area is refused as KVM refuses it (:func:`hvcore_sim.validity.check_xsave`).
        """
        region = xsave.region
        validity.check_xsave(region, self.cpuid)
        fcw, fsw, ftw, fop, _, _, mxcsr, _ = _FXSAVE.unpack_from(region, 0)
        xstate_bv = struct.unpack_from("<Q", region, _XSTATE_BV)[0]
        engine.set_pkru(struct.unpack_from("<I", region, _PKRU_OFFSET)[0] if xstate_bv & XCR0_PKRU else 0)
        fpu = Fpu(fcw=_FCW_INIT, mxcsr=mxcsr if xstate_bv & (_SSE | _YMM) else _MXCSR_INIT)
        if xstate_bv & _X87:
            fpr = tuple(region[32 + 16 * i : 48 + 16 * i] for i in range(8))
            fpu = replace(fpu, fpr=fpr, fcw=fcw, fsw=fsw, ftwx=ftw, last_opcode=fop)
        if xstate_bv & _SSE:
            fpu = replace(fpu, xmm=tuple(region[160 + 16 * i : 176 + 16 * i] for i in range(16)))
        self.set_fpu(engine, fpu)
        self.xfeatures = xstate_bv & (_X87 | _SSE)

    def set_xcrs(self, engine: Engine, xcrs: Mapping[int, int]) -> None:
        """XCR0, with KVM's checks against the vCPU's CPUID (``__kvm_set_xcr``); as KVM, other XCRs are ignored."""
        if 0 in xcrs:
            error = cpufeatures.xcr0_error(xcrs[0], self.cpuid)
            if error is not None:
                raise InvalidArgument(error, operation="set_xcrs")
            engine.set_xcr0(xcrs[0])

    def set_cpuid(self, engine: Engine, entries: list[CpuidEntry], *, has_run: bool = False) -> None:
        """Keep what CPUID returns; the guest's XSETBV may enable only the XSAVE components it lists.

        Once the vCPU has run (``has_run``), KVM takes only the entries it has, the bits it owns
        (OSXSAVE, APIC, the XSAVE size...) aside (``kvm_cpuid_check_equal``): else EINVAL.
        """
        wanted = check_cpuid(entries)
        validity.check_cpuid(wanted)
        if has_run and self._runtime(wanted, engine) != self.current_cpuid(engine):
            raise InvalidArgument(
                "this vCPU has run, and KVM then takes only the CPUID it has (kvm_cpuid_check_equal: the same "
                "entries in the same order); set the CPUID before the first run",
                operation="set_cpuid",
            )
        self.cpuid = wanted
        self.limit_xcr0(engine)

    def limit_xcr0(self, engine: Engine) -> None:
        """Hold ``engine``'s XSETBV to the components the vCPU's CPUID lists (also for each new engine)."""
        engine.limit_xcr0(cpufeatures.guest_supported_xcr0(self.cpuid))

    def current_cpuid(self, engine: Engine) -> tuple[CpuidEntry, ...]:
        """The entries as the guest sees them now: OSXSAVE, OSPKE, APIC and the XSAVE size follow the state."""
        return self._runtime(self.cpuid, engine)

    def _runtime(self, entries: Sequence[CpuidEntry], engine: Engine) -> tuple[CpuidEntry, ...]:
        cr4 = engine.view().paging.cr4
        return cpufeatures.runtime(entries, cr4=cr4, xcr0=engine.xcr0(), apic_base=self.apic_base)

    def serve_cpuid(self, engine: Engine) -> None:
        """Answer a guest CPUID from the entries the VMM set (zeros for a leaf it did not set, as KVM)."""
        from unicorn import x86_const as x

        read, write = engine.uc.reg_read, engine.uc.reg_write
        leaf, subleaf = read(x.UC_X86_REG_EAX) & 0xFFFFFFFF, read(x.UC_X86_REG_ECX) & 0xFFFFFFFF
        found = next(
            (e for e in self.cpuid if e.function == leaf and (not e.flags & 1 or e.index == subleaf)),
            None,
        )
        if found is not None and found.function in cpufeatures.RUNTIME_LEAVES:
            found = self._runtime((found,), engine)[0]
        values = (found.eax, found.ebx, found.ecx, found.edx) if found else (0, 0, 0, 0)
        for reg, value in zip(
            (x.UC_X86_REG_RAX, x.UC_X86_REG_RBX, x.UC_X86_REG_RCX, x.UC_X86_REG_RDX), values, strict=True
        ):
            write(reg, value)
