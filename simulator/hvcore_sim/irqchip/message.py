"""``InterruptMessage``: one interrupt on the way to local APICs (from the IOAPIC, an MSI or an IPI)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

__all__ = ["DeliveryMode", "InterruptMessage", "Shorthand"]


class DeliveryMode(IntEnum):
    """APIC delivery modes (ICR / redirection entry / MSI data bits 10:8)."""

    FIXED = 0
    LOWEST_PRIORITY = 1
    SMI = 2
    REMOTE_READ = 3
    """Obsolete on hardware; KVM's paravirtual kick (``APIC_DM_REMRD``): it wakes a halted vCPU."""
    NMI = 4
    INIT = 5
    STARTUP = 6
    EXTINT = 7


class Shorthand(IntEnum):
    """ICR destination shorthand (bits 19:18)."""

    NONE = 0
    SELF = 1
    ALL_INCLUDING_SELF = 2
    ALL_EXCLUDING_SELF = 3


@dataclass(frozen=True, slots=True)
class InterruptMessage:
    """What an interrupt source asks the APIC bus to deliver.

    ``destination`` is an 8-bit xAPIC destination (0xff: broadcast), or a 32-bit one from an
    x2APIC-mode IPI (0xffffffff: broadcast), read as a physical APIC id, or as a logical mask when
    ``logical``; ``source`` is the sending APIC's id for IPIs (``None`` for the IOAPIC and MSIs),
    used by the shorthands.
    """

    vector: int
    delivery_mode: DeliveryMode = DeliveryMode.FIXED
    destination: int = 0
    logical: bool = False
    level_triggered: bool = False
    assert_level: bool = True
    shorthand: Shorthand = Shorthand.NONE
    source: int | None = None

    @classmethod
    def from_msi(cls, address: int, data: int) -> InterruptMessage:
        """Decode an x86 MSI: address 0xfeeXXXXX (destination bits 19:12, logical bit 2), data (vector, mode)."""
        return cls(
            vector=data & 0xFF,
            delivery_mode=DeliveryMode((data >> 8) & 7) if (data >> 8) & 7 != 3 else DeliveryMode.FIXED,
            destination=(address >> 12) & 0xFF,
            logical=bool(address >> 2 & 1),
            level_triggered=bool(data >> 15 & 1),
            assert_level=bool(data >> 14 & 1) or not data >> 15 & 1,
        )
