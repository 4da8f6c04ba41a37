"""The events delivery takes: what happened, its vector and error code, and the exception classes.

See :mod:`hvcore_sim.delivery`, which delivers them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final, Literal

from hvcore.errors import InvalidArgument

__all__ = ["HAS_ERROR_CODE", "Event", "EventKind", "exception_class"]

HAS_ERROR_CODE: Final = frozenset({8, 10, 11, 12, 13, 14, 17, 21})
"""Exception vectors that push an error code (in protected and long mode only)."""


class EventKind(Enum):
    """Where an event comes from, which decides the EXT bit, the gate DPL check and the error code."""

    EXCEPTION = "exception"
    """A hardware exception (fault or trap)."""
    EXTERNAL = "external"
    """An external interrupt (from the PIC/APIC, or injected by the VMM)."""
    NMI = "nmi"
    """A non-maskable interrupt (vector 2)."""
    SOFTWARE = "software"
    """``int n``: the gate's DPL must be >= CPL."""
    SOFTWARE_EXCEPTION = "software_exception"
    """``int3`` (#BP) or ``into`` (#OF): a benign exception with the gate DPL check of ``int n``."""


_SOFTWARE: Final = frozenset({EventKind.SOFTWARE, EventKind.SOFTWARE_EXCEPTION})


@dataclass(frozen=True, slots=True)
class Event:
    """An event to deliver (the return address it pushes is ``regs.rip``, see :mod:`hvcore_sim.delivery`).

    ``error_code`` is given exactly for the :data:`HAS_ERROR_CODE` exceptions
    (real mode ignores it). ``instruction_length`` is the length of the
    ``int``/``int3``/``into`` of a software event. ``cr2`` is the faulting
    address of a #PF, loaded into CR2 (None leaves CR2 as it is).
    """

    vector: int
    kind: EventKind
    error_code: int | None = None
    instruction_length: int = 0
    cr2: int | None = None
    injected: bool = False
    """An exception the VMM injected (``KVM_SET_VCPU_EVENTS``), which KVM hands the processor as it is: the
    error code is pushed exactly when the VMM gave one, whatever the vector, and no RF is added to RFLAGS."""

    def __post_init__(self) -> None:
        problem = None
        if not 0 <= self.vector <= 255:
            problem = "vector must be 0-255"
        elif self.kind is EventKind.EXCEPTION and self.vector >= 32:
            problem = "exceptions have vectors below 32"
        elif self.kind is EventKind.NMI and self.vector != 2:
            problem = "an NMI has vector 2"
        elif self.kind is EventKind.SOFTWARE_EXCEPTION and self.vector not in (3, 4):
            problem = "software exceptions are #BP (3) and #OF (4)"
        elif self.injected and self.kind is not EventKind.EXCEPTION:
            problem = "only exceptions are injected this way"
        elif not self.injected and (
            (self.kind is EventKind.EXCEPTION and self.vector in HAS_ERROR_CODE) != (self.error_code is not None)
        ):
            problem = "an error code is given exactly for exceptions 8, 10-14, 17 and 21"
        elif self.error_code is not None and not 0 <= self.error_code <= 0xFFFFFFFF:
            problem = "the error code must fit 32 bits"
        elif not 0 <= self.instruction_length <= 15 or (self.instruction_length and self.kind not in _SOFTWARE):
            problem = "instruction_length (0-15) is for software interrupts only"
        elif self.cr2 is not None and not (self.kind is EventKind.EXCEPTION and self.vector == 14):
            problem = "cr2 is for page faults only"
        if problem:
            raise InvalidArgument(f"bad event {self!r}: {problem}", operation="deliver_event")

    @property
    def external(self) -> int:
        """The EXT bit of error codes raised while delivering this event: 0 for software events, else 1."""
        return 0 if self.kind in _SOFTWARE else 1

    @property
    def idt_error_code(self) -> int:
        """The error code naming this event's IDT entry (IDT bit set, plus EXT)."""
        return self.vector * 8 + 2 + self.external


def exception_class(vector: int) -> Literal["benign", "contributory", "page_fault"]:
    """The class of an exception for double-fault rules (SDM Vol. 3 Table 6-4, as KVM classifies).

    #DF itself (8) counts as benign here, as in KVM; a fault while delivering it is handled first.
    """
    if vector == 14:
        return "page_fault"
    if vector in (0, 10, 11, 12, 13):
        return "contributory"
    return "benign"
