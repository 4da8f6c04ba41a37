"""KVM hypercalls: VMCALL / VMMCALL as upstream KVM runs them (``Documentation/virt/kvm/x86/hypercalls.rst``).

The number goes in RAX, the arguments in RBX, RCX, RDX and RSI, the result comes back in RAX
(32 bits outside 64-bit mode) and RIP moves past the instruction. The host's own instruction
(VMCALL on Intel, VMMCALL on AMD: the vendor of the host's supported CPUID, whose part the
simulator plays) exits to KVM directly; the other vendor's raises #UD, which KVM emulates by
patching the host's instruction over it (KVM_X86_QUIRK_FIX_HYPERCALL_INSN, on by default).

Hosts whose KVM never returns from a CPL0 hypercall (``hypercall_hangs``, probed) are accepted as
that registered variant: there the tests kick the run after a short while and check that it was
still at the hypercall. The simulator follows upstream (:mod:`hvcore_sim.hypercall`).
"""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from hvcore import VCPU, VM, Exit, HltExit, Hypervisor, InterruptedExit, IoDirection, IoExit, MpState, cpuid_rules
from hvcore.host import UPSTREAM
from hvcore.host.probes.hypercall import HANG_SECONDS
from tests.boot import boot, read_guest, run_exits, write_guest
from tests.guests import hypercall, layout
from tests.guests.boot import EVENT_PORT
from tests.quirks import has_irqchip, host_variant
from tests.test_exceptions import KERNEL_CS, KERNEL_SS, RF, RSP0, USER_CS, USER_SS, delivered, frame, long_mode_guest

CODE, STACK_TOP = layout.CODE, layout.STACK_TOP
SECOND = CODE + 0x100
"""Where the second vCPU's code goes."""
U32, U64 = (1 << 32) - 1, (1 << 64) - 1
KVM_ENOSYS, KVM_EPERM, KVM_EINVAL, KVM_EOPNOTSUPP, EOPNOTSUPP = 1000, 1, 22, 95, 95
KVM_HC_VAPIC_POLL_IRQ, KVM_HC_KICK_CPU, KVM_HC_CLOCK_PAIRING = 1, 5, 9
KVM_HC_SEND_IPI, KVM_HC_SCHED_YIELD, KVM_HC_MAP_GPA_RANGE = 10, 11, 12
TF = 1 << 8
ICR_NMI, ICR_LOGICAL = 4 << 8, 1 << 11
RBX, RCX, RDX = 0x1111_2222_3333_4444, 0x5555_6666_7777_8888, 0x9999_AAAA_BBBB_CCCC
"""Arguments no tested hypercall reads: the registers must come back unchanged."""


def instructions(hv: Hypervisor) -> tuple[bytes, bytes]:
    """The host's own hypercall instruction, and the other vendor's (which KVM patches)."""
    native = cpuid_rules.native_hypercall(cpuid_rules.vendor(hv.supported_cpuid()))
    return native, cpuid_rules.VMMCALL if native == cpuid_rules.VMCALL else cpuid_rules.VMCALL


def cpl0_hypercalls_hang(hv: Hypervisor) -> bool:
    """A CPL0 hypercall never returns: KVM_RUN runs until a signal; upstream runs the hypercall."""
    return {UPSTREAM: False, "hangs": True}[host_variant(hv, "hypercall_hangs")]


def run_cpl0(hv: Hypervisor, vcpu: VCPU) -> list[Exit] | None:
    """The exits up to HLT; on a ``hangs`` host None, once a kick ended the run still at the hypercall (RIP, RAX)."""
    if not cpl0_hypercalls_hang(hv):
        return run_exits(vcpu)
    before = vcpu.get_regs()
    kick = threading.Timer(HANG_SECONDS, vcpu.kick)
    kick.start()
    try:
        exit_ = vcpu.run()
    finally:
        kick.cancel()
    assert exit_ == InterruptedExit()
    after = vcpu.get_regs()
    assert (after.rip, after.rax) == (before.rip, before.rax)
    return None


# --- 64-bit mode, CPL0 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "result"),
    [
        (KVM_HC_VAPIC_POLL_IRQ, 0),
        (0, -KVM_ENOSYS),
        (1 << 32 | KVM_HC_VAPIC_POLL_IRQ, -KVM_ENOSYS),  # all 64 bits are the number
        (KVM_HC_MAP_GPA_RANGE, -KVM_ENOSYS),  # only with KVM_CAP_EXIT_HYPERCALL
        (KVM_HC_SCHED_YIELD, 0),
        (KVM_HC_KICK_CPU, 0),  # without an irqchip it kicks nobody
    ],
)
def test_hypercall_result_in_rax_and_rip_past_it(hv: Hypervisor, vm: VM, number: int, result: int) -> None:
    native, _ = instructions(hv)
    vcpu = boot(hv, vm, hypercall.then_hlt(native), "long", rax=number, rbx=RBX, rcx=RCX, rdx=RDX, rsi=1, rdi=2)
    before = vcpu.get_regs()
    exits = run_cpl0(hv, vcpu)
    if exits is None:
        return
    assert exits == [HltExit()]
    regs = vcpu.get_regs()
    assert regs == replace(before, rax=result & U64, rip=CODE + 4)  # 3 bytes of hypercall, 1 of hlt


def test_other_vendors_instruction_is_patched_into_the_hosts(hv: Hypervisor, vm: VM) -> None:
    native, foreign = instructions(hv)
    vcpu = boot(hv, vm, hypercall.then_hlt(foreign), "long", rax=0)
    exits = run_cpl0(hv, vcpu)
    if exits is None:
        return
    assert exits == [HltExit()]
    assert read_guest(vm, CODE, 3) == native
    regs = vcpu.get_regs()
    assert (regs.rax, regs.rip) == (-KVM_ENOSYS & U64, CODE + 4)


def test_clock_pairing_of_an_unknown_clock_is_eopnotsupp(hv: Hypervisor, vm: VM) -> None:
    native, _ = instructions(hv)
    clock_type = 1  # only KVM_CLOCK_PAIRING_WALLCLOCK (0) exists
    vcpu = boot(hv, vm, hypercall.then_hlt(native), "long", rax=KVM_HC_CLOCK_PAIRING, rbx=layout.DATA, rcx=clock_type)
    if run_cpl0(hv, vcpu) is not None:
        assert vcpu.get_regs().rax == -KVM_EOPNOTSUPP & U64
        assert read_guest(vm, layout.DATA, 16) == bytes(16)  # nothing written


@pytest.mark.parametrize(
    ("icr", "result"),
    [
        (ICR_NMI, -EOPNOTSUPP),  # no in-kernel LAPICs: no APIC map to send through
        (ICR_NMI | ICR_LOGICAL, -KVM_EINVAL),  # only physical destinations, checked first
    ],
)
def test_send_ipi_without_an_irqchip(hv: Hypervisor, vm: VM, icr: int, result: int) -> None:
    native, _ = instructions(hv)
    vcpu = boot(hv, vm, hypercall.then_hlt(native), "long", rax=KVM_HC_SEND_IPI, rbx=1, rcx=0, rdx=0, rsi=icr)
    if run_cpl0(hv, vcpu) is not None:
        assert vcpu.get_regs().rax == result & U64


def test_single_step_trap_follows_the_hypercall(hv: Hypervisor, vm: VM) -> None:
    native, _ = instructions(hv)
    vcpu = long_mode_guest(hv, vm, hypercall.then_hlt(native), user=False, rflags=TF | 0x2)
    vcpu.set_regs(replace(vcpu.get_regs(), rax=0))
    assert run_exits(vcpu) == delivered(1)  # a trap: no RF pushed
    if cpl0_hypercalls_hang(hv):  # the trap ends the first (endless) attempt, before the hypercall ran
        assert frame(vm, STACK_TOP, 5) == [CODE, KERNEL_CS, TF | 0x2, STACK_TOP, KERNEL_SS]
        assert vcpu.get_regs().rax >> 8 == 0  # (the handler's `mov al, 1` is in AL)
        return
    assert frame(vm, STACK_TOP, 5) == [CODE + 3, KERNEL_CS, TF | 0x2, STACK_TOP, KERNEL_SS]
    assert vcpu.get_regs().rax >> 8 == (-KVM_ENOSYS & U64) >> 8


def test_single_step_trap_follows_the_patch_at_the_patched_instruction(hv: Hypervisor, vm: VM) -> None:
    native, foreign = instructions(hv)
    vcpu = long_mode_guest(hv, vm, hypercall.then_hlt(foreign), user=False, rflags=TF | 0x2)
    vcpu.set_regs(replace(vcpu.get_regs(), rax=0))
    assert run_exits(vcpu) == delivered(1)  # KVM emulated the patch as one instruction: the hypercall is next
    assert frame(vm, STACK_TOP, 5) == [CODE, KERNEL_CS, TF | 0x2, STACK_TOP, KERNEL_SS]
    assert vcpu.get_regs().rax >> 8 == 0
    assert read_guest(vm, CODE, 3) == (cpuid_rules.VMCALL if cpl0_hypercalls_hang(hv) else native)


@pytest.mark.parametrize("which", ["native", "foreign"])
def test_lock_prefix_is_ud(hv: Hypervisor, vm: VM, which: str) -> None:
    instruction = dict(zip(("native", "foreign"), instructions(hv), strict=True))[which]
    vcpu = long_mode_guest(hv, vm, hypercall.prefixed(b"\xf0", instruction), user=False)
    assert run_exits(vcpu) == delivered(6)  # hardware's #UD, and KVM's emulator refuses LOCK too: not patched
    assert frame(vm, STACK_TOP, 5) == [CODE, KERNEL_CS, RF | 0x2, STACK_TOP, KERNEL_SS]
    assert read_guest(vm, CODE + 1, 3) == instruction


# --- 64-bit mode, CPL3 ---------------------------------------------------------------------------------


def test_cpl3_hypercall_is_eperm(hv: Hypervisor, vm: VM) -> None:
    native, _ = instructions(hv)
    vcpu = long_mode_guest(hv, vm, hypercall.then_hlt(native), user=True)
    vcpu.set_regs(replace(vcpu.get_regs(), rax=KVM_HC_VAPIC_POLL_IRQ))  # 0 at CPL0
    assert run_exits(vcpu) == delivered(13)  # the CPL3 `hlt` after the hypercall
    assert frame(vm, RSP0, 6) == [0, CODE + 3, USER_CS, RF | 0x2, STACK_TOP, USER_SS]
    assert vcpu.get_regs().rax >> 8 == (-KVM_EPERM & U64) >> 8  # (the handler's `mov al, 13` is in AL)


def test_other_vendors_instruction_at_cpl3(hv: Hypervisor, vm: VM) -> None:
    """Intel's KVM patches VMMCALL at any CPL (then the VMCALL is -KVM_EPERM); AMD's refuses VMCALL: #GP(0)."""
    native, foreign = instructions(hv)
    vcpu = long_mode_guest(hv, vm, hypercall.then_hlt(foreign), user=True)
    vcpu.set_regs(replace(vcpu.get_regs(), rax=KVM_HC_VAPIC_POLL_IRQ))
    assert run_exits(vcpu) == delivered(13)  # the CPL3 `hlt` after a hypercall, or the VMCALL itself
    rax = vcpu.get_regs().rax  # (the handler's `mov al, 13` is in AL)
    if native == cpuid_rules.VMCALL:
        assert frame(vm, RSP0, 6) == [0, CODE + 3, USER_CS, RF | 0x2, STACK_TOP, USER_SS]
        assert rax >> 8 == (-KVM_EPERM & U64) >> 8
        assert read_guest(vm, CODE, 3) == native
        return
    assert frame(vm, RSP0, 6) == [0, CODE, USER_CS, RF | 0x2, STACK_TOP, USER_SS]
    assert rax >> 8 == 0
    assert read_guest(vm, CODE, 3) == foreign  # not patched


# --- 32-bit protected mode ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rax", "result"),
    [
        (0xFFFF_FFFF_0000_0000 | KVM_HC_VAPIC_POLL_IRQ, 0),  # the number is EAX
        (1 << 32, -KVM_ENOSYS & U32),  # a 32-bit result, zero-extended into RAX
    ],
)
def test_protected_mode_hypercall_is_32_bits(hv: Hypervisor, vm: VM, rax: int, result: int) -> None:
    native, _ = instructions(hv)
    vcpu = boot(hv, vm, hypercall.then_hlt(native), "protected", rax=rax, rbx=RBX, rcx=RCX, rdx=RDX)
    vcpu.set_cpuid(hv.supported_cpuid())
    before = vcpu.get_regs()
    exits = run_cpl0(hv, vcpu)
    if exits is None:
        return
    assert exits == [HltExit()]
    assert vcpu.get_regs() == replace(before, rax=result, rip=CODE + 4)


# --- paravirtual hypercalls with the in-kernel irqchip ---------------------------------------------------


def second_vcpu(hv: Hypervisor, vm: VM, first: VCPU, rip: int) -> VCPU:
    """vCPU 1 in ``first``'s mode and tables at ``rip``, made runnable without INIT / SIPI (IF=0)."""
    vcpu = vm.create_vcpu(1)
    vcpu.set_cpuid(hv.supported_cpuid())
    vcpu.set_sregs(replace(first.get_sregs(), apic_base=vcpu.get_sregs().apic_base))
    vcpu.set_regs(replace(vcpu.get_regs(), rip=rip, rsp=STACK_TOP - 0x800, rflags=0x2))
    vcpu.set_mp_state(MpState.RUNNABLE)
    return vcpu


def run_to_out(hv: Hypervisor, vcpu: VCPU) -> IoExit | None:
    """One run to the guest's ``out 0x10, al`` after its CPL0 hypercall (None on a ``hangs`` host, checked)."""
    if cpl0_hypercalls_hang(hv):
        run_cpl0(hv, vcpu)
        return None
    exit_ = vcpu.run()
    assert isinstance(exit_, IoExit) and exit_.port == hypercall.PORT, exit_
    return exit_


def test_kick_cpu_ends_the_hlt_of_the_vcpu_with_that_apic_id(hv: Hypervisor, vm: VM) -> None:
    native, _ = instructions(hv)
    assert has_irqchip(hv, vm)
    kicker = boot(hv, vm, hypercall.then_out(native), "long", rax=KVM_HC_KICK_CPU, rcx=1)
    write_guest(vm, SECOND, hypercall.HALT_THEN_REPORT)
    sleeper = second_vcpu(hv, vm, kicker, SECOND)
    kick = threading.Timer(HANG_SECONDS, sleeper.kick)
    kick.start()
    try:
        assert sleeper.run() == InterruptedExit()  # halted with IF=0: no interrupt can wake it
    finally:
        kick.cancel()
    assert sleeper.get_mp_state() == MpState.HALTED
    if run_to_out(hv, kicker) is None:
        return
    assert kicker.get_regs().rax == 0
    assert sleeper.get_mp_state() == MpState.RUNNABLE  # KVM reports a kicked, halted vCPU as runnable
    assert sleeper.run() == IoExit(hypercall.KICKED_PORT, 1, 1, IoDirection.OUT, b"\x01")


def test_send_ipi_to_the_apic_ids_of_a_bitmap(hv: Hypervisor, vm: VM) -> None:
    native, _ = instructions(hv)
    assert has_irqchip(hv, vm)
    sender = long_mode_guest(hv, vm, hypercall.then_out(native), user=False)
    ids = 1 << 1 | 1 << 5  # APIC ids 1 and 5 (no vCPU has 5)
    sender.set_regs(replace(sender.get_regs(), rax=KVM_HC_SEND_IPI, rbx=ids, rcx=1, rdx=0, rsi=ICR_NMI))
    write_guest(vm, SECOND, hypercall.HALT_THEN_REPORT)
    receiver = second_vcpu(hv, vm, sender, SECOND)
    if run_to_out(hv, sender) is None:
        return
    assert sender.get_regs().rax == 1  # one APIC took it (id 64, bit 0 of RCX, is nobody's either)
    assert receiver.run() == IoExit(EVENT_PORT, 1, 1, IoDirection.OUT, b"\x02")  # its NMI handler runs first
