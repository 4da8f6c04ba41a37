"""The misuse matrix: every public method of ``Hypervisor``, ``VM`` and ``VCPU`` with wrong arguments.

Each method (found by introspecting :mod:`hvcore.protocol`, so a new method without an entry
here fails ``test_every_public_method_has_a_matrix_entry``) is called with wrong types (None, a
str, a float, a bool, the wrong state class), out-of-range values, and after ``close()``. Only
hvcore's typed errors may come out, and the same error (class and errno) on every backend.

Below the matrix: the regression tests of issue 12's items 13 (a float slot address), 14 (vCPU
ids, the identity map after a vCPU, unknown XCRs) and 15 (wrong types raise ``InvalidType``).
"""

from __future__ import annotations

import errno
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cache
from typing import Any, TypeVar

import pytest

import hvcore
from hvcore import (
    VCPU,
    VM,
    Capability,
    CpuidEntry,
    DebugRegs,
    Fpu,
    GuestDebug,
    GuestMemory,
    Hypervisor,
    IoapicState,
    IrqchipId,
    IrqchipRoute,
    Lapic,
    MpState,
    PitState,
    Regs,
    SlotFlags,
    Sregs,
    VcpuEvents,
    Xsave,
)
from hvcore.types import PitChannelState
from hvcore.vmm.bus import Bus
from hvcore.vmm.machine import Machine
from tests.conftest import Watchdog, open_or_skip

T = TypeVar("T")
HUGE = 1 << 64
INTS = (None, "1", 1.5, True, -1, HUGE)
"""Wrong values for an int argument: wrong types, then out of range."""
FLAGS = (None, "yes", 1.5, 2)
"""Wrong values for a bool argument (``True``/``False`` and 0/1 are right)."""
OBJECTS = (None, "x", 1.5, True, 0)
"""Wrong values for a state argument; each entry also gets another state class."""
RAM = 0x10000


@dataclass
class Context:
    """What a matrix case calls into: a hypervisor, a VM (irqchip, PIT, one slot) and vCPU 0."""

    hv: Hypervisor
    vm: VM
    vcpu: VCPU
    ram: GuestMemory


@dataclass(frozen=True)
class Method:
    """A public method: how to call it, its right arguments, and the wrong values of each argument."""

    call: Callable[..., object]
    valid: tuple[Callable[[Context], object], ...] = ()
    wrong: tuple[tuple[object, ...], ...] = ()
    """For argument ``i``, the values to try in its place (the others keep their right values)."""


def bad(cls: Callable[..., T], *args: Any, **fields: Any) -> T:
    """An instance of ``cls`` with fields of the wrong type (dataclasses do not check them)."""
    return cls(*args, **fields)


def _const(value: object) -> Callable[[Context], object]:
    return lambda _c: value


def m(call: Callable[..., object], *arguments: tuple[object, tuple[object, ...]]) -> Method:
    """A method taking ``(valid value or factory, wrong values)`` per argument."""
    valid = tuple(v if callable(v) and not isinstance(v, type) else _const(v) for v, _ in arguments)
    return Method(call, valid, tuple(w for _, w in arguments))


def state(valid: object, other: object) -> tuple[object, tuple[object, ...]]:
    """A state argument: the right value, and the wrong ones (types and another state class)."""
    return valid, (*OBJECTS, other)


HYPERVISOR: dict[str, Method] = {
    "name": m(lambda c: c.hv.name),
    "api_version": m(lambda c: c.hv.api_version()),
    "check_extension": m(lambda c, cap: c.hv.check_extension(cap), (Capability.NR_MEMSLOTS, INTS)),
    "capabilities": m(lambda c: c.hv.capabilities()),
    "vcpu_mmap_size": m(lambda c: c.hv.vcpu_mmap_size()),
    "msr_index_list": m(lambda c: c.hv.msr_index_list()),
    "supported_cpuid": m(lambda c: c.hv.supported_cpuid()),
    "recommended_vcpus": m(lambda c: c.hv.recommended_vcpus()),
    "max_vcpus": m(lambda c: c.hv.max_vcpus()),
    "create_vm": m(lambda c: c.hv.create_vm().close()),
    "close": m(lambda c: c.hv.close()),
}

VM_METHODS: dict[str, Method] = {
    "check_extension": m(lambda c, cap: c.vm.check_extension(cap), (Capability.NR_MEMSLOTS, INTS)),
    "set_memory_slot": m(
        lambda c, slot, address, memory, offset, size, flags, space: c.vm.set_memory_slot(
            slot, address, memory, offset=offset, size=size, flags=flags, address_space=space
        ),
        (1, INTS),
        (0x100000, (*INTS, 0x100000 + 0.0, 0x1001)),
        (lambda c: GuestMemory(RAM), (None, "x", 1.5, b"\0" * RAM)),
        (0, (*INTS, 1 << 20)),
        (RAM, (*INTS[1:4], -RAM, HUGE, 0)),
        (SlotFlags(0), (*INTS, 0x80)),
        (0, (*INTS, 2)),
    ),
    "delete_memory_slot": m(
        lambda c, slot, space: c.vm.delete_memory_slot(slot, address_space=space), (0, (*INTS, 5)), (0, (*INTS, 2))
    ),
    "set_slot_flags": m(
        lambda c, slot, flags, space: c.vm.set_slot_flags(slot, flags, address_space=space),
        (0, (*INTS, 5)),
        (SlotFlags.LOG_DIRTY_PAGES, (*INTS, 0x80)),
        (0, (*INTS, 2)),
    ),
    "memory_slots": m(lambda c: c.vm.memory_slots()),
    "get_dirty_log": m(
        lambda c, slot, space: c.vm.get_dirty_log(slot, address_space=space), (0, (*INTS, 5)), (0, (*INTS, 2))
    ),
    "create_vcpu": m(lambda c, vcpu_id: c.vm.create_vcpu(vcpu_id), (1, (*INTS, 0, 1 << 31))),
    "vcpus": m(lambda c: c.vm.vcpus()),
    "parked_vcpus": m(lambda c: c.vm.parked_vcpus()),
    "create_irqchip": m(lambda c: c.vm.create_irqchip()),
    "irq_line": m(lambda c, irq, level: c.vm.irq_line(irq, level), (4, (*INTS, 1024)), (True, FLAGS)),
    "get_irqchip": m(lambda c, chip: c.vm.get_irqchip(chip), (IrqchipId.IOAPIC, (*INTS, 3))),
    "set_irqchip": m(
        lambda c, chip, chip_state: c.vm.set_irqchip(chip, chip_state),
        (IrqchipId.PIC_MASTER, (*INTS, 3)),
        state(lambda c: c.vm.get_irqchip(IrqchipId.PIC_MASTER), IoapicState()),
    ),
    "set_irqchip(IOAPIC)": m(
        lambda c, chip_state: c.vm.set_irqchip(IrqchipId.IOAPIC, chip_state),
        (
            lambda c: c.vm.get_irqchip(IrqchipId.IOAPIC),
            (IoapicState(redirtbl=(0,) * 25), IoapicState(redirtbl=(0,) * 23), bad(IoapicState, redirtbl=("0",) * 24)),
        ),
    ),
    "create_pit": m(lambda c: c.vm.create_pit()),
    "get_pit": m(lambda c: c.vm.get_pit()),
    "set_pit": m(
        lambda c, pit: c.vm.set_pit(pit),
        state(
            lambda c: c.vm.get_pit(),
            bad(PitState, channels=(PitChannelState(),) * 2),
        ),
    ),
    "signal_msi": m(lambda c, address, data: c.vm.signal_msi(address, data), (0xFEE00000, INTS), (0x30, INTS)),
    "set_gsi_routing": m(
        lambda c, routes: c.vm.set_gsi_routing(routes),
        ((IrqchipRoute(0, IrqchipId.IOAPIC, 2),), (None, "x", 1.5, True, [None], [bad(IrqchipRoute, 0, 5, 2)], {0: 1})),
    ),
    "get_clock": m(lambda c: c.vm.get_clock()),
    "set_clock": m(lambda c, ns: c.vm.set_clock(ns), (1000, INTS)),
    "set_tss_address": m(lambda c, address: c.vm.set_tss_address(address), (0xFFFBD000, INTS)),
    "set_identity_map_address": m(
        lambda c, address: c.vm.set_identity_map_address(address), (0xFFFBC000, INTS)
    ),  # after create_vcpu: refused on both
    "close": m(lambda c: c.vm.close()),
}

VCPU_METHODS: dict[str, Method] = {
    "id": m(lambda c: c.vcpu.id),
    "run": m(lambda c: c.vcpu.run()),
    "complete": m(lambda c, data: c.vcpu.complete(data), (0, (None, "x", 1.5, [0], True))),
    "kick": m(lambda c: c.vcpu.kick()),
    "immediate_exit": m(lambda c: c.vcpu.immediate_exit),
    "immediate_exit=": m(lambda c, value: setattr(c.vcpu, "immediate_exit", value), (False, FLAGS)),
    "request_interrupt_window": m(lambda c: c.vcpu.request_interrupt_window),
    "request_interrupt_window=": m(lambda c, value: setattr(c.vcpu, "request_interrupt_window", value), (False, FLAGS)),
    "ready_for_interrupt_injection": m(lambda c: c.vcpu.ready_for_interrupt_injection),
    "if_flag": m(lambda c: c.vcpu.if_flag),
    "cr8": m(lambda c: c.vcpu.cr8),
    "cr8=": m(lambda c, value: setattr(c.vcpu, "cr8", value), (0, (*INTS, 16))),
    "apic_base": m(lambda c: c.vcpu.apic_base),
    "get_regs": m(lambda c: c.vcpu.get_regs()),
    "set_regs": m(
        lambda c, regs: c.vcpu.set_regs(regs),
        (lambda c: c.vcpu.get_regs(), (*OBJECTS, Sregs(), bad(Regs, rax="1"), bad(Regs, rip=1.5), Regs(rflags=True))),
    ),
    "get_sregs": m(lambda c: c.vcpu.get_sregs()),
    "set_sregs": m(
        lambda c, sregs: c.vcpu.set_sregs(sregs),
        (
            lambda c: c.vcpu.get_sregs(),
            (*OBJECTS, Regs(), bad(Sregs, interrupt_bitmap=(0,) * 5), bad(Sregs, cs=None), bad(Sregs, cr0="1")),
        ),
    ),
    "get_fpu": m(lambda c: c.vcpu.get_fpu()),
    "set_fpu": m(
        lambda c, fpu: c.vcpu.set_fpu(fpu),
        (
            lambda c: c.vcpu.get_fpu(),
            (
                *OBJECTS,
                Xsave(),
                bad(Fpu, fpr=(1,) * 8),
                bad(Fpu, fcw=None),
                Fpu(fpr=(bytes(3),) * 8),
                Fpu(fpr=(bytes(16),) * 9),
                Fpu(xmm=(bytes(17),) * 16),
                Fpu(xmm=(bytes(16),) * 15),
            ),
        ),
    ),
    "get_xsave": m(lambda c: c.vcpu.get_xsave()),
    "set_xsave": m(
        lambda c, xsave: c.vcpu.set_xsave(xsave),
        (lambda c: c.vcpu.get_xsave(), (*OBJECTS, Fpu(), bad(Xsave, region="x"), Xsave(region=bytes(10)))),
    ),
    "get_xcrs": m(lambda c: c.vcpu.get_xcrs()),
    "set_xcrs": m(
        lambda c, xcrs: c.vcpu.set_xcrs(xcrs),
        (
            {0: 1},
            (None, "x", 1.5, [0], {None: 1}, {0: "1"}, {0: True}, {0: 1.0}, {1 << 32: 1}, {0: HUGE}, {0: -1}),
        ),
    ),
    "get_msrs": m(lambda c, indices: c.vcpu.get_msrs(indices), ([0x174], (None, "x", 1.5, 5, [None], ["1"], [True]))),
    "set_msrs": m(
        lambda c, msrs: c.vcpu.set_msrs(msrs),
        ({0x174: 0}, (None, "x", 1.5, [0x174], {None: 0}, {0x174: None}, {0x174: 1.5}, {True: 0}, {0x174: HUGE})),
    ),
    "set_cpuid": m(
        lambda c, entries: c.vcpu.set_cpuid(entries),
        (
            lambda c: c.hv.supported_cpuid(),
            (None, "x", 1.5, True, [None], [Regs()], {0: 1}, [bad(CpuidEntry, function="1")]),
        ),
    ),
    "get_cpuid": m(lambda c: c.vcpu.get_cpuid()),
    "get_lapic": m(lambda c: c.vcpu.get_lapic()),
    "set_lapic": m(
        lambda c, lapic: c.vcpu.set_lapic(lapic),
        (lambda c: c.vcpu.get_lapic(), (*OBJECTS, Xsave(), bad(Lapic, regs=None), Lapic(regs=bytes(5)))),
    ),
    "get_debugregs": m(lambda c: c.vcpu.get_debugregs()),
    "set_debugregs": m(
        lambda c, debugregs: c.vcpu.set_debugregs(debugregs),
        (lambda c: c.vcpu.get_debugregs(), (*OBJECTS, Regs(), bad(DebugRegs, db=(0,) * 5), bad(DebugRegs, dr7=None))),
    ),
    "get_vcpu_events": m(lambda c: c.vcpu.get_vcpu_events()),
    "set_vcpu_events": m(
        lambda c, events: c.vcpu.set_vcpu_events(events),
        (lambda c: c.vcpu.get_vcpu_events(), (*OBJECTS, Regs(), bad(VcpuEvents, nmi_pending=None))),
    ),
    "get_mp_state": m(lambda c: c.vcpu.get_mp_state()),
    "set_mp_state": m(lambda c, mp: c.vcpu.set_mp_state(mp), (MpState.RUNNABLE, (*INTS, 99))),
    "interrupt": m(lambda c, vector: c.vcpu.interrupt(vector), (0x20, (*INTS, 256))),
    "nmi": m(lambda c: c.vcpu.nmi()),
    "smi": m(lambda c: c.vcpu.smi()),
    "in_smm": m(lambda c: c.vcpu.in_smm),
    "set_guest_debug": m(
        lambda c, debug: c.vcpu.set_guest_debug(debug),
        (GuestDebug(), (*OBJECTS, Regs(), bad(GuestDebug, flags=None), GuestDebug(debugreg=(0,) * 7))),
    ),
    "translate": m(lambda c, address: c.vcpu.translate(address), (0x1000, INTS)),
    "close": m(lambda c: c.vcpu.close()),
}

MATRIX = {"Hypervisor": HYPERVISOR, "VM": VM_METHODS, "VCPU": VCPU_METHODS}
PROTOCOLS: dict[str, type] = {"Hypervisor": Hypervisor, "VM": VM, "VCPU": VCPU}
STILL_ALLOWED_AFTER_CLOSE = {"Hypervisor": {"name", "close"}, "VM": {"close"}, "VCPU": {"id", "kick", "close"}}
"""What the protocol lets a closed object still do (``close()`` is idempotent, ``kick()`` harmless)."""


def public_members(protocol: type) -> set[str]:
    """The protocol's public methods and properties; a settable property also as ``name=``."""
    names = set()
    for name, member in vars(protocol).items():
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            names.add(name)
            if member.fset is not None:
                names.add(f"{name}=")
        elif inspect.isfunction(member):
            names.add(name)
    return names


def test_every_public_method_has_a_matrix_entry() -> None:
    for kind, protocol in PROTOCOLS.items():
        members = public_members(protocol)
        covered = {entry.split("(")[0] for entry in MATRIX[kind]}  # "set_irqchip(IOAPIC)": a second entry
        assert members == covered, (
            f"{kind}: no misuse-matrix entry for {sorted(members - covered)}; "
            f"entries for what the protocol lacks: {sorted(covered - members)}"
        )


@contextmanager
def context(backend: str) -> Iterator[Context]:
    """A fresh hypervisor, VM (irqchip, PIT, a RAM slot 0 at 0) and vCPU 0, under a watchdog."""
    with open_or_skip(backend) as hv, hv.create_vm() as vm, Watchdog(vm, 20), GuestMemory(RAM) as ram:
        vm.create_irqchip()
        vm.create_pit()
        vm.set_memory_slot(0, 0, ram)
        yield Context(hv, vm, vm.create_vcpu(0), ram)


def outcome(call: Callable[[], object]) -> str:
    """``"ok"``, ``"Class/errno"`` for an hvcore error, ``"RAW Class: message"`` for anything else."""
    try:
        call()
    except hvcore.HvError as exc:
        return f"{type(exc).__name__}/{errno.errorcode.get(exc.errno or 0, exc.errno)}"
    except Exception as exc:  # what the matrix looks for
        return f"RAW {type(exc).__name__}: {exc}"
    return "ok"


def _owner(kind: str, c: Context) -> Any:
    return {"Hypervisor": c.hv, "VM": c.vm, "VCPU": c.vcpu}[kind]


@cache
def matrix_outcomes(backend: str) -> dict[str, str]:
    """Every case's outcome on ``backend``, by a readable case name."""
    results: dict[str, str] = {}
    for kind, methods in MATRIX.items():
        for name, method in methods.items():
            with context(backend) as c:
                args = [make(c) for make in method.valid]
                for position, wrong_values in enumerate(method.wrong):
                    for i, wrong in enumerate(wrong_values):
                        tried = [*args[:position], wrong, *args[position + 1 :]]
                        results[f"{kind}.{name} arg{position} #{i}: {wrong!r:.80}"] = outcome(
                            lambda call=method.call, tried=tried: call(c, *tried)  # type: ignore[misc]
                        )
                _owner(kind, c).close()
                results[f"{kind}.{name} after close"] = outcome(
                    lambda call=method.call, args=args: call(c, *args)  # type: ignore[misc]
                )
    return results


@pytest.mark.parametrize("backend", hvcore.backend_names())
def test_misuse_raises_only_typed_errors(backend: str) -> None:
    results = matrix_outcomes(backend)
    raw = {case: result for case, result in results.items() if result.startswith("RAW")}
    assert not raw, "\n".join(f"{case}: {result}" for case, result in sorted(raw.items()))


@pytest.mark.parametrize("backend", hvcore.backend_names())
def test_closed_objects_raise_closed_error(backend: str) -> None:
    results = matrix_outcomes(backend)
    wrong = {}
    for kind, methods in MATRIX.items():
        for name in methods:
            result = results[f"{kind}.{name} after close"]
            expected = "ok" if name.split("(")[0] in STILL_ALLOWED_AFTER_CLOSE[kind] else "ClosedError/EBADF"
            if result != expected:
                wrong[f"{kind}.{name}"] = result
    assert not wrong, wrong


@pytest.mark.parametrize("backend", hvcore.backend_names())
def test_wrong_types_raise_invalid_type(backend: str) -> None:
    """None, a str and a float where an int or a state goes: InvalidType (EINVAL), before anything else."""
    results = matrix_outcomes(backend)
    wrong = {
        case: result
        for case, result in results.items()
        if any(case.endswith(f": {bad!r}") for bad in (None, "1", "x", 1.5, "yes")) and result != "InvalidType/EINVAL"
    }
    assert not wrong, "\n".join(f"{case}: {result}" for case, result in sorted(wrong.items()))


def test_backends_agree() -> None:
    """The same class and errno for every case on every backend."""
    backends = hvcore.backend_names()
    usable = [b for b in backends if hvcore.available_backends().get(b) is None]
    if len(usable) < 2:
        pytest.skip(f"needs two usable backends, have {usable}")
    first, *others = usable
    reference = matrix_outcomes(first)
    for other in others:
        results = matrix_outcomes(other)
        differ = {case: (reference[case], results[case]) for case in reference if reference[case] != results[case]}
        assert not differ, "\n".join(f"{case}: {first} {a} / {other} {b}" for case, (a, b) in sorted(differ.items()))


# -- item 13: a float slot address ----------------------------------------------------------------


def test_float_slot_address_is_refused_and_the_vm_runs_on(vm: VM) -> None:
    """A float guest address (or offset, size) is InvalidType; nothing is mapped and ``run()`` still works."""
    with GuestMemory(RAM) as ram:
        for kwargs in ({"guest_address": 0x100000 + 0.0}, {"offset": 0.0}, {"size": float(RAM)}):
            arguments = {"guest_address": 0x100000, "offset": 0, "size": RAM} | kwargs
            with pytest.raises(hvcore.InvalidType, match=r"must be an int, not float") as info:
                vm.set_memory_slot(1, memory=ram, **arguments)  # type: ignore[arg-type]
            assert info.value.errno == errno.EINVAL
        assert vm.memory_slots() == ()
    assert_runs(vm)


def assert_runs(vm: VM) -> None:
    """A real-mode ``out 0x10, al; hlt`` runs to its OUT and HLT."""
    with GuestMemory(RAM) as ram:
        ram.write(0x1000, bytes.fromhex("b042e610f4"))  # mov al, 0x42; out 0x10, al; hlt
        vm.set_memory_slot(0, 0, ram)
        vcpu = vm.create_vcpu(0)
        vcpu.set_sregs(hvcore.x86.real_mode_sregs(vcpu.get_sregs()))
        vcpu.set_regs(replace(vcpu.get_regs(), rip=0x1000, rflags=2))
        exit_ = vcpu.run()
        assert isinstance(exit_, hvcore.IoExit) and exit_.port == 0x10 and exit_.data == b"\x42", exit_
        assert isinstance(vcpu.run(), hvcore.HltExit)


# -- item 14: vCPU ids, the identity map, XCRs -------------------------------------------------------


def test_a_bool_is_not_a_vcpu_id(vm: VM) -> None:
    with pytest.raises(hvcore.InvalidType, match=r"vcpu_id must be an int, not bool"):
        vm.create_vcpu(True)
    assert vm.vcpus() == ()


def test_vcpu_ids_go_up_to_max_vcpu_id(hv: Hypervisor, vm: VM) -> None:
    """As KVM: ids below ``KVM_CAP_MAX_VCPU_ID`` (4096 upstream), not only below ``max_vcpus()`` (1024)."""
    max_id = vm.check_extension(Capability.MAX_VCPU_ID)
    assert hv.max_vcpus() == hv.check_extension(Capability.MAX_VCPUS) <= max_id
    for vcpu_id in (hv.max_vcpus(), max_id - 1):
        assert vm.create_vcpu(vcpu_id).id == vcpu_id
    with pytest.raises(hvcore.InvalidArgument, match=rf"vCPU id {max_id} is out of range") as info:
        vm.create_vcpu(max_id)
    assert type(info.value) is hvcore.InvalidArgument and info.value.errno == errno.EINVAL


def test_vcpu_id_with_an_irqchip_above_255(hv: Hypervisor, vm: VM) -> None:
    """A vCPU id past the 8-bit xAPIC ID: its xAPIC ID register holds the low 8 bits, as KVM."""
    vm.create_irqchip()
    vcpu = vm.create_vcpu(0x123)
    assert vcpu.get_lapic().register(0x20) >> 24 == 0x23


@pytest.mark.parametrize("closed", [False, True])
def test_identity_map_address_only_before_the_first_vcpu(vm: VM, closed: bool) -> None:
    """KVM_SET_IDENTITY_MAP_ADDR is EINVAL once the VM has created a vCPU (a closed one counts)."""
    vm.set_identity_map_address(0xFFFBC000)
    vcpu = vm.create_vcpu(0)
    if closed:
        vcpu.close()
    with pytest.raises(hvcore.InvalidArgument, match=r"before creating any vCPU") as info:
        vm.set_identity_map_address(0xFFFBC000)
    assert type(info.value) is hvcore.InvalidArgument and info.value.errno == errno.EINVAL


def test_xcrs_other_than_xcr0_are_ignored(vm: VM) -> None:
    """KVM_SET_XCRS sets XCR0 and ignores other numbers (KVM_MAX_XCRS entries at most, 32-bit numbers)."""
    vcpu = vm.create_vcpu(0)
    before = vcpu.get_xcrs()
    vcpu.set_xcrs({5: 7, 0xFFFFFFFF: 1})
    vcpu.set_xcrs({5: 7, 0: 1})
    assert vcpu.get_xcrs() == before == {0: 1}
    with pytest.raises(hvcore.InvalidArgument, match=r"17 XCRs; struct kvm_xcrs holds at most 16"):
        vcpu.set_xcrs({i: 0 for i in range(1, 18)})
    with pytest.raises(hvcore.InvalidArgument, match=r"XCR index 0x100000000 does not fit"):
        vcpu.set_xcrs({1 << 32: 1})  # would reach KVM as XCR0 = 1


# -- item 15: wrong types ---------------------------------------------------------------------------------


def test_a_five_word_interrupt_bitmap_is_invalid_type(vm: VM) -> None:
    vcpu = vm.create_vcpu(0)
    with pytest.raises(hvcore.InvalidType, match=r"Sregs.interrupt_bitmap must be a tuple of 4 int"):
        vcpu.set_sregs(replace(vcpu.get_sregs(), interrupt_bitmap=(0, 0, 0, 0, 1)))  # type: ignore[arg-type]


def test_invalid_type_is_also_a_type_error_and_a_value_error(vm: VM) -> None:
    vcpu = vm.create_vcpu(0)
    for call in (lambda: vcpu.set_regs(None), lambda: vcpu.complete(None), lambda: vm.create_vcpu("1")):  # type: ignore[arg-type]
        with pytest.raises(hvcore.InvalidType) as info:
            call()
        assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)
        assert isinstance(info.value, hvcore.InvalidArgument) and info.value.errno == errno.EINVAL


# -- the VMM layer: Machine and Bus ---------------------------------------------------------------------


class _Port:
    """A device that reads zeros and ignores writes."""

    name = "port"

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        return None


MACHINE_CALLS: dict[str, tuple[Callable[[Machine], object], ...]] = {
    "write": (lambda mc: mc.write(None, b"x"), lambda mc: mc.write(0x1000, "x"), lambda mc: mc.write(1.5, b"")),  # type: ignore[arg-type]
    "read": (lambda mc: mc.read("0", 1), lambda mc: mc.read(0, None), lambda mc: mc.read(True, 1)),  # type: ignore[arg-type]
    "add_rom": (lambda mc: mc.add_rom(0xFFFF0000, "rom"), lambda mc: mc.add_rom(None, b"")),  # type: ignore[arg-type]
    "add_io_device": (
        lambda mc: mc.add_io_device("0x3f8", 8, _Port()),  # type: ignore[arg-type]
        lambda mc: mc.add_io_device(0x3F8, 8.0, _Port()),  # type: ignore[arg-type]
        lambda mc: mc.add_io_device(0x3F8, 8, None),  # type: ignore[arg-type]
    ),
    "add_mmio_device": (
        lambda mc: mc.add_mmio_device(0xD0000000, None, _Port()),  # type: ignore[arg-type]
        lambda mc: mc.add_mmio_device(0xD0000000, 8, object()),  # type: ignore[arg-type]
    ),
    "irq": (lambda mc: mc.irq("4"), lambda mc: mc.irq(True)),  # type: ignore[arg-type]
    "clock": (),
    "set_pit_hpet_legacy": (lambda mc: mc.set_pit_hpet_legacy("on"),),  # type: ignore[arg-type]
    "load": (
        lambda mc: mc.load("kernel"),  # type: ignore[arg-type]
        lambda mc: mc.load(b"\xf4", format=None),  # type: ignore[arg-type]
        lambda mc: mc.load(b"\xf4", cmdline=b"x"),  # type: ignore[arg-type]
        lambda mc: mc.load(b"\xf4", initrd="x"),  # type: ignore[arg-type]
        lambda mc: mc.load(b"\xf4", name=None),  # type: ignore[arg-type]
    ),
    "boot": (lambda mc: mc.boot(None), lambda mc: mc.boot("raw")),  # type: ignore[arg-type]
    "start": (),
    "wait": (lambda mc: mc.wait("1"),),  # type: ignore[arg-type]
    "run": (lambda mc: mc.run(timeout="1"), lambda mc: mc.run(timeout=True)),  # type: ignore[arg-type]
    "pause": (),
    "resume": (),
    "paused": (),
    "unplug_vcpu": (lambda mc: mc.unplug_vcpu("1"), lambda mc: mc.unplug_vcpu(None)),  # type: ignore[arg-type]
    "plug_vcpu": (lambda mc: mc.plug_vcpu(1.0), lambda mc: mc.plug_vcpu(True)),  # type: ignore[arg-type]
    "unplugged": (),
    "raise_smi": (lambda mc: mc.raise_smi("0"), lambda mc: mc.raise_smi(0.0)),  # type: ignore[arg-type]
    "pending_smis": (),
    "request_vcpu_unplug": (lambda mc: mc.request_vcpu_unplug("1"), lambda mc: mc.request_vcpu_unplug(False)),  # type: ignore[arg-type]
    "request_stop": (lambda mc: mc.request_stop(None), lambda mc: mc.request_stop("reset")),  # type: ignore[arg-type]
    "stop": (lambda mc: mc.stop("halted"),),  # type: ignore[arg-type]
    "statistics": (),
    "ram_size": (),
    "high_ram_size": (),
    "close": (),
}
MACHINE_ARGUMENTS = (
    {"memory": "1M"},
    {"memory": 1.5 * (1 << 20)},
    {"cpus": None},
    {"cpus": True},
    {"irqchip": "yes"},
    {"present": "1"},
    {"present": 1.0},
    {"smm": "yes"},
    {"smm": 2},
)
BUS_CALLS: dict[str, tuple[Callable[[Bus], object], ...]] = {
    "register": (
        lambda bus: bus.register(None, 1, _Port()),  # type: ignore[arg-type]
        lambda bus: bus.register(0, "1", _Port()),  # type: ignore[arg-type]
        lambda bus: bus.register(0, 1, None),  # type: ignore[arg-type]
    ),
    "unregister": (lambda bus: bus.unregister(None),),  # type: ignore[arg-type]
    "find": (lambda bus: bus.find("0"),),  # type: ignore[arg-type]
    "read": (lambda bus: bus.read(None, 1), lambda bus: bus.read(0, 1.0), lambda bus: bus.read(0, 16)),  # type: ignore[arg-type]
    "write": (lambda bus: bus.write(0, 1, None), lambda bus: bus.write("0", 1, 0)),  # type: ignore[arg-type]
    "ranges": (),
}


def public_api(cls: type) -> set[str]:
    """A class's public methods and properties."""
    return {
        n for n, v in vars(cls).items() if not n.startswith("_") and (inspect.isfunction(v) or isinstance(v, property))
    }


def test_every_machine_and_bus_method_has_misuse_cases() -> None:
    assert public_api(Machine) == set(MACHINE_CALLS)
    assert public_api(Bus) == set(BUS_CALLS)


def test_machine_and_bus_refuse_wrong_types(hv: Hypervisor) -> None:
    """Every wrong type is InvalidType (EINVAL), and the machine still runs afterwards."""
    for arguments in MACHINE_ARGUMENTS:
        with pytest.raises(hvcore.InvalidType):
            Machine(hv, **arguments)
    with pytest.raises(hvcore.InvalidType):
        Machine(None, memory=1 << 20)  # type: ignore[arg-type]
    with Machine(hv, memory=1 << 20, irqchip=False) as machine:
        for name, calls in MACHINE_CALLS.items():
            for call in calls:
                with pytest.raises(hvcore.InvalidType) as info:
                    call(machine)
                assert info.value.errno == errno.EINVAL, name
        bus = Bus("io", 0x10000)
        for bus_calls in BUS_CALLS.values():
            for bus_call in bus_calls:
                with pytest.raises(hvcore.InvalidArgument):
                    bus_call(bus)
        vcpu = machine.vcpus[0]
        vcpu.set_sregs(hvcore.x86.real_mode_sregs(vcpu.get_sregs()))
        vcpu.set_regs(replace(vcpu.get_regs(), rip=0x1000, rflags=2))
        machine.write(0x1000, b"\xf4")  # hlt
        assert machine.run(timeout=10).reason == "halted"
