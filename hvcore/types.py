"""Backend-neutral vCPU and VM state: immutable values that every backend reads and writes.

Change a value with :func:`dataclasses.replace`::

    regs = vcpu.get_regs()
    vcpu.set_regs(replace(regs, rip=0x1000, rax=2))

Numbers follow the x86 architecture and KVM's uapi, so state taken from one
backend can be set on another.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import IntEnum, IntFlag

from hvcore.errors import InvalidArgument

__all__ = [
    "ClockData",
    "CpuidEntry",
    "DebugRegs",
    "DescriptorTable",
    "DirtyLog",
    "Fpu",
    "GuestDebug",
    "GuestDebugFlags",
    "GsiRoute",
    "IoapicState",
    "IrqchipId",
    "IrqchipRoute",
    "Lapic",
    "MpState",
    "MsiRoute",
    "PicState",
    "PitChannelState",
    "PitState",
    "Regs",
    "Segment",
    "SlotFlags",
    "Sregs",
    "Translation",
    "VcpuEvents",
    "Xsave",
]


class SlotFlags(IntFlag):
    """Memory-slot flags, valued as ``KVM_MEM_*``."""

    LOG_DIRTY_PAGES = 1
    READONLY = 2


class GuestDebugFlags(IntFlag):
    """Guest-debug control bits, valued as ``KVM_GUESTDBG_*`` (x86)."""

    ENABLE = 0x1
    SINGLESTEP = 0x2
    USE_SW_BP = 0x10000
    USE_HW_BP = 0x20000
    INJECT_DB = 0x40000
    INJECT_BP = 0x80000
    BLOCKIRQ = 0x100000


class MpState(IntEnum):
    """A vCPU's multiprocessing state, valued as ``KVM_MP_STATE_*``."""

    RUNNABLE = 0
    UNINITIALIZED = 1
    INIT_RECEIVED = 2
    HALTED = 3
    SIPI_RECEIVED = 4
    STOPPED = 5
    CHECK_STOP = 6
    OPERATING = 7
    LOAD = 8
    AP_RESET_HOLD = 9
    SUSPENDED = 10


class IrqchipId(IntEnum):
    """Which in-kernel interrupt controller ``get_irqchip`` / ``set_irqchip`` address (``KVM_IRQCHIP_*``)."""

    PIC_MASTER = 0
    PIC_SLAVE = 1
    IOAPIC = 2


@dataclass(frozen=True, slots=True)
class Regs:
    """General-purpose registers, RIP and RFLAGS."""

    rax: int = 0
    rbx: int = 0
    rcx: int = 0
    rdx: int = 0
    rsi: int = 0
    rdi: int = 0
    rsp: int = 0
    rbp: int = 0
    r8: int = 0
    r9: int = 0
    r10: int = 0
    r11: int = 0
    r12: int = 0
    r13: int = 0
    r14: int = 0
    r15: int = 0
    rip: int = 0
    rflags: int = 0x2


@dataclass(frozen=True, slots=True)
class Segment:
    """A segment register with its hidden descriptor cache.

    ``type`` is the 4-bit descriptor type, ``s`` 1 for code/data, ``db`` the
    default-size bit, ``l`` the 64-bit code bit, ``g`` the granularity bit.
    ``limit`` is the byte limit already scaled by ``g``.
    """

    base: int = 0
    limit: int = 0xFFFF
    selector: int = 0
    type: int = 3
    present: int = 1
    dpl: int = 0
    db: int = 0
    s: int = 1
    l: int = 0  # noqa: E741 - the architectural name
    g: int = 0
    avl: int = 0
    unusable: int = 0


@dataclass(frozen=True, slots=True)
class DescriptorTable:
    """The GDTR or IDTR: linear base and byte limit."""

    base: int = 0
    limit: int = 0xFFFF


@dataclass(frozen=True, slots=True)
class Sregs:
    """Segment, descriptor-table and control registers, EFER and the APIC base.

    ``interrupt_bitmap`` has one bit per vector of an interrupt pending
    injection (KVM reports at most one).
    """

    cs: Segment = field(default_factory=Segment)
    ds: Segment = field(default_factory=Segment)
    es: Segment = field(default_factory=Segment)
    fs: Segment = field(default_factory=Segment)
    gs: Segment = field(default_factory=Segment)
    ss: Segment = field(default_factory=Segment)
    tr: Segment = field(default_factory=Segment)
    ldt: Segment = field(default_factory=Segment)
    gdt: DescriptorTable = field(default_factory=DescriptorTable)
    idt: DescriptorTable = field(default_factory=DescriptorTable)
    cr0: int = 0
    cr2: int = 0
    cr3: int = 0
    cr4: int = 0
    cr8: int = 0
    efer: int = 0
    apic_base: int = 0
    interrupt_bitmap: tuple[int, int, int, int] = (0, 0, 0, 0)

    def with_segments(self, **segments: Segment) -> Sregs:
        """A copy with the named segment registers replaced."""
        return replace(self, **segments)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Fpu:
    """x87 and SSE state in the legacy FXSAVE shape.

    ``fpr`` holds the eight 80-bit x87 registers as 16-byte slots, ``xmm`` the
    sixteen XMM registers as 16 bytes each.
    """

    fpr: tuple[bytes, ...] = (bytes(16),) * 8
    fcw: int = 0x37F
    fsw: int = 0
    ftwx: int = 0
    last_opcode: int = 0
    last_ip: int = 0
    last_dp: int = 0
    xmm: tuple[bytes, ...] = (bytes(16),) * 16
    mxcsr: int = 0x1F80


@dataclass(frozen=True, slots=True)
class Xsave:
    """The 4096-byte XSAVE area, in the processor's standard format."""

    region: bytes = bytes(4096)


@dataclass(frozen=True, slots=True)
class CpuidEntry:
    """One CPUID leaf (``function``) and subleaf (``index``) with its four result registers.

    ``flags`` bit 0 (``KVM_CPUID_FLAG_SIGNIFCANT_INDEX``) says the subleaf matters.
    """

    function: int
    index: int = 0
    flags: int = 0
    eax: int = 0
    ebx: int = 0
    ecx: int = 0
    edx: int = 0


@dataclass(frozen=True, slots=True)
class DebugRegs:
    """DR0-DR3, DR6 and DR7."""

    db: tuple[int, int, int, int] = (0, 0, 0, 0)
    dr6: int = 0xFFFF0FF0
    dr7: int = 0x400
    flags: int = 0


@dataclass(frozen=True, slots=True)
class VcpuEvents:
    """Pending and injected exceptions, interrupts and NMIs (``struct kvm_vcpu_events``).

    ``interrupt_shadow`` is the STI / MOV SS one-instruction shadow
    (bit 0 STI, bit 1 MOV SS). ``flags`` says which optional parts are valid.
    """

    exception_injected: int = 0
    exception_nr: int = 0
    exception_has_error_code: int = 0
    exception_pending: int = 0
    exception_error_code: int = 0
    interrupt_injected: int = 0
    interrupt_nr: int = 0
    interrupt_soft: int = 0
    interrupt_shadow: int = 0
    nmi_injected: int = 0
    nmi_pending: int = 0
    nmi_masked: int = 0
    sipi_vector: int = 0
    flags: int = 0
    smi_smm: int = 0
    smi_pending: int = 0
    smi_inside_nmi: int = 0
    smi_latched_init: int = 0
    triple_fault_pending: int = 0
    exception_has_payload: int = 0
    exception_payload: int = 0


@dataclass(frozen=True, slots=True)
class Lapic:
    """The local APIC's 1 KiB register page, as the guest sees it at 0xfee00000."""

    regs: bytes = bytes(1024)

    def register(self, offset: int) -> int:
        """The 32-bit register at ``offset`` (e.g. 0x20 for the APIC ID)."""
        if offset % 16 or not 0 <= offset < 1024:
            raise InvalidArgument(f"LAPIC register offset {offset:#x} must be a multiple of 16 below 0x400")
        return int.from_bytes(self.regs[offset : offset + 4], "little")

    def with_register(self, offset: int, value: int) -> Lapic:
        """A copy with the 32-bit register at ``offset`` set to ``value``."""
        self.register(offset)
        data = bytearray(self.regs)
        data[offset : offset + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
        return Lapic(bytes(data))


@dataclass(frozen=True, slots=True)
class GuestDebug:
    """Guest-debug settings: control ``flags`` and the eight debug-register values (DR0-DR7)."""

    flags: GuestDebugFlags = GuestDebugFlags(0)
    debugreg: tuple[int, ...] = (0,) * 8


@dataclass(frozen=True, slots=True)
class Translation:
    """What the guest's page tables make of a linear address (``KVM_TRANSLATE``)."""

    linear_address: int
    physical_address: int
    valid: bool
    writeable: bool
    usermode: bool


@dataclass(frozen=True, slots=True)
class ClockData:
    """The VM clock in nanoseconds (``struct kvm_clock_data``); ``flags`` says which extra fields are valid."""

    clock: int
    flags: int = 0
    realtime: int = 0
    host_tsc: int = 0


@dataclass(frozen=True, slots=True)
class DirtyLog:
    """The pages of a slot written since the last read of its dirty log: one bit per page."""

    slot: int
    page_count: int
    bitmap: bytes

    def pages(self) -> list[int]:
        """Indexes (from the slot's start) of the dirty pages, in order."""
        bits = int.from_bytes(self.bitmap, "little")
        return [i for i in range(self.page_count) if bits >> i & 1]

    def __len__(self) -> int:
        return int.from_bytes(self.bitmap, "little").bit_count()


@dataclass(frozen=True, slots=True)
class PicState:
    """One 8259A PIC (``struct kvm_pic_state``)."""

    last_irr: int = 0
    irr: int = 0
    imr: int = 0
    isr: int = 0
    priority_add: int = 0
    irq_base: int = 0
    read_reg_select: int = 0
    poll: int = 0
    special_mask: int = 0
    init_state: int = 0
    auto_eoi: int = 0
    rotate_on_auto_eoi: int = 0
    special_fully_nested_mode: int = 0
    init4: int = 0
    elcr: int = 0
    elcr_mask: int = 0


@dataclass(frozen=True, slots=True)
class IoapicState:
    """The IOAPIC (``struct kvm_ioapic_state``); ``redirtbl`` holds the 24 64-bit redirection entries."""

    base_address: int = 0xFEC00000
    ioregsel: int = 0
    id: int = 0
    irr: int = 0
    redirtbl: tuple[int, ...] = (1 << 16,) * 24


@dataclass(frozen=True, slots=True)
class PitChannelState:
    """One 8254 PIT channel (``struct kvm_pit_channel_state``).

    ``count_load_time`` is when ``count`` was loaded, in nanoseconds of the backend's own clock
    (the host's monotonic clock on KVM, the VM clock on the simulator).
    """

    count: int = 0
    latched_count: int = 0
    count_latched: int = 0
    status_latched: int = 0
    status: int = 0
    read_state: int = 0
    write_state: int = 0
    write_latch: int = 0
    rw_mode: int = 0
    mode: int = 0
    bcd: int = 0
    gate: int = 0
    count_load_time: int = 0


PIT_FLAGS_HPET_LEGACY = 1
"""``PitState.flags``: the HPET drives IRQ 0 and the PIT does not (``KVM_PIT_FLAGS_HPET_LEGACY``)."""
PIT_FLAGS_SPEAKER_DATA_ON = 2
"""``PitState.flags``: port 0x61 bit 1, speaker data on (``KVM_PIT_FLAGS_SPEAKER_DATA_ON``)."""


@dataclass(frozen=True, slots=True)
class PitState:
    """The 8254 PIT (``struct kvm_pit_state2``): three channels and ``PIT_FLAGS_*``."""

    channels: tuple[PitChannelState, PitChannelState, PitChannelState] = (
        PitChannelState(),
        PitChannelState(),
        PitChannelState(),
    )
    flags: int = 0


@dataclass(frozen=True, slots=True)
class IrqchipRoute:
    """A GSI routed to pin ``pin`` of ``chip`` (``KVM_IRQ_ROUTING_IRQCHIP``)."""

    gsi: int
    chip: IrqchipId
    pin: int


@dataclass(frozen=True, slots=True)
class MsiRoute:
    """A GSI that sends the message-signalled interrupt ``(address, data)`` (``KVM_IRQ_ROUTING_MSI``)."""

    gsi: int
    address: int
    data: int


GsiRoute = IrqchipRoute | MsiRoute
"""One entry of a GSI routing table (``set_gsi_routing``)."""
