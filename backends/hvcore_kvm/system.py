"""``KvmHypervisor``: the ``/dev/kvm`` system file descriptor, and the ``kvm`` backend entry."""

from __future__ import annotations

import errno
import os
import weakref
from typing import Final

from hvcore.arguments import check_int
from hvcore.caps import Capability
from hvcore.errors import BackendUnavailable, ClosedError, HvError, InvalidArgument
from hvcore.lifetime import Closeable
from hvcore.types import CpuidEntry
from hvcore_kvm import convert, ioctls, kick, uapi
from hvcore_kvm._sys import check_extension, ioctl
from hvcore_kvm.vm import KvmVM

__all__ = ["BACKEND", "KvmBackend", "KvmHypervisor"]

DEVICE: Final = "/dev/kvm"
_MAX_CPUID_ENTRIES: Final = 256
_DEFAULT_RECOMMENDED_VCPUS: Final = 4  # what api.rst says to assume when KVM_CAP_NR_VCPUS is absent


def _open_device(path: str) -> int:
    """Open ``path`` and check the API version; raise BackendUnavailable saying how to fix it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise BackendUnavailable(
            f"{path} does not exist: load the kvm module (modprobe kvm_intel or kvm_amd) or use the 'sim' backend",
            errno=exc.errno,
        ) from exc
    except PermissionError as exc:
        raise BackendUnavailable(
            f"{path}: permission denied: add this user to the 'kvm' group, or use the 'sim' backend",
            errno=exc.errno,
        ) from exc
    except OSError as exc:
        raise BackendUnavailable(f"{path} cannot be opened: {os.strerror(exc.errno or 0)}", errno=exc.errno) from exc
    try:
        version = ioctl(fd, ioctls.KVM_GET_API_VERSION, 0)
    except HvError as exc:
        os.close(fd)
        raise BackendUnavailable(f"{path} does not answer KVM_GET_API_VERSION: {exc.message}") from exc
    if version != ioctls.KVM_API_VERSION:
        os.close(fd)
        raise BackendUnavailable(
            f"{path} speaks KVM API version {version}; hvcore needs {ioctls.KVM_API_VERSION} (Linux 2.6.22+)"
        )
    return fd


class KvmHypervisor(Closeable):
    """The KVM system fd; see :class:`hvcore.Hypervisor` for the contract."""

    name: Final = "kvm"

    def __init__(self, path: str = DEVICE) -> None:
        self._fd = _open_device(path)
        self._finalizer = weakref.finalize(self, os.close, self._fd)
        self._vms: weakref.WeakSet[KvmVM] = weakref.WeakSet()
        self._mmap_size: int | None = None
        kick.install_kick_handler()

    def _live(self) -> int:
        if self._fd < 0:
            raise ClosedError("the KVM hypervisor is closed; open a new one", operation="hypervisor")
        return self._fd

    def api_version(self) -> int:
        """``KVM_GET_API_VERSION`` (checked to be 12 when opened)."""
        return ioctl(self._live(), ioctls.KVM_GET_API_VERSION, 0)

    def check_extension(self, capability: Capability | int) -> int:
        """``KVM_CHECK_EXTENSION`` (0 for numbers KVM cannot know)."""
        check_int("capability", capability, "check_extension")
        return check_extension(self._live(), int(capability))

    def capabilities(self) -> frozenset[Capability]:
        """Every :class:`Capability` for which ``KVM_CHECK_EXTENSION`` is non-zero."""
        fd = self._live()
        return frozenset(c for c in Capability if ioctl(fd, ioctls.KVM_CHECK_EXTENSION, int(c)) > 0)

    def vcpu_mmap_size(self) -> int:
        """``KVM_GET_VCPU_MMAP_SIZE``."""
        fd = self._live()
        if self._mmap_size is None:
            self._mmap_size = ioctl(fd, ioctls.KVM_GET_VCPU_MMAP_SIZE, 0)
        return self._mmap_size

    def msr_index_list(self) -> tuple[int, ...]:
        """``KVM_GET_MSR_INDEX_LIST``: asks for the count first, then the list."""
        fd = self._live()
        probe = uapi.msr_list_with(0)()
        try:
            ioctl(fd, ioctls.KVM_GET_MSR_INDEX_LIST, probe)
        except InvalidArgument as exc:
            if exc.errno != errno.E2BIG:
                raise
        raw = uapi.msr_list_with(probe.nmsrs)()
        raw.nmsrs = probe.nmsrs
        ioctl(fd, ioctls.KVM_GET_MSR_INDEX_LIST, raw)
        return tuple(raw.indices[i] for i in range(raw.nmsrs))

    def supported_cpuid(self) -> tuple[CpuidEntry, ...]:
        """``KVM_GET_SUPPORTED_CPUID``."""
        raw = uapi.cpuid2_with(_MAX_CPUID_ENTRIES)()
        raw.nent = _MAX_CPUID_ENTRIES
        ioctl(self._live(), ioctls.KVM_GET_SUPPORTED_CPUID, raw)
        return tuple(convert.cpuid_from_kvm(raw.entries[i]) for i in range(raw.nent))

    def recommended_vcpus(self) -> int:
        """``KVM_CAP_NR_VCPUS`` (4 when KVM does not say)."""
        return self.check_extension(Capability.NR_VCPUS) or _DEFAULT_RECOMMENDED_VCPUS

    def max_vcpus(self) -> int:
        """``KVM_CAP_MAX_VCPUS`` (the recommended count when KVM does not say)."""
        return self.check_extension(Capability.MAX_VCPUS) or self.recommended_vcpus()

    def create_vm(self) -> KvmVM:
        """``KVM_CREATE_VM``, retried while interrupted by a signal."""
        fd = self._live()
        while True:
            try:
                vm_fd = ioctl(fd, ioctls.KVM_CREATE_VM, 0)
                break
            except HvError as exc:
                if exc.errno != errno.EINTR:
                    raise
        try:
            vm = KvmVM(self, vm_fd)
        except BaseException:
            os.close(vm_fd)
            raise
        self._vms.add(vm)
        return vm

    def close(self) -> None:
        """Close every VM, then ``/dev/kvm``."""
        if self._fd < 0:
            return
        for vm in list(self._vms):
            vm.close()
        self._fd = -1
        self._finalizer()

    def __repr__(self) -> str:
        return f"KvmHypervisor({'closed' if self._fd < 0 else DEVICE})"


class KvmBackend:
    """The ``kvm`` registry entry: probes and opens ``/dev/kvm``."""

    name: Final = "kvm"

    def __init__(self, path: str = DEVICE) -> None:
        self.path = path

    def unavailable_reason(self) -> str | None:
        """None when ``/dev/kvm`` opens and speaks API 12; else why not."""
        try:
            os.close(_open_device(self.path))
        except BackendUnavailable as exc:
            return exc.message
        return None

    def open(self) -> KvmHypervisor:
        """Open ``/dev/kvm``."""
        return KvmHypervisor(self.path)


BACKEND: Final = KvmBackend()
"""The object the ``kvm`` entry point names."""
