"""The simulator lets one thread at a time into a vCPU's run loop (``run()``'s claim is atomic)."""

from __future__ import annotations

import sys
import threading

import pytest

from hvcore import Exit, InterruptedExit, IoExit, VcpuBusy
from hvcore_sim.system import SimHypervisor
from hvcore_sim.vcpu import SimVCPU
from tests.boot import boot
from tests.conftest import WATCHDOG_SECONDS, Watchdog
from tests.test_threads import COUNT_OUT, widen_the_claim_race


def test_one_thread_at_a_time_inside_the_run_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where KVM would lose exits (tests.test_threads), two threads inside the simulator's run loop
    take turns on the execution lock: counted directly here, inside the claim."""
    with SimHypervisor() as hv, hv.create_vm() as vm, Watchdog(vm, WATCHDOG_SECONDS):
        vcpu = boot(hv, vm, COUNT_OUT)
        assert isinstance(vcpu, SimVCPU)
        widen_the_claim_race(vcpu, monkeypatch)
        inner, inside, most = vcpu._run, 0, 0
        count = threading.Lock()

        def counted() -> Exit:
            nonlocal inside, most
            with count:
                inside += 1
                most = max(most, inside)
            try:
                return inner()
            finally:
                with count:
                    inside -= 1

        vcpu._run = counted  # type: ignore[method-assign]
        exits, busy = 0, 0

        def runner() -> None:
            nonlocal exits, busy
            while exits < 500:
                try:
                    exit_ = vcpu.run()
                except VcpuBusy:
                    busy += 1
                    continue
                assert isinstance(exit_, IoExit | InterruptedExit)
                exits += 1

        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        try:
            threads = [threading.Thread(target=runner) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            sys.setswitchinterval(interval)
        assert most == 1
        assert busy > 0
