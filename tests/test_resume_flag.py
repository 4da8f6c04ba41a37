"""RFLAGS.RF: set by an IRET (or by the VMM) for one instruction, cleared once it completes, never pushed by PUSHF.

Each guest loads RF and then pushes the flags and sends them out (OUT port 0x10, 4 bytes): the
image has no RF, and neither has RFLAGS at that exit. Unicorn clears RF only at the end of a
translation block and its PUSHF copies RF; the simulator keeps RF as the processor does
(:mod:`hvcore_sim.resume`).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from hvcore import VM, HltExit, Hypervisor, IoDirection, IoExit
from tests.boot import boot, run_exits, write_guest
from tests.guests import layout, long_mode, real_mode
from tests.test_exceptions import long_mode_guest, stub

RF = 1 << 16
PUSHED = [IoExit(0x10, 4, 1, IoDirection.OUT, (0x2).to_bytes(4, "little")), HltExit()]
"""The exits of every guest here: the flags image 0x2 (no RF), then HLT."""
_RF_INTO_IMAGE = b"\x48\x81\x0c\x24\x00\x00\x01\x00"  # or qword ptr [rsp], 0x10000
IRETQ_TO_SELF = long_mode.IRETQ_RF_PUSHF[: long_mode.IRETQ_RF_PUSHF.index(b"\x48\xcf") + 2].replace(
    _RF_INTO_IMAGE, b"\x90" * len(_RF_INTO_IMAGE)
)
"""An IRETQ to the next instruction without RF (as Linux's ``sync_core``): ``IRETQ_RF_PUSHF`` to its iretq, no RF."""


@pytest.mark.parametrize(
    ("code", "mode"),
    [
        (real_mode.IRET_RF_THEN_PUSHF, "real"),  # RF for the instruction after the iretd only
        (real_mode.IRET_RF_PUSHF, "real"),  # the pushfd runs with RF set
        (long_mode.IRETQ_RF_PUSHF, "long"),
        (IRETQ_TO_SELF * 3 + long_mode.IRETQ_RF_PUSHF, "long"),  # the sim's run goes on after each plain IRET
    ],
    ids=["iretd-jmp-pushfd", "iretd-pushfd", "iretq-pushfq", "iretq-x3-iretq-pushfq"],
)
def test_rf_from_iret_is_gone_after_one_instruction_and_never_pushed(
    hv: Hypervisor, vm: VM, code: bytes, mode: str
) -> None:
    vcpu = boot(hv, vm, code, "real" if mode == "real" else "long")
    first = vcpu.run()
    assert vcpu.get_regs().rflags == 0x2
    assert [first, *run_exits(vcpu)] == PUSHED


def test_rf_set_by_the_vmm_is_for_the_first_instruction(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, real_mode.IRET_RF_PUSHF)
    vcpu.set_regs(replace(vcpu.get_regs(), rip=layout.CODE + 0x14, rflags=RF | 0x2))  # start at its pushfd
    first = vcpu.run()
    assert vcpu.get_regs().rflags == 0x2
    assert [first, *run_exits(vcpu)] == PUSHED


def test_a_breakpoint_handler_resumes_with_rf(hv: Hypervisor, vm: VM) -> None:
    vcpu = long_mode_guest(hv, vm, long_mode.BREAKPOINT_RESUME, user=False)
    write_guest(vm, stub(1), long_mode.BREAKPOINT_HANDLER)
    exits = run_exits(vcpu)
    assert [e.port if isinstance(e, IoExit) else e for e in exits] == [0x11, 0x10, HltExit()]  # one #DB only
    assert vcpu.get_regs().rflags == 0x2
