"""Simulator lifetimes: VMs and engines are released, layout changes while vCPUs run in threads."""

from __future__ import annotations

import errno
import gc
import os
import threading
import time

import pytest

import hvcore
from hvcore import GuestMemory, InterruptedExit, IoExit
from hvcore_sim import system
from hvcore_sim import vm as sim_vm
from tests.boot import boot, run_exits
from tests.guests import layout, real_mode

pytestmark = pytest.mark.skipif(
    system._unicorn_problem() is not None, reason=f"simulator unusable: {system._unicorn_problem()}"
)


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def test_creating_and_closing_vms_leaves_fds_and_memory_flat() -> None:
    with hvcore.open_hypervisor("sim") as hv:

        def cycle() -> None:
            with hv.create_vm() as vm:
                vcpu = boot(hv, vm, real_mode.PRINTS_5, rax=2, rbx=3)
                assert len(run_exits(vcpu)) == 3

        for _ in range(30):
            cycle()
        gc.collect()  # Unicorn's binding keeps reference cycles: engines go at the next collection
        fds, rss = len(os.listdir("/proc/self/fd")), _rss_kib()
        for _ in range(300):
            cycle()
        gc.collect()
        assert len(os.listdir("/proc/self/fd")) == fds
        assert _rss_kib() - rss < 16 * 1024


def test_slot_changes_while_a_vcpu_runs_in_another_thread() -> None:
    with hvcore.open_hypervisor("sim") as hv, hv.create_vm() as vm:
        vcpu = boot(hv, vm, real_mode.SPIN)
        results: list[object] = []
        worker = threading.Thread(target=lambda: results.append(vcpu.run()))
        worker.start()
        extra = GuestMemory(0x10000)
        for i in range(20):  # each change rebuilds the engine at the next slice boundary
            vm.set_memory_slot(1, layout.ROM, extra)
            vm.delete_memory_slot(1)
            time.sleep(0.001 * (i % 3))
        vcpu.kick()
        worker.join(timeout=10)
        assert results == [InterruptedExit()]
        vm.set_memory_slot(1, layout.ROM, extra)
        extra.write(0, b"\xea")
        rom_reader = boot(hv, vm, real_mode.ROM_WRITE, vcpu_id=1)
        exits = run_exits(rom_reader)
        assert exits[0] == IoExit(0x40, 1, 1, hvcore.IoDirection.OUT, b"\x55")  # plain RAM now: the write landed


def test_closing_the_vm_stops_a_running_vcpu() -> None:
    with hvcore.open_hypervisor("sim") as hv:
        vm = hv.create_vm()
        vcpu = boot(hv, vm, real_mode.SPIN)
        results: list[object] = []
        worker = threading.Thread(target=lambda: results.append(vcpu.run()))
        worker.start()
        time.sleep(0.05)
        vm.close()
        worker.join(timeout=10)
        assert not worker.is_alive()
        assert results == [InterruptedExit()]
        with pytest.raises(hvcore.ClosedError):
            vcpu.run()


def test_a_vm_creates_at_most_max_vcpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """As KVM's ``created_vcpus >= max_vcpus`` check: EINVAL once the VM created that many (closed ones count).

    The limit is lowered to 2 here: 1024 vCPUs would be 1024 Unicorn engines.
    """
    monkeypatch.setattr(sim_vm, "MAX_VCPUS", 2)
    with hvcore.open_hypervisor("sim") as hv, hv.create_vm() as vm:
        vm.create_vcpu(7).close()
        vm.create_vcpu(4000)
        with pytest.raises(hvcore.InvalidArgument, match=r"created 2 vCPUs \(closed ones count\)") as info:
            vm.create_vcpu(1)
        assert type(info.value) is hvcore.InvalidArgument and info.value.errno == errno.EINVAL
