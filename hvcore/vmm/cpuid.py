"""The CPUID a machine gives each vCPU: the hypervisor's supported CPUID, with the vCPU's own APIC ID.

KVM reports leaf 1's initial APIC ID (EBX bits 31-24) and the x2APIC ID of leaves 0xB and 0x1F
(EDX) as 0, and leaves them to the VMM, which knows each vCPU's (QEMU fills them in the same way).
A guest that finds vCPU 1 calling itself APIC 0 complains ("[Firmware Bug]: CPU1: APIC id
mismatch") and may number its CPUs wrongly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from hvcore.types import CpuidEntry

__all__ = ["vcpu_cpuid"]

_TOPOLOGY_LEAVES = (0xB, 0x1F)


def vcpu_cpuid(entries: Iterable[CpuidEntry], apic_id: int) -> list[CpuidEntry]:
    """``entries`` with ``apic_id`` in leaf 1 (EBX 31-24, its low 8 bits) and in every subleaf of 0xB and 0x1F (EDX)."""

    def own(entry: CpuidEntry) -> CpuidEntry:
        if entry.function == 1:
            return replace(entry, ebx=entry.ebx & 0x00FF_FFFF | (apic_id & 0xFF) << 24)
        if entry.function in _TOPOLOGY_LEAVES:
            return replace(entry, edx=apic_id)
        return entry

    return [own(entry) for entry in entries]
