"""``DelegatingVCPU``: a VCPU that forwards everything to another one, the base of VCPU wrappers.

Wrappers (tracing, fault injection, replay) subclass it and override what they change; the rest
keeps the wrapped vCPU's behaviour, so a wrapper is a complete :class:`hvcore.VCPU`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from hvcore.exits import Exit
from hvcore.lifetime import Closeable
from hvcore.protocol import VCPU
from hvcore.types import (
    CpuidEntry,
    DebugRegs,
    Fpu,
    GuestDebug,
    Lapic,
    MpState,
    Regs,
    Sregs,
    Translation,
    VcpuEvents,
    Xsave,
)

__all__ = ["DelegatingVCPU"]


class DelegatingVCPU(Closeable):
    """Forwards every :class:`hvcore.VCPU` method and property to ``inner``."""

    def __init__(self, inner: VCPU) -> None:
        self.inner = inner

    @property
    def id(self) -> int:
        """The wrapped vCPU's id."""
        return self.inner.id

    @property
    def immediate_exit(self) -> bool:
        """The wrapped vCPU's ``immediate_exit``."""
        return self.inner.immediate_exit

    @immediate_exit.setter
    def immediate_exit(self, value: bool) -> None:
        self.inner.immediate_exit = value

    @property
    def request_interrupt_window(self) -> bool:
        """The wrapped vCPU's ``request_interrupt_window``."""
        return self.inner.request_interrupt_window

    @request_interrupt_window.setter
    def request_interrupt_window(self, value: bool) -> None:
        self.inner.request_interrupt_window = value

    @property
    def ready_for_interrupt_injection(self) -> bool:
        """The wrapped vCPU's ``ready_for_interrupt_injection``."""
        return self.inner.ready_for_interrupt_injection

    @property
    def if_flag(self) -> bool:
        """The wrapped vCPU's ``if_flag``."""
        return self.inner.if_flag

    @property
    def cr8(self) -> int:
        """The wrapped vCPU's ``cr8``."""
        return self.inner.cr8

    @cr8.setter
    def cr8(self, value: int) -> None:
        self.inner.cr8 = value

    @property
    def apic_base(self) -> int:
        """The wrapped vCPU's ``apic_base``."""
        return self.inner.apic_base

    def run(self) -> Exit:
        """Forwarded to the wrapped vCPU."""
        return self.inner.run()

    def complete(self, data: bytes | int) -> None:
        """Forwarded to the wrapped vCPU."""
        self.inner.complete(data)

    def kick(self) -> None:
        """Forwarded to the wrapped vCPU."""
        self.inner.kick()

    def get_regs(self) -> Regs:
        """Forwarded to the wrapped vCPU."""
        return self.inner.get_regs()

    def set_regs(self, regs: Regs) -> None:
        """Forwarded to the wrapped vCPU."""
        self.inner.set_regs(regs)

    def get_sregs(self) -> Sregs:
        """Forwarded to the wrapped vCPU."""
        return self.inner.get_sregs()

    def set_sregs(self, sregs: Sregs) -> None:
        """Forwarded to the wrapped vCPU."""
        self.inner.set_sregs(sregs)

    def get_fpu(self) -> Fpu:
        """Forwarded to the wrapped vCPU."""
        return self.inner.get_fpu()

    def set_fpu(self, fpu: Fpu) -> None:
        """Forwarded to the wrapped vCPU."""
        self.inner.set_fpu(fpu)

    def get_xsave(self) -> Xsave:
        """Forwarded to the wrapped vCPU."""
        return self.inner.get_xsave()

    def set_xsave(self, xsave: Xsave) -> None:
        """Forwarded to the wrapped vCPU."""
        self.inner.set_xsave(xsave)

    def get_xcrs(self) -> dict[int, int]:
        """Forwarded to the wrapped vCPU."""
        return self.inner.get_xcrs()

    def set_xcrs(self, xcrs: Mapping[int, int]) -> None:
        """Forwarded to the wrapped vCPU."""
        self.inner.set_xcrs(xcrs)

    def get_msrs(self, indices: Iterable[int]) -> dict[int, int]:
        """Forwarded to the wrapped vCPU."""
        return self.inner.get_msrs(indices)

    def set_msrs(self, msrs: Mapping[int, int]) -> None:
        """Forwarded to the wrapped vCPU."""
        self.inner.set_msrs(msrs)

    def set_cpuid(self, entries: Iterable[CpuidEntry]) -> None:
        """Forwarded to the wrapped vCPU."""
        self.inner.set_cpuid(entries)

    def get_cpuid(self) -> tuple[CpuidEntry, ...]:
        """Forwarded to the wrapped vCPU."""
        return self.inner.get_cpuid()

    def get_lapic(self) -> Lapic:
        """Forwarded to the wrapped vCPU."""
        return self.inner.get_lapic()

    def set_lapic(self, lapic: Lapic) -> None:
        """Forwarded to the wrapped vCPU."""
        self.inner.set_lapic(lapic)

    def get_debugregs(self) -> DebugRegs:
        """Forwarded to the wrapped vCPU."""
        return self.inner.get_debugregs()

    def set_debugregs(self, debugregs: DebugRegs) -> None:
        """Forwarded to the wrapped vCPU."""
        self.inner.set_debugregs(debugregs)

    def get_vcpu_events(self) -> VcpuEvents:
        """Forwarded to the wrapped vCPU."""
        return self.inner.get_vcpu_events()

    def set_vcpu_events(self, events: VcpuEvents) -> None:
        """Forwarded to the wrapped vCPU."""
        self.inner.set_vcpu_events(events)

    def get_mp_state(self) -> MpState:
        """Forwarded to the wrapped vCPU."""
        return self.inner.get_mp_state()

    def set_mp_state(self, state: MpState) -> None:
        """Forwarded to the wrapped vCPU."""
        self.inner.set_mp_state(state)

    def interrupt(self, vector: int) -> None:
        """Forwarded to the wrapped vCPU."""
        self.inner.interrupt(vector)

    def nmi(self) -> None:
        """Forwarded to the wrapped vCPU."""
        self.inner.nmi()

    def smi(self) -> None:
        """Forwarded to the wrapped vCPU."""
        self.inner.smi()

    @property
    def in_smm(self) -> bool:
        """Forwarded to the wrapped vCPU."""
        return self.inner.in_smm

    def set_guest_debug(self, debug: GuestDebug) -> None:
        """Forwarded to the wrapped vCPU."""
        self.inner.set_guest_debug(debug)

    def translate(self, linear_address: int) -> Translation:
        """Forwarded to the wrapped vCPU."""
        return self.inner.translate(linear_address)

    def close(self) -> None:
        """Forwarded to the wrapped vCPU."""
        self.inner.close()
