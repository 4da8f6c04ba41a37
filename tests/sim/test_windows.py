"""Interrupt and NMI windows in the simulator: QEMU's own check, and the single-step fallback."""

from __future__ import annotations

import pytest

import hvcore
from hvcore import IoExit
from hvcore_sim import engine as engine_module
from hvcore_sim import layout as layout_module
from hvcore_sim import system, windows
from hvcore_sim.engine import Engine
from tests.boot import boot, map_apic_window
from tests.guests import irqchip as guests

pytestmark = pytest.mark.skipif(
    system._unicorn_problem() is not None, reason=f"simulator unusable: {system._unicorn_problem()}"
)


def _out(port: int, value: int) -> IoExit:
    return IoExit(port, 4, 1, hvcore.IoDirection.OUT, value.to_bytes(4, "little"))


def test_the_window_request_is_found_on_this_unicorn() -> None:
    assert windows.request_offset() is not None
    engine = Engine(layout_module.calibrate())
    assert engine.open_window(windows.REQUEST_INTERRUPT | windows.REQUEST_NMI)
    engine.close_windows()


def test_nmi_blocking_lives_in_qemus_hflags2_and_reset_clears_it() -> None:
    engine = Engine(layout_module.calibrate())
    engine.reset()
    assert not engine.nmi_blocked
    engine.nmi_blocked = True
    assert engine.nmi_blocked
    engine.reset()  # power-on and INIT: NMIs are not blocked
    assert not engine.nmi_blocked


@pytest.mark.parametrize("found", [True, False], ids=["qemu-window", "single-steps"])
def test_blocked_events_land_where_the_guest_unblocks_them(monkeypatch: pytest.MonkeyPatch, found: bool) -> None:
    """Without the request cell the vCPU single-steps a blocked event in: the same, exact outcome."""
    if not found:
        monkeypatch.setattr(engine_module, "request_offset", lambda: None)
    with hvcore.open_hypervisor("sim") as hv:
        for code, expected in (
            (guests.WINDOW_TWO_IPIS, [_out(0x10, 2), _out(0x11, 0x3233), *[_out(0x12, guests.WINDOW_CLI)] * 2]),
            (guests.NMI_NESTED, [_out(0x10, 2), _out(0x11, 1), *[_out(0x12, guests.NMI_STRUCK)] * 2]),
        ):
            with hv.create_vm() as vm:
                vm.create_irqchip()
                vcpu = boot(hv, vm, code, "long")
                map_apic_window(vm)
                assert [vcpu.run() for _ in expected] == expected
