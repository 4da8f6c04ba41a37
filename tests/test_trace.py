"""Exit traces: JSON round trips, recording on each backend, replaying a KVM trace on the simulator."""

from __future__ import annotations

import io
import json
from collections.abc import Callable

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
    ShutdownExit,
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
