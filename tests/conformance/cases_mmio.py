"""MMIO: every length in every mode, read completion and extension, read-modify-write, slots that change.

MMIO is guest-physical ``layout.MMIO`` (0xD0000, no slot); ROM is a slot at ``layout.ROM``.
"""

from __future__ import annotations

from hvcore import Exit, MmioExit, SlotFlags
from tests.conformance.harness import (
    RAM,
    Case,
    Host,
    Outcome,
    SlotSpec,
    Step,
    hlt,
    mmio_read,
    mmio_write,
    out,
    script,
)
from tests.flags import undefined_after
from tests.guests import layout, long_mode, protected_mode, real_mode

MMIO, ROM, DATA = layout.MMIO, layout.ROM, layout.DATA
READS = {1: 0xA1, 2: 0xB2C3, 4: 0xD4E5F607, 8: 0x0123456789ABCDEF}


def answer_by_length(exit_: Exit, _index: int) -> int:
    """READS[length] for an MMIO read of that length."""
    assert isinstance(exit_, MmioExit)
    return READS[exit_.length]


Rips = tuple[int, ...]


def _rw_steps(writes: Rips, reads: Rips, outs: Rips) -> tuple[Step, ...]:
    """The exits of the MMIO_RW guests: four writes, four reads, five OUTs to 0x30, HLT (RIPs given)."""
    values = (0x12, 0x3456, 0x789ABCDE, 0x1122334455667788)
    lengths = (1, 2, 4, 8)
    sent = (0xA1, 0xB2C3, 0xD4E5F607, 0x89ABCDEF, 0x01234567)
    return (
        *(mmio_write(MMIO + 8 * i, values[i], writes[i], length=lengths[i]) for i in range(4)),
        *(mmio_read(MMIO + 0x20 + 8 * i, lengths[i], reads[i], READS[lengths[i]]) for i in range(4)),
        *(out(0x30, sent[i], outs[i], size=(1, 2, 4, 4, 4)[i]) for i in range(5)),
        hlt(outs[5]),
    )


REAL_MMIO_RW = Case(
    "real_mmio_rw",
    "real mode: MMIO writes and reads of 1, 2, 4, 8 bytes (MMX movq); the reads land in registers",
    "real",
    real_mode.MMIO_RW,
    script=script(answer_by_length),
    memory={"data": (DATA, 16)},
    expect=Outcome(
        steps=_rw_steps(
            (0x1023, 0x1029, 0x1032, 0x103D),
            (0x103D, 0x1041, 0x1045, 0x104A),
            (0x1059, 0x105D, 0x1063, 0x106B, 0x1073, 0x1074),
        ),
        state={"rbx": 0xA1, "rcx": 0xB2C3, "rsi": 0xD4E5F607, "rip": 0x1074},
        memory={"data": (0x1122334455667788).to_bytes(8, "little") + READS[8].to_bytes(8, "little")},
    ),
    covers=frozenset({"mmio"}),
)

PROTECTED_MMIO_RW = Case(
    "protected_mmio_rw",
    "32-bit: MMIO writes and reads of 1, 2, 4, 8 bytes",
    "protected",
    protected_mode.MMIO_RW,
    script=script(answer_by_length),
    memory={"data": (DATA, 16)},
    expect=Outcome(
        steps=_rw_steps(
            (0x101B, 0x1024, 0x102E, 0x103C),
            (0x103C, 0x1042, 0x1049, 0x104F),
            (0x1061, 0x1067, 0x106B, 0x1072, 0x1079, 0x107A),
        ),
        state={"rbx": 0xA1, "rcx": 0xB2C3, "rsi": 0xD4E5F607, "rip": 0x107A},
        memory={"data": (0x1122334455667788).to_bytes(8, "little") + READS[8].to_bytes(8, "little")},
    ),
    covers=frozenset({"mmio"}),
)

LONG_MMIO_RW = Case(
    "long_mmio_rw",
    "64-bit: MMIO writes and reads of 1, 2, 4, 8 bytes with plain movs",
    "long",
    long_mode.MMIO_RW,
    script=script(answer_by_length),
    expect=Outcome(
        steps=_rw_steps(
            (0x1008, 0x1012, 0x101D, 0x102F),
            (0x102F, 0x1036, 0x103E, 0x1045),
            (0x1051, 0x1057, 0x105B, 0x1060, 0x1066, 0x1067),
        ),
        state={"rbx": 0xA1, "rcx": 0xB2C3, "rsi": 0xD4E5F607, "rdi": READS[8], "rax": READS[8] >> 32,
               "rflags": 0x3},  # CF from `shr rax, 32`
    ),
    undefined_flags={"rflags": undefined_after("shr rax, 32")},
    covers=frozenset({"mmio"}),
)

REAL_MMIO_RMW = Case(
    "real_mmio_rmw",
    "`add dword [mmio], 5` in real mode: a read exit, then a write exit of the sum",
    "real",
    real_mode.MMIO_RMW,
    script=script((0xFFFFFFFE,)),
    expect=Outcome(
        steps=(
            mmio_read(MMIO + 0x40, 4, 0x1005, 0xFFFFFFFE),
            mmio_write(MMIO + 0x40, 3, 0x100B, length=4),
            hlt(0x100C),
        ),
        state={"rflags": 0x17, "rip": 0x100C},  # CF, PF, AF from the wrap-around
    ),
    covers=frozenset({"mmio", "mmio-rmw"}),
)

LONG_MMIO_RMW = Case(
    "long_mmio_rmw",
    "`add dword [mmio], 5` in 64-bit mode",
    "long",
    long_mode.MMIO_RMW,
    script=script((0x7FFFFFFF,)),
    expect=Outcome(
        steps=(
            mmio_read(MMIO + 0x40, 4, 0x1000, 0x7FFFFFFF),
            mmio_write(MMIO + 0x40, 0x80000004, 0x1008, length=4),
            hlt(0x1009),
        ),
        state={"rflags": 0x892, "rip": 0x1009},  # OF, SF, AF from the signed overflow
    ),
    covers=frozenset({"mmio", "mmio-rmw"}),
)

# 64-bit: the extension an instruction applies to an MMIO read, `xchg` and `or` on MMIO.
# Host: 64-bit, rip=CODE; answers in order 0xF0, 0x8001, 0x80000002, 0x55667788, 0x01, 0x12345678.
# Exits: read 0xD0000/1 (rip 0x1000), read 0xD0002/2 (0x1008), read 0xD0004/4 (0x1011),
# read 0xD0008/4 (0x101E) then write 0xD0008/4 0x11223344 (0x1025), read 0xD0010/1 (0x1025) then
# write 0xD0010/1 0x81 (0x102D), read 0xD0018/4 (0x1034), HLT 0x103C.
# Final: rax 0xF0, rbx 0xFFFFFFFFFFFF8001, rcx 0xFFFFFFFF80000002, rdx 0x55667788, rsi 0x12345678.
MMIO_EXTEND = (
    b"\x0f\xb6\x04\x25\x00\x00\x0d\x00"      # 1000 movzx eax, byte ptr [0xD0000]
    b"\x48\x0f\xbf\x1c\x25\x02\x00\x0d\x00"  # 1008 movsx rbx, word ptr [0xD0002]
    b"\x48\x63\x0c\x25\x04\x00\x0d\x00"      # 1011 movsxd rcx, dword ptr [0xD0004]
    b"\xba\x44\x33\x22\x11"                  # 1019 mov edx, 0x11223344
    b"\x87\x14\x25\x08\x00\x0d\x00"          # 101E xchg [0xD0008], edx
    b"\x80\x0c\x25\x10\x00\x0d\x00\x80"      # 1025 or byte ptr [0xD0010], 0x80
    b"\x48\xc7\xc6\xff\xff\xff\xff"          # 102D mov rsi, -1
    b"\x8b\x34\x25\x18\x00\x0d\x00"          # 1034 mov esi, dword ptr [0xD0018]
    b"\xf4"                                  # 103B hlt
)
EXTEND_ANSWERS = (0xF0, 0x8001, 0x80000002, 0x55667788, 0x01, 0x12345678)

LONG_MMIO_EXTEND = Case(
    "long_mmio_extend_xchg",
    "64-bit: movzx/movsx/movsxd of MMIO reads, `xchg` and `or` on MMIO, a 32-bit load zero-extends",
    "long",
    MMIO_EXTEND,
    script=script(EXTEND_ANSWERS),
    expect=Outcome(
        steps=(
            mmio_read(MMIO, 1, 0x1000, 0xF0),
            mmio_read(MMIO + 2, 2, 0x1008, 0x8001),
            mmio_read(MMIO + 4, 4, 0x1011, 0x80000002),
            mmio_read(MMIO + 8, 4, 0x101E, 0x55667788),
            mmio_write(MMIO + 8, 0x11223344, 0x1025, length=4),
            mmio_read(MMIO + 0x10, 1, 0x1025, 0x01),
            mmio_write(MMIO + 0x10, 0x81, 0x102D),
            mmio_read(MMIO + 0x18, 4, 0x1034, 0x12345678),
            hlt(0x103C),
        ),
        state={
            "rax": 0xF0,
            "rbx": 0xFFFFFFFFFFFF8001,
            "rcx": 0xFFFFFFFF80000002,
            "rdx": 0x55667788,
            "rsi": 0x12345678,
            "rip": 0x103C,
        },
    ),
    undefined_flags={"rflags": undefined_after("or byte ptr [0xD0010], 0x80")},
    covers=frozenset({"mmio", "mmio-rmw"}),
)

# 32-bit: `lock cmpxchg8b` on MMIO, equal then not equal. kvm-notes: an 8-byte read exit, then
# always an 8-byte write exit: of ecx:ebx when equal, of the value read back when not.
# Host: flat 32-bit, rip=CODE; answers 0x2222222211111111 (equal), 0x6666666655555555 (not equal).
# Exits: read 0xD0040/8 (rip 0x1019), write 0xD0040/8 0x4444444433333333 (0x101D), OUT 0x30 1
# (0x1022), read 0xD0048/8 (0x1022), write 0xD0048/8 0x6666666655555555 (0x1027), OUT 0x30 0
# (0x102C), HLT 0x102D. Final eax 0x55555500, edx 0x66666666.
CMPXCHG8B = (
    b"\xbf\x40\x00\x0d\x00"  # 1000 mov edi, 0xD0040
    b"\xb8\x11\x11\x11\x11"  # 1005 mov eax, 0x11111111
    b"\xba\x22\x22\x22\x22"  # 100A mov edx, 0x22222222
    b"\xbb\x33\x33\x33\x33"  # 100F mov ebx, 0x33333333
    b"\xb9\x44\x44\x44\x44"  # 1014 mov ecx, 0x44444444
    b"\xf0\x0f\xc7\x0f"      # 1019 lock cmpxchg8b qword ptr [edi]
    b"\x0f\x94\xc0"          # 101D sete al
    b"\xe6\x30"              # 1020 out 0x30, al
    b"\xf0\x0f\xc7\x4f\x08"  # 1022 lock cmpxchg8b qword ptr [edi + 8]
    b"\x0f\x94\xc0"          # 1027 sete al
    b"\xe6\x30"              # 102A out 0x30, al
    b"\xf4"                  # 102C hlt
)

PROTECTED_MMIO_CMPXCHG8B = Case(
    "protected_mmio_cmpxchg8b",
    "32-bit `lock cmpxchg8b` on MMIO: 8-byte read, then an 8-byte write whether or not it compared equal",
    "protected",
    CMPXCHG8B,
    script=script((0x2222222211111111, 0x6666666655555555)),
    expect=Outcome(
        steps=(
            mmio_read(MMIO + 0x40, 8, 0x1019, 0x2222222211111111),
            mmio_write(MMIO + 0x40, 0x4444444433333333, 0x101D, length=8),
            out(0x30, 1, 0x1022),
            mmio_read(MMIO + 0x48, 8, 0x1022, 0x6666666655555555),
            mmio_write(MMIO + 0x48, 0x6666666655555555, 0x1027, length=8),
            out(0x30, 0, 0x102C),
            hlt(0x102D),
        ),
        state={"rax": 0x55555500, "rdx": 0x66666666, "rbx": 0x33333333, "rcx": 0x44444444, "rip": 0x102D},
    ),
    covers=frozenset({"mmio", "mmio-rmw"}),
)

ROM_SLOT = SlotSpec(1, ROM, layout.ROM_SIZE, SlotFlags.READONLY, contents=((0, b"\xea\x5a"),))

REAL_ROM_WRITE = Case(
    "real_rom_write",
    "a write to a read-only slot is an MMIO write and leaves the slot; reads come from it",
    "real",
    real_mode.ROM_WRITE,
    slots=(*RAM, ROM_SLOT),
    memory={"rom": (ROM, 2)},
    expect=Outcome(
        steps=(mmio_write(ROM, 0x55, 0x100B), out(0x40, 0xEA, 0x1011), hlt(0x1012)),
        state={"rax": 0xC0EA, "rip": 0x1012},
        memory={"rom": b"\xea\x5a"},
    ),
    covers=frozenset({"mmio", "readonly-slot"}),
)


def _delete_rom(host: Host) -> None:
    host.vm.delete_memory_slot(1)


REAL_DELETED_SLOT = Case(
    "real_deleted_slot",
    "after the host deletes a slot, the guest's accesses to it are MMIO exits",
    "real",
    real_mode.ROM_WRITE,
    slots=(*RAM, SlotSpec(1, ROM, layout.ROM_SIZE, contents=((0, b"\xea"),))),
    setup=_delete_rom,
    script=script((0x77,)),
    expect=Outcome(
        steps=(mmio_write(ROM, 0x55, 0x100B), mmio_read(ROM, 1, 0x100B, 0x77), out(0x40, 0x77, 0x1011), hlt(0x1012)),
        state={"rax": 0xC077, "rip": 0x1012},
    ),
    covers=frozenset({"mmio", "removed-slot"}),
)

# Real mode, a slot at ROM that the host changes between exits (es = 0xC000, set by the guest).
# Host: slot 1 (64 KiB at ROM) writable; after OUT 0x40 it sets READONLY; after OUT 0x41 it deletes
# the slot; after OUT 0x42 it maps fresh writable memory there with 0xEE at offset 0.
# Exits: OUT 0x40 0x11 (the write landed), MMIO write ROM 0x22 (read-only), OUT 0x41 0x11 (unchanged),
# MMIO read ROM (answer 0x99), OUT 0x42 0x99, OUT 0x43 0xEE (the new memory), OUT 0x44 0x33, HLT.
SLOT_CHANGES = (
    b"\xb8\x00\xc0"              # 1000 mov ax, 0xC000
    b"\x8e\xc0"                  # 1003 mov es, ax
    b"\x26\xc6\x06\x00\x00\x11"  # 1005 mov byte ptr es:[0], 0x11
    b"\x26\xa0\x00\x00"          # 100B mov al, es:[0]
    b"\xe6\x40"                  # 100F out 0x40, al
    b"\x26\xc6\x06\x00\x00\x22"  # 1011 mov byte ptr es:[0], 0x22
    b"\x26\xa0\x00\x00"          # 1017 mov al, es:[0]
    b"\xe6\x41"                  # 101B out 0x41, al
    b"\x26\xa0\x00\x00"          # 101D mov al, es:[0]
    b"\xe6\x42"                  # 1021 out 0x42, al
    b"\x26\xc6\x06\x01\x00\x33"  # 1023 mov byte ptr es:[1], 0x33
    b"\x26\xa0\x00\x00"          # 1029 mov al, es:[0]
    b"\xe6\x43"                  # 102D out 0x43, al
    b"\x26\xa0\x01\x00"          # 102F mov al, es:[1]
    b"\xe6\x44"                  # 1033 out 0x44, al
    b"\xf4"                      # 1035 hlt
)


def _make_readonly(host: Host) -> None:
    host.vm.set_slot_flags(1, SlotFlags.READONLY)


def _delete_and_note(host: Host) -> None:
    host.note("old memory", host.memory[1].read(0, 2))
    host.vm.delete_memory_slot(1)


def _map_fresh(host: Host) -> None:
    host.add_slot(SlotSpec(1, ROM, layout.ROM_SIZE, contents=((0, b"\xee"),)))


REAL_SLOT_CHANGES = Case(
    "real_slot_changes_between_exits",
    "a slot made read-only, deleted, and mapped again with other memory while the guest runs",
    "real",
    SLOT_CHANGES,
    slots=(*RAM, SlotSpec(1, ROM, layout.ROM_SIZE)),
    script=script((0x99,), actions={0: _make_readonly, 2: _delete_and_note, 4: _map_fresh}),
    memory={"rom": (ROM, 2)},
    expect=Outcome(
        steps=(
            out(0x40, 0x11, 0x1011),
            mmio_write(ROM, 0x22, 0x1017),
            out(0x41, 0x11, 0x101D),
            mmio_read(ROM, 1, 0x101D, 0x99),
            out(0x42, 0x99, 0x1023),
            out(0x43, 0xEE, 0x102F),
            out(0x44, 0x33, 0x1035),
            hlt(0x1036),
        ),
        state={"rax": 0xC033, "rip": 0x1036},
        memory={"rom": b"\xee\x33"},
        notes=((2, "old memory", b"\x11\x00"),),
    ),
    covers=frozenset({"mmio", "readonly-slot", "removed-slot"}),
)

# 64-bit, 4 KiB pages the host adds: linear 0x40000000 (PDPT[1] -> PD at DATA+0x2000 -> PT at
# DATA+0x3000) maps page 0 to MMIO, page 1 to ROM (read-only slot, 0xEA 0x5A at its start), page 2
# to RAM at DATA+0x5000. MMIO exits carry guest-physical addresses.
# Exits: MMIO write 0xD0010/4 0xAABBCCDD (rip 0x100B), MMIO read 0xD0020/8 (0x100B, answer A),
# MMIO write ROM/1 0x55 (0x101B: a read-only slot), HLT 0x102B; bl = 0x5A (ROM read, no exit),
# DATA+0x5008 = A. The CPU sets accessed (and, for the written pages, dirty) bits in the entries.
PAGING_TO_MMIO = (
    b"\xc7\x04\x25\x10\x00\x00\x40\xdd\xcc\xbb\xaa"  # 1000 mov dword ptr [0x40000010], 0xAABBCCDD
    b"\x48\x8b\x04\x25\x20\x00\x00\x40"              # 100B mov rax, qword ptr [0x40000020]
    b"\xc6\x04\x25\x00\x10\x00\x40\x55"              # 1013 mov byte ptr [0x40001000], 0x55
    b"\x8a\x1c\x25\x01\x10\x00\x40"                  # 101B mov bl, byte ptr [0x40001001]
    b"\x48\x89\x04\x25\x08\x20\x00\x40"              # 1022 mov qword ptr [0x40002008], rax
    b"\xf4"                                          # 102A hlt
)
PD2, PT = DATA + 0x2000, DATA + 0x3000
P, RW, ACCESSED, DIRTY = 0x1, 0x2, 0x20, 0x40


def _map_4k_pages(host: Host) -> None:
    host.write(layout.PDPT + 8, (PD2 | P | RW).to_bytes(8, "little"))
    host.write(PD2, (PT | P | RW).to_bytes(8, "little"))
    host.write(PT, b"".join((page | P | RW).to_bytes(8, "little") for page in (MMIO, ROM, DATA + 0x5000)))


def _entries(*values: int) -> bytes:
    return b"".join(v.to_bytes(8, "little") for v in values)


ANSWER_8 = 0x0102030405060708

LONG_PAGING_TO_MMIO = Case(
    "long_paging_to_mmio",
    "64-bit 4 KiB paging onto MMIO, a read-only slot and RAM: exits report guest-physical addresses",
    "long",
    PAGING_TO_MMIO,
    slots=(*RAM, ROM_SLOT),
    setup=_map_4k_pages,
    script=script((ANSWER_8,)),
    memory={"ram": (DATA + 0x5000, 16), "rom": (ROM, 2), "pt": (PT, 24), "pd": (PD2, 8), "pdpt": (layout.PDPT, 16)},
    expect=Outcome(
        steps=(
            mmio_write(MMIO + 0x10, 0xAABBCCDD, 0x100B, length=4),
            mmio_read(MMIO + 0x20, 8, 0x100B, ANSWER_8),
            mmio_write(ROM, 0x55, 0x101B),
            hlt(0x102B),
        ),
        state={"rax": ANSWER_8, "rbx": 0x5A, "rip": 0x102B},
        memory={
            "ram": bytes(8) + ANSWER_8.to_bytes(8, "little"),
            "rom": b"\xea\x5a",
            "pt": _entries(MMIO | P | RW | ACCESSED | DIRTY, ROM | P | RW | ACCESSED | DIRTY,
                           DATA + 0x5000 | P | RW | ACCESSED | DIRTY),
            "pd": _entries(PT | P | RW | ACCESSED),
            "pdpt": _entries(layout.PD | P | RW | 0x4 | ACCESSED, PD2 | P | RW | ACCESSED),
        },
    ),
    covers=frozenset({"mmio", "paging", "readonly-slot"}),
)

CASES = (
    REAL_MMIO_RW,
    PROTECTED_MMIO_RW,
    LONG_MMIO_RW,
    REAL_MMIO_RMW,
    LONG_MMIO_RMW,
    LONG_MMIO_EXTEND,
    PROTECTED_MMIO_CMPXCHG8B,
    REAL_ROM_WRITE,
    REAL_DELETED_SLOT,
    REAL_SLOT_CHANGES,
    LONG_PAGING_TO_MMIO,
)
