"""MMIO exits: every length in every mode, read completion, read-modify-write, read-only and deleted slots."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hvcore import (
    VM,
    GuestMemory,
    HltExit,
    Hypervisor,
    InternalErrorExit,
    InternalErrorSuberror,
    IoDirection,
    IoExit,
    MmioExit,
    SlotFlags,
)
from tests.boot import boot, read_guest, run_exits
from tests.guests import layout, long_mode, protected_mode, real_mode

READS = {1: 0xA1, 2: 0xB2C3, 4: 0xD4E5F607, 8: 0x0123456789ABCDEF}


def answer_read(exit_: object) -> int:
    assert isinstance(exit_, MmioExit)
    return READS[exit_.length]


@pytest.mark.parametrize(
    ("mode", "code"),
    [("real", real_mode.MMIO_RW), ("protected", protected_mode.MMIO_RW), ("long", long_mode.MMIO_RW)],
    ids=["real", "32bit", "64bit"],
)
def test_mmio_reads_and_writes_of_every_length(hv: Hypervisor, vm: VM, mode: str, code: bytes) -> None:
    vcpu = boot(hv, vm, code, mode)  # type: ignore[arg-type]
    exits = run_exits(vcpu, answer_read)
    mmio = [e for e in exits if isinstance(e, MmioExit)]
    assert [(e.address, e.length, e.is_write, e.value if e.is_write else None) for e in mmio] == [
        (layout.MMIO + 0x00, 1, True, 0x12),
        (layout.MMIO + 0x08, 2, True, 0x3456),
        (layout.MMIO + 0x10, 4, True, 0x789ABCDE),
        (layout.MMIO + 0x18, 8, True, 0x1122334455667788),
        (layout.MMIO + 0x20, 1, False, None),
        (layout.MMIO + 0x28, 2, False, None),
        (layout.MMIO + 0x30, 4, False, None),
        (layout.MMIO + 0x38, 8, False, None),
    ]
    outs = [e.values()[0] for e in exits if isinstance(e, IoExit) and e.port == 0x30]
    assert outs == [0xA1, 0xB2C3, 0xD4E5F607, 0x89ABCDEF, 0x01234567]
    assert exits[-1] == HltExit()


@pytest.mark.parametrize(("mode", "code"), [("real", real_mode.MMIO_RMW), ("long", long_mode.MMIO_RMW)])
def test_read_modify_write_is_a_read_then_a_write(hv: Hypervisor, vm: VM, mode: str, code: bytes) -> None:
    vcpu = boot(hv, vm, code, mode)  # type: ignore[arg-type]
    exits = run_exits(vcpu, lambda e: 0xFFFFFFFE)
    assert exits == [
        MmioExit(layout.MMIO + 0x40, 4, False),
        MmioExit(layout.MMIO + 0x40, 4, True, (3).to_bytes(4, "little")),
        HltExit(),
    ]


def test_mmio_read_leaves_rip_and_register_until_completed(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, long_mode.MMIO_RW, "long")
    for _ in range(4):
        assert isinstance(vcpu.run(), MmioExit)
    read = vcpu.run()
    assert read == MmioExit(layout.MMIO + 0x20, 1, False)
    before = vcpu.get_regs()
    vcpu.complete(0xA1)
    vcpu.run()
    after = vcpu.get_regs()
    assert after.rip > before.rip
    assert before.rbx & 0xFF != 0xA1
    assert after.rbx & 0xFF == 0xA1


def test_write_to_readonly_slot_is_mmio_and_leaves_memory(hv: Hypervisor, vm: VM) -> None:
    rom = GuestMemory(layout.ROM_SIZE)
    rom.write(0, b"\xea")
    vm.set_memory_slot(1, layout.ROM, rom, flags=SlotFlags.READONLY)
    vcpu = boot(hv, vm, real_mode.ROM_WRITE)
    exits = run_exits(vcpu)
    assert exits == [
        MmioExit(layout.ROM, 1, True, b"\x55"),
        IoExit(0x40, 1, 1, IoDirection.OUT, b"\xea"),
        HltExit(),
    ]
    assert rom.read(0, 1) == b"\xea"


def test_deleted_slot_becomes_mmio(hv: Hypervisor, vm: VM) -> None:
    rom = GuestMemory(layout.ROM_SIZE)
    rom.write(0, b"\xea")
    vm.set_memory_slot(1, layout.ROM, rom)
    vcpu = boot(hv, vm, real_mode.ROM_WRITE)
    vm.delete_memory_slot(1)
    exits = run_exits(vcpu, lambda e: 0x77)
    assert exits[0] == MmioExit(layout.ROM, 1, True, b"\x55")
    assert exits[1] == MmioExit(layout.ROM, 1, False)
    assert isinstance(exits[2], IoExit)
    assert exits[2].data == b"\x77"
    assert rom.read(0, 1) == b"\xea"


def test_readonly_flag_toggles_by_delete_and_readd(hv: Hypervisor, vm: VM) -> None:
    rom = GuestMemory(layout.ROM_SIZE)
    rom.write(0, b"\xea")
    vm.set_memory_slot(1, layout.ROM, rom, flags=SlotFlags.READONLY)
    slot = vm.set_slot_flags(1, SlotFlags(0))
    assert not slot.readonly
    vcpu = boot(hv, vm, real_mode.ROM_WRITE)
    exits = run_exits(vcpu)
    assert isinstance(exits[0], IoExit)
    assert exits[0].data == b"\x55"
    assert rom.read(0, 1) == b"\x55" == read_guest(vm, layout.ROM, 1)


@pytest.mark.parametrize("mode", ["real", "long"])
def test_executing_unbacked_memory_is_an_internal_error(hv: Hypervisor, vm: VM, mode: str) -> None:
    vcpu = boot(hv, vm, real_mode.SPIN if mode == "real" else long_mode.SPIN, mode)  # type: ignore[arg-type]
    if mode == "real":
        sregs = vcpu.get_sregs()
        vcpu.set_sregs(replace(sregs, cs=replace(sregs.cs, selector=layout.MMIO >> 4, base=layout.MMIO)))
        vcpu.set_regs(replace(vcpu.get_regs(), rip=0))
    else:
        vcpu.set_regs(replace(vcpu.get_regs(), rip=layout.MMIO))
    exit_ = vcpu.run()
    assert isinstance(exit_, InternalErrorExit)
    assert exit_.suberror == InternalErrorSuberror.EMULATION
    assert vcpu.get_regs().rip == (0 if mode == "real" else layout.MMIO)  # rip at the target
