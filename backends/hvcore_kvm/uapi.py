"""ctypes layouts of the KVM userspace ABI (``<linux/kvm.h>``, x86_64).

This module is the ONE place where KVM struct layouts are spelled out; the
ioctl numbers built from them live in :mod:`hvcore_kvm.ioctls`.  Both are
implementation details of the KVM backend: nothing defined here leaves
``backends/hvcore_kvm``.  The backend converts these ctypes objects to and from the
plain hvcore types at its boundary, so no hvcore API ever takes or returns a
ctypes Structure.

Conventions:

* Class names are the C struct names in CamelCase
  (``kvm_userspace_memory_region`` -> ``KvmUserspaceMemoryRegion``).  Types
  that have no C struct name of their own (anonymous structs and unions
  nested in a C struct) set ``C_NAME = ""``; they are checked through the
  members of the enclosing struct instead.
* Every field keeps its C name.  C anonymous unions are exposed as a named
  field listed in ``_anonymous_``, so both ``run.u.io`` and ``run.io`` work.
* Raw byte arrays are ``ctypes.c_uint8 * N`` (never ``c_char``, which stops
  at the first NUL).
* Variable-length ioctl arguments (``kvm_msrs``, ``kvm_msr_list``,
  ``kvm_cpuid2``, ``kvm_irq_routing``) are declared header-only, exactly as
  the kernel sizes them for their ioctl numbers; :func:`msrs_with`,
  :func:`msr_list_with`, :func:`cpuid2_with` and :func:`irq_routing_with`
  build the variant with ``n`` trailing entries.

``tests/kvm/test_uapi.py`` compiles a C program against the installed
header and checks every size and offset declared here.

One module despite its length: every struct layout in one place, checked as a whole against
the kernel header.
"""

from __future__ import annotations

import ctypes
import functools
from typing import ClassVar, cast

_u8 = ctypes.c_uint8
_u16 = ctypes.c_uint16
_u32 = ctypes.c_uint32
_s32 = ctypes.c_int32
_u64 = ctypes.c_uint64
_s64 = ctypes.c_int64

KVM_NR_INTERRUPTS = 256
"""Architectural interrupt line count (``KVM_NR_INTERRUPTS``)."""

KVM_APIC_REG_SIZE = 0x400
"""Size of the local APIC register page (``KVM_APIC_REG_SIZE``)."""

KVM_IOAPIC_NUM_PINS = 24
"""Number of IOAPIC redirection entries (``KVM_IOAPIC_NUM_PINS``)."""

KVM_MAX_XCRS = 16
"""Capacity of ``kvm_xcrs.xcrs`` (``KVM_MAX_XCRS``)."""

SYNC_REGS_SIZE_BYTES = 2048
"""Size of the ``kvm_run.s`` union (``SYNC_REGS_SIZE_BYTES``)."""

KVM_RUN_X86_SMM = 1 << 0
"""``kvm_run.flags``: the vCPU is in System Management Mode."""


# --------------------------------------------------------------------------
# Registers (asm/kvm.h)
# --------------------------------------------------------------------------


class KvmRegs(ctypes.Structure):
    """General-purpose registers, for KVM_GET_REGS / KVM_SET_REGS.

    C: ``struct kvm_regs { __u64 rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp,
    r8, r9, r10, r11, r12, r13, r14, r15, rip, rflags; };``
    """

    _fields_ = [
        ("rax", _u64),
        ("rbx", _u64),
        ("rcx", _u64),
        ("rdx", _u64),
        ("rsi", _u64),
        ("rdi", _u64),
        ("rsp", _u64),
        ("rbp", _u64),
        ("r8", _u64),
        ("r9", _u64),
        ("r10", _u64),
        ("r11", _u64),
        ("r12", _u64),
        ("r13", _u64),
        ("r14", _u64),
        ("r15", _u64),
        ("rip", _u64),
        ("rflags", _u64),
    ]
    rax: int
    rbx: int
    rcx: int
    rdx: int
    rsi: int
    rdi: int
    rsp: int
    rbp: int
    r8: int
    r9: int
    r10: int
    r11: int
    r12: int
    r13: int
    r14: int
    r15: int
    rip: int
    rflags: int


class KvmSegment(ctypes.Structure):
    """A segment register with its hidden descriptor cache.

    C: ``struct kvm_segment { __u64 base; __u32 limit; __u16 selector;
    __u8 type; __u8 present, dpl, db, s, l, g, avl; __u8 unusable;
    __u8 padding; };``
    """

    _fields_ = [
        ("base", _u64),
        ("limit", _u32),
        ("selector", _u16),
        ("type", _u8),
        ("present", _u8),
        ("dpl", _u8),
        ("db", _u8),
        ("s", _u8),
        ("l", _u8),
        ("g", _u8),
        ("avl", _u8),
        ("unusable", _u8),
        ("padding", _u8),
    ]
    base: int
    limit: int
    selector: int
    type: int
    present: int
    dpl: int
    db: int
    s: int
    l: int  # noqa: E741 - the C field name
    g: int
    avl: int
    unusable: int
    padding: int


class KvmDtable(ctypes.Structure):
    """A descriptor-table register (GDTR / IDTR).

    C: ``struct kvm_dtable { __u64 base; __u16 limit; __u16 padding[3]; };``
    """

    _fields_ = [
        ("base", _u64),
        ("limit", _u16),
        ("padding", _u16 * 3),
    ]
    base: int
    limit: int
    padding: ctypes.Array[ctypes.c_uint16]


class KvmSregs(ctypes.Structure):
    """Special registers, for KVM_GET_SREGS / KVM_SET_SREGS.

    C: ``struct kvm_sregs { struct kvm_segment cs, ds, es, fs, gs, ss, tr,
    ldt; struct kvm_dtable gdt, idt; __u64 cr0, cr2, cr3, cr4, cr8, efer,
    apic_base; __u64 interrupt_bitmap[(KVM_NR_INTERRUPTS + 63) / 64]; };``
    """

    _fields_ = [
        ("cs", KvmSegment),
        ("ds", KvmSegment),
        ("es", KvmSegment),
        ("fs", KvmSegment),
        ("gs", KvmSegment),
        ("ss", KvmSegment),
        ("tr", KvmSegment),
        ("ldt", KvmSegment),
        ("gdt", KvmDtable),
        ("idt", KvmDtable),
        ("cr0", _u64),
        ("cr2", _u64),
        ("cr3", _u64),
        ("cr4", _u64),
        ("cr8", _u64),
        ("efer", _u64),
        ("apic_base", _u64),
        ("interrupt_bitmap", _u64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]
    cs: KvmSegment
    ds: KvmSegment
    es: KvmSegment
    fs: KvmSegment
    gs: KvmSegment
    ss: KvmSegment
    tr: KvmSegment
    ldt: KvmSegment
    gdt: KvmDtable
    idt: KvmDtable
    cr0: int
    cr2: int
    cr3: int
    cr4: int
    cr8: int
    efer: int
    apic_base: int
    interrupt_bitmap: ctypes.Array[ctypes.c_uint64]


class KvmFpu(ctypes.Structure):
    """Legacy FPU/SSE state in FXSAVE layout, for KVM_GET_FPU / KVM_SET_FPU.

    C: ``struct kvm_fpu { __u8 fpr[8][16]; __u16 fcw; __u16 fsw; __u8 ftwx;
    __u8 pad1; __u16 last_opcode; __u64 last_ip; __u64 last_dp;
    __u8 xmm[16][16]; __u32 mxcsr; __u32 pad2; };``
    """

    _fields_ = [
        ("fpr", (_u8 * 16) * 8),
        ("fcw", _u16),
        ("fsw", _u16),
        ("ftwx", _u8),
        ("pad1", _u8),
        ("last_opcode", _u16),
        ("last_ip", _u64),
        ("last_dp", _u64),
        ("xmm", (_u8 * 16) * 16),
        ("mxcsr", _u32),
        ("pad2", _u32),
    ]
    fpr: ctypes.Array[ctypes.Array[ctypes.c_uint8]]
    fcw: int
    fsw: int
    ftwx: int
    pad1: int
    last_opcode: int
    last_ip: int
    last_dp: int
    xmm: ctypes.Array[ctypes.Array[ctypes.c_uint8]]
    mxcsr: int
    pad2: int


class KvmXsave(ctypes.Structure):
    """XSAVE area (the fixed 4096-byte part), for KVM_GET_XSAVE / KVM_SET_XSAVE.

    C: ``struct kvm_xsave { __u32 region[1024]; __u32 extra[]; };``

    With KVM_CAP_XSAVE2 the kernel may need a larger buffer (the size that
    KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) returns); the ioctl number still
    uses the 4096-byte size.
    """

    _fields_ = [
        ("region", _u32 * 1024),
    ]
    region: ctypes.Array[ctypes.c_uint32]


class KvmMsrEntry(ctypes.Structure):
    """One MSR index/value pair.

    C: ``struct kvm_msr_entry { __u32 index; __u32 reserved; __u64 data; };``
    """

    _fields_ = [
        ("index", _u32),
        ("reserved", _u32),
        ("data", _u64),
    ]
    index: int
    reserved: int
    data: int


class KvmMsrs(ctypes.Structure):
    """Header of the KVM_GET_MSRS / KVM_SET_MSRS argument (see :func:`msrs_with`).

    C: ``struct kvm_msrs { __u32 nmsrs; __u32 pad;
    struct kvm_msr_entry entries[]; };``
    """

    _fields_ = [
        ("nmsrs", _u32),
        ("pad", _u32),
    ]
    nmsrs: int
    pad: int


class KvmMsrList(ctypes.Structure):
    """Header of the KVM_GET_MSR_INDEX_LIST argument (see :func:`msr_list_with`).

    C: ``struct kvm_msr_list { __u32 nmsrs; __u32 indices[]; };``
    """

    _fields_ = [
        ("nmsrs", _u32),
    ]
    nmsrs: int


class KvmCpuidEntry2(ctypes.Structure):
    """One CPUID leaf/subleaf result.

    C: ``struct kvm_cpuid_entry2 { __u32 function; __u32 index; __u32 flags;
    __u32 eax; __u32 ebx; __u32 ecx; __u32 edx; __u32 padding[3]; };``
    """

    _fields_ = [
        ("function", _u32),
        ("index", _u32),
        ("flags", _u32),
        ("eax", _u32),
        ("ebx", _u32),
        ("ecx", _u32),
        ("edx", _u32),
        ("padding", _u32 * 3),
    ]
    function: int
    index: int
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int
    padding: ctypes.Array[ctypes.c_uint32]


class KvmCpuid2(ctypes.Structure):
    """Header of the KVM_{GET,SET}_CPUID2 argument (see :func:`cpuid2_with`).

    C: ``struct kvm_cpuid2 { __u32 nent; __u32 padding;
    struct kvm_cpuid_entry2 entries[]; };``
    """

    _fields_ = [
        ("nent", _u32),
        ("padding", _u32),
    ]
    nent: int
    padding: int


class KvmLapicState(ctypes.Structure):
    """Local APIC register page, for KVM_GET_LAPIC / KVM_SET_LAPIC.

    C: ``struct kvm_lapic_state { char regs[KVM_APIC_REG_SIZE]; };``
    """

    _fields_ = [
        ("regs", _u8 * KVM_APIC_REG_SIZE),
    ]
    regs: ctypes.Array[ctypes.c_uint8]


class KvmXcr(ctypes.Structure):
    """One extended control register (XCR0 ...).

    C: ``struct kvm_xcr { __u32 xcr; __u32 reserved; __u64 value; };``
    """

    _fields_ = [
        ("xcr", _u32),
        ("reserved", _u32),
        ("value", _u64),
    ]
    xcr: int
    reserved: int
    value: int


class KvmXcrs(ctypes.Structure):
    """Extended control registers, for KVM_GET_XCRS / KVM_SET_XCRS.

    C: ``struct kvm_xcrs { __u32 nr_xcrs; __u32 flags;
    struct kvm_xcr xcrs[KVM_MAX_XCRS]; __u64 padding[16]; };``
    """

    _fields_ = [
        ("nr_xcrs", _u32),
        ("flags", _u32),
        ("xcrs", KvmXcr * KVM_MAX_XCRS),
        ("padding", _u64 * 16),
    ]
    nr_xcrs: int
    flags: int
    xcrs: ctypes.Array[KvmXcr]
    padding: ctypes.Array[ctypes.c_uint64]


class KvmDebugregs(ctypes.Structure):
    """Debug registers, for KVM_GET_DEBUGREGS / KVM_SET_DEBUGREGS.

    C: ``struct kvm_debugregs { __u64 db[4]; __u64 dr6; __u64 dr7;
    __u64 flags; __u64 reserved[9]; };``
    """

    _fields_ = [
        ("db", _u64 * 4),
        ("dr6", _u64),
        ("dr7", _u64),
        ("flags", _u64),
        ("reserved", _u64 * 9),
    ]
    db: ctypes.Array[ctypes.c_uint64]
    dr6: int
    dr7: int
    flags: int
    reserved: ctypes.Array[ctypes.c_uint64]


# --------------------------------------------------------------------------
# vCPU events (asm/kvm.h)
# --------------------------------------------------------------------------


class KvmVcpuEventsException(ctypes.Structure):
    """``kvm_vcpu_events.exception`` (anonymous struct type in C).

    C: ``struct { __u8 injected; __u8 nr; __u8 has_error_code; __u8 pending;
    __u32 error_code; } exception;``
    """

    C_NAME: ClassVar[str] = ""
    _fields_ = [
        ("injected", _u8),
        ("nr", _u8),
        ("has_error_code", _u8),
        ("pending", _u8),
        ("error_code", _u32),
    ]
    injected: int
    nr: int
    has_error_code: int
    pending: int
    error_code: int


class KvmVcpuEventsInterrupt(ctypes.Structure):
    """``kvm_vcpu_events.interrupt`` (anonymous struct type in C).

    C: ``struct { __u8 injected; __u8 nr; __u8 soft; __u8 shadow; } interrupt;``
    """

    C_NAME: ClassVar[str] = ""
    _fields_ = [
        ("injected", _u8),
        ("nr", _u8),
        ("soft", _u8),
        ("shadow", _u8),
    ]
    injected: int
    nr: int
    soft: int
    shadow: int


class KvmVcpuEventsNmi(ctypes.Structure):
    """``kvm_vcpu_events.nmi`` (anonymous struct type in C).

    C: ``struct { __u8 injected; __u8 pending; __u8 masked; __u8 pad; } nmi;``
    """

    C_NAME: ClassVar[str] = ""
    _fields_ = [
        ("injected", _u8),
        ("pending", _u8),
        ("masked", _u8),
        ("pad", _u8),
    ]
    injected: int
    pending: int
    masked: int
    pad: int


class KvmVcpuEventsSmi(ctypes.Structure):
    """``kvm_vcpu_events.smi`` (anonymous struct type in C).

    C: ``struct { __u8 smm; __u8 pending; __u8 smm_inside_nmi;
    __u8 latched_init; } smi;``
    """

    C_NAME: ClassVar[str] = ""
    _fields_ = [
        ("smm", _u8),
        ("pending", _u8),
        ("smm_inside_nmi", _u8),
        ("latched_init", _u8),
    ]
    smm: int
    pending: int
    smm_inside_nmi: int
    latched_init: int


class KvmVcpuEventsTripleFault(ctypes.Structure):
    """``kvm_vcpu_events.triple_fault`` (anonymous struct type in C).

    C: ``struct { __u8 pending; } triple_fault;``
    (valid with KVM_VCPUEVENT_VALID_TRIPLE_FAULT)
    """

    C_NAME: ClassVar[str] = ""
    _fields_ = [
        ("pending", _u8),
    ]
    pending: int


class KvmVcpuEvents(ctypes.Structure):
    """Pending exception/interrupt/NMI/SMI state, for KVM_{GET,SET}_VCPU_EVENTS.

    C: ``struct kvm_vcpu_events { struct {...} exception; struct {...}
    interrupt; struct {...} nmi; __u32 sipi_vector; __u32 flags;
    struct {...} smi; struct { __u8 pending; } triple_fault;
    __u8 reserved[26]; __u8 exception_has_payload;
    __u64 exception_payload; };``
    """

    _fields_ = [
        ("exception", KvmVcpuEventsException),
        ("interrupt", KvmVcpuEventsInterrupt),
        ("nmi", KvmVcpuEventsNmi),
        ("sipi_vector", _u32),
        ("flags", _u32),
        ("smi", KvmVcpuEventsSmi),
        ("triple_fault", KvmVcpuEventsTripleFault),
        ("reserved", _u8 * 26),
        ("exception_has_payload", _u8),
        ("exception_payload", _u64),
    ]
    exception: KvmVcpuEventsException
    interrupt: KvmVcpuEventsInterrupt
    nmi: KvmVcpuEventsNmi
    sipi_vector: int
    flags: int
    smi: KvmVcpuEventsSmi
    triple_fault: KvmVcpuEventsTripleFault
    reserved: ctypes.Array[ctypes.c_uint8]
    exception_has_payload: int
    exception_payload: int


class KvmSyncRegs(ctypes.Structure):
    """Registers shared through ``kvm_run.s`` (KVM_CAP_SYNC_REGS).

    C: ``struct kvm_sync_regs { struct kvm_regs regs;
    struct kvm_sregs sregs; struct kvm_vcpu_events events; };``
    """

    _fields_ = [
        ("regs", KvmRegs),
        ("sregs", KvmSregs),
        ("events", KvmVcpuEvents),
    ]
    regs: KvmRegs
    sregs: KvmSregs
    events: KvmVcpuEvents


# --------------------------------------------------------------------------
# Misc vCPU state
# --------------------------------------------------------------------------


class KvmMpState(ctypes.Structure):
    """Multiprocessing state, for KVM_GET_MP_STATE / KVM_SET_MP_STATE.

    C: ``struct kvm_mp_state { __u32 mp_state; };``
    """

    _fields_ = [
        ("mp_state", _u32),
    ]
    mp_state: int


class KvmGuestDebugArch(ctypes.Structure):
    """x86 debug registers for KVM_SET_GUEST_DEBUG.

    C: ``struct kvm_guest_debug_arch { __u64 debugreg[8]; };``
    """

    _fields_ = [
        ("debugreg", _u64 * 8),
    ]
    debugreg: ctypes.Array[ctypes.c_uint64]


class KvmGuestDebug(ctypes.Structure):
    """Guest debugging control, for KVM_SET_GUEST_DEBUG.

    C: ``struct kvm_guest_debug { __u32 control; __u32 pad;
    struct kvm_guest_debug_arch arch; };``
    """

    _fields_ = [
        ("control", _u32),
        ("pad", _u32),
        ("arch", KvmGuestDebugArch),
    ]
    control: int
    pad: int
    arch: KvmGuestDebugArch


class KvmTranslation(ctypes.Structure):
    """Guest-virtual to guest-physical translation, for KVM_TRANSLATE.

    C: ``struct kvm_translation { __u64 linear_address;
    __u64 physical_address; __u8 valid; __u8 writeable; __u8 usermode;
    __u8 pad[5]; };``
    """

    _fields_ = [
        ("linear_address", _u64),
        ("physical_address", _u64),
        ("valid", _u8),
        ("writeable", _u8),
        ("usermode", _u8),
        ("pad", _u8 * 5),
    ]
    linear_address: int
    physical_address: int
    valid: int
    writeable: int
    usermode: int
    pad: ctypes.Array[ctypes.c_uint8]


class KvmInterrupt(ctypes.Structure):
    """Interrupt vector to inject, for KVM_INTERRUPT (userspace irqchip only).

    C: ``struct kvm_interrupt { __u32 irq; };``
    """

    _fields_ = [
        ("irq", _u32),
    ]
    irq: int


# --------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------


class KvmUserspaceMemoryRegion(ctypes.Structure):
    """A guest memory slot, for KVM_SET_USER_MEMORY_REGION.

    C: ``struct kvm_userspace_memory_region { __u32 slot; __u32 flags;
    __u64 guest_phys_addr; __u64 memory_size; __u64 userspace_addr; };``
    """

    _fields_ = [
        ("slot", _u32),
        ("flags", _u32),
        ("guest_phys_addr", _u64),
        ("memory_size", _u64),
        ("userspace_addr", _u64),
    ]
    slot: int
    flags: int
    guest_phys_addr: int
    memory_size: int
    userspace_addr: int


class KvmDirtyLog(ctypes.Structure):
    """Dirty-page bitmap request, for KVM_GET_DIRTY_LOG.

    C: ``struct kvm_dirty_log { __u32 slot; __u32 padding1;
    union { void *dirty_bitmap; __u64 padding2; }; };``

    ``dirty_bitmap`` is the buffer address as an integer (the union's
    ``padding2`` view).
    """

    _fields_ = [
        ("slot", _u32),
        ("padding1", _u32),
        ("dirty_bitmap", _u64),
    ]
    slot: int
    padding1: int
    dirty_bitmap: int


class KvmClearDirtyLog(ctypes.Structure):
    """Dirty-bit clearing request, for KVM_CLEAR_DIRTY_LOG.

    C: ``struct kvm_clear_dirty_log { __u32 slot; __u32 num_pages;
    __u64 first_page; union { void *dirty_bitmap; __u64 padding2; }; };``

    ``dirty_bitmap`` is the buffer address as an integer.
    """

    _fields_ = [
        ("slot", _u32),
        ("num_pages", _u32),
        ("first_page", _u64),
        ("dirty_bitmap", _u64),
    ]
    slot: int
    num_pages: int
    first_page: int
    dirty_bitmap: int


# --------------------------------------------------------------------------
# Interrupt controllers, PIT, clock
# --------------------------------------------------------------------------


class KvmIrqLevelU(ctypes.Union):
    """The anonymous ``irq``/``status`` union of ``kvm_irq_level``.

    C: ``union { __u32 irq; __s32 status; };``
    """

    C_NAME: ClassVar[str] = ""
    _fields_ = [
        ("irq", _u32),
        ("status", _s32),
    ]
    irq: int
    status: int


class KvmIrqLevel(ctypes.Structure):
    """GSI level change, for KVM_IRQ_LINE / KVM_IRQ_LINE_STATUS.

    C: ``struct kvm_irq_level { union { __u32 irq; __s32 status; };
    __u32 level; };``  (``irq`` and ``status`` are also reachable directly.)
    """

    _anonymous_ = ("u",)
    _fields_ = [
        ("u", KvmIrqLevelU),
        ("level", _u32),
    ]
    u: KvmIrqLevelU
    irq: int
    status: int
    level: int


class KvmPicState(ctypes.Structure):
    """One 8259 PIC, inside ``kvm_irqchip.chip.pic``.

    C: ``struct kvm_pic_state { __u8 last_irr, irr, imr, isr, priority_add,
    irq_base, read_reg_select, poll, special_mask, init_state, auto_eoi,
    rotate_on_auto_eoi, special_fully_nested_mode, init4, elcr,
    elcr_mask; };``
    """

    _fields_ = [
        ("last_irr", _u8),
        ("irr", _u8),
        ("imr", _u8),
        ("isr", _u8),
        ("priority_add", _u8),
        ("irq_base", _u8),
        ("read_reg_select", _u8),
        ("poll", _u8),
        ("special_mask", _u8),
        ("init_state", _u8),
        ("auto_eoi", _u8),
        ("rotate_on_auto_eoi", _u8),
        ("special_fully_nested_mode", _u8),
        ("init4", _u8),
        ("elcr", _u8),
        ("elcr_mask", _u8),
    ]
    last_irr: int
    irr: int
    imr: int
    isr: int
    priority_add: int
    irq_base: int
    read_reg_select: int
    poll: int
    special_mask: int
    init_state: int
    auto_eoi: int
    rotate_on_auto_eoi: int
    special_fully_nested_mode: int
    init4: int
    elcr: int
    elcr_mask: int


class KvmIoapicState(ctypes.Structure):
    """The IOAPIC, inside ``kvm_irqchip.chip.ioapic``.

    C: ``struct kvm_ioapic_state { __u64 base_address; __u32 ioregsel;
    __u32 id; __u32 irr; __u32 pad; union { __u64 bits; struct { ...
    bit-fields ... } fields; } redirtbl[KVM_IOAPIC_NUM_PINS]; };``

    ``redirtbl`` is exposed as raw 64-bit redirection entries (the ``bits``
    view); decode the bit-fields in Python.
    """

    _fields_ = [
        ("base_address", _u64),
        ("ioregsel", _u32),
        ("id", _u32),
        ("irr", _u32),
        ("pad", _u32),
        ("redirtbl", _u64 * KVM_IOAPIC_NUM_PINS),
    ]
    base_address: int
    ioregsel: int
    id: int
    irr: int
    pad: int
    redirtbl: ctypes.Array[ctypes.c_uint64]


class KvmIrqchipChip(ctypes.Union):
    """``kvm_irqchip.chip`` (anonymous union type in C).

    C: ``union { char dummy[512]; struct kvm_pic_state pic;
    struct kvm_ioapic_state ioapic; } chip;``
    """

    C_NAME: ClassVar[str] = ""
    _fields_ = [
        ("dummy", _u8 * 512),
        ("pic", KvmPicState),
        ("ioapic", KvmIoapicState),
    ]
    dummy: ctypes.Array[ctypes.c_uint8]
    pic: KvmPicState
    ioapic: KvmIoapicState


class KvmIrqchip(ctypes.Structure):
    """In-kernel PIC/IOAPIC state, for KVM_GET_IRQCHIP / KVM_SET_IRQCHIP.

    C: ``struct kvm_irqchip { __u32 chip_id; __u32 pad; union { char
    dummy[512]; struct kvm_pic_state pic; struct kvm_ioapic_state ioapic;
    } chip; };``
    """

    _fields_ = [
        ("chip_id", _u32),
        ("pad", _u32),
        ("chip", KvmIrqchipChip),
    ]
    chip_id: int
    pad: int
    chip: KvmIrqchipChip


class KvmPitConfig(ctypes.Structure):
    """In-kernel PIT configuration, for KVM_CREATE_PIT2.

    C: ``struct kvm_pit_config { __u32 flags; __u32 pad[15]; };``
    """

    _fields_ = [
        ("flags", _u32),
        ("pad", _u32 * 15),
    ]
    flags: int
    pad: ctypes.Array[ctypes.c_uint32]


class KvmPitChannelState(ctypes.Structure):
    """One 8254 PIT channel.

    C: ``struct kvm_pit_channel_state { __u32 count; __u16 latched_count;
    __u8 count_latched, status_latched, status, read_state, write_state,
    write_latch, rw_mode, mode, bcd, gate; __s64 count_load_time; };``
    """

    _fields_ = [
        ("count", _u32),
        ("latched_count", _u16),
        ("count_latched", _u8),
        ("status_latched", _u8),
        ("status", _u8),
        ("read_state", _u8),
        ("write_state", _u8),
        ("write_latch", _u8),
        ("rw_mode", _u8),
        ("mode", _u8),
        ("bcd", _u8),
        ("gate", _u8),
        ("count_load_time", _s64),
    ]
    count: int
    latched_count: int
    count_latched: int
    status_latched: int
    status: int
    read_state: int
    write_state: int
    write_latch: int
    rw_mode: int
    mode: int
    bcd: int
    gate: int
    count_load_time: int


class KvmPitState2(ctypes.Structure):
    """In-kernel PIT state, for KVM_GET_PIT2 / KVM_SET_PIT2.

    C: ``struct kvm_pit_state2 { struct kvm_pit_channel_state channels[3];
    __u32 flags; __u32 reserved[9]; };``
    """

    _fields_ = [
        ("channels", KvmPitChannelState * 3),
        ("flags", _u32),
        ("reserved", _u32 * 9),
    ]
    channels: ctypes.Array[KvmPitChannelState]
    flags: int
    reserved: ctypes.Array[ctypes.c_uint32]


class KvmClockData(ctypes.Structure):
    """kvmclock value, for KVM_GET_CLOCK / KVM_SET_CLOCK.

    C: ``struct kvm_clock_data { __u64 clock; __u32 flags; __u32 pad0;
    __u64 realtime; __u64 host_tsc; __u32 pad[4]; };``
    """

    _fields_ = [
        ("clock", _u64),
        ("flags", _u32),
        ("pad0", _u32),
        ("realtime", _u64),
        ("host_tsc", _u64),
        ("pad", _u32 * 4),
    ]
    clock: int
    flags: int
    pad0: int
    realtime: int
    host_tsc: int
    pad: ctypes.Array[ctypes.c_uint32]


class KvmEnableCap(ctypes.Structure):
    """Capability to enable, for KVM_ENABLE_CAP (vCPU or VM fd).

    C: ``struct kvm_enable_cap { __u32 cap; __u32 flags; __u64 args[4];
    __u8 pad[64]; };``
    """

    _fields_ = [
        ("cap", _u32),
        ("flags", _u32),
        ("args", _u64 * 4),
        ("pad", _u8 * 64),
    ]
    cap: int
    flags: int
    args: ctypes.Array[ctypes.c_uint64]
    pad: ctypes.Array[ctypes.c_uint8]


class KvmMsi(ctypes.Structure):
    """An MSI message, for KVM_SIGNAL_MSI.

    C: ``struct kvm_msi { __u32 address_lo; __u32 address_hi; __u32 data;
    __u32 flags; __u32 devid; __u8 pad[12]; };``
    """

    _fields_ = [
        ("address_lo", _u32),
        ("address_hi", _u32),
        ("data", _u32),
        ("flags", _u32),
        ("devid", _u32),
        ("pad", _u8 * 12),
    ]
    address_lo: int
    address_hi: int
    data: int
    flags: int
    devid: int
    pad: ctypes.Array[ctypes.c_uint8]


# --------------------------------------------------------------------------
# GSI routing
# --------------------------------------------------------------------------


class KvmIrqRoutingIrqchip(ctypes.Structure):
    """Route a GSI to an irqchip pin.

    C: ``struct kvm_irq_routing_irqchip { __u32 irqchip; __u32 pin; };``
    """

    _fields_ = [
        ("irqchip", _u32),
        ("pin", _u32),
    ]
    irqchip: int
    pin: int


class KvmIrqRoutingMsiU(ctypes.Union):
    """The anonymous ``pad``/``devid`` union of ``kvm_irq_routing_msi``.

    C: ``union { __u32 pad; __u32 devid; };``
    """

    C_NAME: ClassVar[str] = ""
    _fields_ = [
        ("pad", _u32),
        ("devid", _u32),
    ]
    pad: int
    devid: int


class KvmIrqRoutingMsi(ctypes.Structure):
    """Route a GSI to an MSI message.

    C: ``struct kvm_irq_routing_msi { __u32 address_lo; __u32 address_hi;
    __u32 data; union { __u32 pad; __u32 devid; }; };``
    """

    _anonymous_ = ("u",)
    _fields_ = [
        ("address_lo", _u32),
        ("address_hi", _u32),
        ("data", _u32),
        ("u", KvmIrqRoutingMsiU),
    ]
    address_lo: int
    address_hi: int
    data: int
    u: KvmIrqRoutingMsiU
    pad: int
    devid: int


class KvmIrqRoutingS390Adapter(ctypes.Structure):
    """s390 adapter route (kept because it sets the routing union's alignment).

    C: ``struct kvm_irq_routing_s390_adapter { __u64 ind_addr;
    __u64 summary_addr; __u64 ind_offset; __u32 summary_offset;
    __u32 adapter_id; };``
    """

    _fields_ = [
        ("ind_addr", _u64),
        ("summary_addr", _u64),
        ("ind_offset", _u64),
        ("summary_offset", _u32),
        ("adapter_id", _u32),
    ]
    ind_addr: int
    summary_addr: int
    ind_offset: int
    summary_offset: int
    adapter_id: int


class KvmIrqRoutingHvSint(ctypes.Structure):
    """Route a GSI to a Hyper-V synthetic interrupt.

    C: ``struct kvm_irq_routing_hv_sint { __u32 vcpu; __u32 sint; };``
    """

    _fields_ = [
        ("vcpu", _u32),
        ("sint", _u32),
    ]
    vcpu: int
    sint: int


class KvmIrqRoutingXenEvtchn(ctypes.Structure):
    """Route a GSI to a Xen event channel.

    C: ``struct kvm_irq_routing_xen_evtchn { __u32 port; __u32 vcpu;
    __u32 priority; };``
    """

    _fields_ = [
        ("port", _u32),
        ("vcpu", _u32),
        ("priority", _u32),
    ]
    port: int
    vcpu: int
    priority: int


class KvmIrqRoutingEntryU(ctypes.Union):
    """``kvm_irq_routing_entry.u`` (anonymous union type in C).

    C: ``union { struct kvm_irq_routing_irqchip irqchip;
    struct kvm_irq_routing_msi msi; struct kvm_irq_routing_s390_adapter
    adapter; struct kvm_irq_routing_hv_sint hv_sint;
    struct kvm_irq_routing_xen_evtchn xen_evtchn; __u32 pad[8]; } u;``
    """

    C_NAME: ClassVar[str] = ""
    _fields_ = [
        ("irqchip", KvmIrqRoutingIrqchip),
        ("msi", KvmIrqRoutingMsi),
        ("adapter", KvmIrqRoutingS390Adapter),
        ("hv_sint", KvmIrqRoutingHvSint),
        ("xen_evtchn", KvmIrqRoutingXenEvtchn),
        ("pad", _u32 * 8),
    ]
    irqchip: KvmIrqRoutingIrqchip
    msi: KvmIrqRoutingMsi
    adapter: KvmIrqRoutingS390Adapter
    hv_sint: KvmIrqRoutingHvSint
    xen_evtchn: KvmIrqRoutingXenEvtchn
    pad: ctypes.Array[ctypes.c_uint32]


class KvmIrqRoutingEntry(ctypes.Structure):
    """One GSI route.

    C: ``struct kvm_irq_routing_entry { __u32 gsi; __u32 type; __u32 flags;
    __u32 pad; union {...} u; };``
    """

    _fields_ = [
        ("gsi", _u32),
        ("type", _u32),
        ("flags", _u32),
        ("pad", _u32),
        ("u", KvmIrqRoutingEntryU),
    ]
    gsi: int
    type: int
    flags: int
    pad: int
    u: KvmIrqRoutingEntryU


class KvmIrqRouting(ctypes.Structure):
    """Header of the KVM_SET_GSI_ROUTING argument (see :func:`irq_routing_with`).

    C: ``struct kvm_irq_routing { __u32 nr; __u32 flags;
    struct kvm_irq_routing_entry entries[]; };``
    """

    _fields_ = [
        ("nr", _u32),
        ("flags", _u32),
    ]
    nr: int
    flags: int


# --------------------------------------------------------------------------
# kvm_run (the mmap'ed vCPU communication page)
# --------------------------------------------------------------------------


class KvmDebugExitArch(ctypes.Structure):
    """x86 debug-exit details, inside ``kvm_run.debug.arch``.

    C: ``struct kvm_debug_exit_arch { __u32 exception; __u32 pad; __u64 pc;
    __u64 dr6; __u64 dr7; };``
    """

    _fields_ = [
        ("exception", _u32),
        ("pad", _u32),
        ("pc", _u64),
        ("dr6", _u64),
        ("dr7", _u64),
    ]
    exception: int
    pad: int
    pc: int
    dr6: int
    dr7: int


class KvmRunHw(ctypes.Structure):
    """``kvm_run.hw`` payload of KVM_EXIT_UNKNOWN.

    C: ``struct { __u64 hardware_exit_reason; } hw;``
    """

    C_NAME: ClassVar[str] = ""
    _fields_ = [
        ("hardware_exit_reason", _u64),
    ]
    hardware_exit_reason: int


class KvmRunFailEntry(ctypes.Structure):
    """``kvm_run.fail_entry`` payload of KVM_EXIT_FAIL_ENTRY.

    C: ``struct { __u64 hardware_entry_failure_reason; __u32 cpu; } fail_entry;``
    """

    C_NAME: ClassVar[str] = ""
    _fields_ = [
        ("hardware_entry_failure_reason", _u64),
        ("cpu", _u32),
    ]
    hardware_entry_failure_reason: int
    cpu: int


class KvmRunEx(ctypes.Structure):
    """``kvm_run.ex`` payload of KVM_EXIT_EXCEPTION.

    C: ``struct { __u32 exception; __u32 error_code; } ex;``
    """

    C_NAME: ClassVar[str] = ""
    _fields_ = [
        ("exception", _u32),
        ("error_code", _u32),
    ]
    exception: int
    error_code: int


class KvmRunIo(ctypes.Structure):
    """``kvm_run.io`` payload of KVM_EXIT_IO.

    C: ``struct { __u8 direction; __u8 size; __u16 port; __u32 count;
    __u64 data_offset; } io;``  (``data_offset`` is relative to the start of
    the kvm_run mapping.)
    """

    C_NAME: ClassVar[str] = ""
    _fields_ = [
        ("direction", _u8),
        ("size", _u8),
        ("port", _u16),
        ("count", _u32),
        ("data_offset", _u64),
    ]
    direction: int
    size: int
    port: int
    count: int
    data_offset: int


class KvmRunDebug(ctypes.Structure):
    """``kvm_run.debug`` payload of KVM_EXIT_DEBUG.

    C: ``struct { struct kvm_debug_exit_arch arch; } debug;``
    """

    C_NAME: ClassVar[str] = ""
    _fields_ = [
        ("arch", KvmDebugExitArch),
    ]
    arch: KvmDebugExitArch


class KvmRunMmio(ctypes.Structure):
    """``kvm_run.mmio`` payload of KVM_EXIT_MMIO.

    C: ``struct { __u64 phys_addr; __u8 data[8]; __u32 len;
    __u8 is_write; } mmio;``
    """

    C_NAME: ClassVar[str] = ""
    _fields_ = [
        ("phys_addr", _u64),
        ("data", _u8 * 8),
        ("len", _u32),
        ("is_write", _u8),
    ]
    phys_addr: int
    data: ctypes.Array[ctypes.c_uint8]
    len: int
    is_write: int


class KvmRunHypercall(ctypes.Structure):
    """``kvm_run.hypercall`` payload of KVM_EXIT_HYPERCALL.

    C: ``struct { __u64 nr; __u64 args[6]; __u64 ret; __u32 longmode;
    __u32 pad; } hypercall;``
    """

    C_NAME: ClassVar[str] = ""
    _fields_ = [
        ("nr", _u64),
        ("args", _u64 * 6),
        ("ret", _u64),
        ("longmode", _u32),
        ("pad", _u32),
    ]
    nr: int
    args: ctypes.Array[ctypes.c_uint64]
    ret: int
    longmode: int
    pad: int


class KvmRunTprAccess(ctypes.Structure):
    """``kvm_run.tpr_access`` payload of KVM_EXIT_TPR_ACCESS.

    C: ``struct { __u64 rip; __u32 is_write; __u32 pad; } tpr_access;``
    """

    C_NAME: ClassVar[str] = ""
    _fields_ = [
        ("rip", _u64),
        ("is_write", _u32),
        ("pad", _u32),
    ]
    rip: int
    is_write: int
    pad: int


class KvmRunInternal(ctypes.Structure):
    """``kvm_run.internal`` payload of KVM_EXIT_INTERNAL_ERROR.

    C: ``struct { __u32 suberror; __u32 ndata; __u64 data[16]; } internal;``
    (``ndata`` is valid with KVM_CAP_INTERNAL_ERROR_DATA.)
    """

    C_NAME: ClassVar[str] = ""
    _fields_ = [
        ("suberror", _u32),
        ("ndata", _u32),
        ("data", _u64 * 16),
    ]
    suberror: int
    ndata: int
    data: ctypes.Array[ctypes.c_uint64]


class KvmRunEmulationFailure(ctypes.Structure):
    """``kvm_run.emulation_failure``: overlay of ``internal`` for suberror
    KVM_INTERNAL_ERROR_EMULATION.

    C: ``struct { __u32 suberror; __u32 ndata; __u64 flags; union { struct {
    __u8 insn_size; __u8 insn_bytes[15]; }; }; } emulation_failure;``
    (the single-member anonymous union is flattened here).
    """

    C_NAME: ClassVar[str] = ""
    _fields_ = [
        ("suberror", _u32),
        ("ndata", _u32),
        ("flags", _u64),
        ("insn_size", _u8),
        ("insn_bytes", _u8 * 15),
    ]
    suberror: int
    ndata: int
    flags: int
    insn_size: int
    insn_bytes: ctypes.Array[ctypes.c_uint8]


class KvmRunSystemEventData(ctypes.Union):
    """The anonymous ``flags``/``data`` union of ``kvm_run.system_event``.

    C: ``union { __u64 flags; __u64 data[16]; };``
    """

    C_NAME: ClassVar[str] = ""
    _fields_ = [
        ("flags", _u64),
        ("data", _u64 * 16),
    ]
    flags: int
    data: ctypes.Array[ctypes.c_uint64]


class KvmRunSystemEvent(ctypes.Structure):
    """``kvm_run.system_event`` payload of KVM_EXIT_SYSTEM_EVENT.

    C: ``struct { __u32 type; __u32 ndata; union { __u64 flags;
    __u64 data[16]; }; } system_event;``  (``flags`` overlaps ``data[0]``;
    ``ndata`` is valid with KVM_CAP_SYSTEM_EVENT_DATA.)
    """

    C_NAME: ClassVar[str] = ""
    _anonymous_ = ("u",)
    _fields_ = [
        ("type", _u32),
        ("ndata", _u32),
        ("u", KvmRunSystemEventData),
    ]
    type: int
    ndata: int
    u: KvmRunSystemEventData
    flags: int
    data: ctypes.Array[ctypes.c_uint64]


class KvmRunEoi(ctypes.Structure):
    """``kvm_run.eoi`` payload of KVM_EXIT_IOAPIC_EOI.

    C: ``struct { __u8 vector; } eoi;``
    """

    C_NAME: ClassVar[str] = ""
    _fields_ = [
        ("vector", _u8),
    ]
    vector: int


class KvmRunMsr(ctypes.Structure):
    """``kvm_run.msr`` payload of KVM_EXIT_X86_RDMSR / KVM_EXIT_X86_WRMSR.

    C: ``struct { __u8 error; __u8 pad[7]; __u32 reason; __u32 index;
    __u64 data; } msr;``
    """

    C_NAME: ClassVar[str] = ""
    _fields_ = [
        ("error", _u8),
        ("pad", _u8 * 7),
        ("reason", _u32),
        ("index", _u32),
        ("data", _u64),
    ]
    error: int
    pad: ctypes.Array[ctypes.c_uint8]
    reason: int
    index: int
    data: int


class KvmRunNotify(ctypes.Structure):
    """``kvm_run.notify`` payload of KVM_EXIT_NOTIFY.

    C: ``struct { __u32 flags; } notify;``
    """

    C_NAME: ClassVar[str] = ""
    _fields_ = [
        ("flags", _u32),
    ]
    flags: int


class KvmRunU(ctypes.Union):
    """The anonymous 256-byte exit-payload union of ``kvm_run`` (offset 32).

    C: ``union { struct {...} hw; struct {...} fail_entry; struct {...} ex;
    struct {...} io; struct {...} debug; struct {...} mmio; ...;
    char padding[256]; };``  Only the x86-relevant members are declared.
    """

    C_NAME: ClassVar[str] = ""
    _fields_ = [
        ("hw", KvmRunHw),
        ("fail_entry", KvmRunFailEntry),
        ("ex", KvmRunEx),
        ("io", KvmRunIo),
        ("debug", KvmRunDebug),
        ("mmio", KvmRunMmio),
        ("hypercall", KvmRunHypercall),
        ("tpr_access", KvmRunTprAccess),
        ("internal", KvmRunInternal),
        ("emulation_failure", KvmRunEmulationFailure),
        ("system_event", KvmRunSystemEvent),
        ("eoi", KvmRunEoi),
        ("msr", KvmRunMsr),
        ("notify", KvmRunNotify),
        ("padding", _u8 * 256),
    ]
    hw: KvmRunHw
    fail_entry: KvmRunFailEntry
    ex: KvmRunEx
    io: KvmRunIo
    debug: KvmRunDebug
    mmio: KvmRunMmio
    hypercall: KvmRunHypercall
    tpr_access: KvmRunTprAccess
    internal: KvmRunInternal
    emulation_failure: KvmRunEmulationFailure
    system_event: KvmRunSystemEvent
    eoi: KvmRunEoi
    msr: KvmRunMsr
    notify: KvmRunNotify
    padding: ctypes.Array[ctypes.c_uint8]


class KvmRunS(ctypes.Union):
    """``kvm_run.s``: the 2048-byte synced-registers union (KVM_CAP_SYNC_REGS).

    C: ``union { struct kvm_sync_regs regs;
    char padding[SYNC_REGS_SIZE_BYTES]; } s;``
    """

    C_NAME: ClassVar[str] = ""
    _fields_ = [
        ("regs", KvmSyncRegs),
        ("padding", _u8 * SYNC_REGS_SIZE_BYTES),
    ]
    regs: KvmSyncRegs
    padding: ctypes.Array[ctypes.c_uint8]


class KvmRun(ctypes.Structure):
    """The shared vCPU page, ``mmap(vcpu_fd, 0)``, read after every KVM_RUN.

    C: ``struct kvm_run { __u8 request_interrupt_window; __u8 immediate_exit;
    __u8 padding1[6]; __u32 exit_reason; __u8 ready_for_interrupt_injection;
    __u8 if_flag; __u16 flags; __u64 cr8; __u64 apic_base; union {...};
    __u64 kvm_valid_regs; __u64 kvm_dirty_regs; union {...} s; };``

    The anonymous exit union is the field ``u``; its members are also
    reachable directly (``run.io`` is ``run.u.io``).  The mapping is larger
    than this struct (KVM_GET_VCPU_MMAP_SIZE): I/O data lives at
    ``io.data_offset`` inside it.
    """

    _anonymous_ = ("u",)
    _fields_ = [
        ("request_interrupt_window", _u8),
        ("immediate_exit", _u8),
        ("padding1", _u8 * 6),
        ("exit_reason", _u32),
        ("ready_for_interrupt_injection", _u8),
        ("if_flag", _u8),
        ("flags", _u16),
        ("cr8", _u64),
        ("apic_base", _u64),
        ("u", KvmRunU),
        ("kvm_valid_regs", _u64),
        ("kvm_dirty_regs", _u64),
        ("s", KvmRunS),
    ]
    request_interrupt_window: int
    immediate_exit: int
    padding1: ctypes.Array[ctypes.c_uint8]
    exit_reason: int
    ready_for_interrupt_injection: int
    if_flag: int
    flags: int
    cr8: int
    apic_base: int
    u: KvmRunU
    kvm_valid_regs: int
    kvm_dirty_regs: int
    s: KvmRunS
    # Members of the anonymous union ``u``, hoisted by ``_anonymous_``.
    hw: KvmRunHw
    fail_entry: KvmRunFailEntry
    ex: KvmRunEx
    io: KvmRunIo
    debug: KvmRunDebug
    mmio: KvmRunMmio
    hypercall: KvmRunHypercall
    tpr_access: KvmRunTprAccess
    internal: KvmRunInternal
    emulation_failure: KvmRunEmulationFailure
    system_event: KvmRunSystemEvent
    eoi: KvmRunEoi
    msr: KvmRunMsr
    notify: KvmRunNotify
    padding: ctypes.Array[ctypes.c_uint8]


# --------------------------------------------------------------------------
# Variable-length ioctl arguments
# --------------------------------------------------------------------------


@functools.cache  # functools.lru_cache without a size bound
def _with_trailing(
    header: type[ctypes.Structure],
    field: str,
    entry: type[ctypes.Structure | ctypes.c_uint32],
    n: int,
) -> type[ctypes.Structure]:
    """Build (once per argument set) ``header`` + ``field: entry[n]``."""
    if n < 0:
        raise ValueError(f"entry count must be >= 0, got {n}")
    name = f"{header.__name__}_{n}"
    namespace = {
        "__doc__": f"{header.__name__} followed by {field}[{n}].",
        "__module__": __name__,
        "__qualname__": name,
        "_fields_": [(field, entry * n)],
    }
    return cast("type[ctypes.Structure]", type(name, (header,), namespace))


def msrs_with(n: int) -> type[KvmMsrs]:
    """Return a ``struct kvm_msrs`` type with ``entries: KvmMsrEntry[n]``.

    The caller sets ``nmsrs``; the ioctl number is still based on the
    header-only :class:`KvmMsrs`.
    """
    return cast("type[KvmMsrs]", _with_trailing(KvmMsrs, "entries", KvmMsrEntry, n))


def msr_list_with(n: int) -> type[KvmMsrList]:
    """Return a ``struct kvm_msr_list`` type with ``indices: __u32[n]``."""
    return cast("type[KvmMsrList]", _with_trailing(KvmMsrList, "indices", _u32, n))


def cpuid2_with(n: int) -> type[KvmCpuid2]:
    """Return a ``struct kvm_cpuid2`` type with ``entries: KvmCpuidEntry2[n]``."""
    return cast("type[KvmCpuid2]", _with_trailing(KvmCpuid2, "entries", KvmCpuidEntry2, n))


def irq_routing_with(n: int) -> type[KvmIrqRouting]:
    """Return a ``struct kvm_irq_routing`` type with ``entries: KvmIrqRoutingEntry[n]``."""
    return cast(
        "type[KvmIrqRouting]",
        _with_trailing(KvmIrqRouting, "entries", KvmIrqRoutingEntry, n),
    )
