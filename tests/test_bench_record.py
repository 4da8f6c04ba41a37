"""``python -m bench.record``: one file with every benchmark's JSON and the host, as the performance page reads it.

The benchmarks themselves are replaced by stand-ins here (their own tests run them); what is checked
is the file: the host, the command, each benchmark's JSON, and the reason where one wrote nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from bench import io_exit, record, sim_exits, workloads


def _writes(data: object) -> object:
    def main(argv: Sequence[str]) -> int:
        Path(argv[list(argv).index("--json") + 1]).write_text(json.dumps(data))
        return 0

    return main


def test_the_record_holds_each_benchmark_and_the_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sim_exits, "main", _writes({"rows": []}))
    monkeypatch.setattr(io_exit, "main", lambda argv: 0)  # KVM unusable: it says so and writes nothing
    monkeypatch.setattr(workloads, "main", _writes([{"workload": "seabios"}]))
    out = tmp_path / "data" / "bench.json"
    assert record.main([str(out), "--repeat", "1"]) == 0
    data = json.loads(out.read_text())
    assert data["format"] == record.FORMAT
    assert data["sim_exits"] == {"rows": []} and data["workloads"] == [{"workload": "seabios"}]
    assert data["io_exit"] is None and "bench.io_exit wrote no results" in data["io_exit_missing"]
    assert set(data["host"]) >= {"kernel", "cpu_model", "kvm_module", "cpus", "python", "unicorn"}
    assert data["command"].startswith("python -m bench.record")
