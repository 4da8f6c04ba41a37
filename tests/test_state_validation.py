"""State setters refuse what KVM would truncate and what KVM refuses, with the same typed error on every backend.

Two kinds of bad value, for every state setter of the vCPU and the VM:

- **Out of range** for the KVM struct member that carries it (``struct kvm_segment.selector`` is a
  ``__u16``): KVM would store a truncated value (selector 0x10000 as 0, exception 300 as 44).
  hvcore refuses it before any backend sees it, so the message is the same on both
  (:mod:`hvcore.state_checks`, whose table is checked here against ``hvcore_kvm.uapi``).
- **Refused by KVM** for its meaning (CR0.PG without PE, an injected exception with vector 99):
  KVM_SET_* fails with EINVAL; the simulator applies upstream KVM's rules
  (:mod:`hvcore_sim.validity`). Both raise :class:`hvcore.InvalidArgument` with errno EINVAL.

A refused call leaves the state as it was; the values a getter returns, and the largest values
that fit, are taken.
"""

from __future__ import annotations

import ctypes
import errno
import struct
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import pytest

from hvcore import (
    VCPU,
    VM,
    CpuidEntry,
    DescriptorTable,
    GuestDebug,
    GuestDebugFlags,
    Hypervisor,
    InvalidArgument,
    IrqchipId,
    Lapic,
    PicState,
    Xsave,
    x86,
)
from hvcore.host import UPSTREAM
from hvcore.state_checks import LAYOUTS, Int, Nested, Raw
from hvcore_kvm import uapi
from tests.boot import boot
from tests.guests import long_mode
from tests.quirks import host_variant

# --- the width table is the uapi layouts -------------------------------------------------------------------


def _ctypes_member(struct_class: type, path: str) -> tuple[typing.Any, int]:
    """The ctypes type of member ``path`` (dotted) of ``struct_class``, and its byte size."""
    cls: typing.Any = struct_class
    for part in path.split("."):
        cls = dict(cls._fields_)[part]
    return cls, ctypes.sizeof(cls)


@pytest.mark.parametrize("state_type", list(LAYOUTS), ids=lambda t: t.__name__)
def test_the_width_table_is_the_kvm_struct_layout(state_type: type) -> None:
    layout = LAYOUTS[state_type]
    struct_class = getattr(uapi, layout.struct)
    hints = typing.get_type_hints(state_type)
    assert set(layout.members) == {f.name for f in fields(state_type)}, "every field has its member"
    for name, member in layout.members.items():
        c_type, size = _ctypes_member(struct_class, member.c)
        count = member.count or 1
        if member.count:
            assert issubclass(c_type, ctypes.Array) and c_type._length_ == member.count, name
            c_type = c_type._type_
        if isinstance(member, Int):
            assert size == count * member.c_bits // 8, name
            assert (c_type(-1).value < 0) == member.signed, name
            assert 0 < member.width <= member.c_bits, name
        elif isinstance(member, Raw):
            assert size == count * member.size, name
        else:
            assert isinstance(member, Nested)
            (nested,) = {t for t in typing.get_args(hints[name]) if t is not Ellipsis} or {hints[name]}
            assert getattr(uapi, LAYOUTS[nested].struct) is c_type, name


# --- the cases ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    """A VM with every interrupt controller and one vCPU, in the reset state."""

    hv: Hypervisor
    vm: VM
    vcpu: VCPU


@pytest.fixture
def machine(hv: Hypervisor, vm: VM) -> Machine:
    vm.create_irqchip()
    vm.create_pit()
    return Machine(hv, vm, vm.create_vcpu(0))


Setter = Callable[[Machine], None]


def _sregs(**changes: object) -> Setter:
    return lambda m: m.vcpu.set_sregs(replace(m.vcpu.get_sregs(), **changes))  # type: ignore[arg-type]


def _segment(name: str, **changes: int) -> Setter:
    def call(m: Machine) -> None:
        sregs = m.vcpu.get_sregs()
        m.vcpu.set_sregs(replace(sregs, **{name: replace(getattr(sregs, name), **changes)}))

    return call


def _events(**changes: int) -> Setter:
    return lambda m: m.vcpu.set_vcpu_events(replace(m.vcpu.get_vcpu_events(), **changes))


def _debugregs(**changes: object) -> Setter:
    return lambda m: m.vcpu.set_debugregs(replace(m.vcpu.get_debugregs(), **changes))  # type: ignore[arg-type]


def _fpu(**changes: object) -> Setter:
    return lambda m: m.vcpu.set_fpu(replace(m.vcpu.get_fpu(), **changes))  # type: ignore[arg-type]


def _pic(**changes: int) -> Setter:
    def call(m: Machine) -> None:
        pic = m.vm.get_irqchip(IrqchipId.PIC_MASTER)
        assert isinstance(pic, PicState)
        m.vm.set_irqchip(IrqchipId.PIC_MASTER, replace(pic, **changes))

    return call


def _ioapic(**changes: object) -> Setter:
    def call(m: Machine) -> None:
        m.vm.set_irqchip(IrqchipId.IOAPIC, replace(m.vm.get_irqchip(IrqchipId.IOAPIC), **changes))  # type: ignore[arg-type]

    return call


def _pit_channel(index: int, **changes: int) -> Setter:
    def call(m: Machine) -> None:
        pit = m.vm.get_pit()
        channels = list(pit.channels)
        channels[index] = replace(channels[index], **changes)
        m.vm.set_pit(replace(pit, channels=(channels[0], channels[1], channels[2])))

    return call


def _xsave(*fields_: tuple[int, str, int]) -> Setter:
    """Set the vCPU's XSAVE area with each ``(offset, struct format, value)`` written into it."""

    def call(m: Machine) -> None:
        region = bytearray(m.vcpu.get_xsave().region)
        for offset, fmt, value in fields_:
            struct.pack_into(fmt, region, offset, value)
        m.vcpu.set_xsave(Xsave(bytes(region)))

    return call


_XSTATE_BV, _XCOMP_BV, _MXCSR = 512, 520, 24

OUT_OF_RANGE: dict[str, tuple[Setter, str]] = {
    # the cases: KVM stored 0, 0 and 44
    "selector": (
        _segment("es", selector=0x10000),
        r"Sregs\.es\.selector = 0x10000 does not fit struct kvm_segment\.selector, an unsigned 16-bit",
    ),
    "segment base": (
        _segment("fs", base=1 << 64),
        r"Sregs\.fs\.base = 0x10000000000000000 does not fit struct kvm_segment\.base",
    ),
    "exception 300": (
        _events(exception_injected=1, exception_nr=300),
        r"VcpuEvents\.exception_nr = 0x12c does not fit struct kvm_vcpu_events\.exception\.nr, an unsigned 8-bit",
    ),
    "rax": (
        lambda m: m.vcpu.set_regs(replace(m.vcpu.get_regs(), rax=1 << 64)),
        r"Regs\.rax = 0x10000000000000000 does not fit struct kvm_regs\.rax",
    ),
    "rip negative": (lambda m: m.vcpu.set_regs(replace(m.vcpu.get_regs(), rip=-1)), r"Regs\.rip = -0x1 does not fit"),
    "segment type": (
        _segment("cs", type=0x1B),
        r"Sregs\.cs\.type = 0x1b does not fit struct kvm_segment\.type, a 4-bit number",
    ),
    "segment present": (
        _segment("ss", present=2),
        r"Sregs\.ss\.present = 0x2 does not fit struct kvm_segment\.present, a flag",
    ),
    "segment dpl": (
        _segment("ds", dpl=4),
        r"Sregs\.ds\.dpl = 0x4 does not fit struct kvm_segment\.dpl, a 2-bit number",
    ),
    "segment limit": (
        _segment("tr", limit=1 << 32),
        r"Sregs\.tr\.limit = 0x100000000 does not fit struct kvm_segment\.limit",
    ),
    "gdt limit": (
        _sregs(gdt=DescriptorTable(0, 0x10000)),
        r"Sregs\.gdt\.limit = 0x10000 does not fit struct kvm_dtable\.limit, an unsigned 16-bit",
    ),
    "cr0": (_sregs(cr0=1 << 64), r"Sregs\.cr0 = 0x10000000000000000 does not fit struct kvm_sregs\.cr0"),
    "cr8": (_sregs(cr8=16), r"Sregs\.cr8 = 0x10 does not fit struct kvm_sregs\.cr8, a 4-bit number"),
    "two pending interrupts": (
        _sregs(interrupt_bitmap=(0, 3 << 4, 0, 0)),
        r"Sregs\.interrupt_bitmap has vectors \[68, 69\] pending",
    ),
    "interrupt bitmap words": (
        _sregs(interrupt_bitmap=(0, 0, 0, 0, 0)),
        r"Sregs\.interrupt_bitmap must be a tuple of 4 int values",  # the annotation's length: a type check
    ),
    "fcw": (_fpu(fcw=0x10000), r"Fpu\.fcw = 0x10000 does not fit struct kvm_fpu\.fcw"),
    "mxcsr": (_fpu(mxcsr=1 << 32), r"Fpu\.mxcsr = 0x100000000 does not fit struct kvm_fpu\.mxcsr"),
    "fpr bytes": (
        _fpu(fpr=(bytes(17),) + (bytes(16),) * 7),
        r"Fpu\.fpr\[0\] is 17 bytes; struct kvm_fpu\.fpr holds exactly 16",
    ),
    "xmm count": (_fpu(xmm=(bytes(16),) * 15), r"Fpu\.xmm has 15 entries; struct kvm_fpu\.xmm holds exactly 16"),
    "xsave size": (
        lambda m: m.vcpu.set_xsave(Xsave(bytes(4095))),
        r"Xsave\.region is 4095 bytes; struct kvm_xsave\.region holds exactly 4096",
    ),
    "xcr0 value": (
        lambda m: m.vcpu.set_xcrs({0: 1 << 64}),
        r"XCR0 = 0x10000000000000000 does not fit struct kvm_xcr\.value",
    ),
    "xcr index": (lambda m: m.vcpu.set_xcrs({1 << 32: 1}), r"XCR index 0x100000000 does not fit struct kvm_xcr\.xcr"),
    "xcr count": (lambda m: m.vcpu.set_xcrs(dict.fromkeys(range(17), 1)), r"17 XCRs; struct kvm_xcrs holds at most 16"),
    "debug register": (
        _debugregs(db=(0, 0, 0, 1 << 64)),
        r"DebugRegs\.db\[3\] = 0x10000000000000000 does not fit struct kvm_debugregs\.db",
    ),
    "exception error code": (
        _events(exception_error_code=1 << 32),
        r"VcpuEvents\.exception_error_code = 0x100000000 does not fit",
    ),
    "interrupt shadow": (
        _events(interrupt_shadow=4),
        r"VcpuEvents\.interrupt_shadow = 0x4 does not fit struct kvm_vcpu_events\.interrupt\.shadow, a 2-bit",
    ),
    "nmi masked": (
        _events(nmi_masked=2),
        r"VcpuEvents\.nmi_masked = 0x2 does not fit struct kvm_vcpu_events\.nmi\.masked, a flag",
    ),
    "sipi vector": (_events(sipi_vector=256), r"VcpuEvents\.sipi_vector = 0x100 does not fit"),
    "lapic size": (
        lambda m: m.vcpu.set_lapic(Lapic(bytes(1025))),
        r"Lapic\.regs is 1025 bytes; struct kvm_lapic_state\.regs holds exactly 1024",
    ),
    "cpuid register": (
        lambda m: m.vcpu.set_cpuid([CpuidEntry(0, eax=1 << 32)]),
        r"CpuidEntry\.eax = 0x100000000 does not fit struct kvm_cpuid_entry2\.eax",
    ),
    "guest debug control": (
        lambda m: m.vcpu.set_guest_debug(GuestDebug(GuestDebugFlags(1 << 32))),
        r"GuestDebug\.flags = 0x100000000 does not fit struct kvm_guest_debug\.control",
    ),
    "guest debug register": (
        lambda m: m.vcpu.set_guest_debug(GuestDebug(GuestDebugFlags.ENABLE, (0,) * 7 + (1 << 64,))),
        r"GuestDebug\.debugreg\[7\] = 0x10000000000000000 does not fit struct kvm_guest_debug\.arch\.debugreg",
    ),
    "pic register": (
        _pic(irr=0x100),
        r"PicState\.irr = 0x100 does not fit struct kvm_pic_state\.irr, an unsigned 8-bit",
    ),
    "ioapic id": (_ioapic(id=1 << 32), r"IoapicState\.id = 0x100000000 does not fit struct kvm_ioapic_state\.id"),
    "ioapic entry": (
        _ioapic(redirtbl=(1 << 64,) + (0,) * 23),
        r"IoapicState\.redirtbl\[0\] = 0x10000000000000000 does not fit",
    ),
    "ioapic entries": (
        _ioapic(redirtbl=(0,) * 25),
        r"IoapicState\.redirtbl has 25 entries; struct kvm_ioapic_state\.redirtbl holds exactly 24",
    ),
    "pit latch": (
        _pit_channel(2, latched_count=0x10000),
        r"PitState\.channels\[2\]\.latched_count = 0x10000 does not fit struct kvm_pit_channel_state\.latched_count",
    ),
    "pit load time": (
        _pit_channel(1, count_load_time=1 << 63),
        r"PitState\.channels\[1\]\.count_load_time = 0x8000000000000000 does not fit .* a signed 64-bit",
    ),
    "pit flags": (
        lambda m: m.vm.set_pit(replace(m.vm.get_pit(), flags=1 << 32)),
        r"PitState\.flags = 0x100000000 does not fit struct kvm_pit_state2\.flags",
    ),
}
"""Values that do not fit their KVM struct member: refused by hvcore with the same message on every backend."""


def _long_mode(m: Machine) -> VCPU:
    """A second vCPU in long mode (the machine's RAM and page tables), with the supported CPUID."""
    return boot(m.hv, m.vm, long_mode.SPIN, "long", vcpu_id=1)


def _long_mode_sregs(**changes: object) -> Setter:
    def call(m: Machine) -> None:
        vcpu = _long_mode(m)
        vcpu.set_sregs(replace(vcpu.get_sregs(), **changes))  # type: ignore[arg-type]

    return call


def _cr3_beyond_maxphyaddr(m: Machine) -> None:
    vcpu = _long_mode(m)
    top = max(e.function for e in vcpu.get_cpuid() if e.function >= 0x80000000)
    width = next(e.eax & 0xFF for e in vcpu.get_cpuid() if e.function == 0x80000008) if top >= 0x80000008 else 36
    sregs = vcpu.get_sregs()
    vcpu.set_sregs(replace(sregs, cr3=sregs.cr3 | 1 << width))


REFUSED_BY_KVM: dict[str, Setter] = {
    # the cases
    "CR4 reserved bits": _sregs(cr4=0xFFFFFFFF),
    "EFER all ones (LMA outside long mode)": _sregs(efer=(1 << 64) - 1),
    "CR0.PG without PE": _sregs(cr0=x86.CR0_PG | 0x10),
    "injected exception 99": _events(exception_injected=1, exception_nr=99),
    # kvm_is_valid_sregs
    "CR0.NW without CD": _sregs(cr0=1 << 29 | 0x10),
    "CR0 above bit 31": _sregs(cr0=1 << 32 | 0x10),
    "CS.L outside long mode": _segment("cs", l=1),
    "long mode without CR4.PAE": _long_mode_sregs(cr4=0),
    "long mode without EFER.LMA": _long_mode_sregs(efer=x86.EFER_LME),
    "CR3 beyond MAXPHYADDR": _cr3_beyond_maxphyaddr,
    # kvm_vcpu_ioctl_x86_set_vcpu_events
    "injected NMI vector as exception": _events(exception_injected=1, exception_nr=2),
    "unknown events flag": _events(flags=0x40),
    "payload not enabled": _events(flags=0x10),
    "triple fault event not enabled": _events(flags=0x20),
    # kvm_vcpu_ioctl_x86_set_debugregs
    "DR6 above bit 31": _debugregs(dr6=1 << 32 | 0xFFFF0FF0),
    "DR7 above bit 31": _debugregs(dr7=1 << 32 | 0x400),
    "debugregs flags": _debugregs(flags=1),
    # copy_uabi_to_xstate
    "XSAVE compacted format": _xsave((_XSTATE_BV, "<Q", 3), (_XCOMP_BV, "<Q", 1 << 63 | 3)),
    "XSAVE header reserved": _xsave((_XSTATE_BV, "<Q", 3), (540, "<B", 1)),
    "XSAVE MXCSR reserved bits": _xsave((_XSTATE_BV, "<Q", 3), (_MXCSR, "<I", 0xFFFF1F80)),
    "XSAVE component not in CPUID": _xsave((_XSTATE_BV, "<Q", 1 << 9 | 3)),
    # __kvm_set_xcr, kvm_check_cpuid
    "XCR0 without x87": lambda m: m.vcpu.set_xcrs({0: 0}),
    "40-bit linear addresses": lambda m: m.vcpu.set_cpuid([CpuidEntry(0x80000008, eax=40 << 8 | 40)]),
}
"""Values of the right width that upstream KVM refuses with EINVAL (and this host's KVM too)."""


def _snapshot(m: Machine) -> tuple[object, ...]:
    v = m.vcpu
    return (v.get_regs(), v.get_sregs(), v.get_vcpu_events(), v.get_debugregs(), v.get_xcrs(), v.get_cpuid())


@pytest.mark.parametrize("case", list(OUT_OF_RANGE))
def test_a_value_out_of_range_is_refused_before_the_backend(machine: Machine, case: str) -> None:
    call, message = OUT_OF_RANGE[case]
    before = _snapshot(machine)
    with pytest.raises(InvalidArgument, match=message) as caught:
        call(machine)
    assert caught.value.errno == errno.EINVAL
    assert _snapshot(machine) == before


@pytest.mark.parametrize("case", list(REFUSED_BY_KVM))
def test_a_value_kvm_refuses_is_refused(machine: Machine, case: str) -> None:
    before = _snapshot(machine)
    with pytest.raises(InvalidArgument) as caught:
        REFUSED_BY_KVM[case](machine)
    assert caught.value.errno == errno.EINVAL
    assert _snapshot(machine) == before


def test_a_cr4_bit_the_cpuid_lacks_follows_the_host(hv: Hypervisor, machine: Machine) -> None:
    """Upstream refuses CR4.FSGSBASE on a vCPU whose CPUID lacks FSGSBASE; ``cr4_cpuid_unchecked`` hosts take it."""
    vcpu = machine.vcpu
    vcpu.set_cpuid([replace(e, ebx=e.ebx & ~1) if (e.function, e.index) == (7, 0) else e for e in hv.supported_cpuid()])
    sregs = vcpu.get_sregs()
    if host_variant(hv, "cr4_cpuid_unchecked") == UPSTREAM:
        with pytest.raises(InvalidArgument):
            vcpu.set_sregs(replace(sregs, cr4=sregs.cr4 | 1 << 16))
        assert vcpu.get_sregs() == sregs
    else:
        vcpu.set_sregs(replace(sregs, cr4=sregs.cr4 | 1 << 16))
        assert vcpu.get_sregs().cr4 & 1 << 16


# --- what fits is taken ------------------------------------------------------------------------------------


def test_every_setter_takes_its_getters_value(machine: Machine) -> None:
    m, v = machine, machine.vcpu
    v.set_cpuid(m.hv.supported_cpuid())
    state = _snapshot(m)
    v.set_regs(v.get_regs())
    v.set_sregs(v.get_sregs())
    v.set_fpu(v.get_fpu())
    v.set_xsave(v.get_xsave())
    v.set_xcrs(v.get_xcrs())
    v.set_debugregs(v.get_debugregs())
    v.set_vcpu_events(v.get_vcpu_events())
    v.set_lapic(v.get_lapic())
    v.set_mp_state(v.get_mp_state())
    v.set_guest_debug(GuestDebug())
    for chip in IrqchipId:
        m.vm.set_irqchip(chip, m.vm.get_irqchip(chip))
    m.vm.set_pit(m.vm.get_pit())
    assert _snapshot(m) == state


def test_the_largest_values_that_fit_round_trip(machine: Machine) -> None:
    v = machine.vcpu
    regs = replace(v.get_regs(), rax=(1 << 64) - 1, r15=(1 << 63) + 1)
    v.set_regs(regs)
    assert v.get_regs() == regs
    sregs = v.get_sregs()
    es = replace(sregs.es, selector=0xFFFF, base=0xFFFF0, limit=0xFFFF)
    sregs = replace(sregs, es=es, gdt=DescriptorTable(0xFFFF_FFFF, 0xFFFF), cr2=(1 << 64) - 1, cr8=15)
    v.set_sregs(sregs)
    got = v.get_sregs()
    assert (got.es, got.gdt, got.cr2, got.cr8) == (sregs.es, sregs.gdt, sregs.cr2, sregs.cr8)
    debugregs = replace(v.get_debugregs(), db=((1 << 64) - 1, 0, 0, 1 << 63), dr7=0xFFFF_FFFF & ~(1 << 13) | 0x400)
    v.set_debugregs(debugregs)
    assert v.get_debugregs().db == debugregs.db
    v.set_vcpu_events(replace(v.get_vcpu_events(), interrupt_shadow=1, flags=0x4, sipi_vector=255))
    assert v.get_vcpu_events().interrupt_shadow == 1
    _pit_channel(0, count_load_time=-(1 << 63), latched_count=0xFFFF)(machine)
