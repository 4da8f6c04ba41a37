"""Probes for guest debugging (``KVM_SET_GUEST_DEBUG``): hardware breakpoints, watchpoints, ``int3`` exits.

Upstream KVM loads ``debugreg[0..7]`` into the debug registers while the guest runs and turns the
#DB into a DEBUG exit (exception 1, pc the linear RIP, dr6 0xffff0ff0 with B0-B3, dr7 the
``debugreg[7]`` given); with USE_SW_BP it intercepts #BP, so ``int3`` exits with exception 3 at
the ``int3`` (tools/testing/selftests/kvm/x86/debug_regs.c checks all of this).
"""

from __future__ import annotations

from dataclasses import replace

from hvcore.exits import DebugExit, Exit, HltExit
from hvcore.host.deviation import UPSTREAM, Deviation, Unrecognised
from hvcore.host.guest import CODE, DATA, ProbeGuest
from hvcore.protocol import Hypervisor
from hvcore.types import GuestDebug, GuestDebugFlags

__all__ = ["DEVIATIONS"]

_RF = 1 << 16
_HW = GuestDebugFlags.ENABLE | GuestDebugFlags.USE_HW_BP

# 64-bit CPL0, an execute breakpoint in DR1 on the second nop (DR7 = 0x408: G1, R/W 00).
# Upstream exit: DEBUG exception 1, pc 0x1001, dr6 0xffff0ff2, dr7 0x408; RIP stays at 0x1001.
_NOPS = (
    b"\x90"  # 1000 nop
    b"\x90"  # 1001 nop   <- execute breakpoint (DR1)
    b"\xf4"  # 1002 hlt
)  # fmt: skip
_EXECUTE = GuestDebug(_HW, (0, CODE + 1, 0, 0, 0, 0, 0, 0x408))
_HIT_DR1 = 0xFFFF0FF2

# 64-bit CPL0 stores a dword at DATA, watched by a 4-byte write watchpoint in DR0 (DR7 = 0xD0402:
# G0, R/W 01, LEN 11). Upstream: DEBUG exception 1 after the store (pc 0x1007, dr6 0xffff0ff1), then HLT.
_STORE = (
    b"\x89\x04\x25" + DATA.to_bytes(4, "little")  # 1000 mov dword ptr [0x30000], eax
    + b"\xf4"                                     # 1007 hlt
)  # fmt: skip
_WATCH = GuestDebug(_HW, (DATA, 0, 0, 0, 0, 0, 0, 0xD0402))

# Real mode, USE_SW_BP: upstream exits with DEBUG exception 3 at the int3 (pc 0x1000, RIP still there).
_INT3 = (
    b"\xcc"  # 1000 int3
    b"\xf4"  # 1001 hlt
)  # fmt: skip


def _first_hit(guest: ProbeGuest) -> DebugExit:
    """Run the execute-breakpoint guest to its breakpoint; anything else is unrecognised."""
    guest.vcpu.set_guest_debug(_EXECUTE)
    exit_ = guest.run()
    rip = guest.vcpu.get_regs().rip
    if not (isinstance(exit_, DebugExit) and (exit_.exception, exit_.pc, exit_.dr6) == (1, CODE + 1, _HIT_DR1)):
        raise Unrecognised(f"an execute breakpoint in DR1 on the nop at {CODE + 1:#x} gave {exit_!r} (rip {rip:#x})")
    if rip != CODE + 1:
        raise Unrecognised(f"an execute breakpoint's DEBUG exit left rip at {rip:#x}, not at the nop")
    return exit_


def _breakpoint_dr7(hv: Hypervisor) -> str:
    with ProbeGuest(hv, _NOPS, "long") as guest:
        exit_ = _first_hit(guest)
    if exit_.dr7 == 0x408:
        return UPSTREAM
    if exit_.dr7 == 0:
        return "dr7_zero"
    raise Unrecognised(f"an execute breakpoint's DEBUG exit reported dr7={exit_.dr7:#x} (debugreg[7] was 0x408)")


def _breakpoint_resume_flag(hv: Hypervisor) -> str:
    with ProbeGuest(hv, _NOPS, "long") as guest:
        _first_hit(guest)
        regs = guest.vcpu.get_regs()
        guest.vcpu.set_regs(replace(regs, rflags=regs.rflags | _RF))
        after = guest.run()
        rip = guest.vcpu.get_regs().rip
    if isinstance(after, HltExit) and rip == CODE + 3:
        return UPSTREAM
    if isinstance(after, DebugExit) and (after.exception, after.pc, after.dr6) == (1, CODE + 1, _HIT_DR1):
        return "refires"
    raise Unrecognised(f"running on from an execute breakpoint with RFLAGS.RF set gave {after!r} (rip {rip:#x})")


def _watchpoints_ignored(hv: Hypervisor) -> str:
    with ProbeGuest(hv, _STORE, "long") as guest:
        guest.vcpu.set_guest_debug(_WATCH)
        exits: list[Exit] = [guest.run()]
        if isinstance(exits[0], DebugExit):
            exits.append(guest.run())
    if exits == [DebugExit(1, CODE + 7, 0xFFFF0FF1, 0xD0402), HltExit()]:
        return UPSTREAM
    if exits == [HltExit()]:
        return "never_fire"
    raise Unrecognised(f"a store under a 4-byte write watchpoint in DR0 gave {exits!r}")


def _software_breakpoints_delivered(hv: Hypervisor) -> str:
    with ProbeGuest(hv, _INT3, "real") as guest:
        guest.vcpu.set_guest_debug(GuestDebug(GuestDebugFlags.ENABLE | GuestDebugFlags.USE_SW_BP))
        exits = guest.run_until_halt(limit=4)
        rip = guest.vcpu.get_regs().rip
    first = exits[0]
    if len(exits) == 1 and isinstance(first, DebugExit) and (first.exception, first.pc, rip) == (3, CODE, CODE):
        return UPSTREAM
    if exits == ProbeGuest.delivered(3):
        return "delivered"
    raise Unrecognised(f"a real-mode int3 under USE_SW_BP gave {exits!r} (rip {rip:#x})")


DEVIATIONS: tuple[Deviation, ...] = (
    Deviation(
        "breakpoint_dr7",
        upstream="a hardware breakpoint's DEBUG exit reports dr7 = debugreg[7] of KVM_SET_GUEST_DEBUG (the DR7 the "
        "guest runs with; vmx.c handle_exception_nmi reads GUEST_DR7)",
        variants={"dr7_zero": "dr7 = 0"},
        reason="seen on nested kvm_pvm (AMD EPYC): CPL0 code runs in the kernel's instruction emulator, whose "
        "code-breakpoint check (kvm_vcpu_check_code_breakpoint) fills in pc, dr6 and the exception but not dr7",
        probe=_breakpoint_dr7,
    ),
    Deviation(
        "breakpoint_resume_flag",
        upstream="with RFLAGS.RF set (set_regs after the exit) the instruction at an execute breakpoint runs once "
        "without the breakpoint firing, as the processor suppresses it; without RF it fires again",
        variants={"refires": "RF changes nothing: the breakpoint fires again, RIP stays at it"},
        reason="seen on nested kvm_pvm (AMD EPYC): the emulator checks guest-debug code breakpoints without "
        "looking at RF",
        probe=_breakpoint_resume_flag,
    ),
    Deviation(
        "watchpoints_ignored",
        upstream="a data watchpoint (R/W 01 or 11) gives a DEBUG exit (exception 1) after the instruction that "
        "wrote (or read) the watched bytes, pc past it, dr6 with its B bit",
        variants={"never_fire": "no DEBUG exit: the guest runs on as without the watchpoint"},
        reason="seen on nested kvm_pvm (AMD EPYC), at CPL0 (the instruction emulator) and CPL3 alike",
        probe=_watchpoints_ignored,
    ),
    Deviation(
        "software_breakpoints_delivered",
        upstream="with KVM_GUESTDBG_USE_SW_BP, `int3` exits with DEBUG exception 3, pc at the int3 and RIP left "
        "there; the guest receives nothing",
        variants={"delivered": "the int3 raises #BP in the guest as without guest debug (real mode: through the IVT)"},
        reason="seen on nested kvm_pvm (AMD EPYC): #BP is not intercepted (at CPL0 outside real mode `int3` gives "
        "an emulation failure either way, at CPL3 it is delivered)",
        probe=_software_breakpoints_delivered,
    ),
)
"""The deviations from upstream KVM this module's probes detect (debug)."""
