"""IO-exit round trip: a C loop vs a bare Python loop vs ``hvcore`` (``python -m bench.io_exit``).

A 64-bit guest runs ``out 0x80, al`` in a tight loop (``tests.guests.long_mode.OUT_LOOP``),
at CPL0 and at CPL3, and each row of the table is the time per OUT exit (one ``KVM_RUN``
that returns ``KVM_EXIT_IO``, plus reading the exit) measured three ways:

- **C**: ``bench/io_exit_loop.c``, compiled with gcc into a temporary directory (the row is
  skipped, with the reason, without gcc), opens /dev/kvm and builds the same guest from an
  image (RAM, ``kvm_sregs``, ``kvm_regs``) saved from the hvcore-built vCPU before it ran;
- **bare**: ``fcntl.ioctl(fd, KVM_RUN, 0)``, one ``struct.unpack_from`` of the exit reason
  and the io fields, and the data byte: the least a Python VMM can do;
- **hvcore**: ``vcpu.run()`` and a ``match`` on ``IoExit(port=..., data=...)``.

Two more Python loops on the same vCPU split hvcore's overhead (the breakdown): bare plus
``decode_exit`` and the match, and bare plus ``run()``'s claim and kick bookkeeping; the
same parts are also timed alone (hot caches, no guest). The repetitions of all the loops,
C included, are interleaved (many short ones: this host has slow phases lasting seconds),
so drift hits every loop alike; each figure is the median of the repetitions. Every KVM run
is under a watchdog. The target is hvcore within ``TARGET`` (1.10x) of bare Python; timings
are reported, never asserted.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import platform
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import hvcore
from bench.watchdog import BenchError
from bench.watchdog import watchdog as shared_watchdog
from hvcore import VCPU, VM, Hypervisor, IoExit
from hvcore_kvm import ioctls, kvm_run, uapi
from hvcore_kvm import kick as kvm_kick
from hvcore_kvm._sys import ioctl
from tests.boot import Mode, boot, slot_memory
from tests.guests import layout
from tests.guests.long_mode import OUT_LOOP

__all__ = [
    "DEFAULT_EXITS",
    "DEFAULT_REPEAT",
    "MODES",
    "TARGET",
    "Alone",
    "BenchError",
    "CLoop",
    "Result",
    "Row",
    "bare_loop",
    "compile_c_loop",
    "decode_loop",
    "format_report",
    "hvcore_loop",
    "kvm_unusable_reason",
    "lock_loop",
    "main",
    "measure_alone",
    "run_bench",
    "watchdog",
    "write_image",
]

TARGET: Final = 1.10
"""hvcore's time per exit may be at most this many times the bare Python loop's."""

DEFAULT_EXITS: Final = 1000
"""Exits per repetition: at ~10-40 us per exit the whole bench takes ~5-15 s."""

DEFAULT_REPEAT: Final = 31
"""Repetitions: many short ones, interleaved, ride out this host's slow phases better than a few long ones."""

MODES: Final[dict[str, Mode]] = {"CPL0": "long", "CPL3": "user"}
"""Row name -> ``tests.boot.boot`` mode (``"user"``: CPL3 segments and IOPL=3)."""

PORT: Final = 0x80
C_SOURCE: Final = Path(__file__).with_name("io_exit_loop.c")

# struct kvm_run (<linux/kvm.h>) as a minimal Python VMM hard-codes it: exit_reason at 8, the io
# member of the union at 32 (direction u8, size u8, port u16, count u32, data_offset u64).
# tests/test_bench.py checks these against hvcore_kvm.uapi.KvmRun.
KVM_RUN: Final = 0xAE80  # _IO(KVMIO, 0x80)
KVM_EXIT_IO: Final = 2
EXIT_REASON_OFFSET: Final = 8
IO_OFFSET: Final = 32
IMMEDIATE_EXIT_OFFSET: Final = 1
_EXIT_IO: Final = struct.Struct(f"<I{IO_OFFSET - EXIT_REASON_OFFSET - 4}xBBHIQ")
_IMAGE_MAGIC: Final = b"HVBENCH1"


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _paired_difference(runs: Sequence[float], base: Sequence[float]) -> float | None:
    """Median over the repetitions of ``run - base``: repetition i of both loops ran back to back."""
    return statistics.median(a - b for a, b in zip(runs, base, strict=True)) if runs else None


@dataclass(frozen=True)
class Row:
    """One mode: the ns per exit of every repetition of every loop (medians and ratios as properties).

    ``decode_runs``: bare + ``decode_exit`` + the match; ``lock_runs``: bare + the claim/kick bookkeeping
    sections of ``run()`` (both empty without the breakdown). ``c_runs`` is empty and
    ``c_skipped`` says why when the C loop did not run.
    """

    mode: str
    bare_runs: tuple[float, ...]
    hvcore_runs: tuple[float, ...]
    c_runs: tuple[float, ...] = ()
    decode_runs: tuple[float, ...] = ()
    lock_runs: tuple[float, ...] = ()
    c_skipped: str | None = None

    @property
    def bare_ns(self) -> float:
        """Median ns per exit, bare Python."""
        return statistics.median(self.bare_runs)

    @property
    def hvcore_ns(self) -> float:
        """Median ns per exit, hvcore."""
        return statistics.median(self.hvcore_runs)

    @property
    def c_ns(self) -> float | None:
        """Median ns per exit, C (None when skipped)."""
        return _median(self.c_runs)

    @property
    def hvcore_over_bare(self) -> float:
        """hvcore / bare Python."""
        return self.hvcore_ns / self.bare_ns

    @property
    def bare_over_c(self) -> float | None:
        """bare Python / C (None without the C loop)."""
        c = self.c_ns
        return None if c is None else self.bare_ns / c

    @property
    def hvcore_over_c(self) -> float | None:
        """hvcore / C (None without the C loop)."""
        c = self.c_ns
        return None if c is None else self.hvcore_ns / c

    @property
    def met(self) -> bool:
        """hvcore is within ``TARGET`` of bare Python."""
        return self.hvcore_over_bare <= TARGET

    @property
    def paired_ratio(self) -> float:
        """hvcore / bare per repetition, median: less sensitive to slow phases of the host than the medians' ratio."""
        return statistics.median(h / b for h, b in zip(self.hvcore_runs, self.bare_runs, strict=True))

    @property
    def overhead_ns(self) -> float:
        """hvcore minus bare, ns per exit (median of the paired differences)."""
        return statistics.median(h - b for h, b in zip(self.hvcore_runs, self.bare_runs, strict=True))

    @property
    def decode_ns(self) -> float | None:
        """What ``decode_exit`` + the match cost over bare's unpack, ns per exit (None without breakdown)."""
        return _paired_difference(self.decode_runs, self.bare_runs)

    @property
    def lock_ns(self) -> float | None:
        """What run()'s claim and kick bookkeeping costs, ns per exit (None without breakdown)."""
        return _paired_difference(self.lock_runs, self.bare_runs)

    @property
    def rest_ns(self) -> float | None:
        """The overhead that decode and lock do not explain: the run() call, its checks, try, bookkeeping."""
        if self.decode_ns is None or self.lock_ns is None:
            return None
        return self.overhead_ns - self.decode_ns - self.lock_ns

    def summary(self) -> dict[str, Any]:
        """Medians, ratios and breakdown of this row, JSON-able."""
        keys = ("c_ns", "bare_ns", "hvcore_ns", "hvcore_over_bare", "bare_over_c", "hvcore_over_c", "met")
        extra = ("paired_ratio", "overhead_ns", "decode_ns", "lock_ns", "rest_ns")
        return {key: getattr(self, key) for key in (*keys, *extra)}


@dataclass(frozen=True)
class Alone:
    """hvcore's per-exit parts timed alone (hot caches, no guest), ns per call.

    ``bare_read``: bare's unpack + data byte; ``decode_exit``: ``kvm_run.decode_exit`` of an
    OUT exit (it builds the IoExit); ``kick_lock``: ``run()``'s claim and kick bookkeeping;
    ``match``: the ``match`` on the IoExit and reading its byte.
    """

    bare_read: float
    decode_exit: float
    kick_lock: float
    match: float


@dataclass(frozen=True)
class Result:
    """Everything one bench run measured."""

    python: str
    kvm_api: int
    exits: int
    repeat: int
    warmup: int
    rows: tuple[Row, ...]
    alone: Alone | None = None
    target: float = TARGET

    @property
    def met(self) -> bool:
        """Every mode meets the target."""
        return all(row.met for row in self.rows)

    def to_json(self) -> dict[str, Any]:
        """The numbers as plain JSON-able data (every repetition, medians, ratios, verdict)."""
        data = asdict(self)
        data["met"] = self.met
        for row, raw in zip(self.rows, data["rows"], strict=True):
            raw.update(row.summary())
        return data


def kvm_unusable_reason() -> str | None:
    """None when the KVM backend can be opened here, else why not."""
    try:
        return hvcore.available_backends().get("kvm", "no 'kvm' backend is registered")
    except hvcore.HvError as exc:
        return str(exc)


# -- the Python loops ---------------------------------------------------------------------


def bare_loop(fd: int, run: Any, exits: int) -> int:
    """``exits`` times: KVM_RUN, read exit_reason and the io fields, check it is the OUT, read its byte.

    ``fd`` is the vCPU fd, ``run`` its kvm_run mmap. Returns the sum of the data bytes.
    """
    ioctl, unpack, reason_at = fcntl.ioctl, _EXIT_IO.unpack_from, EXIT_REASON_OFFSET
    total = 0
    for _ in range(exits):
        ioctl(fd, KVM_RUN, 0)
        reason, _direction, _size, port, _count, data_offset = unpack(run, reason_at)
        if reason != KVM_EXIT_IO or port != PORT:
            raise BenchError(f"bare loop: unexpected exit reason {reason} port {port:#x}")
        total += run[data_offset]
    return total


def hvcore_loop(vcpu: VCPU, exits: int) -> int:
    """``exits`` times ``vcpu.run()`` and a match on the OUT exit, as a VMM writes it. Returns the byte sum."""
    run = vcpu.run
    total = 0
    for _ in range(exits):
        match run():
            case IoExit(port=0x80, data=data):
                total += data[0]
            case other:
                raise BenchError(f"hvcore loop: unexpected exit {other!r}")
    return total


def decode_loop(fd: int, run: Any, exits: int) -> int:
    """Breakdown: the bare loop, reading the exit with hvcore's ``decode_exit`` and the hvcore loop's match."""
    ioctl, decode = fcntl.ioctl, kvm_run.decode_exit
    total = 0
    for _ in range(exits):
        ioctl(fd, KVM_RUN, 0)
        exit_, _answer_at = decode(run)
        match exit_:
            case IoExit(port=0x80, data=data):
                total += data[0]
            case other:
                raise BenchError(f"decode loop: unexpected exit {other!r}")
    return total


def lock_loop(fd: int, run: Any, lock: Any, exits: int) -> int:
    """Breakdown: the bare loop plus the bookkeeping of ``KvmVCPU.run()`` (its statements, copied).

    ``run()`` claims the vCPU without a lock (pending-exit, busy and closing checks, ``_thread``)
    and after the exit checks ``_kicked``; ``lock`` is taken only when a kick raced with the exit.
    It mirrors ``run()`` as written when this bench was: if ``run()`` changes, change this too.
    """
    ioctl, unpack, reason_at = fcntl.ioctl, _EXIT_IO.unpack_from, EXIT_REASON_OFFSET
    get_ident, immediate_at = threading.get_ident, IMMEDIATE_EXIT_OFFSET
    state = _RunState()
    total = 0
    for _ in range(exits):
        state.claim(get_ident)
        ioctl(fd, KVM_RUN, 0)
        reason, _direction, _size, port, _count, data_offset = unpack(run, reason_at)
        state.release(lock, run, immediate_at)
        if reason != KVM_EXIT_IO or port != PORT:
            raise BenchError(f"lock loop: unexpected exit reason {reason} port {port:#x}")
        total += run[data_offset]
    return total


class _RunState:
    """The attributes ``KvmVCPU.run()`` reads and writes around ``KVM_RUN``."""

    def __init__(self) -> None:
        self._pending_exit: object = None
        self._thread: int | None = None
        self._closing = False
        self._kicked = False

    def claim(self, get_ident: Callable[[], int]) -> None:
        if self._pending_exit is not None:
            raise BenchError("lock loop: pending exit")
        if self._thread is not None:
            raise BenchError("lock loop: busy")
        self._thread = get_ident()
        if self._closing:
            raise BenchError("lock loop: closed")

    def release(self, lock: Any, run: Any, immediate_at: int) -> None:
        self._thread = None
        if self._kicked:
            with lock:
                self._kicked = False
                run[immediate_at] = 0


# -- watchdog -----------------------------------------------------------------------------


@contextmanager
def watchdog(vcpu: VCPU, seconds: float, what: str) -> Iterator[None]:
    """The shared watchdog, which also signals this thread out of a bare ``KVM_RUN``."""
    target = threading.get_ident()

    def signal_bare_run() -> None:
        if kvm_kick.kick_handler_installed():  # hvcore's kick signal, for a bare KVM_RUN too
            signal.pthread_kill(target, kvm_kick.KICK_SIGNAL)

    with shared_watchdog(vcpu, seconds, what, also=signal_bare_run, interrupted=(InterruptedError,)):
        yield


# -- the C loop ---------------------------------------------------------------------------


def compile_c_loop(directory: Path) -> Path | str:
    """Compile ``io_exit_loop.c`` into ``directory``: the binary, or why the C row is skipped."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return "gcc not found"
    binary = directory / "io_exit_loop"
    proc = subprocess.run(
        [gcc, "-O2", "-Wall", "-o", str(binary), str(C_SOURCE)], capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        return f"gcc failed: {proc.stderr.strip()[:500]}"
    return binary


def write_image(vm: VM, vcpu: VCPU, path: Path) -> None:
    """Save the guest RAM and the raw ``kvm_sregs`` / ``kvm_regs`` of an hvcore KVM vCPU for the C loop."""
    fd: int = vcpu._fd  # type: ignore[attr-defined]  # KvmVCPU internals: the raw vCPU fd
    sregs, regs = uapi.KvmSregs(), uapi.KvmRegs()
    ioctl(fd, ioctls.KVM_GET_SREGS, sregs)
    ioctl(fd, ioctls.KVM_GET_REGS, regs)
    ram = slot_memory(vm).read(0, layout.RAM_SIZE)
    header = _IMAGE_MAGIC + struct.pack("<4I", layout.RAM_SIZE, ctypes.sizeof(sregs), ctypes.sizeof(regs), 0)
    path.write_bytes(header + bytes(sregs) + bytes(regs) + ram)


class CLoop:
    """The compiled C loop as a child process with its own VM built from ``image``; ``measure(n)`` times n exits.

    Its repetitions interleave with the Python loops'. Each command is under the child's own
    watchdog (SIGALRM after ``timeout`` s) and a kill from here after ``timeout + 10`` s.
    """

    def __init__(self, binary: Path, image: Path, timeout: float) -> None:
        self.timeout = timeout
        self._proc = subprocess.Popen(
            [str(binary), str(image), str(max(1, round(timeout)))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._expect("ready")

    def _expect(self, what: str) -> str:
        assert self._proc.stdout is not None
        killer = threading.Timer(self.timeout + 10, self._proc.kill)
        killer.daemon = True
        killer.start()
        try:
            line = self._proc.stdout.readline()
        finally:
            killer.cancel()
        if not line.startswith(what):
            self._proc.kill()
            _, err = self._proc.communicate()
            status = self._proc.returncode
            raise BenchError(f"C loop failed (status {status}, wanted {what!r}, got {line!r}): {err.strip()}")
        return line

    def measure(self, exits: int) -> float:
        """Run ``exits`` exits in the C loop: its ns per exit."""
        assert self._proc.stdin is not None
        self._proc.stdin.write(f"{exits}\n")
        self._proc.stdin.flush()
        return float(self._expect("ns_per_exit ").split()[1])

    def close(self) -> None:
        """End the child (EOF on its stdin), killing it if it does not leave."""
        proc = self._proc
        try:
            proc.communicate(input="" if proc.poll() is None else None, timeout=10)
        except (subprocess.TimeoutExpired, OSError, ValueError):
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> CLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the parts alone ----------------------------------------------------------------------


def _per_call(fn: Callable[[int], None], n: int) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter_ns()
        fn(n)
        best = min(best, (time.perf_counter_ns() - start) / n)
    return best


def measure_alone(vcpu: VCPU, calls: int) -> Alone:
    """Time hvcore's per-exit parts without running the guest; ``vcpu``'s kvm_run must hold an OUT exit."""
    run = vcpu._run  # type: ignore[attr-defined]  # KvmVCPU internals: its kvm_run mmap
    decode = kvm_run.decode_exit
    exit_ = decode(run)[0]
    if not isinstance(exit_, IoExit):
        raise BenchError(f"kvm_run does not hold an IO exit: {exit_!r}")
    lock = threading.Lock()
    get_ident = threading.get_ident
    unpack, reason_at, immediate_at = _EXIT_IO.unpack_from, EXIT_REASON_OFFSET, IMMEDIATE_EXIT_OFFSET

    def bare_read(k: int) -> None:
        for _ in range(k):
            reason, _direction, _size, port, _count, data_offset = unpack(run, reason_at)
            if reason != KVM_EXIT_IO or port != PORT:
                raise BenchError("not an OUT exit")
            run[data_offset]

    def decode_only(k: int) -> None:
        for _ in range(k):
            decode(run)

    def kick_lock(k: int) -> None:
        state = _RunState()
        for _ in range(k):
            state.claim(get_ident)
            state.release(lock, run, immediate_at)

    def match_only(k: int) -> None:
        total = 0
        for _ in range(k):
            match exit_:
                case IoExit(port=0x80, data=data):
                    total += data[0]
                case other:
                    raise BenchError(f"unexpected {other!r}")

    def empty(k: int) -> None:
        for _ in range(k):
            pass

    loop = _per_call(empty, calls)
    return Alone(
        bare_read=_per_call(bare_read, calls) - loop,
        decode_exit=_per_call(decode_only, calls) - loop,
        kick_lock=_per_call(kick_lock, calls) - loop,
        match=_per_call(match_only, calls) - loop,
    )


# -- the bench ----------------------------------------------------------------------------


def _python_loop(vcpu: VCPU, name: str, timeout: float, loop: Callable[[int], int]) -> Callable[[int], float]:
    """``loop`` timed (ns per exit) and under the watchdog."""

    def timed(exits: int) -> float:
        with watchdog(vcpu, timeout, f"{name} loop"):
            start = time.perf_counter_ns()
            loop(exits)
            return (time.perf_counter_ns() - start) / exits

    return timed


def _measure_mode(
    hv: Hypervisor,
    name: str,
    *,
    exits: int,
    repeat: int,
    warmup: int,
    timeout: float,
    c_binary: Path | str,
    workdir: Path,
    breakdown: bool,
    alone_calls: int,
) -> tuple[Row, Alone | None]:
    """One mode's row; and the parts timed alone on its vCPU when ``alone_calls`` > 0."""
    with hv.create_vm() as vm, ExitStack() as stack:
        vcpu = boot(hv, vm, OUT_LOOP, MODES[name])
        # The bare loops reuse the hvcore-built VM through KvmVCPU internals: its fd, kvm_run mmap and kick lock.
        fd: int = vcpu._fd  # type: ignore[attr-defined]
        run = vcpu._run  # type: ignore[attr-defined]
        lock = vcpu._kick_lock  # type: ignore[attr-defined]
        loops: dict[str, Callable[[int], float]] = {
            "bare": _python_loop(vcpu, f"{name} bare", timeout, lambda n: bare_loop(fd, run, n)),
            "hvcore": _python_loop(vcpu, f"{name} hvcore", timeout, lambda n: hvcore_loop(vcpu, n)),
        }
        if breakdown:
            loops["decode"] = _python_loop(vcpu, f"{name} decode", timeout, lambda n: decode_loop(fd, run, n))
            loops["lock"] = _python_loop(vcpu, f"{name} lock", timeout, lambda n: lock_loop(fd, run, lock, n))
        if not isinstance(c_binary, str):
            image = workdir / f"{name}.img"
            write_image(vm, vcpu, image)  # before the guest ran: the C loop starts where hvcore's does
            loops["c"] = stack.enter_context(CLoop(c_binary, image, timeout)).measure
        times: dict[str, list[float]] = {key: [] for key in loops}
        if warmup > 0:
            for loop in loops.values():
                loop(warmup)
        keys = list(loops)
        for r in range(repeat):  # interleaved, alternating the order: drift and order hit every loop alike
            for key in keys if r % 2 == 0 else keys[::-1]:
                times[key].append(loops[key](exits))
        alone = measure_alone(vcpu, alone_calls) if alone_calls > 0 else None
    row = Row(
        name,
        bare_runs=tuple(times["bare"]),
        hvcore_runs=tuple(times["hvcore"]),
        c_runs=tuple(times.get("c", ())),
        decode_runs=tuple(times.get("decode", ())),
        lock_runs=tuple(times.get("lock", ())),
        c_skipped=c_binary if isinstance(c_binary, str) else None,
    )
    return row, alone


def run_bench(
    hv: Hypervisor,
    *,
    exits: int = DEFAULT_EXITS,
    repeat: int = DEFAULT_REPEAT,
    warmup: int | None = None,
    timeout: float = 30.0,
    with_c: bool = True,
    breakdown: bool = True,
    alone_calls: int = 20_000,
) -> Result:
    """Measure every mode on the KVM hypervisor ``hv``.

    ``warmup`` exits per loop default to ``exits // 5``; ``timeout`` is each loop's watchdog in
    seconds; ``breakdown`` adds the decode and lock loops, ``alone_calls`` > 0 the parts timed alone.
    """
    if exits <= 0 or repeat <= 0:
        raise ValueError("exits and repeat must be positive")
    if hv.name != "kvm":
        raise ValueError(f"the IO-exit bench needs the KVM backend, not {hv.name!r}")
    warm = max(1, exits // 5) if warmup is None else warmup
    rows: list[Row] = []
    alone: Alone | None = None
    with tempfile.TemporaryDirectory(prefix="hvcore-bench-") as tmp:
        workdir = Path(tmp)
        c_binary: Path | str = compile_c_loop(workdir) if with_c else "disabled (--no-c)"
        for name in MODES:
            row, parts = _measure_mode(
                hv,
                name,
                exits=exits,
                repeat=repeat,
                warmup=warm,
                timeout=timeout,
                c_binary=c_binary,
                workdir=workdir,
                breakdown=breakdown,
                alone_calls=alone_calls if alone is None and breakdown else 0,
            )
            rows.append(row)
            alone = alone or parts
    version = f"{platform.python_implementation()} {platform.python_version()}"
    return Result(version, hv.api_version(), exits, repeat, warm, tuple(rows), alone)


# -- report -------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-".rjust(len(format(0.0, spec))) if value is None else format(value, spec)


def format_report(result: Result) -> str:
    """The table, the breakdown and the verdict, as ``python -m bench.io_exit`` prints them."""
    lines = [
        "IO-exit round trip: guest `out 0x80, al` loop in 64-bit long mode, one OUT exit per KVM_RUN",
        f"{result.python}, KVM API {result.kvm_api}; ns per exit, median of {result.repeat} x {result.exits} exits"
        f" (after {result.warmup} warm-up exits)",
        "",
        f"{'mode':<5} {'C':>8} {'bare':>8} {'hvcore':>8} {'hv/bare':>8} {'bare/C':>7} {'hv/C':>7}"
        f"  target {TARGET:.2f}x",
    ]
    for row in result.rows:
        lines.append(
            f"{row.mode:<5} {_fmt(row.c_ns, '8.0f')} {row.bare_ns:8.0f} {row.hvcore_ns:8.0f} "
            f"{row.hvcore_over_bare:8.3f} {_fmt(row.bare_over_c, '7.2f')} {_fmt(row.hvcore_over_c, '7.2f')}  "
            f"{'met' if row.met else 'missed'}"
        )
    lines += [f"(C loop skipped for {row.mode}: {row.c_skipped})" for row in result.rows if row.c_skipped]
    lines += ["", "spread of the repetitions (min-max ns per exit):"]
    for row in result.rows:
        runs = [("bare", row.bare_runs), ("hvcore", row.hvcore_runs), ("C", row.c_runs)]
        spread = ", ".join(f"{k} {min(v):.0f}-{max(v):.0f}" for k, v in runs if v)
        lines.append(f"  {row.mode}: {spread}; hvcore/bare per repetition, median {row.paired_ratio:.3f}")
    if all(row.rest_ns is not None for row in result.rows):
        names = [row.mode for row in result.rows]
        lines += [
            "",
            "where hvcore's overhead goes, ns per exit (in situ: extra loops on the same vCPUs, paired medians;",
            "alone: the same code with hot caches and no guest, usually much cheaper)",
            f"  {'':40}" + "".join(f"{n:>8}" for n in names) + f"{'alone':>8}",
        ]
        a = result.alone
        alone_decode = None if a is None else a.decode_exit + a.match - a.bare_read
        parts: list[tuple[str, Callable[[Row], float | None], float | None]] = [
            ("hvcore - bare", lambda r: r.overhead_ns, None),
            ("decode_exit + match, minus bare's read", lambda r: r.decode_ns, alone_decode),
            ("claim and kick bookkeeping in run()", lambda r: r.lock_ns, None if a is None else a.kick_lock),
            ("rest: run() call, checks, try, state", lambda r: r.rest_ns, None),
        ]
        for label, get, alone in parts:
            lines.append(f"  {label:40}" + "".join(_fmt(get(row), "8.0f") for row in result.rows) + _fmt(alone, "8.0f"))
        if a is not None:
            lines.append(
                f"  alone: decode_exit {a.decode_exit:.0f}, match {a.match:.0f}, bare's read {a.bare_read:.0f}"
            )
    ratios = ", ".join(f"{row.mode} {row.hvcore_over_bare:.3f}x" for row in result.rows)
    verdict = "MET" if result.met else "NOT MET"
    lines += ["", f"target: hvcore within {TARGET:.2f}x of bare Python in every mode: {verdict} ({ratios})"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run the bench, print the report, optionally write JSON. Exit status 0 unless it failed."""
    parser = argparse.ArgumentParser(prog="python -m bench.io_exit", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--exits", type=int, default=DEFAULT_EXITS, help="exits per repetition (%(default)s)")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, help="repetitions; the median is reported")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up exits per loop (default: exits / 5)")
    parser.add_argument("--timeout", type=float, default=30.0, help="watchdog per loop, seconds (%(default)s)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the numbers as JSON")
    parser.add_argument("--no-c", action="store_true", help="skip the C loop")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the breakdown loops")
    parser.add_argument("--cpu", type=int, default=None, help="pin the bench (and the C loop) to this CPU")
    parser.add_argument("--require-kvm", action="store_true", help="exit 1 instead of 0 when KVM is unusable")
    args = parser.parse_args(argv)
    if args.exits <= 0 or args.repeat <= 0 or (args.warmup is not None and args.warmup < 0):
        parser.error("--exits and --repeat must be positive, --warmup not negative")

    reason = kvm_unusable_reason()
    if reason is not None:
        print(f"bench.io_exit: cannot run: KVM is unusable here: {reason}")
        return 1 if args.require_kvm else 0
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    with hvcore.open_hypervisor("kvm") as hv:
        try:
            result = run_bench(
                hv,
                exits=args.exits,
                repeat=args.repeat,
                warmup=args.warmup,
                timeout=args.timeout,
                with_c=not args.no_c,
                breakdown=not args.no_breakdown,
            )
        except BenchError as exc:
            print(f"bench.io_exit: failed: {exc}", file=sys.stderr)
            return 2
    print(format_report(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
