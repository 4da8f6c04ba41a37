"""Guest debugging: single-step, hardware breakpoints and watchpoints, software breakpoints, injected #DB / #BP.

Upstream KVM's exits are those of tools/testing/selftests/kvm/x86/debug_regs.c: exception 1 for a
#DB (pc the linear RIP, dr6 0xffff0ff0 with B0-B3 or BS, dr7 debugreg[7]), exception 3 at an int3.
Where this host's KVM differs, the test asserts its registered variant (tests/quirks.py).
"""

from __future__ import annotations

import errno
from dataclasses import replace

import pytest

from hvcore import (
    VM,
    Capability,
    DebugExit,
    DebugRegs,
    GuestDebug,
    GuestDebugFlags,
    GuestMemory,
    HltExit,
    Hypervisor,
    IoDirection,
    IoExit,
    SlotFlags,
    StateError,
    Unsupported,
)
from hvcore.host import UPSTREAM
from tests.boot import boot, read_guest, run_exits, write_guest
from tests.guests import debug, layout, real_mode
from tests.quirks import breakpoint_dr7, guest_debug_refused, host_variant, single_step_dr7

F = GuestDebugFlags
HW = F.ENABLE | F.USE_HW_BP
ACTIVE_LOW = 0xFFFF0FF0
BS = 1 << 14
RF = 1 << 16
CR4_DE = 1 << 3


def dr7(*fields: tuple[int, int, int], local: bool = False) -> int:
    """DR7 enabling each ``(index, rw, len)`` (LEN as encoded: 00 = 1, 01 = 2, 11 = 4, 10 = 8 bytes)."""
    value = 0x400
    for index, rw, length in fields:
        value |= (1 if local else 2) << (2 * index) | (rw | length << 2) << (16 + 4 * index)
    return value


def hardware(addresses: dict[int, int], control: int, flags: F = HW) -> GuestDebug:
    """USE_HW_BP with ``addresses`` (DR index -> linear address) and DR7 ``control``."""
    regs = [0] * 8
    for index, address in addresses.items():
        regs[index] = address
    regs[7] = control
    return GuestDebug(flags, tuple(regs))


def out(port: int, value: int) -> IoExit:
    return IoExit(port, 1, 1, IoDirection.OUT, bytes([value]))


# --- single-step ------------------------------------------------------------------------------------------


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


# --- what a VMM can ask first -------------------------------------------------------------------------------


def test_capabilities_say_which_guest_debug_flags_are_taken(hv: Hypervisor, vm: VM) -> None:
    """x86 KVM answers KVM_CAP_SET_GUEST_DEBUG2 with its valid flags; the breakpoint counts are arm64's (0)."""
    assert hv.check_extension(Capability.SET_GUEST_DEBUG) == 1
    flags = hv.check_extension(Capability.SET_GUEST_DEBUG2)
    wanted = F.ENABLE | F.SINGLESTEP | F.USE_SW_BP | F.USE_HW_BP | F.INJECT_DB | F.INJECT_BP
    assert flags & wanted == wanted
    assert flags & ~(wanted | F.BLOCKIRQ) == 0
    assert vm.check_extension(Capability.SET_GUEST_DEBUG2) == flags
    assert hv.check_extension(Capability.GUEST_DEBUG_HW_BPS) == 0
    assert hv.check_extension(Capability.GUEST_DEBUG_HW_WPS) == 0


def test_what_is_not_built_is_refused_and_not_advertised(hv: Hypervisor, vm: VM) -> None:
    vcpu = vm.create_vcpu(0)
    block_irq = GuestDebug(F.ENABLE | F.SINGLESTEP | F.BLOCKIRQ)
    general_detect = hardware({}, 0x400 | 1 << 13)
    refused = guest_debug_refused(hv)
    assert bool(hv.check_extension(Capability.SET_GUEST_DEBUG2) & F.BLOCKIRQ) != refused
    for settings, named in ((block_irq, "BLOCKIRQ"), (general_detect, "DR7.GD")):
        if refused:
            with pytest.raises(Unsupported, match=named):
                vcpu.set_guest_debug(settings)
        else:
            vcpu.set_guest_debug(settings)
    vcpu.set_guest_debug(GuestDebug())


def test_flags_outside_the_valid_mask_are_ignored_as_kvm_does(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, real_mode.SINGLE_STEP, rbx=0)
    vcpu.set_guest_debug(GuestDebug(F.ENABLE | F.SINGLESTEP | F(1 << 30)))
    step = vcpu.run()
    assert isinstance(step, DebugExit) and step.pc == layout.CODE + 3


# --- hardware breakpoints ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(4))
def test_execute_breakpoint_stops_before_the_instruction(hv: Hypervisor, vm: VM, index: int) -> None:
    vcpu = boot(hv, vm, debug.EXECUTE, "long")
    control = dr7((index, 0b00, 0b00))
    vcpu.set_guest_debug(hardware({index: debug.BREAK_AT}, control))
    hit = DebugExit(1, debug.BREAK_AT, ACTIVE_LOW | 1 << index, breakpoint_dr7(hv, control))
    assert vcpu.run() == hit
    regs = vcpu.get_regs()
    assert (regs.rip, regs.rax & 0xFFFFFFFF) == (debug.BREAK_AT, 1)
    assert vcpu.run() == hit  # KVM sets no RF: running again meets the breakpoint again
    vcpu.set_regs(replace(vcpu.get_regs(), rflags=vcpu.get_regs().rflags | RF))
    if host_variant(hv, "breakpoint_resume_flag") == UPSTREAM:
        # RF lets the `je` run once, with the flags `cmp` left (the stop kept them)
        assert run_exits(vcpu) == [out(0x80, 0x42), HltExit()]
        assert not vcpu.get_regs().rflags & RF
    else:  # refires
        assert vcpu.run() == hit
        assert vcpu.get_regs().rip == debug.BREAK_AT


def test_execute_breakpoint_and_single_step_use_linear_addresses(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, b"", "real")
    write_guest(vm, debug.SEGMENT_BASE, debug.SEGMENTED)
    sregs = vcpu.get_sregs()
    vcpu.set_sregs(replace(sregs, cs=replace(sregs.cs, selector=debug.SEGMENT_BASE >> 4, base=debug.SEGMENT_BASE)))
    vcpu.set_regs(replace(vcpu.get_regs(), rip=0))
    control = dr7((1, 0b00, 0b00), local=True)
    vcpu.set_guest_debug(hardware({1: debug.SEGMENT_BASE + 3}, control))
    assert vcpu.run() == DebugExit(1, debug.SEGMENT_BASE + 3, ACTIVE_LOW | 1 << 1, breakpoint_dr7(hv, control))
    assert vcpu.get_regs().rip == 3
    vcpu.set_regs(replace(vcpu.get_regs(), rip=0))
    vcpu.set_guest_debug(GuestDebug(F.ENABLE | F.SINGLESTEP))
    steps = [vcpu.run() for _ in range(2)]
    assert [(s.exception, s.pc) for s in steps if isinstance(s, DebugExit)] == [
        (1, debug.SEGMENT_BASE + 3),
        (1, debug.SEGMENT_BASE + 4),
    ]


def test_execute_breakpoint_in_code_that_already_ran(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, real_mode.SINGLE_STEP, rbx=0)
    assert vcpu.run() == HltExit()
    vcpu.set_regs(replace(vcpu.get_regs(), rip=layout.CODE))
    control = dr7((2, 0b00, 0b00))
    vcpu.set_guest_debug(hardware({2: layout.CODE + 0xB}, control))
    assert vcpu.run() == DebugExit(1, layout.CODE + 0xB, ACTIVE_LOW | 1 << 2, breakpoint_dr7(hv, control))


def test_single_step_meets_an_execute_breakpoint(hv: Hypervisor, vm: VM) -> None:
    """The step lands on the breakpoint's instruction (BS); the next run stops before it (B0, no BS)."""
    vcpu = boot(hv, vm, real_mode.SINGLE_STEP, rbx=0)
    control = dr7((0, 0b00, 0b00))
    vcpu.set_guest_debug(hardware({0: layout.CODE + 3}, control, HW | F.SINGLESTEP))
    step = vcpu.run()
    assert isinstance(step, DebugExit)
    assert (step.exception, step.pc, step.dr6) == (1, layout.CODE + 3, ACTIVE_LOW | BS)
    assert step.dr7 == (control if single_step_dr7(hv) == 0x400 else 0)  # upstream: the DR7 the guest runs with
    assert vcpu.run() == DebugExit(1, layout.CODE + 3, ACTIVE_LOW | 1, breakpoint_dr7(hv, control))
    assert vcpu.get_regs().rip == layout.CODE + 3


@pytest.mark.parametrize("index", [0, 3])
def test_write_watchpoint_traps_after_the_store(hv: Hypervisor, vm: VM, index: int) -> None:
    vcpu = boot(hv, vm, debug.WATCHED, "long")
    control = dr7((index, 0b01, 0b11), local=True)  # write, 4 bytes; DATA + 1 is aligned down to DATA
    vcpu.set_guest_debug(hardware({index: layout.DATA + 1}, control))
    exits = run_exits(vcpu)
    trap = DebugExit(1, debug.AFTER_WRITE, ACTIVE_LOW | 1 << index, breakpoint_dr7(hv, control))
    fired = [] if host_variant(hv, "watchpoints_ignored") == "never_fire" else [trap]
    assert exits == [*fired, out(0x80, 0x44), HltExit()]
    assert read_guest(vm, layout.DATA, 12) == bytes.fromhex("00004433 00000000 44332211")
    assert vcpu.get_regs().rbx & 0xFFFFFFFF == 0


def test_read_write_watchpoint_traps_after_each_access(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, debug.WATCHED, "long")
    control = dr7((1, 0b11, 0b10))  # read or write, 8 bytes
    vcpu.set_guest_debug(hardware({1: layout.DATA}, control))
    exits = run_exits(vcpu)
    traps = [
        DebugExit(1, pc, ACTIVE_LOW | 1 << 1, breakpoint_dr7(hv, control))
        for pc in (debug.AFTER_READ, debug.AFTER_WRITE)
    ]
    fired = [] if host_variant(hv, "watchpoints_ignored") == "never_fire" else traps
    assert exits == [*fired, out(0x80, 0x44), HltExit()]


def test_watchpoint_on_code_that_already_ran(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, debug.WATCHED, "long")
    assert run_exits(vcpu) == [out(0x80, 0x44), HltExit()]
    vcpu.set_regs(replace(vcpu.get_regs(), rip=layout.CODE))
    control = dr7((0, 0b11, 0b11))
    vcpu.set_guest_debug(hardware({0: layout.DATA}, control))
    traps = [
        DebugExit(1, pc, ACTIVE_LOW | 1, breakpoint_dr7(hv, control)) for pc in (debug.AFTER_READ, debug.AFTER_WRITE)
    ]
    fired = [] if host_variant(hv, "watchpoints_ignored") == "never_fire" else traps
    assert run_exits(vcpu) == [*fired, out(0x80, 0x44), HltExit()]


def test_watchpoint_and_single_step_report_both(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, debug.WATCHED, "long")
    control = dr7((2, 0b01, 0b11))
    vcpu.set_guest_debug(hardware({2: layout.DATA}, control, HW | F.SINGLESTEP))
    steps = [vcpu.run() for _ in range(4)]
    assert all(isinstance(s, DebugExit) for s in steps)
    assert [s.pc for s in steps] == [layout.CODE + 5, layout.CODE + 0xC, debug.AFTER_READ, debug.AFTER_WRITE]  # type: ignore[union-attr]
    watched = host_variant(hv, "watchpoints_ignored") == UPSTREAM
    assert [s.dr6 for s in steps] == [ACTIVE_LOW | BS] * 3 + [ACTIVE_LOW | BS | (1 << 2 if watched else 0)]  # type: ignore[union-attr]


def test_watchpoint_watches_linear_addresses(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, debug.ALIASED, "long")
    write_guest(vm, layout.PDPT + 8, read_guest(vm, layout.PDPT, 8))  # 1 GiB maps physical 0 too
    control = dr7((0, 0b01, 0b11), (3, 0b01, 0b11))
    vcpu.set_guest_debug(hardware({0: debug.UNMAPPED, 3: debug.ALIAS}, control))
    exits = run_exits(vcpu)
    trap = DebugExit(1, layout.CODE + 0xC, ACTIVE_LOW | 1 << 3, breakpoint_dr7(hv, control))
    fired = [] if host_variant(hv, "watchpoints_ignored") == "never_fire" else [trap]
    assert exits == [*fired, out(0x80, 0x88), HltExit()]
    assert read_guest(vm, layout.DATA, 4) == bytes.fromhex("88776655")


def test_io_breakpoints_give_no_exit(hv: Hypervisor, vm: VM) -> None:
    """KVM intercepts every port access and completes it without looking at DR7: no DEBUG exit, on any host."""
    vcpu = boot(hv, vm, debug.PORT_IO, "long")
    vcpu.set_sregs(replace(vcpu.get_sregs(), cr4=vcpu.get_sregs().cr4 | CR4_DE))
    vcpu.set_guest_debug(hardware({0: 0x80, 1: 0x71}, dr7((0, 0b10, 0b00), (1, 0b10, 0b00))))
    exits = run_exits(vcpu, lambda _: 7)
    assert exits == [out(0x80, 1), IoExit(0x71, 1, 1, IoDirection.IN), HltExit()]
    assert vcpu.get_regs().rax & 0xFF == 7


def test_breakpoints_and_watchpoints_outlive_a_slot_change(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, debug.WATCHED, "long")
    control = dr7((0, 0b00, 0b00), (1, 0b01, 0b11))
    vcpu.set_guest_debug(hardware({0: layout.CODE + 5, 1: layout.DATA}, control))
    with GuestMemory(layout.ROM_SIZE) as rom:
        vm.set_memory_slot(1, layout.ROM, rom, flags=SlotFlags.READONLY)  # a new memory layout
        assert vcpu.run() == DebugExit(1, layout.CODE + 5, ACTIVE_LOW | 1, breakpoint_dr7(hv, control))
        vcpu.set_regs(replace(vcpu.get_regs(), rflags=vcpu.get_regs().rflags | RF))
        vm.delete_memory_slot(1)
    if host_variant(hv, "breakpoint_resume_flag") != UPSTREAM:  # refires: the VMM steps over it instead
        vcpu.set_regs(replace(vcpu.get_regs(), rip=layout.CODE + 0xC))
    trap = DebugExit(1, debug.AFTER_WRITE, ACTIVE_LOW | 1 << 1, breakpoint_dr7(hv, control))
    fired = [] if host_variant(hv, "watchpoints_ignored") == "never_fire" else [trap]
    assert run_exits(vcpu) == [*fired, out(0x80, 0x44), HltExit()]


def test_hardware_breakpoints_cost_nothing_once_cleared(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, debug.EXECUTE, "long")
    vcpu.set_guest_debug(hardware({0: debug.BREAK_AT}, dr7((0, 0b00, 0b00))))
    assert isinstance(vcpu.run(), DebugExit)
    vcpu.set_guest_debug(GuestDebug(F.ENABLE))  # USE_HW_BP off: the guest's own (empty) debug registers
    assert run_exits(vcpu) == [out(0x80, 0x42), HltExit()]


# --- software breakpoints and injected exceptions --------------------------------------------------------------


def _real_mode_handlers(hv: Hypervisor, vm: VM) -> None:
    """IVT[1] and IVT[3] of the INT3 guest's handlers (segment 0)."""
    write_guest(vm, 1 * 4, debug.DB_HANDLER.to_bytes(2, "little") + bytes(2))
    write_guest(vm, 3 * 4, debug.BP_HANDLER.to_bytes(2, "little") + bytes(2))


def _frame_ip(vm: VM) -> int:
    """The IP of the real-mode interrupt frame the INT3 guest's handler runs on."""
    return int.from_bytes(read_guest(vm, layout.STACK_TOP - 6, 2), "little")


def test_software_breakpoint_exits_at_the_int3(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, debug.INT3, "real")
    _real_mode_handlers(hv, vm)
    vcpu.set_guest_debug(GuestDebug(F.ENABLE | F.USE_SW_BP))
    if host_variant(hv, "software_breakpoints_delivered") == UPSTREAM:
        exit_ = vcpu.run()
        assert isinstance(exit_, DebugExit)
        assert (exit_.exception, exit_.pc) == (3, debug.INT3_AT)  # KVM leaves dr6 / dr7 unset for #BP
        assert vcpu.get_regs().rip == debug.INT3_AT  # nothing delivered, RIP at the int3
        vcpu.set_regs(replace(vcpu.get_regs(), rip=debug.INT3_AT + 1))  # the debugger steps over it
        assert run_exits(vcpu) == [out(0x81, 1), HltExit()]
    else:  # delivered: #BP reaches the guest as without guest debug
        assert run_exits(vcpu) == [out(0x83, 3), HltExit()]
        assert _frame_ip(vm) == debug.INT3_AT + 1
    vcpu.set_guest_debug(GuestDebug())  # off: int3 is the guest's again
    vcpu.set_regs(replace(vcpu.get_regs(), rip=debug.INT3_AT, rsp=layout.STACK_TOP))
    assert run_exits(vcpu) == [out(0x83, 3), HltExit()]
    assert _frame_ip(vm) == debug.INT3_AT + 1


def test_reinjected_breakpoint_returns_past_the_int3(hv: Hypervisor, vm: VM) -> None:
    """A VMM that does not own an int3 re-injects #BP: the guest's handler sees it as its own int3 (VMX's length)."""
    vcpu = boot(hv, vm, debug.INT3, "real")
    _real_mode_handlers(hv, vm)
    vcpu.set_guest_debug(GuestDebug(F.ENABLE | F.USE_SW_BP))
    first = vcpu.run()
    if host_variant(hv, "software_breakpoints_delivered") == UPSTREAM:
        assert isinstance(first, DebugExit) and first.exception == 3
        vcpu.set_guest_debug(GuestDebug(F.INJECT_BP))
        assert run_exits(vcpu) == [out(0x83, 3), HltExit()]
    else:  # delivered: the int3 reached the guest without an exit; there is nothing to re-inject
        assert [first, vcpu.run()] == [out(0x83, 3), HltExit()]
    assert _frame_ip(vm) == debug.INT3_AT + 1


@pytest.mark.parametrize(("flag", "handler_says"), [(F.INJECT_DB, 1), (F.INJECT_BP, 3)], ids=["db", "bp"])
def test_injected_exception_is_delivered_by_the_next_run(hv: Hypervisor, vm: VM, flag: F, handler_says: int) -> None:
    vcpu = boot(hv, vm, debug.INT3, "real")
    _real_mode_handlers(hv, vm)
    vcpu.set_guest_debug(GuestDebug(flag))  # without ENABLE: an injection needs none
    with pytest.raises(StateError) as busy:
        vcpu.set_guest_debug(GuestDebug(F.INJECT_DB))  # one is still queued
    assert busy.value.errno == errno.EBUSY
    assert run_exits(vcpu) == [out(0x83, handler_says), HltExit()]
    assert _frame_ip(vm) == layout.CODE  # #DB is a trap; #BP of a fresh vCPU has no instruction length
    vcpu.set_guest_debug(GuestDebug(flag))  # delivered: the next one may be queued
    vcpu.set_guest_debug(GuestDebug())
