"""Guest debugging: single-step exits, debug registers."""

from __future__ import annotations

import pytest

from hvcore import VM, DebugExit, DebugRegs, GuestDebug, GuestDebugFlags, Hypervisor, Unsupported
from tests.boot import boot
from tests.guests import layout, real_mode
from tests.quirks import full_guest_debug, single_step_dr7


def test_single_step_exits_once_per_instruction(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, real_mode.SINGLE_STEP, rbx=0)
    vcpu.set_guest_debug(GuestDebug(GuestDebugFlags.ENABLE | GuestDebugFlags.SINGLESTEP))
    steps = [vcpu.run() for _ in range(7)]
    assert all(isinstance(s, DebugExit) for s in steps)
    assert [s.pc - layout.CODE for s in steps] == [0x3, 0x4, 0xA, 0xB, 0xD, 0xE, 0xF]  # type: ignore[union-attr]
    first = steps[0]
    assert isinstance(first, DebugExit)
    assert first.exception == 1
    assert first.dr6 & 0xFFFF == 0x4FF0  # BS set
    assert first.dr7 == single_step_dr7(hv)
    regs = vcpu.get_regs()
    assert regs.rip == layout.CODE + 0xF
    assert regs.rbx & 0xFFFF == 0x102
    assert regs.rcx & 0xFFFF == 0x102
    vcpu.set_guest_debug(GuestDebug())


def test_debug_registers_round_trip(hv: Hypervisor, vm: VM) -> None:
    vcpu = vm.create_vcpu(0)
    reset = vcpu.get_debugregs()
    assert reset.dr6 & 0xFFFF0FF0 == 0xFFFF0FF0
    assert reset.dr7 == 0x400
    wanted = DebugRegs(db=(0x1000, 0x2000, 0x3000, 0x4000), dr6=reset.dr6, dr7=0x401)
    vcpu.set_debugregs(wanted)
    got = vcpu.get_debugregs()
    assert (got.db, got.dr7) == (wanted.db, wanted.dr7)


def test_breakpoint_flags_are_accepted_or_refused_as_documented(hv: Hypervisor, vm: VM) -> None:
    vcpu = vm.create_vcpu(0)
    settings = GuestDebug(GuestDebugFlags.ENABLE | GuestDebugFlags.USE_HW_BP, (0x1000, 0, 0, 0, 0, 0, 0, 0x1))
    if full_guest_debug(hv):
        vcpu.set_guest_debug(settings)
    else:
        with pytest.raises(Unsupported, match="SINGLESTEP only"):
            vcpu.set_guest_debug(settings)
    vcpu.set_guest_debug(GuestDebug())
