"""A one-vCPU guest for host probes: RAM at 0, code at ``CODE``, a watchdog, event stubs.

Probes run on hypervisors whose behaviour is unknown (that is why they run), so every run is
bounded: :meth:`ProbeGuest.run` kicks the vCPU after ``seconds`` and raises :class:`ProbeTimeout`.

Memory (guest-physical, one RAM slot from 0 of ``RAM_SIZE``)::

    0x0000  real-mode IVT          0x9000  PML4, 0xA000 PDPT, 0xB000 PD (identity map of 1 GiB)
    0x0500  GDT (hvcore.x86's)     0x10000 IDT (256 16-byte gates)
    0x1000  CODE                   0x11000 TSS (RSP0 = 0x13000, IST1 = 0x14000)
    0x8000  STACK_TOP              0x20000 STUBS: vector v's handler at STUBS + 8 v
                                   0x30000 DATA: scratch

Each stub reports its vector (``mov al, v; out EVENT_PORT, al; hlt``), so a delivery shows as
the exits ``IoExit(EVENT_PORT, data=bytes([v]))`` then ``HltExit`` (:meth:`ProbeGuest.delivered`).
"""

from __future__ import annotations

import threading
from dataclasses import replace
from types import TracebackType
from typing import Final, Literal

from hvcore import x86
from hvcore.errors import HypervisorFault
from hvcore.exits import Exit, HltExit, InterruptedExit, IoDirection, IoExit, MmioExit
from hvcore.memory import GuestMemory
from hvcore.protocol import VCPU, VM, Hypervisor
from hvcore.types import DescriptorTable, Segment

__all__ = [
    "CODE",
    "CODE32",
    "DATA",
    "EVENT_PORT",
    "IDT",
    "KERNEL_CS",
    "KERNEL_SS",
    "RSP0",
    "STACK_TOP",
    "STUBS",
    "USER_CS",
    "USER_SS",
    "ProbeGuest",
    "ProbeTimeout",
    "gate",
]

RAM_SIZE: Final = 0x40000
GDT: Final = 0x500
CODE: Final = 0x1000
"""Where the probe guest's code is loaded and entered."""
STACK_TOP: Final = 0x8000
"""The top of the probe guest's kernel stack."""
PML4: Final = 0x9000
IDT: Final = 0x10000
"""The probe guest's interrupt descriptor table."""
TSS: Final = 0x11000
RSP0: Final = 0x13000
"""The stack the TSS gives for a switch to CPL 0 (from user mode)."""
IST1: Final = 0x14000
STUBS: Final = 0x20000
"""The exception and interrupt stubs the IDT points at (each reports its vector at EVENT_PORT)."""
DATA: Final = 0x30000
"""Scratch data the probes read and write."""
EVENT_PORT: Final = 0xE0
"""The port a stub writes its vector to: an OUT exit says which event the guest took."""
TSS_SELECTOR: Final = 0x30
KERNEL_CS: Final = 0x08
"""The probe guest's 64-bit kernel code selector (GDT entry 1)."""
KERNEL_SS: Final = 0x10
"""Its kernel data and stack selector (entry 2)."""
CODE32: Final = 0x18
"""Its 32-bit code selector (entry 3), for compatibility-mode probes."""
USER_SS: Final = 0x23
"""Its user data and stack selector (entry 4, RPL 3)."""
USER_CS: Final = 0x2B
"""Its 64-bit user code selector (entry 5, RPL 3)."""
Mode = Literal["real", "protected", "long", "user"]


class ProbeTimeout(HypervisorFault):
    """A probe guest ran past its watchdog: the host neither finished nor exited in time."""


def stub(vector: int) -> int:
    """Where vector ``vector``'s stub starts."""
    return STUBS + 8 * vector


def gate(
    vector: int, *, dpl: int = 0, present: bool = True, selector: int = KERNEL_CS, offset: int | None = None
) -> bytes:
    """A 16-byte 64-bit interrupt gate (type 0xE) to ``vector``'s stub, or to ``offset`` if given."""
    offset = stub(vector) if offset is None else offset
    access = 0xE | dpl << 5 | int(present) << 7
    low = (offset & 0xFFFF) | selector << 16 | access << 40 | (offset >> 16 & 0xFFFF) << 48
    return low.to_bytes(8, "little") + (offset >> 32).to_bytes(8, "little")


def _tss_descriptor(base: int, limit: int) -> bytes:
    low = (limit & 0xFFFF) | (base & 0xFFFFFF) << 16 | 0x89 << 40 | (limit >> 16 & 0xF) << 48
    low |= (base >> 24 & 0xFF) << 56
    return low.to_bytes(8, "little") + (base >> 32).to_bytes(8, "little")


class ProbeGuest:
    """``code`` at ``CODE`` on a fresh VM of ``hv``, one vCPU in ``mode``, under a watchdog.

    ``mode``: ``"real"`` (CS=0, IVT at 0 pointing at the stubs), ``"protected"`` (flat 32-bit,
    no IDT), ``"long"`` / ``"user"`` (64-bit at CPL0 / CPL3 with identity paging, an IDT of
    present DPL0 gates but ``gates``, a TSS in TR). The vCPU gets ``hv.supported_cpuid()``
    unless ``cpuid=False``. ``irqchip=True`` creates the in-kernel irqchip first.
    """

    def __init__(
        self,
        hv: Hypervisor,
        code: bytes,
        mode: Mode = "long",
        *,
        gates: dict[int, bytes] | None = None,
        rflags: int = 0x2,
        irqchip: bool = False,
        cpuid: bool = True,
        seconds: float = 5.0,
    ) -> None:
        self.seconds = seconds
        self.vm: VM = hv.create_vm()
        try:
            self.ram = GuestMemory(RAM_SIZE)
            if irqchip:
                self.vm.create_irqchip()
            self.vm.set_memory_slot(0, guest_address=0, memory=self.ram)
            self.vcpu: VCPU = self.vm.create_vcpu(0)
            if cpuid:
                self.vcpu.set_cpuid(hv.supported_cpuid())
            self._set_up(code, mode, gates or {}, rflags)
        except BaseException:
            self.close()
            raise

    def _set_up(self, code: bytes, mode: Mode, gates: dict[int, bytes], rflags: int) -> None:
        ram = self.ram
        ram.write(CODE, code)
        ram.write(STUBS, b"".join((b"\xb0" + bytes([v]) + b"\xe6\xe0\xf4").ljust(8, b"\x90") for v in range(256)))
        sregs = self.vcpu.get_sregs()
        if mode == "real":
            ram.write(0, b"".join(((stub(v) & 0xF) | (stub(v) >> 4) << 16).to_bytes(4, "little") for v in range(256)))
            sregs = x86.real_mode_sregs(sregs)
        elif mode == "protected":
            sregs = x86.protected_mode_sregs(sregs, ram, GDT)
        else:
            sregs = x86.long_mode_sregs(sregs, ram, GDT, PML4, user=mode == "user")
            idt = {v: gate(v) for v in range(256)} | gates
            ram.write(IDT, b"".join(idt[v] for v in range(256)))
            tss = bytearray(0x68)
            tss[0x04:0x0C] = RSP0.to_bytes(8, "little")
            tss[0x24:0x2C] = IST1.to_bytes(8, "little")
            tss[0x66:0x68] = len(tss).to_bytes(2, "little")  # no I/O bitmap
            ram.write(TSS, bytes(tss))
            ram.write(GDT + TSS_SELECTOR, _tss_descriptor(TSS, len(tss) - 1))
            tr = Segment(base=TSS, limit=len(tss) - 1, selector=TSS_SELECTOR, type=0xB, present=1, s=0)
            gdt = DescriptorTable(GDT, TSS_SELECTOR + 15)
            sregs = replace(sregs, gdt=gdt, idt=DescriptorTable(IDT, 256 * 16 - 1), tr=tr)
        self.vcpu.set_sregs(sregs)
        self.vcpu.set_regs(replace(self.vcpu.get_regs(), rip=CODE, rsp=STACK_TOP, rflags=rflags))

    def run(self) -> Exit:
        """One ``vcpu.run()``, kicked after ``seconds``; raises :class:`ProbeTimeout` if it had to be."""
        fired = threading.Event()

        def kick() -> None:
            fired.set()
            self.vcpu.kick()

        timer = threading.Timer(self.seconds, kick)
        timer.daemon = True
        timer.start()
        try:
            exit_ = self.vcpu.run()
        finally:
            timer.cancel()
        if fired.is_set() and isinstance(exit_, InterruptedExit):
            raise ProbeTimeout(f"the probe guest ran {self.seconds} s without an exit")
        return exit_

    def run_until_halt(self, limit: int = 64) -> list[Exit]:
        """Exits up to the first that is not IO or MMIO (HLT, SHUTDOWN, ...), included; INs and reads get 0."""
        exits: list[Exit] = []
        for _ in range(limit):
            exit_ = self.run()
            exits.append(exit_)
            if isinstance(exit_, IoExit):
                if exit_.is_in:
                    self.vcpu.complete(bytes(exit_.size * exit_.count))
            elif isinstance(exit_, MmioExit):
                if not exit_.is_write:
                    self.vcpu.complete(bytes(exit_.length))
            else:
                return exits
        raise ProbeTimeout(f"the probe guest made {limit} IO/MMIO exits without stopping")

    @staticmethod
    def delivered(vector: int) -> list[Exit]:
        """The exits of a delivery to ``vector``'s stub: its OUT, then HLT."""
        return [IoExit(EVENT_PORT, 1, 1, IoDirection.OUT, bytes([vector])), HltExit()]

    def read(self, address: int, length: int) -> bytes:
        """Guest-physical memory."""
        return self.ram.read(address, length)

    def words(self, top: int, count: int, size: int = 8) -> list[int]:
        """The ``count`` words of ``size`` bytes just below ``top``, lowest address first (an interrupt frame)."""
        raw = self.ram.read(top - size * count, size * count)
        return [int.from_bytes(raw[i : i + size], "little") for i in range(0, len(raw), size)]

    def close(self) -> None:
        """Close the VM and its memory (idempotent)."""
        self.vm.close()
        if hasattr(self, "ram"):
            self.ram.close()

    def __enter__(self) -> ProbeGuest:
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.close()
