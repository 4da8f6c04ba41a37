"""``python -m tests.kvm_unit_tests [--backend B] [--only T,...] [--markdown]``: run the suite, print the table.

The tree comes from ``HVCORE_KVM_UNIT_TESTS`` (a built kvm-unit-tests checkout). Without it the
command says so and exits 0 with nothing run, as a skip. Exit status 1 when an outcome differs
from ``expected.py`` or a test is missing from it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import hvcore
from tests.kvm_unit_tests.config import UnitTest, invocation, load
from tests.kvm_unit_tests.expected import EXPECTED, Expectation
from tests.kvm_unit_tests.runner import Result, run_test

ENVIRONMENT = "HVCORE_KVM_UNIT_TESTS"
_NOT_RUN_GROUPS = {"nodefault": "manual-only (nodefault group), as kvm-unit-tests' own runner does"}


def not_run_reason(test: UnitTest) -> str | None:
    """Why a test is not run at all: a 32-bit-only test (the tree is built for x86_64) or a manual one."""
    if test.arch == "i386":
        return "i386 only (the tree is built for x86_64)"
    for group in test.groups:
        if group in _NOT_RUN_GROUPS:
            return _NOT_RUN_GROUPS[group]
    return None


def _usable(backend: str) -> str | None:
    try:
        hvcore.open_hypervisor(backend).close()
    except hvcore.BackendUnavailable as exc:
        return exc.message
    return None


def _row(cells: list[str], widths: list[int], markdown: bool) -> str:
    if markdown:
        return "| " + " | ".join(cells) + " |"
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


def main(argv: list[str] | None = None) -> int:
    """Run the tests and print the table; the exit status says whether every outcome was the expected one."""
    parser = argparse.ArgumentParser(prog="python -m tests.kvm_unit_tests", description=__doc__)
    parser.add_argument("--backend", action="append", choices=hvcore.backend_names(), help="default: every usable one")
    parser.add_argument("--only", help="comma-separated test names")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every test's timeout")
    args = parser.parse_args(argv)
    tree_name = os.environ.get(ENVIRONMENT)
    if not tree_name:
        print(f"kvm-unit-tests: skipped: set {ENVIRONMENT} to a built kvm-unit-tests tree (./configure && make)")
        return 0
    tree = Path(tree_name)
    tests = load(tree)
    if args.only:
        wanted = set(args.only.split(","))
        tests = [t for t in tests if t.name in wanted]
    expected = EXPECTED
    backends = []
    for backend in args.backend or hvcore.backend_names():
        reason = _usable(backend)
        if reason is None:
            backends.append(backend)
        else:
            print(f"kvm-unit-tests: backend {backend} skipped: {reason}")
    headers = ["test", "backend", "outcome", "pass/fail/skip", "time", "expected", "note"]
    widths = [28, 7, 8, 14, 8, 8, 40]
    print(_row(headers, widths, args.markdown))
    if args.markdown:
        print("|" + "---|" * len(headers))
    wrong = 0
    for test in tests:
        entry = expected.get(test.name)
        skip = not_run_reason(test)
        for backend in backends:
            want = entry.outcome(backend) if entry else "?"
            if skip is not None:
                cells = [test.name, backend, "not-run", "", "", want, skip]
                wrong += want != "not-run"
            else:
                how = invocation(test, timeout_scale=args.timeout_scale)
                result = run_test(test, how, backend, tree)
                cells = _cells(result, want, entry, how.not_honoured)
                if result.outcome != want:
                    wrong += 1
                    tail = result.tail.replace("\n", "\n    ")
                    print(f"    {test.name} on {backend}: {result.outcome}, expected {want}", file=sys.stderr)
                    print(f"    {tail}", file=sys.stderr)
            print(_row(cells, widths, args.markdown), flush=True)
    print(f"kvm-unit-tests: {wrong} outcome(s) differ from tests/kvm_unit_tests/expected.py")
    return 1 if wrong else 0


def _cells(result: Result, want: str, entry: Expectation | None, not_honoured: tuple[str, ...]) -> list[str]:
    note = entry.reason(result.backend) if entry else "not in tests/kvm_unit_tests/expected.py"
    if not_honoured:
        note = (note + "; " if note else "") + "not honoured: " + " ".join(not_honoured)
    return [result.test, result.backend, result.outcome, result.counts(), f"{result.seconds:.1f} s", want, note]


if __name__ == "__main__":
    sys.exit(main())
