"""Guest-driven device fuzzing: hostile guests against a ``Machine`` with every device, on each backend.

Each example is a random 64-bit guest (``guestgen.program()``: port IO, string IO, MMIO, fw_cfg
DMA, odd code) run by ``harness.run_guest`` on a fresh machine with a short timeout. It fails
when ``run()`` raises or hangs past its timeout, when a device raises on a guest access, when
the run's error is not a typed hvcore error, when a thread dies, or when a thread or fd outlives
the machine (``harness.Outcome.problems``); a failure shrinks to a minimal guest and shows its
listing.

The normal suite runs a fixed set of ``SHORT_EXAMPLES`` guests per backend (``derandomize``).
``nox -s fuzz-devices`` sets ``HVCORE_FUZZ_SECONDS`` (300 by default) and draws new guests for
that long on each backend (a failure prints a ``@reproduce_failure`` blob besides the listing).
``HVCORE_FUZZ_RUN_TIMEOUT`` (default 1 s) is each run's ``Machine.run`` timeout.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, event, given, settings

from hvcore import Hypervisor
from tests.fuzz_devices.guestgen import END_STATUS, Program, program
from tests.fuzz_devices.harness import run_guest

os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "hvcore-hypothesis"))

SECONDS = float(os.environ.get("HVCORE_FUZZ_SECONDS") or 0)
"""How long to fuzz each backend; 0 (unset): the short, seeded run of the normal suite."""
SHORT_EXAMPLES = 20
BATCH = 50
"""Examples per hypothesis run in a timed session (the time budget is checked between batches)."""
RUN_TIMEOUT = float(os.environ.get("HVCORE_FUZZ_RUN_TIMEOUT") or 1.0)


def _check(hv: Hypervisor, guest: Program, tally: Counter[str]) -> None:
    outcome = run_guest(hv, guest, RUN_TIMEOUT)
    result = outcome.result
    reason = "raised" if result is None else result.reason
    if result is not None and reason == "debug-exit" and result.status == END_STATUS:
        reason = "completed"
    elif result is not None and result.error is not None:
        reason = f"error: {type(result.error).__name__}"
    tally[reason] += 1
    event(f"{hv.name}: {reason}")
    assert not outcome.problems, (
        f"{hv.name}: {len(outcome.problems)} problem(s) with this guest (result {result!r}, "
        f"{outcome.seconds:.2f} s, exits {outcome.statistics}):\n{guest.listing()}\n\n" + "\n\n".join(outcome.problems)
    )


def _fuzz(hv: Hypervisor, examples: int, *, seeded: bool, tally: Counter[str]) -> None:
    @settings(
        max_examples=examples,
        derandomize=seeded,
        database=None,
        deadline=None,
        print_blob=not seeded,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(guest=program())
    def one(guest: Program) -> None:
        _check(hv, guest, tally)

    one()


# On a failure hypothesis's pytest plugin imports libcst to write a patch; an old libcst warns on import
# (mypy_extensions.TypedDict), which filterwarnings=error would turn into an INTERNALERROR hiding the report.
@pytest.mark.filterwarnings("ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")
def test_hostile_guests_get_results(hv: Hypervisor) -> None:
    tally: Counter[str] = Counter()
    start = time.monotonic()
    if not SECONDS:
        _fuzz(hv, SHORT_EXAMPLES, seeded=True, tally=tally)
    else:
        while time.monotonic() - start < SECONDS:
            _fuzz(hv, BATCH, seeded=False, tally=tally)
    elapsed = time.monotonic() - start
    runs = sum(tally.values())
    print(  # shown with -s and in nox -s fuzz-devices
        f"\n{hv.name}: {runs} guests in {elapsed:.1f} s ({runs / elapsed:.1f}/s): "
        + ", ".join(f"{reason} {n}" for reason, n in tally.most_common())
    )
