"""Random short 64-bit guests for differential fuzzing: a hypothesis strategy over a table of encodings.

``program()`` draws up to ``MAX_INSNS`` instructions, then ``hlt``, from a mix this host's KVM emulates
at CPL0 (../shared/kvm-notes.md): ALU ops (register, immediate, memory forms), mov / movzx / movsx /
movsxd / lea, shifts and rotates, imul, push / pop, xchg, test, setcc, cmovcc, bswap, cbw / cwd and
kin, IN / OUT (imm8 and dx ports), 1-8 byte loads, stores and read-modify-writes on MMIO (no slot)
and scratch RAM, absolute or RIP-relative, and forward-only ``jcc`` / ``jmp rel8`` (guests end); and
every GPR but rsp, the status flags, DF and the scratch RAM. The encoder below makes the bytes; the
Intel-syntax text is what GNU ``as`` takes (test_fuzz checks the two agree where binutils exists).

Flags the architecture leaves undefined (AF after logic ops and shifts; OF after multi-bit shifts and
rotates; SF/ZF/AF/PF after imul; CF after shl/shr by the width or more: the model in ``tests.flags``)
differ between CPUs and emulators: the generator tracks, with that model, which flags are defined on
every path into each instruction, flag readers (jcc, setcc, cmovcc, adc, sbb, rcl, rcr) read only
those, and the comparison masks ``Program.undefined_flags`` at the end. Left out: SSE, x87, popcnt,
int n, int3, cpuid, rdtsc, rdrand, xsave (INTERNAL_ERROR or not deterministic here); div / idiv (#DE,
no IDT: triple fault); string ops; pushf / popf / lahf (undefined flags; TF); rsp but for push / pop;
page-crossing MMIO.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import reduce
from operator import and_
from typing import Any

from hypothesis import strategies as st

from tests.flags import CF, OF, PF, SF, STATUS, ZF, defined_after
from tests.guests import layout

DF = 0x400
SCRATCH, SCRATCH_SIZE = layout.DATA, 0x100
"""Scratch RAM the guests load from and store to (compared after the run)."""
MMIO_WINDOW = 0x100
"""Guests access ``layout.MMIO`` .. ``layout.MMIO + MMIO_WINDOW``, inside one page."""
MAX_INSNS, MAX_SKIP = 20, 6
"""At most 20 instructions; a forward jump skips at most 6 (so rel8 always reaches)."""

# Switches that keep known simulator bugs (regression tests in test_fuzz.py) out of the random guests:
ALIGNED_MMIO_ONLY = False
"""True: MMIO operands stay aligned to their size (unaligned MMIO reads were split as Unicorn splits them; fixed)."""
MMIO_RIGHT_AFTER_FLAGS = True
"""False: no MMIO access right after a flag writer (the flags set just before an MMIO read came out wrong; fixed)."""
_NO_MMIO = 1 << 32  # beside the status flags in ``d``: no MMIO operand for this instruction

GPRS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", *(f"r{i}" for i in range(8, 16)))
USABLE = tuple(n for n in range(16) if n != 4)
"""Register numbers guests may change: all but rsp, which stays the stack pointer."""
_LOW = ("ax", "cx", "dx", "bx", "sp", "bp", "si", "di")
_NAMES = {
    8: GPRS,
    4: (*(f"e{n}" for n in _LOW), *(f"r{i}d" for i in range(8, 16))),
    2: (*_LOW, *(f"r{i}w" for i in range(8, 16))),
    1: ("al", "cl", "dl", "bl", "spl", "bpl", "sil", "dil", *(f"r{i}b" for i in range(8, 16))),
}
_PTR = {1: "byte", 2: "word", 4: "dword", 8: "qword"}
_CC = ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g")
_CC_READS = (OF, OF, CF, CF, ZF, ZF, CF | ZF, CF | ZF, SF, SF, PF, PF, SF | OF, SF | OF, ZF | SF | OF, ZF | SF | OF)
_ALU = ("add", "or", "adc", "sbb", "and", "sub", "xor", "cmp")
_SHIFTS = {0: "rol", 1: "ror", 2: "rcl", 3: "rcr", 4: "shl", 5: "shr", 7: "sar"}
_INTERESTING = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 2**63 - 1, 2**63)

Effect = Callable[[int], int]
"""What an instruction does to the set of defined status flags."""


@dataclass(frozen=True)
class Mem:
    """A memory operand at guest address ``address``: ``[disp32]`` (SIB, no base) or ``[rip+disp32]``."""

    address: int
    riprel: bool


Operand = int | Mem
"""A register number (0-15) or a memory operand."""


@dataclass(frozen=True)
class Op:
    """An instruction before layout: ``{m}`` in ``text`` stands for the memory operand, ``{t}`` the jump label."""

    head: bytes
    text: str
    mem: Mem | None = None
    imm: bytes = b""
    jump: int | None = None

    @property
    def length(self) -> int:
        """Its encoded length, which does not depend on where it is."""
        return len(self.head) + (4 if self.mem else 0) + len(self.imm) + (self.jump is not None)


@dataclass(frozen=True)
class Instruction:
    """One laid-out instruction: its index (label), guest address, bytes and Intel-syntax text."""

    index: int
    address: int
    code: bytes
    text: str


@dataclass(frozen=True, repr=False)
class Program:
    """A generated guest: instructions from ``layout.CODE``, initial GPRs / RFLAGS and scratch RAM."""

    instructions: tuple[Instruction, ...]
    regs: Mapping[str, int]
    rflags: int
    scratch: bytes
    undefined_flags: int
    """Status flags undefined on some path to the final hlt: not compared."""

    @property
    def code(self) -> bytes:
        """All instructions' bytes, to load at ``layout.CODE``."""
        return b"".join(i.code for i in self.instructions)

    def __repr__(self) -> str:
        return f"<Program {self.code.hex()} rflags={self.rflags:#x}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # hypothesis's "Falsifying example": the report has the listing


def assemble(ops: list[Op]) -> tuple[Instruction, ...]:
    """Lay ``ops`` out from ``layout.CODE`` and append ``hlt``; jumps past the end land on the ``hlt``."""
    ops = [*ops, Op(b"\xf4", "hlt")]
    addresses = [layout.CODE]
    for op in ops:
        addresses.append(addresses[-1] + op.length)
    out = []
    for i, op in enumerate(ops):
        end, code, text = addresses[i + 1], op.head, op.text
        if op.mem is not None:
            disp = op.mem.address - end if op.mem.riprel else op.mem.address
            code += disp.to_bytes(4, "little", signed=True)
            where = f"[rip{disp:+#x}]" if op.mem.riprel else f"[{disp:#x}]"
            text = text.replace("{m}", where) + (f"  # {op.mem.address:#x}" if op.mem.riprel else "")
        code += op.imm
        if op.jump is not None:
            target = min(op.jump, len(ops) - 1)
            code += (addresses[target] - end).to_bytes(1, "little", signed=True)
            text = text.replace("{t}", f"L{target}")
        out.append(Instruction(i, addresses[i], code, text))
    return tuple(out)


def encode(opcode: bytes, size: int, reg: int, rm: Operand, text: str, *, imm: bytes = b"", reg8: bool = False,
           rm8: bool | None = None) -> Op:  # fmt: skip
    """A ModRM instruction: ``size`` 2 adds 0x66 and 8 REX.W; byte registers 4-7 (spl..dil) need a REX."""
    rex = (8 if size == 8 else 0) | (reg & 8) >> 1 | (rm >> 3 if isinstance(rm, int) else 0)
    if isinstance(rm, Mem):
        modrm = bytes([(5 if rm.riprel else 4) | (reg & 7) << 3]) + (b"" if rm.riprel else b"\x25")
    else:
        modrm = bytes([0xC0 | (reg & 7) << 3 | rm & 7])
    byte_rm = (size == 1 if rm8 is None else rm8) and isinstance(rm, int) and 4 <= rm < 8
    prefix = b"\x66"[: size == 2] + bytes([0x40 | rex])[: bool(rex or byte_rm or (reg8 and 4 <= reg < 8))]
    return Op(prefix + opcode + modrm, text, rm if isinstance(rm, Mem) else None, imm)


def _name(x: Operand, size: int) -> str:
    return _NAMES[size][x] if isinstance(x, int) else f"{_PTR[size]} ptr {{m}}"


def _imm(value: int, n: int) -> bytes:
    return (value & ((1 << 8 * n) - 1)).to_bytes(n, "little")


def _sext(value: int, n: int, size: int) -> int:
    """``value`` as an ``n``-byte immediate, sign-extended to ``size`` bytes (what the disassembly shows)."""
    value &= (1 << 8 * n) - 1
    return (value - (value >> (8 * n - 1) << 8 * n)) & ((1 << 8 * size) - 1)


def _effect(mnemonic: str, width: int = 0, count: int | None = 1) -> Effect:
    """What ``mnemonic`` does to the defined flags, by the model (``count`` None: any count, as in CL)."""
    return lambda d: defined_after(d, mnemonic, width, count)


def values(n: int) -> st.SearchStrategy[int]:
    """``n``-byte values, often a boundary (0, 1, 0x7f, 0x80, 0xffff..., 2**63)."""
    mask = (1 << 8 * n) - 1
    return st.one_of(st.sampled_from(sorted({v & mask for v in _INTERESTING} | {mask})), st.integers(0, mask))


_REG, _SIZE, _WIDE = st.sampled_from(USABLE), st.sampled_from((8, 4, 2, 1)), st.sampled_from((8, 4, 2))


def _mem(draw: st.DrawFn, size: int, d: int) -> Mem:
    """Scratch RAM or MMIO; mostly at offset 0 or 8, so that accesses alias each other."""
    ram = d & _NO_MMIO or draw(st.booleans())
    step = 1 if ram or not ALIGNED_MMIO_ONLY else size
    last = ((SCRATCH_SIZE if ram else MMIO_WINDOW) - size) // step
    offset = step * draw(st.integers(0, last)) if draw(st.integers(0, 3)) == 3 else 8 * draw(st.integers(0, 1))
    return Mem((SCRATCH if ram else layout.MMIO) + offset, draw(st.booleans()))


def _rm(draw: st.DrawFn, size: int, d: int) -> Operand:
    return _mem(draw, size, d) if draw(st.booleans()) else draw(_REG)


def _rm_r(draw: st.DrawFn, d: int, name: str, opcode: int, *, both: bool = True) -> tuple[Op, Effect]:
    """``name r/m, r`` (``opcode``, +1 past byte size) or, with ``both``, ``name r, r/m`` (``opcode`` + 2)."""
    size, r = draw(_SIZE), draw(_REG)
    rm = _rm(draw, size, d)
    back = both and draw(st.booleans())
    a, b = (_name(r, size), _name(rm, size)) if back else (_name(rm, size), _name(r, size))
    op = encode(bytes([opcode + 2 * back + (size != 1)]), size, r, rm, f"{name} {a}, {b}", reg8=size == 1)
    return op, _effect(name, 8 * size)


def _rm_imm(draw: st.DrawFn, d: int, name: str, opcodes: tuple[int, int, int | None],
            digit: int) -> tuple[Op, Effect]:  # fmt: skip
    """``name r/m, imm``: ``opcodes`` for byte size, imm16/32, and imm8 sign-extended (None: no such form)."""
    size = draw(_SIZE)
    rm = _rm(draw, size, d)
    short = size == 1 or (opcodes[2] is not None and draw(st.booleans()))
    opcode, n = (opcodes[0] if size == 1 else opcodes[2], 1) if short else (opcodes[1], min(size, 4))
    v = draw(values(n))
    text = f"{name} {_name(rm, size)}, {_sext(v, n, size):#x}"
    return encode(bytes([opcode or 0]), size, digit, rm, text, imm=_imm(v, n)), _effect(name, 8 * size)


def _mov(draw: st.DrawFn, d: int) -> tuple[Op, Effect]:
    form, r = draw(st.sampled_from(("r/m, r", "r/m, imm", "imm64", "imm32"))), draw(_REG)
    if form == "r/m, r":
        return _rm_r(draw, d, "mov", 0x88)
    if form == "r/m, imm":
        return _rm_imm(draw, d, "mov", (0xC6, 0xC7, None), 0)
    n = 8 if form == "imm64" else 4
    v, rex = draw(values(n)), (8 if n == 8 else 0) | r >> 3
    head = bytes([0x40 | rex])[: bool(rex)] + bytes([0xB8 | r & 7])
    name = "movabs" if n == 8 else "mov"
    return Op(head, f"{name} {_NAMES[n][r]}, {v:#x}", imm=_imm(v, n)), _effect(name)


def _alu(draw: st.DrawFn, d: int) -> tuple[Op, Effect]:
    op = draw(st.sampled_from([i for i in range(8) if i not in (2, 3) or d & CF]))  # adc/sbb read CF
    if draw(st.booleans()):
        return _rm_imm(draw, d, _ALU[op], (0x80, 0x81, 0x83), op)
    return _rm_r(draw, d, _ALU[op], 8 * op)


def _test_xchg(draw: st.DrawFn, d: int) -> tuple[Op, Effect]:
    form = draw(st.sampled_from(("test r/m, r", "test r/m, imm", "xchg")))
    if form == "xchg":
        return _rm_r(draw, d, "xchg", 0x86, both=False)
    if form == "test r/m, r":
        return _rm_r(draw, d, "test", 0x84, both=False)
    return _rm_imm(draw, d, "test", (0xF6, 0xF7, None), 0)


def _unary(draw: st.DrawFn, d: int) -> tuple[Op, Effect]:
    size, digit = draw(_SIZE), draw(st.sampled_from((0, 1, 2, 3)))
    name, opcode = (("inc", 0xFE), ("dec", 0xFE), ("not", 0xF6), ("neg", 0xF6))[digit]
    rm = _rm(draw, size, d)
    op = encode(bytes([opcode + (size != 1)]), size, digit, rm, f"{name} {_name(rm, size)}")
    return op, _effect(name, 8 * size)


def _shift(draw: st.DrawFn, d: int) -> tuple[Op, Effect]:
    digit = draw(st.sampled_from([g for g in _SHIFTS if g not in (2, 3) or d & CF]))  # rcl/rcr read CF
    size, form = draw(_SIZE), draw(st.sampled_from(("imm8", "1", "cl")))
    rm, wide = _rm(draw, size, d), size != 1
    text = f"{_SHIFTS[digit]} {_name(rm, size)}"
    if form == "cl":  # any count: flags defined whatever it is
        return encode(bytes([0xD2 + wide]), size, digit, rm, f"{text}, cl"), _effect(_SHIFTS[digit], 8 * size, None)
    count = 1 if form == "1" else draw(st.integers(0, 255))
    effect = _effect(_SHIFTS[digit], 8 * size, count)
    if form == "1":
        return encode(bytes([0xD0 + wide]), size, digit, rm, f"{text}, 1"), effect
    return encode(bytes([0xC0 + wide]), size, digit, rm, f"{text}, {count:#x}", imm=bytes([count])), effect


def _imul(draw: st.DrawFn, d: int) -> tuple[Op, Effect]:
    size, r, n = draw(_WIDE), draw(_REG), draw(st.sampled_from((0, 1, 4)))  # n: immediate bytes
    rm, effect, n = _rm(draw, size, d), _effect("imul", 8 * size), min(n, size)
    v, text = draw(values(n)) if n else 0, f"imul {_name(r, size)}, {_name(rm, size)}"
    opcode, text = (b"\x6b" if n == 1 else b"\x69", f"{text}, {_sext(v, n, size):#x}") if n else (b"\x0f\xaf", text)
    return encode(opcode, size, r, rm, text, imm=_imm(v, n)), effect


def _movx(draw: st.DrawFn, d: int) -> tuple[Op, Effect]:
    which, r = draw(st.sampled_from(("movzx", "movsx", "movsxd"))), draw(_REG)
    src = 4 if which == "movsxd" else draw(st.sampled_from((1, 2)))
    size = draw(st.sampled_from({1: (8, 4, 2), 2: (8, 4), 4: (8,)}[src]))
    rm = _rm(draw, src, d)
    opcode = b"\x63" if src == 4 else bytes([0x0F, (0xB6 if which == "movzx" else 0xBE) + src - 1])
    return encode(opcode, size, r, rm, f"{which} {_name(r, size)}, {_name(rm, src)}", rm8=src == 1), _effect(which)


def _lea(draw: st.DrawFn, d: int) -> tuple[Op, Effect]:
    size, r, base, index = draw(_WIDE), draw(_REG), draw(st.sampled_from(range(16))), draw(st.sampled_from(range(16)))
    scale, disp = draw(st.sampled_from((1, 2, 4, 8))), draw(st.integers(-(2**31), 2**31 - 1))
    rex = (8 if size == 8 else 0) | (r & 8) >> 1 | (index & 8) >> 2 | base >> 3  # index 4 (rsp): none
    sib = bytes([0x84 | (r & 7) << 3, (scale.bit_length() - 1) << 6 | (index & 7) << 3 | base & 7])
    head = (b"\x66" if size == 2 else b"") + bytes([0x40 | rex])[: bool(rex)] + b"\x8d" + sib
    address = GPRS[base] + ("" if index == 4 else f"+{GPRS[index]}*{scale}") + f"{disp:+#x}"
    return Op(head, f"lea {_name(r, size)}, [{address}]", imm=_imm(disp, 4)), _effect("lea")


def _stack(draw: st.DrawFn, d: int) -> tuple[Op, Effect]:
    form, r = draw(st.sampled_from(("push", "pop", "push imm", "push m", "pop m"))), draw(_REG)
    effect = _effect(form.split()[0])
    if form in ("push", "pop"):
        return Op(b"\x41"[: r >> 3] + bytes([(0x50 if form == "push" else 0x58) | r & 7]), f"{form} {GPRS[r]}"), effect
    if form == "push imm":
        n = draw(st.sampled_from((1, 4)))
        v = draw(values(n))
        return Op(b"\x6a" if n == 1 else b"\x68", f"push {_sext(v, n, 8):#x}", imm=_imm(v, n)), effect
    opcode, digit = (b"\xff", 6) if form == "push m" else (b"\x8f", 0)
    return encode(opcode, 4, digit, _mem(draw, 8, d), f"{form[:-2]} qword ptr {{m}}"), effect  # 64-bit, no REX.W


def _cc(draw: st.DrawFn, d: int) -> int | None:
    """A condition code whose flags are all defined, or None if there is none."""
    usable = [cc for cc in range(16) if not _CC_READS[cc] & ~d]
    return draw(st.sampled_from(usable)) if usable else None


def _setcc_cmov(draw: st.DrawFn, d: int) -> tuple[Op, Effect]:
    cc, cmov = _cc(draw, d), draw(st.booleans())
    if cc is None:
        return _mov(draw, d)
    if not cmov:
        rm = _rm(draw, 1, d)
        return encode(bytes([0x0F, 0x90 + cc]), 1, 0, rm, f"set{_CC[cc]} {_name(rm, 1)}"), _effect(f"set{_CC[cc]}")
    size, r = draw(_WIDE), draw(_REG)
    rm = _rm(draw, size, d)
    text = f"cmov{_CC[cc]} {_name(r, size)}, {_name(rm, size)}"
    return encode(bytes([0x0F, 0x40 + cc]), size, r, rm, text), _effect(f"cmov{_CC[cc]}")


def _io(draw: st.DrawFn, d: int) -> tuple[Op, Effect]:
    size, out, by_dx = draw(st.sampled_from((1, 2, 4))), draw(st.booleans()), draw(st.booleans())
    opcode = bytes([(0xEC if by_dx else 0xE4) + 2 * out + (size != 1)])
    port = "dx" if by_dx else f"{draw(st.integers(0, 255)):#x}"
    acc, imm = _NAMES[size][0], b"" if by_dx else bytes([int(port, 16)])
    text = f"out {port}, {acc}" if out else f"in {acc}, {port}"
    return Op(b"\x66"[: size == 2] + opcode, text, imm=imm), _effect("out" if out else "in")


def _misc(draw: st.DrawFn, d: int) -> tuple[Op, Effect]:
    form = draw(st.sampled_from(("bswap", "cbw", "cwd")))
    if form == "bswap":
        size, r = draw(st.sampled_from((8, 4))), draw(_REG)
        rex = (8 if size == 8 else 0) | r >> 3
        code = bytes([0x40 | rex])[: bool(rex)] + bytes([0x0F, 0xC8 | r & 7])
        return Op(code, f"bswap {_name(r, size)}"), _effect("bswap")
    size = draw(_WIDE)
    name = {"cbw": ("cbw", "cwde", "cdqe"), "cwd": ("cwd", "cdq", "cqo")}[form][size.bit_length() - 2]
    head = {2: b"\x66", 4: b"", 8: b"\x48"}[size] + (b"\x98" if form == "cbw" else b"\x99")
    return Op(head, name), _effect(name)


_KINDS: dict[str, Callable[[st.DrawFn, int], tuple[Op, Effect]]] = {
    "mov": _mov, "alu": _alu, "test/xchg": _test_xchg, "unary": _unary, "shift": _shift, "imul": _imul,
    "movx": _movx, "lea": _lea, "stack": _stack, "setcc/cmov": _setcc_cmov, "io": _io, "misc": _misc,
}  # fmt: skip
_KIND_NAMES = (*_KINDS, "jcc", "jmp")


def _meet(defined: list[int]) -> int:
    """Flags defined on every path (all of them where no path arrives: dead code may read anything)."""
    return reduce(and_, defined, STATUS)


@st.composite
def _instruction(draw: st.DrawFn, d: int, no_mmio: bool) -> tuple[str, Op, Effect | None] | None:
    """One instruction, or None to end the program; a jump's ``Op.jump`` says how many it skips.

    One strategy per instruction gives hypothesis's shrinker a span it can delete whole.
    """
    if draw(st.integers(0, 11)) == 0:  # 0 ends the program, so shrinking shortens it
        return None
    kind = draw(st.sampled_from(_KIND_NAMES))
    cc = _cc(draw, d) if kind == "jcc" else None
    if kind in ("jcc", "jmp"):  # a jcc with no defined condition becomes a jmp
        op = Op(bytes([0xEB if cc is None else 0x70 + cc]), f"j{'mp' if cc is None else _CC[cc]} {{t}}")
        return "jmp" if cc is None else kind, replace(op, jump=draw(st.integers(0, MAX_SKIP))), None
    return kind, *_KINDS[kind](draw, d | (_NO_MMIO if no_mmio else 0))


@st.composite
def program(draw: st.DrawFn, max_insns: int = MAX_INSNS) -> Program:
    """A random guest of at most ``max_insns`` instructions plus ``hlt``, with random registers and scratch RAM."""
    ops: list[Op] = []
    arriving: dict[int, list[int]] = {}  # instruction index -> defined flags on each jump to it
    fallthrough: int | None = STATUS  # None after an unconditional jmp
    no_mmio = False  # after a flag writer (a known simulator bug)
    while len(ops) < max_insns:
        here = len(ops)
        d = _meet(arriving.get(here, []) + ([] if fallthrough is None else [fallthrough]))
        step = draw(_instruction(d, no_mmio))
        if step is None:
            break  # the jumps arriving here land on the hlt: counted below
        arriving.pop(here, None)
        kind, op, effect = step
        if effect is None:  # a jump
            target = here + 1 + (op.jump or 0)
            arriving.setdefault(target, []).append(d)
            ops.append(replace(op, jump=target))
            fallthrough, no_mmio = (None if kind == "jmp" else d), False
            continue
        ops.append(op)
        fallthrough, wrote_flags = effect(d), bool(effect(0) | STATUS & ~effect(STATUS))
        no_mmio = wrote_flags and not MMIO_RIGHT_AFTER_FLAGS
    at_end = [d for ds in arriving.values() for d in ds] + ([] if fallthrough is None else [fallthrough])
    regs = {GPRS[n]: draw(values(8)) for n in USABLE}
    rflags = 0x2 | draw(st.integers(0, 0xFFF)) & (STATUS | DF)
    scratch = draw(st.binary(min_size=SCRATCH_SIZE, max_size=SCRATCH_SIZE))
    return Program(assemble(ops), regs, rflags, scratch, STATUS & ~_meet(at_end))
