"""The PC's High Precision Event Timer (IA-PC HPET Specification 1.0a): ``Hpet``.

1 KiB of MMIO at 0xFED00000, registers as QEMU's ``hpet`` device on a PC machine:

- 0x000 general capabilities and ID, read-only: revision 1, three timers (NUM_TIM_CAP 2), a
  64-bit counter (COUNT_SIZE_CAP), legacy replacement capable (LEG_RT_CAP), vendor 0x8086; the
  high half is the tick period, 10 ns (10,000,000 fs): a 100 MHz counter.
- 0x010 general configuration: ENABLE_CNF (bit 0) runs the main counter and lets the timers
  fire; LEG_RT_CNF (bit 1) routes timer 0 to IRQ 0 and timer 1 to IRQ 8 whatever their
  INT_ROUTE_CNF says (``legacy_gsis``: GSI 0 and GSI 8), and the in-kernel PIT stops driving
  IRQ 0 meanwhile (``pit_legacy``). IRQ 0 is the PIT's line, GSI 0. The specification puts it
  on IOAPIC pin 2, and so does QEMU (its GSI routing sends GSI 0 there and its MADT says so);
  a Machine keeps KVM's default routing, where GSI 0 reaches PIC IRQ 0 and IOAPIC pin 0, and
  publishes no IRQ 0 override, so pin 0 is where its guests look for IRQ 0.
- 0x020 general interrupt status: a level-triggered timer's bit is set when the timer fires
  (even with its interrupt disabled) and stays set until the guest writes 1 to it; its line is
  asserted while the bit, the timer's INT_ENB_CNF and ENABLE_CNF are all set. Edge-triggered
  timers pulse their line and leave the bit clear.
- 0x0F0 main counter: the machine's clock in 10 ns ticks while ENABLE_CNF is set; it holds its
  value while halted and only then takes writes (a write while it runs is dropped; on QEMU it is
  overwritten when the counter halts, which the guest cannot tell apart).
- 0x100 + 0x20 * N, timer N < 3: configuration and capabilities (INT_TYPE_CNF level, INT_ENB_CNF,
  TYPE_CNF periodic, PER_INT_CAP and SIZE_CAP read as 1, VAL_SET_CNF, 32MODE_CNF, INT_ROUTE_CNF;
  INT_ROUTE_CAP in the high half: IOAPIC pins 2, 8 and 16-23, as QEMU's q35 machine); +0x08
  the comparator; +0x10 the FSB route, plain storage (no FSB delivery: FSB_INT_DEL_CAP is 0).

Timers, while ENABLE_CNF is set: a one-shot timer fires once when the counter reaches its
comparator (in 64-bit mode at once, as QEMU, when the comparator is behind the counter as it
is written, as the mode changes or as the counter starts). A periodic timer fires each time the counter reaches
the comparator, which then moves on by the period (missed periods are skipped, one interrupt for
them all). Writing the comparator of a periodic timer sets the period; with VAL_SET_CNF set it
sets the comparator too, and VAL_SET_CNF clears. In 32-bit mode (32MODE_CNF) only the low 32 bits
of the counter count: the comparator and the period keep 32 bits, writes to their high halves are
ignored, and a one-shot timer whose match lies past the next 32-bit wrap also fires at the wrap.
An INT_ROUTE_CNF value outside INT_ROUTE_CAP is not taken (the register keeps its old route, as
the specification says reading back shows); a timer on a route outside INT_ROUTE_CAP (the reset
route 0) interrupts nothing.

Accesses are 4 or 8 bytes, naturally aligned (4 bytes read or write one half of a 64-bit
register); any other size or alignment reads all-ones and writes nothing. Reserved registers
(and the register blocks of timers 3-31) read 0 and ignore writes.

Time is ``host.timers.now()`` (a Machine's VM clock); the device arms one timer callback for its
earliest deadline. Every register access first brings the timers up to the clock, so what the
guest reads never depends on how late the callback runs. A periodic timer wakes the device at
most every ``MIN_WAKE_NS`` (QEMU caps periodic timers at 1 MHz): a faster one has its interrupts
merged, never its comparator. On the simulator's virtual clock (``HVCORE_SIM_CLOCK=virtual``)
time moves only while a vCPU runs: a guest that halts with nothing but an HPET timer armed
waits for good, as the simulator skips idle time only to its own timers' deadlines.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from hvcore.errors import InvalidArgument
from hvcore.vmm.device import DeviceHost, IrqLine
from hvcore.vmm.timers import TimerHandle

__all__ = ["Hpet"]

_MASK32 = (1 << 32) - 1
_MASK64 = (1 << 64) - 1
_NS_PER_TICK = 10
_PERIOD_FS = _NS_PER_TICK * 1_000_000

_CAPABILITIES = 0x000
_CONFIG = 0x010
_STATUS = 0x020
_COUNTER = 0x0F0
_TIMERS_BASE = 0x100
_TIMER_STRIDE = 0x20
_TN_CONFIG, _TN_COMPARATOR, _TN_FSB = 0x00, 0x08, 0x10

_REV_ID = 0x01
_COUNT_SIZE_CAP = 1 << 13
_LEG_RT_CAP = 1 << 15
_VENDOR_ID = 0x8086

_ENABLE_CNF = 1 << 0
_LEG_RT_CNF = 1 << 1

_TN_INT_TYPE_CNF = 1 << 1  # 1: level-triggered
_TN_INT_ENB_CNF = 1 << 2
_TN_TYPE_CNF = 1 << 3  # 1: periodic
_TN_PER_INT_CAP = 1 << 4
_TN_SIZE_CAP = 1 << 5
_TN_VAL_SET_CNF = 1 << 6
_TN_32MODE_CNF = 1 << 8
_TN_INT_ROUTE_SHIFT = 9
_TN_INT_ROUTE_CNF = 0x1F << _TN_INT_ROUTE_SHIFT
_TN_WRITABLE = _TN_INT_TYPE_CNF | _TN_INT_ENB_CNF | _TN_TYPE_CNF | _TN_VAL_SET_CNF | _TN_32MODE_CNF | _TN_INT_ROUTE_CNF
_TN_REARM_ON_CHANGE = _TN_TYPE_CNF | _TN_32MODE_CNF


def _deposit(old: int, shift: int, size: int, value: int) -> int:
    """``old`` with ``size`` bytes at bit ``shift`` replaced by ``value``."""
    field = ((1 << (8 * size)) - 1) << shift
    return (old & ~field) | ((value << shift) & field)


@dataclass
class _Timer:
    """One comparator: its registers and when it fires next (in ticks; ``None``: not armed)."""

    index: int
    config: int = 0
    comparator: int = _MASK64
    period: int = 0
    fsb: int = 0
    target: int | None = None
    after_wrap: int | None = None
    """The match a 32-bit one-shot timer waits for once the wrap it fires at first has passed."""

    @property
    def level(self) -> bool:
        return bool(self.config & _TN_INT_TYPE_CNF)

    @property
    def periodic(self) -> bool:
        return bool(self.config & _TN_TYPE_CNF)

    @property
    def mode32(self) -> bool:
        return bool(self.config & _TN_32MODE_CNF)

    @property
    def route(self) -> int:
        return (self.config & _TN_INT_ROUTE_CNF) >> _TN_INT_ROUTE_SHIFT


class Hpet:
    """The HPET at ``BASE`` (``LENGTH`` bytes of MMIO); interrupts through ``host.irq``."""

    BASE: ClassVar[int] = 0xFED00000
    """Where a PC has it (QEMU's ``HPET_BASE``)."""
    LENGTH: ClassVar[int] = 0x400
    """How many bytes of MMIO to register."""
    TIMERS: ClassVar[int] = 3
    """Comparators (NUM_TIM_CAP + 1)."""
    INT_ROUTE_CAP: ClassVar[int] = 0x00FF0104
    """IOAPIC pins a timer may be routed to: 2, 8 and 16-23 (QEMU's q35 ``hpet-intcap``)."""
    PERIOD_FS: ClassVar[int] = _PERIOD_FS
    """The counter's tick in femtoseconds (10 ns)."""
    MIN_WAKE_NS: ClassVar[int] = 100_000
    """The shortest time from one expiry callback to a periodic timer's next."""

    def __init__(
        self,
        host: DeviceHost,
        *,
        legacy_gsis: tuple[int, int] = (0, 8),
        pit_legacy: Callable[[bool], None] | None = None,
        name: str = "hpet",
    ) -> None:
        for gsi in legacy_gsis:
            if not 0 <= gsi < 24:
                raise InvalidArgument(f"{name}: legacy GSI {gsi} is not an IOAPIC pin (0-23)", operation="Hpet")
        self.name = name
        self._host = host
        self._timers_service = host.timers
        self._legacy_gsis = legacy_gsis
        self._pit_legacy = pit_legacy
        self._lock = threading.Lock()
        self._config = 0
        self._status = 0
        self._counter = 0
        self._offset = 0
        """While enabled: ticks = (clock + offset) // 10."""
        self._timers = [_Timer(i) for i in range(self.TIMERS)]
        self._lines: dict[int, IrqLine | None] = {}
        self._held: set[int] = set()
        """GSIs whose level this device holds asserted."""
        self._armed: TimerHandle | None = None
        self._last_wake = -self.MIN_WAKE_NS

    # -- the Device protocol -------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        """A 4- or 8-byte aligned register read; all-ones for any other access."""
        if not self._valid(offset, size):
            return (1 << (8 * size)) - 1
        shift = (offset & 4) * 8
        with self._lock:
            now = self._timers_service.now()
            self._advance(now)
            value = self._register(offset & ~7, now)
        return (value >> shift) & ((1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        """A 4- or 8-byte aligned register write; any other access is dropped."""
        if not self._valid(offset, size):
            return
        shift = (offset & 4) * 8
        with self._lock:
            now = self._timers_service.now()
            self._advance(now)
            register = offset & ~7
            if register == _CONFIG:
                self._write_config(_deposit(self._config, shift, size, value), now)
            elif register == _STATUS:
                self._status &= ~((value << shift) & _MASK64)
                self._update_lines()
            elif register == _COUNTER:
                if not self._config & _ENABLE_CNF:
                    self._counter = _deposit(self._counter, shift, size, value)
            elif (timer := self._timer_at(register)) is not None:
                self._write_timer(timer, register & (_TIMER_STRIDE - 1), shift, size, value, now)
            self._reschedule(now)

    def close(self) -> None:
        """Disarm the expiry callback."""
        with self._lock:
            if self._armed is not None:
                self._armed.cancel()
                self._armed = None

    # -- registers -----------------------------------------------------------------------

    @staticmethod
    def _valid(offset: int, size: int) -> bool:
        return size in (4, 8) and offset % size == 0 and offset + size <= Hpet.LENGTH

    def _timer_at(self, register: int) -> _Timer | None:
        index = (register - _TIMERS_BASE) // _TIMER_STRIDE
        return self._timers[index] if register >= _TIMERS_BASE and index < self.TIMERS else None

    def _capabilities(self) -> int:
        low = _REV_ID | (self.TIMERS - 1) << 8 | _COUNT_SIZE_CAP | _LEG_RT_CAP | _VENDOR_ID << 16
        return self.PERIOD_FS << 32 | low

    def _register(self, register: int, now: int) -> int:
        if register == _CAPABILITIES:
            return self._capabilities()
        if register == _CONFIG:
            return self._config
        if register == _STATUS:
            return self._status
        if register == _COUNTER:
            return self._ticks(now) & _MASK64
        timer = self._timer_at(register)
        if timer is None:
            return 0
        field = register & (_TIMER_STRIDE - 1)
        if field == _TN_CONFIG:
            return self.INT_ROUTE_CAP << 32 | timer.config | _TN_PER_INT_CAP | _TN_SIZE_CAP
        if field == _TN_COMPARATOR:
            return timer.comparator
        if field == _TN_FSB:
            return timer.fsb
        return 0

    def _write_config(self, value: int, now: int) -> None:
        old, self._config = self._config, value & (_ENABLE_CNF | _LEG_RT_CNF)
        started = self._config & ~old & _ENABLE_CNF
        if started:
            self._offset = self._counter * _NS_PER_TICK - now
            for timer in self._timers:
                self._arm(timer, now)
        elif old & ~self._config & _ENABLE_CNF:
            self._counter = self._ticks_running(now)
            for timer in self._timers:
                timer.target = timer.after_wrap = None
        if (old ^ self._config) & _LEG_RT_CNF and self._pit_legacy is not None:
            self._pit_legacy(bool(self._config & _LEG_RT_CNF))
        self._update_lines()

    def _write_timer(self, timer: _Timer, field: int, shift: int, size: int, value: int, now: int) -> None:
        if field == _TN_CONFIG:
            old = timer.config
            new = _deposit(old, shift, size, value) & _TN_WRITABLE
            if (1 << ((new & _TN_INT_ROUTE_CNF) >> _TN_INT_ROUTE_SHIFT)) & ~self.INT_ROUTE_CAP:
                new = (new & ~_TN_INT_ROUTE_CNF) | (old & _TN_INT_ROUTE_CNF)
            timer.config = new
            if not timer.level:
                self._status &= ~(1 << timer.index)
            if timer.mode32:
                timer.comparator &= _MASK32
                timer.period &= _MASK32
            if (old ^ new) & _TN_REARM_ON_CHANGE:
                self._arm(timer, now)
            self._update_lines()
        elif field == _TN_COMPARATOR:
            if timer.mode32:
                if shift:
                    return
                size = 8
                value &= _MASK32
            if not timer.periodic or timer.config & _TN_VAL_SET_CNF:
                timer.comparator = _deposit(timer.comparator, shift, size, value)
            if timer.periodic:
                timer.period = _deposit(timer.period, shift, size, value)
            timer.config &= ~_TN_VAL_SET_CNF
            self._arm(timer, now)
        elif field == _TN_FSB:
            timer.fsb = _deposit(timer.fsb, shift, size, value)

    # -- counting and firing --------------------------------------------------------------

    def _ticks_running(self, now: int) -> int:
        return (now + self._offset) // _NS_PER_TICK

    def _ticks(self, now: int) -> int:
        return self._ticks_running(now) if self._config & _ENABLE_CNF else self._counter

    def _arm(self, timer: _Timer, now: int) -> None:
        """Aim ``timer`` at the next time the counter matches its comparator (while enabled)."""
        timer.target = timer.after_wrap = None
        if not self._config & _ENABLE_CNF:
            return
        ticks = self._ticks_running(now)
        if not timer.mode32:
            timer.target = timer.comparator
            return
        target = (ticks & ~_MASK32) | (timer.comparator & _MASK32)
        if target < ticks:
            target += 1 << 32
        wrap = (ticks | _MASK32) + 1
        if not timer.periodic and target > wrap:
            timer.target, timer.after_wrap = wrap, target
        else:
            timer.target = target

    def _advance(self, now: int) -> None:
        """Fire, in order, every timer whose target the counter has reached by ``now``."""
        if not self._config & _ENABLE_CNF:
            return
        ticks = self._ticks_running(now)
        while True:
            due = [t for t in self._timers if t.target is not None and t.target <= ticks]
            if not due:
                return
            self._fire(min(due, key=lambda t: (t.target, t.index)), ticks)

    def _fire(self, timer: _Timer, ticks: int) -> None:
        assert timer.target is not None
        if timer.after_wrap is not None:
            timer.target, timer.after_wrap = timer.after_wrap, None
        elif timer.periodic and timer.period:
            timer.target += ((ticks - timer.target) // timer.period + 1) * timer.period
            timer.comparator = timer.target & (_MASK32 if timer.mode32 else _MASK64)
        else:
            timer.target = None
        if timer.level:
            self._status |= 1 << timer.index
            self._update_lines()
        elif timer.config & _TN_INT_ENB_CNF:
            gsi = self._gsi(timer)
            line = self._line(gsi) if gsi is not None else None
            if line is not None and gsi not in self._held:  # a held line has no edge to give
                line.pulse()

    # -- interrupt lines ------------------------------------------------------------------

    def _gsi(self, timer: _Timer) -> int | None:
        if self._config & _LEG_RT_CNF and timer.index < 2:
            return self._legacy_gsis[timer.index]
        route = timer.route
        return route if self.INT_ROUTE_CAP >> route & 1 else None

    def _line(self, gsi: int) -> IrqLine | None:
        if gsi not in self._lines:
            self._lines[gsi] = self._host.irq(gsi)
        return self._lines[gsi]

    def _update_lines(self) -> None:
        """Drive every level line to what the status, enable and route bits say now."""
        wanted: set[int] = set()
        if self._config & _ENABLE_CNF:
            for timer in self._timers:
                if timer.level and timer.config & _TN_INT_ENB_CNF and self._status >> timer.index & 1:
                    gsi = self._gsi(timer)
                    if gsi is not None:
                        wanted.add(gsi)
        for gsi in sorted(self._held ^ wanted):
            line = self._line(gsi)
            if line is not None:
                line.set(gsi in wanted)
        self._held = wanted

    # -- the expiry callback -----------------------------------------------------------------

    def _reschedule(self, now: int) -> None:
        deadlines = [
            max(t.target * _NS_PER_TICK - self._offset, self._last_wake + self.MIN_WAKE_NS if t.periodic else 0)
            for t in self._timers
            if t.target is not None
        ]
        deadline = min(deadlines) if deadlines and self._config & _ENABLE_CNF else None
        armed = self._armed
        if armed is not None and armed.pending and armed.deadline == deadline:
            return
        if armed is not None:
            armed.cancel()
        self._armed = None
        if deadline is not None and not self._timers_service.closed:
            self._armed = self._timers_service.call_at(deadline, self._expired)

    def _expired(self) -> None:
        with self._lock:
            now = self._timers_service.now()
            self._last_wake = now
            self._advance(now)
            self._reschedule(now)

    def __repr__(self) -> str:
        return f"Hpet(config={self._config:#x}, status={self._status:#x})"
