"""The 8254 PIT as KVM models it, programmed through its ports on a virtual clock."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hvcore import InvalidArgument
from hvcore.types import PIT_FLAGS_HPET_LEGACY, PIT_FLAGS_SPEAKER_DATA_ON, PitChannelState, PitState
from hvcore_sim.clock import VirtualClock
from hvcore_sim.irqchip.pit import FREQUENCY_HZ, Pit

CH0, CH1, CH2, CONTROL, SPEAKER = 0x40, 0x41, 0x42, 0x43, 0x61
DIVISOR_100HZ = 11932
PERIOD_100HZ = 10_000_150  # 11932 * 1e9 // 1193182 ns, KVM's rounding
SECOND = 1_000_000_000


def at_ticks(ticks: int) -> int:
    """The first clock time (ns) at which ``ticks`` input clock ticks have elapsed."""
    return -(-ticks * SECOND // FREQUENCY_HZ)


class Line:
    """IRQ 0 as the PIT drives it: every level change, and the rising edges."""

    def __init__(self) -> None:
        self.changes: list[tuple[int, bool]] = []

    def __call__(self, irq: int, level: bool) -> None:
        self.changes.append((irq, level))

    @property
    def edges(self) -> int:
        return sum(1 for _, level in self.changes if level)


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def line() -> Line:
    return Line()


@pytest.fixture
def pit(clock: VirtualClock, line: Line) -> Pit:
    return Pit(clock, line)


def program(pit: Pit, channel: int, mode: int, count: int, *, bcd: bool = False) -> None:
    """Control word with LSB-then-MSB access, then the two count bytes."""
    pit.write_port(CONTROL, channel << 6 | 0x30 | mode << 1 | int(bcd))
    pit.write_port(CH0 + channel, count & 0xFF)
    pit.write_port(CH0 + channel, count >> 8 & 0xFF)


def read_word(pit: Pit, channel: int) -> int:
    low = pit.read_port(CH0 + channel)
    return low | pit.read_port(CH0 + channel) << 8


def latched(pit: Pit, channel: int) -> int:
    pit.write_port(CONTROL, channel << 6)
    return read_word(pit, channel)


def run_until(pit: Pit, clock: VirtualClock, end: int, *, ack: bool = True) -> None:
    """Fire every expiry up to ``end`` at its own time, the guest acknowledging each tick if ``ack``."""
    while (deadline := pit.deadline()) is not None and deadline <= end:
        clock.set(deadline)
        pit.advance(deadline)
        if ack:
            pit.acked()
    clock.set(end)
    pit.advance(end)


def test_creation_state_is_kvms(clock: VirtualClock, line: Line) -> None:
    clock.set(5000)
    pit = Pit(clock, line)
    state = pit.get_state()
    assert state.flags == 0
    assert [c.mode for c in state.channels] == [0xFF, 0xFF, 0xFF]
    assert [c.count for c in state.channels] == [0x10000] * 3
    assert [c.gate for c in state.channels] == [1, 1, 0]
    assert [c.count_load_time for c in state.channels] == [0, 5000, 5000]  # KVM never stamps channel 0
    assert pit.deadline() is None
    clock.set(SECOND)
    pit.advance(SECOND)
    assert line.changes == []


@pytest.mark.parametrize("mode", [2, 3])
def test_100hz_periodic_modes_tick_exactly(pit: Pit, clock: VirtualClock, line: Line, mode: int) -> None:
    program(pit, 0, mode, DIVISOR_100HZ)
    assert pit.deadline() == PERIOD_100HZ
    run_until(pit, clock, SECOND)
    assert line.edges == SECOND // PERIOD_100HZ == 99
    assert line.changes == [(0, True), (0, False)] * 99  # IRQ 0 raised and lowered per tick
    assert pit.deadline() == 100 * PERIOD_100HZ
    run_until(pit, clock, 100 * PERIOD_100HZ)
    assert line.edges == 100
    assert pit.pending == 0


def test_mode_0_fires_once(pit: Pit, clock: VirtualClock, line: Line) -> None:
    program(pit, 0, 0, 1193)
    assert pit.deadline() == 999_847
    clock.set(999_846)
    pit.advance(999_846)
    assert line.edges == 0
    run_until(pit, clock, SECOND)
    assert line.edges == 1
    assert pit.deadline() is None


@pytest.mark.parametrize(("mode", "deadline"), [(1, 999_847), (4, 999_847), (5, None)])
def test_other_modes_timer_as_kvm(pit: Pit, clock: VirtualClock, line: Line, mode: int, deadline: int | None) -> None:
    program(pit, 0, mode, 1193)
    assert pit.deadline() == deadline
    run_until(pit, clock, SECOND)
    assert line.edges == (0 if deadline is None else 1)


def test_periodic_period_is_clamped_after_the_first_tick(pit: Pit, clock: VirtualClock, line: Line) -> None:
    program(pit, 0, 2, 2)
    assert pit.deadline() == 1676  # the first expiry keeps the requested interval, as KVM's hrtimer_start
    run_until(pit, clock, 1676)
    assert pit.deadline() == 1676 + 200_000
    run_until(pit, clock, 1676 + 200_000 * 10)
    assert line.edges == 11


def test_count_0_means_65536(pit: Pit) -> None:
    program(pit, 0, 2, 0)
    assert pit.get_state().channels[0].count == 0x10000
    assert pit.deadline() == 65536 * SECOND // FREQUENCY_HZ


def test_count_reads_back_decreasing(pit: Pit, clock: VirtualClock) -> None:
    program(pit, 0, 2, DIVISOR_100HZ)
    assert read_word(pit, 0) == DIVISOR_100HZ
    clock.set(5_000_000)
    assert read_word(pit, 0) == DIVISOR_100HZ - 5965  # 5 ms of 1193182 Hz ticks
    clock.set(9_000_000)
    assert read_word(pit, 0) == DIVISOR_100HZ - 9_000_000 * FREQUENCY_HZ // SECOND
    run_until(pit, clock, PERIOD_100HZ + 5_000_000)
    assert read_word(pit, 0) == DIVISOR_100HZ - 5965  # mode 2 reloads every period


def test_mode_3_counts_down_twice_as_fast(pit: Pit, clock: VirtualClock) -> None:
    program(pit, 2, 3, 1000)
    clock.set(at_ticks(100))
    assert read_word(pit, 2) == 800


def test_latch_freezes_the_count_until_read(pit: Pit, clock: VirtualClock) -> None:
    program(pit, 2, 0, 50000)
    clock.set(1_000_000)
    pit.write_port(CONTROL, 0x80)  # latch channel 2
    clock.set(2_000_000)
    pit.write_port(CONTROL, 0x80)  # ignored: a latch is already held
    assert pit.get_state().channels[2].count_latched == 3
    assert read_word(pit, 2) == 50000 - 1193
    assert read_word(pit, 2) == 50000 - 2386  # live again


def test_access_modes_lsb_msb(pit: Pit, clock: VirtualClock) -> None:
    pit.write_port(CONTROL, 0x90)  # channel 2, LSB only, mode 0
    pit.write_port(CH2, 0x50)
    assert pit.get_state().channels[2].count == 0x50
    assert pit.read_port(CH2) == 0x50
    assert pit.read_port(CH2) == 0x50  # LSB only: no byte flip-flop
    pit.write_port(CONTROL, 0xA0)  # MSB only
    pit.write_port(CH2, 0x12)
    assert pit.get_state().channels[2].count == 0x1200
    clock.set(1_000_000)
    assert pit.read_port(CH2) == (0x1200 - 1193) >> 8
    pit.write_port(CONTROL, 0x80)
    assert pit.read_port(CH2) == (0x1200 - 1193) >> 8  # latched count, MSB only, then live
    assert pit.get_state().channels[2].count_latched == 0


def test_word_write_is_loaded_on_the_second_byte(pit: Pit) -> None:
    pit.write_port(CONTROL, 0x34)
    pit.write_port(CH0, 0x9C)
    assert pit.deadline() is None
    assert pit.get_state().channels[0].write_state == 4
    pit.write_port(CH0, 0x2E)
    assert pit.deadline() == PERIOD_100HZ


def test_read_back_command_latches_status_then_count(pit: Pit, clock: VirtualClock) -> None:
    program(pit, 0, 2, DIVISOR_100HZ)
    program(pit, 2, 0, 1000)
    clock.set(2_000_000)
    pit.write_port(CONTROL, 0xCA)  # read-back, count and status, channels 0 and 2
    assert pit.read_port(CH0) == 0x34  # OUT low, LSB+MSB, mode 2, binary
    assert read_word(pit, 0) == DIVISOR_100HZ - 2386
    assert pit.read_port(CH2) == 0xB0  # OUT high (mode 0 reached terminal count), LSB+MSB, mode 0
    assert read_word(pit, 2) == (1000 - 2386) & 0xFFFF  # mode 0 wraps around
    assert pit.get_state().channels[1].status_latched == 0
    pit.write_port(CONTROL, 0xE4)  # status only, channel 1
    assert pit.read_port(CH1) == 0xFE  # KVM's reset mode 0xff shifted left, kept to 8 bits
    assert pit.get_state().channels[1].count_latched == 0


def test_bcd_is_reported_but_counting_is_binary(pit: Pit) -> None:
    program(pit, 0, 2, 0x0099, bcd=True)
    state = pit.get_state().channels[0]
    assert (state.bcd, state.count) == (1, 0x99)
    assert pit.deadline() == 153 * SECOND // FREQUENCY_HZ
    pit.write_port(CONTROL, 0xE2)
    assert pit.read_port(CH0) & 0x0F == 0x05  # mode 2, BCD


def test_control_word_modes_6_and_7_are_2_and_3(pit: Pit) -> None:
    pit.write_port(CONTROL, 0xBC)  # channel 2, mode 6
    assert pit.get_state().channels[2].mode == 2
    pit.write_port(CONTROL, 0xBE)
    assert pit.get_state().channels[2].mode == 3


def test_control_word_does_not_stop_channel_0(pit: Pit) -> None:
    program(pit, 0, 2, DIVISOR_100HZ)
    pit.write_port(CONTROL, 0x30)  # KVM keeps the timer until a count is written
    assert pit.deadline() == PERIOD_100HZ


def test_port_61_gate_speaker_refresh(pit: Pit, clock: VirtualClock) -> None:
    assert pit.read_port(SPEAKER) == 0x00
    pit.write_port(SPEAKER, 0x03)
    assert pit.read_port(SPEAKER) & 0x03 == 0x03
    assert pit.get_state().flags == PIT_FLAGS_SPEAKER_DATA_ON
    assert pit.get_state().channels[2].gate == 1
    pit.write_port(SPEAKER, 0x01)
    assert pit.read_port(SPEAKER) & 0x03 == 0x01
    assert pit.get_state().flags == 0
    clock.set(1 << 14)
    assert pit.read_port(SPEAKER) & 0x10
    clock.set(2 << 14)
    assert not pit.read_port(SPEAKER) & 0x10


def test_port_61_out2_mode_0(pit: Pit, clock: VirtualClock) -> None:
    pit.write_port(SPEAKER, 0x01)
    program(pit, 2, 0, 1000)
    clock.set(at_ticks(999))
    assert not pit.read_port(SPEAKER) & 0x20
    clock.set(at_ticks(1000))
    assert pit.read_port(SPEAKER) & 0x20


def test_port_61_out2_mode_3_square_wave_and_gate_restart(pit: Pit, clock: VirtualClock) -> None:
    program(pit, 2, 3, 1000)
    clock.set(at_ticks(499))
    assert pit.read_port(SPEAKER) & 0x20  # first half high
    clock.set(at_ticks(500))
    assert not pit.read_port(SPEAKER) & 0x20  # second half low
    pit.write_port(SPEAKER, 0x01)  # rising gate restarts mode 3
    assert pit.get_state().channels[2].count_load_time == at_ticks(500)
    assert pit.read_port(SPEAKER) & 0x20
    assert read_word(pit, 2) == 1000
    pit.write_port(SPEAKER, 0x00)
    clock.set(at_ticks(600))
    pit.write_port(SPEAKER, 0x01)
    assert pit.get_state().channels[2].count_load_time == at_ticks(600)


def test_gate_does_not_restart_mode_0(pit: Pit, clock: VirtualClock) -> None:
    program(pit, 2, 0, 1000)
    clock.set(10_000)
    pit.write_port(SPEAKER, 0x01)
    assert pit.get_state().channels[2].count_load_time == 0


def test_reinjection_delivers_missed_ticks_one_per_ack(pit: Pit, clock: VirtualClock, line: Line) -> None:
    program(pit, 0, 2, DIVISOR_100HZ)
    run_until(pit, clock, 5 * PERIOD_100HZ, ack=False)
    assert line.edges == 1  # the first tick was never acknowledged
    assert pit.pending == 5
    for delivered in range(2, 6):
        pit.acked()
        assert line.edges == delivered
    pit.acked()
    assert pit.pending == 0
    assert line.edges == 5
    pit.acked()  # a stray ack injects nothing
    assert line.edges == 5


def test_expiries_due_together_count_as_missed_ticks(pit: Pit, clock: VirtualClock, line: Line) -> None:
    program(pit, 0, 2, DIVISOR_100HZ)
    clock.set(3 * PERIOD_100HZ)
    pit.advance(3 * PERIOD_100HZ)
    assert (line.edges, pit.pending) == (1, 3)
    assert pit.deadline() == 4 * PERIOD_100HZ
    pit.acked()
    pit.acked()
    assert line.edges == 3


def test_unmask_forgets_missed_ticks(pit: Pit, clock: VirtualClock, line: Line) -> None:
    program(pit, 0, 2, DIVISOR_100HZ)
    run_until(pit, clock, 4 * PERIOD_100HZ, ack=False)
    pit.irq_mask_changed(masked=True)
    assert pit.pending == 4
    pit.irq_mask_changed(masked=False)
    assert pit.pending == 0
    run_until(pit, clock, 5 * PERIOD_100HZ, ack=False)
    assert line.edges == 2  # the unmask also allowed the next tick without an ack


def test_without_reinjection_every_expiry_injects(pit: Pit, clock: VirtualClock, line: Line) -> None:
    pit.set_reinject(False)
    program(pit, 0, 2, DIVISOR_100HZ)
    run_until(pit, clock, 5 * PERIOD_100HZ, ack=False)
    assert (line.edges, pit.pending) == (5, 0)


def test_reloading_channel_0_resets_reinjection(pit: Pit, clock: VirtualClock, line: Line) -> None:
    program(pit, 0, 2, DIVISOR_100HZ)
    run_until(pit, clock, 3 * PERIOD_100HZ, ack=False)
    program(pit, 0, 2, DIVISOR_100HZ)
    assert pit.pending == 0
    assert pit.deadline() == 4 * PERIOD_100HZ
    run_until(pit, clock, 4 * PERIOD_100HZ, ack=False)
    assert line.edges == 2


def test_hpet_legacy_silences_irq_0(pit: Pit, clock: VirtualClock, line: Line) -> None:
    program(pit, 0, 2, DIVISOR_100HZ)
    pit.set_state(replace(pit.get_state(), flags=PIT_FLAGS_HPET_LEGACY))
    assert pit.deadline() is None
    program(pit, 0, 2, 1000)  # the guest programs channel 0: no timer while the HPET has IRQ 0
    assert pit.deadline() is None
    assert pit.get_state().channels[0].count == 1000
    run_until(pit, clock, SECOND)
    assert line.edges == 0
    pit.set_state(replace(pit.get_state(), flags=0))
    assert pit.deadline() == SECOND + 1000 * SECOND // FREQUENCY_HZ
    run_until(pit, clock, 2 * SECOND)
    assert line.edges > 0


def test_state_round_trip_and_behaviour_continues(clock: VirtualClock) -> None:
    line, copy_line = Line(), Line()
    pit = Pit(clock, line)
    program(pit, 0, 2, DIVISOR_100HZ)
    program(pit, 2, 3, 2000, bcd=True)
    pit.write_port(SPEAKER, 0x03)
    pit.write_port(CONTROL, 0x80)  # a latched count travels with the state
    pit.write_port(CONTROL, 0x70)  # channel 1 half-way through a word write
    pit.write_port(CH1, 0x34)
    state = pit.get_state()

    copy = Pit(clock, copy_line)
    copy.set_state(state)
    assert copy.get_state() == state
    assert copy.deadline() == pit.deadline()
    for timer, irq in ((pit, line), (copy, copy_line)):
        assert read_word(timer, 2) == 2000
        timer.write_port(CH1, 0x12)
        assert timer.get_state().channels[1].count == 0x1234
        run_until(timer, clock, 10 * PERIOD_100HZ)
        clock.set(0)
        assert irq.edges == 10
    assert copy.get_state() == pit.get_state()


def test_set_state_restarts_counting_as_kvm(pit: Pit, clock: VirtualClock) -> None:
    program(pit, 0, 2, DIVISOR_100HZ)
    program(pit, 2, 0, 50000)
    clock.set(3_000_000)
    state = pit.get_state()
    pit.set_state(state)
    restored = pit.get_state()
    assert restored.channels[2].count_load_time == 3_000_000  # KVM stamps channels 1 and 2 anew
    assert restored.channels[0] == state.channels[0]
    assert read_word(pit, 2) == 50000
    assert pit.deadline() == 3_000_000 + PERIOD_100HZ  # channel 0's timer starts over


def test_reset(pit: Pit, clock: VirtualClock) -> None:
    initial = pit.get_state()
    program(pit, 0, 2, DIVISOR_100HZ)
    program(pit, 1, 3, 100)
    pit.write_port(SPEAKER, 0x03)
    pit.reset()
    assert pit.get_state() == initial
    assert pit.deadline() is None
    assert pit.pending == 0


def test_read_of_the_control_port(pit: Pit) -> None:
    assert pit.read_port(CONTROL) == 0


def test_bad_arguments(pit: Pit) -> None:
    with pytest.raises(InvalidArgument):
        pit.read_port(0x44)
    with pytest.raises(InvalidArgument):
        pit.write_port(0x60, 0)
    with pytest.raises(InvalidArgument):
        pit.write_port(CH0, 0x100)
    bad_channel = replace(PitChannelState(), count=1 << 32)
    with pytest.raises(InvalidArgument):
        pit.set_state(PitState(channels=(bad_channel, PitChannelState(), PitChannelState())))
    with pytest.raises(InvalidArgument):
        pit.set_state(PitState(channels=(replace(PitChannelState(), mode=256), PitChannelState(), PitChannelState())))
    assert pit.get_state().channels[0].mode == 0xFF
