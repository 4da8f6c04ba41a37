"""Which RFLAGS status flags each x86 instruction leaves undefined: the one model every comparison uses.

From the "Flags Affected" sections of the Intel SDM (vol. 2) and the AMD APM (vol. 3): logic ops
leave AF undefined; shifts AF, OF unless the count is 1, and (shl / shr) CF for a count of the
width or more; rotates OF unless the count is 1; mul / imul SF ZF AF PF; div / idiv all six;
bsf / bsr all but ZF; bt* OF SF AF PF, and so on. A count of 0 (after masking) changes no flag.
Undefined flags differ between CPUs and emulators (Intel and AMD, KVM's emulator, QEMU), so no
test compares them: the conformance corpus masks ``undefined_after(...)`` of its guests'
instructions (``tests.conformance.harness.Case.undefined_flags``), and the differential fuzzer's
generator tracks ``defined_after`` along every path of its guests.
"""

from __future__ import annotations

import re
from functools import reduce
from operator import and_

CF, PF, AF, ZF, SF, OF = 0x1, 0x4, 0x10, 0x40, 0x80, 0x800
STATUS = CF | PF | AF | ZF | SF | OF
"""The six status flags."""

_CONDITIONS = ("o", "no", "b", "c", "nae", "ae", "nb", "nc", "e", "z", "ne", "nz", "be", "na", "a", "nbe",
               "s", "ns", "p", "pe", "np", "po", "l", "nge", "ge", "nl", "le", "ng", "g", "nle")  # fmt: skip

_WRITES: dict[str, tuple[int, int]] = {}
"""Mnemonic -> (flags it gives a defined value, flags it leaves undefined), for fixed effects."""


def _table(mnemonics: str, written: int, undefined: int = 0) -> None:
    for mnemonic in mnemonics.split():
        _WRITES[mnemonic] = (written, undefined)


_table("add adc sub sbb cmp neg xadd cmpxchg cmps cmpsb cmpsw cmpsq scas scasb scasw scasd scasq popcnt", STATUS)
_table("inc dec", STATUS & ~CF)
_table("and or xor test", STATUS & ~AF, AF)
_table("mul imul", CF | OF, SF | ZF | AF | PF)
_table("div idiv", 0, STATUS)
_table("bsf bsr", ZF, STATUS & ~ZF)
_table("bt bts btr btc", CF, OF | SF | AF | PF)
_table("lzcnt tzcnt", CF | ZF, OF | SF | AF | PF)
_table("aaa aas", AF | CF, OF | SF | ZF | PF)
_table("daa das", STATUS & ~OF, OF)
_table("aam aad", SF | ZF | PF, OF | AF | CF)
_table("clc stc cmc", CF)
_table("cmpxchg8b cmpxchg16b", ZF)
_table("sahf", STATUS & ~OF)

SHIFTS = frozenset({"shl", "sal", "shr", "sar"})
ROTATES = frozenset({"rol", "ror", "rcl", "rcr"})
DOUBLE_SHIFTS = frozenset({"shld", "shrd"})
COUNTED = SHIFTS | ROTATES | DOUBLE_SHIFTS
"""Instructions whose effect depends on their width and count."""

KEEPS = frozenset(
    (
        "mov", "movabs", "movq", "movd", "movzx", "movsx", "movsxd", "lea", "push", "pop", "xchg", "bswap", "not",
        "nop", "pause", "hlt", "cli", "sti", "cld", "std", "cbw", "cwde", "cdqe", "cwd", "cdq", "cqo", "lahf",
        "in", "out", "ins", "insb", "insw", "insd", "outs", "outsb", "outsw", "outsd",
        "movs", "movsb", "movsw", "movsd", "movsq", "stos", "stosb", "stosw", "stosd", "stosq",
        "lods", "lodsb", "lodsw", "lodsd", "lodsq",
        "jmp", "ljmp", "call", "lcall", "ret", "retf", "retfq", "jcxz", "jecxz", "jrcxz", "loop",
        "lgdt", "lidt", "lldt", "ltr", "sgdt", "sidt", "rdmsr", "wrmsr", "rdtsc", "rdtscp", "cpuid",
        "invlpg", "wbinvd", "clts", "int", "int3", "into", "ud2",
        "pushf", "pushfd", "pushfq", "popf", "popfd", "popfq", "iret", "iretd", "iretq",
        *(f"{head}{cc}" for head in ("j", "set", "cmov") for cc in _CONDITIONS),
    )
)  # fmt: skip
"""Instructions that leave the status flags as they were. ``popf`` and ``iret`` load them from the
stack: they come back as the matching ``pushf`` or event delivery saved them (lahf reads them)."""

PREFIXES = frozenset({"lock", "rep", "repe", "repz", "repne", "repnz", "data16", "addr32", "o16", "o32"})

_REGISTERS: dict[int, tuple[str, ...]] = {
    8: ("al", "cl", "dl", "bl", "ah", "ch", "dh", "bh", "spl", "bpl", "sil", "dil", *(f"r{i}b" for i in range(8, 16))),
    16: ("ax", "cx", "dx", "bx", "sp", "bp", "si", "di", *(f"r{i}w" for i in range(8, 16))),
    32: ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", *(f"r{i}d" for i in range(8, 16))),
    64: ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", *(f"r{i}" for i in range(8, 16))),
}
_WIDTH_OF = {name: width for width, names in _REGISTERS.items() for name in names}
_PTR = {"byte": 8, "word": 16, "dword": 32, "qword": 64}


def _count_mask(width: int) -> int:
    return 0x3F if width == 64 else 0x1F


def _shift_effect(mnemonic: str, width: int, count: int) -> tuple[int, int] | None:
    """(written, undefined) of a shift, rotate or double shift by ``count``, or None: no flag changes."""
    masked = count & _count_mask(width)
    if masked == 0:
        return None
    overflow = 0 if masked == 1 else OF  # OF is defined for 1-bit shifts and rotates only
    if mnemonic in ROTATES:
        # rcl / rcr rotate through CF by the masked count modulo width + 1: a multiple leaves CF as it was
        through = mnemonic in ("rcl", "rcr") and width < 32 and masked % (width + 1) == 0
        return (0 if through else CF) | OF, overflow
    if mnemonic in DOUBLE_SHIFTS and masked > width:
        return 0, STATUS  # the result and every flag are undefined
    carry = CF if mnemonic in ("shl", "sal", "shr") and masked >= width else 0
    return STATUS, AF | overflow | carry


def defined_after(defined: int, mnemonic: str, width: int = 0, count: int | None = 1) -> int:
    """The status flags defined after ``mnemonic`` ran with the flags ``defined`` before it.

    ``width`` is the operand size in bits, ``count`` a shift's or rotate's count (``None``: any
    count, as for one in CL: a flag is defined only if it is for every count). Raises ``KeyError``
    for an instruction the model does not know, so that nothing goes unclassified.
    """
    mnemonic = mnemonic.lower()
    if mnemonic in COUNTED:
        if width not in _REGISTERS:
            raise ValueError(f"{mnemonic}: the operand width (8, 16, 32 or 64 bits) is needed, not {width}")
        if count is None:
            counts = range(_count_mask(width) + 1)
            return reduce(and_, (defined_after(defined, mnemonic, width, c) for c in counts), STATUS)
        effect = _shift_effect(mnemonic, width, count)
    elif mnemonic in KEEPS:
        effect = None
    else:
        effect = _WRITES[mnemonic]
    if effect is None:
        return defined
    written, undefined = effect
    return (defined | written) & ~undefined


def undefined_by(mnemonic: str, width: int = 0, count: int | None = 1) -> int:
    """The status flags ``mnemonic`` leaves undefined (whatever came before it)."""
    return STATUS & ~defined_after(STATUS, mnemonic, width, count)


def parse(instruction: str) -> tuple[str, int, int | None]:
    """``(mnemonic, width, count)`` of an Intel-syntax instruction (``"shr rax, 32"``, ``"ror eax, cl"``).

    ``width`` comes from the first operand (a register or ``byte``/``word``/... ``ptr``), 0 if it
    has none; ``count`` is a shift's or rotate's count: 1 when it has none, ``None`` for ``cl``.
    A trailing ``# comment`` is ignored.
    """
    words = instruction.split("#", 1)[0].strip().lower().split(None, 1)
    while words and words[0] in PREFIXES:
        words = words[1].split(None, 1) if len(words) > 1 else []
    if not words:
        raise ValueError(f"no instruction in {instruction!r}")
    mnemonic = "shl" if words[0] == "sal" else words[0]
    operands = [o.strip() for o in words[1].split(",")] if len(words) > 1 else []
    width = 0
    if operands:
        first = operands[0]
        sized = re.match(r"(byte|word|dword|qword)\s+ptr\b", first)
        width = _PTR[sized.group(1)] if sized else _WIDTH_OF.get(first, 0)
    count: int | None = 1
    position = 2 if mnemonic in DOUBLE_SHIFTS else 1
    if mnemonic in COUNTED and len(operands) > position:
        count = None if operands[position] == "cl" else int(operands[position], 0)
    return mnemonic, width, count


def undefined_after(*instructions: str, before: int = 0) -> int:
    """The status flags undefined after ``instructions`` (Intel syntax, in the order they run).

    ``before`` are those already undefined before the first of them. For example
    ``undefined_after("shr rax, 32") == AF | OF`` and ``undefined_after("xor ax, ax", "cmp ax, 1") == 0``.
    """
    defined = STATUS & ~before
    for instruction in instructions:
        defined = defined_after(defined, *parse(instruction))
    return STATUS & ~defined


def describe(flags: int) -> str:
    """``flags`` by name, e.g. ``"AF OF"`` (``"none"`` for 0)."""
    names = [name for name, bit in (("CF", CF), ("PF", PF), ("AF", AF), ("ZF", ZF), ("SF", SF), ("OF", OF))
             if flags & bit]  # fmt: skip
    return " ".join(names) or "none"
