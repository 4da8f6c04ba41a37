"""The corpus catches a simulator that is deliberately wrong (so a green corpus means something)."""

from __future__ import annotations

import pytest

import hvcore
from tests.conformance.cases import CORPUS
from tests.conformance.harness import check_expected, run_on

BY_NAME = {case.name: case for case in CORPUS}


@pytest.mark.parametrize(
    ("attribute", "value", "case"),
    [
        ("_PIO_BATCH", 512, "real_rep_insb_batches"),  # rep ins batched by half KVM's pio page
        ("HAS_ERROR_CODE", frozenset(), "user_gp_kernel_selector"),  # #GP delivered without its error code
    ],
)
def test_a_wrong_simulator_fails_the_corpus(
    monkeypatch: pytest.MonkeyPatch, attribute: str, value: object, case: str
) -> None:
    if hvcore.available_backends().get("sim") is not None:
        pytest.skip(f"simulator unusable: {hvcore.available_backends()['sim']}")
    with hvcore.open_hypervisor("sim") as sim:
        assert check_expected(BY_NAME[case], run_on(sim, BY_NAME[case])) == []  # right as it is
        sim_exits = pytest.importorskip("hvcore_sim.exits")
        monkeypatch.setattr(sim_exits, attribute, value)
        try:
            problems = check_expected(BY_NAME[case], run_on(sim, BY_NAME[case]))
        except hvcore.HvError as exc:  # a wrong simulator may also fail loudly: caught as well
            problems = [str(exc)]
    assert problems, f"the corpus did not notice hvcore_sim.exits.{attribute} = {value}"
