"""RFLAGS.RF, the resume flag, as the processor keeps it (Unicorn does not).

RF lets one instruction run without its instruction breakpoint firing: the one an IRET with RF
in its image returns to (a debugger's handler resuming at a breakpoint), or the one a VMM starts
with RF set. The processor clears RF as soon as that instruction completes, and PUSHF never puts
RF (or VM) in the image it pushes. Unicorn loads RF with IRET but clears it only at the end of a
translation block, which may be many instructions later, and its PUSHF copies RF and VM as they
are. So the simulator:

- intercepts every guest IRET (an SVM intercept, :mod:`hvcore_sim.engine`); the hook lets that
  one IRET run and ends the run right after it (:meth:`hvcore_sim.exits.Tracker.run`), so the
  run loop sees the RF it loaded;
- runs an instruction that starts with RF set on its own, and clears RF once it completes (an OUT
  or MMIO write exit, a single-step trap after it, or just the end of the run); not when it is an
  IN or MMIO read still waiting for its data, or a fault;
- clears RF and VM in the image of a 32- or 64-bit PUSHF that ran with RF set
  (:func:`clear_pushed_rf`). A PUSHF whose stack is MMIO still shows them in its write exit.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Final

from hvcore.errors import HvError
from hvcore.x86 import EFER_LMA
from hvcore_sim.decode import fetch_instruction, prefixes
from hvcore_sim.faults import GuestFault
from hvcore_sim.mmu import PhysicalMemory, translate_range

if TYPE_CHECKING:
    from hvcore_sim.engine import Engine

__all__ = ["RFLAGS_RF", "clear_pushed_rf"]

RFLAGS_RF: Final = 1 << 16
_PUSHF: Final = 0x9C
_RF_VM_IN_BYTE_2: Final = 0x3  # RF and VM are bits 0 and 1 of the image's third byte


def _pushf_size(code: bytes, *, bits: int) -> int:
    """The operand size of the PUSHF at the start of ``code`` in ``bits``-bit code; 0 for any other instruction."""
    found = prefixes(code, rex=bits == 64)
    at, operand16 = found.length, found.operand16
    if code[at : at + 1] != bytes([_PUSHF]):
        return 0
    if bits == 64:
        return 2 if operand16 else 8
    if bits == 32:
        return 2 if operand16 else 4
    return 4 if operand16 else 2


def clear_pushed_rf(engine: Engine, memory: PhysicalMemory, rip: int) -> None:
    """Clear RF and VM in the image of a 4- or 8-byte PUSHF at ``rip``, which has just run with RF set.

    Any other instruction there is left alone. RSP points at what the PUSHF pushed.
    """
    code = fetch_instruction(engine, rip)
    sregs = engine.get_sregs(apic_base=0, interrupt_bitmap=(0, 0, 0, 0), cr8=0)
    long64 = bool(sregs.efer & EFER_LMA) and bool(sregs.cs.l)
    if _pushf_size(code, bits=64 if long64 else 32 if sregs.cs.db else 16) < 4:
        return
    rsp = engine.reg(engine.RSP)
    linear = rsp if long64 else sregs.ss.base + (rsp & (0xFFFFFFFF if sregs.ss.db else 0xFFFF))
    # the PUSHF has just stored there through the same page tables, so the walk finds the page
    with contextlib.suppress(GuestFault, HvError):
        [(physical, _)] = translate_range(sregs, memory, linear + 2, 1, write=True, user=sregs.ss.dpl == 3)
        byte = memory.read(physical, 1)[0]
        memory.write(physical, bytes([byte & ~_RF_VM_IN_BYTE_2]))
