"""The registry of known divergences: this host's KVM from upstream KVM, and the simulator's limitations.

One declarative list, :data:`REGISTRY`. Each :class:`Quirk` says where it applies (a predicate on
the open hypervisor, evaluated at run time: ``is_pvm_host`` for the nested ``kvm_pvm`` host of
the development machines, ``hv.name == "sim"`` for the simulator), why, what upstream KVM does
and what the backend does instead, and the exact expected difference: ``effect`` maps an
upstream outcome (``tests.conformance.harness.Outcome``) to this backend's. Where the
difference depends on the guest (a different vector delivered, a different stopping point),
``effect`` is ``None`` and each conformance case that may meet the quirk states its effect on
that case (``Case.variants``). Effects set fields to the backend's value, so they are idempotent
and commute; the conformance harness relies on that to compare backends with each other.

The conformance harness applies only the quirks a case names (``Case.quirks``), so an
unregistered divergence fails. Other tests ask the helpers below (``single_step_dr7``,
``has_irqchip``, ...), which read the same entries. A test checks that every entry is used by
a conformance case or, through its ``helper``, by a test.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from hvcore import VM, Capability, DebugExit, Hypervisor, InternalErrorExit, IoExit
from tests.guests import layout

if TYPE_CHECKING:
    from tests.conformance.harness import Outcome


def is_pvm_host(hv: Hypervisor) -> bool:
    """True for KVM from the ``kvm_pvm`` module (nested KVM without VMX/SVM: an emulating host)."""
    return hv.name == "kvm" and os.path.isdir("/sys/module/kvm_pvm")


def is_simulator(hv: Hypervisor) -> bool:
    """True for the Unicorn-based simulator."""
    return hv.name == "sim"


@dataclass(frozen=True)
class Quirk:
    """One known divergence from upstream KVM, with its exact effect on an outcome."""

    name: str
    applies: Callable[[Hypervisor], bool]
    reason: str
    upstream: str
    instead: str
    effect: Callable[[Outcome], Outcome] | None = None
    helper: str | None = None
    """The function of this module other tests call to assert the backend's own behaviour."""


# --- exact effects that do not depend on the guest ------------------------------------------------


def _dr7_zero(outcome: Outcome) -> Outcome:
    steps = tuple(
        replace(s, exit=replace(s.exit, dr7=0)) if isinstance(s.exit, DebugExit) and s.exit.exception == 1 else s
        for s in outcome.steps
    )
    return replace(outcome, steps=steps)


def _no_step_after_out(outcome: Outcome) -> Outcome:
    steps, kept, renumber = outcome.steps, [], {}
    for i, s in enumerate(steps):
        before = steps[i - 1] if i else None
        missed = (
            before is not None
            and isinstance(s.exit, DebugExit)
            and isinstance(before.exit, IoExit)
            and not before.exit.is_in
            and s.vcpu == before.vcpu
            and s.exit.pc == before.rip
        )  # the trap of the OUT itself: not reported; the next step is
        if not missed:
            kept.append(s)
        renumber[i] = len(kept) - 1  # notes taken at a dropped exit move to the exit before it
    notes = tuple((renumber.get(i, i), key, value) for i, key, value in outcome.notes)
    return replace(outcome, steps=tuple(kept), notes=notes)


def _null_ss_usable(outcome: Outcome) -> Outcome:
    state = {
        key: 0 if key.endswith("ss.unusable") and value == 1 else value for key, value in outcome.state.items()
    }
    return replace(outcome, state=state)


PAGE_TABLE_PAGES = frozenset({layout.PML4, layout.PDPT, layout.PD})


def _page_tables_not_logged(outcome: Outcome) -> Outcome:
    dirty = {slot: tuple(p for p in pages if p not in PAGE_TABLE_PAGES) for slot, pages in outcome.dirty.items()}
    return replace(outcome, dirty=dirty)


PVM_EMULATION_FAILURE_INFO = (0x1000, 0, 0, 0, 0)
"""The exit-info words kvm_pvm appends to an emulation failure's flags word (measured: any failure)."""


def _pvm_exit_info(outcome: Outcome) -> Outcome:
    steps = tuple(
        replace(s, exit=InternalErrorExit(s.exit.suberror, s.exit.data[:1] + PVM_EMULATION_FAILURE_INFO))
        if isinstance(s.exit, InternalErrorExit) and s.exit.suberror == 1
        else s
        for s in outcome.steps
    )
    return replace(outcome, steps=steps)


# --- the registry ------------------------------------------------------------------------------------

REGISTRY: tuple[Quirk, ...] = (
    # this host's KVM (kvm_pvm: nested, no VMX/SVM; CPL0, real-mode and 32-bit code is emulated)
    Quirk(
        "single_step_dr7",
        is_pvm_host,
        "measured on kvm_pvm (README, \"This host's KVM quirks\")",
        "a single-step DEBUG exit reports dr7 = 0x400",
        "dr7 = 0",
        _dr7_zero,
        helper="single_step_dr7",
    ),
    Quirk(
        "single_step_after_out",
        is_pvm_host,
        "CPL0 code runs in the kernel's instruction emulator, which returns to userspace for an OUT without "
        "checking single-step (x86_emulate_instruction: \"FIXME: return into emulator if single-stepping\")",
        "after an OUT exit the next run reports the step of the OUT (pc = RIP after it)",
        "that DEBUG exit is missing; the next one is the step of the following instruction",
        _no_step_after_out,
    ),
    Quirk(
        "null_ss_usable",
        is_pvm_host,
        "measured on kvm_pvm: the null SS a CPL3 -> CPL0 change loads is reported as usable",
        "ss.unusable = 1",
        "ss.unusable = 0",
        _null_ss_usable,
    ),
    Quirk(
        "internal_error_exit_info",
        is_pvm_host,
        "KVM appends the vendor's exit information to an emulation failure (prepare_emulation_failure_exit); "
        "kvm_pvm's is its own, and the simulator has none",
        "data = the flags word (0), then the VMX/SVM exit reason and qualification words",
        f"data = (0, {', '.join(hex(v) for v in PVM_EMULATION_FAILURE_INFO)})",
        _pvm_exit_info,
    ),
    Quirk(
        "int_n_cpl3_ud",
        is_pvm_host,
        "measured on kvm_pvm for `int 0x80`, `int 0x21`, `int 0x0d` through DPL3 and DPL0 gates",
        "`int n` at CPL3 vectors through gate n (or #GP(n*8+2) through a DPL0 gate)",
        "#UD on the int: RIP at it, RF pushed, whatever the gate",
    ),
    Quirk(
        "int3_cpl3_ignores_gate_dpl",
        is_pvm_host,
        "measured on kvm_pvm: the gate's DPL is not checked for `int3`",
        "`int3` at CPL3 through a DPL0 gate raises #GP(3*8+2) on the int3",
        "#BP is delivered (frame RIP past the int3)",
    ),
    Quirk(
        "iopl_ignored_cpl3",
        is_pvm_host,
        "measured on kvm_pvm: CPL3 code runs with IOPL 0, and RFLAGS.IOPL reads as 0",
        "with IOPL=3 CPL3 may `out` (an IO exit); RFLAGS keeps IOPL",
        "the `out` raises #GP(0) (TSS without I/O bitmap); IOPL reads and is pushed as 0",
    ),
    Quirk(
        "ivt_limit_ignored",
        is_pvm_host,
        "measured on kvm_pvm: real-mode events vector through IDTR.base whatever IDTR.limit says",
        "a vector beyond the IVT limit raises #GP (and triple-faults if #GP and #DF are beyond it too)",
        "the vector is delivered through IDTR.base",
    ),
    Quirk(
        "benign_fault_double_faults",
        is_pvm_host,
        "measured on kvm_pvm: a fault met while delivering a benign exception escalates to #DF",
        "#UD through a not-present gate delivers #NP(vector*8 + IDT + EXT) (SDM Table 6-5: benign first)",
        "#DF with error code 0",
    ),
    Quirk(
        "gate_code_segment_unchecked",
        is_pvm_host,
        "measured on kvm_pvm: the target code segment of a 64-bit gate is not checked",
        "a 64-bit gate to a 32-bit code segment raises #GP(selector | EXT)",
        "the gate is taken; the handler runs in compatibility mode",
    ),
    Quirk(
        "irq_window_batch",
        is_pvm_host,
        "the emulator runs guest code in batches of 1024 instructions and checks the window between them",
        "IRQ_WINDOW_OPEN comes as soon as the STI shadow ends",
        "it comes at the end of a batch: usually after the run's 1024th instruction, earlier when the host "
        "interrupts the batch (so where varies from run to run; corpus guests spin in `jmp $` after `sti`)",
        helper="irq_window_batched",
    ),
    Quirk(
        "legacy_paging_shutdown",
        is_pvm_host,
        "measured on kvm_pvm (../shared/kvm-notes.md): paging works in long mode only",
        "32-bit (non-PAE) paging works",
        "setting CR0.PG outside long mode gives SHUTDOWN (RIP at the mov to CR0)",
    ),
    Quirk(
        "pat_unchecked",
        is_pvm_host,
        "measured on kvm_pvm: IA32_PAT takes any value, from the guest and from KVM_SET_MSRS",
        "a PAT entry that is not a memory type (2, 3, 8 and up) is refused: #GP(0) on WRMSR, a short KVM_SET_MSRS",
        "the value is stored and reads back",
        helper="pat_checked",
    ),
    Quirk(
        "tsc_writes_ignored",
        is_pvm_host,
        "measured on kvm_pvm (../shared/kvm-notes.md): the guest's TSC runs with the host's",
        "writing IA32_TSC (guest WRMSR or KVM_SET_MSRS) sets the TSC; rdtsc goes on from the value written",
        "the write succeeds and changes nothing: rdtsc and IA32_TSC go on from the host's TSC",
        helper="tsc_writable",
    ),
    # the simulator's limitations (README, "Known divergences")
    Quirk(
        "page_table_writes_not_logged",
        is_simulator,
        "Unicorn's page-table updates (accessed/dirty bits) bypass the write-protect hook",
        "pages whose page-table entries the MMU marks accessed/dirty are logged dirty",
        "only pages guest instructions write are logged (here: the PML4, PDPT and PD pages are not)",
        _page_tables_not_logged,
    ),
    Quirk(
        "maxphyaddr_40",
        is_simulator,
        "Unicorn's MMU models a 40-bit physical address width (its CPUID 0x80000008 says so too)",
        "MAXPHYADDR is the host's (48 here): a table entry may point above 2^40",
        "bits 40 and up of a table entry are reserved: using it raises #PF with the RSVD bit",
    ),
    Quirk(
        "undefined_flags",
        is_simulator,
        "Unicorn (QEMU) computes the flags the SDM leaves undefined its own way",
        "undefined flags (e.g. AF after a shift) are what the CPU running the guest leaves",
        "QEMU's value (here: AF = 0 after `shr rax, 32`; this host's AMD EPYC sets it)",
    ),
    Quirk(
        "level_redelivered_early",
        is_pvm_host,
        "this host's LAPIC shows the interrupt being handled as still pending in the IRR, not in the ISR, "
        "so a held level-triggered line is delivered again before the handler's EOI",
        "a level-triggered interrupt is re-delivered only at the EOI of the previous one",
        "one more delivery than upstream after a held line is released (its handler runs once more)",
        helper="level_extra_deliveries",
    ),
    Quirk(
        "single_step_only",
        is_simulator,
        "hardware and software breakpoints are not built yet",
        "KVM_SET_GUEST_DEBUG takes single-step, hardware and software breakpoints",
        "SINGLESTEP only; other flags raise Unsupported",
        helper="full_guest_debug",
    ),
)
"""Every known divergence. A difference no entry names is a bug in a backend (or in the corpus)."""


def quirk_applies(name: str, hv: Hypervisor) -> bool:
    """Whether registry entry ``name`` holds on ``hv``."""
    entries = [q for q in REGISTRY if q.name == name]
    if not entries:
        raise KeyError(f"no quirk {name!r} in the registry")
    return entries[0].applies(hv)


# --- helpers the other tests call ---------------------------------------------------------------------


def single_step_dr7(hv: Hypervisor) -> int:
    """DR7 in a single-step DEBUG exit: upstream reports 0x400; kvm_pvm reports 0 (``single_step_dr7``)."""
    return 0 if quirk_applies("single_step_dr7", hv) else 0x400


def irq_window_batched(hv: Hypervisor) -> bool:
    """Whether the interrupt window opens only between batches of emulated instructions (``irq_window_batch``)."""
    return quirk_applies("irq_window_batch", hv)


def has_irqchip(hv: Hypervisor, vm: VM) -> bool:
    """Create the in-kernel irqchip (every backend has one) and say so."""
    assert Capability.IRQCHIP in hv.capabilities()
    vm.create_irqchip()
    return True


def level_extra_deliveries(hv: Hypervisor) -> int:
    """Deliveries of a held level-triggered line beyond upstream's (``level_redelivered_early``)."""
    return 1 if quirk_applies("level_redelivered_early", hv) else 0


def pat_checked(hv: Hypervisor) -> bool:
    """Whether an invalid IA32_PAT value is refused, as upstream (not on kvm_pvm: ``pat_unchecked``)."""
    return not quirk_applies("pat_unchecked", hv)


def tsc_writable(hv: Hypervisor) -> bool:
    """Whether writing IA32_TSC moves the TSC, as upstream (not on kvm_pvm: ``tsc_writes_ignored``)."""
    return not quirk_applies("tsc_writes_ignored", hv)


def full_guest_debug(hv: Hypervisor) -> bool:
    """Whether hardware and software breakpoints are accepted (not on the simulator: ``single_step_only``)."""
    return not quirk_applies("single_step_only", hv)
