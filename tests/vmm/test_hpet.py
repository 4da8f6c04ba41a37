"""The HPET (``hvcore.vmm.devices.Hpet``): its registers on a hand-driven clock, then guests on every backend.

The register tests drive the device directly with a clock that moves only when the test says
so and device timers without a thread (``run_due()`` fires what is due), so every expiry lands
at an exact tick. The guest tests put it on a ``Machine`` with the PC devices, where it counts
the VM clock and fires from the machine's timer thread.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hvcore import Hypervisor
from hvcore.types import PIT_FLAGS_HPET_LEGACY
from hvcore.vmm.bus import Bus
from hvcore.vmm.device import DeviceHost, IrqLine
from hvcore.vmm.devices import Hpet
from hvcore.vmm.loaders import BootPlan
from hvcore.vmm.machine import Machine, MachineResult
from hvcore.vmm.pc import add_pc_devices
from hvcore.vmm.timers import DeviceTimers
from tests.boot import map_apic_window
from tests.guests.hpet import HPET_COUNTER_READS, HPET_EXIT_STATUS, HPET_PERIODIC_IRQ, VARS
from tests.guests.layout import CODE, STACK_TOP

CAPS, CONFIG, STATUS, COUNTER = 0x000, 0x010, 0x020, 0x0F0
ENABLE, LEGACY = 1, 2
LEVEL, INT_ENB, PERIODIC, PER_CAP, SIZE_CAP, VAL_SET, MODE32 = 0x2, 0x4, 0x8, 0x10, 0x20, 0x40, 0x100
NS_PER_TICK = 10


def tn_config(n: int) -> int:
    return 0x100 + 0x20 * n


def tn_comparator(n: int) -> int:
    return 0x108 + 0x20 * n


def route(gsi: int) -> int:
    return gsi << 9


class ManualClock:
    """Nanoseconds that move only when the test says so."""

    def __init__(self) -> None:
        self.ns = 0

    def __call__(self) -> int:
        return self.ns


class RecordingLine:
    """An IrqLine that records every change: True/False for set, "pulse" for an edge."""

    def __init__(self) -> None:
        self.events: list[bool | str] = []
        self.level = False

    def set(self, level: bool) -> None:
        self.events.append(level)
        self.level = level

    def pulse(self) -> None:
        self.events.append("pulse")

    @property
    def pulses(self) -> int:
        return self.events.count("pulse")


class Rig:
    """An HPET on a hand-driven clock, with its lines and PIT legacy calls recorded."""

    def __init__(self, *, irqchip: bool = True) -> None:
        self.clock = ManualClock()
        self.timers = DeviceTimers(self.clock, threaded=False)
        self.lines: dict[int, RecordingLine] = {}
        self.pit_legacy: list[bool] = []
        self.irqchip = irqchip
        host = DeviceHost(irq=self._irq, request_stop=lambda request: None, timers=self.timers)
        self.hpet = Hpet(host, pit_legacy=self.pit_legacy.append)

    def _irq(self, gsi: int) -> IrqLine | None:
        return self.lines.setdefault(gsi, RecordingLine()) if self.irqchip else None

    def line(self, gsi: int) -> RecordingLine:
        return self.lines.setdefault(gsi, RecordingLine())

    def read(self, offset: int, size: int = 4) -> int:
        return self.hpet.read(offset, size)

    def write(self, offset: int, value: int, size: int = 4) -> None:
        self.hpet.write(offset, size, value)

    def at(self, ns: int) -> int:
        """Move the clock to ``ns`` and run the expiry callbacks due by then; how many ran."""
        self.clock.ns = ns
        return self.timers.run_due()

    def at_tick(self, tick: int) -> int:
        """``at()`` the time the counter, enabled at time 0 from 0, reads ``tick``."""
        return self.at(tick * NS_PER_TICK)


@pytest.fixture
def rig() -> Rig:
    return Rig()


# -- general registers --------------------------------------------------------------------------


def test_capabilities_and_id(rig: Rig) -> None:
    low = rig.read(CAPS)
    assert low == 0x8086A201  # vendor 8086, LEG_RT_CAP, COUNT_SIZE_CAP, NUM_TIM_CAP 2 (3 timers), rev 1
    assert rig.read(CAPS + 4) == 10_000_000  # 10 ns in femtoseconds, as QEMU
    assert rig.read(CAPS, 8) == 10_000_000 << 32 | low
    rig.write(CAPS, 0, 8)  # read-only
    assert rig.read(CAPS, 8) == 10_000_000 << 32 | low
    assert rig.read(CONFIG, 8) == 0 and rig.read(STATUS, 8) == 0 and rig.read(COUNTER, 8) == 0


def test_general_configuration_keeps_only_enable_and_legacy(rig: Rig) -> None:
    rig.write(CONFIG, 0xFFFF_FFFF_FFFF_FFFC, 8)
    assert rig.read(CONFIG, 8) == 0
    rig.write(CONFIG, ENABLE | LEGACY | 0xF0)
    assert rig.read(CONFIG, 8) == ENABLE | LEGACY
    rig.write(CONFIG + 4, 0xFFFF_FFFF)  # the reserved high half
    assert rig.read(CONFIG, 8) == ENABLE | LEGACY


def test_counter_counts_only_while_enabled(rig: Rig) -> None:
    rig.at(5_000)
    assert rig.read(COUNTER, 8) == 0  # halted at reset
    rig.write(CONFIG, ENABLE)
    rig.at(5_000 + 1_000)
    assert rig.read(COUNTER, 8) == 100  # 1 us: 100 ticks of 10 ns
    rig.at(5_000 + 1_009)
    assert rig.read(COUNTER, 8) == 100  # a tick is 10 ns
    rig.write(CONFIG, 0)
    rig.at(10**9)
    assert rig.read(COUNTER, 8) == 100  # halted: holds its value
    rig.write(CONFIG, ENABLE)
    rig.at(10**9 + 50)
    assert rig.read(COUNTER, 8) == 105  # and goes on from there, no jump


def test_counter_reads_as_32_and_64_bits_across_the_carry(rig: Rig) -> None:
    rig.write(COUNTER, 0xFFFF_FFF0)
    rig.write(CONFIG, ENABLE)
    rig.at(1_000)  # +100 ticks: the low half wrapped into the high half
    assert rig.read(COUNTER, 8) == 0x1_0000_0054
    assert rig.read(COUNTER) == 0x54
    assert rig.read(COUNTER + 4) == 1


def test_counter_writes_take_only_while_halted(rig: Rig) -> None:
    rig.write(COUNTER, 0x1_2345_6789, 8)
    assert rig.read(COUNTER, 8) == 0x1_2345_6789
    rig.write(COUNTER + 4, 0xAB)  # the high half alone
    assert rig.read(COUNTER, 8) == 0xAB_2345_6789
    rig.write(COUNTER, 0x10)  # the low half alone
    assert rig.read(COUNTER, 8) == 0xAB_0000_0010
    rig.write(CONFIG, ENABLE)
    rig.write(COUNTER, 0, 8)  # running: dropped
    rig.at(100)
    assert rig.read(COUNTER, 8) == 0xAB_0000_0010 + 10


# -- timers ---------------------------------------------------------------------------------------


def test_timer_capabilities_and_reset_state(rig: Rig) -> None:
    for n in range(3):
        assert rig.read(tn_config(n)) == PER_CAP | SIZE_CAP
        assert rig.read(tn_config(n) + 4) == 0x00FF_0104  # INT_ROUTE_CAP: IOAPIC pins 2, 8, 16-23
        assert rig.read(tn_comparator(n), 8) == 0xFFFF_FFFF_FFFF_FFFF
    rig.write(tn_config(0), 0xFFFF_FFFF_FFFF_FFFF, 8)
    # writable: level, enable, periodic, val_set, 32-bit mode, route (31: not in the cap, not taken)
    assert rig.read(tn_config(0), 8) == 0x00FF_0104 << 32 | LEVEL | INT_ENB | PERIODIC | VAL_SET | MODE32 | 0x30


def test_routes_outside_int_route_cap_are_not_taken(rig: Rig) -> None:
    rig.write(tn_config(0), route(16))
    assert rig.read(tn_config(0)) & 0x3E00 == route(16)
    rig.write(tn_config(0), route(5))  # pin 5 is not in INT_ROUTE_CAP: the old route stays
    assert rig.read(tn_config(0)) & 0x3E00 == route(16)
    rig.write(tn_config(0), route(2))
    assert rig.read(tn_config(0)) & 0x3E00 == route(2)


def test_one_shot_edge_timer_pulses_its_line_once(rig: Rig) -> None:
    rig.write(tn_config(0), route(2) | INT_ENB)
    rig.write(tn_comparator(0), 1_000, 8)
    rig.write(CONFIG, ENABLE)
    assert rig.timers.next_deadline() == 1_000 * NS_PER_TICK
    rig.at_tick(999)
    assert rig.line(2).events == []
    rig.at_tick(1_000)
    assert rig.line(2).events == ["pulse"]
    rig.at_tick(10_000)
    assert rig.line(2).events == ["pulse"]  # one-shot
    assert rig.timers.next_deadline() == (2**64 - 1) * NS_PER_TICK  # the others' reset comparators
    assert rig.read(STATUS) == 0  # edge-triggered: no status bit
    assert rig.read(tn_comparator(0), 8) == 1_000


def test_a_comparator_behind_the_counter_fires_at_once(rig: Rig) -> None:
    rig.write(tn_config(1), route(16) | INT_ENB)
    rig.write(CONFIG, ENABLE)
    rig.at_tick(500)
    rig.write(tn_comparator(1), 100, 8)  # already passed, as on QEMU
    assert rig.line(16).events == []  # not before the clock is looked at again
    rig.at_tick(500)
    assert rig.line(16).events == ["pulse"]


def test_register_reads_fire_what_is_due_without_the_callback(rig: Rig) -> None:
    rig.write(tn_config(0), route(2) | INT_ENB)
    rig.write(tn_comparator(0), 100, 8)
    rig.write(CONFIG, ENABLE)
    rig.clock.ns = 200 * NS_PER_TICK  # the timer thread has not run yet
    rig.read(STATUS)
    assert rig.line(2).pulses == 1
    rig.timers.run_due()  # the late callback finds nothing more to do
    assert rig.line(2).pulses == 1


def test_periodic_timer_accumulates_its_comparator(rig: Rig) -> None:
    rig.write(tn_config(2), route(16) | INT_ENB | PERIODIC | VAL_SET)
    assert rig.read(tn_config(2)) & VAL_SET
    rig.write(tn_comparator(2), 50_000, 8)  # VAL_SET_CNF: the first expiry (and the period)
    assert not rig.read(tn_config(2)) & VAL_SET  # cleared by the write
    rig.write(tn_comparator(2), 20_000, 8)  # without it: the period only (200 us)
    assert rig.read(tn_comparator(2), 8) == 50_000
    rig.write(CONFIG, ENABLE)
    rig.at_tick(49_999)
    assert rig.line(16).pulses == 0
    rig.at_tick(50_000)
    assert rig.line(16).pulses == 1
    assert rig.read(tn_comparator(2), 8) == 70_000
    rig.at_tick(70_000)
    assert rig.line(16).pulses == 2
    assert rig.read(tn_comparator(2), 8) == 90_000
    rig.at_tick(115_000)  # 90,000 and 110,000 passed unseen: one interrupt for both
    assert rig.line(16).pulses == 3
    assert rig.read(tn_comparator(2), 8) == 130_000
    assert rig.timers.next_deadline() == 130_000 * NS_PER_TICK


def test_periodic_timer_with_no_period_fires_once(rig: Rig) -> None:
    rig.write(tn_config(0), route(2) | INT_ENB | PERIODIC | VAL_SET)
    rig.write(tn_comparator(0), 0, 8)  # comparator 0 and period 0
    rig.write(tn_comparator(0), 0, 8)
    rig.write(CONFIG, ENABLE)
    rig.at_tick(10)
    rig.at_tick(100)
    assert rig.line(2).pulses == 1


def test_periodic_wakeups_are_spaced(rig: Rig) -> None:
    rig.write(tn_config(0), route(2) | INT_ENB | PERIODIC | VAL_SET)
    rig.write(tn_comparator(0), 1, 8)  # every tick: 100 MHz
    rig.write(tn_comparator(0), 1, 8)
    rig.write(CONFIG, ENABLE)
    rig.at(50)  # one wake-up for ticks 1-5
    assert rig.line(2).pulses == 1
    assert rig.timers.next_deadline() == 50 + Hpet.MIN_WAKE_NS  # not tick 6
    rig.at(60)
    assert rig.line(2).pulses == 1
    assert rig.read(tn_comparator(0), 8) == 7  # the register never lags: the read fired tick 6
    assert rig.line(2).pulses == 2


def test_level_triggered_status_is_write_one_to_clear(rig: Rig) -> None:
    rig.write(tn_config(1), route(8) | INT_ENB | LEVEL)
    rig.write(tn_comparator(1), 10, 8)
    rig.write(CONFIG, ENABLE)
    rig.at_tick(10)
    assert rig.read(STATUS) == 0b010
    assert rig.line(8).events == [True]  # held while the status bit is set
    rig.write(STATUS, 0b101)  # other bits: nothing to clear
    assert rig.read(STATUS) == 0b010 and rig.line(8).level
    rig.write(STATUS, 0b010)
    assert rig.read(STATUS) == 0
    assert rig.line(8).events == [True, False]


def test_level_status_without_interrupt_enable_asserts_nothing(rig: Rig) -> None:
    rig.write(tn_config(0), route(16) | LEVEL)
    rig.write(tn_comparator(0), 10, 8)
    rig.write(CONFIG, ENABLE)
    rig.at_tick(10)
    assert rig.read(STATUS) == 1  # the timer still runs and sets its status
    assert rig.line(16).events == []
    rig.write(tn_config(0), route(16) | LEVEL | INT_ENB)
    assert rig.line(16).events == [True]  # enabling the interrupt asserts the pending status
    rig.write(CONFIG, 0)
    assert rig.line(16).events == [True, False]  # halting lowers the line...
    assert rig.read(STATUS) == 1  # ...and keeps the status
    rig.write(CONFIG, ENABLE)
    assert rig.line(16).events == [True, False, True]
    rig.write(tn_config(0), route(16) | INT_ENB)  # level to edge: status cleared, line lowered
    assert rig.read(STATUS) == 0
    assert rig.line(16).events == [True, False, True, False]


def test_level_line_follows_the_route(rig: Rig) -> None:
    rig.write(tn_config(0), route(16) | LEVEL | INT_ENB)
    rig.write(tn_comparator(0), 1, 8)
    rig.write(CONFIG, ENABLE)
    rig.at_tick(1)
    rig.write(tn_config(0), route(17) | LEVEL | INT_ENB)
    assert rig.line(16).events == [True, False]
    assert rig.line(17).events == [True]


def test_32_bit_mode_keeps_32_bits(rig: Rig) -> None:
    rig.write(tn_comparator(0), 0x1_0000_0010, 8)
    rig.write(tn_config(0), MODE32)  # switching truncates the comparator
    assert rig.read(tn_comparator(0), 8) == 0x10
    rig.write(tn_comparator(0), 0x2_0000_0020, 8)
    assert rig.read(tn_comparator(0), 8) == 0x20
    rig.write(tn_comparator(0) + 4, 0xFF)  # the high half: ignored
    assert rig.read(tn_comparator(0), 8) == 0x20


def test_32_bit_one_shot_also_fires_at_the_wrap(rig: Rig) -> None:
    rig.write(COUNTER, 0xFFFF_FF00)
    rig.write(tn_config(0), route(2) | INT_ENB | MODE32)
    rig.write(tn_comparator(0), 0x80)  # past the wrap of the low 32 bits
    rig.write(CONFIG, ENABLE)
    rig.at_tick(0xFF)
    assert rig.line(2).pulses == 0
    rig.at_tick(0x100)  # the counter wraps to 0x1_0000_0000
    assert rig.line(2).pulses == 1
    rig.at_tick(0x17F)
    assert rig.line(2).pulses == 1
    rig.at_tick(0x180)  # low 32 bits match 0x80
    assert rig.line(2).pulses == 2
    rig.at_tick(0x1000)
    assert rig.line(2).pulses == 2


def test_32_bit_periodic_comparator_wraps_with_the_counter(rig: Rig) -> None:
    rig.write(COUNTER, 0xFFFF_FF00)
    rig.write(tn_config(0), route(2) | INT_ENB | MODE32 | PERIODIC | VAL_SET)
    rig.write(tn_comparator(0), 0xFFFF_FFC0)
    rig.write(tn_comparator(0), 0x80)
    rig.write(CONFIG, ENABLE)
    rig.at_tick(0xC0)
    assert rig.line(2).pulses == 1
    assert rig.read(tn_comparator(0), 8) == 0x40  # 0xFFFFFFC0 + 0x80, in 32 bits


def test_legacy_replacement_routes_timers_0_and_1(rig: Rig) -> None:
    for n in range(3):
        rig.write(tn_config(n), route(16 + n) | INT_ENB)
        rig.write(tn_comparator(n), 10 * (n + 1), 8)
    rig.write(CONFIG, ENABLE | LEGACY)
    assert rig.pit_legacy == [True]  # the PIT lets go of IRQ 0
    rig.at_tick(30)
    assert rig.line(0).pulses == 1  # timer 0: IRQ 0, the PIT's line
    assert rig.line(8).pulses == 1  # timer 1: IRQ 8
    assert rig.line(18).pulses == 1  # timer 2: its own route
    assert rig.line(16).pulses == 0 and rig.line(17).pulses == 0
    rig.write(CONFIG, ENABLE)
    assert rig.pit_legacy == [True, False]
    rig.write(CONFIG, ENABLE)  # no change, no call
    assert rig.pit_legacy == [True, False]


def test_a_timer_on_the_reset_route_interrupts_nothing(rig: Rig) -> None:
    rig.write(tn_config(0), INT_ENB)  # route 0: not in INT_ROUTE_CAP
    rig.write(tn_comparator(0), 1, 8)
    rig.write(CONFIG, ENABLE)
    rig.at_tick(1)
    assert all(line.events == [] for line in rig.lines.values())


def test_without_an_irqchip_the_timers_still_count() -> None:
    rig = Rig(irqchip=False)
    rig.write(tn_config(0), route(2) | INT_ENB | LEVEL)
    rig.write(tn_comparator(0), 1, 8)
    rig.write(CONFIG, ENABLE)
    rig.at_tick(1)
    assert rig.read(STATUS) == 1
    assert rig.lines == {}


def test_halting_disarms_and_enabling_rearms(rig: Rig) -> None:
    rig.write(tn_config(0), route(2) | INT_ENB)
    rig.write(tn_comparator(0), 100, 8)
    rig.write(CONFIG, ENABLE)
    assert rig.timers.next_deadline() == 100 * NS_PER_TICK
    rig.at_tick(50)
    rig.write(CONFIG, 0)
    assert rig.timers.next_deadline() is None
    rig.at(10**6)
    assert rig.line(2).pulses == 0
    rig.write(CONFIG, ENABLE)  # the counter goes on from 50: 50 ticks to go
    assert rig.timers.next_deadline() == 10**6 + 50 * NS_PER_TICK
    rig.hpet.close()
    assert rig.timers.next_deadline() is None


# -- accesses -------------------------------------------------------------------------------------


def test_bad_sizes_and_unaligned_accesses_read_all_ones_and_write_nothing(rig: Rig) -> None:
    assert rig.read(CAPS, 1) == 0xFF
    assert rig.read(CAPS, 2) == 0xFFFF
    assert rig.read(CAPS + 2, 4) == 0xFFFF_FFFF  # unaligned
    assert rig.read(COUNTER + 4, 8) == 0xFFFF_FFFF_FFFF_FFFF  # 8 bytes not on an 8-byte boundary
    rig.write(CONFIG, ENABLE, 1)
    rig.write(CONFIG, ENABLE, 2)
    rig.write(CONFIG + 1, 0xFFFF_FFFF)
    assert rig.read(CONFIG) == 0


def test_reserved_registers_read_zero_and_ignore_writes(rig: Rig) -> None:
    for offset in (0x008, 0x018, 0x028, 0x0E8, 0x0F8, 0x118, 0x160, 0x168, 0x3F8):  # 0x160+: timer 3
        rig.write(offset, 0xFFFF_FFFF_FFFF_FFFF, 8)
        assert rig.read(offset, 8) == 0, hex(offset)


def test_fsb_route_registers_are_storage(rig: Rig) -> None:
    fsb = 0x110
    rig.write(fsb, 0xFEE0_0000_0000_0041, 8)
    assert rig.read(fsb + 4) == 0xFEE0_0000
    rig.write(fsb, 0x42)
    assert rig.read(fsb, 8) == 0xFEE0_0000_0000_0042


def test_on_a_bus_at_its_pc_address(rig: Rig) -> None:
    bus = Bus("mmio", 1 << 52)
    bus.register(Hpet.BASE, Hpet.LENGTH, rig.hpet)
    assert bus.read(0xFED00000, 4) == 0x8086A201
    assert bus.read(0xFED00000 + Hpet.LENGTH, 4) == 0xFFFF_FFFF  # past it: unclaimed


# -- on a machine, on every backend ------------------------------------------------------------


@pytest.fixture
def machine(hv: Hypervisor) -> Iterator[Machine]:
    """A 16 MiB machine with the PC devices, vCPU 0 in long mode at CODE with the 4th GiB mapped."""
    with Machine(hv, memory=16 << 20) as m:
        yield m


def _boot_long(machine: Machine, code: bytes) -> None:
    machine.write(CODE, code)
    machine.boot(BootPlan("long", entry=CODE, regs={"rsp": STACK_TOP}))
    map_apic_window(machine.vm)


def _u32(machine: Machine, address: int) -> int:
    return int.from_bytes(machine.read(address, 4), "little")


def _u64(machine: Machine, address: int) -> int:
    return int.from_bytes(machine.read(address, 8), "little")


def test_pc_devices_include_the_hpet(machine: Machine) -> None:
    devices = add_pc_devices(machine)
    assert isinstance(devices.hpet, Hpet)
    entry = machine.mmio_bus.find(Hpet.BASE)
    assert entry is not None and entry.device is devices.hpet and entry.length == 0x400


def test_pc_devices_without_the_hpet(hv: Hypervisor) -> None:
    with Machine(hv, memory=1 << 20) as machine:
        assert add_pc_devices(machine, hpet=False).hpet is None
        assert machine.mmio_bus.find(Hpet.BASE) is None


def test_guest_reads_the_counter_through_mmio(machine: Machine) -> None:
    devices = add_pc_devices(machine)
    _boot_long(machine, HPET_COUNTER_READS)
    assert machine.run(timeout=20) == MachineResult("debug-exit", HPET_EXIT_STATUS)
    assert _u32(machine, VARS + 0x00) == 0x8086A201
    assert _u32(machine, VARS + 0x04) == 10_000_000
    assert _u64(machine, VARS + 0x08) == 0  # halted at reset
    first, moved = _u64(machine, VARS + 0x10), _u64(machine, VARS + 0x18)
    assert moved > first  # the guest saw it count
    high, low = _u32(machine, VARS + 0x20), _u32(machine, VARS + 0x24)
    assert high == 0  # it started from 0 a moment ago
    assert low >= moved  # read after the 8-byte reads
    halted = _u64(machine, VARS + 0x28)
    assert halted >= low
    assert _u64(machine, VARS + 0x30) == halted  # halted: the counter stays
    assert devices.hpet is not None
    assert devices.hpet.read(COUNTER, 8) == halted  # and the host reads what the guest read


def test_guest_takes_periodic_interrupts_through_the_ioapic(machine: Machine) -> None:
    add_pc_devices(machine)
    _boot_long(machine, HPET_PERIODIC_IRQ)
    assert machine.run(timeout=20) == MachineResult("debug-exit", HPET_EXIT_STATUS)
    assert _u32(machine, VARS + 0x10) >= 3  # interrupts its ISR counted
    comparator, counter = _u64(machine, VARS + 0x18), _u64(machine, VARS + 0x20)
    period = 100_000
    assert comparator % period == 0 and comparator >= 4 * period  # fired at 1, 2, 3 ms at least
    assert counter < comparator <= counter + period  # the next expiry, less than a period ahead


def test_legacy_replacement_takes_irq_0_from_the_pit(machine: Machine) -> None:
    devices = add_pc_devices(machine)
    assert devices.hpet is not None
    assert not machine.vm.get_pit().flags & PIT_FLAGS_HPET_LEGACY
    devices.hpet.write(CONFIG, 4, LEGACY)
    assert machine.vm.get_pit().flags & PIT_FLAGS_HPET_LEGACY
    devices.hpet.write(CONFIG, 4, 0)
    assert not machine.vm.get_pit().flags & PIT_FLAGS_HPET_LEGACY


def test_closing_the_machine_stops_the_timer_thread(hv: Hypervisor) -> None:
    with Machine(hv, memory=1 << 20) as machine:
        devices = add_pc_devices(machine)
        assert devices.hpet is not None
        devices.hpet.write(tn_config(0), 4, route(2) | INT_ENB)
        devices.hpet.write(tn_comparator(0), 8, 10**12)  # hours away
        devices.hpet.write(CONFIG, 4, ENABLE)
        assert machine.timers.next_deadline() is not None
    assert machine.timers.closed
    assert machine.timers.next_deadline() is None
