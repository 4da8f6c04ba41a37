"""The ACPI power-management timer (ACPI 6.5, 4.8.3.3): a 24-bit counter at 3.579545 MHz.

It counts the machine's clock (``DeviceHost.timers.now()``), so on the simulator's virtual clock it
advances with the guest's instructions. The FADT's ``PM_TMR_BLK`` points at it (PIIX4's PM block,
offset 8). Read-only; the timer-overflow status bit and its SCI (``TMR_STS``/``TMR_EN``) are not
modelled: Linux and SeaBIOS read the counter and never wait for the overflow event.
"""

from __future__ import annotations

from typing import ClassVar, Final

from hvcore.vmm.device import DeviceHost

__all__ = ["PM_TIMER_HZ", "PmTimer"]

PM_TIMER_HZ: Final = 3_579_545
"""The timer's frequency, fixed by the ACPI specification."""
_MASK: Final = 0xFFFFFF  # 24 bits: the FADT leaves TMR_VAL_EXT clear


class PmTimer:
    """The counter, one 32-bit register (its top byte reads 0)."""

    LENGTH: ClassVar[int] = 4

    def __init__(self, host: DeviceHost, name: str = "pm-timer") -> None:
        self.name = name
        self.host = host

    def read(self, offset: int, size: int) -> int:
        """The count now (any part of the register)."""
        ticks = self.host.timers.now() * PM_TIMER_HZ // 1_000_000_000 & _MASK
        return ticks >> (8 * offset) & ((1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        """Ignored: the counter is read-only."""
