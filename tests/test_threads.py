"""vCPUs and threads: kick, immediate_exit, several vCPUs running at once."""

from __future__ import annotations

import errno
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from hvcore import VCPU, VM, Exit, HltExit, Hypervisor, InterruptedExit, IoDirection, IoExit, VcpuBusy
from tests.boot import boot, read_guest, run_exits
from tests.conftest import WATCHDOG_SECONDS, Watchdog
from tests.guests import real_mode


def _outs_through_kicks(vcpu: VCPU, count: int, go_on: Callable[[], bool] = lambda: True) -> tuple[list[int], int]:
    """Run until ``count`` OUT exits (or ``go_on`` says stop): their values, and how many runs a kick ended."""
    seen: list[int] = []
    interrupted = 0
    while len(seen) < count and go_on():
        exit_ = vcpu.run()
        if isinstance(exit_, InterruptedExit):
            interrupted += 1
            continue
        assert isinstance(exit_, IoExit)
        seen.append(exit_.values()[0])
    return seen, interrupted


def test_kick_interrupts_a_run_in_another_thread(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, real_mode.SPIN)
    result: list[Exit] = []
    worker = threading.Thread(target=lambda: result.append(vcpu.run()))
    worker.start()
    time.sleep(0.05)  # let it enter the guest (the kick must also work if it has not)
    vcpu.kick()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert result == [InterruptedExit()]


def test_kick_from_another_thread_interrupts_the_main_thread(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, real_mode.SPIN)
    timer = threading.Timer(0.05, vcpu.kick)
    timer.start()
    assert vcpu.run() == InterruptedExit()
    timer.join()


def test_kick_before_run_is_not_lost_and_not_stale(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, real_mode.PRINTS_5, rax=2, rbx=3)
    vcpu.kick()
    assert vcpu.immediate_exit
    assert vcpu.run() == InterruptedExit()  # not lost
    assert not vcpu.immediate_exit
    assert vcpu.run() == IoExit(0x3F8, 1, 1, IoDirection.OUT, b"5")  # consumed: the next run runs


def test_immediate_exit_completes_a_pending_in_without_running(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, real_mode.IO_SIZES)
    for _ in range(3):
        vcpu.run()
    assert isinstance(vcpu.run(), IoExit)  # in al, dx
    vcpu.complete(0x5A)
    vcpu.immediate_exit = True
    assert vcpu.run() == InterruptedExit()
    assert vcpu.get_regs().rax & 0xFF == 0x5A  # the IN finished, nothing after it ran
    assert vcpu.run() == IoExit(0x11, 4, 1, IoDirection.OUT, (0xAABBCC5A).to_bytes(4, "little"))


def test_run_from_two_threads_at_once_is_refused(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, real_mode.SPIN)
    worker = threading.Thread(target=vcpu.run)
    worker.start()
    time.sleep(0.05)
    with pytest.raises(VcpuBusy, match="already running"):
        vcpu.run()
    vcpu.kick()
    worker.join(timeout=10)


def test_several_vcpus_run_in_threads(hv: Hypervisor, vm: VM) -> None:
    count, rounds = 4, 25
    vcpus = [boot(hv, vm, real_mode.COUNTED_OUT, vcpu_id=i, rax=0x40 + i, rbx=rounds) for i in range(count)]
    with ThreadPoolExecutor(count) as pool:
        results = list(pool.map(run_exits, vcpus))
    for i, exits in enumerate(results):
        assert exits == [IoExit(0x80, 1, 1, IoDirection.OUT, bytes([0x40 + i]))] * rounds + [HltExit()]
    assert [v.id for v in vm.vcpus()] == list(range(count))


def test_close_kicks_a_running_vcpu(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, real_mode.SPIN)
    result: list[Exit] = []
    worker = threading.Thread(target=lambda: result.append(vcpu.run()))
    worker.start()
    time.sleep(0.05)
    vcpu.close()
    worker.join(timeout=10)
    assert result == [InterruptedExit()]
    assert vm.vcpus() == ()


# inc eax; out 0x80, eax; jmp back -- every OUT reports the next integer
COUNT_OUT = (
    b"\x66\x40"  # again: inc eax
    b"\x66\xe7\x80"  # out 0x80, eax
    b"\xeb\xf9"  # jmp again
)


def test_kicks_never_make_the_guest_repeat_or_skip_an_instruction(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, COUNT_OUT)
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            vcpu.kick()
            time.sleep(0.0002)

    kicker = threading.Thread(target=hammer)
    kicker.start()
    try:
        seen, interrupted = _outs_through_kicks(vcpu, 2000)
    finally:
        stop.set()
        kicker.join()
    assert seen == list(range(1, 2001))  # no OUT (or INC) lost or run twice around a kick
    assert interrupted > 0


LOCKED_COUNT = (
    b"\xb9\x10\x27"  # mov cx, 10000
    b"\xf0\x66\xff\x06\x00\x30"  # again: lock inc dword [0x3000]
    b"\x49"  # dec cx
    b"\x75\xf7"  # jnz again
    b"\xf4"  # hlt
)


def test_locked_increments_from_two_vcpus_in_threads_are_atomic(hv: Hypervisor, vm: VM) -> None:
    vcpus = [boot(hv, vm, LOCKED_COUNT, vcpu_id=i) for i in range(2)]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run_exits, vcpus))
    assert results == [[HltExit()], [HltExit()]]
    assert int.from_bytes(read_guest(vm, 0x3000, 4), "little") == 20000


def test_a_kick_is_consumed_by_one_run_and_never_cancels_a_later_one(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, COUNT_OUT)
    for _ in range(50):
        kicker = threading.Thread(target=vcpu.kick)
        kicker.start()
        first = vcpu.run()  # the kick may land before, during or after this run
        kicker.join()
        second = vcpu.run()  # the kick has happened by now
        third = vcpu.run()
        assert [isinstance(r, InterruptedExit) for r in (first, second)].count(True) <= 1
        assert isinstance(third, IoExit)  # a kick never outlives the run it hit


# mov ecx, 1000; a loop of 1000 dec/jnz; inc eax; out 0x80, eax; again -- work between the OUTs
COUNT_OUT_SLOWLY = (
    b"\x66\xb9\xe8\x03\x00\x00"  # 0 again: mov ecx, 1000
    b"\x66\x49"  # 6 spin: dec ecx
    b"\x75\xfc"  # 8 jnz spin
    b"\x66\x40"  # a inc eax
    b"\x66\xe7\x80"  # c out 0x80, eax
    b"\xeb\xef"  # f jmp again
)


def test_a_kick_storm_neither_starves_the_vcpu_nor_raises(hv: Hypervisor, vm: VM) -> None:
    """Kicks from a thread in a tight loop: run() keeps returning (an OUT or InterruptedExit), kick()
    never raises (a kick while one is pending sends no signal), and no OUT is lost or repeated.

    Whether the guest gets far during the storm is up to the scheduler: a kick that lands at every
    entry leaves it no time, on KVM as anywhere. Once the kicks stop it carries on where it was.
    """
    vcpu = boot(hv, vm, COUNT_OUT_SLOWLY)
    stop = threading.Event()
    errors: list[BaseException] = []
    kicks = 0

    def hammer() -> None:
        nonlocal kicks
        try:
            while not stop.is_set():
                vcpu.kick()
                kicks += 1
        except BaseException as exc:  # the test reports whatever escaped
            errors.append(exc)

    kicker = threading.Thread(target=hammer)
    queue = resource.getrlimit(resource.RLIMIT_SIGPENDING)
    resource.setrlimit(resource.RLIMIT_SIGPENDING, (4, queue[1]))  # a signal per kick overflows this at once
    kicker.start()
    runs = 0

    def another_run() -> bool:
        nonlocal runs
        runs += 1
        return runs <= 300 and not errors

    try:
        during, _ = _outs_through_kicks(vcpu, 200, another_run)
    finally:
        stop.set()
        kicker.join()
        resource.setrlimit(resource.RLIMIT_SIGPENDING, queue)
    assert errors == []
    assert kicks > runs  # it was a storm
    after, _ = _outs_through_kicks(vcpu, 20)  # the last kick may still be pending: it ends one run, no more
    assert during + after == list(range(1, len(during) + 21)), f"{len(during)} OUTs during {runs} runs, {kicks} kicks"


def widen_the_claim_race(vcpu: VCPU, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the backend's ``_get_ident`` (which run() calls to publish its thread) yield the GIL,
    so a busy check that is not atomic lets a second thread in every time, not once in a while."""
    module = sys.modules[type(vcpu).__module__]
    get_ident = module._get_ident

    def yielding() -> int:
        time.sleep(0)
        return int(get_ident())

    monkeypatch.setattr(module, "_get_ident", yielding)


def test_run_from_many_threads_at_once_lets_exactly_one_in(
    hv: Hypervisor, vm: VM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a very short thread switch interval, runs from 8 threads: every call either returns
    an exit or raises VcpuBusy, and no exit is lost or seen twice (two threads never run at once)."""
    vcpu = boot(hv, vm, COUNT_OUT)
    widen_the_claim_race(vcpu, monkeypatch)
    seen: list[int] = []
    busy = 0
    other: list[BaseException] = []
    go = threading.Event()

    def runner() -> None:
        nonlocal busy
        go.wait()
        while len(seen) < 500 and not other:
            try:
                exit_ = vcpu.run()
            except VcpuBusy:
                busy += 1
                continue
            except BaseException as exc:  # the test reports whatever escaped
                other.append(exc)
                return
            if isinstance(exit_, IoExit):
                seen.append(exit_.values()[0])
            elif not isinstance(exit_, InterruptedExit):  # the watchdog's kick
                other.append(AssertionError(f"unexpected exit {exit_!r}"))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=runner) for _ in range(8)]
        for thread in threads:
            thread.start()
        go.set()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert other == []
    assert sorted(seen) == list(range(1, len(seen) + 1))  # none lost, none twice
    assert busy > 0  # the others were refused, not queued


def test_a_kick_signal_the_kernel_refuses_is_sent_by_the_next_kick(
    kvm: Hypervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EAGAIN from pthread_kill (the user's queue of pending signals is full) does not escape
    kick(), and the kick is not coalesced away: the next kick() sends the signal."""
    with kvm.create_vm() as vm, Watchdog(vm, WATCHDOG_SECONDS):
        vcpu = boot(kvm, vm, real_mode.SPIN)
        result: list[Exit] = []
        worker = threading.Thread(target=lambda: result.append(vcpu.run()))
        worker.start()
        time.sleep(0.05)  # let it enter the guest
        refused: list[int] = []

        def queue_full(thread_id: int, signum: int) -> None:
            refused.append(signum)
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

        with monkeypatch.context() as patch:
            patch.setattr(signal, "pthread_kill", queue_full)
            vcpu.kick()
        assert refused
        vcpu.kick()
        worker.join(WATCHDOG_SECONDS)
        assert not worker.is_alive()
        assert result == [InterruptedExit()]


COUNT_EAX_FOREVER = (
    b"\x66\x40"  # 1000 inc eax
    b"\xeb\xfc"  # 1002 jmp 1000
)


def test_state_read_from_another_thread_waits_for_the_run_to_return(hv: Hypervisor, vm: VM) -> None:
    """As KVM_RUN holds the vCPU's mutex: a get_regs racing a run sees the state at its exit, not mid-run."""
    vcpu = boot(hv, vm, COUNT_EAX_FOREVER)
    runs: list[Exit] = []
    worker = threading.Thread(target=lambda: runs.append(vcpu.run()))
    worker.start()
    time.sleep(0.05)  # let it enter the guest
    asking = threading.Event()
    seen: list[int] = []

    def read() -> None:
        asking.set()
        seen.append(vcpu.get_regs().rax)

    reader = threading.Thread(target=read)
    reader.start()
    asking.wait()
    time.sleep(0.05)  # the guest counts on; a reader that did not wait has its value already
    vcpu.kick()
    worker.join(WATCHDOG_SECONDS)
    reader.join(WATCHDOG_SECONDS)
    assert runs == [InterruptedExit()]
    assert seen == [vcpu.get_regs().rax] and seen[0] > 0
