"""Guest RDMSR / WRMSR / RDTSC and the VMM's get_msrs / set_msrs: KVM's rules on every backend.

Most tests drive ``real_mode.MSR_PROBE``, a guest loop that reads, writes or RDTSCs what the host
asks for over port IO and reports a #GP instead of the value (:class:`Probe`). The #GP and
SHUTDOWN tests run 64-bit guests through the IDT of ``tests.test_exceptions``.

Where hosts' KVMs are known to differ (IA32_PAT checks, IA32_TSC writes, non-canonical addresses,
IA32_SYSENTER_ESP/EIP), the tests ask for the probed variant (``host_variant``, probes in
``hvcore.host.probes.msrs``) and assert it; the simulator follows upstream KVM, whose
IA32_SYSENTER_ESP/EIP rule depends on the vCPU's CPUID vendor.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence

import pytest

import hvcore
from hvcore import VCPU, VM, CpuidEntry, HltExit, Hypervisor, IoDirection, IoExit, ShutdownExit, cpuid_rules
from hvcore.host import UPSTREAM
from tests.boot import boot, run_exits
from tests.conftest import open_or_skip
from tests.flags import undefined_after
from tests.guests import layout, long_mode, real_mode
from tests.quirks import host_variant, is_simulator
from tests.test_exceptions import KERNEL_CS, KERNEL_SS, RF, delivered, frame, long_mode_guest, missing

IA32_TSC, IA32_APIC_BASE, IA32_TSC_ADJUST, IA32_TSC_DEADLINE = 0x10, 0x1B, 0x3B, 0x6E0
SYSENTER_CS, SYSENTER_ESP, SYSENTER_EIP, PAT = 0x174, 0x175, 0x176, 0x277
EFER, STAR, LSTAR, CSTAR, FMASK = 0xC0000080, 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084
FS_BASE, GS_BASE, KERNEL_GS_BASE, TSC_AUX = 0xC0000100, 0xC0000101, 0xC0000102, 0xC0000103
UNKNOWN = 0xDEADBEEF
CODE, STACK_TOP = layout.CODE, layout.STACK_TOP
GP = "#GP"
"""What :class:`Probe` returns when the guest's RDMSR / WRMSR raised #GP."""
OK = "ok"


class Probe:
    """Drives ``real_mode.MSR_PROBE``: each call is one guest RDMSR, WRMSR or RDTSC.

    Between calls the guest stands at its ready OUT, with nothing pending, so the test may change
    the vCPU's state there (KVM finishes a pending IN only on the next run).
    """

    def __init__(self, hv: Hypervisor, vm: VM, cpuid: Sequence[CpuidEntry] | None = None) -> None:
        self.vcpu: VCPU = boot(hv, vm, real_mode.MSR_PROBE)
        self.vcpu.set_cpuid(hv.supported_cpuid() if cpuid is None else cpuid)
        self._expect(0x3F, self.vcpu.run())

    @staticmethod
    def _expect(port: int, exit_: object) -> IoExit:
        assert isinstance(exit_, IoExit) and exit_.port == port, f"expected port {port:#x}, got {exit_!r}"
        return exit_

    def _answer(self, value: int) -> IoExit:
        self.vcpu.complete(value & 0xFFFFFFFF)
        return self._expect_io(self.vcpu.run())

    @staticmethod
    def _expect_io(exit_: object) -> IoExit:
        assert isinstance(exit_, IoExit), exit_
        return exit_

    def _ask(self, index: int, operation: int) -> IoExit:
        self._expect(0x40, self.vcpu.run())
        self._expect(0x41, self._answer(index))
        return self._answer(operation)

    def _ready(self) -> None:
        self._expect(0x3F, self.vcpu.run())

    def _value_or_gp(self, exit_: IoExit) -> int | str:
        if exit_.port == 0x47:
            self._ready()
            return GP
        low = int.from_bytes(self._expect(0x42, exit_).data, "little")
        high = int.from_bytes(self._expect(0x43, self.vcpu.run()).data, "little")
        self._ready()
        return high << 32 | low

    def read(self, index: int) -> int | str:
        """The guest's RDMSR of ``index``: the value, or GP."""
        return self._value_or_gp(self._ask(index, 0))

    def write(self, index: int, value: int) -> str:
        """The guest's WRMSR of ``value`` to ``index``: OK or GP."""
        self._expect(0x44, self._ask(index, 1))
        self._expect(0x45, self._answer(value))
        exit_ = self._answer(value >> 32)
        assert exit_.port in (0x46, 0x47), exit_
        self._ready()
        return OK if exit_.port == 0x46 else GP

    def rdtsc(self) -> int:
        """The guest's RDTSC."""
        value = self._value_or_gp(self._ask(0, 2))
        assert isinstance(value, int)
        return value


def _has(hv: Hypervisor, function: int, register: str, bit: int) -> bool:
    entry = next((e for e in hv.supported_cpuid() if e.function == function and e.index == 0), None)
    return entry is not None and bool(getattr(entry, register) >> bit & 1)


# --- unknown MSRs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "rip", "rflags", "undefined", "rdx"),
    [
        (long_mode.RDMSR_UNKNOWN, CODE + 0xA, 0x2, 0, 0x600),  # rdx as at reset: the rdmsr did not load it
        (long_mode.WRMSR_UNKNOWN, CODE + 0x9, 0x46, undefined_after("xor edx, edx"), 0),  # ZF and PF from the xor
    ],
    ids=["rdmsr", "wrmsr"],
)
def test_an_unknown_msr_raises_gp(
    hv: Hypervisor, vm: VM, code: bytes, rip: int, rflags: int, undefined: int, rdx: int
) -> None:
    vcpu = long_mode_guest(hv, vm, code, user=False)
    assert run_exits(vcpu) == delivered(13)
    pushed = frame(vm, STACK_TOP, 6)
    pushed[3] &= ~undefined
    assert pushed == [0, rip, KERNEL_CS, RF | rflags, STACK_TOP, KERNEL_SS]
    assert vcpu.get_regs().rdx == rdx


def test_an_unknown_msr_without_a_gp_handler_shuts_down(hv: Hypervisor, vm: VM) -> None:
    vcpu = long_mode_guest(hv, vm, long_mode.RDMSR_UNKNOWN, user=False, gates={13: missing(13), 8: missing(8)})
    assert run_exits(vcpu) == [ShutdownExit()]
    assert vcpu.get_regs().rip == CODE + 0xA


def test_an_unknown_msr_in_real_mode(hv: Hypervisor, vm: VM) -> None:
    probe = Probe(hv, vm)
    assert probe.read(UNKNOWN) == GP
    assert probe.write(UNKNOWN, 0) == GP
    assert probe.read(0x12345) == GP  # outside every range the SVM bitmap covers, too
    with pytest.raises(hvcore.InvalidArgument, match=f"MSR {UNKNOWN:#x}"):
        probe.vcpu.get_msrs([UNKNOWN])


def test_msrs_kvm_emulates_beyond_its_saved_ones(hv: Hypervisor, vm: VM) -> None:
    probe = Probe(hv, vm)
    assert probe.read(0xFE) == 0x508  # IA32_MTRRCAP: 8 variable ranges, fixed ranges, write-combining
    assert probe.read(0x1A0) == 0x1  # IA32_MISC_ENABLE: fast strings
    assert probe.write(0x2FF, 0xC06) != GP  # MTRRdefType: enabled, fixed enabled, write-back
    assert probe.read(0x2FF) == 0xC06
    assert probe.write(0x2FF, 0x2) == GP  # memory type 2 is reserved
    assert probe.write(0x250, 0x0606060606060606) != GP
    assert probe.vcpu.get_msrs([0x250]) == {0x250: 0x0606060606060606}
    assert probe.read(0x401) == 0  # MC0_STATUS: one of the 32 banks IA32_MCG_CAP (0x20) announces
    assert probe.write(0x401, 1) == GP  # the guest may only clear it
    assert probe.write(0x400, 1) == GP  # MCi_CTL: all ones or nothing


# --- known MSRs ------------------------------------------------------------------------------------

AMD_COMPATIBLE = ("AuthenticAMD", "HygonGenuine")
"""Vendors upstream KVM gives AMD's IA32_SYSENTER_ESP/EIP rule (low 32 bits); any other vendor: 64 bits."""


def host_vendor(hv: Hypervisor) -> str | None:
    """The vendor of the backend's supported CPUID (the one the probes use)."""
    return cpuid_rules.vendor(hv.supported_cpuid())


def sysenter_rule(hv: Hypervisor, vcpu: VCPU) -> str:
    """What IA32_SYSENTER_ESP/EIP writes do on ``vcpu``: the probed variant, or upstream's rule for its vendor.

    ``canonical`` (64 bits, made canonical), ``low_32_bits``, ``unchanged`` or ``guest_write_gp``. On
    KVM the probe covers the host's own vendor only, so the vCPU must have it.
    """
    vendor = cpuid_rules.vendor(vcpu.get_cpuid())
    if not is_simulator(hv):
        assert vendor == host_vendor(hv), "the sysenter_esp_eip probe covers the host's own vendor only"
    variant = host_variant(hv, "sysenter_esp_eip")
    if variant != UPSTREAM:
        return variant
    return "low_32_bits" if vendor in AMD_COMPATIBLE else "canonical"


def sysenter_kept(rule: str, value: int) -> int:
    """What a write of ``value``, a canonical address, leaves in IA32_SYSENTER_ESP/EIP under ``rule``."""
    return value & 0xFFFFFFFF if rule == "low_32_bits" else value


ROUND_TRIPS = [
    (SYSENTER_CS, 0xFFFFFFFF12345678),  # all 64 bits kept (KVM on AMD; VMX keeps 32)
    (SYSENTER_ESP, 0xFFFF800000008000),  # ESP and EIP: the low 32 bits only on an AMD-compatible vCPU (SVM)
    (SYSENTER_EIP, 0x00007FFFFFFFF000),
    (STAR, 0xDEADBEEFCAFEBABE),
    (LSTAR, 0xFFFF800000001234),
    (CSTAR, 0x00007FFFFFFF0000),
    (FMASK, 0xFFFFFFFFFFFFFFFF),
    (KERNEL_GS_BASE, 0xFFFF888000000000),
    (FS_BASE, 0x12345678),
    (GS_BASE, 0x7FFFFFFFFFFF),
    (PAT, 0x0007010600070106),
    (EFER, 0x1),  # SCE
]


@pytest.mark.parametrize(("index", "value"), ROUND_TRIPS, ids=[f"{i:#x}" for i, _ in ROUND_TRIPS])
def test_guest_wrmsr_rdmsr_round_trip_seen_by_get_msrs(hv: Hypervisor, vm: VM, index: int, value: int) -> None:
    probe = Probe(hv, vm)
    kept = sysenter_kept(sysenter_rule(hv, probe.vcpu), value) if index in (SYSENTER_ESP, SYSENTER_EIP) else value
    assert probe.write(index, value) == OK
    assert probe.read(index) == kept
    assert probe.vcpu.get_msrs([index]) == {index: kept}
    probe.vcpu.set_msrs({index: 0})
    assert probe.read(index) == 0


SYSENTER_WRITES = (0x0000800000000010, 0x1234800000000010)
"""Non-canonical values written to IA32_SYSENTER_ESP/EIP (the first is canonical for 57-bit addresses)."""
SYSENTER_STORED: dict[tuple[str, int], tuple[int, int]] = {
    ("canonical", 48): (0xFFFF800000000010, 0xFFFF800000000010),
    ("canonical", 57): (0x0000800000000010, 0x0034800000000010),
    ("low_32_bits", 48): (0x10, 0x10),
    ("low_32_bits", 57): (0x10, 0x10),
    ("unchanged", 48): SYSENTER_WRITES,
    ("unchanged", 57): SYSENTER_WRITES,
}
"""(rule, the host's address width) -> what each of SYSENTER_WRITES leaves, by the VMM's set_msrs."""


def sysenter_stored(rule: str, bits: int, *, guest: bool) -> tuple[int | str, int | str]:
    """What the guest's WRMSR (``guest``) or ``set_msrs`` of each of SYSENTER_WRITES leaves: a value or GP."""
    if rule != "guest_write_gp":
        return SYSENTER_STORED[rule, bits]
    if not guest:
        return SYSENTER_STORED["canonical", bits]
    return (GP, GP) if bits == 48 else (SYSENTER_WRITES[0], GP)  # VMX: the CPU checks the guest's write


def check_sysenter_writes(hv: Hypervisor, probe: Probe) -> None:
    """Guest WRMSRs, then ``set_msrs``, of SYSENTER_WRITES to IA32_SYSENTER_ESP and EIP leave what the rule says."""
    rule = sysenter_rule(hv, probe.vcpu)
    bits = cpuid_rules.address_bits(hv.supported_cpuid())
    by_guest = sysenter_stored(rule, bits, guest=True)
    for index, value, stored in zip((SYSENTER_ESP, SYSENTER_EIP), SYSENTER_WRITES, by_guest, strict=True):
        assert probe.write(index, value) == (GP if stored == GP else OK)
        assert probe.read(index) == (0 if stored == GP else stored)  # a refused write leaves the reset value
        assert probe.vcpu.get_msrs([index]) == {index: 0 if stored == GP else stored}
    by_host = sysenter_stored(rule, bits, guest=False)
    for index, value, stored in zip((SYSENTER_EIP, SYSENTER_ESP), SYSENTER_WRITES, by_host, strict=True):
        probe.vcpu.set_msrs({index: value})
        assert probe.read(index) == stored
        assert probe.vcpu.get_msrs([index]) == {index: stored}


def test_sysenter_esp_and_eip_are_made_canonical(hv: Hypervisor, vm: VM) -> None:
    probe = Probe(hv, vm)  # the backend's own CPUID: on KVM the host's vendor, on the simulator GenuineIntel
    check_sysenter_writes(hv, probe)


@pytest.mark.parametrize("vendor", ["GenuineIntel", "AuthenticAMD", "HygonGenuine", "CentaurHauls"])
def test_the_simulator_follows_the_vcpus_vendor_for_sysenter(vendor: str) -> None:
    """Upstream's rule for every vendor, on the simulator (on KVM the host's own vendor is probed, asserted above)."""
    with open_or_skip("sim") as hv, hv.create_vm() as vm:
        supported = hv.supported_cpuid()
        top = next(e.eax for e in supported if e.function == 0)
        cpuid = [cpuid_rules.vendor_leaf(vendor, top) if e.function == 0 else e for e in supported]
        probe = Probe(hv, vm, cpuid=cpuid)
        assert cpuid_rules.vendor(probe.vcpu.get_cpuid()) == vendor
        assert sysenter_rule(hv, probe.vcpu) == ("low_32_bits" if vendor in AMD_COMPATIBLE else "canonical")
        check_sysenter_writes(hv, probe)


NONCANONICAL: dict[tuple[int, int], int] = {
    (LSTAR, 48): 0x0000800000000000,
    (LSTAR, 57): 0x0100000000000000,
    (CSTAR, 48): 0xFFFF7FFFFFFFF000,
    (CSTAR, 57): 0xFEFFFFFFFFFFF000,
    (FS_BASE, 48): 0x0001000000000000,
    (FS_BASE, 57): 0x0200000000000000,
    (GS_BASE, 48): 0x00FF000000000000,
    (GS_BASE, 57): 0x7F00000000000000,
    (KERNEL_GS_BASE, 48): 0x8000000000000000,
    (KERNEL_GS_BASE, 57): 0x8000000000000000,
}
"""(MSR, the host's address width) -> a value that is not a canonical address for that width."""


@pytest.mark.parametrize("index", [LSTAR, CSTAR, FS_BASE, GS_BASE, KERNEL_GS_BASE], ids=lambda i: f"{i:#x}")
def test_noncanonical_addresses_are_refused(hv: Hypervisor, vm: VM, index: int) -> None:
    variant = host_variant(hv, "noncanonical_msr_accepted")
    value = NONCANONICAL[index, cpuid_rules.address_bits(hv.supported_cpuid())]
    probe = Probe(hv, vm)
    before = probe.read(index)
    if variant in ("guest_accepted", "accepted"):  # stored as written
        assert probe.write(index, value) == OK
        assert probe.read(index) == value
        assert probe.vcpu.get_msrs([index]) == {index: value}
    else:
        assert variant in (UPSTREAM, "host_accepted")
        assert probe.write(index, value) == GP
        assert probe.read(index) == before
    before = probe.read(index)
    if variant in ("host_accepted", "accepted"):
        probe.vcpu.set_msrs({index: value | 0x10})
        assert probe.read(index) == value | 0x10
        assert probe.vcpu.get_msrs([index]) == {index: value | 0x10}
    else:
        with pytest.raises(hvcore.InvalidArgument, match=f"MSR {index:#x} refused") as caught:
            probe.vcpu.set_msrs({index: value | 0x10})
        assert caught.value.errno == errno.EINVAL
        assert probe.vcpu.get_msrs([index]) == {index: before}


REFUSED = [
    ("efer-reserved", EFER, 1 << 63, True),
    ("efer-svme", EFER, 1 << 12, True),  # no SVM in any vCPU here (nested SVM is off)
    ("apic-base-reserved", IA32_APIC_BASE, 0xFEE00901, True),
    ("apic-base-x2apic-without-xapic", IA32_APIC_BASE, 0xFEE00500, True),
]


@pytest.mark.parametrize(("index", "value", "host_too"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_values_kvm_refuses_raise_gp(hv: Hypervisor, vm: VM, index: int, value: int, host_too: bool) -> None:
    probe = Probe(hv, vm)
    before = probe.read(index)
    assert probe.write(index, value) == GP
    assert probe.read(index) == before
    if host_too:
        with pytest.raises(hvcore.InvalidArgument, match=f"MSR {index:#x} refused") as caught:
            probe.vcpu.set_msrs({index: value})
        assert caught.value.errno == errno.EINVAL
        assert probe.vcpu.get_msrs([index]) == {index: before}


def test_efer_bits_need_their_cpuid_feature(hv: Hypervisor, vm: VM) -> None:
    probe = Probe(hv, vm, cpuid=())
    assert probe.write(EFER, 1 << 8) == GP  # LME without CPUID LM
    assert probe.write(EFER, 1 << 11) == GP  # NX without CPUID NX
    assert probe.write(EFER, 1) == OK
    probe.vcpu.set_msrs({EFER: 1 << 8 | 1 << 11})  # the VMM is not held to the CPUID
    assert probe.read(EFER) == 1 << 8 | 1 << 11


def test_efer_lma_written_by_the_guest_is_ignored(hv: Hypervisor, vm: VM) -> None:
    probe = Probe(hv, vm)
    assert probe.write(EFER, 1 << 8 | 1 << 10) == OK  # LME and LMA, paging off: LMA stays what it is
    assert probe.read(EFER) == 1 << 8
    assert probe.vcpu.get_sregs().efer == 1 << 8


def test_pat_memory_types(hv: Hypervisor, vm: VM) -> None:
    probe = Probe(hv, vm)
    reset = probe.read(PAT)
    assert reset == 0x0007040600070406
    bad, bad_too = 0x0707070707070702, 0x0007040600070403  # entry 0 is 2, then 3: not memory types
    variant = host_variant(hv, "pat_unchecked")
    if variant == UPSTREAM:
        assert probe.write(PAT, bad) == GP
        assert probe.read(PAT) == reset
        with pytest.raises(hvcore.InvalidArgument, match="MSR 0x277 refused"):
            probe.vcpu.set_msrs({PAT: bad_too})
        assert probe.vcpu.get_msrs([PAT]) == {PAT: reset}
    else:  # stored as they are, from the guest and from the VMM
        assert variant == "accepted"
        assert probe.write(PAT, bad) == OK
        assert probe.read(PAT) == bad
        probe.vcpu.set_msrs({PAT: bad_too})
        assert probe.read(PAT) == bad_too
        assert probe.vcpu.get_msrs([PAT]) == {PAT: bad_too}


def test_tsc_aux_needs_rdtscp_or_rdpid(hv: Hypervisor, vm: VM) -> None:
    probe = Probe(hv, vm)
    if _has(hv, 0x80000001, "edx", 27) or _has(hv, 7, "ecx", 22):
        assert probe.write(TSC_AUX, 5) == OK
        assert probe.read(TSC_AUX) == 5
    else:
        assert probe.write(TSC_AUX, 5) == GP
        assert probe.read(TSC_AUX) == GP


def test_tsc_aux_without_cpuid(hv: Hypervisor, vm: VM) -> None:
    probe = Probe(hv, vm, cpuid=())
    assert probe.read(TSC_AUX) == GP
    assert probe.write(TSC_AUX, 5) == GP
    probe.vcpu.set_msrs({TSC_AUX: 7})  # the VMM may, whatever the CPUID
    assert probe.vcpu.get_msrs([TSC_AUX]) == {TSC_AUX: 7}
    with pytest.raises(hvcore.InvalidArgument, match="MSR 0xc0000103 refused"):
        probe.vcpu.set_msrs({TSC_AUX: 1 << 32})  # bits 63:32 are reserved unless the vCPU is an AMD one


SPEC_CTRL, PRED_CMD, FLUSH_CMD = 0x48, 0x49, 0x10B


def test_speculation_msrs_need_their_cpuid_features(hv: Hypervisor, vm: VM) -> None:
    """IA32_SPEC_CTRL, IA32_PRED_CMD and IA32_FLUSH_CMD without their CPUID bits (kvm-unit-tests msr's checks)."""
    probe = Probe(hv, vm, cpuid=cpuid_rules.without_speculation_msrs(hv.supported_cpuid()))
    assert probe.read(PRED_CMD) == GP  # write-only, whatever the CPUID
    assert probe.read(FLUSH_CMD) == GP
    variant = host_variant(hv, "speculation_msrs_unchecked")
    if variant == UPSTREAM:
        assert probe.read(SPEC_CTRL) == GP
        for index in (SPEC_CTRL, PRED_CMD, FLUSH_CMD):
            assert (probe.write(index, 0), probe.write(index, 1)) == (GP, GP), hex(index)
    else:  # accepted, and nothing kept
        assert variant == "accepted"
        for index in (SPEC_CTRL, PRED_CMD, FLUSH_CMD):
            assert (probe.write(index, 0), probe.write(index, 1)) == (OK, OK), hex(index)
        assert probe.read(SPEC_CTRL) == 0


def test_apic_base_written_by_the_guest_is_the_vcpus(hv: Hypervisor, vm: VM) -> None:
    probe = Probe(hv, vm)
    assert probe.read(IA32_APIC_BASE) == 0xFEE00900  # enabled, BSP
    assert probe.write(IA32_APIC_BASE, 0xFED00900) == OK
    assert probe.vcpu.get_sregs().apic_base == 0xFED00900
    assert probe.vcpu.get_msrs([IA32_APIC_BASE]) == {IA32_APIC_BASE: 0xFED00900}
    assert probe.write(IA32_APIC_BASE, 0xFEE00100) == OK  # disabled
    assert probe.read(IA32_APIC_BASE) == 0xFEE00100


def test_tsc_deadline_without_an_irqchip_reads_zero(hv: Hypervisor, vm: VM) -> None:
    probe = Probe(hv, vm)
    assert probe.write(IA32_TSC_DEADLINE, 0x123456789) == OK
    assert probe.read(IA32_TSC_DEADLINE) == 0
    assert probe.vcpu.get_msrs([IA32_TSC_DEADLINE]) == {IA32_TSC_DEADLINE: 0}


# --- the TSC -------------------------------------------------------------------------------------------


def test_rdtsc_moves_on(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, long_mode.RDTSC_TWICE, "long")
    exit_ = vcpu.run()
    assert isinstance(exit_, IoExit) and exit_.port == 0x20 and exit_.direction is IoDirection.OUT
    assert int.from_bytes(exit_.data, "little") > 0
    assert vcpu.run() == HltExit()
    first = vcpu.get_regs().rbx
    assert vcpu.get_msrs([IA32_TSC])[IA32_TSC] > first


SECOND = 1 << 32  # TSC ticks: more than a second at any TSC frequency below 4 GHz


def test_rdtsc_follows_set_msrs(hv: Hypervisor, vm: VM) -> None:
    probe = Probe(hv, vm)
    before = probe.rdtsc()
    target = before + (1 << 48)
    probe.vcpu.set_msrs({IA32_TSC: target})
    after = probe.rdtsc()
    variant = host_variant(hv, "tsc_writes_ignored")
    if variant == UPSTREAM:
        assert target <= after < target + 10 * SECOND
        assert target <= probe.vcpu.get_msrs([IA32_TSC])[IA32_TSC] < target + 10 * SECOND
    else:  # the TSC goes on from where it was
        assert variant == "ignored"
        assert before < after < before + 10 * SECOND
        assert after <= probe.vcpu.get_msrs([IA32_TSC])[IA32_TSC] < before + 10 * SECOND


def test_guest_wrmsr_of_the_tsc_moves_tsc_adjust(hv: Hypervisor, vm: VM) -> None:
    probe = Probe(hv, vm)
    assert probe.read(IA32_TSC_ADJUST) == 0
    before = probe.rdtsc()
    target = before + (1 << 48)
    assert probe.write(IA32_TSC, target) == OK
    after = probe.rdtsc()
    adjust = probe.read(IA32_TSC_ADJUST)
    assert isinstance(adjust, int)
    assert (1 << 48) - 10 * SECOND < adjust <= 1 << 48  # what the write added to the TSC, as the SDM says
    variant = host_variant(hv, "tsc_writes_ignored")
    if variant == UPSTREAM:
        assert target <= after < target + 10 * SECOND
    else:  # the bookkeeping is done, the TSC does not move
        assert variant == "ignored"
        assert before < after < before + 10 * SECOND
