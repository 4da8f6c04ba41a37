"""The in-kernel irqchip: PIC and PIT, IOAPIC routes (edge and level), the LAPIC timer, IPIs, INIT/SIPI.

The guests are ``tests/guests/irqchip.py``'s; every case creates the irqchip (and the PIT where
it says so) before its vCPUs and maps the APIC window. With an irqchip HLT never exits, so each
script stops at the guest's last OUT. Timer interrupts come when they come: the guests count
them and report counts, never times, so the exits are the same on every backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from hvcore import Exit, MpState
from tests.boot import map_apic_window
from tests.conformance.harness import Case, Host, Outcome, out, script
from tests.guests import irqchip as guests


def apic_window(host: Host) -> None:
    """Set-up: map the IOAPIC and LAPIC pages into the long-mode tables."""
    map_apic_window(host.vm)


def pulse(gsi: int) -> Callable[[Host], None]:
    """An action: raise and lower ``gsi`` (an edge)."""

    def action(host: Host) -> None:
        host.vm.irq_line(gsi, True)
        host.vm.irq_line(gsi, False)

    return action


def line(gsi: int, level: bool) -> Callable[[Host], None]:
    """An action: drive ``gsi`` to ``level``."""

    def action(host: Host) -> None:
        host.vm.irq_line(gsi, level)

    return action


PIC_PIT_TICKS = Case(
    "irqchip_pic_pit_100hz",
    "PIC initialised by ICWs, PIT channel 0 at 100 Hz in mode 2: ten ticks counted by an ISR",
    "long",
    guests.PIC_PIT_TICKS,
    irqchip=True,
    pit=True,
    setup=apic_window,
    script=script(steps=1),
    expect=Outcome(steps=(out(0x10, 10, 0x10A9, size=4),), state={"rax": 10}),
    covers=frozenset({"pic", "pit", "hlt-sleep"}),
)

IOAPIC_ROUTE = Case(
    "irqchip_ioapic_edge_route",
    "IOAPIC pin 5 routed to vector 0x45 by the guest; the host pulses GSI 5 while the guest sleeps in HLT",
    "long",
    guests.IOAPIC_ROUTE,
    irqchip=True,
    setup=apic_window,
    script=script(actions={0: pulse(5)}, steps=2),
    expect=Outcome(steps=(out(0x10, 1, 0x109B), out(0x11, 0x45, 0x10B1)), state={"rax": 0x45}),
    covers=frozenset({"ioapic", "hlt-sleep"}),
)

LAPIC_TIMER = Case(
    "irqchip_lapic_timer",
    "LAPIC timer periodic (5 ticks of 1 ms), then one-shot: current count 0 after it fired",
    "long",
    guests.LAPIC_TIMER,
    irqchip=True,
    setup=apic_window,
    script=script(steps=3),
    expect=Outcome(steps=(out(0x10, 5, 0x10A6, size=4), out(0x11, 0, 0x10DA, size=4), out(0x10, 1, 0x10E3, size=4))),
    covers=frozenset({"lapic-timer", "hlt-sleep"}),
)


def _one_more_delivery(outcome: Outcome) -> Outcome:
    steps = tuple(
        replace(s, exit=out(0x11, 4, s.rip, size=4).exit) if s.exit == out(0x11, 3, s.rip, size=4).exit else s
        for s in outcome.steps
    )
    return replace(outcome, steps=steps)


LEVEL_HELD = Case(
    "irqchip_level_line_held",
    "level-triggered IOAPIC pin held high: re-delivered at each EOI until the host lowers it",
    "long",
    guests.LEVEL_HELD,
    irqchip=True,
    setup=apic_window,
    script=script(actions={0: line(6, True), 1: line(6, False)}, steps=4),
    expect=Outcome(
        steps=(
            out(0x10, 1, 0x109B),
            out(0x14, 3, 0x10DB),
            out(0x11, 3, 0x10BA, size=4),
            out(0x12, 0x8046, 0x10C5, size=4),
        )
    ),
    quirks=("level_redelivered_early",),
    variants={"level_redelivered_early": _one_more_delivery},
    covers=frozenset({"ioapic", "level-irq"}),
)


def _stop_after(counts: dict[int, int]) -> Callable[[Host, Exit], None]:
    """A threaded script: vCPU i stops after ``counts[i]`` exits."""

    def host_script(host: Host, exit_: Exit) -> None:
        if len(host.steps) >= counts[host.current]:
            host.stop()

    return host_script


def _ipi_setup(host: Host) -> None:
    apic_window(host)
    _bsp, ap = host.vcpus
    ap.set_regs(replace(ap.get_regs(), rip=guests.IPI_AP_ENTRY, rsp=guests.AP_STACK_TOP))
    ap.set_mp_state(MpState.RUNNABLE)


IPI = Case(
    "irqchip_ipi",
    "vCPU 0 sends a fixed IPI (vector 0x50) to vCPU 1, which sleeps in HLT, through the ICR",
    "long",
    guests.IPI,
    irqchip=True,
    vcpus=2,
    threads=True,
    setup=_ipi_setup,
    script=_stop_after({0: 1, 1: 2}),
    expect=Outcome(
        steps=(
            out(0x10, 0x10, 0x1096),
            out(0x15, 0x01000000, 0x10D4, size=4, vcpu=1),
            out(0x12, 0x50, 0x10F2, vcpu=1),
        )
    ),
    covers=frozenset({"ipi", "multi-vcpu", "hlt-sleep"}),
)


def _sipi_setup(host: Host) -> None:
    apic_window(host)
    host.write(guests.SIPI_ADDRESS, guests.SIPI_TRAMPOLINE)
    ap = host.vcpus[1]
    ap.set_mp_state(MpState.UNINITIALIZED)  # as created with an irqchip; _boot set it up anyway
    # INIT loads RDX with the CPU signature: the same one on every backend
    ap.set_cpuid([replace(e, eax=SIGNATURE) if e.function == 1 else e for e in host.hv.supported_cpuid()])


SIGNATURE = 0x000306C4
"""CPUID.1:EAX given to vCPU 1 of INIT_SIPI (family 6, model 0x3C, stepping 4)."""


INIT_SIPI = Case(
    "irqchip_init_sipi",
    "vCPU 0 sends INIT and a SIPI (vector 0x0E); vCPU 1 wakes from UNINITIALIZED in real mode at 0x0E00:0",
    "long",
    guests.INIT_SIPI,
    irqchip=True,
    vcpus=2,
    threads=True,
    setup=_sipi_setup,
    script=_stop_after({0: 1, 1: 2}),
    expect=Outcome(
        steps=(
            out(0x10, 0x10, 0x103C),
            out(0x13, 0x0E00, 0x5, size=2, vcpu=1),
            out(0x13, 0x5A, 0x9, vcpu=1),
        ),
        state={"1:cs.selector": 0x0E00, "1:cs.base": 0xE000, "1:cr0": 0x10, "1:rdx": SIGNATURE},
    ),
    covers=frozenset({"init-sipi", "multi-vcpu", "mode-switch"}),
)

CASES = (PIC_PIT_TICKS, IOAPIC_ROUTE, LAPIC_TIMER, LEVEL_HELD, IPI, INIT_SIPI)
