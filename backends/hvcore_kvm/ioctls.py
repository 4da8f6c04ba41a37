"""The ONE table of KVM ioctl numbers (x86_64).

Every request number is computed the way ``<linux/kvm.h>`` computes it:
``_IO``/``_IOR``/``_IOW``/``_IOWR`` of (``KVMIO``, nr, argument type), where
the size comes from ``ctypes.sizeof`` of the layout in
:mod:`hvcore_kvm.uapi`.  Variable-length arguments use their header-only
struct, as the kernel does.  The direction bits are copied from the header
even where they look wrong (KVM_SET_IRQCHIP is ``_IOR``, KVM_GET_DIRTY_LOG is
``_IOW``): the kernel only matches the whole number.

Constants are named exactly like the C macros; ``tests/kvm/test_uapi.py``
compares each one with the installed header.  Like the layouts, these
numbers are private to ``backends/hvcore_kvm``.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, TypeAlias

from hvcore_kvm import uapi

# asm-generic/ioctl.h encoding (x86, arm64, riscv; not powerpc/mips/sparc).
_IOC_NRBITS: Final = 8
_IOC_TYPEBITS: Final = 8
_IOC_SIZEBITS: Final = 14
_IOC_DIRBITS: Final = 2

_IOC_NRSHIFT: Final = 0
_IOC_TYPESHIFT: Final = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT: Final = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT: Final = _IOC_SIZESHIFT + _IOC_SIZEBITS

_IOC_NONE: Final = 0
_IOC_WRITE: Final = 1
_IOC_READ: Final = 2

_ArgType: TypeAlias = "type[ctypes.Structure | ctypes.Union | ctypes._SimpleCData[Any]]"


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:  # noqa: N802 - named like the C macro
    """Encode an ioctl request number like the C ``_IOC`` macro."""
    for what, value, bits in (
        ("direction", direction, _IOC_DIRBITS),
        ("type", type_, _IOC_TYPEBITS),
        ("nr", nr, _IOC_NRBITS),
        ("size", size, _IOC_SIZEBITS),
    ):
        if not 0 <= value < (1 << bits):
            raise ValueError(f"ioctl {what} {value:#x} does not fit in {bits} bits")
    return (direction << _IOC_DIRSHIFT) | (type_ << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT)


def _IO(type_: int, nr: int) -> int:  # noqa: N802 - named like the C macro
    """Request number of an ioctl without a pointer argument."""
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int, nr: int, arg: _ArgType) -> int:  # noqa: N802 - named like the C macro
    """Request number of an ioctl whose argument the kernel writes."""
    return _IOC(_IOC_READ, type_, nr, ctypes.sizeof(arg))


def _IOW(type_: int, nr: int, arg: _ArgType) -> int:  # noqa: N802 - named like the C macro
    """Request number of an ioctl whose argument the kernel reads."""
    return _IOC(_IOC_WRITE, type_, nr, ctypes.sizeof(arg))


def _IOWR(type_: int, nr: int, arg: _ArgType) -> int:  # noqa: N802 - named like the C macro
    """Request number of an ioctl whose argument is read and written."""
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, ctypes.sizeof(arg))


KVMIO: Final = 0xAE
"""The ioctl type byte of every KVM request."""

KVM_API_VERSION: Final = 12
"""The only API version KVM_GET_API_VERSION has ever returned."""

# ---------------------------------------------------------------- system fd
# ioctls on the /dev/kvm file descriptor.

KVM_GET_API_VERSION: Final = _IO(KVMIO, 0x00)
KVM_CREATE_VM: Final = _IO(KVMIO, 0x01)
KVM_GET_MSR_INDEX_LIST: Final = _IOWR(KVMIO, 0x02, uapi.KvmMsrList)
# Also valid on VM fds when KVM_CAP_CHECK_EXTENSION_VM is available.
KVM_CHECK_EXTENSION: Final = _IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE: Final = _IO(KVMIO, 0x04)
# Available with KVM_CAP_EXT_CPUID
KVM_GET_SUPPORTED_CPUID: Final = _IOWR(KVMIO, 0x05, uapi.KvmCpuid2)
# Available with KVM_CAP_EXT_EMUL_CPUID
KVM_GET_EMULATED_CPUID: Final = _IOWR(KVMIO, 0x09, uapi.KvmCpuid2)
# Available with KVM_CAP_GET_MSR_FEATURES
KVM_GET_MSR_FEATURE_INDEX_LIST: Final = _IOWR(KVMIO, 0x0A, uapi.KvmMsrList)

# -------------------------------------------------------------------- VM fd
# ioctls on the file descriptor returned by KVM_CREATE_VM.

KVM_CREATE_VCPU: Final = _IO(KVMIO, 0x41)
KVM_GET_DIRTY_LOG: Final = _IOW(KVMIO, 0x42, uapi.KvmDirtyLog)
KVM_SET_USER_MEMORY_REGION: Final = _IOW(KVMIO, 0x46, uapi.KvmUserspaceMemoryRegion)
# Available with KVM_CAP_SET_TSS_ADDR
KVM_SET_TSS_ADDR: Final = _IO(KVMIO, 0x47)
# Available with KVM_CAP_SET_IDENTITY_MAP_ADDR
KVM_SET_IDENTITY_MAP_ADDR: Final = _IOW(KVMIO, 0x48, ctypes.c_uint64)
# Available with KVM_CAP_IRQCHIP
KVM_CREATE_IRQCHIP: Final = _IO(KVMIO, 0x60)
KVM_IRQ_LINE: Final = _IOW(KVMIO, 0x61, uapi.KvmIrqLevel)
KVM_GET_IRQCHIP: Final = _IOWR(KVMIO, 0x62, uapi.KvmIrqchip)
KVM_SET_IRQCHIP: Final = _IOR(KVMIO, 0x63, uapi.KvmIrqchip)  # sic: _IOR in the header
# Available with KVM_CAP_IRQ_INJECT_STATUS
KVM_IRQ_LINE_STATUS: Final = _IOWR(KVMIO, 0x67, uapi.KvmIrqLevel)
# Available with KVM_CAP_IRQ_ROUTING
KVM_SET_GSI_ROUTING: Final = _IOW(KVMIO, 0x6A, uapi.KvmIrqRouting)
# Available with KVM_CAP_PIT2
KVM_CREATE_PIT2: Final = _IOW(KVMIO, 0x77, uapi.KvmPitConfig)
# Available with KVM_CAP_SET_BOOT_CPU_ID
KVM_SET_BOOT_CPU_ID: Final = _IO(KVMIO, 0x78)
# Available with KVM_CAP_ADJUST_CLOCK
KVM_SET_CLOCK: Final = _IOW(KVMIO, 0x7B, uapi.KvmClockData)
KVM_GET_CLOCK: Final = _IOR(KVMIO, 0x7C, uapi.KvmClockData)
# Available with KVM_CAP_PIT_STATE2
KVM_GET_PIT2: Final = _IOR(KVMIO, 0x9F, uapi.KvmPitState2)
KVM_SET_PIT2: Final = _IOW(KVMIO, 0xA0, uapi.KvmPitState2)
# Available with KVM_CAP_SIGNAL_MSI
KVM_SIGNAL_MSI: Final = _IOW(KVMIO, 0xA5, uapi.KvmMsi)
# Available with KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2
KVM_CLEAR_DIRTY_LOG: Final = _IOWR(KVMIO, 0xC0, uapi.KvmClearDirtyLog)

# ------------------------------------------------------------------ vCPU fd
# ioctls on the file descriptor returned by KVM_CREATE_VCPU.

KVM_RUN: Final = _IO(KVMIO, 0x80)
KVM_GET_REGS: Final = _IOR(KVMIO, 0x81, uapi.KvmRegs)
KVM_SET_REGS: Final = _IOW(KVMIO, 0x82, uapi.KvmRegs)
KVM_GET_SREGS: Final = _IOR(KVMIO, 0x83, uapi.KvmSregs)
KVM_SET_SREGS: Final = _IOW(KVMIO, 0x84, uapi.KvmSregs)
KVM_TRANSLATE: Final = _IOWR(KVMIO, 0x85, uapi.KvmTranslation)
KVM_INTERRUPT: Final = _IOW(KVMIO, 0x86, uapi.KvmInterrupt)
KVM_GET_MSRS: Final = _IOWR(KVMIO, 0x88, uapi.KvmMsrs)
KVM_SET_MSRS: Final = _IOW(KVMIO, 0x89, uapi.KvmMsrs)
KVM_GET_FPU: Final = _IOR(KVMIO, 0x8C, uapi.KvmFpu)
KVM_SET_FPU: Final = _IOW(KVMIO, 0x8D, uapi.KvmFpu)
KVM_GET_LAPIC: Final = _IOR(KVMIO, 0x8E, uapi.KvmLapicState)
KVM_SET_LAPIC: Final = _IOW(KVMIO, 0x8F, uapi.KvmLapicState)
KVM_SET_CPUID2: Final = _IOW(KVMIO, 0x90, uapi.KvmCpuid2)
KVM_GET_CPUID2: Final = _IOWR(KVMIO, 0x91, uapi.KvmCpuid2)
# Available with KVM_CAP_MP_STATE
KVM_GET_MP_STATE: Final = _IOR(KVMIO, 0x98, uapi.KvmMpState)
KVM_SET_MP_STATE: Final = _IOW(KVMIO, 0x99, uapi.KvmMpState)
# Available with KVM_CAP_USER_NMI
KVM_NMI: Final = _IO(KVMIO, 0x9A)
# Available with KVM_CAP_X86_SMM
KVM_SMI: Final = _IO(KVMIO, 0xB7)
# Available with KVM_CAP_SET_GUEST_DEBUG
KVM_SET_GUEST_DEBUG: Final = _IOW(KVMIO, 0x9B, uapi.KvmGuestDebug)
# Available with KVM_CAP_VCPU_EVENTS
KVM_GET_VCPU_EVENTS: Final = _IOR(KVMIO, 0x9F, uapi.KvmVcpuEvents)
KVM_SET_VCPU_EVENTS: Final = _IOW(KVMIO, 0xA0, uapi.KvmVcpuEvents)
# Available with KVM_CAP_DEBUGREGS
KVM_GET_DEBUGREGS: Final = _IOR(KVMIO, 0xA1, uapi.KvmDebugregs)
KVM_SET_DEBUGREGS: Final = _IOW(KVMIO, 0xA2, uapi.KvmDebugregs)
# Available with KVM_CAP_TSC_CONTROL (vCPU); KVM_CAP_VM_TSC_CONTROL also
# allows KVM_SET_TSC_KHZ on the VM fd to set the default for new vCPUs.
KVM_SET_TSC_KHZ: Final = _IO(KVMIO, 0xA2)
# Available with KVM_CAP_GET_TSC_KHZ
KVM_GET_TSC_KHZ: Final = _IO(KVMIO, 0xA3)
# vCPU fd: available with KVM_CAP_ENABLE_CAP; VM fd: with KVM_CAP_ENABLE_CAP_VM.
KVM_ENABLE_CAP: Final = _IOW(KVMIO, 0xA3, uapi.KvmEnableCap)
# Available with KVM_CAP_XSAVE
KVM_GET_XSAVE: Final = _IOR(KVMIO, 0xA4, uapi.KvmXsave)
KVM_SET_XSAVE: Final = _IOW(KVMIO, 0xA5, uapi.KvmXsave)
# Available with KVM_CAP_XCRS
KVM_GET_XCRS: Final = _IOR(KVMIO, 0xA6, uapi.KvmXcrs)
KVM_SET_XCRS: Final = _IOW(KVMIO, 0xA7, uapi.KvmXcrs)


def _ioc_type(number: int) -> int:
    """Return the type byte of an ioctl request number."""
    return (number >> _IOC_TYPESHIFT) & ((1 << _IOC_TYPEBITS) - 1)


def _build_ioctl_names() -> Mapping[int, str]:
    """Map each KVM request number defined above to its macro name.

    Only ``KVM_*`` integers whose type byte is KVMIO count (this leaves out
    KVM_API_VERSION).  Two macros sharing one number would be joined as
    ``"A/B"``; the test checks that this does not happen.
    """
    names: dict[int, str] = {}
    for name, value in sorted(globals().items()):
        if name.startswith("KVM_") and type(value) is int and _ioc_type(value) == KVMIO:
            names[value] = f"{names[value]}/{name}" if value in names else name
    return MappingProxyType(names)


IOCTL_NAMES: Final[Mapping[int, str]] = _build_ioctl_names()
"""ioctl request number -> C macro name, for naming ioctls in error messages."""
