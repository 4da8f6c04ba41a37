"""What both benchmarks share: their error, and the watchdog every guest run is under."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from hvcore import VCPU

__all__ = ["BenchError", "watchdog"]


class BenchError(RuntimeError):
    """The benchmark could not measure (unexpected exit, watchdog, C loop or Unicorn failure)."""


@contextmanager
def watchdog(
    vcpu: VCPU | None,
    seconds: float,
    what: str,
    *,
    also: Callable[[], None] | None = None,
    interrupted: tuple[type[BaseException], ...] = (),
) -> Iterator[None]:
    """Kick ``vcpu`` (and call ``also``) after ``seconds``; exit the process if the loop still runs
    ``2 * seconds + 5`` s in.

    A kicked loop ends with :class:`BenchError` (or one of ``interrupted``, e.g. a bare
    ``KVM_RUN``'s InterruptedError), which becomes a BenchError naming the watchdog; a loop
    that finished after the kick is an error too.
    """
    fired = threading.Event()
    done = threading.Event()

    def kick() -> None:
        fired.set()
        if vcpu is not None:
            vcpu.kick()
        if also is not None:
            also()

    def give_up() -> None:
        if not done.is_set():
            sys.stderr.write(f"bench: watchdog: {what} still running {2 * seconds + 5} s in; exiting\n")
            sys.stderr.flush()
            os._exit(3)

    caught: tuple[type[BaseException], ...] = (BenchError, *interrupted)
    timers = [threading.Timer(seconds, kick), threading.Timer(2 * seconds + 5, give_up)]
    for timer in timers:
        timer.daemon = True
        timer.start()
    try:
        yield
    except caught as exc:
        if fired.is_set():
            raise BenchError(f"watchdog: {what} ran longer than {seconds} s and was kicked") from exc
        raise
    finally:
        done.set()
        for timer in timers:
            timer.cancel()
        if fired.is_set() and vcpu is not None:
            vcpu.immediate_exit = False
    if fired.is_set():
        raise BenchError(f"watchdog: {what} ran longer than {seconds} s")
