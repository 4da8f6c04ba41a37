"""``GuestContext``: what a vCPU's exit rules may use of the VM they run in, handed to them.

A :class:`~hvcore_sim.exits.Tracker` enforces KVM's exit rules for one vCPU; to do that it looks
up memory slots, reads guest-physical and guest-linear memory, records dirty pages, consults the
irqchip and the clock, and asks whether other vCPUs run. It gets exactly that, as this protocol
(which :class:`~hvcore_sim.vm.AddressSpace` implements: one per address space, the vCPU's
current one, so a vCPU in SMM sees SMRAM), instead of reaching through the vCPU into the
VM's private attributes; a rule moved out of the tracker takes the same object.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from hvcore.memory import MemorySlot
    from hvcore_sim.clock import Clock
    from hvcore_sim.engine import CpuView
    from hvcore_sim.irqchip.chip import Irqchip
    from hvcore_sim.memory import DirtyLog
    from hvcore_sim.mmu import PhysicalMemory
    from hvcore_sim.vcpu import SimVCPU

__all__ = ["GuestContext"]


class GuestContext(Protocol):
    """The VM as the exit rules see it."""

    @property
    def clock(self) -> Clock:
        """The VM's clock (virtual or host time)."""
        ...

    @property
    def dirty(self) -> DirtyLog:
        """The dirty log of every logging slot (keyed by ``MemorySlot.kvm_slot``)."""
        ...

    @property
    def irqchip(self) -> Irqchip | None:
        """The in-kernel irqchip, once created."""
        ...

    @property
    def irqchip_ports(self) -> frozenset[int]:
        """Ports the simulator's own devices answer (PIC, PIT): never an exit."""
        ...

    @property
    def physical(self) -> PhysicalMemory:
        """Guest-physical memory over the memory slots of this address space."""
        ...

    def linear_reader(self, view: CpuView) -> Callable[[int, int], bytes]:
        """A reader of guest-linear memory through the paging ``view`` describes."""
        ...

    def memory_slots_unchecked(self) -> tuple[MemorySlot, ...]:
        """The memory slots of this address space (no closed-VM check: the run loop holds the VM open)."""
        ...

    def slot_at(self, address: int) -> MemorySlot | None:
        """The slot holding guest-physical ``address``."""
        ...

    def slot_by_id(self, kvm_slot: int) -> MemorySlot | None:
        """The slot of this address space numbered ``kvm_slot`` (``MemorySlot.kvm_slot``), if any."""
        ...

    @property
    def vcpu_count(self) -> int:
        """How many vCPUs the VM has."""
        ...

    def vcpus(self) -> tuple[SimVCPU, ...]:
        """The VM's vCPUs."""
        ...
