"""Simulator exits and guest throughput against raw Unicorn (``python -m bench.sim_exits``).

Each row runs the same guest code two ways in one process, interleaved:

- **hvcore**: the ``sim`` backend through the protocol, as a VMM writes it: ``vcpu.run()`` and a
  ``match`` on the exit (plus ``vcpu.complete(value)`` for an MMIO read). The guest is put in
  64-bit long mode by ``tests.boot.boot(hv, vm, code, "long")`` (paging on, identity map).
- **raw Unicorn**: the least a Unicorn-based VMM must do to get the same exits: a bare
  ``unicorn.Uc(UC_ARCH_X86, UC_MODE_64)``, RAM mapped with ``mem_map`` over 0 ..
  ``layout.RAM_SIZE`` with the code at ``layout.CODE``, the fresh engine's flat 64-bit state (no
  paging: a Unicorn VMM need not build page tables to run 64-bit code), one hook or MMIO region,
  and a stop/resume loop ``emu_start(rip, 0, 0, SLICE)`` in count mode (``SLICE`` is
  ``hvcore_sim.vcpu.SLICE``, the simulator's own slice; count mode is what gives precise stops),
  reading RIP back after each run (``emu_start`` needs it: it sets RIP to ``begin``).

The rows:

- **IO exit**: ``tests.guests.long_mode.OUT_LOOP`` (``out 0x80, al; jmp``). Raw: a
  ``UC_HOOK_INSN`` OUT hook that records ``(port, size, value)`` and calls ``emu_stop``; RIP is
  already past the OUT, so resuming at RIP continues the loop. One ``emu_start`` per exit.
- **MMIO write**: ``MMIO_WRITE_LOOP`` (``mov [0xD0000], eax; jmp``). Raw: ``mmio_map`` of one
  page at ``layout.MMIO``; a new access is recorded and stops the engine, which aborts the store
  (Unicorn leaves RIP at it, with no effect). The raw loop resumes at that RIP with a
  ``replay`` flag: the callback swallows the access it already reported (without stopping), the
  store completes, the loop runs on, and the next store is the next exit. One ``emu_start`` per
  exit: this is the minimum, since a stop in the callback always aborts the instruction and the
  VMM must get past it somehow; replaying it inside the next slice costs nothing extra. It
  differs from KVM (and hvcore) only in where RIP is while the VMM handles the exit (at the
  store, not past it).
- **MMIO read**: ``MMIO_READ_LOOP`` (``mov eax, [0xD0000]; jmp``). Raw: the same callbacks;
  the loop records the exit, takes the VMM's answer (``READ_ANSWER``) and resumes with
  ``replay``: the callback answers the reported load from it without stopping, so the load
  completes with the VMM's value, and stops at the next (new) load. One ``emu_start`` per exit,
  and exactly KVM's semantics (RIP stays at the load until the next run finishes it). A callback
  that answered every load itself without stopping would be a device model, not an exit.
- **throughput**: ``COUNT_LOOP``, ``ITERATIONS`` x (``add; xor; dec; jnz``) then ``hlt``, no exit
  until the HLT. hvcore: one ``run()`` (the simulator slices it itself, in blocks: a fast run).
  Raw: one ``emu_start`` without hooks and without count mode, free-running to the ``hlt``
  (Unicorn's own speed). Reported in millions of guest instructions per second.

Targets (from the issue): hvcore's time per exit within ``TARGET_EXIT`` (1.3x) of raw Unicorn's,
hvcore's throughput at least ``TARGET_THROUGHPUT`` (0.5x) of free-running raw Unicorn's. Timings are
reported, never asserted.

The breakdown (default on) adds loops on the same vCPUs that cut hvcore's per-exit time into
layers: **engine** (IO row: the raw loop's statements driving the simulator's own engine, so its
paging, MMIO gap mappings and OUT hook with its exit objects), **tracker** (``Tracker.run`` /
``finish_instruction`` / ``complete`` driven directly: everything but ``SimVCPU.run``'s
bookkeeping). Code that exits every few instructions runs counted
(``hvcore_sim.blocks.ExitDensity``), so after its first exits the hvcore loop, and the breakdown
loops on the same engine, run counted. It then times the simulator's parts alone on a live vCPU
(``Engine.get_regs``, ``_blob``, the VM lock, ``engine()``, ``_drop_stale_code``, ...) and counts
with cProfile how often each exit calls them.

Repetitions of all the loops of a row are interleaved with alternating order, so drift hits
every loop alike; each figure is the median. Every loop runs under a watchdog: hvcore loops are
kicked after ``--timeout`` s (the simulator checks kicks between slices); raw loops are bounded
by construction (every ``emu_start`` runs at most ``SLICE`` instructions) and the process exits
if anything still runs ``2 * timeout + 5`` s later.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from types import CodeType
from typing import Any, Final

import hvcore
from bench.watchdog import BenchError, watchdog
from hvcore import VCPU, HltExit, Hypervisor, IoDirection, IoExit, MmioExit
from hvcore_sim.engine import Engine
from hvcore_sim.exits import Stop, StopKind, Tracker
from hvcore_sim.vcpu import SLICE, SimVCPU
from hvcore_sim.vm import AddressSpace, SimVM
from tests.boot import boot
from tests.guests import layout
from tests.guests.long_mode import OUT_LOOP

__all__ = [
    "COUNT_LOOP",
    "DEFAULT_EXITS",
    "DEFAULT_ITERATIONS",
    "DEFAULT_REPEAT",
    "INSTRUCTIONS_PER_ITERATION",
    "MMIO_READ_LOOP",
    "MMIO_WRITE_LOOP",
    "READ_ANSWER",
    "ROWS",
    "TARGET_EXIT",
    "TARGET_THROUGHPUT",
    "WRITE_VALUE",
    "BenchError",
    "Part",
    "ProfileEntry",
    "RawUnicorn",
    "Result",
    "Row",
    "breakdown_problem",
    "engine_io_loop",
    "format_report",
    "hvcore_count_run",
    "hvcore_io_loop",
    "hvcore_mmio_read_loop",
    "hvcore_mmio_write_loop",
    "main",
    "measure_parts",
    "raw_free_run",
    "raw_io_loop",
    "raw_mmio_loop",
    "run_bench",
    "sim_unusable_reason",
    "throughput_repeat",
    "tracker_io_loop",
    "tracker_mmio_read_loop",
    "tracker_mmio_write_loop",
    "watchdog",
]

TARGET_EXIT: Final = 1.30
"""hvcore's time per exit may be at most this many times raw Unicorn's."""

TARGET_THROUGHPUT: Final = 0.50
"""hvcore's guest instructions per second must be at least this fraction of free-running raw Unicorn's."""

_FREE_RUN_BOUND_US: Final = 30_000_000  # a free-running raw loop: stopped by Unicorn's timer after 30 s

DEFAULT_EXITS: Final = 2000
"""Exits per repetition of an exit loop (~4-30 us each here)."""

DEFAULT_REPEAT: Final = 21
"""Repetitions of the exit loops; the throughput rows take ``throughput_repeat(repeat)``."""

DEFAULT_ITERATIONS: Final = 5_000_000
"""Iterations of ``COUNT_LOOP``: 20,000,001 guest instructions per run (~0.015 s free-running)."""

ROWS: Final = ("IO exit", "MMIO write", "MMIO read", "throughput")
"""The rows of the table, in order."""

PORT: Final = 0x80
OUT_VALUE: Final = 0x2A
"""AL for ``OUT_LOOP``: the byte every OUT exit carries."""
WRITE_VALUE: Final = 0x1234_5678
"""EAX for ``MMIO_WRITE_LOOP``: the dword every MMIO write exit carries."""
READ_ANSWER: Final = 0x5A5A_A5A5
"""What both VMMs answer to every MMIO read of ``MMIO_READ_LOOP``."""

# The guests, loaded at layout.CODE (0x1000) and run in 64-bit mode; each byte literal is one
# instruction, assembled with GNU as (`.intel_syntax noprefix`, `.code64`); the comment is the
# source line. tests/test_bench_sim.py assembles the same source and compares.

# Endless loop of 4-byte MMIO writes of eax to layout.MMIO (no slot there): one MMIO write exit
# (0xD0000, len 4, data = eax) per iteration.
MMIO_WRITE_LOOP: Final = (
    b"\x89\x04\x25\x00\x00\x0d\x00"  # loop: mov dword ptr [0xD0000], eax
    b"\xeb\xf7"                      # jmp loop
)  # fmt: skip

# Endless loop of 4-byte MMIO reads of layout.MMIO into eax: one MMIO read exit (0xD0000, len 4)
# per iteration; the answer lands in eax.
MMIO_READ_LOOP: Final = (
    b"\x8b\x04\x25\x00\x00\x0d\x00"  # loop: mov eax, dword ptr [0xD0000]
    b"\xeb\xf7"                      # jmp loop
)  # fmt: skip

# rcx iterations of four integer instructions (a data dependency through rax and rdx), then hlt:
# 4 * rcx + 1 instructions, no exit before the HLT.
COUNT_LOOP: Final = (
    b"\x48\x01\xc8"  # loop: add rax, rcx
    b"\x48\x31\xc2"  # xor rdx, rax
    b"\x48\xff\xc9"  # dec rcx
    b"\x75\xf5"      # jnz loop
    b"\xf4"          # hlt
)  # fmt: skip

INSTRUCTIONS_PER_ITERATION: Final = 4


def _unicorn() -> Any:
    """The unicorn module (imported on use: without it the bench reports why and exits 0)."""
    return importlib.import_module("unicorn")


def sim_unusable_reason() -> str | None:
    """None when the simulator backend (and so Unicorn) is usable here, else why not."""
    try:
        return hvcore.available_backends().get("sim", "no 'sim' backend is registered")
    except hvcore.HvError as exc:
        return str(exc)


def throughput_repeat(repeat: int) -> int:
    """Repetitions of the throughput rows for ``--repeat`` (each takes ~0.25 s): a third, at least 3."""
    return max(3, repeat // 3)


# -- results ------------------------------------------------------------------------------


def _paired(runs: Sequence[float], base: Sequence[float]) -> float | None:
    """Median over the repetitions of ``run - base`` (repetition i of both ran back to back)."""
    if not runs or not base:
        return None
    return statistics.median(a - b for a, b in zip(runs, base, strict=True))


@dataclass(frozen=True)
class Row:
    """One row: every repetition of every loop, in ``unit`` (medians, ratio and verdict as properties).

    ``runs`` maps a loop name to its repetitions: always ``"raw"`` and ``"hvcore"``; with the
    breakdown also ``"engine"`` (IO row) and ``"tracker"`` (exit rows).
    For exit rows the unit is ns per exit and lower is better; for the throughput row it is
    millions of guest instructions per second and higher is better.
    """

    name: str
    unit: str
    target: float
    higher_is_better: bool
    runs: dict[str, tuple[float, ...]]

    def median(self, loop: str) -> float | None:
        """Median of ``loop``'s repetitions (None when that loop did not run)."""
        values = self.runs.get(loop, ())
        return statistics.median(values) if values else None

    @property
    def raw(self) -> float:
        """Median, raw Unicorn."""
        return statistics.median(self.runs["raw"])

    @property
    def hvcore(self) -> float:
        """Median, hvcore."""
        return statistics.median(self.runs["hvcore"])

    @property
    def ratio(self) -> float:
        """hvcore / raw Unicorn (time per exit, or instructions per second)."""
        return self.hvcore / self.raw

    @property
    def paired_ratio(self) -> float:
        """hvcore / raw per repetition, median: less sensitive to the host's slow phases."""
        return statistics.median(h / r for h, r in zip(self.runs["hvcore"], self.runs["raw"], strict=True))

    @property
    def met(self) -> bool:
        """The ratio is within the target."""
        return self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target

    def difference(self, loop: str, base: str) -> float | None:
        """``loop`` minus ``base``, median of the paired repetitions (None if either did not run)."""
        return _paired(self.runs.get(loop, ()), self.runs.get(base, ()))

    def summary(self) -> dict[str, Any]:
        """Medians, ratios and verdict, JSON-able."""
        medians = {f"{loop}_median": self.median(loop) for loop in self.runs}
        return {"ratio": self.ratio, "paired_ratio": self.paired_ratio, "met": self.met, **medians}


@dataclass(frozen=True)
class Part:
    """A piece of the simulator's per-exit work: ns per call timed alone, calls per exit counted by cProfile.

    ``ns`` is None for parts that cannot be timed without a guest (counted only); ``calls`` maps
    an exit row to the calls per exit its hvcore loop makes (absent: not counted).
    """

    name: str
    ns: float | None
    calls: dict[str, float] = field(default_factory=dict)

    def per_exit(self, row: str) -> float | None:
        """Estimated ns per exit in ``row``: ``ns`` x calls."""
        calls = self.calls.get(row)
        return None if self.ns is None or calls is None else self.ns * calls


@dataclass(frozen=True)
class ProfileEntry:
    """One function of cProfile's view of an hvcore exit loop (times inflated by the profiler)."""

    row: str
    function: str
    calls_per_exit: float
    self_us_per_exit: float


@dataclass(frozen=True)
class Result:
    """Everything one bench run measured."""

    python: str
    unicorn: str
    slice: int
    exits: int
    repeat: int
    warmup: int
    iterations: int
    throughput_repeat: int
    rows: tuple[Row, ...]
    parts: tuple[Part, ...] = ()
    profile: tuple[ProfileEntry, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def instructions(self) -> int:
        """Guest instructions per throughput run."""
        return INSTRUCTIONS_PER_ITERATION * self.iterations + 1

    @property
    def met(self) -> bool:
        """Every row meets its target."""
        return all(row.met for row in self.rows)

    def row(self, name: str) -> Row:
        """The row called ``name``."""
        return next(r for r in self.rows if r.name == name)

    def to_json(self) -> dict[str, Any]:
        """The numbers as plain JSON-able data (every repetition, medians, ratios, verdicts, parts)."""
        data = asdict(self)
        data["met"] = self.met
        data["instructions"] = self.instructions
        for row, raw in zip(self.rows, data["rows"], strict=True):
            raw.update(row.summary())
        return data


# -- raw Unicorn ----------------------------------------------------------------------------


class RawUnicorn:
    """A bare ``Uc(UC_ARCH_X86, UC_MODE_64)`` with ``code`` at ``layout.CODE``: what a minimal Unicorn VMM sets up.

    RAM (``mem_map``) covers 0 .. ``layout.RAM_SIZE`` like the hvcore guests' slot 0; the CPU
    keeps a fresh engine's flat 64-bit state (no paging); ``regs`` are set by name (``rax=...``).
    ``add_out_hook()`` and ``add_mmio()`` install the exit sources; the loops below drive it.
    """

    def __init__(self, code: bytes, **regs: int) -> None:
        unicorn = _unicorn()
        self._x86: Any = unicorn.x86_const
        self.uc: Any = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
        self.uc.mem_map(layout.RAM_BASE, layout.RAM_SIZE)
        self.uc.mem_write(layout.CODE, code)
        self.rip_id: int = self._x86.UC_X86_REG_RIP
        self.rip = layout.CODE
        self.end = layout.CODE + len(code)
        for name, value in regs.items():
            self.set_reg(name, value)
        self.io: tuple[int, int, int] | None = None  # (port, size, value) of the last OUT
        self.access: tuple[bool, int, int, int] | None = None  # (write, address, size, value) of the last MMIO exit
        self.replay = False  # the next MMIO access is the one already reported: answer/swallow it, don't stop
        self.answer = 0

    def reg(self, name: str) -> int:
        """Register ``name`` (``"rax"``...)."""
        return int(self.uc.reg_read(getattr(self._x86, f"UC_X86_REG_{name.upper()}")))

    def set_reg(self, name: str, value: int) -> None:
        """Set register ``name``."""
        self.uc.reg_write(getattr(self._x86, f"UC_X86_REG_{name.upper()}"), value)

    def add_out_hook(self) -> None:
        """A ``UC_HOOK_INSN`` OUT hook that records the OUT and stops (RIP is then past the OUT)."""
        unicorn = _unicorn()
        self.uc.hook_add(unicorn.UC_HOOK_INSN, self._on_out, None, 1, 0, self._x86.UC_X86_INS_OUT)

    def add_mmio(self, address: int = layout.MMIO, size: int = 0x1000) -> None:
        """``mmio_map`` one region whose callbacks stop on a new access and answer / swallow a replayed one."""
        self.uc.mmio_map(address, size, self._on_read, address, self._on_write, address)

    def _on_out(self, uc: Any, port: int, size: int, value: int, _data: object) -> None:
        self.io = (port, size, value)
        uc.emu_stop()

    def _on_read(self, uc: Any, offset: int, size: int, base: int) -> int:
        if self.replay:  # the load reported at the last exit: complete it with the VMM's answer
            self.replay = False
            return self.answer
        self.access = (False, base + offset, size, 0)
        uc.emu_stop()  # aborts the load: RIP stays at it, eax unchanged
        return 0

    def _on_write(self, uc: Any, offset: int, size: int, value: int, base: int) -> None:
        if self.replay:  # the store reported at the last exit: let it complete, no second exit
            self.replay = False
            return
        self.access = (True, base + offset, size, value)
        uc.emu_stop()  # aborts the store: RIP stays at it


def raw_io_loop(raw: RawUnicorn, exits: int) -> int:
    """``exits`` times: ``emu_start`` in count mode until the OUT hook stops it, read RIP, check the OUT.

    Returns the sum of the OUT values.
    """
    start, read, rip_id, rip = raw.uc.emu_start, raw.uc.reg_read, raw.rip_id, raw.rip
    total = 0
    for _ in range(exits):
        start(rip, 0, 0, SLICE)
        rip = read(rip_id)
        io = raw.io
        if io is None or io[0] != PORT:
            raise BenchError(f"raw IO loop: no OUT to port {PORT:#x} (got {io!r}, rip {rip:#x})")
        raw.io = None
        total += io[2]
    raw.rip = rip
    return total


def raw_mmio_loop(raw: RawUnicorn, exits: int) -> int:
    """``exits`` MMIO exits at ``layout.MMIO``: ``emu_start`` in count mode, read RIP, take the access, resume.

    The access is answered (a read, with ``READ_ANSWER``) or swallowed (a write) when the next
    run replays it. Returns the sum of the written values (writes) plus one per read.
    """
    start, read, rip_id, rip = raw.uc.emu_start, raw.uc.reg_read, raw.rip_id, raw.rip
    total = 0
    for _ in range(exits):
        start(rip, 0, 0, SLICE)
        rip = read(rip_id)
        access = raw.access
        if access is None or access[1] != layout.MMIO or access[2] != 4:
            raise BenchError(f"raw MMIO loop: no 4-byte access to {layout.MMIO:#x} (got {access!r}, rip {rip:#x})")
        raw.access = None
        if access[0]:
            total += access[3]
        else:
            raw.answer = READ_ANSWER
            total += 1
        raw.replay = True
    raw.rip = rip
    return total


def raw_free_run(raw: RawUnicorn, iterations: int) -> int:
    """Run ``COUNT_LOOP`` for ``iterations`` in one free-running ``emu_start`` (no count) to the ``hlt``; ns taken."""
    raw.set_reg("rcx", iterations)
    began = time.perf_counter_ns()
    raw.uc.emu_start(layout.CODE, 0, _FREE_RUN_BOUND_US, 0)  # (Unicorn's own timer bounds it)
    taken = time.perf_counter_ns() - began
    rip = raw.reg("rip")
    if rip != raw.end:
        raise BenchError(f"raw free run: stopped at {rip:#x}, not past the hlt")
    return taken


# -- hvcore ---------------------------------------------------------------------------------


def hvcore_io_loop(vcpu: VCPU, exits: int) -> int:
    """``exits`` times ``vcpu.run()`` and a match on the OUT exit, as a VMM writes it. Returns the byte sum."""
    run = vcpu.run
    total = 0
    for _ in range(exits):
        match run():
            case IoExit(port=0x80, data=data):  # PORT
                total += data[0]
            case other:
                raise BenchError(f"hvcore IO loop: unexpected exit {other!r}")
    return total


def hvcore_mmio_write_loop(vcpu: VCPU, exits: int) -> int:
    """``exits`` times ``vcpu.run()`` and a match on the MMIO write exit. Returns the sum of the written dwords."""
    run = vcpu.run
    total = 0
    for _ in range(exits):
        match run():
            case MmioExit(address=layout.MMIO, is_write=True, data=data):
                total += int.from_bytes(data, "little")
            case other:
                raise BenchError(f"hvcore MMIO write loop: unexpected exit {other!r}")
    return total


def hvcore_mmio_read_loop(vcpu: VCPU, exits: int) -> int:
    """``exits`` times ``vcpu.run()``, a match on the MMIO read exit and ``complete(READ_ANSWER)``. Returns exits."""
    run, complete = vcpu.run, vcpu.complete
    total = 0
    for _ in range(exits):
        match run():
            case MmioExit(address=layout.MMIO, is_write=False, length=4):
                complete(READ_ANSWER)
                total += 1
            case other:
                raise BenchError(f"hvcore MMIO read loop: unexpected exit {other!r}")
    return total


def hvcore_count_run(vcpu: VCPU, iterations: int) -> int:
    """One ``vcpu.run()`` of ``COUNT_LOOP`` for ``iterations`` (RIP and RCX set first, untimed) to its HLT; ns taken."""
    vcpu.set_regs(replace(vcpu.get_regs(), rip=layout.CODE, rcx=iterations))
    began = time.perf_counter_ns()
    exit_ = vcpu.run()
    taken = time.perf_counter_ns() - began
    if not isinstance(exit_, HltExit):
        raise BenchError(f"hvcore count loop: expected HLT, got {exit_!r}")
    return taken


# -- breakdown loops (SimVCPU internals) ------------------------------------------------------


def _sim(vcpu: VCPU) -> SimVCPU:
    if not isinstance(vcpu, SimVCPU):
        raise BenchError(f"the breakdown loops need a simulator vCPU, not {vcpu!r}")
    return vcpu


def breakdown_problem(vcpu: VCPU) -> str | None:
    """None when the breakdown loops can drive ``vcpu``'s internals, else what is missing (the simulator changed)."""
    if not isinstance(vcpu, SimVCPU):
        return f"{vcpu!r} is not a simulator vCPU"
    tracker = getattr(vcpu, "tracker", None)
    needed = ("run", "finish_instruction", "complete", "_stop", "_engine")
    missing = [f"Tracker.{name}" for name in needed if not hasattr(tracker, name)]
    missing += [f"SimVCPU.{name}" for name in ("engine", "_vm") if not hasattr(vcpu, name)]
    return f"the simulator's internals changed (no {', '.join(missing)})" if missing else None


def engine_io_loop(vcpu: VCPU, exits: int) -> int:
    """The raw IO loop's statements on the simulator's own engine (its paging, MMIO gaps and OUT hook).

    The vCPU's ``Tracker._on_out`` builds the ``Stop`` and ``IoExit`` and stops the engine, as in
    ``run()``; nothing else of ``Tracker.run`` or ``SimVCPU.run`` runs. Returns the byte sum.
    """
    sim = _sim(vcpu)
    engine, tracker = sim.engine(), sim.tracker
    tracker._engine = engine  # its hooks stop the engine through this
    start, read, rip_id = engine.uc.emu_start, engine.uc.reg_read, engine.RIP
    rip = read(rip_id)
    total = 0
    for _ in range(exits):
        tracker._stop = None
        start(rip, 0, 0, SLICE)
        rip = read(rip_id)
        stop = tracker._stop
        if stop is None or not isinstance(stop.exit, IoExit) or stop.exit.port != PORT:
            raise BenchError(f"engine IO loop: no OUT exit (got {stop!r})")
        total += stop.exit.data[0]
    tracker._stop = None
    return total


def tracker_io_loop(vcpu: VCPU, exits: int) -> int:
    """hvcore's IO loop one layer down: the vCPU's ``Tracker`` driven directly, without ``SimVCPU.run``."""
    sim = _sim(vcpu)
    engine, tracker = sim.engine(), sim.tracker
    run, finish = tracker.run, tracker.finish_instruction
    total = 0
    for _ in range(exits):
        exit_ = finish(engine, now=False)
        if exit_ is None:
            exit_ = run(engine, SLICE).exit
        match exit_:
            case IoExit(port=0x80, data=data):  # PORT
                total += data[0]
            case other:
                raise BenchError(f"tracker IO loop: unexpected exit {other!r}")
    return total


def tracker_mmio_write_loop(vcpu: VCPU, exits: int) -> int:
    """hvcore's MMIO write loop one layer down: ``Tracker.finish_instruction`` and ``Tracker.run``."""
    sim = _sim(vcpu)
    engine, tracker = sim.engine(), sim.tracker
    run, finish = tracker.run, tracker.finish_instruction
    total = 0
    for _ in range(exits):
        exit_ = finish(engine, now=False)
        if exit_ is None:
            exit_ = run(engine, SLICE).exit
        match exit_:
            case MmioExit(address=layout.MMIO, is_write=True, data=data):
                total += int.from_bytes(data, "little")
            case other:
                raise BenchError(f"tracker MMIO write loop: unexpected exit {other!r}")
    return total


def tracker_mmio_read_loop(vcpu: VCPU, exits: int) -> int:
    """hvcore's MMIO read loop one layer down: ``finish_instruction`` (the replay), ``run``, ``complete``."""
    sim = _sim(vcpu)
    engine, tracker = sim.engine(), sim.tracker
    run, finish, complete = tracker.run, tracker.finish_instruction, tracker.complete
    total = 0
    for _ in range(exits):
        exit_ = finish(engine, now=False)
        if exit_ is None:
            exit_ = run(engine, SLICE).exit
        match exit_:
            case MmioExit(address=layout.MMIO, is_write=False, length=4):
                complete(READ_ANSWER)
                total += 1
            case other:
                raise BenchError(f"tracker MMIO read loop: unexpected exit {other!r}")
    return total


# -- watchdog -------------------------------------------------------------------------------


# -- measuring ------------------------------------------------------------------------------

Loop = Callable[[int], int]
"""A loop over n exits returning a checksum, or one run of n iterations returning the ns it took."""


def _interleave(
    loops: dict[str, Callable[[int], float]], n: int, repeat: int, warmup: int
) -> dict[str, tuple[float, ...]]:
    """Every loop ``repeat`` times, interleaved, alternating the order; after ``warmup`` untimed rounds."""
    if warmup > 0:
        for loop in loops.values():
            loop(warmup)
    times: dict[str, list[float]] = {key: [] for key in loops}
    keys = list(loops)
    for r in range(repeat):
        for key in keys if r % 2 == 0 else keys[::-1]:
            times[key].append(loops[key](n))
    return {key: tuple(values) for key, values in times.items()}


def _ns_per_exit(loop: Loop, vcpu: VCPU | None, timeout: float, what: str) -> Callable[[int], float]:
    def timed(exits: int) -> float:
        with watchdog(vcpu, timeout, what):
            began = time.perf_counter_ns()
            loop(exits)
            return (time.perf_counter_ns() - began) / exits

    return timed


def _minstr_per_s(run: Loop, instructions: int, vcpu: VCPU | None, timeout: float, what: str) -> Callable[[int], float]:
    def timed(iterations: int) -> float:
        with watchdog(vcpu, timeout, what):
            return instructions / run(iterations) * 1e3  # instructions per ns * 1e3 = millions per s

    return timed


@dataclass(frozen=True)
class _ExitRow:
    name: str
    code: bytes
    rax: int
    raw: Callable[[RawUnicorn, int], int]
    hvcore: Callable[[VCPU, int], int]
    tracker: Callable[[VCPU, int], int]
    mmio: bool


_EXIT_ROWS: Final = (
    _ExitRow("IO exit", OUT_LOOP, OUT_VALUE, raw_io_loop, hvcore_io_loop, tracker_io_loop, mmio=False),
    _ExitRow(
        "MMIO write",
        MMIO_WRITE_LOOP,
        WRITE_VALUE,
        raw_mmio_loop,
        hvcore_mmio_write_loop,
        tracker_mmio_write_loop,
        mmio=True,
    ),
    _ExitRow("MMIO read", MMIO_READ_LOOP, 0, raw_mmio_loop, hvcore_mmio_read_loop, tracker_mmio_read_loop, mmio=True),
)


def _raw_for(spec: _ExitRow) -> RawUnicorn:
    raw = RawUnicorn(spec.code, rax=spec.rax)
    if spec.mmio:
        raw.add_mmio()
    else:
        raw.add_out_hook()
    return raw


def _exit_loops(
    spec: _ExitRow, raw: RawUnicorn, vcpu: VCPU, timeout: float, breakdown: bool
) -> dict[str, Callable[[int], float]]:
    loops = {
        "raw": _ns_per_exit(partial(spec.raw, raw), None, timeout, f"{spec.name} raw loop"),
        "hvcore": _ns_per_exit(partial(spec.hvcore, vcpu), vcpu, timeout, f"{spec.name} hvcore loop"),
    }
    if breakdown:
        if not spec.mmio:
            loops["engine"] = _ns_per_exit(partial(engine_io_loop, vcpu), vcpu, timeout, f"{spec.name} engine loop")
        loops["tracker"] = _ns_per_exit(partial(spec.tracker, vcpu), vcpu, timeout, f"{spec.name} tracker loop")
    return loops


def _measure_throughput(hv: Hypervisor, *, iterations: int, repeat: int, timeout: float, stack: ExitStack) -> Row:
    vm = stack.enter_context(hv.create_vm())
    vcpu = boot(hv, vm, COUNT_LOOP, "long", rcx=iterations, rdx=0)  # rdx 0, as in the raw engine
    raw = RawUnicorn(COUNT_LOOP)
    instructions = INSTRUCTIONS_PER_ITERATION * iterations + 1
    loops = {
        "raw": _minstr_per_s(partial(raw_free_run, raw), instructions, None, timeout, "throughput raw loop"),
        "hvcore": _minstr_per_s(partial(hvcore_count_run, vcpu), instructions, vcpu, timeout, "throughput hvcore run"),
    }
    # warm-up: one short run each (translates the loop), then `repeat` full runs
    for loop in loops.values():
        loop(max(1, min(iterations, SLICE)))
    runs = _interleave(loops, iterations, repeat, 0)
    return Row("throughput", "Minstr/s", TARGET_THROUGHPUT, True, runs)


def run_bench(
    hv: Hypervisor,
    *,
    exits: int = DEFAULT_EXITS,
    repeat: int = DEFAULT_REPEAT,
    warmup: int | None = None,
    iterations: int = DEFAULT_ITERATIONS,
    throughput_repeats: int | None = None,
    timeout: float = 30.0,
    breakdown: bool = True,
    part_calls: int = 20_000,
    profile_exits: int = 2000,
) -> Result:
    """Measure every row on the simulator hypervisor ``hv``.

    ``warmup`` exits per loop default to ``exits // 5``; ``throughput_repeats`` to
    ``throughput_repeat(repeat)``; ``timeout`` is each loop's watchdog in seconds. ``breakdown``
    adds the breakdown loops and, when ``part_calls`` > 0, the parts timed alone (about
    ``part_calls`` calls each) with their calls per exit counted over ``profile_exits`` exits.
    """
    if exits <= 0 or repeat <= 0 or iterations <= 0:
        raise ValueError("exits, repeat and iterations must be positive")
    if hv.name != "sim":
        raise ValueError(f"the simulator bench needs the 'sim' backend, not {hv.name!r}")
    warm = max(1, exits // 5) if warmup is None else warmup
    t_repeat = throughput_repeat(repeat) if throughput_repeats is None else throughput_repeats
    rows: list[Row] = []
    vcpus: dict[str, tuple[VCPU, Callable[[VCPU, int], int]]] = {}
    parts: tuple[Part, ...] = ()
    profile: tuple[ProfileEntry, ...] = ()
    notes: list[str] = []
    with ExitStack() as stack:
        for spec in _EXIT_ROWS:
            vm = stack.enter_context(hv.create_vm())
            vcpu = boot(hv, vm, spec.code, "long", rax=spec.rax)
            problem = breakdown_problem(vcpu) if breakdown else None
            if problem is not None:
                notes.append(f"breakdown skipped: {problem}")
                breakdown = False
            raw = _raw_for(spec)
            runs = _interleave(_exit_loops(spec, raw, vcpu, timeout, breakdown), exits, repeat, warm)
            rows.append(Row(spec.name, "ns/exit", TARGET_EXIT, False, runs))
            vcpus[spec.name] = (vcpu, spec.hvcore)
        rows.append(_measure_throughput(hv, iterations=iterations, repeat=t_repeat, timeout=timeout, stack=stack))
        if breakdown and part_calls > 0:
            parts, profile = measure_parts(vcpus, calls=part_calls, profile_exits=profile_exits)
    unicorn_version = str(_unicorn().__version__)
    version = f"{platform.python_implementation()} {platform.python_version()}"
    return Result(
        version,
        unicorn_version,
        SLICE,
        exits,
        repeat,
        warm,
        iterations,
        t_repeat,
        tuple(rows),
        parts,
        profile,
        tuple(notes),
    )


# -- the parts alone, and cProfile's counts -----------------------------------------------------

_Key = CodeType | str


def _loop_ns(fn: Callable[[], object], k: int) -> float:
    began = time.perf_counter_ns()
    for _ in range(k):
        fn()
    return (time.perf_counter_ns() - began) / k


def _noop() -> None:
    return None


def _per_call(fn: Callable[[], object], calls: int) -> float:
    """ns per ``fn()`` call: best of 3 loops of ``calls`` calls (fewer for slow parts), minus an empty call's."""
    k = max(10, min(calls, int(calls * 2000 / max(_loop_ns(fn, 50), 1.0))))  # a loop takes at most ~2000 * calls ns
    best = min(_loop_ns(fn, k) for _ in range(3))
    base = min(_loop_ns(_noop, k) for _ in range(3))
    return max(best - base, 0.0)


def _direct_reg_read(engine: Engine) -> Callable[[], int] | None:
    """Engine.RIP read through Unicorn's C function, skipping the binding's Python (a proposal's floor)."""
    try:
        binding = importlib.import_module("unicorn.unicorn_py3.unicorn")
        ctypes = importlib.import_module("ctypes")
        lib, handle = binding.uclib, engine.uc._uch
        value = ctypes.c_uint64()
        ref, rip = ctypes.byref(value), engine.RIP
    except (ImportError, AttributeError):
        return None

    def read() -> int:
        lib.uc_reg_read(handle, rip, ref)
        return int(value.value)

    return read


def _count_calls(
    loops: dict[str, tuple[VCPU, Callable[[VCPU, int], int]]], exits: int
) -> tuple[dict[str, dict[_Key, float]], tuple[ProfileEntry, ...]]:
    """cProfile each hvcore exit loop over ``exits`` exits: calls per exit of every function, and the top entries."""
    counts: dict[str, dict[_Key, float]] = {}
    top: list[ProfileEntry] = []
    for row, (vcpu, loop) in loops.items():
        profiler = cProfile.Profile()
        profiler.runcall(loop, vcpu, exits)
        stats = profiler.getstats()
        counts[row] = {entry.code: entry.callcount / exits for entry in stats}
        stats.sort(key=lambda e: e.inlinetime, reverse=True)
        for entry in stats[:12]:
            top.append(ProfileEntry(row, _label(entry.code), entry.callcount / exits, entry.inlinetime / exits * 1e6))
    return counts, tuple(top)


def _label(code: _Key) -> str:
    if isinstance(code, str):
        return code
    return f"{Path(code.co_filename).name}:{code.co_firstlineno}({code.co_name})"


def measure_parts(
    vcpus: dict[str, tuple[VCPU, Callable[[VCPU, int], int]]], *, calls: int, profile_exits: int
) -> tuple[tuple[Part, ...], tuple[ProfileEntry, ...]]:
    """Time the simulator's per-exit parts alone on the first vCPU, and count their calls per exit in each loop.

    ``vcpus`` maps an exit row to its vCPU (between exits, nothing pending) and hvcore loop.
    Returns the parts and cProfile's top functions per row.
    """
    counts, top = _count_calls(vcpus, profile_exits)
    vcpu = _sim(next(iter(vcpus.values()))[0])
    vm: SimVM = vcpu._vm
    engine, tracker, lock = vcpu.engine(), vcpu.tracker, vm.exec_lock
    unicorn = _unicorn()
    io_exit = IoExit(PORT, 1, 1, IoDirection.OUT, b"\x2a")

    def locked() -> None:
        with lock:
            pass

    def import_statement() -> None:
        import unicorn  # noqa: F401, PLC0415  # the statement Tracker.run executes per call

    def stepping() -> bool:
        return vcpu.stepping

    def out_objects() -> Stop:
        value = OUT_VALUE
        return Stop(StopKind.EXIT, IoExit(PORT, 1, 1, IoDirection.OUT, value.to_bytes(1, "little")))

    def match_exit() -> int:
        match io_exit:
            case IoExit(port=0x80, data=data):
                return data[0]
            case _:
                return 0

    direct = _direct_reg_read(engine)
    # Each entry is built and timed on its own: a part the simulator no longer has is left out.
    table: list[tuple[str, Callable[[], tuple[Callable[[], object] | None, _Key | None]]]] = [
        (
            "Engine.reg(RIP): Uc.reg_read through the binding",
            lambda: (partial(engine.reg, engine.RIP), Engine.reg.__code__),
        ),
        ("  the same read through ctypes uc_reg_read (proposal)", lambda: (direct, None)),
        ("Engine.get_regs: 18 x Uc.reg_read", lambda: (engine.get_regs, Engine.get_regs.__code__)),
        ("Engine._blob: context_update + 1 copy of CPUX86State", lambda: (engine._blob, Engine._blob.__code__)),
        ("VM exec_lock (RLock), once per engine() in _run", lambda: (locked, SimVCPU.engine.__code__)),
        ("SimVCPU.engine()", lambda: (vcpu.engine, SimVCPU.engine.__code__)),
        (
            "  SimVCPU._drop_stale_code",
            lambda: (partial(vcpu._drop_stale_code, engine), SimVCPU._drop_stale_code.__code__),
        ),
        ("  Tracker.sync_dirty", lambda: (partial(tracker.sync_dirty, engine), Tracker.sync_dirty.__code__)),
        (
            "  AddressSpace.memory_slots_unchecked (cached tuple)",
            lambda: (tracker.guest.memory_slots_unchecked, AddressSpace.memory_slots_unchecked.__code__),
        ),
        ("SimVCPU._consume_kick (kick lock)", lambda: (vcpu._consume_kick, SimVCPU._consume_kick.__code__)),
        ("GuestDebugFlags tests, once per SimVCPU._run", lambda: (stepping, SimVCPU._run.__code__)),
        ("SimVCPU._inject (nothing queued)", lambda: (partial(vcpu._inject, engine), SimVCPU._inject.__code__)),
        ("Stop + IoExit + to_bytes, per OUT hook call", lambda: (out_objects, Tracker._on_out.__code__)),
        ("the VMM's match on an IoExit", lambda: (match_exit, None)),
        ("`import unicorn` statement in Tracker.run", lambda: (import_statement, Tracker.run.__code__)),
        ("Uc.emu_start (with the guest: not timed alone)", lambda: (None, unicorn.Uc.emu_start.__code__)),
        ("Tracker._step: the 1-instruction replay run", lambda: (None, Tracker._step.__code__)),
    ]
    parts = []
    for name, make in table:
        try:
            fn, key = make()
            ns = None if fn is None else _per_call(fn, calls)
        except AttributeError:
            continue
        row_calls = {} if key is None else {row: per.get(key, 0.0) for row, per in counts.items()}
        parts.append(Part(name, ns, row_calls))
    return tuple(parts), top


# -- report ---------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-".rjust(len(format(0.0, spec))) if value is None else format(value, spec)


def _target(row: Row) -> str:
    return f"{'>=' if row.higher_is_better else '<='} {row.target:.2f}x"


_LAYERS: Final[tuple[tuple[str, str, str], ...]] = (
    ("engine", "raw", "engine: sim engine + OUT hook's exit objects"),
    ("tracker", "engine", "Tracker.run around emu_start"),
    ("tracker", "raw", "Tracker: engine, callbacks, exit objects, RIP"),
    ("hvcore", "tracker", "SimVCPU.run bookkeeping"),
)
"""Breakdown lines: (loop, base loop, label); each is ``loop - base``, paired medians."""


def format_report(result: Result, *, profile: bool = False) -> str:
    """The table, the breakdown, the parts and the verdict, as ``python -m bench.sim_exits`` prints them."""
    lines = [
        "Simulator (hvcore 'sim' backend) vs raw Unicorn in one process: exit round trips and guest throughput",
        f"{result.python}, unicorn {result.unicorn}; raw exits in count mode ({result.slice} instructions per slice),"
        " raw throughput free-running",
        f"exits: median of {result.repeat} x {result.exits} exits (after {result.warmup} warm-up exits); "
        f"throughput: median of {result.throughput_repeat} x {result.instructions:,} instructions",
        "",
        f"{'row':<11} {'unit':<9} {'raw Unicorn':>11} {'hvcore':>9} {'ratio':>6}  {'target':<9} verdict",
    ]
    for row in result.rows:
        spec = "11.1f" if row.higher_is_better else "11.0f"
        lines.append(
            f"{row.name:<11} {row.unit:<9} {format(row.raw, spec)} {format(row.hvcore, spec[2:]).rjust(9)} "
            f"{row.ratio:6.2f}  {_target(row):<9} {'met' if row.met else 'missed'}"
        )
    lines += ["", "spread of the repetitions (min-max) and the paired ratio (median of hvcore/raw per repetition):"]
    for row in result.rows:
        spread = ", ".join(f"{k} {min(v):.1f}-{max(v):.1f}" for k, v in row.runs.items() if v)
        lines.append(f"  {row.name}: {spread}; paired ratio {row.paired_ratio:.2f}")
    exit_rows = [r for r in result.rows if not r.higher_is_better]
    if any("tracker" in r.runs for r in exit_rows):
        lines += [
            "",
            "where hvcore's time per exit goes, ns per exit (extra loops on the same vCPUs, paired medians):",
            f"  {'':54}" + "".join(f"{r.name:>11}" for r in exit_rows),
            f"  {'hvcore - raw Unicorn':54}" + "".join(_fmt(r.difference("hvcore", "raw"), "11.0f") for r in exit_rows),
        ]
        for loop, base, label in _LAYERS:
            values = [r.difference(loop, base) for r in exit_rows]
            if any(v is not None for v in values):
                lines.append(f"  {label:54}" + "".join(_fmt(v, "11.0f") for v in values))
    if result.parts:
        names = [r.name for r in exit_rows]
        lines += [
            "",
            "the simulator's parts timed alone on a live vCPU (ns per call), x calls per exit (cProfile counts):",
            f"  {'part':54}{'ns/call':>8}" + "".join(f"{n:>13}" for n in names),
        ]
        for part in result.parts:
            cells = []
            for n in names:
                calls = part.calls.get(n)
                est = part.per_exit(n)
                cells.append(
                    ("-" if calls is None else f"{calls:g}x" + ("" if est is None else f"={est:.0f}")).rjust(13)
                )
            lines.append(f"  {part.name:54}{_fmt(part.ns, '8.0f')}" + "".join(cells))
    if profile and result.profile:
        lines += ["", "cProfile of the hvcore exit loops (self time, inflated by the profiler; us per exit):"]
        for name in dict.fromkeys(e.row for e in result.profile):
            lines.append(f"  {name}:")
            for entry in (e for e in result.profile if e.row == name):
                lines.append(
                    f"    {entry.self_us_per_exit:7.2f} us  {entry.calls_per_exit:5.2g} calls  {entry.function}"
                )
    lines += [f"({note})" for note in result.notes]
    verdict = "MET" if result.met else "NOT MET"
    ratios = ", ".join(f"{row.name} {row.ratio:.2f}x" for row in result.rows)
    lines += [
        "",
        f"targets: exits within {TARGET_EXIT:.2f}x of raw Unicorn, throughput at least {TARGET_THROUGHPUT:.2f}x: "
        f"{verdict} ({ratios})",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run the bench, print the report, optionally write JSON. Exit status 0 unless it failed."""
    parser = argparse.ArgumentParser(prog="python -m bench.sim_exits", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--exits", type=int, default=DEFAULT_EXITS, help="exits per repetition (%(default)s)")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, help="repetitions; the median is reported")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up exits per loop (default: exits / 5)")
    parser.add_argument(
        "--iterations", type=int, default=DEFAULT_ITERATIONS, help="count-loop iterations per throughput run"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="watchdog per loop, seconds (%(default)s)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the numbers as JSON")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the breakdown loops and the parts")
    parser.add_argument("--profile", action="store_true", help="also print cProfile's top functions per exit row")
    parser.add_argument("--cpu", type=int, default=None, help="pin the bench to this CPU")
    args = parser.parse_args(argv)
    if args.exits <= 0 or args.repeat <= 0 or args.iterations <= 0 or (args.warmup is not None and args.warmup < 0):
        parser.error("--exits, --repeat and --iterations must be positive, --warmup not negative")

    reason = sim_unusable_reason()
    if reason is not None:
        print(f"bench.sim_exits: cannot run: the simulator (Unicorn) is unusable here: {reason}")
        return 0
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    with hvcore.open_hypervisor("sim") as hv:
        try:
            result = run_bench(
                hv,
                exits=args.exits,
                repeat=args.repeat,
                warmup=args.warmup,
                iterations=args.iterations,
                timeout=args.timeout,
                breakdown=not args.no_breakdown,
            )
        except BenchError as exc:
            print(f"bench.sim_exits: failed: {exc}", file=sys.stderr)
            return 2
    print(format_report(result, profile=args.profile))
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
