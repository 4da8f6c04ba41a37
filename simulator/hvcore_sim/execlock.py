"""The per-VM execution lock: one engine runs at a time, and whoever waits gets a turn.

Unicorn engines must never execute at once (guest ``lock`` instructions would not be atomic
across them), so every slice runs under this lock. A plain lock is unfair: the thread that
releases it at the end of a slice takes it straight back before a waiter wakes, so a second
vCPU, or the VMM changing a slot, could wait for seconds. Waiters therefore announce themselves,
and a run loop that sees one yields after its slice.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType

__all__ = ["ExecLock"]


class ExecLock:
    """A re-entrant lock that counts its waiters; ``yield_if_wanted()`` hands it over."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.raw = self._lock
        """The underlying lock, for the run loop's uncontended fast path (it must still count when it waits)."""
        self.waiting = 0

    def acquire(self) -> None:
        """Take the lock, announcing the wait if it is busy."""
        if not self._lock.acquire(blocking=False):
            self.waiting += 1
            try:
                self._lock.acquire()
            finally:
                self.waiting -= 1

    def release(self) -> None:
        """Give the lock back."""
        self._lock.release()

    def yield_if_wanted(self) -> None:
        """After a release: let a waiting thread take the lock before this one runs again."""
        if self.waiting:
            time.sleep(0.0001)

    def __enter__(self) -> ExecLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._lock.release()
