"""Simulator internals of kvmclock: KVM's time scale, the features it advertises, when TSCs are stable."""

from __future__ import annotations

import pytest

from hvcore_sim import cpuid, system
from hvcore_sim.clock import VirtualClock
from hvcore_sim.kvmclock import time_scale
from hvcore_sim.msrs import TSC_HZ
from hvcore_sim.system import SimHypervisor
from tests.test_kvmclock import (
    ENABLE,
    IA32_TSC,
    KVM_CPUID_FEATURES,
    SYSTEM_TIME_NEW,
    TIME_INFO,
    TSC_STABLE,
    leaf,
    time_info,
)
from tests.test_msrs import OK, Probe

pytestmark = pytest.mark.skipif(
    system._unicorn_problem() is not None, reason=f"simulator unusable: {system._unicorn_problem()}"
)


@pytest.fixture
def sim() -> SimHypervisor:
    return system.SimHypervisor()


@pytest.mark.parametrize(
    ("hz", "shift", "mul"),
    [
        (1_000_000_000, 1, 1 << 31),  # the simulator's TSC: one tick a nanosecond
        (2_500_000_000, -1, 3435973836),  # ticks halved, then 0.8 ns each
        (100_000_000, 4, 2684354560),  # ticks times 16, then 0.625 ns each
    ],
)
def test_time_scale_is_kvms(hz: int, shift: int, mul: int) -> None:
    assert time_scale(1_000_000_000, hz) == (shift, mul)
    ticks = 7 * hz  # seven seconds of ticks give seven seconds, to the nanosecond
    scaled = (ticks << shift if shift >= 0 else ticks >> -shift) * mul >> 32
    assert abs(scaled - 7_000_000_000) <= 7


def test_the_simulator_advertises_only_the_pv_features_it_implements(sim: SimHypervisor) -> None:
    assert leaf(sim, KVM_CPUID_FEATURES).eax == cpuid.PV_FEATURES == 1 << 0 | 1 << 1 | 1 << 3 | 1 << 24
    assert time_scale(1_000_000_000, TSC_HZ) == (1, 1 << 31)


def test_a_tsc_set_by_the_vmm_on_one_vcpu_ends_the_stable_bit(sim: SimHypervisor) -> None:
    """KVM's master clock needs every vCPU's TSC in step; a VMM write of IA32_TSC also refreshes every clock."""
    with sim.create_vm() as vm:
        probe = Probe(sim, vm)
        assert probe.write(SYSTEM_TIME_NEW, TIME_INFO | ENABLE) == OK
        first = time_info(vm)
        assert first.flags == TSC_STABLE
        other = vm.create_vcpu(1)
        other.set_msrs({IA32_TSC: 1 << 40})
        probe.rdtsc()
        info = time_info(vm)
        assert (info.version, info.flags) == (first.version + 2, 0)


def test_a_virtual_clock_gives_the_same_kvmclock_on_every_run(sim: SimHypervisor) -> None:
    seen = []
    for _ in range(2):
        with sim.create_vm(clock=VirtualClock(ns_per_instruction=3)) as vm:
            probe = Probe(sim, vm)
            assert probe.write(SYSTEM_TIME_NEW, TIME_INFO | ENABLE) == OK
            info = time_info(vm)
            seen.append((info, probe.rdtsc()))
    assert seen[0] == seen[1]
    info, tsc = seen[0]
    assert info.system_time == info.tsc_timestamp  # no TSC offset: the TSC is the VM clock
    assert info.nanoseconds(tsc) == tsc
