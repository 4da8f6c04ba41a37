"""KVM's paravirtual interface on every backend: the KVM CPUID leaves and kvmclock.

Upstream KVM (``Documentation/virt/kvm/x86/cpuid.rst``, ``msr.rst``): ``supported_cpuid()`` has
leaf 0x40000000 (the "KVMKVMKVM" signature) and 0x40000001 (the PV features); a guest that writes
a guest-physical address to MSR_KVM_SYSTEM_TIME(_NEW) finds there a ``pvclock_vcpu_time_info``
turning its TSC into the VM clock, and MSR_KVM_WALL_CLOCK(_NEW) fills a ``pvclock_wall_clock``
with the wall-clock time of VM clock 0.

The guest is ``real_mode.MSR_PROBE`` (:class:`tests.test_msrs.Probe`): each WRMSR, RDMSR and
RDTSC is one host request, and the test reads the structures from guest memory in between. No
assertion is on timing: VM-clock readings only bracket what the guest computes.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

import pytest

from hvcore import VM, CpuidEntry, GuestMemory, HltExit, Hypervisor, IoDirection, IoExit, SlotFlags
from tests.boot import add_ram, boot, read_guest, run_exits, write_guest
from tests.guests import layout, real_mode
from tests.quirks import is_simulator
from tests.test_msrs import OK, Probe

KVM_CPUID_SIGNATURE, KVM_CPUID_FEATURES = 0x40000000, 0x40000001
KVM_SIGNATURE = b"KVMKVMKVM\0\0\0"
CLOCKSOURCE, NOP_IO_DELAY, CLOCKSOURCE2, CLOCKSOURCE_STABLE_BIT = 0, 1, 3, 24
WALL_CLOCK, SYSTEM_TIME, WALL_CLOCK_NEW, SYSTEM_TIME_NEW = 0x11, 0x12, 0x4B564D00, 0x4B564D01
KVMCLOCK_MSRS = (WALL_CLOCK, SYSTEM_TIME, WALL_CLOCK_NEW, SYSTEM_TIME_NEW)
IA32_TSC = 0x10
TSC_STABLE = 1  # PVCLOCK_TSC_STABLE_BIT
ENABLE = 1
TIME_INFO = layout.DATA  # where the guest asks for its struct pvclock_vcpu_time_info
WALL = layout.DATA + 0x1000  # and for struct pvclock_wall_clock (a page of its own)
SECOND = 1_000_000_000
SLACK = 1_000  # ns: rounding between KVM's and the guest's conversions of the same TSC reading


@dataclass(frozen=True)
class TimeInfo:
    """A ``struct pvclock_vcpu_time_info`` as the guest reads it."""

    version: int
    tsc_timestamp: int
    system_time: int
    mul: int
    shift: int
    flags: int

    def nanoseconds(self, tsc: int) -> int:
        """The kvmclock at TSC ``tsc``, as a guest computes it (pvclock's ``scale_delta``)."""
        delta = (tsc - self.tsc_timestamp) & ((1 << 64) - 1)
        delta = (delta << self.shift if self.shift >= 0 else delta >> -self.shift) & ((1 << 64) - 1)
        return self.system_time + (delta * self.mul >> 32)

    @property
    def tsc_hz(self) -> float:
        """The TSC frequency ``mul`` and ``shift`` stand for."""
        return SECOND * 2.0**32 / (self.mul * 2.0**self.shift)


def time_info(vm: VM, address: int = TIME_INFO) -> TimeInfo:
    """The ``pvclock_vcpu_time_info`` at ``address``."""
    version, _, tsc, system_time, mul, shift, flags = struct.unpack("<IIQQIbB2x", read_guest(vm, address, 32))
    return TimeInfo(version, tsc, system_time, mul, shift, flags)


def wall_clock(vm: VM) -> tuple[int, int]:
    """``version`` and the wall-clock time in ns of the ``pvclock_wall_clock`` at WALL."""
    version, seconds, nanoseconds = struct.unpack("<III", read_guest(vm, WALL, 12))
    return version, seconds * SECOND + nanoseconds


def leaf(hv: Hypervisor, function: int) -> CpuidEntry:
    """Leaf ``function`` of the backend's supported CPUID."""
    return next(e for e in hv.supported_cpuid() if e.function == function)


def without_kvm_leaves(hv: Hypervisor) -> list[CpuidEntry]:
    """The supported CPUID minus every hypervisor leaf (QEMU's ``-cpu ...,kvm=off``)."""
    return [e for e in hv.supported_cpuid() if not 0x40000000 <= e.function < 0x40010000]


# --- the CPUID leaves ----------------------------------------------------------------------------------


def test_the_supported_cpuid_has_the_kvm_leaves(hv: Hypervisor) -> None:
    signature = leaf(hv, KVM_CPUID_SIGNATURE)
    assert signature.eax >= KVM_CPUID_FEATURES  # the highest PV leaf
    assert struct.pack("<III", signature.ebx, signature.ecx, signature.edx) == KVM_SIGNATURE
    wanted = sum(1 << bit for bit in (CLOCKSOURCE, NOP_IO_DELAY, CLOCKSOURCE2, CLOCKSOURCE_STABLE_BIT))
    assert leaf(hv, KVM_CPUID_FEATURES).eax & wanted == wanted


@pytest.mark.parametrize("function", [KVM_CPUID_SIGNATURE, KVM_CPUID_FEATURES], ids=["signature", "features"])
def test_a_guest_reads_the_kvm_leaves_with_cpuid(hv: Hypervisor, vm: VM, function: int) -> None:
    vcpu = boot(hv, vm, real_mode.CPUID_OUT, rax=function)
    vcpu.set_cpuid(hv.supported_cpuid())
    entry = leaf(hv, function)
    sent = [
        IoExit(0x50, 4, 1, IoDirection.OUT, r.to_bytes(4, "little"))
        for r in (entry.eax, entry.ebx, entry.ecx, entry.edx)
    ]
    assert run_exits(vcpu) == [*sent, HltExit()]


# --- the vCPU's clock -------------------------------------------------------------------------------------


def test_kvmclock_turns_the_guests_tsc_into_the_vm_clock(hv: Hypervisor, vm: VM) -> None:
    probe = Probe(hv, vm)
    assert probe.write(SYSTEM_TIME_NEW, TIME_INFO | ENABLE) == OK
    info = time_info(vm)
    assert info.version and info.version % 2 == 0  # even: complete
    assert 1e8 < info.tsc_hz < 1e10
    # KVM sets the stable bit while it runs on its master clock (a host clocksource on the TSC and
    # every vCPU's TSC in step); the simulator's TSC follows its VM clock, so with one vCPU it always is
    assert info.flags in (0, TSC_STABLE) and (info.flags == TSC_STABLE or not is_simulator(hv))
    before = vm.get_clock().clock
    tsc = probe.rdtsc()
    after = vm.get_clock().clock
    assert before - SLACK <= info.nanoseconds(tsc) <= after + SLACK
    later = probe.rdtsc()
    assert info.nanoseconds(tsc) < info.nanoseconds(later) <= vm.get_clock().clock + SLACK
    assert time_info(vm) == info  # nothing asked for a refresh


def test_every_write_refreshes_the_structure_and_its_version(hv: Hypervisor, vm: VM) -> None:
    probe = Probe(hv, vm)
    write_guest(vm, TIME_INFO, struct.pack("<I", 7))  # an odd version: the refresh takes the next even number
    assert probe.write(SYSTEM_TIME_NEW, TIME_INFO | ENABLE) == OK
    assert time_info(vm).version == 10  # 7 + 1 made odd (9) while written, then 10
    assert probe.write(SYSTEM_TIME_NEW, TIME_INFO | ENABLE) == OK
    assert time_info(vm).version == 12


def test_set_clock_refreshes_kvmclock_when_the_vcpu_next_runs(hv: Hypervisor, vm: VM) -> None:
    probe = Probe(hv, vm)
    assert probe.write(SYSTEM_TIME_NEW, TIME_INFO | ENABLE) == OK
    first = time_info(vm)
    target = first.system_time + 1000 * SECOND
    vm.set_clock(target)
    assert time_info(vm) == first  # KVM refreshes on the vCPU's next entry, not in the ioctl
    tsc = probe.rdtsc()
    info = time_info(vm)
    assert info.version == first.version + 2
    assert target <= info.system_time <= info.nanoseconds(tsc) <= vm.get_clock().clock + SLACK


def test_a_guests_own_tsc_write_does_not_refresh_kvmclock(hv: Hypervisor, vm: VM) -> None:
    probe = Probe(hv, vm)
    assert probe.write(SYSTEM_TIME_NEW, TIME_INFO | ENABLE) == OK
    first = time_info(vm)
    assert probe.write(IA32_TSC, 1 << 40) == OK  # KVM only moves the TSC offset (adjust_tsc_offset_guest)
    probe.rdtsc()
    assert time_info(vm) == first


def test_disabled_kvmclock_is_left_alone(hv: Hypervisor, vm: VM) -> None:
    probe = Probe(hv, vm)
    assert probe.write(SYSTEM_TIME_NEW, TIME_INFO | ENABLE) == OK
    first = time_info(vm)
    assert probe.write(SYSTEM_TIME_NEW, TIME_INFO) == OK  # bit 0 clear: off, the address kept in the MSR
    assert probe.read(SYSTEM_TIME_NEW) == TIME_INFO
    vm.set_clock(first.system_time + 1000 * SECOND)
    probe.rdtsc()
    assert time_info(vm) == first


def test_the_old_msr_pair(hv: Hypervisor, vm: VM) -> None:
    probe = Probe(hv, vm)
    assert probe.write(SYSTEM_TIME_NEW, TIME_INFO | ENABLE) == OK
    first_flags = time_info(vm).flags
    write_guest(vm, TIME_INFO, bytes(32))
    assert probe.write(SYSTEM_TIME, TIME_INFO | ENABLE) == OK
    info = time_info(vm)
    assert info.version == 2
    assert info.flags == 0  # vCPU 0 on the old MSR: KVM gives up its master clock, so no stable bit
    before = vm.get_clock().clock
    tsc = probe.rdtsc()
    assert before - SLACK <= info.nanoseconds(tsc) <= vm.get_clock().clock + SLACK
    assert probe.write(WALL_CLOCK, WALL) == OK
    assert wall_clock(vm)[0] == 2
    assert probe.write(SYSTEM_TIME_NEW, TIME_INFO | ENABLE) == OK  # back on the new MSR: stable again
    assert time_info(vm).flags == first_flags


def test_the_msrs_read_back_save_and_restore(hv: Hypervisor, vm: VM) -> None:
    assert set(KVMCLOCK_MSRS) <= set(hv.msr_index_list())
    probe = Probe(hv, vm)
    assert probe.vcpu.get_msrs(KVMCLOCK_MSRS) == dict.fromkeys(KVMCLOCK_MSRS, 0)
    assert probe.write(SYSTEM_TIME_NEW, TIME_INFO | ENABLE) == OK
    assert probe.write(WALL_CLOCK_NEW, WALL) == OK
    # each pair is one value: the VM's wall-clock address, the vCPU's system-time MSR
    saved = {
        WALL_CLOCK: WALL,
        SYSTEM_TIME: TIME_INFO | ENABLE,
        WALL_CLOCK_NEW: WALL,
        SYSTEM_TIME_NEW: TIME_INFO | ENABLE,
    }
    assert {i: probe.read(i) for i in KVMCLOCK_MSRS} == saved
    assert probe.vcpu.get_msrs(KVMCLOCK_MSRS) == saved
    assert probe.write(SYSTEM_TIME_NEW, 0) == OK
    write_guest(vm, TIME_INFO, bytes(32))
    probe.vcpu.set_msrs({SYSTEM_TIME_NEW: TIME_INFO | ENABLE})
    assert time_info(vm).version == 0  # restored; the structure is filled when the vCPU runs
    probe.rdtsc()
    assert time_info(vm).version == 2
    write_guest(vm, WALL, bytes(12))
    probe.vcpu.set_msrs({WALL_CLOCK_NEW: WALL})
    assert wall_clock(vm)[0] == 2  # the wall clock is written at once, by the VMM's write too


# --- the wall clock ----------------------------------------------------------------------------------------


def test_the_wall_clock_is_the_time_of_vm_clock_zero(hv: Hypervisor, vm: VM) -> None:
    probe = Probe(hv, vm)
    write_guest(vm, WALL, struct.pack("<I", 7))  # odd: KVM takes it for junk and starts from the next even number
    assert probe.write(WALL_CLOCK_NEW, WALL) == OK
    version, boot_time = wall_clock(vm)
    assert version == 10
    assert abs(boot_time + vm.get_clock().clock - time.time_ns()) < 5 * SECOND  # kvmclock_test's threshold
    vm.set_clock(vm.get_clock().clock + 1000 * SECOND)
    assert probe.write(WALL_CLOCK_NEW, WALL) == OK
    version, later = wall_clock(vm)
    assert version == 12
    assert abs(later - (boot_time - 1000 * SECOND)) < 5 * SECOND


# --- what the MSRs accept -----------------------------------------------------------------------------------


def test_the_msrs_work_without_the_kvm_leaves_in_cpuid(hv: Hypervisor, vm: VM) -> None:
    """Upstream checks the PV feature bits only with KVM_CAP_ENFORCE_PV_FEATURE_CPUID, which hvcore never enables."""
    probe = Probe(hv, vm, cpuid=without_kvm_leaves(hv))
    assert probe.write(SYSTEM_TIME_NEW, TIME_INFO | ENABLE) == OK
    assert time_info(vm).version == 2
    assert probe.write(WALL_CLOCK, WALL) == OK
    assert wall_clock(vm)[0] == 2


def test_a_structure_kvm_cannot_map_is_not_written(hv: Hypervisor, vm: VM) -> None:
    probe = Probe(hv, vm)
    across = TIME_INFO + 0x1000 - 16  # 32 bytes across a page boundary
    assert probe.write(SYSTEM_TIME_NEW, across | ENABLE) == OK
    assert read_guest(vm, across, 32) == bytes(32)
    rom = GuestMemory(layout.ROM_SIZE)
    vm.set_memory_slot(1, layout.ROM, rom, flags=SlotFlags.READONLY)
    assert probe.write(SYSTEM_TIME_NEW, layout.ROM | ENABLE) == OK
    assert probe.write(WALL_CLOCK_NEW, layout.ROM + 0x100) == OK
    assert rom.read(0, 0x200) == bytes(0x200)
    outside = layout.RAM_SIZE + 0x1000  # no slot
    assert probe.write(SYSTEM_TIME_NEW, outside | ENABLE) == OK
    assert probe.read(SYSTEM_TIME_NEW) == outside | ENABLE
    assert probe.write(WALL_CLOCK_NEW, outside) == OK
    assert probe.read(WALL_CLOCK_NEW) == outside


def test_kvmclock_writes_are_logged_dirty(hv: Hypervisor, vm: VM) -> None:
    add_ram(vm, SlotFlags.LOG_DIRTY_PAGES)
    probe = Probe(hv, vm)
    vm.get_dirty_log(0)  # clear what the probe itself wrote
    assert probe.write(SYSTEM_TIME_NEW, TIME_INFO | ENABLE) == OK
    assert probe.write(WALL_CLOCK_NEW, WALL) == OK
    dirty = vm.get_dirty_log(0).pages()
    assert TIME_INFO // 0x1000 in dirty and WALL // 0x1000 in dirty
