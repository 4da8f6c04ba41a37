"""Several vCPUs in one VM: taking turns from one thread, sharing memory across modes, in threads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from hvcore import Exit, HltExit, IoExit, x86
from tests.conformance.harness import Case, Host, Outcome, Step, hlt, out
from tests.guests import layout, real_mode

CODE, DATA = layout.CODE, layout.DATA


def round_robin(host: Host, exit_: Exit) -> None:
    """Run the vCPUs in turn, one exit each, until every one has halted."""
    running = [v for v in range(len(host.vcpus)) if v not in host.halted]
    if not running:
        host.stop()
        return
    later = [v for v in running if v > host.current]
    host.switch(later[0] if later else running[0])


def vcpu_regs(**per_vcpu: tuple[int, int]) -> Callable[[Host], None]:
    """Set-up: (rax, rbx) for each vCPU named ``v<id>``."""

    def setup(host: Host) -> None:
        for name, (rax, rbx) in per_vcpu.items():
            vcpu = host.vcpus[int(name[1:])]
            vcpu.set_regs(replace(vcpu.get_regs(), rax=rax, rbx=rbx))

    return setup


TWO_VCPUS = Case(
    "two_vcpus_round_robin",
    "two vCPUs on the same code (COUNTED_OUT), run one exit at a time in turn",
    "real",
    real_mode.COUNTED_OUT,
    vcpus=2,
    setup=vcpu_regs(v0=(0xA0, 3), v1=(0xB1, 2)),
    script=round_robin,
    expect=Outcome(
        steps=(
            out(0x80, 0xA0, 0x1006),
            out(0x80, 0xB1, 0x1006, vcpu=1),
            out(0x80, 0xA0, 0x1006),
            out(0x80, 0xB1, 0x1006, vcpu=1),
            out(0x80, 0xA0, 0x1006),
            hlt(0x100A, vcpu=1),
            hlt(0x100A),
        ),
        state={"rax": 0xA0, "rbx": 0, "rip": 0x100A, "apic_base": 0xFEE00900,  # BSP: vCPU 0
               "1:rax": 0xB1, "1:rbx": 0, "1:rip": 0x100A, "1:apic_base": 0xFEE00800},
    ),
    covers=frozenset({"multi-vcpu"}),
)

# vCPU 0 runs 64-bit code at CODE that stores a dword in DATA; vCPU 1 runs real-mode code at
# CODE + 0x100 that reads it back (ds = 0x1000) and sends it out. The host runs vCPU 0 to its OUT,
# vCPU 1 to its HLT, then vCPU 0 to its HLT.
SHARED_STORE_64 = (
    b"\xc7\x04\x25\x00\x00\x01\x00\x11\xee\xff\xc0"  # 1000 mov dword ptr [0x10000], 0xC0FFEE11
    b"\xb0\x01"                                      # 100B mov al, 1
    b"\xe6\x61"                                      # 100D out 0x61, al
    b"\xf4"                                          # 100F hlt
)
SHARED_LOAD_16 = (
    b"\xb8\x00\x10"      # 1100 mov ax, 0x1000
    b"\x8e\xd8"          # 1103 mov ds, ax
    b"\x66\xa1\x00\x00"  # 1105 mov eax, [0]
    b"\x66\xe7\x62"      # 1109 out 0x62, eax
    b"\xf4"              # 110C hlt
)


def _second_vcpu_in_real_mode(host: Host) -> None:
    host.write(CODE + 0x100, SHARED_LOAD_16)
    vcpu = host.vcpus[1]
    vcpu.set_sregs(x86.real_mode_sregs(vcpu.get_sregs()))  # CR0 keeps MP, ET, NE, WP from long mode
    vcpu.set_regs(replace(vcpu.get_regs(), rip=CODE + 0x100))


def _hand_over(host: Host, exit_: Exit) -> None:
    if isinstance(exit_, IoExit) and exit_.port == 0x61:
        host.switch(1)
    elif isinstance(exit_, HltExit):
        if host.current == 0:
            host.stop()
        host.switch(0)


TWO_VCPUS_TWO_MODES = Case(
    "two_vcpus_two_modes_share_memory",
    "a 64-bit vCPU stores, a real-mode vCPU of the same VM loads the value",
    "long",
    SHARED_STORE_64,
    vcpus=2,
    setup=_second_vcpu_in_real_mode,
    script=_hand_over,
    expect=Outcome(
        steps=(
            out(0x61, 1, 0x100F),
            out(0x62, 0xC0FFEE11, 0x110C, size=4, vcpu=1),
            hlt(0x110D, vcpu=1),
            hlt(0x1010),
        ),
        state={"efer": 0x500, "1:efer": 0, "1:rax": 0xC0FFEE11, "1:cr0": 0x10032, "1:ds.base": DATA},
    ),
    covers=frozenset({"multi-vcpu", "mode-switch"}),
)

OUTS_PER_VCPU = 20


def _counted(vcpu: int) -> tuple[Step, ...]:
    return (*(out(0x80, 0x10 + vcpu, 0x1006, vcpu=vcpu) for _ in range(OUTS_PER_VCPU)), hlt(0x100A, vcpu=vcpu))


FOUR_VCPUS_THREADS = Case(
    "four_vcpus_in_threads",
    "four vCPUs, each run by its own thread at the same time; each sees exactly its own exits",
    "real",
    real_mode.COUNTED_OUT,
    vcpus=4,
    threads=True,
    setup=vcpu_regs(**{f"v{i}": (0x10 + i, OUTS_PER_VCPU) for i in range(4)}),
    expect=Outcome(
        steps=tuple(step for vcpu in range(4) for step in _counted(vcpu)),
        state={f"{prefix}rbx": 0 for prefix in ("", "1:", "2:", "3:")},
    ),
    covers=frozenset({"multi-vcpu"}),
)

CASES = (TWO_VCPUS, TWO_VCPUS_TWO_MODES, FOUR_VCPUS_THREADS)
