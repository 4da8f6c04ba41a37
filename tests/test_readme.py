"""The README's example runs and prints what it says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import hvcore
from hvcore.host.known import DEVIATIONS
from hvcore.vmm.run import ExitStatus

README = Path(__file__).resolve().parent.parent / "README.md"


def test_minimal_vmm_example_prints_5(capsys: pytest.CaptureFixture[str], backend_name: str) -> None:
    if hvcore.available_backends().get(backend_name) is not None:
        pytest.skip(f"backend {backend_name!r} unusable here: {hvcore.available_backends()[backend_name]}")
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert block is not None
    source = block.group(1).replace('open_hypervisor("auto")', f"open_hypervisor({backend_name!r})")
    exec(compile(source, "README.md", "exec"), {})
    assert capsys.readouterr().out == "5\n"


def test_every_host_deviation_and_variant_is_in_the_readme() -> None:
    text = README.read_text()
    for deviation in DEVIATIONS:
        row = next((line for line in text.splitlines() if line.startswith(f"| `{deviation.name}` |")), None)
        assert row is not None, f"README: no row for host deviation {deviation.name}"
        for variant in deviation.variants:
            assert f"`{variant}`" in row, f"README: {deviation.name} lacks its variant {variant}"


def test_every_run_exit_status_is_in_the_readme() -> None:
    """The README's "Exit statuses" table has a row for each of ``hvcore run``'s statuses, and the guest's odd ones."""
    text = README.read_text()
    section = text[text.index("### Exit statuses") :]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    for status in ExitStatus:
        row = f"| `{int(status)}` | `{status.name}` | "
        assert any(line.startswith(row) for line in rows), f"README: no row for exit status {status.name}"
    assert any(row.startswith("| odd | | the guest wrote `v` to isa-debug-exit") for row in rows)
