"""Run the conformance corpus on every backend and compare the backends with each other.

- ``test_case``: each case on each backend (the ``hv`` fixture) against its expectation, adjusted
  by the registered quirks active there.
- ``test_backends_agree``: each case on KVM and on the simulator, their whole outcomes compared
  through each other's quirks (skipped, with the reason, only where one backend is unusable).
- The corpus's size and coverage, and the registry's consistency and use.

A case that fails because of a simulator bug stays in the corpus, marked in ``SIMULATOR_BUGS``
(strict xfail: when the simulator is fixed the mark must go).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

import hvcore
from hvcore import ExitReason, Hypervisor, IoDirection, IoExit, MmioExit
from hvcore.host import host_profile
from tests.conformance.cases import CORPUS, REQUIRED_EXITS, REQUIRED_FEATURES, REQUIRED_MODES
from tests.conformance.cases_events import WINDOW_AFTER_SHADOW
from tests.conformance.harness import (
    FLAGS_IMAGE,
    Case,
    Outcome,
    Run,
    adjust,
    check_alike,
    check_expected,
    compare,
    out,
    quirk,
    run_case,
    run_on,
)
from tests.conftest import open_or_skip
from tests.flags import STATUS
from tests.quirks import HOST_QUIRKS, REGISTRY, irq_window_batched, is_simulator


@dataclass(frozen=True)
class Bug:
    """A simulator bug a case shows: which checks it fails, and what is wrong."""

    what: str
    expectation: bool = True
    """The simulator's run differs from the expected outcome."""
    agreement: bool = True
    """The simulator's run differs from KVM's (beyond the registered quirks)."""


SIMULATOR_BUGS: dict[str, Bug] = {}
# Fixed: "protected_mmio_cmpxchg8b" (`cmpxchg8b` on MMIO completed with 0 as the memory operand before the
# host answered: no write exit; it runs as one Unicorn helper, whose effects the simulator now undoes).

BY_NAME = {case.name: case for case in CORPUS}


def _expect_bug(request: pytest.FixtureRequest, case: Case, *, agreement: bool) -> None:
    bug = SIMULATOR_BUGS.get(case.name)
    if bug is not None and (bug.agreement if agreement else bug.expectation):
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"simulator bug: {bug.what}"))


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_case(request: pytest.FixtureRequest, hv: Hypervisor, case: Case) -> None:
    if hv.name == "sim":
        _expect_bug(request, case, agreement=False)
    problems = check_expected(case, run_on(hv, case))
    assert not problems, f"{case.name}: {case.summary}\n" + "\n".join(problems)


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_backends_agree(request: pytest.FixtureRequest, kvm: Hypervisor, case: Case) -> None:
    with open_or_skip("sim") as sim:
        _expect_bug(request, case, agreement=True)
        first, second = run_on(kvm, case), run_on(sim, case)
    problems = check_alike(case, first, second)
    assert not problems, f"{case.name}: {case.summary}\n" + "\n".join(problems)


def test_irq_window_position(hv: Hypervisor) -> None:
    """Where the window opens: right after the `sti` shadow; on this host at a batch end, which varies."""
    outcome = run_case(hv, WINDOW_AFTER_SHADOW)
    if not irq_window_batched(hv):
        assert not check_expected(WINDOW_AFTER_SHADOW, Run(hv.name, (), outcome))
        return
    count = outcome.state["rcx"]
    assert 1 <= count <= 512  # 512: the run's 1024th instruction (sti, then inc/jmp pairs)
    assert outcome.steps[1].exit.reason is ExitReason.IRQ_WINDOW_OPEN
    assert outcome.steps[1].rip in (0x101B, 0x101C)  # in the loop
    assert outcome.steps[2] == out(0x81, count, 0x1022, size=2)


# --- the corpus itself -----------------------------------------------------------------------------------


def test_corpus_size_and_coverage() -> None:
    assert len(CORPUS) >= 40
    assert len(BY_NAME) == len(CORPUS), "case names must be unique"
    reasons = {step.exit.reason for case in CORPUS for step in case.expect.steps}
    assert reasons >= REQUIRED_EXITS, f"no case expects {sorted(r.name for r in REQUIRED_EXITS - reasons)}"
    features = frozenset().union(*(case.covers for case in CORPUS))
    assert features >= REQUIRED_FEATURES, f"nothing covers {sorted(REQUIRED_FEATURES - features)}"
    assert {case.mode for case in CORPUS} == REQUIRED_MODES
    string_io = [s.exit for c in CORPUS for s in c.expect.steps if isinstance(s.exit, IoExit) and s.exit.count > 1]
    assert string_io, "a batched `rep ins` is expected somewhere"
    mmio_lengths = {s.exit.length for c in CORPUS for s in c.expect.steps if isinstance(s.exit, MmioExit)}
    assert mmio_lengths == {1, 2, 4, 8}


def test_known_bugs_name_corpus_cases() -> None:
    assert set(SIMULATOR_BUGS) <= set(BY_NAME)


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_case_is_well_formed(case: Case) -> None:
    for name in case.quirks:
        entry = quirk(name)  # raises for a name the registry lacks
        assert entry.effect is not None or name in case.variants, f"{name} is guest-specific: give its variant"
    assert set(case.variants) <= set(case.quirks)
    assert set(case.expect.memory) == set(case.memory)
    assert case.expect.steps, "a case expects at least one exit"
    for name in case.quirks:  # effects set fields: applying one twice changes nothing
        once = adjust(case, case.expect, (name,))
        assert adjust(case, once, (name,)) == once, f"{name}'s effect is not idempotent on {case.name}"
    for where, flags in case.undefined_flags.items():  # masks: status flags, where RFLAGS is compared
        assert flags and not flags & ~STATUS, f"{where}: {flags:#x} are not status flags"
        if isinstance(where, str):
            assert re.fullmatch(r"(\d+:)?rflags", where), f"{where!r} is not a vCPU's rflags"
        else:
            name, offset = where
            assert name in case.memory and 0 <= offset <= case.memory[name][1] - FLAGS_IMAGE, f"no flags at {where}"


# --- the registry ------------------------------------------------------------------------------------------

TESTS = Path(__file__).resolve().parents[1]


def test_registry_entries_are_complete() -> None:
    names = [q.name for q in REGISTRY]
    assert len(names) == len(set(names))
    for entry in REGISTRY:
        assert entry.reason and entry.upstream and entry.instead, entry.name
        assert re.fullmatch(r"[a-z0-9_]+", entry.name)


def test_every_quirk_is_used_by_a_case_or_a_test() -> None:
    sources = "\n".join(p.read_text() for p in TESTS.rglob("*.py") if p.name != "quirks.py")
    for entry in REGISTRY:
        by_case = any(entry.name in case.quirks for case in CORPUS)
        by_test = entry.helper is not None and re.search(rf"\b{entry.helper}\(", sources) is not None
        assert by_case or by_test, f"quirk {entry.name} is used by no conformance case and no test"


def test_quirks_apply_where_they_say(hv: Hypervisor) -> None:
    """Simulator entries on the simulator; host entries exactly where the host's probes found a variant."""
    active = {q.name for q in REGISTRY if q.applies(hv)}
    simulator = {q.name for q in REGISTRY if q.applies is is_simulator}
    host = {q.name for q in HOST_QUIRKS}
    assert simulator | host == {q.name for q in REGISTRY}
    if hv.name == "sim":
        assert active == simulator
    else:
        assert active == {seen.deviation for seen in host_profile(hv).deviations()}


# --- the harness catches what the registry does not name -----------------------------------------------------


def test_an_unregistered_difference_fails_with_a_readable_diff() -> None:
    case = BY_NAME["real_prints_5"]
    right = Run("kvm", (), replace(case.expect, state={**case.expect.state, "rbx": 3}))
    compare(case, {"kvm": right})
    steps = (case.expect.steps[0], replace(case.expect.steps[1], exit=IoExit(0x3F8, 1, 1, IoDirection.OUT, b"6")))
    wrong = Run("sim", (), Outcome(steps=(*steps, case.expect.steps[2]), state={**right.outcome.state, "rbx": 4}))
    with pytest.raises(AssertionError) as failure:
        compare(case, {"kvm": right, "sim": wrong})
    text = str(failure.value)
    assert "exits differ from #1" in text
    assert "state rbx: kvm 0x3, sim 0x4" in text  # only in the comparison of the two backends


def test_a_registered_quirk_is_applied_only_where_active() -> None:
    case = BY_NAME["real_single_step"]
    upstream = Run("sim", (), case.expect)
    on_pvm = Run("kvm", ("single_step_dr7",), adjust(case, case.expect, ("single_step_dr7",)))
    assert all(s.exit.dr7 == 0 for s in on_pvm.outcome.steps)  # type: ignore[union-attr]
    compare(case, {"kvm": on_pvm, "sim": upstream})
    with pytest.raises(AssertionError, match="exits differ"):
        compare(case, {"kvm": replace(on_pvm, quirks=()), "sim": upstream})


def test_backend_names_cover_both() -> None:
    assert {"kvm", "sim"} <= set(hvcore.backend_names())
