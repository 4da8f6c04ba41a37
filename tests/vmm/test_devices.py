"""Behaviour of the device models in hvcore.vmm.devices, driven directly and through a Bus (no backend)."""

from __future__ import annotations

import io
import os
import struct
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest

from hvcore.errors import AlreadyExists, InvalidArgument, NotFound
from hvcore.vmm.bus import Bus
from hvcore.vmm.device import Device, DeviceHost, IrqLine, StopRequest
from hvcore.vmm.devices import I8042, Cmos, DebugConsole, DebugExit, FwCfg, FwCfgKey, Hpet, PcTestdev, Uart16550

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

COM1 = 0x3F8
THR, IER, IIR, LCR, MCR, LSR, MSR, SCR = range(8)


class FakeLine:
    """An IrqLine recording every level it is driven to."""

    def __init__(self) -> None:
        self.events: list[bool] = []

    @property
    def level(self) -> bool:
        return bool(self.events) and self.events[-1]

    def set(self, level: bool) -> None:
        self.events.append(level)

    def pulse(self) -> None:
        self.events += [True, False]


class FakeMachine:
    """What a device sees of its machine: lines by GSI and the stops it asked for."""

    def __init__(self, *, irqchip: bool = True) -> None:
        self.lines: dict[int, FakeLine] = {}
        self.stops: list[StopRequest] = []
        self.irqchip = irqchip
        self.host = DeviceHost(irq=self._irq, request_stop=self.stops.append)

    def _irq(self, gsi: int) -> IrqLine | None:
        if not self.irqchip:
            return None
        return self.lines.setdefault(gsi, FakeLine())

    def line(self, gsi: int) -> FakeLine:
        return self.lines.setdefault(gsi, FakeLine())


def io_bus() -> Bus:
    return Bus("io", 0x10000)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.005)


def test_every_device_satisfies_the_protocol() -> None:
    machine = FakeMachine()
    i8042 = I8042(machine.host)
    fw = FwCfg(dma_memory=GuestRam(0x1000))
    devices: list[object] = [
        Uart16550(),
        DebugConsole(io.BytesIO()),
        DebugExit(machine.host),
        i8042.data_port,
        i8042.command_port,
        Cmos(64 * MIB),
        fw,
        fw.dma_port,
        Hpet(machine.host),
    ]
    for device in devices:
        assert isinstance(device, Device)


def test_a_lookup_during_hot_plug_finds_the_device_that_stays() -> None:
    """A device added or removed on one thread never hides another one from a vCPU thread's lookup."""
    bus = io_bus()
    stays = DebugConsole(io.BytesIO())
    bus.register(0x100, 0x10, stays)
    churn = DebugConsole(io.BytesIO())
    stop = threading.Event()

    def plug() -> None:
        while not stop.is_set():
            bus.register(0x50, 0x10, churn)
            bus.unregister(churn)

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, inside register() too
    plugger = threading.Thread(target=plug)
    plugger.start()
    try:
        found = {id(entry.device) if (entry := bus.find(0x105)) else None for _ in range(200_000)}
    finally:
        stop.set()
        plugger.join()
        sys.setswitchinterval(previous)
    assert found == {id(stays)}


def test_standard_pc_layout_registers_without_conflicts() -> None:
    machine = FakeMachine()
    bus = io_bus()
    uart = Uart16550(output=io.BytesIO())
    bus.register(Uart16550.COM1, Uart16550.LENGTH, uart)
    bus.register(DebugConsole.PORT, DebugConsole.LENGTH, DebugConsole(io.BytesIO()))
    bus.register(DebugExit.PORT, DebugExit.LENGTH, DebugExit(machine.host))
    for base, length, device in I8042(machine.host).ports():
        bus.register(base, length, device)
    bus.register(Cmos.PORT, Cmos.LENGTH, Cmos(64 * MIB))
    for base, length, device in FwCfg(dma_memory=GuestRam(0x1000)).ports():
        bus.register(base, length, device)
    for base, length, device in PcTestdev(machine.host).ports():
        bus.register(base, length, device)
    assert [(r.base, r.length) for r in bus.ranges()] == [
        (0x60, 1),
        (0x64, 1),
        (0x70, 2),
        (0xE0, 4),
        (0xE4, 4),
        (0xE8, 4),
        (0xF4, 1),
        (0x3F8, 8),
        (0x402, 1),
        (0x510, 2),
        (0x514, 8),
        (0x2000, 24),
    ]
    assert bus.read(0x61, 1) == 0xFF  # port B stays free for another device
    assert bus.read(0x402, 1) == 0xE9


# -- UART --------------------------------------------------------------------------------


def uart_on_bus(**kwargs: object) -> tuple[Bus, Uart16550, io.BytesIO]:
    out = io.BytesIO()
    uart = Uart16550(output=out, **kwargs)  # type: ignore[arg-type]
    bus = io_bus()
    bus.register(COM1, Uart16550.LENGTH, uart)
    return bus, uart, out


def test_uart_reset_state() -> None:
    bus, _, _ = uart_on_bus()
    assert bus.read(COM1 + LSR, 1) == 0x60  # THRE | TEMT, no data
    assert bus.read(COM1 + IIR, 1) == 0x01  # no interrupt, FIFOs off
    assert bus.read(COM1 + IER, 1) == 0x00
    assert bus.read(COM1 + MCR, 1) == 0x08  # OUT2
    assert bus.read(COM1 + MSR, 1) == 0xB0  # DCD | DSR | CTS
    assert bus.read(COM1 + LCR, 1) == 0x00


def test_uart_transmits_a_string_with_thre_polling() -> None:
    bus, _, out = uart_on_bus()
    polls = 0
    for byte in b"Hello, world\n":
        while not bus.read(COM1 + LSR, 1) & 0x20:
            polls += 1
            assert polls < 100
        bus.write(COM1 + THR, 1, byte)
    assert out.getvalue() == b"Hello, world\n"
    assert bus.read(COM1 + LSR, 1) & 0x60 == 0x60  # transmitter empty again


def test_uart_divisor_latch() -> None:
    bus, uart, out = uart_on_bus()
    assert uart.divisor == 12
    assert uart.baud == 9600
    bus.write(COM1 + LCR, 1, 0x83)  # DLAB, 8N1
    bus.write(COM1 + THR, 1, 0x01)  # DLL
    bus.write(COM1 + IER, 1, 0x00)  # DLM
    assert bus.read(COM1 + THR, 1) == 0x01
    assert bus.read(COM1 + IER, 1) == 0x00
    assert uart.divisor == 1
    assert uart.baud == 115200
    assert out.getvalue() == b""  # DLL writes are not data
    bus.write(COM1 + IER, 1, 0x03)
    assert uart.divisor == 0x301
    bus.write(COM1 + LCR, 1, 0x03)  # DLAB off
    assert bus.read(COM1 + LCR, 1) == 0x03
    assert bus.read(COM1 + IER, 1) == 0x00  # IER again, untouched by the DLM write
    bus.write(COM1 + THR, 1, ord("x"))
    assert out.getvalue() == b"x"
    assert uart.divisor == 0x301


def test_uart_scratch_register() -> None:
    bus, _, _ = uart_on_bus()
    bus.write(COM1 + SCR, 1, 0x5A)
    assert bus.read(COM1 + SCR, 1) == 0x5A


def test_uart_loopback_returns_transmitted_bytes_and_wires_modem_lines() -> None:
    bus, uart, out = uart_on_bus()
    bus.write(COM1 + MCR, 1, 0x10)  # loopback, all outputs low
    assert bus.read(COM1 + MSR, 1) == 0x00
    bus.write(COM1 + MCR, 1, 0x11)  # + DTR -> DSR
    assert bus.read(COM1 + MSR, 1) == 0x20
    bus.write(COM1 + MCR, 1, 0x12)  # + RTS -> CTS
    assert bus.read(COM1 + MSR, 1) == 0x10
    bus.write(COM1 + MCR, 1, 0x1C)  # + OUT1 -> RI, OUT2 -> DCD
    assert bus.read(COM1 + MSR, 1) == 0xC0
    bus.write(COM1 + THR, 1, ord("L"))
    assert out.getvalue() == b""  # nothing leaves the chip
    assert bus.read(COM1 + LSR, 1) & 0x01
    assert bus.read(COM1 + THR, 1) == ord("L")
    assert not bus.read(COM1 + LSR, 1) & 0x01
    # outside input waits while the receiver listens to the transmitter
    uart.feed(b"ext")
    assert not bus.read(COM1 + LSR, 1) & 0x01
    assert uart.queued_input == 3
    bus.write(COM1 + MCR, 1, 0x08)  # loopback off: the line is connected again
    assert bus.read(COM1 + LSR, 1) & 0x01
    assert bytes(bus.read(COM1 + THR, 1) for _ in range(3)) == b"ext"
    bus.write(COM1 + THR, 1, ord("o"))
    assert out.getvalue() == b"o"


def test_uart_loopback_overrun_sets_oe_and_line_status_interrupt() -> None:
    line = FakeLine()
    bus, _, _ = uart_on_bus(irq=line)
    bus.write(COM1 + MCR, 1, 0x10)
    bus.write(COM1 + IER, 1, 0x04)  # line status interrupts only
    bus.write(COM1 + THR, 1, ord("1"))
    assert not line.level
    bus.write(COM1 + THR, 1, ord("2"))  # the holding register was still full
    assert line.level
    assert bus.read(COM1 + IIR, 1) == 0x06
    assert bus.read(COM1 + LSR, 1) & 0x03 == 0x03  # OE | DR
    assert not line.level  # reading LSR cleared the overrun
    assert not bus.read(COM1 + LSR, 1) & 0x02
    assert bus.read(COM1 + THR, 1) == ord("2")  # the 16450 register kept the newer byte


def test_uart_thr_empty_interrupt_raise_and_lower_sequence() -> None:
    line = FakeLine()
    bus, _, out = uart_on_bus(irq=line)
    assert line.events == []
    bus.write(COM1 + IER, 1, 0x02)  # THR empty: pending at once
    assert line.events == [True]
    assert bus.read(COM1 + IIR, 1) == 0x02
    assert line.events == [True, False]  # reading IIR acknowledged it
    assert bus.read(COM1 + IIR, 1) == 0x01
    bus.write(COM1 + THR, 1, ord("a"))  # sent at once: THR empty again, a new edge
    assert line.events == [True, False, True]
    bus.write(COM1 + THR, 1, ord("b"))  # the line drops while THR holds the byte
    assert line.events == [True, False, True, False, True]
    bus.write(COM1 + IER, 1, 0x00)
    assert line.events[-1] is False
    assert bus.read(COM1 + IIR, 1) == 0x01
    assert out.getvalue() == b"ab"


def test_uart_receive_interrupt_has_priority_over_thr_empty() -> None:
    line = FakeLine()
    bus, uart, _ = uart_on_bus(irq=line)
    bus.write(COM1 + IER, 1, 0x03)
    assert bus.read(COM1 + IIR, 1) == 0x02
    bus.write(COM1 + IER, 1, 0x03)  # re-arms THR empty
    uart.feed(b"k")
    assert line.level
    assert bus.read(COM1 + IIR, 1) == 0x04  # receive data first
    assert line.level
    assert bus.read(COM1 + THR, 1) == ord("k")
    assert line.level  # THR empty is still pending
    assert bus.read(COM1 + IIR, 1) == 0x02
    assert not line.level
    assert uart.irq_level is False


def test_uart_feed_sets_data_ready_and_raises_receive_interrupt() -> None:
    line = FakeLine()
    bus, uart, _ = uart_on_bus(irq=line)
    uart.feed(b"hi")
    assert bus.read(COM1 + LSR, 1) & 0x01
    assert line.events == []  # receive interrupt not enabled yet
    bus.write(COM1 + IER, 1, 0x01)
    assert line.events == [True]
    assert bus.read(COM1 + IIR, 1) == 0x04
    assert bus.read(COM1 + THR, 1) == ord("h")
    assert line.level  # the next byte moved into the holding register
    assert bus.read(COM1 + LSR, 1) & 0x01
    assert bus.read(COM1 + THR, 1) == ord("i")
    assert not bus.read(COM1 + LSR, 1) & 0x01
    assert line.events == [True, False]
    assert bus.read(COM1 + IIR, 1) == 0x01
    assert bus.read(COM1 + THR, 1) == ord("i")  # an empty 16450 register repeats its last byte


def test_uart_fifo_mode_trigger_level_and_timeout() -> None:
    line = FakeLine()
    bus, uart, _ = uart_on_bus(irq=line)
    bus.write(COM1 + IIR, 1, 0x87)  # FIFO on, both reset, trigger level 8
    assert bus.read(COM1 + IIR, 1) == 0xC1
    bus.write(COM1 + IER, 1, 0x01)
    data = bytes(range(0x41, 0x41 + 20))
    uart.feed(data)
    assert uart.queued_input == 4  # 16 in the FIFO
    assert bus.read(COM1 + IIR, 1) == 0xC4  # at or above the trigger level
    received = bytearray()
    iirs = []
    while bus.read(COM1 + LSR, 1) & 0x01:
        received.append(bus.read(COM1 + THR, 1))
        iirs.append(bus.read(COM1 + IIR, 1))
    assert bytes(received) == data
    # the FIFO stays full while the queue refills it, then drains below the trigger level
    assert iirs[:12] == [0xC4] * 12
    assert iirs[12:19] == [0xCC] * 7  # character timeout below the trigger level
    assert iirs[19] == 0xC1
    assert not line.level
    assert bus.read(COM1 + THR, 1) == 0  # an empty FIFO reads 0


def test_uart_fifo_reset_and_disable() -> None:
    bus, uart, _ = uart_on_bus()
    bus.write(COM1 + IIR, 1, 0x01)
    uart.feed(b"abc")
    assert bus.read(COM1 + LSR, 1) & 0x01
    bus.write(COM1 + IIR, 1, 0x03)  # receive FIFO reset
    assert not bus.read(COM1 + LSR, 1) & 0x01
    assert bus.read(COM1 + IIR, 1) == 0xC1
    bus.write(COM1 + IIR, 1, 0x00)  # FIFOs off
    assert bus.read(COM1 + IIR, 1) == 0x01


def test_uart_fifo_loopback_overrun_keeps_first_sixteen() -> None:
    bus, _, _ = uart_on_bus()
    bus.write(COM1 + IIR, 1, 0x07)
    bus.write(COM1 + MCR, 1, 0x10)
    for byte in range(20):
        bus.write(COM1 + THR, 1, byte)
    assert bus.read(COM1 + LSR, 1) & 0x02
    assert [bus.read(COM1 + THR, 1) for _ in range(16)] == list(range(16))
    assert not bus.read(COM1 + LSR, 1) & 0x01


def test_uart_input_stream_thread_feeds_and_close_stops_it() -> None:
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb") as stream:
        bus, uart, _ = uart_on_bus(input=stream)
        reader = uart._reader
        assert reader is not None and reader.daemon
        os.write(write_fd, b"typed")
        received = bytearray()

        def got_all() -> bool:
            while bus.read(COM1 + LSR, 1) & 0x01:
                received.append(bus.read(COM1 + THR, 1))
            return len(received) == 5

        wait_for(got_all)
        assert bytes(received) == b"typed"
        uart.close()
        assert not reader.is_alive()
        uart.close()  # idempotent
    os.close(write_fd)


def test_uart_input_stream_without_fd_reads_to_end() -> None:
    bus, uart, _ = uart_on_bus(input=io.BytesIO(b"xyz"))
    wait_for(lambda: uart.queued_input == 2)
    assert bytes(bus.read(COM1 + THR, 1) for _ in range(3)) == b"xyz"
    uart.close()


def test_uart_broken_output_does_not_reach_the_guest() -> None:
    out = io.BytesIO()
    uart = Uart16550(output=out)
    out.close()
    uart.write(THR, 1, ord("x"))  # no exception
    assert uart.read(LSR, 1) & 0x60 == 0x60


def test_uart_concurrent_writers_lose_nothing() -> None:
    bus, _, out = uart_on_bus()

    def writer(byte: int) -> None:
        for _ in range(500):
            bus.write(COM1 + THR, 1, byte)

    threads = [threading.Thread(target=writer, args=(ord("a") + i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    data = out.getvalue()
    assert len(data) == 2000
    assert sorted(set(data)) == [ord("a"), ord("b"), ord("c"), ord("d")]


# -- debug console and debug exit ----------------------------------------------------------


def test_debugcon_output_and_readback() -> None:
    out = io.BytesIO()
    console = DebugConsole(out)
    bus = io_bus()
    bus.register(DebugConsole.PORT, DebugConsole.LENGTH, console)
    for byte in b"SeaBIOS\n":
        bus.write(0x402, 1, byte)
    assert out.getvalue() == b"SeaBIOS\n"
    assert console.data == bytearray(b"SeaBIOS\n")
    assert console.text() == "SeaBIOS\n"
    assert bus.read(0x402, 1) == 0xE9


def test_debugcon_without_stream_and_custom_readback() -> None:
    console = DebugConsole(None, readback=0x42)
    console.write(0, 1, 0x141)  # only the low byte
    assert console.data == bytearray(b"A")
    assert console.read(0, 1) == 0x42
    with pytest.raises(InvalidArgument):
        DebugConsole(None, readback=0x100)


@pytest.mark.parametrize(("value", "size", "status"), [(0, 1, 1), (1, 1, 3), (0x10, 1, 0x21), (0x1234, 2, 0x2469)])
def test_debug_exit_requests_stop_with_qemu_status(value: int, size: int, status: int) -> None:
    machine = FakeMachine()
    device = DebugExit(machine.host)
    bus = io_bus()
    bus.register(DebugExit.PORT, 4, device)
    assert bus.read(0xF4, 1) == 0
    assert device.status is None
    bus.write(0xF4, size, value)
    assert machine.stops == [StopRequest("debug-exit", status)]
    assert device.status == status


# -- i8042 ---------------------------------------------------------------------------------


def i8042_on_bus(machine: FakeMachine, *, keyboard: bool = True) -> tuple[Bus, I8042]:
    controller = I8042(machine.host, keyboard=keyboard)
    bus = io_bus()
    for base, length, device in controller.ports():
        bus.register(base, length, device)
    return bus, controller


def test_i8042_status_after_post() -> None:
    bus, _ = i8042_on_bus(FakeMachine())
    status = bus.read(0x64, 1)
    assert not status & 0x01  # nothing to read
    assert not status & 0x02  # ready for input
    assert status & 0x04  # system flag: POST done


def test_i8042_self_test_and_interface_test() -> None:
    machine = FakeMachine()
    bus, _ = i8042_on_bus(machine)
    bus.write(0x64, 1, 0xAA)
    assert bus.read(0x64, 1) & 0x01
    assert machine.line(1).level  # IRQ 1: the command byte enables it after POST
    assert bus.read(0x60, 1) == 0x55
    assert not bus.read(0x64, 1) & 0x01
    assert not machine.line(1).level
    assert bus.read(0x60, 1) == 0x55  # nothing new: the last byte again
    bus.write(0x64, 1, 0xAB)
    assert bus.read(0x60, 1) == 0x00
    assert machine.stops == []


def test_i8042_command_byte_read_write() -> None:
    machine = FakeMachine()
    bus, controller = i8042_on_bus(machine)
    bus.write(0x64, 1, 0x20)
    assert bus.read(0x60, 1) == controller.command_byte == 0x47
    bus.write(0x64, 1, 0x60)
    bus.write(0x60, 1, 0x24)  # interrupts off, system flag, mouse disabled
    assert controller.command_byte == 0x24
    bus.write(0x64, 1, 0x20)
    assert bus.read(0x64, 1) & 0x01
    assert not machine.line(1).level  # keyboard interrupt now disabled
    assert bus.read(0x60, 1) == 0x24
    bus.write(0x64, 1, 0x60)
    bus.write(0x60, 1, 0x00)
    assert not bus.read(0x64, 1) & 0x04  # the status system flag follows the command byte


def test_i8042_disable_keyboard_masks_irq() -> None:
    machine = FakeMachine()
    bus, controller = i8042_on_bus(machine)
    bus.write(0x64, 1, 0xAD)
    assert controller.command_byte & 0x10
    bus.write(0x64, 1, 0xAA)
    assert machine.line(1).events == []
    bus.write(0x64, 1, 0xAE)
    assert machine.line(1).level
    assert bus.read(0x60, 1) == 0x55


def test_i8042_aux_output_buffer_sets_mouse_bits() -> None:
    machine = FakeMachine()
    bus, _ = i8042_on_bus(machine)
    bus.write(0x64, 1, 0xD3)
    bus.write(0x60, 1, 0x99)
    assert bus.read(0x64, 1) & 0x21 == 0x21
    assert machine.line(12).level
    assert bus.read(0x60, 1) == 0x99
    assert not machine.line(12).level
    bus.write(0x64, 1, 0xD2)
    bus.write(0x60, 1, 0x77)
    assert bus.read(0x64, 1) & 0x21 == 0x01
    assert bus.read(0x60, 1) == 0x77


def test_i8042_fe_requests_reset() -> None:
    machine = FakeMachine()
    bus, controller = i8042_on_bus(machine)
    bus.write(0x64, 1, 0xFE)
    assert machine.stops == [StopRequest("reset")]
    assert controller.reset_requests == 1
    bus.write(0x64, 1, 0xFF)  # pulse no bits
    assert len(machine.stops) == 1
    bus.write(0x64, 1, 0xF0)  # pulse bits 3-0, bit 0 included
    assert machine.stops == [StopRequest("reset"), StopRequest("reset")]


def test_i8042_output_port_write_and_a20() -> None:
    machine = FakeMachine()
    bus, controller = i8042_on_bus(machine)
    bus.write(0x64, 1, 0xD0)
    assert bus.read(0x60, 1) & 0x03 == 0x03  # not in reset, A20 on
    bus.write(0x64, 1, 0xDD)
    assert not controller.output_port & 0x02
    bus.write(0x64, 1, 0xDF)
    assert controller.output_port & 0x02
    bus.write(0x64, 1, 0xD1)
    bus.write(0x60, 1, 0xDF)  # bit 0 set: no reset
    assert machine.stops == []
    bus.write(0x64, 1, 0xD1)
    bus.write(0x60, 1, 0xDE)  # bit 0 clear: CPU reset
    assert machine.stops == [StopRequest("reset")]


def test_i8042_keyboard_absent_and_no_irqchip() -> None:
    machine = FakeMachine(irqchip=False)
    bus, _ = i8042_on_bus(machine, keyboard=False)
    assert bus.read(0x60, 1) == 0x00
    bus.write(0x60, 1, 0xFF)  # keyboard reset command: nobody answers
    assert not bus.read(0x64, 1) & 0x01
    bus.write(0x64, 1, 0xAA)  # no irqchip: still works, polled
    assert bus.read(0x60, 1) == 0x55
    assert machine.lines == {}


def keyboard_replies(bus: Bus, *sent: int) -> list[int]:
    """Write ``sent`` to the keyboard (port 0x60) and read every byte the controller then has for the host."""
    for value in sent:
        bus.write(0x60, 1, value)
    replies = []
    while bus.read(0x64, 1) & 0x01:
        assert not bus.read(0x64, 1) & 0x20  # keyboard data, not the mouse's
        replies.append(bus.read(0x60, 1))
    return replies


def test_i8042_keyboard_answers_reset_and_identify() -> None:
    """SeaBIOS resets the keyboard (0xFF) and waits a second for the ACK: the keyboard answers at once, as QEMU's."""
    machine = FakeMachine()
    bus, controller = i8042_on_bus(machine)
    assert keyboard_replies(bus, 0xFF) == [0xFA, 0xAA]
    assert machine.line(1).events[:2] == [True, False]  # IRQ 1 while each byte waits
    assert keyboard_replies(bus, 0xF2) == [0xFA, 0xAB, 0x41]  # translated by the controller (command byte bit 6)
    bus.write(0x64, 1, 0x60)
    bus.write(0x60, 1, 0x05)  # translation off
    assert keyboard_replies(bus, 0xF2) == [0xFA, 0xAB, 0x83]
    assert keyboard_replies(bus, 0xEE) == [0xEE]  # echo
    assert keyboard_replies(bus, 0xAB) == [0xFE]  # not a command: resend
    assert machine.stops == [] and controller.keyboard is not None


def test_i8042_keyboard_commands_with_an_argument() -> None:
    bus, controller = i8042_on_bus(FakeMachine())
    keyboard = controller.keyboard
    assert keyboard is not None
    assert keyboard_replies(bus, 0xF5) == [0xFA]  # disable scanning
    assert not keyboard.scanning
    assert keyboard_replies(bus, 0xF0, 0x03) == [0xFA, 0xFA]
    assert keyboard.scancode_set == 3
    assert keyboard_replies(bus, 0xF0, 0x00) == [0xFA, 0xFA, 0x3F]  # set 3 as the translating controller shows it
    assert keyboard_replies(bus, 0xF0, 0x07) == [0xFA, 0xFE]  # no set 7
    assert keyboard_replies(bus, 0xED, 0x02) == [0xFA, 0xFA]
    assert keyboard.leds == 0x02
    assert keyboard_replies(bus, 0xF4) == [0xFA]
    assert keyboard.scanning
    assert keyboard_replies(bus, 0xFF) == [0xFA, 0xAA]  # defaults again
    assert (keyboard.scancode_set, keyboard.leds) == (2, 0)


def test_i8042_keyboard_replies_wait_while_its_interface_is_disabled() -> None:
    """0xAD holds the keyboard's bytes back; 0xAE lets them through; a byte for the keyboard enables it too."""
    machine = FakeMachine()
    bus, controller = i8042_on_bus(machine)
    bus.write(0x60, 1, 0xFF)
    bus.write(0x64, 1, 0xAD)
    assert bus.read(0x64, 1) & 0x01  # the ACK already in the output buffer stays
    assert bus.read(0x60, 1) == 0xFA
    assert not bus.read(0x64, 1) & 0x01  # 0xAA waits in the keyboard
    bus.write(0x64, 1, 0xAE)
    assert bus.read(0x60, 1) == 0xAA
    bus.write(0x64, 1, 0xAD)
    assert keyboard_replies(bus, 0xF4) == [0xFA]
    assert not controller.command_byte & 0x10


# -- CMOS / RTC ------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, when: datetime) -> None:
        self.when = when

    def __call__(self) -> datetime:
        return self.when


def cmos_on_bus(
    clock: FakeClock | None = None, *, ram_below_4g: int = 64 * MIB, ram_above_4g: int = 0, cpus: int = 1
) -> tuple[Bus, Cmos]:
    cmos = Cmos(ram_below_4g, ram_above_4g, cpus, clock=clock)
    bus = io_bus()
    bus.register(Cmos.PORT, Cmos.LENGTH, cmos)
    return bus, cmos


def cmos_read(bus: Bus, index: int) -> int:
    bus.write(0x70, 1, index)
    return bus.read(0x71, 1)


def cmos_write(bus: Bus, index: int, value: int) -> None:
    bus.write(0x70, 1, index)
    bus.write(0x71, 1, value)


SATURDAY_EVENING = datetime(2024, 3, 9, 21, 5, 7)


def test_cmos_time_in_bcd_24h() -> None:
    bus, _ = cmos_on_bus(FakeClock(SATURDAY_EVENING))
    assert cmos_read(bus, 0x0B) == 0x02
    values = [cmos_read(bus, i) for i in (0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32)]
    assert values == [0x07, 0x05, 0x21, 0x07, 0x09, 0x03, 0x24, 0x20]


def test_cmos_time_in_binary_and_12h() -> None:
    clock = FakeClock(SATURDAY_EVENING)
    bus, _ = cmos_on_bus(clock)
    cmos_write(bus, 0x0B, 0x06)  # binary, 24h
    values = [cmos_read(bus, i) for i in (0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32)]
    assert values == [7, 5, 21, 9, 3, 24, 20]
    cmos_write(bus, 0x0B, 0x04)  # binary, 12h
    assert cmos_read(bus, 0x04) == 0x80 | 9
    cmos_write(bus, 0x0B, 0x00)  # BCD, 12h
    assert cmos_read(bus, 0x04) == 0x89
    clock.when = datetime(2024, 3, 10, 0, 30)
    assert cmos_read(bus, 0x04) == 0x12  # 12 AM
    assert cmos_read(bus, 0x06) == 0x01  # Sunday


def test_cmos_status_registers_at_reset() -> None:
    bus, _ = cmos_on_bus(FakeClock(SATURDAY_EVENING))
    assert cmos_read(bus, 0x0A) == 0x26
    assert cmos_read(bus, 0x0B) == 0x02
    assert cmos_read(bus, 0x0C) == 0x00
    assert cmos_read(bus, 0x0D) == 0x80
    cmos_write(bus, 0x0D, 0x00)  # read-only
    assert cmos_read(bus, 0x0D) == 0x80
    assert bus.read(0x70, 1) == 0xFF  # the index register is write-only


def test_cmos_update_in_progress_only_just_before_the_second() -> None:
    clock = FakeClock(SATURDAY_EVENING.replace(microsecond=999_900))
    bus, _ = cmos_on_bus(clock)
    assert cmos_read(bus, 0x0A) == 0xA6
    clock.when = SATURDAY_EVENING.replace(microsecond=500_000)
    assert cmos_read(bus, 0x0A) == 0x26
    clock.when = SATURDAY_EVENING.replace(microsecond=999_900)
    cmos_write(bus, 0x0B, 0x82)  # SET: the clock is stopped
    assert cmos_read(bus, 0x0A) == 0x26


def test_cmos_status_c_flags_and_read_clears() -> None:
    clock = FakeClock(SATURDAY_EVENING)
    bus, _ = cmos_on_bus(clock)
    assert cmos_read(bus, 0x0C) == 0x00
    clock.when += timedelta(seconds=1)
    assert cmos_read(bus, 0x0C) == 0x50  # update ended and periodic, no interrupt enabled
    assert cmos_read(bus, 0x0C) == 0x00  # the read cleared them
    cmos_write(bus, 0x0B, 0x12)  # update-ended interrupt enabled
    clock.when += timedelta(seconds=1)
    assert cmos_read(bus, 0x0C) == 0xD0  # IRQF too
    assert cmos_read(bus, 0x0C) == 0x00
    cmos_write(bus, 0x0A, 0x20)  # periodic rate 0: off
    clock.when += timedelta(milliseconds=10)
    assert cmos_read(bus, 0x0C) == 0x00  # same second, no periodic flag


def test_cmos_set_time_with_set_bit() -> None:
    clock = FakeClock(SATURDAY_EVENING)
    bus, cmos = cmos_on_bus(clock)
    cmos_write(bus, 0x0B, 0x82)  # SET, 24h BCD
    for index, value in ((0x00, 0x30), (0x02, 0x15), (0x04, 0x10), (0x07, 0x31), (0x08, 0x12), (0x09, 0x99)):
        cmos_write(bus, index, value)
    cmos_write(bus, 0x32, 0x19)
    clock.when += timedelta(seconds=10)  # stopped: the registers hold what was written
    assert cmos_read(bus, 0x00) == 0x30
    assert cmos_read(bus, 0x09) == 0x99
    cmos_write(bus, 0x0B, 0x02)  # run
    assert cmos.now() == datetime(1999, 12, 31, 10, 15, 30)
    clock.when += timedelta(seconds=31)
    assert [cmos_read(bus, i) for i in (0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32)] == [
        0x01,
        0x16,
        0x10,
        0x31,
        0x12,
        0x99,
        0x19,
    ]
    assert cmos_read(bus, 0x06) == 0x06  # a Friday


def test_cmos_set_time_in_12h_binary_mode() -> None:
    clock = FakeClock(SATURDAY_EVENING)
    bus, cmos = cmos_on_bus(clock)
    cmos_write(bus, 0x0B, 0x84)  # SET, 12h, binary
    cmos_write(bus, 0x04, 0x80 | 1)  # 1 PM
    cmos_write(bus, 0x0B, 0x04)
    assert cmos.now().hour == 13
    assert cmos_read(bus, 0x04) == 0x81
    cmos_write(bus, 0x0B, 0x84)
    cmos_write(bus, 0x04, 12)  # 12 AM
    cmos_write(bus, 0x0B, 0x04)
    assert cmos.now().hour == 0
    assert cmos.now().minute == 5


def test_cmos_write_while_running_sets_that_field() -> None:
    clock = FakeClock(SATURDAY_EVENING)
    bus, cmos = cmos_on_bus(clock)
    cmos_write(bus, 0x09, 0x25)
    assert cmos.now() == SATURDAY_EVENING.replace(year=2025)
    assert cmos_read(bus, 0x04) == 0x21
    cmos_write(bus, 0x08, 0x13)  # month 13: ignored
    assert cmos.now() == SATURDAY_EVENING.replace(year=2025)


def test_cmos_default_clock_is_host_utc() -> None:
    cmos = Cmos(64 * MIB)
    host = datetime.now(timezone.utc).replace(tzinfo=None)
    assert abs(cmos.now() - host) < timedelta(seconds=5)


def test_cmos_memory_sizes_1g() -> None:
    bus, _ = cmos_on_bus(ram_below_4g=1 * GIB, cpus=1)
    assert (cmos_read(bus, 0x15), cmos_read(bus, 0x16)) == (0x80, 0x02)  # 640 KiB
    assert (cmos_read(bus, 0x17), cmos_read(bus, 0x18)) == (0xFF, 0xFF)  # capped
    assert (cmos_read(bus, 0x30), cmos_read(bus, 0x31)) == (0xFF, 0xFF)
    assert (cmos_read(bus, 0x34), cmos_read(bus, 0x35)) == (0x00, 0x3F)  # (1 GiB - 16 MiB) / 64 KiB
    assert [cmos_read(bus, i) for i in (0x5B, 0x5C, 0x5D)] == [0, 0, 0]
    assert cmos_read(bus, 0x5F) == 0


def test_cmos_memory_sizes_6g_split_at_3g() -> None:
    bus, _ = cmos_on_bus(ram_below_4g=3 * GIB, ram_above_4g=3 * GIB, cpus=4)
    assert (cmos_read(bus, 0x34), cmos_read(bus, 0x35)) == (0x00, 0xBF)  # 0xBF00 * 64 KiB + 16 MiB = 3 GiB
    assert [cmos_read(bus, i) for i in (0x5B, 0x5C, 0x5D)] == [0x00, 0xC0, 0x00]  # 0xC000 * 64 KiB = 3 GiB
    assert cmos_read(bus, 0x5F) == 3


def test_cmos_memory_sizes_small_and_many_cpus() -> None:
    bus, _ = cmos_on_bus(ram_below_4g=8 * MIB, ram_above_4g=(1 << 40) - 64 * KIB, cpus=300)
    assert (cmos_read(bus, 0x15), cmos_read(bus, 0x16)) == (0x80, 0x02)
    assert (cmos_read(bus, 0x17), cmos_read(bus, 0x18)) == (0x00, 0x1C)  # 7 MiB in KiB
    assert (cmos_read(bus, 0x34), cmos_read(bus, 0x35)) == (0, 0)
    assert [cmos_read(bus, i) for i in (0x5B, 0x5C, 0x5D)] == [0xFF, 0xFF, 0xFF]
    assert cmos_read(bus, 0x5F) == 0  # more than 255: the BIOS must ask fw_cfg
    tiny, _ = cmos_on_bus(ram_below_4g=512 * KIB)
    assert (cmos_read(tiny, 0x15), cmos_read(tiny, 0x16)) == (0x00, 0x02)


def test_cmos_nvram_write_read_and_nmi_bit() -> None:
    bus, cmos = cmos_on_bus(FakeClock(SATURDAY_EVENING))
    for index in range(0x40, 0x50):
        cmos_write(bus, index, index ^ 0xA5)
    assert [cmos_read(bus, i) for i in range(0x40, 0x50)] == [i ^ 0xA5 for i in range(0x40, 0x50)]
    cmos_write(bus, 0x80 | 0x41, 0x11)  # bit 7 masks NMI, the index is 0x41
    assert cmos.nmi_masked
    assert cmos_read(bus, 0x41) == 0x11
    assert not cmos.nmi_masked
    bus.write(0x70, 2, 0x7742)  # index then data in one word access
    assert cmos.get_byte(0x42) == 0x77
    cmos.set_byte(0x3D, 0x21)
    assert cmos_read(bus, 0x3D) == 0x21
    cmos_write(bus, 0x01, 0x59)  # the alarm registers are storage
    assert cmos_read(bus, 0x01) == 0x59
    with pytest.raises(InvalidArgument):
        cmos.set_byte(0x0B, 0)
    with pytest.raises(InvalidArgument):
        cmos.set_byte(0x32, 0)
    with pytest.raises(InvalidArgument):
        cmos.set_byte(0x40, 0x100)


@pytest.mark.parametrize(
    ("below", "above", "cpus"),
    [(-1, 0, 1), (4 * GIB + 1, 0, 1), (MIB, -1, 1), (MIB, 1 << 40, 1), (MIB, 0, 0)],
)
def test_cmos_constructor_misuse(below: int, above: int, cpus: int) -> None:
    with pytest.raises(InvalidArgument):
        Cmos(below, above, cpus)


# -- fw_cfg ----------------------------------------------------------------------------------


class GuestRam:
    """A DmaMemory over a bytearray; out-of-range accesses raise as a machine's RAM would."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)

    def _check(self, address: int, length: int) -> None:
        if address < 0 or address + length > len(self.data):
            raise InvalidArgument(f"{address:#x}+{length:#x} is not RAM")

    def read(self, address: int, length: int) -> bytes:
        self._check(address, length)
        return bytes(self.data[address : address + length])

    def write(self, address: int, data: bytes) -> None:
        self._check(address, len(data))
        self.data[address : address + len(data)] = data


def fw_on_bus(fw: FwCfg | None = None) -> tuple[Bus, FwCfg]:
    fw = fw if fw is not None else FwCfg()
    bus = io_bus()
    for base, length, device in fw.ports():
        bus.register(base, length, device)
    return bus, fw


def fw_read(bus: Bus, selector: int, length: int) -> bytes:
    bus.write(0x510, 2, selector)
    return bytes(bus.read(0x511, 1) for _ in range(length))


def test_fw_cfg_signature_byte_by_byte() -> None:
    bus, _ = fw_on_bus()
    bus.write(0x510, 2, FwCfgKey.SIGNATURE)
    assert [bus.read(0x511, 1) for _ in range(4)] == [ord("Q"), ord("E"), ord("M"), ord("U")]
    assert bus.read(0x511, 1) == 0  # past the end
    bus.write(0x510, 2, FwCfgKey.SIGNATURE)  # selecting rewinds
    assert bus.read(0x511, 1) == ord("Q")
    assert bus.read(0x510, 1) == ord("E")  # a byte read at 0x510 reads data too, as on QEMU


def test_fw_cfg_id_without_and_with_dma() -> None:
    bus, fw = fw_on_bus()
    assert struct.unpack("<I", fw_read(bus, FwCfgKey.ID, 4)) == (1,)
    assert not fw.dma_enabled
    assert [r[0] for r in fw.ports()] == [0x510]
    assert fw.dma_port.read(0, 4) == 0xFFFFFFFF
    dma_bus, dma_fw = fw_on_bus(FwCfg(dma_memory=GuestRam(0x1000)))
    assert struct.unpack("<I", fw_read(dma_bus, FwCfgKey.ID, 4)) == (3,)
    assert dma_fw.dma_enabled


def test_fw_cfg_ram_size_and_cpus() -> None:
    bus, fw = fw_on_bus()
    fw.set_ram_size(6 * GIB)
    fw.set_cpus(4, max_cpus=8)
    assert struct.unpack("<Q", fw_read(bus, FwCfgKey.RAM_SIZE, 8)) == (6 * GIB,)
    assert struct.unpack("<H", fw_read(bus, FwCfgKey.NB_CPUS, 2)) == (4,)
    assert struct.unpack("<H", fw_read(bus, FwCfgKey.MAX_CPUS, 2)) == (8,)
    fw.set_cpus(2)
    assert struct.unpack("<H", fw_read(bus, FwCfgKey.MAX_CPUS, 2)) == (2,)
    with pytest.raises(InvalidArgument):
        fw.set_cpus(0)
    with pytest.raises(InvalidArgument):
        fw.set_cpus(4, max_cpus=2)


def parse_directory(raw: bytes) -> list[tuple[str, int, int]]:
    (count,) = struct.unpack_from(">I", raw, 0)
    entries = []
    for i in range(count):
        size, select, reserved, name = struct.unpack_from(">IHH56s", raw, 4 + 64 * i)
        assert reserved == 0
        entries.append((name.rstrip(b"\0").decode(), select, size))
    return entries


def test_fw_cfg_file_directory_with_two_files() -> None:
    bus, fw = fw_on_bus()
    assert fw_read(bus, FwCfgKey.FILE_DIR, 4) == b"\0\0\0\0"
    zeta = fw.add_file("etc/zeta", b"last by name")
    alpha = fw.add_file("etc/alpha", b"\x01\x02\x03")
    assert (zeta, alpha) == (0x20, 0x21)  # selectors in the order added, and they stay
    raw = fw_read(bus, FwCfgKey.FILE_DIR, 4 + 2 * 64)
    assert raw[:4] == b"\x00\x00\x00\x02"  # big-endian count
    assert parse_directory(raw) == [("etc/alpha", 0x21, 3), ("etc/zeta", 0x20, 12)]  # sorted by name
    assert fw.file_selector("etc/zeta") == 0x20
    assert fw.files() == {"etc/zeta": 0x20, "etc/alpha": 0x21}
    with pytest.raises(NotFound):
        fw.file_selector("etc/none")


def test_fw_cfg_reads_a_file_by_its_selector_and_past_its_end() -> None:
    bus, fw = fw_on_bus()
    fw.add_file("opt/one", b"first")
    selector = fw.add_file("opt/two", b"second")
    assert fw_read(bus, selector, 6) == b"second"
    assert fw_read(bus, selector, 9) == b"second\0\0\0"
    assert fw_read(bus, 0x0123, 3) == b"\0\0\0"  # nothing there
    assert fw_read(bus, 0x4000 | selector, 6) == b"second"  # the write-channel bit is ignored
    assert fw.selector == 0x4000 | selector


def test_fw_cfg_other_accesses_are_ignored() -> None:
    bus, _ = fw_on_bus()
    bus.write(0x510, 2, FwCfgKey.SIGNATURE)
    bus.write(0x511, 1, 0x00)  # data writes are gone since QEMU 2.4
    bus.write(0x510, 4, 0x0001)  # not a 16-bit write: not a select
    assert bus.read(0x511, 2) == 0xFFFF  # only byte reads are valid
    assert bus.read(0x511, 1) == ord("Q")


def test_fw_cfg_item_rules() -> None:
    fw = FwCfg()
    fw.add_item(FwCfgKey.E820_TABLE, b"e820")
    assert fw.item(FwCfgKey.E820_TABLE) == b"e820"
    fw.add_item(FwCfgKey.NOGRAPHIC, b"\1\0")
    fw.add_item(FwCfgKey.NOGRAPHIC, b"\0\0")  # replacing is allowed
    assert fw.item(FwCfgKey.NOGRAPHIC) == b"\0\0"
    for key in (FwCfgKey.SIGNATURE, FwCfgKey.ID, FwCfgKey.FILE_DIR, 0x20, 0x4002, 0xC000, 0x10000, -1):
        with pytest.raises(InvalidArgument):
            fw.add_item(key, b"x")
    fw.add_file("etc/a", b"")
    with pytest.raises(AlreadyExists):
        fw.add_file("etc/a", b"")
    for name in ("", "x" * 56, "a\0b"):
        with pytest.raises(InvalidArgument):
            fw.add_file(name, b"")
    fw.add_file("y" * 55, b"")


def test_fw_cfg_kernel_items() -> None:
    bus, fw = fw_on_bus()
    fw.set_kernel(b"K" * 100, cmdline="console=ttyS0", initrd=b"I" * 10, setup=b"S" * 5, kernel_addr=0x100000)

    def u32(key: int) -> int:
        return int(struct.unpack("<I", fw_read(bus, key, 4))[0])

    assert u32(FwCfgKey.KERNEL_ADDR) == 0x100000
    assert u32(FwCfgKey.KERNEL_SIZE) == 100
    assert fw_read(bus, FwCfgKey.KERNEL_DATA, 100) == b"K" * 100
    assert u32(FwCfgKey.CMDLINE_SIZE) == len(b"console=ttyS0\0")
    assert fw_read(bus, FwCfgKey.CMDLINE_DATA, 14) == b"console=ttyS0\0"
    assert u32(FwCfgKey.CMDLINE_ADDR) == 0x20000
    assert u32(FwCfgKey.INITRD_SIZE) == 10
    assert fw_read(bus, FwCfgKey.INITRD_DATA, 10) == b"I" * 10
    assert u32(FwCfgKey.SETUP_SIZE) == 5
    assert u32(FwCfgKey.SETUP_ADDR) == 0x10000
    assert fw.item(FwCfgKey.KERNEL_ENTRY) is None
    with pytest.raises(InvalidArgument):
        fw.set_kernel(b"", kernel_addr=1 << 32)


def test_fw_cfg_seabios_defaults_hide_the_boot_menu() -> None:
    bus, fw = fw_on_bus()
    fw.seabios_defaults()
    entries = parse_directory(fw_read(bus, FwCfgKey.FILE_DIR, 4 + 64))
    assert entries == [("etc/show-boot-menu", 0x20, 2)]
    assert fw_read(bus, 0x20, 2) == b"\0\0"
    assert fw.item(FwCfgKey.BOOT_MENU) == b"\0\0"


def dma_kick(bus: Bus, descriptor: int) -> None:
    """What SeaBIOS does: the big-endian address, high half at 0x514 then low half at 0x518."""
    bus.write(0x514, 4, int.from_bytes((descriptor >> 32).to_bytes(4, "big"), "little"))
    bus.write(0x518, 4, int.from_bytes((descriptor & 0xFFFFFFFF).to_bytes(4, "big"), "little"))


def test_fw_cfg_dma_select_read_skip_and_errors() -> None:
    ram = GuestRam(0x4000)
    bus, fw = fw_on_bus(FwCfg(dma_memory=ram))
    assert bus.read(0x514, 4).to_bytes(4, "little") == b"QEMU"
    assert bus.read(0x518, 4).to_bytes(4, "little") == b" CFG"
    selector = fw.add_file("etc/blob", bytes(range(32)))

    ram.write(0x1000, struct.pack(">IIQ", (selector << 16) | 0x08 | 0x02, 8, 0x2000))  # select + read
    dma_kick(bus, 0x1000)
    assert ram.data[0x2000:0x2008] == bytes(range(8))
    assert ram.read(0x1000, 4) == b"\0\0\0\0"  # done, no error

    ram.write(0x1000, struct.pack(">IIQ", 0x04, 8, 0))  # skip 8
    dma_kick(bus, 0x1000)
    ram.write(0x1000, struct.pack(">IIQ", 0x02, 20, 0x2100))  # read 20: 16 left, then zeros
    ram.write(0x2100, b"\xff" * 20)
    dma_kick(bus, 0x1000)
    assert ram.data[0x2100:0x2114] == bytes(range(16, 32)) + bytes(4)
    assert ram.read(0x1000, 4) == b"\0\0\0\0"

    ram.write(0x1000, struct.pack(">IIQ", (selector << 16) | 0x08 | 0x10, 4, 0x2000))  # write: refused
    dma_kick(bus, 0x1000)
    assert ram.read(0x1000, 4) == b"\0\0\0\x01"

    ram.write(0x1000, struct.pack(">IIQ", 0x08 | 0x02, 4, 0x10000))  # read into memory that is not RAM
    dma_kick(bus, 0x1000)
    assert ram.read(0x1000, 4) == b"\0\0\0\x01"

    # the traditional interface sees the offset the DMA select left
    ram.write(0x1000, struct.pack(">IIQ", (FwCfgKey.SIGNATURE << 16) | 0x08 | 0x02, 2, 0x2000))
    dma_kick(bus, 0x1000)
    assert bus.read(0x511, 1) == ord("M")


def test_fw_cfg_dma_ignores_partial_and_odd_writes() -> None:
    ram = GuestRam(0x2000)
    bus, _ = fw_on_bus(FwCfg(dma_memory=ram))
    ram.write(0x1000, struct.pack(">IIQ", 0x08 | 0x02, 4, 0x1800))
    bus.write(0x514, 4, int.from_bytes((0).to_bytes(4, "big"), "little"))  # high half only: nothing yet
    bus.write(0x515, 2, 0x1234)  # an invalid access
    assert ram.read(0x1000, 4) == b"\0\0\0\x0a"
    dma_kick(bus, 0x1000)
    assert ram.data[0x1800:0x1804] == b"QEMU"


# -- pc-testdev ---------------------------------------------------------------------------------


def test_pc_testdev_lines_scratch_and_flush() -> None:
    machine = FakeMachine()
    bus = io_bus()
    testdev = PcTestdev(machine.host)
    for base, length, device in testdev.ports():
        bus.register(base, length, device)
    bus.write(0x200E, 1, 1)
    bus.write(0x200E, 1, 0)
    bus.write(0x2017, 1, 0x80)  # any non-zero value raises the line
    assert machine.line(14).events == [True, False] and machine.line(23).events == [True]
    assert bus.read(0x2000, 1) == 0
    bus.write(0xE0, 4, 0x12345678)
    assert bus.read(0xE0, 4) == 0x12345678 and testdev.scratch == 0x12345678
    bus.write(0xE1, 1, 0xAB)  # a narrower write replaces only its bytes
    assert bus.read(0xE0, 4) == 0x1234AB78 and bus.read(0xE1, 1) == 0xAB
    bus.write(0xEA, 2, 0xCDEF)  # the same register at 0xE8
    assert bus.read(0xE8, 4) == 0xCDEFAB78 and testdev.scratch == 0xCDEFAB78
    bus.write(0xE4, 4, 0x1000)  # flush page: accepted, nothing to do
    assert bus.read(0xE4, 4) == 0


def test_pc_testdev_without_an_irqchip_ignores_line_writes() -> None:
    machine = FakeMachine(irqchip=False)
    port = {base: device for base, _, device in PcTestdev(machine.host).ports()}[PcTestdev.IRQ_BASE]
    port.write(5, 1, 1)
    assert machine.lines == {}
