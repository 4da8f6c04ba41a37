"""Every corpus case recorded on KVM replays on the simulator with no divergence."""

from __future__ import annotations

import io

import pytest

import hvcore
from hvcore import VCPU, VM, Exit, Hypervisor, trace
from hvcore.delegate import DelegatingVCPU
from tests.conformance.cases import CORPUS
from tests.conformance.harness import Case, active_quirks, run_case
from tests.conformance.test_corpus import SIMULATOR_BUGS

NOT_REPLAYABLE = {
    # A trace holds one vCPU's exits and the VMM's actions on that vCPU. These cases also act on
    # the VM (slots) or depend on timing between threads, which a vCPU trace cannot carry.
    "real_slot_changes_between_exits": "the host changes memory slots between exits",
    "real_deleted_slot": "the host deletes a slot between exits",
}


def _replayable(case: Case) -> bool:
    return case.vcpus == 1 and not case.threads and case.name not in NOT_REPLAYABLE


@pytest.mark.parametrize("case", [c for c in CORPUS if _replayable(c)], ids=lambda c: c.name)
def test_kvm_trace_replays_on_the_simulator(kvm: Hypervisor, case: Case) -> None:
    sinks: list[io.StringIO] = []

    def record(vm: VM, vcpu: VCPU) -> VCPU:
        sinks.append(io.StringIO())
        return trace.TracingVCPU(vcpu, sinks[-1], backend=kvm.name)

    run_case(kvm, case, wrap=record)
    recorded = trace.read_trace(io.StringIO(sinks[0].getvalue()))
    replayed: list[trace.Divergence | None] = []

    with hvcore.open_hypervisor("sim") as sim:
        registered = active_quirks(case, kvm) + active_quirks(case, sim)
        with pytest.raises(_Replayed):
            run_case(sim, case, wrap=lambda vm, vcpu: _ReplayOnFirstRun(vcpu, recorded, replayed))
    if case.name in SIMULATOR_BUGS:
        pytest.xfail(f"known simulator bug: {SIMULATOR_BUGS[case.name].what}")
    if registered:
        # Registered quirks may change the exits or only state a trace does not hold; test_corpus
        # asserts their exact effect. Here they only excuse a divergence.
        return
    assert replayed == [None], str(replayed[0])


class _Replayed(Exception):
    """Raised from the first run(): the harness has set the VM up; the replay has been done."""


class _ReplayOnFirstRun(DelegatingVCPU):
    """Lets the harness set the simulator's VM up as for the case, then replays the trace instead."""

    def __init__(self, inner: VCPU, recorded: trace.Trace, results: list[trace.Divergence | None]) -> None:
        super().__init__(inner)
        self._recorded = recorded
        self._results = results

    def run(self) -> Exit:
        self._results.append(trace.replay(self._recorded, self.inner))
        raise _Replayed
