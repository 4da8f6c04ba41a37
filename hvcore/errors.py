"""The one exception tree of hvcore.

Every failure any backend reports is one of these, so a VMM catches hvcore
errors and never a backend's own (``OSError``, ``unicorn.UcError``)::

    HvError                        root; .errno (int | None) and .operation (str | None)
     +-- BackendUnavailable        a backend cannot be opened here (no /dev/kvm, no unicorn)
     +-- Unsupported               the backend lacks the feature (see ``capabilities()``)
     +-- ClosedError               the object was closed
     +-- StateError                the call does not fit the object's current state
     |    +-- ExitNotCompleted     run() again before answering an IN / MMIO read
     |    +-- VcpuBusy             run() while another thread is inside run()
     +-- InvalidArgument           a bad value (EINVAL, EFAULT, E2BIG, out of range)
     |    +-- InvalidType          an argument of the wrong type (also a TypeError; bool is no int)
     |    +-- AlignmentError       an address or size is not page aligned
     |    +-- ImageError           a guest image (kernel, firmware, ELF) is malformed or does not fit
     |    +-- TraceError           an exit trace (hvcore.trace) is malformed: names the file and line
     +-- AlreadyExists             EEXIST: duplicate id, second irqchip
     |    +-- SlotOverlap          a memory slot overlaps another one
     |    +-- BusConflict          a device range overlaps another device's on a bus, or RAM
     +-- NotFound                  ENOENT / ENXIO: no such slot, dirty log not enabled
     +-- ResourceExhausted         ENOMEM, ENOSPC, EMFILE, too many vCPUs or slots
     +-- HypervisorFault           anything else the hypervisor reported (keeps the errno)
     +-- UnrecognisedBehaviour     a host probe saw neither upstream KVM's behaviour nor a registered variant

Backends translate their native failures with :func:`error_for_errno` at one
place each, chaining the original with ``raise ... from``.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import Final

__all__ = [
    "AlignmentError",
    "AlreadyExists",
    "BackendUnavailable",
    "BusConflict",
    "ClosedError",
    "ExitNotCompleted",
    "GuestDataError",
    "HvError",
    "HypervisorFault",
    "ImageError",
    "InvalidArgument",
    "InvalidType",
    "NotFound",
    "ResourceExhausted",
    "SlotOverlap",
    "StateError",
    "TraceError",
    "UnrecognisedBehaviour",
    "Unsupported",
    "VcpuBusy",
    "error_for_errno",
]


class HvError(Exception):
    """Root of every hvcore error.

    ``errno`` is the operating-system error number where the failure had one
    (the simulator reports the errno KVM would), and ``operation`` names what
    was attempted, e.g. ``"KVM_SET_USER_MEMORY_REGION"`` or ``"set_memory_slot"``.
    """

    __module__ = "hvcore"
    default_errno: int | None = None
    """The errno KVM reports for this kind of failure, used when none is given."""

    def __init__(self, message: str, *, errno: int | None = None, operation: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errno = errno if errno is not None else self.default_errno
        self.operation = operation

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.message, self.errno, self.operation))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, errno={self.errno!r}, operation={self.operation!r})"


def _rebuild(cls: type[HvError], message: str, errno: int | None, operation: str | None) -> HvError:
    return cls(message, errno=errno, operation=operation)


class BackendUnavailable(HvError):
    """A backend cannot be opened on this machine; the message says why and how to fix it."""

    __module__ = "hvcore"


class Unsupported(HvError):
    """The backend does not implement this feature; check ``Hypervisor.capabilities()`` first."""

    __module__ = "hvcore"
    default_errno = _errno.ENOTTY


class ClosedError(HvError):
    """The hypervisor, VM or vCPU was closed; create a new one."""

    __module__ = "hvcore"
    default_errno = _errno.EBADF


class StateError(HvError):
    """The call is not valid in the object's current state."""

    __module__ = "hvcore"


class ExitNotCompleted(StateError):
    """``run()`` was called while an IN or MMIO-read exit still waits for ``complete()``."""

    __module__ = "hvcore"


class VcpuBusy(StateError):
    """Another thread is inside ``run()`` on this vCPU."""

    __module__ = "hvcore"
    default_errno = _errno.EBUSY


class InvalidArgument(HvError, ValueError):
    """An argument is out of range or malformed."""

    __module__ = "hvcore"
    default_errno = _errno.EINVAL


class InvalidType(InvalidArgument, TypeError):
    """An argument has the wrong type: a str, None or float where an int goes (a bool is not an int
    either), or the wrong state class. Also a ``TypeError``; the errno is KVM's EINVAL."""

    __module__ = "hvcore"


class AlignmentError(InvalidArgument):
    """An address or size that must be page aligned is not."""

    __module__ = "hvcore"


class ImageError(InvalidArgument):
    """A guest image (raw, ELF, multiboot, bzImage, firmware) is malformed or does not fit the machine."""

    __module__ = "hvcore"


class TraceError(InvalidArgument):
    """An exit trace (:mod:`hvcore.trace`) is malformed: the message names the file and the line."""

    __module__ = "hvcore"


class AlreadyExists(HvError):
    """The object already exists (a vCPU id, an irqchip, a PIT)."""

    __module__ = "hvcore"
    default_errno = _errno.EEXIST


class SlotOverlap(AlreadyExists):
    """A memory slot's guest-physical range overlaps another slot's."""

    __module__ = "hvcore"


class BusConflict(AlreadyExists):
    """A device's range overlaps another device's on an IO or MMIO bus, or (MMIO) a memory slot, where
    the guest's accesses would reach the RAM or ROM and never the device."""

    __module__ = "hvcore"


class NotFound(HvError, LookupError):
    """The named object does not exist (a memory slot, a dirty log)."""

    __module__ = "hvcore"
    default_errno = _errno.ENOENT


class ResourceExhausted(HvError):
    """The hypervisor or the host ran out of something (memory, fds, vCPUs)."""

    __module__ = "hvcore"


class GuestDataError(HvError):
    """A guest handed a device something malformed (a virtqueue descriptor loop, a buffer outside RAM).

    The device refuses it (a virtio device then needs a reset); the VMM and other devices carry on.
    """

    __module__ = "hvcore"
    default_errno = _errno.EINVAL


class HypervisorFault(HvError):
    """The hypervisor failed in a way no more specific error describes."""

    __module__ = "hvcore"


class UnrecognisedBehaviour(HvError):
    """A host probe (:mod:`hvcore.host`) saw behaviour that is neither upstream KVM's nor a registered variant.

    The host's KVM differs from upstream in a way hvcore does not know yet: report it with the
    output of ``hvcore info --host``.
    """

    __module__ = "hvcore"


_ERRNO_CLASSES: Final[dict[int, type[HvError]]] = {
    _errno.EINVAL: InvalidArgument,
    _errno.EFAULT: InvalidArgument,
    _errno.E2BIG: InvalidArgument,
    _errno.ERANGE: InvalidArgument,
    _errno.EEXIST: AlreadyExists,
    _errno.ENOENT: NotFound,
    _errno.ENXIO: NotFound,
    _errno.EBADF: ClosedError,
    _errno.ENOMEM: ResourceExhausted,
    _errno.ENOSPC: ResourceExhausted,
    _errno.EMFILE: ResourceExhausted,
    _errno.ENFILE: ResourceExhausted,
    _errno.ENOTTY: Unsupported,
    _errno.ENOSYS: Unsupported,
    _errno.EOPNOTSUPP: Unsupported,
    _errno.EBUSY: StateError,
    _errno.EPERM: StateError,
    _errno.EACCES: BackendUnavailable,
}


def error_for_errno(err: int, operation: str, detail: str = "") -> HvError:
    """Build the hvcore error for an errno returned by ``operation``.

    The message names the operation, the errno and ``detail`` (what the
    caller passed, and what to do about it).
    """
    cls = _ERRNO_CLASSES.get(err, HypervisorFault)
    name = _errno.errorcode.get(err, str(err))
    text = f"{operation} failed: {name} ({os.strerror(err)})"
    if detail:
        text = f"{text}: {detail}"
    return cls(text, errno=err, operation=operation)
