"""The simulator's VM clock: the host's monotonic time, or virtual time counted in instructions.

Timers (PIT, LAPIC) read ``now()`` in nanoseconds and say when they next fire; the vCPU run loop
advances a :class:`VirtualClock` by the instructions it executed, so a guest's timer interrupts
land at the same instruction on every run (reproducible tests). A :class:`HostClock` follows
wall time, as KVM does.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Protocol

__all__ = ["Clock", "HostClock", "VirtualClock", "clock_from_environment"]


class Clock(Protocol):
    """A nanosecond clock the simulator's timers run on."""

    virtual: bool
    """True when time only moves as the guest executes (and jumps ahead while every vCPU sleeps)."""

    def now(self) -> int:
        """Nanoseconds since the clock started (plus any offset set by ``set``)."""
        ...

    def set(self, nanoseconds: int) -> None:
        """Make ``now()`` return ``nanoseconds`` from here on (``KVM_SET_CLOCK``)."""
        ...

    def executed(self, instructions: int) -> None:
        """Tell the clock the guest executed ``instructions`` more instructions."""
        ...

    def idle_until(self, nanoseconds: int) -> None:
        """Every vCPU sleeps until ``nanoseconds``: a virtual clock jumps there, a host clock ignores it."""
        ...

    def instructions_until(self, nanoseconds: int) -> int:
        """How many guest instructions may run before ``nanoseconds`` (virtual clocks only bound it)."""
        ...


class HostClock:
    """The host's monotonic clock, as KVM's VM clock."""

    virtual = False

    def __init__(self) -> None:
        self._offset = -time.monotonic_ns()

    def now(self) -> int:
        """Nanoseconds of host time since the clock started."""
        return time.monotonic_ns() + self._offset

    def set(self, nanoseconds: int) -> None:
        """Continue counting from ``nanoseconds``."""
        self._offset = nanoseconds - time.monotonic_ns()

    def executed(self, instructions: int) -> None:
        """Host time does not depend on the guest."""

    def idle_until(self, nanoseconds: int) -> None:
        """Host time does not jump."""

    def instructions_until(self, nanoseconds: int) -> int:
        """Unbounded: host time does not depend on instructions (the run loop checks timers per slice)."""
        return 1 << 62

    def __repr__(self) -> str:
        return f"HostClock(now={self.now()})"


class VirtualClock:
    """Deterministic time: ``ns_per_instruction`` nanoseconds per guest instruction executed."""

    virtual = True

    def __init__(self, ns_per_instruction: int = 1) -> None:
        if ns_per_instruction < 1:
            raise ValueError(f"ns_per_instruction must be at least 1, got {ns_per_instruction}")
        self.ns_per_instruction = ns_per_instruction
        self._now = 0
        self._lock = threading.Lock()

    def now(self) -> int:
        """Nanoseconds of guest execution so far."""
        return self._now

    def set(self, nanoseconds: int) -> None:
        """Continue counting from ``nanoseconds``."""
        with self._lock:
            self._now = nanoseconds

    def executed(self, instructions: int) -> None:
        """Advance by ``instructions * ns_per_instruction``."""
        with self._lock:
            self._now += instructions * self.ns_per_instruction

    def idle_until(self, nanoseconds: int) -> None:
        """Jump to ``nanoseconds`` (never back)."""
        with self._lock:
            self._now = max(self._now, nanoseconds)

    def instructions_until(self, nanoseconds: int) -> int:
        """How many instructions until ``now()`` reaches ``nanoseconds`` (at least 1)."""
        return max(1, -(-(nanoseconds - self._now) // self.ns_per_instruction))

    def __repr__(self) -> str:
        return f"VirtualClock(now={self._now}, ns_per_instruction={self.ns_per_instruction})"


def clock_from_environment() -> Clock:
    """``HVCORE_SIM_CLOCK``: ``host`` (default), ``virtual`` or ``virtual:N`` (N ns per instruction)."""
    setting = os.environ.get("HVCORE_SIM_CLOCK", "host").strip().lower()
    if setting in ("", "host"):
        return HostClock()
    kind, _, rate = setting.partition(":")
    if kind == "virtual":
        try:
            return VirtualClock(int(rate) if rate else 1)
        except ValueError:
            pass
    raise ValueError(f"HVCORE_SIM_CLOCK={setting!r}: use 'host', 'virtual' or 'virtual:N' (N ns per instruction)")
