"""The IOAPIC at 0xfec00000 as KVM's in-kernel model (``arch/x86/kvm/ioapic.c``) behaves.

An 82093AA-style IOAPIC, version 0x11, with 24 pins: IOREGSEL at offset 0x00 selects an indirect
register (0 ID, 1 version, 2 arbitration, 0x10-0x3f the redirection table as low/high dwords) that
IOWIN at 0x10 reads and writes. Version 0x11 has no EOI register: as KVM on x86, offset 0x40 reads
0 and ignores writes, and level-triggered interrupts end with the LAPICs' EOI broadcast
(:meth:`Ioapic.eoi`).

KVM's rules reproduced here:

- ``irr`` holds the line levels (bit per pin, OR of every source driving it). An edge-triggered pin
  delivers when its ``irr`` bit goes 0 -> 1; asserting an already-high edge pin is "coalesced"
  (status 0). A level-triggered pin delivers while its line is high and remote IRR is clear, and
  any delivery attempt (even one no LAPIC took) sets remote IRR until a LAPIC EOIs the vector.
- The status :meth:`Ioapic.set_irq` returns is ``kvm_ioapic_set_irq``'s: 1 for a line lowered,
  0 coalesced, -1 for masked (or level with remote IRR set, or no LAPIC matched), otherwise the
  number of LAPICs that took the interrupt (what the ``deliver`` callback returns).
- Writing a redirection entry keeps delivery status and remote IRR (clearing remote IRR when the
  entry becomes edge-triggered), stores every other bit as written (reserved bits included), and
  re-delivers a level entry whose line is high once it is unmasked with remote IRR clear.
- Polarity (bit 13) is stored only: lines are logical levels, as on KVM.
- ``get_state`` hides edge ``irr`` bits that were already delivered; ``set_state`` re-asserts every
  ``irr`` pin from the state (so pending ones deliver), as ``kvm_set_ioapic``.

Left out: the RTC (GSI 8) coalescing that needs per-vCPU EOI tracking, the 10 ms delay KVM adds
after 10,000 back-to-back level re-deliveries, irqfd resamplers and ack notifiers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from hvcore.errors import InvalidArgument
from hvcore.types import IoapicState
from hvcore_sim.irqchip.message import DeliveryMode, InterruptMessage

__all__ = ["BASE", "PINS", "SIZE", "VERSION", "Ioapic"]

BASE: Final = 0xFEC00000
"""Default guest-physical address of the IOAPIC's registers."""
SIZE: Final = 0x100
"""Size of the IOAPIC's MMIO window."""
PINS: Final = 24
"""Interrupt input pins (redirection table entries)."""
VERSION: Final = 0x11
"""The 82093AA version KVM reports (no EOI register)."""

IOREGSEL: Final = 0x00
IOWIN: Final = 0x10
EOI_REGISTER: Final = 0x40

REG_ID: Final = 0x00
REG_VERSION: Final = 0x01
REG_ARB: Final = 0x02
REG_REDIRECTION: Final = 0x10

VECTOR_MASK: Final = 0xFF
DELIVERY_STATUS: Final = 1 << 12
REMOTE_IRR: Final = 1 << 14
LEVEL_TRIGGERED: Final = 1 << 15
MASKED: Final = 1 << 16

_SOURCES: Final = 64
_LOW32: Final = 0xFFFFFFFF
_ALL64: Final = (1 << 64) - 1
_ACCESS_SIZES: Final = (1, 2, 4, 8)


def _message(entry: int) -> InterruptMessage | None:
    """The message a redirection entry sends, or None for the reserved delivery mode 3."""
    mode = (entry >> 8) & 7
    if mode == 3:
        return None
    return InterruptMessage(
        vector=entry & VECTOR_MASK,
        delivery_mode=DeliveryMode(mode),
        destination=entry >> 56,
        logical=bool(entry >> 11 & 1),
        level_triggered=bool(entry & LEVEL_TRIGGERED),
        assert_level=True,
    )


class Ioapic:
    """One 24-pin IOAPIC; ``deliver`` hands a message to the APIC bus.

    ``deliver`` returns what KVM's ``kvm_irq_delivery_to_apic`` does: -1 when no LAPIC matched the
    destination, otherwise how many matching LAPICs accepted the interrupt (0: none did).
    """

    def __init__(self, deliver: Callable[[InterruptMessage], int]) -> None:
        self._deliver = deliver
        self._base_address: int
        self._ioregsel: int
        self._id: int
        self._irr: int
        self._irr_delivered: int  # edge pins whose current high level was already delivered
        self._redirtbl: list[int]
        self._line_sources: list[int]  # per pin, one bit per source driving the line high
        self.reset()

    @property
    def base_address(self) -> int:
        """The guest-physical base the last :meth:`set_state` gave (0xfec00000 unless changed)."""
        return self._base_address

    def reset(self) -> None:
        """Power-on state: every entry masked (exactly ``1 << 16``), registers and lines cleared."""
        self._base_address = BASE
        self._ioregsel = 0
        self._id = 0
        self._irr = 0
        self._irr_delivered = 0
        self._redirtbl = [MASKED] * PINS
        self._line_sources = [0] * PINS

    # -- interrupt lines ------------------------------------------------------------------------

    def set_irq(self, pin: int, level: bool, *, source: int = 0) -> int:
        """Drive ``pin`` to ``level`` from ``source`` (0: the VMM); returns KVM's delivery status.

        The line is the OR of every source's level, as KVM's per-source line states; the PIT
        drives its pin with a source of its own.
        """
        if not 0 <= pin < PINS:
            raise InvalidArgument(f"IOAPIC pin {pin} out of range 0..{PINS - 1}")
        if not 0 <= source < _SOURCES:
            raise InvalidArgument(f"IRQ source id {source} out of range 0..{_SOURCES - 1}")
        if level:
            self._line_sources[pin] |= 1 << source
        else:
            self._line_sources[pin] &= ~(1 << source)
        return self._set_line(pin, self._line_sources[pin] != 0)

    def _set_line(self, pin: int, high: bool) -> int:
        bit = 1 << pin
        if not high:
            self._irr &= ~bit
            return 1
        old_irr = self._irr
        self._irr |= bit
        if not self._redirtbl[pin] & LEVEL_TRIGGERED:
            self._irr_delivered &= ~bit
            if old_irr == self._irr:
                return 0  # the line was already high: no new edge
        return self._service(pin)

    def _service(self, pin: int) -> int:
        entry = self._redirtbl[pin]
        level = bool(entry & LEVEL_TRIGGERED)
        if entry & MASKED or (level and entry & REMOTE_IRR):
            return -1
        if not level:
            self._irr_delivered |= 1 << pin
        message = _message(entry)
        # KVM's LAPICs take nothing in the reserved mode 3; "0 accepted" stands in for its count.
        status = 0 if message is None else self._deliver(message)
        if status and level:  # -1 (no destination) sets remote IRR too, as on KVM
            self._redirtbl[pin] = entry | REMOTE_IRR
        return status

    def eoi(self, vector: int) -> None:
        """A LAPIC EOI'd level-triggered ``vector``: clear remote IRR of its entries, re-deliver raised lines."""
        if not 0 <= vector <= VECTOR_MASK:
            raise InvalidArgument(f"vector {vector} out of range 0..255")
        for pin, entry in enumerate(self._redirtbl):
            if entry & VECTOR_MASK != vector:
                continue
            self._redirtbl[pin] = entry & ~REMOTE_IRR
            if not entry & MASKED and self._irr >> pin & 1:
                self._service(pin)

    # -- registers ------------------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        """A guest read of ``size`` bytes at ``offset`` in the 256-byte window."""
        _check_access(offset, size)
        if offset == IOREGSEL:
            value = self._ioregsel
        elif offset == IOWIN:
            value = self._read_indirect()
        else:
            value = 0  # includes 0x40: version 0x11 has no EOI register
        return value & ((1 << (8 * size)) - 1) if size < 8 else value

    def write(self, offset: int, size: int, value: int) -> None:
        """A guest write of ``size`` bytes at ``offset``; an 8-byte write stores its low dword.

        A size other than 1, 2, 4 or 8 (a string IN's last part) is dropped, as KVM's
        ``ioapic_mmio_write`` does ("Unsupported size").
        """
        _check_access(offset, size, odd=True)
        if size not in _ACCESS_SIZES:
            return
        data = value & ((1 << (8 * min(size, 4))) - 1)
        if offset == IOREGSEL:
            self._ioregsel = data & 0xFF
        elif offset == IOWIN:
            self._write_indirect(data)

    def _redirection_index(self) -> int | None:
        index = (self._ioregsel - REG_REDIRECTION) >> 1
        return index if 0 <= index < PINS else None

    def _read_indirect(self) -> int:
        select = self._ioregsel
        if select == REG_VERSION:
            return ((PINS - 1) << 16) | VERSION
        if select in (REG_ID, REG_ARB):
            return (self._id & 0xF) << 24
        index = self._redirection_index()
        entry = _ALL64 if index is None else self._redirtbl[index]  # nonexistent registers read all ones
        return (entry >> 32) & _LOW32 if select & 1 else entry & _LOW32

    def _write_indirect(self, data: int) -> None:
        select = self._ioregsel
        if select == REG_ID:
            self._id = (data >> 24) & 0xF
            return
        if select in (REG_VERSION, REG_ARB):
            return
        index = self._redirection_index()
        if index is None:
            return
        old = self._redirtbl[index]
        entry = (old & _LOW32) | (data << 32) if select & 1 else (old & ~_LOW32) | data
        read_only = DELIVERY_STATUS | REMOTE_IRR
        entry = (entry & ~read_only) | (old & read_only)
        if not entry & LEVEL_TRIGGERED:
            entry &= ~REMOTE_IRR  # guests (Linux, Xen) end a level interrupt by switching to edge
        self._redirtbl[index] = entry
        if entry & LEVEL_TRIGGERED and self._irr >> index & 1 and not entry & (MASKED | REMOTE_IRR):
            self._service(index)

    # -- state ----------------------------------------------------------------------------------

    def get_state(self) -> IoapicState:
        """``KVM_GET_IRQCHIP``: edge pins already delivered do not show in ``irr``."""
        return IoapicState(
            base_address=self._base_address,
            ioregsel=self._ioregsel,
            id=self._id,
            irr=self._irr & ~self._irr_delivered,
            redirtbl=tuple(self._redirtbl),
        )

    def set_state(self, state: IoapicState) -> None:
        """``KVM_SET_IRQCHIP``: load the registers, then raise each ``irr`` pin again (delivering it)."""
        if len(state.redirtbl) != PINS:
            raise InvalidArgument(f"IOAPIC state needs {PINS} redirection entries, got {len(state.redirtbl)}")
        if any(not 0 <= entry <= _ALL64 for entry in state.redirtbl):
            raise InvalidArgument("IOAPIC redirection entries are 64-bit values")
        self._base_address = state.base_address & _ALL64
        self._ioregsel = state.ioregsel & _LOW32
        self._id = state.id & _LOW32
        self._redirtbl = list(state.redirtbl)
        self._irr = 0
        self._irr_delivered = 0
        for pin in range(PINS):
            if state.irr >> pin & 1:
                self._set_line(pin, True)


def _check_access(offset: int, size: int, *, odd: bool = False) -> None:
    """``odd``: any size of an MMIO access (1 to 8 bytes) is valid, not only 1, 2, 4 or 8."""
    if not 0 <= offset < SIZE:
        raise InvalidArgument(f"IOAPIC offset {offset:#x} outside its {SIZE:#x}-byte window")
    if not (1 <= size <= 8 if odd else size in _ACCESS_SIZES):
        raise InvalidArgument(f"IOAPIC access size {size} is not 1, 2, 4 or 8")
