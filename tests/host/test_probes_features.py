"""The probes of KVM's CPUID-dependent rules: CR4, XCR0, CPUID after a run (``hvcore.host.probes.features``).

Each probe must name upstream on the simulator and upstream or a registered variant on KVM; the
simulator, taught the variant (its rules loosened), must be named with it, and half of it
(only the guest's path, or only the VMM's) must be unrecognised.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from hvcore import CpuidEntry, Hypervisor, InvalidArgument
from hvcore.host import UNRECOGNISED, Observation, probe_host
from hvcore.host.probes import features
from hvcore_sim import cpufeatures, state
from tests.conftest import open_or_skip
from tests.host.probe_checks import assert_recognised

NAMES = [d.name for d in features.DEVIATIONS]
VARIANTS = {
    "cr4_cpuid_unchecked": {"accepted"},
    "xcr0_cpuid_unchecked": {"accepted"},
    "cpuid_after_run": {"same_refused", "unchecked"},
}
_ALL_CR4_FEATURES = sum(bit for _, bit, *_ in features.CR4_FEATURES)


def observe(hv: Hypervisor, name: str) -> Observation:
    """Run deviation ``name``'s probe on ``hv``."""
    return probe_host(hv, [d for d in features.DEVIATIONS if d.name == name]).observations[name]


def test_the_deviations_and_their_variants() -> None:
    assert list(VARIANTS) == NAMES
    for deviation in features.DEVIATIONS:
        assert set(deviation.variants) == VARIANTS[deviation.name]
        assert deviation.upstream and deviation.reason and all(deviation.variants.values())


def test_each_probe_recognises_the_backend(hv: Hypervisor) -> None:
    """The simulator is upstream; KVM shows upstream or a registered variant, never unrecognised behaviour."""
    assert_recognised(hv, features.DEVIATIONS, VARIANTS)


@pytest.fixture
def sim() -> Iterator[Hypervisor]:
    """The simulator."""
    with open_or_skip("sim") as hypervisor:
        yield hypervisor


def loosen_cr4(monkeypatch: pytest.MonkeyPatch, *, guest: bool, host: bool) -> None:
    """Let the simulator's guest MOV to CR4 (``guest``) and ``set_sregs`` (``host``) take the probed bits."""
    reserved, error = cpufeatures.cr4_reserved, cpufeatures.cr4_error

    def loose_reserved(cpuid: Sequence[CpuidEntry]) -> int:
        return reserved(cpuid) & ~_ALL_CR4_FEATURES

    def strict_error(value: int, **kw: Any) -> str | None:  # MOV to CR4 keeps the rule set_sregs no longer has
        return "reserved" if value & reserved(kw["cpuid"]) & _ALL_CR4_FEATURES else error(value, **kw)

    if host:  # set_sregs reads cr4_reserved, and so does cr4_error
        monkeypatch.setattr(cpufeatures, "cr4_reserved", loose_reserved)
        if not guest:
            monkeypatch.setattr(cpufeatures, "cr4_error", strict_error)
    elif guest:
        monkeypatch.setattr(cpufeatures, "cr4_error", lambda value, **kw: error(value & ~_ALL_CR4_FEATURES, **kw))


@pytest.mark.parametrize(
    ("guest", "host", "variant"),
    [(True, True, "accepted"), (True, False, UNRECOGNISED), (False, True, UNRECOGNISED)],
    ids=["both", "guest-only", "host-only"],
)
def test_the_cr4_probe_names_what_the_simulator_was_taught(
    sim: Hypervisor, monkeypatch: pytest.MonkeyPatch, guest: bool, host: bool, variant: str
) -> None:
    loosen_cr4(monkeypatch, guest=guest, host=host)
    assert observe(sim, "cr4_cpuid_unchecked").variant == variant


@pytest.mark.parametrize(
    ("guest", "host", "variant"),
    [(True, True, "accepted"), (True, False, UNRECOGNISED), (False, True, UNRECOGNISED)],
    ids=["both", "guest-only", "host-only"],
)
def test_the_xcr0_probe_names_what_the_simulator_was_taught(
    sim: Hypervisor, monkeypatch: pytest.MonkeyPatch, guest: bool, host: bool, variant: str
) -> None:
    if guest:  # the engine's XSETBV takes every component it executes
        monkeypatch.setattr(state.VcpuState, "limit_xcr0", lambda self, engine: engine.limit_xcr0(0x203))
    if host:
        monkeypatch.setattr(cpufeatures, "xcr0_error", lambda value, cpuid: None)
    assert observe(sim, "xcr0_cpuid_unchecked").variant == variant


@pytest.mark.parametrize(
    ("check", "variant"),
    [("raw", "same_refused"), ("none", "unchecked"), ("inverted", UNRECOGNISED)],
)
def test_the_cpuid_after_run_probe_names_what_the_simulator_was_taught(
    sim: Hypervisor, monkeypatch: pytest.MonkeyPatch, check: str, variant: str
) -> None:
    """The simulator compares the new entries, with KVM's runtime bits applied, to the ones it has; taught
    to compare them raw (the same set is then refused), not at all, or backwards, the probe says so."""
    set_cpuid = state.VcpuState.set_cpuid

    def taught(self: state.VcpuState, engine: Any, entries: list[CpuidEntry], *, has_run: bool = False) -> None:
        if has_run and check == "raw" and tuple(entries) != self.current_cpuid(engine):
            raise InvalidArgument("refused raw")
        if has_run and check == "inverted" and tuple(entries) == tuple(self.cpuid):
            raise InvalidArgument("refused the same")
        set_cpuid(self, engine, entries, has_run=False)

    monkeypatch.setattr(state.VcpuState, "set_cpuid", taught)
    assert observe(sim, "cpuid_after_run").variant == variant
