"""Run one generated guest on a ``Machine`` with every PC device, and say everything that went wrong.

``run_guest`` builds a fresh machine (4 MiB RAM, one vCPU, the in-kernel irqchip and PIT, every
device of ``add_pc_devices`` including the HPET and the PCI bus, virtio-rng on virtio-mmio and on virtio-pci,
a 64 KiB ROM at ``guestgen.ROM``), loads the
guest as a raw 64-bit image with the 4th GiB (IOAPIC, HPET, LAPIC) mapped too, runs it with
``Machine.run(timeout=...)`` and closes it. ``Outcome.problems`` lists what the fuzzer fails on:

- ``run()`` or ``close()`` raised instead of returning a result;
- ``run()`` did not return within ``timeout + HANG_SLACK`` seconds (a watchdog thread notices it,
  stops the machine and dumps every thread's stack into the report);
- the result is an error that is not one of hvcore's typed errors, or that a device model or a
  bus raised (a device never raises for a guest access: ``hvcore.vmm.device.Device``);
- a thread died of an exception (``threading.excepthook``);
- a thread or a file descriptor outlived the machine.
"""

from __future__ import annotations

import faulthandler
import io
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import hvcore.vmm
from hvcore import HvError, Hypervisor
from hvcore.vmm import Machine, MachineResult, add_pc_devices
from hvcore.vmm.loaders import load_raw
from hvcore.vmm.virtio import VirtioRng, add_virtio_mmio
from hvcore.vmm.virtio.pci import add_virtio_pci
from tests.fuzz_devices.guestgen import CODE, RAM_SIZE, ROM, ROM_SIZE, Program

HANG_SLACK = 10.0
"""Seconds past the run's timeout after which ``run()`` counts as hung."""
APIC_PD = RAM_SIZE - 0x1000
"""The page directory mapping the 4th GiB (last page of RAM; the guest may overwrite it, as it may anything)."""
_VMM_DIR = Path(hvcore.vmm.__file__).parent
_DEVICE_CODE = (_VMM_DIR / "devices", _VMM_DIR / "bus.py", _VMM_DIR / "timers.py")
"""Where a raised exception means a device model failed on guest input."""


@dataclass
class Outcome:
    """How one run went: its result (None if ``run()`` raised), wall time, exit counts and every problem."""

    result: MachineResult | None = None
    seconds: float = 0.0
    statistics: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _formatted(error: BaseException) -> str:
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


def _from_device(error: BaseException) -> bool:
    """Whether any frame of ``error``'s traceback (or its causes') is in a device model, a bus or the timers."""
    seen: BaseException | None = error
    while seen is not None:
        for frame in traceback.extract_tb(seen.__traceback__):
            path = Path(frame.filename)
            if any(path == place or place in path.parents for place in _DEVICE_CODE):
                return True
        seen = seen.__cause__ or seen.__context__
    return False


def result_problem(result: MachineResult) -> str | None:
    """What is wrong with a run's result, or None: an error must be a typed hvcore error no device raised."""
    error = result.error
    if error is None:
        return None
    if not isinstance(error, HvError):
        return f"the run ended with a raw {type(error).__name__}, not an hvcore error:\n{_formatted(error)}"
    if _from_device(error):
        return f"a device raised on a guest access (devices never do):\n{_formatted(error)}"
    if error.__traceback__ is not None:
        # the machine reports what the guest did (an exit it cannot handle) with an error it builds,
        # never raises; a raised one is the backend or the VMM failing on what the guest did
        return f"the backend or the VMM failed on what the guest did:\n{_formatted(error)}"
    return None


def _thread_stacks() -> str:
    frames = sys._current_frames()
    out = []
    for thread in threading.enumerate():
        frame = frames.get(thread.ident or -1)
        if frame is not None:
            out.append(f"thread {thread.name}:\n" + "".join(traceback.format_stack(frame)))
    return "\n".join(out)


class HangWatch:
    """A thread that, if ``run()`` has not returned within ``seconds``, records the stacks and stops the machine."""

    def __init__(self, machine: Machine, seconds: float) -> None:
        self.machine = machine
        self.seconds = seconds
        self.stacks: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="fuzz-devices-hangwatch", daemon=True)

    def _watch(self) -> None:
        if self._done.wait(self.seconds):
            return
        self.stacks = _thread_stacks()
        self.machine.stop(MachineResult("stopped"))  # try to unstick it, so the report can be written

    def __enter__(self) -> HangWatch:
        # the last resort, for a hang that stop() cannot end: every stack on stderr, then exit
        faulthandler.dump_traceback_later(self.seconds + 3 * HANG_SLACK, exit=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        faulthandler.cancel_dump_traceback_later()


@contextmanager
def thread_exceptions() -> Iterator[list[str]]:
    """Collect every exception that ends a thread (instead of letting ``threading`` print it)."""
    caught: list[str] = []
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread is not None else "?"
        if args.exc_value is not None:
            caught.append(f"thread {name} died:\n{_formatted(args.exc_value)}")

    threading.excepthook = hook
    try:
        yield caught
    finally:
        threading.excepthook = previous


def _fds() -> set[str]:
    try:
        return set(os.listdir("/proc/self/fd"))
    except OSError:  # no procfs: fds are not checked
        return set()


def build(hv: Hypervisor, program: Program) -> Machine:
    """A machine with every PC device and a ROM, the guest loaded in 64-bit mode with the 4th GiB mapped."""
    machine = Machine(hv, memory=RAM_SIZE, cpus=1)
    try:
        add_pc_devices(machine, serial=io.BytesIO(), debugcon=io.BytesIO())
        add_virtio_mmio(machine, VirtioRng())
        add_virtio_pci(machine, VirtioRng())
        machine.add_rom(ROM, bytes(range(256)) * (ROM_SIZE // 256))
        plan = load_raw(program.code, machine, address=CODE, mode="long")
        machine.boot(plan)
        # the 4th GiB with 2 MiB pages, uncached (PCD): what tests.boot.map_apic_window does
        entries = b"".join(((0xC0000000 + (i << 21)) | 0x97).to_bytes(8, "little") for i in range(512))
        machine.write(APIC_PD, entries)
        machine.write(plan.page_tables + 0x1000 + 3 * 8, (APIC_PD | 0x7).to_bytes(8, "little"))
    except BaseException:
        machine.close()
        raise
    return machine


def run_guest(hv: Hypervisor, program: Program, timeout: float) -> Outcome:
    """Run ``program`` once on a fresh machine; see the module docstring for what counts as a problem."""
    outcome = Outcome()
    threads, fds = set(threading.enumerate()), _fds()
    with thread_exceptions() as died:
        machine = build(hv, program)
        try:
            with HangWatch(machine, timeout + HANG_SLACK) as watch:
                start = time.monotonic()
                try:
                    outcome.result = machine.run(timeout=timeout)
                except BaseException as exc:  # the point: nothing may come out of run()
                    outcome.problems.append(f"run() raised instead of returning a result:\n{_formatted(exc)}")
                outcome.seconds = time.monotonic() - start
            outcome.statistics = dict(machine.statistics())
            if watch.stacks is not None:
                outcome.problems.append(
                    f"run(timeout={timeout}) had not returned after {timeout + HANG_SLACK} s; stacks then:\n"
                    + watch.stacks
                )
        finally:
            try:
                machine.close()
            except BaseException as exc:
                outcome.problems.append(f"close() raised:\n{_formatted(exc)}")
    outcome.problems += died
    if outcome.result is not None and (problem := result_problem(outcome.result)):
        outcome.problems.append(problem)
    leaked = [t.name for t in set(threading.enumerate()) - threads if t.is_alive()]
    if leaked:
        outcome.problems.append(f"threads left running after close(): {leaked}")
    opened = _fds() - fds
    if opened:
        still = {fd: _target(fd) for fd in opened}
        still = {fd: what for fd, what in still.items() if what is not None}
        if still:
            outcome.problems.append(f"file descriptors left open after close(): {still}")
    return outcome


def _target(fd: str) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # closed meanwhile (the listing's own fd)
        return None
