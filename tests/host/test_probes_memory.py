"""The dirty-logging probe (hvcore.host.probes.memory) on the real backends, and on behaviour it must not take."""

from __future__ import annotations

import pytest

from hvcore import Hypervisor
from hvcore.host import UNRECOGNISED, UPSTREAM, probe_host
from hvcore.host.probes import memory


def test_the_deviation_and_its_variant() -> None:
    (deviation,) = memory.DEVIATIONS
    assert deviation.name == "first_access_logged"
    assert set(deviation.variants) == {"writes_only"}
    assert deviation.upstream and deviation.reason and all(deviation.variants.values())


def test_the_probe_recognises_the_backend(hv: Hypervisor) -> None:
    """The simulator is upstream (the fetched page is logged); KVM shows upstream or `writes_only`."""
    seen = probe_host(hv, memory.DEVIATIONS).observations["first_access_logged"]
    assert seen.variant in ((UPSTREAM,) if hv.name == "sim" else (UPSTREAM, "writes_only")), seen.detail


@pytest.mark.parametrize(
    ("in_slot", "says"),
    [
        (b"\xc6\x04\x25\x00\x10\x08\x00\x01\xf4", "logged pages ["),  # writes the second page: logged everywhere
        (b"\x0f\x0b", "not HLT"),  # ud2: the guest faults
    ],
)
def test_other_behaviour_is_unrecognised(
    hv: Hypervisor, monkeypatch: pytest.MonkeyPatch, in_slot: bytes, says: str
) -> None:
    monkeypatch.setattr(memory, "_IN_SLOT", in_slot)
    seen = probe_host(hv, memory.DEVIATIONS).observations["first_access_logged"]
    assert seen.variant == UNRECOGNISED and says in seen.detail
