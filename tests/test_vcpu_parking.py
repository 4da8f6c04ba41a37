"""Unplugging and re-plugging vCPUs (``VCPU.close``, ``VM.parked_vcpus``), as QEMU parks KVM vCPUs.

KVM never destroys a vCPU and refuses to create an id twice; a closed vCPU stays parked in its VM
and ``create_vcpu`` of its id brings it back in the state KVM created it in. The simulator does
the same. Checked on each backend: the state a re-plugged vCPU comes back in, guest code running
on it after INIT/SIPI, and a thousand unplug/re-plug cycles that leave the process's file
descriptors and memory where they were.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import resource
from dataclasses import replace

import pytest

import hvcore
from hvcore import VM, Hypervisor, MpState
from hvcore.vmm.cpuid import vcpu_cpuid
from hvcore.vmm.devices import DebugExit
from hvcore.vmm.loaders import BootPlan
from hvcore.vmm.machine import Machine, MachineResult
from tests.quirks import host_variant


def test_a_replugged_vcpu_comes_back_as_kvm_created_it(hv: Hypervisor, vm: VM) -> None:
    vm.create_irqchip()
    vm.create_vcpu(0)
    first = vm.create_vcpu(1)
    created = (first.get_regs(), first.get_sregs(), first.get_mp_state(), first.get_vcpu_events())
    first.set_regs(replace(first.get_regs(), rax=0x1234, rip=0x5000, rflags=0x202))
    first.set_sregs(hvcore.x86.real_mode_sregs(first.get_sregs()))
    first.set_mp_state(MpState.RUNNABLE)
    first.close()
    assert vm.parked_vcpus() == {1} and [v.id for v in vm.vcpus()] == [0]
    with pytest.raises(hvcore.ClosedError):
        first.get_regs()
    again = vm.create_vcpu(1)
    assert vm.parked_vcpus() == frozenset() and again is not first
    assert (again.get_regs(), again.get_sregs(), again.get_mp_state(), again.get_vcpu_events()) == created
    assert again.get_mp_state() == MpState.UNINITIALIZED  # an AP waits for INIT/SIPI again


def test_a_vcpu_that_ran_keeps_its_cpuid_across_a_replug(hv: Hypervisor, vm: VM) -> None:
    """Once a vCPU entered the guest KVM takes only the CPUID it has (``cpuid_after_run``), and a parked
    vCPU keeps both its CPUID and having run: a VMM re-plugging it must not change its CPUID."""
    with hvcore.GuestMemory(0x10000) as ram:
        ram.write(0x1000, b"\xf4")  # hlt
        vm.set_memory_slot(0, 0, ram)
        vcpu = vm.create_vcpu(0)
        assert vcpu.get_cpuid() == ()  # KVM creates a vCPU without CPUID entries
        entries = hv.supported_cpuid()
        vcpu.set_cpuid(entries)
        vcpu.set_sregs(hvcore.x86.real_mode_sregs(vcpu.get_sregs()))
        vcpu.set_regs(replace(vcpu.get_regs(), rip=0x1000))
        assert isinstance(vcpu.run(), hvcore.HltExit)
        kept = vcpu.get_cpuid()
        vcpu.close()
        again = vm.create_vcpu(0)
        assert again.get_cpuid() == kept
        again.set_cpuid(kept)  # what get_cpuid returns is taken everywhere
        variant = host_variant(hv, "cpuid_after_run")
        if variant == "unchecked":  # a kernel before 5.16 takes any entries
            return
        with pytest.raises(hvcore.InvalidArgument):
            again.set_cpuid(entries[:-1])  # it has run: other entries are refused
        if variant == "upstream":
            again.set_cpuid(entries)  # the same entries again, KVM's runtime bits aside
        else:
            assert variant == "same_refused"
            with pytest.raises(hvcore.InvalidArgument):
                again.set_cpuid(entries)


# Protected mode at 0x1000 on vCPU 0: INIT and a start-up IPI (vector 8: real mode at 0x8000) to APIC 1,
# then waits until the AP has written 0x5A at 0x9000 and ends the run through isa-debug-exit (0x31).
BSP = (
    b"\xc7\x05\x10\x03\xe0\xfe\x00\x00\x00\x01"  # mov dword [0xfee00310], 0x01000000 (destination: APIC 1)
    b"\xc7\x05\x00\x03\xe0\xfe\x00\x45\x00\x00"  # mov dword [0xfee00300], 0x4500 (INIT)
    b"\xc7\x05\x00\x03\xe0\xfe\x08\x46\x00\x00"  # mov dword [0xfee00300], 0x4608 (SIPI, vector 8)
    b"\x80\x3d\x00\x90\x00\x00\x5a"  # wait: cmp byte [0x9000], 0x5a
    b"\x75\xf7"  # jne wait
    b"\xb0\x31\xe6\xf4"  # mov al, 0x31; out 0xf4, al
)
AP = b"\x31\xc0\x8e\xd8\xc6\x06\x00\x90\x5a\xfa\xf4"  # xor ax,ax; mov ds,ax; mov byte [0x9000],0x5a; cli; hlt


def test_a_replugged_vcpu_wakes_on_init_sipi_and_runs_guest_code(hv: Hypervisor) -> None:
    with Machine(hv, memory=16 << 20, cpus=2) as machine:
        machine.add_io_device(DebugExit.PORT, 1, DebugExit(machine.device_host))
        machine.vcpus[1].close()  # unplug vCPU 1 ...
        assert machine.vm.parked_vcpus() == {1}
        replugged = machine.vm.create_vcpu(1)  # ... and plug it back, set up as a new one
        replugged.set_cpuid(vcpu_cpuid(hv.supported_cpuid(), 1))
        machine.vcpus[1] = replugged
        machine.write(0x1000, BSP)
        machine.write(0x8000, AP)
        machine.boot(BootPlan("protected", entry=0x1000))
        assert machine.run(timeout=60) == MachineResult("debug-exit", 0x31 << 1 | 1)
        assert machine.read(0x9000, 1) == b"\x5a"


def _open_files() -> set[tuple[str, str]]:
    """(fd, what it is) for every open file: a new pair is one the loop left open (others may close meanwhile)."""
    gc.collect()
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found.add((fd, os.readlink(f"/proc/self/fd/{fd}")))
    return found


def _rss_kib() -> int:
    """Resident memory after a collection, with the free heap handed back (glibc keeps freed engines' memory
    in its arenas otherwise: retention, not a leak)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * (resource.getpagesize() // 1024)


def test_a_thousand_unplug_replug_cycles_leave_fds_and_memory_flat(vm: VM) -> None:
    vm.create_vcpu(0)
    for _ in range(20):  # warm up: caches, the first allocations
        vm.create_vcpu(1).close()
    files, rss = _open_files(), _rss_kib()
    for _ in range(1000):
        vcpu = vm.create_vcpu(1)
        vcpu.set_regs(replace(vcpu.get_regs(), rax=7))
        vcpu.close()
    assert _open_files() - files == set()
    assert _rss_kib() - rss < 16 * 1024, f"RSS grew by {_rss_kib() - rss} KiB over 1000 cycles"
    assert vm.parked_vcpus() == {1}


def test_closing_the_vm_releases_parked_vcpus(hv: Hypervisor) -> None:
    files = _open_files()
    vm = hv.create_vm()
    vm.create_vcpu(0).close()
    vm.create_vcpu(1).close()
    assert vm.parked_vcpus() == {0, 1}
    vm.close()
    assert _open_files() - files == set()


# As BSP above, but first waits until the host writes 1 at 0x9100 (after it re-plugged vCPU 1).
BSP_AFTER_REPLUG = b"\x80\x3d\x00\x91\x00\x00\x01\x75\xf7" + BSP  # wait: cmp byte [0x9100], 1; jne wait


def test_a_running_machine_unplugs_and_replugs_a_vcpu(hv: Hypervisor) -> None:
    with Machine(hv, memory=16 << 20, cpus=2) as machine:
        machine.add_io_device(DebugExit.PORT, 1, DebugExit(machine.device_host))
        machine.write(0x1000, BSP_AFTER_REPLUG)
        machine.write(0x8000, AP)
        machine.boot(BootPlan("protected", entry=0x1000))
        machine.start()
        try:
            machine.unplug_vcpu(1)  # its thread was waiting for INIT/SIPI in run()
            assert machine.unplugged == {1} and machine.vm.parked_vcpus() == {1}
            assert machine.wait(0.2) is None  # vCPU 0 runs on
            machine.plug_vcpu(1)
            assert machine.unplugged == frozenset() and machine.vm.parked_vcpus() == frozenset()
            machine.write(0x9100, b"\x01")  # now the BSP sends INIT/SIPI to the re-plugged vCPU
            result = machine.wait(60)
        finally:
            machine.stop()
        assert result == MachineResult("debug-exit", 0x31 << 1 | 1)
        assert machine.read(0x9000, 1) == b"\x5a"


def test_hotplug_mistakes_are_refused(hv: Hypervisor) -> None:
    with Machine(hv, memory=16 << 20, cpus=2) as machine:
        with pytest.raises(hvcore.InvalidArgument):
            machine.unplug_vcpu(0)  # the bootstrap processor stays
        with pytest.raises(hvcore.StateError, match="plugged in"):
            machine.plug_vcpu(1)
        machine.unplug_vcpu(1)
        with pytest.raises(hvcore.StateError, match="unplugged already"):
            machine.unplug_vcpu(1)
        assert machine.plug_vcpu(1).id == 1
