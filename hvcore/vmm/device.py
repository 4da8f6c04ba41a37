"""What a device is to a bus, and what it may ask of the machine it is plugged into."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from hvcore.vmm.timers import DeviceTimers

__all__ = ["Device", "DeviceHost", "IrqLine", "StopRequest", "read_registers"]


@runtime_checkable
class Device(Protocol):
    """A device model on an IO or MMIO bus.

    ``offset`` is relative to the start of the range the device was registered at; ``size`` is
    1, 2, 4 or 8 bytes. Reads return the value (only the low ``size`` bytes count); a device
    never raises for a guest access it does not implement, it ignores the write or reads
    all-ones, as hardware does.
    """

    name: str
    """A short name for statistics and errors, e.g. ``"uart0"``."""

    def read(self, offset: int, size: int) -> int:
        """A guest read of ``size`` bytes at ``offset``."""
        ...

    def write(self, offset: int, size: int, value: int) -> None:
        """A guest write of ``size`` bytes at ``offset``."""
        ...


class IrqLine(Protocol):
    """One interrupt line of the machine's irqchip (a GSI)."""

    def set(self, level: bool) -> None:
        """Drive the line (level-triggered devices hold it)."""
        ...

    def pulse(self) -> None:
        """Raise and lower the line: one edge."""
        ...


@dataclass(frozen=True)
class StopRequest:
    """Why a device asked the machine to stop, and the exit status it chose (``None``: no status)."""

    reason: str
    status: int | None = None


@dataclass(frozen=True)
class DeviceHost:
    """What a device may ask of its machine: an interrupt line, a stop, the time and timers."""

    irq: Callable[[int], IrqLine | None]
    """The line for GSI ``n``, or ``None`` when the machine has no irqchip."""
    request_stop: Callable[[StopRequest], None]
    """Stop the machine (every vCPU), e.g. for isa-debug-exit or an i8042 reset."""
    timers: DeviceTimers = field(default_factory=DeviceTimers)
    """The machine's clock (``timers.now()``, nanoseconds) and callbacks at its deadlines; a
    :class:`~hvcore.vmm.machine.Machine` gives its VM clock. The default counts host monotonic time."""


def read_registers(registers: bytes | bytearray, offset: int, size: int) -> int:
    """A little-endian read of ``size`` bytes at ``offset`` of a register file, all-ones past its end."""
    return int.from_bytes(bytes(registers[offset : offset + size]).ljust(size, b"\xff"), "little")
