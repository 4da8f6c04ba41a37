"""Guest faults raised by the page-table walker and by event delivery.

These are signals about the *guest*, not hvcore errors: the simulator catches
them and delivers them to the guest (or turns a triple fault into a SHUTDOWN
exit)::

    GuestFault(vector, error_code)     an exception the guest must receive
     +-- InvalidTss          #TS (10)
     +-- SegmentNotPresent   #NP (11)
     +-- StackFault          #SS (12)
     +-- GeneralProtection   #GP (13)
     |    +-- NonCanonical   a non-canonical linear address (#GP(0), or #SS for stack accesses)
     +-- PageFault           #PF (14), with the faulting linear address for CR2
    TripleFault              a fault while delivering #DF: the vCPU shuts down
    DeliveryError            an hvcore ``Unsupported``: an event the simulator cannot deliver

Each exception's ``args`` are its constructor arguments, so it pickles.
"""

from __future__ import annotations

from hvcore.errors import Unsupported

__all__ = [
    "DeliveryError",
    "GeneralProtection",
    "GuestFault",
    "InvalidTss",
    "NonCanonical",
    "PageFault",
    "SegmentNotPresent",
    "StackFault",
    "TripleFault",
]


class GuestFault(Exception):
    """An exception the guest must receive: ``vector`` and, if it has one, ``error_code``."""

    def __init__(self, vector: int, error_code: int | None = None) -> None:
        super().__init__(vector, error_code)
        self.vector = vector
        self.error_code = error_code

    def __str__(self) -> str:
        code = "" if self.error_code is None else f"({self.error_code:#x})"
        return f"guest exception {self.vector}{code}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vector={self.vector}, error_code={self.error_code!r})"


class _FixedVectorFault(GuestFault):
    VECTOR = 0

    def __init__(self, error_code: int = 0) -> None:
        GuestFault.__init__(self, self.VECTOR, error_code)
        self.args = (error_code,)


class InvalidTss(_FixedVectorFault):
    """#TS (vector 10): a bad TSS or a bad stack segment in it."""

    VECTOR = 10


class SegmentNotPresent(_FixedVectorFault):
    """#NP (vector 11): a gate or segment descriptor with P=0."""

    VECTOR = 11


class StackFault(_FixedVectorFault):
    """#SS (vector 12): a stack push outside the stack segment, or a non-canonical stack address."""

    VECTOR = 12


class GeneralProtection(_FixedVectorFault):
    """#GP (vector 13)."""

    VECTOR = 13


class NonCanonical(GeneralProtection):
    """A linear address that is not canonical in long mode: #GP(0) (the caller makes it #SS for the stack)."""

    def __init__(self, linear: int) -> None:
        GeneralProtection.__init__(self, 0)
        self.linear = linear
        self.args = (linear,)

    def __str__(self) -> str:
        return f"non-canonical linear address {self.linear:#x}"


class PageFault(GuestFault):
    """#PF (vector 14): ``error_code`` is the architectural one, ``linear`` goes to CR2."""

    def __init__(self, error_code: int, linear: int) -> None:
        GuestFault.__init__(self, 14, error_code)
        self.linear = linear
        self.args = (error_code, linear)

    def __str__(self) -> str:
        return f"page fault at {self.linear:#x} (error code {self.error_code:#x})"

    def __repr__(self) -> str:
        return f"PageFault(error_code={self.error_code:#x}, linear={self.linear:#x})"


class TripleFault(Exception):
    """A fault while delivering #DF: the processor shuts down (KVM reports ``KVM_EXIT_SHUTDOWN``).

    ``fault`` is the exception that could not be delivered.
    """

    def __init__(self, fault: GuestFault) -> None:
        super().__init__(fault)
        self.fault = fault

    def __str__(self) -> str:
        return f"triple fault: {self.fault} while delivering #DF"


class DeliveryError(Unsupported):
    """The simulator cannot deliver this event (a task gate, or an interrupt from virtual-8086 mode)."""

    __module__ = "hvcore_sim.faults"
