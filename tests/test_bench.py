"""The IO-exit benchmark (``bench/io_exit.py``) runs its code paths and reports a sane structure.

Timings are never asserted: only that every row and field is there and positive. The KVM
tests use tiny exit counts (well under a second each); they skip where /dev/kvm is unusable.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import io_exit
from hvcore import Hypervisor
from hvcore_kvm import ioctls, kvm_run, uapi
from tests.boot import boot
from tests.guests import long_mode

REPEAT = 3


def _positive(values: tuple[float, ...], count: int) -> None:
    assert len(values) == count
    assert all(v > 0 for v in values)


def test_hard_coded_kvm_run_layout_matches_uapi() -> None:
    assert io_exit.KVM_RUN == ioctls.KVM_RUN
    assert io_exit.EXIT_REASON_OFFSET == kvm_run.EXIT_REASON
    assert io_exit.IMMEDIATE_EXIT_OFFSET == kvm_run.IMMEDIATE_EXIT
    assert kvm_run.offset_of(uapi.KvmRun, "u.io") == io_exit.IO_OFFSET
    raw = uapi.KvmRun()
    raw.exit_reason = 2
    raw.u.io.direction, raw.u.io.size, raw.u.io.port, raw.u.io.count, raw.u.io.data_offset = 1, 4, 0x80, 3, 0x1000
    # the bare loop's one unpack reads exit_reason and the io fields where the kernel puts them
    assert io_exit._EXIT_IO.unpack_from(bytes(raw), io_exit.EXIT_REASON_OFFSET) == (2, 1, 4, 0x80, 3, 0x1000)


def test_bench_runs_every_row(kvm: Hypervisor) -> None:
    result = io_exit.run_bench(kvm, exits=40, repeat=REPEAT, warmup=5, timeout=10.0, alone_calls=300)
    assert [row.mode for row in result.rows] == list(io_exit.MODES)
    gcc = shutil.which("gcc") is not None
    for row in result.rows:
        for runs in (row.bare_runs, row.hvcore_runs, row.decode_runs, row.lock_runs):
            _positive(runs, REPEAT)
        assert row.bare_ns > 0
        assert row.hvcore_ns > 0
        assert row.hvcore_over_bare > 0
        assert row.decode_ns is not None
        assert row.lock_ns is not None
        assert row.rest_ns is not None
        if gcc:
            _positive(row.c_runs, REPEAT)
            assert row.c_skipped is None
            assert row.c_ns is not None
            assert row.bare_over_c is not None
            assert row.hvcore_over_c is not None
        else:
            assert row.c_ns is None
            assert row.c_skipped
    assert result.alone is not None
    assert result.alone.decode_exit > 0
    assert result.kvm_api == 12
    assert isinstance(result.met, bool)
    report = io_exit.format_report(result)
    for text in ("CPL0", "CPL3", "target", "decode_exit", "claim and kick bookkeeping", result.python):
        assert text in report
    data = json.loads(json.dumps(result.to_json()))
    assert {"met", "rows", "python", "alone"} <= data.keys()
    assert all({"bare_ns", "hvcore_ns", "c_ns", "hvcore_over_bare", "met"} <= r.keys() for r in data["rows"])


def test_without_gcc_the_c_row_is_skipped_with_a_reason(kvm: Hypervisor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    result = io_exit.run_bench(kvm, exits=10, repeat=1, warmup=0, breakdown=False)
    for row in result.rows:
        assert row.c_ns is None
        assert row.c_runs == ()
        assert row.c_skipped == "gcc not found"
        assert row.decode_ns is None
        assert row.bare_ns > 0
        assert row.hvcore_ns > 0
    assert "C loop skipped" in io_exit.format_report(result)


def test_main_writes_json(kvm: Hypervisor, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bench.json"
    assert io_exit.main(["--exits", "10", "--repeat", "1", "--no-breakdown", "--no-c", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "CPL0" in out
    assert "Python" in out
    data = json.loads(path.read_text())
    assert [r["mode"] for r in data["rows"]] == ["CPL0", "CPL3"]
    assert all(r["bare_ns"] > 0 and r["hvcore_ns"] > 0 for r in data["rows"])


def test_main_without_kvm_says_so(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(io_exit, "kvm_unusable_reason", lambda: "no /dev/kvm here")
    assert io_exit.main([]) == 0
    assert "cannot run" in capsys.readouterr().out
    assert io_exit.main(["--require-kvm"]) == 1


@pytest.mark.parametrize("loop", ["bare", "hvcore"])
def test_watchdog_ends_a_guest_that_never_exits(kvm: Hypervisor, loop: str) -> None:
    with kvm.create_vm() as vm:
        vcpu = boot(kvm, vm, long_mode.SPIN, "long")
        fd, run = vcpu._fd, vcpu._run  # type: ignore[attr-defined]

        def spin() -> None:
            with io_exit.watchdog(vcpu, 0.2, loop):
                if loop == "bare":
                    io_exit.bare_loop(fd, run, 1)
                else:
                    io_exit.hvcore_loop(vcpu, 1)

        with pytest.raises(io_exit.BenchError, match="watchdog"):
            spin()
        assert not vcpu.immediate_exit
