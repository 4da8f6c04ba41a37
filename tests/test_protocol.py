"""The protocol itself: backends conform to it (statically and at run time), exits match, errors form one tree."""

from __future__ import annotations

import pickle
from dataclasses import FrozenInstanceError

import pytest

import hvcore
from hvcore import VCPU, VM, Exit, Hypervisor, IoDirection, IoExit, MmioExit
from hvcore_kvm import KvmHypervisor, KvmVCPU, KvmVM


def _static_conformance(hv: KvmHypervisor, vm: KvmVM, vcpu: KvmVCPU) -> tuple[Hypervisor, VM, VCPU]:
    """Never called: mypy --strict checks that the KVM classes satisfy the protocols."""
    return hv, vm, vcpu


def test_backend_objects_satisfy_the_protocols(hv: Hypervisor) -> None:
    assert isinstance(hv, Hypervisor)
    with hv.create_vm() as vm:
        assert isinstance(vm, VM)
        vcpu = vm.create_vcpu(0)
        assert isinstance(vcpu, VCPU)
        assert vm.vcpus() == (vcpu,)


def describe(exit_: Exit) -> str:
    match exit_:
        case IoExit(port=0x3F8, direction=IoDirection.OUT, data=data):
            return f"serial {data!r}"
        case IoExit(direction=IoDirection.IN, size=size, count=count):
            return f"in {size}x{count}"
        case MmioExit(address=address, is_write=False, length=length):
            return f"read {length} at {address:#x}"
        case hvcore.HltExit():
            return "hlt"
        case _:
            return "other"


def test_exits_are_pattern_matchable_values() -> None:
    assert describe(IoExit(0x3F8, 1, 1, IoDirection.OUT, b"A")) == "serial b'A'"
    assert describe(IoExit(0x60, 2, 4, IoDirection.IN)) == "in 2x4"
    assert describe(MmioExit(0xD0000, 8, False)) == "read 8 at 0xd0000"
    assert describe(hvcore.HltExit()) == "hlt"
    assert describe(hvcore.ShutdownExit()) == "other"
    assert hvcore.HltExit() != hvcore.ShutdownExit()  # type: ignore[comparison-overlap]
    assert IoExit(0x10, 2, 3, IoDirection.OUT, bytes.fromhex("010002000300")).values() == (1, 2, 3)
    with pytest.raises(FrozenInstanceError):
        IoExit(0x10, 1, 1, IoDirection.OUT).port = 1  # type: ignore[misc]


def test_each_exit_names_its_kvm_reason() -> None:
    assert IoExit.reason is hvcore.ExitReason.IO
    assert int(IoExit.reason) == 2
    assert MmioExit.reason == 6
    assert hvcore.InterruptedExit.reason is hvcore.ExitReason.INTR
    assert int(hvcore.ExitReason.INTR) == 10
    assert hvcore.InternalErrorExit.reason == 17


@pytest.mark.parametrize(
    "error",
    [
        hvcore.SlotOverlap("slot 1 overlaps slot 0", operation="set_memory_slot"),
        hvcore.ClosedError("closed"),
        hvcore.HypervisorFault("odd", errno=5, operation="KVM_RUN"),
    ],
)
def test_errors_are_one_tree_pickle_and_carry_their_errno(error: hvcore.HvError) -> None:
    assert isinstance(error, hvcore.HvError)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error)
    assert (again.message, again.errno, again.operation) == (error.message, error.errno, error.operation)
    assert error.errno is not None
    assert type(error).__module__ == "hvcore"
    assert "errno=" in repr(error)
