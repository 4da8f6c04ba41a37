"""CPU features: what the supported CPUID lists, the guest can use, and the CPUID bits that follow the state.

- Every feature a backend lists executes in a guest (one instruction of each, at CPL3 where it
  may); the simulator lists exactly what its engine executes, so there a feature it does not
  list raises #UD (AVX, AVX2, FMA, F16C, AVX-512: QEMU 5.0 has no AVX; its one registered
  divergence, ``vex128_runs_as_sse``, is tested in ``tests/sim/test_cpu_rules.py``).
- KVM's runtime CPUID bits: CPUID.1:ECX.OSXSAVE follows CR4.OSXSAVE, CPUID.7.0:ECX.OSPKE CR4.PKE,
  CPUID.0xD.0:EBX the XSAVE size for XCR0 (``kvm_update_cpuid_runtime``); the supported CPUID
  lists OSXSAVE and OSPKE clear.
- A guest's MOV to CR4 sets each listed feature's bit; XSETBV enables only listed components.
- UMIP: SGDT, SIDT, SLDT, STR and SMSW raise #GP at CPL3 (the simulator emulates it, as KVM does
  where the processor lacks it).
- SMEP, SMAP and protection keys as the guest's page walk enforces them; PKRU in the XSAVE area;
  5-level paging.

Guests run in 64-bit mode with ``tests.test_exceptions``' IDT: a fault shows as the exits
``[OUT vector, HLT]``. At CPL0 the first 2 MiB are supervisor-only and mapped again, for user
access, at ``USER_ALIAS``. A feature a backend does not list is skipped there, with the reason.
KVM refuses CR4 bits and XCR0 components the vCPU's CPUID lacks; hosts that do not are the
registered deviations ``cr4_cpuid_unchecked`` and ``xcr0_cpuid_unchecked``.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass, replace

import pytest

from hvcore import VCPU, VM, CpuidEntry, HltExit, Hypervisor, InvalidArgument, IoExit, x86
from hvcore.host import UPSTREAM
from hvcore.host.probes import features as features_probe
from tests.boot import read_guest, run_exits, write_guest
from tests.guests import layout
from tests.quirks import host_variant, is_simulator
from tests.test_exceptions import delivered, long_mode_guest

UD, GP, PF = 6, 13, 14
CR4_OSFXSR, CR4_UMIP, CR4_LA57, CR4_VMXE, CR4_FSGSBASE = 1 << 9, 1 << 11, 1 << 12, 1 << 13, 1 << 16
CR4_PCIDE, CR4_OSXSAVE, CR4_SMEP, CR4_SMAP, CR4_PKE = 1 << 17, 1 << 18, 1 << 20, 1 << 21, 1 << 22
XCR0_X87, XCR0_SSE, XCR0_AVX, XCR0_AVX512, XCR0_PKRU = 1, 2, 4, 0xE0, 1 << 9
DATA = layout.DATA + 0x8000  # scratch for memory operands (16-byte aligned); the IDT and TSS lie below it
_ABS = b"\x04\x25" + DATA.to_bytes(4, "little")  # ModRM reg=0 rm=SIB, SIB: disp32 only -> [DATA]
PORT = 0x10
DONE = 0x11
"""The port a CPL0 guest writes once its code ran; a HLT follows."""
FINISH = 0x40000000
"""An unmapped address a CPL3 guest reads once its code ran: the #PF says so (hosts differ on IOPL at CPL3)."""


def _abs(reg: int) -> bytes:
    """ModRM + SIB + disp32 for ``[DATA]`` with ``reg`` in ModRM.reg."""
    return bytes([0x04 | reg << 3]) + _ABS[1:]


@dataclass(frozen=True)
class Feature:
    """A CPUID feature bit and one instruction that needs it."""

    name: str
    leaf: int
    subleaf: int
    register: str
    bit: int
    code: bytes
    cr4: int = 0
    xcr0: int = 0
    user: bool = True
    """Run at CPL3 (hosts that emulate CPL0 code may lack some instructions there)."""


# One instruction each; `cr4` and `xcr0` are what must be enabled for it to run at all.
FEATURES = [
    Feature("sse3", 1, 0, "ecx", 0, b"\xf2\x0f\x7c\xc1"),  # haddps xmm0, xmm1
    Feature("pclmulqdq", 1, 0, "ecx", 1, b"\x66\x0f\x3a\x44\xc1\x00"),  # pclmulqdq xmm0, xmm1, 0
    Feature("ssse3", 1, 0, "ecx", 9, b"\x66\x0f\x38\x00\xc1"),  # pshufb xmm0, xmm1
    Feature("fma", 1, 0, "ecx", 12, b"\xc4\xe2\x71\x98\xc2", CR4_OSXSAVE, XCR0_AVX),  # vfmadd132ps xmm0, xmm1, xmm2
    Feature("cx16", 1, 0, "ecx", 13, b"\x48\x0f\xc7" + _abs(1)),  # cmpxchg16b [DATA]
    Feature("sse4_1", 1, 0, "ecx", 19, b"\x66\x0f\x38\x39\xc1"),  # pminsd xmm0, xmm1
    Feature("sse4_2", 1, 0, "ecx", 20, b"\x66\x0f\x38\x37\xc1"),  # pcmpgtq xmm0, xmm1
    Feature("movbe", 1, 0, "ecx", 22, b"\x0f\x38\xf0" + _abs(0)),  # movbe eax, [DATA]
    Feature("popcnt", 1, 0, "ecx", 23, b"\xf3\x0f\xb8\xc1"),  # popcnt eax, ecx
    Feature("aes", 1, 0, "ecx", 25, b"\x66\x0f\x38\xdc\xc1"),  # aesenc xmm0, xmm1
    Feature("xsave", 1, 0, "ecx", 26, b"\x31\xc9\x0f\x01\xd0", CR4_OSXSAVE),  # xor ecx, ecx; xgetbv
    Feature("avx", 1, 0, "ecx", 28, b"\xc5\xfc\x57\xc0", CR4_OSXSAVE, XCR0_AVX),  # vxorps ymm0, ymm0, ymm0
    Feature("f16c", 1, 0, "ecx", 29, b"\xc4\xe2\x79\x13\xc1", CR4_OSXSAVE, XCR0_AVX),  # vcvtph2ps xmm0, xmm1
    Feature("rdrand", 1, 0, "ecx", 30, b"\x0f\xc7\xf0"),  # rdrand eax
    Feature("fsgsbase", 7, 0, "ebx", 0, b"\xf3\x48\x0f\xae\xc0", CR4_FSGSBASE),  # rdfsbase rax
    Feature("bmi1", 7, 0, "ebx", 3, b"\xc4\xe2\x70\xf2\xc2"),  # andn eax, ecx, edx
    Feature("avx2", 7, 0, "ebx", 5, b"\xc5\xfd\xfe\xc0", CR4_OSXSAVE, XCR0_AVX),  # vpaddd ymm0, ymm0, ymm0
    Feature("bmi2", 7, 0, "ebx", 8, b"\xc4\xe2\x73\xf5\xc2"),  # pdep eax, ecx, edx
    Feature(
        "avx512f", 7, 0, "ebx", 16, b"\x62\xf1\x7d\x48\xef\xc0", CR4_OSXSAVE, XCR0_AVX | XCR0_AVX512
    ),  # vpxord zmm0, zmm0, zmm0
    Feature("adx", 7, 0, "ebx", 19, b"\x66\x0f\x38\xf6\xc1"),  # adcx eax, ecx
    Feature("smap", 7, 0, "ebx", 20, b"\x0f\x01\xcb\x0f\x01\xca", user=False),  # stac; clac
    Feature("clflushopt", 7, 0, "ebx", 23, b"\x66\x0f\xae" + _abs(7)),  # clflushopt [DATA]
    Feature("clwb", 7, 0, "ebx", 24, b"\x66\x0f\xae" + _abs(6)),  # clwb [DATA]
    Feature("pku", 7, 0, "ecx", 3, b"\x31\xc9\x0f\x01\xee", CR4_PKE),  # xor ecx, ecx; rdpkru
    Feature("lahf_lm", 0x80000001, 0, "ecx", 0, b"\x9f"),  # lahf (64-bit mode)
    Feature("abm", 0x80000001, 0, "ecx", 5, b"\xf3\x0f\xbd\xc1"),  # lzcnt eax, ecx
    Feature("sse4a", 0x80000001, 0, "ecx", 6, b"\x66\x0f\x79\xc1"),  # extrq xmm0, xmm1 (AMD)
    Feature("prefetchw", 0x80000001, 0, "ecx", 8, b"\x0f\x0d" + _abs(1)),  # prefetchw [DATA]
    Feature("rdtscp", 0x80000001, 0, "edx", 27, b"\x0f\x01\xf9"),  # rdtscp
]


def listed(
    entries: tuple[CpuidEntry, ...] | list[CpuidEntry], leaf: int, subleaf: int, register: str, bit: int
) -> bool:
    """Whether CPUID (leaf, subleaf) lists ``bit`` of ``register`` in ``entries``."""
    entry = next((e for e in entries if e.function == leaf and e.index == subleaf), None)
    return entry is not None and bool(getattr(entry, register) >> bit & 1)


def xcr0_listed(entries: tuple[CpuidEntry, ...] | list[CpuidEntry]) -> int:
    """The XSAVE components CPUID leaf 0xD lists."""
    entry = next((e for e in entries if e.function == 0xD and e.index == 0), None)
    return 0 if entry is None else entry.eax | entry.edx << 32


def guest(
    hv: Hypervisor,
    vm: VM,
    code: bytes,
    *,
    cr4: int = 0,
    user: bool = False,
    cpuid: list[CpuidEntry] | None = None,
    **regs: int,
) -> VCPU:
    """``code``, its end (``out DONE, al``, or a read of FINISH at CPL3) and HLT in 64-bit mode, ``cr4`` bits added.

    The vCPU has the supported CPUID, or ``cpuid``.

    KVM takes a vCPU's CPUID only before its first run, so a test that needs another makes its guest with it.
    """
    end = b"\x8a\x04\x25" + FINISH.to_bytes(4, "little") if user else b"\xe6" + bytes([DONE])  # mov al, [FINISH]
    vcpu = long_mode_guest(hv, vm, code + end + b"\xf4", user=user)  # ...; hlt
    if not user:
        split_user_alias(vm)
    if cpuid is not None:
        vcpu.set_cpuid(cpuid)
    sregs = vcpu.get_sregs()
    vcpu.set_sregs(replace(sregs, cr4=sregs.cr4 | CR4_OSFXSR | cr4))
    if regs:
        vcpu.set_regs(replace(vcpu.get_regs(), **regs))
    return vcpu


USER_ALIAS = 0x200000
"""A second mapping of the first 2 MiB, user-accessible; at CPL0 the first is supervisor-only."""


def split_user_alias(vm: VM, pkey: int = 0) -> None:
    """PD[0] (0-2 MiB) supervisor-only, PD[1] the same memory as a user page with protection key ``pkey``."""
    flags = 0x83  # present, writable, 2 MiB
    write_guest(vm, layout.PD, struct.pack("<QQ", flags, flags | 0x4 | pkey << 59))


def outcome(vcpu: VCPU) -> int | None:
    """The vector of the fault the guest took, or None if its code ran to its end."""
    exits = run_exits(vcpu)
    first = exits[0]
    assert isinstance(first, IoExit), exits
    if first.port == DONE:
        return None
    assert exits == delivered(first.data[0]), exits
    if first.data[0] == PF and vcpu.get_sregs().cr2 == FINISH:
        return None
    return first.data[0]


@pytest.mark.parametrize("feature", FEATURES, ids=lambda f: f.name)
def test_a_listed_feature_executes(hv: Hypervisor, vm: VM, feature: Feature) -> None:
    supported = hv.supported_cpuid()
    has = listed(supported, feature.leaf, feature.subleaf, feature.register, feature.bit)
    xcr0_ok = feature.xcr0 & ~xcr0_listed(supported) == 0
    if not (has and xcr0_ok) and not is_simulator(hv):
        pytest.skip(f"{hv.name}'s supported CPUID does not list {feature.name}; the host may still execute it")
    runs = has and xcr0_ok
    vcpu = guest(hv, vm, feature.code, cr4=feature.cr4 if runs else 0, user=feature.user)
    if runs and feature.xcr0:
        vcpu.set_xcrs({0: XCR0_X87 | XCR0_SSE | feature.xcr0})
    vector = outcome(vcpu)
    # the simulator lists exactly what its engine executes
    assert vector == (None if runs else UD), f"{feature.name}: listed={has}, vector={vector}"


# --- the supported CPUID's dynamic bits, and the runtime ones -------------------------------------------

# cpuid; out PORT, eax; mov eax, ebx; out; mov eax, ecx; out; mov eax, edx; out
CPUID_REPORT = b"\x0f\xa2\xe7\x10\x89\xd8\xe7\x10\x89\xc8\xe7\x10\x89\xd0\xe7\x10"


def guest_cpuid(vcpu: VCPU, leaf: int, subleaf: int = 0) -> tuple[int, ...]:
    """Run ``CPUID_REPORT`` once more from its start: what the guest's CPUID (leaf, subleaf) returns now."""
    vcpu.set_regs(replace(vcpu.get_regs(), rip=layout.CODE, rax=leaf, rcx=subleaf))
    exits = run_exits(vcpu)
    values = tuple(int.from_bytes(e.data, "little") for e in exits if isinstance(e, IoExit) and e.port == PORT)
    assert exits[-1] == HltExit() and len(values) == 4, exits
    return values


def test_the_supported_cpuid_lists_osxsave_and_ospke_clear(hv: Hypervisor) -> None:
    supported = hv.supported_cpuid()
    assert not listed(supported, 1, 0, "ecx", 27)  # OSXSAVE
    assert not listed(supported, 7, 0, "ecx", 4)  # OSPKE


def test_osxsave_and_xsave_size_follow_cr4_and_xcr0(hv: Hypervisor, vm: VM) -> None:
    if not listed(hv.supported_cpuid(), 1, 0, "ecx", 26):
        pytest.skip(f"{hv.name} lists no XSAVE")
    vcpu = guest(hv, vm, CPUID_REPORT)
    assert not guest_cpuid(vcpu, 1)[2] >> 27 & 1
    sregs = vcpu.get_sregs()
    vcpu.set_sregs(replace(sregs, cr4=sregs.cr4 | CR4_OSXSAVE))
    assert guest_cpuid(vcpu, 1)[2] >> 27 & 1
    assert listed(vcpu.get_cpuid(), 1, 0, "ecx", 27)  # KVM rewrites the vCPU's entries
    assert guest_cpuid(vcpu, 0xD)[1] == 576  # XCR0 = x87: the legacy region and the header
    vcpu.set_xcrs({0: XCR0_X87 | XCR0_SSE})
    assert guest_cpuid(vcpu, 0xD)[1] == 576
    extra = xcr0_listed(hv.supported_cpuid()) & (XCR0_AVX | XCR0_PKRU)
    if extra:
        top = max(extra.bit_length() - 1, 2)
        component = next(e for e in hv.supported_cpuid() if e.function == 0xD and e.index == top)
        vcpu.set_xcrs({0: XCR0_X87 | XCR0_SSE | extra})
        assert guest_cpuid(vcpu, 0xD)[1] == component.ebx + component.eax  # offset + size of the last one
    vcpu.set_sregs(replace(sregs, cr4=sregs.cr4 & ~CR4_OSXSAVE))
    assert not guest_cpuid(vcpu, 1)[2] >> 27 & 1


def test_ospke_follows_cr4_pke(hv: Hypervisor, vm: VM) -> None:
    if not listed(hv.supported_cpuid(), 7, 0, "ecx", 3):
        pytest.skip(f"{hv.name}'s supported CPUID has no PKU (the host lacks protection keys)")
    # mov cr4, rax; mov eax, 7; xor ecx, ecx; then the CPUID report: the guest's own MOV sets PKE
    vcpu = guest(hv, vm, b"\x0f\x22\xe0\xb8\x07\x00\x00\x00\x31\xc9" + CPUID_REPORT)
    assert not listed(vcpu.get_cpuid(), 7, 0, "ecx", 4)
    vcpu.set_regs(replace(vcpu.get_regs(), rax=vcpu.get_sregs().cr4 | CR4_PKE))
    exits = run_exits(vcpu)
    assert exits[-1] == HltExit() and len(exits) == 6, exits
    ecx = exits[2]
    assert isinstance(ecx, IoExit) and int.from_bytes(ecx.data, "little") >> 4 & 1  # OSPKE
    assert listed(vcpu.get_cpuid(), 7, 0, "ecx", 4)


# --- MOV to CR4, XSETBV and set_xcrs follow the vCPU's CPUID -------------------------------------------

CR4_FEATURES = [
    ("osxsave", CR4_OSXSAVE, 1, "ecx", 26),
    ("smep", CR4_SMEP, 7, "ebx", 7),
    ("smap", CR4_SMAP, 7, "ebx", 20),
    ("fsgsbase", CR4_FSGSBASE, 7, "ebx", 0),
    ("pke", CR4_PKE, 7, "ecx", 3),
    ("umip", CR4_UMIP, 7, "ecx", 2),
    ("vmxe", CR4_VMXE, 1, "ecx", 5),
    ("pcide", CR4_PCIDE, 1, "ecx", 17),
]


def without(entries: tuple[CpuidEntry, ...], leaf: int, register: str, bit: int) -> list[CpuidEntry]:
    """``entries`` with ``bit`` of ``register`` in leaf (``leaf``, 0) cleared."""
    return [
        dataclasses.replace(e, **{register: getattr(e, register) & ~(1 << bit)})
        if e.function == leaf and e.index == 0
        else e
        for e in entries
    ]


@pytest.mark.parametrize(("name", "cr4_bit", "leaf", "register", "bit"), CR4_FEATURES, ids=[f[0] for f in CR4_FEATURES])
def test_mov_to_cr4_sets_a_listed_feature(
    hv: Hypervisor, vm: VM, name: str, cr4_bit: int, leaf: int, register: str, bit: int
) -> None:
    if not listed(hv.supported_cpuid(), leaf, 0, register, bit):
        pytest.skip(f"{hv.name}'s supported CPUID does not list {name}")
    vcpu = guest(hv, vm, b"\x0f\x22\xe0")  # mov cr4, rax
    cr4 = vcpu.get_sregs().cr4
    vcpu.set_regs(replace(vcpu.get_regs(), rax=cr4 | cr4_bit))
    assert outcome(vcpu) is None
    assert vcpu.get_sregs().cr4 == cr4 | cr4_bit


def cr4_cpuid_checked(hv: Hypervisor, name: str) -> bool:
    """Whether ``hv`` refuses CR4 bit ``name`` when the vCPU's CPUID lacks its feature (upstream; not on
    hosts with the ``cr4_cpuid_unchecked`` variant, for the bits its probe covers)."""
    covered = name.upper() in {n for n, *_ in features_probe.CR4_FEATURES}
    return not covered or host_variant(hv, "cr4_cpuid_unchecked") == UPSTREAM


@pytest.mark.parametrize(("name", "cr4_bit", "leaf", "register", "bit"), CR4_FEATURES, ids=[f[0] for f in CR4_FEATURES])
def test_mov_to_cr4_needs_the_feature_in_the_vcpu_cpuid(
    hv: Hypervisor, vm: VM, name: str, cr4_bit: int, leaf: int, register: str, bit: int
) -> None:
    vcpu = guest(hv, vm, b"\x0f\x22\xe0", cpuid=without(hv.supported_cpuid(), leaf, register, bit))  # mov cr4, rax
    cr4 = vcpu.get_sregs().cr4
    checked = cr4_cpuid_checked(hv, name)
    if checked:
        with pytest.raises(InvalidArgument):  # KVM_SET_SREGS: EINVAL
            vcpu.set_sregs(replace(vcpu.get_sregs(), cr4=cr4 | cr4_bit))
    vcpu.set_regs(replace(vcpu.get_regs(), rax=cr4 | cr4_bit))
    assert outcome(vcpu) == (GP if checked else None)
    assert vcpu.get_sregs().cr4 == (cr4 if checked else cr4 | cr4_bit)


def test_mov_to_cr4_keeps_pae_and_la57_in_long_mode(hv: Hypervisor, vm: VM) -> None:
    vcpu = guest(hv, vm, b"\x0f\x22\xe0")  # mov cr4, rax
    cr4 = vcpu.get_sregs().cr4
    for value in (cr4 & ~x86.CR4_PAE, cr4 ^ CR4_LA57):
        vcpu.set_regs(replace(vcpu.get_regs(), rip=layout.CODE, rsp=layout.STACK_TOP, rax=value))
        assert outcome(vcpu) == GP, hex(value)
        assert vcpu.get_sregs().cr4 == cr4


# xsetbv (ECX = 0, EDX:EAX from the registers)
XSETBV = b"\x0f\x01\xd1"


def test_xsetbv_enables_only_what_the_vcpu_cpuid_lists(hv: Hypervisor, vm: VM) -> None:
    supported = hv.supported_cpuid()
    if not listed(supported, 1, 0, "ecx", 26):
        pytest.skip(f"{hv.name} lists no XSAVE")
    vcpu = guest(hv, vm, XSETBV, cr4=CR4_OSXSAVE, rcx=0, rdx=0)
    for component in (XCR0_AVX, XCR0_PKRU, 1 << 3):  # AVX, PKRU, MPX's BNDREGS (alone: #GP everywhere)
        vcpu.set_regs(replace(vcpu.get_regs(), rip=layout.CODE, rax=XCR0_X87 | XCR0_SSE | component))
        expected = None if xcr0_listed(supported) & component and component != 1 << 3 else GP
        assert outcome(vcpu) == expected, hex(component)


def test_xsetbv_follows_a_narrower_leaf_0xd(hv: Hypervisor, vm: VM) -> None:
    narrow = [
        dataclasses.replace(e, eax=XCR0_X87, edx=0) if e.function == 0xD and e.index == 0 else e
        for e in hv.supported_cpuid()
    ]
    vcpu = guest(hv, vm, XSETBV, cr4=CR4_OSXSAVE, cpuid=narrow, rax=XCR0_X87 | XCR0_SSE, rcx=0, rdx=0)
    if host_variant(hv, "xcr0_cpuid_unchecked") == "accepted":
        assert outcome(vcpu) is None
        assert vcpu.get_xcrs() == {0: XCR0_X87 | XCR0_SSE}
        return
    assert outcome(vcpu) == GP  # leaf 0xD lists x87 only: SSE state cannot be enabled
    assert vcpu.get_xcrs() == {0: XCR0_X87}
    vcpu.set_regs(replace(vcpu.get_regs(), rip=layout.CODE, rsp=layout.STACK_TOP, rax=XCR0_X87))
    assert outcome(vcpu) is None


def test_set_xcrs_follows_the_vcpu_cpuid(hv: Hypervisor, vm: VM) -> None:
    supported = hv.supported_cpuid()
    vcpu = guest(hv, vm, b"", cpuid=[e for e in supported if e.function != 0xD])  # no leaf 0xD: x87 only
    vcpu.set_xcrs({0: XCR0_X87})
    for value in (XCR0_SSE, XCR0_X87 | XCR0_AVX, XCR0_X87 | 1 << 40):
        with pytest.raises(InvalidArgument):
            vcpu.set_xcrs({0: value})
    vcpu.set_xcrs({1: 0x3, 0: XCR0_X87})  # KVM_SET_XCRS applies XCR0 and ignores the rest
    assert vcpu.get_xcrs() == {0: XCR0_X87}
    if host_variant(hv, "xcr0_cpuid_unchecked") == "accepted":
        vcpu.set_xcrs({0: XCR0_X87 | XCR0_SSE})
        assert vcpu.get_xcrs() == {0: XCR0_X87 | XCR0_SSE}
    else:
        with pytest.raises(InvalidArgument):
            vcpu.set_xcrs({0: XCR0_X87 | XCR0_SSE})
        assert vcpu.get_xcrs() == {0: XCR0_X87}


UMIP_INSTRUCTIONS = {
    "sgdt": b"\x0f\x01" + _abs(0),  # sgdt [DATA]
    "sidt": b"\x0f\x01" + _abs(1),  # sidt [DATA]
    "sldt": b"\x0f\x00\xc0",  # sldt eax
    "str": b"\x0f\x00\xc8",  # str eax
    "smsw": b"\x0f\x01\xe0",  # smsw eax
}


@pytest.mark.parametrize("umip", [False, True], ids=["umip0", "umip1"])
@pytest.mark.parametrize("name", UMIP_INSTRUCTIONS)
def test_umip_keeps_descriptor_tables_from_cpl3(hv: Hypervisor, vm: VM, name: str, umip: bool) -> None:
    if not listed(hv.supported_cpuid(), 7, 0, "ecx", 2):
        pytest.skip(f"{hv.name}'s supported CPUID has no UMIP")
    vcpu = guest(hv, vm, UMIP_INSTRUCTIONS[name], cr4=CR4_UMIP if umip else 0, user=True)
    assert outcome(vcpu) == (GP if umip else None)


# --- SMEP, SMAP and protection keys in the guest's page walk ---------------------------------------------


def test_smap_faults_supervisor_reads_of_user_pages(hv: Hypervisor, vm: VM) -> None:
    if not listed(hv.supported_cpuid(), 7, 0, "ebx", 20):
        pytest.skip(f"{hv.name}'s supported CPUID has no SMAP")
    # mov eax, [USER_ALIAS + DATA]; stac; mov eax, [USER_ALIAS + DATA]  (AC=0: #PF; AC=1: allowed)
    load = b"\x8b" + _abs(0)[:2] + (USER_ALIAS + DATA).to_bytes(4, "little")
    vcpu = guest(hv, vm, load, cr4=CR4_SMAP)
    split_user_alias(vm)
    write_guest(vm, DATA, b"\x78\x56\x34\x12")
    assert outcome(vcpu) == PF
    assert vcpu.get_sregs().cr2 == USER_ALIAS + DATA
    write_guest(vm, layout.CODE, b"\x0f\x01\xcb" + load + b"\xe6\x11\xf4")  # stac; the load; out DONE; hlt
    vcpu.set_regs(replace(vcpu.get_regs(), rip=layout.CODE, rsp=layout.STACK_TOP))
    assert outcome(vcpu) is None
    assert vcpu.get_regs().rax & 0xFFFFFFFF == 0x12345678


def test_smep_faults_supervisor_fetches_from_user_pages(hv: Hypervisor, vm: VM) -> None:
    if not listed(hv.supported_cpuid(), 7, 0, "ebx", 7):
        pytest.skip(f"{hv.name}'s supported CPUID has no SMEP")
    # jmp to the user alias of the HLT that follows the jump
    target = USER_ALIAS + layout.CODE + 5
    jump = b"\xe9" + (target - (layout.CODE + 5)).to_bytes(4, "little", signed=True)
    vcpu = guest(hv, vm, jump, cr4=CR4_SMEP)
    split_user_alias(vm)
    assert outcome(vcpu) == PF
    assert vcpu.get_sregs().cr2 == target
    sregs = vcpu.get_sregs()
    vcpu.set_sregs(replace(sregs, cr4=sregs.cr4 & ~CR4_SMEP))
    vcpu.set_regs(replace(vcpu.get_regs(), rip=layout.CODE, rsp=layout.STACK_TOP))
    assert outcome(vcpu) is None  # without SMEP the code at the user alias runs


def test_protection_keys_fault_accesses_the_key_forbids(hv: Hypervisor, vm: VM) -> None:
    if not listed(hv.supported_cpuid(), 7, 0, "ecx", 3):
        pytest.skip(f"{hv.name}'s supported CPUID has no PKU (the host lacks protection keys)")
    # xor ecx, ecx; xor edx, edx; mov eax, esi; wrpkru; mov eax, [USER_ALIAS + DATA]
    load = b"\x8b" + _abs(0)[:2] + (USER_ALIAS + DATA).to_bytes(4, "little")
    code = b"\x31\xc9\x31\xd2\x89\xf0\x0f\x01\xef" + load
    key = 1
    vcpu = guest(hv, vm, code, cr4=CR4_PKE, rsi=1 << (2 * key))  # PKRU: access-disable key 1
    split_user_alias(vm, pkey=key)
    assert outcome(vcpu) == PF
    assert vcpu.get_sregs().cr2 == USER_ALIAS + DATA
    assert read_guest(vm, layout.STACK_TOP - 48, 8) == (1 << 5 | 1).to_bytes(8, "little")  # error code: PK, P
    vcpu.set_regs(replace(vcpu.get_regs(), rip=layout.CODE, rsp=layout.STACK_TOP, rsi=1 << (2 * key + 1)))
    assert outcome(vcpu) is None  # write-disable only: reads pass


def test_pkru_is_in_the_xsave_area(hv: Hypervisor, vm: VM) -> None:
    if not listed(hv.supported_cpuid(), 7, 0, "ecx", 3):
        pytest.skip(f"{hv.name}'s supported CPUID has no PKU (the host lacks protection keys)")
    # xor ecx, ecx; xor edx, edx; mov eax, esi; wrpkru; rdpkru
    vcpu = guest(hv, vm, b"\x31\xc9\x31\xd2\x89\xf0\x0f\x01\xef\x0f\x01\xee", cr4=CR4_PKE, rsi=0x0C)
    assert outcome(vcpu) is None
    region = vcpu.get_xsave().region
    xstate_bv = struct.unpack_from("<Q", region, 512)[0]
    assert xstate_bv & XCR0_PKRU and struct.unpack_from("<I", region, 0xA80)[0] == 0x0C
    changed = bytearray(region)
    struct.pack_into("<I", changed, 0xA80, 0x30)
    vcpu.set_xsave(dataclasses.replace(vcpu.get_xsave(), region=bytes(changed)))
    write_guest(vm, layout.CODE, b"\x31\xc9\x0f\x01\xee\xe6\x11\xf4")  # xor ecx, ecx; rdpkru; out DONE; hlt
    vcpu.set_regs(replace(vcpu.get_regs(), rip=layout.CODE))
    assert outcome(vcpu) is None
    assert vcpu.get_regs().rax & 0xFFFFFFFF == 0x30


# --- 5-level paging -----------------------------------------------------------------------------------------

PML5 = layout.DATA + 0x6000


def test_five_level_paging(hv: Hypervisor, vm: VM) -> None:
    if not listed(hv.supported_cpuid(), 7, 0, "ecx", 16):
        pytest.skip(f"{hv.name}'s supported CPUID has no LA57 (the host lacks 5-level paging)")
    load = b"\x8b" + _abs(0)  # mov eax, [DATA]
    vcpu = guest(hv, vm, load)
    write_guest(vm, PML5, (layout.PML4 | 0x7).to_bytes(8, "little") + bytes(4088))
    write_guest(vm, DATA, b"\x21\x43\x65\x87")
    sregs = vcpu.get_sregs()
    vcpu.set_sregs(replace(sregs, cr3=PML5, cr4=sregs.cr4 | CR4_LA57))
    assert outcome(vcpu) is None
    assert vcpu.get_regs().rax & 0xFFFFFFFF == 0x87654321
    assert vcpu.translate(DATA).physical_address == DATA
