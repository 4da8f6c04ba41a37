"""Run a conformance :class:`Case` on one backend, and compare outcomes with the expected one and across backends.

A case is a guest program (``code``, loaded at ``layout.CODE``), the mode its vCPUs start in,
extra set-up, a host script called at every exit, and the expected :class:`Outcome`::

    Case("real_prints_5", "LWN's guest prints 5", "real", real_mode.PRINTS_5,
         regs={"rax": 2, "rbx": 3},
         expect=Outcome(steps=(out(0x3F8, b"5", 0x1008), out(0x3F8, b"\\n", 0x100B), hlt(0x100C))))

:func:`run_case` records every exit with the RIP right after it and the answer the host gave,
the final registers of every vCPU (``Regs`` and ``Sregs`` flattened to ``"rax"``,
``"cs.selector"``, ``"1:rip"`` for vCPU 1 ...), the declared memory ranges, the dirty pages of
the declared slots (as guest-physical page addresses) and what the host script noted.

:func:`compare` checks each backend's outcome against ``case.expect`` as adjusted by the
registered quirks (``tests.quirks.REGISTRY``) the case names and that are active on that
backend, on the fields the expectation states; and the backends' whole outcomes against each
other, each adjusted by the other's active quirks (quirk effects set fields to the backend's
value, so they are idempotent and commute). Any other difference fails with a readable diff.

Status flags the guest leaves undefined where RFLAGS is compared (``Case.undefined_flags``, from
the model in ``tests.flags``) are cleared on both sides of every comparison first
(:func:`mask_undefined`): they differ between CPUs and emulators, so they never compare.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from typing import Literal

from hvcore import (
    VCPU,
    VM,
    DebugExit,
    Exit,
    FailEntryExit,
    GuestMemory,
    HltExit,
    Hypervisor,
    InternalErrorExit,
    InterruptedExit,
    IoDirection,
    IoExit,
    IrqWindowOpenExit,
    MmioExit,
    Regs,
    ShutdownExit,
    SlotFlags,
    Sregs,
    SystemEventExit,
    UnknownExit,
    x86,
)
from tests.boot import completed_regs, completed_rip
from tests.conftest import WATCHDOG_SECONDS, Watchdog
from tests.flags import describe as describe_flags
from tests.guests import layout
from tests.quirks import REGISTRY, Quirk

Mode = Literal["real", "protected", "long", "user", "reset"]
"""Where the vCPUs start: real mode, flat 32-bit, 64-bit CPL0 or CPL3 (identity paging), or the reset state."""

PAGE = 0x1000


# --- outcomes --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One exit: what ``run()`` returned, RIP, the vCPU, and the host's answer (IN / MMIO read).

    RIP as ``tests.boot.completed_rip`` gives it: past an OUT whichever way the backend completes
    one (tests/test_io.py checks where RIP is at the exit itself).
    """

    exit: Exit
    rip: int
    vcpu: int = 0
    answer: bytes | None = None

    def __str__(self) -> str:
        shown = self.answer if self.answer is None or len(self.answer) <= 16 else self.answer[:16]
        answer = "" if shown is None else f" <- {shown.hex()}{'...' if shown != self.answer else ''}"
        who = f"vcpu{self.vcpu} " if self.vcpu else ""
        return f"{who}{describe(self.exit)} rip={self.rip:#x}{answer}"


def describe(exit_: Exit) -> str:
    """An exit with its numbers in hex and its data as hex bytes (shortened)."""
    parts = []
    for f in fields(exit_):
        value = getattr(exit_, f.name)
        if isinstance(value, bytes):
            text = value[:16].hex() + ("..." if len(value) > 16 else "")
        elif isinstance(value, Enum):
            text = value.name
        elif isinstance(value, bool) or not isinstance(value, int):
            text = repr(value)
        else:
            text = hex(value) if f.name not in ("size", "count", "length", "exception", "suberror") else str(value)
        parts.append(f"{f.name}={text}")
    return f"{type(exit_).__name__}({', '.join(parts)})"


Note = tuple[int, str, object]
"""(index of the exit it followed, key, value) — something the host script observed."""


@dataclass(frozen=True)
class Outcome:
    """What a case produced, or (with only some ``state`` keys) what it must produce."""

    steps: tuple[Step, ...]
    state: Mapping[str, int] = field(default_factory=dict)
    memory: Mapping[str, bytes] = field(default_factory=dict)
    dirty: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    notes: tuple[Note, ...] = ()


Effect = Callable[[Outcome], Outcome]

FlagsAt = str | tuple[str, int]
"""Where RFLAGS is compared: a state key (``"rflags"``, ``"1:rflags"``), or a memory range's name and
the byte offset in it of a FLAGS / EFLAGS / RFLAGS image the guest or CPU pushed (``("frame", 4)``)."""


def flatten(regs: Regs, sregs: Sregs, prefix: str = "") -> dict[str, int]:
    """Every register as ``{"rax": ..., "cs.selector": ..., "gdt.base": ..., "interrupt_bitmap.0": ...}``."""
    state = {f"{prefix}{f.name}": int(getattr(regs, f.name)) for f in fields(regs)}
    for f in fields(sregs):
        value = getattr(sregs, f.name)
        if isinstance(value, tuple):
            state.update({f"{prefix}{f.name}.{i}": int(v) for i, v in enumerate(value)})
        elif isinstance(value, int):
            state[f"{prefix}{f.name}"] = value
        else:
            state.update({f"{prefix}{f.name}.{g.name}": int(getattr(value, g.name)) for g in fields(value)})
    return state


# --- cases -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlotSpec:
    """A memory slot the harness creates before boot; ``contents`` are (offset, bytes) written first."""

    slot: int
    guest_address: int
    size: int
    flags: SlotFlags = SlotFlags(0)
    contents: tuple[tuple[int, bytes], ...] = ()


RAM = (SlotSpec(0, layout.RAM_BASE, layout.RAM_SIZE),)
"""The default memory: ``layout.RAM_SIZE`` of RAM at 0 (IVT, GDT, CODE, stack, page tables, DATA)."""


class Host:
    """What a host script sees and does at an exit: the VM, the vCPUs, answers, notes."""

    def __init__(self, hv: Hypervisor, vm: VM, vcpus: Sequence[VCPU], memory: Mapping[int, GuestMemory]) -> None:
        self.hv, self.vm, self.vcpus, self.memory = hv, vm, list(vcpus), dict(memory)
        self.current = 0
        self.stopped = False
        self.steps: list[Step] = []
        self.notes: list[Note] = []
        self.reads = 0  # answers given so far
        self._answer: bytes | None = None
        self._threads: list[threading.Thread] = []
        self.owned: list[GuestMemory] = []  # memory the script created; closed after the VM

    @property
    def vcpu(self) -> VCPU:
        """The vCPU that ran last (and runs next unless the script switches)."""
        return self.vcpus[self.current]

    def answer(self, data: bytes | int) -> None:
        """Complete the pending IN / MMIO read of the current vCPU, and record the answer."""
        size = answer_size(self.steps[-1].exit)
        self._answer = data if isinstance(data, bytes) else data.to_bytes(size, "little")
        self.vcpu.complete(data)
        self.reads += 1

    def note(self, key: str, value: object) -> None:
        """Record an observation (compared like the exits)."""
        self.notes.append((len(self.steps) - 1, key, value))

    @property
    def halted(self) -> frozenset[int]:
        """The vCPUs that have exited with HLT."""
        return frozenset(s.vcpu for s in self.steps if isinstance(s.exit, HltExit))

    def switch(self, vcpu_id: int) -> None:
        """Run ``vcpu_id`` next."""
        self.current = vcpu_id

    def stop(self) -> None:
        """End the run after this exit."""
        self.stopped = True

    def add_slot(self, spec: SlotSpec) -> GuestMemory:
        """Create fresh memory for ``spec`` (its contents written) and map it."""
        ram = GuestMemory(spec.size)
        self.owned.append(ram)
        for offset, data in spec.contents:
            ram.write(offset, data)
        self.vm.set_memory_slot(spec.slot, spec.guest_address, ram, flags=spec.flags)
        self.memory[spec.slot] = ram
        return ram

    def write(self, address: int, data: bytes) -> None:
        """Write guest-physical memory through the slot that maps it."""
        for s in self.vm.memory_slots():
            if s.contains(address):
                s.memory.write(s.offset + address - s.guest_address, data)
                return
        raise LookupError(f"no slot maps {address:#x}")

    def read(self, address: int, length: int) -> bytes:
        """Read guest-physical memory through the slot that maps it."""
        for s in self.vm.memory_slots():
            if s.contains(address):
                return s.memory.read(s.offset + address - s.guest_address, length)
        raise LookupError(f"no slot maps {address:#x}")

    def dirty_pages(self, slot: int) -> tuple[int, ...]:
        """Read (and so clear) a slot's dirty log: the guest-physical addresses of its dirty pages."""
        base = next(s.guest_address for s in self.vm.memory_slots() if s.slot == slot)
        return tuple(base + PAGE * page for page in self.vm.get_dirty_log(slot).pages())

    def kick_from_thread(self, vcpu_id: int, delay: float) -> None:
        """Kick ``vcpu_id`` from another thread after ``delay`` seconds (joined before the outcome is taken)."""
        target = self.vcpus[vcpu_id]
        thread = threading.Timer(delay, target.kick)
        thread.start()
        self._threads.append(thread)

    def join(self) -> None:
        """Wait for the threads the script started."""
        for thread in self._threads:
            thread.join()


Script = Callable[[Host, Exit], None]
Setup = Callable[[Host], None]
Answers = Callable[[Exit, int], "bytes | int"] | Sequence["bytes | int"] | None
"""How a script answers reads: a function of the exit and the answer's index, or the answers in order."""

TERMINAL: tuple[type, ...] = (
    HltExit,
    ShutdownExit,
    InternalErrorExit,
    InterruptedExit,
    FailEntryExit,
    SystemEventExit,
    UnknownExit,
)
"""Exits that end a run under the default script."""


def answer_size(exit_: Exit) -> int:
    """How many bytes the answer to an IN (``size * count``) or an MMIO read (``length``) has."""
    if isinstance(exit_, IoExit):
        return exit_.size * exit_.count
    return exit_.length if isinstance(exit_, MmioExit) else 0


def numbered(exit_: Exit, index: int) -> bytes:
    """An answer of the size the exit needs, different for every index: ``pattern(size, index + 1)``."""
    return pattern(answer_size(exit_), index + 1)


def pattern(length: int, seed: int) -> bytes:
    """``length`` bytes that differ from any other seed's."""
    return bytes((seed * 0x35 + i * 7) & 0xFF for i in range(length))


def needs_answer(exit_: Exit) -> bool:
    """An IN or an MMIO read: the host must call ``complete()`` before the next ``run()``."""
    return (isinstance(exit_, IoExit) and exit_.is_in) or (isinstance(exit_, MmioExit) and not exit_.is_write)


def script(
    answers: Answers = None,
    *,
    actions: Mapping[int, Callable[[Host], None]] | None = None,
    steps: int | None = None,
    until: tuple[type, ...] = TERMINAL,
    until_pc: int | None = None,
) -> Script:
    """The usual host: answer reads (see ``Answers``), run ``actions[i]`` after exit i.

    Stops at an exit of a type in ``until`` (HLT, SHUTDOWN, ... by default), after ``steps``
    exits, or at a DEBUG exit whose pc is ``until_pc``.
    """
    todo = dict(actions or {})

    def host_script(host: Host, exit_: Exit) -> None:
        index = len(host.steps) - 1
        if needs_answer(exit_) and answers is not None:
            host.answer(answers(exit_, host.reads) if callable(answers) else answers[host.reads])
        if index in todo:
            todo_action = todo[index]
            todo_action(host)
        if (
            isinstance(exit_, until)
            or (steps is not None and index + 1 >= steps)
            or (isinstance(exit_, DebugExit) and exit_.pc == until_pc)
        ):
            host.stop()

    return host_script


@dataclass(frozen=True)
class Case:
    """One guest program, how to run it, and its expected outcome (as upstream KVM gives it).

    ``code`` is loaded at ``layout.CODE`` (in mode ``"reset"`` the slots' contents hold it), and
    every vCPU starts there in ``mode`` with ``regs``; then ``setup`` runs, then ``script`` at every
    exit until it stops.
    ``memory`` names guest-physical ranges snapshotted at the end; ``expect.memory`` has the same
    keys. ``expect.dirty`` names the slots whose dirty log is read at the end. ``quirks`` are the
    registry entries the case may meet; ``variants`` give, for a quirk whose difference depends on
    the guest, the exact effect on this case. ``undefined_flags`` say, for each place RFLAGS is
    compared, the status flags the guest leaves undefined there (``tests.flags.undefined_after``
    of the instructions that last wrote them): never compared. ``covers`` tags the features it exercises.
    """

    name: str
    summary: str
    mode: Mode
    code: bytes
    expect: Outcome
    script: Script = field(default_factory=script)
    setup: Setup | None = None
    regs: Mapping[str, int] = field(default_factory=dict)
    slots: tuple[SlotSpec, ...] = RAM
    memory: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    vcpus: int = 1
    threads: bool = False
    irqchip: bool = False
    """Create the in-kernel irqchip before the vCPUs."""
    pit: bool = False
    """Create the PIT too (after the irqchip)."""
    quirks: tuple[str, ...] = ()
    variants: Mapping[str, Effect] = field(default_factory=dict)
    undefined_flags: Mapping[FlagsAt, int] = field(default_factory=dict)
    covers: frozenset[str] = frozenset()
    limit: int = 100


# --- expected-exit helpers ---------------------------------------------------------------------------


def _data(value: bytes | int, size: int) -> bytes:
    return value if isinstance(value, bytes) else value.to_bytes(size, "little")


def out(port: int, value: bytes | int, rip: int, *, size: int = 1, vcpu: int = 0) -> Step:
    """An OUT of ``size`` bytes."""
    data = _data(value, size)
    return Step(IoExit(port, len(data), 1, IoDirection.OUT, data), rip, vcpu)


def io_in(port: int, size: int, rip: int, answer: bytes | int, *, count: int = 1, vcpu: int = 0) -> Step:
    """An IN (``count`` elements for ``rep ins``) and the host's answer."""
    return Step(IoExit(port, size, count, IoDirection.IN), rip, vcpu, _data(answer, size * count))


def mmio_write(address: int, value: bytes | int, rip: int, *, length: int = 1, vcpu: int = 0) -> Step:
    """An MMIO write."""
    data = _data(value, length)
    return Step(MmioExit(address, len(data), True, data), rip, vcpu)


def mmio_read(address: int, length: int, rip: int, answer: bytes | int, *, vcpu: int = 0) -> Step:
    """An MMIO read and the host's answer."""
    return Step(MmioExit(address, length, False), rip, vcpu, _data(answer, length))


def hlt(rip: int, *, vcpu: int = 0) -> Step:
    """HLT (RIP past it)."""
    return Step(HltExit(), rip, vcpu)


def shutdown(rip: int, *, vcpu: int = 0) -> Step:
    """A triple fault."""
    return Step(ShutdownExit(), rip, vcpu)


def window(rip: int, *, vcpu: int = 0) -> Step:
    """IRQ_WINDOW_OPEN."""
    return Step(IrqWindowOpenExit(), rip, vcpu)


def interrupted(rip: int, *, vcpu: int = 0) -> Step:
    """EINTR: a kick or ``immediate_exit``."""
    return Step(InterruptedExit(), rip, vcpu)


def emulation_failure(rip: int, *, vcpu: int = 0) -> Step:
    """INTERNAL_ERROR, suberror 1, with only the flags word as data (registry: ``internal_error_exit_info``)."""
    return Step(InternalErrorExit(1, (0,)), rip, vcpu)


def single_step(pc: int, *, vcpu: int = 0) -> Step:
    """A single-step DEBUG exit as upstream reports it (dr6.BS, dr7 = its reset value)."""
    return Step(DebugExit(1, pc, 0xFFFF4FF0, 0x400), pc, vcpu)


# --- running -------------------------------------------------------------------------------------------


def _boot(hv: Hypervisor, vcpu: VCPU, mode: Mode, host: Host, regs: Mapping[str, int]) -> None:
    """Put ``vcpu`` in ``mode`` at CODE, writing the GDT (and page tables) through ``host``."""
    if mode == "reset":
        vcpu.set_cpuid(hv.supported_cpuid())
        if regs:
            vcpu.set_regs(replace(vcpu.get_regs(), **regs))
        return
    scratch = GuestMemory(layout.DATA)
    with scratch:
        sregs = vcpu.get_sregs()
        if mode == "real":
            sregs = x86.real_mode_sregs(sregs)
        elif mode == "protected":
            sregs = x86.protected_mode_sregs(sregs, scratch, layout.GDT)
        else:
            vcpu.set_cpuid(hv.supported_cpuid())
            sregs = x86.long_mode_sregs(sregs, scratch, layout.GDT, layout.PML4, user=mode == "user")
            host.write(layout.PML4, scratch.read(layout.PML4, 3 * PAGE))
        if mode != "real":
            host.write(layout.GDT, scratch.read(layout.GDT, sregs.gdt.limit + 1))
    vcpu.set_sregs(sregs)
    initial = {"rip": layout.CODE, "rsp": layout.STACK_TOP, "rflags": 0x2} | dict(regs)
    vcpu.set_regs(replace(vcpu.get_regs(), **initial))


def _loop(case: Case, host: Host) -> None:
    while not host.stopped:
        if len(host.steps) >= case.limit:
            tail = "\n  ".join(str(s) for s in host.steps[-5:])
            raise AssertionError(f"{case.name}: no end within {case.limit} exits; last:\n  {tail}")
        vcpu = host.vcpu
        exit_ = vcpu.run()
        host.steps.append(Step(exit_, completed_rip(host.hv, host.vm, vcpu, exit_), vcpu.id))
        host._answer = None
        case.script(host, exit_)
        if host._answer is not None:
            host.steps[-1] = replace(host.steps[-1], answer=host._answer)
        elif needs_answer(exit_) and host.steps[-1].vcpu == host.vcpu.id and not host.stopped:
            raise AssertionError(f"{case.name}: the guest asked for data and the script gave none: {exit_!r}")


def run_case(hv: Hypervisor, case: Case, wrap: Callable[[VM, VCPU], VCPU] | None = None) -> Outcome:
    """Run ``case`` on ``hv`` in a fresh VM under the watchdog; everything it produced.

    ``wrap`` may replace each new vCPU by a wrapper (e.g. a trace recorder) before it is set up.
    """
    with ExitStack() as stack:
        owned: list[GuestMemory] = []

        def close_memory() -> None:
            for ram in owned:
                ram.close()

        stack.callback(close_memory)
        vm = stack.enter_context(hv.create_vm())  # closed before the memory
        dog = stack.enter_context(Watchdog(vm, WATCHDOG_SECONDS))
        host = Host(hv, vm, [], {})
        host.owned = owned
        for spec in case.slots:
            host.add_slot(spec)
        if case.irqchip:
            vm.create_irqchip()
        if case.pit:
            vm.create_pit()
        host.vcpus = [vm.create_vcpu(i) for i in range(case.vcpus)]
        if wrap is not None:
            host.vcpus = [wrap(vm, vcpu) for vcpu in host.vcpus]
        vcpus = host.vcpus
        if case.mode != "reset":
            host.write(layout.CODE, case.code)
        for vcpu in vcpus:
            _boot(hv, vcpu, case.mode, host, case.regs)
        if case.setup is not None:
            case.setup(host)
        try:
            if case.threads:
                _run_threads(case, host)
            else:
                _loop(case, host)
        finally:
            host.join()
        assert not dog.fired, f"{case.name}: the watchdog fired on {hv.name} (the guest ran over {WATCHDOG_SECONDS} s)"
        state: dict[str, int] = {}
        last = {step.vcpu: step for step in host.steps}
        for vcpu in vcpus:
            regs = vcpu.get_regs() if vcpu.id not in last else completed_regs(hv, vm, vcpu, last[vcpu.id].exit)
            state |= flatten(regs, vcpu.get_sregs(), f"{vcpu.id}:" if vcpu.id else "")
        snapshots = {name: host.read(address, length) for name, (address, length) in case.memory.items()}
        dirty = {slot: host.dirty_pages(slot) for slot in case.expect.dirty}
        return Outcome(tuple(host.steps), state, snapshots, dirty, tuple(host.notes))


def _run_threads(case: Case, host: Host) -> None:
    """Each vCPU runs the script in its own thread; the steps are then listed vCPU by vCPU."""
    hosts = [Host(host.hv, host.vm, host.vcpus, host.memory) for _ in host.vcpus]
    errors: list[BaseException] = []

    def work(own: Host) -> None:
        try:
            _loop(case, own)
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    for index, own in enumerate(hosts):
        own.current = index
    threads = [threading.Thread(target=work, args=(own,), name=f"vcpu{i}") for i, own in enumerate(hosts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    for own in hosts:
        offset = len(host.steps)
        host.steps.extend(own.steps)
        host.notes.extend((offset + index, key, value) for index, key, value in own.notes)


# --- comparing -----------------------------------------------------------------------------------------


def quirk(name: str) -> Quirk:
    """The registry entry called ``name``."""
    for entry in REGISTRY:
        if entry.name == name:
            return entry
    raise KeyError(f"no quirk {name!r} in tests.quirks.REGISTRY")


def active_quirks(case: Case, hv: Hypervisor) -> tuple[str, ...]:
    """The quirks ``case`` names that apply to ``hv`` (on this host)."""
    return tuple(name for name in case.quirks if quirk(name).applies(hv))


def adjust(case: Case, outcome: Outcome, names: Sequence[str]) -> Outcome:
    """``outcome`` as it looks on a backend with quirks ``names``: each quirk's exact effect applied."""
    for name in names:
        effect = quirk(name).effect or case.variants.get(name)
        if effect is None:
            raise AssertionError(f"{case.name}: quirk {name!r} is guest-specific and the case gives no variant")
        outcome = effect(outcome)
    return outcome


def expected_for(case: Case, quirk_names: Sequence[str]) -> Outcome:
    """``case.expect`` adjusted by the quirks active on a backend."""
    return adjust(case, case.expect, quirk_names)


FLAGS_IMAGE = 2
"""Bytes of a pushed flags image that hold the status flags (bits 0-11), whatever its size."""


def mask_undefined(case: Case, outcome: Outcome) -> Outcome:
    """``outcome`` with the flags ``case.undefined_flags`` names cleared, where it holds them."""
    if not case.undefined_flags:
        return outcome
    state, memory = dict(outcome.state), dict(outcome.memory)
    for where, flags in case.undefined_flags.items():
        if isinstance(where, str):
            if where in state:
                state[where] &= ~flags
            continue
        name, offset = where
        image = memory.get(name)
        if image is not None and offset + FLAGS_IMAGE <= len(image):
            value = int.from_bytes(image[offset : offset + FLAGS_IMAGE], "little") & ~flags
            memory[name] = image[:offset] + value.to_bytes(FLAGS_IMAGE, "little") + image[offset + FLAGS_IMAGE :]
    return replace(outcome, state=state, memory=memory)


def masked(case: Case) -> str:
    """What :func:`mask_undefined` clears, for a failure report (empty if nothing)."""
    places = [
        f"{where if isinstance(where, str) else f'{where[0]}+{where[1]:#x}'} {describe_flags(flags)}"
        for where, flags in case.undefined_flags.items()
    ]
    return f"(undefined, not compared: {'; '.join(places)})" if places else ""


def _show(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return hex(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple) and all(isinstance(v, int) for v in value):
        return "(" + ", ".join(hex(v) for v in value) + ")"
    return repr(value)


def diff(
    expected: Outcome, actual: Outcome, *, only_expected_state: bool, labels: tuple[str, str] = ("expected", "seen")
) -> list[str]:
    """Readable differences: the first differing exit (with both listings), then field by field.

    With ``only_expected_state`` only the registers ``expected`` states are compared.
    """
    lines: list[str] = []
    a, b = labels
    if expected.steps != actual.steps:
        first = next(
            (i for i, (x, y) in enumerate(zip(expected.steps, actual.steps, strict=False)) if x != y),
            min(len(expected.steps), len(actual.steps)),
        )
        lines.append(f"exits differ from #{first} ({len(expected.steps)} {a}, {len(actual.steps)} {b})")
        start = max(first - 2, 0)
        for label, steps in ((a, expected.steps), (b, actual.steps)):
            lines.append(f"  {label}:")
            shown = steps[start : first + 8]
            lines.extend(f"   {'>' if i == first else ' '}{i:3} {step}" for i, step in enumerate(shown, start))
            if len(steps) > first + 8:
                lines.append(f"        ... {len(steps) - first - 8} more")
    keys = expected.state.keys() if only_expected_state else expected.state.keys() | actual.state.keys()
    for key in sorted(keys):
        want, got = expected.state.get(key), actual.state.get(key)
        if want != got:
            lines.append(f"state {key}: {a} {_show(want)}, {b} {_show(got)}")
    for name in sorted(expected.memory.keys() | actual.memory.keys()):
        want_bytes, got_bytes = expected.memory.get(name), actual.memory.get(name)
        if want_bytes != got_bytes:
            if want_bytes is None or got_bytes is None:
                lines.append(f"memory {name}: {a} {_show(want_bytes)}, {b} {_show(got_bytes)}")
                continue
            at = next((i for i, (x, y) in enumerate(zip(want_bytes, got_bytes, strict=False)) if x != y), 0)
            lines.append(
                f"memory {name} differs from byte {at:#x}: {a} {want_bytes[at:at + 16].hex()}, "
                f"{b} {got_bytes[at:at + 16].hex()}"
            )
    for slot in sorted(expected.dirty.keys() | actual.dirty.keys()):
        if expected.dirty.get(slot) != actual.dirty.get(slot):
            want_pages, got_pages = _show(expected.dirty.get(slot)), _show(actual.dirty.get(slot))
            lines.append(f"dirty pages of slot {slot}: {a} {want_pages}, {b} {got_pages}")
    if expected.notes != actual.notes:
        lines.append("host notes differ:")
        lines.append(f"  {a}: {[(i, k, _show(v)) for i, k, v in expected.notes]}")
        lines.append(f"  {b}: {[(i, k, _show(v)) for i, k, v in actual.notes]}")
    return lines


@dataclass(frozen=True)
class Run:
    """One backend's outcome of a case and the quirks active there."""

    backend: str
    quirks: tuple[str, ...]
    outcome: Outcome


def check_expected(case: Case, run: Run) -> list[str]:
    """Differences between ``run`` and the case's expectation for that backend (stated fields only)."""
    expected = mask_undefined(case, expected_for(case, run.quirks))
    lines = diff(expected, mask_undefined(case, run.outcome), only_expected_state=True)
    lines += [masked(case)] if lines and case.undefined_flags else []
    return [f"[{run.backend}{' with ' + ', '.join(run.quirks) if run.quirks else ''}] {line}" for line in lines]


def check_alike(case: Case, first: Run, second: Run) -> list[str]:
    """Differences between two backends' whole outcomes, each seen through the other's quirks."""
    left = mask_undefined(case, adjust(case, first.outcome, second.quirks))
    right = mask_undefined(case, adjust(case, second.outcome, first.quirks))
    lines = diff(left, right, only_expected_state=False, labels=(first.backend, second.backend))
    lines += [masked(case)] if lines and case.undefined_flags else []
    return [f"[{first.backend} vs {second.backend}] {line}" for line in lines]


def compare(case: Case, runs: Mapping[str, Run]) -> None:
    """Fail with a readable diff unless every run matches its expectation and the runs match each other."""
    problems: list[str] = []
    for run in runs.values():
        problems += check_expected(case, run)
    ordered = sorted(runs.values(), key=lambda r: r.backend)
    for i, first in enumerate(ordered):
        for second in ordered[i + 1 :]:
            problems += check_alike(case, first, second)
    if problems:
        raise AssertionError(f"{case.name}: {case.summary}\n" + "\n".join(problems))


def run_on(hv: Hypervisor, case: Case) -> Run:
    """``run_case`` with the quirks active on ``hv``."""
    return Run(hv.name, active_quirks(case, hv), run_case(hv, case))
