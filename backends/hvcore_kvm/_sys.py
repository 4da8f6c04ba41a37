"""The one place the KVM backend calls ``ioctl``: errno -> hvcore error, naming the ioctl.

Each call is logged at DEBUG on ``hvcore.kvm`` (its name, fd, what it was for, the result or the
error); ``KVM_RUN`` does not come through here (the vCPU's run loop calls it directly, and the
machine logs the exits).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import logging
from typing import Final

from hvcore.errors import error_for_errno
from hvcore.log import get_logger
from hvcore_kvm.ioctls import IOCTL_NAMES
from hvcore_kvm.ioctls import KVM_CHECK_EXTENSION as IOCTL_CHECK_EXTENSION

__all__ = ["check_extension", "ioctl", "ioctl_ulong"]

_libc: Final = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong)
_libc.ioctl.restype = ctypes.c_int
_log: Final = get_logger("kvm")


def ioctl(
    fd: int, request: int, arg: int | bytearray | ctypes.Structure | ctypes.Array[ctypes.c_uint8] = 0, detail: str = ""
) -> int:
    """``ioctl(fd, request, arg)``; a failure raises the hvcore error for its errno, chained.

    ``arg`` is an int (passed by value) or a writable buffer (passed by
    address and updated in place). ``detail`` is added to the message.
    """
    try:
        result = fcntl.ioctl(fd, request, arg)
    except OSError as exc:
        _logged(fd, request, detail, f"failed: {errno.errorcode.get(exc.errno or 0, exc.errno)}")
        raise error_for_errno(exc.errno or errno.EIO, IOCTL_NAMES.get(request, hex(request)), detail) from exc
    _logged(fd, request, detail, f"= {result}")
    return int(result)


def _logged(fd: int, request: int, detail: str, outcome: str) -> None:
    if _log.isEnabledFor(logging.DEBUG):
        _log.debug(
            "%s(fd %d%s) %s", IOCTL_NAMES.get(request, hex(request)), fd, f", {detail}" if detail else "", outcome
        )


def ioctl_ulong(fd: int, request: int, value: int, detail: str = "") -> int:
    """``ioctl`` with an unsigned long argument (``fcntl.ioctl`` takes only a C int)."""
    result = _libc.ioctl(fd, request, value)
    if result < 0:
        err = ctypes.get_errno()
        _logged(fd, request, detail, f"failed: {errno.errorcode.get(err, err)}")
        raise error_for_errno(err, IOCTL_NAMES.get(request, hex(request)), detail)
    _logged(fd, request, detail, f"= {result}")
    return int(result)


def check_extension(fd: int, capability: int) -> int:
    """``KVM_CHECK_EXTENSION`` on ``fd`` (the system or a VM); 0 for numbers KVM cannot know (not a C int)."""
    if not 0 <= capability < 1 << 31:
        return 0
    return ioctl(fd, IOCTL_CHECK_EXTENSION, capability)
