"""The memory-operand decoder the simulator uses to locate MMIO reads Unicorn splits (hvcore_sim.operand)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hvcore.types import Sregs
from hvcore_sim import operand
from hvcore_sim.operand import AL, DS, ES, FS, GS, NO_REGISTER, RIP, SS, CpuState, MemoryOperand, decode

FLAT64 = CpuState(bases=(0, 0, 0, 0, 0x7000_0000, 0x5000), code_bits=64, long_mode=True, cpl=0, paging=Sregs())
REGS = {n: 0x1000 * (n + 1) for n in range(16)}  # rax 0x1000, rcx 0x2000, ... r15 0x10000


def linear(code: bytes, bits: int = 64, rip: int = 0x40_0000, cpu: CpuState = FLAT64) -> list[int]:
    insn = decode(code, bits)
    return [operand.effective_linear(op, REGS.__getitem__, rip + insn.length, cpu) for op in insn.operands]


@pytest.mark.parametrize(
    ("code", "bits", "length", "operands"),
    [
        ("8b0425 01000d00", 64, 7, [MemoryOperand(DS, NO_REGISTER, NO_REGISTER, 0, 0xD0001, 64)]),
        ("488b05 faef0c00", 64, 7, [MemoryOperand(DS, RIP, NO_REGISTER, 0, 0xCEFFA, 64)]),
        ("48813d 00010000 78563412", 64, 11, [MemoryOperand(DS, RIP, NO_REGISTER, 0, 0x100, 64)]),  # cmp imm32
        ("f605 10000000 01", 64, 7, [MemoryOperand(DS, RIP, NO_REGISTER, 0, 0x10, 64)]),  # test byte, imm8
        ("66f705 10000000 0010", 64, 9, [MemoryOperand(DS, RIP, NO_REGISTER, 0, 0x10, 64)]),  # test word, imm16
        ("6648f705 10000000 00100000", 64, 12, [MemoryOperand(DS, RIP, NO_REGISTER, 0, 0x10, 64)]),  # REX.W wins
        ("4866f705 10000000 0010", 64, 10, [MemoryOperand(DS, RIP, NO_REGISTER, 0, 0x10, 64)]),  # REX then 66: void
        ("26648b00", 64, 4, [MemoryOperand(FS, 0, NO_REGISTER, 0, 0, 64)]),  # the last segment override wins
        ("f715 10000000", 64, 6, [MemoryOperand(DS, RIP, NO_REGISTER, 0, 0x10, 64)]),  # not: no immediate
        ("648b448b 10", 64, 5, [MemoryOperand(FS, 3, 1, 2, 0x10, 64)]),
        ("66438b44ec 80", 64, 6, [MemoryOperand(DS, 12, 13, 3, -0x80, 64)]),
        ("678b43 10", 64, 4, [MemoryOperand(DS, 3, NO_REGISTER, 0, 0x10, 32)]),
        ("8b4500", 64, 3, [MemoryOperand(SS, 5, NO_REGISTER, 0, 0, 64)]),
        ("0fb64424 01", 64, 5, [MemoryOperand(SS, 4, NO_REGISTER, 0, 1, 64)]),
        ("c4e260f2 05 10000000", 64, 9, [MemoryOperand(DS, RIP, NO_REGISTER, 0, 0x10, 64)]),  # andn (VEX, 0F38)
        ("c4e37bf0 05 10000000 03", 64, 10, [MemoryOperand(DS, RIP, NO_REGISTER, 0, 0x10, 64)]),  # rorx (0F3A)
        ("660f3a0f05 10000000 01", 64, 10, [MemoryOperand(DS, RIP, NO_REGISTER, 0, 0x10, 64)]),  # palignr
        ("a1 8967452301000000", 64, 9, [MemoryOperand(DS, NO_REGISTER, NO_REGISTER, 0, 0x123456789, 64)]),
        ("65a0 1000000000000000", 64, 10, [MemoryOperand(GS, NO_REGISTER, NO_REGISTER, 0, 0x10, 64)]),
        ("ad", 64, 1, [MemoryOperand(DS, 6, NO_REGISTER, 0, 0, 64)]),
        ("48a7", 64, 2, [MemoryOperand(DS, 6, NO_REGISTER, 0, 0, 64), MemoryOperand(ES, 7, NO_REGISTER, 0, 0, 64)]),
        ("f3ae", 64, 2, [MemoryOperand(ES, 7, NO_REGISTER, 0, 0, 64)]),
        ("d7", 64, 1, [MemoryOperand(DS, 3, AL, 0, 0, 64)]),
        ("8b0501000d00", 32, 6, [MemoryOperand(DS, NO_REGISTER, NO_REGISTER, 0, 0xD0001, 32)]),  # no RIP in 32-bit
        ("8b4701", 16, 3, [MemoryOperand(DS, 3, NO_REGISTER, 0, 1, 16)]),  # [bx+1]
        ("8b4201", 16, 3, [MemoryOperand(SS, 5, 6, 0, 1, 16)]),  # [bp+si+1]
        ("268b1e 0100", 16, 5, [MemoryOperand(ES, NO_REGISTER, NO_REGISTER, 0, 1, 16)]),  # es:[0x1]
        ("66678b4301", 16, 5, [MemoryOperand(DS, 3, NO_REGISTER, 0, 1, 32)]),  # mov eax, [ebx+1]
        ("89c8", 64, 2, []),  # register operands only
        ("0f05", 64, 2, []),  # syscall
    ],
)
def test_decode(code: str, bits: int, length: int, operands: list[MemoryOperand]) -> None:
    insn = decode(bytes.fromhex(code.replace(" ", "")), bits)
    assert (insn.length, list(insn.operands)) == (length, operands)


def test_truncated_and_unsupported() -> None:
    assert decode(bytes.fromhex("488b05faef"), 64).operands == ()  # displacement cut off
    assert decode(bytes.fromhex("62f17c4810050000000000"), 64).operands == ()  # EVEX
    assert decode(bytes.fromhex("66") * 15, 64).operands == ()


def test_effective_linear() -> None:
    assert linear(bytes.fromhex("488b05faef0c00"), rip=0x1000) == [0xD0001]
    assert linear(bytes.fromhex("648b448b10")) == [0x7000_0000 + 0x4000 + 0x2000 * 4 + 0x10]  # fs base, rbx+rcx*4
    assert linear(bytes.fromhex("678b43f0")) == [0x4000 - 0x10]  # 32-bit address size
    assert linear(bytes.fromhex("d7")) == [0x4000 + 0x00]  # rbx + al (al of 0x1000)
    bases = (0x20000, 0, 0x30000, 0xD0000, 0, 0)
    real = CpuState(bases=bases, code_bits=16, long_mode=False, cpl=0, paging=Sregs())
    assert linear(bytes.fromhex("8b4701"), 16, cpu=real) == [0xD0000 + 0x4001]  # ds:[bx+1]
    assert linear(bytes.fromhex("8b46ff"), 16, cpu=real) == [0x30000 + 0x5FFF]  # ss:[bp-1]
    assert linear(bytes.fromhex("8b1e00f0"), 16, cpu=real) == [0xD0000 + 0xF000]


class _NoTables:
    """Guest memory for a walk that must not happen (paging is off)."""

    def read(self, address: int, length: int, /) -> bytes:
        raise AssertionError("no page walk without paging")

    def write(self, address: int, data: bytes, /) -> None:
        raise AssertionError("no page walk without paging")


def test_physical_pieces_without_paging() -> None:
    assert operand.physical_pieces(0xD0FFD, 8, FLAT64, _NoTables()) == [(0xD0FFD, 3), (0xD1000, 5)]
    assert operand.physical_pieces(0xD0001, 8, FLAT64, _NoTables()) == [(0xD0001, 8)]


# --- against GNU binutils: lengths and RIP-relative targets ---------------------------------------------------

SAMPLE_64 = """
add qword ptr [rip+0x100], 0x12345678
add dword ptr [rip+0x100], 5
adc byte ptr [rip-0x20], 7
imul eax, dword ptr [rip+0x10], 0x1234
imul eax, dword ptr [rip+0x10], 3
test byte ptr [rip+0x10], 1
test dword ptr [rip+0x10], 0x10000
test word ptr [rip+0x10], 0x1000
not qword ptr [rip+0x10]
mov word ptr [rip+0x10], 0x1234
mov byte ptr [rip+0x10], 1
mov qword ptr [rip+0x10], -1
shl dword ptr [rip+0x10], 3
rcr word ptr [rip+0x10], 1
shld dword ptr [rip+0x10], eax, 3
shrd qword ptr [rip+0x10], rax, cl
bt dword ptr [rip+0x10], 5
btc qword ptr [rip+0x10], rax
xadd qword ptr [rip+0x10], rcx
cmpxchg byte ptr [rip+0x10], dl
cmpxchg8b qword ptr [rip+0x10]
cmpxchg16b xmmword ptr [rip+0x10]
lock add dword ptr [rip+0x10], 1
movzx eax, word ptr [rip+0x10]
movsx rax, byte ptr [rip+0x10]
movsxd rax, dword ptr [rip+0x10]
movbe eax, dword ptr [rip+0x10]
crc32 eax, byte ptr [rip+0x10]
popcnt rax, qword ptr [rip+0x10]
cmovne rax, qword ptr [rip+0x10]
pshufd xmm0, xmmword ptr [rip+0x10], 1
pshufw mm0, qword ptr [rip+0x10], 1
psrlw xmm0, xmmword ptr [rip+0x10]
cmpps xmm0, xmmword ptr [rip+0x10], 1
pinsrw xmm0, word ptr [rip+0x10], 1
shufps xmm0, xmmword ptr [rip+0x10], 1
pshufb xmm0, xmmword ptr [rip+0x10]
palignr xmm0, xmmword ptr [rip+0x10], 1
roundss xmm0, dword ptr [rip+0x10], 1
pextrd dword ptr [rip+0x10], xmm0, 1
movdqu xmm1, xmmword ptr [rip+0x10]
andn eax, ebx, dword ptr [rip+0x10]
bextr eax, dword ptr [rip+0x10], ebx
rorx eax, dword ptr [rip+0x10], 3
vpshufd xmm0, xmmword ptr [rip+0x10], 1
vmovdqu ymm0, ymmword ptr [rip+0x10]
fld tbyte ptr [rip+0x10]
fistp qword ptr [rip+0x10]
fxrstor [rip+0x10]
ldmxcsr dword ptr [rip+0x10]
prefetcht0 byte ptr [rip+0x10]
call qword ptr [rip+0x10]
jmp qword ptr [rip+0x10]
push qword ptr [rip+0x10]
pop qword ptr [rip+0x10]
lea rax, [rip+0x10]
mov eax, dword ptr fs:[rbx+rcx*4+0x10]
mov ax, word ptr [r12+r13*8-0x80]
mov eax, dword ptr [ebx+0x10]
mov eax, dword ptr [rip+0x10]
"""


def _objdump_lengths_and_targets(source: str, tmp: Path) -> list[tuple[bytes, int | None]]:
    (tmp / "s.s").write_text(".intel_syntax noprefix\n.code64\n" + source)
    subprocess.run(["as", "--64", "-o", str(tmp / "s.o"), str(tmp / "s.s")], check=True)
    text = subprocess.run(
        ["objdump", "-d", "-M", "intel", str(tmp / "s.o")], capture_output=True, text=True, check=True
    )
    rows: list[tuple[bytes, int | None]] = []
    for line in text.stdout.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\t((?:[0-9a-f]{2} )+)\s*(.*)$", line)
        if not m:
            continue
        code = bytes.fromhex(m.group(2))
        if not m.group(3):  # continuation of the previous instruction's bytes
            previous, target = rows[-1]
            rows[-1] = (previous + code, target)
            continue
        hit = re.search(r"# (0x[0-9a-f]+)", m.group(3))
        rows.append((code, int(hit.group(1), 16) if hit and "rip" in m.group(3) else None))
    return rows


@pytest.mark.skipif(not (shutil.which("as") and shutil.which("objdump")), reason="GNU as / objdump not installed")
def test_lengths_and_rip_relative_targets_match_binutils(tmp_path: Path) -> None:
    rows = _objdump_lengths_and_targets(SAMPLE_64, tmp_path)
    assert len(rows) == len(SAMPLE_64.strip().splitlines())
    at = 0
    for (code, target), text in zip(rows, SAMPLE_64.strip().splitlines(), strict=True):
        insn = decode(code + bytes(15), 64)
        assert insn.length == len(code), text
        if target is not None:
            assert linear(code + bytes(15), rip=at) == [target], text
        at += len(code)
