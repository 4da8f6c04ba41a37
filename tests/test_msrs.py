"""Guest RDMSR / WRMSR / RDTSC and the VMM's get_msrs / set_msrs: KVM's rules on every backend.

Most tests drive ``real_mode.MSR_PROBE``, a guest loop that reads, writes or RDTSCs what the host
asks for over port IO and reports a #GP instead of the value (:class:`Probe`). The #GP and
SHUTDOWN tests run 64-bit guests through the IDT of ``tests.test_exceptions``.

This host's KVM (``kvm_pvm``) accepts any IA32_PAT and ignores writes to IA32_TSC; the tests
assert that through the quirks registry (``pat_checked``, ``tsc_writable``); the simulator
follows upstream.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence

import pytest

import hvcore
from hvcore import VCPU, VM, CpuidEntry, HltExit, Hypervisor, IoDirection, IoExit, ShutdownExit
from tests.boot import boot, run_exits
from tests.guests import layout, long_mode, real_mode
from tests.quirks import pat_checked, tsc_writable
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
    ("code", "rip", "rflags", "rdx"),
    [
        (long_mode.RDMSR_UNKNOWN, CODE + 0xA, 0x2, 0x600),  # rdx as at reset: the rdmsr did not load it
        (long_mode.WRMSR_UNKNOWN, CODE + 0x9, 0x46, 0),  # ZF and PF from the xor
    ],
    ids=["rdmsr", "wrmsr"],
)
def test_an_unknown_msr_raises_gp(hv: Hypervisor, vm: VM, code: bytes, rip: int, rflags: int, rdx: int) -> None:
    vcpu = long_mode_guest(hv, vm, code, user=False)
    assert run_exits(vcpu) == delivered(13)
    assert frame(vm, STACK_TOP, 6) == [0, rip, KERNEL_CS, RF | rflags, STACK_TOP, KERNEL_SS]
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

ROUND_TRIPS = [
    (SYSENTER_CS, 0xFFFFFFFF12345678),  # all 64 bits kept (KVM on AMD; VMX keeps 32)
    (SYSENTER_ESP, 0xFFFF800000008000),
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
    assert probe.write(index, value) == OK
    assert probe.read(index) == value
    assert probe.vcpu.get_msrs([index]) == {index: value}
    probe.vcpu.set_msrs({index: 0})
    assert probe.read(index) == 0


def test_sysenter_esp_and_eip_are_made_canonical(hv: Hypervisor, vm: VM) -> None:
    probe = Probe(hv, vm)
    assert probe.write(SYSENTER_ESP, 0x0000800000000010) == OK
    assert probe.read(SYSENTER_ESP) == 0xFFFF800000000010
    probe.vcpu.set_msrs({SYSENTER_EIP: 0x1234800000000010})
    assert probe.read(SYSENTER_EIP) == 0xFFFF800000000010


REFUSED = [
    ("lstar-noncanonical", LSTAR, 0x0000800000000000, True),
    ("kernel-gs-noncanonical", KERNEL_GS_BASE, 0x8000000000000000, True),
    ("fs-noncanonical", FS_BASE, 0x0001000000000000, True),
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
    bad = 0x0707070707070702  # entry 0 is 2, not a memory type
    if pat_checked(hv):
        assert probe.write(PAT, bad) == GP
        assert probe.read(PAT) == reset
        with pytest.raises(hvcore.InvalidArgument, match="MSR 0x277 refused"):
            probe.vcpu.set_msrs({PAT: bad})
    else:  # host quirk pat_unchecked: stored as it is
        assert probe.write(PAT, bad) == OK
        assert probe.read(PAT) == bad


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
    if tsc_writable(hv):
        assert target <= after < target + 10 * SECOND
        assert target <= probe.vcpu.get_msrs([IA32_TSC])[IA32_TSC] < target + 10 * SECOND
    else:  # host quirk tsc_writes_ignored
        assert before < after < before + 10 * SECOND


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
    if tsc_writable(hv):
        assert target <= after < target + 10 * SECOND
    else:  # host quirk tsc_writes_ignored: the bookkeeping is done, the TSC does not move
        assert before < after < before + 10 * SECOND
