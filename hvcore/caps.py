"""Capabilities a backend can have, numbered as ``KVM_CAP_*`` in <linux/kvm.h> (x86 subset).

``Hypervisor.capabilities()`` returns the set a backend has; ``check_extension(cap)``
returns the raw number (a count for ``NR_*`` / ``MAX_*`` capabilities). Every
backend has every method; a method whose capability is missing raises
:class:`hvcore.Unsupported`.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["COUNT_CAPABILITIES", "Capability"]


class Capability(IntEnum):
    """A ``KVM_CAP_*`` capability; the member name is the macro without its prefix."""

    IRQCHIP = 0  # in-kernel PIC/IOAPIC/LAPIC (KVM_CREATE_IRQCHIP)
    HLT = 1  # HLT exits to userspace
    MMU_SHADOW_CACHE_CONTROL = 2
    USER_MEMORY = 3  # KVM_SET_USER_MEMORY_REGION
    SET_TSS_ADDR = 4  # KVM_SET_TSS_ADDR
    VAPIC = 6
    EXT_CPUID = 7  # KVM_GET_SUPPORTED_CPUID
    CLOCKSOURCE = 8
    NR_VCPUS = 9  # recommended number of vCPUs (a count)
    NR_MEMSLOTS = 10  # number of memory slots (a count)
    PIT = 11
    NOP_IO_DELAY = 12
    PV_MMU = 13
    MP_STATE = 14  # KVM_GET/SET_MP_STATE
    COALESCED_MMIO = 15  # coalesced MMIO ring
    SYNC_MMU = 16  # host memory changes are seen by the guest
    IOMMU = 18
    DESTROY_MEMORY_REGION_WORKS = 21
    USER_NMI = 22  # KVM_NMI
    SET_GUEST_DEBUG = 23  # KVM_SET_GUEST_DEBUG
    REINJECT_CONTROL = 24
    IRQ_ROUTING = 25  # KVM_SET_GSI_ROUTING
    IRQ_INJECT_STATUS = 26  # KVM_IRQ_LINE_STATUS
    ASSIGN_DEV_IRQ = 29
    JOIN_MEMORY_REGIONS_WORKS = 30
    MCE = 31
    IRQFD = 32  # KVM_IRQFD
    PIT2 = 33  # KVM_CREATE_PIT2
    SET_BOOT_CPU_ID = 34
    PIT_STATE2 = 35  # KVM_GET/SET_PIT2
    IOEVENTFD = 36  # KVM_IOEVENTFD
    SET_IDENTITY_MAP_ADDR = 37  # KVM_SET_IDENTITY_MAP_ADDR
    ADJUST_CLOCK = 39  # KVM_GET/SET_CLOCK
    INTERNAL_ERROR_DATA = 40  # data in internal-error exits
    VCPU_EVENTS = 41  # KVM_GET/SET_VCPU_EVENTS
    HYPERV = 44
    HYPERV_VAPIC = 45
    HYPERV_SPIN = 46
    INTR_SHADOW = 49  # interrupt shadow in vCPU events
    DEBUGREGS = 50  # KVM_GET/SET_DEBUGREGS
    X86_ROBUST_SINGLESTEP = 51  # single-step survives exceptions
    ENABLE_CAP = 54
    XSAVE = 55  # KVM_GET/SET_XSAVE
    XCRS = 56  # KVM_GET/SET_XCRS
    ASYNC_PF = 59
    TSC_CONTROL = 60  # KVM_SET_TSC_KHZ
    GET_TSC_KHZ = 61  # KVM_GET_TSC_KHZ
    MAX_VCPUS = 66  # maximum number of vCPUs (a count)
    SW_TLB = 69
    ONE_REG = 70
    TSC_DEADLINE_TIMER = 72  # LAPIC TSC-deadline timer mode
    SYNC_REGS = 74
    KVMCLOCK_CTRL = 76
    SIGNAL_MSI = 77  # KVM_SIGNAL_MSI
    READONLY_MEM = 81  # read-only memory slots
    IRQFD_RESAMPLE = 82
    DEVICE_CTRL = 89
    EXT_EMUL_CPUID = 95
    HYPERV_TIME = 96
    IOAPIC_POLARITY_IGNORED = 97
    ENABLE_CAP_VM = 98  # KVM_ENABLE_CAP on a VM fd
    IOEVENTFD_NO_LENGTH = 100
    VM_ATTRIBUTES = 101
    CHECK_EXTENSION_VM = 105  # KVM_CHECK_EXTENSION on a VM fd
    DISABLE_QUIRKS = 116
    X86_SMM = 117
    MULTI_ADDRESS_SPACE = 118
    GUEST_DEBUG_HW_BPS = 119
    GUEST_DEBUG_HW_WPS = 120
    SPLIT_IRQCHIP = 121  # LAPIC in kernel, PIC/IOAPIC in userspace
    IOEVENTFD_ANY_LENGTH = 122
    HYPERV_SYNIC = 123
    VCPU_ATTRIBUTES = 127
    MAX_VCPU_ID = 128  # largest vCPU id + 1 (a count)
    X2APIC_API = 129  # x2APIC ids and broadcast
    MSI_DEVID = 131
    IMMEDIATE_EXIT = 136  # kvm_run.immediate_exit
    X86_DISABLE_EXITS = 143
    HYPERV_SYNIC2 = 148
    HYPERV_VP_INDEX = 149
    GET_MSR_FEATURES = 153  # KVM_GET_MSR_FEATURE_INDEX_LIST
    HYPERV_EVENTFD = 154
    HYPERV_TLBFLUSH = 155
    NESTED_STATE = 157
    MSR_PLATFORM_INFO = 159
    HYPERV_SEND_IPI = 161
    COALESCED_PIO = 162
    HYPERV_ENLIGHTENED_VMCS = 163
    EXCEPTION_PAYLOAD = 164  # exception payloads in vCPU events
    MANUAL_DIRTY_LOG_PROTECT = 166
    HYPERV_CPUID = 167
    MANUAL_DIRTY_LOG_PROTECT2 = 168  # KVM_CLEAR_DIRTY_LOG
    PMU_EVENT_FILTER = 173
    HYPERV_DIRECT_TLBFLUSH = 175
    HALT_POLL = 182
    ASYNC_PF_INT = 183
    LAST_CPU = 184
    SMALLER_MAXPHYADDR = 185
    STEAL_TIME = 187
    X86_USER_SPACE_MSR = 188
    X86_MSR_FILTER = 189
    ENFORCE_PV_FEATURE_CPUID = 190
    SYS_HYPERV_CPUID = 191
    DIRTY_LOG_RING = 192  # dirty ring
    X86_BUS_LOCK_EXIT = 193
    SET_GUEST_DEBUG2 = 195
    SGX_ATTRIBUTE = 196
    VM_COPY_ENC_CONTEXT_FROM = 197
    PTP_KVM = 198
    HYPERV_ENFORCE_CPUID = 199
    SREGS2 = 200  # KVM_GET/SET_SREGS2
    EXIT_HYPERCALL = 201
    BINARY_STATS_FD = 203
    EXIT_ON_EMULATION_FAILURE = 204
    VM_MOVE_ENC_CONTEXT_FROM = 206
    VM_GPA_BITS = 207
    XSAVE2 = 208  # KVM_GET_XSAVE2 with a larger area
    SYS_ATTRIBUTES = 209
    PMU_CAPABILITY = 212
    DISABLE_QUIRKS2 = 213
    VM_TSC_CONTROL = 214
    SYSTEM_EVENT_DATA = 215  # data in system-event exits
    X86_TRIPLE_FAULT_EVENT = 218  # triple fault in vCPU events
    X86_NOTIFY_VMEXIT = 219
    VM_DISABLE_NX_HUGE_PAGES = 220
    DIRTY_LOG_RING_ACQ_REL = 223


COUNT_CAPABILITIES = frozenset(
    {
        Capability.NR_VCPUS,
        Capability.NR_MEMSLOTS,
        Capability.MAX_VCPUS,
        Capability.MAX_VCPU_ID,
    }
)
"""Capabilities whose ``check_extension`` value is a count, not a yes/no."""
