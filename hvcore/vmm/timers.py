"""``DeviceTimers``: callbacks at deadlines of the machine's clock, for device models that interrupt.

Deadlines are nanoseconds of one clock (the machine's VM clock, ``KVM_GET_CLOCK``; the host's
monotonic time by default). A callback runs once the clock has reached its deadline, never
before, in deadline order, on the timers' own thread (started by the first ``call_at``) and
outside their lock, so it may arm or cancel timers itself. The thread sleeps in host time until
the earliest deadline, at most ``max_sleep`` seconds at once: a clock that does not follow host
time (the simulator's virtual clock, a ``set_clock``) is looked at again that often. A callback
that raises goes to ``on_error`` (the machine ends the run with it), or is kept in ``errors``;
the other timers go on.

With ``threaded=False`` nothing runs by itself: ``run_due()`` runs what is due, in the caller's
thread (a device test on a hand-driven clock).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable

from hvcore.errors import StateError

__all__ = ["DeviceTimers", "TimerHandle"]


class TimerHandle:
    """One armed callback; ``cancel()`` it before it runs and it never does."""

    __slots__ = ("_done", "callback", "deadline")

    def __init__(self, deadline: int, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        """When it is due, in nanoseconds of the timers' clock."""
        self.callback = callback
        self._done = False

    def cancel(self) -> None:
        """Drop it (nothing happens if it already ran)."""
        self._done = True

    @property
    def pending(self) -> bool:
        """Neither run nor cancelled yet."""
        return not self._done

    def __repr__(self) -> str:
        return f"TimerHandle(deadline={self.deadline}, pending={self.pending})"


class DeviceTimers:
    """Callbacks at deadlines of ``clock`` (nanoseconds); see the module docstring."""

    def __init__(
        self,
        clock: Callable[[], int] = time.monotonic_ns,
        *,
        on_error: Callable[[BaseException], None] | None = None,
        threaded: bool = True,
        max_sleep: float = 0.02,
        name: str = "hvcore-timers",
    ) -> None:
        self._clock = clock
        self._on_error = on_error
        self._threaded = threaded
        self._max_sleep = max_sleep
        self._name = name
        self._heap: list[tuple[int, int, TimerHandle]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.errors: list[BaseException] = []
        """Callback failures, when there is no ``on_error``."""

    def now(self) -> int:
        """The clock, in nanoseconds."""
        return self._clock()

    def call_at(self, deadline: int, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` once the clock reaches ``deadline`` (at once if it has)."""
        handle = TimerHandle(deadline, callback)
        with self._cond:
            if self._closed:
                raise StateError("the device timers are closed", operation="call_at")
            heapq.heappush(self._heap, (deadline, next(self._order), handle))
            if self._threaded and self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            elif self._heap[0][2] is handle:
                self._cond.notify()  # the thread sleeps for a later deadline
        return handle

    def next_deadline(self) -> int | None:
        """The earliest deadline still pending, if any."""
        with self._cond:
            self._drop_cancelled()
            return self._heap[0][0] if self._heap else None

    def run_due(self) -> int:
        """Run, in this thread, every callback whose deadline the clock has reached; how many ran."""
        ran = 0
        while (handle := self._pop_due()) is not None:
            self._call(handle)
            ran += 1
        return ran

    def close(self) -> None:
        """Drop every pending callback and join the thread; ``call_at`` raises from now on."""
        with self._cond:
            self._closed = True
            for _, _, handle in self._heap:
                handle.cancel()
            self._heap.clear()
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closed

    # -- internals -------------------------------------------------------------------------------

    def _drop_cancelled(self) -> None:
        while self._heap and not self._heap[0][2].pending:
            heapq.heappop(self._heap)

    def _pop_due(self) -> TimerHandle | None:
        with self._cond:
            self._drop_cancelled()
            if not self._heap or self._heap[0][0] > self._clock():
                return None
            handle = heapq.heappop(self._heap)[2]
            handle.cancel()  # ran: no longer pending
            return handle

    def _call(self, handle: TimerHandle) -> None:
        try:
            handle.callback()
        except BaseException as exc:  # a device bug must not stop every other device's timers
            self._report(exc)

    def _report(self, exc: BaseException) -> None:
        if self._on_error is not None:
            self._on_error(exc)
        else:
            self.errors.append(exc)

    def _loop(self) -> None:
        try:
            while self._wait_for_due():
                self.run_due()
        except BaseException as exc:  # the clock failed (the VM is gone): nothing can be timed any more
            self._report(exc)

    def _wait_for_due(self) -> bool:
        """Sleep until the earliest deadline is due (True) or the timers are closed (False)."""
        with self._cond:
            while not self._closed:
                self._drop_cancelled()
                if not self._heap:
                    self._cond.wait()
                    continue
                wait_ns = self._heap[0][0] - self._clock()
                if wait_ns <= 0:
                    return True
                self._cond.wait(min(wait_ns / 1e9, self._max_sleep))
            return False

    def __repr__(self) -> str:
        return f"DeviceTimers(pending={len(self._heap)}, closed={self._closed})"
