"""The control probes (hvcore.host.probes.control) on the real backends."""

from __future__ import annotations

from typing import Any

import pytest

from hvcore import Hypervisor
from hvcore.host import UNRECOGNISED, probe_host
from hvcore.host.guest import Mode, ProbeGuest
from hvcore.host.probes import control
from tests.host.probe_checks import assert_recognised, assert_stable

NAMES = [d.name for d in control.DEVIATIONS]
VARIANTS = {
    "single_step_dr7": "dr7_zero",
    "single_step_after_out": "out_step_missed",
    "out_completed_at_exit": "rip_past_out",
    "internal_error_exit_info": "pvm_exit_info",
    "irq_window_batch": "batch_end",
    "legacy_paging_shutdown": "shutdown",
    "level_redelivered_early": "one_extra_delivery",
}
"""Each deviation's one registered variant (all of them measured on the nested kvm_pvm development host)."""


def test_the_deviations_are_the_registry_entries_they_replace() -> None:
    assert list(VARIANTS) == NAMES
    for deviation in control.DEVIATIONS:
        assert set(deviation.variants) == {VARIANTS[deviation.name]}
        assert deviation.upstream and deviation.reason and all(deviation.variants.values())


def test_each_probe_recognises_the_backend(hv: Hypervisor) -> None:
    """The simulator is upstream; KVM shows upstream or the registered variant, never unrecognised behaviour."""
    assert_recognised(hv, control.DEVIATIONS, VARIANTS)


def test_the_probes_give_the_same_answer_every_time(hv: Hypervisor) -> None:
    assert_stable(hv, control.DEVIATIONS, 5)


class Faulting(ProbeGuest):
    """A probe guest whose code is replaced by `ud2`: whatever the probe expected, the guest faults instead."""

    def __init__(self, hv: Hypervisor, code: bytes, mode: Mode = "long", **kwargs: Any) -> None:
        super().__init__(hv, b"\x0f\x0b", mode, **kwargs)  # ud2


@pytest.mark.parametrize("name", NAMES)
def test_a_probe_takes_no_failure_for_a_variant(hv: Hypervisor, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setattr(control, "ProbeGuest", Faulting)
    observation = probe_host(hv, [d for d in control.DEVIATIONS if d.name == name]).observations[name]
    assert observation.variant == UNRECOGNISED
    assert "Exit" in observation.detail  # it says what it saw
