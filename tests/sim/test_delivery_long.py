"""Event delivery in IA-32e mode: 16-byte gates, IST, RSP0, alignment, null SS, #DF and triple faults.

Memory layout (``hvcore.x86.long_mode_sregs``: first 1 GiB identity-mapped with 2 MiB user pages)::

    0x1000    GDT   0x08 code64, 0x10 data, 0x18 code32, 0x23 user data, 0x2B user code64,
                    0x30 code64 not yet accessed
    0x2000    IDT (256 16-byte gates)         0x3000  64-bit TSS (RSP0 0xB000, IST1 0x9000, IST2 0xA008)
    0x100000  page tables                     0x4000_0000 and up: not mapped
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from hvcore import DescriptorTable, NotFound, Regs, Segment, Sregs
from hvcore.x86 import descriptor, flat_segment, long_mode_sregs
from hvcore_sim.delivery import (
    Event,
    EventKind,
    GeneralProtection,
    StackFault,
    TripleFault,
    deliver_event,
    deliver_with_escalation,
)
from hvcore_sim.mmu import PF_WRITE
from tests.sim import Ram, gate64, open_ram

GDT, IDT, TSS, PML4 = 0x1000, 0x2000, 0x3000, 0x100000
IF, RF = 1 << 9, 1 << 16
HANDLER = 0xFFFF_FFFF_8010_0000
KERNEL_CODE = flat_segment(0x08, code=True, bits=64)
TR64 = Segment(base=TSS, limit=0x67, selector=0x38, type=0xB, s=0)
NULL_SS0 = Segment(base=0, limit=0, selector=0, type=0, present=0, dpl=0, db=0, s=0, l=0, g=0, avl=0, unusable=1)
EXTERNAL, EXCEPTION = EventKind.EXTERNAL, EventKind.EXCEPTION


@pytest.fixture
def ram() -> Iterator[Ram]:
    with open_ram() as memory:
        yield memory


def set_gate(ram: Ram, vector: int, raw: bytes) -> None:
    ram.memory.write(IDT + vector * 16, raw)


def stores_beyond_page_tables(ram: Ram) -> list[tuple[int, bytes]]:
    """What was written besides accessed/dirty bits (page walks may set those even when delivery fails)."""
    return [(address, data) for address, data in ram.writes if not PML4 <= address < PML4 + 0x3000]


def long_sregs(ram: Ram, *, user: bool = False) -> Sregs:
    sregs = long_mode_sregs(Sregs(), ram.memory, gdt_address=GDT, pml4_address=PML4, user=user)
    ram.put(GDT + 0x30, descriptor(replace(KERNEL_CODE, type=0xA)), 8)
    ram.put(TSS + 4, 0xB000, 8)  # RSP0
    ram.put(TSS + 0x24, 0x9000, 8)  # IST1
    ram.put(TSS + 0x2C, 0xA008, 8)  # IST2
    return replace(sregs, gdt=DescriptorTable(GDT, 0x37), idt=DescriptorTable(IDT, 0xFFF), tr=TR64)


def test_same_privilege_aligns_the_stack_and_pushes_ss_rsp(ram: Ram) -> None:
    set_gate(ram, 0x30, gate64(HANDLER, 0x08))
    sregs = long_sregs(ram)
    regs = Regs(rip=0x40_1000, rsp=0x8008, rflags=0x202, rcx=3)
    new_regs, new_sregs = deliver_event(regs, sregs, ram, Event(0x30, EXTERNAL))
    assert new_regs == replace(regs, rip=HANDLER, rsp=0x8000 - 40, rflags=0x2)
    assert new_sregs == sregs
    assert ram.words(0x8000 - 40, 5, 8) == [0x40_1000, 0x08, 0x202, 0x8008, 0x10]  # RIP CS RFLAGS RSP SS


def test_page_fault_pushes_its_error_code_and_loads_cr2(ram: Ram) -> None:
    set_gate(ram, 14, gate64(HANDLER, 0x08, kind=0xF))
    regs = Regs(rip=0x40_1000, rsp=0x8000, rflags=0x202)
    event = Event(14, EXCEPTION, PF_WRITE, cr2=0xDEAD_0000)
    new_regs, new_sregs = deliver_event(regs, long_sregs(ram), ram, event)
    assert (new_regs.rsp, new_regs.rflags, new_sregs.cr2) == (0x8000 - 48, 0x202, 0xDEAD_0000)
    assert ram.words(0x8000 - 48, 6, 8) == [PF_WRITE, 0x40_1000, 0x08, 0x202 | RF, 0x8000, 0x10]


def test_ist_stack_without_privilege_change(ram: Ram) -> None:
    set_gate(ram, 2, gate64(HANDLER, 0x08, ist=2))
    sregs = long_sregs(ram)
    new_regs, new_sregs = deliver_event(Regs(rip=0x5000, rsp=0x8000), sregs, ram, Event(2, EventKind.NMI))
    assert new_regs.rsp == 0xA000 - 40  # IST2 0xa008, aligned down
    assert new_sregs.ss == sregs.ss
    assert ram.words(0xA000 - 40, 5, 8) == [0x5000, 0x08, 0x2, 0x8000, 0x10]


def test_cpl3_to_cpl0_uses_rsp0_and_loads_a_null_ss(ram: Ram) -> None:
    set_gate(ram, 0x31, gate64(HANDLER, 0x08))
    sregs = long_sregs(ram, user=True)
    regs = Regs(rip=0x40_2000, rsp=0x7_FFF3, rflags=0x246)
    new_regs, new_sregs = deliver_event(regs, sregs, ram, Event(0x31, EXTERNAL))
    assert new_regs == replace(regs, rip=HANDLER, rsp=0xB000 - 40, rflags=0x46)
    assert new_sregs == replace(sregs, cs=KERNEL_CODE, ss=NULL_SS0)
    assert ram.words(0xB000 - 40, 5, 8) == [0x40_2000, 0x2B, 0x246, 0x7_FFF3, 0x23]


def test_ist_takes_precedence_over_rsp0(ram: Ram) -> None:
    set_gate(ram, 0x32, gate64(HANDLER, 0x08, ist=1))
    regs = Regs(rip=0x40_2000, rsp=0x7_0000, rflags=0x202)
    new_regs, new_sregs = deliver_event(regs, long_sregs(ram, user=True), ram, Event(0x32, EXTERNAL))
    assert (new_regs.rsp, new_sregs.ss) == (0x9000 - 40, NULL_SS0)


def test_compatibility_mode_also_uses_64_bit_gates(ram: Ram) -> None:
    set_gate(ram, 0x33, gate64(HANDLER, 0x08))
    sregs = replace(long_sregs(ram), cs=flat_segment(0x18, code=True, bits=32))
    new_regs, new_sregs = deliver_event(Regs(rip=0x1234, rsp=0x8000), sregs, ram, Event(0x33, EXTERNAL))
    assert (new_regs.rip, new_sregs.cs) == (HANDLER, KERNEL_CODE)
    assert ram.words(0x8000 - 40, 5, 8) == [0x1234, 0x18, 0x2, 0x8000, 0x10]


def test_loading_cs_sets_the_descriptor_accessed_bit(ram: Ram) -> None:
    set_gate(ram, 0x34, gate64(HANDLER, 0x30))
    _, new_sregs = deliver_event(Regs(rsp=0x8000), long_sregs(ram), ram, Event(0x34, EXTERNAL))
    assert ram.get(GDT + 0x30 + 5, 1) == 0x9B
    assert new_sregs.cs == replace(KERNEL_CODE, selector=0x30)


def test_int3_through_a_dpl0_gate_from_cpl3_is_gp_on_the_int3(ram: Ram) -> None:
    set_gate(ram, 3, gate64(HANDLER, 0x08, dpl=0))
    set_gate(ram, 13, gate64(HANDLER + 0x100, 0x08))
    regs = Regs(rip=0x40_2001, rsp=0x7_0000, rflags=0x202)
    int3 = Event(3, EventKind.SOFTWARE_EXCEPTION, instruction_length=1)
    new_regs, _ = deliver_with_escalation(regs, long_sregs(ram, user=True), ram, int3)
    assert new_regs.rip == HANDLER + 0x100
    assert ram.words(0xB000 - 48, 6, 8) == [3 * 8 + 2, 0x40_2000, 0x2B, 0x202 | RF, 0x7_0000, 0x23]


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (gate64(0x0000_8000_0000_0000, 0x08), GeneralProtection(1)),
        (gate64(HANDLER, 0x18), GeneralProtection(0x19)),
        (gate64(HANDLER, 0x08, kind=0x6), GeneralProtection(0x35 * 8 + 3)),
        (gate64(HANDLER, 0x08, ist=3), StackFault(1)),
    ],
    ids=["non-canonical-rip", "32-bit-target", "16-bit-gate", "non-canonical-ist-stack"],
)
def test_delivery_faults(ram: Ram, raw: bytes, error: Exception) -> None:
    set_gate(ram, 0x35, raw)
    ram.put(TSS + 0x34, 0x0000_8000_0000_0010, 8)  # IST3
    with pytest.raises(type(error)) as info:
        deliver_event(Regs(rsp=0x8000), long_sregs(ram), ram, Event(0x35, EXTERNAL))
    assert repr(info.value) == repr(error)
    assert stores_beyond_page_tables(ram) == []


def test_gp_while_delivering_gp_becomes_double_fault(ram: Ram) -> None:
    set_gate(ram, 8, gate64(HANDLER + 8, 0x08))
    sregs = replace(long_sregs(ram), idt=DescriptorTable(IDT, 13 * 16 - 1))  # gate 13 is beyond the limit
    regs = Regs(rip=0x40_3000, rsp=0x8000, rflags=0x202)
    new_regs, _ = deliver_with_escalation(regs, sregs, ram, Event(13, EXCEPTION, 0))
    assert (new_regs.rip, new_regs.rsp, new_regs.rflags) == (HANDLER + 8, 0x8000 - 48, 0x2)
    assert ram.words(0x8000 - 48, 6, 8) == [0, 0x40_3000, 0x08, 0x202, 0x8000, 0x10]


def test_stack_page_faults_escalate_to_double_fault_on_an_ist_stack(ram: Ram) -> None:
    set_gate(ram, 13, gate64(HANDLER + 13, 0x08))
    set_gate(ram, 14, gate64(HANDLER + 14, 0x08))
    set_gate(ram, 8, gate64(HANDLER + 8, 0x08, ist=1))
    regs = Regs(rip=0x40_4000, rsp=0x4000_1000, rflags=0x202)  # an unmapped kernel stack
    new_regs, new_sregs = deliver_with_escalation(regs, long_sregs(ram), ram, Event(13, EXCEPTION, 0))
    # #GP -> #PF pushing (handled serially) -> #PF pushing again -> #DF
    assert (new_regs.rip, new_regs.rsp, new_sregs.cr2) == (HANDLER + 8, 0x9000 - 48, 0x4000_0FF8)
    assert ram.words(0x9000 - 48, 6, 8) == [0, 0x40_4000, 0x08, 0x202, 0x4000_1000, 0x10]


def test_empty_idt_is_a_triple_fault(ram: Ram) -> None:
    sregs = replace(long_sregs(ram), idt=DescriptorTable(IDT, 0))
    with pytest.raises(TripleFault) as info:
        deliver_with_escalation(Regs(rip=0x1000, rsp=0x8000), sregs, ram, Event(6, EXCEPTION))
    assert repr(info.value.fault) == repr(GeneralProtection(8 * 8 + 3))
    assert stores_beyond_page_tables(ram) == []


def test_unbacked_idt_propagates_not_found(ram: Ram) -> None:
    sregs = replace(long_sregs(ram), idt=DescriptorTable(0x3000_0000, 0xFFF))
    with pytest.raises(NotFound):
        deliver_with_escalation(Regs(rsp=0x8000), sregs, ram, Event(0x20, EXTERNAL))
