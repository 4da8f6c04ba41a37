"""Probes for MSRs: IA32_PAT checks, IA32_TSC writes, non-canonical addresses, IA32_SYSENTER_ESP/EIP,
the speculation-control MSRs without their CPUID features.

Each probe runs :data:`GUEST` (64-bit, CPL0) on one fresh VM: the host sets RIP to an entry
point and ECX / EDX:EAX, and the guest halts with what it read in EDX:EAX, or takes #GP(0)
through the IDT stub of vector 13. Writes from the VMM go through ``set_msrs``; every value
stored is read back both ways (guest RDMSR and ``get_msrs``), which must agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Final, Literal

from hvcore import cpuid_rules
from hvcore.errors import InvalidArgument
from hvcore.exits import HltExit
from hvcore.host.deviation import UPSTREAM, Deviation, Unrecognised
from hvcore.host.guest import CODE, KERNEL_CS, STACK_TOP, ProbeGuest
from hvcore.protocol import Hypervisor

__all__ = ["DEVIATIONS", "GUEST", "NONCANONICAL", "SYSENTER_VALUES", "noncanonical_values"]

GUEST: Final = (
    b"\x0f\x30"  # 1000 write: wrmsr      (ecx = the MSR, edx:eax = the value)
    b"\x0f\x32"  # 1002 read:  rdmsr      (edx:eax = the MSR)
    b"\xf4"      # 1004        hlt
    b"\x0f\x31"  # 1005 tsc:   rdtsc      (edx:eax = the TSC)
    b"\xf4"      # 1007        hlt
    b"\x0f\x30"  # 1008 wo:    wrmsr      (a write-only MSR: no read back)
    b"\xf4"      # 100a        hlt
)  # fmt: skip
"""The probe guest; entry points ``CODE`` (WRMSR then RDMSR), ``CODE + 2`` (RDMSR), ``CODE + 5`` (RDTSC),
``CODE + 8`` (WRMSR alone)."""
_WRITE, _READ, _TSC, _WRITE_ONLY = CODE, CODE + 2, CODE + 5, CODE + 8
_HALTED: Final = {_WRITE: CODE + 5, _READ: CODE + 5, _TSC: CODE + 8, _WRITE_ONLY: CODE + 11}  # RIP after the HLT
_ENTRY_NAMES: Final = {_WRITE: "WRMSR", _READ: "RDMSR", _TSC: "RDTSC", _WRITE_ONLY: "WRMSR"}
_FRAME: Final = 6 * 8  # error code, RIP, CS, RFLAGS, RSP, SS
_LOW: Final = 0xFFFFFFFF

IA32_TSC, SYSENTER_ESP, SYSENTER_EIP, IA32_PAT = 0x10, 0x175, 0x176, 0x277
SPEC_CTRL, PRED_CMD, FLUSH_CMD = 0x48, 0x49, 0x10B
LSTAR, CSTAR, FS_BASE, GS_BASE, KERNEL_GS_BASE = 0xC0000082, 0xC0000083, 0xC0000100, 0xC0000101, 0xC0000102
NONCANONICAL: Final = (LSTAR, CSTAR, FS_BASE, GS_BASE, KERNEL_GS_BASE)
"""The MSRs KVM refuses a non-canonical address for (``__kvm_set_msr``)."""

Outcome = Literal["refused", "stored"]


def noncanonical_values(bits: int) -> dict[int, int]:
    """One value per :data:`NONCANONICAL` MSR, each non-canonical for ``bits``-bit addresses, next to the edge."""
    top = 1 << (bits - 1)
    return {
        LSTAR: top,  # the first one above the lower half
        CSTAR: (1 << 64) - top - 1,  # the last one below the upper half
        FS_BASE: top << 1,
        GS_BASE: 1 << 63 | 0x1000,
        KERNEL_GS_BASE: top | 0x123000,
    }


# --- running the guest ---------------------------------------------------------------------------


def _run(guest: ProbeGuest, entry: int, index: int = 0, value: int = 0) -> int | None:
    """Run from ``entry``: EDX:EAX at the HLT, or None where the instruction at ``entry`` raised #GP(0)."""
    guest.ram.write(STACK_TOP - _FRAME, bytes(_FRAME))
    regs = replace(guest.vcpu.get_regs(), rip=entry, rsp=STACK_TOP, rflags=0x2, rcx=index, rax=value & _LOW)
    guest.vcpu.set_regs(replace(regs, rdx=value >> 32))
    exits = guest.run_until_halt(limit=4)
    after = guest.vcpu.get_regs()
    if exits == [HltExit()] and after.rip == _HALTED[entry]:
        return (after.rdx & _LOW) << 32 | after.rax & _LOW
    frame = guest.words(STACK_TOP, 6)
    if exits == ProbeGuest.delivered(13) and frame[:3] == [0, entry, KERNEL_CS]:
        return None
    raise Unrecognised(
        f"{_ENTRY_NAMES[entry]} (ecx={index:#x}, edx:eax={value:#x}) gave {exits!r}, rip={after.rip:#x}, "
        f"frame {[hex(w) for w in frame]}"
    )


def _stored(guest: ProbeGuest, index: int) -> int:
    """MSR ``index`` as the guest's RDMSR and ``get_msrs`` both see it."""
    seen = _run(guest, _READ, index)
    if seen is None:
        raise Unrecognised(f"RDMSR of {index:#x} raised #GP")
    host = guest.vcpu.get_msrs([index])[index]
    if host != seen:
        raise Unrecognised(f"MSR {index:#x} reads {seen:#x} in the guest but {host:#x} from get_msrs")
    return seen


def _guest_write(guest: ProbeGuest, index: int, value: int) -> Outcome:
    """A guest WRMSR: refused (#GP, MSR unchanged) or stored exactly; anything else is unrecognised."""
    before = _stored(guest, index)
    read_back = _run(guest, _WRITE, index, value)
    after = _stored(guest, index)
    if read_back is None and after == before:
        return "refused"
    if read_back == after == value:
        return "stored"
    seen = "#GP" if read_back is None else f"{read_back:#x}"
    raise Unrecognised(f"guest WRMSR {index:#x} <- {value:#x}: read back {seen}, then {after:#x} (was {before:#x})")


def _host_write(guest: ProbeGuest, index: int, value: int) -> Outcome:
    """A ``set_msrs``: refused (InvalidArgument, MSR unchanged) or stored exactly; anything else is unrecognised."""
    before = _stored(guest, index)
    try:
        guest.vcpu.set_msrs({index: value})
    except InvalidArgument:
        refused = True
    else:
        refused = False
    after = _stored(guest, index)
    if refused and after == before:
        return "refused"
    if not refused and after == value:
        return "stored"
    said = "refused" if refused else "accepted"
    raise Unrecognised(f"set_msrs {index:#x} <- {value:#x} was {said}, then the MSR reads {after:#x} (was {before:#x})")


# --- IA32_PAT ---------------------------------------------------------------------------------------

_PAT_BAD_GUEST: Final = 0x0707070707070702  # entry 0 is 2: not a memory type
_PAT_BAD_HOST: Final = 0x0007040600070403  # entry 0 is 3: not a memory type


def _pat_unchecked(hv: Hypervisor) -> str:
    with ProbeGuest(hv, GUEST) as guest:
        by_guest = _guest_write(guest, IA32_PAT, _PAT_BAD_GUEST)
        by_host = _host_write(guest, IA32_PAT, _PAT_BAD_HOST)
    if by_guest == by_host == "refused":
        return UPSTREAM
    if by_guest == by_host == "stored":
        return "accepted"
    raise Unrecognised(f"an invalid IA32_PAT was {by_guest} from the guest's WRMSR but {by_host} from set_msrs")


# --- IA32_TSC ---------------------------------------------------------------------------------------

_JUMP: Final = 1 << 48  # how far each write moves the TSC
_SLACK: Final = 1 << 36  # TSC ticks a probe may take: over 16 s below 4 GHz


def _tsc_after(before: int, target: int, seen: int, how: str) -> str:
    """Whether ``seen`` (a TSC read just after a write of ``target``) went on from ``target`` or from ``before``."""
    if target <= seen < target + _SLACK:
        return "moved"
    if before <= seen < before + _SLACK:
        return "ignored"
    raise Unrecognised(f"{how} of IA32_TSC {target:#x} (TSC was {before:#x}): the TSC then read {seen:#x}")


def _rdtsc(guest: ProbeGuest) -> int:
    value = _run(guest, _TSC)
    if value is None:
        raise Unrecognised("RDTSC raised #GP")
    return value


def _tsc_writes_ignored(hv: Hypervisor) -> str:
    with ProbeGuest(hv, GUEST) as guest:
        before = _rdtsc(guest)
        guest.vcpu.set_msrs({IA32_TSC: before + _JUMP})
        by_host = {
            _tsc_after(before, before + _JUMP, _rdtsc(guest), "set_msrs"),
            _tsc_after(before, before + _JUMP, guest.vcpu.get_msrs([IA32_TSC])[IA32_TSC], "set_msrs (get_msrs)"),
        }
        before = _rdtsc(guest)
        read_back = _run(guest, _WRITE, IA32_TSC, before + _JUMP)
        if read_back is None:
            raise Unrecognised("the guest's WRMSR of IA32_TSC raised #GP")
        by_guest = {
            _tsc_after(before, before + _JUMP, read_back, "guest WRMSR"),
            _tsc_after(before, before + _JUMP, _rdtsc(guest), "guest WRMSR (then RDTSC)"),
        }
    if by_host == by_guest == {"moved"}:
        return UPSTREAM
    if by_host == by_guest == {"ignored"}:
        return "ignored"
    raise Unrecognised(f"IA32_TSC writes: set_msrs {sorted(by_host)}, guest WRMSR {sorted(by_guest)}")


# --- non-canonical addresses ----------------------------------------------------------------------------


def _outcomes(seen: dict[int, Outcome], how: str) -> Outcome:
    """The one outcome every MSR had; unrecognised where they differ."""
    kinds = set(seen.values())
    if len(kinds) != 1:
        detail = ", ".join(f"{index:#x} {outcome}" for index, outcome in seen.items())
        raise Unrecognised(f"non-canonical values by {how}: {detail}")
    return kinds.pop()


def _noncanonical_msr_accepted(hv: Hypervisor) -> str:
    values = noncanonical_values(cpuid_rules.address_bits(hv.supported_cpuid()))
    with ProbeGuest(hv, GUEST) as guest:
        by_guest = _outcomes({i: _guest_write(guest, i, v) for i, v in values.items()}, "guest WRMSR")
        by_host = _outcomes({i: _host_write(guest, i, v ^ 0x10) for i, v in values.items()}, "set_msrs")
    return {
        ("refused", "refused"): UPSTREAM,
        ("stored", "refused"): "guest_accepted",
        ("refused", "stored"): "host_accepted",
        ("stored", "stored"): "accepted",
    }[by_guest, by_host]


# --- IA32_SYSENTER_ESP / EIP -------------------------------------------------------------------------------

SYSENTER_VALUES: Final = (0x0000800000000010, 0x1234800000000010)
"""Both non-canonical for 48-bit addresses, the second for 57-bit ones too: what is stored tells the rules apart."""
_GP: Final = "#GP"
_SYSENTER_RULES: Final = ("canonical", "low_32_bits", "unchanged", "guest_write_gp")


def _stored_by_rule(rule: str, value: int, bits: int, *, guest: bool) -> int | str:
    """What a write of ``value`` to IA32_SYSENTER_ESP/EIP leaves under ``rule`` (a variant name), or ``"#GP"``."""
    if rule == "canonical":
        return cpuid_rules.canonical(value, bits)
    if rule == "low_32_bits":
        return value & _LOW
    if rule == "unchanged":
        return value
    if rule == "guest_write_gp":
        return _GP if guest and not cpuid_rules.is_canonical(value, bits) else cpuid_rules.canonical(value, bits)
    raise ValueError(f"no SYSENTER_ESP/EIP rule {rule!r}")


def _rules(seen: Iterable[tuple[int, int | str]], bits: int, *, guest: bool) -> set[str]:
    """The rules every (value written, what was stored) pair agrees with."""
    rules = _SYSENTER_RULES if guest else _SYSENTER_RULES[:3]  # set_msrs has no #GP to raise
    return {r for r in rules if all(_stored_by_rule(r, v, bits, guest=guest) == s for v, s in seen)}


def _sysenter_esp_eip(hv: Hypervisor) -> str:
    bits = cpuid_rules.address_bits(hv.supported_cpuid())
    first, second = SYSENTER_VALUES
    with ProbeGuest(hv, GUEST) as guest:  # the host's supported CPUID, so its vendor
        name = cpuid_rules.vendor(guest.vcpu.get_cpuid())
        by_guest: list[tuple[int, int | str]] = []
        for index, value in ((SYSENTER_ESP, first), (SYSENTER_EIP, second)):
            before = _stored(guest, index)
            read_back = _run(guest, _WRITE, index, value)
            stored = _stored(guest, index)
            if read_back is None and stored != before:
                raise Unrecognised(
                    f"guest WRMSR {index:#x} <- {value:#x} raised #GP but the MSR went {before:#x} -> {stored:#x}"
                )
            if read_back is not None and read_back != stored:
                raise Unrecognised(f"guest WRMSR {index:#x} <- {value:#x}: read back {read_back:#x}, then {stored:#x}")
            by_guest.append((value, _GP if read_back is None else stored))
        by_host: list[tuple[int, int | str]] = []
        for index, value in ((SYSENTER_ESP, second), (SYSENTER_EIP, first)):
            guest.vcpu.set_msrs({index: value})
            by_host.append((value, _stored(guest, index)))
    guest_rules, host_rules = _rules(by_guest, bits, guest=True), _rules(by_host, bits, guest=False)
    upstream = "low_32_bits" if cpuid_rules.amd_compatible(name) else "canonical"
    if guest_rules == {upstream} and host_rules == {upstream}:
        return UPSTREAM
    for rule in ("canonical", "low_32_bits", "unchanged"):
        if guest_rules == host_rules == {rule}:
            return rule
    if guest_rules == {"guest_write_gp"} and host_rules == {"canonical"}:
        return "guest_write_gp"

    def show(seen: list[tuple[int, int | str]]) -> str:
        return ", ".join(f"{v:#x} -> {s if isinstance(s, str) else hex(s)}" for v, s in seen)

    raise Unrecognised(f"vendor {name!r}, {bits}-bit addresses: guest WRMSR {show(by_guest)}; set_msrs {show(by_host)}")


# --- IA32_SPEC_CTRL, IA32_PRED_CMD, IA32_FLUSH_CMD without their CPUID features ---------------------------

_SPECULATION_WRITES: Final = ((SPEC_CTRL, 1), (PRED_CMD, 1), (FLUSH_CMD, 1))  # IBRS, IBPB, L1D_FLUSH: valid bits


def _speculation_msrs_unchecked(hv: Hypervisor) -> str:
    with ProbeGuest(hv, GUEST) as guest:
        guest.vcpu.set_cpuid(cpuid_rules.without_speculation_msrs(hv.supported_cpuid()))
        read = _run(guest, _READ, SPEC_CTRL)
        written = {index: _run(guest, _WRITE_ONLY, index, value) is not None for index, value in _SPECULATION_WRITES}
        after = _run(guest, _READ, SPEC_CTRL)
    if read is None and after is None and not any(written.values()):
        return UPSTREAM
    if read == after == 0 and all(written.values()):
        return "accepted"
    seen = ", ".join(f"WRMSR {index:#x} {'accepted' if ok else '#GP'}" for index, ok in written.items())
    shown = ["#GP" if r is None else hex(r) for r in (read, after)]
    raise Unrecognised(
        f"without the CPUID bits: RDMSR of IA32_SPEC_CTRL {shown[0]} (after the writes {shown[1]}); {seen}"
    )


DEVIATIONS: tuple[Deviation, ...] = (
    Deviation(
        "pat_unchecked",
        upstream="an IA32_PAT value with an entry that is not a memory type (2, 3, 8 and up) is refused: "
        "#GP(0) on the guest's WRMSR, InvalidArgument from set_msrs; the MSR keeps its value",
        variants={"accepted": "any value is stored as written, from the guest's WRMSR and from set_msrs"},
        reason="measured on nested kvm_pvm (AMD EPYC)",
        probe=_pat_unchecked,
    ),
    Deviation(
        "tsc_writes_ignored",
        upstream="writing IA32_TSC (guest WRMSR or set_msrs) sets the TSC: RDTSC and get_msrs go on from the value",
        variants={
            "ignored": "the write succeeds and the TSC goes on from where it was (a guest write still moves "
            "IA32_TSC_ADJUST)"
        },
        reason="measured on nested kvm_pvm (AMD EPYC): the guest's TSC runs with the host's",
        probe=_tsc_writes_ignored,
    ),
    Deviation(
        "noncanonical_msr_accepted",
        upstream="a value that is not a canonical address (for the host's width: 57 bits with LA57, else 48) "
        "written to LSTAR, CSTAR, FS_BASE, GS_BASE or KERNEL_GS_BASE is refused: #GP(0) on the guest's WRMSR, "
        "InvalidArgument from set_msrs; the MSR keeps its value",
        variants={
            "guest_accepted": "the guest's WRMSR succeeds and stores the value as written (all 64 bits, as RDMSR "
            "and get_msrs read it); set_msrs still refuses it",
            "host_accepted": "set_msrs stores the value as written (all 64 bits); the guest's WRMSR still raises #GP",
            "accepted": "both the guest's WRMSR and set_msrs store the value as written (all 64 bits)",
        },
        reason="reported on an Intel host with another kvm_pvm build (LSTAR and FS_BASE); those values were "
        "canonical for 57 bits, so that host may be upstream with LA57: the probe uses the host's width",
        probe=_noncanonical_msr_accepted,
    ),
    Deviation(
        "sysenter_esp_eip",
        upstream="a write (guest WRMSR or set_msrs) to IA32_SYSENTER_ESP/EIP is made canonical (host's width); "
        "a vCPU of an AMD-compatible vendor (AuthenticAMD, HygonGenuine) then keeps the low 32 bits only, "
        "any other vendor all 64 (SVM's rule; hvcore.cpuid_rules.sysenter_esp_eip); the probe uses the host's "
        "own CPUID vendor",
        variants={
            "canonical": "both writes store the value made canonical, all 64 bits, though the vCPU's vendor is "
            "AMD-compatible",
            "low_32_bits": "both writes store the low 32 bits only, though the vCPU's vendor is Intel-compatible",
            "unchanged": "both writes store the value as written, all 64 bits",
            "guest_write_gp": "the guest's WRMSR of a non-canonical value raises #GP(0) and leaves the MSR "
            "unchanged, a canonical one is stored as written (Intel CPUs: VMX passes these MSRs through); "
            "set_msrs stores the canonical 64-bit value",
        },
        reason="upstream differs between SVM and VMX; measured on nested kvm_pvm (AMD EPYC, AuthenticAMD vCPU): "
        "canonical; reported on an Intel kvm_pvm host: not made canonical",
        probe=_sysenter_esp_eip,
    ),
    Deviation(
        "speculation_msrs_unchecked",
        upstream="on a vCPU whose CPUID lacks their features (hvcore.cpuid_rules.SPECULATION_MSR_FEATURES), "
        "the guest's WRMSR of IA32_SPEC_CTRL (0x48), IA32_PRED_CMD (0x49) and IA32_FLUSH_CMD (0x10B) and its "
        "RDMSR of IA32_SPEC_CTRL raise #GP(0)",
        variants={
            "accepted": "those WRMSRs succeed, whatever the value, and nothing is kept: the guest's RDMSR of "
            "IA32_SPEC_CTRL gives 0 (IA32_PRED_CMD and IA32_FLUSH_CMD are write-only: RDMSR raises #GP on both)"
        },
        reason="measured on nested kvm_pvm (AMD EPYC): kvm-unit-tests msr and msr64 fail their 6 checks of this",
        probe=_speculation_msrs_unchecked,
    ),
)
"""The deviations from upstream KVM this module's probes detect (msrs)."""
