"""The simulator's VM clock: host time or virtual time counted in guest instructions."""

from __future__ import annotations

import pytest

import hvcore
from hvcore import IoExit
from hvcore_sim.clock import HostClock, VirtualClock, clock_from_environment
from hvcore_sim.system import SimHypervisor
from tests.boot import boot, map_apic_window
from tests.conftest import Watchdog
from tests.guests import irqchip as guests


def test_virtual_clock_counts_instructions_and_skips_idle_time() -> None:
    clock = VirtualClock(ns_per_instruction=3)
    clock.executed(10)
    assert clock.now() == 30
    assert clock.instructions_until(100) == 24  # ceil(70 / 3)
    assert clock.instructions_until(10) == 1  # already past: at least one instruction
    clock.idle_until(1000)
    assert clock.now() == 1000
    clock.idle_until(500)  # never backwards
    assert clock.now() == 1000
    clock.set(7)
    assert clock.now() == 7
    with pytest.raises(ValueError, match="at least 1"):
        VirtualClock(0)


def test_host_clock_follows_monotonic_time() -> None:
    clock = HostClock()
    clock.set(5_000_000_000)
    first = clock.now()
    assert 5_000_000_000 <= first < 6_000_000_000
    clock.executed(1 << 40)  # instructions do not move host time
    clock.idle_until(1 << 62)
    assert clock.now() < 6_000_000_000


@pytest.mark.parametrize(
    ("setting", "kind", "rate"),
    [("", HostClock, None), ("host", HostClock, None), ("virtual", VirtualClock, 1), ("virtual:5", VirtualClock, 5)],
)
def test_clock_from_environment(monkeypatch: pytest.MonkeyPatch, setting: str, kind: type, rate: int | None) -> None:
    monkeypatch.setenv("HVCORE_SIM_CLOCK", setting)
    clock = clock_from_environment()
    assert isinstance(clock, kind)
    if rate is not None:
        assert isinstance(clock, VirtualClock) and clock.ns_per_instruction == rate


@pytest.mark.parametrize("setting", ["virtual:x", "wall", "virtual:0"])
def test_clock_from_environment_refuses_nonsense(monkeypatch: pytest.MonkeyPatch, setting: str) -> None:
    monkeypatch.setenv("HVCORE_SIM_CLOCK", setting)
    with pytest.raises(ValueError, match="HVCORE_SIM_CLOCK"):
        clock_from_environment()


def _ticks_run(hv: SimHypervisor) -> tuple[list[IoExit], hvcore.Regs, int]:
    """PIC_PIT_TICKS on a virtual clock: its exits, final registers and the VM clock at the end."""
    with hv.create_vm(clock=VirtualClock()) as vm, Watchdog(vm, 20):
        vm.create_irqchip()
        vm.create_pit()
        vcpu = boot(hv, vm, guests.PIC_PIT_TICKS, "long")
        map_apic_window(vm)
        exit_ = vcpu.run()
        assert isinstance(exit_, IoExit)
        return [exit_], vcpu.get_regs(), vm.get_clock().clock


def test_virtual_time_makes_timer_interrupts_reproducible() -> None:
    with SimHypervisor() as hv:
        first, second = _ticks_run(hv), _ticks_run(hv)
    assert first == second  # same exits, same registers, same instant
    exits, _, clock = first
    assert exits[0].data == (10).to_bytes(4, "little")
    period = 11932 * 1_000_000_000 // 1_193_182  # the PIT's 100 Hz period in ns
    assert 10 * period <= clock < 10 * period + 1_000_000  # the 10th tick, then a few instructions


def test_vm_clock_reports_virtual_time() -> None:
    with SimHypervisor() as hv, hv.create_vm(clock=VirtualClock(ns_per_instruction=2)) as vm:
        assert vm.get_clock().clock == 0
        vm.set_clock(1_000)
        vcpu = boot(hv, vm, b"\x90" * 9 + b"\xf4", "real")  # nine nops, hlt
        vcpu.run()
        assert vm.get_clock().clock == 1_000 + 2 * 10
