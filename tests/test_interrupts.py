"""Interrupt injection without an irqchip (KVM_INTERRUPT), interrupt windows, NMI queueing."""

from __future__ import annotations

from dataclasses import replace

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


def test_vcpu_events_keep_the_last_interrupt_vector(hv: Hypervisor, vm: VM) -> None:
    """KVM's ``interrupt.nr`` outlives the delivery, which clears ``injected`` only (``kvm_clear_interrupt_queue``)."""
    vcpu = boot(hv, vm, real_mode.IRQ_WINDOW)
    assert vcpu.get_vcpu_events().interrupt_nr == 0
    assert vcpu.run() == IoExit(0x80, 1, 1, IoDirection.OUT, b"\x01")
    vcpu.interrupt(0x20)  # delivered even with IF=0
    assert vcpu.run() == IoExit(0x81, 1, 1, IoDirection.OUT, b"\x42")
    events = vcpu.get_vcpu_events()
    assert (events.interrupt_injected, events.interrupt_nr) == (0, 0x20)
    assert vcpu.get_sregs().interrupt_bitmap == (0, 0, 0, 0)
    vcpu.set_vcpu_events(replace(events, interrupt_nr=0x55))  # not injected, yet kept as given
    assert (vcpu.get_vcpu_events().interrupt_injected, vcpu.get_vcpu_events().interrupt_nr) == (0, 0x55)
    assert vcpu.run() == HltExit()


def test_set_sregs_without_a_pending_vector_keeps_the_queued_interrupt(hv: Hypervisor, vm: VM) -> None:
    """KVM's ``__set_sregs`` queues the first vector of ``interrupt_bitmap``; an empty one changes nothing."""
    vcpu = boot(hv, vm, real_mode.IRQ_WINDOW)
    assert vcpu.run() == IoExit(0x80, 1, 1, IoDirection.OUT, b"\x01")
    vcpu.interrupt(0x20)
    vcpu.set_sregs(replace(vcpu.get_sregs(), interrupt_bitmap=(0, 0, 0, 0)))
    events = vcpu.get_vcpu_events()
    assert (events.interrupt_injected, events.interrupt_nr) == (1, 0x20)
    assert vcpu.run() == IoExit(0x81, 1, 1, IoDirection.OUT, b"\x42")


def test_nmi_is_queued_as_pending(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, real_mode.SPIN)
    vcpu.nmi()
    assert vcpu.get_vcpu_events().nmi_pending == 1


# Real mode: IVT entry 13 (#GP) -> handler; rdmsr of an MSR nobody has; report eax.
RDMSR_UNKNOWN = (
    b"\x31\xc0"  # xor ax, ax
    b"\x8e\xd0"  # mov ss, ax
    b"\xbc\x00\x80"  # mov sp, 0x8000
    b"\xc7\x06\x34\x00\x25\x10"  # mov word [13*4], handler (0x1025)
    b"\xc7\x06\x36\x00\x00\x00"  # mov word [13*4+2], 0
    b"\x66\xb9\xef\xbe\xad\xde"  # mov ecx, 0xdeadbeef
    b"\x66\xb8\x55\x55\x55\x55"  # mov eax, 0x55555555
    b"\x0f\x32"  # rdmsr
    b"\x66\xe7\x20"  # out 0x20, eax   (no fault: the value read)
    b"\xf4"  # hlt
    b"\xb0\x0d"  # handler: mov al, 13
    b"\xe6\x21"  # out 0x21, al   (#GP taken)
    b"\xf4"  # hlt
)


def test_guest_rdmsr_of_an_unknown_msr(hv: Hypervisor, vm: VM) -> None:
    assert RDMSR_UNKNOWN.index(b"\xb0\x0d") == 0x25
    vcpu = boot(hv, vm, RDMSR_UNKNOWN)
    assert vcpu.run() == IoExit(0x21, 1, 1, IoDirection.OUT, b"\x0d")  # #GP through the IVT, on every backend
    assert vcpu.run() == HltExit()


def test_ready_and_if_flag_are_a_snapshot_taken_at_the_exit(hv: Hypervisor, vm: VM) -> None:
    """kvm_run's ready_for_interrupt_injection and if_flag are written as run() returns (post_kvm_run_save)."""
    vcpu = boot(hv, vm, real_mode.OUT_7E, rflags=0x202)
    assert (vcpu.ready_for_interrupt_injection, vcpu.if_flag) == (False, False)  # kvm_run starts zeroed
    assert vcpu.run() == IoExit(0x7E, 1, 1, IoDirection.OUT, b"\x07")
    assert (vcpu.ready_for_interrupt_injection, vcpu.if_flag) == (True, True)
    vcpu.set_regs(replace(vcpu.get_regs(), rflags=0x2))
    vcpu.interrupt(0x20)
    assert (vcpu.ready_for_interrupt_injection, vcpu.if_flag) == (True, True)  # not recomputed


def test_ready_for_injection_is_always_set_with_an_irqchip(hv: Hypervisor, vm: VM) -> None:
    """With the in-kernel PIC userspace injects nothing, and KVM reports ready = 1 whatever IF is."""
    vm.create_irqchip()
    vcpu = boot(hv, vm, real_mode.OUT_7E)  # IF = 0
    assert vcpu.run() == IoExit(0x7E, 1, 1, IoDirection.OUT, b"\x07")
    assert (vcpu.ready_for_interrupt_injection, vcpu.if_flag) == (True, False)
