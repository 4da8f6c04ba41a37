"""``SimVM``: memory slots, vCPUs, the execution lock, the clock and kvmclock."""

from __future__ import annotations

import errno as _errno
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Final

from hvcore.arguments import check_flag, check_int
from hvcore.caps import Capability
from hvcore.checks import IDENTITY_MAP_TOO_LATE, MAX_GSI, check_gsi_routes, check_irqchip, check_msi, check_pit_state
from hvcore.errors import (
    AlreadyExists,
    ClosedError,
    HvError,
    HypervisorFault,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    StateError,
)
from hvcore.lifetime import Closeable
from hvcore.memory import PAGE_SIZE, SMM_ADDRESS_SPACE, MemorySlot, SlotChange, SlotOwner, SlotTable
from hvcore.state_checks import check_state
from hvcore.types import (
    ClockData,
    GsiRoute,
    IoapicState,
    IrqchipId,
    PicState,
    PitState,
    SlotFlags,
    Sregs,
    Translation,
)
from hvcore_sim import delivery, mmu
from hvcore_sim.clock import Clock, HostClock
from hvcore_sim.engine import CpuView, Engine
from hvcore_sim.execlock import ExecLock
from hvcore_sim.irqchip.chip import Irqchip
from hvcore_sim.kvmclock import KvmClock
from hvcore_sim.memory import DirtyLog as DirtyPages
from hvcore_sim.memory import HostWrites, map_layout, store_in_place
from hvcore_sim.msrs import TSC_HZ
from hvcore_sim.vcpu import ParkedVcpu, SimVCPU

if TYPE_CHECKING:
    from hvcore_sim.exits import Tracker
    from hvcore_sim.system import SimHypervisor

__all__ = ["AddressSpace", "SimVM"]

MAX_SLOTS = 32764
MAX_VCPUS: Final = 1024
"""KVM_CAP_MAX_VCPUS: the most vCPUs a VM ever creates (closed ones count), KVM's KVM_MAX_VCPUS on x86."""
MAX_VCPU_ID: Final = 4 * MAX_VCPUS
"""KVM_CAP_MAX_VCPU_ID: vCPU ids are below this (x86's KVM_MAX_VCPU_IDS, four ids per possible vCPU)."""
_NOT_FAULTS = frozenset({1, 3, 4, 8, 18})  # traps and aborts: KVM does not set RF for them
RFLAGS_RF = 1 << 16


class _SlotMemory:
    """Guest-physical reads and writes through one address space's slots (for page walks and event delivery).

    Writes are the simulated processor's own stores (interrupt frames, accessed and dirty bits):
    they go straight into the slot's buffer, as the engine's stores do, and are not host writes,
    which make every engine drop the code it translated (a whole-cache flush after each event).
    Code translated from the bytes a frame overwrites stays: only a guest that then executes what
    an event pushed could tell.
    """

    def __init__(self, space: AddressSpace) -> None:
        self._space = space

    def read(self, address: int, length: int) -> bytes:
        slot = self._space.slot_at(address)
        if slot is None or address + length > slot.end:
            raise NotFound(f"no memory slot backs guest-physical {address:#x}+{length}")
        return slot.memory.read(slot.offset + address - slot.guest_address, length)

    def write(self, address: int, data: bytes) -> None:
        slot = self._space.slot_at(address)
        if slot is None or address + len(data) > slot.end:
            raise NotFound(f"no memory slot backs guest-physical {address:#x}+{len(data)}")
        store_in_place(slot.memory.address + slot.offset + address - slot.guest_address, bytes(data))

    def load(self, address: int, length: int) -> bytes | None:
        """As :meth:`read`, None where no slot backs it all (KVM's ``kvm_read_guest`` failing)."""
        slot = self._space.slot_at(address)
        if slot is None or address + length > slot.end:
            return None
        return slot.memory.read(slot.offset + address - slot.guest_address, length)

    def store(self, address: int, data: bytes) -> bool:
        """Write as KVM's ``kvm_write_guest``: only into a writable slot (else False), logging the pages dirty."""
        slot = self._space.slot_at(address)
        if slot is None or slot.readonly or address + len(data) > slot.end:
            return False
        offset = address - slot.guest_address
        slot.memory.write(slot.offset + offset, data)
        if slot.flags & SlotFlags.LOG_DIRTY_PAGES:
            for page in range(offset // PAGE_SIZE, (offset + len(data) - 1) // PAGE_SIZE + 1):
                self._space.dirty.record(slot.kvm_slot, page)
        return True


class AddressSpace:
    """One of a VM's address spaces as a vCPU's exit rules see it (:class:`hvcore_sim.context.GuestContext`).

    Space 0 is what a vCPU normally sees, space 1 what it sees in SMM: their own slots and
    guest-physical memory, and the VM's clock, dirty log, irqchip and vCPUs.
    """

    def __init__(self, vm: SimVM, number: int) -> None:
        self._vm = vm
        self.number = number
        """0 or 1 (SMM)."""
        self.physical = _SlotMemory(self)
        """Guest-physical memory over this space's slots."""

    @property
    def clock(self) -> Clock:
        """The VM's clock."""
        return self._vm.clock

    @property
    def dirty(self) -> DirtyPages:
        """The VM's dirty log (keyed by ``MemorySlot.kvm_slot``)."""
        return self._vm.dirty

    @property
    def irqchip(self) -> Irqchip | None:
        """The VM's irqchip."""
        return self._vm.irqchip

    @property
    def irqchip_ports(self) -> frozenset[int]:
        """Ports the VM's own devices answer."""
        return self._vm.irqchip_ports

    @property
    def vcpu_count(self) -> int:
        """How many vCPUs the VM has."""
        return self._vm.vcpu_count

    def vcpus(self) -> tuple[SimVCPU, ...]:
        """The VM's vCPUs."""
        return self._vm.vcpus()

    def linear_reader(self, view: CpuView) -> Callable[[int, int], bytes]:
        """A ``read(linear, length)`` through the paging state of ``view``, over this space."""
        return lambda linear, length: mmu.read_linear(view.paging, self.physical, linear, length)

    def memory_slots_unchecked(self) -> tuple[MemorySlot, ...]:
        """This space's slots."""
        return self._vm._slots.slots(self.number)

    def slot_at(self, address: int) -> MemorySlot | None:
        """This space's slot mapping guest-physical ``address``."""
        return self._vm._slots.find(address, self.number)

    def slot_by_id(self, kvm_slot: int) -> MemorySlot | None:
        """The slot of this space with ``MemorySlot.kvm_slot`` ``kvm_slot``, if there is one."""
        return next((s for s in self.memory_slots_unchecked() if s.kvm_slot == kvm_slot), None)


INVALID_GPA: Final = (1 << 64) - 1
"""KVM's physical address for a linear address that does not map."""


class SimVM(SlotOwner, Closeable):
    """A simulated VM; see :class:`hvcore.VM` for the contract."""

    def __init__(self, hypervisor: SimHypervisor, clock: Clock | None = None) -> None:
        self._hypervisor = hypervisor
        self.clock: Clock = clock if clock is not None else HostClock()
        self.irqchip: Irqchip | None = None
        self.irqchip_ports: frozenset[int] = frozenset()
        self.sleeping: set[int] = set()
        self.context_layout = hypervisor.context_layout
        self._slots = SlotTable(MAX_SLOTS, address_spaces=2)
        self.layout_generation = 0
        self.dirty = DirtyPages()
        self.host_writes = HostWrites()
        """Host writes to the memory behind the slots, which make the vCPUs drop stale translated code."""
        self.exec_lock = ExecLock()
        self._vcpus: dict[int, SimVCPU] = {}
        self._used_vcpu_ids: set[int] = set()
        self._parked: dict[int, ParkedVcpu] = {}  # closed vCPUs, as KVM keeps the vCPUs (QEMU parks them)
        self._closed = False
        self.dead: str | None = None
        """Why KVM would have marked this VM dead (``kvm_vm_dead``), or None."""
        self.spaces = (AddressSpace(self, 0), AddressSpace(self, SMM_ADDRESS_SPACE))
        """The normal address space and SMM's."""
        self.physical = self.spaces[0].physical
        self.kvmclock = KvmClock(self.physical, TSC_HZ)
        """The paravirtual clock's VM-wide state (:mod:`hvcore_sim.kvmclock`)."""

    def _live(self) -> None:
        if self._closed:
            raise ClosedError("the VM is closed; create a new one", operation="vm")
        self.check_alive()

    def check_alive(self) -> None:
        """``HypervisorFault`` (EIO) once the VM is dead, as KVM answers every ioctl of a dead VM."""
        if self.dead is not None:
            raise HypervisorFault(
                f"the VM is dead ({self.dead}); close it and create a new one", errno=_errno.EIO, operation="vm"
            )

    def kill(self, reason: str) -> None:
        """Mark the VM dead, as KVM's ``kvm_vm_dead`` (a state it cannot go on from): every call but close fails."""
        self.dead = reason

    def check_extension(self, capability: Capability | int) -> int:
        """The simulator's answer to ``KVM_CHECK_EXTENSION``."""
        check_int("capability", capability, "check_extension")
        self._live()
        return self._hypervisor.check_extension(capability)

    # -- memory --------------------------------------------------------------------

    def _commit(self, change: SlotChange) -> None:
        with self.exec_lock:
            if change.old is not None and (change.new is None or change.old.flags != change.new.flags):
                self.dirty.forget(change.kvm_slot)
            new, old = change.new, change.old
            logging = new is not None and bool(new.flags & SlotFlags.LOG_DIRTY_PAGES)
            if logging and (old is None or new is None or old.guest_address != new.guest_address):
                self.dirty.unmapped(change.kvm_slot)  # a new or moved slot: KVM maps nothing of it yet
            self._slots.apply(change)
            self.host_writes.slot_changed(change)
            self.layout_generation += 1

    def _dirty_bitmap(self, slot: MemorySlot) -> bytes:
        """The pages the write-protect hooks recorded; reading clears them (and re-protects them)."""
        with self.exec_lock:
            return self.dirty.take(slot.kvm_slot, slot.size // 4096)

    def map_into(self, engine: Engine, tracker: Tracker) -> None:
        """Map the layout of the tracker's address space into a new engine."""
        chip = self.irqchip
        devices = chip.regions(tracker.vcpu.id, tracker.on_mmio_read, tracker.on_mmio_write) if chip is not None else ()
        slots = tracker.guest.memory_slots_unchecked()
        gated = engine.blocks is not None
        map_layout(engine.uc, slots, tracker.on_mmio_read, tracker.on_mmio_write, self.dirty, devices, gated=gated)

    def translate(self, sregs: Sregs, linear: int, memory: mmu.PhysicalMemory) -> Translation:
        """``KVM_TRANSLATE``: a read walk of the guest's page tables (setting accessed bits, as KVM's walker does).

        As upstream (kvm_arch_vcpu_ioctl_translate), ``writeable`` is always 1 and ``usermode`` 0:
        KVM reports only whether the address maps, and where (``INVALID_GPA`` when it does not).
        """
        try:
            physical = mmu.translate(sregs, linear, memory, write=False, user=False)
        except (mmu.PageFault, mmu.NonCanonical, HvError):
            return Translation(linear, INVALID_GPA, False, True, False)
        return Translation(linear, physical, True, True, False)

    def deliver(
        self,
        vcpu: SimVCPU,
        engine: Engine,
        vector: int,
        kind: str,
        error_code: int | None,
        instruction_length: int = 0,
        cr2: int | None = None,
        *,
        injected: bool = False,
    ) -> bool:
        """Deliver an exception or interrupt through the guest's IVT/IDT; False on a triple fault.

        RIP must already be the return address: the faulting instruction for a fault, the next
        one for ``int n`` (whose length lets a fault during delivery point back at it). A #PF
        raised by the simulator itself gives ``cr2``, its faulting address. ``injected``: an
        exception the VMM injected (:attr:`hvcore_sim.events.Event.injected`).
        """
        regs = engine.get_regs()
        sregs = vcpu.get_sregs()
        tracker = vcpu.tracker
        tracker.watch_resume_flag = True
        if kind == "exception" and vector not in _NOT_FAULTS and not injected:
            # KVM sets RF in the guest's RFLAGS before it injects a fault, so it is in any #DF frame too
            regs = replace(regs, rflags=regs.rflags | RFLAGS_RF)
            engine.set_reg(engine.RFLAGS, regs.rflags)
        event = delivery.Event(
            vector=vector,
            kind=delivery.EventKind(kind),
            error_code=error_code,
            instruction_length=instruction_length,
            cr2=cr2,
            injected=injected,
        )
        try:
            regs, sregs = delivery.deliver_with_escalation(regs, sregs, tracker.guest.physical, event)
        except delivery.TripleFault:
            return False
        engine.set_sregs(sregs, flush=False)  # segments only: translations are looked up by CS base and hflags
        engine.set_regs(regs)
        engine.interrupt_shadow = False
        return True

    # -- vCPUs -------------------------------------------------------------------------

    def create_vcpu(self, vcpu_id: int) -> SimVCPU:
        """A vCPU in KVM's reset state."""
        check_int("vcpu_id", vcpu_id, "create_vcpu")
        self._live()
        if not 0 <= vcpu_id < MAX_VCPU_ID:
            raise InvalidArgument(
                f"vCPU id {vcpu_id} is out of range; use 0 to {MAX_VCPU_ID - 1}", operation="create_vcpu"
            )
        if vcpu_id in self._vcpus:
            raise AlreadyExists(f"vCPU {vcpu_id} already exists in this VM", operation="create_vcpu")
        # kvm_vm_ioctl_create_vcpu: created_vcpus >= max_vcpus (a parked vCPU was created already)
        if vcpu_id not in self._parked and len(self._used_vcpu_ids) >= MAX_VCPUS:
            raise InvalidArgument(
                f"this VM has created {MAX_VCPUS} vCPUs (closed ones count), the most KVM allows",
                operation="create_vcpu",
            )
        with self.exec_lock:
            try:
                vcpu = SimVCPU(self, vcpu_id, self._parked.get(vcpu_id))
            except ResourceExhausted as exc:  # no room for its engine (hvcore_sim.room): nothing of it stays
                self._forget_vcpu(vcpu_id)
                raise ResourceExhausted(
                    f"vCPU {vcpu_id} (this VM has {len(self._vcpus)} vCPUs): {exc.message}",
                    errno=exc.errno,
                    operation="create_vcpu",
                ) from None
        self._vcpus[vcpu_id] = vcpu
        self._used_vcpu_ids.add(vcpu_id)
        self._parked.pop(vcpu_id, None)  # a parked id comes back in reset state, with its CPUID, as on KVM
        return vcpu

    def vcpus(self) -> tuple[SimVCPU, ...]:
        """The open vCPUs, by id."""
        self._live()
        return tuple(self._vcpus[i] for i in sorted(self._vcpus))

    @property
    def vcpu_count(self) -> int:
        """How many vCPUs the VM has now."""
        return len(self._vcpus)

    def parked_vcpus(self) -> frozenset[int]:
        """The ids of closed vCPUs: ``create_vcpu`` brings one back in the state KVM created it in."""
        self._live()
        return frozenset(self._parked)

    def _forget_vcpu(self, vcpu_id: int, parked: ParkedVcpu | None = None) -> None:
        if self._vcpus.pop(vcpu_id, None) is not None and parked is not None:
            self._parked[vcpu_id] = parked
        self.kvmclock.remove_vcpu(vcpu_id)
        if self.irqchip is not None:
            self.irqchip.remove_lapic(vcpu_id)

    def wait_idle(self, vcpu: SimVCPU, timeout: float = 5.0) -> None:
        """Wait until ``vcpu`` is out of ``run()`` (it has been kicked)."""
        deadline = time.monotonic() + timeout
        while vcpu.running_elsewhere:
            if time.monotonic() > deadline:
                raise StateError(f"vCPU {vcpu.id} did not leave run() after a kick")
            time.sleep(0.001)

    # -- interrupt controllers, clock ----------------------------------------------------------

    def create_irqchip(self) -> None:
        """PIC pair, IOAPIC and a LAPIC per vCPU (``KVM_CREATE_IRQCHIP``); before any vCPU, once."""
        self._live()
        if self.irqchip is not None:
            raise AlreadyExists("the VM already has an irqchip", operation="create_irqchip")
        if self._used_vcpu_ids:
            raise InvalidArgument(
                "create the irqchip before any vCPU: KVM refuses KVM_CREATE_IRQCHIP once a vCPU exists",
                operation="create_irqchip",
            )
        with self.exec_lock:
            self.irqchip = Irqchip(self.clock, self._poke)
            self.irqchip_ports = self.irqchip.ports
            self.layout_generation += 1

    def _poke(self, vcpu_id: int) -> None:
        vcpu = self._vcpus.get(vcpu_id)
        if vcpu is not None:
            vcpu.tracker.reevaluate()

    def _chip(self, operation: str, errno: int = _errno.ENXIO) -> Irqchip:
        self._live()
        if self.irqchip is None:
            raise NotFound(
                f"{operation}: there is no irqchip; call create_irqchip() first", errno=errno, operation=operation
            )
        return self.irqchip

    def irq_line(self, irq: int, level: bool) -> int:
        """Drive GSI ``irq`` through the routing table; the delivery status (``KVM_IRQ_LINE_STATUS``)."""
        check_int("irq", irq, "irq_line")
        level = check_flag("level", level, "irq_line")
        chip = self._chip("irq_line")
        if not 0 <= irq < MAX_GSI:
            raise InvalidArgument(f"IRQ {irq} is out of range; GSIs are below {MAX_GSI}", operation="irq_line")
        return chip.irq_line(irq, bool(level))

    def get_irqchip(self, chip: IrqchipId) -> PicState | IoapicState:
        """State of the master PIC, the slave PIC or the IOAPIC (``KVM_GET_IRQCHIP``)."""
        which = check_irqchip(chip, "get_irqchip")
        return self._chip("get_irqchip").get_state(which)

    def set_irqchip(self, chip: IrqchipId, state: PicState | IoapicState) -> None:
        """Load the state of one controller (``KVM_SET_IRQCHIP``)."""
        which = check_irqchip(chip, "set_irqchip", state)
        check_state(state, "set_irqchip")
        self._chip("set_irqchip").set_state(which, state)

    def create_pit(self) -> None:
        """The 8254 PIT on IRQ 0 (``KVM_CREATE_PIT2``); needs the irqchip (ENOENT), once (EEXIST)."""
        chip = self._chip("create_pit", _errno.ENOENT)
        if chip.pit is not None:
            raise AlreadyExists("the VM already has a PIT", operation="create_pit")
        chip.create_pit()
        self.irqchip_ports = chip.ports
        for vcpu in self._vcpus.values():
            vcpu.tracker.local_ports = chip.ports

    def get_pit(self) -> PitState:
        """State of the PIT (``KVM_GET_PIT2``)."""
        return self._chip("get_pit").get_pit()

    def set_pit(self, state: PitState) -> None:
        """Load the PIT's state (``KVM_SET_PIT2``)."""
        check_pit_state(state, "set_pit")
        self._chip("set_pit").set_pit(state)

    def signal_msi(self, address: int, data: int) -> int:
        """Deliver a message-signalled interrupt to the LAPICs (``KVM_SIGNAL_MSI``)."""
        check_msi(address, data, "signal_msi")
        self._live()
        if self.irqchip is None:  # KVM: EINVAL, not ENXIO, for this one
            raise InvalidArgument(
                "signal_msi: there is no irqchip; call create_irqchip() first", operation="signal_msi"
            )
        return self.irqchip.signal_msi(address, data)

    def set_gsi_routing(self, routes: Sequence[GsiRoute]) -> None:
        """Replace the GSI routing table (``KVM_SET_GSI_ROUTING``)."""
        checked = check_gsi_routes(routes, "set_gsi_routing")
        self._chip("set_gsi_routing").set_gsi_routing(checked)

    def all_asleep(self) -> bool:
        """Every vCPU that is in ``run()`` sleeps (so a virtual clock may skip ahead)."""
        return all(vcpu.id in self.sleeping for vcpu in self._vcpus.values() if vcpu.running)

    def get_clock(self) -> ClockData:
        """The VM clock in nanoseconds (host time, or virtual time counted in instructions)."""
        self._live()
        return ClockData(self.clock.now())

    def set_clock(self, nanoseconds: int) -> None:
        """Set the VM clock; it goes on from there, and every vCPU refreshes its kvmclock (as KVM)."""
        check_int("nanoseconds", nanoseconds, "set_clock")
        self._live()
        if not 0 <= nanoseconds < 1 << 64:
            raise InvalidArgument(f"clock value {nanoseconds} is not an unsigned 64-bit count", operation="set_clock")
        self.clock.set(nanoseconds)
        self.kvmclock.request_update()

    def set_tss_address(self, address: int) -> None:
        """Accepted and ignored: the simulator needs no real-mode TSS (KVM's VMX does)."""
        check_int("address", address, "set_tss_address")
        self._live()
        if not 0 <= address < 1 << 32:
            raise InvalidArgument(f"TSS address {address:#x} must be below 4 GiB", operation="set_tss_address")

    def set_identity_map_address(self, address: int) -> None:
        """Accepted and ignored (the simulator needs no identity-map page); refused once a vCPU was created, as KVM."""
        check_int("address", address, "set_identity_map_address", 0, 1 << 64)
        self._live()
        if self._used_vcpu_ids:
            raise InvalidArgument(IDENTITY_MAP_TOO_LATE, operation="set_identity_map_address")

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
            self.host_writes.release_all()

    def __repr__(self) -> str:
        return f"SimVM(vcpus={len(self._vcpus)}{', closed' if self._closed else ''})"
