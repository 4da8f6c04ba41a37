"""Why ``VCPU.run()`` returned: one immutable value per exit kind, carrying all its data.

Exits are pattern-matchable::

    match vcpu.run():
        case IoExit(port=0x3F8, direction=IoDirection.OUT, data=data):
            sys.stdout.buffer.write(data)
        case IoExit(direction=IoDirection.IN) as io:
            vcpu.complete(bytes(io.size * io.count))
        case MmioExit(is_write=False, length=n):
            vcpu.complete(bytes(n))
        case HltExit():
            ...

Two exits need an answer before the next ``run()``: an IN (``IoExit`` with
``direction=IN``) and an MMIO read (``MmioExit`` with ``is_write=False``). Answer
with ``VCPU.complete(data)``; running again without answering raises
:class:`hvcore.ExitNotCompleted`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

__all__ = [
    "DebugExit",
    "Exit",
    "ExitReason",
    "FailEntryExit",
    "HltExit",
    "InternalErrorExit",
    "InternalErrorSuberror",
    "InterruptedExit",
    "IoDirection",
    "IoExit",
    "IrqWindowOpenExit",
    "MmioExit",
    "ShutdownExit",
    "SystemEventExit",
    "SystemEventType",
    "UnknownExit",
]


class ExitReason(IntEnum):
    """Exit reasons, numbered as ``KVM_EXIT_*`` in <linux/kvm.h>."""

    UNKNOWN = 0
    EXCEPTION = 1
    IO = 2
    HYPERCALL = 3
    DEBUG = 4
    HLT = 5
    MMIO = 6
    IRQ_WINDOW_OPEN = 7
    SHUTDOWN = 8
    FAIL_ENTRY = 9
    INTR = 10
    SET_TPR = 11
    TPR_ACCESS = 12
    NMI = 16
    INTERNAL_ERROR = 17
    SYSTEM_EVENT = 24
    IOAPIC_EOI = 26
    HYPERV = 27
    X86_RDMSR = 29
    X86_WRMSR = 30
    DIRTY_RING_FULL = 31
    X86_BUS_LOCK = 33
    NOTIFY = 37


class IoDirection(IntEnum):
    """Port-IO direction, numbered as ``KVM_EXIT_IO_IN`` / ``KVM_EXIT_IO_OUT``."""

    IN = 0
    OUT = 1


class InternalErrorSuberror(IntEnum):
    """``KVM_INTERNAL_ERROR_*`` suberror codes."""

    EMULATION = 1
    SIMUL_EX = 2
    DELIVERY_EV = 3
    UNEXPECTED_EXIT_REASON = 4


class SystemEventType(IntEnum):
    """``KVM_SYSTEM_EVENT_*`` types."""

    SHUTDOWN = 1
    RESET = 2
    CRASH = 3
    WAKEUP = 4
    SUSPEND = 5
    SEV_TERM = 6


@dataclass(frozen=True, slots=True)
class IoExit:
    """The guest executed IN, OUT, INS or OUTS on ``port``.

    ``size`` is the element size (1, 2 or 4 bytes) and ``count`` the number of
    elements (more than one only for string IO). For OUT, ``data`` holds the
    ``size * count`` bytes written, little-endian. For IN, ``data`` is empty and
    the VMM must call ``VCPU.complete()`` with ``size * count`` bytes (or one
    integer when ``count == 1``) before the next ``run()``.
    """

    reason: ClassVar[ExitReason] = ExitReason.IO
    port: int
    size: int
    count: int
    direction: IoDirection
    data: bytes = b""

    @property
    def is_in(self) -> bool:
        """True for IN / INS, which wait for ``complete()``."""
        return self.direction is IoDirection.IN

    def values(self) -> tuple[int, ...]:
        """The OUT data as ``count`` little-endian integers of ``size`` bytes."""
        n = self.size
        return tuple(int.from_bytes(self.data[i : i + n], "little") for i in range(0, len(self.data), n))


@dataclass(frozen=True, slots=True)
class MmioExit:
    """The guest accessed ``length`` bytes at guest-physical ``address`` that no writable slot backs.

    For a write, ``data`` holds the bytes written. For a read, ``data`` is empty
    and the VMM must call ``VCPU.complete()`` with ``length`` bytes (or an
    integer) before the next ``run()``.
    """

    reason: ClassVar[ExitReason] = ExitReason.MMIO
    address: int
    length: int
    is_write: bool
    data: bytes = b""

    @property
    def value(self) -> int:
        """A write's data as a little-endian integer."""
        return int.from_bytes(self.data, "little")


@dataclass(frozen=True, slots=True)
class HltExit:
    """The guest executed HLT (only without an in-kernel irqchip). RIP is past the HLT."""

    reason: ClassVar[ExitReason] = ExitReason.HLT


@dataclass(frozen=True, slots=True)
class ShutdownExit:
    """The guest triple-faulted; running again gives SHUTDOWN again until the state is reset."""

    reason: ClassVar[ExitReason] = ExitReason.SHUTDOWN


@dataclass(frozen=True, slots=True)
class DebugExit:
    """A guest-debug event: single-step or breakpoint (``exception`` 1 = #DB, 3 = #BP).

    ``pc`` is the linear address (CS base + RIP) where the guest stopped; ``dr6`` / ``dr7`` as
    reported (KVM fills them in for #DB only: for #BP they hold whatever ``kvm_run`` held).
    """

    reason: ClassVar[ExitReason] = ExitReason.DEBUG
    exception: int
    pc: int
    dr6: int
    dr7: int


@dataclass(frozen=True, slots=True)
class IrqWindowOpenExit:
    """The guest can take an interrupt now (asked for with ``request_interrupt_window``)."""

    reason: ClassVar[ExitReason] = ExitReason.IRQ_WINDOW_OPEN


@dataclass(frozen=True, slots=True)
class InterruptedExit:
    """``run()`` returned because of ``kick()`` or ``immediate_exit`` (EINTR); nothing to answer."""

    reason: ClassVar[ExitReason] = ExitReason.INTR


@dataclass(frozen=True, slots=True)
class InternalErrorExit:
    """The hypervisor could not go on (``suberror`` 1: it could not emulate an instruction)."""

    reason: ClassVar[ExitReason] = ExitReason.INTERNAL_ERROR
    suberror: int
    data: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class FailEntryExit:
    """The hardware refused to enter the guest (``hardware_reason`` is the VMX/SVM code)."""

    reason: ClassVar[ExitReason] = ExitReason.FAIL_ENTRY
    hardware_reason: int
    cpu: int


@dataclass(frozen=True, slots=True)
class SystemEventExit:
    """The guest asked for a shutdown, reset or crash report (e.g. through PSCI or ACPI)."""

    reason: ClassVar[ExitReason] = ExitReason.SYSTEM_EVENT
    type: int
    data: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class UnknownExit:
    """An exit hvcore does not decode; ``raw_reason`` is the backend's number for it."""

    reason: ClassVar[ExitReason] = ExitReason.UNKNOWN
    raw_reason: int
    hardware_reason: int = 0


Exit = (
    IoExit
    | MmioExit
    | HltExit
    | ShutdownExit
    | DebugExit
    | IrqWindowOpenExit
    | InterruptedExit
    | InternalErrorExit
    | FailEntryExit
    | SystemEventExit
    | UnknownExit
)
"""Any value ``VCPU.run()`` returns."""
