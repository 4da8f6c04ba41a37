"""The registry of known divergences: a host's KVM from upstream KVM, and the simulator's limitations.

One declarative list, :data:`REGISTRY`. Host entries are hvcore's registered host deviations
(:mod:`hvcore.host`): each applies where the host's probe, run once per session, found a
registered variant (never decided from module or CPU names); behaviour that is neither upstream
nor registered raises :class:`hvcore.UnrecognisedBehaviour` and fails the test that depends on
it. Simulator entries apply to ``hv.name == "sim"``. Each :class:`Quirk` says why, what upstream
KVM does and what the backend does instead, and the exact expected difference: ``effect`` maps an
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

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from hvcore import VM, Capability, DebugExit, Hypervisor, InternalErrorExit, IoExit
from hvcore.host import UPSTREAM, Deviation, host_profile
from hvcore.host.known import DEVIATIONS
from tests.guests import layout

if TYPE_CHECKING:
    from tests.conformance.harness import Outcome


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
    state = {key: 0 if key.endswith("ss.unusable") and value == 1 else value for key, value in outcome.state.items()}
    return replace(outcome, state=state)


PAGE_TABLE_PAGES = frozenset({layout.PML4, layout.PDPT, layout.PD})


def _page_tables_not_logged(outcome: Outcome) -> Outcome:
    dirty = {slot: tuple(p for p in pages if p not in PAGE_TABLE_PAGES) for slot, pages in outcome.dirty.items()}
    return replace(outcome, dirty=dirty)


PVM_EMULATION_FAILURE_INFO = (0x1000, 0, 0, 0, 0)
"""The exit-info words the nested kvm_pvm hosts append to an emulation failure's flags word (measured)."""


def _pvm_exit_info(outcome: Outcome) -> Outcome:
    steps = tuple(
        replace(s, exit=InternalErrorExit(s.exit.suberror, s.exit.data[:1] + PVM_EMULATION_FAILURE_INFO))
        if isinstance(s.exit, InternalErrorExit) and s.exit.suberror == 1
        else s
        for s in outcome.steps
    )
    return replace(outcome, steps=steps)


# --- the registry ------------------------------------------------------------------------------------

HOST_EFFECTS: dict[str, Callable[[Outcome], Outcome]] = {
    "single_step_dr7": _dr7_zero,
    "single_step_after_out": _no_step_after_out,
    "null_ss_usable": _null_ss_usable,
    "internal_error_exit_info": _pvm_exit_info,
}
"""The exact effect on a conformance outcome of the host deviations that have one (others: ``Case.variants``).

Each of these deviations has one registered variant, so the effect is that variant's."""

HOST_HELPERS: dict[str, str] = {
    "single_step_dr7": "single_step_dr7",
    "breakpoint_dr7": "breakpoint_dr7",
    "breakpoint_resume_flag": "host_variant",
    "watchpoints_ignored": "host_variant",
    "software_breakpoints_delivered": "host_variant",
    "irq_window_batch": "irq_window_batched",
    "level_redelivered_early": "level_extra_deliveries",
    "pat_unchecked": "host_variant",
    "tsc_writes_ignored": "host_variant",
    "noncanonical_msr_accepted": "host_variant",
    "sysenter_esp_eip": "host_variant",
    "out_completed_at_exit": "host_variant",
    "syscall_from_cpl3": "host_variant",
    "events_beside_injected_exception": "host_variant",
    "first_access_logged": "host_variant",
    "hypercall_hangs": "host_variant",
    "cr4_cpuid_unchecked": "host_variant",
    "xcr0_cpuid_unchecked": "host_variant",
    "cpuid_after_run": "host_variant",
    "speculation_msrs_unchecked": "host_variant",
}
"""The function of this module other tests call for each host deviation they assert directly."""


def _shows_a_variant(name: str) -> Callable[[Hypervisor], bool]:
    def applies(hv: Hypervisor) -> bool:
        return host_variant(hv, name) != UPSTREAM

    applies.__name__ = f"deviates_on_{name}"
    return applies


def _host_quirk(deviation: Deviation) -> Quirk:
    instead = "; ".join(f"{variant}: {text}" for variant, text in deviation.variants.items())
    return Quirk(
        deviation.name,
        _shows_a_variant(deviation.name),
        deviation.reason,
        deviation.upstream,
        instead,
        HOST_EFFECTS.get(deviation.name),
        helper=HOST_HELPERS.get(deviation.name),
    )


assert all(len(d.variants) == 1 for d in DEVIATIONS if d.name in HOST_EFFECTS), "an effect per variant is needed"
HOST_QUIRKS: tuple[Quirk, ...] = tuple(_host_quirk(d) for d in DEVIATIONS)
"""hvcore's registered host deviations (``hvcore.host``), each active where the host's probe found a variant."""

REGISTRY: tuple[Quirk, ...] = (
    *HOST_QUIRKS,
    # the simulator's limitations (docs/conformance.md, "Other known differences of the simulator")
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
        "vex128_runs_as_sse",
        is_simulator,
        "QEMU 5.0 decodes a VEX prefix and then runs the SSE instruction of the same opcode (it has no AVX)",
        "without AVX enabled (CPUID, CR4.OSXSAVE, XCR0.AVX) every VEX-encoded vector instruction raises #UD",
        "a 128-bit VEX form of an SSE instruction (vxorps xmm0, xmm0, xmm0) runs as that SSE instruction, "
        "VEX.vvvv ignored; 256-bit forms and opcodes SSE lacks raise #UD",
        helper="vex128_runs_as_sse",
    ),
    Quirk(
        "guest_debug_partial",
        is_simulator,
        "interrupt blocking while debugging and general-detect breakpoints are not built",
        "KVM_SET_GUEST_DEBUG takes BLOCKIRQ (KVM_CAP_SET_GUEST_DEBUG2 lists it) and DR7.GD in debugreg[7]",
        "both raise Unsupported; KVM_CAP_SET_GUEST_DEBUG2 does not list BLOCKIRQ",
        helper="guest_debug_refused",
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
    """DR7 in a single-step DEBUG exit: upstream reports 0x400; the ``dr7_zero`` variant 0 (``single_step_dr7``)."""
    return {UPSTREAM: 0x400, "dr7_zero": 0}[host_variant(hv, "single_step_dr7")]


def breakpoint_dr7(hv: Hypervisor, given: int) -> int:
    """DR7 in a hardware breakpoint's DEBUG exit: upstream ``given`` (debugreg[7]); ``dr7_zero`` hosts 0."""
    return {UPSTREAM: given, "dr7_zero": 0}[host_variant(hv, "breakpoint_dr7")]


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


def guest_debug_refused(hv: Hypervisor) -> bool:
    """Whether BLOCKIRQ and DR7.GD raise ``Unsupported`` (the simulator: ``guest_debug_partial``)."""
    return quirk_applies("guest_debug_partial", hv)


def vex128_runs_as_sse(hv: Hypervisor) -> bool:
    """Whether a 128-bit VEX form of an SSE instruction runs without AVX enabled (not upstream: the simulator)."""
    return quirk_applies("vex128_runs_as_sse", hv)


# --- host deviations, probed (hvcore.host) ----------------------------------------------------------------

VARIANTS_SEEN: Counter[tuple[str, str, str]] = Counter()
"""(backend, deviation, variant) -> how many times a test asked; the session summary lists them."""


def host_variant(hv: Hypervisor, name: str) -> str:
    """The variant of host deviation ``name`` that ``hv`` shows: ``UPSTREAM`` on the simulator, probed on KVM.

    Raises :class:`hvcore.UnrecognisedBehaviour` (failing the test) where the host's behaviour is
    neither upstream nor a registered variant. Each answer is counted for the session summary.
    """
    # the simulator models upstream KVM exactly; tests/host/test_profile.py proves its probes agree
    variant = UPSTREAM if is_simulator(hv) else host_profile(hv).variant(name)
    VARIANTS_SEEN[(hv.name, name, variant)] += 1
    return variant
