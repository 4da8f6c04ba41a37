"""The PC chipset's own PCI functions, as firmware and Linux look for them: i440FX and PIIX3.

SeaBIOS finds the host bridge by its IDs (8086:1237) to shadow itself through the PAM registers
(0x59-0x5F) and the ISA bridge (8086:7000) to route the four PCI interrupt lines (PIRQA-D,
registers 0x60-0x63) to ISA IRQs. Both keep what the guest writes there; a hvcore machine's BIOS
area is RAM from the start (:mod:`hvcore.vmm.loaders.firmware`), so the PAM bits change nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from hvcore.vmm.pci.function import PciFunction

__all__ = ["SMRAM_D_OPEN", "SMRAM_G_SMRAME", "I440fxHostBridge", "Piix3IsaBridge"]

INTEL: Final = 0x8086
_PAM0, _PAM_COUNT, _SMRAM = 0x59, 7, 0x72
SMRAM_D_OPEN: Final = 1 << 6
"""SMRAM register: SMRAM is visible outside SMM too."""
SMRAM_G_SMRAME: Final = 1 << 3
"""SMRAM register: SMRAM is enabled (a vCPU in SMM sees it)."""
_SMRAM_RESET: Final = 0x02
_PIRQ_ROUTE: Final = 0x60
_ROUTING_DISABLED: Final = 0x80


class I440fxHostBridge(PciFunction):
    """00:00.0: the i440FX host bridge; ``smram_changed(value)`` hears of each write to the SMRAM register."""

    def __init__(self, smram_changed: Callable[[int], None] = lambda _value: None) -> None:
        super().__init__("i440fx", vendor_id=INTEL, device_id=0x1237, class_code=0x060000, revision=2)
        self._writable[_PAM0 : _PAM0 + _PAM_COUNT] = b"\x33" * _PAM_COUNT
        self._writable[_SMRAM] = 0x78
        self.config[_SMRAM] = _SMRAM_RESET
        self._smram_changed = smram_changed

    @property
    def smram(self) -> int:
        """The SMRAM register."""
        return self.config[_SMRAM]

    def config_write(self, offset: int, size: int, value: int) -> None:
        """A configuration write; the SMRAM register re-maps the SMRAM window at once."""
        super().config_write(offset, size, value)
        if offset <= _SMRAM < offset + size:
            self._smram_changed(self.config[_SMRAM])


class Piix3IsaBridge(PciFunction):
    """00:01.0: the PIIX3 PCI-to-ISA bridge; ``routes_changed`` hears of writes to PIRQA-D's routing."""

    def __init__(self, routes_changed: Callable[[], None] = lambda: None) -> None:
        super().__init__("piix3", vendor_id=INTEL, device_id=0x7000, class_code=0x060100, multifunction=True)
        self.config[_PIRQ_ROUTE : _PIRQ_ROUTE + 4] = bytes([_ROUTING_DISABLED]) * 4
        self._writable[_PIRQ_ROUTE : _PIRQ_ROUTE + 4] = b"\x8f" * 4
        self._routes_changed = routes_changed

    def isa_irq(self, pirq: int) -> int | None:
        """The ISA IRQ PIRQ ``pirq`` (0-3: A-D) is routed to, or ``None`` while its routing is disabled."""
        route = self.config[_PIRQ_ROUTE + pirq]
        return None if route & _ROUTING_DISABLED or route < 3 or route in (8, 13) else route & 0xF

    def config_write(self, offset: int, size: int, value: int) -> None:
        """A configuration write; the PIRQ routing registers re-route the lines at once."""
        super().config_write(offset, size, value)
        if offset < _PIRQ_ROUTE + 4 and offset + size > _PIRQ_ROUTE:
            self._routes_changed()
