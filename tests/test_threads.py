"""vCPUs and threads: kick, immediate_exit, several vCPUs running at once."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from hvcore import VM, Exit, HltExit, Hypervisor, InterruptedExit, IoDirection, IoExit, VcpuBusy
from tests.boot import boot, read_guest, run_exits
from tests.guests import real_mode


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
    seen: list[int] = []
    interrupted = 0
    try:
        while len(seen) < 2000:
            exit_ = vcpu.run()
            if isinstance(exit_, InterruptedExit):
                interrupted += 1
                continue
            assert isinstance(exit_, IoExit)
            seen.append(exit_.values()[0])
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
