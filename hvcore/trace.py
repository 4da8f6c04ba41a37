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
A malformed trace (not JSON, a field of the wrong type, an unknown exit or action) raises
:class:`hvcore.TraceError` naming the file and the line.

The format (its JSON records), the recorder and the replayer are one module: a change to the
format touches all three.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import IO, Any, Final, TypeVar, get_type_hints

from hvcore.checks import completion_bytes
from hvcore.delegate import DelegatingVCPU
from hvcore.errors import InvalidArgument, TraceError
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
"""The format name and version the first line of a trace file carries."""

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
_R = TypeVar("_R")


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
    """The exit :func:`exit_to_json` described; :class:`hvcore.TraceError` names what is malformed."""
    record = _object(record, "exit")
    kind = record.get("kind")
    cls = _CLASSES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise TraceError(f"exit: not an exit record (kind {_show(kind)}, expected one of {', '.join(_CLASSES)})")
    values = _fields_from_json(cls, {k: v for k, v in record.items() if k != "kind"}, f"{kind} exit")
    exit_: Exit = cls(**values)
    return exit_


_SHOW_LIMIT: Final = 40


def _show(value: Any) -> str:
    """``repr(value)``, shortened: a malformed file's value may be any size."""
    text = repr(value)
    return text if len(text) <= _SHOW_LIMIT else text[: _SHOW_LIMIT - 3] + "..."


def _object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TraceError(f"{what}: {_show(value)} is not an object")
    return value


def _int(value: Any, what: str) -> int:
    if type(value) is not int:  # not a bool, a float or a string
        raise TraceError(f"{what}: {_show(value)} is not an integer")
    return value


def _bool(value: Any, what: str) -> bool:
    if type(value) is not bool:
        raise TraceError(f"{what}: {_show(value)} is not true or false")
    return value


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise TraceError(f"{what}: {_show(value)} is not a list of integers")
    return tuple(_int(item, f"{what}[{i}]") for i, item in enumerate(value))


def _hex(value: Any, what: str) -> bytes:
    try:
        if isinstance(value, str):
            return bytes.fromhex(value)
    except ValueError:
        pass
    raise TraceError(f"{what}: {_show(value)} is not hex bytes")


def _direction(value: Any, what: str) -> IoDirection:
    if not isinstance(value, str) or value.upper() not in IoDirection.__members__:
        raise TraceError(f"{what}: {_show(value)} is not 'in' or 'out'")
    return IoDirection[value.upper()]


def _bitmap(value: Any, what: str) -> tuple[int, int, int, int]:
    words = _ints(value, what)
    if len(words) != 4:
        raise TraceError(f"{what}: {len(words)} words, not 4")
    return words[0], words[1], words[2], words[3]


_CONVERTERS: Final[dict[Any, Callable[[Any, str], Any]]] = {
    int: _int,
    bool: _bool,
    bytes: _hex,
    IoDirection: _direction,
    tuple[int, ...]: _ints,
    tuple[int, int, int, int]: _bitmap,
    Segment: lambda value, what: _ints_record(Segment, value, what),
    DescriptorTable: lambda value, what: _ints_record(DescriptorTable, value, what),
}
"""How a JSON value becomes a field of each type a recorded dataclass (exits, registers) has."""


def _fields_from_json(cls: type, record: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``cls``'s constructor arguments from ``record``: every field of a known type, required ones present."""
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    for name in record:
        if name not in known:
            raise TraceError(f"{what}: unknown field {_show(name)}")
    values: dict[str, Any] = {}
    for name, f in known.items():
        if name not in record:
            if f.default is MISSING and f.default_factory is MISSING:
                raise TraceError(f"{what}: lacks {name}")
            continue
        values[name] = _CONVERTERS[hints[name]](record[name], f"{what}.{name}")
    return values


def _ints_record(cls: type[_R], value: Any, what: str) -> _R:
    """An all-integer dataclass (``Regs``, ``Segment``, ``DescriptorTable``) from its JSON object."""
    return cls(**_fields_from_json(cls, _object(value, what), what))


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
        """The entry :meth:`to_json` described; :class:`hvcore.TraceError` names what is malformed."""
        record = _object(record, "event")
        if "exit" not in record:
            raise TraceError("event: neither an exit nor an action (no 'exit' or 'action' key)")
        answer = record.get("answer")
        return cls(
            exit_from_json(record["exit"]),
            _int(record.get("rip"), "rip"),
            _hex(answer, "answer") if answer is not None else None,
        )


@dataclass(frozen=True)
class TraceAction:
    """Something the VMM did to the vCPU between exits, replayed in order: ``interrupt``, ``nmi``, ``smi``,
    ``request_interrupt_window``, ``immediate_exit``, ``set_regs``, ``set_sregs``, ``set_guest_debug``."""

    name: str
    args: Any = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"action": self.name, "args": self.args}

    def apply(self, vcpu: VCPU) -> None:
        """Do it to ``vcpu`` (:class:`hvcore.TraceError` when the action or its arguments are malformed)."""
        _prepare(self.name, self.args)(vcpu)


def _prepare(name: Any, args: Any) -> Callable[[VCPU], None]:
    """The action ``name`` with ``args`` (as recorded), checked: a call that does it to a vCPU."""
    what = f"{name} args" if isinstance(name, str) else "action"
    if name == "interrupt":
        vector = _int(args, what)
        return lambda vcpu: vcpu.interrupt(vector)
    if name == "nmi":
        return lambda vcpu: vcpu.nmi()
    if name == "smi":
        return lambda vcpu: vcpu.smi()
    if name == "request_interrupt_window":
        window = _bool(args, what)
        return lambda vcpu: setattr(vcpu, "request_interrupt_window", window)
    if name == "immediate_exit":
        immediate = _bool(args, what)
        return lambda vcpu: setattr(vcpu, "immediate_exit", immediate)
    if name == "set_regs":
        regs = _ints_record(Regs, args, what)
        return lambda vcpu: vcpu.set_regs(regs)
    if name == "set_sregs":
        sregs = _sregs_from_json(args, what)
        return lambda vcpu: vcpu.set_sregs(sregs)
    if name == "set_guest_debug":
        record = _object(args, what)
        for key in ("flags", "debugreg"):
            if key not in record:
                raise TraceError(f"{what}: lacks {key}")
        debug = GuestDebug(GuestDebugFlags(_int(record["flags"], f"{what}.flags")), _ints(record["debugreg"], what))
        return lambda vcpu: vcpu.set_guest_debug(debug)
    if isinstance(name, str):
        raise TraceError(f"unknown trace action {name!r}")
    raise TraceError(f"action: {_show(name)} is not an action's name")


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


def _sregs_from_json(value: Any, what: str) -> Sregs:
    return Sregs(**_fields_from_json(Sregs, _object(value, what), what))


def _start_state(header: Mapping[str, Any], what: str) -> tuple[Regs, Sregs]:
    """The recorded start registers in ``header``."""
    if "regs" not in header:
        raise TraceError(f"{what}: lacks regs")
    regs = _ints_record(Regs, header["regs"], f"{what} regs")
    if "sregs" not in header:
        raise TraceError(f"{what}: lacks sregs")
    return regs, _sregs_from_json(header["sregs"], f"{what} sregs")


def _memory_digests(header: Mapping[str, Any], what: str) -> dict[int, Mapping[str, Any]]:
    """The recorded slot digests in ``header``, by slot."""
    recorded = header.get("memory") or []
    if not isinstance(recorded, list):
        raise TraceError(f"{what} memory: {_show(recorded)} is not a list")
    digests = {}
    for i, value in enumerate(recorded):
        digest = _object(value, f"{what} memory[{i}]")
        digests[_int(digest.get("slot"), f"{what} memory[{i}].slot")] = digest
    return digests


def memory_digests(vm: VM) -> list[dict[str, Any]]:
    """Each slot's layout and a SHA-256 of its contents (to check a replay starts from the same image).

    Address space 0's only: SMM's mirrors it where the backend has SMM, and may not exist elsewhere.
    """
    digests = []
    for s in vm.memory_slots():
        if s.address_space:
            continue
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

    def smi(self) -> None:
        """Queue an SMI, and record it."""
        self.inner.smi()
        self._action("smi")

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


def read_trace(source: Iterable[str] | Iterable[bytes], name: str | None = None) -> Trace:
    """Parse a trace written by :class:`TracingVCPU`, checking every line.

    ``source`` is an open file (text or binary) or any iterable of lines; ``name`` (default: the
    file's name) starts the message of the :class:`hvcore.TraceError` a malformed line raises, with the
    line's number: ``boot.trace line 7: set_regs args.rip: '0x1000' is not an integer``.
    """
    if name is None:
        name = getattr(source, "name", None)
        name = name if isinstance(name, str) else "<trace>"
    header: dict[str, Any] | None = None
    events: list[TraceEntry | TraceAction] = []
    for number, line in _numbered_lines(source, name):
        if not line.strip():
            continue
        try:
            record = _json(line)
            if header is None:
                header = _object_or(record, "the header is not a JSON object")
                if header.get("format") != TRACE_FORMAT:
                    raise TraceError(
                        f"not an hvcore trace (format {_show(header.get('format'))}, expected {TRACE_FORMAT!r})"
                    )
                _start_state(header, "header")
                _memory_digests(header, "header")
                continue
            record = _object_or(record, "an event is not a JSON object")
            if "action" in record:
                _prepare(record["action"], record.get("args"))
                events.append(TraceAction(record["action"], record.get("args")))
            else:
                events.append(TraceEntry.from_json(record))
        except TraceError as exc:
            raise TraceError(f"{name} line {number}: {exc.message}") from None
    if header is None:
        raise TraceError(f"{name}: empty trace: no header line")
    return Trace(header, tuple(events))


def _numbered_lines(source: Iterable[str] | Iterable[bytes], name: str) -> Iterator[tuple[int, str]]:
    """``source``'s lines with their numbers, decoded as UTF-8 (a ``TraceError`` names the first line that is not)."""
    lines: Iterator[str | bytes] = iter(source)
    number = 0
    while True:
        number += 1
        try:
            raw = next(lines)
            line = raw.decode() if isinstance(raw, bytes) else raw
        except StopIteration:
            return
        except UnicodeDecodeError as exc:
            # A text file decodes a chunk of lines at once: count the chunk's lines before the bad byte.
            at = number + bytes(exc.object[: exc.start]).count(b"\n")
            raise TraceError(
                f"{name} line {at}: not UTF-8 ({exc.reason}: {bytes(exc.object[exc.start : exc.end])!r})"
            ) from None
        yield number, line


def _json(line: str) -> Any:
    try:
        return json.loads(line)
    except RecursionError:
        raise TraceError("not JSON: nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise TraceError(f"not JSON: {exc.msg} (column {exc.colno})") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise TraceError(f"not JSON: {exc}") from None


def _object_or(value: Any, problem: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TraceError(f"{problem} ({_show(value)})")
    return value


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
    recorded digests (else :class:`hvcore.InvalidArgument` says which slot differs); a malformed
    header or action raises :class:`hvcore.TraceError`. Returns the
    first divergence, or None when every exit and RIP matched (an OUT's RIP may be at it or past
    it: where a host completes OUTs is a host deviation, ``out_completed_at_exit``).
    """
    header = _object(trace.header, "trace header")
    if vm is not None and header.get("memory"):
        recorded = _memory_digests(header, "trace header")
        for now in memory_digests(vm):
            if recorded.get(now["slot"]) != now:
                raise InvalidArgument(
                    f"memory slot {now['slot']} differs from the recording; set the VM up with the same image"
                )
    if restore:
        regs, sregs = _start_state(header, "trace header")
        vcpu.set_sregs(sregs)
        vcpu.set_regs(regs)
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
