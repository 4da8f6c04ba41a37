"""Probes for exception and interrupt delivery: gates, privilege checks, the real-mode IVT, #DF.

Each probe runs one guest whose handlers are :class:`~hvcore.host.guest.ProbeGuest`'s stubs and
compares what happens with each known behaviour exactly: the exits of a delivery (which vector's
stub ran), the frame it pushed and, where it matters, the registers after it. Anything else is
:class:`~hvcore.host.deviation.Unrecognised`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from hvcore.exits import Exit, HltExit, IoDirection, IoExit
from hvcore.host.deviation import UPSTREAM, Deviation, Unrecognised
from hvcore.host.guest import (
    CODE,
    CODE32,
    EVENT_PORT,
    KERNEL_CS,
    KERNEL_SS,
    RSP0,
    STACK_TOP,
    USER_CS,
    USER_SS,
    ProbeGuest,
    gate,
    stub,
)
from hvcore.protocol import Hypervisor
from hvcore.types import DescriptorTable, Segment

__all__ = ["DEVIATIONS"]

RF = 1 << 16
_IF = 1 << 9
_EFER_SCE = 1
_STAR, _LSTAR, _FMASK = 0xC0000081, 0xC0000082, 0xC0000084
FRAME_WORDS = 6
"""Words shown in a message: an error code's slot, RIP, CS, RFLAGS, RSP, SS."""
NULL_SS = Segment(limit=0, type=0, present=0, s=0, unusable=1)
"""The SS upstream KVM reports after a 64-bit CPL3 -> CPL0 change: a null selector, unusable."""


@dataclass(frozen=True)
class _Delivery:
    """One expected outcome: ``vector``'s stub ran, with ``frame`` (lowest address first) below ``top``."""

    vector: int
    top: int
    frame: tuple[int, ...]
    size: int = 8
    """Bytes per frame word: 8 in 64-bit mode, 2 in real mode."""


def _show_exits(exits: list[Exit]) -> str:
    def one(exit_: Exit) -> str:
        if isinstance(exit_, IoExit):
            return f"{exit_.direction.name} {exit_.port:#x} {exit_.data.hex() or '-'}"
        return type(exit_).__name__

    return ", ".join(one(e) for e in exits)


def _show_frame(guest: ProbeGuest, top: int, size: int = 8) -> str:
    return "[" + ", ".join(f"{w:#x}" for w in guest.words(top, FRAME_WORDS, size)) + f"] below {top:#x}"


def _run(guest: ProbeGuest, limit: int = 4) -> list[Exit]:
    """Exits up to the first that is not an OUT (a stub's HLT, or whatever else ended the run)."""
    exits = [guest.run()]
    while isinstance(exits[-1], IoExit) and not exits[-1].is_in and len(exits) < limit:
        exits.append(guest.run())
    return exits


def _classify(guest: ProbeGuest, exits: list[Exit], outcomes: Mapping[str, _Delivery], what: str) -> str:
    """The variant whose delivery ``exits`` and the guest's stack show exactly, or Unrecognised."""
    for variant, expected in outcomes.items():
        if exits == guest.delivered(expected.vector) and (
            tuple(guest.words(expected.top, len(expected.frame), expected.size)) == expected.frame
        ):
            return variant
    tops = sorted({(o.top, o.size) for o in outcomes.values()})
    frames = "; ".join(_show_frame(guest, top, size) for top, size in tops)
    raise Unrecognised(f"{what} gave exits [{_show_exits(exits)}], stack {frames}")


def _null_ss_usable(hv: Hypervisor) -> str:
    code = (
        b"\x0f\x0b"  # ud2   <- #UD at CPL3: the gate (DPL0, 64-bit) changes to CPL0 and loads a null SS
        b"\xf4"  # hlt
    )
    with ProbeGuest(hv, code, "user") as guest:
        exits = _run(guest)
        frame = (CODE, USER_CS, RF | 0x2, STACK_TOP, USER_SS)
        _classify(guest, exits, {UPSTREAM: _Delivery(6, RSP0, frame)}, "`ud2` at CPL3")
        ss = guest.vcpu.get_sregs().ss
    if ss == NULL_SS:
        return UPSTREAM
    if ss == replace(NULL_SS, unusable=0):
        return "reported_usable"
    raise Unrecognised(f"after a CPL3 -> CPL0 #UD delivery SS is {ss}, not a null SS")


def _int_n_cpl3_ud(hv: Hypervisor) -> str:
    code = (
        b"\xcd\x80"  # int 0x80   <- at CPL3, through a DPL3 gate
        b"\xf4"  # hlt
    )
    with ProbeGuest(hv, code, "user", gates={0x80: gate(0x80, dpl=3)}) as guest:
        exits = _run(guest)
        outcomes = {
            UPSTREAM: _Delivery(0x80, RSP0, (CODE + 2, USER_CS, 0x2, STACK_TOP, USER_SS)),
            "ud": _Delivery(6, RSP0, (CODE, USER_CS, RF | 0x2, STACK_TOP, USER_SS)),
        }
        return _classify(guest, exits, outcomes, "`int 0x80` at CPL3 through a DPL3 gate")


def _int3_cpl3_ignores_gate_dpl(hv: Hypervisor) -> str:
    code = (
        b"\xcc"  # int3   <- at CPL3, through ProbeGuest's DPL0 gate 3
        b"\xf4"  # hlt
    )
    with ProbeGuest(hv, code, "user") as guest:
        exits = _run(guest)
        outcomes = {
            UPSTREAM: _Delivery(13, RSP0, (3 * 8 + 2, CODE, USER_CS, RF | 0x2, STACK_TOP, USER_SS)),
            "breakpoint_delivered": _Delivery(3, RSP0, (CODE + 1, USER_CS, 0x2, STACK_TOP, USER_SS)),
        }
        return _classify(guest, exits, outcomes, "`int3` at CPL3 through a DPL0 gate")


def _iopl_ignored_cpl3(hv: Hypervisor) -> str:
    code = (
        b"\xe6\x80"  # out 0x80, al   <- at CPL3 with IOPL 3 (al = 0)
        b"\xe6\x81"  # out 0x81, al
    )
    with ProbeGuest(hv, code, "user", rflags=3 << 12 | 0x2) as guest:
        first = guest.run()
        if first == IoExit(0x80, 1, 1, IoDirection.OUT, b"\x00"):
            after = guest.run()  # completes the first OUT (see out_completed_at_exit), then the second exits
            regs = guest.vcpu.get_regs()
            if after != IoExit(0x81, 1, 1, IoDirection.OUT, b"\x00") or regs.rflags != 0x3002:
                raise Unrecognised(f"the `out` exited, then {after!r} with rip={regs.rip:#x} rflags={regs.rflags:#x}")
            return UPSTREAM
        reported = isinstance(first, IoExit) and first.port == EVENT_PORT and not first.is_in
        exits = [first, *(_run(guest) if reported else [])]  # a stub's OUT, then its HLT
        outcomes = {"iopl_zero": _Delivery(13, RSP0, (0, CODE, USER_CS, RF | 0x2, STACK_TOP, USER_SS))}
        return _classify(guest, exits, outcomes, "`out` at CPL3 with IOPL 3")


def _ivt_limit_ignored(hv: Hypervisor) -> str:
    code = (
        b"\xcd\x21"  # int 0x21   <- its IVT entry is beyond IDTR.limit 0x83 (vectors 0..0x20)
        b"\xf4"  # hlt
    )
    with ProbeGuest(hv, code, "real") as guest:
        guest.vcpu.set_sregs(replace(guest.vcpu.get_sregs(), idt=DescriptorTable(0, 0x83)))
        exits = _run(guest)
        outcomes = {  # frames: IP, CS, FLAGS; a real-mode #GP has no error code
            UPSTREAM: _Delivery(13, STACK_TOP, (CODE, 0, 0x2), size=2),
            "base_only": _Delivery(0x21, STACK_TOP, (CODE + 2, 0, 0x2), size=2),
        }
        return _classify(guest, exits, outcomes, "real-mode `int 0x21` beyond IDTR.limit")


def _benign_fault_double_faults(hv: Hypervisor) -> str:
    code = (
        b"\x0f\x0b"  # ud2   <- at CPL0; gate 6 is not present
        b"\xf4"  # hlt
    )
    with ProbeGuest(hv, code, "long", gates={6: gate(6, present=False)}) as guest:
        exits = _run(guest)
        rest = (CODE, KERNEL_CS, RF | 0x2, STACK_TOP, KERNEL_SS)
        outcomes = {  # #NP's error code: index 6, IDT (bit 1), EXT (bit 0)
            UPSTREAM: _Delivery(11, STACK_TOP, (6 * 8 + 3, *rest)),
            "double_fault": _Delivery(8, STACK_TOP, (0, *rest)),
        }
        return _classify(guest, exits, outcomes, "#UD through a not-present gate")


def _gate_code_segment_unchecked(hv: Hypervisor) -> str:
    code = (
        b"\x0f\x0b"  # ud2   <- at CPL0; gate 6's selector is 32-bit code
        b"\xf4"  # hlt
    )
    with ProbeGuest(hv, code, "long", gates={6: gate(6, selector=CODE32)}) as guest:
        exits = _run(guest)
        rest = (CODE, KERNEL_CS, RF | 0x2, STACK_TOP, KERNEL_SS)
        outcomes = {
            UPSTREAM: _Delivery(13, STACK_TOP, (CODE32 | 1, *rest)),
            "gate_taken": _Delivery(6, STACK_TOP, rest),  # the stub's bytes mean the same in 32-bit code
        }
        variant = _classify(guest, exits, outcomes, "#UD through a gate to a 32-bit code segment")
        cs = guest.vcpu.get_sregs().cs
    expected_cs = (KERNEL_CS, 1, 0) if variant == UPSTREAM else (CODE32, 0, 1)
    if (cs.selector, cs.l, cs.db) != expected_cs:
        raise Unrecognised(f"the handler ran with CS {cs.selector:#x} (l={cs.l}, db={cs.db}) after {variant!r} exits")
    return variant


def _syscall_from_cpl3(hv: Hypervisor) -> str:
    target = CODE + 0x10
    code = (
        b"\x0f\x05"  # syscall   <- at CPL3, EFER.SCE set, STAR[47:32] = KERNEL_CS, LSTAR = target
        b"\xf4"  # hlt (at CPL3: #GP)
    ).ljust(0x10, b"\x90") + b"\xf4"  # target: hlt
    with ProbeGuest(hv, code, "user", rflags=_IF | 0x2) as guest:  # (kvm_pvm runs CPL3 code with IF set anyway)
        vcpu = guest.vcpu
        sregs = vcpu.get_sregs()
        vcpu.set_sregs(replace(sregs, efer=sregs.efer | _EFER_SCE))
        vcpu.set_msrs({_STAR: KERNEL_CS << 32, _LSTAR: target, _FMASK: 0})
        exits = _run(guest)
        regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
        if exits == [HltExit()]:
            entered = (regs.rip, regs.rcx, regs.r11, sregs.cs.selector, sregs.ss.selector)
            if entered != (target + 1, CODE + 2, _IF | 0x2, KERNEL_CS, KERNEL_SS):
                raise Unrecognised(f"`syscall` at CPL3 halted with rip, rcx, r11, cs, ss = {entered}")
            return UPSTREAM
        pushed = (0, target, USER_CS, RF | _IF | 0x2, STACK_TOP, USER_SS)
        outcomes = {"stays_at_cpl3": _Delivery(13, RSP0, pushed)}
        variant = _classify(guest, exits, outcomes, "`syscall` at CPL3 to a `hlt`")
        if (regs.rcx, regs.r11) != (CODE + 2, _IF | 0x2):
            raise Unrecognised(f"`syscall` at CPL3 stayed there with rcx={regs.rcx:#x} r11={regs.r11:#x}")
        return variant


def _inject_ud(guest: ProbeGuest) -> None:
    vcpu = guest.vcpu
    vcpu.set_vcpu_events(replace(vcpu.get_vcpu_events(), exception_injected=1, exception_nr=6))


def _events_beside_injected_exception(hv: Hypervisor) -> str:
    code = b"\xeb\xfe"  # spin: jmp spin   <- at CPL0; a #UD injected, and an NMI or an interrupt beside it
    handler, ud_rsp = stub(6), STACK_TOP - 5 * 8  # #UD's handler runs on STACK_TOP less RIP, CS, RFLAGS, RSP, SS
    nmi_top = ud_rsp & ~0xF  # an NMI there aligns the stack down to 16 bytes
    with ProbeGuest(hv, code, "long") as guest:
        _inject_ud(guest)
        guest.vcpu.nmi()
        nmi = _run(guest)
        if nmi == guest.delivered(2) and tuple(guest.words(nmi_top, 5)) == (handler, KERNEL_CS, 0x2, ud_rsp, KERNEL_SS):
            variant = UPSTREAM  # immediate exit after the injection: the NMI lands on the handler's first instruction
        elif nmi == [guest.delivered(6)[0], *guest.delivered(2)] and guest.words(nmi_top, 5)[0] == handler + 4:
            variant = "after_next_exit"
        else:
            raise Unrecognised(
                f"#UD injected with an NMI pending gave exits [{_show_exits(nmi)}], "
                f"stack {_show_frame(guest, STACK_TOP)}, {_show_frame(guest, nmi_top)}"
            )
    with ProbeGuest(hv, code, "long") as guest:
        guest.vcpu.interrupt(0x20)
        _inject_ud(guest)
        interrupt = _run(guest)
        expected = guest.delivered(6) if variant == UPSTREAM else [guest.delivered(6)[0], *guest.delivered(0x20)]
        if interrupt != expected:
            raise Unrecognised(
                f"#UD injected with interrupt 0x20 queued gave exits [{_show_exits(interrupt)}] ({variant} for an NMI)"
            )
    return variant


DEVIATIONS: tuple[Deviation, ...] = (
    Deviation(
        "null_ss_usable",
        upstream="the null SS a 64-bit CPL3 -> CPL0 change loads is reported with unusable = 1",
        variants={"reported_usable": "ss.unusable = 0"},
        reason="measured on kvm_pvm: the null SS a CPL3 -> CPL0 change loads is reported as usable",
        probe=_null_ss_usable,
    ),
    Deviation(
        "int_n_cpl3_ud",
        upstream="`int n` at CPL3 vectors through gate n (or #GP(n*8+2) through a DPL0 gate)",
        variants={"ud": "#UD on the int: RIP at it, RF pushed, whatever the gate"},
        reason="measured on kvm_pvm for `int 0x80`, `int 0x21`, `int 0x0d` through DPL3 and DPL0 gates",
        probe=_int_n_cpl3_ud,
    ),
    Deviation(
        "int3_cpl3_ignores_gate_dpl",
        upstream="`int3` at CPL3 through a DPL0 gate raises #GP(3*8+2) on the int3",
        variants={"breakpoint_delivered": "#BP is delivered (frame RIP past the int3)"},
        reason="measured on kvm_pvm: the gate's DPL is not checked for `int3`",
        probe=_int3_cpl3_ignores_gate_dpl,
    ),
    Deviation(
        "iopl_ignored_cpl3",
        upstream="with IOPL=3 CPL3 may `out` (an IO exit); RFLAGS keeps IOPL",
        variants={"iopl_zero": "the `out` raises #GP(0) (TSS without I/O bitmap); IOPL reads and is pushed as 0"},
        reason="measured on kvm_pvm: CPL3 code runs with IOPL 0, and RFLAGS.IOPL reads as 0",
        probe=_iopl_ignored_cpl3,
    ),
    Deviation(
        "ivt_limit_ignored",
        upstream="a vector beyond the IVT limit raises #GP (and triple-faults if #GP and #DF are beyond it too)",
        variants={"base_only": "the vector is delivered through IDTR.base"},
        reason="measured on kvm_pvm: real-mode events vector through IDTR.base whatever IDTR.limit says",
        probe=_ivt_limit_ignored,
    ),
    Deviation(
        "benign_fault_double_faults",
        upstream="#UD through a not-present gate delivers #NP(vector*8 + IDT + EXT) (SDM Table 6-5: benign first)",
        variants={"double_fault": "#DF with error code 0"},
        reason="measured on kvm_pvm: a fault met while delivering a benign exception escalates to #DF",
        probe=_benign_fault_double_faults,
    ),
    Deviation(
        "gate_code_segment_unchecked",
        upstream="a 64-bit gate to a 32-bit code segment raises #GP(selector | EXT)",
        variants={"gate_taken": "the gate is taken; the handler runs in compatibility mode"},
        reason="measured on kvm_pvm: the target code segment of a 64-bit gate is not checked",
        probe=_gate_code_segment_unchecked,
    ),
    Deviation(
        "syscall_from_cpl3",
        upstream="`syscall` at CPL3 enters CPL0 at LSTAR (CS = STAR[47:32], SS = CS + 8); #UD with EFER.SCE clear; "
        "a single-step trap follows it when TF survives FMASK",
        variants={
            "stays_at_cpl3": "RIP = LSTAR, RCX, R11 and FMASK as upstream, but CS, SS and CPL stay the user's; "
            "EFER.SCE is not checked and no single-step trap follows"
        },
        reason="measured on kvm_pvm, whose guests enter their kernel through its own paravirtual entry instead",
        probe=_syscall_from_cpl3,
    ),
    Deviation(
        "events_beside_injected_exception",
        upstream="an exception injected through KVM_SET_VCPU_EVENTS goes first; a pending NMI lands on its "
        "handler's first instruction (KVM's immediate exit), an interrupt queued beside it (KVM_INTERRUPT) is lost",
        variants={
            "after_next_exit": "the NMI or the interrupt is delivered only at the entry after the handler's "
            "first exit (here its OUT)"
        },
        reason="measured on kvm_pvm with #UD injected and KVM_NMI or KVM_INTERRUPT before the same KVM_RUN",
        probe=_events_beside_injected_exception,
    ),
)
"""The event-delivery deviations, in the order of ``tests/quirks.py``'s registry."""
