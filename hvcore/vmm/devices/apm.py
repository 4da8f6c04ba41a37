"""Advanced Power Management control and status ports (0xB2, 0xB3), as QEMU's ``apm`` device.

Firmware writes a command to the control port (APMC) to raise an SMI; the status port (APMS) is
a scratch byte firmware and its SMI handler pass values through (SeaBIOS: "the SMM code ran").
Whether a write raises the SMI is the power-management function's to decide (PIIX4's DEVACTB
APMC_EN bit, :class:`hvcore.vmm.pci.pm.Piix4Pm`), so the device calls ``on_command`` with each
command byte.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import ClassVar

from hvcore.vmm.device import read_registers

__all__ = ["ApmPorts"]

_CONTROL, _STATUS = 0, 1


class ApmPorts:
    """APMC (offset 0) and APMS (offset 1)."""

    PORT: ClassVar[int] = 0xB2
    LENGTH: ClassVar[int] = 2

    def __init__(self, on_command: Callable[[int], None], name: str = "apm") -> None:
        self.name = name
        self._on_command = on_command
        self._lock = threading.Lock()
        self._registers = bytearray(self.LENGTH)

    def read(self, offset: int, size: int) -> int:
        """The last command and the status byte (all-ones past them)."""
        with self._lock:
            return read_registers(self._registers, offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        """A command byte (then ``on_command``) and/or the status byte."""
        data = value.to_bytes(size, "little")
        command = None
        with self._lock:
            for index, byte in enumerate(data):
                at = offset + index
                if at < self.LENGTH:
                    self._registers[at] = byte
                    if at == _CONTROL:
                        command = byte
        if command is not None:
            self._on_command(command)
