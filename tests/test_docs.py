"""The documentation site's generated parts say what their sources say, and the pages ask for them.

The tables are generated when the site is built (``docs/hooks.py``, ``nox -s docs``); these tests
check the generators against the registries without building it, and the hand-written tables that
document code (``hvcore run``'s exit statuses) against the code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from docs import apiref, tables
from hvcore.host.known import DEVIATIONS
from hvcore.vmm.run import ExitStatus
from tests.quirks import HOST_QUIRKS, REGISTRY

DOCS = Path(__file__).resolve().parent.parent / "docs"
GENERATED = re.compile(r"^<!-- generated: ([a-z0-9-]+) -->$", re.MULTILINE)


def _rows(table: str) -> dict[str, str]:
    """A generated table's rows by their first cell (backticks stripped)."""
    return {line.split("|")[1].strip().strip("`"): line for line in table.splitlines() if line.startswith("| `")}


def test_every_host_deviation_and_variant_is_in_the_generated_table() -> None:
    rows = _rows(tables.host_deviations())
    for deviation in DEVIATIONS:
        assert deviation.name in rows, f"no row for host deviation {deviation.name}"
        for variant in deviation.variants:
            assert f"`{variant}`" in rows[deviation.name], f"{deviation.name} lacks its variant {variant}"


def test_every_simulator_quirk_is_in_the_generated_table() -> None:
    rows = _rows(tables.simulator_quirks())
    hosts = {q.name for q in HOST_QUIRKS}
    assert set(rows) == {q.name for q in REGISTRY if q.name not in hosts}


def test_the_pages_ask_for_every_generated_table_and_only_those() -> None:
    asked = {name: page.name for page in DOCS.glob("*.md") for name in GENERATED.findall(page.read_text())}
    assert set(asked) == set(tables.GENERATORS)
    assert asked["host-deviations"] == asked["simulator-quirks"] == "conformance.md"
    assert asked["kvm-unit-tests"] == "kvm-unit-tests.md"
    assert asked["performance"] == "performance.md"


def test_every_run_exit_status_is_on_the_cli_page() -> None:
    """The CLI page's "Exit statuses" table: a row for each of ``hvcore run``'s statuses, and the guest's odd ones."""
    text = (DOCS / "cli.md").read_text()
    section = text[text.index("## Exit statuses") :]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    for status in ExitStatus:
        row = f"| `{int(status)}` | `{status.name}` | "
        assert any(line.startswith(row) for line in rows), f"docs/cli.md: no row for exit status {status.name}"
    assert any(row.startswith("| odd | | the guest wrote `v` to isa-debug-exit") for row in rows)


def test_the_performance_page_names_the_host_of_the_recorded_results() -> None:
    data = json.loads(tables.BENCH_DATA.read_text())
    page = tables.performance()
    assert data["format"] == 1
    assert f"Linux {data['host']['kernel']}" in page and data["recorded"] in page
    for row in data["sim_exits"]["rows"] if data["sim_exits"] else ():
        assert f"| {row['name']} |" in page


def test_every_public_module_is_on_an_api_page() -> None:
    pages = [(f"api/{p.name}", p.read_text()) for p in sorted((DOCS / "api").glob("*.md"))]
    plan = apiref.plan(pages)
    assert plan.unclaimed == [] and plan.missing == []
    rendered = {identifier for identifier in plan.expected()}
    assert {"hvcore.Hypervisor", "hvcore.vmm.Machine", "hvcore.x86.real_mode_sregs"} <= rendered


def test_a_re_exported_name_renders_once_where_its_package_exports_it() -> None:
    pages = [("api/a.md", "<!-- api: hvcore.vmm.pci.* -->")]
    sections = {s.module: s for s in apiref.plan(pages).sections()}
    assert "PciHost" in sections["hvcore.vmm.pci"].members
    assert "PciHost" not in sections["hvcore.vmm.pci.host"].members
    assert dict(sections["hvcore.vmm.pci"].groups)["hvcore.vmm.pci.host"][0] in {"CONFIG_PORT", "PciHost"}
