"""Exception and interrupt delivery through the guest's IVT or IDT, as the processor performs it.

Unicorn never vectors an event through the guest's tables, so the simulator
does, with this pure function over hvcore's state (Intel SDM Vol. 3 chapter 6
and the INT n pseudo-code in Vol. 2)::

    regs, sregs = deliver_with_escalation(regs, sregs, memory, Event(14, EventKind.EXCEPTION, 0x2, cr2=addr))

``regs.rip`` must already be the return address to push: the faulting
instruction for a fault, the next instruction for a trap, an external
interrupt, an NMI or ``int n`` / ``int3`` / ``into`` (for the software kinds,
``Event.instruction_length`` says how long the instruction was, so a fault
*during* their delivery reports the instruction itself, as the processor does).

- Real mode (CR0.PE=0): the IVT at IDTR.base (KVM honours it); FLAGS, CS, IP
  pushed; IF, TF, AC and RF cleared; only CS's selector and base change. No
  error code is pushed. An entry beyond IDTR.limit raises #GP, which escalates
  like a protected-mode delivery fault (#DF, then triple fault).
- Protected mode: 16- and 32-bit interrupt/trap gates, a stack switch through
  the 16- or 32-bit TSS on a privilege change. Task gates and interrupts from
  virtual-8086 mode raise :class:`DeliveryError` (not supported).
- IA-32e mode (EFER.LMA, 64-bit and compatibility code alike): 16-byte gates,
  IST, RSP0-2, the stack aligned down to 16 bytes, SS:RSP always pushed, and a
  null SS with RPL = new CPL on a privilege change (reported unusable, DPL =
  CPL, other attributes 0: hardware leaves them undefined).

CPL is SS.DPL, as on VMX. Table reads and CPL0 stack pushes are supervisor
accesses that EFLAGS.AC does not exempt from SMAP. As KVM does, the pushed RFLAGS image has RF set for
fault-class exceptions, but not for one the VMM injected (KVM hands those to the processor as they
are). Pushed selectors are zero-extended. A delivery that fails changes no register and writes no
stack or descriptor (walks may already have set accessed bits in page tables). Guest memory that no slot backs raises
the memory's own error (``hvcore.NotFound``), which KVM reports as an internal
error (``KVM_INTERNAL_ERROR_DELIVERY_EV``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final

from hvcore.types import Regs, Segment, Sregs
from hvcore.x86 import CR0_PE, EFER_LMA
from hvcore_sim.descriptors import (
    TYPE_ACCESSED,
    TYPE_CODE,
    TYPE_CONFORMING,
    TYPE_EXPAND_DOWN,
    TYPE_WRITABLE,
    Gate,
    decode_gate,
    descriptor_address,
    is_null_selector,
    segment_from_descriptor,
)
from hvcore_sim.events import HAS_ERROR_CODE, Event, EventKind, exception_class
from hvcore_sim.faults import (
    DeliveryError,
    GeneralProtection,
    GuestFault,
    InvalidTss,
    NonCanonical,
    PageFault,
    SegmentNotPresent,
    StackFault,
    TripleFault,
)
from hvcore_sim.mmu import PhysicalMemory, is_canonical, read_linear, translate_range

__all__ = [
    "HAS_ERROR_CODE",
    "DeliveryError",
    "Event",
    "EventKind",
    "GeneralProtection",
    "GuestFault",
    "InvalidTss",
    "PageFault",
    "SegmentNotPresent",
    "StackFault",
    "TripleFault",
    "deliver_event",
    "deliver_with_escalation",
    "exception_class",
]

_DOUBLE_FAULT: Final = 8
_TF, _IF, _NT, _RF, _VM, _AC = 1 << 8, 1 << 9, 1 << 14, 1 << 16, 1 << 17, 1 << 18
_FAULT_CLASS: Final = frozenset(range(32)) - {1, 2, 3, 4, 8, 18}  # KVM's exception_type(): not trap, abort or NMI
_U64: Final = (1 << 64) - 1
_SOFTWARE: Final = frozenset({EventKind.SOFTWARE, EventKind.SOFTWARE_EXCEPTION})


def deliver_event(regs: Regs, sregs: Sregs, memory: PhysicalMemory, event: Event) -> tuple[Regs, Sregs]:
    """The state after the processor vectors ``event``, with the frame written to the guest's stack.

    ``regs.rip`` is the return address to push: the faulting instruction for a
    fault, the next instruction for a trap, an interrupt or a software event.
    Raises the :class:`GuestFault` the delivery itself causes (leaving memory
    unchanged); :func:`deliver_with_escalation` turns those into #DF or a
    triple fault.
    """
    if event.cr2 is not None:
        sregs = replace(sregs, cr2=event.cr2)
    if not sregs.cr0 & CR0_PE:
        return _deliver_real(regs, sregs, memory, event)
    if regs.rflags & _VM:
        raise DeliveryError("interrupt delivery from virtual-8086 mode is not supported", operation="deliver_event")
    if sregs.efer & EFER_LMA:
        return _deliver_long(regs, sregs, memory, event)
    return _deliver_protected(regs, sregs, memory, event)


def deliver_with_escalation(regs: Regs, sregs: Sregs, memory: PhysicalMemory, event: Event) -> tuple[Regs, Sregs]:
    """Deliver ``event``; a fault during delivery is delivered instead, or becomes #DF (Table 6-5).

    A #PF during delivery loads CR2. Raises :class:`TripleFault` when
    delivering #DF faults.
    """
    current = event
    while True:
        try:
            return deliver_event(regs, sregs, memory, current)
        except GuestFault as fault:
            if current.kind is EventKind.EXCEPTION and current.vector == _DOUBLE_FAULT:
                raise TripleFault(fault) from fault
            if current.cr2 is not None:
                sregs = replace(sregs, cr2=current.cr2)
            if current.kind in _SOFTWARE:
                regs = replace(regs, rip=(regs.rip - current.instruction_length) & _U64)
            current = _second_event(current, fault)


def _second_event(first: Event, fault: GuestFault) -> Event:
    cr2 = fault.linear if isinstance(fault, PageFault) else None
    second = Event(fault.vector, EventKind.EXCEPTION, fault.error_code, cr2=cr2)
    if first.kind is not EventKind.EXCEPTION:
        return second
    before, after = exception_class(first.vector), exception_class(second.vector)
    if (before == after == "contributory") or (before == "page_fault" and after != "benign"):
        return Event(_DOUBLE_FAULT, EventKind.EXCEPTION, 0)
    return second


@dataclass(frozen=True, slots=True)
class _Loaded:
    """A segment loaded from a descriptor, with what is needed to set its accessed bit."""

    segment: Segment
    address: int
    raw: int

    def with_selector(self, selector: int) -> Segment:
        return replace(self.segment, selector=selector, type=self.segment.type | TYPE_ACCESSED)

    def accessed_write(self) -> list[tuple[int, bytes, bool]]:
        access = (self.raw >> 40) & 0xFF
        return [] if access & TYPE_ACCESSED else [(self.address + 5, bytes([access | TYPE_ACCESSED]), False)]


def _pushed(regs: Regs, sregs: Sregs, event: Event) -> tuple[int, ...]:
    """RFLAGS, CS, RIP and the error code, as pushed after any old SS:RSP."""
    fault = event.kind is EventKind.EXCEPTION and event.vector in _FAULT_CLASS and not event.injected
    flags = regs.rflags | (_RF if fault else 0)
    code = () if event.error_code is None else (event.error_code,)
    return (flags, sregs.cs.selector, regs.rip, *code)


def _push(sp: int, values: Sequence[int], width: int, mask: int) -> tuple[int, list[tuple[int, bytes]]]:
    """The stack pointer after pushing ``values`` and each slot as ``(offset, bytes)``."""
    slots = []
    for value in values:
        sp = (sp - width) & mask
        slots.append((sp, (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")))
    return sp, slots


def _stack_mask(ss: Segment) -> int:
    return 0xFFFFFFFF if ss.db else 0xFFFF


def _within(segment: Segment, offset: int, width: int) -> bool:
    if segment.type & TYPE_EXPAND_DOWN and not segment.type & TYPE_CODE:
        low, high = segment.limit + 1, _stack_mask(segment)
    else:
        low, high = 0, segment.limit
    return low <= offset and offset + width - 1 <= high


def _commit(sregs: Sregs, memory: PhysicalMemory, writes: list[tuple[int, bytes, bool]], ss_code: int) -> None:
    """Translate every ``(linear, data, user)`` store, then perform them all (a fault leaves memory alone)."""
    planned = []
    for linear, data, user in writes:
        try:
            planned.append((translate_range(sregs, memory, linear, len(data), write=True, user=user), data))
        except NonCanonical:
            raise StackFault(ss_code) from None
    for pieces, data in planned:
        offset = 0
        for physical, size in pieces:
            memory.write(physical, data[offset : offset + size])
            offset += size


def _read_int(sregs: Sregs, memory: PhysicalMemory, linear: int, size: int) -> int:
    return int.from_bytes(read_linear(sregs, memory, linear, size), "little")


def _read_gate(sregs: Sregs, memory: PhysicalMemory, event: Event, size: int) -> Gate:
    entry = event.vector * size
    if entry + size - 1 > sregs.idt.limit:
        raise GeneralProtection(event.idt_error_code)
    return decode_gate(read_linear(sregs, memory, sregs.idt.base + entry, size))


def _check_gate(gate: Gate, event: Event, cpl: int, valid_types: frozenset[int]) -> None:
    if gate.s or gate.type not in valid_types:
        raise GeneralProtection(event.idt_error_code)
    if event.kind in _SOFTWARE and gate.dpl < cpl:
        raise GeneralProtection(event.vector * 8 + 2)
    if not gate.present:
        raise SegmentNotPresent(event.idt_error_code)
    if gate.type == 0x5:
        raise DeliveryError(f"vector {event.vector} has a task gate; task switches are not supported")


def _load_code(sregs: Sregs, memory: PhysicalMemory, selector: int, cpl: int, ext: int, long_mode: bool) -> _Loaded:
    """The gate's target code segment, checked as the processor checks it."""
    if is_null_selector(selector):
        raise GeneralProtection(ext)
    code = (selector & 0xFFFC) | ext
    address = descriptor_address(sregs, selector)
    if address is None:
        raise GeneralProtection(code)
    raw = _read_int(sregs, memory, address, 8)
    segment = segment_from_descriptor(raw, selector)
    if not segment.s or not segment.type & TYPE_CODE or segment.dpl > cpl:
        raise GeneralProtection(code)
    if not segment.present:
        raise SegmentNotPresent(code)
    if long_mode and (not segment.l or segment.db):
        raise GeneralProtection(code)
    return _Loaded(segment, address, raw)


def _tss_stack32(sregs: Sregs, memory: PhysicalMemory, cpl: int, ext: int) -> tuple[_Loaded, int]:
    """The new SS (checked) and ESP for ``cpl`` from the 32- or 16-bit TSS."""
    tr = sregs.tr
    tss_code = (tr.selector & 0xFFFC) | ext
    if tr.type in (0x9, 0xB):
        offset, size = 4 + 8 * cpl, 4
    elif tr.type in (0x1, 0x3):
        offset, size = 2 + 4 * cpl, 2
    else:
        raise InvalidTss(tss_code)
    if offset + size + 1 > tr.limit:
        raise InvalidTss(tss_code)
    raw = _read_int(sregs, memory, tr.base + offset, size + 2)
    esp, selector = raw & ((1 << (8 * size)) - 1), raw >> (8 * size)
    if is_null_selector(selector):
        raise InvalidTss(ext)
    ss_code = (selector & 0xFFFC) | ext
    address = descriptor_address(sregs, selector)
    if selector & 3 != cpl or address is None:
        raise InvalidTss(ss_code)
    descriptor = _read_int(sregs, memory, address, 8)
    ss = segment_from_descriptor(descriptor, selector)
    if ss.dpl != cpl or not ss.s or ss.type & TYPE_CODE or not ss.type & TYPE_WRITABLE:
        raise InvalidTss(ss_code)
    if not ss.present:
        raise StackFault(ss_code)
    return _Loaded(ss, address, descriptor), esp


def _entered(regs: Regs, gate: Gate, *, rip: int, rsp: int) -> Regs:
    clear = _TF | _NT | _RF | _VM | (_IF if gate.interrupt_gate else 0)
    return replace(regs, rip=rip, rsp=rsp, rflags=regs.rflags & ~clear)


def _deliver_real(regs: Regs, sregs: Sregs, memory: PhysicalMemory, event: Event) -> tuple[Regs, Sregs]:
    entry = event.vector * 4
    if entry + 3 > sregs.idt.limit:
        raise GeneralProtection(0)  # real mode pushes no error code; the value only matters for escalation
    target = _read_int(sregs, memory, sregs.idt.base + entry, 4)
    ss = sregs.ss
    mask = _stack_mask(ss)
    sp, slots = _push(regs.rsp & mask, (regs.rflags, sregs.cs.selector, regs.rip), 2, mask)
    if not all(_within(ss, offset, 2) for offset, _ in slots):
        raise StackFault(0)
    _commit(sregs, memory, [(ss.base + offset, data, False) for offset, data in slots], 0)
    selector = target >> 16
    cs = replace(sregs.cs, selector=selector, base=selector << 4)  # real mode keeps CS's limit and attributes
    rflags = regs.rflags & ~(_IF | _TF | _AC | _RF)
    return replace(regs, rip=target & 0xFFFF, rsp=(regs.rsp & ~mask) | sp, rflags=rflags), replace(sregs, cs=cs)


def _deliver_protected(regs: Regs, sregs: Sregs, memory: PhysicalMemory, event: Event) -> tuple[Regs, Sregs]:
    ext, cpl = event.external, sregs.ss.dpl
    gate = _read_gate(sregs, memory, event, 8)
    _check_gate(gate, event, cpl, frozenset({0x5, 0x6, 0x7, 0xE, 0xF}))
    target = _load_code(sregs, memory, gate.selector, cpl, ext, long_mode=False)
    width = 4 if gate.type & 0x8 else 2
    rip = gate.offset & ((1 << (8 * width)) - 1)
    pushed = _pushed(regs, sregs, event)
    new_ss: _Loaded | None = None
    if not target.segment.type & TYPE_CONFORMING and target.segment.dpl < cpl:
        new_cpl = target.segment.dpl
        new_ss, esp = _tss_stack32(sregs, memory, new_cpl, ext)
        ss, values = new_ss.segment, (sregs.ss.selector, regs.rsp, *pushed)
        ss_code = (ss.selector & 0xFFFC) | ext
    else:
        new_cpl, ss, esp, values, ss_code = cpl, sregs.ss, regs.rsp, pushed, ext
    mask = _stack_mask(ss)
    sp, slots = _push(esp & mask, values, width, mask)
    if not all(_within(ss, offset, width) for offset, _ in slots):
        raise StackFault(ss_code)
    if rip > target.segment.limit:
        raise GeneralProtection(ext)
    writes = [((ss.base + offset) & 0xFFFFFFFF, data, new_cpl == 3) for offset, data in slots]
    writes += target.accessed_write() + (new_ss.accessed_write() if new_ss else [])
    _commit(sregs, memory, writes, ss_code)
    cs = target.with_selector((gate.selector & 0xFFFC) | new_cpl)
    ss_register = new_ss.with_selector(new_ss.segment.selector) if new_ss else sregs.ss
    regs = _entered(regs, gate, rip=rip, rsp=((esp & 0xFFFFFFFF) & ~mask) | sp)
    return regs, replace(sregs, cs=cs, ss=ss_register)


def _tss_stack64(sregs: Sregs, memory: PhysicalMemory, ist: int, cpl: int, ext: int) -> int:
    """RSP for ``cpl`` from the 64-bit TSS, or IST[``ist``] when ``ist`` is not 0."""
    tr = sregs.tr
    offset = 0x24 + 8 * (ist - 1) if ist else 4 + 8 * cpl
    if tr.type not in (0x9, 0xB) or offset + 7 > tr.limit:
        raise InvalidTss((tr.selector & 0xFFFC) | ext)
    return _read_int(sregs, memory, tr.base + offset, 8)


def _null_ss(cpl: int) -> Segment:
    """The SS a 64-bit privilege change loads: a null selector with RPL = CPL, unusable, DPL = CPL."""
    return Segment(base=0, limit=0, selector=cpl, type=0, present=0, dpl=cpl, db=0, s=0, l=0, g=0, avl=0, unusable=1)


def _deliver_long(regs: Regs, sregs: Sregs, memory: PhysicalMemory, event: Event) -> tuple[Regs, Sregs]:
    ext, cpl = event.external, sregs.ss.dpl
    gate = _read_gate(sregs, memory, event, 16)
    _check_gate(gate, event, cpl, frozenset({0xE, 0xF}))
    target = _load_code(sregs, memory, gate.selector, cpl, ext, long_mode=True)
    privileged = not target.segment.type & TYPE_CONFORMING and target.segment.dpl < cpl
    new_cpl = target.segment.dpl if privileged else cpl
    rsp = _tss_stack64(sregs, memory, gate.ist, new_cpl, ext) if privileged or gate.ist else regs.rsp
    if not is_canonical(rsp, sregs):
        raise StackFault(ext)
    values = (sregs.ss.selector, regs.rsp, *_pushed(regs, sregs, event))
    sp, slots = _push(rsp & ~0xF, values, 8, _U64)
    if not is_canonical(gate.offset, sregs):
        raise GeneralProtection(ext)
    writes = [(offset, data, new_cpl == 3) for offset, data in slots] + target.accessed_write()
    _commit(sregs, memory, writes, ext)
    cs = target.with_selector((gate.selector & 0xFFFC) | new_cpl)
    ss = _null_ss(new_cpl) if privileged else sregs.ss
    return _entered(regs, gate, rip=gate.offset, rsp=sp), replace(sregs, cs=cs, ss=ss)
