"""The signal that interrupts ``KVM_RUN`` in another thread.

``kick()`` sets ``immediate_exit`` (for a vCPU about to enter) and sends
:data:`KICK_SIGNAL` to the thread inside ``KVM_RUN`` (for one already in),
which then fails with EINTR. The signal needs a handler, or its default
action would kill the process, and KVM only returns for a signal that is
delivered (an ignored one is discarded before it is ever pending).

The handler is installed with libc's ``sigaction`` rather than Python's
``signal.signal``, so it works from any thread (Python installs handlers only
from the main thread) and a kick never involves Python: no Python-level
handler runs in the main thread and no wakeup fd is written per kick. The
handler is libc's ``abs``: a pure function that reads its argument and
returns, which is all a no-op handler has to do (the kernel's signal
trampoline ignores the return value). crosvm, Firecracker and
cloud-hypervisor install a no-op C handler for their vCPU kick signal too;
Python cannot make a C function of its own that is safe in signal context
(a ctypes callback takes the GIL).
``SA_RESTART`` lets other system calls of the vCPU thread carry on;
``KVM_RUN`` fails with EINTR all the same (it is never restarted).
"""

from __future__ import annotations

import ctypes
import errno
import signal
import threading
from typing import Final

from hvcore.errors import HypervisorFault, StateError

__all__ = ["KICK_SIGNAL", "install_kick_handler", "kick_handler_installed", "send_kick"]

KICK_SIGNAL: Final = signal.SIGRTMIN + 4
"""A real-time signal (above those glibc reserves) that only interrupts KVM_RUN."""

_SA_RESTART: Final = 0x10000000
_SIG_DFL: Final = 0


class _SigAction(ctypes.Structure):
    """``struct sigaction`` as glibc and musl lay it out on x86-64."""

    _fields_ = (
        ("handler", ctypes.c_void_p),
        ("mask", ctypes.c_ulong * 16),
        ("flags", ctypes.c_int),
        ("restorer", ctypes.c_void_p),
    )


_libc = ctypes.CDLL(None, use_errno=True)
_sigaction = _libc.sigaction
_sigaction.argtypes = (ctypes.c_int, ctypes.POINTER(_SigAction), ctypes.POINTER(_SigAction))
_sigaction.restype = ctypes.c_int
_NO_OP: Final = ctypes.cast(_libc.abs, ctypes.c_void_p).value
"""The handler: libc's ``abs`` (see the module docstring)."""

_install_lock = threading.Lock()
_installed = False


def _current_handler() -> int:
    old = _SigAction()
    if _sigaction(KICK_SIGNAL, None, ctypes.byref(old)) != 0:
        code = ctypes.get_errno()
        raise HypervisorFault(f"sigaction({KICK_SIGNAL}): {errno.errorcode.get(code, code)}", errno=code)
    return old.handler or _SIG_DFL


def install_kick_handler() -> bool:
    """Install the no-op kick handler (from any thread); True once it is installed.

    Raises StateError when something else already handles :data:`KICK_SIGNAL`.
    """
    global _installed
    with _install_lock:
        if _installed:
            return True
        current = _current_handler()
        if current not in (_SIG_DFL, _NO_OP):
            raise StateError(
                f"signal {KICK_SIGNAL} already has a handler (at {current:#x}); hvcore needs it for kick()",
                operation="install_kick_handler",
            )
        action = _SigAction()
        action.handler = _NO_OP
        action.flags = _SA_RESTART
        if _sigaction(KICK_SIGNAL, ctypes.byref(action), None) != 0:
            code = ctypes.get_errno()
            raise HypervisorFault(f"sigaction({KICK_SIGNAL}): {errno.errorcode.get(code, code)}", errno=code)
        _installed = True
        return True


def kick_handler_installed() -> bool:
    """True when kicks can be delivered by signal."""
    return _installed


def send_kick(thread_id: int) -> bool:
    """Interrupt ``KVM_RUN`` in the thread ``thread_id``; False when the signal could not be queued.

    The kernel refuses a real-time signal (EAGAIN) when the user's queue of pending signals
    (``RLIMIT_SIGPENDING``, shared by all the user's processes) is full; the caller retries.
    """
    if not _installed:
        install_kick_handler()
    try:
        signal.pthread_kill(thread_id, KICK_SIGNAL)
    except BlockingIOError:
        return False
    return True
