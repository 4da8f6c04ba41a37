"""The bundled demo guest and a minimal VMM that runs it (``hvcore demo``).

The guest is a 16-bit real-mode program: it prints ``"Hello from the guest!\\n"`` on
the serial port (0x3f8), computes 6 * 7 and sends the result to port 0x3f9, then halts.
:func:`run_demo` is a complete VMM for it in a page of code::

    with hvcore.open_hypervisor("auto") as hv:
        result = run_demo(hv, sys.stdout)
    assert result.value == 42
"""

from __future__ import annotations

import codecs
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Final, TextIO

from hvcore import x86
from hvcore.errors import HvError, HypervisorFault
from hvcore.exits import Exit, HltExit, InterruptedExit, IoDirection, IoExit, MmioExit
from hvcore.memory import GuestMemory
from hvcore.protocol import Hypervisor

__all__ = [
    "CONSOLE_PORT",
    "DEMO_RAM_SIZE",
    "EXPECTED_CONSOLE",
    "EXPECTED_VALUE",
    "HELLO",
    "LOAD_ADDRESS",
    "RESULT_PORT",
    "DemoResult",
    "run_demo",
]

LOAD_ADDRESS: Final = 0x1000
"""Guest-physical address the demo guest is loaded at and starts from (CS=0, IP=0x1000)."""
DEMO_RAM_SIZE: Final = 1 << 20
"""RAM given to the demo VM: 1 MiB at guest-physical 0 (all real mode can address)."""
CONSOLE_PORT: Final = 0x3F8
"""The port the guest prints on (COM1's data register)."""
RESULT_PORT: Final = 0x3F9
"""The port the guest sends its computed value to."""
EXPECTED_CONSOLE: Final = "Hello from the guest!\n"
"""What the guest prints."""
EXPECTED_VALUE: Final = 6 * 7
"""What the guest computes."""

# Prints "Hello from the guest!\n" byte by byte to port 0x3f8 (lodsb from the string at the
# end of the guest: position-dependent, load at 0x1000; assumes ds = 0), then computes 6*7
# with `mul` and sends it to port 0x3f9, then halts.
# Host: real mode, rip=0x1000.
# Exits: 22 x OUT port 0x3f8 size 1 (the bytes of "Hello from the guest!\n"); OUT port 0x3f9
# size 1 data 42 (0x2a); HLT. 24 exits in all.
# Measured on this host's KVM: exactly that.
# Each byte literal is one instruction (or one data directive), assembled with GNU as
# (.code16, Intel syntax) and linked at 0x1000; the trailing comment is the source line.
# fmt: off
HELLO: Final = (
    b"\xfc"                         # cld
    b"\xbe\x18\x10"                 # mov si, offset msg  ; = 0x1018
    b"\xba\xf8\x03"                 # mov dx, 0x3f8
    b"\xac"                         # next: lodsb
    b"\x84\xc0"                     # test al, al
    b"\x74\x03"                     # jz done
    b"\xee"                         # out dx, al
    b"\xeb\xf8"                     # jmp next
    b"\xb0\x06"                     # done: mov al, 6
    b"\xb3\x07"                     # mov bl, 7
    b"\xf6\xe3"                     # mul bl
    b"\x42"                         # inc dx
    b"\xee"                         # out dx, al
    b"\xf4"                         # hlt
    b"Hello from the guest!\n\x00"  # msg: .asciz "Hello from the guest!\n"
)
"""The demo guest: 16-bit real-mode machine code, to be loaded at :data:`LOAD_ADDRESS`."""
# fmt: on


@dataclass(frozen=True)
class DemoResult:
    """What a demo run produced."""

    backend: str
    """The name of the backend it ran on."""
    console: str
    """Everything the guest printed on :data:`CONSOLE_PORT`."""
    value: int
    """The value the guest sent to :data:`RESULT_PORT` (42)."""
    exits: Mapping[str, int] = field(hash=False)
    """Number of exits by kind (``ExitReason`` name, e.g. ``{"IO": 23, "HLT": 1}``), in order of first occurrence."""
    elapsed: float
    """Seconds from the first ``run()`` until the guest halted."""

    @property
    def total_exits(self) -> int:
        """Number of exits in all."""
        return sum(self.exits.values())


def _describe(exit_: Exit) -> str:
    """A short human description of an exit, for error messages."""
    match exit_:
        case IoExit(direction=IoDirection.IN, port=port, size=size):
            return f"IN from port {port:#x} (size {size})"
        case IoExit(port=port, data=data):
            return f"OUT to port {port:#x} (data {data.hex() or 'none'})"
        case MmioExit(is_write=True, address=address, data=data):
            return f"MMIO write to {address:#x} (data {data.hex()})"
        case MmioExit(address=address, length=length):
            return f"MMIO read of {length} bytes at {address:#x}"
        case _:
            return repr(exit_)


def run_demo(
    hypervisor: Hypervisor,
    out: TextIO,
    *,
    guest: bytes = HELLO,
    max_exits: int = 1000,
    timeout: float = 10.0,
) -> DemoResult:
    """Run the demo guest on ``hypervisor``, writing its console output to ``out`` as it arrives.

    Creates a VM with :data:`DEMO_RAM_SIZE` of RAM and one real-mode vCPU, loads
    ``guest`` (:data:`HELLO` unless given) at :data:`LOAD_ADDRESS` and runs it
    until HLT; everything is closed again on every path. The guest may
    take at most ``max_exits`` exits and ``timeout`` seconds (a watchdog kicks the
    vCPU). Any other exit, or a guest that never reports its value, raises
    :class:`hvcore.HypervisorFault` naming what happened.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    console: list[str] = []
    value: int | None = None
    counts: Counter[str] = Counter()

    with GuestMemory(DEMO_RAM_SIZE) as ram, hypervisor.create_vm() as vm:
        ram.write(LOAD_ADDRESS, guest)
        vm.set_memory_slot(0, 0, ram)
        with vm.create_vcpu(0) as vcpu:
            vcpu.set_sregs(x86.real_mode_sregs(vcpu.get_sregs()))
            vcpu.set_regs(replace(vcpu.get_regs(), rip=LOAD_ADDRESS, rflags=0x2))

            def on_timeout() -> None:
                with contextlib.suppress(HvError):  # nothing more a watchdog thread could do
                    vcpu.kick()

            watchdog = threading.Timer(timeout, on_timeout)
            watchdog.daemon = True
            start = time.perf_counter()
            watchdog.start()
            try:
                for _ in range(max_exits):
                    exit_ = vcpu.run()
                    counts[exit_.reason.name] += 1
                    match exit_:
                        case IoExit(port=port, direction=IoDirection.OUT, data=data) if port == CONSOLE_PORT:
                            text = decoder.decode(data)
                            console.append(text)
                            out.write(text)
                            out.flush()
                        case IoExit(port=port, direction=IoDirection.OUT, size=1, data=data) if port == RESULT_PORT:
                            value = data[0]
                        case HltExit():
                            break
                        case InterruptedExit():
                            raise HypervisorFault(
                                f"the demo guest did not halt within {timeout:g} s on backend {hypervisor.name!r}",
                                operation="run_demo",
                            )
                        case _:
                            raise HypervisorFault(
                                f"the demo guest made an unexpected exit on backend {hypervisor.name!r}: "
                                f"{_describe(exit_)}",
                                operation="run_demo",
                            )
                else:
                    raise HypervisorFault(
                        f"the demo guest did not halt within {max_exits} exits on backend {hypervisor.name!r}",
                        operation="run_demo",
                    )
                elapsed = time.perf_counter() - start
            finally:
                watchdog.cancel()
                watchdog.join()

    tail = decoder.decode(b"", final=True)
    if tail:
        console.append(tail)
        out.write(tail)
    if value is None:
        raise HypervisorFault(
            f"the demo guest halted on backend {hypervisor.name!r} without sending a value to port {RESULT_PORT:#x}",
            operation="run_demo",
        )
    return DemoResult(
        backend=hypervisor.name,
        console="".join(console),
        value=value,
        exits=MappingProxyType(dict(counts)),
        elapsed=elapsed,
    )
