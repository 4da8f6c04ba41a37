"""Fast runs (:mod:`hvcore_sim.blocks`): Unicorn counts blocks, not instructions, wherever no rule needs each one.

A vCPU runs fast by default, and counted (precise) while the VMM single-steps it or watches
memory, with a virtual clock, and with more than one vCPU. Either way every exit lands on the
same instruction: the corpus and the fuzzers run on fast runs; here the choice itself is checked.
"""

from __future__ import annotations

import pytest

from hvcore import DebugExit, GuestDebug, GuestDebugFlags, HltExit, IoExit
from hvcore_sim import system
from hvcore_sim.system import SimHypervisor
from hvcore_sim.vcpu import SimVCPU
from tests.boot import boot

pytestmark = pytest.mark.skipif(
    system._unicorn_problem() is not None, reason=f"simulator unusable: {system._unicorn_problem()}"
)

# inc rbx ; out 0x10, al ; inc rbx ; out 0x11, al ; hlt
CODE = bytes.fromhex("48ffc3e61048ffc3e611f4")


def _fast(vcpu: object) -> bool:
    assert isinstance(vcpu, SimVCPU)
    return vcpu.engine().fast


def test_a_vcpu_runs_fast_by_default_and_counted_while_single_stepping() -> None:
    with SimHypervisor() as hv, hv.create_vm() as vm:
        vcpu = boot(hv, vm, CODE, "long")
        assert _fast(vcpu)
        assert isinstance(vcpu.run(), IoExit)
        assert _fast(vcpu)
        vcpu.set_guest_debug(GuestDebug(GuestDebugFlags.ENABLE | GuestDebugFlags.SINGLESTEP))
        assert isinstance(vcpu.run(), DebugExit)  # one counted step: the inc after the OUT
        assert not _fast(vcpu)
        vcpu.set_guest_debug(GuestDebug())
        exits = [vcpu.run(), vcpu.run()]
        assert [e.port if isinstance(e, IoExit) else e for e in exits] == [0x11, HltExit()]
        assert vcpu.get_regs().rbx == 2
        assert _fast(vcpu)


def test_several_vcpus_run_counted() -> None:
    with SimHypervisor() as hv, hv.create_vm() as vm:
        vcpu = boot(hv, vm, CODE, "long")
        vm.create_vcpu(1)
        assert isinstance(vcpu.run(), IoExit)
        assert not _fast(vcpu)


def test_a_virtual_clock_runs_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HVCORE_SIM_CLOCK", "virtual")
    with SimHypervisor() as hv, hv.create_vm() as vm:
        vcpu = boot(hv, vm, CODE, "long")
        assert isinstance(vcpu.run(), IoExit)
        assert not _fast(vcpu)
