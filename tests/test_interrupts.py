"""Interrupt injection without an irqchip (KVM_INTERRUPT), interrupt windows, NMI queueing."""

from __future__ import annotations

from hvcore import VM, HltExit, Hypervisor, IoDirection, IoExit, IrqWindowOpenExit
from tests.boot import boot, read_guest
from tests.guests import layout, real_mode


def test_interrupt_window_and_injection(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, real_mode.IRQ_WINDOW)
    assert vcpu.run() == IoExit(0x80, 1, 1, IoDirection.OUT, b"\x01")
    assert not vcpu.if_flag
    assert not vcpu.ready_for_interrupt_injection
    vcpu.request_interrupt_window = True
    assert vcpu.request_interrupt_window
    assert vcpu.run() == IrqWindowOpenExit()
    assert vcpu.if_flag
    assert vcpu.ready_for_interrupt_injection
    interrupted_at = vcpu.get_regs().rip
    spin = layout.CODE + real_mode.IRQ_WINDOW.index(b"\xfb") + 1  # the loop after sti
    assert spin <= interrupted_at <= spin + 1
    vcpu.interrupt(0x20)
    vcpu.request_interrupt_window = False
    assert vcpu.run() == IoExit(0x81, 1, 1, IoDirection.OUT, b"\x42")
    assert vcpu.run() == HltExit()
    regs = vcpu.get_regs()
    frame = read_guest(vm, regs.rsp & 0xFFFF, 6)  # real-mode interrupt frame: ip, cs, flags
    assert int.from_bytes(frame[0:2], "little") == interrupted_at
    assert int.from_bytes(frame[2:4], "little") == 0
    assert int.from_bytes(frame[4:6], "little") & 0x200  # IF was set when interrupted
    assert not regs.rflags & 0x200  # the handler runs with IF clear


def test_queued_interrupt_is_visible_in_vcpu_events(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, real_mode.IRQ_WINDOW)
    vcpu.run()
    vcpu.interrupt(0x20)
    events = vcpu.get_vcpu_events()
    assert events.interrupt_injected == 1
    assert events.interrupt_nr == 0x20
    assert vcpu.get_sregs().interrupt_bitmap[0] == 1 << 0x20


def test_nmi_is_queued_as_pending(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, real_mode.SPIN)
    vcpu.nmi()
    assert vcpu.get_vcpu_events().nmi_pending == 1
