"""The master/slave pair of 8259A PICs as KVM's in-kernel irqchip models them (``arch/x86/kvm/i8259.c``).

The slave's output is wired to the master's IRQ 2. The state of each chip lives in exactly the
fields of ``struct kvm_pic_state`` (:class:`hvcore.types.PicState`), so a state taken with
``KVM_GET_IRQCHIP`` on real KVM behaves the same when set here, and the other way round.

Where KVM departs from the datasheet this model follows KVM: the special mask mode is stored but
ignored when priorities are resolved, ICW1 keeps the ISR (clearing only the in-service bits of
pending edge requests, as ``kvm_pic_reset`` does), and a poll read sets bit 7 when it found a
request. Notifications (an EOI'd IRQ, an IMR change) are delivered after the operation that caused
them has finished, as KVM does by dropping its lock or by deferring the work to a thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial

from hvcore.errors import InvalidArgument
from hvcore.types import PicState

__all__ = ["PicPair"]

_MASTER_ELCR_MASK = 0xF8
"""IRQs 0, 1 and 2 are always edge triggered (KVM's ``elcr_mask`` for the master)."""
_SLAVE_ELCR_MASK = 0xDE
"""IRQs 8 and 13 are always edge triggered (KVM's ``elcr_mask`` for the slave)."""
_CASCADE_IRQ = 2
_SPURIOUS_IRQ = 7
_NO_PRIORITY = 8
_SOURCES = 64
"""KVM keeps one bit per IRQ source id in an ``unsigned long`` per pin."""


@dataclass(slots=True)
class _Chip:
    """One 8259A's registers: the fields of ``struct kvm_pic_state``, mutable."""

    last_irr: int = 0
    irr: int = 0
    imr: int = 0
    isr: int = 0
    priority_add: int = 0
    irq_base: int = 0
    read_reg_select: int = 0
    poll: int = 0
    special_mask: int = 0
    init_state: int = 0
    auto_eoi: int = 0
    rotate_on_auto_eoi: int = 0
    special_fully_nested_mode: int = 0
    init4: int = 0
    elcr: int = 0
    elcr_mask: int = 0

    def priority(self, mask: int) -> int:
        """The priority (0 highest) of the highest-priority bit of ``mask`` after rotation, 8 if none."""
        if mask == 0:
            return _NO_PRIORITY
        priority = 0
        while not mask & (1 << ((priority + self.priority_add) & 7)):
            priority += 1
        return priority

    def pin(self, irq: int, level: bool) -> int:
        """Drive input ``irq`` (0-7); return 1 newly latched, 0 already pending (coalesced), -1 masked."""
        mask = 1 << irq
        status = 1
        if self.elcr & mask:
            if level:
                status = int(not self.irr & mask)
                self.irr |= mask
                self.last_irr |= mask
            else:
                self.irr &= ~mask
                self.last_irr &= ~mask
        elif level:
            if not self.last_irr & mask:
                status = int(not self.irr & mask)
                self.irr |= mask
            self.last_irr |= mask
        else:
            self.last_irr &= ~mask
        return -1 if self.imr & mask else status


class PicPair:
    """Master (ports 0x20/0x21) and slave (0xa0/0xa1) 8259A with their ELCRs (0x4d0/0x4d1), as KVM.

    ``ack_notify(irq)`` is called with the IRQ (0-15) whose in-service bit the guest cleared (an
    EOI, an auto-EOI at INTA, a poll read), KVM's ``kvm_notify_acked_irq``. ``mask_notify(irq,
    masked)`` is called for each IRQ whose IMR bit an OCW1 changed, KVM's
    ``kvm_fire_mask_notifiers`` (the PIT resets its reinjection on an unmask). ``accepts_interrupts()``
    says whether some vCPU takes PIC interrupts (KVM's ``kvm_apic_accept_pic_intr``: LAPIC disabled,
    or LVT0 unmasked in ExtINT mode); without it one is assumed to, as KVM's reset BSP does.
    """

    PORTS = (0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1)
    """The IO ports this device answers."""

    def __init__(
        self,
        ack_notify: Callable[[int], None] | None = None,
        *,
        mask_notify: Callable[[int, bool], None] | None = None,
        accepts_interrupts: Callable[[], bool] | None = None,
    ) -> None:
        self._ack_notify = ack_notify
        self._mask_notify = mask_notify
        self._accepts_interrupts = accepts_interrupts
        self._pending: list[Callable[[], None]] = []
        self._chips = (_Chip(), _Chip())
        self._sources = [0] * 16
        self._output = False
        self.reset()

    # -- public interface ---------------------------------------------------------------------

    def reset(self) -> None:
        """Return to the state ``KVM_CREATE_IRQCHIP`` gives: every register 0, KVM's ELCR masks, lines low."""
        self._chips = (_Chip(elcr_mask=_MASTER_ELCR_MASK), _Chip(elcr_mask=_SLAVE_ELCR_MASK))
        self._sources = [0] * 16
        self._output = False

    def set_irq(self, irq: int, level: bool, *, source: int = 0) -> int:
        """Drive IRQ ``irq`` (0-15) to ``level``; return KVM's delivery status (``kvm_pic_set_irq``).

        1: a new request was latched (or the line was lowered), 0: it was already pending
        (coalesced), -1: the IRQ is masked in the IMR. As in KVM the pin's level is the OR of every
        ``source`` driving it (0 is userspace's ``KVM_IRQ_LINE``; KVM gives the PIT its own).
        """
        if not 0 <= irq < 16:
            raise InvalidArgument(f"PIC IRQ must be 0-15, got {irq}")
        if not 0 <= source < _SOURCES:
            raise InvalidArgument(f"IRQ source id must be 0-{_SOURCES - 1}, got {source}")
        if level:
            self._sources[irq] |= 1 << source
        else:
            self._sources[irq] &= ~(1 << source)
        status = self._chips[irq >> 3].pin(irq & 7, bool(self._sources[irq]))
        self._update()
        self._flush()
        return status

    def read_port(self, port: int) -> int:
        """An 8-bit guest read: IRR or ISR (OCW3), IMR, a poll result, or an ELCR."""
        self._check_port(port)
        if port in (0x4D0, 0x4D1):
            return self._chips[port & 1].elcr
        chip = self._chips[port >> 7]
        if chip.poll:
            value = self._poll_read(port >> 7)
            chip.poll = 0
        elif port & 1:
            value = chip.imr
        else:
            value = chip.isr if chip.read_reg_select else chip.irr
        self._flush()
        return value

    def write_port(self, port: int, value: int) -> None:
        """An 8-bit guest write: ICW1-4, OCW1-3, or an ELCR (bits outside KVM's ``elcr_mask`` stay 0)."""
        self._check_port(port)
        if not 0 <= value <= 0xFF:
            raise InvalidArgument(f"PIC port writes are 8-bit, got {value:#x}")
        if port in (0x4D0, 0x4D1):
            chip = self._chips[port & 1]
            chip.elcr = value & chip.elcr_mask
        elif port & 1:
            self._write_data(port >> 7, value)
        else:
            self._write_command(port >> 7, value)
        self._flush()

    def output(self) -> bool:
        """The master's INT pin: an interrupt waits for the CPU's INTA (KVM's ``pic->output``)."""
        return self._output

    def acknowledge(self) -> int:
        """The INTA cycle (``kvm_pic_read_irq``): the vector of the highest-priority request.

        The request moves from IRR to ISR (or is EOI'd at once in auto-EOI mode); IRQ 2 is
        resolved through the slave. With nothing to deliver the spurious IRQ 7 of the master (or,
        through the cascade, of the slave) gives the vector.
        """
        master, slave = self._chips
        self._output = False
        irq = self._highest_request(0)
        if irq < 0:
            vector = master.irq_base + _SPURIOUS_IRQ
        elif irq == _CASCADE_IRQ:
            self._intack(0, irq)
            slave_irq = self._highest_request(1)
            if slave_irq >= 0:
                self._intack(1, slave_irq)
            else:
                slave_irq = _SPURIOUS_IRQ
            vector = slave.irq_base + slave_irq
        else:
            self._intack(0, irq)
            vector = master.irq_base + irq
        self._update()
        self._flush()
        return vector & 0xFF

    def get_state(self, slave: bool) -> PicState:
        """The master's or the slave's registers (``KVM_GET_IRQCHIP``)."""
        chip = self._chips[int(slave)]
        return PicState(**{f.name: getattr(chip, f.name) for f in fields(PicState)})

    def set_state(self, slave: bool, state: PicState) -> None:
        """Load the master's or the slave's registers (``KVM_SET_IRQCHIP``), then re-evaluate the output."""
        values = {f.name: getattr(state, f.name) for f in fields(PicState)}
        for name, value in values.items():
            if not isinstance(value, int) or not 0 <= value <= 0xFF:
                raise InvalidArgument(f"PicState.{name} must be an 8-bit value, got {value!r}")
        chip = self._chips[int(slave)]
        for name, value in values.items():
            setattr(chip, name, value)
        self._update()
        self._flush()

    # -- internals ----------------------------------------------------------------------------

    def _check_port(self, port: int) -> None:
        if port not in self.PORTS:
            raise InvalidArgument(f"port {port:#x} is not a PIC port")

    def _flush(self) -> None:
        """Deliver the notifications the finished operation queued (a notifier may call back in)."""
        while self._pending:
            self._pending.pop(0)()

    def _highest_request(self, index: int) -> int:
        """``pic_get_irq``: the unmasked request that beats everything in service, or -1."""
        chip = self._chips[index]
        priority = chip.priority(chip.irr & ~chip.imr)
        if priority == _NO_PRIORITY:
            return -1
        in_service = chip.isr
        if index == 0 and chip.special_fully_nested_mode:
            # The slave's own priorities decide among its requests, so IRQ 2 in service blocks nothing.
            in_service &= ~(1 << _CASCADE_IRQ)
        if priority < chip.priority(in_service):
            return (priority + chip.priority_add) & 7
        return -1

    def _update(self) -> None:
        """``pic_update_irq``: a slave request pulses the master's IRQ 2, then the master drives INT."""
        if self._highest_request(1) >= 0:
            self._chips[0].pin(_CASCADE_IRQ, True)
            self._chips[0].pin(_CASCADE_IRQ, False)
        self._output = self._highest_request(0) >= 0

    def _clear_isr(self, index: int, irq: int) -> None:
        """End ``irq``'s service on chip ``index`` and queue the ack notification."""
        self._chips[index].isr &= ~(1 << irq)
        if self._ack_notify is not None:
            self._pending.append(partial(self._ack_notify, irq + 8 * index))

    def _intack(self, index: int, irq: int) -> None:
        """``pic_intack``: IRR to ISR (a level request stays in IRR), auto-EOI if programmed."""
        chip = self._chips[index]
        chip.isr |= 1 << irq
        if not chip.elcr & (1 << irq):
            chip.irr &= ~(1 << irq)
        if chip.auto_eoi:
            if chip.rotate_on_auto_eoi:
                chip.priority_add = (irq + 1) & 7
            self._clear_isr(index, irq)

    def _poll_read(self, index: int) -> int:
        """``pic_poll_read``: the request as 0x80 | irq, acknowledged and EOI'd at once; 0x07 if none."""
        chip = self._chips[index]
        irq = self._highest_request(index)
        if irq < 0:
            self._update()
            return _SPURIOUS_IRQ
        if index == 1:
            self._chips[0].isr &= ~(1 << _CASCADE_IRQ)
            self._chips[0].irr &= ~(1 << _CASCADE_IRQ)
        chip.irr &= ~(1 << irq)
        self._clear_isr(index, irq)
        if index == 1 or irq != _CASCADE_IRQ:
            self._update()
        return 0x80 | irq

    def _write_command(self, index: int, value: int) -> None:
        """Port 0x20/0xa0: ICW1 (bit 4), OCW3 (bit 3) or OCW2."""
        chip = self._chips[index]
        if value & 0x10:
            chip.init4 = value & 1
            # Single mode (bit 1) and level-triggered mode (bit 3) are not supported, as in KVM.
            self._initialize(index)
        elif value & 0x08:
            if value & 0x04:
                chip.poll = 1
            if value & 0x02:
                chip.read_reg_select = value & 1
            if value & 0x40:
                chip.special_mask = (value >> 5) & 1
        else:
            self._write_ocw2(index, value)

    def _initialize(self, index: int) -> None:
        """ICW1's reset (``kvm_pic_reset``); ICW2 comes next."""
        chip = self._chips[index]
        edge_requests = chip.irr & ~chip.elcr
        chip.last_irr = 0
        chip.irr &= chip.elcr
        chip.imr = 0
        chip.priority_add = 0
        chip.special_mask = 0
        chip.read_reg_select = 0
        if not chip.init4:
            chip.special_fully_nested_mode = 0
            chip.auto_eoi = 0
        chip.init_state = 1
        if self._accepts_interrupts is not None and not self._accepts_interrupts():
            return
        # KVM ends the service of every IRQ that had an edge request pending (ISR otherwise stays).
        for irq in range(8):
            if edge_requests & (1 << irq):
                self._clear_isr(index, irq)

    def _write_ocw2(self, index: int, value: int) -> None:
        """EOIs, rotations and priority setting."""
        chip = self._chips[index]
        command = value >> 5
        if command in (0, 4):  # rotate in auto-EOI mode: clear / set
            chip.rotate_on_auto_eoi = command >> 2
        elif command in (1, 5):  # non-specific EOI, with rotation for 5
            priority = chip.priority(chip.isr)
            if priority != _NO_PRIORITY:
                irq = (priority + chip.priority_add) & 7
                if command == 5:
                    chip.priority_add = (irq + 1) & 7
                self._clear_isr(index, irq)
                self._update()
        elif command == 3:  # specific EOI
            self._clear_isr(index, value & 7)
            self._update()
        elif command == 6:  # set priority: the given IRQ becomes the lowest
            chip.priority_add = (value + 1) & 7
            self._update()
        elif command == 7:  # rotate on specific EOI
            irq = value & 7
            chip.priority_add = (irq + 1) & 7
            self._clear_isr(index, irq)
            self._update()

    def _write_data(self, index: int, value: int) -> None:
        """Port 0x21/0xa1: OCW1 (the IMR) in normal operation, else the next ICW."""
        chip = self._chips[index]
        if chip.init_state == 0:
            changed = chip.imr ^ value
            chip.imr = value
            if self._mask_notify is not None:
                for irq in range(8):
                    if changed & (1 << irq):
                        self._pending.append(partial(self._mask_notify, irq + 8 * index, bool(value & (1 << irq))))
            self._update()
        elif chip.init_state == 1:  # ICW2: the vector base
            chip.irq_base = value & 0xF8
            chip.init_state = 2
        elif chip.init_state == 2:  # ICW3: the cascade wiring, fixed here
            chip.init_state = 3 if chip.init4 else 0
        elif chip.init_state == 3:  # ICW4
            chip.special_fully_nested_mode = (value >> 4) & 1
            chip.auto_eoi = (value >> 1) & 1
            chip.init_state = 0
