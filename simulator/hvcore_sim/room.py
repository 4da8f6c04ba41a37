"""Address space for one more Unicorn engine, checked before Unicorn tries to take it.

Unicorn maps its translation buffer when an engine first initialises, and when that mapping
fails (an address-space limit, ``RLIMIT_AS``; strict overcommit) it calls ``exit(1)``: the whole
process ends with no Python error, and no ``finally`` block runs. Its other allocations abort.
So each engine's buffer is bounded (:data:`TCG_BUFFER_SIZE`, where Unicorn would take 1 GiB of
address space per engine), and before an engine is made, a private mapping of the size it will
take is made and released here: where that fails, :class:`hvcore.ResourceExhausted` says so.
"""

from __future__ import annotations

import mmap
import resource
import threading
import weakref
from typing import Final

from hvcore.errors import ResourceExhausted

__all__ = ["ENGINE_ROOM", "TCG_BUFFER_SIZE", "check", "engine_made", "live_engines"]

TCG_BUFFER_SIZE: Final = 128 << 20
"""Bytes of translated code one engine keeps (Unicorn's ``UC_CTL_TCG_BUFFER_SIZE``).

Four times QEMU 5.0's default for system emulation (32 MiB); a full buffer is flushed and
refilled, as QEMU does. Unicorn's own default, 1 GiB, made 300 vCPUs take 300 GiB of address space.
"""
ENGINE_ROOM: Final = TCG_BUFFER_SIZE + (64 << 20)
"""Address space one engine takes: its translation buffer, and its CPU state and TLBs (~25 MiB measured)."""

_MIB = 1 << 20
_lock = threading.Lock()
_live = 0


def live_engines() -> int:
    """Engines this process holds now (vCPUs' engines and the simulator's short-lived probes)."""
    return _live


def _forget() -> None:
    global _live
    with _lock:
        _live -= 1


def engine_made(engine: object) -> None:
    """Count ``engine`` as live until it is collected."""
    global _live
    with _lock:
        _live += 1
    weakref.finalize(engine, _forget)


def _limit() -> str:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return "unlimited" if soft == resource.RLIM_INFINITY else f"{soft / _MIB:.0f} MiB"


def check(operation: str, what: str = "a simulator engine") -> None:
    """Raise ``ResourceExhausted`` unless :data:`ENGINE_ROOM` bytes of address space can be mapped now."""
    try:
        probe = mmap.mmap(-1, ENGINE_ROOM, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError as exc:
        raise ResourceExhausted(
            f"cannot map {ENGINE_ROOM // _MIB} MiB of address space for {what} "
            f"(a {TCG_BUFFER_SIZE // _MIB} MiB translation buffer and its CPU state): {exc.strerror}; "
            f"this process holds {live_engines()} engines (one per vCPU, and the simulator's own) "
            f"and its address-space limit (RLIMIT_AS, ulimit -v) is {_limit()}: raise it or create fewer vCPUs",
            errno=exc.errno,
            operation=operation,
        ) from None
    probe.close()
