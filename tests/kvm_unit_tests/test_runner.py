"""The kvm-unit-tests runner's own logic: unittests.cfg, the verdicts, the expected outcomes. No tree needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from docs.tables import kvm_unit_tests as kvm_unit_tests_table
from tests.kvm_unit_tests.__main__ import not_run_reason
from tests.kvm_unit_tests.config import invocation, parse
from tests.kvm_unit_tests.expected import EXPECTED, Expectation
from tests.kvm_unit_tests.runner import parse_summary, verdict

CFG = """
# comment
[ioapic]
file = ioapic.flat
smp = 4
qemu_params = -cpu qemu64,+x2apic -m 2048
arch = x86_64

[vmexit_cpuid]
file = vmexit.flat
test_args = 'cpuid'
groups = vmexit

[old_style]
file = old.flat
extra_params = -cpu max -append "a b" -device pc-testdev
timeout = 30

[kvmclock_test]
file = kvmclock_test.flat
test_args = "10000000 `echo 42`"

[manual]
file = m.flat
groups = vmx nodefault

[cmpxchg8b]
file = cmpxchg8b.flat
arch = i386
"""


def test_sections_and_keys_are_read() -> None:
    tests = {t.name: t for t in parse(CFG)}
    assert list(tests) == ["ioapic", "vmexit_cpuid", "old_style", "kvmclock_test", "manual", "cmpxchg8b"]
    assert (tests["ioapic"].smp, tests["ioapic"].arch, tests["ioapic"].timeout) == (4, "x86_64", 90.0)
    assert (tests["vmexit_cpuid"].file, tests["vmexit_cpuid"].test_args) == ("vmexit.flat", "cpuid")
    assert (tests["old_style"].test_args, tests["old_style"].timeout) == ("a b", 30.0)
    assert tests["old_style"].qemu_params == "-cpu max -device pc-testdev"


def test_what_hvcore_honours_and_what_it_lists_as_not_honoured() -> None:
    tests = {t.name: t for t in parse(CFG)}
    ioapic = invocation(tests["ioapic"])
    assert (ioapic.cpus, ioapic.memory, ioapic.cmdline) == (4, "2048M", "")
    assert ioapic.not_honoured == ("-cpu qemu64,+x2apic",)
    assert invocation(tests["kvmclock_test"]).cmdline == "10000000 42"  # the shell's expansion, as run_tests.sh
    assert invocation(tests["old_style"], timeout_scale=2).timeout == 60
    assert invocation(tests["old_style"]).not_honoured == ("-cpu max", "-device pc-testdev")
    assert invocation(tests["ioapic"]).arguments()[:6] == ["--cpus", "4", "--memory", "2048M", "--cmdline", ""]


def test_tests_that_are_not_run_say_why() -> None:
    tests = {t.name: t for t in parse(CFG)}
    assert not_run_reason(tests["ioapic"]) is None
    assert "manual-only" in (not_run_reason(tests["manual"]) or "")
    assert "i386 only" in (not_run_reason(tests["cmpxchg8b"]) or "")


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(1, "pass"), (3, "fail"), (77, "skip"), (127, "fail"), (255, "fail"), (124, "timeout"), (0, "error"),
     (2, "error"), (4, "error"), (6, "error")],
)  # fmt: skip
def test_the_exit_status_is_read_as_kvm_unit_tests_does(status: int, outcome: str) -> None:
    """Odd: the guest's verdict; 124: hvcore run's --timeout; any other even status: hvcore's own error."""
    assert verdict(status) == outcome


def test_the_summary_line_gives_the_counts() -> None:
    assert parse_summary("PASS: a\nSUMMARY: 13 tests, 4 unexpected failures, 2 skipped\n") == (7, 4, 2)
    assert parse_summary("SUMMARY: 3 tests\nSUMMARY: 5 tests, 1 known failures\n") == (4, 0, 0)
    assert parse_summary("no summary") is None


def test_expected_outcomes_hold_the_simulator_to_qemu_tcg() -> None:
    """Where QEMU's TCG passes a test with the same arguments, the simulator must, unless it needs what hvcore lacks."""
    assert EXPECTED, "the table is empty"
    for name, entry in EXPECTED.items():
        if entry.qemu_tcg == "pass" and not entry.needs:
            assert entry.sim == "pass", f"{name} passes on QEMU's TCG: the simulator must pass it"


def test_an_unexplained_expectation_is_refused() -> None:
    with pytest.raises(ValueError, match="say why"):
        Expectation("t", qemu_tcg="fail", sim="fail", kvm="pass", why_sim="")
    with pytest.raises(ValueError, match="not one of"):
        Expectation("t", qemu_tcg="pass", sim="great", kvm="pass")


def test_the_docs_table_is_the_expected_one() -> None:
    """The docs' kvm-unit-tests table (generated at build time) gives each test's outcomes as ``expected.py`` does."""
    page = (Path(__file__).parents[2] / "docs" / "kvm-unit-tests.md").read_text()
    assert "<!-- generated: kvm-unit-tests -->" in page, "docs/kvm-unit-tests.md no longer shows the table"
    table = kvm_unit_tests_table()
    rows = {line.split("|")[1].strip().strip("`"): line for line in table.splitlines() if line.startswith("| `")}
    assert list(rows) == list(EXPECTED)
    for name, entry in EXPECTED.items():
        cells = [c.strip() for c in rows[name].split("|")[2:5]]
        assert cells == [entry.qemu_tcg, entry.sim, entry.kvm], name
        for why in (entry.why_sim, entry.why_kvm):
            assert why.replace("|", "\\|") in rows[name], f"{name}: the reason {why!r} is not in its row"
