"""The little x86 decoding the exit rules need: an instruction's bytes and prefixes, the operands of IN / INS.

The one place the simulator knows x86 prefixes: :data:`LEGACY_PREFIXES` and :func:`prefixes`, which
every decoder of an intercepted or hooked instruction uses (:mod:`hvcore_sim.operand` for memory
operands; the CR, MSR, SYSCALL, SMSW, PUSHF and hypercall intercepts)::

    found = prefixes(fetch_instruction(engine, rip), rex=code_bits == 64)
    opcode = code[found.length]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from hvcore_sim.engine import CpuView, Engine

__all__ = [
    "CS",
    "DS",
    "ES",
    "FS",
    "GS",
    "IN_SAVED",
    "LEGACY_PREFIXES",
    "NO_SEGMENT",
    "SEGMENT_PREFIXES",
    "SS",
    "IoInstruction",
    "Prefixes",
    "fetch_instruction",
    "io_instruction",
    "is_string_in",
    "prefixes",
]

ES, CS, SS, DS, FS, GS = range(6)  # segment numbers, as x86 encodes them (and QEMU orders its caches)
SEGMENT_PREFIXES: Final = {0x26: ES, 0x2E: CS, 0x36: SS, 0x3E: DS, 0x64: FS, 0x65: GS}
"""The segment-override prefix bytes, and the segment each selects."""
OPERAND_SIZE, ADDRESS_SIZE, LOCK, REPNE, REP = 0x66, 0x67, 0xF0, 0xF2, 0xF3
LEGACY_PREFIXES: Final = frozenset({*SEGMENT_PREFIXES, OPERAND_SIZE, ADDRESS_SIZE, LOCK, REPNE, REP})
"""The legacy prefix bytes (segment overrides, operand and address size, LOCK, REP)."""
NO_SEGMENT: Final = -1
""":attr:`Prefixes.segment` when no segment override is among the prefixes."""

ReadLinear = Callable[[int, int], bytes]
_PAGE_SIZE: Final = 0x1000


def _registers() -> tuple[int, int, int, int]:
    from unicorn import x86_const as x

    return x.UC_X86_REG_RIP, x.UC_X86_REG_RAX, x.UC_X86_REG_RCX, x.UC_X86_REG_RDI


IN_SAVED: Final = _registers()
"""Registers an aborted IN must put back: RIP, RAX, RCX, RDI."""


@dataclass(frozen=True, slots=True)
class Prefixes:
    """The prefixes an instruction starts with."""

    length: int
    """How many bytes they take: the opcode (or its 0F escape, or VEX) is at ``code[length]``."""
    legacy: frozenset[int]
    """The legacy prefix bytes among them."""
    rex: int = 0
    """The REX byte in force, 0 if none (a REX that a legacy prefix follows is void, as on the processor)."""
    segment: int = NO_SEGMENT
    """The segment the last segment override selects (:data:`ES` ... :data:`GS`), or ``NO_SEGMENT``."""

    @property
    def operand16(self) -> bool:
        """The operand-size override (0x66) is among them."""
        return OPERAND_SIZE in self.legacy

    @property
    def address_override(self) -> bool:
        """The address-size override (0x67) is among them."""
        return ADDRESS_SIZE in self.legacy

    @property
    def lock(self) -> bool:
        """LOCK (0xF0) is among them."""
        return LOCK in self.legacy

    @property
    def rep(self) -> bool:
        """REP or REPNE (0xF3, 0xF2) is among them."""
        return REP in self.legacy or REPNE in self.legacy


_NO_PREFIXES: Final = Prefixes(0, frozenset())


def prefixes(code: bytes, *, rex: bool) -> Prefixes:
    """The prefixes at the start of ``code``; ``rex``: 0x40-0x4F are REX prefixes (64-bit code), not INC/DEC.

    Where the instruction at RIP is known (an intercept of a given instruction), ``rex=True`` is
    right in every mode: outside 64-bit code such a byte would be an instruction of its own.
    """
    if not code or (code[0] not in LEGACY_PREFIXES and not (rex and 0x40 <= code[0] <= 0x4F)):
        return _NO_PREFIXES  # the common case: no prefix at all
    legacy: set[int] = set()
    at, last_rex, segment = 0, 0, NO_SEGMENT
    for byte in code:
        if byte in LEGACY_PREFIXES:
            legacy.add(byte)
            segment = SEGMENT_PREFIXES.get(byte, segment)
            last_rex = 0
        elif rex and 0x40 <= byte <= 0x4F:
            last_rex = byte
        else:
            break
        at += 1
    return Prefixes(at, frozenset(legacy), last_rex, segment)


@dataclass(frozen=True)
class IoInstruction:
    """An IN/INS at RIP: whether it is a string op, its REP, DF and operands (masked to the address size)."""

    string: bool
    rep: bool
    backwards: bool
    rcx: int
    rdi: int
    destination: int  # linear ES:RDI
    read_linear: ReadLinear
    address_bits: int = 64  # the address size RCX and RDI are used with
    length: int = 1  # the instruction's length in bytes (prefixes and opcode)

    def current_value(self, size: int) -> int:
        """What the destination holds now (an INS that stores it changes nothing)."""
        try:
            return int.from_bytes(self.read_linear(self.destination, size), "little")
        except Exception:
            return 0


def _prefixes_and_opcode(read_linear: ReadLinear, linear: int) -> bytes:
    """Up to 16 bytes at ``linear``: to the end of its page, into the next only for the prefixes and opcode.

    The bytes after an instruction need not be memory at all (it may end where RAM does).
    """
    first = min(16, _PAGE_SIZE - linear % _PAGE_SIZE)
    code = read_linear(linear, first)
    if first < 16 and prefixes(code, rex=True).length >= len(code):
        code += read_linear(linear + first, 16 - first)
    return code


def io_instruction(engine: Engine, rip: int, view: CpuView, read_linear: ReadLinear) -> IoInstruction:
    """Decode the IN/INS at ``rip`` (``view``: CS, ES and paging at the time)."""
    address_bits = view.code_bits
    code = _prefixes_and_opcode(read_linear, view.cs_base + rip)
    found = prefixes(code, rex=True)
    at = found.length
    opcode = code[at] if at < len(code) else 0
    string = opcode in (0x6C, 0x6D)
    bits = address_bits
    if found.address_override:
        bits = {16: 32, 32: 16, 64: 32}[address_bits]
    mask = (1 << bits) - 1
    rcx = engine.reg(IN_SAVED[2]) & mask
    rdi = engine.reg(IN_SAVED[3]) & mask
    es_base = view.es_base if string else 0
    backwards = bool(engine.reg(engine.RFLAGS) & (1 << 10))
    rep = string and found.rep
    return IoInstruction(string, rep, backwards, rcx, rdi, es_base + rdi, read_linear, bits, at + 1)


def is_string_in(code: bytes) -> bool:
    """Whether ``code`` starts with an INS (``6C`` / ``6D``, after any prefixes)."""
    at = prefixes(code, rex=True).length
    return at < len(code) and code[at] in (0x6C, 0x6D)


def io_permitted(view: CpuView, read_linear: ReadLinear, port: int, size: int) -> bool:
    """The TSS I/O-permission bitmap allows ``size`` ports from ``port`` (CPL > IOPL or virtual-8086 mode)."""
    tr_base, tr_limit, tr_type = view.tr_base, view.tr_limit, view.tr_type
    if tr_type not in (9, 0xB) or tr_limit < 0x67:
        return False
    try:
        bitmap = int.from_bytes(read_linear(tr_base + 0x66, 2), "little")
        if bitmap + (port + size - 1) // 8 + 1 > tr_limit:
            return False
        bits = int.from_bytes(read_linear(tr_base + bitmap + port // 8, 2), "little")
    except Exception:
        return False
    return not bits >> (port % 8) & ((1 << size) - 1)


def fetch_instruction(engine: Engine, rip: int) -> bytes:
    """The bytes of the instruction at ``rip`` that the CPU has just fetched (an intercept or hook stands at it).

    To the end of RIP's page, and on into the next only if all it has there are prefixes and
    opcode escapes. Every byte read is one the CPU has just fetched, so the walk cannot fail (and so touch CR2).
    """
    linear = engine.code_address(rip)
    first = min(15, 0x1000 - (linear & 0xFFF))
    code = engine.read_code(linear, first) or b""
    if len(code) == first < 15 and all(b in LEGACY_PREFIXES or 0x40 <= b <= 0x4F or b in (0x0F, 0x01) for b in code):
        code += engine.read_code(linear + first, 15 - first) or b""
    return code
