"""Exit traces: record every exit of a vCPU as JSON lines, and replay a trace on any backend.

Record on a KVM host, replay on a laptop with the simulator::

    with open("boot.trace", "w") as sink:
        vcpu = trace.TracingVCPU(kvm_vm.create_vcpu(0), sink)
        ...                              # set up and run as usual; every exit is written
    ...
    with open("boot.trace") as source:
        recorded = trace.read_trace(source)
    sim_vcpu = sim_vm.create_vcpu(0)     # the same memory image as when recording
    divergence = trace.replay(recorded, sim_vcpu)   # restores the recorded start state
    assert divergence is None, str(divergence)

The first line is a header with the backend, the vCPU's start state (set when recording
begins) and a digest of every memory slot; then one line per exit: the exit with all its
fields, RIP after it, and the answer the VMM gave to an IN or MMIO read. Replaying feeds the
recorded answers back and stops at the first exit or RIP that differs, with a readable diff.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import IO, Any, Final

from hvcore.checks import completion_bytes
from hvcore.delegate import DelegatingVCPU
from hvcore.errors import InvalidArgument
from hvcore.exits import (
    DebugExit,
    Exit,
    FailEntryExit,
    HltExit,
    InternalErrorExit,
    InterruptedExit,
    IoDirection,
    IoExit,
    IrqWindowOpenExit,
    MmioExit,
    ShutdownExit,
    SystemEventExit,
    UnknownExit,
)
from hvcore.lifetime import Closeable
from hvcore.protocol import VCPU, VM
from hvcore.types import DescriptorTable, GuestDebug, GuestDebugFlags, Regs, Segment, Sregs

__all__ = [
    "TRACE_FORMAT",
    "Divergence",
    "Trace",
    "TraceAction",
    "TraceEntry",
    "TracingVCPU",
    "exit_from_json",
    "exit_to_json",
    "read_trace",
    "replay",
]

TRACE_FORMAT: Final = "hvcore-trace/1"

_KINDS: Final[dict[type, str]] = {
    IoExit: "io",
    MmioExit: "mmio",
    HltExit: "hlt",
    ShutdownExit: "shutdown",
    DebugExit: "debug",
    IrqWindowOpenExit: "irq_window_open",
    InterruptedExit: "interrupted",
    InternalErrorExit: "internal_error",
    FailEntryExit: "fail_entry",
    SystemEventExit: "system_event",
    UnknownExit: "unknown",
}
_CLASSES: Final = {name: cls for cls, name in _KINDS.items()}


def exit_to_json(exit_: Exit) -> dict[str, Any]:
    """A JSON-ready dict of ``exit_``: its kind and every field (bytes as hex, tuples as lists)."""
    record: dict[str, Any] = {"kind": _KINDS[type(exit_)]}
    for f in fields(exit_):
        value = getattr(exit_, f.name)
        if isinstance(value, bytes):
            value = value.hex()
        elif isinstance(value, IoDirection):
            value = value.name.lower()
        elif isinstance(value, tuple):
            value = list(value)
        record[f.name] = value
    return record


def exit_from_json(record: Mapping[str, Any]) -> Exit:
    """The exit :func:`exit_to_json` described."""
    try:
        cls = _CLASSES[record["kind"]]
    except KeyError:
        raise InvalidArgument(f"not an exit record: {dict(record)!r}") from None
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in record:
            continue
        value = record[f.name]
        if f.name == "data" and isinstance(value, str):
            value = bytes.fromhex(value)
        elif f.name == "direction":
            value = IoDirection[value.upper()]
        elif isinstance(value, list):
            value = tuple(value)
        values[f.name] = value
    exit_: Exit = cls(**values)
    return exit_


@dataclass(frozen=True)
class TraceEntry:
    """One exit, RIP after it, and the answer the VMM gave (for an IN or MMIO read)."""

    exit: Exit
    rip: int
    answer: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"exit": exit_to_json(self.exit), "rip": self.rip, "answer": self.answer.hex() if self.answer else None}

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> TraceEntry:
        """The entry :meth:`to_json` described."""
        answer = record.get("answer")
        return cls(exit_from_json(record["exit"]), int(record["rip"]), bytes.fromhex(answer) if answer else None)


@dataclass(frozen=True)
class TraceAction:
    """Something the VMM did to the vCPU between exits, replayed in order: ``interrupt``, ``nmi``,
    ``request_interrupt_window``, ``immediate_exit``, ``set_regs``, ``set_sregs``, ``set_guest_debug``."""

    name: str
    args: Any = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"action": self.name, "args": self.args}

    def apply(self, vcpu: VCPU) -> None:
        """Do it to ``vcpu``."""
        name, args = self.name, self.args
        if name == "interrupt":
            vcpu.interrupt(int(args))
        elif name == "nmi":
            vcpu.nmi()
        elif name == "request_interrupt_window":
            vcpu.request_interrupt_window = bool(args)
        elif name == "immediate_exit":
            vcpu.immediate_exit = bool(args)
        elif name == "set_regs":
            vcpu.set_regs(Regs(**args))
        elif name == "set_sregs":
            vcpu.set_sregs(_sregs_from_json(args))
        elif name == "set_guest_debug":
            vcpu.set_guest_debug(GuestDebug(GuestDebugFlags(args["flags"]), tuple(args["debugreg"])))
        else:
            raise InvalidArgument(f"unknown trace action {name!r}")


@dataclass(frozen=True)
class Trace:
    """A recorded trace: the header (backend, start state, memory digests) and the events in order."""

    header: dict[str, Any]
    events: tuple[TraceEntry | TraceAction, ...] = field(default_factory=tuple)

    @property
    def entries(self) -> tuple[TraceEntry, ...]:
        """The exits only."""
        return tuple(e for e in self.events if isinstance(e, TraceEntry))


def _regs_json(regs: Regs) -> dict[str, int]:
    return asdict(regs)


def _sregs_json(sregs: Sregs) -> dict[str, Any]:
    return asdict(sregs)


def _sregs_from_json(record: Mapping[str, Any]) -> Sregs:
    def seg(name: str) -> Segment:
        return Segment(**record[name])

    def table(name: str) -> DescriptorTable:
        return DescriptorTable(**record[name])

    bitmap = record["interrupt_bitmap"]
    return Sregs(
        cs=seg("cs"),
        ds=seg("ds"),
        es=seg("es"),
        fs=seg("fs"),
        gs=seg("gs"),
        ss=seg("ss"),
        tr=seg("tr"),
        ldt=seg("ldt"),
        gdt=table("gdt"),
        idt=table("idt"),
        cr0=record["cr0"],
        cr2=record["cr2"],
        cr3=record["cr3"],
        cr4=record["cr4"],
        cr8=record["cr8"],
        efer=record["efer"],
        apic_base=record["apic_base"],
        interrupt_bitmap=(bitmap[0], bitmap[1], bitmap[2], bitmap[3]),
    )


def memory_digests(vm: VM) -> list[dict[str, Any]]:
    """Each slot's layout and a SHA-256 of its contents (to check a replay starts from the same image)."""
    digests = []
    for s in vm.memory_slots():
        content = s.memory.read(s.offset, s.size)
        digests.append(
            {
                "slot": s.slot,
                "guest_address": s.guest_address,
                "size": s.size,
                "flags": int(s.flags),
                "sha256": hashlib.sha256(content).hexdigest(),
            }
        )
    return digests


class TracingVCPU(DelegatingVCPU, Closeable):
    """A VCPU that writes every exit to ``sink`` (JSON lines) and keeps them in :attr:`entries`.

    The header (start registers, memory digests) is written when wrapping, so wrap a vCPU once
    it is set up (or let the recorded ``set_regs``/``set_sregs`` carry the setup). An exit's line
    is written when the next ``run()`` or action starts (or at ``close()``/``flush()``), so it carries
    the answer the VMM gave. Pass ``vm`` to record a digest of its memory in the header.
    """

    def __init__(self, vcpu: VCPU, sink: IO[str] | None = None, *, vm: VM | None = None, backend: str = "") -> None:
        super().__init__(vcpu)
        self._sink = sink
        self.entries: list[TraceEntry] = []
        self.actions: list[TraceAction] = []
        self._last: TraceEntry | None = None
        self._header_written = False
        self._vm = vm
        self._backend = backend
        self._header()  # the start state: everything the VMM does from here on is recorded

    def _write(self, record: Mapping[str, Any]) -> None:
        if self._sink is not None:
            self._sink.write(json.dumps(record, sort_keys=True) + "\n")

    def _header(self) -> None:
        if self._header_written:
            return
        self._header_written = True
        inner = self.inner
        self._write(
            {
                "format": TRACE_FORMAT,
                "backend": self._backend,
                "vcpu": inner.id,
                "regs": _regs_json(inner.get_regs()),
                "sregs": _sregs_json(inner.get_sregs()),
                "memory": memory_digests(self._vm) if self._vm is not None else [],
            }
        )

    def _action(self, name: str, args: Any = None) -> None:
        self._header()
        self.flush()
        action = TraceAction(name, args)
        self.actions.append(action)
        self._write(action.to_json())

    def interrupt(self, vector: int) -> None:
        """Queue an interrupt, and record it."""
        self.inner.interrupt(vector)
        self._action("interrupt", vector)

    def nmi(self) -> None:
        """Queue an NMI, and record it."""
        self.inner.nmi()
        self._action("nmi")

    @property
    def request_interrupt_window(self) -> bool:
        """The wrapped vCPU's ``request_interrupt_window`` (changes are recorded)."""
        return self.inner.request_interrupt_window

    @request_interrupt_window.setter
    def request_interrupt_window(self, value: bool) -> None:
        self.inner.request_interrupt_window = value
        self._action("request_interrupt_window", bool(value))

    @property
    def immediate_exit(self) -> bool:
        """The wrapped vCPU's ``immediate_exit`` (changes are recorded)."""
        return self.inner.immediate_exit

    @immediate_exit.setter
    def immediate_exit(self, value: bool) -> None:
        self.inner.immediate_exit = value
        self._action("immediate_exit", bool(value))

    def set_regs(self, regs: Regs) -> None:
        """Set registers, and record them."""
        self.inner.set_regs(regs)
        self._action("set_regs", _regs_json(regs))

    def set_sregs(self, sregs: Sregs) -> None:
        """Set system registers, and record them."""
        self.inner.set_sregs(sregs)
        self._action("set_sregs", _sregs_json(sregs))

    def set_guest_debug(self, debug: GuestDebug) -> None:
        """Set guest debugging, and record it."""
        self.inner.set_guest_debug(debug)
        self._action("set_guest_debug", {"flags": int(debug.flags), "debugreg": list(debug.debugreg)})

    def flush(self) -> None:
        """Write the last exit (its answer, if any, is known by now)."""
        if self._last is not None:
            self.entries.append(self._last)
            self._write(self._last.to_json())
            self._last = None
        if self._sink is not None:
            self._sink.flush()

    def run(self) -> Exit:
        """Run the wrapped vCPU and record the exit."""
        self._header()
        self.flush()
        exit_ = self.inner.run()
        self._last = TraceEntry(exit_, self.inner.get_regs().rip)
        return exit_

    def complete(self, data: bytes | int) -> None:
        """Answer the pending IN or MMIO read, and record the answer."""
        pending = self._last.exit if self._last is not None else None
        self.inner.complete(data)
        if self._last is not None:
            answer = completion_bytes(self.inner.id, pending, data)
            self._last = TraceEntry(self._last.exit, self._last.rip, answer)

    def close(self) -> None:
        """Write the last exit, then close the wrapped vCPU."""
        self.flush()
        self.inner.close()


def read_trace(source: Iterable[str]) -> Trace:
    """Parse a trace written by :class:`TracingVCPU`."""
    lines = [line for line in source if line.strip()]
    if not lines:
        raise InvalidArgument("empty trace: no header line")
    header = json.loads(lines[0])
    if header.get("format") != TRACE_FORMAT:
        raise InvalidArgument(f"not an hvcore trace (format {header.get('format')!r}, expected {TRACE_FORMAT!r})")
    events: list[TraceEntry | TraceAction] = []
    for line in lines[1:]:
        record = json.loads(line)
        if "action" in record:
            events.append(TraceAction(record["action"], record.get("args")))
        else:
            events.append(TraceEntry.from_json(record))
    return Trace(header, tuple(events))


@dataclass(frozen=True)
class Divergence:
    """Where a replay first differed from the trace."""

    index: int
    expected: TraceEntry | None
    actual: TraceEntry | None
    reason: str

    def __str__(self) -> str:
        lines = [f"replay diverged at exit #{self.index}: {self.reason}"]
        for label, entry in (("expected", self.expected), ("actual", self.actual)):
            if entry is None:
                lines.append(f"  {label:8}: (none)")
                continue
            lines.append(f"  {label:8}: {entry.exit!r} at rip {entry.rip:#x}")
        if self.expected is not None and self.actual is not None and type(self.expected.exit) is type(self.actual.exit):
            want, got = exit_to_json(self.expected.exit), exit_to_json(self.actual.exit)
            for key in want:
                if want[key] != got.get(key):
                    lines.append(f"  field {key}: expected {want[key]!r}, got {got.get(key)!r}")
        return "\n".join(lines)


_OUT_LENGTHS = range(1, 4)  # `out dx, al` to `66 e7 ib`


def _same_out(exit_: Exit, actual: int, expected: int) -> bool:
    """An OUT exit at the OUT and one past it: upstream KVM completes a plain OUT on the next run, some hosts
    before the exit (hvcore's host deviation ``out_completed_at_exit``); either way the guest goes on alike."""
    return isinstance(exit_, IoExit) and not exit_.is_in and abs(expected - actual) in _OUT_LENGTHS


def replay(trace: Trace, vcpu: VCPU, *, vm: VM | None = None, restore: bool = True) -> Divergence | None:
    """Drive ``vcpu`` through ``trace``, answering INs and MMIO reads as recorded.

    ``restore`` loads the recorded start registers first. With ``vm``, its memory must match the
    recorded digests (else :class:`hvcore.InvalidArgument` says which slot differs). Returns the
    first divergence, or None when every exit and RIP matched (an OUT's RIP may be at it or past
    it: where a host completes OUTs is a host deviation, ``out_completed_at_exit``).
    """
    if vm is not None and trace.header.get("memory"):
        recorded = {d["slot"]: d for d in trace.header["memory"]}
        for now in memory_digests(vm):
            if recorded.get(now["slot"]) != now:
                raise InvalidArgument(
                    f"memory slot {now['slot']} differs from the recording; set the VM up with the same image"
                )
    if restore:
        vcpu.set_sregs(_sregs_from_json(trace.header["sregs"]))
        vcpu.set_regs(Regs(**trace.header["regs"]))
    index = -1
    for event in trace.events:
        if isinstance(event, TraceAction):
            event.apply(vcpu)
            continue
        expected, index = event, index + 1
        exit_ = vcpu.run()
        actual = TraceEntry(exit_, vcpu.get_regs().rip)
        if exit_ != expected.exit:
            return Divergence(index, expected, actual, "a different exit")
        if actual.rip != expected.rip and not _same_out(exit_, actual.rip, expected.rip):
            return Divergence(index, expected, actual, "the same exit at another RIP")
        if expected.answer is not None:
            vcpu.complete(expected.answer)
    return None
