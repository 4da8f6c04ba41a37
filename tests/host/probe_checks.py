"""Checks every probe module's tests share: what a backend shows, that it is recognised, that it is stable."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from hvcore import Hypervisor
from hvcore.host import UNRECOGNISED, UPSTREAM, Deviation, probe_host


def observed(hv: Hypervisor, deviations: Sequence[Deviation]) -> dict[str, str]:
    """Each deviation's variant on ``hv``; fails, naming what was seen, on unrecognised behaviour."""
    profile = probe_host(hv, deviations)
    assert {o.deviation: o.detail for o in profile.observations.values() if o.variant == UNRECOGNISED} == {}
    return {name: o.variant for name, o in profile.observations.items()}


def assert_recognised(
    hv: Hypervisor, deviations: Sequence[Deviation], variants: Mapping[str, str | Collection[str]]
) -> None:
    """The simulator is upstream everywhere; KVM shows upstream or one of ``variants[name]``."""
    seen = observed(hv, deviations)
    if hv.name == "sim":
        assert seen == dict.fromkeys(seen, UPSTREAM)
        return
    for name, variant in seen.items():
        allowed = variants[name]
        assert variant in {UPSTREAM, *([allowed] if isinstance(allowed, str) else allowed)}, (name, variant)


def assert_stable(hv: Hypervisor, deviations: Sequence[Deviation], times: int) -> None:
    """``times`` probings give the same answers (the hosts are noisy; the answers must not be)."""
    answers = [observed(hv, deviations) for _ in range(times)]
    assert all(answer == answers[0] for answer in answers)
