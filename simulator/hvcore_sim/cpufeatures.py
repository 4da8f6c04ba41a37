"""KVM's rules that follow the vCPU's CPUID features: runtime CPUID bits, valid XCR0 and CR4, XSAVE sizes.

- **Supported CPUID** (:func:`as_kvm_reports`): KVM's ``KVM_GET_SUPPORTED_CPUID`` lists OSXSAVE and
  OSPKE clear (they follow the guest's CR4), and in leaf 0xD only the XSAVE components it can give
  a guest, with their sizes; the simulator's are the ones its engine executes
  (:data:`hvcore_sim.cpumodel.EXECUTABLE_XCR0`). It adds what the engine executes whatever its
  model says: SSE4A and PREFETCHW, which QEMU 5.0 decodes without looking at CPUID; and UMIP,
  which the simulator emulates as KVM does on hosts without it (:mod:`hvcore_sim.umip`).
- **Runtime CPUID** (:func:`runtime`): as ``kvm_update_cpuid_runtime``, CPUID.1:ECX.OSXSAVE is
  CR4.OSXSAVE, CPUID.1:EDX.APIC is IA32_APIC_BASE's enable bit, CPUID.7.0:ECX.OSPKE is CR4.PKE and
  CPUID.0xD.0:EBX the size of the XSAVE area for the current XCR0. KVM rewrites its entries when
  those change; computing them from the current state whenever CPUID is read gives the same values.
- **XCR0** (:func:`xcr0_error`): ``__kvm_set_xcr``: x87 always, AVX needs SSE, and no component
  outside the vCPU's CPUID leaf 0xD (``guest_supported_xcr0``).
- **CR4** (:func:`cr4_error`): ``kvm_set_cr4``: a bit is reserved unless both the simulator and the
  vCPU's CPUID have its feature (``__cr4_reserved_bits``); in long mode PAE stays set and LA57 does
  not change; PCIDE is set only in long mode with CR3[11:0] = 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Final

from hvcore.types import CpuidEntry
from hvcore_sim.cpumodel import EXECUTABLE_XCR0

__all__ = [
    "CR4_OSXSAVE",
    "CR4_PKE",
    "RUNTIME_LEAVES",
    "as_kvm_reports",
    "cr4_error",
    "cr4_reserved",
    "guest_supported_xcr0",
    "runtime",
    "xcr0_error",
    "xsave_size",
]

CR4_OSXSAVE: Final = 1 << 18
CR4_PKE: Final = 1 << 22
_CR4_PAE, _CR4_LA57, _CR4_PCIDE = 1 << 5, 1 << 12, 1 << 17
RUNTIME_LEAVES: Final = frozenset({1, 7, 0xD})
"""The CPUID leaves :func:`runtime` changes."""
_OSXSAVE: Final = 1 << 27  # CPUID.1:ECX
_APIC: Final = 1 << 9  # CPUID.1:EDX
_OSPKE: Final = 1 << 4  # CPUID.7.0:ECX
_APIC_ENABLE: Final = 1 << 11
_LEGACY_AREA: Final = 512 + 64  # the FXSAVE region and the XSAVE header
_XCR0_SSE, _XCR0_AVX = 1 << 1, 1 << 2
_UNGATED_80000001_ECX: Final = 1 << 6 | 1 << 8  # SSE4A, PREFETCHW (3DNowPrefetch)
_UMIP: Final = 1 << 2  # CPUID.7.0:ECX: emulated as KVM does without it (hvcore_sim.umip)

# CR4 bits KVM ever lets a guest set (CR4_RESERVED_BITS' complement), and those that need a CPUID feature
_CR4_KNOWN: Final = 0x7FF | 1 << 11 | _CR4_LA57 | 1 << 13 | 1 << 16 | _CR4_PCIDE | CR4_OSXSAVE | 7 << 20 | 1 << 28
_CR4_FEATURES: Final = (
    (CR4_OSXSAVE, 1, 0, "ecx", 26),  # XSAVE
    (1 << 20, 7, 0, "ebx", 7),  # SMEP
    (1 << 21, 7, 0, "ebx", 20),  # SMAP
    (1 << 16, 7, 0, "ebx", 0),  # FSGSBASE
    (CR4_PKE, 7, 0, "ecx", 3),  # PKU
    (_CR4_LA57, 7, 0, "ecx", 16),  # LA57
    (1 << 11, 7, 0, "ecx", 2),  # UMIP
    (1 << 13, 1, 0, "ecx", 5),  # VMX
    (_CR4_PCIDE, 1, 0, "ecx", 17),  # PCID
    (1 << 28, 7, 1, "eax", 26),  # LAM
)


def _entry(entries: Iterable[CpuidEntry], function: int, index: int = 0) -> CpuidEntry | None:
    """The entry CPUID (function, index) returns, by KVM's lookup (the index counts only where flagged)."""
    return next((e for e in entries if e.function == function and (not e.flags & 1 or e.index == index)), None)


def _has(entries: Iterable[CpuidEntry], function: int, index: int, register: str, bit: int) -> bool:
    entry = _entry(entries, function, index)
    return entry is not None and bool(getattr(entry, register) >> bit & 1)


def xsave_size(xcr0: int, supported: Sequence[CpuidEntry]) -> int:
    """Bytes of a standard-format XSAVE area holding the components of ``xcr0`` (``xstate_required_size``)."""
    size = _LEGACY_AREA
    for component in range(2, 64):
        if xcr0 >> component & 1:
            entry = _entry(supported, 0xD, component)
            if entry is not None:
                size = max(size, entry.ebx + entry.eax)  # offset + size
    return size


def as_kvm_reports(entries: Sequence[CpuidEntry]) -> tuple[CpuidEntry, ...]:
    """The engine's CPUID as KVM reports a host's: OSXSAVE and OSPKE clear, leaf 0xD for the state it executes."""
    allowed = EXECUTABLE_XCR0 & _xcr0_listed(entries)
    size = xsave_size(allowed, entries)

    def reported(e: CpuidEntry) -> CpuidEntry:
        if e.function == 1:
            return dataclasses.replace(e, ecx=e.ecx & ~_OSXSAVE)
        if e.function == 7 and e.index == 0:
            return dataclasses.replace(e, ecx=e.ecx & ~_OSPKE | _UMIP)
        if e.function == 0xD and e.index == 0:
            return dataclasses.replace(e, eax=allowed & 0xFFFFFFFF, ebx=size, ecx=size, edx=allowed >> 32)
        if e.function == 0xD and e.index == 1:
            return dataclasses.replace(e, ebx=0, ecx=0, edx=0)  # no XSAVES / XSAVEC: no supervisor state
        if e.function == 0x80000001:
            return dataclasses.replace(e, ecx=e.ecx | _UNGATED_80000001_ECX)
        return e

    return tuple(reported(e) for e in entries if e.function != 0xD or e.index < 2 or allowed >> e.index & 1)


def _xcr0_listed(entries: Iterable[CpuidEntry]) -> int:
    entry = _entry(entries, 0xD, 0)
    return 0 if entry is None else entry.eax | entry.edx << 32


def guest_supported_xcr0(cpuid: Iterable[CpuidEntry]) -> int:
    """The XCR0 components the vCPU's CPUID lets its guest enable (KVM's ``guest_supported_xcr0``)."""
    return _xcr0_listed(cpuid) & EXECUTABLE_XCR0


def xcr0_error(value: int, cpuid: Iterable[CpuidEntry]) -> str | None:
    """Why KVM refuses ``value`` for XCR0 on a vCPU with ``cpuid`` (``__kvm_set_xcr``); None if it takes it."""
    if not value & 1:
        return f"XCR0 = {value:#x} clears x87 (bit 0), which must stay set"
    if value & _XCR0_AVX and not value & _XCR0_SSE:
        return f"XCR0 = {value:#x} enables AVX without SSE"
    extra = value & ~(guest_supported_xcr0(cpuid) | 1)
    if extra:
        return f"XCR0 = {value:#x} enables components {extra:#x} that the vCPU's CPUID leaf 0xD does not list"
    return None


def runtime(entries: Sequence[CpuidEntry], *, cr4: int, xcr0: int, apic_base: int) -> tuple[CpuidEntry, ...]:
    """``entries`` with the bits KVM keeps in step with CR4, XCR0 and the APIC base (``kvm_update_cpuid_runtime``)."""
    from hvcore_sim import cpuid

    def flag(value: int, bit: int, on: bool) -> int:
        return value | bit if on else value & ~bit

    def current(e: CpuidEntry) -> CpuidEntry:
        if e.function == 1:
            ecx = flag(e.ecx, _OSXSAVE, bool(cr4 & CR4_OSXSAVE))
            return dataclasses.replace(e, ecx=ecx, edx=flag(e.edx, _APIC, bool(apic_base & _APIC_ENABLE)))
        if e.function == 7 and e.index == 0:
            return dataclasses.replace(e, ecx=flag(e.ecx, _OSPKE, bool(cr4 & CR4_PKE)))
        if e.function == 0xD and e.index == 0:
            return dataclasses.replace(e, ebx=xsave_size(xcr0, cpuid.supported()))
        return e

    return tuple(current(e) for e in entries)


def cr4_reserved(cpuid: Sequence[CpuidEntry]) -> int:
    """CR4 bits the guest may not set: unknown to KVM, or whose feature the simulator or the vCPU's CPUID lacks."""
    from hvcore_sim import cpuid as supported_cpuid

    supported = supported_cpuid.supported()
    reserved = ~_CR4_KNOWN & ((1 << 64) - 1)
    for bit, function, index, register, feature in _CR4_FEATURES:
        if not (
            _has(supported, function, index, register, feature) and _has(cpuid, function, index, register, feature)
        ):
            reserved |= bit
    return reserved


def cr4_error(value: int, *, old: int, long_mode: bool, cr3: int, cpuid: Sequence[CpuidEntry]) -> str | None:
    """Why KVM's ``kvm_set_cr4`` refuses ``value`` (the guest gets #GP); None if it takes it."""
    reserved = value & cr4_reserved(cpuid)
    if reserved:
        return f"CR4 = {value:#x} sets reserved bits {reserved:#x} (features the vCPU's CPUID lacks)"
    if long_mode and not value & _CR4_PAE:
        return "CR4.PAE cleared in long mode"
    if long_mode and (value ^ old) & _CR4_LA57:
        return "CR4.LA57 changed in long mode"
    if value & _CR4_PCIDE and not old & _CR4_PCIDE and (cr3 & 0xFFF or not long_mode):
        return "CR4.PCIDE set outside long mode or with CR3[11:0] != 0"
    return None
