"""The hypercall probe (hvcore.host.probes.hypercall) on the real backends, and on guests it must not take."""

from __future__ import annotations

import time
from typing import Any

import pytest

from hvcore import Hypervisor
from hvcore.host import UNRECOGNISED, UPSTREAM, Observation, probe_host
from hvcore.host.guest import Mode, ProbeGuest
from hvcore.host.probes import hypercall


def observe(hv: Hypervisor) -> Observation:
    return probe_host(hv, hypercall.DEVIATIONS).observations["hypercall_hangs"]


def test_the_deviation_and_its_variant() -> None:
    (deviation,) = hypercall.DEVIATIONS
    assert deviation.name == "hypercall_hangs"
    assert set(deviation.variants) == {"hangs"}
    assert deviation.upstream and deviation.reason and all(deviation.variants.values())


def test_the_probe_recognises_the_backend_and_a_hang_costs_one_short_watchdog(hv: Hypervisor) -> None:
    """The simulator is upstream; KVM shows upstream or `hangs`, found by a kick after HANG_SECONDS, not 5 s."""
    started = time.monotonic()
    seen = observe(hv)
    assert seen.variant in (UPSTREAM, "hangs"), seen.detail
    if hv.name == "sim":
        assert seen.variant == UPSTREAM
    assert time.monotonic() - started < hypercall.HANG_SECONDS + 2


class Halting(ProbeGuest):
    """A probe guest whose code is replaced by `hlt`: no hypercall, an exit at once."""

    def __init__(self, hv: Hypervisor, code: bytes, mode: Mode = "long", **kwargs: Any) -> None:
        super().__init__(hv, b"\xf4", mode, **kwargs)


class Spinning(ProbeGuest):
    """A probe guest whose code is replaced by `jmp $`: it runs forever, but not at the hypercall."""

    def __init__(self, hv: Hypervisor, code: bytes, mode: Mode = "long", **kwargs: Any) -> None:
        super().__init__(hv, b"\xeb\xfe", mode, **kwargs)


@pytest.mark.parametrize(("guest", "says"), [(Halting, "HltExit"), (Spinning, "without an exit")])
def test_the_probe_takes_no_other_behaviour_for_a_variant(
    hv: Hypervisor, monkeypatch: pytest.MonkeyPatch, guest: type[ProbeGuest], says: str
) -> None:
    monkeypatch.setattr(hypercall, "ProbeGuest", guest)
    seen = observe(hv)
    assert seen.variant == UNRECOGNISED
    assert says in seen.detail
