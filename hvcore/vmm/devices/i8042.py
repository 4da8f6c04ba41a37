"""The PC keyboard controller (Intel 8042) with a PS/2 keyboard and no mouse attached: ``I8042``.

Two separate ports, data at 0x60 and status/command at 0x64; port 0x61 between them belongs to
another device, so the controller is registered as its two sub-devices::

    for base, length, device in i8042.ports():    # (0x60, 1, i8042.data_port), (0x64, 1, i8042.command_port)
        io_bus.register(base, length, device)

What it models (following QEMU's ``hw/input/pckbd.c``):

- the status register: output-buffer-full bits, the system flag (set, as after POST),
  "last write was a command", keyboard not inhibited;
- controller commands: 0x20-0x3F read and 0x60-0x7F write the command byte / internal RAM,
  0xA7/0xA8 and 0xAD/0xAE disable/enable the mouse/keyboard interface, 0xA9/0xAB interface
  tests (0x00: passed), 0xAA self test (0x55), 0xC0 input port, 0xD0/0xD1 read/write the output
  port, 0xD2/0xD3 write the output buffer as the keyboard/mouse, 0xDD/0xDF A20, 0xF0-0xFF pulse
  output-port bits;
- CPU reset: command 0xFE (or any 0xF0-0xFF pulse of bit 0), or an output-port write with bit 0
  clear, asks the machine to stop with ``StopRequest("reset")``;
- IRQ 1 / IRQ 12 (level, as QEMU) while controller output waits and the command byte enables
  them.

A :class:`~hvcore.vmm.devices.ps2.Ps2Keyboard` (no keys pressed) answers the bytes written to
port 0x60 with no controller command pending, as the keyboard QEMU's PC always has; a write to
it enables the keyboard interface again, as on QEMU. Its replies enter the output buffer one at
a time while the keyboard interface is enabled. ``I8042(host, keyboard=False)`` has none: bytes
for it are dropped. No mouse is attached: bytes for it (0xD4) are dropped. A read of port 0x60
with nothing waiting returns the last byte read, as QEMU's PS/2 queue does. The A20 gate is only
recorded in the output port (hvcore machines do not wrap at 1 MiB).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import ClassVar

from hvcore.vmm.device import Device, DeviceHost, IrqLine, StopRequest
from hvcore.vmm.devices.ps2 import Ps2Keyboard

__all__ = ["I8042", "I8042Port"]

_STAT_OBF = 0x01
_STAT_SYS = 0x04
_STAT_CMD = 0x08
_STAT_UNLOCKED = 0x10
_STAT_MOUSE_OBF = 0x20

_MODE_KBD_INT = 0x01
_MODE_MOUSE_INT = 0x02
_MODE_SYS = 0x04
_MODE_DISABLE_KBD = 0x10
_MODE_DISABLE_MOUSE = 0x20
_MODE_XLATE = 0x40

_OUT_RESET = 0x01
_OUT_A20 = 0x02
_OUT_OBF = 0x10
_OUT_MOUSE_OBF = 0x20
_OUT_ONES = 0xCC

_OUTPUT_QUEUE = 16


class I8042Port:
    """One port of an :class:`I8042` (its data port or its status/command port), a ``Device``."""

    def __init__(self, controller: I8042, name: str, *, command: bool) -> None:
        self.name = name
        self.controller = controller
        """The controller this port belongs to."""
        self._command = command

    def read(self, offset: int, size: int) -> int:
        """The status register (command port) or the output buffer (data port)."""
        return self.controller.read_status() if self._command else self.controller.read_data()

    def write(self, offset: int, size: int, value: int) -> None:
        """A controller command (command port) or a data byte (data port); the low byte counts."""
        if self._command:
            self.controller.write_command(value & 0xFF)
        else:
            self.controller.write_data(value & 0xFF)


class I8042:
    """The 8042 keyboard controller: register :attr:`data_port` and :attr:`command_port` (see :meth:`ports`)."""

    DATA_PORT: ClassVar[int] = 0x60
    """Where the data port goes."""
    COMMAND_PORT: ClassVar[int] = 0x64
    """Where the status / command port goes."""
    KEYBOARD_GSI: ClassVar[int] = 1
    """The keyboard's interrupt line."""
    MOUSE_GSI: ClassVar[int] = 12
    """The mouse's interrupt line."""
    RESET_REASON: ClassVar[str] = "reset"
    """The ``StopRequest.reason`` of a CPU reset through the controller."""

    def __init__(self, host: DeviceHost, name: str = "i8042", *, keyboard: bool = True) -> None:
        self.name = name
        self.keyboard = Ps2Keyboard() if keyboard else None
        """The keyboard behind the controller (``None``: none attached); the controller's lock guards it."""
        self._host = host
        self._lock = threading.Lock()
        self.data_port = I8042Port(self, f"{name}.data", command=False)
        """The data port device (register at ``DATA_PORT``, 1 port)."""
        self.command_port = I8042Port(self, f"{name}.command", command=True)
        """The status / command port device (register at ``COMMAND_PORT``, 1 port)."""
        # as after POST: self test passed (system flag), keyboard interrupt and translation on
        self._status = _STAT_SYS | _STAT_CMD | _STAT_UNLOCKED
        self._ram = bytearray(32)
        self._ram[0] = _MODE_KBD_INT | _MODE_MOUSE_INT | _MODE_SYS | _MODE_XLATE
        self._outport = _OUT_RESET | _OUT_A20 | _OUT_ONES
        self._pending_write = 0
        self._queue: deque[tuple[int, bool]] = deque()
        self._last = 0
        self._lines: dict[int, IrqLine] = {}
        self._levels = {self.KEYBOARD_GSI: False, self.MOUSE_GSI: False}
        self._resets = 0

    def ports(self) -> tuple[tuple[int, int, Device], ...]:
        """``(base, length, device)`` for each range to register on the IO bus."""
        return ((self.DATA_PORT, 1, self.data_port), (self.COMMAND_PORT, 1, self.command_port))

    @property
    def command_byte(self) -> int:
        """The controller command byte (the 0x20 / 0x60 "mode")."""
        with self._lock:
            return self._ram[0]

    @property
    def output_port(self) -> int:
        """The output port (bit 0: not in reset, bit 1: A20 enabled)."""
        with self._lock:
            return self._outport_value()

    @property
    def reset_requests(self) -> int:
        """How many CPU resets the guest asked for."""
        with self._lock:
            return self._resets

    def read_status(self) -> int:
        """A read of the status register (port 0x64)."""
        with self._lock:
            return self._status

    def read_data(self) -> int:
        """A read of the output buffer (port 0x60): the next byte, or the last one again."""
        with self._lock:
            if self._queue:
                self._last, _ = self._queue.popleft()
                self._update()
            return self._last

    def write_command(self, value: int) -> None:
        """A controller command written to port 0x64."""
        reset = False
        with self._lock:
            self._status |= _STAT_CMD
            if (value & 0xF0) == 0xF0:
                # pulse output-port bits 3-0 low for 6 us: only bit 0 (CPU reset) does anything
                reset = not value & _OUT_RESET
            elif 0x20 <= value <= 0x3F:
                self._push(self._ram[value - 0x20])
            elif 0x60 <= value <= 0x7F or value in (0xD1, 0xD2, 0xD3, 0xD4):
                self._pending_write = value
            elif value == 0xA7:
                self._ram[0] |= _MODE_DISABLE_MOUSE
            elif value == 0xA8:
                self._ram[0] &= ~_MODE_DISABLE_MOUSE
            elif value in (0xA9, 0xAB):
                self._push(0x00)  # interface test passed
            elif value == 0xAA:
                self._status |= _STAT_SYS
                self._push(0x55)
            elif value == 0xAD:
                self._ram[0] |= _MODE_DISABLE_KBD
                self._update()
            elif value == 0xAE:
                self._ram[0] &= ~_MODE_DISABLE_KBD
                self._update()
            elif value == 0xC0:
                self._push(0x80)  # input port: keyboard not inhibited
            elif value == 0xD0:
                self._push(self._outport_value())
            elif value == 0xDD:
                self._outport &= ~_OUT_A20
            elif value == 0xDF:
                self._outport |= _OUT_A20
            # anything else is ignored, as an unsupported command on QEMU
            if reset:
                self._resets += 1
        if reset:
            self._host.request_stop(StopRequest(self.RESET_REASON))

    def write_data(self, value: int) -> None:
        """A byte written to port 0x60: the argument of a pending command, else for the keyboard."""
        reset = False
        with self._lock:
            self._status &= ~_STAT_CMD
            command, self._pending_write = self._pending_write, 0
            if 0x60 <= command <= 0x7F:
                self._ram[command - 0x60] = value
                if command == 0x60:
                    # the status register's system flag follows the command byte's
                    self._status = (self._status & ~_STAT_SYS) | (value & _MODE_SYS)
                    self._update()
            elif command == 0xD1:
                self._outport = value
                reset = not value & _OUT_RESET
            elif command == 0xD2:
                self._push(value)
            elif command == 0xD3:
                self._push(value, aux=True)
            elif command == 0 and self.keyboard is not None:
                self._ram[0] &= ~_MODE_DISABLE_KBD  # talking to the keyboard enables its interface
                self.keyboard.write(value, translated=bool(self._ram[0] & _MODE_XLATE))
                self._update()
            # 0xD4 (to the mouse), or 0 without a keyboard: nothing is attached, the byte is lost
            if reset:
                self._resets += 1
        if reset:
            self._host.request_stop(StopRequest(self.RESET_REASON))

    # -- with the lock held ---------------------------------------------------------------

    def _outport_value(self) -> int:
        value = self._outport & ~(_OUT_OBF | _OUT_MOUSE_OBF)
        if self._queue:
            value |= _OUT_MOUSE_OBF if self._queue[0][1] else _OUT_OBF
        return value

    def _push(self, value: int, *, aux: bool = False) -> None:
        if len(self._queue) < _OUTPUT_QUEUE:
            self._queue.append((value, aux))
        self._update()

    def _update(self) -> None:
        attached = self.keyboard
        if not self._queue and attached is not None and attached.has_output and not self._ram[0] & _MODE_DISABLE_KBD:
            self._queue.append((attached.take(), False))
        self._status &= ~(_STAT_OBF | _STAT_MOUSE_OBF)
        keyboard = mouse = False
        if self._queue:
            self._status |= _STAT_OBF
            mode = self._ram[0]
            if self._queue[0][1]:
                self._status |= _STAT_MOUSE_OBF
                mouse = bool(mode & _MODE_MOUSE_INT)
            else:
                keyboard = bool(mode & _MODE_KBD_INT) and not mode & _MODE_DISABLE_KBD
        self._drive(self.KEYBOARD_GSI, keyboard)
        self._drive(self.MOUSE_GSI, mouse)

    def _drive(self, gsi: int, level: bool) -> None:
        if self._levels[gsi] == level:
            return
        line = self._lines.get(gsi)
        if line is None:
            line = self._host.irq(gsi)
            if line is None:
                return  # no irqchip: stay at the old level so the edge is driven once there is one
            self._lines[gsi] = line
        self._levels[gsi] = level
        line.set(level)
