"""QEMU's ``pc-testdev``, through which kvm-unit-tests drive interrupt lines: ``PcTestdev``.

Its port ranges, as QEMU registers them (see :meth:`PcTestdev.ports`):

- 0xE0, 4 ports, and the same register again at 0xE8: a 32-bit scratch register. A write of
  ``size`` bytes at offset ``n`` replaces those bytes (bits ``8n`` up), a read returns them.
- 0xE4, 4 ports: "flush page" (QEMU unmaps and remaps the guest page written, which only matters
  to its own TLB): writes are accepted and do nothing, reads answer 0.
- 0x2000, 24 ports: interrupt lines. A write to ``0x2000 + n`` drives GSI ``n`` high for a
  non-zero value and low for 0 (QEMU's ``qemu_set_irq(isa_get_irq(n), !!value)``); reads answer 0.
  Without an irqchip the writes are ignored.

Left out: QEMU's 64 KiB scratch MMIO window at 0xff000000.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import ClassVar

from hvcore.vmm.device import Device, DeviceHost

__all__ = ["PcTestdev", "PcTestdevPort"]


class PcTestdevPort:
    """One port range of a :class:`PcTestdev`, a ``Device``."""

    def __init__(self, name: str, read: Callable[[int, int], int], write: Callable[[int, int, int], None]) -> None:
        self.name = name
        self._read, self._write = read, write

    def read(self, offset: int, size: int) -> int:
        """The range's read."""
        return self._read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        """The range's write."""
        self._write(offset, size, value)


class PcTestdev:
    """The test device: register each range :meth:`ports` gives."""

    SCRATCH: ClassVar[int] = 0xE0
    """The scratch register (QEMU's ``pc-testdev-ioport``)."""
    SCRATCH_BYTES: ClassVar[int] = 0xE8
    """The scratch register again (QEMU's ``pc-testdev-ioport-byte``, which splits accesses into bytes)."""
    FLUSH_PAGE: ClassVar[int] = 0xE4
    """The page flush, a no-op here."""
    IRQ_BASE: ClassVar[int] = 0x2000
    """Port of interrupt line 0; line ``n`` is at ``IRQ_BASE + n``."""
    IRQ_LINES: ClassVar[int] = 24
    """Lines the device drives (GSIs 0-23, the IOAPIC's pins)."""

    def __init__(self, host: DeviceHost, name: str = "pc-testdev") -> None:
        self.name = name
        self._host = host
        self._lock = threading.Lock()
        self._scratch = 0

    def ports(self) -> tuple[tuple[int, int, Device], ...]:
        """``(base, length, device)`` for each range to register on the IO bus."""
        return (
            (self.SCRATCH, 4, PcTestdevPort(f"{self.name}-ioport", self._read_scratch, self._write_scratch)),
            (self.FLUSH_PAGE, 4, PcTestdevPort(f"{self.name}-flush", _reads_zero, _ignored)),
            (self.SCRATCH_BYTES, 4, PcTestdevPort(f"{self.name}-ioport-byte", self._read_scratch, self._write_scratch)),
            (self.IRQ_BASE, self.IRQ_LINES, PcTestdevPort(f"{self.name}-irq", _reads_zero, self._set_line)),
        )

    @property
    def scratch(self) -> int:
        """The scratch register."""
        with self._lock:
            return self._scratch

    def _read_scratch(self, offset: int, size: int) -> int:
        with self._lock:
            return (self._scratch >> (8 * offset)) & ((1 << (8 * size)) - 1)

    def _write_scratch(self, offset: int, size: int, value: int) -> None:
        shift, mask = 8 * offset, (1 << (8 * size)) - 1
        with self._lock:
            self._scratch = (self._scratch & ~(mask << shift) | (value & mask) << shift) & 0xFFFFFFFF

    def _set_line(self, offset: int, size: int, value: int) -> None:
        line = self._host.irq(offset)
        if line is not None:
            line.set(bool(value & ((1 << (8 * size)) - 1)))


def _reads_zero(offset: int, size: int) -> int:
    return 0


def _ignored(offset: int, size: int, value: int) -> None:
    pass
