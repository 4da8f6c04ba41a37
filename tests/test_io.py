"""Port IO exits: data, sizes, register effects of IN, string IO batching."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hvcore import VCPU, VM, Exit, GuestMemory, HltExit, Hypervisor, IoDirection, IoExit, MmioExit, SlotFlags
from hvcore.host import UPSTREAM
from tests.boot import boot, completed_rip, read_guest, run_exits, write_guest
from tests.guests import layout, long_mode, protected_mode, real_mode
from tests.quirks import host_variant

IN_ANSWERS = {1: 0x5A, 2: 0x1234, 4: 0xCAFEBABE}


def answer_in(exit_: object) -> int:
    assert isinstance(exit_, IoExit)
    return IN_ANSWERS[exit_.size]


def test_lwn_guest_prints_5(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, real_mode.PRINTS_5, rax=2, rbx=3)
    exits = run_exits(vcpu)
    assert exits == [
        IoExit(0x3F8, 1, 1, IoDirection.OUT, b"5"),
        IoExit(0x3F8, 1, 1, IoDirection.OUT, b"\n"),
        HltExit(),
    ]
    assert vcpu.get_regs().rip == layout.CODE + len(real_mode.PRINTS_5)


@pytest.mark.parametrize(
    ("mode", "code"), [("real", real_mode.IO_SIZES), ("protected", protected_mode.IO_SIZES)], ids=["real", "32bit"]
)
def test_io_sizes_and_in_register_effects(hv: Hypervisor, vm: VM, mode: str, code: bytes) -> None:
    vcpu = boot(hv, vm, code, mode)  # type: ignore[arg-type]
    exits = run_exits(vcpu, answer_in)
    ios = [e for e in exits if isinstance(e, IoExit)]
    assert [(e.port, e.size, e.direction, e.values()) for e in ios] == [
        (0x10, 1, IoDirection.OUT, (0x11,)),
        (0x10, 2, IoDirection.OUT, (0x2233,)),
        (0x10, 4, IoDirection.OUT, (0x44556677,)),
        (0x10, 1, IoDirection.IN, ()),
        (0x11, 4, IoDirection.OUT, (0xAABBCC5A,)),  # in al keeps bits 8-31
        (0x10, 2, IoDirection.IN, ()),
        (0x11, 4, IoDirection.OUT, (0xAABB1234,)),  # in ax keeps bits 16-31
        (0x10, 4, IoDirection.IN, ()),
        (0x11, 4, IoDirection.OUT, (0xCAFEBABE,)),
    ]
    assert exits[-1] == HltExit()


def test_in_eax_zero_extends_rax_in_long_mode(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, long_mode.IO_SIZES, "long")
    exits = run_exits(vcpu, answer_in)
    halves = [e.values()[0] for e in exits if isinstance(e, IoExit) and e.port == 0x11]
    assert halves == [0x5566775A, 0x11223344, 0x55661234, 0x11223344, 0xCAFEBABE, 0]
    assert vcpu.get_regs().rax == 0xCAFEBABE


def test_in_exit_leaves_rip_at_the_instruction_until_completed(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, real_mode.IO_SIZES)
    for _ in range(3):
        vcpu.run()
    in_exit = vcpu.run()
    assert isinstance(in_exit, IoExit)
    assert in_exit.is_in
    regs = vcpu.get_regs()
    in_al_at = layout.CODE + real_mode.IO_SIZES.index(b"\xec")
    assert regs.rip == in_al_at
    assert regs.rax & 0xFFFFFFFF == 0xAABBCCDD  # not loaded yet
    vcpu.complete(0x5A)
    after = vcpu.run()
    assert after == IoExit(0x11, 4, 1, IoDirection.OUT, (0xAABBCC5A).to_bytes(4, "little"))
    assert completed_rip(hv, vm, vcpu, after) == in_al_at + 1 + 3


def test_rep_insb_is_batched_like_kvm(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, real_mode.REP_INSB)
    counts = []
    payload = bytes(i * 7 % 251 for i in range(5000))
    sent = 0
    while True:
        exit_ = vcpu.run()
        if isinstance(exit_, HltExit):
            break
        assert isinstance(exit_, IoExit)
        assert exit_.is_in
        assert exit_.port == 0x20
        assert exit_.size == 1
        counts.append(exit_.count)
        vcpu.complete(payload[sent : sent + exit_.count])
        sent += exit_.count
    assert counts == [1024, 1024, 1024, 1024, 904]
    assert read_guest(vm, layout.DATA, 5000) == payload
    regs = vcpu.get_regs()
    assert regs.rcx & 0xFFFF == 0
    assert regs.rdi & 0xFFFF == 5000


def test_rep_insb_into_ram_logs_its_pages_dirty(hv: Hypervisor, vm: VM) -> None:
    """The emulator's write of each answered batch is a guest write: a logging slot records its pages."""
    vcpu = boot(hv, vm, real_mode.REP_INSB, ram_flags=SlotFlags.LOG_DIRTY_PAGES)
    vm.get_dirty_log(0)  # forget the host's own loading writes
    payload = bytes(i * 7 % 251 for i in range(5000))
    sent = 0

    def answer(exit_: Exit) -> bytes:
        nonlocal sent
        assert isinstance(exit_, IoExit)
        sent += exit_.count
        return payload[sent - exit_.count : sent]

    run_exits(vcpu, answer)
    assert read_guest(vm, layout.DATA, 5000) == payload
    assert {16, 17} <= set(vm.get_dirty_log(0).pages())  # DATA and the page after it


def test_rep_outsw_exits_once_per_element(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, real_mode.REP_OUTSW)
    write_guest(vm, layout.DATA, bytes.fromhex("111122223333"))
    exits = run_exits(vcpu)
    assert exits == [IoExit(0x22, 2, 1, IoDirection.OUT, w) for w in (b"\x11\x11", b"\x22\x22", b"\x33\x33")] + [
        HltExit()
    ]
    regs = vcpu.get_regs()
    assert regs.rcx & 0xFFFF == 0
    assert regs.rsi & 0xFFFF == 6


def test_out_exit_leaves_rip_at_the_out_until_the_next_run(hv: Hypervisor, vm: VM) -> None:
    """Upstream (kvm_fast_pio_out): RIP at the OUT, its STI shadow in force; the next run completes it."""
    vcpu = boot(hv, vm, real_mode.OUT_IN_STI_SHADOW)
    out_at = layout.CODE + 3
    assert vcpu.run() == IoExit(0x80, 1, 1, IoDirection.OUT, b"\x07")
    upstream = host_variant(hv, "out_completed_at_exit") == UPSTREAM
    shadow = vcpu.get_vcpu_events().interrupt_shadow
    assert (vcpu.get_regs().rip, bool(shadow), vcpu.ready_for_interrupt_injection) == (
        (out_at, True, False) if upstream else (out_at + 2, False, True)
    )
    assert vcpu.if_flag
    assert vcpu.run() == HltExit()
    assert vcpu.get_regs().rip == out_at + 3
    assert not vcpu.get_vcpu_events().interrupt_shadow


def test_an_out_is_not_completed_when_the_vmm_moved_rip(hv: Hypervisor, vm: VM) -> None:
    """complete_fast_pio_out skips the OUT only if RIP is still at it: a restart runs the code again."""
    vcpu = boot(hv, vm, real_mode.OUT_IN_STI_SHADOW)
    assert vcpu.run() == IoExit(0x80, 1, 1, IoDirection.OUT, b"\x07")
    vcpu.set_regs(replace(vcpu.get_regs(), rip=layout.CODE, rflags=0x2))
    assert vcpu.run() == IoExit(0x80, 1, 1, IoDirection.OUT, b"\x07")  # not the HLT two bytes on
    assert completed_rip(hv, vm, vcpu, IoExit(0x80, 1, 1, IoDirection.OUT, b"\x07")) == layout.CODE + 5


def test_out_to_port_0x7e_is_complete_at_its_exit(hv: Hypervisor, vm: VM) -> None:
    """KVM_X86_QUIRK_OUT_7E_INC_RIP (on by default): old userspace relies on RIP past ``out 0x7e``."""
    vcpu = boot(hv, vm, real_mode.OUT_7E)
    assert vcpu.run() == IoExit(0x7E, 1, 1, IoDirection.OUT, b"\x07")
    assert vcpu.get_regs().rip == layout.CODE + 4
    assert vcpu.run() == HltExit()
    assert vcpu.get_regs().rip == layout.CODE + 5


_INS_AT = layout.CODE + 0xF  # the string IN in real_mode.string_in
_PORT_DATA = bytes((0x41 + i) % 256 for i in range(4096))  # the answer to every IN: 'A', 'B', ...


def _w(address: int, data: bytes) -> MmioExit:
    return MmioExit(address, len(data), True, data)


def _in(size: int, count: int) -> IoExit:
    return IoExit(0x20, size, count, IoDirection.IN)


_D = layout.MMIO
_STRING_IN_SHAPES = {
    # name: (guest, [(exit, rip, cx, di) at each exit]); rip None: the string IN's address
    "rep-insb": (
        real_mode.string_in(0xD000, 0, 4),
        [(_in(1, 4), None, 4, 0), (_w(_D, b"ABCD"), None, 0, 4), (HltExit(), 0x12, 0, 4)],
    ),
    "insb": (
        real_mode.string_in(0xD000, 0, 4, rep=False),
        [(_in(1, 1), None, 4, 0), (_w(_D, b"A"), 0x10, 4, 1), (HltExit(), 0x11, 4, 1)],
    ),
    "rep-insb-8-byte-exits": (
        real_mode.string_in(0xD000, 0, 20),
        [
            (_in(1, 20), None, 20, 0),
            (_w(_D, b"ABCDEFGH"), None, 0, 20),
            (_w(_D + 8, b"IJKLMNOP"), None, 0, 20),
            (_w(_D + 16, b"QRST"), None, 0, 20),
            (HltExit(), 0x12, 0, 20),
        ],
    ),
    "rep-insb-page-end": (
        real_mode.string_in(0xD000, 0xFFE, 6),
        [
            (_in(1, 2), None, 6, 0xFFE),
            (_w(_D + 0xFFE, b"AB"), None, 4, 0x1000),
            (_in(1, 4), None, 4, 0x1000),
            (_w(_D + 0x1000, b"ABCD"), None, 0, 0x1004),
            (HltExit(), 0x12, 0, 0x1004),
        ],
    ),
    "rep-insw": (
        real_mode.string_in(0xD000, 0, 3, width=2),
        [(_in(2, 3), None, 3, 0), (_w(_D, b"ABCDEF"), None, 0, 6), (HltExit(), 0x12, 0, 6)],
    ),
    "rep-insw-across-pages": (
        real_mode.string_in(0xD000, 0xFFF, 2, width=2),
        [
            (_in(2, 1), None, 2, 0xFFF),
            (_w(_D + 0xFFF, b"A"), None, 1, 0x1001),
            (_w(_D + 0x1000, b"B"), None, 1, 0x1001),
            (_in(2, 1), None, 1, 0x1001),
            (_w(_D + 0x1001, b"AB"), None, 0, 0x1003),
            (HltExit(), 0x12, 0, 0x1003),
        ],
    ),
    "rep-insd": (
        real_mode.string_in(0xD000, 0, 3, width=4),
        [
            (_in(4, 3), None, 3, 0),
            (_w(_D, b"ABCDEFGH"), None, 0, 12),
            (_w(_D + 8, b"IJKL"), None, 0, 12),
            (HltExit(), 0x13, 0, 12),
        ],
    ),
    "rep-insb-backwards": (  # each element is one write; KVM drops the rest of the batch after an exit
        real_mode.string_in(0xD000, 0x10, 3, backwards=True),
        [
            (_in(1, 3), None, 3, 0x10),
            (_w(_D + 0x10, b"A"), None, 2, 0xF),
            (_in(1, 2), None, 2, 0xF),
            (_w(_D + 0xF, b"A"), None, 1, 0xE),
            (_in(1, 1), None, 1, 0xE),
            (_w(_D + 0xE, b"A"), None, 0, 0xD),
            (HltExit(), 0x12, 0, 0xD),
        ],
    ),
    "rep-insb-from-ram-into-mmio": (  # es:di = 0x9fff0: 16 bytes of RAM, then the hole above RAM
        real_mode.string_in(0x9FF1, 0xE0, 0x40),
        [(_in(1, 0x40), None, 0x40, 0xE0)]
        + [(_w(layout.RAM_SIZE + at, _PORT_DATA[16 + at : 24 + at]), None, 0, 0x120) for at in range(0, 48, 8)]
        + [(HltExit(), 0x12, 0, 0x120)],
    ),
}


def _string_in_trace(vcpu: VCPU) -> list[tuple[Exit, int | None, int, int]]:
    trace: list[tuple[Exit, int | None, int, int]] = []
    for _ in range(20):
        exit_ = vcpu.run()
        regs = vcpu.get_regs()
        rip = None if regs.rip == _INS_AT else regs.rip - layout.CODE
        trace.append((exit_, rip, regs.rcx & 0xFFFF, regs.rdi & 0xFFFF))
        if not isinstance(exit_, (IoExit, MmioExit)):
            break
        if isinstance(exit_, IoExit) and exit_.is_in:
            vcpu.complete(_PORT_DATA[: exit_.size * exit_.count])
    return trace


@pytest.mark.parametrize("shape", list(_STRING_IN_SHAPES))
def test_string_in_into_mmio_reads_the_port_then_writes(hv: Hypervisor, vm: VM, shape: str) -> None:
    """Upstream's emulator order: the IN exit, then the answered bytes as MMIO writes, then the guest goes on."""
    code, expected = _STRING_IN_SHAPES[shape]
    vcpu = boot(hv, vm, code)
    assert _string_in_trace(vcpu) == expected
    if shape == "rep-insb-from-ram-into-mmio":
        assert read_guest(vm, layout.RAM_SIZE - 16, 16) == _PORT_DATA[:16]


_ROM_SHAPES = {
    "rep-insb": (
        real_mode.string_in(0xC000, 0, 4),
        [(_in(1, 4), None, 4, 0), (_w(layout.ROM, b"ABCD"), None, 0, 4), (HltExit(), 0x12, 0, 4)],
    ),
    "insb": (
        real_mode.string_in(0xC000, 0, 4, rep=False),
        [(_in(1, 1), None, 4, 0), (_w(layout.ROM, b"A"), 0x10, 4, 1), (HltExit(), 0x11, 4, 1)],
    ),
    "rep-insw-backwards-mmio-then-rom": (  # the 2nd word straddles unbacked memory and the ROM (0xbffff)
        real_mode.string_in(0xBF00, 0x1001, 2, width=2, backwards=True),
        [
            (_in(2, 1), None, 2, 0x1001),
            (_w(layout.ROM + 1, b"AB"), None, 1, 0xFFF),
            (_in(2, 1), None, 1, 0xFFF),  # was, on the simulator: ExitNotCompleted (the IN never given)
            (_w(layout.ROM - 1, b"A"), None, 0, 0xFFD),
            (_w(layout.ROM, b"B"), None, 0, 0xFFD),
            (HltExit(), 0x12, 0, 0xFFD),
        ],
    ),
    "rep-insb-rom-then-mmio": (  # es:di = 0xcfffe: the last 2 bytes of the ROM, then MMIO; one exit per page
        real_mode.string_in(0xCFFF, 0xE, 4),
        [
            (_in(1, 4), None, 4, 0xE),
            (_w(layout.MMIO - 2, b"AB"), None, 0, 0x12),
            (_w(layout.MMIO, b"CD"), None, 0, 0x12),
            (HltExit(), 0x12, 0, 0x12),
        ],
    ),
}


@pytest.mark.parametrize("shape", list(_ROM_SHAPES))
def test_string_in_into_a_readonly_slot_exits_as_mmio(hv: Hypervisor, vm: VM, shape: str) -> None:
    rom = GuestMemory(layout.ROM_SIZE)
    rom.write(0, b"\xee" * 8)
    rom.write(layout.ROM_SIZE - 8, b"\xee" * 8)
    vm.set_memory_slot(1, layout.ROM, rom, flags=SlotFlags.READONLY)
    code, expected = _ROM_SHAPES[shape]
    vcpu = boot(hv, vm, code)
    assert _string_in_trace(vcpu) == expected
    assert rom.read(0, 8) == rom.read(layout.ROM_SIZE - 8, 8) == b"\xee" * 8


# 64-bit, CPL0, identity paging: `rep insb` of 12 bytes from port 0x20 to ROM (a read-only slot), then hlt.
REP_INSB_TO_ROM_64 = (
    b"\xfc"  # cld
    b"\xbf\x00\x00\x0c\x00"  # mov edi, 0xc0000 (layout.ROM)
    b"\xb9\x0c\x00\x00\x00"  # mov ecx, 12
    b"\xba\x20\x00\x00\x00"  # mov edx, 0x20
    b"\xf3\x6c"  # rep insb
    b"\xf4"  # hlt
)


def test_string_in_into_a_readonly_slot_under_paging(hv: Hypervisor, vm: VM) -> None:
    """Under paging too: the IN exit, then the answer as MMIO writes; the ROM keeps its bytes."""
    rom = GuestMemory(layout.ROM_SIZE)
    rom.write(0, b"\xee" * 16)
    vm.set_memory_slot(1, layout.ROM, rom, flags=SlotFlags.READONLY)
    vcpu = boot(hv, vm, REP_INSB_TO_ROM_64, "long")
    assert vcpu.run() == _in(1, 12)
    vcpu.complete(_PORT_DATA[:12])
    assert vcpu.run() == _w(layout.ROM, _PORT_DATA[:8])
    assert vcpu.run() == _w(layout.ROM + 8, _PORT_DATA[8:12])
    assert vcpu.run() == HltExit()
    regs = vcpu.get_regs()
    assert (regs.rcx, regs.rdi) == (0, layout.ROM + 12)
    assert rom.read(0, 16) == b"\xee" * 16


# mov eax, 0x400 ; mov dr7, rax ; out 0x10, al ; inc rbx ; inc rbx ; out 0x11, al ; inc rbx ; hlt
_OUTS_AFTER_DR7_WRITE = bytes.fromhex("b800040000" "0f23f8" "e610" "48ffc3" "48ffc3" "e611" "48ffc3" "f4")  # fmt: skip


def test_an_out_exit_comes_before_the_next_instruction_after_a_dr7_write(hv: Hypervisor, vm: VM) -> None:
    """Nothing after an OUT runs before its exit, also once the guest has written DR7.

    The simulator stops a fast run right after an I/O instruction through QEMU's I/O-breakpoint
    check, which QEMU only translates while ``HF_IOBPT`` is set; a guest's MOV to DR7 recomputes
    that flag, so the simulator sets it again after each one.
    """
    vcpu = boot(hv, vm, _OUTS_AFTER_DR7_WRITE, "long")
    seen = []
    for _ in range(3):
        exit_ = vcpu.run()
        seen.append((exit_.port if isinstance(exit_, IoExit) else exit_, vcpu.get_regs().rbx))
    assert seen == [(0x10, 0), (0x11, 2), (HltExit(), 3)]
