"""The simulator benchmark (``bench/sim_exits.py``) runs its code paths and reports a sane structure.

Timings are never asserted: only that every row, loop and field is there and positive, and that
the raw Unicorn loops and hvcore's do the same guest work. Tiny counts keep it well under 5 s;
everything skips where the simulator (Unicorn) is unusable.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import hvcore
from bench import sim_exits
from hvcore import Hypervisor
from tests.boot import boot
from tests.guests import long_mode
from tests.guests.long_mode import OUT_LOOP

REPEAT = 3
EXIT_ROWS = ("IO exit", "MMIO write", "MMIO read")

# The guests' source, as their comments give it (GNU as, Intel syntax, 64-bit).
GUEST_SOURCES = {
    "MMIO_WRITE_LOOP": "loop: mov dword ptr [0xD0000], eax\n jmp loop\n",
    "MMIO_READ_LOOP": "loop: mov eax, dword ptr [0xD0000]\n jmp loop\n",
    "COUNT_LOOP": "loop: add rax, rcx\n xor rdx, rax\n dec rcx\n jnz loop\n hlt\n",
}


@pytest.fixture
def sim() -> Iterator[Hypervisor]:
    """The simulator, or a skip with its reason."""
    reason = sim_exits.sim_unusable_reason()
    if reason is not None:
        pytest.skip(f"the simulator is unusable here: {reason}")
    with hvcore.open_hypervisor("sim") as hypervisor:
        yield hypervisor


def _positive(values: tuple[float, ...], count: int) -> None:
    assert len(values) == count
    assert all(v > 0 for v in values)


@pytest.mark.parametrize("name", sorted(GUEST_SOURCES))
def test_guest_bytes_are_what_gnu_as_assembles(name: str, tmp_path: Path) -> None:
    assembler, objcopy = shutil.which("as"), shutil.which("objcopy")
    if assembler is None or objcopy is None:
        pytest.skip("GNU as / objcopy not found")
    source = tmp_path / "guest.s"
    source.write_text(".intel_syntax noprefix\n.code64\n" + GUEST_SOURCES[name])
    subprocess.run([assembler, "--64", "-o", str(tmp_path / "guest.o"), str(source)], check=True)
    subprocess.run([objcopy, "-O", "binary", "-j", ".text", str(tmp_path / "guest.o"), str(tmp_path / "g")], check=True)
    assert (tmp_path / "g").read_bytes() == getattr(sim_exits, name)


def test_raw_and_hvcore_loops_do_the_same_guest_work(sim: Hypervisor) -> None:
    n = 5
    with sim.create_vm() as vm_io, sim.create_vm() as vm_w, sim.create_vm() as vm_r, sim.create_vm() as vm_c:
        io = boot(sim, vm_io, OUT_LOOP, "long", rax=sim_exits.OUT_VALUE)
        raw_io = sim_exits.RawUnicorn(OUT_LOOP, rax=sim_exits.OUT_VALUE)
        raw_io.add_out_hook()
        expected = n * sim_exits.OUT_VALUE
        assert sim_exits.raw_io_loop(raw_io, n) == expected
        assert sim_exits.hvcore_io_loop(io, n) == expected
        assert sim_exits.engine_io_loop(io, n) == expected
        assert sim_exits.tracker_io_loop(io, n) == expected
        assert sim_exits.hvcore_io_loop(io, n) == expected  # the vCPU is consistent after the breakdown loops

        write = boot(sim, vm_w, sim_exits.MMIO_WRITE_LOOP, "long", rax=sim_exits.WRITE_VALUE)
        raw_w = sim_exits.RawUnicorn(sim_exits.MMIO_WRITE_LOOP, rax=sim_exits.WRITE_VALUE)
        raw_w.add_mmio()
        expected = n * sim_exits.WRITE_VALUE
        assert sim_exits.raw_mmio_loop(raw_w, n) == expected
        assert sim_exits.hvcore_mmio_write_loop(write, n) == expected
        assert sim_exits.tracker_mmio_write_loop(write, n) == expected
        assert sim_exits.hvcore_mmio_write_loop(write, n) == expected

        read = boot(sim, vm_r, sim_exits.MMIO_READ_LOOP, "long")
        raw_r = sim_exits.RawUnicorn(sim_exits.MMIO_READ_LOOP)
        raw_r.add_mmio()
        assert sim_exits.raw_mmio_loop(raw_r, n) == n
        assert sim_exits.hvcore_mmio_read_loop(read, n) == n
        assert sim_exits.tracker_mmio_read_loop(read, n) == n
        assert sim_exits.hvcore_mmio_read_loop(read, n) == n
        # every answered load landed in eax; rip stays at the load waiting to be replayed
        assert raw_r.reg("rax") == sim_exits.READ_ANSWER
        assert read.get_regs().rax == sim_exits.READ_ANSWER
        assert raw_r.reg("rip") == read.get_regs().rip

        count = boot(sim, vm_c, sim_exits.COUNT_LOOP, "long", rdx=0)  # rdx: KVM's reset value 0x600 otherwise
        raw_c = sim_exits.RawUnicorn(sim_exits.COUNT_LOOP)
        assert sim_exits.raw_free_run(raw_c, 1000) > 0
        assert sim_exits.hvcore_count_run(count, 1000) > 0
        regs = count.get_regs()
        assert (regs.rax, regs.rdx, regs.rcx) == (raw_c.reg("rax"), raw_c.reg("rdx"), 0)
        assert regs.rip == raw_c.reg("rip") == raw_c.end


def test_bench_runs_every_row(sim: Hypervisor) -> None:
    result = sim_exits.run_bench(
        sim,
        exits=20,
        repeat=REPEAT,
        warmup=2,
        iterations=20_000,
        throughput_repeats=2,
        timeout=10.0,
        part_calls=200,
        profile_exits=20,
    )
    assert tuple(row.name for row in result.rows) == sim_exits.ROWS
    for row in result.rows:
        count = 2 if row.name == "throughput" else REPEAT
        expected = {"raw", "hvcore"}
        if row.name == "IO exit":
            expected |= {"engine", "tracker"}
        elif row.name.startswith("MMIO"):
            expected |= {"tracker"}
        assert set(row.runs) == expected
        for runs in row.runs.values():
            _positive(runs, count)
        assert row.raw > 0
        assert row.hvcore > 0
        assert row.ratio > 0
        assert row.paired_ratio > 0
        assert isinstance(row.met, bool)
    assert result.row("throughput").unit == "Minstr/s"
    assert result.row("throughput").higher_is_better
    assert result.instructions == 4 * 20_000 + 1
    assert result.parts
    for part in result.parts:
        assert part.ns is None or part.ns >= 0
        assert not part.calls or set(part.calls) == set(EXIT_ROWS)
    calls = {part.name: part.calls for part in result.parts}
    assert calls["GuestDebugFlags tests, once per SimVCPU._run"]["IO exit"] == 1
    assert calls["SimVCPU.engine()"]["IO exit"] == 0  # no host write to this VM's memory: no stale-code look
    assert {entry.row for entry in result.profile} == set(EXIT_ROWS)
    report = sim_exits.format_report(result, profile=True)
    for text in (*sim_exits.ROWS, "raw Unicorn", "target", "SimVCPU.run bookkeeping", "cProfile", result.python):
        assert text in report
    data = json.loads(json.dumps(result.to_json()))
    assert {"met", "rows", "parts", "profile", "python", "unicorn"} <= data.keys()
    assert [r["name"] for r in data["rows"]] == list(sim_exits.ROWS)
    assert all(r["raw_median"] > 0 and r["hvcore_median"] > 0 and "met" in r for r in data["rows"])


def test_without_breakdown_only_raw_and_hvcore_run(sim: Hypervisor) -> None:
    result = sim_exits.run_bench(sim, exits=5, repeat=1, warmup=0, iterations=1000, breakdown=False)
    assert all(set(row.runs) == {"raw", "hvcore"} for row in result.rows)
    assert result.parts == ()
    assert result.throughput_repeat == sim_exits.throughput_repeat(1) == 3
    assert "where hvcore's time per exit goes" not in sim_exits.format_report(result)


def test_breakdown_loops_reach_the_simulator_internals(sim: Hypervisor) -> None:
    # if this fails, the simulator changed under the breakdown loops: update bench/sim_exits.py
    with sim.create_vm() as vm:
        assert sim_exits.breakdown_problem(boot(sim, vm, OUT_LOOP, "long")) is None


def test_breakdown_is_skipped_with_a_note_when_the_internals_changed(
    sim: Hypervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sim_exits, "breakdown_problem", lambda vcpu: "no Tracker.run")
    result = sim_exits.run_bench(sim, exits=5, repeat=1, warmup=0, iterations=1000, throughput_repeats=1)
    assert all(set(row.runs) == {"raw", "hvcore"} for row in result.rows)
    assert result.parts == ()
    assert "breakdown skipped: no Tracker.run" in sim_exits.format_report(result)


def test_targets() -> None:
    def row(name: str, raw: float, hv: float) -> sim_exits.Row:
        throughput = name == "throughput"
        target = sim_exits.TARGET_THROUGHPUT if throughput else sim_exits.TARGET_EXIT
        return sim_exits.Row(name, "u", target, throughput, {"raw": (raw,), "hvcore": (hv,)})

    assert row("IO exit", 100, 125).met
    assert not row("IO exit", 100, 135).met
    assert row("throughput", 100, 55).met
    assert not row("throughput", 100, 45).met


def test_main_writes_json(sim: Hypervisor, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bench.json"
    argv = ["--exits", "10", "--repeat", "1", "--iterations", "1000", "--no-breakdown", "--json", str(path)]
    assert sim_exits.main(argv) == 0
    out = capsys.readouterr().out
    assert "IO exit" in out
    assert "unicorn" in out
    data = json.loads(path.read_text())
    assert [r["name"] for r in data["rows"]] == list(sim_exits.ROWS)


def test_main_without_unicorn_says_so(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sim_exits, "sim_unusable_reason", lambda: "unicorn is not installed")
    assert sim_exits.main([]) == 0
    assert "cannot run" in capsys.readouterr().out


def test_watchdog_ends_a_guest_that_never_exits(sim: Hypervisor) -> None:
    with sim.create_vm() as vm:
        vcpu = boot(sim, vm, long_mode.SPIN, "long")
        with pytest.raises(sim_exits.BenchError, match="watchdog"), sim_exits.watchdog(vcpu, 0.2, "spin"):
            sim_exits.hvcore_io_loop(vcpu, 1)
        assert not vcpu.immediate_exit
