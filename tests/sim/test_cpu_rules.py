"""KVM's rules that follow the vCPU's CPUID, on the simulator; and what its engine does and does not execute.

Upstream KVM refuses a guest's MOV to CR4 that sets a bit whose feature the vCPU's CPUID lacks, or
clears PAE or changes LA57 in long mode (``kvm_set_cr4``: #GP); ``KVM_SET_SREGS`` with such a CR4
(EINVAL); and XCR0 values outside the vCPU's CPUID leaf 0xD, from the guest's XSETBV (#GP) and
from ``KVM_SET_XCRS`` (EINVAL) (``__kvm_set_xcr``). This project's host (nested kvm_pvm, which
emulates CPL0 code) accepts all of these, so they are asserted here, on the simulator, which
follows upstream (``hvcore_sim.cpufeatures``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import replace

import pytest

from hvcore import VM, Hypervisor, InvalidArgument, x86
from hvcore_sim import cpumodel
from hvcore_sim.system import SimHypervisor
from tests.guests import layout
from tests.quirks import vex128_runs_as_sse
from tests.test_cpu_features import (
    CR4_FEATURES,
    CR4_LA57,
    CR4_OSXSAVE,
    FEATURES,
    GP,
    UD,
    XCR0_AVX,
    XCR0_PKRU,
    XCR0_SSE,
    XCR0_X87,
    XSETBV,
    guest,
    listed,
    outcome,
    without,
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
    assert cpumodel.can_limit_xcr0()  # XSETBV is held to the vCPU's CPUID (it needs /proc/self/mem)


def test_a_vex128_form_runs_as_sse(sim: Hypervisor, vm: VM) -> None:
    """QEMU 5.0 runs vxorps xmm0, xmm0, xmm0 as xorps; hardware without AVX enabled raises #UD."""
    assert vex128_runs_as_sse(sim)
    assert outcome(guest(sim, vm, b"\xc5\xf8\x57\xc0", user=True)) is None


def test_a_vex256_form_raises_ud(sim: Hypervisor, vm: VM) -> None:
    assert outcome(guest(sim, vm, b"\xc5\xfc\x57\xc0", user=True)) == UD  # vxorps ymm0, ymm0, ymm0


@pytest.mark.parametrize(("name", "cr4_bit", "leaf", "register", "bit"), CR4_FEATURES, ids=[f[0] for f in CR4_FEATURES])
def test_mov_to_cr4_needs_the_feature_in_the_vcpu_cpuid(
    sim: Hypervisor, vm: VM, name: str, cr4_bit: int, leaf: int, register: str, bit: int
) -> None:
    vcpu = guest(sim, vm, b"\x0f\x22\xe0", cpuid=without(sim.supported_cpuid(), leaf, register, bit))  # mov cr4, rax
    cr4 = vcpu.get_sregs().cr4
    vcpu.set_regs(replace(vcpu.get_regs(), rax=cr4 | cr4_bit))
    assert outcome(vcpu) == GP
    assert vcpu.get_sregs().cr4 == cr4
    with pytest.raises(InvalidArgument, match="reserved for this vCPU's CPUID"):  # KVM_SET_SREGS: EINVAL
        vcpu.set_sregs(replace(vcpu.get_sregs(), cr4=cr4 | cr4_bit))


def test_mov_to_cr4_keeps_pae_and_la57_in_long_mode(sim: Hypervisor, vm: VM) -> None:
    vcpu = guest(sim, vm, b"\x0f\x22\xe0")  # mov cr4, rax
    cr4 = vcpu.get_sregs().cr4
    for value in (cr4 & ~x86.CR4_PAE, cr4 ^ CR4_LA57, cr4 | 1 << 32):
        vcpu.set_regs(replace(vcpu.get_regs(), rip=layout.CODE, rsp=layout.STACK_TOP, rax=value))
        assert outcome(vcpu) == GP, hex(value)
        assert vcpu.get_sregs().cr4 == cr4


def test_xsetbv_follows_a_narrower_leaf_0xd(sim: Hypervisor, vm: VM) -> None:
    narrow = [
        dataclasses.replace(e, eax=XCR0_X87, edx=0) if e.function == 0xD and e.index == 0 else e
        for e in sim.supported_cpuid()
    ]
    vcpu = guest(sim, vm, XSETBV, cr4=CR4_OSXSAVE, cpuid=narrow, rax=XCR0_X87 | XCR0_SSE, rcx=0, rdx=0)
    assert outcome(vcpu) == GP  # leaf 0xD lists x87 only: SSE state cannot be enabled
    assert vcpu.get_xcrs() == {0: XCR0_X87}
    vcpu.set_regs(replace(vcpu.get_regs(), rip=layout.CODE, rsp=layout.STACK_TOP, rax=XCR0_X87))
    assert outcome(vcpu) is None


def test_set_xcrs_follows_the_vcpu_cpuid(sim: Hypervisor, vm: VM) -> None:
    supported = sim.supported_cpuid()
    vcpu = guest(sim, vm, b"")
    vcpu.set_xcrs({0: XCR0_X87 | XCR0_SSE | XCR0_PKRU})
    assert vcpu.get_xcrs() == {0: XCR0_X87 | XCR0_SSE | XCR0_PKRU}
    for value in (XCR0_SSE, XCR0_X87 | XCR0_AVX, XCR0_X87 | XCR0_SSE | XCR0_AVX, XCR0_X87 | 1 << 40):
        with pytest.raises(InvalidArgument, match="XCR0"):
            vcpu.set_xcrs({0: value})
    with pytest.raises(InvalidArgument, match="XCR1 does not exist"):
        vcpu.set_xcrs({1: 1})
    assert vcpu.get_xcrs() == {0: XCR0_X87 | XCR0_SSE | XCR0_PKRU}
    vcpu.set_cpuid([e for e in supported if e.function != 0xD])  # no leaf 0xD: x87 only
    with pytest.raises(InvalidArgument, match="does not list"):
        vcpu.set_xcrs({0: XCR0_X87 | XCR0_SSE})
