"""What KVM's state ioctls refuse with EINVAL for the meaning of a value, so the simulator refuses the same.

Values that do not fit their KVM struct member are refused before any backend sees them
(:mod:`hvcore.state_checks`); these are upstream KVM's own rules (``arch/x86/kvm/x86.c``) for
values of the right width:

- ``KVM_SET_SREGS`` (``kvm_is_valid_sregs``): with EFER.LME and CR0.PG (long mode) CR4.PAE and
  EFER.LMA must be set and CR3 must hold a legal physical address (no bit at or above the vCPU's
  MAXPHYADDR); otherwise EFER.LMA and CS.L must be clear. CR4 may not set a reserved bit
  (``kvm_is_valid_cr4``: bits KVM does not know, and feature bits the vCPU's CPUID lacks,
  :func:`hvcore_sim.cpufeatures.cr4_reserved`). CR0 (``kvm_is_valid_cr0``) has no bit above 31,
  no NW without CD and no PG without PE. EFER itself is not checked there.
- ``KVM_SET_VCPU_EVENTS``: only the ``KVM_VCPUEVENT_VALID_*`` flags; PAYLOAD and TRIPLE_FAULT only
  once their capability is enabled (the simulator enables neither); an injected exception
  (or, with a payload, a pending one) must be an exception vector, 0-31 but not 2 (NMI). The
  simulator has SMM, so the SMM part is taken (the vCPU refuses SMM for a vCPU waiting for SIPI).
- ``KVM_SET_DEBUGREGS``: ``flags`` must be 0, DR6 and DR7 have no bit above 31.
- ``KVM_SET_XSAVE`` (``copy_uabi_to_xstate``): XSTATE_BV only components the vCPU's CPUID lists
  (x87 and SSE always), XCOMP_BV 0 (the standard format), the header's reserved bytes 0, and
  with x87, SSE or AVX state no MXCSR bit outside :data:`MXCSR_MASK`.
- ``KVM_SET_CPUID2`` (``kvm_check_cpuid``): CPUID.80000008H:EAX[15:8] (linear-address width) is
  48, 57 or 0.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Final

from hvcore.errors import InvalidArgument
from hvcore.types import CpuidEntry, DebugRegs, Sregs, VcpuEvents
from hvcore_sim import cpufeatures

__all__ = [
    "MXCSR_MASK",
    "check_cpuid",
    "check_debugregs",
    "check_sregs",
    "check_vcpu_events",
    "check_xsave",
]

MXCSR_MASK: Final = 0xFFFF
"""The MXCSR bits the simulated CPU has (its FXSAVE MXCSR_MASK); the others are reserved."""

_CR0_PE, _CR0_NW, _CR0_CD, _CR0_PG = 1, 1 << 29, 1 << 30, 1 << 31
_CR4_PAE = 1 << 5
_EFER_LME, _EFER_LMA = 1 << 8, 1 << 10
_NMI_PENDING, _SIPI_VECTOR, _SHADOW, _SMM, _PAYLOAD, _TRIPLE_FAULT = 1, 2, 4, 8, 0x10, 0x20
_VALID_EVENT_FLAGS: Final = _NMI_PENDING | _SIPI_VECTOR | _SHADOW | _SMM | _PAYLOAD | _TRIPLE_FAULT
_NMI_VECTOR = 2
_XSTATE_BV, _XCOMP_BV, _HEADER_RESERVED, _HEADER_END = 512, 520, 528, 576
_MXCSR = 24
_XFEATURES_WITH_MXCSR = 0x7  # x87, SSE, AVX


def check_sregs(sregs: Sregs, cpuid: Sequence[CpuidEntry], maxphyaddr: int) -> None:
    """``kvm_is_valid_sregs`` for a vCPU with ``cpuid`` (MAXPHYADDR ``maxphyaddr``)."""
    cr0, cr4, efer = sregs.cr0, sregs.cr4, sregs.efer
    if efer & _EFER_LME and cr0 & _CR0_PG:
        if not cr4 & _CR4_PAE or not efer & _EFER_LMA:
            _refuse(f"long mode (EFER.LME and CR0.PG) needs CR4.PAE and EFER.LMA: cr4 = {cr4:#x}, efer = {efer:#x}")
        if sregs.cr3 >> maxphyaddr:
            _refuse(f"cr3 = {sregs.cr3:#x} sets bits at or above the vCPU's MAXPHYADDR ({maxphyaddr})")
    elif efer & _EFER_LMA or sregs.cs.l:
        _refuse(
            f"outside long mode (efer = {efer:#x}, cr0 = {cr0:#x}) EFER.LMA and CS.L must be clear; "
            "for long mode set EFER.LME | EFER.LMA, CR0.PG | CR0.PE and CR4.PAE together"
        )
    reserved = cr4 & cpufeatures.cr4_reserved(cpuid)
    if reserved:
        _refuse(f"cr4 = {cr4:#x} sets bits {reserved:#x} that are reserved for this vCPU's CPUID")
    if cr0 >> 32:
        _refuse(f"cr0 = {cr0:#x} sets bits above 31")
    if cr0 & _CR0_NW and not cr0 & _CR0_CD:
        _refuse(f"cr0 = {cr0:#x} sets NW (bit 29) without CD (bit 30)")
    if cr0 & _CR0_PG and not cr0 & _CR0_PE:
        _refuse(f"cr0 = {cr0:#x} sets PG (bit 31) without PE (bit 0)")


def check_vcpu_events(events: VcpuEvents) -> None:
    """``kvm_vcpu_ioctl_x86_set_vcpu_events``'s checks that need no vCPU, with no capability enabled."""
    flags = events.flags
    if flags & ~_VALID_EVENT_FLAGS:
        _refuse(
            f"flags = {flags:#x} sets bits {flags & ~_VALID_EVENT_FLAGS:#x} that are no KVM_VCPUEVENT_VALID_*", "events"
        )
    if flags & _PAYLOAD:
        _refuse("KVM_VCPUEVENT_VALID_PAYLOAD needs KVM_CAP_EXCEPTION_PAYLOAD enabled, which it is not", "events")
    if flags & _TRIPLE_FAULT:
        _refuse(
            "KVM_VCPUEVENT_VALID_TRIPLE_FAULT needs KVM_CAP_X86_TRIPLE_FAULT_EVENT enabled, which it is not", "events"
        )
    nr = events.exception_nr
    if events.exception_injected and (nr > 31 or nr == _NMI_VECTOR):
        _refuse(f"exception_nr = {nr} is not an exception vector (0-31, not 2: inject an NMI as nmi_pending)", "events")


def check_debugregs(debugregs: DebugRegs) -> None:
    """``kvm_vcpu_ioctl_x86_set_debugregs``: no flags, DR6 and DR7 32-bit."""
    if debugregs.flags:
        _refuse(f"flags = {debugregs.flags:#x}: no flags are defined", "debugregs")
    for name, value in (("dr6", debugregs.dr6), ("dr7", debugregs.dr7)):
        if value >> 32:
            _refuse(f"{name} = {value:#x} sets bits above 31, which are reserved", "debugregs")


def check_xsave(region: bytes, cpuid: Sequence[CpuidEntry]) -> None:
    """``copy_uabi_to_xstate``'s checks of the header and MXCSR, for a vCPU with ``cpuid``."""
    xstate_bv, xcomp_bv = struct.unpack_from("<QQ", region, _XSTATE_BV)
    extra = xstate_bv & ~(cpufeatures.guest_supported_xcr0(cpuid) | 0x3)
    if extra:
        _refuse(f"XSTATE_BV {xstate_bv:#x} holds components {extra:#x} the vCPU's CPUID does not list", "xsave")
    if xcomp_bv:
        _refuse(f"XCOMP_BV = {xcomp_bv:#x}: the area must be in the standard (uncompacted) format, XCOMP_BV 0", "xsave")
    if any(region[_HEADER_RESERVED:_HEADER_END]):
        _refuse("the XSAVE header's reserved bytes (offsets 528-575) must be 0", "xsave")
    mxcsr = struct.unpack_from("<I", region, _MXCSR)[0]
    if xstate_bv & _XFEATURES_WITH_MXCSR and mxcsr & ~MXCSR_MASK:
        _refuse(f"MXCSR = {mxcsr:#x} sets reserved bits {mxcsr & ~MXCSR_MASK:#x}", "xsave")


def check_cpuid(entries: Iterable[CpuidEntry]) -> None:
    """``kvm_check_cpuid``: the linear-address width in CPUID.80000008H is 48, 57 or 0."""
    entry = next((e for e in entries if e.function == 0x80000008 and (not e.flags & 1 or e.index == 0)), None)
    if entry is not None and (entry.eax >> 8 & 0xFF) not in (0, 48, 57):
        _refuse(
            f"CPUID.80000008H:EAX = {entry.eax:#x} gives {entry.eax >> 8 & 0xFF}-bit linear addresses; "
            "KVM takes 48 or 57 (or 0)",
            "cpuid",
        )


def _refuse(message: str, what: str = "sregs") -> None:
    raise InvalidArgument(message, operation=f"set_{what}")
