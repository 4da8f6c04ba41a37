"""64-bit event delivery: exceptions at CPL0 and CPL3, error codes, IST, #DF, triple fault, NMI, MSRs.

Memory (``tests.guests.layout``): stubs at STUBS (``cases_events``), the IDT (256 16-byte
interrupt gates, DPL0, selector 0x08) at DATA, a 64-bit TSS at DATA + 0x1000 (RSP0 = DATA +
0x3000, IST1 = DATA + 0x4000, no I/O bitmap) with its descriptor at GDT + 0x30, loaded in TR.
``"frame"`` is the 48 bytes below the stack the CPU pushes on (six quadwords, lowest first: the
error code's slot, RIP, CS, RFLAGS, RSP, SS; the first stays 0 when there is no error code).

Most divergences of this host's KVM are here; each case names them, and its variants give
the exact outcome under each (the registry in ``tests.quirks`` says why).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields, replace

from hvcore import DescriptorTable, HltExit, Segment, x86
from tests.conformance.cases_events import delivered, redeliver, then, words, write_stubs
from tests.conformance.harness import Case, Host, Outcome, hlt, mmio_read, out, script, shutdown
from tests.guests import layout, long_mode
from tests.guests.boot import (
    INT3,
    INT80,
    LOAD_KERNEL_DS,
    NONCANONICAL_READ,
    READ_UNMAPPED,
    STUBS,
    UD2,
    UNMAPPED,
)

CODE, STACK_TOP, GDT = layout.CODE, layout.STACK_TOP, layout.GDT
IDT, TSS = layout.DATA, layout.DATA + 0x1000
RSP0, IST1 = layout.DATA + 0x3000, layout.DATA + 0x4000
TSS_SELECTOR = 0x30
KERNEL_CS, KERNEL_SS, USER_CS, USER_SS, CODE32 = 0x08, 0x10, 0x2B, 0x23, 0x18
RF = 1 << 16


def gate(vector: int, *, dpl: int = 0, ist: int = 0, present: bool = True, selector: int = KERNEL_CS) -> bytes:
    """A 16-byte 64-bit interrupt gate (type 0xE) to ``vector``'s stub."""
    offset = STUBS + 8 * vector
    access = 0xE | dpl << 5 | int(present) << 7
    low = (offset & 0xFFFF) | selector << 16 | ist << 32 | access << 40 | (offset >> 16 & 0xFFFF) << 48
    return low.to_bytes(8, "little") + (offset >> 32).to_bytes(8, "little")


def tss_descriptor(base: int, limit: int) -> bytes:
    """A 16-byte available 64-bit TSS descriptor (type 0x9)."""
    low = (limit & 0xFFFF) | (base & 0xFFFFFF) << 16 | 0x89 << 40 | (limit >> 16 & 0xF) << 48
    low |= (base >> 24 & 0xFF) << 56
    return low.to_bytes(8, "little") + (base >> 32).to_bytes(8, "little")


def idt64(gates: Mapping[int, bytes] | None = None, *, limit: int = 256 * 16 - 1) -> Callable[[Host], None]:
    """Set-up: stubs, an IDT of present DPL0 gates but ``gates``, and the TSS in TR."""

    def setup(host: Host) -> None:
        write_stubs(host)
        idt = {v: gate(v) for v in range(256)} | dict(gates or {})
        host.write(IDT, b"".join(idt[v] for v in range(256)))
        tss = bytearray(0x68)
        tss[0x04:0x0C] = RSP0.to_bytes(8, "little")
        tss[0x24:0x2C] = IST1.to_bytes(8, "little")
        tss[0x66:0x68] = len(tss).to_bytes(2, "little")  # no I/O bitmap
        host.write(TSS, bytes(tss))
        host.write(GDT + TSS_SELECTOR, tss_descriptor(TSS, len(tss) - 1))
        tr = Segment(base=TSS, limit=len(tss) - 1, selector=TSS_SELECTOR, type=0xB, present=1, s=0)
        vcpu = host.vcpu
        sregs = replace(vcpu.get_sregs(), gdt=DescriptorTable(GDT, TSS_SELECTOR + 15), idt=DescriptorTable(IDT, limit))
        vcpu.set_sregs(replace(sregs, tr=tr))

    return setup


def frame(*pushed: int) -> bytes:
    """The 48-byte frame snapshot: ``pushed`` (5 or 6 quadwords) at its top, zeros below."""
    return bytes(8 * (6 - len(pushed))) + words(*pushed, size=8)


def handled(vector: int, top: int, pushed: int, **more: int) -> dict[str, int]:
    """Registers after the stub of ``vector`` halted, ``pushed`` quadwords below ``top``."""
    return {"rip": STUBS + 8 * vector + 5, "rax": vector, "rsp": top - 8 * pushed, "rflags": 0x2} | more


def segment_state(name: str, segment: Segment) -> dict[str, int]:
    """``segment`` as the flattened state keys of register ``name``."""
    return {f"{name}.{f.name}": int(getattr(segment, f.name)) for f in fields(segment)}


NULL_SS = Segment(limit=0, type=0, present=0, s=0, unusable=1)
USER_HANDLER = segment_state("cs", x86.flat_segment(KERNEL_CS, code=True, bits=64)) | segment_state("ss", NULL_SS)
"""A CPL3 -> CPL0 change in 64-bit mode loads the kernel CS and a null SS (RPL 0), reported unusable."""

LONG_UD = Case(
    "long_ud_kernel",
    "64-bit #UD at CPL0: the frame on the same stack, RF set in the pushed RFLAGS",
    "long",
    UD2,
    setup=idt64(),
    memory={"frame": (STACK_TOP - 48, 48)},
    expect=Outcome(
        steps=delivered(6),
        state=handled(6, STACK_TOP, 5, **{"cs.selector": KERNEL_CS, "ss.selector": KERNEL_SS}),
        memory={"frame": frame(CODE, KERNEL_CS, RF | 0x2, STACK_TOP, KERNEL_SS)},
    ),
    covers=frozenset({"exception-delivery"}),
)

USER_PAGE_FAULT = Case(
    "user_page_fault",
    "64-bit CPL3 read of an unmapped page: #PF(4) on RSP0 from the TSS, CR2, null SS",
    "user",
    READ_UNMAPPED,
    setup=idt64(),
    memory={"frame": (RSP0 - 48, 48)},
    expect=Outcome(
        steps=delivered(14),
        state=handled(14, RSP0, 6, cr2=UNMAPPED, **USER_HANDLER),
        memory={"frame": frame(4, CODE, USER_CS, RF | 0x2, STACK_TOP, USER_SS)},
    ),
    quirks=("null_ss_usable",),
    covers=frozenset({"exception-delivery", "paging"}),
)

USER_GP_SELECTOR = Case(
    "user_gp_kernel_selector",
    "64-bit CPL3 loading DS with a DPL0 selector: #GP(0x10)",
    "user",
    LOAD_KERNEL_DS,
    setup=idt64(),
    memory={"frame": (RSP0 - 48, 48)},
    expect=Outcome(
        steps=delivered(13),
        state=handled(13, RSP0, 6, **USER_HANDLER),
        memory={"frame": frame(0x10, CODE + 4, USER_CS, RF | 0x2, STACK_TOP, USER_SS)},
    ),
    quirks=("null_ss_usable",),
    covers=frozenset({"exception-delivery"}),
)

USER_INT80 = Case(
    "user_int80",
    "64-bit CPL3 `int 0x80` through a DPL3 gate: a software interrupt (no RF) on RSP0",
    "user",
    INT80,
    setup=idt64({0x80: gate(0x80, dpl=3)}),
    memory={"frame": (RSP0 - 48, 48)},
    expect=Outcome(
        steps=delivered(0x80),
        state=handled(0x80, RSP0, 5, **USER_HANDLER),
        memory={"frame": frame(CODE + 2, USER_CS, 0x2, STACK_TOP, USER_SS)},
    ),
    quirks=("int_n_cpl3_ud", "null_ss_usable"),
    variants={
        "int_n_cpl3_ud": redeliver(
            delivered(6), frame(CODE, USER_CS, RF | 0x2, STACK_TOP, USER_SS), handled(6, RSP0, 5)
        ),
    },
    covers=frozenset({"exception-delivery"}),
)

USER_INT3_DPL0 = Case(
    "user_int3_dpl0_gate",
    "64-bit CPL3 `int3` through a DPL0 gate: #GP(3 * 8 + 2) on the int3",
    "user",
    INT3,
    setup=idt64({3: gate(3, dpl=0)}),
    memory={"frame": (RSP0 - 48, 48)},
    expect=Outcome(
        steps=delivered(13),
        state=handled(13, RSP0, 6, **USER_HANDLER),
        memory={"frame": frame(3 * 8 + 2, CODE, USER_CS, RF | 0x2, STACK_TOP, USER_SS)},
    ),
    quirks=("int3_cpl3_ignores_gate_dpl", "null_ss_usable"),
    variants={
        "int3_cpl3_ignores_gate_dpl": redeliver(
            delivered(3), frame(CODE + 1, USER_CS, 0x2, STACK_TOP, USER_SS), handled(3, RSP0, 5)
        ),
    },
    covers=frozenset({"exception-delivery"}),
)

USER_OUT_IOPL3 = Case(
    "user_out_iopl3",
    "64-bit CPL3 with IOPL=3: `out` is allowed (no I/O bitmap check), an IO exit each time",
    "user",
    long_mode.OUT_LOOP,
    regs={"rflags": 0x3002},
    setup=idt64(),
    script=script(steps=2),
    memory={"frame": (RSP0 - 48, 48)},
    expect=Outcome(
        steps=(out(0x80, 0, CODE + 2), out(0x80, 0, CODE + 2)),
        state={"rip": CODE + 2, "rax": 0, "rsp": STACK_TOP, "rflags": 0x3002, "cs.selector": USER_CS,
               "ss.selector": USER_SS, "ss.unusable": 0},
        memory={"frame": bytes(48)},
    ),
    quirks=("iopl_ignored_cpl3", "null_ss_usable"),
    variants={
        "iopl_ignored_cpl3": redeliver(
            delivered(13), frame(0, CODE, USER_CS, RF | 0x2, STACK_TOP, USER_SS), handled(13, RSP0, 6, **USER_HANDLER)
        ),
    },
    covers=frozenset({"exception-delivery", "io"}),
)

LONG_GATE_TO_CODE32 = Case(
    "long_gate_to_code32",
    "64-bit #UD through a gate whose selector is 32-bit code: #GP(selector | EXT)",
    "long",
    UD2,
    setup=idt64({6: gate(6, selector=CODE32)}),
    memory={"frame": (STACK_TOP - 48, 48)},
    expect=Outcome(
        steps=delivered(13),
        state=handled(13, STACK_TOP, 6, **{"cs.selector": KERNEL_CS, "cs.l": 1, "cs.db": 0}),
        memory={"frame": frame(CODE32 | 1, CODE, KERNEL_CS, RF | 0x2, STACK_TOP, KERNEL_SS)},
    ),
    quirks=("gate_code_segment_unchecked",),
    variants={
        "gate_code_segment_unchecked": redeliver(
            delivered(6),
            frame(CODE, KERNEL_CS, RF | 0x2, STACK_TOP, KERNEL_SS),
            handled(6, STACK_TOP, 5, **{"cs.selector": CODE32, "cs.l": 0, "cs.db": 1}),
        ),
    },
    covers=frozenset({"exception-delivery"}),
)

LONG_BENIGN_MISSING_GATE = Case(
    "long_benign_missing_gate",
    "64-bit #UD whose gate is not present: #NP(6 * 8 + IDT + EXT), not #DF (#UD is benign)",
    "long",
    UD2,
    setup=idt64({6: gate(6, present=False)}),
    memory={"frame": (STACK_TOP - 48, 48)},
    expect=Outcome(
        steps=delivered(11),
        state=handled(11, STACK_TOP, 6),
        memory={"frame": frame(6 * 8 + 3, CODE, KERNEL_CS, RF | 0x2, STACK_TOP, KERNEL_SS)},
    ),
    quirks=("benign_fault_double_faults",),
    variants={
        "benign_fault_double_faults": redeliver(
            delivered(8), frame(0, CODE, KERNEL_CS, RF | 0x2, STACK_TOP, KERNEL_SS), handled(8, STACK_TOP, 6)
        ),
    },
    covers=frozenset({"exception-delivery"}),
)

LONG_DOUBLE_FAULT = Case(
    "long_double_fault_ist",
    "64-bit #GP (non-canonical read) whose gate is missing: #DF through IST1, error code 0",
    "long",
    NONCANONICAL_READ,
    setup=idt64({13: gate(13, present=False), 8: gate(8, ist=1)}),
    memory={"frame": (IST1 - 48, 48)},
    expect=Outcome(
        steps=delivered(8),
        state=handled(8, IST1, 6, rax=0x8000000000000008),  # the stub set al
        memory={"frame": frame(0, CODE + 10, KERNEL_CS, RF | 0x2, STACK_TOP, KERNEL_SS)},
    ),
    covers=frozenset({"exception-delivery"}),
)

LONG_TRIPLE_FAULT = Case(
    "long_triple_fault",
    "64-bit #UD with IDTR.limit 0: triple fault, SHUTDOWN, and SHUTDOWN again on the next run",
    "long",
    long_mode.TRIPLE_FAULT,
    setup=idt64(limit=0),
    script=script(steps=2, until=(HltExit,)),
    memory={"frame": (STACK_TOP - 48, 48)},
    expect=Outcome(
        steps=(shutdown(CODE), shutdown(CODE)),
        state={"rip": CODE, "rsp": STACK_TOP, "rflags": RF | 0x2},  # RF: KVM injected the fault first
        memory={"frame": bytes(48)},
    ),
    covers=frozenset({"triple-fault"}),
)


def _nmi(host: Host) -> None:
    host.vcpu.nmi()


def _note_nmi_masked(host: Host) -> None:
    host.note("nmi_masked", host.vcpu.get_vcpu_events().nmi_masked)


LONG_NMI_IST = Case(
    "long_nmi_ist",
    "an NMI queued before the run is delivered through IST1 first; NMIs stay masked in the handler",
    "long",
    long_mode.SPIN,
    setup=then(idt64({2: gate(2, ist=1)}), _nmi),
    script=script(actions={0: _note_nmi_masked}),
    memory={"frame": (IST1 - 48, 48)},
    expect=Outcome(
        steps=delivered(2),
        state=handled(2, IST1, 5),
        memory={"frame": frame(CODE, KERNEL_CS, 0x2, STACK_TOP, KERNEL_SS)},
        notes=((0, "nmi_masked", 1),),
    ),
    covers=frozenset({"interrupt-injection", "exception-delivery"}),
)

# 64-bit CPL0: RDMSR of an MSR nobody has, then the value read is sent out.
# Host: 64-bit, rip=CODE, the IDT above. Exits: #GP(0) on the rdmsr (OUT 13, HLT).
RDMSR_UNKNOWN = (
    b"\xb9\xef\xbe\xad\xde"  # 1000 mov ecx, 0xdeadbeef
    b"\xb8\x55\x55\x55\x55"  # 1005 mov eax, 0x55555555
    b"\x0f\x32"              # 100A rdmsr
    b"\xe7\x20"              # 100C out 0x20, eax
    b"\xf4"                  # 100E hlt
)

LONG_RDMSR_UNKNOWN = Case(
    "long_rdmsr_unknown",
    "64-bit RDMSR of an unknown MSR: #GP(0) on the rdmsr",
    "long",
    RDMSR_UNKNOWN,
    setup=idt64(),
    memory={"frame": (STACK_TOP - 48, 48)},
    expect=Outcome(
        steps=delivered(13),
        state=handled(13, STACK_TOP, 6, rax=0x5555550D, rdx=0x600),
        memory={"frame": frame(0, CODE + 10, KERNEL_CS, RF | 0x2, STACK_TOP, KERNEL_SS)},
    ),
    covers=frozenset({"exception-delivery"}),
)

# 64-bit CPL0: a 2 MiB page the host maps at linear 0x40000000 (PDPT[1] -> PD at DATA + 0x2000)
# whose physical address is 2^44 (within this host's 48-bit MAXPHYADDR, outside every slot).
# Exits: MMIO read 0x100000000010 len 8 (rip 0x1000, answer 0x77), HLT 0x1009.
HIGH_PHYSICAL = (
    b"\x48\x8b\x04\x25\x10\x00\x00\x40"  # 1000 mov rax, qword ptr [0x40000010]
    b"\xf4"                              # 1008 hlt
)
HIGH_PAGE = 1 << 44


def _map_high_page(host: Host) -> None:
    host.write(layout.PDPT + 8, (layout.DATA + 0x2000 | 0x3).to_bytes(8, "little"))
    host.write(layout.DATA + 0x2000, (HIGH_PAGE | 0x83).to_bytes(8, "little"))  # present, writable, 2 MiB


LONG_HIGH_PHYSICAL = Case(
    "long_high_physical_address",
    "64-bit: a page at guest-physical 2^44 (no slot): an MMIO exit with the full address",
    "long",
    HIGH_PHYSICAL,
    setup=then(idt64(), _map_high_page),
    script=script((0x77,)),
    memory={"frame": (STACK_TOP - 48, 48)},
    expect=Outcome(
        steps=(mmio_read(HIGH_PAGE + 0x10, 8, CODE, 0x77), hlt(CODE + 9)),
        state={"rax": 0x77, "rip": CODE + 9, "rsp": STACK_TOP, "cr2": 0},
        memory={"frame": bytes(48)},
    ),
    quirks=("maxphyaddr_40",),
    variants={
        "maxphyaddr_40": redeliver(  # #PF(P | RSVD) on the read
            delivered(14),
            frame(0x9, CODE, KERNEL_CS, RF | 0x2, STACK_TOP, KERNEL_SS),
            handled(14, STACK_TOP, 6, cr2=0x40000010),
        )
    },
    covers=frozenset({"mmio", "paging", "exception-delivery"}),
)

CASES = (
    LONG_UD,
    USER_PAGE_FAULT,
    USER_GP_SELECTOR,
    USER_INT80,
    USER_INT3_DPL0,
    USER_OUT_IOPL3,
    LONG_GATE_TO_CODE32,
    LONG_BENIGN_MISSING_GATE,
    LONG_DOUBLE_FAULT,
    LONG_TRIPLE_FAULT,
    LONG_NMI_IST,
    LONG_RDMSR_UNKNOWN,
    LONG_HIGH_PHYSICAL,
)
