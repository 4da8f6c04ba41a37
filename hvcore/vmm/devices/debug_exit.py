"""QEMU's ``isa-debug-exit``: a port whose write stops the machine with a status: ``DebugExit``.

Registered at 0xF4 (1 port; QEMU's iosize may be 1, 2 or 4 and any width of write is
accepted). A write of value ``v`` asks the machine to stop with status ``(v << 1) | 1``,
exactly QEMU's ``exit((val << 1) | 1)``, so a test guest can report success or failure as an
odd process exit code (0 -> 1, 1 -> 3, ...). The status is not truncated to 8 bits; a VMM that
turns it into a process exit code does that. Reads answer 0.
"""

from __future__ import annotations

import threading
from typing import ClassVar

from hvcore.vmm.device import DeviceHost, StopRequest

__all__ = ["DebugExit"]


class DebugExit:
    """The debug-exit port: register at ``PORT`` (``LENGTH`` port, or up to 4)."""

    PORT: ClassVar[int] = 0xF4
    """The usual place (``-device isa-debug-exit,iobase=0xf4,iosize=0x04``)."""
    LENGTH: ClassVar[int] = 1
    """How many ports to register (QEMU's ``iosize``; 1 to 4 all work)."""
    REASON: ClassVar[str] = "debug-exit"
    """The ``StopRequest.reason`` this device sends."""

    def __init__(self, host: DeviceHost, name: str = "debug-exit") -> None:
        self.name = name
        self._host = host
        self._lock = threading.Lock()
        self._status: int | None = None

    @property
    def status(self) -> int | None:
        """The status of the last stop this device requested (``None``: none yet)."""
        with self._lock:
            return self._status

    def read(self, offset: int, size: int) -> int:
        """Reads answer 0, as QEMU's."""
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        """Request a stop with status ``(value << 1) | 1``."""
        status = ((value & ((1 << (8 * size)) - 1)) << 1) | 1
        with self._lock:
            self._status = status
        self._host.request_stop(StopRequest(self.REASON, status))
