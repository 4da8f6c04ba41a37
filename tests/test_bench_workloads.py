"""The workload benchmark (``bench/workloads.py``): its table, its skips and failures, one real run of each kind.

Timings are never asserted: only that a run that reached its marker has positive times and a run
that did not prints as failed (or skipped) with its reason and no number. The real runs use
SeaBIOS on the simulator (well under a few seconds) and skip where SeaBIOS or QEMU is missing.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from bench import workloads
from bench.workloads import Images, Outcome, find_images, format_report, run_all, run_hvcore, run_qemu

NUMBER = re.compile(r"\d+\.\d+ s|\d+\.\d+x")


def _seabios_or_skip() -> Images:
    images = find_images()
    if images.seabios is None:
        pytest.skip(images.missing["seabios"])
    return images


def test_report_shows_numbers_only_for_runs_that_reached_their_marker() -> None:
    outcomes = [
        Outcome("seabios", "hvcore-sim", startup=0.5, guest=2.0, exits={"IoExit": 2079, "unclaimed_io_reads": 0}),
        Outcome("seabios", "qemu-tcg", startup=0.1, guest=0.5),
        Outcome("seabios", "hvcore-kvm", failed="timed out before the marker", exits={"IoExit": 7}),
        Outcome("seabios", "qemu-kvm", skipped="KVM unusable: no /dev/kvm"),
    ]
    report = format_report(outcomes)
    rows = {line.split()[1]: line for line in report.splitlines() if line.startswith("seabios ")}
    assert "FAILED: timed out before the marker" in rows["hvcore-kvm"]
    assert "skipped: KVM unusable: no /dev/kvm" in rows["qemu-kvm"]
    assert not NUMBER.search(rows["hvcore-kvm"]) and not NUMBER.search(rows["qemu-kvm"])
    assert "2.000 s" in rows["hvcore-sim"] and "2.500 s" in rows["hvcore-sim"]  # guest, total
    assert re.search(r"hvcore-sim / qemu-tcg\s+4\.00x", report)
    ratio = next(line for line in report.splitlines() if "hvcore-kvm / qemu-kvm" in line)
    assert "n/a" in ratio and not NUMBER.search(ratio)
    assert "IoExit 2,079" in report and "unclaimed_io_reads" not in report  # zero counts left out


def test_missing_images_skip_every_runner_with_the_reason(tmp_path: Path) -> None:
    images = find_images({}, cache=tmp_path)
    assert set(images.missing) == {"seabios", "linux"} or images.seabios is not None  # /usr/share/seabios
    images = replace(images, missing={"seabios": "SeaBIOS not found", "linux": "kernel or busybox not found"})
    outcomes = run_all(workloads.WORKLOADS, workloads.RUNNERS, images, workloads.DEFAULT_TIMEOUTS)
    assert len(outcomes) == len(workloads.WORKLOADS) * len(workloads.RUNNERS)
    assert all(o.skipped is not None and not o.ok for o in outcomes)
    assert {o.skipped for o in outcomes if o.workload == "linux"} == {"kernel or busybox not found"}


def test_qemu_command_matches_the_hvcore_machine(tmp_path: Path) -> None:
    images = Images(seabios=Path("bios.bin"), kernel=Path("vmlinuz"), initrd=Path("initrd"))
    seabios = workloads.qemu_command("seabios", "tcg", images, tmp_path / "qmp")
    assert {"-nodefaults", "-no-reboot", "-S"} <= set(seabios)
    assert seabios[seabios.index("-m") + 1] == "256"
    assert "isa-debugcon,iobase=0x402,chardev=out" in seabios  # the debug console on the pipe
    linux = workloads.qemu_command("linux", "kvm", images, tmp_path / "qmp")
    assert linux[linux.index("-serial") + 1] == "stdio" and "pc,accel=kvm" in linux


def test_seabios_on_the_simulator_reaches_its_marker() -> None:
    images = _seabios_or_skip()
    outcome = run_hvcore("seabios", "sim", images, timeout=60)
    if outcome.skipped is not None:
        pytest.skip(outcome.skipped)
    assert outcome.ok, outcome.failed
    assert outcome.startup is not None and outcome.startup > 0
    assert outcome.guest is not None and outcome.guest > 0
    assert outcome.exits["IoExit"] > 0


def test_a_run_past_its_timeout_prints_as_failed() -> None:
    images = _seabios_or_skip()
    outcome = run_hvcore("seabios", "sim", images, timeout=0.001)
    if outcome.skipped is not None:
        pytest.skip(outcome.skipped)
    assert not outcome.ok and outcome.guest is None
    assert outcome.failed is not None and "timed out" in outcome.failed
    assert "FAILED: timed out" in format_report([outcome])


def test_qemu_that_cannot_start_prints_as_failed(tmp_path: Path) -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 not installed")
    images = Images(seabios=tmp_path / "no-such-bios.bin")
    outcome = run_qemu("seabios", "tcg", images, timeout=30, marker=workloads.SEABIOS_MARKER)
    assert not outcome.ok and outcome.failed is not None, outcome
    assert outcome.guest is None


def test_qemu_tcg_runs_seabios_to_its_marker() -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 not installed")
    outcome = run_qemu("seabios", "tcg", _seabios_or_skip(), timeout=60, marker=workloads.SEABIOS_MARKER)
    assert outcome.ok, outcome.failed
    assert outcome.startup is not None and outcome.guest is not None and outcome.guest > 0


def test_json_holds_every_run_with_its_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--json`` (what ``bench.record`` reads for the docs' performance page) writes each run's fields."""
    missing = Images(missing={"seabios": "SeaBIOS not found", "linux": "kernel or busybox not found"})
    monkeypatch.setattr(workloads, "find_images", lambda: missing)
    out = tmp_path / "runs.json"
    assert workloads.main(["--only", "seabios", "--runners", "hvcore-sim,qemu-tcg", "--json", str(out)]) == 0
    runs = json.loads(out.read_text())
    assert [(r["workload"], r["runner"], r["skipped"], r["guest"]) for r in runs] == [
        ("seabios", "hvcore-sim", "SeaBIOS not found", None),
        ("seabios", "qemu-tcg", "SeaBIOS not found", None),
    ]
    assert runs == workloads.outcomes_to_json([Outcome(**r) for r in runs])
