"""Probes for KVM's rules that follow the vCPU's CPUID: CR4 bits, XCR0 components, CPUID itself.

Upstream KVM refuses a CR4 bit whose feature the vCPU's CPUID lacks (``kvm_set_cr4`` /
``kvm_is_valid_sregs``: ``__cr4_reserved_bits`` on the guest's CPUID) and an XCR0 component
its CPUID leaf 0xD does not list (``__kvm_set_xcr``: ``guest_supported_xcr0``): #GP(0) for the
guest's MOV to CR4 or XSETBV, EINVAL from ``KVM_SET_SREGS`` / ``KVM_SET_XCRS``. Each probe
makes a vCPU whose CPUID lacks the feature, in 64-bit mode at CPL0, and tries both ways.

Once a vCPU has entered the guest, upstream KVM takes ``KVM_SET_CPUID2`` only with the entries
the vCPU has (``kvm_cpuid_check_equal``, after applying KVM's own runtime bits to both sides),
and refuses any other set with EINVAL: the probe runs a HLT, then sets the same entries again
and then one entry fewer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from typing import Final

from hvcore.errors import InvalidArgument
from hvcore.exits import Exit, HltExit
from hvcore.host.deviation import UPSTREAM, Deviation, Unrecognised
from hvcore.host.guest import ProbeGuest
from hvcore.protocol import Hypervisor
from hvcore.types import CpuidEntry

__all__ = ["CR4_FEATURES", "DEVIATIONS"]

CR4_FEATURES: Final = (
    ("OSXSAVE", 1 << 18, 1, "ecx", 26),  # XSAVE
    ("SMEP", 1 << 20, 7, "ebx", 7),
    ("SMAP", 1 << 21, 7, "ebx", 20),
    ("FSGSBASE", 1 << 16, 7, "ebx", 0),
    ("PKE", 1 << 22, 7, "ecx", 3),  # PKU
    ("UMIP", 1 << 11, 7, "ecx", 2),
)
"""(CR4 bit name, the bit, CPUID leaf, register, feature bit): bits KVM ties to a feature of leaf 1 or 7."""
_MOV_TO_CR4: Final = b"\x0f\x22\xe0\xf4"  # mov cr4, rax; hlt
_XSETBV: Final = b"\x0f\x01\xd1\xf4"  # xsetbv; hlt
_GP: Final = 13
_OSXSAVE: Final = 1 << 18
_PD: Final = 0xB000  # the probe guest's page directory (hvcore.host.guest)
_SUPERVISOR_2M: Final = 0x83  # present, writable, 2 MiB, supervisor-only: the first 2 MiB


def _without(entries: tuple[CpuidEntry, ...], leaf: int, register: str, bit: int) -> list[CpuidEntry]:
    return [
        dataclasses.replace(e, **{register: getattr(e, register) & ~(1 << bit)})
        if e.function == leaf and e.index == 0
        else e
        for e in entries
    ]


def _gp_or_done(guest: ProbeGuest, exits: list[Exit], what: str) -> str:
    if exits == [HltExit()]:
        return "accepted"
    if exits == guest.delivered(_GP):
        return "refused"
    raise Unrecognised(f"{what} gave {exits!r}, neither #GP nor done")


def _cr4(hv: Hypervisor, name: str, cr4_bit: int, leaf: int, register: str, bit: int) -> tuple[str, str]:
    """(guest MOV to CR4, set_sregs) of ``cr4_bit`` on a vCPU whose CPUID lacks its feature."""
    with ProbeGuest(hv, _MOV_TO_CR4, "long", cpuid=False) as guest:
        guest.ram.write(_PD, _SUPERVISOR_2M.to_bytes(8, "little"))  # a taken SMEP must not fault the next fetch
        guest.vcpu.set_cpuid(_without(hv.supported_cpuid(), leaf, register, bit))
        sregs = guest.vcpu.get_sregs()
        try:
            guest.vcpu.set_sregs(replace(sregs, cr4=sregs.cr4 | cr4_bit))
        except InvalidArgument:
            by_host = "refused"
        else:
            by_host = "accepted"
            guest.vcpu.set_sregs(sregs)
        guest.vcpu.set_regs(replace(guest.vcpu.get_regs(), rax=sregs.cr4 | cr4_bit))
        by_guest = _gp_or_done(guest, guest.run_until_halt(), f"MOV to CR4 of {name}")
        after = guest.vcpu.get_sregs().cr4
    if (by_guest == "accepted") != bool(after & cr4_bit):
        raise Unrecognised(f"MOV to CR4 of {name} was {by_guest}, yet CR4 is now {after:#x}")
    return by_guest, by_host


def _cr4_cpuid_unchecked(hv: Hypervisor) -> str:
    seen = {name: _cr4(hv, name, *rest) for name, *rest in CR4_FEATURES}  # type: ignore[arg-type]
    outcomes = set(seen.values())
    if outcomes == {("refused", "refused")}:
        return UPSTREAM
    if outcomes == {("accepted", "accepted")}:
        return "accepted"
    raise Unrecognised("MOV to CR4 / set_sregs of a bit the vCPU's CPUID lacks: " + str(seen))


def _xcr0_cpuid_unchecked(hv: Hypervisor) -> str:
    narrow = [
        dataclasses.replace(e, eax=1, edx=0) if e.function == 0xD and e.index == 0 else e for e in hv.supported_cpuid()
    ]  # leaf 0xD lists x87 only
    with ProbeGuest(hv, _XSETBV, "long", cpuid=False) as guest:
        guest.vcpu.set_cpuid(narrow)
        sregs = guest.vcpu.get_sregs()
        try:
            guest.vcpu.set_sregs(replace(sregs, cr4=sregs.cr4 | _OSXSAVE))
        except InvalidArgument as error:
            raise Unrecognised("the host takes no CR4.OSXSAVE with its own CPUID: XSETBV cannot be probed") from error
        guest.vcpu.set_regs(replace(guest.vcpu.get_regs(), rax=0x3, rcx=0, rdx=0))
        by_guest = _gp_or_done(guest, guest.run_until_halt(), "XSETBV of x87 | SSE")
        try:
            guest.vcpu.set_xcrs({0: 0x3})
        except InvalidArgument:
            by_host = "refused"
        else:
            by_host = "accepted"
    if by_guest == by_host == "refused":
        return UPSTREAM
    if by_guest == by_host == "accepted":
        return "accepted"
    raise Unrecognised(f"XCR0 = x87 | SSE with leaf 0xD listing x87 only: XSETBV {by_guest}, set_xcrs {by_host}")


def _cpuid_after_run(hv: Hypervisor) -> str:
    entries = hv.supported_cpuid()
    with ProbeGuest(hv, b"\xf4", "long") as guest:
        if guest.run_until_halt() != [HltExit()]:
            raise Unrecognised("a HLT in 64-bit mode did not halt: the vCPU never ran")
        outcomes = []
        for attempt in (entries, entries[:-1]):
            try:
                guest.vcpu.set_cpuid(attempt)
            except InvalidArgument:
                outcomes.append("refused")
            else:
                outcomes.append("accepted")
    seen = (outcomes[0], outcomes[1])
    variant = {
        ("accepted", "refused"): UPSTREAM,
        ("refused", "refused"): "same_refused",
        ("accepted", "accepted"): "unchecked",
    }.get(seen)
    if variant is None:
        raise Unrecognised(f"set_cpuid after a run: the same entries {seen[0]}, one entry fewer {seen[1]}")
    return variant


DEVIATIONS: tuple[Deviation, ...] = (
    Deviation(
        "cr4_cpuid_unchecked",
        upstream="a CR4 bit whose feature the vCPU's CPUID lacks (OSXSAVE, SMEP, SMAP, FSGSBASE, PKE, UMIP) is "
        "refused: #GP(0) on the guest's MOV to CR4, InvalidArgument from set_sregs; CR4 keeps its value",
        variants={
            "accepted": "each of those bits is set from both the guest's MOV to CR4 and set_sregs, whatever "
            "the vCPU's CPUID (and whatever the host's supported CPUID lists)"
        },
        reason="measured on nested kvm_pvm (AMD EPYC): its CR4 is virtual and CPL0 code runs in the emulator",
        probe=_cr4_cpuid_unchecked,
    ),
    Deviation(
        "xcr0_cpuid_unchecked",
        upstream="an XCR0 component the vCPU's CPUID leaf 0xD does not list is refused: #GP(0) on the guest's "
        "XSETBV, InvalidArgument from set_xcrs",
        variants={"accepted": "XSETBV and set_xcrs enable SSE state although leaf 0xD lists x87 only"},
        reason="measured on nested kvm_pvm (AMD EPYC)",
        probe=_xcr0_cpuid_unchecked,
    ),
    Deviation(
        "cpuid_after_run",
        upstream="once the vCPU has entered the guest, set_cpuid takes the entries it has (the same set again, "
        "KVM's runtime bits aside) and refuses any other with InvalidArgument (kvm_cpuid_check_equal)",
        variants={
            "same_refused": "the same entries are refused too: only what get_cpuid returns (with KVM's runtime "
            "bits as it set them) is taken, as kernels before runtime updates were applied to the new entries",
            "unchecked": "any entries are taken, as kernels before 5.16",
        },
        reason="measured on nested kvm_pvm (Intel): set_cpuid of the very entries set before the run is EINVAL",
        probe=_cpuid_after_run,
    ),
)
"""The deviations from upstream KVM this module's probes detect (features)."""
