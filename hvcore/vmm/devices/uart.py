"""A 16550A UART, the PC's serial port: ``Uart16550``.

COM1 is 8 ports at 0x3F8 on GSI 4 (COM2: 0x2F8, GSI 3). The model follows QEMU's
``hw/char/serial.c``:

- registers RBR/THR, IER, IIR/FCR, LCR (DLAB selects DLL/DLM), MCR, LSR, MSR, SCR;
- the 16-byte FIFOs (FCR bit 0; IIR bits 6-7 read 0b11 while they are on) with the
  receive trigger level of FCR bits 6-7;
- loopback (MCR bit 4): transmitted bytes come back as received ones, MSR reflects MCR;
- the interrupt line is *level*: held high while an enabled condition is pending, with the
  16550 priorities (line status > receive data / character timeout > THR empty > modem
  status), as QEMU's ``serial_update_irq``.

Transmission is instantaneous: a byte written to THR goes to ``output`` at once (flushed per
byte) and THRE/TEMT are set again before the write returns, raising the THR-empty interrupt
when it is enabled. Received bytes come from :meth:`Uart16550.feed` (or a reader thread on an
``input`` stream) into an unbounded host-side queue that refills the receive FIFO as the guest
drains it, so no input is lost to overruns. There is no baud-rate timing: a FIFO holding fewer
bytes than the trigger level reports the character-timeout interrupt (IIR 0xCC) at once
instead of after four character times.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections import deque
from typing import BinaryIO, ClassVar

from hvcore.vmm.device import IrqLine

__all__ = ["Uart16550"]

_RBR = 0
_IER = 1
_IIR = 2
_LCR = 3
_MCR = 4
_LSR = 5
_MSR = 6
_SCR = 7

_IER_RDI = 0x01
_IER_THRI = 0x02
_IER_RLSI = 0x04
_IER_MSI = 0x08

_IIR_NO_INT = 0x01
_IIR_ID = 0x06
_IIR_MSI = 0x00
_IIR_THRI = 0x02
_IIR_RDI = 0x04
_IIR_RLSI = 0x06
_IIR_CTI = 0x0C
_IIR_FIFO = 0xC0

_FCR_FE = 0x01
_FCR_RFR = 0x02
_FCR_XFR = 0x04
_FCR_STICKY = 0xC9
_FCR_TRIGGER = {0x00: 1, 0x40: 4, 0x80: 8, 0xC0: 14}

_LCR_DLAB = 0x80

_MCR_DTR = 0x01
_MCR_RTS = 0x02
_MCR_OUT1 = 0x04
_MCR_OUT2 = 0x08
_MCR_LOOP = 0x10

_LSR_DR = 0x01
_LSR_OE = 0x02
_LSR_BI = 0x10
_LSR_THRE = 0x20
_LSR_TEMT = 0x40
_LSR_INT_ANY = 0x1E

_MSR_CTS = 0x10
_MSR_DSR = 0x20
_MSR_DCD = 0x80
_MSR_ANY_DELTA = 0x0F

_FIFO_LENGTH = 16


class Uart16550:
    """A 16550A UART: register at ``COM1`` (``LENGTH`` ports), interrupt on GSI ``COM1_GSI``.

    ``output`` receives every transmitted byte (``None``: discarded); ``input``, if given, is
    read by a daemon thread that passes what arrives to :meth:`feed` (stopped by :meth:`close`;
    neither stream is closed by the UART). ``irq`` is the interrupt line (``None``: polled
    operation only).
    """

    COM1: ClassVar[int] = 0x3F8
    """The first serial port's base."""
    COM2: ClassVar[int] = 0x2F8
    """The second serial port's base."""
    COM1_GSI: ClassVar[int] = 4
    """COM1's interrupt line (COM3 shares it on real PCs)."""
    COM2_GSI: ClassVar[int] = 3
    """COM2's interrupt line."""
    LENGTH: ClassVar[int] = 8
    """How many ports to register."""
    BAUD_BASE: ClassVar[int] = 115200
    """The baud rate of divisor 1 (a 1.8432 MHz crystal)."""

    def __init__(
        self,
        name: str = "uart0",
        output: BinaryIO | None = None,
        input: BinaryIO | None = None,
        irq: IrqLine | None = None,
    ) -> None:
        self.name = name
        self._output = output
        self._irq = irq
        self._lock = threading.Lock()
        self._ier = 0
        self._iir = _IIR_NO_INT
        self._lcr = 0
        self._mcr = _MCR_OUT2
        self._lsr = _LSR_TEMT | _LSR_THRE
        self._msr = _MSR_DCD | _MSR_DSR | _MSR_CTS
        self._scr = 0
        self._fcr = 0
        self._divisor = 12
        self._rbr = 0
        self._trigger = 1
        self._thr_pending = False
        self._rx: deque[int] = deque()
        self._host_queue: deque[int] = deque()
        self._level = False
        self._closed = False
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        if input is not None:
            self._reader = threading.Thread(target=self._read_loop, args=(input,), name=f"{name}-input", daemon=True)
            self._reader.start()

    # -- the Device protocol -------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        """A guest read; a wider access reads consecutive registers, as QEMU splits it."""
        value = 0
        with self._lock:
            for i in range(size):
                value |= self._read_register((offset + i) & 7) << (8 * i)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        """A guest write; a wider access writes consecutive registers."""
        with self._lock:
            for i in range(size):
                self._write_register((offset + i) & 7, (value >> (8 * i)) & 0xFF)

    # -- host side -----------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes arriving on the line: queued, moved into the receive FIFO, interrupt raised."""
        if not data:
            return
        with self._lock:
            self._host_queue.extend(data)
            self._refill()
            self._update_irq()

    @property
    def divisor(self) -> int:
        """The divisor latch (DLM:DLL); 12 (9600 baud) after reset."""
        with self._lock:
            return self._divisor

    @property
    def baud(self) -> int:
        """The baud rate the guest programmed (0 while the divisor is 0)."""
        with self._lock:
            return self.BAUD_BASE // self._divisor if self._divisor else 0

    @property
    def irq_level(self) -> bool:
        """The level the UART drives on its interrupt line."""
        with self._lock:
            return self._level

    @property
    def queued_input(self) -> int:
        """Received bytes not yet in the receive FIFO (waiting for the guest to drain it)."""
        with self._lock:
            return len(self._host_queue)

    def close(self) -> None:
        """Stop the input reader thread, if any; idempotent. The streams stay open."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=1.0)

    def __enter__(self) -> Uart16550:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- registers (called with the lock held) -------------------------------------------

    def _fifo_on(self) -> bool:
        return bool(self._fcr & _FCR_FE)

    def _loopback(self) -> bool:
        return bool(self._mcr & _MCR_LOOP)

    def _read_register(self, reg: int) -> int:
        if reg == _RBR:
            if self._lcr & _LCR_DLAB:
                return self._divisor & 0xFF
            return self._read_rbr()
        if reg == _IER:
            if self._lcr & _LCR_DLAB:
                return (self._divisor >> 8) & 0xFF
            return self._ier
        if reg == _IIR:
            value = self._iir
            if (value & _IIR_ID) == _IIR_THRI and not value & _IIR_NO_INT:
                self._thr_pending = False
                self._update_irq()
            return value
        if reg == _LCR:
            return self._lcr
        if reg == _MCR:
            return self._mcr
        if reg == _LSR:
            value = self._lsr
            if value & (_LSR_BI | _LSR_OE):
                self._lsr &= ~(_LSR_BI | _LSR_OE)
                self._update_irq()
            return value
        if reg == _MSR:
            if self._loopback():
                # the modem outputs are wired to the inputs: RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD
                return ((self._mcr & 0x0C) << 4) | ((self._mcr & _MCR_RTS) << 3) | ((self._mcr & _MCR_DTR) << 5)
            value = self._msr
            if value & _MSR_ANY_DELTA:
                self._msr &= 0xF0
                self._update_irq()
            return value
        return self._scr

    def _read_rbr(self) -> int:
        if self._rx:
            value = self._rx.popleft()
            self._rbr = value
        else:
            # an empty FIFO reads 0; the 16450 holding register keeps its last byte
            value = 0 if self._fifo_on() else self._rbr
        if not self._rx:
            self._lsr &= ~(_LSR_DR | _LSR_BI)
        self._refill()
        self._update_irq()
        return value

    def _write_register(self, reg: int, value: int) -> None:
        if reg == _RBR:
            if self._lcr & _LCR_DLAB:
                self._divisor = (self._divisor & 0xFF00) | value
            else:
                self._transmit(value)
        elif reg == _IER:
            if self._lcr & _LCR_DLAB:
                self._divisor = (self._divisor & 0x00FF) | (value << 8)
            else:
                self._ier = value & 0x0F
                if self._lsr & _LSR_THRE:
                    self._thr_pending = True
                self._update_irq()
        elif reg == _IIR:
            self._write_fcr(value)
        elif reg == _LCR:
            self._lcr = value
        elif reg == _MCR:
            was_loopback = self._loopback()
            self._mcr = value & 0x1F
            if was_loopback and not self._loopback():
                self._refill()
            self._update_irq()
        elif reg == _SCR:
            self._scr = value
        # LSR and MSR are read-only

    def _write_fcr(self, value: int) -> None:
        if value == self._fcr:
            return
        if (value ^ self._fcr) & _FCR_FE:
            value |= _FCR_RFR | _FCR_XFR  # switching the FIFOs on or off empties them
        if value & _FCR_RFR:
            self._rx.clear()
            self._lsr &= ~(_LSR_DR | _LSR_BI)
        self._trigger = _FCR_TRIGGER[value & 0xC0]
        self._fcr = value & _FCR_STICKY
        self._refill()
        self._update_irq()

    def _transmit(self, byte: int) -> None:
        self._thr_pending = False
        self._lsr &= ~(_LSR_THRE | _LSR_TEMT)
        self._update_irq()
        if self._loopback():
            self._receive_looped(byte)
        elif self._output is not None:
            # the guest must never see a host I/O failure: a broken output drops the byte
            with contextlib.suppress(OSError, ValueError):
                self._output.write(bytes((byte,)))
                self._output.flush()
        self._lsr |= _LSR_THRE | _LSR_TEMT
        self._thr_pending = True
        self._update_irq()

    def _receive_looped(self, byte: int) -> None:
        if self._fifo_on():
            if len(self._rx) < _FIFO_LENGTH:
                self._rx.append(byte)
            else:
                self._lsr |= _LSR_OE  # receive overruns do not overwrite the FIFO
        else:
            if self._rx:
                self._lsr |= _LSR_OE
                self._rx.clear()
            self._rx.append(byte)
        self._lsr |= _LSR_DR

    def _refill(self) -> None:
        if self._loopback():
            return  # the receiver hears only the transmitter in loopback
        room = (_FIFO_LENGTH if self._fifo_on() else 1) - len(self._rx)
        while room > 0 and self._host_queue:
            self._rx.append(self._host_queue.popleft())
            room -= 1
        if self._rx:
            self._lsr |= _LSR_DR

    def _update_irq(self) -> None:
        pending = _IIR_NO_INT
        if self._ier & _IER_RLSI and self._lsr & _LSR_INT_ANY:
            pending = _IIR_RLSI
        elif self._ier & _IER_RDI and self._lsr & _LSR_DR:
            below_trigger = self._fifo_on() and len(self._rx) < self._trigger
            pending = _IIR_CTI if below_trigger else _IIR_RDI
        elif self._ier & _IER_THRI and self._thr_pending:
            pending = _IIR_THRI
        elif self._ier & _IER_MSI and self._msr & _MSR_ANY_DELTA:
            pending = _IIR_MSI
        self._iir = pending | (_IIR_FIFO if self._fifo_on() else 0)
        level = pending != _IIR_NO_INT
        if level != self._level:
            self._level = level
            if self._irq is not None:
                self._irq.set(level)

    # -- the input reader thread ---------------------------------------------------------

    def _read_loop(self, stream: BinaryIO) -> None:
        try:
            fd: int | None = stream.fileno()
        except (OSError, ValueError, AttributeError):
            fd = None
        try:
            while not self._stop.is_set():
                if fd is not None:
                    ready, _, _ = select.select([fd], [], [], 0.1)
                    if not ready:
                        continue
                    data = os.read(fd, 4096)
                else:
                    read1 = getattr(stream, "read1", None)
                    data = read1(4096) if read1 is not None else stream.read(1)
                if not data:
                    return  # end of input
                self.feed(bytes(data))
        except (OSError, ValueError):
            return  # the stream was closed under us
