"""The data memory operands of the x86 instruction at RIP, and the guest-physical pieces they access.

Unicorn reports an MMIO access the way its softmmu performs it: an unaligned or page-crossing
access arrives as the aligned words around it. KVM reports the guest's own access, split only at
page boundaries. When Unicorn splits an access, the exit rules decode the instruction here (prefixes,
REX, VEX, ModRM, SIB, displacement, the immediate size that RIP-relative addressing needs, and the
implicit operands of string instructions, ``xlat`` and ``mov`` with ``moffs``), compute its linear
address, walk the guest's page tables and cut the access at page boundaries::

    insn = decode(code, 64)                      # cached per instruction bytes and mode
    for operand in insn.operands:
        linear = effective_linear(operand, regs, rip + insn.length, cpu)
        pieces = physical_pieces(linear, size, cpu, memory)

Only what locating a memory operand needs is decoded: instructions the simulator cannot use this for
(EVEX, XOP, stack pushes and pops) decode to no operands, and the exit rules fall back to reporting
Unicorn's pieces.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from hvcore.types import Sregs
from hvcore_sim import mmu
from hvcore_sim.decode import CS, DS, ES, FS, GS, SS, prefixes

if TYPE_CHECKING:
    from hvcore_sim.engine import Engine

__all__ = [
    "AL",
    "CS",
    "DS",
    "ES",
    "FS",
    "GS",
    "NO_REGISTER",
    "RIP",
    "SS",
    "CpuState",
    "Instruction",
    "MemoryOperand",
    "cpu_state",
    "decode",
    "effective_linear",
    "physical_pieces",
]

RIP: Final = 16
"""Base "register" of a RIP-relative operand."""
AL: Final = 17
"""Index "register" of ``xlat``: AL, zero-extended."""
NO_REGISTER: Final = -1

_MAX_LENGTH: Final = 15


def _opcodes(*spans: tuple[int, int]) -> frozenset[int]:
    return frozenset(op for first, last in spans for op in range(first, last + 1))


# One-byte map: opcodes with a ModRM byte, and which of those carry an immediate.
_MODRM_1: Final = frozenset(row + col for row in (0x00, 0x10, 0x20, 0x30) for col in (0, 1, 2, 3, 8, 9, 10, 11)) | (
    _opcodes((0x62, 0x63), (0x69, 0x69), (0x6B, 0x6B), (0x80, 0x8F), (0xC0, 0xC1), (0xC4, 0xC7), (0xD0, 0xD3))
    | _opcodes((0xD8, 0xDF), (0xF6, 0xF7), (0xFE, 0xFF))
)
_IMM8_1: Final = frozenset({0x6B, 0x80, 0x82, 0x83, 0xC0, 0xC1, 0xC6})
_IMMZ_1: Final = frozenset({0x69, 0x81, 0xC7})
# Two-byte map (0F xx): opcodes without a ModRM byte; those with one that carry an imm8.
_NO_MODRM_0F: Final = _opcodes((0x04, 0x0C), (0x0E, 0x0E), (0x30, 0x37), (0x39, 0x39), (0x3B, 0x3F)) | (
    _opcodes((0x77, 0x77), (0x80, 0x8F), (0xA0, 0xA2), (0xA8, 0xAA), (0xC8, 0xCF))
)
_IMM8_0F: Final = frozenset({0x0F, 0x70, 0x71, 0x72, 0x73, 0xA4, 0xAC, 0xBA, 0xC2, 0xC4, 0xC5, 0xC6})
_STRING_SOURCE: Final = frozenset({0xA4, 0xA5, 0xA6, 0xA7, 0xAC, 0xAD, 0x6E, 0x6F})  # DS(override):rSI
_STRING_DESTINATION: Final = frozenset({0xA4, 0xA5, 0xA6, 0xA7, 0xAA, 0xAB, 0xAE, 0xAF, 0x6C, 0x6D})  # ES:rDI
# 16-bit addressing: ModRM.rm -> (base, index)
_NONE = NO_REGISTER
_ADDRESS16: Final = ((3, 6), (3, 7), (5, 6), (5, 7), (6, _NONE), (7, _NONE), (5, _NONE), (3, _NONE))


@dataclass(frozen=True, slots=True)
class MemoryOperand:
    """Where a data operand is: ``segment:[base + index * 2**scale + displacement]`` in ``address_bits``."""

    segment: int
    base: int
    index: int
    scale: int
    displacement: int
    address_bits: int


@dataclass(frozen=True, slots=True)
class Instruction:
    """A decoded instruction: its length and its data memory operands."""

    length: int
    operands: tuple[MemoryOperand, ...]


_NOTHING: Final = Instruction(0, ())


@dataclass(frozen=True, slots=True)
class CpuState:
    """What locating an operand needs besides the registers: segment bases, modes, CPL, paging."""

    bases: tuple[int, int, int, int, int, int]
    code_bits: int
    long_mode: bool
    cpl: int
    paging: Sregs


_SEGMENT_BASE: Final = struct.Struct("<8xQ")
_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")
_HF_CS32, _HF_LMA, _HF_CS64 = 1 << 4, 1 << 14, 1 << 15


def cpu_state(engine: Engine) -> CpuState:
    """Segment bases, code size, CPL and paging registers, from one read of the context blob."""
    blob, lay = engine._blob(), engine.layout
    hflags = _U32.unpack_from(blob, lay.hflags)[0]
    bases = tuple(_SEGMENT_BASE.unpack_from(blob, lay.segment(i))[0] for i in range(6))
    return CpuState(
        bases=(bases[0], bases[1], bases[2], bases[3], bases[4], bases[5]),
        code_bits=64 if hflags & _HF_CS64 else 32 if hflags & _HF_CS32 else 16,
        long_mode=bool(hflags & _HF_LMA),
        cpl=hflags & 3,
        paging=Sregs(
            cr0=_U64.unpack_from(blob, lay.cr)[0],
            cr3=_U64.unpack_from(blob, lay.cr + 24)[0],
            cr4=_U64.unpack_from(blob, lay.cr + 32)[0],
            efer=_U64.unpack_from(blob, lay.efer)[0],
        ),
    )


@functools.lru_cache(maxsize=1024)
def decode(code: bytes, code_bits: int) -> Instruction:
    """Decode the instruction at the start of ``code`` (up to 15 bytes) in 16-, 32- or 64-bit code.

    An instruction that cannot be decoded, or whose operands this module does not model, has no operands.
    """
    try:
        return _decode(code, code_bits)
    except IndexError:  # ran off the bytes given
        return _NOTHING


def _decode(code: bytes, bits: int) -> Instruction:
    found = prefixes(code, rex=bits == 64)
    at, segment, operand16, rex = found.length, found.segment, found.operand16, found.rex
    if at >= _MAX_LENGTH:
        return _NOTHING
    address_bits = {16: 32, 32: 16, 64: 32}[bits] if found.address_override else bits
    if bits == 16:
        operand16 = not operand16
    operand16 &= not rex & 8  # REX.W wins over 0x66
    opcode, escape = code[at], 0
    at += 1
    vex = opcode in (0xC4, 0xC5) and (bits == 64 or code[at] >= 0xC0)
    if vex:
        if opcode == 0xC5:
            rex |= 0 if code[at] & 0x80 else 4  # R (inverted)
            escape, at = 1, at + 1
        else:
            escape = code[at] & 0x1F
            rex |= (0 if code[at] & 0x80 else 4) | (0 if code[at] & 0x40 else 2) | (0 if code[at] & 0x20 else 1)
            at += 2
            if escape not in (1, 2, 3):
                return _NOTHING
        opcode = code[at]
        at += 1
        has_modrm, imm = opcode != 0x77 or escape != 1, 0
        if escape == 3 or (escape == 1 and opcode in _IMM8_0F):
            imm = 1
    elif opcode == 0x0F:
        opcode = code[at]
        at += 1
        if opcode in (0x38, 0x3A):
            escape, opcode = (2 if opcode == 0x38 else 3), code[at]
            at += 1
            has_modrm, imm = True, int(escape == 3)
        else:
            escape = 1
            has_modrm, imm = opcode not in _NO_MODRM_0F, int(opcode in _IMM8_0F)
    elif opcode == 0x62 and bits == 64:
        return _NOTHING  # EVEX
    elif opcode == 0x8F and bits == 64 and code[at] & 0x1F >= 8:
        return _NOTHING  # XOP
    else:
        has_modrm = opcode in _MODRM_1
        imm = 1 if opcode in _IMM8_1 else (2 if operand16 else 4) if opcode in _IMMZ_1 else 0
    if not has_modrm:
        return _implicit(code, opcode, escape, at, segment, address_bits)

    modrm = code[at]
    at += 1
    mod, reg, rm = modrm >> 6, (modrm >> 3) & 7, modrm & 7
    if escape == 0 and opcode in (0xF6, 0xF7) and reg < 2:  # test r/m, imm
        imm = 1 if opcode == 0xF6 else 2 if operand16 else 4
    if mod == 3:
        return Instruction(at + imm, ())
    if address_bits == 16:
        base, index = _ADDRESS16[rm]
        default = SS if base == 5 else DS
        if mod == 0 and rm == 6:
            base, default = NO_REGISTER, DS
        size = 2 if mod == 2 or (mod == 0 and rm == 6) else mod
        if len(code) < at + size:
            return _NOTHING
        displacement = int.from_bytes(code[at : at + size], "little", signed=True) if size else 0
        at += size
        operand = MemoryOperand(segment if segment >= 0 else default, base, index, 0, displacement, 16)
        return Instruction(at + imm, (operand,))
    scale, index = 0, NO_REGISTER
    if rm == 4:
        sib = code[at]
        at += 1
        scale, index, base = sib >> 6, (sib >> 3) & 7 | (rex & 2) << 2, sib & 7
        if index == 4:
            index = NO_REGISTER
        if base == 5 and mod == 0:
            base = NO_REGISTER
        else:
            base |= (rex & 1) << 3
    elif rm == 5 and mod == 0:
        base = RIP if bits == 64 else NO_REGISTER
    else:
        base = rm | (rex & 1) << 3
    size = 4 if mod == 2 or (mod == 0 and base in (NO_REGISTER, RIP)) else mod
    if len(code) < at + size:
        return _NOTHING
    displacement = int.from_bytes(code[at : at + size], "little", signed=True) if size else 0
    at += size
    default = SS if base in (4, 5) else DS
    operand = MemoryOperand(segment if segment >= 0 else default, base, index, scale, displacement, address_bits)
    return Instruction(at + imm, (operand,))


def _implicit(code: bytes, opcode: int, escape: int, at: int, segment: int, address_bits: int) -> Instruction:
    """The implicit memory operands of string instructions, ``xlat`` and ``mov`` with ``moffs``."""
    if escape:
        return Instruction(at, ())
    source = DS if segment < 0 else segment
    if 0xA0 <= opcode <= 0xA3:  # the offset is as wide as the address size
        size = address_bits // 8
        if len(code) < at + size:
            return _NOTHING
        offset = int.from_bytes(code[at : at + size], "little")
        return Instruction(at + size, (MemoryOperand(source, NO_REGISTER, NO_REGISTER, 0, offset, address_bits),))
    operands = []
    if opcode in _STRING_SOURCE:
        operands.append(MemoryOperand(source, 6, NO_REGISTER, 0, 0, address_bits))
    if opcode in _STRING_DESTINATION:
        operands.append(MemoryOperand(ES, 7, NO_REGISTER, 0, 0, address_bits))
    if opcode == 0xD7:
        operands.append(MemoryOperand(source, 3, AL, 0, 0, address_bits))
    return Instruction(at, tuple(operands))


def effective_linear(operand: MemoryOperand, reg: Callable[[int], int], next_rip: int, cpu: CpuState) -> int:
    """The linear address of ``operand``; ``reg(n)`` reads GPR ``n`` (0 = RAX ... 15 = R15)."""
    effective = operand.displacement
    if operand.base == RIP:
        effective += next_rip
    elif operand.base != NO_REGISTER:
        effective += reg(operand.base)
    if operand.index == AL:
        effective += reg(0) & 0xFF
    elif operand.index != NO_REGISTER:
        effective += reg(operand.index) << operand.scale
    effective &= (1 << operand.address_bits) - 1
    if cpu.code_bits == 64:
        base = cpu.bases[operand.segment] if operand.segment in (FS, GS) else 0
        return (base + effective) & ((1 << 64) - 1)
    return (cpu.bases[operand.segment] + effective) & 0xFFFFFFFF


def physical_pieces(linear: int, size: int, cpu: CpuState, memory: mmu.PhysicalMemory) -> list[tuple[int, int]]:
    """``(guest-physical address, length)`` of an access of ``size`` bytes at ``linear``, cut at page boundaries."""
    if not cpu.paging.cr0 & (1 << 31):
        wrap = (1 << 64) - 1 if cpu.long_mode else 0xFFFFFFFF
        first = min(size, mmu.PAGE_SIZE - (linear & (mmu.PAGE_SIZE - 1)))
        pieces = [(linear & wrap, first)]
        if first < size:
            pieces.append(((linear + first) & wrap, size - first))
        return pieces
    return mmu.translate_range(cpu.paging, memory, linear, size, write=False, user=cpu.cpl == 3)
