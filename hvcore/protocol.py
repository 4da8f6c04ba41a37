"""The backend-neutral protocol: ``Hypervisor`` -> ``VM`` -> ``VCPU``.

Every backend implements every method. A feature a backend lacks raises
:class:`hvcore.Unsupported` and is absent from ``capabilities()``. All three
objects are context managers; ``close()`` is idempotent, and every other
method raises :class:`hvcore.ClosedError` after it. Closing a VM closes its
vCPUs; closing a hypervisor closes its VMs.

A minimal VMM::

    import hvcore
    from dataclasses import replace

    with hvcore.open_hypervisor("auto") as hv, hv.create_vm() as vm, hvcore.GuestMemory(0x10000) as ram:
        ram.write(0x1000, code)
        vm.set_memory_slot(0, 0, ram)
        vcpu = vm.create_vcpu(0)
        vcpu.set_sregs(hvcore.x86.real_mode_sregs(vcpu.get_sregs()))
        vcpu.set_regs(replace(vcpu.get_regs(), rip=0x1000, rflags=2))
        while True:
            match vcpu.run():
                case hvcore.IoExit(port=0x3F8, data=data):
                    print(data.decode(), end="")
                case hvcore.HltExit():
                    break
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Protocol, runtime_checkable

from hvcore.caps import Capability
from hvcore.exits import Exit
from hvcore.memory import GuestMemory, MemorySlot
from hvcore.types import (
    ClockData,
    CpuidEntry,
    DebugRegs,
    DirtyLog,
    Fpu,
    GsiRoute,
    GuestDebug,
    IoapicState,
    IrqchipId,
    Lapic,
    MpState,
    PicState,
    PitState,
    Regs,
    SlotFlags,
    Sregs,
    Translation,
    VcpuEvents,
    Xsave,
)

__all__ = ["VCPU", "VM", "Hypervisor"]


@runtime_checkable
class VCPU(Protocol):
    """One virtual CPU. ``run()`` may be called from any one thread at a time; ``kick()`` from any thread."""

    @property
    def id(self) -> int:
        """The vCPU id given to ``VM.create_vcpu``."""
        ...

    def run(self) -> Exit:
        """Run the guest until it needs the VMM, and say why (see :mod:`hvcore.exits`).

        An IN, an MMIO read and a plain OUT are finished by the next ``run()``, before any guest
        code (also with ``immediate_exit``): until then RIP is at the instruction (past it for an
        OUT on hosts with the ``out_completed_at_exit`` deviation, and for ``out 0x7e``). Save a
        vCPU's state only after such a run. Raises :class:`hvcore.ExitNotCompleted` while an IN or
        MMIO read waits for ``complete()``.
        """
        ...

    def complete(self, data: bytes | int) -> None:
        """Answer the pending IN (``size * count`` bytes) or MMIO read (``length`` bytes).

        An int is packed little-endian to the access size.
        """
        ...

    def kick(self) -> None:
        """Make a ``run()`` in progress (or the next one) return :class:`hvcore.InterruptedExit` promptly.

        Thread-safe. A kick is consumed by the ``run()`` it interrupts, or by one
        that returned for another reason after it: it never cancels a later run.
        """
        ...

    @property
    def immediate_exit(self) -> bool:
        """When set, the next ``run()`` returns ``InterruptedExit`` without running the guest.

        It still completes a pending IN or MMIO read. ``run()`` clears it.
        """
        ...

    @immediate_exit.setter
    def immediate_exit(self, value: bool) -> None: ...

    @property
    def request_interrupt_window(self) -> bool:
        """When set, ``run()`` returns ``IrqWindowOpenExit`` as soon as the guest can take an interrupt."""
        ...

    @request_interrupt_window.setter
    def request_interrupt_window(self, value: bool) -> None: ...

    @property
    def ready_for_interrupt_injection(self) -> bool:
        """As the last ``run()`` returned (a snapshot; False before the first): an interrupt injected then
        would be taken at once (IF=1, no STI/MOV SS shadow, none queued). Always True with an irqchip."""
        ...

    @property
    def if_flag(self) -> bool:
        """The guest's RFLAGS.IF as the last ``run()`` returned (a snapshot; False before the first)."""
        ...

    @property
    def cr8(self) -> int:
        """The guest's CR8 (task priority), as exchanged on every ``run()``."""
        ...

    @cr8.setter
    def cr8(self, value: int) -> None: ...

    @property
    def apic_base(self) -> int:
        """After ``run()``: the guest's IA32_APIC_BASE."""
        ...

    def get_regs(self) -> Regs:
        """General-purpose registers, RIP and RFLAGS (``KVM_GET_REGS``)."""
        ...

    def set_regs(self, regs: Regs) -> None:
        """Set general-purpose registers, RIP and RFLAGS (``KVM_SET_REGS``)."""
        ...

    def get_sregs(self) -> Sregs:
        """Segment, descriptor-table and control registers (``KVM_GET_SREGS``)."""
        ...

    def set_sregs(self, sregs: Sregs) -> None:
        """Set segment, descriptor-table and control registers (``KVM_SET_SREGS``)."""
        ...

    def get_fpu(self) -> Fpu:
        """x87/SSE state (``KVM_GET_FPU``); upstream KVM reports ``mxcsr`` as 0 (``get_xsave`` has MXCSR)."""
        ...

    def set_fpu(self, fpu: Fpu) -> None:
        """Set x87/SSE state (``KVM_SET_FPU``); upstream KVM ignores ``mxcsr`` (``set_xsave`` sets MXCSR)."""
        ...

    def get_xsave(self) -> Xsave:
        """The XSAVE area (``KVM_GET_XSAVE``)."""
        ...

    def set_xsave(self, xsave: Xsave) -> None:
        """Set the XSAVE area (``KVM_SET_XSAVE``)."""
        ...

    def get_xcrs(self) -> dict[int, int]:
        """Extended control registers by number, e.g. ``{0: xcr0}`` (``KVM_GET_XCRS``)."""
        ...

    def set_xcrs(self, xcrs: Mapping[int, int]) -> None:
        """Set extended control registers (``KVM_SET_XCRS``)."""
        ...

    def get_msrs(self, indices: Iterable[int]) -> dict[int, int]:
        """Read MSRs by index (``KVM_GET_MSRS``); an MSR the vCPU lacks raises :class:`hvcore.InvalidArgument`."""
        ...

    def set_msrs(self, msrs: Mapping[int, int]) -> None:
        """Write MSRs (``KVM_SET_MSRS``); stops at the first one refused and raises :class:`hvcore.InvalidArgument`."""
        ...

    def set_cpuid(self, entries: Iterable[CpuidEntry]) -> None:
        """Set what CPUID returns to the guest (``KVM_SET_CPUID2``)."""
        ...

    def get_cpuid(self) -> tuple[CpuidEntry, ...]:
        """What CPUID returns to the guest (``KVM_GET_CPUID2``)."""
        ...

    def get_lapic(self) -> Lapic:
        """Local APIC registers (``KVM_GET_LAPIC``; needs an irqchip)."""
        ...

    def set_lapic(self, lapic: Lapic) -> None:
        """Set local APIC registers (``KVM_SET_LAPIC``; needs an irqchip)."""
        ...

    def get_debugregs(self) -> DebugRegs:
        """DR0-3, DR6, DR7 (``KVM_GET_DEBUGREGS``)."""
        ...

    def set_debugregs(self, debugregs: DebugRegs) -> None:
        """Set DR0-3, DR6, DR7 (``KVM_SET_DEBUGREGS``)."""
        ...

    def get_vcpu_events(self) -> VcpuEvents:
        """Pending exceptions, interrupts, NMIs and the interrupt shadow (``KVM_GET_VCPU_EVENTS``)."""
        ...

    def set_vcpu_events(self, events: VcpuEvents) -> None:
        """Set pending events (``KVM_SET_VCPU_EVENTS``)."""
        ...

    def get_mp_state(self) -> MpState:
        """The multiprocessing state (``KVM_GET_MP_STATE``)."""
        ...

    def set_mp_state(self, state: MpState) -> None:
        """Set the multiprocessing state (``KVM_SET_MP_STATE``)."""
        ...

    def interrupt(self, vector: int) -> None:
        """Queue external interrupt ``vector`` without an irqchip (``KVM_INTERRUPT``).

        It is delivered on the next ``run()`` even with IF=0: check
        ``ready_for_interrupt_injection`` or ask for an interrupt window first.
        """
        ...

    def nmi(self) -> None:
        """Queue an NMI (``KVM_NMI``)."""
        ...

    def smi(self) -> None:
        """Queue a System Management Interrupt (``KVM_SMI``).

        The next ``run()`` enters SMM (unless the vCPU is in SMM already: then the SMI waits
        for ``rsm``): the state is saved at SMBASE + 0xFE00 in address space 1, in the layout
        of KVM's emulator (the 64-bit one when the CPUID has long mode), and the vCPU runs from
        SMBASE + 0x8000 (SMBASE is MSR 0x9E, 0x30000 at reset). ``Unsupported`` where
        ``check_extension(Capability.X86_SMM)`` is 0.
        """
        ...

    @property
    def in_smm(self) -> bool:
        """After ``run()``: whether the vCPU is in System Management Mode (``KVM_RUN_X86_SMM``)."""
        ...

    def set_guest_debug(self, debug: GuestDebug) -> None:
        """Enable single-step or breakpoints (``KVM_SET_GUEST_DEBUG``); exits come as ``DebugExit``."""
        ...

    def translate(self, linear_address: int) -> Translation:
        """Walk the guest's page tables for ``linear_address`` (``KVM_TRANSLATE``)."""
        ...

    def close(self) -> None:
        """Unplug the vCPU: it is parked in its VM (see :meth:`VM.parked_vcpus`); idempotent."""
        ...

    def __enter__(self) -> VCPU: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


@runtime_checkable
class VM(Protocol):
    """A virtual machine: guest-physical memory, vCPUs, interrupt controllers and clock."""

    def check_extension(self, capability: Capability | int) -> int:
        """The raw ``KVM_CHECK_EXTENSION`` value for this VM (0 = absent)."""
        ...

    def set_memory_slot(
        self,
        slot: int,
        guest_address: int,
        memory: GuestMemory,
        *,
        offset: int = 0,
        size: int | None = None,
        flags: SlotFlags = SlotFlags(0),
        address_space: int = 0,
    ) -> MemorySlot:
        """Map ``size`` bytes of ``memory`` (from ``offset``; all of it by default) at ``guest_address``.

        KVM's rules hold on every backend: page alignment, no overlap, an
        existing slot may only move or toggle ``LOG_DIRTY_PAGES``. ``address_space`` 1 is
        what a vCPU in SMM sees (SMRAM, and whatever else the VMM maps there); each space has
        its own slot ids and overlap rules. ``Unsupported`` where KVM has no SMM.
        """
        ...

    def delete_memory_slot(self, slot: int, *, address_space: int = 0) -> None:
        """Remove a slot; later guest accesses to its range are MMIO exits."""
        ...

    def set_slot_flags(self, slot: int, flags: SlotFlags, *, address_space: int = 0) -> MemorySlot:
        """Change a slot's flags; a READONLY change deletes and re-adds the slot (its dirty log restarts)."""
        ...

    def memory_slots(self) -> tuple[MemorySlot, ...]:
        """The slots of every address space, by address space and id."""
        ...

    def get_dirty_log(self, slot: int, *, address_space: int = 0) -> DirtyLog:
        """Pages written since the last call, for a slot with ``LOG_DIRTY_PAGES``; reading clears it."""
        ...

    def create_vcpu(self, vcpu_id: int) -> VCPU:
        """Create vCPU ``vcpu_id`` in the architectural reset state (real mode at 0xfffffff0).

        A parked id (a vCPU closed before, :meth:`parked_vcpus`) comes back in the state KVM
        created it in; the VMM sets its state (CPUID first, the same entries as before on KVM) as
        for a new one.
        """
        ...

    def vcpus(self) -> tuple[VCPU, ...]:
        """The open vCPUs, by id."""
        ...

    def parked_vcpus(self) -> frozenset[int]:
        """Ids of closed vCPUs, kept parked: KVM cannot destroy a vCPU or create an id twice, so a
        closed vCPU's kernel object (fd, ``kvm_run``) stays with the VM until it closes."""
        ...

    def create_irqchip(self) -> None:
        """Create the interrupt controllers (PIC pair, IOAPIC, a LAPIC per vCPU) (``KVM_CREATE_IRQCHIP``)."""
        ...

    def irq_line(self, irq: int, level: bool) -> int:
        """Drive interrupt pin ``irq``; returns the delivery status (``KVM_IRQ_LINE_STATUS``)."""
        ...

    def get_irqchip(self, chip: IrqchipId) -> PicState | IoapicState:
        """State of one interrupt controller (``KVM_GET_IRQCHIP``)."""
        ...

    def set_irqchip(self, chip: IrqchipId, state: PicState | IoapicState) -> None:
        """Set one interrupt controller's state (``KVM_SET_IRQCHIP``)."""
        ...

    def create_pit(self) -> None:
        """Create the 8254 timer (``KVM_CREATE_PIT2``); needs an irqchip."""
        ...

    def get_pit(self) -> PitState:
        """State of the 8254 PIT (``KVM_GET_PIT2``)."""
        ...

    def set_pit(self, state: PitState) -> None:
        """Load the 8254 PIT's state (``KVM_SET_PIT2``)."""
        ...

    def signal_msi(self, address: int, data: int) -> int:
        """Inject a message-signalled interrupt; returns the delivery status (``KVM_SIGNAL_MSI``)."""
        ...

    def set_gsi_routing(self, routes: Sequence[GsiRoute]) -> None:
        """Replace the GSI routing table that ``irq_line`` uses (``KVM_SET_GSI_ROUTING``)."""
        ...

    def get_clock(self) -> ClockData:
        """The VM clock in nanoseconds (``KVM_GET_CLOCK``)."""
        ...

    def set_clock(self, nanoseconds: int) -> None:
        """Set the VM clock (``KVM_SET_CLOCK``)."""
        ...

    def set_tss_address(self, address: int) -> None:
        """Reserve three pages at ``address`` for the hypervisor's real-mode TSS (``KVM_SET_TSS_ADDR``)."""
        ...

    def set_identity_map_address(self, address: int) -> None:
        """Reserve a page at ``address`` for the identity page table (``KVM_SET_IDENTITY_MAP_ADDR``)."""
        ...

    def close(self) -> None:
        """Close the vCPUs and the VM; idempotent."""
        ...

    def __enter__(self) -> VM: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


@runtime_checkable
class Hypervisor(Protocol):
    """An open hypervisor backend: creates VMs and reports what it supports."""

    @property
    def name(self) -> str:
        """The backend's registry name (``"kvm"``, ``"sim"``)."""
        ...

    def api_version(self) -> int:
        """The KVM API version the backend speaks (always 12)."""
        ...

    def check_extension(self, capability: Capability | int) -> int:
        """The raw ``KVM_CHECK_EXTENSION`` value (0 = absent; a count for ``NR_*`` / ``MAX_*``)."""
        ...

    def capabilities(self) -> frozenset[Capability]:
        """Every known capability the backend has."""
        ...

    def vcpu_mmap_size(self) -> int:
        """Size of a vCPU's shared run area (``KVM_GET_VCPU_MMAP_SIZE``)."""
        ...

    def msr_index_list(self) -> tuple[int, ...]:
        """MSRs the backend can save and restore (``KVM_GET_MSR_INDEX_LIST``)."""
        ...

    def supported_cpuid(self) -> tuple[CpuidEntry, ...]:
        """CPUID leaves the backend can expose (``KVM_GET_SUPPORTED_CPUID``)."""
        ...

    def recommended_vcpus(self) -> int:
        """Recommended most vCPUs per VM (``KVM_CAP_NR_VCPUS``)."""
        ...

    def max_vcpus(self) -> int:
        """Hard limit of vCPUs per VM (``KVM_CAP_MAX_VCPUS``)."""
        ...

    def create_vm(self) -> VM:
        """Create an empty VM (``KVM_CREATE_VM``)."""
        ...

    def close(self) -> None:
        """Close every VM and the hypervisor; idempotent."""
        ...

    def __enter__(self) -> Hypervisor: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...
