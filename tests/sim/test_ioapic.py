"""The simulator's IOAPIC model against KVM's ``ioapic.c`` rules, driven through its registers as a guest does."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hvcore import InvalidArgument
from hvcore.types import IoapicState
from hvcore_sim.irqchip.ioapic import Ioapic
from hvcore_sim.irqchip.message import DeliveryMode, InterruptMessage

IOREGSEL, IOWIN = 0x00, 0x10
MASKED, LEVEL, REMOTE_IRR, DELIVERY_STATUS, POLARITY_LOW, LOGICAL = 1 << 16, 1 << 15, 1 << 14, 1 << 12, 1 << 13, 1 << 11


class Bus:
    """Records every message; answers with ``accepted`` (KVM: -1 no destination, else LAPICs that took it)."""

    def __init__(self) -> None:
        self.messages: list[InterruptMessage] = []
        self.accepted = 1

    def __call__(self, message: InterruptMessage) -> int:
        self.messages.append(message)
        return self.accepted


@pytest.fixture
def bus() -> Bus:
    return Bus()


@pytest.fixture
def ioapic(bus: Bus) -> Ioapic:
    return Ioapic(bus)


def read_reg(ioapic: Ioapic, index: int) -> int:
    ioapic.write(IOREGSEL, 4, index)
    return ioapic.read(IOWIN, 4)


def write_reg(ioapic: Ioapic, index: int, value: int) -> None:
    ioapic.write(IOREGSEL, 4, index)
    ioapic.write(IOWIN, 4, value)


def route(ioapic: Ioapic, pin: int, low: int, destination: int = 0) -> None:
    """Program a redirection entry the way Linux does: high dword first, then low."""
    write_reg(ioapic, 0x11 + 2 * pin, destination << 24)
    write_reg(ioapic, 0x10 + 2 * pin, low)


def entry(ioapic: Ioapic, pin: int) -> int:
    return read_reg(ioapic, 0x10 + 2 * pin) | read_reg(ioapic, 0x11 + 2 * pin) << 32


# -- indirect registers -------------------------------------------------------------------------


def test_version_id_and_arbitration_registers(ioapic: Ioapic) -> None:
    assert read_reg(ioapic, 1) == 0x170011  # 24 entries, version 0x11
    write_reg(ioapic, 1, 0)
    assert read_reg(ioapic, 1) == 0x170011
    write_reg(ioapic, 0, 0xFF000000)
    assert read_reg(ioapic, 0) == 0x0F000000  # a 4-bit id
    assert read_reg(ioapic, 2) == 0x0F000000  # arbitration reads the id
    write_reg(ioapic, 2, 0)
    assert read_reg(ioapic, 0) == 0x0F000000
    assert ioapic.get_state().id == 0x0F
    ioapic.set_state(IoapicState(id=0x3A))
    assert read_reg(ioapic, 0) == 0x0A000000


def test_reset_masks_every_entry(ioapic: Ioapic) -> None:
    for pin in range(24):
        assert entry(ioapic, pin) == MASKED
    route(ioapic, 3, 0x33, destination=1)
    ioapic.set_irq(7, True)
    ioapic.reset()
    assert ioapic.get_state() == IoapicState()
    assert entry(ioapic, 3) == MASKED


def test_ioregsel_is_eight_bits_and_missing_registers_read_all_ones(ioapic: Ioapic) -> None:
    ioapic.write(IOREGSEL, 4, 0x1FF)
    assert ioapic.read(IOREGSEL, 4) == 0xFF
    assert read_reg(ioapic, 0x40) == 0xFFFFFFFF  # past entry 23
    assert read_reg(ioapic, 0x03) == 0xFFFFFFFF  # between ARB and the table


def test_odd_sized_writes_are_dropped(ioapic: Ioapic) -> None:
    """KVM's ``ioapic_mmio_write`` ignores a size other than 1, 2, 4 or 8 (a string IN's last part)."""
    ioapic.write(IOREGSEL, 1, 0x12)
    ioapic.write(IOREGSEL, 3, 0x345678)
    assert ioapic.read(IOREGSEL, 4) == 0x12


def test_partial_reads_and_other_offsets(ioapic: Ioapic) -> None:
    ioapic.write(IOREGSEL, 1, 1)
    assert ioapic.read(IOWIN, 1) == 0x11
    assert ioapic.read(IOWIN, 2) == 0x0011
    assert ioapic.read(IOWIN, 8) == 0x170011
    assert ioapic.read(0x20, 4) == 0
    assert ioapic.read(0x04, 4) == 0


def test_high_dword_keeps_reserved_bits(ioapic: Ioapic) -> None:
    write_reg(ioapic, 0x11, 0xFF00ABCD)
    assert entry(ioapic, 0) == 0xFF00ABCD << 32 | MASKED


# -- delivery -----------------------------------------------------------------------------------


def test_pin_routed_to_vector_0x40_on_apic_0(ioapic: Ioapic, bus: Bus) -> None:
    route(ioapic, 4, 0x40)
    assert bus.messages == []
    assert ioapic.set_irq(4, True) == 1
    assert bus.messages == [InterruptMessage(vector=0x40, delivery_mode=DeliveryMode.FIXED, destination=0)]


def test_message_fields_come_from_the_entry(ioapic: Ioapic, bus: Bus) -> None:
    route(ioapic, 9, LEVEL | LOGICAL | (1 << 8) | 0x59, destination=0x0C)
    bus.accepted = 2
    assert ioapic.set_irq(9, True) == 2
    assert bus.messages == [
        InterruptMessage(
            vector=0x59, delivery_mode=DeliveryMode.LOWEST_PRIORITY, destination=0x0C, logical=True,
            level_triggered=True, assert_level=True,
        )
    ]  # fmt: skip


def test_edge_delivers_on_rising_edges_only(ioapic: Ioapic, bus: Bus) -> None:
    route(ioapic, 4, 0x40)
    assert ioapic.set_irq(4, True) == 1
    assert ioapic.set_irq(4, True) == 0  # still high: coalesced
    assert len(bus.messages) == 1
    assert ioapic.set_irq(4, False) == 1
    assert ioapic.set_irq(4, False) == 1
    assert ioapic.set_irq(4, True) == 1
    assert len(bus.messages) == 2
    assert not entry(ioapic, 4) & REMOTE_IRR


def test_masked_pins_deliver_nothing(ioapic: Ioapic, bus: Bus) -> None:
    route(ioapic, 5, MASKED | 0x45)
    assert ioapic.set_irq(5, True) == -1
    assert ioapic.set_irq(5, True) == 0  # the edge was lost, the line is still high
    route(ioapic, 6, MASKED | LEVEL | 0x46)
    assert ioapic.set_irq(6, True) == -1
    assert bus.messages == []


def test_unmasking_an_edge_pin_does_not_deliver_a_lost_edge(ioapic: Ioapic, bus: Bus) -> None:
    route(ioapic, 5, MASKED | 0x45)
    ioapic.set_irq(5, True)
    route(ioapic, 5, 0x45)
    assert bus.messages == []


def test_unmasking_a_raised_level_pin_delivers(ioapic: Ioapic, bus: Bus) -> None:
    route(ioapic, 6, MASKED | LEVEL | 0x46)
    ioapic.set_irq(6, True)
    write_reg(ioapic, 0x10 + 12, LEVEL | 0x46)
    assert [m.vector for m in bus.messages] == [0x46]
    assert entry(ioapic, 6) & REMOTE_IRR


def test_level_sets_remote_irr_until_eoi_and_redelivers_while_high(ioapic: Ioapic, bus: Bus) -> None:
    route(ioapic, 10, LEVEL | 0x50)
    assert ioapic.set_irq(10, True) == 1
    assert entry(ioapic, 10) & REMOTE_IRR
    assert ioapic.set_irq(10, True) == -1  # remote IRR set: waits for the EOI
    assert len(bus.messages) == 1
    ioapic.eoi(0x51)  # another vector: nothing
    assert entry(ioapic, 10) & REMOTE_IRR
    ioapic.eoi(0x50)  # the line is still high: delivered again
    assert len(bus.messages) == 2
    assert entry(ioapic, 10) & REMOTE_IRR
    ioapic.set_irq(10, False)
    ioapic.eoi(0x50)
    assert len(bus.messages) == 2
    assert not entry(ioapic, 10) & REMOTE_IRR
    assert ioapic.set_irq(10, True) == 1
    assert len(bus.messages) == 3


def test_eoi_clears_remote_irr_of_every_entry_with_the_vector(ioapic: Ioapic, bus: Bus) -> None:
    route(ioapic, 1, LEVEL | 0x61)
    route(ioapic, 2, LEVEL | 0x61)
    ioapic.set_irq(1, True)
    ioapic.set_irq(2, True)
    ioapic.set_irq(1, False)
    ioapic.set_irq(2, False)
    ioapic.eoi(0x61)
    assert not entry(ioapic, 1) & REMOTE_IRR
    assert not entry(ioapic, 2) & REMOTE_IRR
    assert len(bus.messages) == 2


def test_level_remote_irr_follows_kvm_delivery_status(ioapic: Ioapic, bus: Bus) -> None:
    route(ioapic, 7, LEVEL | 0x47)
    bus.accepted = 0  # a LAPIC matched but took nothing (software-disabled)
    assert ioapic.set_irq(7, True) == 0
    assert not entry(ioapic, 7) & REMOTE_IRR
    ioapic.set_irq(7, False)
    bus.accepted = -1  # no LAPIC matched: KVM still sets remote IRR
    assert ioapic.set_irq(7, True) == -1
    assert entry(ioapic, 7) & REMOTE_IRR


def test_entry_writes_keep_read_only_bits(ioapic: Ioapic, bus: Bus) -> None:
    route(ioapic, 8, LEVEL | 0x48)
    ioapic.set_irq(8, True)
    write_reg(ioapic, 0x10 + 16, LEVEL | 0x49)  # remote IRR and delivery status written as 0
    assert entry(ioapic, 8) & 0xFFFFFFFF == LEVEL | REMOTE_IRR | 0x49
    write_reg(ioapic, 0x10 + 16, LEVEL | DELIVERY_STATUS | 0x49)
    assert not entry(ioapic, 8) & DELIVERY_STATUS
    write_reg(ioapic, 0x10 + 16, 0x49)  # switching to edge clears remote IRR
    assert entry(ioapic, 8) & 0xFFFFFFFF == 0x49


def test_polarity_is_ignored(ioapic: Ioapic, bus: Bus) -> None:
    route(ioapic, 11, POLARITY_LOW | LEVEL | 0x4B)
    assert ioapic.set_irq(11, True) == 1
    assert ioapic.set_irq(12, False) == 1
    assert [m.vector for m in bus.messages] == [0x4B]


def test_line_is_the_or_of_its_sources(ioapic: Ioapic, bus: Bus) -> None:
    route(ioapic, 2, 0x22)
    assert ioapic.set_irq(2, True, source=1) == 1
    assert ioapic.set_irq(2, True) == 0
    assert ioapic.set_irq(2, False, source=1) == 0  # source 0 keeps the line high: no new edge
    assert ioapic.set_irq(2, False) == 1
    assert ioapic.set_irq(2, True) == 1
    assert len(bus.messages) == 2


def test_eoi_register_does_not_exist(ioapic: Ioapic, bus: Bus) -> None:
    route(ioapic, 10, LEVEL | 0x50)
    ioapic.set_irq(10, True)
    ioapic.write(0x40, 4, 0x50)
    assert ioapic.read(0x40, 4) == 0
    assert entry(ioapic, 10) & REMOTE_IRR


def test_bad_arguments(ioapic: Ioapic) -> None:
    with pytest.raises(InvalidArgument):
        ioapic.set_irq(24, True)
    with pytest.raises(InvalidArgument):
        ioapic.set_irq(-1, True)
    with pytest.raises(InvalidArgument):
        ioapic.set_irq(0, True, source=64)
    with pytest.raises(InvalidArgument):
        ioapic.read(0x100, 4)
    with pytest.raises(InvalidArgument):
        ioapic.write(0x10, 9, 0)
    with pytest.raises(InvalidArgument):
        ioapic.eoi(256)
    with pytest.raises(InvalidArgument):
        ioapic.set_state(IoapicState(redirtbl=(MASKED,) * 23))


# -- state --------------------------------------------------------------------------------------


def test_get_state_reports_registers_and_hides_delivered_edges(ioapic: Ioapic) -> None:
    route(ioapic, 4, 0x40)
    route(ioapic, 5, MASKED | 0x45)
    route(ioapic, 10, LEVEL | 0x50, destination=3)
    write_reg(ioapic, 0, 0x05000000)
    ioapic.set_irq(4, True)  # delivered edge: hidden
    ioapic.set_irq(5, True)  # masked edge: still pending
    ioapic.set_irq(10, True)
    ioapic.write(IOREGSEL, 4, 0x15)
    state = ioapic.get_state()
    assert state.irr == 1 << 5 | 1 << 10
    assert state.id == 5
    assert state.ioregsel == 0x15
    assert state.base_address == 0xFEC00000
    assert state.redirtbl[4] == 0x40
    assert state.redirtbl[10] == 3 << 56 | LEVEL | REMOTE_IRR | 0x50


def test_state_round_trip(ioapic: Ioapic) -> None:
    route(ioapic, 1, LEVEL | LOGICAL | 0x31, destination=0x0F)
    route(ioapic, 2, MASKED | 0x32)
    write_reg(ioapic, 0, 0x0A000000)
    ioapic.set_irq(1, True)
    ioapic.set_irq(2, True)
    state = ioapic.get_state()
    other_bus = Bus()
    other = Ioapic(other_bus)
    other.set_state(state)
    assert other.get_state() == state
    assert other_bus.messages == []  # level pin waits for its EOI, edge pin is masked
    other.eoi(0x31)
    assert [m.vector for m in other_bus.messages] == [0x31]


def test_set_state_delivers_pending_lines(bus: Bus) -> None:
    ioapic = Ioapic(bus)
    table = [MASKED] * 24
    table[3] = 0x43  # edge, unmasked, pending
    table[6] = LEVEL | 0x46  # level, asserted, no remote IRR
    ioapic.set_state(replace(IoapicState(), irr=1 << 3 | 1 << 6, redirtbl=tuple(table)))
    assert sorted(m.vector for m in bus.messages) == [0x43, 0x46]
    assert ioapic.get_state().irr == 1 << 6
    assert entry(ioapic, 6) & REMOTE_IRR
