"""The simulator's supported CPUID: what the engine's CPU model answers, read once by executing CPUID.

Plus what the simulator itself adds to that CPU, as KVM reports it whatever the host: the LAPIC's
TSC-deadline timer, x2APIC mode, and KVM's paravirtual leaves (``Documentation/virt/kvm/x86/cpuid.rst``):
0x40000000 with the "KVMKVMKVM" signature, and 0x40000001 with the features the simulator implements
(kvmclock, :mod:`hvcore_sim.kvmclock`). The model and what of it the engine executes are
:mod:`hvcore_sim.cpumodel`; what KVM reports of such a CPU (dynamic bits clear, the XSAVE state
it executes) is :func:`hvcore_sim.cpufeatures.as_kvm_reports`.
"""

from __future__ import annotations

import functools

from hvcore.types import CpuidEntry
from hvcore_sim.cpufeatures import as_kvm_reports
from hvcore_sim.cpumodel import cpuid_engine, run_cpuid

__all__ = ["PV_FEATURES", "pv_leaves", "supported"]

_SUBLEAVES = {4: 4, 7: 1, 0xB: 2, 0xD: 10}  # leaves whose subleaf (ECX) matters, and how many to list
_SIGNIFICANT_INDEX = 1
_TSC_DEADLINE = 1 << 24  # CPUID.1:ECX, as KVM reports it
_X2APIC = 1 << 21  # CPUID.1:ECX: KVM emulates x2APIC on every host
KVM_CPUID_SIGNATURE = 0x40000000
KVM_CPUID_FEATURES = 0x40000001
KVM_FEATURE_CLOCKSOURCE = 0  # kvmclock on MSRs 0x11 / 0x12
KVM_FEATURE_NOP_IO_DELAY = 1  # port 0x80 delays are not needed (a hint: nothing to implement)
KVM_FEATURE_CLOCKSOURCE2 = 3  # kvmclock on MSRs 0x4b564d00 / 0x4b564d01
KVM_FEATURE_CLOCKSOURCE_STABLE_BIT = 24  # the guest may trust PVCLOCK_TSC_STABLE_BIT
PV_FEATURES = (
    1 << KVM_FEATURE_CLOCKSOURCE
    | 1 << KVM_FEATURE_NOP_IO_DELAY
    | 1 << KVM_FEATURE_CLOCKSOURCE2
    | 1 << KVM_FEATURE_CLOCKSOURCE_STABLE_BIT
)
"""CPUID.40000001H:EAX: the KVM paravirtual features the simulator implements."""
_KVM_SIGNATURE = b"KVMKVMKVM\0\0\0"


def pv_leaves() -> tuple[CpuidEntry, CpuidEntry]:
    """KVM_CPUID_SIGNATURE (the highest PV leaf, then the signature in EBX, ECX, EDX) and KVM_CPUID_FEATURES."""
    ebx, ecx, edx = (int.from_bytes(_KVM_SIGNATURE[i : i + 4], "little") for i in (0, 4, 8))
    return (
        CpuidEntry(KVM_CPUID_SIGNATURE, eax=KVM_CPUID_FEATURES, ebx=ebx, ecx=ecx, edx=edx),
        CpuidEntry(KVM_CPUID_FEATURES, eax=PV_FEATURES),
    )


@functools.cache
def supported() -> tuple[CpuidEntry, ...]:
    """Every basic and extended leaf up to the maxima Unicorn reports, and KVM's paravirtual leaves between them."""
    uc = cpuid_engine()

    def run(leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        return run_cpuid(uc, leaf, subleaf)

    entries = []
    for base in (0, 0x80000000):
        top = run(base, 0)[0]
        for leaf in range(base, min(top, base + 0x40) + 1):
            for subleaf in range(_SUBLEAVES.get(leaf, 1)):
                eax, ebx, ecx, edx = run(leaf, subleaf)
                if leaf == 1:  # the in-kernel LAPIC's TSC-deadline timer and x2APIC (hvcore_sim/irqchip/lapic.py)
                    ecx |= _TSC_DEADLINE | _X2APIC
                flags = _SIGNIFICANT_INDEX if leaf in _SUBLEAVES else 0
                entries.append(CpuidEntry(leaf, subleaf, flags, eax, ebx, ecx, edx))
        if base == 0:
            entries.extend(pv_leaves())  # where KVM_GET_SUPPORTED_CPUID lists them
    return as_kvm_reports(entries)
