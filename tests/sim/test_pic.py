"""The 8259A pair as KVM models it, driven through its ports the way a guest does."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hvcore import InvalidArgument
from hvcore.types import PicState
from hvcore_sim.irqchip.pic import PicPair

MASTER_CMD, MASTER_DATA, SLAVE_CMD, SLAVE_DATA = 0x20, 0x21, 0xA0, 0xA1
ELCR_MASTER, ELCR_SLAVE = 0x4D0, 0x4D1
EOI, READ_IRR, READ_ISR, POLL = 0x20, 0x0A, 0x0B, 0x0C


class Recorder:
    """Collects the PIC's ack and mask notifications."""

    def __init__(self) -> None:
        self.acked: list[int] = []
        self.masks: list[tuple[int, bool]] = []

    def ack(self, irq: int) -> None:
        self.acked.append(irq)

    def mask(self, irq: int, masked: bool) -> None:
        self.masks.append((irq, masked))


def bios_init(pic: PicPair, icw4: int = 0x01, master_mask: int = 0x00, slave_mask: int = 0x00) -> None:
    """The PC BIOS sequence: vectors 0x08 / 0x70, slave on IRQ 2, 8086 mode, then the masks."""
    for port, value in (
        (MASTER_CMD, 0x11), (MASTER_DATA, 0x08), (MASTER_DATA, 0x04), (MASTER_DATA, icw4),
        (SLAVE_CMD, 0x11), (SLAVE_DATA, 0x70), (SLAVE_DATA, 0x02), (SLAVE_DATA, icw4),
        (MASTER_DATA, master_mask), (SLAVE_DATA, slave_mask),
    ):  # fmt: skip
        pic.write_port(port, value)


def register(pic: PicPair, command_port: int, ocw3: int) -> int:
    pic.write_port(command_port, ocw3)
    return pic.read_port(command_port)


def pulse(pic: PicPair, irq: int) -> int:
    status = pic.set_irq(irq, True)
    pic.set_irq(irq, False)
    return status


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def pic(rec: Recorder) -> PicPair:
    pic = PicPair(rec.ack, mask_notify=rec.mask)
    bios_init(pic)
    rec.masks.clear()
    return pic


def test_creation_state_is_kvms() -> None:
    pic = PicPair()
    assert pic.get_state(slave=False) == PicState(elcr_mask=0xF8)
    assert pic.get_state(slave=True) == PicState(elcr_mask=0xDE)
    assert not pic.output()


def test_bios_init_sequence_programs_both_chips() -> None:
    pic = PicPair()
    bios_init(pic, master_mask=0xB8, slave_mask=0x8F)
    master, slave = pic.get_state(slave=False), pic.get_state(slave=True)
    assert (master.irq_base, master.init4, master.init_state, master.imr) == (0x08, 1, 0, 0xB8)
    assert (slave.irq_base, slave.init4, slave.init_state, slave.imr) == (0x70, 1, 0, 0x8F)
    assert pic.read_port(MASTER_DATA) == 0xB8
    assert pic.read_port(SLAVE_DATA) == 0x8F


def test_icw2_keeps_only_vector_bits_and_no_icw4_ends_after_icw3() -> None:
    pic = PicPair()
    pic.write_port(MASTER_CMD, 0x10)  # ICW1 without ICW4
    pic.write_port(MASTER_DATA, 0x27)
    assert pic.get_state(slave=False).init_state == 2
    pic.write_port(MASTER_DATA, 0x04)
    assert pic.get_state(slave=False).init_state == 0
    pic.write_port(MASTER_DATA, 0x55)  # now OCW1
    state = pic.get_state(slave=False)
    assert (state.irq_base, state.imr, state.init4) == (0x20, 0x55, 0)


def test_edge_irq_deliver_ack_eoi(pic: PicPair, rec: Recorder) -> None:
    assert pic.set_irq(1, True) == 1
    assert pic.output()
    assert register(pic, MASTER_CMD, READ_IRR) == 0x02
    assert pic.acknowledge() == 0x09
    assert not pic.output()
    assert register(pic, MASTER_CMD, READ_IRR) == 0x00
    assert register(pic, MASTER_CMD, READ_ISR) == 0x02
    assert rec.acked == []
    pic.write_port(MASTER_CMD, EOI)
    assert register(pic, MASTER_CMD, READ_ISR) == 0x00
    assert rec.acked == [1]
    assert not pic.output()


def test_slave_irq_goes_through_the_cascade(pic: PicPair, rec: Recorder) -> None:
    assert pic.set_irq(9, True) == 1
    assert pic.get_state(slave=False).irr == 0x04
    assert pic.output()
    assert pic.acknowledge() == 0x71
    assert pic.get_state(slave=False).isr == 0x04
    assert pic.get_state(slave=True).isr == 0x02
    pic.write_port(SLAVE_CMD, EOI)
    pic.write_port(MASTER_CMD, EOI)
    assert rec.acked == [9, 2]
    assert pic.get_state(slave=False).isr == pic.get_state(slave=True).isr == 0


def test_priorities_and_nesting(pic: PicPair) -> None:
    pulse(pic, 4)
    pulse(pic, 9)
    pulse(pic, 1)
    assert pic.acknowledge() == 0x09  # IRQ 1 beats the cascade (2) and IRQ 4
    assert not pic.output()  # everything left has a lower priority than IRQ 1 in service
    pic.write_port(MASTER_CMD, EOI)
    assert pic.acknowledge() == 0x71  # IRQ 9 via IRQ 2
    assert not pic.output()  # IRQ 4 waits behind IRQ 2 in service
    pulse(pic, 0)
    assert pic.output()  # IRQ 0 nests over IRQ 2
    assert pic.acknowledge() == 0x08
    pic.write_port(MASTER_CMD, EOI)  # non-specific EOI ends the highest in service: IRQ 0
    assert pic.get_state(slave=False).isr == 0x04
    pic.write_port(SLAVE_CMD, EOI)
    pic.write_port(MASTER_CMD, EOI)
    assert pic.acknowledge() == 0x0C
    pic.write_port(MASTER_CMD, EOI)
    assert not pic.output()
    assert pic.acknowledge() == 0x0F  # spurious


def test_delivery_status_latched_coalesced_masked(pic: PicPair) -> None:
    assert pic.set_irq(3, True) == 1
    assert pic.set_irq(3, True) == 1  # still high: no new edge, nothing coalesced
    assert pic.set_irq(3, False) == 1
    assert pic.set_irq(3, True) == 0  # a new edge while IRR still holds the first: coalesced
    pic.write_port(MASTER_DATA, 0x10)
    assert pic.set_irq(4, True) == -1
    assert pic.get_state(slave=False).irr == 0x18  # a masked request is still latched
    assert pic.acknowledge() == 0x0B
    pic.write_port(MASTER_CMD, EOI)
    assert not pic.output()
    pic.write_port(MASTER_DATA, 0x00)  # unmask: the latched IRQ 4 is delivered
    assert pic.output()
    assert pic.acknowledge() == 0x0C


def test_level_triggered_line_held_raises_again_after_eoi(pic: PicPair, rec: Recorder) -> None:
    pic.write_port(ELCR_SLAVE, 0x02)  # IRQ 9 level triggered
    assert pic.read_port(ELCR_SLAVE) == 0x02
    assert pic.set_irq(9, True) == 1
    assert pic.set_irq(9, True) == 0  # level and already in IRR
    assert pic.acknowledge() == 0x71
    assert pic.get_state(slave=True).irr == 0x02  # INTA leaves a level request in IRR
    pic.write_port(SLAVE_CMD, EOI)
    pic.write_port(MASTER_CMD, EOI)
    assert pic.output()  # still held: interrupts again
    assert pic.acknowledge() == 0x71
    pic.set_irq(9, False)
    assert pic.get_state(slave=True).irr == 0
    pic.write_port(SLAVE_CMD, EOI)
    pic.write_port(MASTER_CMD, EOI)
    assert not pic.output()
    assert rec.acked == [9, 2, 9, 2]


def test_edge_line_held_does_not_raise_again(pic: PicPair) -> None:
    pic.set_irq(5, True)
    assert pic.acknowledge() == 0x0D
    pic.write_port(MASTER_CMD, EOI)
    assert not pic.output()


def test_elcr_writes_are_limited_by_kvms_masks(pic: PicPair) -> None:
    pic.write_port(ELCR_MASTER, 0xFF)
    pic.write_port(ELCR_SLAVE, 0xFF)
    assert pic.read_port(ELCR_MASTER) == 0xF8
    assert pic.read_port(ELCR_SLAVE) == 0xDE
    assert pic.set_irq(0, True) == 1  # IRQ 0 stays edge triggered
    assert pic.set_irq(0, True) == 1
    pic.set_irq(0, False)
    assert pic.get_state(slave=False).irr & 1


def test_level_line_lowered_before_inta_gives_spurious_vectors(pic: PicPair) -> None:
    pic.write_port(ELCR_MASTER, 0x08)
    pic.set_irq(3, True)
    pic.set_irq(3, False)
    assert not pic.output()
    assert pic.acknowledge() == 0x0F
    assert pic.get_state(slave=False).isr == 0  # a spurious IRQ 7 is not put in service
    pic.write_port(ELCR_SLAVE, 0x04)
    pic.set_irq(10, True)
    pic.set_irq(10, False)  # the slave's request is gone, the master's IRQ 2 edge stays
    assert pic.output()
    assert pic.acknowledge() == 0x77
    assert pic.get_state(slave=False).isr == 0x04
    assert pic.get_state(slave=True).isr == 0


def test_auto_eoi_ends_service_at_inta(rec: Recorder) -> None:
    pic = PicPair(rec.ack)
    bios_init(pic, icw4=0x03)
    assert pic.get_state(slave=False).auto_eoi == 1
    pulse(pic, 6)
    pulse(pic, 3)
    assert pic.acknowledge() == 0x0B
    assert pic.get_state(slave=False).isr == 0
    assert rec.acked == [3]
    assert pic.output()  # nothing in service blocks IRQ 6
    assert pic.acknowledge() == 0x0E
    assert rec.acked == [3, 6]


def test_rotate_on_auto_eoi(pic: PicPair) -> None:
    bios_init(pic, icw4=0x03)
    pic.write_port(MASTER_CMD, 0x80)
    assert pic.get_state(slave=False).rotate_on_auto_eoi == 1
    pulse(pic, 3)
    assert pic.acknowledge() == 0x0B
    assert pic.get_state(slave=False).priority_add == 4  # IRQ 3 is now the lowest
    pulse(pic, 1)
    pulse(pic, 5)
    assert pic.acknowledge() == 0x0D  # order is 4 5 6 7 0 1 2 3
    pic.write_port(MASTER_CMD, 0x00)
    assert pic.get_state(slave=False).rotate_on_auto_eoi == 0
    assert pic.acknowledge() == 0x09
    assert pic.get_state(slave=False).priority_add == 6  # the rotation in auto-EOI was from IRQ 5


def test_rotate_on_non_specific_eoi(pic: PicPair) -> None:
    pulse(pic, 1)
    assert pic.acknowledge() == 0x09
    pic.write_port(MASTER_CMD, 0xA0)
    assert pic.get_state(slave=False).priority_add == 2
    pulse(pic, 0)
    pulse(pic, 3)
    assert pic.acknowledge() == 0x0B  # IRQ 3 now beats IRQ 0
    assert not pic.output()  # IRQ 0 now ranks below IRQ 3 in service


def test_set_priority(pic: PicPair) -> None:
    pic.write_port(MASTER_CMD, 0xC5)  # IRQ 5 lowest: the order is 6 7 0 1 2 3 4 5
    assert pic.get_state(slave=False).priority_add == 6
    pulse(pic, 0)
    pulse(pic, 6)
    assert pic.acknowledge() == 0x0E
    assert not pic.output()  # IRQ 0 ranks below IRQ 6 in service
    pic.write_port(MASTER_CMD, EOI)
    assert pic.acknowledge() == 0x08


def test_specific_eoi_clears_the_named_irq(pic: PicPair, rec: Recorder) -> None:
    pulse(pic, 4)
    assert pic.acknowledge() == 0x0C
    pulse(pic, 3)
    assert pic.acknowledge() == 0x0B  # nested over IRQ 4
    pic.write_port(MASTER_CMD, 0x64)  # specific EOI of IRQ 4, not the highest in service
    assert pic.get_state(slave=False).isr == 0x08
    assert rec.acked == [4]
    pic.write_port(MASTER_CMD, 0xE3)  # rotate on specific EOI of IRQ 3
    state = pic.get_state(slave=False)
    assert (state.isr, state.priority_add) == (0, 4)
    assert rec.acked == [4, 3]


def test_poll_mode_master(pic: PicPair, rec: Recorder) -> None:
    pulse(pic, 5)
    pic.write_port(MASTER_CMD, POLL)
    assert pic.get_state(slave=False).poll == 1
    assert pic.read_port(MASTER_DATA) == 0x85
    state = pic.get_state(slave=False)
    assert (state.poll, state.irr, state.isr) == (0, 0, 0)
    assert rec.acked == [5]
    assert not pic.output()
    pic.write_port(MASTER_CMD, POLL)
    assert pic.read_port(MASTER_CMD) == 0x07  # nothing pending


def test_poll_mode_slave_clears_the_cascade(pic: PicPair, rec: Recorder) -> None:
    pulse(pic, 10)
    assert pic.get_state(slave=False).irr == 0x04
    pic.write_port(SLAVE_CMD, POLL)
    assert pic.read_port(SLAVE_CMD) == 0x82
    assert pic.get_state(slave=False).irr == 0
    assert pic.get_state(slave=True).irr == 0
    assert rec.acked == [10]
    assert not pic.output()


def test_read_register_select_persists(pic: PicPair) -> None:
    pulse(pic, 3)
    pulse(pic, 1)
    pic.acknowledge()
    assert register(pic, MASTER_CMD, READ_ISR) == 0x02
    assert register(pic, MASTER_CMD, 0x08) == 0x02  # OCW3 without RR keeps the ISR selected
    assert register(pic, MASTER_CMD, READ_IRR) == 0x08
    assert pic.read_port(MASTER_CMD) == 0x08


def test_special_fully_nested_mode_lets_a_higher_slave_irq_nest(pic: PicPair) -> None:
    pulse(pic, 9)
    assert pic.acknowledge() == 0x71
    pulse(pic, 8)
    assert not pic.output()  # master's IRQ 2 in service blocks the slave's IRQ 8
    sfnm = PicPair()
    bios_init(sfnm, icw4=0x11)
    assert sfnm.get_state(slave=False).special_fully_nested_mode == 1
    pulse(sfnm, 9)
    assert sfnm.acknowledge() == 0x71
    pulse(sfnm, 8)
    assert sfnm.output()
    assert sfnm.acknowledge() == 0x70


def test_special_mask_mode_is_stored_but_ignored_as_in_kvm(pic: PicPair) -> None:
    pulse(pic, 1)
    assert pic.acknowledge() == 0x09
    pic.write_port(MASTER_CMD, 0x68)  # set special mask mode
    assert pic.get_state(slave=False).special_mask == 1
    pic.write_port(MASTER_DATA, 0x02)  # mask the IRQ in service
    pulse(pic, 3)
    assert not pic.output()  # KVM's priority resolution does not look at special_mask
    pic.write_port(MASTER_CMD, 0x48)
    assert pic.get_state(slave=False).special_mask == 0


def test_icw1_resets_the_chip_but_keeps_level_requests(rec: Recorder) -> None:
    pic = PicPair(rec.ack)
    bios_init(pic, master_mask=0x80)
    pic.write_port(ELCR_MASTER, 0x40)
    pic.set_irq(6, True)  # level
    pulse(pic, 1)
    assert pic.acknowledge() == 0x09
    pulse(pic, 0)
    assert pic.acknowledge() == 0x08  # nested: ISR holds IRQs 0 and 1
    pulse(pic, 1)  # an edge request for IRQ 1 while it is in service
    pic.write_port(MASTER_CMD, 0xC3)
    pic.write_port(MASTER_CMD, READ_ISR)
    pic.write_port(MASTER_CMD, 0x11)
    state = pic.get_state(slave=False)
    assert (state.imr, state.priority_add, state.read_reg_select, state.init_state) == (0, 0, 0, 1)
    assert (state.irr, state.last_irr) == (0x40, 0)  # edge requests dropped, the level one kept
    assert state.isr == 0x01  # KVM ends the service of IRQ 1 (edge request pending) only
    assert state.auto_eoi == 0
    assert rec.acked == [1]


def test_icw1_keeps_isr_when_no_vcpu_takes_pic_interrupts(rec: Recorder) -> None:
    pic = PicPair(rec.ack, accepts_interrupts=lambda: False)
    bios_init(pic)
    pulse(pic, 1)
    pic.acknowledge()
    pulse(pic, 1)
    pic.write_port(MASTER_CMD, 0x11)
    assert pic.get_state(slave=False).isr == 0x02
    assert rec.acked == []


def test_imr_changes_fire_mask_notifiers(pic: PicPair, rec: Recorder) -> None:
    pic.write_port(MASTER_DATA, 0xFE)
    assert rec.masks == [(i, True) for i in range(1, 8)]
    rec.masks.clear()
    pic.write_port(MASTER_DATA, 0xFF)
    pic.write_port(MASTER_DATA, 0xFE)
    pic.write_port(SLAVE_DATA, 0x01)
    assert rec.masks == [(0, True), (0, False), (8, True)]


def test_sources_are_ored_on_a_pin(pic: PicPair) -> None:
    pic.write_port(ELCR_MASTER, 0x20)
    pic.set_irq(5, True, source=0)
    pic.set_irq(5, True, source=2)
    pic.set_irq(5, False, source=2)
    assert pic.get_state(slave=False).irr == 0x20  # source 0 still holds the line
    pic.set_irq(5, False, source=0)
    assert pic.get_state(slave=False).irr == 0


def test_a_notifier_may_call_back_into_the_pic(rec: Recorder) -> None:
    box: list[PicPair] = []

    def reraise(irq: int) -> None:
        rec.ack(irq)
        if irq == 0 and len(rec.acked) < 3:
            pulse(box[0], 0)  # like the PIT reinjecting a missed tick on EOI

    pic = PicPair(reraise)
    box.append(pic)
    bios_init(pic)
    pulse(pic, 0)
    for expected_acks in (1, 2, 3):
        assert pic.acknowledge() == 0x08
        pic.write_port(MASTER_CMD, EOI)
        assert len(rec.acked) == expected_acks
    assert not pic.output()


def test_state_round_trip_and_behaviour_continues(pic: PicPair, rec: Recorder) -> None:
    pic.write_port(ELCR_SLAVE, 0x08)
    pic.set_irq(11, True)
    pulse(pic, 4)
    pulse(pic, 6)
    pic.write_port(MASTER_CMD, 0xC3)  # IRQ 4 highest
    assert pic.acknowledge() == 0x0C
    pic.write_port(MASTER_CMD, READ_ISR)
    master, slave = pic.get_state(slave=False), pic.get_state(slave=True)

    copy = PicPair(rec.ack)
    copy.set_state(False, master)
    copy.set_state(True, slave)
    assert copy.get_state(slave=False) == master
    assert copy.get_state(slave=True) == slave
    assert copy.output() == pic.output()
    for chip in (pic, copy):
        assert chip.read_port(MASTER_CMD) == 0x10
        chip.write_port(MASTER_CMD, EOI)
        assert chip.acknowledge() == 0x0E
        chip.write_port(MASTER_CMD, EOI)
        assert chip.acknowledge() == 0x73  # IRQ 11 via the cascade, still held
    assert copy.get_state(slave=False) == pic.get_state(slave=False)
    assert copy.get_state(slave=True) == pic.get_state(slave=True)


def test_set_state_re_evaluates_the_output() -> None:
    pic = PicPair()
    pic.set_state(False, PicState(irr=0x10, irq_base=0x20, elcr_mask=0xF8))
    assert pic.output()
    assert pic.acknowledge() == 0x24
    pic.set_state(True, PicState(irr=0x01, irq_base=0x28, elcr_mask=0xDE))
    assert pic.get_state(slave=False).irr == 0x04  # the slave's request reached the cascade
    assert pic.acknowledge() == 0x28


def test_reset_returns_to_creation_state(pic: PicPair) -> None:
    pulse(pic, 1)
    pic.write_port(ELCR_SLAVE, 0x02)
    pic.reset()
    assert pic.get_state(slave=False) == PicState(elcr_mask=0xF8)
    assert pic.get_state(slave=True) == PicState(elcr_mask=0xDE)
    assert not pic.output()


@pytest.mark.parametrize("irq", [-1, 16])
def test_bad_irq(irq: int) -> None:
    with pytest.raises(InvalidArgument):
        PicPair().set_irq(irq, True)


def test_bad_ports_values_and_states() -> None:
    pic = PicPair()
    with pytest.raises(InvalidArgument):
        pic.read_port(0x22)
    with pytest.raises(InvalidArgument):
        pic.write_port(0x40, 0)
    with pytest.raises(InvalidArgument):
        pic.write_port(MASTER_DATA, 0x100)
    with pytest.raises(InvalidArgument):
        pic.set_irq(1, True, source=64)
    with pytest.raises(InvalidArgument):
        pic.set_state(False, replace(PicState(), imr=0x100))
    assert pic.get_state(slave=False) == PicState(elcr_mask=0xF8)
