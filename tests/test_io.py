"""Port IO exits: data, sizes, register effects of IN, string IO batching."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hvcore import VM, HltExit, Hypervisor, IoDirection, IoExit
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
