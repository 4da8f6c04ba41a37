"""``KvmVM``: a VM file descriptor with its memory slots, vCPUs, irqchip and clock."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

from hvcore.arguments import check_flag, check_int
from hvcore.caps import Capability
from hvcore.checks import IDENTITY_MAP_TOO_LATE, check_gsi_routes, check_irqchip, check_msi, check_pit_state
from hvcore.errors import AlreadyExists, ClosedError, HvError, InvalidArgument
from hvcore.lifetime import Closeable
from hvcore.memory import MemorySlot, SlotChange, SlotOwner, SlotTable
from hvcore.state_checks import check_state
from hvcore.types import ClockData, GsiRoute, IoapicState, IrqchipId, PicState, PitState
from hvcore_kvm import convert, ioctls, uapi
from hvcore_kvm._sys import check_extension, ioctl, ioctl_ulong
from hvcore_kvm.vcpu import KvmVCPU, ResetState

if TYPE_CHECKING:
    from hvcore_kvm.system import KvmHypervisor

__all__ = ["KvmVM"]

_DEFAULT_MAX_VCPU_ID = 1024


def _release_parked(parked: dict[int, tuple[int, mmap.mmap]]) -> None:
    for fd, run in parked.values():
        run.close()
        os.close(fd)
    parked.clear()


def _release(fd: int, slots: SlotTable) -> None:
    os.close(fd)
    slots.release_all()


class KvmVM(SlotOwner, Closeable):
    """A KVM virtual machine; see :class:`hvcore.VM` for the contract."""

    def __init__(self, hypervisor: KvmHypervisor, fd: int) -> None:
        self._fd = fd
        self._vcpu_mmap_size = hypervisor.vcpu_mmap_size()
        self.smm = bool(self.check_extension(Capability.X86_SMM))
        """Whether this KVM has System Management Mode (``KVM_CAP_X86_SMM``): ``KVM_SMI`` and address space 1."""
        self._slots = SlotTable(
            max(1, self.check_extension(Capability.NR_MEMSLOTS)),
            max(1, self.check_extension(Capability.MULTI_ADDRESS_SPACE)),
        )
        self._max_vcpu_id = self.check_extension(Capability.MAX_VCPU_ID) or _DEFAULT_MAX_VCPU_ID
        self._vcpus: dict[int, KvmVCPU] = {}
        self._vcpus_created = False  # closed vCPUs still count for KVM
        self._parked: dict[int, tuple[int, mmap.mmap]] = {}  # closed vCPUs: their fd and kvm_run, as QEMU parks them
        self._reset_states: dict[int, ResetState] = {}  # each vCPU id's state as KVM created it
        self._msr_indices = hypervisor.msr_index_list()
        self._parked_finalizer = weakref.finalize(self, _release_parked, self._parked)
        self._irqchip = False
        self._finalizer = weakref.finalize(self, _release, fd, self._slots)  # last: the caller owns fd until here

    def _live(self) -> int:
        if self._fd < 0:
            raise ClosedError("the VM is closed; create a new one", operation="vm")
        return self._fd

    def check_extension(self, capability: Capability | int) -> int:
        """``KVM_CHECK_EXTENSION`` on the VM fd (0 for numbers KVM cannot know)."""
        check_int("capability", capability, "check_extension")
        return check_extension(self._live(), int(capability))

    # -- memory ------------------------------------------------------------

    def _commit(self, change: SlotChange) -> None:
        slot = change.target
        region = uapi.KvmUserspaceMemoryRegion()
        region.slot = change.kvm_slot
        if change.new is not None:
            region.flags = int(change.new.flags)
            region.guest_phys_addr = change.new.guest_address
            region.memory_size = change.new.size
            region.userspace_addr = change.new.host_address
        ioctl(
            self._live(),
            ioctls.KVM_SET_USER_MEMORY_REGION,
            region,
            f"slot {change.slot} (address space {change.address_space}) at {slot.guest_address:#x} size {slot.size:#x}",
        )
        self._slots.apply(change)

    def _dirty_bitmap(self, slot: MemorySlot) -> bytes:
        """``KVM_GET_DIRTY_LOG``: the slot's bitmap, cleared by reading."""
        bitmap = (ctypes.c_uint64 * ((slot.size // 4096 + 63) // 64))()
        raw = uapi.KvmDirtyLog()
        raw.slot = slot.kvm_slot
        raw.dirty_bitmap = ctypes.addressof(bitmap)
        ioctl(self._live(), ioctls.KVM_GET_DIRTY_LOG, raw, f"slot {slot.slot} (address space {slot.address_space})")
        return bytes(bitmap)

    # -- vCPUs -------------------------------------------------------------

    def create_vcpu(self, vcpu_id: int) -> KvmVCPU:
        """``KVM_CREATE_VCPU`` and mmap its ``kvm_run``."""
        check_int("vcpu_id", vcpu_id, "create_vcpu")
        fd = self._live()
        if not 0 <= vcpu_id < self._max_vcpu_id:
            raise InvalidArgument(
                f"vCPU id {vcpu_id} is out of range; use 0 to {self._max_vcpu_id - 1}", operation="KVM_CREATE_VCPU"
            )
        if vcpu_id in self._vcpus:
            raise AlreadyExists(f"vCPU {vcpu_id} already exists in this VM", operation="KVM_CREATE_VCPU")
        parked = self._parked.pop(vcpu_id, None)
        if parked is not None:  # KVM cannot create an id twice: the parked vCPU comes back, reset
            vcpu = KvmVCPU(self, vcpu_id, parked[0], self._vcpu_mmap_size, run=parked[1])
            vcpu.restore_reset_state(self._reset_states[vcpu_id])
        else:
            vcpu_fd = ioctl(fd, ioctls.KVM_CREATE_VCPU, vcpu_id, f"vCPU {vcpu_id}")
            self._vcpus_created = True
            vcpu = KvmVCPU(self, vcpu_id, vcpu_fd, self._vcpu_mmap_size)
            self._reset_states[vcpu_id] = vcpu.capture_reset_state(self._msr_indices)
        self._vcpus[vcpu_id] = vcpu
        return vcpu

    def vcpus(self) -> tuple[KvmVCPU, ...]:
        """The open vCPUs, by id."""
        self._live()
        return tuple(self._vcpus[i] for i in sorted(self._vcpus))

    def parked_vcpus(self) -> frozenset[int]:
        """The ids of closed vCPUs: ``create_vcpu`` brings one back in the state KVM created it in."""
        self._live()
        return frozenset(self._parked)

    def _park(self, vcpu_id: int, fd: int, run: mmap.mmap) -> None:
        """Keep a closed vCPU's fd and ``kvm_run`` for the next ``create_vcpu`` of its id (QEMU's parking)."""
        self._vcpus.pop(vcpu_id, None)
        if self._fd < 0:  # the VM is gone: nothing can come back
            _release_parked({vcpu_id: (fd, run)})
        else:
            self._parked[vcpu_id] = (fd, run)

    # -- interrupt controllers, timer, clock ---------------------------------

    def create_irqchip(self) -> None:
        """``KVM_CREATE_IRQCHIP``; it must come before the first vCPU."""
        fd = self._live()
        if self._vcpus_created and not self._irqchip:
            raise InvalidArgument(
                "create the irqchip before any vCPU: KVM refuses KVM_CREATE_IRQCHIP once a vCPU exists",
                operation="KVM_CREATE_IRQCHIP",
            )
        ioctl(fd, ioctls.KVM_CREATE_IRQCHIP, 0)
        self._irqchip = True

    def irq_line(self, irq: int, level: bool) -> int:
        """``KVM_IRQ_LINE_STATUS``: drive pin ``irq``; returns the delivery status."""
        check_int("irq", irq, "irq_line")
        level = check_flag("level", level, "irq_line")
        if not 0 <= irq < 1024:
            raise InvalidArgument(f"IRQ {irq} is out of range", operation="KVM_IRQ_LINE_STATUS")
        raw = uapi.KvmIrqLevel()
        raw.u.irq = irq
        raw.level = int(bool(level))
        ioctl(self._live(), ioctls.KVM_IRQ_LINE_STATUS, raw, f"irq {irq}")
        return int(raw.u.status)

    def get_irqchip(self, chip: IrqchipId) -> PicState | IoapicState:
        """``KVM_GET_IRQCHIP``."""
        raw = uapi.KvmIrqchip()
        raw.chip_id = int(which := check_irqchip(chip, "KVM_GET_IRQCHIP"))
        ioctl(self._live(), ioctls.KVM_GET_IRQCHIP, raw, f"chip {which.name}")
        if which is IrqchipId.IOAPIC:
            return convert.ioapic_from_kvm(raw.chip.ioapic)
        return convert.pic_from_kvm(raw.chip.pic)

    def set_irqchip(self, chip: IrqchipId, state: PicState | IoapicState) -> None:
        """``KVM_SET_IRQCHIP``."""
        which = check_irqchip(chip, "KVM_SET_IRQCHIP", state)
        check_state(state, "set_irqchip")
        raw = uapi.KvmIrqchip()
        raw.chip_id = int(which)
        if isinstance(state, IoapicState):
            convert.ioapic_to_kvm(state, raw.chip.ioapic)
        else:
            convert.pic_to_kvm(state, raw.chip.pic)
        ioctl(self._live(), ioctls.KVM_SET_IRQCHIP, raw, f"chip {which.name}")

    def create_pit(self) -> None:
        """``KVM_CREATE_PIT2``."""
        ioctl(self._live(), ioctls.KVM_CREATE_PIT2, uapi.KvmPitConfig())

    def get_pit(self) -> PitState:
        """``KVM_GET_PIT2``."""
        raw = uapi.KvmPitState2()
        ioctl(self._live(), ioctls.KVM_GET_PIT2, raw)
        return convert.pit_from_kvm(raw)

    def set_pit(self, state: PitState) -> None:
        """``KVM_SET_PIT2``."""
        check_pit_state(state, "KVM_SET_PIT2")
        ioctl(self._live(), ioctls.KVM_SET_PIT2, convert.pit_to_kvm(state))

    def signal_msi(self, address: int, data: int) -> int:
        """``KVM_SIGNAL_MSI``: inject one message-signalled interrupt; returns the delivery status."""
        check_msi(address, data, "KVM_SIGNAL_MSI")
        raw = uapi.KvmMsi()
        raw.address_lo, raw.address_hi, raw.data = address & 0xFFFFFFFF, address >> 32, data
        try:
            return ioctl(self._live(), ioctls.KVM_SIGNAL_MSI, raw, f"address {address:#x} data {data:#x}")
        except HvError as exc:
            if exc.errno == errno.EPERM:  # the kernel's -1 status, "no LAPIC took it", reads as EPERM
                return -1
            raise

    def set_gsi_routing(self, routes: Sequence[GsiRoute]) -> None:
        """``KVM_SET_GSI_ROUTING``: replace the whole GSI routing table."""
        routes = check_gsi_routes(routes, "KVM_SET_GSI_ROUTING")
        ioctl(self._live(), ioctls.KVM_SET_GSI_ROUTING, convert.routing_to_kvm(routes))

    def get_clock(self) -> ClockData:
        """``KVM_GET_CLOCK``."""
        raw = uapi.KvmClockData()
        ioctl(self._live(), ioctls.KVM_GET_CLOCK, raw)
        return convert.clock_from_kvm(raw)

    def set_clock(self, nanoseconds: int) -> None:
        """``KVM_SET_CLOCK``."""
        check_int("nanoseconds", nanoseconds, "set_clock")
        if not 0 <= nanoseconds < 1 << 64:
            raise InvalidArgument(
                f"clock value {nanoseconds} is not an unsigned 64-bit count", operation="KVM_SET_CLOCK"
            )
        raw = uapi.KvmClockData()
        raw.clock = nanoseconds
        ioctl(self._live(), ioctls.KVM_SET_CLOCK, raw)

    def set_tss_address(self, address: int) -> None:
        """``KVM_SET_TSS_ADDR``."""
        check_int("address", address, "set_tss_address")
        if not 0 <= address < 1 << 32:
            raise InvalidArgument(f"TSS address {address:#x} must be below 4 GiB", operation="KVM_SET_TSS_ADDR")
        ioctl_ulong(self._live(), ioctls.KVM_SET_TSS_ADDR, address, f"address {address:#x}")

    def set_identity_map_address(self, address: int) -> None:
        """``KVM_SET_IDENTITY_MAP_ADDR``."""
        check_int("address", address, "set_identity_map_address", 0, 1 << 64)
        fd = self._live()
        if self._vcpus_created:
            raise InvalidArgument(IDENTITY_MAP_TOO_LATE, operation="KVM_SET_IDENTITY_MAP_ADDR")
        value = ctypes.c_uint64(address)
        ioctl_ulong(fd, ioctls.KVM_SET_IDENTITY_MAP_ADDR, ctypes.addressof(value), f"address {address:#x}")

    # -- lifetime ----------------------------------------------------------

    def close(self) -> None:
        """Close every vCPU, then the VM; slots release their GuestMemory."""
        if self._fd < 0:
            return
        for vcpu in list(self._vcpus.values()):
            vcpu.close()
        self._parked_finalizer()
        self._fd = -1
        self._finalizer()

    def __repr__(self) -> str:
        return f"KvmVM(vcpus={len(self._vcpus)}, slots={len(self._slots.slots())}{', closed' if self._fd < 0 else ''})"
