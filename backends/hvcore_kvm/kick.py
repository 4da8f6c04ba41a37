"""The signal that interrupts ``KVM_RUN`` in another thread.

``kick()`` sets ``immediate_exit`` (for a vCPU about to enter) and sends
:data:`KICK_SIGNAL` to the thread inside ``KVM_RUN`` (for one already in),
which then fails with EINTR. The signal needs a handler, or its default
action would kill the process; Python only installs handlers from the main
thread, so hvcore installs a no-op one when the first KVM hypervisor is
opened there (or call :func:`install_kick_handler` from the main thread).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Final

from hvcore.errors import StateError

__all__ = ["KICK_SIGNAL", "install_kick_handler", "kick_handler_installed", "send_kick"]

KICK_SIGNAL: Final = signal.SIGRTMIN + 4
"""A real-time signal (above those glibc reserves) that only interrupts KVM_RUN."""

_installed = False


def _ignore(signum: int, frame: FrameType | None) -> None:
    """No-op: the EINTR it causes is what matters."""


def install_kick_handler() -> bool:
    """Install the no-op kick handler if possible; True when installed (now or before)."""
    global _installed
    if _installed:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(KICK_SIGNAL)
    if current not in (signal.SIG_DFL, _ignore):
        raise StateError(f"signal {KICK_SIGNAL} already has a handler ({current!r}); hvcore needs it for kick()")
    signal.signal(KICK_SIGNAL, _ignore)
    _installed = True
    return True


def kick_handler_installed() -> bool:
    """True when kicks can be delivered by signal."""
    return _installed


def send_kick(thread_id: int) -> None:
    """Interrupt ``KVM_RUN`` in the thread ``thread_id``."""
    if not _installed:
        raise StateError(
            "kick() needs hvcore's kick signal handler, which Python can only install from the main "
            "thread: open the KVM hypervisor from the main thread, or call "
            "hvcore_kvm.kick.install_kick_handler() there first"
        )
    signal.pthread_kill(thread_id, KICK_SIGNAL)
