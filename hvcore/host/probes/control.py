"""Probes for guest debug, emulation failures, interrupt windows, paging and the irqchip."""

from __future__ import annotations

from hvcore.exits import (
    DebugExit,
    Exit,
    HltExit,
    InternalErrorExit,
    IoDirection,
    IoExit,
    IrqWindowOpenExit,
    ShutdownExit,
)
from hvcore.host.deviation import UPSTREAM, Deviation, Unrecognised
from hvcore.host.guest import CODE, DATA, ProbeGuest, gate
from hvcore.protocol import Hypervisor
from hvcore.types import GuestDebug, GuestDebugFlags

__all__ = ["DEVIATIONS"]

_SINGLE_STEP = GuestDebug(GuestDebugFlags.ENABLE | GuestDebugFlags.SINGLESTEP)
_DR6_BS = 1 << 14
_CR0_PG = 1 << 31


def _le32(value: int) -> bytes:
    return value.to_bytes(4, "little")


def _out(port: int, value: int, size: int = 1) -> IoExit:
    """The exit of a guest's ``out port, al/eax`` with ``value``."""
    return IoExit(port, size, 1, IoDirection.OUT, value.to_bytes(size, "little"))


# --- single-step --------------------------------------------------------------------------------------


def _single_step_dr7(hv: Hypervisor) -> str:
    code = (
        b"\x90"  # nop            <- stepped: DEBUG exit with pc = CODE + 1
        b"\xf4"  # hlt
    )
    with ProbeGuest(hv, code, "long") as guest:
        guest.vcpu.set_guest_debug(_SINGLE_STEP)
        exit_ = guest.run()
    if not isinstance(exit_, DebugExit) or exit_.exception != 1 or exit_.pc != CODE + 1:
        raise Unrecognised(f"single-stepping a nop gave {exit_!r}, not a #DB DEBUG exit at {CODE + 1:#x}")
    if exit_.dr7 == 0x400:
        return UPSTREAM
    if exit_.dr7 == 0:
        return "dr7_zero"
    raise Unrecognised(f"a single-step DEBUG exit reported dr7={exit_.dr7:#x}")


# 64-bit CPL0, single-stepped across an OUT (tests/conformance/cases_control.py STEP_OVER_OUT).
# Exits: DEBUG pc 0x1002; OUT 0x80 data 1 (rip 0x1004); then upstream DEBUG pc 0x1004 (the OUT's own
# step, al = 1), on `out_step_missed` hosts DEBUG pc 0x1006 (the first inc's step, al = 2).
_STEP_OVER_OUT = (
    b"\xb0\x01"  # 1000 mov al, 1
    b"\xe6\x80"  # 1002 out 0x80, al
    b"\xfe\xc0"  # 1004 inc al
    b"\xfe\xc0"  # 1006 inc al
    b"\xf4"      # 1008 hlt
)  # fmt: skip


def _is_step(exit_: Exit, pc: int) -> bool:
    return isinstance(exit_, DebugExit) and exit_.exception == 1 and exit_.pc == pc and bool(exit_.dr6 & _DR6_BS)


def _single_step_after_out(hv: Hypervisor) -> str:
    with ProbeGuest(hv, _STEP_OVER_OUT, "long") as guest:
        guest.vcpu.set_guest_debug(_SINGLE_STEP)
        exits = [guest.run(), guest.run(), guest.run()]
        regs = guest.vcpu.get_regs()
    first, io, after = exits
    if not _is_step(first, CODE + 2) or io != _out(0x80, 1):
        raise Unrecognised(f"single-stepping `mov al, 1; out 0x80, al` gave {exits[:2]!r}")
    if _is_step(after, CODE + 4) and regs.rip == CODE + 4 and regs.rax & 0xFF == 1:
        return UPSTREAM
    if _is_step(after, CODE + 6) and regs.rip == CODE + 6 and regs.rax & 0xFF == 2:
        return "out_step_missed"
    raise Unrecognised(f"the run after a stepped OUT's exit gave {after!r} (rip {regs.rip:#x}, rax {regs.rax:#x})")


# --- OUT completion -----------------------------------------------------------------------------------

# 64-bit CPL0: `sti` (IF was 0), then an OUT in its shadow. Upstream (kvm_fast_pio_out): the exit
# leaves RIP at the OUT (0x1003) with the shadow in force (ready_for_interrupt_injection 0), and the
# next run moves RIP past it (0x1005) before the guest runs on. `rip_past_out` hosts: RIP is at 0x1005
# at the exit already, and the shadow is over.
_OUT_IN_SHADOW = (
    b"\xb0\x07"  # 1000 mov al, 7
    b"\xfb"      # 1002 sti
    b"\xe6\x80"  # 1003 out 0x80, al   <- in the STI shadow
    b"\xf4"      # 1005 hlt
)  # fmt: skip


def _out_completed_at_exit(hv: Hypervisor) -> str:
    with ProbeGuest(hv, _OUT_IN_SHADOW, "long") as guest:
        exit_ = guest.run()
        rip, ready = guest.vcpu.get_regs().rip, guest.vcpu.ready_for_interrupt_injection
        after = guest.run()
        rip_after = guest.vcpu.get_regs().rip
    if exit_ != _out(0x80, 7) or not isinstance(after, HltExit) or rip_after != CODE + 6:
        raise Unrecognised(f"`sti; out 0x80, al; hlt` gave {exit_!r}, then {after!r} at rip {rip_after:#x}")
    if (rip, ready) == (CODE + 3, False):
        return UPSTREAM
    if (rip, ready) == (CODE + 5, True):
        return "rip_past_out"
    raise Unrecognised(f"at the exit of an OUT in the STI shadow: rip {rip:#x}, ready_for_interrupt_injection {ready}")


# --- emulation failure --------------------------------------------------------------------------------

_UNBACKED = 0xD0000
"""Identity-mapped by the probe guest's page tables, backed by no memory slot."""

# 64-bit CPL0 jumps to memory no slot backs (cases_control.py EXEC_MMIO_64): an emulation failure.
# Exit: INTERNAL_ERROR suberror 1, rip 0xD0000.
_EXEC_UNBACKED = (
    b"\xb8" + _le32(_UNBACKED)  # 1000 mov eax, 0xD0000
    + b"\xff\xe0"               # 1005 jmp rax
)  # fmt: skip

_PVM_EXIT_INFO = (0x1000, 0, 0, 0, 0)
"""The exit-info words kvm_pvm appends to the flags word (tests/quirks.py PVM_EMULATION_FAILURE_INFO)."""

_PAGING_FAULT_EXITS = {
    0: "VMX exception (#PF, shadow paging)",
    48: "VMX EPT violation",
    49: "VMX EPT misconfiguration",
    0x4E: "SVM #PF intercept (shadow paging)",
    0x400: "SVM nested page fault",
}
"""The first exit-info word (VMX exit reason or SVM exit code) of the exits after which upstream KVM emulates a
fetch from an address no slot backs; kvm_pvm's 0x1000 is neither a VMX exit reason nor an SVM exit code."""


def _internal_error_exit_info(hv: Hypervisor) -> str:
    with ProbeGuest(hv, _EXEC_UNBACKED, "long") as guest:
        exit_ = guest.run()
        rip = guest.vcpu.get_regs().rip
    if not isinstance(exit_, InternalErrorExit) or exit_.suberror != 1 or rip != _UNBACKED:
        raise Unrecognised(f"a jump to unbacked {_UNBACKED:#x} gave {exit_!r} (rip {rip:#x}), not an emulation failure")
    data = exit_.data
    if data in ((), (0,)):
        return UPSTREAM  # no hardware exit to report (the simulator; kernels before the exit info was added)
    if len(data) == 6 and data[0] == 0:
        if data[1:] == _PVM_EXIT_INFO:
            return "pvm_exit_info"
        if data[1] in _PAGING_FAULT_EXITS:
            return UPSTREAM
    raise Unrecognised(f"an emulation failure reported data ({', '.join(hex(d) for d in data)})")


# --- interrupt window ---------------------------------------------------------------------------------

# 64-bit CPL0 with IF=0 and an interrupt window requested before the run: `sti`, then a counting loop.
# Upstream: IRQ_WINDOW_OPEN once the inc in the sti shadow ran (rip 0x1005, ecx 1). `batch_end` hosts:
# at the end of a batch of emulated instructions (measured: usually rip 0x1003, ecx 511, the run's
# 1024th instruction; about one run in ten earlier, anywhere in the loop).
_WINDOW_COUNT = (
    b"\x31\xc9"  # 1000 xor ecx, ecx
    b"\xfb"      # 1002 sti
    b"\xff\xc1"  # 1003 spin: inc ecx
    b"\xeb\xfc"  # 1005 jmp spin
)  # fmt: skip
_WINDOW_RUNS = 3
"""Runs that must all look upstream: a batch the host cut short could end right after the shadow once."""
_BATCH = 1024
"""Instructions in the emulator's batch: the loop has run at most about half as many times."""


def _irq_window_batch(hv: Hypervisor) -> str:
    spin, jump = CODE + 3, CODE + 5
    for _ in range(_WINDOW_RUNS):
        with ProbeGuest(hv, _WINDOW_COUNT, "long") as guest:
            guest.vcpu.request_interrupt_window = True
            exit_ = guest.run()
            regs = guest.vcpu.get_regs()
            ready, if_flag = guest.vcpu.ready_for_interrupt_injection, guest.vcpu.if_flag
        seen = f"{exit_!r} at rip {regs.rip:#x} with ecx {regs.rcx} (ready {ready}, if_flag {if_flag})"
        if not isinstance(exit_, IrqWindowOpenExit) or not (ready and if_flag):
            raise Unrecognised(f"`sti` and a loop with an interrupt window requested gave {seen}")
        if (regs.rip, regs.rcx) == (jump, 1):
            continue
        if regs.rip in (spin, jump) and 1 <= regs.rcx <= _BATCH // 2:
            return "batch_end"
        raise Unrecognised(f"the interrupt window opened neither after the `sti` shadow nor at a batch's end: {seen}")
    return UPSTREAM


# --- paging -------------------------------------------------------------------------------------------

_PD = DATA
_ALIAS = 0x400000 + DATA + 0x100
"""Linear address of DATA + 0x100 through PDE 1 (4 MiB up), which maps physical 0 as PDE 0 does."""

# 32-bit protected mode turns on non-PAE paging with 4 MiB pages (cases_machine.py LEGACY_PAGING),
# writes through the alias and reads the value back at DATA + 0x100.
# Upstream exits: OUT 0x70 size 4 data 0x12345678, HLT. `shutdown` hosts: SHUTDOWN, rip 0x1019, PG clear.
_LEGACY_PAGING = (
    b"\x0f\x20\xe0"                                       # 1000 mov eax, cr4
    b"\x83\xc8\x10"                                       # 1003 or eax, 0x10
    b"\x0f\x22\xe0"                                       # 1006 mov cr4, eax
    b"\xb8" + _le32(_PD)                                  # 1009 mov eax, 0x30000
    + b"\x0f\x22\xd8"                                     # 100E mov cr3, eax
    b"\x0f\x20\xc0"                                       # 1011 mov eax, cr0
    b"\x0d\x00\x00\x00\x80"                               # 1014 or eax, 0x80000000
    b"\x0f\x22\xc0"                                       # 1019 mov cr0, eax
    b"\xc7\x05" + _le32(_ALIAS) + b"\x78\x56\x34\x12"     # 101C mov dword ptr [0x430100], 0x12345678
    + b"\xa1" + _le32(DATA + 0x100)                       # 1026 mov eax, dword ptr [0x30100]
    + b"\xe7\x70"                                         # 102B out 0x70, eax
    b"\xf4"                                               # 102D hlt
)  # fmt: skip


def _legacy_paging_shutdown(hv: Hypervisor) -> str:
    with ProbeGuest(hv, _LEGACY_PAGING, "protected") as guest:  # with the host's CPUID, for CR4.PSE
        guest.ram.write(_PD, _le32(0x83) * 2)  # PDE 0 and 1: present, writable, 4 MiB page at 0
        exits = guest.run_until_halt(limit=4)
        rip, cr0 = guest.vcpu.get_regs().rip, guest.vcpu.get_sregs().cr0
    if exits == [_out(0x70, 0x12345678, 4), HltExit()] and cr0 & _CR0_PG:
        return UPSTREAM
    if exits == [ShutdownExit()] and rip == CODE + 0x19 and not cr0 & _CR0_PG:
        return "shutdown"
    raise Unrecognised(f"turning on 32-bit paging gave {exits!r} (rip {rip:#x}, cr0 {cr0:#x})")


# --- in-kernel irqchip --------------------------------------------------------------------------------

_LEVEL_VECTOR = 0x46
_LEVEL_COUNT = DATA
"""Where the handler counts its runs."""
_APIC_PD = DATA + 0x1000
"""A page directory for 3-4 GiB (the IOAPIC at 0xFEC00000, the LAPIC at 0xFEE00000)."""

# 64-bit CPL0 with the irqchip (tests/guests/irqchip.py LEVEL_HELD on the probe guest's IDT): IOAPIC pin 6
# level-triggered to vector 0x46. The host raises GSI 6 at the ready OUT 0x10; every EOI brings the
# interrupt back; the third handler run asks for the release (OUT 0x14) before its EOI. After a delay
# loop the guest reports the count (OUT 0x11 size 4): 3 upstream, 4 on `one_extra_delivery` hosts.
_LEVEL_HELD = (
    b"\xbb\x00\x00\xe0\xfe"                            # 1000 mov ebx, 0xfee00000
    b"\xbe\x00\x00\xc0\xfe"                            # 1005 mov esi, 0xfec00000
    b"\xb0\xff"                                        # 100A mov al, 0xff
    b"\xe6\x21"                                        # 100C out 0x21, al
    b"\xe6\xa1"                                        # 100E out 0xa1, al
    b"\xc7\x83\xf0\x00\x00\x00\xff\x01\x00\x00"        # 1010 mov dword ptr [rbx+0xf0], 0x1ff
    b"\xc7\x06\x1c\x00\x00\x00"                        # 101A mov dword ptr [rsi], 0x1c
    b"\xc7\x46\x10\x46\x80\x00\x00"                    # 1020 mov dword ptr [rsi+0x10], 0x8046
    b"\xc7\x06\x1d\x00\x00\x00"                        # 1027 mov dword ptr [rsi], 0x1d
    b"\xc7\x46\x10\x00\x00\x00\x00"                    # 102D mov dword ptr [rsi+0x10], 0
    b"\xb0\x01"                                        # 1034 mov al, 1
    b"\xe6\x10"                                        # 1036 out 0x10, al
    b"\xfb"                                            # 1038 sti
    b"\xf4"                                            # 1039 wait: hlt
    b"\x83\x3c\x25" + _le32(_LEVEL_COUNT) + b"\x03"    # 103A cmp dword ptr [0x30000], 3
    + b"\x72\xf5"                                      # 1042 jb wait
    b"\xb9\xe8\x03\x00\x00"                            # 1044 mov ecx, 1000
    b"\xff\xc9"                                        # 1049 delay: dec ecx
    b"\x75\xfc"                                        # 104B jne delay
    b"\xfa"                                            # 104D cli
    b"\x8b\x04\x25" + _le32(_LEVEL_COUNT)              # 104E mov eax, dword ptr [0x30000]
    + b"\xe7\x11"                                      # 1055 out 0x11, eax
    b"\xf4"                                            # 1057 hlt
    b"\xff\x04\x25" + _le32(_LEVEL_COUNT)              # 1058 handler: inc dword ptr [0x30000]
    + b"\x83\x3c\x25" + _le32(_LEVEL_COUNT) + b"\x03"  # 105F cmp dword ptr [0x30000], 3
    + b"\x75\x04"                                      # 1067 jne eoi
    b"\xb0\x03"                                        # 1069 mov al, 3
    b"\xe6\x14"                                        # 106B out 0x14, al
    b"\xc7\x83\xb0\x00\x00\x00\x00\x00\x00\x00"        # 106D eoi: mov dword ptr [rbx+0xb0], 0
    b"\x48\xcf"                                        # 1077 iretq
)  # fmt: skip
_LEVEL_HANDLER = CODE + 0x58


def _map_apic_window(guest: ProbeGuest) -> None:
    """Identity-map 3-4 GiB, uncached, in the probe guest's long-mode tables (found from CR3)."""
    pml4 = guest.vcpu.get_sregs().cr3 & ~0xFFF
    pdpt = int.from_bytes(guest.read(pml4, 8), "little") & 0x000F_FFFF_FFFF_F000
    entries = (0xC000_0000 + (i << 21) | 0x93 for i in range(512))  # present, writable, PCD, 2 MiB
    guest.ram.write(_APIC_PD, b"".join(e.to_bytes(8, "little") for e in entries))
    guest.ram.write(pdpt + 3 * 8, (_APIC_PD | 0x3).to_bytes(8, "little"))


def _level_redelivered_early(hv: Hypervisor) -> str:
    gates = {_LEVEL_VECTOR: gate(_LEVEL_VECTOR, offset=_LEVEL_HANDLER)}
    with ProbeGuest(hv, _LEVEL_HELD, "long", gates=gates, irqchip=True) as guest:
        _map_apic_window(guest)
        ready = guest.run()
        if ready != _out(0x10, 1):
            raise Unrecognised(f"the level-triggered guest's set-up ended with {ready!r}, not OUT 0x10")
        guest.vm.irq_line(6, True)
        release = guest.run()
        guest.vm.irq_line(6, False)
        if release != _out(0x14, 3):
            raise Unrecognised(f"with GSI 6 held high the guest gave {release!r}, not its third handler's OUT 0x14")
        count = guest.run()
    if count == _out(0x11, 3, 4):
        return UPSTREAM
    if count == _out(0x11, 4, 4):
        return "one_extra_delivery"
    raise Unrecognised(f"after the held level-triggered line was released the guest reported {count!r}")


DEVIATIONS: tuple[Deviation, ...] = (
    Deviation(
        "single_step_dr7",
        upstream="a single-step DEBUG exit reports dr7 = 0x400 (the guest's DR7)",
        variants={"dr7_zero": "dr7 = 0"},
        reason="seen on nested kvm_pvm hosts (AMD and Intel)",
        probe=_single_step_dr7,
    ),
    Deviation(
        "single_step_after_out",
        upstream="single-stepping, after an OUT exit the next run reports the step of the OUT (pc = RIP after it)",
        variants={
            "out_step_missed": "that DEBUG exit is missing; the next one is the step of the following instruction"
        },
        reason="seen on nested kvm_pvm (AMD EPYC): CPL0 code runs in the kernel's instruction emulator, which "
        'returns to userspace for an OUT without checking single-step (x86_emulate_instruction: "FIXME: return '
        "into emulator if single-stepping\"); upstream's intercepted OUT steps when it completes",
        probe=_single_step_after_out,
    ),
    Deviation(
        "out_completed_at_exit",
        upstream="an OUT exit leaves RIP at the OUT, with the STI / MOV SS shadow it runs under still in force "
        "(ready_for_interrupt_injection = 0 in the shadow); the next run moves RIP past it (kvm_fast_pio_out and "
        "complete_fast_pio_out; port 0x7E excepted, KVM_X86_QUIRK_OUT_7E_INC_RIP)",
        variants={"rip_past_out": "RIP is past the OUT at the exit and the shadow is over (the OUT is complete)"},
        reason="seen on nested kvm_pvm (AMD EPYC): CPL0 code runs in the kernel's instruction emulator, which "
        "completes the OUT (writeback) before it returns to userspace",
        probe=_out_completed_at_exit,
    ),
    Deviation(
        "internal_error_exit_info",
        upstream="an emulation failure (INTERNAL_ERROR suberror 1: a fetch from memory no slot backs) reports data = "
        "the flags word 0, then the five exit-info words of the VMX/SVM exit that made KVM emulate "
        "(prepare_emulation_failure_exit): a nested or shadow paging fault (VMX exit reason 48, 49 or 0; SVM exit "
        "code 0x400 or 0x4E) and its qualification words. A host with no hardware exit to report gives the flags "
        "word alone (the simulator; the conformance corpus expects that shape); kernels before the exit "
        "information was added give no words",
        variants={
            "pvm_exit_info": "data = (0, 0x1000, 0, 0, 0, 0): the flags word, then the host's own exit-info words "
            "(0x1000 is no VMX exit reason or SVM exit code)"
        },
        reason="seen on nested kvm_pvm (AMD EPYC), for any emulation failure: KVM appends the vendor module's exit "
        "information, and kvm_pvm's is its own. Upstream's words depend on the vendor and the exit, so the probe "
        "accepts the paging-fault exits that lead to this failure and names only kvm_pvm's exact words a variant",
        probe=_internal_error_exit_info,
    ),
    Deviation(
        "irq_window_batch",
        upstream="with request_interrupt_window, IRQ_WINDOW_OPEN comes as soon as the STI shadow ends",
        variants={
            "batch_end": "it comes at the end of a batch of emulated instructions: usually after the run's 1024th "
            "instruction, earlier when the host interrupts the batch (so where varies from run to run)"
        },
        reason="seen on nested kvm_pvm (AMD EPYC): the emulator runs guest code in batches of 1024 instructions "
        "and checks the window between them",
        probe=_irq_window_batch,
    ),
    Deviation(
        "legacy_paging_shutdown",
        upstream="32-bit (non-PAE) paging works",
        variants={"shutdown": "setting CR0.PG outside long mode gives SHUTDOWN (RIP at the mov to CR0, PG clear)"},
        reason="seen on nested kvm_pvm (AMD EPYC): paging works in long mode only",
        probe=_legacy_paging_shutdown,
    ),
    Deviation(
        "level_redelivered_early",
        upstream="with the in-kernel irqchip, a held level-triggered IOAPIC line is re-delivered only at the EOI of "
        "the previous interrupt",
        variants={
            "one_extra_delivery": "one more delivery than upstream after a held line is released (its handler runs "
            "once more)"
        },
        reason="seen on nested kvm_pvm (AMD EPYC): its LAPIC shows the interrupt being handled as still pending in "
        "the IRR, not in the ISR, so a held level-triggered line is delivered again before the handler's EOI",
        probe=_level_redelivered_early,
    ),
)
"""The deviations from upstream KVM this module's probes detect (control)."""
