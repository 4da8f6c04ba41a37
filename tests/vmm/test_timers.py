"""``DeviceTimers``: callbacks at deadlines of a clock, on a hand-driven clock and on their own thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from hvcore.errors import StateError
from hvcore.vmm.timers import DeviceTimers


class ManualClock:
    """A nanosecond clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.ns = 0

    def __call__(self) -> int:
        return self.ns


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.002)


def test_due_callbacks_run_in_deadline_order_and_never_early() -> None:
    clock = ManualClock()
    timers = DeviceTimers(clock, threaded=False)
    ran: list[str] = []
    timers.call_at(300, lambda: ran.append("c"))
    timers.call_at(100, lambda: ran.append("a"))
    timers.call_at(200, lambda: ran.append("b1"))
    timers.call_at(200, lambda: ran.append("b2"))  # same deadline: in the order armed
    assert timers.next_deadline() == 100
    clock.ns = 99
    assert timers.run_due() == 0 and ran == []
    clock.ns = 200
    assert timers.run_due() == 3
    assert ran == ["a", "b1", "b2"]
    assert timers.next_deadline() == 300
    clock.ns = 10**6
    assert timers.run_due() == 1 and ran[-1] == "c"
    assert timers.next_deadline() is None


def test_a_cancelled_callback_never_runs() -> None:
    clock = ManualClock()
    timers = DeviceTimers(clock, threaded=False)
    ran: list[int] = []
    first = timers.call_at(10, lambda: ran.append(1))
    timers.call_at(20, lambda: ran.append(2))
    first.cancel()
    assert not first.pending
    assert timers.next_deadline() == 20
    clock.ns = 30
    assert timers.run_due() == 1
    assert ran == [2]


def test_a_callback_may_arm_the_next_one() -> None:
    clock = ManualClock()
    timers = DeviceTimers(clock, threaded=False)
    ran: list[int] = []

    def tick() -> None:
        ran.append(clock.ns)
        if len(ran) < 3:
            timers.call_at(clock.ns + 10, tick)

    timers.call_at(10, tick)
    for now in (10, 20, 30, 40):
        clock.ns = now
        timers.run_due()
    assert ran == [10, 20, 30]


def test_a_failing_callback_is_reported_and_the_others_still_run() -> None:
    clock = ManualClock()
    errors: list[BaseException] = []
    timers = DeviceTimers(clock, threaded=False, on_error=errors.append)
    ran: list[int] = []

    def broken() -> None:
        raise RuntimeError("device bug")

    timers.call_at(1, broken)
    timers.call_at(2, lambda: ran.append(2))
    clock.ns = 5
    assert timers.run_due() == 2
    assert ran == [2]
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)

    quiet = DeviceTimers(clock, threaded=False)  # no on_error: kept in errors
    quiet.call_at(0, broken)
    quiet.run_due()
    assert len(quiet.errors) == 1


def test_the_thread_runs_callbacks_once_the_clock_reaches_them() -> None:
    timers = DeviceTimers()  # host monotonic time
    seen: list[tuple[int, int, str]] = []
    start = timers.now()

    def recorder(deadline: int) -> Callable[[], None]:
        return lambda: seen.append((deadline, timers.now(), threading.current_thread().name))

    for delay in (3_000_000, 1_000_000, 2_000_000):
        timers.call_at(start + delay, recorder(start + delay))
    wait_for(lambda: len(seen) == 3)
    assert [d for d, _, _ in seen] == sorted(d for d, _, _ in seen)  # in deadline order
    assert all(ran >= deadline for deadline, ran, _ in seen)  # never before the deadline
    assert {name for _, _, name in seen} == {"hvcore-timers"}
    timers.close()


def test_the_thread_looks_again_at_a_clock_that_jumps() -> None:
    clock = ManualClock()
    timers = DeviceTimers(clock, max_sleep=0.005)
    fired = threading.Event()
    timers.call_at(10**15, fired.set)  # days away in host time
    clock.ns = 10**15  # e.g. a virtual clock skipping ahead
    assert fired.wait(10)
    timers.close()


def test_close_joins_the_thread_and_refuses_new_timers() -> None:
    before = threading.active_count()
    timers = DeviceTimers()
    late = timers.call_at(timers.now() + 3600 * 10**9, lambda: None)
    assert threading.active_count() == before + 1
    timers.close()
    assert threading.active_count() == before
    assert timers.closed and not late.pending
    with pytest.raises(StateError, match="closed"):
        timers.call_at(0, lambda: None)
    timers.close()  # twice is fine


def test_no_thread_until_a_timer_is_armed() -> None:
    before = threading.active_count()
    timers = DeviceTimers()
    assert timers.now() > 0
    assert threading.active_count() == before
    timers.close()
