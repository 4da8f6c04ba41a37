"""The whole corpus, in one tuple, and what it must cover."""

from __future__ import annotations

from hvcore import ExitReason
from tests.conformance import (
    cases_control,
    cases_events,
    cases_faults,
    cases_io,
    cases_irqchip,
    cases_machine,
    cases_mmio,
    cases_vcpus,
)
from tests.conformance.harness import Case

CORPUS: tuple[Case, ...] = (
    *cases_io.CASES,
    *cases_mmio.CASES,
    *cases_events.CASES,
    *cases_faults.CASES,
    *cases_control.CASES,
    *cases_machine.CASES,
    *cases_vcpus.CASES,
    *cases_irqchip.CASES,
)
"""Every conformance case, by area."""

REQUIRED_EXITS = frozenset(
    {
        ExitReason.IO,
        ExitReason.MMIO,
        ExitReason.HLT,
        ExitReason.SHUTDOWN,
        ExitReason.DEBUG,
        ExitReason.IRQ_WINDOW_OPEN,
        ExitReason.INTR,
        ExitReason.INTERNAL_ERROR,
    }
)
"""Every exit an x86 guest can cause on these backends. Not here: FAIL_ENTRY (this host never gives
it: invalid guest state is SHUTDOWN, and upstream's depends on the vendor and names a host CPU),
SYSTEM_EVENT (PSCI / Xen / SEV only) and UNKNOWN (nothing a guest does maps to it)."""

REQUIRED_FEATURES = frozenset(
    {
        "io",
        "string-io",
        "mmio",
        "mmio-rmw",
        "readonly-slot",
        "removed-slot",
        "dirty-log",
        "interrupt-injection",
        "interrupt-window",
        "exception-delivery",
        "single-step",
        "triple-fault",
        "unbacked-exec",
        "mode-switch",
        "paging",
        "multi-vcpu",
        "kick",
        "pic",
        "pit",
        "ioapic",
        "level-irq",
        "lapic-timer",
        "ipi",
        "init-sipi",
        "hlt-sleep",
    }
)
"""What the issue asks the corpus to exercise (``Case.covers`` tags)."""

REQUIRED_MODES = frozenset({"real", "protected", "long", "user", "reset"})
