"""The 8254 programmable interval timer as KVM's in-kernel model has it (``arch/x86/kvm/i8254.c``).

Ports 0x40-0x42 are the three counters, 0x43 the control word, 0x61 the speaker port (gate and
output of channel 2). Only channel 0 has a timer: it raises and lowers IRQ 0 once per expiry,
periodically in modes 2 and 3, once in modes 0, 1 and 4. The counters are not decremented one by
one; a count is computed from the time since it was loaded, on the :class:`~hvcore_sim.clock.Clock`
the model is given, as KVM computes it from ``ktime_get()``.

KVM's choices are kept where they differ from the datasheet: a control word does not stop the
counter, BCD is reported in the status but counting is binary, channel 0's count and OUT follow
the timer (elapsed = period - time remaining), periodic timers are clamped to
``min_timer_period_us`` (200 us) after their first expiry, and in the default reinject mode a tick
is injected only once the previous one was acknowledged, missed ticks being kept in ``pending``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Final

from hvcore.errors import InvalidArgument
from hvcore.types import PIT_FLAGS_HPET_LEGACY, PIT_FLAGS_SPEAKER_DATA_ON, PitChannelState, PitState
from hvcore_sim.clock import Clock

__all__ = ["FREQUENCY_HZ", "MIN_TIMER_PERIOD_NS", "Pit"]

FREQUENCY_HZ: Final = 1193182
"""The PIT's input clock (KVM's ``KVM_PIT_FREQ``)."""
MIN_TIMER_PERIOD_NS: Final = 200_000
"""The shortest period of a periodic channel 0 (KVM's ``min_timer_period_us`` module parameter, default 200)."""

_NS_PER_S: Final = 1_000_000_000
_SPEAKER_PORT: Final = 0x61
_CONTROL: Final = 3
# read_state / write_state / rw_mode / count_latched values (KVM's RW_STATE_*)
_LSB: Final = 1
_MSB: Final = 2
_WORD0: Final = 3
_WORD1: Final = 4
_DISABLED_MODE: Final = 0xFF
"""The mode KVM's reset gives every channel: no timer until the guest programs one."""
_REFRESH_SHIFT: Final = 14
"""Port 0x61 bit 4 toggles about every 15 us; KVM approximates it with bit 14 of the ns clock."""

_FIELD_BITS: Final = {
    "count": 32,
    "latched_count": 16,
    "count_load_time": 64,
}
"""Widths of ``struct kvm_pit_channel_state``'s fields other than the 8-bit ones."""


@dataclass(slots=True)
class _Channel:
    """One counter: the fields of ``struct kvm_pit_channel_state``, mutable."""

    count: int = 0
    latched_count: int = 0
    count_latched: int = 0
    status_latched: int = 0
    status: int = 0
    read_state: int = 0
    write_state: int = 0
    write_latch: int = 0
    rw_mode: int = 0
    mode: int = 0
    bcd: int = 0
    gate: int = 0
    count_load_time: int = 0


def _check_channel_state(state: PitChannelState) -> None:
    for field in fields(PitChannelState):
        value = getattr(state, field.name)
        bits = _FIELD_BITS.get(field.name, 8)
        low, high = (-(1 << 63), (1 << 63) - 1) if field.name == "count_load_time" else (0, (1 << bits) - 1)
        if not isinstance(value, int) or not low <= value <= high:
            raise InvalidArgument(f"PitChannelState.{field.name} does not fit {bits} bits: {value!r}")


class Pit:
    """KVM's 8254 PIT with its speaker port; channel 0 drives IRQ 0 through ``irq(0, level)``.

    The caller calls :meth:`advance` once the clock reaches :meth:`deadline`, and :meth:`acked`
    when the guest acknowledges IRQ 0 (the PIC's or IOAPIC's ack notification).
    """

    PORTS = (0x40, 0x41, 0x42, 0x43, 0x61)
    """The IO ports this device answers."""

    def __init__(self, clock: Clock, irq: Callable[[int, bool], object]) -> None:
        self._clock = clock
        self._irq = irq
        self._channels = (_Channel(), _Channel(), _Channel())
        self._flags = 0
        self._reinject = True
        self._pending = 0
        self._irq_ack = True
        self._period = 0
        self._periodic = False
        self._expires = 0
        self._armed = False
        self.reset()

    # -- public interface ---------------------------------------------------------------------

    def reset(self) -> None:
        """Return to the state ``KVM_CREATE_PIT2`` gives (``kvm_pit_reset``).

        Every channel has mode 0xff (no timer) and count 0x10000, gates 1, 1, 0, flags 0, no
        timer running, reinjection on with nothing pending.
        """
        self._channels = (_Channel(), _Channel(), _Channel())
        self._flags = 0
        self._period = 0
        self._periodic = False
        self._expires = 0
        self._armed = False
        for index, channel in enumerate(self._channels):
            channel.mode = _DISABLED_MODE
            channel.gate = int(index != 2)
            self._load_count(index, 0)
        self._reinject = True
        self._reset_reinject()

    def read_port(self, port: int) -> int:
        """An 8-bit guest read of a counter (status, latched or live count) or of port 0x61."""
        self._check_port(port)
        if port == _SPEAKER_PORT:
            return self._read_speaker()
        index = port & 3
        if index == _CONTROL:
            return 0  # KVM answers without writing the data (the destination keeps its old value)
        channel = self._channels[index]
        if channel.status_latched:
            channel.status_latched = 0
            return channel.status & 0xFF
        if channel.count_latched:
            return self._read_latched(channel)
        return self._read_live(index)

    def write_port(self, port: int, value: int) -> None:
        """An 8-bit guest write: a count byte, the control word (0x43), or port 0x61 (gate 2, speaker data)."""
        self._check_port(port)
        if not 0 <= value <= 0xFF:
            raise InvalidArgument(f"PIT port writes are 8-bit, got {value:#x}")
        if port == _SPEAKER_PORT:
            self._write_speaker(value)
        elif port & 3 == _CONTROL:
            self._write_control(value)
        else:
            self._write_count(port & 3, value)

    def deadline(self) -> int | None:
        """When (clock ns) channel 0 next expires and :meth:`advance` must be called; None if no timer runs."""
        return self._expires if self._armed else None

    def advance(self, now: int) -> None:
        """Fire channel 0's timer if it is due at ``now``.

        Expiries that all fell due since the last call count as that many ticks for reinjection,
        but are injected as one, as KVM's timer callbacks queue a single work item.
        """
        if not self._armed or now < self._expires:
            return
        if self._periodic:
            ticks = (now - self._expires) // self._period + 1
            self._expires += ticks * self._period
        else:
            ticks = 1
            self._armed = False
        if self._reinject:
            self._pending += ticks
        self._inject()

    def acked(self) -> None:
        """The guest acknowledged IRQ 0 (``kvm_pit_ack_irq``): inject the next missed tick, if any."""
        if not self._reinject:
            return
        self._irq_ack = True
        if self._pending > 0:
            self._pending -= 1
            if self._pending > 0:
                self._inject()

    def irq_mask_changed(self, masked: bool) -> None:
        """IRQ 0 was masked or unmasked (KVM's mask notifier): an unmask forgets the missed ticks."""
        if self._reinject and not masked:
            self._reset_reinject()

    def set_reinject(self, enabled: bool) -> None:
        """``KVM_REINJECT_CONTROL``: with reinjection off every expiry injects, acknowledged or not."""
        if enabled and not self._reinject:
            self._reset_reinject()
        self._reinject = enabled

    @property
    def pending(self) -> int:
        """Ticks fired and not yet delivered and acknowledged (KVM's ``kvm_kpit_state.pending``)."""
        return self._pending

    def get_state(self) -> PitState:
        """The three channels and the flags (``KVM_GET_PIT2``)."""
        channels = tuple(
            PitChannelState(**{f.name: getattr(channel, f.name) for f in fields(PitChannelState)})
            for channel in self._channels
        )
        return PitState(channels=(channels[0], channels[1], channels[2]), flags=self._flags)

    def set_state(self, state: PitState) -> None:
        """Load the channels and flags (``KVM_SET_PIT2``), then reload every count as KVM does.

        Reloading restarts the counting: channels 1 and 2 take the current time as
        ``count_load_time`` and channel 0 restarts its timer from its count and mode. Setting
        ``PIT_FLAGS_HPET_LEGACY`` stops channel 0's timer; while it is set channel 0 never starts one.
        """
        if len(state.channels) != 3:
            raise InvalidArgument(f"PitState needs 3 channels, got {len(state.channels)}")
        for channel_state in state.channels:
            _check_channel_state(channel_state)
        if not 0 <= state.flags <= 0xFFFFFFFF:
            raise InvalidArgument(f"PitState.flags must be a 32-bit value, got {state.flags!r}")
        hpet_starts = not self._flags & PIT_FLAGS_HPET_LEGACY and bool(state.flags & PIT_FLAGS_HPET_LEGACY)
        for channel, channel_state in zip(self._channels, state.channels, strict=True):
            for field in fields(PitChannelState):
                setattr(channel, field.name, getattr(channel_state, field.name))
        self._flags = state.flags
        for index, channel in enumerate(self._channels):
            if index == 0 and hpet_starts:
                saved_mode, channel.mode = channel.mode, _DISABLED_MODE
                self._load_count(0, channel.count)
                channel.mode = saved_mode
            else:
                self._load_count(index, channel.count)

    # -- counting -----------------------------------------------------------------------------

    def _elapsed(self, index: int) -> int:
        """Nanoseconds the channel has counted: channel 0 from its timer, the others from their load time."""
        now = self._clock.now()
        if index != 0:
            return now - self._channels[index].count_load_time
        if not self._period:
            return 0
        return self._period - (self._expires - now)

    def _ticks(self, index: int) -> int:
        """Input clock ticks since the channel started counting."""
        return self._elapsed(index) * FREQUENCY_HZ // _NS_PER_S

    def _current_count(self, index: int) -> int:
        """``pit_get_count``: the value the counter holds now."""
        channel = self._channels[index]
        ticks = self._ticks(index)
        if channel.mode in (0, 1, 4, 5):
            return (channel.count - ticks) & 0xFFFF
        if channel.mode == 3:
            return channel.count - (2 * ticks) % channel.count
        return channel.count - ticks % channel.count

    def _out(self, index: int) -> bool:
        """``pit_get_out``: the level of the channel's OUT pin now."""
        channel = self._channels[index]
        ticks = self._ticks(index)
        count = channel.count
        if channel.mode == 1:
            return ticks < count
        if channel.mode == 2:
            return ticks % count == 0 and ticks != 0
        if channel.mode == 3:
            return ticks % count < (count + 1) >> 1
        if channel.mode in (4, 5):
            return ticks == count
        return ticks >= count  # mode 0, and KVM's default for any other mode

    def _load_count(self, index: int, value: int) -> None:
        """``pit_load_count``: 0 means 0x10000; channel 0 (re)starts or stops its timer by mode."""
        channel = self._channels[index]
        channel.count = value or 0x10000
        if index != 0:
            channel.count_load_time = self._clock.now()
            return
        if channel.mode in (0, 1, 4):
            self._start_timer(channel.count, periodic=False)
        elif channel.mode in (2, 3):
            self._start_timer(channel.count, periodic=True)
        else:
            self._armed = False  # KVM keeps period and expiry: the count still reads from them

    def _start_timer(self, count: int, *, periodic: bool) -> None:
        """``create_pit_timer``: the first expiry is one count away, later ones one (clamped) period apart."""
        if self._flags & PIT_FLAGS_HPET_LEGACY:
            return  # the HPET drives IRQ 0; the running timer, if any, is left alone
        interval = count * _NS_PER_S // FREQUENCY_HZ
        self._period = max(interval, MIN_TIMER_PERIOD_NS) if periodic else interval
        self._periodic = periodic
        self._reset_reinject()
        self._expires = self._clock.now() + interval
        self._armed = True

    # -- reinjection --------------------------------------------------------------------------

    def _reset_reinject(self) -> None:
        self._pending = 0
        self._irq_ack = True

    def _inject(self) -> None:
        """``pit_do_work``: pulse IRQ 0, unless reinjection waits for the previous tick's ack."""
        if self._reinject:
            if not self._irq_ack:
                return
            self._irq_ack = False
        self._irq(0, True)
        self._irq(0, False)

    # -- ports --------------------------------------------------------------------------------

    def _check_port(self, port: int) -> None:
        if port not in self.PORTS:
            raise InvalidArgument(f"port {port:#x} is not a PIT port")

    def _read_latched(self, channel: _Channel) -> int:
        """The next byte of a latched count (LSB, MSB, or LSB then MSB)."""
        if channel.count_latched == _MSB:
            channel.count_latched = 0
            return (channel.latched_count >> 8) & 0xFF
        if channel.count_latched == _WORD0:
            channel.count_latched = _MSB
        else:
            channel.count_latched = 0
        return channel.latched_count & 0xFF

    def _read_live(self, index: int) -> int:
        """The next byte of the running count, as the channel's read state says."""
        channel = self._channels[index]
        count = self._current_count(index)
        if channel.read_state == _WORD0:
            channel.read_state = _WORD1
            return count & 0xFF
        if channel.read_state == _WORD1:
            channel.read_state = _WORD0
            return (count >> 8) & 0xFF
        if channel.read_state == _MSB:
            return (count >> 8) & 0xFF
        return count & 0xFF

    def _latch_count(self, index: int) -> None:
        channel = self._channels[index]
        if not channel.count_latched:
            channel.latched_count = self._current_count(index) & 0xFFFF
            channel.count_latched = channel.rw_mode

    def _latch_status(self, index: int) -> None:
        """Status byte: OUT (bit 7), access mode, mode, BCD; KVM never reports NULL COUNT (bit 6)."""
        channel = self._channels[index]
        if not channel.status_latched:
            status = int(self._out(index)) << 7 | channel.rw_mode << 4 | channel.mode << 1 | channel.bcd
            channel.status = status & 0xFF
            channel.status_latched = 1

    def _write_control(self, value: int) -> None:
        """Port 0x43: read-back command, counter latch, or a channel's access mode, mode and BCD."""
        selected = value >> 6
        if selected == 3:
            for index in range(3):
                if value & (2 << index):
                    if not value & 0x20:
                        self._latch_count(index)
                    if not value & 0x10:
                        self._latch_status(index)
            return
        access = (value >> 4) & 3
        if access == 0:
            self._latch_count(selected)
            return
        channel = self._channels[selected]
        channel.rw_mode = channel.read_state = channel.write_state = access
        mode = (value >> 1) & 7
        channel.mode = mode - 4 if mode > 5 else mode  # modes 6 and 7 are 2 and 3
        channel.bcd = value & 1

    def _write_count(self, index: int, value: int) -> None:
        """A count byte for ``index``, loading the count once the access mode has all its bytes."""
        channel = self._channels[index]
        if channel.write_state == _MSB:
            self._load_count(index, value << 8)
        elif channel.write_state == _WORD0:
            channel.write_latch = value
            channel.write_state = _WORD1
        elif channel.write_state == _WORD1:
            self._load_count(index, channel.write_latch | value << 8)
            channel.write_state = _WORD0
        else:
            self._load_count(index, value)

    def _read_speaker(self) -> int:
        """Port 0x61: gate 2 (bit 0), speaker data (bit 1), refresh toggle (bit 4), OUT 2 (bit 5)."""
        refresh = (self._clock.now() >> _REFRESH_SHIFT) & 1
        speaker = int(bool(self._flags & PIT_FLAGS_SPEAKER_DATA_ON))
        return self._channels[2].gate | speaker << 1 | refresh << 4 | int(self._out(2)) << 5

    def _write_speaker(self, value: int) -> None:
        """Port 0x61: speaker data (bit 1) into the flags, gate of channel 2 (bit 0)."""
        if value & 2:
            self._flags |= PIT_FLAGS_SPEAKER_DATA_ON
        else:
            self._flags &= ~PIT_FLAGS_SPEAKER_DATA_ON
        self._set_gate(2, value & 1)

    def _set_gate(self, index: int, gate: int) -> None:
        """``pit_set_gate``: a rising gate restarts counting in modes 1, 2, 3 and 5."""
        channel = self._channels[index]
        if channel.mode in (1, 2, 3, 5) and channel.gate < gate:
            channel.count_load_time = self._clock.now()
        channel.gate = gate
