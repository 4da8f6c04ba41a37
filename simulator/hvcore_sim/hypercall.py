"""KVM hypercalls: VMCALL and VMMCALL as upstream KVM runs them (Unicorn raises #UD for both).

Upstream: ``Documentation/virt/kvm/x86/hypercalls.rst`` and ``arch/x86/kvm/x86.c``
(``kvm_emulate_hypercall``, ``emulator_fix_hypercall``). The simulator plays the host of the vCPU's
CPUID vendor (:func:`hvcore.cpuid_rules.native_hypercall`): VMX for Intel-compatible vCPUs, whose
native instruction is VMCALL, SVM for AMD-compatible ones (VMMCALL). Both reach
:func:`emulate` from the #UD Unicorn raises, RIP at the instruction:

- **The native instruction** always exits to KVM, in any mode and at any CPL, which runs the
  hypercall: its number in RAX, arguments in RBX, RCX, RDX and RSI, the result in RAX. Outside
  64-bit mode the number, arguments and result are 32 bits (RAX is zero-extended). At CPL > 0 the
  result is -KVM_EPERM. RIP moves past the instruction (prefixes included; wrapped to 32 bits
  outside 64-bit mode), the STI / MOV SS shadow ends, RFLAGS.RF stays as it was, and with
  RFLAGS.TF a single-step #DB follows (a DEBUG exit when the VMM single-steps).
- **The other vendor's instruction** raises #UD, which KVM emulates (``handle_ud``, ``em_hypercall``):
  with a LOCK prefix, #UD; VMMCALL on VMX outside protected mode (real, virtual-8086), #UD; VMCALL
  on SVM at CPL > 0, #GP(0). Otherwise KVM_X86_QUIRK_FIX_HYPERCALL_INSN (on by default; hvcore
  cannot disable quirks) writes the native instruction's three bytes at linear address RIP, CS's
  base not added, as a guest write (page tables and permissions of the CPL; a #PF if refused; a
  dirty page for a logging slot; an MMIO write exit where no writable RAM is), and leaves RIP
  there: the guest runs the native instruction next. RF and the interrupt shadow clear; with TF a
  single-step #DB (or DEBUG exit) comes first, at the patched instruction.

Hypercall numbers (``include/uapi/linux/kvm_para.h``): KVM_HC_VAPIC_POLL_IRQ returns 0;
KVM_HC_KICK_CPU wakes the vCPU with physical APIC id RCX from HLT (with the in-kernel irqchip) and
returns 0; KVM_HC_SEND_IPI sends the IPI of RSI's ICR bits to the APIC ids of the RBX and RCX
bitmaps from RDX and returns how many APICs took it (-KVM_EINVAL for a logical destination or a
shorthand, -EOPNOTSUPP without the irqchip); KVM_HC_SCHED_YIELD returns 0;
KVM_HC_CLOCK_PAIRING returns -KVM_EOPNOTSUPP (upstream's answer on a host whose clocksource is
not the TSC); every other number, KVM_HC_MAP_GPA_RANGE included (it needs KVM_CAP_EXIT_HYPERCALL),
returns -KVM_ENOSYS. The paravirtual ones are not gated by the KVM_FEATURE bits of CPUID
0x40000001: upstream checks them only after KVM_CAP_ENFORCE_PV_FEATURE_CPUID, which hvcore
never enables. Xen and Hyper-V hypercalls (enabled by their own MSRs and capabilities) are not modelled.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from hvcore import cpuid_rules
from hvcore.errors import HvError
from hvcore.exits import MmioExit
from hvcore.memory import PAGE_SIZE
from hvcore.types import CpuidEntry, SlotFlags
from hvcore_sim import mmu, operand
from hvcore_sim.decode import fetch_instruction, prefixes
from hvcore_sim.faults import NonCanonical, PageFault
from hvcore_sim.irqchip.message import DeliveryMode, InterruptMessage

if TYPE_CHECKING:
    from hvcore_sim.context import GuestContext
    from hvcore_sim.engine import Engine
    from hvcore_sim.irqchip.chip import Irqchip

__all__ = [
    "KVM_EINVAL",
    "KVM_ENOSYS",
    "KVM_EOPNOTSUPP",
    "KVM_EPERM",
    "KVM_HC_CLOCK_PAIRING",
    "KVM_HC_KICK_CPU",
    "KVM_HC_SCHED_YIELD",
    "KVM_HC_SEND_IPI",
    "KVM_HC_VAPIC_POLL_IRQ",
    "Done",
    "Fault",
    "Instruction",
    "decode",
    "emulate",
]

KVM_ENOSYS: Final = 1000
KVM_EPERM: Final = 1
KVM_EOPNOTSUPP: Final = 95
KVM_EINVAL: Final = 22
_EOPNOTSUPP: Final = 95  # Linux's errno, what kvm_pv_send_ipi returns without an APIC map
KVM_HC_VAPIC_POLL_IRQ: Final = 1
KVM_HC_KICK_CPU: Final = 5
KVM_HC_CLOCK_PAIRING: Final = 9
KVM_HC_SEND_IPI: Final = 10
KVM_HC_SCHED_YIELD: Final = 11

_U32: Final = 0xFFFFFFFF
_U64: Final = (1 << 64) - 1
_ICR_LOGICAL, _ICR_SHORTHAND, _ICR_ASSERT, _ICR_LEVEL = 1 << 11, 3 << 18, 1 << 14, 1 << 15
_TF, _RF, _VM, _AC = 1 << 8, 1 << 16, 1 << 17, 1 << 18
_CR0_PE: Final = 1
_UD, _GP, _PF = 6, 13, 14
_MAX_LENGTH: Final = 15


@dataclass(frozen=True, slots=True)
class Instruction:
    """A decoded VMCALL or VMMCALL: its three opcode bytes and its length with prefixes."""

    opcode: bytes
    length: int
    lock: bool


@dataclass(frozen=True, slots=True)
class Fault:
    """The exception KVM injects instead (RIP at the instruction); ``cr2`` for a #PF."""

    vector: int
    error_code: int | None = None
    cr2: int | None = None


@dataclass(frozen=True, slots=True)
class Done:
    """The hypercall ran (RIP past it) or the instruction was patched (RIP at it); ``single_step``: TF was set."""

    single_step: bool


def decode(code: bytes, code_bits: int) -> Instruction | None:
    """VMCALL or VMMCALL at the start of ``code``, after any prefixes (REX in 64-bit code), as KVM decodes it."""
    found = prefixes(code, rex=code_bits == 64)
    at = found.length
    opcode = code[at : at + 3]
    if opcode not in (cpuid_rules.VMCALL, cpuid_rules.VMMCALL) or at + 3 > _MAX_LENGTH:
        return None
    return Instruction(opcode, at + 3, found.lock)


def emulate(engine: Engine, vm: GuestContext, cpuid: Iterable[CpuidEntry]) -> Fault | Done | MmioExit | None:
    """KVM's handling of the #UD that Unicorn raised at RIP, if the instruction there is a hypercall (else None)."""
    rip = engine.reg(engine.RIP)
    cpu = operand.cpu_state(engine)
    insn = decode(fetch_instruction(engine, rip), cpu.code_bits)
    if insn is None:
        return None
    if insn.lock:  # a fault of the instruction itself, before any VM exit; KVM's emulator agrees
        return Fault(_UD)
    rflags = engine.reg(engine.RFLAGS)
    native = cpuid_rules.native_hypercall(cpuid_rules.vendor(cpuid))
    if insn.opcode == native:
        _hypercall(engine, vm.irqchip, cpu, rip + insn.length)
        return Done(single_step=bool(rflags & _TF))
    if native == cpuid_rules.VMCALL and (not cpu.paging.cr0 & _CR0_PE or rflags & _VM):
        return Fault(_UD)  # VMMCALL is a protected-mode instruction for KVM's emulator
    if native == cpuid_rules.VMMCALL and cpu.cpl:
        return Fault(_GP, 0)  # VMCALL is privileged for KVM's emulator
    outcome = _patch(vm, cpu, rip if cpu.code_bits == 64 else rip & _U32, native, ac=bool(rflags & _AC))
    if outcome is not None:
        return outcome
    engine.set_reg(engine.RFLAGS, rflags & ~_RF)
    engine.interrupt_shadow = False
    return Done(single_step=bool(rflags & _TF))


def _hypercall(engine: Engine, chip: Irqchip | None, cpu: operand.CpuState, following: int) -> None:
    """Run the hypercall in the registers (``____kvm_emulate_hypercall``) and move RIP to ``following``."""
    wide = cpu.code_bits == 64
    mask = _U64 if wide else _U32
    rax, rbx, rcx, rdx, rsi = (engine.GPRS_BY_NUMBER[n] for n in (0, 3, 1, 2, 6))
    nr, a0, a1, a2, a3 = (engine.reg(r) & mask for r in (rax, rbx, rcx, rdx, rsi))
    result = -KVM_EPERM if cpu.cpl else _result(chip, nr, a0, a1, a2, a3, wide=wide)
    engine.set_reg(engine.RAX, result & mask)
    engine.set_reg(engine.RIP, following & mask)
    engine.interrupt_shadow = False


def _result(chip: Irqchip | None, nr: int, a0: int, a1: int, a2: int, a3: int, *, wide: bool) -> int:
    if nr in (KVM_HC_VAPIC_POLL_IRQ, KVM_HC_SCHED_YIELD):
        return 0  # a yield to another vCPU changes nothing a guest can see
    if nr == KVM_HC_KICK_CPU:
        if chip is not None:
            chip.pv_kick(a1)
        return 0
    if nr == KVM_HC_CLOCK_PAIRING:
        return -KVM_EOPNOTSUPP
    if nr == KVM_HC_SEND_IPI:
        return _send_ipi(chip, (a0, a1), a2 & _U32, a3, wide=wide)
    return -KVM_ENOSYS


def _send_ipi(chip: Irqchip | None, bitmaps: tuple[int, int], first: int, icr: int, *, wide: bool) -> int:
    """``kvm_pv_send_ipi``: the ICR's checks, then the delivery to the bitmaps' APIC ids."""
    if icr & (_ICR_LOGICAL | _ICR_SHORTHAND):
        return -KVM_EINVAL
    if chip is None:
        return -_EOPNOTSUPP
    message = InterruptMessage(
        vector=icr & 0xFF,
        delivery_mode=DeliveryMode((icr >> 8) & 7),
        level_triggered=bool(icr & _ICR_LEVEL),
        assert_level=bool(icr & _ICR_ASSERT),
    )
    return chip.pv_send_ipi(bitmaps, first, message, cluster=64 if wide else 32)


def _patch(vm: GuestContext, cpu: operand.CpuState, linear: int, native: bytes, *, ac: bool) -> Fault | MmioExit | None:
    """Write ``native`` at ``linear`` as KVM's emulator writes (page by page); the fault or MMIO exit that stops it."""
    done = 0
    while done < len(native):
        address = linear + done
        size = min(len(native) - done, PAGE_SIZE - address % PAGE_SIZE)
        piece = native[done : done + size]
        try:
            physical = mmu.translate(cpu.paging, address, vm.physical, write=True, user=cpu.cpl == 3, ac=ac)
        except PageFault as fault:
            return Fault(_PF, fault.error_code, cr2=fault.linear)
        except NonCanonical:
            return Fault(_GP, 0)
        except HvError:  # a paging structure outside every slot: KVM's walker fails the walk (a #PF)
            return Fault(_PF, mmu.PF_WRITE | (mmu.PF_USER if cpu.cpl == 3 else 0), cr2=address)
        slot = vm.slot_at(physical)
        if slot is None or slot.readonly or physical + size > slot.end:
            return MmioExit(physical, size, True, piece)
        slot.memory.write(slot.offset + physical - slot.guest_address, piece)
        if slot.flags & SlotFlags.LOG_DIRTY_PAGES:
            vm.dirty.record(slot.kvm_slot, (physical - slot.guest_address) // PAGE_SIZE)
        done += size
    return None
