"""What the simulator's engine executes, and lists: exactly the features it runs (and one registered divergence)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from hvcore import VM, Hypervisor
from hvcore_sim import cpumodel
from hvcore_sim.system import SimHypervisor
from tests.quirks import vex128_runs_as_sse
from tests.test_cpu_features import (
    FEATURES,
    GP,
    UD,
    XCR0_PKRU,
    XCR0_SSE,
    XCR0_X87,
    guest,
    listed,
    outcome,
    xcr0_listed,
)


@pytest.fixture
def sim() -> Iterator[Hypervisor]:
    with SimHypervisor() as hypervisor:
        yield hypervisor


@pytest.fixture
def vm(sim: Hypervisor) -> Iterator[VM]:
    with sim.create_vm() as machine:
        yield machine


def test_the_simulator_lists_what_its_engine_executes(sim: Hypervisor) -> None:
    supported = sim.supported_cpuid()
    for feature in FEATURES:
        expected = feature.name not in {"avx", "fma", "f16c", "avx2", "avx512f"}
        assert listed(supported, feature.leaf, feature.subleaf, feature.register, feature.bit) is expected, feature
    assert xcr0_listed(supported) == XCR0_X87 | XCR0_SSE | XCR0_PKRU
    assert listed(supported, 7, 0, "ebx", 7)  # SMEP
    assert listed(supported, 7, 0, "ecx", 2)  # UMIP, emulated as KVM does
    assert listed(supported, 7, 0, "ecx", 16)  # LA57
    assert listed(supported, 0x80000001, 0, "edx", 26)  # 1 GiB pages
    assert cpumodel.can_limit_xcr0()  # XSETBV is held to the vCPU's CPUID (it needs /proc/self/mem)


def test_a_vex128_form_runs_as_sse(sim: Hypervisor, vm: VM) -> None:
    """QEMU 5.0 runs vxorps xmm0, xmm0, xmm0 as xorps; hardware without AVX enabled raises #UD."""
    assert vex128_runs_as_sse(sim)
    assert outcome(guest(sim, vm, b"\xc5\xf8\x57\xc0", user=True)) is None


def test_a_vex256_form_raises_ud(sim: Hypervisor, vm: VM) -> None:
    assert outcome(guest(sim, vm, b"\xc5\xfc\x57\xc0", user=True)) == UD  # vxorps ymm0, ymm0, ymm0


def test_mov_to_cr4_with_bits_above_31_raises_gp(sim: Hypervisor, vm: VM) -> None:
    vcpu = guest(sim, vm, b"\x0f\x22\xe0")  # mov cr4, rax
    cr4 = vcpu.get_sregs().cr4
    vcpu.set_regs(replace(vcpu.get_regs(), rax=cr4 | 1 << 32))
    assert outcome(vcpu) == GP  # reserved upstream; this project's kvm_pvm host takes it
    assert vcpu.get_sregs().cr4 == cr4
