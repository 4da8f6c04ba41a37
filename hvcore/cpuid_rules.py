"""Upstream KVM's rules that depend on CPUID: the vCPU's vendor, and the host's linear-address width.

KVM treats a vCPU as AMD-compatible when its CPUID leaf 0 names ``AuthenticAMD`` or
``HygonGenuine``, and as Intel-compatible otherwise (``GenuineIntel``, ``CentaurHauls``,
``"  Shanghai  "``, any other vendor, no leaf 0): ``guest_cpuid_is_intel_compatible()`` in the
kernel's ``arch/x86/kvm/cpuid.h``. The hypercall instruction a host runs natively is its own
vendor's: VMCALL on VMX, VMMCALL on SVM (``Documentation/virt/kvm/x86/hypercalls.rst``); the
simulator plays the host of the vCPU's vendor. MSRs holding addresses are checked against the host's widest
linear address, 57 bits where KVM's supported CPUID has LA57 and 48 otherwise
(``max_host_virt_addr_bits()``). The guest may use IA32_SPEC_CTRL, IA32_PRED_CMD and
IA32_FLUSH_CMD only with their CPUID features (:data:`SPECULATION_MSR_FEATURES`). The simulator,
the host probes and the tests share these rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Final

from hvcore.types import CpuidEntry

__all__ = [
    "AMD",
    "AMD_COMPATIBLE",
    "INTEL",
    "SPECULATION_MSR_FEATURES",
    "VMCALL",
    "VMMCALL",
    "address_bits",
    "amd_compatible",
    "canonical",
    "is_canonical",
    "native_hypercall",
    "sysenter_esp_eip",
    "without_speculation_msrs",
    "vendor",
    "vendor_leaf",
]

AMD_COMPATIBLE: Final = frozenset({"AuthenticAMD", "HygonGenuine"})
"""Vendors KVM gives AMD's rules; every other vendor (and no CPUID) gets Intel's."""
INTEL: Final = "GenuineIntel"
"""Intel's CPUID vendor string (leaf 0)."""
AMD: Final = "AuthenticAMD"
"""AMD's CPUID vendor string (leaf 0)."""
_MASK64: Final = (1 << 64) - 1
VMCALL: Final = b"\x0f\x01\xc1"
"""Intel's VMCALL: the KVM hypercall a VMX host runs natively."""
VMMCALL: Final = b"\x0f\x01\xd9"
"""AMD's VMMCALL: the KVM hypercall an SVM host runs natively."""
SPECULATION_MSR_FEATURES: Final = {
    (7, "edx"): 1 << 26 | 1 << 28,  # SPEC_CTRL (IBRS and IBPB), FLUSH_L1D
    (0x80000008, "ebx"): 1 << 12 | 1 << 14 | 1 << 15 | 1 << 24,  # AMD_IBPB, AMD_IBRS, AMD_STIBP, AMD_SSBD
    (0x80000021, "eax"): 1 << 27,  # SBPB
}
"""The CPUID bits (leaf, register: mask) that give a guest IA32_SPEC_CTRL (0x48), IA32_PRED_CMD (0x49) or
IA32_FLUSH_CMD (0x10B): ``guest_has_spec_ctrl_msr``, ``guest_has_pred_cmd_msr`` and FLUSH_L1D in KVM.

Without any of them upstream KVM raises #GP on the guest's RDMSR of IA32_SPEC_CTRL and WRMSR of all three.
"""


def vendor(entries: Iterable[CpuidEntry]) -> str | None:
    """The vendor string of CPUID leaf 0 (EBX, EDX, ECX), or None without that leaf."""
    for entry in entries:
        if entry.function == 0:
            return b"".join(r.to_bytes(4, "little") for r in (entry.ebx, entry.edx, entry.ecx)).decode("latin-1")
    return None


def vendor_leaf(name: str, max_leaf: int) -> CpuidEntry:
    """CPUID leaf 0 naming vendor ``name`` (12 characters), with ``max_leaf`` in EAX."""
    raw = name.encode("latin-1")
    if len(raw) != 12:
        raise ValueError(f"a CPUID vendor is 12 characters, not {name!r}")
    ebx, edx, ecx = (int.from_bytes(raw[i : i + 4], "little") for i in (0, 4, 8))
    return CpuidEntry(0, eax=max_leaf, ebx=ebx, ecx=ecx, edx=edx)


def amd_compatible(name: str | None) -> bool:
    """Whether KVM gives a vCPU of vendor ``name`` AMD's rules (None, no CPUID: Intel's)."""
    return name in AMD_COMPATIBLE


def native_hypercall(name: str | None) -> bytes:
    """The hypercall instruction a host of vendor ``name`` runs natively: VMMCALL for AMD-compatible, else VMCALL.

    KVM emulates the other vendor's instruction from the #UD it raises, and patches it into this one.
    """
    return VMMCALL if amd_compatible(name) else VMCALL


def address_bits(supported: Iterable[CpuidEntry]) -> int:
    """The width KVM checks MSR addresses against: 57 if ``supported`` (the host's CPUID) has LA57, else 48."""
    for entry in supported:
        if entry.function == 7 and entry.index == 0:
            return 57 if entry.ecx >> 16 & 1 else 48
    return 48


def canonical(value: int, bits: int) -> int:
    """``value`` made canonical for ``bits``-bit linear addresses (bits 63 to ``bits`` copies of the top one)."""
    low = value & ((1 << bits) - 1)
    return low | (_MASK64 ^ ((1 << bits) - 1)) if low >> (bits - 1) else low


def is_canonical(value: int, bits: int) -> bool:
    """Whether ``value`` is a canonical ``bits``-bit linear address."""
    return canonical(value, bits) == value


def sysenter_esp_eip(value: int, name: str | None, bits: int = 48) -> int:
    """What upstream KVM stores for a write of ``value`` to IA32_SYSENTER_ESP/EIP on a vCPU of vendor ``name``.

    ``__kvm_set_msr`` makes the value canonical (guest WRMSR and KVM_SET_MSRS alike); SVM then
    keeps the upper half only for an Intel-compatible vendor (``svm_set_msr``: ``sysenter_esp_hi``),
    so an AMD-compatible vCPU reads back the low 32 bits. hvcore models this rule on every host;
    VMX keeps all 64 bits, and Intel CPUs raise #GP on a guest's non-canonical write.
    """
    value = canonical(value, bits)
    return value & 0xFFFFFFFF if amd_compatible(name) else value


def without_speculation_msrs(entries: Iterable[CpuidEntry]) -> list[CpuidEntry]:
    """``entries`` with every bit of :data:`SPECULATION_MSR_FEATURES` cleared (subleaf 0 of each leaf)."""

    def cleared(entry: CpuidEntry) -> CpuidEntry:
        key = (entry.function, entry.index)
        masks = {r: m for (leaf, r), m in SPECULATION_MSR_FEATURES.items() if (leaf, 0) == key}
        return replace(entry, **{r: getattr(entry, r) & ~m for r, m in masks.items()})

    return [cleared(entry) for entry in entries]
