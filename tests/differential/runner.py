"""Run one generated guest on one hypervisor and record what it did: every exit, then the final state.

The host side is deterministic, so two backends that run a guest the same way record equal
``Outcome`` values: every IN and MMIO read gets ``answer(step, port or address, size)``, a
hash of the exit's index in the trace and what it accessed. A run stops at HLT, SHUTDOWN,
INTERNAL_ERROR, any other exit that is not IO or MMIO, after ``MAX_EXITS`` exits, or when
the ``Watchdog`` had to kick the vCPU (then the last exit is ``InterruptedExit``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from hvcore import VCPU, VM, Exit, Hypervisor, IoDirection, IoExit, MmioExit, Regs
from tests.boot import boot, completed_regs, completed_rip, read_guest, write_guest
from tests.differential.guestgen import SCRATCH, SCRATCH_SIZE, Program
from tests.guests import layout

MAX_EXITS = 256
"""A guest of 20 instructions makes at most ~40 exits; more means a runaway."""
STACK_WINDOW = 0x100
"""Bytes either side of ``layout.STACK_TOP`` compared after the run (pushes land there)."""
_MASK64 = (1 << 64) - 1


def answer(step: int, key: int, size: int) -> int:
    """The host's answer to the IN / MMIO read at trace index ``step`` on port or address ``key``."""
    x = (step << 40 ^ key ^ 0x9E3779B97F4A7C15) & _MASK64  # splitmix64
    x = (x ^ x >> 30) * 0xBF58476D1CE4E5B9 & _MASK64
    x = (x ^ x >> 27) * 0x94D049BB133111EB & _MASK64
    return (x ^ x >> 31) & ((1 << 8 * size) - 1)


@dataclass(frozen=True)
class Step:
    """One exit and the guest's RIP right after ``run()`` returned it."""

    exit: Exit
    rip: int

    def __str__(self) -> str:
        match self.exit:
            case MmioExit(address=address, length=length, is_write=True, data=data):
                what = f"MMIO write {address:#x} len {length} data {data.hex()}"
            case MmioExit(address=address, length=length):
                what = f"MMIO read  {address:#x} len {length}"
            case IoExit(port=port, size=size, count=count, direction=IoDirection.OUT, data=data):
                what = f"OUT {port:#x} size {size} count {count} data {data.hex()}"
            case IoExit(port=port, size=size, count=count):
                what = f"IN  {port:#x} size {size} count {count}"
            case other:
                what = repr(other)
        return f"{what}, rip={self.rip:#x}"


@dataclass(frozen=True)
class Outcome:
    """Everything one run showed: the exits in order, then the registers and the memory the guest could write."""

    steps: tuple[Step, ...]
    regs: Regs
    scratch: bytes
    stack: bytes


class Watchdog:
    """One thread for many runs: kicks the watched VM's vCPUs while a run takes longer than ``seconds``.

    ``tests.conftest`` guards the ``vm`` fixture, one per test; hypothesis makes a VM per example
    inside one test, so ``watch(vm)`` arms this one around each run instead.
    """

    def __init__(self, seconds: float = 10.0) -> None:
        self.seconds = seconds
        self.fired = 0
        self._cond = threading.Condition()
        self._vm: VM | None = None
        self._deadline = 0.0
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="fuzz-watchdog", daemon=True)
        self._thread.start()

    @contextmanager
    def watch(self, vm: VM) -> Iterator[None]:
        """Arm the watchdog for ``vm`` while the block runs (it must end before ``vm`` closes)."""
        with self._cond:
            self._vm, self._deadline = vm, time.monotonic() + self.seconds
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._vm = None

    def _loop(self) -> None:
        with self._cond:
            while not self._closed:
                if self._vm is None:
                    self._cond.wait()
                elif (left := self._deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
                else:  # kick under the lock: watch() cannot return, so the VM is still open
                    self.fired += 1
                    for vcpu in self._vm.vcpus():
                        vcpu.kick()
                    self._cond.wait(0.05)

    def close(self) -> None:
        """Stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()


def run(
    hv: Hypervisor, program: Program, watchdog: Watchdog, setup: Callable[[VM, VCPU], None] | None = None
) -> Outcome:
    """Run ``program`` in a fresh VM on ``hv`` (64-bit long mode, CPL0) and record its ``Outcome``.

    ``setup`` (the regression tests' extra slots, IDT...) runs once the vCPU is ready, before the guest.
    """
    with hv.create_vm() as vm, watchdog.watch(vm):
        vcpu = boot(hv, vm, program.code, "long", rflags=program.rflags)
        vcpu.set_regs(replace(vcpu.get_regs(), **program.regs))
        write_guest(vm, SCRATCH, program.scratch)
        if setup is not None:
            setup(vm, vcpu)
        steps: list[Step] = []
        while len(steps) < MAX_EXITS:
            exit_ = vcpu.run()
            steps.append(Step(exit_, completed_rip(hv, vm, vcpu, exit_)))  # past an OUT on every backend
            match exit_:
                case IoExit(direction=IoDirection.IN, port=port, size=size):
                    vcpu.complete(answer(len(steps) - 1, port, size))
                case MmioExit(is_write=False, address=address, length=length):
                    vcpu.complete(answer(len(steps) - 1, address, length))
                case IoExit() | MmioExit():
                    pass
                case _:
                    break
        stack = read_guest(vm, layout.STACK_TOP - STACK_WINDOW, 2 * STACK_WINDOW)
        regs = completed_regs(hv, vm, vcpu, steps[-1].exit) if steps else vcpu.get_regs()
        return Outcome(tuple(steps), regs, read_guest(vm, SCRATCH, SCRATCH_SIZE), stack)
