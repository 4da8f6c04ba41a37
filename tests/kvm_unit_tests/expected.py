"""The expected outcome of each kvm-unit-test per backend, and why wherever it is not a pass.

``qemu_tcg`` is what QEMU 7.2's TCG gave with the same arguments on the development host
(``ACCEL=tcg ./run_tests.sh``): the bar the simulator is held to. ``kvm`` is the development
host's KVM (nested ``kvm_pvm`` on AMD EPYC, which runs CPL0 code in its instruction emulator);
another host's KVM may differ, and the runner says where. ``needs`` names what a test requires
that hvcore does not provide at all (a QEMU machine option, a CPU model), which is the only
reason the simulator may miss a test QEMU's TCG passes. A test ``unittests.cfg`` lists but this
table does not fails the run: new upstream tests must be looked at, not silently passed over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, get_args

from tests.kvm_unit_tests.runner import Outcome

__all__ = ["EXPECTED", "Expectation"]

_OUTCOMES: Final = frozenset(get_args(Outcome)) | {"not-run"}


@dataclass(frozen=True)
class Expectation:
    """One test's expected outcomes, with the reason for each that is not a pass."""

    test: str
    qemu_tcg: str
    sim: str
    kvm: str
    why_sim: str = ""
    why_kvm: str = ""
    needs: str = ""

    def __post_init__(self) -> None:
        for backend, outcome, why in (("qemu_tcg", self.qemu_tcg, "-"), ("sim", self.sim, self.why_sim),
                                      ("kvm", self.kvm, self.why_kvm)):  # fmt: skip
            if outcome not in _OUTCOMES:
                raise ValueError(f"[{self.test}] {backend} = {outcome!r}: not one of {sorted(_OUTCOMES)}")
            if outcome != "pass" and not why:
                raise ValueError(f"[{self.test}]: {backend} is expected to {outcome}; say why (why_{backend})")

    def outcome(self, backend: str) -> str:
        """The expected outcome on ``backend`` (``"sim"`` or ``"kvm"``)."""
        return self.sim if backend == "sim" else self.kvm

    def reason(self, backend: str) -> str:
        """Why ``backend`` is not expected to pass (empty when it is)."""
        return self.why_sim if backend == "sim" else self.why_kvm


_E = Expectation
EXPECTED: Final[dict[str, Expectation]] = {}
