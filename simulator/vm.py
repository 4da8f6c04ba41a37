"""``SimVM``: memory slots, vCPUs, the execution lock, the clock."""

from __future__ import annotations

import errno as _errno
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from hvcore.caps import Capability
from hvcore.errors import AlreadyExists, ClosedError, HvError, InvalidArgument, NotFound, StateError, Unsupported
from hvcore.lifetime import Closeable
from hvcore.memory import MemorySlot, SlotChange, SlotOwner, SlotTable
from hvcore.types import (
    ClockData,
    IoapicState,
    IrqchipId,
    PicState,
    Sregs,
    Translation,
)
from simulator import delivery, mmu
from simulator.engine import CpuView, Engine
from simulator.execlock import ExecLock
from simulator.memory import DirtyLog as DirtyPages
from simulator.memory import map_layout
from simulator.vcpu import SimVCPU

if TYPE_CHECKING:
    from simulator.exits import Tracker
    from simulator.system import SimHypervisor

__all__ = ["SimVM"]

MAX_SLOTS = 32764
MAX_VCPU_ID = 1024
_NOT_FAULTS = frozenset({1, 3, 4, 8, 18})  # traps and aborts: KVM does not set RF for them
RFLAGS_RF = 1 << 16
_NO_IRQCHIP = "the simulator has no irqchip yet (PIC, IOAPIC, LAPIC, PIT arrive with issue 5)"


class _SlotMemory:
    """Guest-physical reads and writes through the VM's slots (for page walks and event delivery)."""

    def __init__(self, vm: SimVM) -> None:
        self._vm = vm

    def read(self, address: int, length: int) -> bytes:
        slot = self._vm.slot_at(address)
        if slot is None or address + length > slot.end:
            raise NotFound(f"no memory slot backs guest-physical {address:#x}+{length}")
        return slot.memory.read(slot.offset + address - slot.guest_address, length)

    def write(self, address: int, data: bytes) -> None:
        slot = self._vm.slot_at(address)
        if slot is None or address + len(data) > slot.end:
            raise NotFound(f"no memory slot backs guest-physical {address:#x}+{len(data)}")
        slot.memory.write(slot.offset + address - slot.guest_address, data)


class SimVM(SlotOwner, Closeable):
    """A simulated VM; see :class:`hvcore.VM` for the contract."""

    def __init__(self, hypervisor: SimHypervisor) -> None:
        self._hypervisor = hypervisor
        self.context_layout = hypervisor.context_layout
        self._slots = SlotTable(MAX_SLOTS)
        self.layout_generation = 0
        self.dirty = DirtyPages()
        self.exec_lock = ExecLock()
        self._vcpus: dict[int, SimVCPU] = {}
        self._used_vcpu_ids: set[int] = set()
        self._closed = False
        self._clock_offset = -time.monotonic_ns()
        self.physical = _SlotMemory(self)

    def _live(self) -> None:
        if self._closed:
            raise ClosedError("the VM is closed; create a new one", operation="vm")

    def check_extension(self, capability: Capability | int) -> int:
        """The simulator's answer to ``KVM_CHECK_EXTENSION``."""
        self._live()
        return self._hypervisor.check_extension(capability)

    # -- memory --------------------------------------------------------------------

    def _commit(self, change: SlotChange) -> None:
        with self.exec_lock:
            if change.old is not None and (change.new is None or change.old.flags != change.new.flags):
                self.dirty.forget(change.slot)
            self._slots.apply(change)
            self.layout_generation += 1

    def memory_slots_unchecked(self) -> tuple[MemorySlot, ...]:
        """The slots, without the closed check (the run loop's view)."""
        return self._slots.slots()

    def slot_at(self, address: int) -> MemorySlot | None:
        """The slot mapping guest-physical ``address``."""
        return self._slots.find(address)

    def slot_by_id(self, slot: int) -> MemorySlot | None:
        """The slot with id ``slot``, if it exists."""
        return next((s for s in self._slots.slots() if s.slot == slot), None)

    def _dirty_bitmap(self, slot: MemorySlot) -> bytes:
        """The pages the write-protect hooks recorded; reading clears them (and re-protects them)."""
        with self.exec_lock:
            return self.dirty.take(slot.slot, slot.size // 4096)

    def map_into(self, engine: Engine, tracker: Tracker) -> None:
        """Map the current layout into a new engine."""
        map_layout(engine.uc, self._slots.slots(), tracker.on_mmio_read, tracker.on_mmio_write, self.dirty)

    def linear_reader(self, view: CpuView) -> Callable[[int, int], bytes]:
        """A ``read(linear, length)`` through the paging state of ``view``."""
        return lambda linear, length: mmu.read_linear(view.paging, self.physical, linear, length)

    def translate(self, sregs: Sregs, linear: int) -> Translation:
        """``KVM_TRANSLATE`` through the guest's page tables."""
        try:
            physical = mmu.translate(sregs, linear, self.physical, write=False, user=False)
        except (mmu.PageFault, mmu.NonCanonical, HvError):
            return Translation(linear, 0, False, False, False)
        writeable = True
        try:
            mmu.translate(sregs, linear, self.physical, write=True, user=False)
        except mmu.PageFault:
            writeable = False
        user = True
        try:
            mmu.translate(sregs, linear, self.physical, write=False, user=True)
        except mmu.PageFault:
            user = False
        return Translation(linear, physical, True, writeable, user)

    def deliver(
        self,
        vcpu: SimVCPU,
        engine: Engine,
        vector: int,
        kind: str,
        error_code: int | None,
        instruction_length: int = 0,
    ) -> bool:
        """Deliver an exception or interrupt through the guest's IVT/IDT; False on a triple fault.

        RIP must already be the return address: the faulting instruction for a fault, the next
        one for ``int n`` (whose length lets a fault during delivery point back at it).
        """
        regs = engine.get_regs()
        sregs = vcpu.get_sregs()
        vcpu.tracker.watch_resume_flag = True
        if kind == "exception" and vector not in _NOT_FAULTS:
            # KVM sets RF in the guest's RFLAGS before it injects a fault, so it is in any #DF frame too
            regs = replace(regs, rflags=regs.rflags | RFLAGS_RF)
            engine.set_reg(engine.RFLAGS, regs.rflags)
        event = delivery.Event(
            vector=vector,
            kind=delivery.EventKind(kind),
            error_code=error_code,
            instruction_length=instruction_length,
        )
        try:
            regs, sregs = delivery.deliver_with_escalation(regs, sregs, self.physical, event)
        except delivery.TripleFault:
            return False
        engine.set_sregs(sregs)
        engine.set_regs(regs)
        engine.interrupt_shadow = False
        return True

    # -- vCPUs -------------------------------------------------------------------------

    def create_vcpu(self, vcpu_id: int) -> SimVCPU:
        """A vCPU in KVM's reset state."""
        self._live()
        if not 0 <= vcpu_id < MAX_VCPU_ID:
            raise InvalidArgument(
                f"vCPU id {vcpu_id} is out of range; use 0 to {MAX_VCPU_ID - 1}", operation="create_vcpu"
            )
        if vcpu_id in self._used_vcpu_ids:  # as on KVM, a closed vCPU's id stays taken
            raise AlreadyExists(f"vCPU {vcpu_id} already exists in this VM", operation="create_vcpu")
        with self.exec_lock:
            vcpu = SimVCPU(self, vcpu_id)
        self._vcpus[vcpu_id] = vcpu
        self._used_vcpu_ids.add(vcpu_id)
        return vcpu

    def vcpus(self) -> tuple[SimVCPU, ...]:
        """The open vCPUs, by id."""
        self._live()
        return tuple(self._vcpus[i] for i in sorted(self._vcpus))

    def _forget_vcpu(self, vcpu_id: int) -> None:
        self._vcpus.pop(vcpu_id, None)

    def wait_idle(self, vcpu: SimVCPU, timeout: float = 5.0) -> None:
        """Wait until ``vcpu`` is out of ``run()`` (it has been kicked)."""
        deadline = time.monotonic() + timeout
        while vcpu.running and vcpu._thread != threading.get_ident():
            if time.monotonic() > deadline:
                raise StateError(f"vCPU {vcpu.id} did not leave run() after a kick")
            time.sleep(0.001)

    # -- interrupt controllers (issue 5), clock ---------------------------------------------

    def create_irqchip(self) -> None:
        """Not yet: the simulator's PIC/IOAPIC/LAPIC are issue 5 (``Capability.IRQCHIP`` is absent)."""
        self._live()
        raise Unsupported(_NO_IRQCHIP, operation="create_irqchip")

    def irq_line(self, irq: int, level: bool) -> int:
        """There is no irqchip to drive: ENXIO, as KVM without one."""
        self._live()
        raise NotFound(f"irq_line: there is no irqchip; {_NO_IRQCHIP}", errno=_errno.ENXIO, operation="irq_line")

    def get_irqchip(self, chip: IrqchipId) -> PicState | IoapicState:
        """There is no irqchip: ENXIO, as KVM without one."""
        self._live()
        raise NotFound(f"get_irqchip: there is no irqchip; {_NO_IRQCHIP}", errno=_errno.ENXIO, operation="get_irqchip")

    def set_irqchip(self, chip: IrqchipId, state: PicState | IoapicState) -> None:
        """There is no irqchip: ENXIO, as KVM without one."""
        self._live()
        raise NotFound(f"set_irqchip: there is no irqchip; {_NO_IRQCHIP}", errno=_errno.ENXIO, operation="set_irqchip")

    def create_pit(self) -> None:
        """The PIT needs an irqchip: ENOENT, as KVM without one."""
        self._live()
        raise NotFound(f"create_pit needs an irqchip; {_NO_IRQCHIP}", errno=_errno.ENOENT, operation="create_pit")

    def get_clock(self) -> ClockData:
        """The VM clock in nanoseconds: host monotonic time plus the offset ``set_clock`` chose."""
        self._live()
        return ClockData(time.monotonic_ns() + self._clock_offset)

    def set_clock(self, nanoseconds: int) -> None:
        """Set the VM clock; it keeps advancing with host time."""
        self._live()
        if not 0 <= nanoseconds < 1 << 64:
            raise InvalidArgument(f"clock value {nanoseconds} is not an unsigned 64-bit count", operation="set_clock")
        self._clock_offset = nanoseconds - time.monotonic_ns()

    def set_tss_address(self, address: int) -> None:
        """Accepted and ignored: the simulator needs no real-mode TSS (KVM's VMX does)."""
        self._live()
        if not 0 <= address < 1 << 32:
            raise InvalidArgument(f"TSS address {address:#x} must be below 4 GiB", operation="set_tss_address")

    def set_identity_map_address(self, address: int) -> None:
        """Accepted and ignored: the simulator needs no identity-map page."""
        self._live()

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the vCPUs and release the slots."""
        if self._closed:
            return
        for vcpu in list(self._vcpus.values()):
            vcpu.close()
        self._closed = True
        with self.exec_lock:
            self._slots.release_all()

    def __repr__(self) -> str:
        return f"SimVM(vcpus={len(self._vcpus)}{', closed' if self._closed else ''})"
