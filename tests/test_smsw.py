"""SMSW and MOV from CR0: a 32- or 64-bit register gets all of CR0, a 16-bit one or memory its low 16 bits.

Unicorn (QEMU 5.0) stores only 16 bits outside 64-bit mode, even to a 32-bit register; the
simulator intercepts reads of CR0 and does them itself (:mod:`hvcore_sim.smsw`).
"""

from __future__ import annotations

from collections.abc import Sequence

from hvcore import VM, Exit, HltExit, Hypervisor, IoExit
from tests.boot import boot, read_guest, run_exits, write_guest
from tests.guests import long_mode, real_mode


def outs(exits: Sequence[Exit]) -> list[int]:
    """The values the guest sent out, then 0 for its HLT."""
    assert isinstance(exits[-1], HltExit), exits
    return [int.from_bytes(e.data, "little") for e in exits[:-1] if isinstance(e, IoExit)] + [0]


def test_smsw_in_real_mode(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, real_mode.SMSW)
    write_guest(vm, real_mode.SMSW_STORE, b"\xaa" * 4)
    cr0 = vcpu.get_sregs().cr0
    assert cr0 >> 16  # CR0 has bits above 15 to tell the operand sizes apart (CD, NW)
    assert outs(run_exits(vcpu)) == [cr0, 0x1234 << 16 | cr0 & 0xFFFF, cr0, cr0 & 0xFFFF, 0]
    assert read_guest(vm, real_mode.SMSW_STORE, 4) == (cr0 & 0xFFFF).to_bytes(2, "little") + b"\xaa\xaa"


def test_smsw_in_64_bit_mode(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, long_mode.SMSW_64, "long")
    cr0 = vcpu.get_sregs().cr0
    halves = outs(run_exits(vcpu))
    values = [halves[i] | halves[i + 1] << 32 for i in range(0, len(halves) - 1, 2)]
    assert values == [cr0, cr0, 0x11223344 << 32 | 0x5566 << 16 | cr0 & 0xFFFF, cr0]
