"""``Irqchip``: the PIC pair, the IOAPIC, one LAPIC per vCPU and the PIT of one VM, wired as KVM wires them.

- GSIs reach the PIC and the IOAPIC through a routing table (KVM's default: GSI n is PIC pin n
  for n < 16 and IOAPIC pin n for n < 24) that ``set_gsi_routing`` replaces; MSIs and IOAPIC
  redirection entries travel as :class:`InterruptMessage` to the LAPICs they address.
- The PIC's output goes to vCPU 0 when its LAPIC takes ExtINT (KVM's ``kvm_apic_accept_pic_intr``)
  and wins over the LAPIC, as in ``kvm_cpu_get_interrupt``.
- Guest port and MMIO accesses arrive here from the vCPU's hooks and never become exits.

Everything is guarded by ``lock``; ``changed`` wakes vCPUs that sleep in HLT or wait for SIPI.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from hvcore.errors import NotFound
from hvcore.types import GsiRoute, IoapicState, IrqchipId, IrqchipRoute, PicState, PitState
from hvcore_sim.clock import Clock
from hvcore_sim.irqchip.ioapic import Ioapic
from hvcore_sim.irqchip.lapic import LocalApic
from hvcore_sim.irqchip.message import DeliveryMode, InterruptMessage, Shorthand
from hvcore_sim.irqchip.pic import PicPair
from hvcore_sim.irqchip.pit import Pit
from hvcore_sim.memory import DeviceRegion, MmioRead, MmioWrite

__all__ = ["IOAPIC_BASE", "LAPIC_BASE", "Irqchip", "default_routes"]

USERSPACE_SOURCE = 0
"""KVM's source id for lines the VMM drives (``KVM_USERSPACE_IRQ_SOURCE_ID``)."""
PIT_SOURCE = 2
"""The PIT's source id (KVM allocates it after userspace's and the irqfd resampler's)."""
LAPIC_BASE = 0xFEE00000
IOAPIC_BASE = 0xFEC00000
_IOAPIC_SIZE = 0x100
_PIC_PORTS = frozenset(PicPair.PORTS)
_PIT_PORTS = frozenset(Pit.PORTS)


def default_routes() -> list[GsiRoute]:
    """KVM's default GSI routing: GSI 0-15 to both PICs' pins and the IOAPIC, 16-23 to the IOAPIC."""
    routes: list[GsiRoute] = []
    for gsi in range(24):
        if gsi < 8:
            routes.append(IrqchipRoute(gsi, IrqchipId.PIC_MASTER, gsi))
        elif gsi < 16:
            routes.append(IrqchipRoute(gsi, IrqchipId.PIC_SLAVE, gsi - 8))
        routes.append(IrqchipRoute(gsi, IrqchipId.IOAPIC, gsi))
    return routes


class Irqchip:
    """The in-kernel interrupt controllers of one simulated VM."""

    def __init__(self, clock: Clock, poke: Callable[[int], None]) -> None:
        """``poke(vcpu_id)``: a guest write on that vCPU changed interrupt state; it must look again."""
        self.clock = clock
        self._poke = poke
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.pic = PicPair(
            ack_notify=self._pic_acked, mask_notify=self._pic_masked, accepts_interrupts=self._bsp_takes_pic
        )
        self.ioapic = Ioapic(self.deliver)
        self.lapics: dict[int, LocalApic] = {}
        self.pit: Pit | None = None
        self._routes: dict[int, list[GsiRoute]] = {}
        self.set_gsi_routing(default_routes())
        self.ports = _PIC_PORTS

    # -- configuration --------------------------------------------------------------------

    def add_lapic(self, vcpu_id: int) -> LocalApic:
        """The LAPIC of a new vCPU (APIC id = vCPU id; vCPU 0 is the bootstrap processor)."""
        with self.lock:
            lapic = LocalApic(vcpu_id, self.clock, self.deliver, self.ioapic.eoi)
            lapic.edge_eoi = self._edge_eoi
            lapic.reset(bsp=vcpu_id == 0)
            self.lapics[vcpu_id] = lapic
            return lapic

    def remove_lapic(self, vcpu_id: int) -> None:
        """Forget a closed vCPU's LAPIC."""
        with self.lock:
            self.lapics.pop(vcpu_id, None)

    def create_pit(self) -> None:
        """Add the 8254 on IRQ 0 (``KVM_CREATE_PIT2``); a second one is EEXIST on KVM, checked by the VM."""
        with self.lock:
            self.pit = Pit(self.clock, self._pit_irq)
            self.ports = _PIC_PORTS | _PIT_PORTS

    def set_gsi_routing(self, routes: Sequence[GsiRoute]) -> None:
        """Replace the routing table (already checked by the caller)."""
        table: dict[int, list[GsiRoute]] = {}
        for route in routes:
            table.setdefault(route.gsi, []).append(route)
        with self.lock:
            self._routes = table

    def regions(self, vcpu_id: int, outside_read: MmioRead, outside_write: MmioWrite) -> list[DeviceRegion]:
        """The MMIO ranges vCPU ``vcpu_id``'s engine maps to the devices: its own LAPIC page and the IOAPIC.

        Engines map whole pages, but KVM's IOAPIC answers only 0x100 bytes: the rest of its page is
        ordinary MMIO for the VMM, handed to ``outside_read`` / ``outside_write`` (the vCPU's MMIO
        callbacks, called as for a gap starting at the IOAPIC's base).
        """
        lapic = self.lapics[vcpu_id]

        def lapic_read(uc: Any, offset: int, size: int, _: Any) -> int:
            with self.lock:
                return lapic.read(offset, size)

        def lapic_write(uc: Any, offset: int, size: int, value: int, _: Any) -> None:
            with self.lock:
                lapic.write(offset, size, value)
                self.changed.notify_all()
            self._poke(vcpu_id)

        def ioapic_read(uc: Any, offset: int, size: int, _: Any) -> int:
            if offset >= _IOAPIC_SIZE:
                return outside_read(uc, offset, size, IOAPIC_BASE)
            with self.lock:
                return self.ioapic.read(offset, size)

        def ioapic_write(uc: Any, offset: int, size: int, value: int, _: Any) -> None:
            if offset >= _IOAPIC_SIZE:
                outside_write(uc, offset, size, value, IOAPIC_BASE)
                return
            with self.lock:
                self.ioapic.write(offset, size, value)
                self.changed.notify_all()
            self._poke(vcpu_id)

        return [
            DeviceRegion(LAPIC_BASE, 0x1000, lapic_read, lapic_write),
            DeviceRegion(IOAPIC_BASE, 0x1000, ioapic_read, ioapic_write),
        ]

    # -- guest port IO --------------------------------------------------------------------

    def port_read(self, port: int) -> int:
        """A guest IN from a PIC or PIT port (one byte)."""
        with self.lock:
            if port in _PIC_PORTS:
                return self.pic.read_port(port)
            assert self.pit is not None
            return self.pit.read_port(port)

    def port_write(self, port: int, value: int) -> None:
        """A guest OUT to a PIC or PIT port (one byte)."""
        with self.lock:
            if port in _PIC_PORTS:
                self.pic.write_port(port, value & 0xFF)
            else:
                assert self.pit is not None
                self.pit.write_port(port, value & 0xFF)
            self.changed.notify_all()

    # -- interrupt sources ----------------------------------------------------------------

    def irq_line(self, gsi: int, level: bool, source: int = USERSPACE_SOURCE) -> int:
        """Drive GSI ``gsi`` through its routes; KVM's status: the sum of what each route returned, -1 if all refused.

        A pin's level is the OR of its sources' (userspace, the PIT), as in KVM.
        """
        with self.lock:
            status = -1  # as KVM: a GSI without a route, or whose every route refused
            for route in self._routes.get(gsi, ()):
                if isinstance(route, IrqchipRoute):
                    if route.chip is IrqchipId.IOAPIC:
                        result = self.ioapic.set_irq(route.pin, level, source=source)
                    else:
                        pin = route.pin + (8 if route.chip is IrqchipId.PIC_SLAVE else 0)
                        result = self.pic.set_irq(pin, level, source=source)
                else:
                    result = self.deliver(InterruptMessage.from_msi(route.address, route.data)) if level else 0
                if result >= 0:
                    status = result + max(status, 0)
            self.changed.notify_all()
            return status

    def signal_msi(self, address: int, data: int) -> int:
        """``KVM_SIGNAL_MSI``: the number of LAPICs that took it, 0 if coalesced, -1 if none was addressed."""
        with self.lock:
            status = self.deliver(InterruptMessage.from_msi(address, data))
            self.changed.notify_all()
            return status

    def deliver(self, message: InterruptMessage) -> int:
        """Hand ``message`` to the LAPICs it addresses; how many accepted it.

        As KVM: -1 when there is no LAPIC at all, 0 when none matched or all had it pending already.
        """
        if not self.lapics:
            return -1
        targets = self._targets(message)
        if message.delivery_mode is DeliveryMode.LOWEST_PRIORITY:
            targets = targets[:1]  # KVM picks one; with equal priorities, the lowest id
        accepted = sum(1 for lapic in targets if lapic.accept(message))
        self.changed.notify_all()
        return accepted

    def pv_kick(self, apic_id: int) -> None:
        """KVM_HC_KICK_CPU (``kvm_pv_kick_cpu_op``): a remote-read message to physical APIC id ``apic_id``.

        It sets the target's ``pv_unhalted``, which ends its HLT; an id that matches no APIC kicks nobody.
        """
        with self.lock:
            self.deliver(InterruptMessage(0, DeliveryMode.REMOTE_READ, destination=apic_id & 0xFFFFFFFF))

    def pv_send_ipi(self, bitmaps: tuple[int, int], first: int, message: InterruptMessage, *, cluster: int) -> int:
        """KVM_HC_SEND_IPI's delivery (``kvm_pv_send_ipi``): how many APICs took ``message``.

        Bit ``i`` of ``bitmaps[0]`` names physical APIC id ``first + i``, of ``bitmaps[1]`` id
        ``first + cluster + i`` (ids wrap at 32 bits). Ids are found as in KVM's APIC map:
        hardware-enabled APICs by :attr:`LocalApic.physical_id`; an id nobody has is skipped.
        """
        with self.lock:
            by_id = {lapic.physical_id: lapic for lapic in self.lapics.values() if lapic.hardware_enabled}
            count = 0
            for index, bitmap in enumerate(bitmaps):
                base = (first + index * cluster) & 0xFFFFFFFF
                for bit in range(min(bitmap.bit_length(), 64)):
                    target = by_id.get(base + bit) if bitmap >> bit & 1 else None
                    if target is not None and target.accept(message):
                        count += 1
            self.changed.notify_all()
            return count

    def _targets(self, message: InterruptMessage) -> list[LocalApic]:
        source = message.source
        shorthand = message.shorthand
        lapics = [self.lapics[i] for i in sorted(self.lapics)]
        if shorthand is Shorthand.SELF:
            return [lapic for lapic in lapics if lapic.apic_id == source]
        if shorthand is Shorthand.ALL_INCLUDING_SELF:
            return lapics
        if shorthand is Shorthand.ALL_EXCLUDING_SELF:
            return [lapic for lapic in lapics if lapic.apic_id != source]
        ipi = source is not None
        return [lapic for lapic in lapics if lapic.matches(message.destination, message.logical, ipi=ipi)]

    def _pit_irq(self, irq: int, level: bool) -> object:
        return self.irq_line(irq, level, PIT_SOURCE)

    def _pic_acked(self, irq: int) -> None:
        if irq == 0 and self.pit is not None:
            self.pit.acked()

    def _edge_eoi(self, vector: int) -> None:
        """An edge vector was EOI'd: if an IOAPIC pin that GSI 0 reaches carries it, the PIT's tick was acked."""
        if self.pit is None:
            return
        for route in self._routes.get(0, ()):
            if (
                isinstance(route, IrqchipRoute)
                and route.chip is IrqchipId.IOAPIC
                and self.ioapic.get_state().redirtbl[route.pin] & 0xFF == vector
            ):
                self.pit.acked()
                return

    def _pic_masked(self, irq: int, masked: bool) -> None:
        if irq == 0 and self.pit is not None:
            self.pit.irq_mask_changed(masked)

    def _bsp_takes_pic(self) -> bool:
        bsp = self.lapics.get(0)
        return bsp is not None and bsp.accepts_pic_interrupt()

    # -- the vCPU side --------------------------------------------------------------------

    def has_interrupt(self, vcpu_id: int) -> bool:
        """An external interrupt waits for vCPU ``vcpu_id`` (from the PIC via ExtINT, or its LAPIC)."""
        lapic = self.lapics.get(vcpu_id)
        if lapic is None:
            return False
        if vcpu_id == 0 and lapic.accepts_pic_interrupt() and self.pic.output():
            return True
        return lapic.pending_vector() is not None

    def acknowledge(self, vcpu_id: int) -> int | None:
        """The vCPU takes its interrupt: the vector (PIC first, as KVM), or None if it went away."""
        with self.lock:
            lapic = self.lapics[vcpu_id]
            if vcpu_id == 0 and lapic.accepts_pic_interrupt() and self.pic.output():
                return self.pic.acknowledge()
            if lapic.pending_vector() is None:
                return None
            return lapic.acknowledge()

    def deadline(self) -> int | None:
        """The clock time at which the next timer needs ``advance``."""
        with self.lock:
            times = [lapic.deadline() for lapic in self.lapics.values()]
            if self.pit is not None:
                times.append(self.pit.deadline())
            due = [t for t in times if t is not None]
            return min(due) if due else None

    def advance(self) -> None:
        """Fire every timer that is due now."""
        with self.lock:
            now = self.clock.now()
            if self.pit is not None:
                self.pit.advance(now)
            for lapic in self.lapics.values():
                lapic.advance(now)
            self.changed.notify_all()

    # -- state ----------------------------------------------------------------------------

    def get_state(self, chip: IrqchipId) -> PicState | IoapicState:
        """``KVM_GET_IRQCHIP`` for one controller."""
        with self.lock:
            if chip is IrqchipId.IOAPIC:
                return self.ioapic.get_state()
            return self.pic.get_state(slave=chip is IrqchipId.PIC_SLAVE)

    def set_state(self, chip: IrqchipId, state: PicState | IoapicState) -> None:
        """``KVM_SET_IRQCHIP`` for one controller (``state`` already checked to fit ``chip``)."""
        with self.lock:
            if isinstance(state, IoapicState):  # the caller checked it fits the chip (hvcore.checks)
                self.ioapic.set_state(state)
            else:
                self.pic.set_state(chip is IrqchipId.PIC_SLAVE, state)
            self.changed.notify_all()

    def get_pit(self) -> PitState:
        """``KVM_GET_PIT2``."""
        with self.lock:
            if self.pit is None:
                raise NotFound("there is no PIT; call create_pit() first", operation="get_pit")
            return self.pit.get_state()

    def set_pit(self, state: PitState) -> None:
        """``KVM_SET_PIT2``."""
        with self.lock:
            if self.pit is None:
                raise NotFound("there is no PIT; call create_pit() first", operation="set_pit")
            self.pit.set_state(state)
            self.changed.notify_all()
