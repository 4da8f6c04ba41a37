"""SMSW and MOV from CR0, as the processor does them: Unicorn's SMSW stores only 16 bits outside 64-bit mode.

QEMU 5.0 (Unicorn's) gives SMSW a 16-bit operand outside 64-bit mode even when the destination
is a 32-bit register, which keeps that register's upper half; processors, and KVM's emulator
(``em_smsw``), store all of CR0 in a 32- or 64-bit register. So guest reads of CR0 are SVM
intercepts (the engine sets the CR0 bit of ``intercept_cr_read``) and reach :func:`emulate` with
RIP at the instruction:

- ``mov reg, cr0`` (CPL0 only; Unicorn raised #GP before the intercept otherwise): the register
  gets CR0, zero-extended, and RIP moves past the instruction;
- ``smsw reg``: a 16-bit register gets CR0's low 16 bits (its other bits stay), a 32- or 64-bit
  one all of CR0, zero-extended; #GP(0) at CPL > 0 with CR4.UMIP;
- ``smsw mem`` stores 16 bits, which Unicorn does right: the caller lets it run (``STORE``).
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Final

from hvcore.errors import HypervisorFault
from hvcore_sim.decode import fetch_instruction, prefixes

if TYPE_CHECKING:
    from hvcore_sim.engine import Engine

__all__ = ["Outcome", "emulate"]

_CR4_UMIP: Final = 1 << 11


class Outcome(Enum):
    """What :func:`emulate` did with the CR0 read at RIP."""

    DONE = "done"
    """The register holds the value; RIP is past the instruction."""
    STORE = "store"
    """An SMSW to memory: nothing changed; Unicorn's own SMSW must run."""
    GP = "gp"
    """#GP(0) on the instruction (SMSW at CPL > 0 with CR4.UMIP); nothing changed."""


def emulate(engine: Engine) -> Outcome:
    """Perform the MOV from CR0 or SMSW at RIP, or say why not."""
    rip = engine.reg(engine.RIP)
    view = engine.view()
    code = fetch_instruction(engine, rip)
    found = prefixes(code, rex=view.code_bits == 64)
    at, operand16, rex = found.length, found.operand16, found.rex
    opcode, modrm = code[at : at + 2], code[at + 2] if at + 2 < len(code) else 0
    smsw = opcode == b"\x0f\x01" and modrm >> 3 & 7 == 4
    if opcode != b"\x0f\x20" and not smsw:
        raise HypervisorFault(
            f"CR0 read intercept at {rip:#x}: not MOV from CR0 or SMSW: {code.hex()}", operation="run"
        )
    register = engine.GPRS_BY_NUMBER[(modrm & 7) | (rex & 1) << 3]
    cr0 = engine.reg(engine.CR0)
    if not smsw:  # mov reg, cr0: 64-bit in 64-bit code, else 32 (zero-extended)
        engine.set_reg(register, cr0 if view.code_bits == 64 else cr0 & 0xFFFFFFFF)
    else:
        if view.paging.cr4 & _CR4_UMIP and cr0 & 1 and engine.reg(engine.CS) & 3:  # protected mode, CPL > 0
            return Outcome.GP
        if modrm >> 6 != 3:
            return Outcome.STORE
        size = _operand_size(view.code_bits, operand16=operand16, rex_w=bool(rex & 8))
        if size == 2:
            engine.set_reg(register, engine.reg(register) & ~0xFFFF | cr0 & 0xFFFF)
        else:
            engine.set_reg(register, cr0 & ((1 << (8 * size)) - 1))
    engine.set_reg(engine.RIP, rip + at + 3)
    return Outcome.DONE


def _operand_size(code_bits: int, *, operand16: bool, rex_w: bool) -> int:
    if code_bits == 64:
        return 8 if rex_w else 2 if operand16 else 4
    if code_bits == 32:
        return 2 if operand16 else 4
    return 4 if operand16 else 2
