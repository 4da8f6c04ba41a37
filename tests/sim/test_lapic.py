"""The simulator's local APIC model against KVM's ``lapic.c`` rules, driven through its registers as a guest does."""

from __future__ import annotations

import pytest

from hvcore import InvalidArgument, StateError
from hvcore.types import Lapic
from hvcore_sim.clock import VirtualClock
from hvcore_sim.irqchip.lapic import LocalApic
from hvcore_sim.irqchip.message import DeliveryMode, InterruptMessage, Shorthand

ID, VER, TPR, APR, PPR, EOI, LDR, DFR, SVR = 0x20, 0x30, 0x80, 0x90, 0xA0, 0xB0, 0xD0, 0xE0, 0xF0
ISR, TMR, IRR, ESR, ICR, ICR2 = 0x100, 0x180, 0x200, 0x280, 0x300, 0x310
LVTT, LVTTHMR, LVTPC, LVT0, LVT1, LVTERR = 0x320, 0x330, 0x340, 0x350, 0x360, 0x370
TMICT, TMCCT, TDCR = 0x380, 0x390, 0x3E0
MASKED, PERIODIC, TSC_DEADLINE = 1 << 16, 1 << 17, 2 << 17
ONE, TWO = 0xB, 0x0  # divide configurations: by 1, by 2


class Harness:
    """A LAPIC on a virtual clock, recording the IPIs it sends and the EOIs it broadcasts."""

    def __init__(self, apic_id: int = 0, tsc_hz: int = 1_000_000_000, now: int = 0) -> None:
        self.clock = VirtualClock()
        self.clock.set(now)
        self.sent: list[InterruptMessage] = []
        self.eois: list[int] = []
        self.apic = LocalApic(apic_id, self.clock, self._send, self.eois.append, tsc_hz)

    def _send(self, message: InterruptMessage) -> int:
        self.sent.append(message)
        return 1

    def read(self, offset: int) -> int:
        return self.apic.read(offset, 4)

    def write(self, offset: int, value: int) -> None:
        self.apic.write(offset, 4, value)

    def enable(self) -> None:
        self.write(SVR, 0x1FF)

    def at(self, now: int) -> None:
        """Move time to ``now`` and let the timer fire, as the vCPU loop does."""
        self.clock.set(now)
        self.apic.advance(now)

    def fixed(self, vector: int, *, level: bool = False) -> bool:
        return self.apic.accept(InterruptMessage(vector=vector, level_triggered=level))

    def bit(self, base: int, vector: int) -> bool:
        return bool(self.read(base + 0x10 * (vector >> 5)) >> (vector & 31) & 1)

    def start_timer(self, lvtt: int, count: int, divide: int = ONE) -> None:
        self.write(LVTT, lvtt)
        self.write(TDCR, divide)
        self.write(TMICT, count)


@pytest.fixture
def h() -> Harness:
    return Harness()


@pytest.fixture
def on() -> Harness:
    harness = Harness()
    harness.enable()
    return harness


# -- reset state and registers ------------------------------------------------------------------


def test_power_on_state_of_the_bsp(h: Harness) -> None:
    assert h.apic.apic_base == 0xFEE00900
    assert h.read(ID) == 0
    assert h.read(VER) == 0x50014
    assert h.read(SVR) == 0xFF
    assert h.read(DFR) == 0xFFFFFFFF
    assert [h.read(lvt) for lvt in (LVTT, LVTTHMR, LVTPC, LVT1, LVTERR)] == [MASKED] * 5
    assert h.read(LVT0) == 0x700  # ExtINT, unmasked: the PIC reaches the BSP
    assert h.apic.accepts_pic_interrupt()


def test_power_on_state_of_an_ap() -> None:
    ap = Harness(apic_id=3)
    assert ap.apic.apic_base == 0xFEE00800
    assert ap.read(ID) == 3 << 24
    assert ap.read(LVT0) == MASKED
    assert not ap.apic.accepts_pic_interrupt()


def test_register_masks(on: Harness) -> None:
    on.write(ID, 0xFFFFFFFF)
    assert on.read(ID) == 0xFF000000
    on.write(LDR, 0x12345678)
    assert on.read(LDR) == 0x12000000
    on.write(DFR, 0)
    assert on.read(DFR) == 0x0FFFFFFF
    on.write(TPR, 0x1FF)
    assert on.read(TPR) == 0xFF
    on.write(SVR, 0xFFFFFFFF)
    assert on.read(SVR) == 0x3FF  # no directed-EOI bit: the IOAPIC is in-kernel
    on.write(VER, 0)
    assert on.read(VER) == 0x50014
    on.write(LVTERR, 0xFFFFFFFF)
    assert on.read(LVTERR) == 0x110FF
    on.write(LVT1, 0xFFFFFFFF)
    assert on.read(LVT1) == 0x1F7FF
    on.write(LVTTHMR, 0xFFFFFFFF)
    assert on.read(LVTTHMR) == 0x117FF
    on.write(LVTT, 0xFFFFFFFF)
    assert on.read(LVTT) == 0x710FF
    on.write(ESR, 0xFFFFFFFF)
    assert on.read(ESR) == 0
    on.write(TDCR, 0xFFFFFFFF)
    assert on.read(TDCR) == 0xB


def test_mmio_access_rules(on: Harness) -> None:
    on.write(TPR, 0x20)
    on.apic.write(TPR, 2, 0x30)  # not 4 bytes: ignored
    on.apic.write(TPR + 4, 4, 0x30)  # not aligned: ignored
    assert on.read(TPR) == 0x20
    on.write(ID, 0xAB000000)
    assert on.apic.read(ID + 3, 1) == 0xAB
    assert on.apic.read(ID + 2, 2) == 0xAB00
    assert on.apic.read(ID + 2, 4) == 0  # crosses the register
    assert on.apic.read(ID, 8) == 0
    assert on.read(EOI) == 0  # write-only
    assert on.read(APR) == 0
    assert on.read(0x2F0) == 0  # no CMCI LVT
    assert on.read(0x800) == 0
    with pytest.raises(InvalidArgument):
        on.apic.read(0x1000, 4)
    on.apic.write(TPR, 3, 0x40)  # a string IN's odd-sized part: ignored, as KVM
    assert on.read(TPR) == 0x20
    with pytest.raises(InvalidArgument):
        on.apic.write(0, 9, 0)


# -- acceptance, priorities, EOI ----------------------------------------------------------------


def test_software_disabled_apic_refuses_fixed_interrupts_and_masks_lvts(h: Harness) -> None:
    assert not h.fixed(0x40)
    assert h.apic.pending_vector() is None
    h.write(LVT1, 0x400)
    assert h.read(LVT1) == MASKED | 0x400
    h.enable()
    h.write(LVT1, 0x400)
    h.write(LVTT, 0x30)
    assert h.read(LVT1) == 0x400
    h.write(SVR, 0xFF)  # software-disable again: every LVT masked
    assert all(h.read(lvt) & MASKED for lvt in (LVTT, LVTTHMR, LVTPC, LVT0, LVT1, LVTERR))


def test_fixed_interrupt_sets_irr(on: Harness) -> None:
    assert on.fixed(0x41)
    assert on.bit(IRR, 0x41)
    assert not on.bit(TMR, 0x41)
    assert on.apic.pending_vector() == 0x41


def test_tpr_masks_lower_classes(on: Harness) -> None:
    on.fixed(0x45)
    on.write(TPR, 0x40)
    assert on.read(PPR) == 0x40
    assert on.apic.pending_vector() is None  # class 4 is not above PPR 0x40
    on.write(TPR, 0x3F)
    assert on.apic.pending_vector() == 0x45
    on.apic.set_cr8(5)
    assert on.read(TPR) == 0x50
    assert on.apic.get_cr8() == 5
    assert on.apic.pending_vector() is None


def test_ppr_from_tpr_and_highest_isr(on: Harness) -> None:
    on.fixed(0x31)
    assert on.apic.acknowledge() == 0x31
    on.write(TPR, 0x25)
    assert on.read(PPR) == 0x30
    on.write(TPR, 0x35)
    assert on.read(PPR) == 0x35


def test_irr_isr_eoi_in_priority_order(on: Harness) -> None:
    for vector in (0x31, 0x52, 0x45):
        on.fixed(vector)
    assert on.apic.acknowledge() == 0x52
    assert on.bit(ISR, 0x52)
    assert not on.bit(IRR, 0x52)
    assert on.read(PPR) == 0x50
    assert on.apic.pending_vector() is None  # 0x45 and 0x31 wait for the EOI
    on.fixed(0x61)
    assert on.apic.acknowledge() == 0x61  # a higher class nests
    on.write(EOI, 0)
    assert not on.bit(ISR, 0x61)
    assert on.bit(ISR, 0x52)
    assert on.apic.pending_vector() is None
    on.write(EOI, 0)
    assert on.read(PPR) == 0
    assert on.apic.acknowledge() == 0x45
    on.write(EOI, 0)
    assert on.apic.acknowledge() == 0x31
    on.write(EOI, 0)
    assert on.apic.pending_vector() is None
    with pytest.raises(StateError):
        on.apic.acknowledge()
    assert on.eois == []


def test_eoi_of_a_level_vector_is_broadcast(on: Harness) -> None:
    assert on.fixed(0x50, level=True)
    assert on.bit(TMR, 0x50)
    on.fixed(0x40)
    on.apic.acknowledge()
    on.write(EOI, 0)
    assert on.eois == [0x50]
    on.apic.acknowledge()
    on.write(EOI, 0)
    assert on.eois == [0x50]  # 0x40 was edge
    on.write(EOI, 0)  # nothing in service: nothing happens
    assert on.eois == [0x50]


def test_edge_delivery_clears_the_tmr_bit(on: Harness) -> None:
    on.fixed(0x50, level=True)
    on.fixed(0x50)
    assert not on.bit(TMR, 0x50)


def test_level_deassert_is_not_accepted(on: Harness) -> None:
    assert not on.apic.accept(InterruptMessage(vector=0x50, level_triggered=True, assert_level=False))
    assert on.apic.pending_vector() is None


def test_directed_eoi_suppresses_the_broadcast(on: Harness) -> None:
    on.apic.set_state(on.apic.get_state().with_register(SVR, 0x11FF))
    on.fixed(0x50, level=True)
    on.apic.acknowledge()
    on.write(EOI, 0)
    assert on.eois == []


def test_nmi_init_sipi_and_others(h: Harness) -> None:
    accept = h.apic.accept
    assert accept(InterruptMessage(vector=0, delivery_mode=DeliveryMode.NMI))  # even software-disabled
    assert h.apic.nmi_pending
    assert accept(InterruptMessage(vector=0x9A, delivery_mode=DeliveryMode.STARTUP))
    assert h.apic.sipi_vector == 0x9A
    assert accept(InterruptMessage(vector=0, delivery_mode=DeliveryMode.INIT))
    assert h.apic.init_pending
    assert h.apic.sipi_vector is None  # INIT drops a pending SIPI
    deassert = InterruptMessage(vector=0, delivery_mode=DeliveryMode.INIT, level_triggered=True, assert_level=False)
    assert not accept(deassert)
    assert not h.apic.smi_pending
    assert accept(InterruptMessage(vector=0, delivery_mode=DeliveryMode.SMI))  # the vCPU takes it as KVM_SMI
    assert h.apic.smi_pending
    assert not accept(InterruptMessage(vector=0, delivery_mode=DeliveryMode.EXTINT))


def test_remote_read_is_kvms_paravirtual_kick(h: Harness) -> None:
    """KVM's APIC_DM_REMRD (``__apic_accept_irq``): accepted even software-disabled, it marks the vCPU to unhalt."""
    assert not h.apic.pv_unhalted
    assert h.apic.accept(InterruptMessage(vector=0, delivery_mode=DeliveryMode.REMOTE_READ))
    assert h.apic.pv_unhalted
    assert not h.bit(IRR, 0)


def test_accepts_pic_interrupt(h: Harness) -> None:
    assert h.apic.accepts_pic_interrupt()
    h.enable()
    h.write(LVT0, MASKED | 0x700)
    assert not h.apic.accepts_pic_interrupt()
    h.write(LVT0, 0x400)  # NMI mode
    assert not h.apic.accepts_pic_interrupt()
    assert h.apic.lint0_nmi_mode
    assert h.apic.deliver_lint0()
    assert h.apic.nmi_pending
    h.apic.set_apic_base(0xFEE00100)  # hardware-disabled: the PIC goes straight to the CPU
    assert h.apic.accepts_pic_interrupt()


# -- destinations -------------------------------------------------------------------------------


def test_physical_destinations() -> None:
    ap = Harness(apic_id=3)
    assert ap.apic.matches(3, logical=False)
    assert not ap.apic.matches(4, logical=False)
    assert ap.apic.matches(0xFF, logical=False)
    ap.write(ID, 0x07000000)
    assert ap.apic.matches(7, logical=False)
    assert not ap.apic.matches(3, logical=False)


def test_logical_flat_destinations(on: Harness) -> None:
    on.write(LDR, 0x05000000)
    assert on.apic.matches(0x04, logical=True)
    assert on.apic.matches(0x01, logical=True)
    assert not on.apic.matches(0x02, logical=True)
    assert on.apic.matches(0xFF, logical=True)
    on.write(SVR, 0xFF)
    assert not on.apic.matches(0x04, logical=True)  # software-disabled APICs leave KVM's logical map
    assert on.apic.matches(0, logical=False)


def test_logical_cluster_destinations(on: Harness) -> None:
    on.write(DFR, 0x0FFFFFFF)
    on.write(LDR, 0x21000000)
    assert on.apic.matches(0x21, logical=True)
    assert on.apic.matches(0x23, logical=True)
    assert not on.apic.matches(0x22, logical=True)
    assert not on.apic.matches(0x11, logical=True)


def test_hardware_disabled_apic(on: Harness) -> None:
    on.write(TPR, 0x20)
    on.apic.set_apic_base(0xFEE00100)
    assert not on.apic.hardware_enabled
    assert on.apic.read(TPR, 4) == 0xFFFFFFFF
    assert on.apic.read(TPR, 1) == 0xFF
    on.write(TPR, 0x30)
    assert not on.apic.matches(0xFF, logical=False)
    assert not on.fixed(0x40)
    on.apic.set_apic_base(0xFEE00900)
    assert on.read(TPR) == 0x20  # registers survive, as on KVM
    assert on.apic.base_address == 0xFEE00000


def test_reenabling_reloads_the_apic_id() -> None:
    ap = Harness(apic_id=2)
    ap.write(ID, 0x09000000)
    ap.apic.set_apic_base(0xFEE00000)
    ap.apic.set_apic_base(0xFEE00800)
    assert ap.read(ID) == 0x02000000


def test_apic_base_reserved_bits(h: Harness) -> None:
    for value in (0xFEE00901, 0xFEE00D00, 1 << 40, -1):  # low reserved, X2APIC_ENABLE, above MAXPHYADDR
        with pytest.raises(InvalidArgument):
            h.apic.set_apic_base(value)
    assert h.apic.apic_base == 0xFEE00900
    h.apic.set_apic_base(0xFED00900)
    assert h.apic.base_address == 0xFED00000


# -- ICR ----------------------------------------------------------------------------------------


def test_icr_fixed_ipi(on: Harness) -> None:
    on.write(ICR2, 0x02345678)
    assert on.read(ICR2) == 0x02000000
    on.write(ICR, 0x5041)  # fixed, assert, delivery-status bit set by the guest
    assert on.sent == [InterruptMessage(vector=0x41, destination=2, assert_level=True, source=0)]
    assert on.read(ICR) == 0x4041  # delivery completes at once


def test_icr_init_sipi_nmi_and_shorthands() -> None:
    ap = Harness(apic_id=5)
    ap.enable()
    ap.write(ICR2, 0x0F000000)
    ap.write(ICR, 0xC500)  # INIT level assert
    ap.write(ICR, 0x8500)  # INIT level de-assert
    ap.write(ICR, 0x0E9A | 0x4000)  # STARTUP 0x9a, logical
    ap.write(ICR, 0x0C0400)  # NMI to all but self
    ap.write(ICR, 0x044030)  # fixed 0x30 to self
    assert ap.sent == [
        InterruptMessage(0, DeliveryMode.INIT, 0x0F, False, True, True, Shorthand.NONE, 5),
        InterruptMessage(0, DeliveryMode.INIT, 0x0F, False, True, False, Shorthand.NONE, 5),
        InterruptMessage(0x9A, DeliveryMode.STARTUP, 0x0F, True, False, True, Shorthand.NONE, 5),
        InterruptMessage(0, DeliveryMode.NMI, 0x0F, False, False, False, Shorthand.ALL_EXCLUDING_SELF, 5),
        InterruptMessage(0x30, DeliveryMode.FIXED, 0x0F, False, False, True, Shorthand.SELF, 5),
    ]


def test_icr_remote_read_is_sent_as_the_paravirtual_kick(on: Harness) -> None:
    on.write(ICR2, 0x01000000)
    on.write(ICR, 0x0300)  # delivery mode 3 to APIC 1: KVM delivers it (kvm_apic_send_ipi), and it kicks
    assert on.sent == [InterruptMessage(0, DeliveryMode.REMOTE_READ, 1, assert_level=False, source=0)]


def test_physical_id_is_the_xapic_id_register_or_the_x2apic_id() -> None:
    h = Harness(apic_id=3)
    assert h.apic.physical_id == 3
    h.write(ID, 0x07000000)  # the guest renumbers its xAPIC
    assert h.apic.physical_id == 7
    h.apic.x2apic_allowed = True
    h.apic.set_apic_base(0xFEE00C00)  # x2APIC mode: the id is the vCPU's again
    assert h.apic.physical_id == 3


# -- timer --------------------------------------------------------------------------------------


def test_one_shot_fires_once_at_the_right_time(on: Harness) -> None:
    on.start_timer(0x30, 1000)
    assert on.apic.deadline() == 1000
    on.at(999)
    assert not on.bit(IRR, 0x30)
    on.at(1000)
    assert on.bit(IRR, 0x30)
    assert on.apic.deadline() is None
    assert on.apic.acknowledge() == 0x30
    on.write(EOI, 0)
    on.at(5000)
    assert not on.bit(IRR, 0x30)
    assert on.read(TMCCT) == 0
    assert on.read(TMICT) == 1000
    on.clock.set(500)  # the VM clock set back: an expired one-shot stays at 0
    assert on.read(TMCCT) == 0


def test_current_count_decreases(on: Harness) -> None:
    on.start_timer(0x30, 1000)
    assert on.read(TMCCT) == 0  # KVM's (time left mod period) formula, at the very ns of the write
    on.clock.set(1)
    assert on.read(TMCCT) == 999
    on.clock.set(400)
    assert on.read(TMCCT) == 600
    on.clock.set(999)
    assert on.read(TMCCT) == 1


@pytest.mark.parametrize(
    ("tdcr", "divide"), [(0x0, 2), (0x1, 4), (0x2, 8), (0x3, 16), (0x8, 32), (0x9, 64), (0xA, 128), (0xB, 1)]
)
def test_divide_configuration(on: Harness, tdcr: int, divide: int) -> None:
    on.start_timer(0x30, 10, divide=tdcr)
    assert on.apic.deadline() == 10 * divide
    on.clock.set(divide)
    assert on.read(TMCCT) == 9


def test_divide_change_rescales_the_time_left(on: Harness) -> None:
    on.start_timer(0x30, 1000)
    on.clock.set(400)
    on.write(TDCR, TWO)
    assert on.apic.deadline() == 400 + 1200
    assert on.read(TMCCT) == 600


def test_periodic_fires_once_per_period(on: Harness) -> None:
    period = 300_000
    on.start_timer(PERIODIC | 0x31, period)
    fired = 0
    for n in range(1, 6):
        on.at(n * period - 1)
        assert not on.bit(IRR, 0x31)
        on.at(n * period)
        if on.apic.pending_vector() == 0x31:
            fired += 1
            on.apic.acknowledge()
            on.write(EOI, 0)
        assert on.apic.deadline() == (n + 1) * period
    assert fired == 5
    on.clock.set(5 * period + 100_000)
    assert on.read(TMCCT) == 200_000


def test_periodic_missed_periods_coalesce(on: Harness) -> None:
    on.start_timer(PERIODIC | 0x31, 300_000)
    on.at(3_150_000)
    assert on.apic.acknowledge() == 0x31
    assert on.apic.pending_vector() is None
    assert on.apic.deadline() == 3_300_000


def test_periodic_minimum_period(on: Harness) -> None:
    on.start_timer(PERIODIC | 0x31, 1000)
    assert on.apic.deadline() == 200_000  # KVM's 200 us floor
    on.clock.set(100_000)
    assert on.read(TMCCT) == 100_000  # counts in the clamped period
    on.start_timer(0x31, 1000)
    assert on.apic.deadline() == 100_000 + 1000  # one-shot: no floor


def test_switch_one_shot_to_periodic_keeps_counting(on: Harness) -> None:
    on.start_timer(0x32, 250_000)
    on.clock.set(100_000)
    on.write(LVTT, PERIODIC | 0x32)
    on.at(250_000)
    assert on.bit(IRR, 0x32)
    assert on.apic.deadline() == 500_000


def test_masked_timer_counts_without_interrupting(on: Harness) -> None:
    on.start_timer(MASKED | 0x30, 1000)
    on.clock.set(300)
    assert on.read(TMCCT) == 700
    on.at(1000)
    assert on.apic.pending_vector() is None
    assert not on.bit(IRR, 0x30)
    assert on.apic.deadline() is None


def test_initial_count_zero_stops_the_timer(on: Harness) -> None:
    on.start_timer(0x30, 1000)
    on.write(TMICT, 0)
    assert on.apic.deadline() is None
    assert on.read(TMCCT) == 0


def test_tsc_deadline_timer() -> None:
    h = Harness(tsc_hz=2_000_000_000)
    h.enable()
    h.clock.set(1000)
    assert h.apic.tsc() == 2000
    h.write(LVTT, TSC_DEADLINE | 0x33)
    h.apic.write_tsc_deadline(5001)
    assert h.apic.read_tsc_deadline() == 5001
    assert h.apic.deadline() == 2501  # the first ns the TSC reaches 5001
    h.write(TMICT, 100)  # ignored in TSC-deadline mode
    assert h.read(TMICT) == 0
    assert h.read(TMCCT) == 0
    h.at(2500)
    assert not h.bit(IRR, 0x33)
    h.at(2501)
    assert h.bit(IRR, 0x33)
    assert h.apic.read_tsc_deadline() == 0
    assert h.apic.deadline() is None


def test_tsc_deadline_disarm_and_past_deadline(on: Harness) -> None:
    on.write(LVTT, TSC_DEADLINE | 0x33)
    on.apic.write_tsc_deadline(10_000)
    on.apic.write_tsc_deadline(0)
    assert on.apic.deadline() is None
    on.at(20_000)
    assert not on.bit(IRR, 0x33)
    on.apic.write_tsc_deadline(15_000)  # already past: fires at once
    assert on.bit(IRR, 0x33)
    assert on.apic.read_tsc_deadline() == 0


def test_tsc_deadline_needs_its_mode(on: Harness) -> None:
    on.write(LVTT, 0x33)
    on.apic.write_tsc_deadline(10_000)
    assert on.apic.read_tsc_deadline() == 0
    assert on.apic.deadline() is None
    on.start_timer(0x33, 5000)
    on.write(LVTT, TSC_DEADLINE | 0x33)  # entering TSC-deadline mode stops the count
    assert on.read(TMICT) == 0
    assert on.apic.deadline() is None
    on.apic.write_tsc_deadline(10_000)
    on.write(LVTT, 0x33)  # leaving it drops the deadline
    assert on.apic.deadline() is None
    on.write(LVTT, TSC_DEADLINE | 0x33)
    assert on.apic.read_tsc_deadline() == 0


# -- state --------------------------------------------------------------------------------------


def test_get_state_fills_the_current_count(on: Harness) -> None:
    on.write(TPR, 0x20)
    on.write(LDR, 0x01000000)
    on.fixed(0x44)
    on.start_timer(0x30, 10_000)
    on.clock.set(4000)
    state = on.apic.get_state()
    assert len(state.regs) == 1024
    assert state.register(TMCCT) == 6000
    assert state.register(TMICT) == 10_000
    assert state.register(SVR) == 0x1FF
    assert state.register(IRR + 0x20) == 1 << 4
    assert state.register(VER) == 0x50014
    assert state.register(LDR) == 0x01000000


def test_state_round_trip_and_timer_continues() -> None:
    source = Harness(apic_id=1)
    source.enable()
    source.write(TPR, 0x10)
    source.fixed(0x44, level=True)
    source.start_timer(0x30, 10_000)
    source.clock.set(4000)
    state = source.apic.get_state()

    target = Harness(apic_id=1, now=1_000_000)
    target.apic.set_state(state.with_register(VER, 0))
    assert target.apic.get_state() == state.with_register(TMCCT, 6000)
    assert target.read(VER) == 0x50014
    assert target.apic.pending_vector() == 0x44
    assert target.bit(TMR, 0x44)
    assert target.apic.deadline() == 1_006_000
    target.at(1_006_000)
    assert target.bit(IRR, 0x30)
    assert target.read(TMCCT) == 0


def test_periodic_timer_continues_after_set_state(on: Harness) -> None:
    on.start_timer(PERIODIC | 0x31, 300_000)
    on.clock.set(100_000)
    state = on.apic.get_state()
    assert state.register(TMCCT) == 200_000
    other = Harness(now=50)
    other.apic.set_state(state)
    assert other.apic.deadline() == 200_050
    other.at(200_050)
    assert other.apic.acknowledge() == 0x31
    assert other.apic.deadline() == 500_050


def test_restoring_an_expired_one_shot_fires_again_as_on_kvm(on: Harness) -> None:
    on.start_timer(0x30, 1000)
    on.at(1000)
    on.apic.acknowledge()
    on.write(EOI, 0)
    state = on.apic.get_state()
    assert state.register(TMCCT) == 0
    other = Harness(now=2000)
    other.apic.set_state(state)
    assert other.bit(IRR, 0x30)


def test_tsc_deadline_survives_set_state(on: Harness) -> None:
    on.write(LVTT, TSC_DEADLINE | 0x33)
    on.apic.write_tsc_deadline(9000)
    on.apic.set_state(on.apic.get_state())
    assert on.apic.deadline() == 9000
    assert on.apic.get_state().register(TMCCT) == 0


def test_set_state_rejects_a_short_page(h: Harness) -> None:
    with pytest.raises(InvalidArgument):
        h.apic.set_state(Lapic(bytes(512)))


def test_init_reset_keeps_id_and_base_power_on_restores_them() -> None:
    ap = Harness(apic_id=2)
    ap.enable()
    ap.write(ID, 0x09000000)
    ap.write(TPR, 0x40)
    ap.fixed(0x50)
    ap.start_timer(0x30, 1000)
    ap.apic.nmi_pending = True
    ap.apic.set_apic_base(0xFED00800)
    ap.apic.reset(bsp=False, init=True)
    assert ap.read(ID) == 0x09000000
    assert ap.apic.apic_base == 0xFED00800
    assert ap.read(SVR) == 0xFF
    assert ap.read(TPR) == 0
    assert ap.read(IRR + 0x20) == 0
    assert ap.apic.deadline() is None
    assert not ap.apic.nmi_pending
    ap.apic.reset(bsp=False)
    assert ap.read(ID) == 0x02000000
    assert ap.apic.apic_base == 0xFEE00800


# -- x2APIC -------------------------------------------------------------------------------------


def x2apic(apic_id: int) -> Harness:
    """A software-enabled APIC switched to x2APIC mode (its vCPU's CPUID allows it)."""
    harness = Harness(apic_id=apic_id)
    harness.apic.x2apic_allowed = True
    harness.apic.set_apic_base(0xFEE00C00)
    assert harness.apic.msr_write(0x80F, 0x1FF)
    return harness


def test_x2apic_needs_cpuid_and_the_xapic_enable_bit(h: Harness) -> None:
    with pytest.raises(InvalidArgument, match="reserved"):
        h.apic.set_apic_base(0xFEE00D00)
    h.apic.x2apic_allowed = True
    with pytest.raises(InvalidArgument, match="without the APIC"):
        h.apic.set_apic_base(0xFEE00500)
    h.apic.set_apic_base(0xFEE00D00)
    assert h.apic.x2apic_mode


def test_x2apic_id_and_ldr_come_from_the_vcpu_id() -> None:
    ap = x2apic(0x23)
    assert ap.apic.msr_read(0x802) == 0x23
    assert ap.apic.msr_read(0x80D) == 0x00020008  # cluster 2, member bit 3
    assert not ap.apic.msr_write(0x802, 0x5) and not ap.apic.msr_write(0x80D, 0)  # read-only: #GP
    assert ap.apic.get_state().register(ID) == 0x23000000  # KVM_GET_LAPIC without X2APIC_API
    ap.apic.set_apic_base(0xFEE00800)  # back to xAPIC (the host may): the xAPIC ID again
    assert ap.read(ID) == 0x23000000 and ap.apic.msr_read(0x802) is None


def test_x2apic_msr_access_rules() -> None:
    x = x2apic(1)
    assert x.read(VER) == 0xFFFFFFFF  # the MMIO window is a hole in x2APIC mode
    x.write(TPR, 0x30)
    assert x.apic.msr_read(0x808) == 0
    assert x.apic.msr_write(0x808, 0x30) and x.apic.msr_read(0x808) == 0x30
    for absent in (0x809, 0x80E, 0x831, 0x80B, 0x83F, 0x840, 0x8FF):  # ARBPRI DFR ICR2, write-only EOI SELF_IPI, beyond
        assert x.apic.msr_read(absent) is None
    assert x.apic.msr_read(0x803) == 0x50014
    assert not x.apic.msr_write(0x803, 0) and not x.apic.msr_write(0x80A, 0)  # read-only: #GP
    assert not x.apic.msr_write(0x808, 1 << 32)  # bits 63:32 reserved
    assert x.apic.msr_write(0x828, 0) and not x.apic.msr_write(0x828, 1)  # ESR: only 0
    assert not x.apic.msr_write(0x83F, 0x130)  # SELF_IPI: bits above the vector reserved
    assert not x.apic.msr_write(0x830, 1 << 13 | 0x40)  # a reserved ICR bit


def test_x2apic_ipis_carry_32_bit_destinations() -> None:
    x = x2apic(1)
    assert x.apic.msr_write(0x830, 0x0000_0102_0000_4841)  # fixed 0x41, logical, to cluster 1 member 1
    assert x.apic.msr_read(0x830) == 0x0000_0102_0000_4841
    assert x.apic.get_state().register(ICR2) == 0x102  # ICR bits 63:32, as KVM_GET_LAPIC splits it
    assert x.apic.msr_write(0x83F, 0x42)
    assert x.sent == [
        InterruptMessage(0x41, DeliveryMode.FIXED, 0x102, True, False, True, Shorthand.NONE, 1),
        InterruptMessage(0x42, DeliveryMode.FIXED, 0, False, False, False, Shorthand.SELF, 1),
    ]


def test_x2apic_destinations() -> None:
    x = x2apic(0x12)
    assert x.apic.matches(0x12, logical=False) and not x.apic.matches(0x13, logical=False)
    assert x.apic.matches(0xFFFFFFFF, logical=False)
    assert x.apic.matches(0xFF, logical=False)  # an IOAPIC / MSI broadcast: KVM's x2APIC broadcast quirk
    assert not x.apic.matches(0xFF, logical=False, ipi=True)  # an IPI's 0xff is ID 0xff
    assert x.apic.matches(0x10004, logical=True)  # cluster 1, member bit 2
    assert not x.apic.matches(0x4, logical=True) and not x.apic.matches(0x10008, logical=True)
    assert x.apic.msr_write(0x80F, 0xFF)
    assert not x.apic.matches(0x10004, logical=True)  # software-disabled: out of the logical map
