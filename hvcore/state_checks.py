"""Range checks for the state setters: every value must fit the KVM struct member that carries it.

KVM keeps each field of its state structs in a fixed-width C member and silently truncates what
does not fit (``struct kvm_segment.selector`` is a ``__u16``: selector 0x10000 becomes 0; base
2^64 becomes 0; exception number 300 becomes 44). Some members are wider than what KVM uses:
a segment's ``present`` is a ``__u8`` of which KVM keeps bit 0, CR8 a ``__u64`` of which it
takes 4 bits (and ignores the whole value otherwise). A value changed on the way in is a VMM bug,
so every backend refuses it before it reaches the hypervisor, with the same
:class:`hvcore.InvalidArgument` naming the field, the value and the width.

:data:`LAYOUTS` is the one table: for each state type, its C struct and, per field, the member
that carries it and the member's width. ``tests/test_state_validation.py`` checks every entry
against the ctypes layouts of ``hvcore_kvm.uapi`` (the one place the structs are spelled out),
so the table cannot drift from them. What KVM refuses for the *meaning* of a value (CR0.PG
without PE, an exception vector above 31) is each backend's own business: KVM's ioctls, and the
simulator's copy of their rules.

Only values of the right type are checked here; anything else is left to the type checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from hvcore.arguments import check_instance
from hvcore.errors import InvalidArgument
from hvcore.types import (
    CpuidEntry,
    DebugRegs,
    DescriptorTable,
    Fpu,
    GuestDebug,
    IoapicState,
    Lapic,
    PicState,
    PitChannelState,
    PitState,
    Regs,
    Segment,
    Sregs,
    VcpuEvents,
    Xsave,
)

__all__ = ["LAYOUTS", "Int", "Layout", "Nested", "Raw", "check_state", "check_state_argument"]


@dataclass(frozen=True)
class Int:
    """An integer field (or, with ``count``, a tuple of ``count`` of them) in C member ``c``.

    ``c_bits`` is the C member's width (``signed`` for ``__s64``); ``bits``, where smaller, the
    part of it KVM keeps.
    """

    c: str
    c_bits: int
    bits: int = 0
    signed: bool = False
    count: int = 0

    @property
    def width(self) -> int:
        """How many bits of the value KVM keeps."""
        return self.bits or self.c_bits

    def describe(self) -> str:
        """The range in words, e.g. ``an unsigned 16-bit number``."""
        if self.bits == 1:
            return f"a flag, 0 or 1 (KVM uses bit 0 of the {self.c_bits}-bit member)"
        if self.bits:
            return f"a {self.bits}-bit number (KVM uses {self.bits} bits of the {self.c_bits}-bit member)"
        return f"{'a signed' if self.signed else 'an unsigned'} {self.c_bits}-bit number"

    def fits(self, value: int) -> bool:
        """Whether ``value`` is in range."""
        if self.signed:
            return -(1 << (self.width - 1)) <= value < 1 << (self.width - 1)
        return 0 <= value < 1 << self.width


@dataclass(frozen=True)
class Raw:
    """A bytes field of exactly ``size`` bytes in C member ``c`` (with ``count``, a tuple of ``count`` of them)."""

    c: str
    size: int
    count: int = 0


@dataclass(frozen=True)
class Nested:
    """A field holding another state value (with ``count``, a tuple of ``count`` of them) in C member ``c``."""

    c: str
    count: int = 0


Member = Int | Raw | Nested


@dataclass(frozen=True)
class Layout:
    """The C struct ``struct`` (its ``hvcore_kvm.uapi`` class name) that carries a state type, field by field."""

    struct: str
    members: Mapping[str, Member]


def _u(bits: int, c: str, *, keeps: int = 0, count: int = 0) -> Int:
    return Int(c, bits, keeps, count=count)


def _same(bits: int, *names: str, keeps: int = 0) -> dict[str, Member]:
    return {name: Int(name, bits, keeps) for name in names}


_SEGMENT_REGISTERS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")

LAYOUTS: Final[Mapping[type, Layout]] = {
    Regs: Layout("KvmRegs", _same(64, *Regs.__dataclass_fields__)),
    Segment: Layout(
        "KvmSegment",
        {
            "base": _u(64, "base"),
            "limit": _u(32, "limit"),
            "selector": _u(16, "selector"),
            "type": _u(8, "type", keeps=4),  # VMX and SVM both build the access rights from type & 0xf ...
            "dpl": _u(8, "dpl", keeps=2),
            **_same(8, "present", "db", "s", "l", "g", "avl", "unusable", keeps=1),  # ... and bit 0 of the flags
        },
    ),
    DescriptorTable: Layout("KvmDtable", {"base": _u(64, "base"), "limit": _u(16, "limit")}),
    Sregs: Layout(
        "KvmSregs",
        {
            **{name: Nested(name) for name in (*_SEGMENT_REGISTERS, "gdt", "idt")},
            **_same(64, "cr0", "cr2", "cr3", "cr4", "efer", "apic_base"),
            "cr8": _u(64, "cr8", keeps=4),  # kvm_set_cr8: a value above 15 is ignored
            "interrupt_bitmap": _u(64, "interrupt_bitmap", count=4),
        },
    ),
    Fpu: Layout(
        "KvmFpu",
        {
            "fpr": Raw("fpr", 16, count=8),
            **_same(16, "fcw", "fsw", "last_opcode"),
            "ftwx": _u(8, "ftwx"),
            **_same(64, "last_ip", "last_dp"),
            "xmm": Raw("xmm", 16, count=16),
            "mxcsr": _u(32, "mxcsr"),
        },
    ),
    Xsave: Layout("KvmXsave", {"region": Raw("region", 4096)}),
    CpuidEntry: Layout("KvmCpuidEntry2", _same(32, "function", "index", "flags", "eax", "ebx", "ecx", "edx")),
    DebugRegs: Layout("KvmDebugregs", {"db": _u(64, "db", count=4), **_same(64, "dr6", "dr7", "flags")}),
    VcpuEvents: Layout(
        "KvmVcpuEvents",
        {
            # the kernel keeps these as bools: 2 would read back as 1
            "exception_injected": _u(8, "exception.injected", keeps=1),
            "exception_nr": _u(8, "exception.nr"),
            "exception_has_error_code": _u(8, "exception.has_error_code", keeps=1),
            "exception_pending": _u(8, "exception.pending", keeps=1),
            "exception_error_code": _u(32, "exception.error_code"),
            "interrupt_injected": _u(8, "interrupt.injected", keeps=1),
            "interrupt_nr": _u(8, "interrupt.nr"),
            "interrupt_soft": _u(8, "interrupt.soft", keeps=1),
            "interrupt_shadow": _u(8, "interrupt.shadow", keeps=2),  # KVM_X86_SHADOW_INT_MOV_SS | _STI
            "nmi_injected": _u(8, "nmi.injected", keeps=1),
            "nmi_pending": _u(8, "nmi.pending"),
            "nmi_masked": _u(8, "nmi.masked", keeps=1),
            "sipi_vector": _u(32, "sipi_vector", keeps=8),  # a SIPI carries an 8-bit vector
            "flags": _u(32, "flags"),
            "smi_smm": _u(8, "smi.smm", keeps=1),
            "smi_pending": _u(8, "smi.pending", keeps=1),
            "smi_inside_nmi": _u(8, "smi.smm_inside_nmi", keeps=1),
            "smi_latched_init": _u(8, "smi.latched_init", keeps=1),
            "triple_fault_pending": _u(8, "triple_fault.pending", keeps=1),
            "exception_has_payload": _u(8, "exception_has_payload", keeps=1),
            "exception_payload": _u(64, "exception_payload"),
        },
    ),
    Lapic: Layout("KvmLapicState", {"regs": Raw("regs", 1024)}),
    GuestDebug: Layout("KvmGuestDebug", {"flags": _u(32, "control"), "debugreg": _u(64, "arch.debugreg", count=8)}),
    PicState: Layout("KvmPicState", _same(8, *PicState.__dataclass_fields__)),
    IoapicState: Layout(
        "KvmIoapicState",
        {
            "base_address": _u(64, "base_address"),
            **_same(32, "ioregsel", "id", "irr"),
            "redirtbl": _u(64, "redirtbl", count=24),
        },
    ),
    PitChannelState: Layout(
        "KvmPitChannelState",
        {
            "count": _u(32, "count"),
            "latched_count": _u(16, "latched_count"),
            **_same(8, "count_latched", "status_latched", "status", "read_state", "write_state", "write_latch"),
            **_same(8, "rw_mode", "mode", "bcd", "gate"),
            "count_load_time": Int("count_load_time", 64, signed=True),
        },
    ),
    PitState: Layout("KvmPitState2", {"channels": Nested("channels", count=3), "flags": _u(32, "flags")}),
}
"""Each state type -> the ``hvcore_kvm.uapi`` struct that carries it, and each field's member and width."""


def check_state_argument(name: str, value: object, cls: type[Any], operation: str) -> None:
    """A setter's state argument: an instance of ``cls`` of the right field types, every value fitting its member."""
    check_instance(name, value, cls, operation)
    check_state(value, operation)


def check_state(value: object, operation: str) -> None:
    """Refuse ``value`` (a Regs, Sregs, VcpuEvents, ...) if a field does not fit the KVM member that carries it.

    Also refuses an ``Sregs.interrupt_bitmap`` with more than one vector: KVM queues the lowest
    and drops the others.
    """
    _check(type(value).__name__, value, operation)
    if isinstance(value, Sregs) and isinstance(value.interrupt_bitmap, tuple):
        _check_one_pending(value.interrupt_bitmap, operation)


def _check(path: str, value: object, operation: str) -> None:
    layout = LAYOUTS.get(type(value))
    if layout is None:
        return  # not a state value: the type checks report it
    for name, member in layout.members.items():
        _check_member(f"{path}.{name}", getattr(value, name), member, layout.struct, operation)


def _c_name(struct: str, member: Member) -> str:
    snake = "".join(f"_{ch.lower()}" if ch.isupper() else ch for ch in struct).lstrip("_")
    return f"struct {snake}.{member.c}"


def _check_member(path: str, value: object, member: Member, struct: str, operation: str) -> None:
    if member.count:
        if not isinstance(value, tuple | list):
            return
        if len(value) != member.count:
            raise InvalidArgument(
                f"{path} has {len(value)} entries; {_c_name(struct, member)} holds exactly {member.count}",
                operation=operation,
            )
        for i, item in enumerate(value):
            _check_one(f"{path}[{i}]", item, member, struct, operation)
    else:
        _check_one(path, value, member, struct, operation)


def _check_one(path: str, value: object, member: Member, struct: str, operation: str) -> None:
    if isinstance(member, Nested):
        _check(path, value, operation)
    elif isinstance(member, Raw):
        if isinstance(value, bytes | bytearray | memoryview) and len(value) != member.size:
            raise InvalidArgument(
                f"{path} is {len(value)} bytes; {_c_name(struct, member)} holds exactly {member.size}",
                operation=operation,
            )
    elif isinstance(value, int) and not member.fits(value):
        raise InvalidArgument(
            f"{path} = {value:#x} does not fit {_c_name(struct, member)}, {member.describe()}; "
            "KVM would silently change it",
            operation=operation,
        )


def _check_one_pending(bitmap: tuple[int, ...], operation: str) -> None:
    vectors = [i * 64 + b for i, word in enumerate(bitmap) if isinstance(word, int) for b in range(64) if word >> b & 1]
    if len(vectors) > 1:
        raise InvalidArgument(
            f"Sregs.interrupt_bitmap has vectors {vectors} pending; one interrupt at most can wait for injection "
            f"(KVM would queue {vectors[0]} and drop the others)",
            operation=operation,
        )
