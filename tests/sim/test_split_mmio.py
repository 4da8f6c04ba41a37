"""Simulator internals behind split MMIO reads, helper RMWs and the lazy flags (hvcore_sim.internals, exits)."""

from __future__ import annotations

import sys

import pytest

import hvcore
from hvcore import HltExit, MmioExit
from hvcore_sim import internals, system
from hvcore_sim import layout as layout_module
from hvcore_sim.engine import Engine
from tests.boot import boot
from tests.guests import layout

pytestmark = pytest.mark.skipif(
    system._unicorn_problem() is not None, reason=f"simulator unusable: {system._unicorn_problem()}"
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fast cells are found through /proc/self/mem")
def test_calibration_finds_the_cells_in_place() -> None:
    engine = Engine(layout_module.calibrate())
    engine.reset()
    cells = internals.Cells(engine)
    assert cells._cc_op is not None and cells._eflags is not None
    assert cells.split_size is not None and cells.split_size.value == 0
    engine.set_reg(engine.RFLAGS, 0x8D7)  # CC_SRC = the flags, CC_OP = EFLAGS
    assert cells.entry_flags() == 0x8D5
    assert cells._cc_op.value == 1


def test_settle_without_the_cells_goes_through_the_context_blob() -> None:
    engine = Engine(layout_module.calibrate())
    engine.reset()
    cells = internals.Cells(engine)
    cells._cc_op = cells._cc_src = cells._eflags = None
    engine.set_reg(engine.RFLAGS, 0x8D7)
    cells.settle()
    assert cells.entry_flags() == 0x8D5
    assert engine.reg(engine.RFLAGS) == 0x8D7


def test_cmpxchg16b_on_mmio_reads_twice_then_writes_twice() -> None:
    """Upstream KVM: two 8-byte read exits (RIP at it), two 8-byte write exits (RIP past it). This host's
    KVM emulator gives INTERNAL_ERROR after the reads, so the sequence is checked here."""
    code = bytes.fromhex("480fc70c2500000d00" "f4")  # cmpxchg16b [0xd0000]; hlt
    with hvcore.open_hypervisor("sim") as hv, hv.create_vm() as vm:
        vcpu = boot(hv, vm, code, "long", rax=1, rdx=2, rbx=3, rcx=4)
        exits = []
        for answer in (1, 2, None, None, None):
            exits.append((vcpu.run(), vcpu.get_regs().rip))
            if answer is not None:
                vcpu.complete(answer)
        regs = vcpu.get_regs()
    end = layout.CODE + 9
    assert exits == [
        (MmioExit(layout.MMIO, 8, False), layout.CODE),
        (MmioExit(layout.MMIO + 8, 8, False), layout.CODE),
        (MmioExit(layout.MMIO, 8, True, (3).to_bytes(8, "little")), end),  # equal: rcx:rbx stored
        (MmioExit(layout.MMIO + 8, 8, True, (4).to_bytes(8, "little")), end),
        (HltExit(), end + 1),
    ]
    assert (regs.rax, regs.rdx, regs.rflags & 0x40) == (1, 2, 0x40)  # ZF
