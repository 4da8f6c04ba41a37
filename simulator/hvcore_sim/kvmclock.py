"""KVM's paravirtual clock (kvmclock): its MSRs and the structures it keeps in guest memory.

The rules are upstream KVM's (``Documentation/virt/kvm/x86/msr.rst``; ``arch/x86/kvm/x86.c``:
``kvm_write_wall_clock``, ``kvm_write_system_time``, ``kvm_guest_time_update``):

- MSR_KVM_WALL_CLOCK_NEW (0x4b564d00) and MSR_KVM_WALL_CLOCK (0x11) share one value per VM, a
  guest-physical address. Every write, by the guest or by ``set_msrs``, fills the
  ``struct pvclock_wall_clock`` there at once: the wall-clock time at which the VM clock read 0
  (host real time minus the VM clock), its ``version`` moved on to the next even number.
- MSR_KVM_SYSTEM_TIME_NEW (0x4b564d01) and MSR_KVM_SYSTEM_TIME (0x12) share one value per vCPU:
  bit 0 enables, the rest is the address of the vCPU's ``struct pvclock_vcpu_time_info``. The vCPU
  refreshes it before it next runs guest code after a write of either MSR (every vCPU does, as
  KVM's global clock update), a ``set_clock`` or a ``set_msrs`` of IA32_TSC: the vCPU's TSC and the
  VM clock at one instant, the multiplier and shift that turn TSC ticks into nanoseconds, and
  PVCLOCK_TSC_STABLE_BIT while KVM would use its master clock (every vCPU has the same TSC offset,
  and vCPU 0 did not enable the clock through the old MSR). A guest's own writes of IA32_TSC or
  IA32_TSC_ADJUST do not refresh it, as on KVM.
- Each refresh makes ``version`` the next even number above the guest's copy (KVM marks it odd while
  it writes; the simulator writes while no vCPU runs, so only the even value is ever seen).
- A structure is written only where KVM's own guest writes land: ``pvclock_vcpu_time_info`` only
  within one page, both only in a writable slot. The MSR keeps whatever address was written.
- The vCPU's CPUID does not gate the MSRs: KVM checks the feature bits of leaf 0x40000001 only once
  ``KVM_CAP_ENFORCE_PV_FEATURE_CPUID`` is enabled, and hvcore never enables it.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import Final, Protocol

__all__ = [
    "MSRS",
    "MSR_KVM_SYSTEM_TIME",
    "MSR_KVM_SYSTEM_TIME_NEW",
    "MSR_KVM_WALL_CLOCK",
    "MSR_KVM_WALL_CLOCK_NEW",
    "NO_MEMORY",
    "PVCLOCK_TSC_STABLE_BIT",
    "GuestPhysical",
    "KvmClock",
    "PvClock",
    "time_scale",
]

MSR_KVM_WALL_CLOCK: Final = 0x11
MSR_KVM_SYSTEM_TIME: Final = 0x12
MSR_KVM_WALL_CLOCK_NEW: Final = 0x4B564D00
MSR_KVM_SYSTEM_TIME_NEW: Final = 0x4B564D01
MSRS: Final = (MSR_KVM_SYSTEM_TIME, MSR_KVM_WALL_CLOCK, MSR_KVM_SYSTEM_TIME_NEW, MSR_KVM_WALL_CLOCK_NEW)
"""The kvmclock MSRs, in the order of KVM's MSR index list."""

PVCLOCK_TSC_STABLE_BIT: Final = 1 << 0
_PVCLOCK_GUEST_STOPPED: Final = 1 << 1  # set by KVM_KVMCLOCK_CTRL; a refresh keeps the guest's copy of it
_TIME_INFO: Final = struct.Struct("<IIQQIbB2x")  # version, pad, tsc_timestamp, system_time, mul, shift, flags
_WALL_CLOCK: Final = struct.Struct("<III")  # version, sec, nsec
_PAGE: Final = 0x1000
_MASK32: Final = (1 << 32) - 1
_MASK64: Final = (1 << 64) - 1
_NS_PER_SECOND: Final = 1_000_000_000


def time_scale(scaled_hz: int, base_hz: int) -> tuple[int, int]:
    """KVM's ``kvm_get_time_scale``: ``(shift, mul)`` with ``ticks * 2**shift * mul / 2**32`` in ``scaled_hz`` units.

    ``ticks`` count at ``base_hz``; a negative shift divides. ``mul`` is a 32-bit fraction, so the
    base is first brought within a factor of two above the scaled rate.
    """
    shift, base, scaled = 0, base_hz, scaled_hz
    while base > 2 * scaled or base >> 32:
        base >>= 1
        shift -= 1
    while base <= scaled or scaled >> 32:
        if scaled >> 32 or base & 0x80000000:
            scaled >>= 1
        else:
            base <<= 1
        shift += 1
    return shift, (scaled << 32) // base


class GuestPhysical(Protocol):
    """Guest-physical memory as KVM's own accesses see it (``kvm_read_guest`` / ``kvm_write_guest``)."""

    def load(self, address: int, length: int) -> bytes | None:
        """``length`` bytes at ``address``, or None where no slot backs them all."""
        ...

    def store(self, address: int, data: bytes) -> bool:
        """Write ``data`` at ``address``; False (nothing written) where no writable slot backs it all."""
        ...


class _NoMemory:
    """Guest memory for an MSR emulator that belongs to no VM: nothing is there."""

    def load(self, address: int, length: int) -> bytes | None:
        """Nothing to read."""
        return None

    def store(self, address: int, data: bytes) -> bool:
        """Nowhere to write."""
        return False


NO_MEMORY: Final[GuestPhysical] = _NoMemory()
"""The memory of a kvmclock that belongs to no VM."""


class KvmClock:
    """The VM's kvmclock: the wall-clock MSR, the vCPUs' clocks and when they are refreshed."""

    def __init__(self, memory: GuestPhysical, tsc_hz: int) -> None:
        self._memory = memory
        self._scale = time_scale(_NS_PER_SECOND, tsc_hz)  # (shift, mul): TSC ticks to nanoseconds
        self._vcpus: dict[int, PvClock] = {}
        self.wall_clock = 0
        """MSR_KVM_WALL_CLOCK(_NEW): the address last written (KVM's ``kvm->arch.wall_clock``)."""
        self.boot_vcpu_old_msr = False
        """vCPU 0 last enabled its clock through the old MSR (KVM then gives up its master clock)."""

    def add_vcpu(self, vcpu_id: int, tsc_offset: Callable[[], int]) -> PvClock:
        """The clock of a new vCPU whose TSC offset ``tsc_offset`` reads."""
        clock = self._vcpus[vcpu_id] = PvClock(self, vcpu_id, tsc_offset)
        return clock

    def remove_vcpu(self, vcpu_id: int) -> None:
        """Forget a closed vCPU."""
        self._vcpus.pop(vcpu_id, None)

    def request_update(self) -> None:
        """Every vCPU refreshes its clock before it next runs guest code (KVM_REQ_CLOCK_UPDATE on all)."""
        for clock in self._vcpus.values():
            clock.pending = True

    @property
    def stable(self) -> bool:
        """KVM would use its master clock: one TSC offset on every vCPU, and vCPU 0 on the new MSR."""
        offsets = {clock.tsc_offset() for clock in self._vcpus.values()}
        return len(offsets) <= 1 and not self.boot_vcpu_old_msr

    def write_wall_clock(self, address: int, vm_clock: int) -> None:
        """Keep ``address`` and fill the ``pvclock_wall_clock`` there, the VM clock reading ``vm_clock`` ns now."""
        self.wall_clock = address
        if not address:
            return
        raw = self._memory.load(address, 4)
        if raw is None:
            return
        version = int.from_bytes(raw, "little")
        version = (version + (version & 1) + 2) & _MASK32  # odd while written (KVM's protocol), even after
        boot = (time.time_ns() - vm_clock) & _MASK64  # KVM's u64 arithmetic
        seconds, nanoseconds = divmod(boot, _NS_PER_SECOND)
        self._memory.store(address, _WALL_CLOCK.pack(version, seconds & _MASK32, nanoseconds))

    def write_time_info(self, address: int, tsc: int, vm_clock: int) -> None:
        """Fill the ``pvclock_vcpu_time_info`` at ``address``: TSC ``tsc`` at VM clock ``vm_clock`` ns."""
        if address % _PAGE > _PAGE - _TIME_INFO.size:  # KVM's pfn cache covers one page only
            return
        old = self._memory.load(address, _TIME_INFO.size)
        if old is None:
            return
        version = _TIME_INFO.unpack(old)[0]
        flags = (PVCLOCK_TSC_STABLE_BIT if self.stable else 0) | old[29] & _PVCLOCK_GUEST_STOPPED
        version = (((version + 1) | 1) + 1) & _MASK32
        shift, mul = self._scale
        self._memory.store(address, _TIME_INFO.pack(version, 0, tsc, vm_clock & _MASK64, mul, shift, flags))


class PvClock:
    """One vCPU's kvmclock: MSR_KVM_SYSTEM_TIME(_NEW) and the ``pvclock_vcpu_time_info`` it keeps up to date."""

    def __init__(self, vm: KvmClock, vcpu_id: int, tsc_offset: Callable[[], int]) -> None:
        self.vm = vm
        """The VM's kvmclock (the wall clock, refresh requests for every vCPU)."""
        self._vcpu_id = vcpu_id
        self.tsc_offset = tsc_offset
        """This vCPU's TSC offset (TSC ticks added to the VM clock's)."""
        self.system_time = 0
        """MSR_KVM_SYSTEM_TIME(_NEW): bit 0 enables, the rest is the structure's address."""
        self.pending = False
        """The structure must be refreshed before the vCPU next runs guest code."""

    def read(self, index: int) -> int:
        """The value of kvmclock MSR ``index``."""
        if index in (MSR_KVM_WALL_CLOCK, MSR_KVM_WALL_CLOCK_NEW):
            return self.vm.wall_clock
        return self.system_time

    def write(self, index: int, value: int, vm_clock: int, *, host: bool) -> None:
        """Take a write of kvmclock MSR ``index``; the VM clock reads ``vm_clock`` ns now."""
        if index in (MSR_KVM_WALL_CLOCK, MSR_KVM_WALL_CLOCK_NEW):
            self.vm.write_wall_clock(value, vm_clock)
            return
        if self._vcpu_id == 0 and not host:
            self.vm.boot_vcpu_old_msr = index == MSR_KVM_SYSTEM_TIME
        self.system_time = value
        self.vm.request_update()

    def refresh(self, tsc: int, vm_clock: int) -> None:
        """Fill the structure, if enabled: this vCPU's TSC reads ``tsc`` at VM clock ``vm_clock`` ns."""
        self.pending = False
        if self.system_time & 1:
            self.vm.write_time_info(self.system_time & ~1, tsc, vm_clock)
