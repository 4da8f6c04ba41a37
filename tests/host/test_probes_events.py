"""The event-delivery probes (hvcore.host.probes.events) on the real backends."""

from __future__ import annotations

from typing import Any

import pytest

from hvcore import Hypervisor
from hvcore.host import UNRECOGNISED, UPSTREAM, probe_host
from hvcore.host.guest import Mode, ProbeGuest, gate
from hvcore.host.probes import events
from tests.host.probe_checks import observed
from tests.quirks import quirk_applies

NAMES = [d.name for d in events.DEVIATIONS]


def test_the_deviations_are_the_registry_entries_they_replace() -> None:
    assert NAMES == [
        "null_ss_usable",
        "int_n_cpl3_ud",
        "int3_cpl3_ignores_gate_dpl",
        "iopl_ignored_cpl3",
        "ivt_limit_ignored",
        "benign_fault_double_faults",
        "gate_code_segment_unchecked",
        "syscall_from_cpl3",
        "events_beside_injected_exception",
    ]


def test_each_probe_recognises_the_backend(hv: Hypervisor) -> None:
    """The simulator is upstream; KVM shows upstream or a registered variant, as the older tests expect."""
    seen = observed(hv, events.DEVIATIONS)
    if hv.name == "sim":
        assert seen == dict.fromkeys(NAMES, UPSTREAM)
    else:  # tests/quirks.py still decides these by host name: the probes must agree with it
        deviates = {name: variant != UPSTREAM for name, variant in seen.items()}
        assert deviates == {name: quirk_applies(name, hv) for name in NAMES}


class NoGates(ProbeGuest):
    """A probe guest whose every 64-bit gate is not present: exceptions end in a triple fault."""

    def __init__(self, hv: Hypervisor, code: bytes, mode: Mode = "long", **kwargs: Any) -> None:
        kwargs["gates"] = {v: gate(v, present=False) for v in range(256)}
        super().__init__(hv, code, mode, **kwargs)


@pytest.mark.parametrize(
    "name", [n for n in NAMES if n not in {"iopl_ignored_cpl3", "ivt_limit_ignored", "syscall_from_cpl3"}]
)  # upstream's IO exit and SYSCALL need no gate; real mode has no gates
def test_a_probe_takes_no_failure_for_a_variant(hv: Hypervisor, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setattr(events, "ProbeGuest", NoGates)
    observation = probe_host(hv, [d for d in events.DEVIATIONS if d.name == name]).observations[name]
    assert observation.variant == UNRECOGNISED
    assert "ShutdownExit" in observation.detail
