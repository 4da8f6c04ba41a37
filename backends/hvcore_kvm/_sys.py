"""The one place the KVM backend calls ``ioctl``: errno -> hvcore error, naming the ioctl."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
from typing import Final

from hvcore.errors import error_for_errno
from hvcore_kvm.ioctls import IOCTL_NAMES

__all__ = ["ioctl", "ioctl_ulong"]

_libc: Final = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong)
_libc.ioctl.restype = ctypes.c_int


def ioctl(
    fd: int, request: int, arg: int | bytearray | ctypes.Structure | ctypes.Array[ctypes.c_uint8] = 0, detail: str = ""
) -> int:
    """``ioctl(fd, request, arg)``; a failure raises the hvcore error for its errno, chained.

    ``arg`` is an int (passed by value) or a writable buffer (passed by
    address and updated in place). ``detail`` is added to the message.
    """
    try:
        return fcntl.ioctl(fd, request, arg)
    except OSError as exc:
        raise error_for_errno(exc.errno or errno.EIO, IOCTL_NAMES.get(request, hex(request)), detail) from exc


def ioctl_ulong(fd: int, request: int, value: int, detail: str = "") -> int:
    """``ioctl`` with an unsigned long argument (``fcntl.ioctl`` takes only a C int)."""
    result = _libc.ioctl(fd, request, value)
    if result < 0:
        err = ctypes.get_errno()
        raise error_for_errno(err, IOCTL_NAMES.get(request, hex(request)), detail)
    return int(result)
