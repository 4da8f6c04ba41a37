"""A PS/2 keyboard with no keys pressed, behind the :class:`~hvcore.vmm.devices.I8042`: ``Ps2Keyboard``.

It answers the host's commands as an MF2 keyboard does (the behaviour of QEMU's
``hw/input/ps2.c``, which every PC machine there has, ``-nodefaults`` or not), so firmware and
kernels that probe for a keyboard find one at once instead of waiting out their timeouts
(SeaBIOS waits a second of guest time for the ACK of its reset command, polling the controller):

- 0xFF reset: ACK (0xFA), then 0xAA (self test passed); defaults restored;
- 0xF2 identify: ACK, 0xAB, then 0x41 (translated by the controller) or 0x83;
- 0xF4 enable / 0xF5 disable (and restore defaults) / 0xF6 restore defaults and enable scanning:
  ACK;
- 0xED LEDs, 0xF0 scan code set, 0xF3 typematic rate, 0xFC: ACK, then the argument byte gets an
  ACK (0xF0 with argument 0 also reports the current set; an argument outside 1-3 gets 0xFE,
  resend);
- 0xEE echo: 0xEE; 0x00 and 0xFA (all keys typematic): ACK; anything else: 0xFE (resend).

The keyboard never sends a scan code: there is no key to press. The controller takes its bytes
one at a time into its output buffer (see :meth:`I8042.read_data`).
"""

from __future__ import annotations

from collections import deque
from typing import ClassVar

__all__ = ["Ps2Keyboard"]

_ACK = 0xFA
_RESEND = 0xFE
_SELF_TEST_PASSED = 0xAA
_ECHO = 0xEE
_ID = (0xAB, 0x83)
_ID_TRANSLATED = (0xAB, 0x41)
_WITH_ARGUMENT = frozenset({0xED, 0xF0, 0xF3, 0xFC})
_JUST_ACK = frozenset({0x00, 0xFA})  # nothing, and set all keys typematic
_QUEUE = 16  # bytes the keyboard buffers; more are dropped


class Ps2Keyboard:
    """An MF2 keyboard's command side (see the module docstring); the caller serialises access."""

    DEFAULT_SCANCODE_SET: ClassVar[int] = 2
    """The scan code set after a reset."""

    def __init__(self) -> None:
        self._output: deque[int] = deque()
        self._argument_of: int | None = None  # the command whose argument byte comes next
        self.scanning = True
        """Whether scanning is enabled (0xF4 / 0xF5 / 0xF6)."""
        self.scancode_set = self.DEFAULT_SCANCODE_SET
        """The scan code set (0xF0)."""
        self.leds = 0
        """The LED bits last set (0xED)."""

    @property
    def has_output(self) -> bool:
        """Whether a byte waits for the controller."""
        return bool(self._output)

    def take(self) -> int:
        """The next byte for the controller (call only when :attr:`has_output`)."""
        return self._output.popleft()

    def write(self, value: int, *, translated: bool = False) -> None:
        """A byte from the host (through the controller); ``translated``: the controller translates to set 1."""
        command, self._argument_of = self._argument_of, None
        if command is not None:
            self._argument(command, value, translated)
        elif value == 0xFF:
            self._reset()
            self._send(_ACK, _SELF_TEST_PASSED)
        elif value == 0xF2:
            self._send(_ACK, *(_ID_TRANSLATED if translated else _ID))
        elif value in _WITH_ARGUMENT:
            self._argument_of = value
            self._send(_ACK)
        elif value in (0xF4, 0xF5, 0xF6):
            if value != 0xF4:
                self._reset()
            self.scanning = value != 0xF5
            self._send(_ACK)
        elif value == _ECHO:
            self._send(_ECHO)
        elif value in _JUST_ACK:
            self._send(_ACK)
        else:
            self._send(_RESEND)

    def _argument(self, command: int, value: int, translated: bool) -> None:
        if command == 0xF0 and value == 0:
            # the set as the host sees it: through the controller's translation, set 1 reads as 0x43
            current = {1: 0x43, 2: 0x41, 3: 0x3F}[self.scancode_set] if translated else self.scancode_set
            self._send(_ACK, current)
        elif command == 0xF0 and not 1 <= value <= 3:
            self._send(_RESEND)
        else:
            if command == 0xF0:
                self.scancode_set = value
            elif command == 0xED:
                self.leds = value & 0x07
            self._send(_ACK)

    def _reset(self) -> None:
        self._output.clear()
        self.scanning = True
        self.scancode_set = self.DEFAULT_SCANCODE_SET
        self.leds = 0

    def _send(self, *data: int) -> None:
        for byte in data:
            if len(self._output) < _QUEUE:
                self._output.append(byte)
