"""Exception, NMI and interrupt delivery through the real-mode IVT and the 64-bit IDT: exact frames and state.

Every handler is a ``vector_stub``: one OUT of its vector to ``EVENT_PORT``, then HLT, so a
delivery shows as the exits ``[OUT vector, HLT]``; the frame is read from guest memory after
it. The guests run with IF=0 unless a test says otherwise: exceptions, NMIs and injected
interrupts are delivered regardless of IF.

Memory (``tests.guests.layout``): guest code at CODE, stubs at STUBS (vector v at STUBS + 8 v),
the interrupted stack at STACK_TOP, and at DATA the IDT (256 16-byte gates) or a relocated
real-mode IVT; the 64-bit TSS at DATA + 0x1000 gives RSP0 = DATA + 0x3000 and IST1 = DATA + 0x4000.
The GDT is ``hvcore.x86``'s (0x08 code64, 0x10 data, 0x23 user data, 0x2B user code64) plus
a 16-byte TSS descriptor at 0x30, loaded in TR.

Hosts' KVMs differ from upstream in ways the tests accept as probed, registered variants (see
``int_n_at_cpl3_is_ud`` and the functions after it, and :mod:`hvcore.host`); the simulator
follows upstream.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from hvcore import VCPU, VM, DescriptorTable, Exit, HltExit, Hypervisor, IoDirection, IoExit, Segment, ShutdownExit
from hvcore.host import UPSTREAM
from tests.boot import boot, read_guest, run_exits, write_guest
from tests.flags import undefined_after
from tests.guests import layout, long_mode
from tests.guests.boot import (
    DIVIDE_ERROR,
    EVENT_PORT,
    INT3,
    INT21,
    INT80,
    LOAD_KERNEL_DS,
    NONCANONICAL_READ,
    READ_UNMAPPED,
    STUBS,
    UD2,
    UNMAPPED,
    WRITE_UNMAPPED,
    vector_stub,
)
from tests.quirks import host_variant

IDT = layout.DATA
TSS = layout.DATA + 0x1000
RSP0 = layout.DATA + 0x3000
IST1 = layout.DATA + 0x4000
TSS_SELECTOR = 0x30
KERNEL_CS, KERNEL_SS, USER_CS, USER_SS, CODE32 = 0x08, 0x10, 0x2B, 0x23, 0x18
RF = 1 << 16
CODE, STACK_TOP = layout.CODE, layout.STACK_TOP
REAL_STUB_SEGMENT = STUBS >> 4


# --- host deviations (probed: hvcore.host; upstream KVM and the simulator do otherwise) ----------------


def int_n_at_cpl3_is_ud(hv: Hypervisor) -> bool:
    """`int n` at CPL3 raises #UD on the int (RIP at it, RF pushed) whatever the gate; upstream vectors it.

    Measured for `int 0x80`, `int 0x21` and `int 0x0d` through DPL3 and DPL0 gates (upstream:
    the vector, or #GP(n * 8 + 2) for a DPL0 gate).
    """
    return {UPSTREAM: False, "ud": True}[host_variant(hv, "int_n_cpl3_ud")]


def int3_ignores_gate_dpl(hv: Hypervisor) -> bool:
    """`int3` at CPL3 through a DPL0 gate is delivered as #BP; upstream raises #GP(3 * 8 + 2) on the int3."""
    return {UPSTREAM: False, "breakpoint_delivered": True}[host_variant(hv, "int3_cpl3_ignores_gate_dpl")]


def gate_code_segment_is_not_checked(hv: Hypervisor) -> bool:
    """A 64-bit gate to a 32-bit code segment is taken (the handler runs in compatibility mode).

    Upstream raises #GP(selector | EXT): the target of a 64-bit gate must be 64-bit code (L=1, D=0).
    """
    return {UPSTREAM: False, "gate_taken": True}[host_variant(hv, "gate_code_segment_unchecked")]


def iopl_is_ignored_at_cpl3(hv: Hypervisor) -> bool:
    """CPL3 code runs with IOPL 0 whatever RFLAGS.IOPL says: `out`/`cli` raise #GP, frames push IOPL 0."""
    return {UPSTREAM: False, "iopl_zero": True}[host_variant(hv, "iopl_ignored_cpl3")]


def ivt_limit_is_ignored(hv: Hypervisor) -> bool:
    """Real mode vectors through IDTR.base whatever IDTR.limit says; upstream raises #GP beyond it."""
    return {UPSTREAM: False, "base_only": True}[host_variant(hv, "ivt_limit_ignored")]


def delivery_faults_become_double_faults(hv: Hypervisor) -> bool:
    """A fault while delivering a *benign* exception (e.g. #UD through a not-present gate) gives #DF.

    Upstream delivers the second exception (#NP, SDM Table 6-5); only contributory + contributory
    and #PF + contributory/#PF escalate to #DF, as they do here too.
    """
    return {UPSTREAM: False, "double_fault": True}[host_variant(hv, "benign_fault_double_faults")]


def null_ss_unusable(hv: Hypervisor) -> int:
    """The ``unusable`` KVM reports for the null SS a 64-bit privilege change loads: 1 upstream."""
    return {UPSTREAM: 1, "reported_usable": 0}[host_variant(hv, "null_ss_usable")]


# --- set-up and checks -------------------------------------------------------------------------------


def stub(vector: int) -> int:
    return STUBS + 8 * vector


def delivered(vector: int) -> list[Exit]:
    """The exits of a delivery to ``vector``'s stub."""
    return [IoExit(EVENT_PORT, 1, 1, IoDirection.OUT, bytes([vector])), HltExit()]


def gate(vector: int, *, dpl: int = 0, ist: int = 0, present: bool = True, selector: int = KERNEL_CS) -> bytes:
    """A 16-byte 64-bit interrupt gate (type 0xE) to ``vector``'s stub."""
    offset = stub(vector)
    access = 0xE | dpl << 5 | int(present) << 7
    low = (offset & 0xFFFF) | selector << 16 | ist << 32 | access << 40 | (offset >> 16 & 0xFFFF) << 48
    return low.to_bytes(8, "little") + (offset >> 32).to_bytes(8, "little")


def missing(vector: int) -> bytes:
    return gate(vector, present=False)


def tss_descriptor(base: int, limit: int) -> bytes:
    """A 16-byte available 64-bit TSS descriptor (type 0x9)."""
    low = (limit & 0xFFFF) | (base & 0xFFFFFF) << 16 | 0x89 << 40 | (limit >> 16 & 0xF) << 48
    low |= (base >> 24 & 0xFF) << 56
    return low.to_bytes(8, "little") + (base >> 32).to_bytes(8, "little")


def write_stubs(vm: VM) -> None:
    write_guest(vm, STUBS, b"".join(vector_stub(v).ljust(8, b"\x90") for v in range(256)))


def long_mode_guest(
    hv: Hypervisor, vm: VM, code: bytes, *, user: bool, gates: dict[int, bytes] | None = None, rflags: int = 0x2
) -> VCPU:
    """``code`` at CODE in 64-bit mode (CPL3 if ``user``), an IDT of present DPL0 gates but ``gates``, a TSS in TR."""
    vcpu = boot(hv, vm, code, "user" if user else "long", rflags=rflags)
    write_stubs(vm)
    idt = {v: gate(v) for v in range(256)} | (gates or {})
    write_guest(vm, IDT, b"".join(idt[v] for v in range(256)))
    tss = bytearray(0x68)
    tss[0x04:0x0C] = RSP0.to_bytes(8, "little")
    tss[0x24:0x2C] = IST1.to_bytes(8, "little")
    tss[0x66:0x68] = len(tss).to_bytes(2, "little")  # no I/O bitmap
    write_guest(vm, TSS, bytes(tss))
    write_guest(vm, layout.GDT + TSS_SELECTOR, tss_descriptor(TSS, len(tss) - 1))
    tr = Segment(base=TSS, limit=len(tss) - 1, selector=TSS_SELECTOR, type=0xB, present=1, s=0)
    sregs = vcpu.get_sregs()
    gdt = DescriptorTable(layout.GDT, TSS_SELECTOR + 15)
    vcpu.set_sregs(replace(sregs, gdt=gdt, idt=DescriptorTable(IDT, 256 * 16 - 1), tr=tr))
    return vcpu


def real_mode_guest(hv: Hypervisor, vm: VM, code: bytes, *, ivt_base: int = 0, ivt_limit: int = 0x3FF) -> VCPU:
    """``code`` at 0:CODE in real mode with IF=1; every IVT entry at ``ivt_base`` points to REAL_STUB_SEGMENT:8v.

    With the IVT elsewhere, every entry of the one at 0 points to the stub of vector 0xFF instead.
    """
    vcpu = boot(hv, vm, code, "real", rflags=0x202)
    write_stubs(vm)
    if ivt_base:
        write_guest(vm, 0, (8 * 0xFF | REAL_STUB_SEGMENT << 16).to_bytes(4, "little") * 256)
    write_guest(vm, ivt_base, b"".join((8 * v | REAL_STUB_SEGMENT << 16).to_bytes(4, "little") for v in range(256)))
    vcpu.set_sregs(replace(vcpu.get_sregs(), idt=DescriptorTable(ivt_base, ivt_limit)))
    return vcpu


def frame(vm: VM, top: int, count: int, size: int = 8) -> list[int]:
    """The ``count`` words of ``size`` bytes just below ``top``, lowest address first."""
    raw = read_guest(vm, top - count * size, count * size)
    return [int.from_bytes(raw[i : i + size], "little") for i in range(0, len(raw), size)]


def check_handler_state(hv: Hypervisor, vcpu: VCPU, vector: int, *, user: bool, rsp: int) -> None:
    """After the stub's HLT: IF/RF/TF clear, on ``rsp``, in KERNEL_CS, SS null after a privilege change."""
    regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
    assert (regs.rip, regs.rsp, regs.rflags) == (stub(vector) + 5, rsp, 0x2)
    assert (sregs.cs.selector, sregs.cs.dpl, sregs.cs.l) == (KERNEL_CS, 0, 1)
    if user:  # a 64-bit privilege change loads a null SS with RPL = the new CPL
        assert (sregs.ss.selector, sregs.ss.present, sregs.ss.dpl) == (0, 0, 0)
        assert sregs.ss.unusable == null_ss_unusable(hv)
    else:
        assert sregs.ss.selector == KERNEL_SS


def interrupted(user: bool) -> tuple[int, int]:
    """CS and SS pushed for guest code at CPL3 (``user``) or CPL0."""
    return (USER_CS, USER_SS) if user else (KERNEL_CS, KERNEL_SS)


# --- real mode ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ivt_base", [0, layout.DATA], ids=["ivt-at-0", "ivt-at-DATA"])
def test_real_mode_int_n_through_the_ivt(hv: Hypervisor, vm: VM, ivt_base: int) -> None:
    vcpu = real_mode_guest(hv, vm, INT21, ivt_base=ivt_base)  # KVM honours IDTR.base in real mode
    assert run_exits(vcpu) == delivered(0x21)
    assert frame(vm, STACK_TOP, 3, 2) == [CODE + 2, 0, 0x202]  # IP, CS, FLAGS
    regs, cs = vcpu.get_regs(), vcpu.get_sregs().cs
    assert (regs.rip, regs.rsp, regs.rflags) == (8 * 0x21 + 5, STACK_TOP - 6, 0x2)  # IF cleared
    assert (cs.selector, cs.base) == (REAL_STUB_SEGMENT, STUBS)


@pytest.mark.parametrize("ivt_base", [0, layout.DATA], ids=["ivt-at-0", "ivt-at-DATA"])
def test_real_mode_divide_error_through_the_ivt(hv: Hypervisor, vm: VM, ivt_base: int) -> None:
    vcpu = real_mode_guest(hv, vm, DIVIDE_ERROR, ivt_base=ivt_base)
    assert run_exits(vcpu) == delivered(0)
    undefined = undefined_after("xor cx, cx")  # the div faults before it writes flags
    ip, cs_pushed, flags = frame(vm, STACK_TOP, 3, 2)
    assert (ip, cs_pushed, flags & ~undefined) == (CODE + 2, 0, 0x246)  # the div (a fault); ZF PF from the xor
    regs, cs = vcpu.get_regs(), vcpu.get_sregs().cs
    assert (regs.rip, regs.rsp, regs.rflags & ~undefined) == (5, STACK_TOP - 6, 0x46)
    assert (cs.selector, cs.base) == (REAL_STUB_SEGMENT, STUBS)


def test_real_mode_vector_beyond_the_ivt_limit(hv: Hypervisor, vm: VM) -> None:
    vcpu = real_mode_guest(hv, vm, DIVIDE_ERROR, ivt_limit=0)
    exits = run_exits(vcpu)
    if ivt_limit_is_ignored(hv):
        assert exits == delivered(0)
        return
    assert exits == [ShutdownExit()]  # #DE, #GP and #DF are all beyond the limit: triple fault
    assert vcpu.run() == ShutdownExit()


def test_real_mode_int_n_beyond_the_ivt_limit_is_gp(hv: Hypervisor, vm: VM) -> None:
    vcpu = real_mode_guest(hv, vm, INT21, ivt_limit=0x83)  # vectors 0..0x20
    exits = run_exits(vcpu)
    if ivt_limit_is_ignored(hv):
        assert exits == delivered(0x21)
        assert frame(vm, STACK_TOP, 3, 2) == [CODE + 2, 0, 0x202]
        return
    assert exits == delivered(13)
    assert frame(vm, STACK_TOP, 3, 2) == [CODE, 0, 0x202]  # a fault on the int itself, no error code in real mode


# --- 64-bit: privilege change, error codes, CR2 ---------------------------------------------------------


@pytest.mark.parametrize("gate_dpl", [3, 0])
@pytest.mark.parametrize(("code", "vector"), [(INT80, 0x80), (INT3, 3)], ids=["int-0x80", "int3"])
def test_software_interrupt_from_user_mode(hv: Hypervisor, vm: VM, code: bytes, vector: int, gate_dpl: int) -> None:
    vcpu = long_mode_guest(hv, vm, code, user=True, gates={vector: gate(vector, dpl=gate_dpl)})
    exits = run_exits(vcpu)
    after = CODE + len(code) - 1  # the instruction after the int (the guest's last byte is a hlt)
    if vector != 3 and int_n_at_cpl3_is_ud(hv):
        seen, pushed = 6, [CODE, USER_CS, RF | 0x2, STACK_TOP, USER_SS]
    elif gate_dpl == 3 or int3_ignores_gate_dpl(hv):
        seen, pushed = vector, [after, USER_CS, 0x2, STACK_TOP, USER_SS]  # a software interrupt pushes no RF
    else:  # the gate's DPL < CPL: #GP(vector * 8 + 2), a fault on the int
        seen, pushed = 13, [vector * 8 + 2, CODE, USER_CS, RF | 0x2, STACK_TOP, USER_SS]
    assert exits == delivered(seen)
    assert frame(vm, RSP0, len(pushed)) == pushed  # [error code,] RIP, CS, RFLAGS, RSP, SS on RSP0
    check_handler_state(hv, vcpu, seen, user=True, rsp=RSP0 - 8 * len(pushed))


FAULTS = [
    # (guest, CPL3?, rflags, vector, error code or None, faulting RIP, CR2)
    pytest.param(UD2, True, 0x2, 6, None, CODE, 0, id="ud-user"),
    pytest.param(UD2, True, 0x202, 6, None, CODE, 0, id="ud-user-if"),
    pytest.param(UD2, False, 0x2, 6, None, CODE, 0, id="ud-kernel"),
    pytest.param(UD2, False, 0x202, 6, None, CODE, 0, id="ud-kernel-if"),
    pytest.param(LOAD_KERNEL_DS, True, 0x2, 13, 0x10, CODE + 4, 0, id="gp-selector-user"),
    pytest.param(NONCANONICAL_READ, True, 0x2, 13, 0, CODE + 10, 0, id="gp-noncanonical-user"),
    pytest.param(NONCANONICAL_READ, False, 0x2, 13, 0, CODE + 10, 0, id="gp-noncanonical-kernel"),
    pytest.param(READ_UNMAPPED, True, 0x2, 14, 0x4, CODE, UNMAPPED, id="pf-read-user"),
    pytest.param(WRITE_UNMAPPED, True, 0x2, 14, 0x6, CODE, UNMAPPED, id="pf-write-user"),
    pytest.param(READ_UNMAPPED, False, 0x2, 14, 0x0, CODE, UNMAPPED, id="pf-read-kernel"),
    pytest.param(WRITE_UNMAPPED, False, 0x2, 14, 0x2, CODE, UNMAPPED, id="pf-write-kernel"),
]


@pytest.mark.parametrize(("code", "user", "rflags", "vector", "error", "rip", "cr2"), FAULTS)
def test_fault_frame(
    hv: Hypervisor, vm: VM, code: bytes, user: bool, rflags: int, vector: int, error: int | None, rip: int, cr2: int
) -> None:
    vcpu = long_mode_guest(hv, vm, code, user=user, rflags=rflags)
    assert run_exits(vcpu) == delivered(vector)
    cs, ss = interrupted(user)
    pushed = [rip, cs, rflags | RF, STACK_TOP, ss]  # a fault's frame has RF set
    if error is not None:
        pushed.insert(0, error)
    top = RSP0 if user else STACK_TOP  # CPL3 -> CPL0 takes RSP0 from the TSS
    assert frame(vm, top, len(pushed)) == pushed
    check_handler_state(hv, vcpu, vector, user=user, rsp=top - 8 * len(pushed))
    assert vcpu.get_sregs().cr2 == cr2


@pytest.mark.parametrize("iopl", [0, 3])
def test_out_from_user_mode_checks_iopl_and_the_io_bitmap(hv: Hypervisor, vm: VM, iopl: int) -> None:
    vcpu = long_mode_guest(hv, vm, long_mode.OUT_LOOP, user=True, rflags=iopl << 12 | 0x2)  # TSS without I/O bitmap
    first = vcpu.run()
    if iopl == 3 and not iopl_is_ignored_at_cpl3(hv):
        assert first == IoExit(0x80, 1, 1, IoDirection.OUT, b"\x00")  # CPL <= IOPL: no bitmap check
        return
    assert [first, vcpu.run()] == delivered(13)  # CPL > IOPL and no bitmap: #GP(0) on the out
    assert frame(vm, RSP0, 6) == [0, CODE, USER_CS, RF | 0x2, STACK_TOP, USER_SS]
    check_handler_state(hv, vcpu, 13, user=True, rsp=RSP0 - 48)


def test_gate_to_a_32_bit_code_segment(hv: Hypervisor, vm: VM) -> None:
    vcpu = long_mode_guest(hv, vm, UD2, user=False, gates={6: gate(6, selector=CODE32)})
    exits = run_exits(vcpu)
    if gate_code_segment_is_not_checked(hv):
        assert exits == delivered(6)  # the stub's bytes mean the same in 32-bit code
        assert frame(vm, STACK_TOP, 5) == [CODE, KERNEL_CS, RF | 0x2, STACK_TOP, KERNEL_SS]
        cs = vcpu.get_sregs().cs
        assert (cs.selector, cs.l, cs.db) == (CODE32, 0, 1)
        return
    assert exits == delivered(13)  # #UD is benign, so the #GP(selector | EXT) it meets is delivered
    assert frame(vm, STACK_TOP, 6) == [CODE32 | 1, CODE, KERNEL_CS, RF | 0x2, STACK_TOP, KERNEL_SS]
    check_handler_state(hv, vcpu, 13, user=False, rsp=STACK_TOP - 48)


# --- NMI and injected interrupts ---------------------------------------------------------------------------


@pytest.mark.parametrize("user", [True, False], ids=["user", "kernel"])
def test_nmi_through_an_ist_stack(hv: Hypervisor, vm: VM, user: bool) -> None:
    vcpu = long_mode_guest(hv, vm, long_mode.SPIN, user=user, gates={2: gate(2, ist=1)})
    vcpu.nmi()  # delivered on entry, before the first instruction
    assert run_exits(vcpu) == delivered(2)
    cs, ss = interrupted(user)
    assert frame(vm, IST1, 5) == [CODE, cs, 0x2, STACK_TOP, ss]  # IST1 even without a privilege change
    check_handler_state(hv, vcpu, 2, user=user, rsp=IST1 - 40)
    assert frame(vm, RSP0, 5) == [0] * 5


def test_nmi_is_blocked_until_iret(hv: Hypervisor, vm: VM) -> None:
    vcpu = long_mode_guest(hv, vm, long_mode.SPIN, user=True, gates={2: gate(2, ist=1)})
    vcpu.nmi()
    assert vcpu.run() == delivered(2)[0]
    events = vcpu.get_vcpu_events()
    assert (events.nmi_masked, events.nmi_pending) == (1, 0)
    vcpu.nmi()  # the handler has not executed IRET: this one waits
    assert vcpu.run() == HltExit()
    events = vcpu.get_vcpu_events()
    assert (events.nmi_masked, events.nmi_pending) == (1, 1)


@pytest.mark.parametrize("user", [True, False], ids=["user", "kernel"])
def test_interrupt_injected_while_if_is_clear_is_delivered(hv: Hypervisor, vm: VM, user: bool) -> None:
    vcpu = long_mode_guest(hv, vm, long_mode.SPIN, user=user)
    vcpu.interrupt(0x20)  # KVM_INTERRUPT does not look at IF
    assert run_exits(vcpu) == delivered(0x20)
    cs, ss = interrupted(user)
    top = RSP0 if user else STACK_TOP
    assert frame(vm, top, 5) == [CODE, cs, 0x2, STACK_TOP, ss]  # IF was clear; an interrupt pushes no RF
    check_handler_state(hv, vcpu, 0x20, user=user, rsp=top - 40)
    assert not vcpu.if_flag


# --- double and triple faults ------------------------------------------------------------------------------

ESCALATIONS = [
    # (guest, CPL3?, the exception whose gate is missing, faulting RIP, CR2)
    pytest.param(LOAD_KERNEL_DS, True, 13, CODE + 4, 0, id="gp-user"),
    pytest.param(NONCANONICAL_READ, False, 13, CODE + 10, 0, id="gp-kernel"),
    pytest.param(READ_UNMAPPED, True, 14, CODE, UNMAPPED, id="pf-user"),
]


@pytest.mark.parametrize(("code", "user", "first", "rip", "cr2"), ESCALATIONS)
def test_double_fault_through_an_ist_stack(
    hv: Hypervisor, vm: VM, code: bytes, user: bool, first: int, rip: int, cr2: int
) -> None:
    vcpu = long_mode_guest(hv, vm, code, user=user, gates={first: missing(first), 8: gate(8, ist=1)})
    assert run_exits(vcpu) == delivered(8)  # #NP on the gate is contributory: #DF, error code 0
    cs, ss = interrupted(user)
    pushed = frame(vm, IST1, 6)
    assert pushed[:3] + pushed[4:] == [0, rip, cs, STACK_TOP, ss]
    check_handler_state(hv, vcpu, 8, user=user, rsp=IST1 - 48)
    assert vcpu.get_sregs().cr2 == cr2
    assert pushed[3] == RF | 0x2  # KVM set RFLAGS.RF when it injected the first (fault-class) exception


@pytest.mark.parametrize("user", [True, False], ids=["user", "kernel"])
def test_benign_exception_through_a_missing_gate(hv: Hypervisor, vm: VM, user: bool) -> None:
    vcpu = long_mode_guest(hv, vm, UD2, user=user, gates={6: missing(6)})
    exits = run_exits(vcpu)
    cs, ss = interrupted(user)
    top = RSP0 if user else STACK_TOP
    if delivery_faults_become_double_faults(hv):
        assert exits == delivered(8)
        assert frame(vm, top, 6) == [0, CODE, cs, RF | 0x2, STACK_TOP, ss]
        return
    assert exits == delivered(11)  # #UD is benign: #NP(6 * 8 + IDT + EXT) is delivered instead
    assert frame(vm, top, 6) == [6 * 8 + 3, CODE, cs, RF | 0x2, STACK_TOP, ss]
    check_handler_state(hv, vcpu, 11, user=user, rsp=top - 48)


@pytest.mark.parametrize(("code", "user", "first", "rip", "cr2"), ESCALATIONS)
def test_triple_fault_shuts_down(
    hv: Hypervisor, vm: VM, code: bytes, user: bool, first: int, rip: int, cr2: int
) -> None:
    vcpu = long_mode_guest(hv, vm, code, user=user, gates={first: missing(first), 8: missing(8)})
    assert run_exits(vcpu) == [ShutdownExit()]
    assert vcpu.run() == ShutdownExit()  # and again, until the VMM resets the vCPU
    regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
    assert (regs.rip, regs.rsp) == (rip, STACK_TOP)
    assert (sregs.cs.selector, sregs.ss.selector) == interrupted(user)
    assert sregs.cr2 == cr2
    assert frame(vm, RSP0, 6) == frame(vm, STACK_TOP, 6) == [0] * 6  # nothing was pushed
    assert regs.rflags == RF | 0x2  # set by KVM when it injected the first exception


# 64-bit: a 4 KiB page table for the first 2 MiB (identity, page 0x6000 not present) at PAGE_TABLE;
# jmp to 0x5ffb: inc ecx; inc ecx; then an inc ecx whose second byte is on the absent page.
PAGE_TABLE = layout.DATA + 0x8000
ABSENT = 0x6000
INCS_AT = ABSENT - 5
JUMPS_TO_INCS = b"\xb8" + INCS_AT.to_bytes(4, "little") + b"\xff\xe0"  # mov eax, INCS_AT; jmp rax


def test_page_fault_fetching_a_later_instruction_comes_after_those_before_it(
    hv: Hypervisor, vm: VM, request: pytest.FixtureRequest
) -> None:
    """KVM runs both ``inc ecx``, then the #PF of the third one's fetch: CR2 the absent page, RIP at that inc."""
    if hv.name == "sim":
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                reason="sim: Unicorn translates the three incs as one block and its fetch #PF comes at the first",
            )
        )
    vcpu = long_mode_guest(hv, vm, JUMPS_TO_INCS, user=False)
    table = b"".join((0 if i << 12 == ABSENT else i << 12 | 0x7).to_bytes(8, "little") for i in range(512))
    write_guest(vm, PAGE_TABLE, table)
    write_guest(vm, layout.PD, (PAGE_TABLE | 0x7).to_bytes(8, "little"))
    write_guest(vm, INCS_AT, b"\xff\xc1" * 3)
    vcpu.set_regs(replace(vcpu.get_regs(), rcx=0))
    assert run_exits(vcpu) == delivered(14)
    assert frame(vm, STACK_TOP, 6)[:3] == [0, ABSENT - 1, KERNEL_CS]  # error code (not present, read), RIP, CS
    assert (vcpu.get_sregs().cr2, vcpu.get_regs().rcx) == (ABSENT, 2)
