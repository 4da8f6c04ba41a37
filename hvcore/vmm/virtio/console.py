"""virtio-console (console device, ID 3; virtio spec 1.2, section 5.3): one port, bytes both ways.

Queue 0 (receiveq) carries host-to-guest bytes, queue 1 (transmitq) guest-to-host bytes; no
MULTIPORT, so there is no control queue and Linux makes the one port ``/dev/hvc0``. What the guest
transmits goes to the ``output`` stream (flushed per chain) and is collected in
:attr:`VirtioConsole.data`, as :class:`~hvcore.vmm.devices.debugcon.DebugConsole` does.

Input comes from :meth:`VirtioConsole.feed` (any thread). It waits in a bounded buffer until the
guest offers receive buffers: every feed and every driver notification of queue 0 fills as many
buffers as there are bytes for, and a chain is only taken when there is something to put in it.
A feed that would overflow the buffer raises :class:`hvcore.ResourceExhausted` and queues nothing,
so the caller can wait (:attr:`VirtioConsole.queued_input`) and feed again. Pending input
survives a device reset (the driver re-initialising).

Offered: VIRTIO_CONSOLE_F_SIZE (``cols`` and ``rows`` in the configuration space, unless
``size=None``) and VIRTIO_CONSOLE_F_EMERG_WRITE (a byte written to ``emerg_wr`` is output at once).
"""

from __future__ import annotations

import contextlib
import struct
import threading
from collections.abc import Callable
from typing import BinaryIO, Final

from hvcore.arguments import check_bytes, check_int, check_str, check_timeout
from hvcore.errors import InvalidArgument, ResourceExhausted
from hvcore.vmm.virtio.queue import SplitQueue

__all__ = ["MAX_TRANSMIT", "VIRTIO_CONSOLE_F_EMERG_WRITE", "VIRTIO_CONSOLE_F_SIZE", "VirtioConsole"]

VIRTIO_CONSOLE_F_SIZE: Final = 1 << 0
"""The configuration space holds the console's ``cols`` and ``rows``."""
VIRTIO_CONSOLE_F_EMERG_WRITE: Final = 1 << 2
"""The driver may write single bytes to ``emerg_wr`` (before the queues are up)."""
MAX_TRANSMIT: Final = 1 << 20
"""The most bytes of one transmit chain that are output; the rest are dropped (counted in ``output_dropped``)."""

_RECEIVEQ, _TRANSMITQ = 0, 1
_CONFIG = struct.Struct("<HHII")  # cols, rows, max_nr_ports, emerg_wr
_EMERG_WR: Final = 8


class VirtioConsole:
    """A console port: the guest's output to ``output`` and :attr:`data`, input through :meth:`feed`.

    ``size`` is the (columns, rows) the configuration space reports (``None``: not offered);
    ``input_limit`` bounds the bytes fed but not yet delivered to the guest.
    """

    device_id = 3

    def __init__(
        self,
        output: BinaryIO | None = None,
        name: str = "virtio-console",
        *,
        size: tuple[int, int] | None = (80, 24),
        input_limit: int = 1 << 16,
        queue_size: int = 64,
    ) -> None:
        check_str("name", name, "VirtioConsole")
        check_int("input_limit", input_limit, "VirtioConsole", 1)
        check_int("queue_size", queue_size, "VirtioConsole", 1)
        if size is not None:
            if not isinstance(size, tuple) or len(size) != 2:
                raise InvalidArgument(f"size must be (columns, rows) or None, not {size!r}", operation="VirtioConsole")
            for what, value in zip(("columns", "rows"), size, strict=True):
                check_int(what, value, "VirtioConsole", 0, 1 << 16)
        self.name = name
        self.queue_sizes: tuple[int, ...] = (queue_size, queue_size)
        self.features = VIRTIO_CONSOLE_F_EMERG_WRITE | (VIRTIO_CONSOLE_F_SIZE if size is not None else 0)
        columns, rows = size if size is not None else (0, 0)
        self._config = _CONFIG.pack(columns, rows, 1, 0)
        self.input_limit = input_limit
        """The most bytes :meth:`feed` keeps waiting for the guest."""
        self.data = bytearray()
        """Every byte the guest wrote, in order."""
        self.output_dropped = 0
        """Bytes of transmit chains beyond :data:`MAX_TRANSMIT`, not output."""
        self._output = output
        self._output_lock = threading.Condition()
        self._input = bytearray()
        self._input_lock = threading.Lock()
        self._wake: Callable[[int], None] | None = None

    # -- the host side ----------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes typed at the console, for the guest; any thread. They reach it as it offers buffers.

        Raises ``ResourceExhausted`` (and queues none of ``data``) when they would take the bytes
        waiting beyond ``input_limit``.
        """
        check_bytes("data", data, "feed")
        if not data:
            return
        with self._input_lock:
            if len(self._input) + len(data) > self.input_limit:
                raise ResourceExhausted(
                    f"{self.name}: {len(data)} more bytes would exceed the input limit of {self.input_limit} "
                    f"({len(self._input)} wait for the guest to offer receive buffers); feed them later",
                    operation="feed",
                )
            self._input += data
        wake = self._wake
        if wake is not None:
            wake(_RECEIVEQ)

    @property
    def queued_input(self) -> int:
        """Bytes fed but not yet delivered to the guest."""
        with self._input_lock:
            return len(self._input)

    def text(self, encoding: str = "utf-8") -> str:
        """What the guest wrote so far, decoded (undecodable bytes replaced)."""
        with self._output_lock:
            return self.data.decode(encoding, errors="replace")

    def wait_for(self, text: bytes, timeout: float | None = None) -> bool:
        """Wait until :attr:`data` holds ``text``; False if ``timeout`` seconds passed first."""
        check_bytes("text", text, "wait_for")
        seconds = check_timeout("timeout", timeout, "wait_for")
        with self._output_lock:
            return self._output_lock.wait_for(lambda: text in self.data, seconds)

    # -- the VirtioDevice protocol ------------------------------------------------------------------

    def read_config(self, offset: int, size: int) -> int:
        """``cols``, ``rows``, ``max_nr_ports`` (1), ``emerg_wr`` (reads 0); all-ones beyond."""
        data = self._config[offset : offset + size]
        return int.from_bytes(data.ljust(size, b"\xff"), "little")

    def write_config(self, offset: int, size: int, value: int) -> None:
        """A write to ``emerg_wr`` outputs its low byte; the rest is read-only."""
        if offset == _EMERG_WR:
            self._emit(bytes((value & 0xFF,)))

    def process(self, index: int, queue: SplitQueue) -> None:
        """Receive queue: deliver waiting input into offered buffers. Transmit queue: output every chain."""
        if index == _RECEIVEQ:
            self._deliver(queue)
            return
        for chain in queue:
            self._emit(queue.read(chain, limit=MAX_TRANSMIT))
            if chain.readable_length > MAX_TRANSMIT:
                self.output_dropped += chain.readable_length - MAX_TRANSMIT
            queue.push(chain, 0)

    def reset(self) -> None:
        """Nothing to forget: input not yet delivered waits for the driver to come back."""

    def attach(self, wake: Callable[[int], None]) -> None:
        """Keep the transport's callback: :meth:`feed` wakes the receive queue with it."""
        self._wake = wake

    # -- inside -------------------------------------------------------------------------------------

    def _deliver(self, queue: SplitQueue) -> None:
        # Only this method takes input out, and the transport serialises it; feed() only appends.
        while self.queued_input:
            chain = queue.pop()
            if chain is None:
                return  # the rest waits for the next buffers
            with self._input_lock:
                data = bytes(self._input[: chain.writable_length])
            written = queue.write(chain, data)
            with self._input_lock:
                del self._input[:written]
            queue.push(chain, written)

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        with self._output_lock:
            self.data += data
            if self._output is not None:
                # a broken output stream drops the bytes; the guest never sees a host error
                with contextlib.suppress(OSError, ValueError):
                    self._output.write(data)
                    self._output.flush()
            self._output_lock.notify_all()
