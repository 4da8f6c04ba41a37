"""SYSCALL as the processor performs it: Unicorn only calls a hook and steps over the instruction.

Unicorn's ``helper_syscall`` calls the ``UC_X86_INS_SYSCALL`` hooks with RIP at the instruction, then
adds the instruction's length to RIP and checks TF, so a single-step trap after SYSCALL is taken at
its target, as on hardware. :func:`emulate`, called from that hook, does the rest as KVM's
``em_syscall`` and the processor do:

- #UD in real mode, in virtual-8086 mode, or with EFER.SCE clear; nothing changes.
- CS = STAR[47:32] & 0xFFFC and SS = STAR[47:32] + 8, loaded as flat CPL0 segments (CS is 64-bit
  code in IA-32e mode).
- IA-32e mode: RCX = the next RIP, R11 = RFLAGS with RF clear, RIP = LSTAR from 64-bit code or
  CSTAR from compatibility mode, RFLAGS cleared of FMASK's bits and RF.
- Legacy mode: RCX = the next EIP, EIP = STAR[31:0], VM, IF and RF cleared.

SYSCALL outside 64-bit mode is taken whatever the vCPU's CPUID vendor, as on an AMD host (an Intel
processor raises #UD there, and KVM emulates it only for guests with an AMD vendor).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Final

from hvcore.types import Segment
from hvcore.x86 import CR0_PE, EFER_LMA
from hvcore_sim.decode import fetch_instruction, prefixes
from hvcore_sim.msrs import CSTAR, FMASK, LSTAR, STAR

if TYPE_CHECKING:
    from hvcore_sim.engine import Engine

__all__ = ["emulate"]

_EFER_SCE: Final = 1
_IF, _RF, _VM = 1 << 9, 1 << 16, 1 << 17
_FIXED: Final = 0x2  # RFLAGS bit 1 always reads 1
_U64: Final = (1 << 64) - 1
_UD: Final = 6


def _length(code: bytes) -> int:
    """The length of the SYSCALL (0F 05) at the start of ``code``, prefixes included."""
    return prefixes(code, rex=True).length + 2  # (a REX: only 64-bit code reaches SYSCALL with one)


def _segments(selector: int, *, long_mode: bool) -> tuple[Segment, Segment]:
    """The CS and SS that SYSCALL loads from STAR[47:32]: flat, DPL 0, accessed (KVM's ``setup_syscalls_segments``)."""
    cs = Segment(
        base=0,
        limit=0xFFFFFFFF,
        selector=selector & 0xFFFC,
        type=0xB,
        dpl=0,
        db=0 if long_mode else 1,
        l=1 if long_mode else 0,
        g=1,
    )
    ss = Segment(base=0, limit=0xFFFFFFFF, selector=(selector + 8) & 0xFFFF, type=0x3, dpl=0, db=1, g=1)
    return cs, ss


def emulate(engine: Engine) -> int | None:
    """Perform the SYSCALL at RIP (from Unicorn's hook, which then adds its length to RIP).

    Returns None, or the vector of the exception to raise instead (#UD, with RIP left at the SYSCALL).
    """
    rip = engine.reg(engine.RIP)
    length = _length(fetch_instruction(engine, rip))
    sregs = engine.get_sregs(apic_base=0, interrupt_bitmap=(0, 0, 0, 0), cr8=0)
    rflags = engine.reg(engine.RFLAGS)
    if not sregs.cr0 & CR0_PE or rflags & _VM or not sregs.efer & _EFER_SCE:
        engine.set_reg(engine.RIP, (rip - length) & _U64)  # Unicorn moves RIP on: the #UD is on the SYSCALL
        return _UD
    star = engine.read_msr(STAR)
    long_mode = bool(sregs.efer & EFER_LMA)
    cs, ss = _segments(star >> 32 & 0xFFFF, long_mode=long_mode)
    following = rip + length
    if long_mode:
        target = engine.read_msr(LSTAR if sregs.cs.l else CSTAR)
        engine.set_reg(engine.GPRS_BY_NUMBER[11], rflags & ~_RF)  # R11
        rflags = (rflags & ~engine.read_msr(FMASK) & ~_RF) | _FIXED
    else:
        target = star & 0xFFFFFFFF
        following &= 0xFFFFFFFF
        rflags &= ~(_VM | _IF | _RF)
    engine.set_sregs(replace(sregs, cs=cs, ss=ss), flush=False)
    engine.set_reg(engine.RCX, following)
    engine.set_reg(engine.RFLAGS, rflags)
    engine.set_reg(engine.RIP, (target - length) & _U64)  # Unicorn adds the length after the hook
    return None
