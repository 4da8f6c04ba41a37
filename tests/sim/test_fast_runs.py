"""Fast runs (:mod:`hvcore_sim.blocks`): Unicorn counts blocks, not instructions, wherever no rule needs each one.

A vCPU runs fast by default, and counted (precise) while the VMM single-steps it or watches
memory, with a virtual clock, and with more than one vCPU. Either way every exit lands on the
same instruction: the corpus and the fuzzers run on fast runs; here the choice itself is checked.
"""

from __future__ import annotations

import pytest

from hvcore import DebugExit, GuestDebug, GuestDebugFlags, HltExit, IoExit
from hvcore_sim import system, unicorn_internals
from hvcore_sim.system import SimHypervisor
from hvcore_sim.vcpu import SimVCPU
from tests.boot import boot
from tests.sim.test_translation_cache import count_tb_flushes

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


# five OUTs in a tight loop, then 200,000 instructions without an exit, one more OUT, hlt
DENSE_THEN_LONG = bytes.fromhex(
    "b905000000"  # mov ecx, 5
    "e610"  # dense: out 0x10, al
    "ffc9"  # dec ecx
    "75fa"  # jnz dense
    "b9a0860100"  # mov ecx, 100000
    "ffc9"  # long: dec ecx
    "75fc"  # jnz long
    "e611"  # out 0x11, al
    "f4"  # hlt
)


def test_code_that_exits_every_few_instructions_runs_counted_until_it_runs_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two short runs in a row switch to counted runs, one long counted slice switches back (ExitDensity).

    The exits are the same either way; the switches keep each mode's translations (no flush).
    """
    with SimHypervisor() as hv, hv.create_vm() as vm:
        vcpu = boot(hv, vm, DENSE_THEN_LONG, "long")
        assert isinstance(vcpu, SimVCPU)
        blocks = vcpu.engine().blocks
        assert blocks is not None and blocks.keeps_both
        flushes = count_tb_flushes(monkeypatch)
        seen = []
        for _ in range(7):
            exit_ = vcpu.run()
            seen.append((exit_.port if isinstance(exit_, IoExit) else exit_, _fast(vcpu)))
        assert seen == [
            (0x10, True),
            (0x10, True),  # the second short run in a row: the next ones count instructions
            (0x10, False),
            (0x10, False),
            (0x10, False),
            (0x11, True),  # its first counted slice ran out (a long run): the rest of it ran fast
            (HltExit(), True),
        ]
        regs = vcpu.get_regs()
        assert (regs.rcx, regs.rip) == (0, 0x1000 + len(DENSE_THEN_LONG))
    assert flushes == []


def test_without_separate_translations_exit_dense_code_stays_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the cluster index is not found, a switch would drop every translation: ExitDensity does not switch."""
    monkeypatch.setattr(unicorn_internals, "cluster_index_cell", lambda uc: None)
    with SimHypervisor() as hv, hv.create_vm() as vm:
        vcpu = boot(hv, vm, DENSE_THEN_LONG, "long")
        assert isinstance(vcpu, SimVCPU)
        engine = vcpu.engine()
        assert engine.blocks is not None and not engine.switches_freely
        flushes = count_tb_flushes(monkeypatch)
        exits = [vcpu.run() for _ in range(7)]
        assert [e.port if isinstance(e, IoExit) else e for e in exits] == [0x10] * 5 + [0x11, HltExit()]
        assert _fast(vcpu)
    assert flushes == []
