"""How the KVM backend spells SMM and address spaces to KVM, checked on real KVM objects.

This project's hosts have no SMM (``KVM_CAP_X86_SMM`` is 0), so ``tests/test_smm.py``'s guest tests
skip on KVM. What the backend would pass is still checked here: the VM is told it has two address
spaces and SMM, and the ioctl calls are recorded instead of made. ``KVM_SET_USER_MEMORY_REGION``
and ``KVM_GET_DIRTY_LOG`` carry ``address_space << 16 | slot`` (api.rst), ``smi()`` issues
``KVM_SMI``, and ``in_smm`` reads ``KVM_RUN_X86_SMM`` from ``kvm_run.flags``. The numbers and the
flag are checked against the kernel's headers in ``test_uapi.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

import hvcore
from hvcore import GuestMemory, Hypervisor, SlotFlags
from hvcore.memory import SlotTable
from hvcore_kvm import ioctls, kvm_run, uapi
from hvcore_kvm import vcpu as kvm_vcpu
from hvcore_kvm import vm as kvm_vm


def _recorder(calls: list[tuple[int, Any]]) -> Any:
    def ioctl(fd: int, request: int, argument: Any, what: str = "") -> int:
        calls.append((request, argument))
        return 0

    return ioctl


def test_slots_and_dirty_logs_of_address_space_1_carry_it_in_the_slot_number(
    kvm: Hypervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    with kvm.create_vm() as vm, GuestMemory(0x10000) as smram:
        assert isinstance(vm, kvm_vm.KvmVM)
        vm._slots = SlotTable(vm._slots.max_slots, address_spaces=2)  # as a KVM with SMM reports
        calls: list[tuple[int, Any]] = []
        monkeypatch.setattr(kvm_vm, "ioctl", _recorder(calls))
        vm.set_memory_slot(3, 0x30000, smram, flags=SlotFlags.LOG_DIRTY_PAGES, address_space=1)
        vm.get_dirty_log(3, address_space=1)
        vm.delete_memory_slot(3, address_space=1)
        (set_request, region), (log_request, log), (delete_request, deleted) = calls
        assert (set_request, log_request, delete_request) == (
            ioctls.KVM_SET_USER_MEMORY_REGION,
            ioctls.KVM_GET_DIRTY_LOG,
            ioctls.KVM_SET_USER_MEMORY_REGION,
        )
        assert region.slot == log.slot == deleted.slot == 1 << 16 | 3
        assert (region.guest_phys_addr, region.memory_size) == (0x30000, 0x10000)
        assert deleted.memory_size == 0


def test_smi_issues_kvm_smi_only_where_kvm_has_smm(kvm: Hypervisor, monkeypatch: pytest.MonkeyPatch) -> None:
    with kvm.create_vm() as vm:
        vcpu = vm.create_vcpu(0)
        assert isinstance(vcpu, kvm_vcpu.KvmVCPU)
        if not vm.check_extension(hvcore.Capability.X86_SMM):
            with pytest.raises(hvcore.Unsupported, match="KVM_CAP_X86_SMM"):
                vcpu.smi()
        calls: list[tuple[int, Any]] = []
        monkeypatch.setattr(kvm_vcpu, "ioctl", _recorder(calls))
        vcpu._smm = True  # as on a KVM with SMM
        vcpu.smi()
        assert calls == [(ioctls.KVM_SMI, 0)]


def test_in_smm_reads_kvm_run_flags(kvm: Hypervisor) -> None:
    with kvm.create_vm() as vm:
        vcpu = vm.create_vcpu(0)
        assert isinstance(vcpu, kvm_vcpu.KvmVCPU)
        assert vcpu.in_smm is False
        vcpu._run[kvm_run.FLAGS] = uapi.KVM_RUN_X86_SMM  # what KVM writes on an exit from SMM
        assert vcpu.in_smm is True
