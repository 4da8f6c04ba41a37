"""The debug console (QEMU's ``isa-debugcon``, Bochs' port 0xE9 hack): ``DebugConsole``.

One port, 0x402 where SeaBIOS and OVMF print their debug log (0xE9 on Bochs). A write sends
its low byte to the output stream (flushed per byte) and appends it to :attr:`DebugConsole.data`;
a read answers the readback value, 0xE9 as QEMU does, which is how guests detect the console.
"""

from __future__ import annotations

import contextlib
import threading
from typing import BinaryIO, ClassVar

from hvcore.errors import InvalidArgument

__all__ = ["DebugConsole"]


class DebugConsole:
    """The debug console: register at ``PORT`` (``LENGTH`` port); output to a stream and ``data``."""

    PORT: ClassVar[int] = 0x402
    """Where SeaBIOS and OVMF write their log (QEMU's ``-device isa-debugcon,iobase=0x402``)."""
    LENGTH: ClassVar[int] = 1
    """How many ports to register."""

    def __init__(self, output: BinaryIO | None = None, name: str = "debugcon", readback: int = 0xE9) -> None:
        if not 0 <= readback <= 0xFF:
            raise InvalidArgument(f"{name}: readback {readback:#x} is not a byte", operation="DebugConsole")
        self.name = name
        self.readback = readback
        """What a guest read answers."""
        self.data = bytearray()
        """Every byte the guest wrote, in order."""
        self._output = output
        self._lock = threading.Lock()

    def read(self, offset: int, size: int) -> int:
        """The readback value (0xE9)."""
        return self.readback

    def write(self, offset: int, size: int, value: int) -> None:
        """Output the low byte of ``value``."""
        byte = bytes((value & 0xFF,))
        with self._lock:
            self.data += byte
            if self._output is not None:
                # a broken output stream drops the byte; the guest never sees a host error
                with contextlib.suppress(OSError, ValueError):
                    self._output.write(byte)
                    self._output.flush()

    def text(self, encoding: str = "utf-8") -> str:
        """What was written so far, decoded (undecodable bytes replaced)."""
        with self._lock:
            return self.data.decode(encoding, errors="replace")
