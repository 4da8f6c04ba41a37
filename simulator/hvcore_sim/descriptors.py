"""Decoding of GDT/LDT segment descriptors and IDT gates (Intel SDM Vol. 3, sections 3.4.5 and 6.11/6.14.1).

Segments come out as the ``Segment`` KVM reports for a loaded register: base,
byte-granular limit, the selector and the attribute bits, ``unusable=0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from hvcore.types import Segment, Sregs

__all__ = [
    "TYPE_ACCESSED",
    "TYPE_CODE",
    "TYPE_CONFORMING",
    "TYPE_EXPAND_DOWN",
    "TYPE_WRITABLE",
    "Gate",
    "decode_gate",
    "descriptor_address",
    "is_null_selector",
    "segment_from_descriptor",
]

TYPE_ACCESSED: Final = 0x1
"""Segment type bit: the descriptor has been loaded."""
TYPE_WRITABLE: Final = 0x2
"""Segment type bit of a data segment: writable (of a code segment: readable)."""
TYPE_EXPAND_DOWN: Final = 0x4
"""Segment type bit of a data segment: expand-down."""
TYPE_CONFORMING: Final = 0x4
"""Segment type bit of a code segment: conforming."""
TYPE_CODE: Final = 0x8
"""Segment type bit: code (else data)."""


@dataclass(frozen=True, slots=True)
class Gate:
    """An IDT gate descriptor.

    ``type`` is the 4-bit system type (0x5 task, 0x6/0x7 16-bit interrupt/trap,
    0xE/0xF 32- or 64-bit interrupt/trap), ``s`` the descriptor's S bit (0 for
    every valid gate), ``ist`` the IST index of a 64-bit gate (0: none).
    """

    offset: int
    selector: int
    type: int
    dpl: int
    present: bool
    s: int
    ist: int = 0

    @property
    def interrupt_gate(self) -> bool:
        """True for interrupt gates (which clear IF), False for trap gates."""
        return not self.type & 1


def decode_gate(raw: bytes) -> Gate:
    """The gate in ``raw``: an 8-byte legacy entry, or a 16-byte long-mode entry (64-bit offset, IST)."""
    low = int.from_bytes(raw[:8], "little")
    offset = (low & 0xFFFF) | ((low >> 48) & 0xFFFF) << 16
    ist = 0
    if len(raw) == 16:
        offset |= int.from_bytes(raw[8:12], "little") << 32
        ist = (low >> 32) & 0x7
    access = (low >> 40) & 0xFF
    return Gate(
        offset=offset,
        selector=(low >> 16) & 0xFFFF,
        type=access & 0xF,
        dpl=(access >> 5) & 3,
        present=bool(access & 0x80),
        s=(access >> 4) & 1,
        ist=ist,
    )


def segment_from_descriptor(raw: int, selector: int) -> Segment:
    """The segment register a load of ``selector`` with the 8-byte descriptor ``raw`` gives."""
    limit = (raw & 0xFFFF) | ((raw >> 48) & 0xF) << 16
    flags = (raw >> 52) & 0xF
    g = (flags >> 3) & 1
    access = (raw >> 40) & 0xFF
    return Segment(
        base=((raw >> 16) & 0xFFFFFF) | ((raw >> 56) & 0xFF) << 24,
        limit=(limit << 12 | 0xFFF) if g else limit,
        selector=selector,
        type=access & 0xF,
        present=(access >> 7) & 1,
        dpl=(access >> 5) & 3,
        db=(flags >> 2) & 1,
        s=(access >> 4) & 1,
        l=(flags >> 1) & 1,
        g=g,
        avl=flags & 1,
        unusable=0,
    )


def is_null_selector(selector: int) -> bool:
    """True for a null selector (GDT index 0, whatever the RPL)."""
    return not selector & 0xFFFC


def descriptor_address(sregs: Sregs, selector: int) -> int | None:
    """The linear address of ``selector``'s descriptor in the GDT or LDT, or None beyond the table's limit.

    An LDT selector with no usable LDT loaded is also None. A null selector is
    the caller's business (its checks differ by context).
    """
    index = selector & 0xFFF8
    if selector & 4:
        ldt = sregs.ldt
        if ldt.unusable or not ldt.present or is_null_selector(ldt.selector) or index + 7 > ldt.limit:
            return None
        return ldt.base + index
    if index + 7 > sregs.gdt.limit:
        return None
    return sregs.gdt.base + index
