"""Exit traces: JSON round trips, recording on each backend, replaying a KVM trace on the simulator."""

from __future__ import annotations

import io
import json
import random
import re
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

import hvcore
from hvcore import (
    VM,
    DebugExit,
    Exit,
    FailEntryExit,
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
    Sregs,
    SystemEventExit,
    UnknownExit,
    trace,
)
from tests.boot import boot, run_exits
from tests.guests import long_mode, real_mode

EVERY_EXIT: list[Exit] = [
    IoExit(0x3F8, 1, 1, IoDirection.OUT, b"A"),
    IoExit(0x20, 1, 904, IoDirection.IN),
    MmioExit(0xD0000, 8, True, bytes(range(8))),
    MmioExit(0xD0020, 2, False),
    HltExit(),
    ShutdownExit(),
    DebugExit(1, 0x1003, 0xFFFF4FF0, 0x400),
    IrqWindowOpenExit(),
    InterruptedExit(),
    InternalErrorExit(1, (0, 5)),
    FailEntryExit(0x21, 3),
    SystemEventExit(2, (7,)),
    UnknownExit(99, 0x1234),
]


@pytest.mark.parametrize("exit_", EVERY_EXIT, ids=lambda e: type(e).__name__)
def test_every_exit_round_trips_through_json(exit_: Exit) -> None:
    assert trace.exit_from_json(json.loads(json.dumps(trace.exit_to_json(exit_)))) == exit_


Answer = Callable[[Exit], "bytes | int"]
GUESTS: dict[str, tuple[bytes, str, dict[str, int], Answer | None]] = {
    "prints_5": (real_mode.PRINTS_5, "real", {"rax": 2, "rbx": 3}, None),
    "io_sizes": (real_mode.IO_SIZES, "real", {}, lambda e: 0x5A),
    "rep_insb": (real_mode.REP_INSB, "real", {}, lambda e: bytes(e.count) if isinstance(e, IoExit) else 0),
    "mmio_64": (long_mode.MMIO_RW, "long", {}, lambda e: 0x11),
}


def _record(hv: Hypervisor, vm: VM, name: str) -> tuple[str, list[Exit]]:
    code, mode, regs, answer = GUESTS[name]
    sink = io.StringIO()
    vcpu = trace.TracingVCPU(boot(hv, vm, code, mode, **regs), sink, vm=vm, backend=hv.name)  # type: ignore[arg-type]
    exits = run_exits(vcpu, answer)
    vcpu.flush()
    return sink.getvalue(), exits


@pytest.mark.parametrize("name", list(GUESTS))
def test_recording_writes_a_header_and_every_exit_with_its_answer(hv: Hypervisor, vm: VM, name: str) -> None:
    text, exits = _record(hv, vm, name)
    recorded = trace.read_trace(io.StringIO(text))
    assert recorded.header["format"] == trace.TRACE_FORMAT
    assert recorded.header["backend"] == hv.name
    assert [e.exit for e in recorded.entries] == exits
    for entry in recorded.entries:
        waits = (isinstance(entry.exit, IoExit) and entry.exit.is_in) or (
            isinstance(entry.exit, MmioExit) and not entry.exit.is_write
        )
        assert (entry.answer is not None) == waits


def _replay_on(hv: Hypervisor, name: str, text: str) -> trace.Divergence | None:
    code, mode, regs, _ = GUESTS[name]
    with hv.create_vm() as vm:
        vcpu = boot(hv, vm, code, mode, **regs)  # type: ignore[arg-type]
        return trace.replay(trace.read_trace(io.StringIO(text)), vcpu, vm=vm)


@pytest.mark.parametrize("name", list(GUESTS))
def test_a_kvm_trace_replays_on_the_simulator_without_divergence(kvm: Hypervisor, name: str) -> None:
    with kvm.create_vm() as vm:
        text, _ = _record(kvm, vm, name)
    with hvcore.open_hypervisor("sim") as sim:
        divergence = _replay_on(sim, name, text)
    assert divergence is None, str(divergence)


def test_a_wrong_simulator_is_caught_by_the_replayer(monkeypatch: pytest.MonkeyPatch) -> None:
    reference = "kvm" if hvcore.available_backends().get("kvm") is None else "sim"
    with hvcore.open_hypervisor(reference) as hv, hv.create_vm() as vm:
        text, _ = _record(hv, vm, "rep_insb")
    sim_exits = pytest.importorskip("hvcore_sim.exits")
    monkeypatch.setattr(sim_exits, "_PIO_BATCH", 512)  # a deliberately wrong rep-ins batch size
    with hvcore.open_hypervisor("sim") as sim:
        divergence = _replay_on(sim, "rep_insb", text)
    assert divergence is not None
    assert divergence.index == 0
    assert "field count: expected 1024, got 512" in str(divergence)


def test_replay_refuses_a_different_memory_image(hv: Hypervisor) -> None:
    with hv.create_vm() as vm:
        text, _ = _record(hv, vm, "prints_5")
    with hv.create_vm() as vm:
        vcpu = boot(hv, vm, real_mode.IO_SIZES)
        with pytest.raises(hvcore.InvalidArgument, match="memory slot 0 differs"):
            trace.replay(trace.read_trace(io.StringIO(text)), vcpu, vm=vm)


def test_a_non_trace_is_refused() -> None:
    with pytest.raises(hvcore.InvalidArgument, match="not an hvcore trace"):
        trace.read_trace(['{"format": "something-else"}'])
    with pytest.raises(hvcore.InvalidArgument, match="empty trace"):
        trace.read_trace([])


# cli; IVT[0x20] = handler; sti; jmp $   handler: out 0x81, 0x42; hlt   (real mode, at CODE)
WINDOW_GUEST = (
    b"\xfa"  # cli
    b"\xc7\x06\x80\x00\x10\x10"  # mov word [0x80], 0x1010 (handler)
    b"\xc7\x06\x82\x00\x00\x00"  # mov word [0x82], 0
    b"\xfb"  # sti
    b"\xeb\xfe"  # jmp $
    b"\xb0\x42"  # handler: mov al, 0x42
    b"\xe6\x81"  # out 0x81, al
    b"\xf4"  # hlt
)


def _window_session(hv: Hypervisor, vm: VM, sink: io.StringIO) -> list[Exit]:
    vcpu = trace.TracingVCPU(boot(hv, vm, WINDOW_GUEST), sink, vm=vm, backend=hv.name)
    vcpu.request_interrupt_window = True
    exits = [vcpu.run()]
    vcpu.interrupt(0x20)
    vcpu.request_interrupt_window = False
    exits += [vcpu.run(), vcpu.run()]
    vcpu.flush()
    return exits


def test_vmm_actions_are_recorded_and_replayed(hv: Hypervisor, vm: VM) -> None:
    sink = io.StringIO()
    exits = _window_session(hv, vm, sink)
    assert exits == [IrqWindowOpenExit(), IoExit(0x81, 1, 1, IoDirection.OUT, b"\x42"), HltExit()]
    recorded = trace.read_trace(io.StringIO(sink.getvalue()))
    actions = [e.name for e in recorded.events if isinstance(e, trace.TraceAction)]
    assert actions == ["request_interrupt_window", "interrupt", "request_interrupt_window"]
    with hv.create_vm() as other:
        divergence = trace.replay(recorded, boot(hv, other, WINDOW_GUEST), vm=other)
    assert divergence is None, str(divergence)


def test_a_kvm_session_with_injection_replays_on_the_simulator(kvm: Hypervisor) -> None:
    sink = io.StringIO()
    with kvm.create_vm() as vm:
        _window_session(kvm, vm, sink)
    with hvcore.open_hypervisor("sim") as sim, sim.create_vm() as vm:
        divergence = trace.replay(trace.read_trace(io.StringIO(sink.getvalue())), boot(sim, vm, WINDOW_GUEST), vm=vm)
    assert divergence is None, str(divergence)


# -- malformed trace files: a TraceError naming the file and the line, never a raw exception ---------


def _valid_trace_lines() -> list[str]:
    """A well-formed trace: the header, every exit kind with an answer where one is due, every action."""
    header = {
        "format": trace.TRACE_FORMAT,
        "backend": "sim",
        "vcpu": 0,
        "regs": asdict(Regs(rip=0x1000)),
        "sregs": asdict(Sregs()),
        "memory": [{"slot": 0, "guest_address": 0, "size": 4096, "flags": 0, "sha256": "00" * 32}],
    }
    events: list[dict[str, Any]] = [trace.TraceEntry(e, 0x1000 + i).to_json() for i, e in enumerate(EVERY_EXIT)]
    events[1]["answer"] = "00" * 904
    events += [
        trace.TraceAction("interrupt", 0x20).to_json(),
        trace.TraceAction("nmi").to_json(),
        trace.TraceAction("request_interrupt_window", True).to_json(),
        trace.TraceAction("immediate_exit", False).to_json(),
        trace.TraceAction("set_regs", asdict(Regs(rax=1))).to_json(),
        trace.TraceAction("set_sregs", asdict(Sregs(cr0=0x11))).to_json(),
        trace.TraceAction("set_guest_debug", {"flags": 1, "debugreg": [0] * 8}).to_json(),
    ]
    return [json.dumps(record) + "\n" for record in [header, *events]]


class _ScriptedVCPU:
    """Just enough of a vCPU for ``replay``: each ``run()`` returns the next recorded exit at its RIP."""

    def __init__(self, recorded: trace.Trace) -> None:
        self._entries = list(recorded.entries)
        self._rip = 0

    def run(self) -> Exit:
        entry = self._entries.pop(0)
        self._rip = entry.rip
        return entry.exit

    def get_regs(self) -> Regs:
        return Regs(rip=self._rip)

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args: None  # set_regs, set_sregs, complete, interrupt, nmi, set_guest_debug

    def __setattr__(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)  # request_interrupt_window, immediate_exit


def _read_and_replay(lines: list[str], name: str = "fuzz.trace") -> None:
    """read_trace, then replay on a scripted vCPU: only a TraceError naming ``name`` may come out."""
    source = io.StringIO("".join(lines))
    source.name = name  # as an open file has
    try:
        recorded = trace.read_trace(source)
        assert trace.replay(recorded, _ScriptedVCPU(recorded)) is None  # type: ignore[arg-type]
    except hvcore.TraceError as exc:
        message = exc.message
    else:
        return
    assert re.search(rf"^{re.escape(name)} line \d+: ", message), message


def test_the_fuzz_base_trace_is_valid() -> None:
    recorded = trace.read_trace(io.StringIO("".join(_valid_trace_lines())))
    assert [e.exit for e in recorded.entries] == EVERY_EXIT
    assert trace.replay(recorded, _ScriptedVCPU(recorded)) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("line", "text", "message"),
    [
        (1, "{", r"not JSON: "),
        (1, "[" * 100_000, r"not JSON: nested too deeply"),
        (1, "[]", r"the header is not a JSON object"),
        (1, '{"format": "hvcore-trace/1", "regs": {"rip": "0x1000"}}', r".*regs\.rip.* not an integer"),
        (1, '{"format": "hvcore-trace/1", "regs": 5}', r".*regs.* not an object"),
        (2, "{", r"not JSON: "),
        (2, "[" * 100_000, r"not JSON: nested too deeply"),
        (2, "3", r"an event is not a JSON object"),
        (2, '{"exit": {"kind": "io", "port": "x", "size": 1, "count": 1, "direction": "out"}, "rip": 0}', r"port"),
        (2, '{"exit": {"kind": "io", "port": 1, "size": 1, "count": 1, "direction": 7}, "rip": 0}', r"direction"),
        (2, '{"exit": {"kind": "io", "port": 1, "size": 1}, "rip": 0}', r"lacks count"),
        (2, '{"exit": {"kind": "mmio", "address": 1, "length": 1, "is_write": 1}, "rip": 0}', r"is_write"),
        (2, '{"exit": {"kind": "mmio", "address": 1, "length": 1, "is_write": true, "data": "zz"}, "rip": 0}', "data"),
        (2, '{"exit": {"kind": "hlt", "frob": 1}, "rip": 0}', r"frob"),
        (2, '{"exit": {"kind": "hlt"}, "rip": null}', r"rip"),
        (2, '{"exit": {"kind": "hlt"}, "rip": 0, "answer": 5}', r"answer"),
        (2, '{"exit": {"kind": "internal_error", "suberror": 1, "data": [1, "a"]}, "rip": 0}', r"data"),
        (2, '{"exit": [], "rip": 0}', r"exit"),
        (2, '{"action": "set_regs", "args": {"rax": []}}', r"rax"),
        (2, '{"action": "set_regs", "args": null}', r"set_regs"),
        (2, '{"action": "set_sregs", "args": {"cs": 1}}', r"cs"),
        (2, '{"action": "set_guest_debug", "args": {"flags": 1}}', r"debugreg"),
        (2, '{"action": "interrupt", "args": "x"}', r"interrupt"),
        (2, '{"action": "frobnicate"}', r"unknown trace action 'frobnicate'"),
        (2, '{"action": 5}', r"action"),
    ],
)
def test_a_malformed_line_is_a_trace_error_naming_file_and_line(line: int, text: str, message: str) -> None:
    lines = _valid_trace_lines()
    lines[line - 1] = text + "\n"
    source = io.StringIO("".join(lines))
    source.name = "bad.trace"
    with pytest.raises(hvcore.TraceError, match=rf"^bad\.trace line {line}: .*{message}"):
        trace.read_trace(source)


def test_a_non_utf8_trace_file_is_a_trace_error(tmp_path: Path) -> None:
    path = tmp_path / "binary.trace"
    path.write_bytes("".join(_valid_trace_lines()[:3]).encode() + b'{"action": "nmi\xff"}\n')
    with path.open() as source, pytest.raises(hvcore.TraceError, match=rf"^{re.escape(str(path))} line 4: not UTF-8"):
        trace.read_trace(source)


def test_a_hand_built_trace_with_bad_values_is_a_trace_error_on_replay() -> None:
    recorded = trace.read_trace(io.StringIO("".join(_valid_trace_lines())))
    vcpu: Any = _ScriptedVCPU(recorded)
    with pytest.raises(hvcore.TraceError, match="header"):
        trace.replay(trace.Trace({"format": trace.TRACE_FORMAT, "regs": {}, "sregs": {"cr0": "x"}}), vcpu)
    with pytest.raises(hvcore.TraceError, match="set_regs"):
        trace.replay(trace.Trace(recorded.header, (trace.TraceAction("set_regs", {"rax": None}),)), vcpu)


def test_fuzzed_traces_raise_only_trace_errors() -> None:
    """Truncated lines, swapped values, deleted and duplicated keys: a TraceError naming the line, or a clean replay."""
    rng = random.Random(12)
    base = _valid_trace_lines()
    oddities: list[Any] = [None, True, -1, 2**70, 1.5, "", "zz", [], [1, [2]], {}, {"kind": "io"}]
    for _ in range(800):
        lines = list(base)
        at = rng.randrange(len(lines))
        record = json.loads(lines[at])
        how = rng.randrange(4)
        if how == 0:
            lines[at] = lines[at][: rng.randrange(len(lines[at]))] + "\n"
        else:
            node, key = record, None
            while isinstance(node, dict) and node and rng.random() < 0.7:
                key = rng.choice(sorted(node))
                if not isinstance(node[key], dict) or not node[key]:
                    break
                node = node[key]
            if isinstance(node, dict) and key is not None and key in node:
                if how == 1:
                    node[key] = rng.choice(oddities)
                elif how == 2:
                    del node[key]
                else:
                    node[key + "_"] = node[key]
            lines[at] = json.dumps(record) + "\n"
        _read_and_replay(lines)
