"""Port IO: every size in real, 32-bit and 64-bit mode, the register effect of IN, string IO batching.

New guests here are assembled with GNU as (Intel syntax) at ``layout.CODE``; one instruction per
line, with its address and source.
"""

from __future__ import annotations

from collections.abc import Callable

from hvcore import Exit, IoExit
from tests.conformance.harness import Case, Host, Outcome, Step, hlt, io_in, numbered, out, pattern, script
from tests.flags import undefined_after
from tests.guests import layout, long_mode, protected_mode, real_mode

DATA = layout.DATA
IN_ANSWERS = {1: 0x5A, 2: 0x1234, 4: 0xCAFEBABE}


def answer_by_size(exit_: Exit, _index: int) -> int:
    """0x5A, 0x1234 or 0xCAFEBABE for an IN of 1, 2 or 4 bytes."""
    assert isinstance(exit_, IoExit)
    return IN_ANSWERS[exit_.size]


def fill_data(length: int) -> Callable[[Host], None]:
    """Set-up: DATA[0:length] = pattern(length, 0)."""

    def setup(host: Host) -> None:
        host.write(DATA, pattern(length, 0))

    return setup


# --- real mode ---------------------------------------------------------------------------------------------

REAL_PRINTS_5 = Case(
    "real_prints_5",
    "LWN's guest: OUT '5' and '\\n' to the serial port, HLT",
    "real",
    real_mode.PRINTS_5,
    regs={"rax": 2, "rbx": 3},
    expect=Outcome(
        steps=(out(0x3F8, b"5", 0x1008), out(0x3F8, b"\n", 0x100B), hlt(0x100C)),
        state={"rax": 0x0A, "rdx": 0x3F8, "rip": 0x100C},
    ),
    covers=frozenset({"io"}),
)

REAL_IO_SIZES = Case(
    "real_io_sizes",
    "OUT and IN of 1, 2, 4 bytes in real mode; `in al`/`in ax` keep the upper bits of eax",
    "real",
    real_mode.IO_SIZES,
    script=script(answer_by_size),
    expect=Outcome(
        steps=(
            out(0x10, 0x11, 0x1006),
            out(0x10, 0x2233, 0x100A, size=2),
            out(0x10, 0x44556677, 0x1012, size=4),
            io_in(0x10, 1, 0x1018, 0x5A),  # RIP still at the IN
            out(0x11, 0xAABBCC5A, 0x101C, size=4),
            io_in(0x10, 2, 0x101C, 0x1234),
            out(0x11, 0xAABB1234, 0x1020, size=4),
            io_in(0x10, 4, 0x1020, 0xCAFEBABE),
            out(0x11, 0xCAFEBABE, 0x1025, size=4),
            hlt(0x1026),
        ),
        state={"rax": 0xCAFEBABE, "rdx": 0x10, "rip": 0x1026},
    ),
    covers=frozenset({"io"}),
)

# 2 x 1024 + ... : KVM fills at most its 1024-byte pio page per exit (kvm-notes: counts 1024 x 4, 904).
INSB_COUNTS = (1024, 1024, 1024, 1024, 904)
INSB_ANSWERS = tuple(pattern(n, k + 1) for k, n in enumerate(INSB_COUNTS))

REAL_REP_INSB = Case(
    "real_rep_insb_batches",
    "`rep insb` of 5000 bytes: batches of min(rcx, 1024 // size, what is left of rdi's page)",
    "real",
    real_mode.REP_INSB,
    script=script(numbered),
    memory={"data": (DATA, 5004)},
    expect=Outcome(
        steps=(*(io_in(0x20, 1, 0x100E, a, count=len(a)) for a in INSB_ANSWERS), hlt(0x1011)),
        state={"rcx": 0, "rdi": 5000, "rip": 0x1011},
        memory={"data": b"".join(INSB_ANSWERS) + bytes(4)},
    ),
    undefined_flags={"rflags": undefined_after("xor di, di")},
    covers=frozenset({"io", "string-io"}),
)

REAL_REP_OUTSW = Case(
    "real_rep_outsw",
    "`rep outsw` of 3 words exits once per element, RIP at the `rep outsw` each time",
    "real",
    real_mode.REP_OUTSW,
    setup=fill_data(6),
    expect=Outcome(
        steps=(
            *(out(0x22, pattern(6, 0)[i : i + 2], 0x100E) for i in (0, 2, 4)),
            hlt(0x1011),
        ),
        state={"rcx": 0, "rsi": 6, "rip": 0x1011},
    ),
    undefined_flags={"rflags": undefined_after("xor si, si")},
    covers=frozenset({"io", "string-io"}),
)

# KVM's rule for one `rep ins` batch (emulate.c, pio_in_emulated): n = min(rcx, 1024 // size, in_page),
# where in_page counts *bytes* of RDI's page (not elements, not the linear address): from RDI to the
# page end going up, RDI's offset in the page going down; n = 0 becomes 1.
# Host: real mode, rip=CODE; answers ANSWERS[k] (size * count bytes) in order.
# Exits (measured on this host's KVM):
#   IN 0x20 size 2 count 6  rip 0x100F   (di=0x0FFA: 6 bytes left, taken as 6 words: crosses the page)
#   IN 0x20 size 2 count 4  rip 0x100F
#   IN 0x20 size 1 count 5  rip 0x1018   (DF=1, di=0x2005: offset 5)
#   IN 0x20 size 1 count 1  rip 0x1018   (di=0x2000: offset 0 -> 1)
#   IN 0x20 size 1 count 6  rip 0x1018
#   IN 0x20 size 2 count 4  rip 0x1020   (DF=1, di=0x3004: offset 4, taken as 4 words)
#   IN 0x20 size 2 count 1  rip 0x1020
#   IN 0x20 size 1 count 2  rip 0x102E   (es base 0x10010, di=0x0FFE: KVM looks at di alone)
#   IN 0x20 size 1 count 6  rip 0x102E
#   HLT rip 0x1031; cx=0, di=0x1006.
REP_INS_PAGE_RULE = (
    b"\xfc"          # 1000 cld
    b"\xb8\x00\x10"  # 1001 mov ax, 0x1000
    b"\x8e\xc0"      # 1004 mov es, ax
    b"\xba\x20\x00"  # 1006 mov dx, 0x20
    b"\xbf\xfa\x0f"  # 1009 mov di, 0x0ffa
    b"\xb9\x0a\x00"  # 100C mov cx, 10
    b"\xf3\x6d"      # 100F rep insw
    b"\xfd"          # 1011 std
    b"\xbf\x05\x20"  # 1012 mov di, 0x2005
    b"\xb9\x0c\x00"  # 1015 mov cx, 12
    b"\xf3\x6c"      # 1018 rep insb
    b"\xbf\x04\x30"  # 101A mov di, 0x3004
    b"\xb9\x05\x00"  # 101D mov cx, 5
    b"\xf3\x6d"      # 1020 rep insw
    b"\xfc"          # 1022 cld
    b"\xb8\x01\x10"  # 1023 mov ax, 0x1001
    b"\x8e\xc0"      # 1026 mov es, ax
    b"\xbf\xfe\x0f"  # 1028 mov di, 0x0ffe
    b"\xb9\x08\x00"  # 102B mov cx, 8
    b"\xf3\x6c"      # 102E rep insb
    b"\xf4"          # 1030 hlt
)
PAGE_RULE_EXITS = ((2, 6, 0x100F), (2, 4, 0x100F), (1, 5, 0x1018), (1, 1, 0x1018), (1, 6, 0x1018),
                   (2, 4, 0x1020), (2, 1, 0x1020), (1, 2, 0x102E), (1, 6, 0x102E))


def _page_rule_memory() -> tuple[tuple[Step, ...], bytes]:
    """The exits and the bytes the four `rep ins` leave in DATA[0:0x4000] (elements stored in order)."""
    memory = bytearray(0x4000)
    steps = []
    di = {0x100F: 0x0FFA, 0x1018: 0x2005, 0x1020: 0x3004, 0x102E: 0x0FFE + 0x10}
    for k, (size, count, rip) in enumerate(PAGE_RULE_EXITS):
        answer = pattern(size * count, k + 1)
        steps.append(io_in(0x20, size, rip, answer, count=count))
        step = -size if rip in (0x1018, 0x1020) else size
        for i in range(count):
            memory[di[rip] : di[rip] + size] = answer[i * size : (i + 1) * size]
            di[rip] += step
    return tuple(steps), bytes(memory)


PAGE_RULE_STEPS, PAGE_RULE_MEMORY = _page_rule_memory()

REAL_REP_INS_PAGE_RULE = Case(
    "real_rep_ins_page_rule",
    "`rep ins` batches by KVM's page rule: bytes left from RDI, backwards too, whatever ES's base",
    "real",
    REP_INS_PAGE_RULE,
    script=script(numbered),
    memory={"data": (DATA, 0x4000)},
    expect=Outcome(
        steps=(*PAGE_RULE_STEPS, hlt(0x1031)),
        state={"rcx": 0, "rdi": 0x1006, "rip": 0x1031},
        memory={"data": PAGE_RULE_MEMORY},
    ),
    covers=frozenset({"io", "string-io"}),
)

# --- 32-bit and 64-bit ---------------------------------------------------------------------------------

PROTECTED_IO_SIZES = Case(
    "protected_io_sizes",
    "OUT and IN of 1, 2, 4 bytes in 32-bit protected mode",
    "protected",
    protected_mode.IO_SIZES,
    script=script(answer_by_size),
    expect=Outcome(
        steps=(
            out(0x10, 0x11, 0x1007),
            out(0x10, 0x2233, 0x100D, size=2),
            out(0x10, 0x44556677, 0x1013, size=4),
            io_in(0x10, 1, 0x1018, 0x5A),
            out(0x11, 0xAABBCC5A, 0x101B, size=4),
            io_in(0x10, 2, 0x101B, 0x1234),
            out(0x11, 0xAABB1234, 0x101F, size=4),
            io_in(0x10, 4, 0x101F, 0xCAFEBABE),
            out(0x11, 0xCAFEBABE, 0x1022, size=4),
            hlt(0x1023),
        ),
        state={"rax": 0xCAFEBABE, "rip": 0x1023, "cs.selector": 0x18, "cr0": 0x60000011},
    ),
    covers=frozenset({"io"}),
)

LONG_IO_SIZES = Case(
    "long_io_sizes",
    "OUT and IN of 1, 2, 4 bytes in 64-bit mode; `in eax` zero-extends rax",
    "long",
    long_mode.IO_SIZES,
    script=script(answer_by_size),
    expect=Outcome(
        steps=(
            out(0x10, 0x11, 0x1007),
            out(0x10, 0x2233, 0x100D, size=2),
            out(0x10, 0x44556677, 0x1013, size=4),
            io_in(0x10, 1, 0x101D, 0x5A),
            out(0x11, 0x5566775A, 0x1020, size=4),
            out(0x11, 0x11223344, 0x1026, size=4),
            io_in(0x10, 2, 0x102A, 0x1234),
            out(0x11, 0x55661234, 0x102E, size=4),
            out(0x11, 0x11223344, 0x1034, size=4),
            io_in(0x10, 4, 0x1038, 0xCAFEBABE),
            out(0x11, 0xCAFEBABE, 0x103B, size=4),
            out(0x11, 0, 0x1041, size=4),
            hlt(0x1046),
        ),
        state={"rax": 0xCAFEBABE, "rip": 0x1046, "efer": 0x500},
    ),
    undefined_flags={"rflags": undefined_after("ror rax, 32")},
    covers=frozenset({"io"}),
)

# 32-bit: `rep outsd` of DATA[0:8], `rep insd` of 3 dwords to DATA+0x100 (one batch), then a
# single `outsb` (DATA[8]) and a single `insw` (to DATA+0x10C).
# Host: flat 32-bit, rip=CODE; DATA[0:16] = pattern(16, 0); answers A0 (12 bytes), A1 (2 bytes).
# Exits: OUT 0x22 size 4 DATA[0:4] and DATA[4:8], RIP at the `rep outsd` both times; IN 0x22 size 4
# count 3 rip 0x101B; OUT 0x22 size 1 DATA[8] rip 0x101E; IN 0x22 size 2 rip 0x101E; HLT 0x1021.
STRING_IO_32 = (
    b"\xfc"                  # 1000 cld
    b"\xbe\x00\x00\x01\x00"  # 1001 mov esi, 0x10000
    b"\xb9\x02\x00\x00\x00"  # 1006 mov ecx, 2
    b"\x66\xba\x22\x00"      # 100B mov dx, 0x22
    b"\xf3\x6f"              # 100F rep outsd
    b"\xbf\x00\x01\x01\x00"  # 1011 mov edi, 0x10100
    b"\xb9\x03\x00\x00\x00"  # 1016 mov ecx, 3
    b"\xf3\x6d"              # 101B rep insd
    b"\x6e"                  # 101D outsb
    b"\x66\x6d"              # 101E insw
    b"\xf4"                  # 1020 hlt
)
STRING_32_ANSWERS = (pattern(12, 1), pattern(2, 2))

PROTECTED_STRING_IO = Case(
    "protected_string_io",
    "32-bit `rep outsd`, `rep insd`, and single `outsb` / `insw`",
    "protected",
    STRING_IO_32,
    setup=fill_data(16),
    script=script(numbered),
    memory={"in": (DATA + 0x100, 16)},
    expect=Outcome(
        steps=(
            out(0x22, pattern(16, 0)[0:4], 0x100F),
            out(0x22, pattern(16, 0)[4:8], 0x100F),
            io_in(0x22, 4, 0x101B, STRING_32_ANSWERS[0], count=3),
            out(0x22, pattern(16, 0)[8:9], 0x101E),
            io_in(0x22, 2, 0x101E, STRING_32_ANSWERS[1]),
            hlt(0x1021),
        ),
        state={"rcx": 0, "rsi": DATA + 9, "rdi": DATA + 0x10E, "rip": 0x1021},
        memory={"in": STRING_32_ANSWERS[0] + STRING_32_ANSWERS[1] + bytes(2)},
    ),
    covers=frozenset({"io", "string-io"}),
)

# 64-bit: copy DATA[0:3] to DATA+0xFFC (RAM, no exit), `rep insd` of 0x301 dwords from rdi = DATA+0xFFF
# (1 dword: one byte left in the page, taken as one element; then 256 = 1024 // 4, three times),
# then DF=1 and `rep outsw` of 2 words from rsi = DATA+3 going down.
# Host: 64-bit, rip=CODE; DATA[0:8] = pattern(8, 0); answers pattern(4 * n, k + 1).
# Exits: IN 0x24 size 4 counts 1, 256, 256, 256 (rip 0x101D); OUT 0x24 size 2 DATA[3:5], DATA[1:3]
# (rip 0x1025); HLT 0x1029.
STRING_IO_64 = (
    b"\xfc"                          # 1000 cld
    b"\x48\xc7\xc6\x00\x00\x01\x00"  # 1001 mov rsi, 0x10000
    b"\xbf\xfc\x0f\x01\x00"          # 1008 mov edi, 0x10ffc
    b"\xb9\x03\x00\x00\x00"          # 100D mov ecx, 3
    b"\x66\xba\x24\x00"              # 1012 mov dx, 0x24
    b"\xf3\xa4"                      # 1016 rep movsb
    b"\xb9\x01\x03\x00\x00"          # 1018 mov ecx, 0x301
    b"\xf3\x6d"                      # 101D rep insd
    b"\xfd"                          # 101F std
    b"\xb9\x02\x00\x00\x00"          # 1020 mov ecx, 2
    b"\x66\xf3\x6f"                  # 1025 rep outsw
    b"\xf4"                          # 1028 hlt
)
STRING_64_COUNTS = (1, 256, 256, 256)
STRING_64_ANSWERS = tuple(pattern(4 * n, k + 1) for k, n in enumerate(STRING_64_COUNTS))

LONG_STRING_IO = Case(
    "long_string_io_batches",
    "64-bit `rep insd` across a page (1024 // 4 per batch) and a backwards `rep outsw`",
    "long",
    STRING_IO_64,
    setup=fill_data(8),
    script=script(numbered),
    memory={"data": (DATA + 0xFFC, 3 + 4 * 0x301 + 1)},
    expect=Outcome(
        steps=(
            *(io_in(0x24, 4, 0x101D, a, count=len(a) // 4) for a in STRING_64_ANSWERS),
            out(0x24, pattern(8, 0)[3:5], 0x1025),
            out(0x24, pattern(8, 0)[1:3], 0x1025),
            hlt(0x1029),
        ),
        state={"rcx": 0, "rsi": DATA - 1, "rdi": DATA + 0xFFF + 4 * 0x301, "rip": 0x1029, "rflags": 0x402},
        memory={"data": pattern(8, 0)[:3] + b"".join(STRING_64_ANSWERS) + bytes(1)},
    ),
    covers=frozenset({"io", "string-io"}),
)

CASES = (
    REAL_PRINTS_5,
    REAL_IO_SIZES,
    REAL_REP_INSB,
    REAL_REP_OUTSW,
    REAL_REP_INS_PAGE_RULE,
    PROTECTED_IO_SIZES,
    LONG_IO_SIZES,
    PROTECTED_STRING_IO,
    LONG_STRING_IO,
)
