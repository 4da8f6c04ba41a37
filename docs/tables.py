"""The tables the docs generate at build time, from the project's own registries and recorded results.

A page asks for one with a line ``<!-- generated: NAME -->`` (:data:`GENERATORS` names them); the
hook (:mod:`docs.hooks`) puts the table there. Nothing here is copied by hand:

- ``host-deviations``: :data:`hvcore.host.known.DEVIATIONS` (each deviation, upstream's behaviour,
  the registered variants);
- ``simulator-quirks``: the simulator's entries of ``tests.quirks.REGISTRY``;
- ``kvm-unit-tests``: ``tests.kvm_unit_tests.expected.EXPECTED``;
- ``performance``: ``docs/data/bench.json``, written by ``python -m bench.record`` on some host,
  with that host named above the numbers;
- ``changelog``: ``CHANGELOG.md``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from hvcore.host.known import DEVIATIONS
from tests.kvm_unit_tests.expected import EXPECTED, Expectation
from tests.quirks import HOST_QUIRKS, REGISTRY

__all__ = [
    "BENCH_DATA",
    "GENERATORS",
    "ROOT",
    "changelog",
    "host_deviations",
    "kvm_unit_tests",
    "markdown_table",
    "performance",
    "simulator_quirks",
]

ROOT: Final = Path(__file__).resolve().parent.parent
"""The repository."""
BENCH_DATA: Final = ROOT / "docs" / "data" / "bench.json"
"""The recorded benchmark results the performance page shows (``python -m bench.record docs/data/bench.json``)."""


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; cells are put on one line and their ``|`` escaped."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def host_deviations() -> str:
    """Every registered host deviation: what upstream KVM does, each variant and what a host showing it does."""
    rows = []
    for deviation in DEVIATIONS:
        variants = "; ".join(f"`{name}`: {text}" for name, text in deviation.variants.items())
        rows.append((f"`{deviation.name}`", deviation.upstream, variants, deviation.reason))
    return markdown_table(("deviation", "upstream KVM", "registered variants", "where seen, and why"), rows)


def simulator_quirks() -> str:
    """The simulator's entries of the quirks registry: why, what upstream KVM does, what the simulator does."""
    hosts = {q.name for q in HOST_QUIRKS}
    rows = [(f"`{q.name}`", q.upstream, q.instead, q.reason) for q in REGISTRY if q.name not in hosts]
    return markdown_table(("quirk", "upstream KVM", "the simulator instead", "why"), rows)


def _why(entry: Expectation) -> str:
    if entry.why_sim and entry.why_sim == entry.why_kvm:
        return f"sim, KVM: {entry.why_sim}"
    reasons = [f"sim: {entry.why_sim}" if entry.why_sim else "", f"KVM: {entry.why_kvm}" if entry.why_kvm else ""]
    return "; ".join(r for r in reasons if r)


def kvm_unit_tests() -> str:
    """Every kvm-unit-test's expected outcome on QEMU's TCG, the simulator and the development host's KVM, and why."""
    rows = [(f"`{e.test}`", e.qemu_tcg, e.sim, e.kvm, _why(e)) for e in EXPECTED.values()]
    return markdown_table(("test", "QEMU TCG", "simulator", "KVM (development host)", "why not a pass"), rows)


def _host_line(data: Mapping[str, Any]) -> str:
    host = data["host"]
    return (
        f"Recorded {data['recorded']} by `{data['command']}` on Linux {host['kernel']}, {host['cpu_vendor']} "
        f"{host['cpu_model']} ({host['cpus']} CPUs), KVM module `{host['kvm_module']}`, {host['python']}, "
        f"Unicorn {host['unicorn']}. Another host, or the same one under another load, gives other numbers."
    )


def _number(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None else f"{value / scale:,.{digits}f}"


def _sim_exits(data: Mapping[str, Any] | None, missing: str | None) -> str:
    if data is None:
        return f"*Not recorded: {missing}*"
    rows = []
    for row in data["rows"]:
        per_exit = row["unit"] == "ns/exit"
        scale, unit, digits = (1000.0, "µs", 2) if per_exit else (1.0, "M instr/s", 0)
        rows.append((
            row["name"],
            f"{_number(row['raw_median'], scale, digits)} {unit}",
            f"{_number(row['hvcore_median'], scale, digits)} {unit}",
            _number(row["ratio"]),
            ("≥ " if row["higher_is_better"] else "≤ ") + f"{row['target']:.2f}",
            "met" if row["met"] else "missed",
        ))  # fmt: skip
    table = markdown_table(("row", "raw Unicorn", "simulator", "simulator / raw", "target", "verdict"), rows)
    exits, instructions = f"{data['repeat']} x {data['exits']:,} exits", f"{data['instructions']:,} instructions"
    return f"{table}\n\nMedians of {exits}; throughput over {instructions}."


def _io_exit(data: Mapping[str, Any] | None, missing: str | None) -> str:
    if data is None:
        return f"*Not recorded: {missing}*"
    rows = [
        (row["mode"], _number(row["c_ns"], digits=0), _number(row["bare_ns"], digits=0),
         _number(row["hvcore_ns"], digits=0), _number(row["hvcore_over_bare"], digits=3),
         "met" if row["met"] else "missed")
        for row in data["rows"]
    ]  # fmt: skip
    headers = ("mode", "C (ns)", "bare Python (ns)", "hvcore (ns)", "hvcore / bare", f"target ≤ {data['target']:.2f}")
    return f"{markdown_table(headers, rows)}\n\nMedians of {data['repeat']} x {data['exits']:,} exits."


def _workloads(data: Sequence[Mapping[str, Any]] | None, missing: str | None) -> str:
    if data is None:
        return f"*Not recorded: {missing}*"
    rows = []
    for run in data:
        if run["skipped"] is not None:
            result = f"skipped: {run['skipped']}"
        elif run["failed"] is not None:
            result = f"failed: {run['failed']}"
        else:
            result = "reached its marker"
        ok = run["skipped"] is None and run["failed"] is None
        startup = f"{run['startup']:.3f} s" if ok else "-"
        guest = f"{run['guest']:.3f} s" if ok else "-"
        exits = ", ".join(f"{k} {v:,}" for k, v in sorted(run["exits"].items(), key=lambda kv: -kv[1]) if v)
        rows.append((run["workload"], run["runner"], startup, guest, result, exits))
    table = markdown_table(("workload", "runner", "start-up", "guest", "result", "hvcore's exits"), rows)
    times = {(r["workload"], r["runner"]): r["guest"] for r in data if r["skipped"] is None and r["failed"] is None}
    ratios = [
        f"{workload}: {top} / {bottom} {times[(workload, top)] / times[(workload, bottom)]:.2f}x"
        for workload in dict.fromkeys(r["workload"] for r in data)
        for top, bottom in (("hvcore-sim", "qemu-tcg"), ("hvcore-kvm", "qemu-kvm"))
        if times.get((workload, top)) and times.get((workload, bottom))
    ]
    return table + ("\n\nGuest-time ratios: " + "; ".join(ratios) + "." if ratios else "")


def performance(path: Path = BENCH_DATA) -> str:
    """The recorded benchmark results (``bench.record``'s JSON), under the host they were measured on."""
    data = json.loads(path.read_text())
    return "\n\n".join((
        "!!! note \"Measured on one host\"\n    " + _host_line(data),
        "### Simulator exits against raw Unicorn (`bench.sim_exits`)",
        _sim_exits(data["sim_exits"], data.get("sim_exits_missing")),
        "### KVM IO-exit round trip (`bench.io_exit`)",
        _io_exit(data["io_exit"], data.get("io_exit_missing")),
        "### Whole workloads (`bench.workloads`)",
        _workloads(data["workloads"], data.get("workloads_missing")),
    ))  # fmt: skip


def changelog(path: Path = ROOT / "CHANGELOG.md") -> str:
    """``CHANGELOG.md`` without its title (the page has its own)."""
    lines = path.read_text().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join(lines).strip()


GENERATORS: Final[Mapping[str, Callable[[], str]]] = {
    "host-deviations": host_deviations,
    "simulator-quirks": simulator_quirks,
    "kvm-unit-tests": kvm_unit_tests,
    "performance": performance,
    "changelog": changelog,
}
"""Each generated table's name (``<!-- generated: NAME -->``) and its generator."""
