"""The guest-debug probes (hvcore.host.probes.debug) on the real backends."""

from __future__ import annotations

from typing import Any

import pytest

from hvcore import Hypervisor
from hvcore.host import UNRECOGNISED, probe_host
from hvcore.host.guest import Mode, ProbeGuest
from hvcore.host.probes import debug
from tests.host.probe_checks import assert_recognised, assert_stable

NAMES = [d.name for d in debug.DEVIATIONS]
VARIANTS = {
    "breakpoint_dr7": "dr7_zero",
    "breakpoint_resume_flag": "refires",
    "watchpoints_ignored": "never_fire",
    "software_breakpoints_delivered": "delivered",
}
"""Each deviation's one registered variant (all of them measured on the nested kvm_pvm development host)."""


def test_each_deviation_has_its_one_variant() -> None:
    assert list(VARIANTS) == NAMES
    for deviation in debug.DEVIATIONS:
        assert set(deviation.variants) == {VARIANTS[deviation.name]}
        assert deviation.upstream and deviation.reason and all(deviation.variants.values())


def test_each_probe_recognises_the_backend(hv: Hypervisor) -> None:
    """The simulator is upstream; KVM shows upstream or the registered variant, never unrecognised behaviour."""
    assert_recognised(hv, debug.DEVIATIONS, VARIANTS)


def test_the_probes_give_the_same_answer_every_time(hv: Hypervisor) -> None:
    assert_stable(hv, debug.DEVIATIONS, 3)


class Faulting(ProbeGuest):
    """A probe guest whose code is replaced by `ud2`: whatever the probe expected, the guest faults instead."""

    def __init__(self, hv: Hypervisor, code: bytes, mode: Mode = "long", **kwargs: Any) -> None:
        super().__init__(hv, b"\x0f\x0b", mode, **kwargs)  # ud2


@pytest.mark.parametrize("name", NAMES)
def test_a_probe_takes_no_failure_for_a_variant(hv: Hypervisor, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setattr(debug, "ProbeGuest", Faulting)
    observation = probe_host(hv, [d for d in debug.DEVIATIONS if d.name == name]).observations[name]
    assert observation.variant == UNRECOGNISED
    assert "Exit" in observation.detail  # it says what it saw
