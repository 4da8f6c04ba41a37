"""Simulator internals of MSR emulation: the SVM intercepts behind it, the MSR handler, RDTSCP, the TSC clock."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hvcore import Exit, HltExit, IoDirection, IoExit, cpuid_rules, x86
from hvcore_sim import layout as layout_module
from hvcore_sim import system
from hvcore_sim.clock import VirtualClock
from hvcore_sim.engine import Engine
from hvcore_sim.layout import HF_GUEST
from hvcore_sim.msrs import IA32_TSC_DEADLINE, TSC_AUX, DefaultMsrHandler, MsrEmulator
from hvcore_sim.state import VcpuState
from hvcore_sim.system import SimHypervisor
from tests.boot import boot, run_exits
from tests.guests import layout, long_mode
from tests.test_exceptions import delivered, long_mode_guest
from tests.test_msrs import GP, Probe

pytestmark = pytest.mark.skipif(
    system._unicorn_problem() is not None, reason=f"simulator unusable: {system._unicorn_problem()}"
)

CODE = layout.CODE

# 64-bit: WRMSR of 0x0123456789ABCDEF to IA32_TSC_DEADLINE, RDMSR of it back, eax sent out.
# Exits: OUT port 0x20 size 4 data (the low half of what the handler reads), HLT.
TSC_DEADLINE_ROUND_TRIP = (
    b"\xb9\xe0\x06\x00\x00"  # mov ecx, 0x6e0
    b"\xb8\xef\xcd\xab\x89"  # mov eax, 0x89abcdef
    b"\xba\x67\x45\x23\x01"  # mov edx, 0x1234567
    b"\x0f\x30"              # wrmsr
    b"\x0f\x32"              # rdmsr
    b"\xe7\x20"              # out 0x20, eax
    b"\xf4"                  # hlt
)  # fmt: skip

# 64-bit: RDTSCP, eax sent out. Exits: OUT port 0x20 size 4 (RIP CODE + 5), HLT.
RDTSCP = (
    b"\x0f\x01\xf9"  # rdtscp
    b"\xe7\x20"      # out 0x20, eax
    b"\xf4"          # hlt
)  # fmt: skip

# 64-bit: RDMSR of STAR with a REX prefix (3 bytes), eax sent out. Exits: OUT port 0x20 size 4, HLT.
REX_RDMSR = (
    b"\xb9\x81\x00\x00\xc0"  # mov ecx, 0xc0000081
    b"\x48\x0f\x32"          # rex.w rdmsr
    b"\xe7\x20"              # out 0x20, eax
    b"\xf4"                  # hlt
)  # fmt: skip


@pytest.fixture
def sim() -> SimHypervisor:
    return system.SimHypervisor()


class RecordingHandler:
    """An MsrHandler that notes every write and answers reads with a fixed value."""

    def __init__(self, answer: int, accept: bool = True) -> None:
        self.answer = answer
        self.accept = accept
        self.writes: list[tuple[int, int, bool]] = []

    def read(self, index: int) -> int | None:
        return self.answer if index == IA32_TSC_DEADLINE else None

    def write(self, index: int, value: int, *, host: bool) -> bool:
        self.writes.append((index, value, host))
        return self.accept


def test_calibration_finds_the_svm_fields_after_old_exception() -> None:
    lay = layout_module.calibrate()
    assert lay.vm_vmcb == lay.old_exception + 8  # QEMU 5.0: old_exception, vm_vmcb, tsc_offset, intercept
    assert lay.intercept == lay.vm_vmcb + 16


def test_hf_guest_survives_set_sregs_and_reset() -> None:
    engine = Engine(layout_module.calibrate())

    def hflags() -> int:
        return int.from_bytes(engine._blob()[engine.layout.hflags : engine.layout.hflags + 4], "little")

    assert hflags() & HF_GUEST
    engine.reset()
    assert hflags() & HF_GUEST
    sregs = engine.get_sregs(apic_base=0, interrupt_bitmap=(0, 0, 0, 0), cr8=0)
    engine.set_sregs(x86.real_mode_sregs(sregs))
    assert hflags() & HF_GUEST


def test_unicorn_is_never_asked_for_an_msr_outside_the_permission_bitmap() -> None:
    engine = Engine(layout_module.calibrate())
    with pytest.raises(ValueError, match="outside the SVM permission bitmap"):
        engine.read_msr(0xDEADBEEF)
    engine.write_msr(0xC0000081, 0x1234)  # STAR: inside it
    assert engine.read_msr(0xC0000081) == 0x1234


def test_guest_tsc_deadline_goes_to_the_vcpus_handler(sim: SimHypervisor) -> None:
    with sim.create_vm() as vm:
        vcpu = boot(sim, vm, TSC_DEADLINE_ROUND_TRIP, "long")
        handler = RecordingHandler(answer=0x42)
        vm.vcpus()[0].msrs.handler = handler
        assert run_exits(vcpu) == [IoExit(0x20, 4, 1, IoDirection.OUT, (0x42).to_bytes(4, "little")), HltExit()]
        assert handler.writes == [(IA32_TSC_DEADLINE, 0x0123456789ABCDEF, False)]
        vcpu.set_msrs({IA32_TSC_DEADLINE: 5})
        assert handler.writes[-1] == (IA32_TSC_DEADLINE, 5, True)
        assert vcpu.get_msrs([IA32_TSC_DEADLINE]) == {IA32_TSC_DEADLINE: 0x42}


def test_a_handler_refusing_a_write_raises_gp(sim: SimHypervisor) -> None:
    with sim.create_vm() as vm:
        vcpu = long_mode_guest(sim, vm, TSC_DEADLINE_ROUND_TRIP, user=False)
        vm.vcpus()[0].msrs.handler = RecordingHandler(answer=0, accept=False)
        assert run_exits(vcpu) == delivered(13)


def test_the_default_handler_keeps_the_last_deadline_and_reads_zero(sim: SimHypervisor) -> None:
    with sim.create_vm() as vm:
        vcpu = boot(sim, vm, TSC_DEADLINE_ROUND_TRIP, "long")
        assert run_exits(vcpu) == [IoExit(0x20, 4, 1, IoDirection.OUT, bytes(4)), HltExit()]
        handler = vm.vcpus()[0].msrs.handler
        assert isinstance(handler, DefaultMsrHandler)
        assert handler.tsc_deadline == 0x0123456789ABCDEF


def test_rdtscp_gives_the_tsc_and_tsc_aux(sim: SimHypervisor) -> None:
    with sim.create_vm(clock=VirtualClock()) as vm:
        vcpu = boot(sim, vm, RDTSCP, "long")
        vcpu.set_msrs({TSC_AUX: 0x1234, 0x10: 1000})
        exit_ = vcpu.run()
        assert isinstance(exit_, IoExit) and exit_.port == 0x20
        regs = vcpu.get_regs()
        assert (regs.rip, regs.rcx, regs.rdx) == (CODE + 3, 0x1234, 0)  # at the OUT: the next run completes it
        assert int.from_bytes(exit_.data, "little") == regs.rax & 0xFFFFFFFF == 1000


def test_rdtscp_without_its_cpuid_bit_is_ud(sim: SimHypervisor) -> None:
    with sim.create_vm() as vm:
        vcpu = long_mode_guest(sim, vm, RDTSCP, user=False)
        without = [replace(e, edx=e.edx & ~(1 << 27)) if e.function == 0x80000001 else e for e in sim.supported_cpuid()]
        vcpu.set_cpuid(without)  # no RDTSCP
        assert run_exits(vcpu) == delivered(6)


def test_prefixes_count_in_the_instruction_length(sim: SimHypervisor) -> None:
    with sim.create_vm() as vm:
        vcpu = boot(sim, vm, REX_RDMSR, "long")
        vcpu.set_msrs({0xC0000081: 0xCAFE})
        assert run_exits(vcpu) == [IoExit(0x20, 4, 1, IoDirection.OUT, (0xCAFE).to_bytes(4, "little")), HltExit()]


def test_a_virtual_clock_gives_a_tsc_counted_in_instructions(sim: SimHypervisor) -> None:
    seen: list[tuple[list[Exit], int]] = []
    for _ in range(2):
        with sim.create_vm(clock=VirtualClock(ns_per_instruction=3)) as vm:
            vcpu = boot(sim, vm, long_mode.RDTSC_TWICE, "long")
            exits = run_exits(vcpu)
            seen.append((exits, vcpu.get_regs().rbx))
    assert seen[0] == seen[1]  # the same TSC values on every run
    assert seen[0][0][0] == IoExit(0x20, 4, 1, IoDirection.OUT, (4 * 3).to_bytes(4, "little"))  # 4 instructions apart


def test_an_emulator_on_its_own_follows_its_clock() -> None:
    clock = VirtualClock()
    msrs = MsrEmulator(VcpuState(), clock)
    clock.set(500)
    assert msrs.tsc() == 500
    msrs.tsc_offset = 100
    assert msrs.tsc() == 600


def test_an_intercepted_instruction_in_a_code_segment_with_a_base(sim: SimHypervisor) -> None:
    with sim.create_vm() as vm:
        vcpu = boot(sim, vm, b"\x0f\x31\xf4")  # rdtsc; hlt -- real mode
        sregs = vcpu.get_sregs()
        vcpu.set_sregs(replace(sregs, cs=replace(sregs.cs, selector=CODE >> 4, base=CODE)))
        vcpu.set_regs(replace(vcpu.get_regs(), rip=0))
        assert vcpu.run() == HltExit()
        assert vcpu.get_regs().rip == 3


def test_an_intercepted_instruction_across_a_page_boundary(sim: SimHypervisor) -> None:
    with sim.create_vm() as vm:
        code = REX_RDMSR[:5] + b"\x90" * (0x1000 - 2 - 5) + REX_RDMSR[5:]  # rex.w, 0x0f | 0x32 on the next page
        assert code.index(b"\x48\x0f\x32") == 0x1000 - 2
        vcpu = boot(sim, vm, code, "long")
        vcpu.set_msrs({0xC0000081: 0xBEEF})
        assert run_exits(vcpu) == [IoExit(0x20, 4, 1, IoDirection.OUT, (0xBEEF).to_bytes(4, "little")), HltExit()]


def test_speculation_msrs_raise_gp_even_with_their_cpuid_bits(sim: SimHypervisor) -> None:
    """The simulated host has none of their features, so KVM (``guest_cpu_cap_has``) never gives them to a guest."""
    supported = sim.supported_cpuid()
    assert cpuid_rules.without_speculation_msrs(supported) == list(supported)
    features = cpuid_rules.SPECULATION_MSR_FEATURES
    every_bit = [
        replace(e, **{r: getattr(e, r) | m for (leaf, r), m in features.items() if (leaf, 0) == (e.function, e.index)})
        for e in supported
    ]
    with sim.create_vm() as vm:
        probe = Probe(sim, vm, cpuid=every_bit)
        assert probe.read(0x48) == GP
        for index in (0x48, 0x49, 0x10B):
            assert (probe.write(index, 0), probe.write(index, 1)) == (GP, GP), hex(index)
