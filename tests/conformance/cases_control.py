"""The VMM's control of a running guest: single-step, kick and ``immediate_exit``, and what no slot backs.

Single-step cases enable ``GuestDebug(ENABLE | SINGLESTEP)`` before the first run; every step
is a DEBUG exit with the RIP after the instruction (``harness.single_step``).
"""

from __future__ import annotations

from collections.abc import Callable

from hvcore import GuestDebug, GuestDebugFlags, HltExit, SlotFlags
from tests.conformance.cases_io import answer_by_size
from tests.conformance.harness import (
    RAM,
    Case,
    Host,
    Outcome,
    SlotSpec,
    emulation_failure,
    hlt,
    interrupted,
    io_in,
    out,
    script,
    single_step,
)
from tests.guests import layout, long_mode, real_mode

CODE, DATA, STACK_TOP = layout.CODE, layout.DATA, layout.STACK_TOP


def stepping(host: Host) -> None:
    """Set-up: single-step every vCPU."""
    for vcpu in host.vcpus:
        vcpu.set_guest_debug(GuestDebug(GuestDebugFlags.ENABLE | GuestDebugFlags.SINGLESTEP))


REAL_SINGLE_STEP = Case(
    "real_single_step",
    "single-step: one DEBUG exit per instruction; a stepped HLT is reported as a step and does not halt",
    "real",
    real_mode.SINGLE_STEP,
    setup=stepping,
    script=script(steps=7),
    expect=Outcome(
        steps=tuple(single_step(CODE + pc) for pc in (0x3, 0x4, 0xA, 0xB, 0xD, 0xE, 0xF)),
        state={"rax": 0, "rbx": 0x102, "rcx": 0x102, "rip": CODE + 0xF},
    ),
    quirks=("single_step_dr7",),
    covers=frozenset({"single-step"}),
)

# Real mode, single-stepped across an OUT. Upstream: the run after the OUT exit reports the OUT's
# own step (pc = RIP after it) before the next instruction runs.
# Host: real mode, rip=CODE, single-step; stops at the step of the hlt (pc 0x1009).
# Exits: DEBUG 0x1002, OUT 0x80 1 (rip 0x1004), DEBUG 0x1004, DEBUG 0x1006, DEBUG 0x1008, DEBUG 0x1009.
STEP_OVER_OUT = (
    b"\xb0\x01"  # 1000 mov al, 1
    b"\xe6\x80"  # 1002 out 0x80, al
    b"\xfe\xc0"  # 1004 inc al
    b"\xfe\xc0"  # 1006 inc al
    b"\xf4"      # 1008 hlt
)

REAL_SINGLE_STEP_OUT = Case(
    "real_single_step_over_out",
    "single-step across an OUT: the OUT exit, then the OUT's own step",
    "real",
    STEP_OVER_OUT,
    setup=stepping,
    script=script(until_pc=0x1009),
    expect=Outcome(
        steps=(
            single_step(0x1002),
            out(0x80, 1, 0x1004),
            single_step(0x1004),
            single_step(0x1006),
            single_step(0x1008),
            single_step(0x1009),
        ),
        state={"rax": 3, "rip": 0x1009},
    ),
    quirks=("single_step_dr7", "single_step_after_out"),
    covers=frozenset({"single-step", "io"}),
)

# The same across an IN: the IN exit leaves RIP at the IN; the next run completes it and reports
# its step (pc 0x1004) before the next instruction runs.
# Host: real mode, rip=CODE, single-step, answers 0x40.
# Exits: DEBUG 0x1002, IN 0x81 (rip 0x1002), DEBUG 0x1004, DEBUG 0x1006, DEBUG 0x1008, DEBUG 0x1009.
STEP_OVER_IN = (
    b"\xb0\x01"  # 1000 mov al, 1
    b"\xe4\x81"  # 1002 in al, 0x81
    b"\xfe\xc0"  # 1004 inc al
    b"\xfe\xc0"  # 1006 inc al
    b"\xf4"      # 1008 hlt
)

REAL_SINGLE_STEP_IN = Case(
    "real_single_step_over_in",
    "single-step across an IN: the IN exit, then the IN's own step once it completed",
    "real",
    STEP_OVER_IN,
    setup=stepping,
    script=script((0x40,), until_pc=0x1009),
    expect=Outcome(
        steps=(
            single_step(0x1002),
            io_in(0x81, 1, 0x1002, 0x40),
            single_step(0x1004),
            single_step(0x1006),
            single_step(0x1008),
            single_step(0x1009),
        ),
        state={"rax": 0x42, "rip": 0x1009},
    ),
    quirks=("single_step_dr7",),
    covers=frozenset({"single-step", "io"}),
)

# 64-bit CPL0, single-stepped: a store, a load, a taken jump, push and pop.
# Exits: DEBUG at 0x100A, 0x1012, 0x101A, 0x101E (the jump skips the ud2), 0x101F, 0x1020, 0x1021.
STEP_64 = (
    b"\x48\xb8\x88\x77\x66\x55\x44\x33\x22\x11"  # 1000 mov rax, 0x1122334455667788
    b"\x48\x89\x04\x25\x00\x00\x01\x00"          # 100A mov [0x10000], rax
    b"\x48\x03\x04\x25\x00\x00\x01\x00"          # 1012 add rax, [0x10000]
    b"\xeb\x02"                                  # 101A jmp over
    b"\x0f\x0b"                                  # 101C ud2
    b"\x50"                                      # 101E over: push rax
    b"\x5b"                                      # 101F pop rbx
    b"\xf4"                                      # 1020 hlt
)

LONG_SINGLE_STEP = Case(
    "long_single_step",
    "64-bit single-step over memory accesses, a jump, push and pop",
    "long",
    STEP_64,
    setup=stepping,
    script=script(until_pc=0x1021),
    memory={"data": (DATA, 8), "stack": (STACK_TOP - 8, 8)},
    expect=Outcome(
        steps=tuple(single_step(pc) for pc in (0x100A, 0x1012, 0x101A, 0x101E, 0x101F, 0x1020, 0x1021)),
        state={"rax": 0x22446688AACCEF10, "rbx": 0x22446688AACCEF10, "rsp": STACK_TOP, "rip": 0x1021},
        memory={
            "data": (0x1122334455667788).to_bytes(8, "little"),
            "stack": (0x22446688AACCEF10).to_bytes(8, "little"),
        },
    ),
    quirks=("single_step_dr7",),
    covers=frozenset({"single-step"}),
)


def _immediate_exit(host: Host) -> None:
    host.vcpu.immediate_exit = True


def _note_and_kick(host: Host) -> None:
    host.note("immediate_exit", host.vcpu.immediate_exit)
    host.vcpu.kick()


REAL_IMMEDIATE_EXIT = Case(
    "real_immediate_exit_and_kick",
    "`immediate_exit` makes the run return at once (and is cleared); a kick before a run does too",
    "real",
    real_mode.SPIN,
    setup=_immediate_exit,
    script=script(steps=2, actions={0: _note_and_kick}, until=(HltExit,)),
    expect=Outcome(steps=(interrupted(CODE), interrupted(CODE)), notes=((0, "immediate_exit", False),)),
    covers=frozenset({"kick"}),
)


def _note_rax(host: Host) -> None:
    host.note("rax", host.vcpu.get_regs().rax)


REAL_IMMEDIATE_EXIT_COMPLETES_IN = Case(
    "real_immediate_exit_completes_in",
    "an answered IN completes on a run with `immediate_exit` set, without running the guest further",
    "real",
    real_mode.IO_SIZES,
    script=script(answer_by_size, actions={3: _immediate_exit, 4: _note_rax}, until=(HltExit,)),
    expect=Outcome(
        steps=(
            out(0x10, 0x11, 0x1006),
            out(0x10, 0x2233, 0x100A, size=2),
            out(0x10, 0x44556677, 0x1012, size=4),
            io_in(0x10, 1, 0x1018, 0x5A),
            interrupted(0x1019),  # the IN completed: RIP past it, al loaded
            out(0x11, 0xAABBCC5A, 0x101C, size=4),
            io_in(0x10, 2, 0x101C, 0x1234),
            out(0x11, 0xAABB1234, 0x1020, size=4),
            io_in(0x10, 4, 0x1020, 0xCAFEBABE),
            out(0x11, 0xCAFEBABE, 0x1025, size=4),
            hlt(0x1026),
        ),
        state={"rax": 0xCAFEBABE},
        notes=((4, "rax", 0xAABBCC5A),),
    ),
    covers=frozenset({"kick", "io"}),
)


def kick_later(delay: float) -> Callable[[Host], None]:
    """Set-up: kick vCPU 0 from another thread after ``delay`` seconds (the outcome does not depend on when)."""

    def setup(host: Host) -> None:
        host.kick_from_thread(0, delay)

    return setup


LONG_KICK = Case(
    "long_kick_from_thread",
    "a 64-bit guest spinning in `jmp $` until another thread kicks its vCPU",
    "long",
    long_mode.SPIN,
    setup=kick_later(0.05),
    expect=Outcome(steps=(interrupted(CODE),), state={"rip": CODE}),
    covers=frozenset({"kick"}),
)

REAL_EXEC_UNBACKED = Case(
    "real_exec_unbacked",
    "real mode: a far jump to MMIO (no slot): INTERNAL_ERROR (emulation failure), RIP at the target",
    "real",
    b"\xea\x10\x00\x00\xd0",  # 1000 jmp 0xD000:0x10
    expect=Outcome(steps=(emulation_failure(0x10),), state={"rip": 0x10, "cs.selector": 0xD000, "cs.base": 0xD0000}),
    quirks=("internal_error_exit_info",),
    covers=frozenset({"unbacked-exec"}),
)

EXEC_MMIO_64 = (
    b"\xb8\x00\x00\x0d\x00"  # 1000 mov eax, 0xD0000
    b"\xff\xe0"              # 1005 jmp rax
)

LONG_EXEC_UNBACKED = Case(
    "long_exec_unbacked",
    "64-bit: a jump to MMIO (no slot): INTERNAL_ERROR (emulation failure), RIP at the target",
    "long",
    EXEC_MMIO_64,
    expect=Outcome(steps=(emulation_failure(layout.MMIO),), state={"rip": layout.MMIO, "rax": layout.MMIO}),
    quirks=("internal_error_exit_info",),
    covers=frozenset({"unbacked-exec"}),
)

EXEC_ROM_64 = (
    b"\xb8\x00\x00\x0c\x00"  # 1000 mov eax, 0xC0000
    b"\xff\xe0"              # 1005 jmp rax
)
ROM_CODE = (
    b"\xb0\x77"  # C0000 mov al, 0x77
    b"\xe6\x90"  # C0002 out 0x90, al
    b"\xf4"      # C0004 hlt
)

LONG_EXEC_ROM = Case(
    "long_exec_from_rom",
    "64-bit: code in a read-only slot runs normally",
    "long",
    EXEC_ROM_64,
    slots=(*RAM, SlotSpec(1, layout.ROM, layout.ROM_SIZE, SlotFlags.READONLY, contents=((0, ROM_CODE),))),
    expect=Outcome(steps=(out(0x90, 0x77, 0xC0004), hlt(0xC0005)), state={"rax": 0xC0077}),
    covers=frozenset({"readonly-slot"}),
)

CASES = (
    REAL_SINGLE_STEP,
    REAL_SINGLE_STEP_OUT,
    REAL_SINGLE_STEP_IN,
    LONG_SINGLE_STEP,
    REAL_IMMEDIATE_EXIT,
    REAL_IMMEDIATE_EXIT_COMPLETES_IN,
    LONG_KICK,
    REAL_EXEC_UNBACKED,
    LONG_EXEC_UNBACKED,
    LONG_EXEC_ROM,
)
