"""Host profiles (hvcore.host): probes decide host behaviour, unregistered behaviour fails, sim is upstream."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import hvcore
from hvcore import Hypervisor, UnrecognisedBehaviour, cli, host
from hvcore.host import UNRECOGNISED, UPSTREAM, Deviation, HostIdentity, HostProfile, Observation, Unrecognised
from hvcore.host.known import DEVIATIONS, deviation
from hvcore.host.profile import probe_host
from tests import quirks

IDENTITY = HostIdentity("6.99.0-test", "GenuineIntel", "Intel(R) Xeon(R) Test CPU", "kvm_intel")


def fake_profile(backend: str = "kvm", **variants: str) -> HostProfile:
    """A profile as a host with these variants (``UNRECOGNISED`` with a detail) would have probed."""
    observations = {
        name: Observation(name, variant, "saw something new" if variant == UNRECOGNISED else "")
        for name, variant in variants.items()
    }
    return HostProfile(backend, IDENTITY, observations)


class FakeHypervisor:
    """Just a name: the profile helpers ask nothing else of a hypervisor they do not probe."""

    def __init__(self, name: str) -> None:
        self.name = name


def deviation_probing(result: str | Exception) -> Deviation:
    def probe(hv: Hypervisor) -> str:
        if isinstance(result, Exception):
            raise result
        return result

    return Deviation("d", upstream="does A", variants={"b": "does B"}, reason="a test", probe=probe)


# --- the profile's rules, on fake profiles ------------------------------------------------------------------


def test_a_registered_variant_is_allowed_and_named() -> None:
    profile = fake_profile(single_step_dr7="dr7_zero", tsc_writes_ignored=UPSTREAM)
    assert profile.variant("single_step_dr7") == "dr7_zero"
    assert profile.deviates("single_step_dr7")
    assert not profile.deviates("tsc_writes_ignored")
    assert [o.deviation for o in profile.deviations()] == ["single_step_dr7"]


def test_unrecognised_behaviour_fails_whoever_relies_on_it() -> None:
    profile = fake_profile(single_step_dr7=UNRECOGNISED)
    with pytest.raises(UnrecognisedBehaviour, match=r"'single_step_dr7'.*neither upstream.*saw something new"):
        profile.variant("single_step_dr7")
    with pytest.raises(UnrecognisedBehaviour):
        profile.deviates("single_step_dr7")


def test_a_deviation_that_was_not_probed_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="no host deviation 'nonsense'"):
        fake_profile(single_step_dr7=UPSTREAM).variant("nonsense")


def test_the_test_helper_passes_registered_variants_and_fails_unregistered_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What every host-dependent test goes through: ``tests.quirks.host_variant``."""
    profile = fake_profile(single_step_dr7="dr7_zero", pat_unchecked=UNRECOGNISED)
    monkeypatch.setattr(quirks, "host_profile", lambda hv: profile)
    monkeypatch.setattr(quirks, "VARIANTS_SEEN", Counter())  # keep the fake out of the session summary
    kvm = FakeHypervisor("kvm")
    assert quirks.host_variant(kvm, "single_step_dr7") == "dr7_zero"  # type: ignore[arg-type]
    assert Counter({("kvm", "single_step_dr7", "dr7_zero"): 1}) == quirks.VARIANTS_SEEN
    with pytest.raises(UnrecognisedBehaviour):
        quirks.host_variant(kvm, "pat_unchecked")  # type: ignore[arg-type]
    assert quirks.host_variant(FakeHypervisor("sim"), "pat_unchecked") == UPSTREAM  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("result", "variant", "detail"),
    [
        (UPSTREAM, UPSTREAM, ""),
        ("b", "b", "does B"),
        ("c", UNRECOGNISED, "unregistered variant 'c'"),
        (Unrecognised("saw C"), UNRECOGNISED, "saw C"),
        (hvcore.HypervisorFault("KVM_RUN failed"), UNRECOGNISED, "the probe failed: HypervisorFault: KVM_RUN failed"),
    ],
    ids=["upstream", "registered", "unregistered-name", "unrecognised", "probe-error"],
)
def test_what_a_probe_returns_becomes_an_observation(result: str | Exception, variant: str, detail: str) -> None:
    profile = probe_host(FakeHypervisor("kvm"), [deviation_probing(result)], IDENTITY)  # type: ignore[arg-type]
    seen = profile.observations["d"]
    assert seen.variant == variant
    assert detail in seen.detail


def test_a_deviation_must_name_its_variants() -> None:
    with pytest.raises(ValueError, match="variants"):
        Deviation("d", upstream="A", variants={UPSTREAM: "A"}, reason="", probe=lambda hv: UPSTREAM)


def test_describe_names_the_host_and_each_deviation() -> None:
    lines = fake_profile(single_step_dr7="dr7_zero", pat_unchecked=UNRECOGNISED, tsc_writes_ignored=UPSTREAM).describe()
    text = "\n".join(lines)
    assert "6.99.0-test" in text and "GenuineIntel, Intel(R) Xeon(R) Test CPU" in text and "kvm_intel" in text
    assert "2 of 3 probes differ" in text
    assert "single_step_dr7: dr7_zero" in text
    assert "pat_unchecked: UNRECOGNISED (saw something new)" in text
    assert "none: upstream" in "\n".join(fake_profile(pat_unchecked=UPSTREAM).describe())


# --- identity --------------------------------------------------------------------------------------------------


def test_identity_is_read_from_cpuinfo_and_the_loaded_modules(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel Xeon X\n\nprocessor\t: 1\nvendor_id\t: Other\n"
    )
    modules = tmp_path / "module"
    (modules / "kvm").mkdir(parents=True)
    (modules / "kvm_intel").mkdir()
    identity = host.host_identity(cpuinfo, modules)
    assert identity.cpu_vendor == "GenuineIntel"
    assert (identity.cpu_model, identity.kvm_module) == ("Intel Xeon X", "kvm_intel")
    assert identity.key() == (identity.kernel, "Intel Xeon X", "kvm_intel")
    missing = host.host_identity(tmp_path / "none", tmp_path / "none")
    assert (missing.cpu_vendor, missing.cpu_model) == ("unknown", "unknown")


# --- the real backends ---------------------------------------------------------------------------------------


def test_the_registry_names_are_unique_and_found() -> None:
    names = [d.name for d in DEVIATIONS]
    assert len(names) == len(set(names))
    assert all(deviation(name).name == name for name in names)
    with pytest.raises(KeyError, match="no host deviation"):
        deviation("nonsense")


def test_every_probe_recognises_the_backend(hv: Hypervisor) -> None:
    """On the simulator every probe finds upstream behaviour; on KVM, upstream or a registered variant."""
    profile = host.host_profile(hv)
    assert set(profile.observations) == {d.name for d in DEVIATIONS}
    unrecognised = {o.deviation: o.detail for o in profile.observations.values() if o.variant == UNRECOGNISED}
    assert unrecognised == {}
    if hv.name == "sim":
        assert profile.deviations() == ()


def test_the_profile_is_probed_once_per_host(hv: Hypervisor) -> None:
    first = host.host_profile(hv)
    assert host.host_profile(hv) is first
    with hvcore.open_hypervisor(hv.name) as again:
        assert host.host_profile(again) is first


def test_info_host_prints_each_usable_backends_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["info", "--host"]) == 0
    out = capsys.readouterr().out
    usable = [n for n, reason in hvcore.available_backends().items() if reason is None]
    assert out.count("KVM module") == len(usable)
    assert out.count("deviations  ") == len(usable)


def test_info_host_fails_on_unrecognised_behaviour(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(host, "host_profile", lambda hv: fake_profile(hv.name, single_step_dr7=UNRECOGNISED))
    assert cli.main(["info", "--host"]) == 1
    out = capsys.readouterr().out
    assert "single_step_dr7: UNRECOGNISED (saw something new)" in out
    assert "please report" in out
