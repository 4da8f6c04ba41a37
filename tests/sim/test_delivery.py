"""Event delivery in real mode and 32-bit protected mode: frames, CS:EIP, flags, stack switches, delivery faults.

Memory layout (guest-physical = linear, paging off)::

    0x1000  GDT   0x08 code32 DPL0, 0x10 data DPL0, 0x18/0x1B code32 DPL3, 0x20/0x23 data DPL3,
                  0x28 code32 DPL0 not yet accessed, 0x30 code32 not present, 0x38 code32 limit 0xfff,
                  0x40 16-bit data at 0x50000
    0x2000  IDT (256 8-byte gates)      0x3000  32-bit TSS (ESP0 0x9000, SS0 0x10)
    0x9000  kernel stack top            0x7ff0  user stack
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from hvcore import DescriptorTable, InvalidArgument, Regs, Segment, Sregs
from hvcore.x86 import CR0_ET, CR0_PE, descriptor, flat_segment, real_mode_sregs
from hvcore_sim.delivery import (
    HAS_ERROR_CODE,
    DeliveryError,
    Event,
    EventKind,
    GeneralProtection,
    InvalidTss,
    SegmentNotPresent,
    StackFault,
    TripleFault,
    deliver_event,
    deliver_with_escalation,
    exception_class,
)
from tests.sim import Ram, gate, open_ram

GDT, IDT, TSS = 0x1000, 0x2000, 0x3000
IF, TF, NT, RF, AC, VM = 1 << 9, 1 << 8, 1 << 14, 1 << 16, 1 << 18, 1 << 17
EXTERNAL, EXCEPTION, SOFTWARE = EventKind.EXTERNAL, EventKind.EXCEPTION, EventKind.SOFTWARE

KERNEL_CODE = flat_segment(0x08, code=True, bits=32)
KERNEL_DATA = flat_segment(0x10, code=False, bits=32)
USER_CODE = flat_segment(0x1B, code=True, bits=32, dpl=3)
USER_DATA = flat_segment(0x23, code=False, bits=32, dpl=3)
STACK16 = Segment(base=0x50000, limit=0xFFFF, selector=0x40, type=0x3, db=0)
TR32 = Segment(base=TSS, limit=0x67, selector=0x48, type=0xB, s=0)


@pytest.fixture
def ram() -> Iterator[Ram]:
    with open_ram() as memory:
        yield memory


def set_gate(ram: Ram, vector: int, raw: bytes) -> None:
    ram.memory.write(IDT + vector * len(raw), raw)


# --- events and classes ---------------------------------------------------------------------------


def test_exception_classes_and_error_codes() -> None:
    assert [exception_class(v) for v in (0, 10, 11, 12, 13)] == ["contributory"] * 5
    assert exception_class(14) == "page_fault"
    assert {exception_class(v) for v in (1, 2, 3, 6, 8, 17, 18, 32)} == {"benign"}
    assert frozenset({8, 10, 11, 12, 13, 14, 17, 21}) == HAS_ERROR_CODE


@pytest.mark.parametrize(
    "arguments",
    [
        {"vector": 13, "kind": EXCEPTION},  # #GP needs its error code
        {"vector": 6, "kind": EXCEPTION, "error_code": 0},
        {"vector": 0x80, "kind": SOFTWARE, "error_code": 0},
        {"vector": 32, "kind": EXCEPTION},
        {"vector": 3, "kind": EventKind.NMI},
        {"vector": 5, "kind": EventKind.SOFTWARE_EXCEPTION},
        {"vector": 256, "kind": EXTERNAL},
        {"vector": 0x20, "kind": EXTERNAL, "instruction_length": 2},
        {"vector": 13, "kind": EXCEPTION, "error_code": 0, "cr2": 0x1000},
    ],
)
def test_malformed_events_are_refused(arguments: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument, match="bad event"):
        Event(**arguments)  # type: ignore[arg-type]


def test_ext_bit_and_idt_error_code() -> None:
    assert Event(0x20, EXTERNAL).idt_error_code == 0x103
    assert Event(0x80, SOFTWARE, instruction_length=2).idt_error_code == 0x402
    assert Event(3, EventKind.SOFTWARE_EXCEPTION, instruction_length=1).external == 0
    assert Event(2, EventKind.NMI).external == 1


# --- real mode --------------------------------------------------------------------------------------


def real_sregs(**changes: object) -> Sregs:
    sregs = real_mode_sregs(Sregs(), code_segment=0x0700)
    ss = Segment(base=0x20000, limit=0xFFFF, selector=0x2000, type=0x3)
    return replace(sregs, ss=ss, **changes)  # type: ignore[arg-type]


def test_real_mode_int_through_the_ivt(ram: Ram) -> None:
    ram.put(0x10 * 4, 0xF000_1234, 4)  # IVT[0x10] = F000:1234
    sregs = real_sregs()
    regs = Regs(rip=0x0105, rsp=0x1000, rflags=0x2 | IF | TF | AC | RF, rax=7)
    new_regs, new_sregs = deliver_event(regs, sregs, ram, Event(0x10, SOFTWARE, instruction_length=2))
    assert new_regs == replace(regs, rip=0x1234, rsp=0x0FFA, rflags=0x2)
    assert new_sregs == replace(sregs, cs=replace(sregs.cs, selector=0xF000, base=0xF0000))
    assert ram.words(0x20FFA, 3, 2) == [0x0105, 0x0700, 0x0302]  # IP, CS, FLAGS


def test_real_mode_honours_idtr_base_and_pushes_no_error_code(ram: Ram) -> None:
    ram.put(0x8000 + 13 * 4, 0x1000_0200, 4)
    sregs = real_sregs(idt=DescriptorTable(base=0x8000, limit=0x3FF))
    regs = Regs(rip=0x44, rsp=0x2000, rflags=0x2)
    new_regs, new_sregs = deliver_event(regs, sregs, ram, Event(13, EXCEPTION, 0))
    assert (new_regs.rip, new_regs.rsp, new_sregs.cs.selector, new_sregs.cs.base) == (0x200, 0x1FFA, 0x1000, 0x10000)
    assert ram.words(0x21FFA, 3, 2) == [0x44, 0x0700, 0x2]


def test_real_mode_stack_pointer_wraps_at_64_kib(ram: Ram) -> None:
    ram.put(0x8 * 4, 0x0000_0500, 4)
    regs = Regs(rip=0x10, rsp=0xABCD_0002, rflags=0x202)
    new_regs, _ = deliver_event(regs, real_sregs(), ram, Event(0x8, EXTERNAL))
    assert new_regs.rsp == 0xABCD_FFFC  # only SP moves; it wraps within the segment
    assert ram.get(0x20000, 2) == 0x202
    assert ram.words(0x2FFFC, 2, 2) == [0x10, 0x0700]


def test_real_mode_vector_beyond_the_ivt_limit_delivers_gp(ram: Ram) -> None:
    ram.put(13 * 4, 0x0000_0300, 4)
    sregs = real_sregs(idt=DescriptorTable(base=0, limit=0x3F))
    regs = Regs(rip=0x10, rsp=0x1000, rflags=0x202)
    new_regs, _ = deliver_with_escalation(regs, sregs, ram, Event(0x20, EXTERNAL))
    assert new_regs.rip == 0x300
    assert ram.words(0x20FFA, 3, 2) == [0x10, 0x0700, 0x202]


def test_real_mode_triple_fault_when_df_is_beyond_the_limit(ram: Ram) -> None:
    sregs = real_sregs(idt=DescriptorTable(base=0, limit=0x1F))  # vectors 0-7 only
    with pytest.raises(TripleFault):
        deliver_with_escalation(Regs(rsp=0x1000), sregs, ram, Event(13, EXCEPTION, 0))
    assert ram.writes == []


# --- 32-bit protected mode ------------------------------------------------------------------------


def write_gdt(ram: Ram) -> DescriptorTable:
    segments = [
        KERNEL_CODE,
        KERNEL_DATA,
        USER_CODE,
        USER_DATA,
        replace(KERNEL_CODE, type=0xA),
        replace(KERNEL_CODE, present=0),
        replace(KERNEL_CODE, limit=0xFFF, g=0),
        STACK16,
    ]
    table = bytes(8) + b"".join(descriptor(s).to_bytes(8, "little") for s in segments)
    ram.memory.write(GDT, table)
    return DescriptorTable(base=GDT, limit=len(table) - 1)


def pm_sregs(ram: Ram, *, user: bool = False) -> Sregs:
    ram.put(TSS + 4, 0x9000, 4)  # ESP0
    ram.put(TSS + 8, 0x10, 4)  # SS0
    code, data = (USER_CODE, USER_DATA) if user else (KERNEL_CODE, KERNEL_DATA)
    return Sregs(
        cs=code,
        ss=data,
        ds=data,
        es=data,
        gdt=write_gdt(ram),
        idt=DescriptorTable(IDT, 0x7FF),
        tr=TR32,
        cr0=CR0_PE | CR0_ET,
    )


def test_32_bit_interrupt_gate_same_privilege(ram: Ram) -> None:
    set_gate(ram, 0x20, gate(0x0010_5000, 0x08))
    sregs = pm_sregs(ram)
    regs = Regs(rip=0x40_1234, rsp=0x9000, rflags=0x2 | IF | TF | NT, rbx=5)
    new_regs, new_sregs = deliver_event(regs, sregs, ram, Event(0x20, EXTERNAL))
    assert new_regs == replace(regs, rip=0x10_5000, rsp=0x9000 - 12, rflags=0x2)
    assert new_sregs == sregs
    assert ram.words(0x9000 - 12, 3, 4) == [0x40_1234, 0x08, 0x4302]  # EIP, CS, EFLAGS


def test_32_bit_trap_gate_keeps_if_and_pushes_the_error_code(ram: Ram) -> None:
    set_gate(ram, 13, gate(0x0010_6000, 0x08, kind=0xF))
    regs = Regs(rip=0x40_2000, rsp=0x8FF0, rflags=0x202)
    new_regs, _ = deliver_event(regs, pm_sregs(ram), ram, Event(13, EXCEPTION, 0x28))
    assert (new_regs.rip, new_regs.rsp, new_regs.rflags) == (0x10_6000, 0x8FF0 - 16, 0x202)
    assert ram.words(0x8FF0 - 16, 4, 4) == [0x28, 0x40_2000, 0x08, 0x202 | RF]  # RF: #GP is a fault


def test_32_bit_cpl3_to_cpl0_switches_to_the_tss_stack(ram: Ram) -> None:
    set_gate(ram, 0x80, gate(0x0010_7000, 0x08, dpl=3))
    sregs = pm_sregs(ram, user=True)
    regs = Regs(rip=0x0804_8002, rsp=0x7FF0, rflags=0x3202)
    new_regs, new_sregs = deliver_event(regs, sregs, ram, Event(0x80, SOFTWARE, instruction_length=2))
    assert new_regs == replace(regs, rip=0x10_7000, rsp=0x9000 - 20, rflags=0x3002)
    assert new_sregs == replace(sregs, cs=KERNEL_CODE, ss=KERNEL_DATA)
    assert ram.words(0x9000 - 20, 5, 4) == [0x0804_8002, 0x1B, 0x3202, 0x7FF0, 0x23]


def test_16_bit_gate_pushes_16_bit_values(ram: Ram) -> None:
    set_gate(ram, 0x21, gate(0x1234_5678, 0x08, kind=0x6))
    regs = Regs(rip=0x40_1234, rsp=0x9000, rflags=0x10202)
    new_regs, _ = deliver_event(regs, pm_sregs(ram), ram, Event(0x21, EXTERNAL))
    assert (new_regs.rip, new_regs.rsp, new_regs.rflags) == (0x5678, 0x9000 - 6, 0x2)
    assert ram.words(0x9000 - 6, 3, 2) == [0x1234, 0x08, 0x202]


def test_16_bit_stack_segment_wraps_sp_and_keeps_the_upper_esp(ram: Ram) -> None:
    set_gate(ram, 0x22, gate(0x0010_5000, 0x08))
    sregs = replace(pm_sregs(ram), ss=STACK16)
    new_regs, _ = deliver_event(Regs(rip=0x1000, rsp=0xDEAD_0004, rflags=0x2), sregs, ram, Event(0x22, EXTERNAL))
    assert new_regs.rsp == 0xDEAD_FFF8
    assert ram.get(0x50000, 4) == 0x2  # EFLAGS at SP 0, then CS and EIP below the wrap
    assert ram.words(0x5FFF8, 2, 4) == [0x1000, 0x08]


def test_loading_cs_sets_the_descriptor_accessed_bit(ram: Ram) -> None:
    set_gate(ram, 0x23, gate(0x0010_5000, 0x28))
    sregs = pm_sregs(ram)
    assert ram.get(GDT + 0x28 + 5, 1) == 0x9A
    _, new_sregs = deliver_event(Regs(rsp=0x9000), sregs, ram, Event(0x23, EXTERNAL))
    assert ram.get(GDT + 0x28 + 5, 1) == 0x9B
    assert new_sregs.cs == replace(KERNEL_CODE, selector=0x28)


def test_gate_not_present_raises_np_with_the_idt_error_code(ram: Ram) -> None:
    set_gate(ram, 0x30, gate(0x0010_5000, 0x08, dpl=3, present=False))
    sregs, regs = pm_sregs(ram), Regs(rsp=0x9000)
    with pytest.raises(SegmentNotPresent) as external:
        deliver_event(regs, sregs, ram, Event(0x30, EXTERNAL))
    with pytest.raises(SegmentNotPresent) as software:
        deliver_event(regs, sregs, ram, Event(0x30, SOFTWARE, instruction_length=2))
    assert (external.value.vector, external.value.error_code, software.value.error_code) == (11, 0x183, 0x182)
    assert ram.writes == []


def test_software_int_through_a_more_privileged_gate_is_gp(ram: Ram) -> None:
    set_gate(ram, 0x81, gate(0x0010_5000, 0x08, dpl=0))
    set_gate(ram, 13, gate(0x0010_6000, 0x08, kind=0xF))
    sregs = pm_sregs(ram, user=True)
    regs = Regs(rip=0x0804_8002, rsp=0x7FF0, rflags=0x202)
    with pytest.raises(GeneralProtection) as info:
        deliver_event(regs, sregs, ram, Event(0x81, SOFTWARE, instruction_length=2))
    assert info.value.error_code == 0x81 * 8 + 2
    # Hardware events ignore the gate's DPL ...
    assert deliver_event(regs, sregs, ram, Event(0x81, EXTERNAL))[0].rip == 0x10_5000
    # ... and the #GP reports the INT instruction itself.
    new_regs, _ = deliver_with_escalation(regs, sregs, ram, Event(0x81, SOFTWARE, instruction_length=2))
    assert new_regs.rip == 0x10_6000
    assert ram.words(0x9000 - 24, 6, 4) == [0x40A, 0x0804_8000, 0x1B, 0x202 | RF, 0x7FF0, 0x23]


@pytest.mark.parametrize(
    ("selector", "error"),
    [
        (0x00, GeneralProtection(1)),
        (0x80, GeneralProtection(0x81)),
        (0x10, GeneralProtection(0x11)),
        (0x1B, GeneralProtection(0x19)),
        (0x30, SegmentNotPresent(0x31)),
        (0x38, GeneralProtection(1)),
    ],
    ids=["null", "beyond-gdt", "data-segment", "less-privileged-code", "not-present", "eip-beyond-limit"],
)
def test_bad_target_code_segments(ram: Ram, selector: int, error: Exception) -> None:
    set_gate(ram, 0x40, gate(0x2000, selector))
    with pytest.raises(type(error)) as info:
        deliver_event(Regs(rsp=0x9000), pm_sregs(ram), ram, Event(0x40, EXTERNAL))
    assert repr(info.value) == repr(error)
    assert ram.writes == []


def test_stack_overflowing_the_stack_segment_is_ss(ram: Ram) -> None:
    set_gate(ram, 0x41, gate(0x0010_5000, 0x08))
    sregs = replace(pm_sregs(ram), ss=replace(KERNEL_DATA, limit=0xFFF, g=0))
    with pytest.raises(StackFault) as info:
        deliver_event(Regs(rsp=0x8), sregs, ram, Event(0x41, EXTERNAL))
    assert info.value.error_code == 1
    assert ram.writes == []


def test_bad_tss_on_a_privilege_change_is_ts(ram: Ram) -> None:
    set_gate(ram, 0x42, gate(0x0010_5000, 0x08))
    sregs = pm_sregs(ram, user=True)
    with pytest.raises(InvalidTss) as small:
        deliver_event(Regs(rsp=0x7FF0), replace(sregs, tr=replace(TR32, limit=0x8)), ram, Event(0x42, EXTERNAL))
    ram.put(TSS + 8, 0x13, 4)  # SS0 with RPL 3
    with pytest.raises(InvalidTss) as rpl:
        deliver_event(Regs(rsp=0x7FF0), sregs, ram, Event(0x42, EXTERNAL))
    assert (small.value.error_code, rpl.value.error_code) == (0x49, 0x11)


def test_task_gates_and_virtual_8086_mode_are_unsupported(ram: Ram) -> None:
    set_gate(ram, 0x43, gate(0, 0x50, kind=0x5))
    set_gate(ram, 0x44, gate(0x0010_5000, 0x08))
    with pytest.raises(DeliveryError, match="task gate"):
        deliver_event(Regs(rsp=0x9000), pm_sregs(ram), ram, Event(0x43, EXTERNAL))
    with pytest.raises(DeliveryError, match="virtual-8086"):
        deliver_event(Regs(rsp=0x9000, rflags=0x2 | VM), pm_sregs(ram), ram, Event(0x44, EXTERNAL))


def test_32_bit_gp_during_gp_delivery_becomes_double_fault(ram: Ram) -> None:
    set_gate(ram, 8, gate(0x0010_8000, 0x08))
    sregs = replace(pm_sregs(ram), idt=DescriptorTable(IDT, 13 * 8 - 1))  # no gate 13
    regs = Regs(rip=0x40_0000, rsp=0x9000, rflags=0x202)
    new_regs, _ = deliver_with_escalation(regs, sregs, ram, Event(13, EXCEPTION, 0))
    assert (new_regs.rip, new_regs.rsp) == (0x10_8000, 0x9000 - 16)
    assert ram.words(0x9000 - 16, 4, 4) == [0, 0x40_0000, 0x08, 0x202]  # #DF is an abort: no RF
