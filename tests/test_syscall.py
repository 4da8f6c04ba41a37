"""SYSCALL from CPL3 into the kernel: the state it loads, FMASK and the single-step trap after it.

The guest (``long_mode.SYSCALL_TO_HLT``) runs at CPL3 in 64-bit mode through the IDT and TSS of
``tests.test_exceptions``; the host sets EFER.SCE and the SYSCALL MSRs. Unicorn only calls a hook
for SYSCALL and steps over it; the simulator performs it (:mod:`hvcore_sim.syscall`).

Hosts whose KVM keeps a CPL3 SYSCALL in user mode (``syscall_from_cpl3``, probed) are accepted
as that registered variant; the simulator follows upstream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from hvcore import VCPU, VM, Exit, HltExit, Hypervisor
from hvcore.host import UPSTREAM
from tests.boot import run_exits
from tests.guests import layout, long_mode
from tests.quirks import host_variant
from tests.test_exceptions import (
    KERNEL_CS,
    KERNEL_SS,
    RF,
    RSP0,
    USER_CS,
    USER_SS,
    delivered,
    frame,
    long_mode_guest,
)

STAR, LSTAR, FMASK = 0xC0000081, 0xC0000082, 0xC0000084
EFER_SCE = 1
TF, IF, DF, NT = 1 << 8, 1 << 9, 1 << 10, 1 << 14
USER_FLAGS = 0x2 | IF | TF  # TF: a single-step trap is due after the syscall unless FMASK clears TF
CODE, STACK_TOP, TARGET = layout.CODE, layout.STACK_TOP, long_mode.SYSCALL_TARGET


def syscall_stays_at_cpl3(hv: Hypervisor) -> bool:
    """SYSCALL at CPL3 goes to LSTAR (RCX, R11, FMASK as upstream) but stays at CPL3, whatever EFER.SCE and TF.

    Upstream enters CPL0 (CS = STAR[47:32], SS = CS + 8), raises #UD with EFER.SCE clear, and
    traps after the syscall when TF survives FMASK.
    """
    return {UPSTREAM: False, "stays_at_cpl3": True}[host_variant(hv, "syscall_from_cpl3")]


def syscall_guest(hv: Hypervisor, vm: VM, *, fmask: int, sce: bool = True) -> VCPU:
    vcpu = long_mode_guest(hv, vm, long_mode.SYSCALL_TO_HLT, user=True, rflags=USER_FLAGS)
    sregs = vcpu.get_sregs()
    vcpu.set_sregs(replace(sregs, efer=sregs.efer | EFER_SCE if sce else sregs.efer & ~EFER_SCE))
    vcpu.set_msrs({STAR: KERNEL_CS << 32, LSTAR: TARGET, FMASK: fmask})
    return vcpu


def check_stayed_at_cpl3(vm: VM, vcpu: VCPU, exits: Sequence[Exit], fmask: int) -> None:
    """The ``stays_at_cpl3`` variant: the target's CPL0 `hlt` ran at CPL3 and raised #GP(0)."""
    assert exits == delivered(13)
    assert frame(vm, RSP0, 6) == [0, TARGET, USER_CS, RF | USER_FLAGS & ~fmask, STACK_TOP, USER_SS]
    regs = vcpu.get_regs()
    assert (regs.rcx, regs.r11) == (CODE + 2, USER_FLAGS)


def test_syscall_enters_the_kernel_at_lstar(hv: Hypervisor, vm: VM) -> None:
    fmask = TF | IF | DF | NT
    vcpu = syscall_guest(hv, vm, fmask=fmask)
    exits = run_exits(vcpu)
    if syscall_stays_at_cpl3(hv):
        check_stayed_at_cpl3(vm, vcpu, exits, fmask)
        return
    assert exits == [HltExit()]  # FMASK cleared TF: no single-step trap after the syscall
    regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
    assert (regs.rip, regs.rcx, regs.r11, regs.rsp) == (TARGET + 1, CODE + 2, USER_FLAGS, STACK_TOP)
    assert regs.rflags == USER_FLAGS & ~fmask
    cs, ss = sregs.cs, sregs.ss
    assert (cs.selector, cs.dpl, cs.l, cs.db, cs.present, cs.s, cs.type & 0xA) == (KERNEL_CS, 0, 1, 0, 1, 1, 0xA)
    assert (ss.selector, ss.dpl, ss.present, ss.s, ss.type & 0x2) == (KERNEL_SS, 0, 1, 1, 0x2)


def test_single_step_trap_after_syscall_when_fmask_keeps_tf(hv: Hypervisor, vm: VM) -> None:
    vcpu = syscall_guest(hv, vm, fmask=IF)
    exits = run_exits(vcpu)
    if syscall_stays_at_cpl3(hv):
        check_stayed_at_cpl3(vm, vcpu, exits, IF)
        return
    assert exits == delivered(1)  # TF is still set once the syscall is done: #DB at its target
    # at CPL0 on the user's stack (SYSCALL switches no stack); a trap pushes no RF
    assert frame(vm, STACK_TOP, 5) == [TARGET, KERNEL_CS, USER_FLAGS & ~IF, STACK_TOP, KERNEL_SS]
    assert vcpu.get_regs().rcx == CODE + 2


def test_syscall_without_efer_sce_is_ud(hv: Hypervisor, vm: VM) -> None:
    vcpu = syscall_guest(hv, vm, fmask=TF | IF, sce=False)
    exits = run_exits(vcpu)
    if syscall_stays_at_cpl3(hv):
        check_stayed_at_cpl3(vm, vcpu, exits, TF | IF)
        return
    assert exits == delivered(6)
    assert frame(vm, RSP0, 5) == [CODE, USER_CS, RF | USER_FLAGS, STACK_TOP, USER_SS]  # a fault on the syscall
