"""One kvm-unit-test on one backend: ``hvcore run`` in a subprocess, its verdict read like kvm-unit-tests' own.

A test reports through isa-debug-exit, which ``hvcore run`` turns into its exit status as QEMU
does (``(code << 1) | 1``): 1 is a pass, 77 a skip (every check skipped), anything else odd a
failure. ``hvcore run``'s own statuses are even (:class:`hvcore.vmm.run.ExitStatus`): 124 when
its ``--timeout`` stopped a guest that never reported, any other an error (the run failed, the
guest crashed, or it ended without a verdict). The ``SUMMARY:`` line gives the guest's own counts.
The subprocess has its own deadline beyond ``--timeout``, so a hang can never pass for a result.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hvcore.vmm.run import ExitStatus
from tests.kvm_unit_tests.config import Invocation, UnitTest

__all__ = ["Outcome", "Result", "parse_summary", "run_test", "verdict"]

Outcome = Literal["pass", "fail", "skip", "timeout", "error"]

_PASS, _SKIP = 1, 77
_GRACE = 30.0  # seconds past hvcore's own --timeout before the process is killed
_SUMMARY = re.compile(r"^SUMMARY: (?P<tests>\d+) tests(?P<rest>.*)$", re.MULTILINE)
_COUNT = re.compile(r"(?P<n>\d+) (?P<kind>unexpected failures|known failures|expected failures|skipped)")


@dataclass(frozen=True)
class Result:
    """What one run gave: the outcome, the guest's counts, the time and the output's tail."""

    test: str
    backend: str
    outcome: Outcome
    passed: int
    failed: int
    skipped: int
    seconds: float
    tail: str

    def counts(self) -> str:
        """``passed/failed/skipped`` as the table shows them."""
        return f"{self.passed}/{self.failed}/{self.skipped}"


def parse_summary(output: str) -> tuple[int, int, int] | None:
    """(passed, failed, skipped) from the last ``SUMMARY:`` line, or None when there is none."""
    matches = list(_SUMMARY.finditer(output))
    if not matches:
        return None
    last = matches[-1]
    counts = {m["kind"]: int(m["n"]) for m in _COUNT.finditer(last["rest"])}
    failed = counts.get("unexpected failures", 0)
    skipped = counts.get("skipped", 0)
    not_passed = failed + skipped + counts.get("known failures", 0) + counts.get("expected failures", 0)
    return int(last["tests"]) - not_passed, failed, skipped


def verdict(status: int) -> Outcome:
    """The outcome of ``hvcore run``'s exit status."""
    if status == _PASS:
        return "pass"
    if status == _SKIP:
        return "skip"
    if status == ExitStatus.TIMED_OUT:
        return "timeout"  # stopped by --timeout without a word on isa-debug-exit
    return "fail" if status & 1 else "error"  # an even status is hvcore's own (failed, crashed, no verdict)


def run_test(test: UnitTest, how: Invocation, backend: str, tree: Path) -> Result:
    """Run ``test`` on ``backend`` from the built ``tree``, under ``how.timeout`` plus a grace period."""
    image = tree / "x86" / test.file
    command = [sys.executable, "-m", "hvcore", "run", "--backend", backend, *how.arguments(), str(image)]
    started = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=how.timeout + _GRACE, check=False)
        status, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        status = ExitStatus.TIMED_OUT
        output = _text(exc.stdout) + _text(exc.stderr) + "\n(killed: hvcore run did not stop)"
    seconds = time.monotonic() - started
    outcome = verdict(status)
    passed, failed, skipped = parse_summary(output) or (0, 0, 0)
    tail = "\n".join(output.strip().splitlines()[-8:])
    return Result(test.name, backend, outcome, passed, failed, skipped, seconds, tail)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")
