"""Nothing leaks: file descriptors, kvm_run mappings, guest memory and RSS stay flat.

Resource checks, not timings: thousands of VMs created and closed, objects dropped
without ``close()`` (garbage collection must release them through their finalizers),
error paths, and the deferred unmap of a ``GuestMemory`` that a slot still maps.
Measurements come from ``/proc/self/fd``, ``/proc/self/maps`` and ``/proc/self/statm``.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import pytest

import hvcore
from hvcore import VM, GuestMemory, HltExit, Hypervisor
from hvcore_kvm.system import KvmBackend
from tests.boot import boot
from tests.guests import layout

PAGE = os.sysconf("SC_PAGE_SIZE")
VM_CYCLES = 2000
WARM_UP = 50
RSS_BOUND = 16 << 20
"""Generous: 2,000 leaked VMs would leak far more (a Python VM + vCPU + GuestMemory is several KiB)."""
VIRTUAL_BOUND = 64 << 20
"""Each cycle maps a 640 KiB GuestMemory and a 12 KiB kvm_run: 2,000 leaked would add > 1 GiB."""
HLT = b"\xf4"


def open_fds() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def vcpu_mappings() -> int:
    """kvm_run mappings (``anon_inode:kvm-vcpu``) in this process."""
    with open("/proc/self/maps") as maps:
        return sum("kvm-vcpu" in line for line in maps)


def is_mapped(address: int) -> bool:
    """True while ``address`` lies in one of this process's mappings."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            low, high = (int(x, 16) for x in line.split(maxsplit=1)[0].split("-"))
            if low <= address < high:
                return True
    return False


def fd_is_open(fd: int) -> bool:
    """True while ``fd`` is an open descriptor."""
    try:
        os.fstat(fd)
    except OSError as exc:
        if exc.errno == errno.EBADF:
            return False
        raise
    return True


@dataclass(frozen=True)
class Usage:
    """What the process holds: fds, kvm_run mappings, resident and virtual size (bytes)."""

    fds: int
    vcpu_maps: int
    rss: int
    virtual: int

    @staticmethod
    def now() -> Usage:
        """Collect garbage, then measure."""
        gc.collect()
        with open("/proc/self/statm") as statm:
            size, resident = (int(x) * PAGE for x in statm.read().split()[:2])
        return Usage(open_fds(), vcpu_mappings(), resident, size)


def assert_released(before: Usage) -> None:
    """Every fd and kvm_run mapping taken since ``before`` is gone."""
    after = Usage.now()
    assert after.fds == before.fds, f"{after.fds - before.fds} file descriptors leaked"
    assert after.vcpu_maps == before.vcpu_maps, f"{after.vcpu_maps - before.vcpu_maps} kvm_run mappings leaked"


# -- many VMs ----------------------------------------------------------------


def _vm_cycle(hv: Hypervisor) -> None:
    """One VM with a RAM slot and a vCPU that runs to HLT, all closed (the RAM's unmap deferred to the VM's close)."""
    with hv.create_vm() as vm, GuestMemory(layout.RAM_SIZE) as ram:
        vm.set_memory_slot(0, layout.RAM_BASE, ram)
        vcpu = boot(hv, vm, HLT)
        assert isinstance(vcpu.run(), HltExit)


def test_2000_vms_leave_fds_and_rss_flat(kvm: Hypervisor, record_property: Callable[[str, object], None]) -> None:
    for _ in range(WARM_UP):
        _vm_cycle(kvm)
    before = Usage.now()
    start = time.perf_counter()
    for _ in range(VM_CYCLES):
        _vm_cycle(kvm)
    seconds = time.perf_counter() - start
    after = Usage.now()
    record_property("vm_cycles_seconds", round(seconds, 2))
    print(f"\n{VM_CYCLES} VM cycles: {seconds:.2f} s; rss {after.rss - before.rss:+d} B, "
          f"virtual {after.virtual - before.virtual:+d} B")
    assert after.fds == before.fds, f"{after.fds - before.fds} fds leaked over {VM_CYCLES} VMs"
    assert after.vcpu_maps == before.vcpu_maps, "kvm_run mappings leaked"
    assert after.rss - before.rss < RSS_BOUND, f"RSS grew {(after.rss - before.rss) >> 20} MiB over {VM_CYCLES} VMs"
    assert after.virtual - before.virtual < VIRTUAL_BOUND, (
        f"virtual size grew {(after.virtual - before.virtual) >> 20} MiB over {VM_CYCLES} VMs: mappings leak"
    )


# -- dropped without close() ----------------------------------------------------


def _populate(hv: Hypervisor) -> tuple[list[weakref.ref[object]], int]:
    """A VM with a slot and a running-capable vCPU; only weak references and the RAM's address come back."""
    vm = hv.create_vm()
    ram = GuestMemory(layout.RAM_SIZE)
    vm.set_memory_slot(0, layout.RAM_BASE, ram)
    vcpu = boot(hv, vm, HLT)
    assert isinstance(vcpu.run(), HltExit)
    return [weakref.ref(vm), weakref.ref(vcpu), weakref.ref(ram)], ram.address


def test_vm_and_vcpu_dropped_without_close_are_collected(kvm: Hypervisor) -> None:
    before = Usage.now()
    refs, address = _populate(kvm)
    assert open_fds() >= before.fds + 2  # VM, vCPU (and the dup of the vCPU fd that Python's mmap keeps)
    assert vcpu_mappings() == before.vcpu_maps + 1
    gc.collect()
    assert [r() for r in refs] == [None, None, None], "something still holds the VM, vCPU or GuestMemory"
    assert_released(before)
    assert not is_mapped(address), "the GuestMemory of a collected VM is still mapped"


def test_vcpu_dropped_without_close_lives_as_long_as_its_vm(kvm: Hypervisor) -> None:
    """A VM lists its vCPUs (``vm.vcpus()``), so dropping only the vCPU frees nothing; dropping the VM frees both."""
    before = Usage.now()
    vm = kvm.create_vm()
    vcpu_ref = weakref.ref(vm.create_vcpu(3))
    gc.collect()
    assert vcpu_ref() is not None
    assert [v.id for v in vm.vcpus()] == [3]
    del vm
    gc.collect()
    assert vcpu_ref() is None
    assert_released(before)


def test_hypervisor_dropped_without_close_is_collected(kvm: Hypervisor) -> None:
    before = Usage.now()
    hv = hvcore.open_hypervisor("kvm")
    refs, address = _populate(hv)
    refs.append(weakref.ref(hv))
    del hv
    gc.collect()
    assert [r() for r in refs] == [None] * 4
    assert_released(before)
    assert not is_mapped(address)


def test_closing_the_hypervisor_releases_live_vms(kvm: Hypervisor) -> None:
    before = Usage.now()
    hv = hvcore.open_hypervisor("kvm")
    vms = [hv.create_vm() for _ in range(3)]
    for vm in vms:
        vm.create_vcpu(0)
    hv.close()
    assert_released(before)
    for vm in vms:
        with pytest.raises(hvcore.ClosedError):
            vm.create_vcpu(1)


# -- error paths ---------------------------------------------------------------


def _misuse(hv: Hypervisor, vm: VM, ram: GuestMemory, spare: GuestMemory) -> None:
    """Every refusal below leaves nothing behind."""
    refusals: list[tuple[type[hvcore.HvError], Callable[[], object]]] = [
        (hvcore.InvalidArgument, lambda: vm.create_vcpu(-1)),
        (hvcore.InvalidArgument, lambda: vm.create_vcpu(1 << 20)),
        (hvcore.AlreadyExists, lambda: vm.create_vcpu(0)),  # refused by hvcore
        (hvcore.SlotOverlap, lambda: vm.set_memory_slot(1, 0x8000, spare)),
        (hvcore.AlignmentError, lambda: vm.set_memory_slot(1, 0x100800, spare)),
        (hvcore.InvalidArgument, lambda: vm.set_memory_slot(0, 0, spare)),
        (hvcore.InvalidArgument, lambda: vm.set_memory_slot(1, 0x100000, spare, size=2 * layout.RAM_SIZE)),
        (hvcore.InvalidArgument, lambda: vm.delete_memory_slot(9)),
        (hvcore.NotFound, lambda: vm.get_dirty_log(0)),
        (hvcore.InvalidArgument, vm.create_irqchip),  # refused by KVM: a vCPU exists
        (hvcore.InvalidArgument, vm.vcpus()[0].get_lapic),  # refused by KVM: no irqchip
        (hvcore.InvalidArgument, lambda: vm.vcpus()[0].set_msrs({0xDEADBEEF: 1})),
        (hvcore.StateError, lambda: vm.vcpus()[0].complete(0)),
        (hvcore.InvalidArgument, lambda: GuestMemory(0)),
        (hvcore.BackendUnavailable, KvmBackend("/nonexistent/kvm").open),
        (hvcore.BackendUnavailable, KvmBackend("/dev/null").open),  # opens, then fails KVM_GET_API_VERSION
        (hvcore.InvalidArgument, lambda: hvcore.open_hypervisor("nonsense")),
    ]
    for cls, call in refusals:
        with pytest.raises(cls):
            call()
    assert [s.slot for s in vm.memory_slots()] == [0]
    assert ram.read(layout.CODE, 1) == HLT


def test_error_paths_leak_nothing(kvm: Hypervisor) -> None:
    with kvm.create_vm() as vm, GuestMemory(layout.RAM_SIZE) as ram, GuestMemory(layout.RAM_SIZE) as spare:
        vm.set_memory_slot(0, layout.RAM_BASE, ram)
        boot(kvm, vm, HLT)
        for _ in range(20):
            _misuse(kvm, vm, ram, spare)
        before = Usage.now()
        for _ in range(500):
            _misuse(kvm, vm, ram, spare)
        after = Usage.now()
        assert after.fds == before.fds
        assert after.vcpu_maps == before.vcpu_maps
        assert after.rss - before.rss < RSS_BOUND // 4
        spare_address, ram_address = spare.address, ram.address
        spare.close()
        assert not is_mapped(spare_address), "a refused set_memory_slot() left the spare GuestMemory attached"
        ram.close()
        assert is_mapped(ram_address), "slot 0 still maps the RAM: its unmap must wait"
    assert not is_mapped(ram_address)


def test_failed_create_vm_closes_its_fd_exactly_once(kvm: Hypervisor, monkeypatch: pytest.MonkeyPatch) -> None:
    """When building the VM object fails, its fd is closed once: a later close would hit whoever reused the number."""

    def refuse() -> int:
        raise hvcore.ResourceExhausted("injected: no vCPU mmap size", errno=errno.ENOMEM)

    kvm.vcpu_mmap_size()
    before = Usage.now()
    monkeypatch.setattr(kvm, "vcpu_mmap_size", refuse)
    with pytest.raises(hvcore.ResourceExhausted, match="injected") as info:
        kvm.create_vm()
    assert open_fds() == before.fds, "the fd of the VM that failed to build is still open"
    bystander = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)  # lowest free number: the failed VM's
    try:
        del info  # the traceback held the half-built VM object
        gc.collect()
        assert fd_is_open(bystander), "collecting the half-built VM closed an fd that now belongs to someone else"
    finally:
        with contextlib.suppress(OSError):
            os.close(bystander)
    monkeypatch.undo()
    assert_released(before)


# -- GuestMemory's deferred unmap ------------------------------------------------


def test_guest_memory_unmaps_only_after_its_slot_is_deleted(vm: VM) -> None:
    ram = GuestMemory(0x10000)
    address = ram.address
    vm.set_memory_slot(0, 0x100000, ram)
    ram.close()
    assert ram.closed
    assert is_mapped(address), "closed while a slot maps it: the unmap must wait for the slot"
    with pytest.raises(hvcore.ClosedError, match="guest memory is closed"):
        ram.read(0, 1)
    vm.delete_memory_slot(0)
    assert not is_mapped(address)
    ram.close()  # harmless


def test_guest_memory_in_two_slots_unmaps_after_both(vm: VM) -> None:
    ram = GuestMemory(0x20000)
    address = ram.address
    vm.set_memory_slot(0, 0x100000, ram, size=0x10000)
    vm.set_memory_slot(1, 0x200000, ram, offset=0x10000, size=0x10000)
    ram.close()
    vm.delete_memory_slot(1)
    assert is_mapped(address), "slot 0 still maps it"
    vm.delete_memory_slot(0)
    assert not is_mapped(address)


def test_guest_memory_unmaps_when_its_vm_closes(vm: VM) -> None:
    ram = GuestMemory(0x10000)
    address = ram.address
    vm.set_memory_slot(0, 0x100000, ram)
    vm.set_memory_slot(0, 0x300000, ram)  # a move keeps one reference, not two
    ram.close()
    assert is_mapped(address)
    vm.close()
    assert not is_mapped(address)


def test_guest_memory_unmaps_when_its_hypervisor_closes(hv: Hypervisor) -> None:
    vm = hv.create_vm()
    ram = GuestMemory(0x10000)
    address = ram.address
    vm.set_memory_slot(0, 0x100000, ram)
    ram.close()
    hv.close()
    assert not is_mapped(address)


def test_guest_memory_unmaps_at_once_without_slots() -> None:
    ram = GuestMemory(0x10000)
    address = ram.address
    ram.close()
    assert not is_mapped(address)
    other = GuestMemory(0x10000)
    address = other.address
    del other  # dropped without close(): the mmap goes with the object
    gc.collect()
    assert not is_mapped(address)


def test_closed_guest_memory_unmaps_when_its_vm_is_collected(kvm: Hypervisor) -> None:
    """A VM dropped without close() must release its slots too, or a closed GuestMemory stays mapped forever."""
    ram = GuestMemory(0x10000)
    address = ram.address
    vm = kvm.create_vm()
    vm.set_memory_slot(0, 0x100000, ram)
    ram.close()
    assert is_mapped(address)
    del vm
    gc.collect()
    assert not is_mapped(address), "the VM was collected, yet the GuestMemory it mapped (closed) is still mapped"
