"""Exceptions injected with set_vcpu_events (KVM_SET_VCPU_EVENTS), and the pending-NMI count.

Upstream KVM (``arch/x86/kvm/x86.c``, no ``KVM_CAP_EXCEPTION_PAYLOAD``): an injected exception is
delivered through the guest's IDT on the next run, before any guest instruction, with the error
code the VMM gave and RFLAGS as they are; until then get_vcpu_events reports it, and afterwards
only its vector and error code stay. It goes before a queued NMI or interrupt (on this project's
hosts those may wait for the next exit: ``events_beside_injected_exception``). Guests and helpers
are :mod:`tests.test_exceptions`' (64-bit, a stub per vector that OUTs its vector and halts).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from hvcore import VCPU, VM, DescriptorTable, HltExit, Hypervisor, InterruptedExit, ShutdownExit, VcpuEvents
from hvcore.host import UPSTREAM
from tests.boot import run_exits
from tests.guests import long_mode
from tests.quirks import host_variant
from tests.test_exceptions import (
    CODE,
    IDT,
    KERNEL_CS,
    KERNEL_SS,
    RSP0,
    STACK_TOP,
    check_handler_state,
    delivered,
    frame,
    interrupted,
    long_mode_guest,
    missing,
    stub,
)

HLT = b"\xf4"  # (where the exception is not delivered the run ends at once, not in a watchdog's kick)
_VALID_NMI_PENDING = 0x1


def inject(vcpu: VCPU, vector: int, error_code: int | None = None, **changes: int) -> VcpuEvents:
    """Inject exception ``vector`` (with ``error_code`` if given) through set_vcpu_events; returns what was set."""
    events = replace(
        vcpu.get_vcpu_events(),
        exception_injected=1,
        exception_nr=vector,
        exception_has_error_code=int(error_code is not None),
        exception_error_code=error_code or 0,
        **changes,
    )
    vcpu.set_vcpu_events(events)
    return events


def exception_part(events: VcpuEvents) -> tuple[int, int, int, int, int]:
    return (
        events.exception_injected,
        events.exception_nr,
        events.exception_has_error_code,
        events.exception_error_code,
        events.exception_pending,
    )


@pytest.mark.parametrize("user", [True, False], ids=["user", "kernel"])
def test_injected_gp_is_delivered_with_its_error_code(hv: Hypervisor, vm: VM, user: bool) -> None:
    vcpu = long_mode_guest(hv, vm, HLT, user=user)
    inject(vcpu, 13, 0x10)
    assert run_exits(vcpu) == delivered(13)  # before the guest's first instruction
    cs, ss = interrupted(user)
    top = RSP0 if user else STACK_TOP
    assert frame(vm, top, 6) == [0x10, CODE, cs, 0x2, STACK_TOP, ss]  # return RIP: the interrupted instruction, no RF
    check_handler_state(hv, vcpu, 13, user=user, rsp=top - 48)
    assert exception_part(vcpu.get_vcpu_events()) == (0, 13, 1, 0x10, 0)  # delivered: vector and code stay


def test_injected_ud_pushes_no_error_code(hv: Hypervisor, vm: VM) -> None:
    vcpu = long_mode_guest(hv, vm, HLT, user=False, rflags=1 << 16 | 0x2)
    inject(vcpu, 6)
    assert run_exits(vcpu) == delivered(6)
    assert frame(vm, STACK_TOP, 6) == [0, CODE, KERNEL_CS, 1 << 16 | 0x2, STACK_TOP, KERNEL_SS]  # RF as it was
    check_handler_state(hv, vcpu, 6, user=False, rsp=STACK_TOP - 40)
    assert exception_part(vcpu.get_vcpu_events()) == (0, 6, 0, 0, 0)


def test_injected_exception_that_cannot_be_delivered_shuts_down(hv: Hypervisor, vm: VM) -> None:
    vcpu = long_mode_guest(hv, vm, HLT, user=False)
    vcpu.set_sregs(replace(vcpu.get_sregs(), idt=DescriptorTable(IDT, 0)))  # #GP, then #DF, beyond the limit
    inject(vcpu, 13, 0x10)
    assert vcpu.run() == ShutdownExit()
    assert vcpu.get_regs().rip == CODE
    assert exception_part(vcpu.get_vcpu_events()) == (0, 13, 1, 0x10, 0)


def test_injected_gp_through_a_missing_gate_is_a_double_fault(hv: Hypervisor, vm: VM) -> None:
    vcpu = long_mode_guest(hv, vm, HLT, user=False, gates={13: missing(13)})
    inject(vcpu, 13, 0x10)
    assert run_exits(vcpu) == delivered(8)  # #NP(13 * 8 + 2 + 1) on a #GP: both contributory
    assert frame(vm, STACK_TOP, 6) == [0, CODE, KERNEL_CS, 0x2, STACK_TOP, KERNEL_SS]


def test_vcpu_events_report_the_injected_exception_until_it_is_delivered(hv: Hypervisor, vm: VM) -> None:
    vcpu = long_mode_guest(hv, vm, HLT, user=False)
    assert exception_part(vcpu.get_vcpu_events()) == (0, 0, 0, 0, 0)
    events = inject(vcpu, 14, 0x7)
    assert vcpu.get_vcpu_events() == events
    vcpu.set_vcpu_events(vcpu.get_vcpu_events())  # a round trip keeps it
    assert exception_part(vcpu.get_vcpu_events()) == (1, 14, 1, 0x7, 0)
    vcpu.kick()  # as immediate_exit: the run returns before it injects anything
    assert vcpu.run() == InterruptedExit()
    assert exception_part(vcpu.get_vcpu_events()) == (1, 14, 1, 0x7, 0)
    assert run_exits(vcpu) == delivered(14)
    assert exception_part(vcpu.get_vcpu_events()) == (0, 14, 1, 0x7, 0)


def test_a_pending_exception_means_nothing_without_the_payload_capability(hv: Hypervisor, vm: VM) -> None:
    vcpu = long_mode_guest(hv, vm, HLT, user=False)
    vcpu.set_vcpu_events(replace(vcpu.get_vcpu_events(), exception_pending=1, exception_nr=6))
    assert exception_part(vcpu.get_vcpu_events()) == (0, 6, 0, 0, 0)  # the vector is kept, nothing is queued
    assert vcpu.run() == HltExit()
    assert vcpu.get_regs().rip == CODE + 1


def test_injected_exception_goes_before_a_pending_nmi(hv: Hypervisor, vm: VM) -> None:
    vcpu = long_mode_guest(hv, vm, long_mode.SPIN, user=False)
    vcpu.nmi()
    inject(vcpu, 6)
    exits = run_exits(vcpu)
    ud_rsp = STACK_TOP - 40
    nmi_top = ud_rsp & ~0xF  # below #UD's frame, aligned down to 16 bytes
    assert frame(vm, STACK_TOP, 5) == [CODE, KERNEL_CS, 0x2, STACK_TOP, KERNEL_SS]
    if host_variant(hv, "events_beside_injected_exception") == UPSTREAM:
        assert exits == delivered(2)  # the NMI interrupts #UD's handler before its first instruction
        assert frame(vm, nmi_top, 5) == [stub(6), KERNEL_CS, 0x2, ud_rsp, KERNEL_SS]
    else:
        assert exits == [delivered(6)[0], *delivered(2)]  # the NMI waits for the handler's OUT exit
        assert frame(vm, nmi_top, 5) == [stub(6) + 4, KERNEL_CS, 0x2, ud_rsp, KERNEL_SS]
    assert vcpu.get_vcpu_events().nmi_pending == 0


@pytest.mark.parametrize("how", ["interrupt", "vcpu_events"])
def test_injected_exception_goes_before_a_queued_interrupt(hv: Hypervisor, vm: VM, how: str) -> None:
    vcpu = long_mode_guest(hv, vm, long_mode.SPIN, user=False)
    if how == "interrupt":
        vcpu.interrupt(0x20)
        inject(vcpu, 6)
    else:
        inject(vcpu, 6, interrupt_injected=1, interrupt_nr=0x20)
    events = vcpu.get_vcpu_events()
    assert (events.exception_injected, events.interrupt_injected, events.interrupt_nr) == (1, 1, 0x20)
    exits = run_exits(vcpu)
    assert frame(vm, STACK_TOP, 5) == [CODE, KERNEL_CS, 0x2, STACK_TOP, KERNEL_SS]
    if host_variant(hv, "events_beside_injected_exception") == UPSTREAM:
        assert exits == delivered(6)  # KVM does not inject the interrupt with it, and the exit after clears it
    else:
        assert exits == [delivered(6)[0], *delivered(0x20)]
    assert vcpu.get_vcpu_events().interrupt_injected == 0


def test_at_most_two_nmis_are_pending(hv: Hypervisor, vm: VM) -> None:
    vcpu = long_mode_guest(hv, vm, HLT, user=False)
    events = vcpu.get_vcpu_events()
    vcpu.set_vcpu_events(replace(events, nmi_pending=5, flags=_VALID_NMI_PENDING))
    assert vcpu.get_vcpu_events().nmi_pending == 2  # process_nmi: two while NMIs are not blocked
    vcpu.set_vcpu_events(replace(events, nmi_pending=5, nmi_masked=1, flags=_VALID_NMI_PENDING))
    assert vcpu.get_vcpu_events().nmi_pending == 1  # one while they are
    vcpu.set_vcpu_events(replace(events, nmi_pending=0, flags=_VALID_NMI_PENDING))
    for _ in range(3):
        vcpu.nmi()
    assert vcpu.get_vcpu_events().nmi_pending == 2
