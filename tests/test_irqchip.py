"""The in-kernel interrupt controllers and timers, driven by guests, on every backend.

Each guest in ``tests/guests/irqchip.py`` programs the PIC, PIT, IOAPIC or LAPIC itself; the
test checks the exits it makes and, where the host takes part, what the host did in between.
The same body runs on KVM and on the simulator.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace

import pytest

import hvcore
from hvcore import VCPU, VM, Exit, Hypervisor, IoExit, IrqchipId, MpState
from tests.boot import add_ram, boot, map_apic_window, read_guest, write_guest
from tests.conftest import WATCHDOG_SECONDS, Watchdog, open_or_skip
from tests.guests import irqchip as guests
from tests.guests import layout
from tests.quirks import irq_window_batched, level_extra_deliveries


def out(port: int, value: int, size: int = 1) -> IoExit:
    """The OUT exit a guest makes with ``value``."""
    return IoExit(port, size, 1, hvcore.IoDirection.OUT, value.to_bytes(size, "little"))


def start(hv: Hypervisor, vm: VM, code: bytes, *, pit: bool = False) -> VCPU:
    """irqchip (+PIT), then vCPU 0 in long mode at ``code`` with the APIC window mapped."""
    vm.create_irqchip()
    if pit:
        vm.create_pit()
    vcpu = boot(hv, vm, code, "long")
    map_apic_window(vm)
    return vcpu


def run_until_out(vcpu: VCPU) -> Exit:
    """The next exit: with an irqchip the guests only ever exit through OUT."""
    exit_ = vcpu.run()
    assert isinstance(exit_, IoExit), f"expected an OUT, got {exit_!r}"
    return exit_


def test_pic_and_pit_tick_at_100_hz(hv: Hypervisor, vm: VM) -> None:
    vcpu = start(hv, vm, guests.PIC_PIT_TICKS, pit=True)
    assert run_until_out(vcpu) == out(0x10, 10, 4)
    master = vm.get_irqchip(IrqchipId.PIC_MASTER)
    assert isinstance(master, hvcore.PicState)
    assert (master.irq_base, master.imr, master.isr) == (0x20, 0xFF, 0)  # ICW2, masked by the 10th ISR, all EOI'd
    channel = vm.get_pit().channels[0]
    assert (channel.mode, channel.count, channel.rw_mode) == (2, 11932, 3)


def test_ioapic_routes_a_pin_to_a_vector(hv: Hypervisor, vm: VM) -> None:
    vcpu = start(hv, vm, guests.IOAPIC_ROUTE)
    assert run_until_out(vcpu) == out(0x10, 1)
    ioapic = vm.get_irqchip(IrqchipId.IOAPIC)
    assert isinstance(ioapic, hvcore.IoapicState)
    assert ioapic.redirtbl[5] == 0x45  # unmasked, edge, fixed, destination 0
    assert vm.irq_line(5, True) > 0  # delivered to one LAPIC
    vm.irq_line(5, False)
    assert run_until_out(vcpu) == out(0x11, 0x45)


def test_lapic_timer_periodic_then_one_shot(hv: Hypervisor, vm: VM) -> None:
    vcpu = start(hv, vm, guests.LAPIC_TIMER)
    assert run_until_out(vcpu) == out(0x10, 5, 4)
    assert run_until_out(vcpu) == out(0x11, 0, 4)  # one-shot: the current count stays 0 after expiry
    assert run_until_out(vcpu) == out(0x10, 1, 4)
    lapic = vcpu.get_lapic()
    assert lapic.register(0x320) == 0x40  # LVT timer: one-shot, vector 0x40, unmasked
    assert lapic.register(0xF0) == 0x1FF


def test_level_triggered_line_held_then_released(hv: Hypervisor, vm: VM) -> None:
    vcpu = start(hv, vm, guests.LEVEL_HELD)
    assert run_until_out(vcpu) == out(0x10, 1)
    vm.irq_line(6, True)  # held: every EOI brings the interrupt back
    assert run_until_out(vcpu) == out(0x14, 3)  # the third ISR asks for the release
    vm.irq_line(6, False)
    assert run_until_out(vcpu) == out(0x11, 3 + level_extra_deliveries(hv), 4)  # no fourth interrupt upstream
    assert run_until_out(vcpu) == out(0x12, 0x8046, 4)  # remote IRR clear after the last EOI


def test_hlt_sleeps_until_irq_line_from_another_thread(hv: Hypervisor, vm: VM) -> None:
    vcpu = start(hv, vm, guests.HLT_WAKE)
    assert run_until_out(vcpu) == out(0x10, 1)
    pulsed = threading.Event()

    def pulse() -> None:
        vm.irq_line(7, True)
        vm.irq_line(7, False)
        pulsed.set()

    timer = threading.Timer(0.2, pulse)
    timer.start()
    try:
        exit_ = vcpu.run()  # HLT does not exit: run() sleeps until the line is pulsed
    finally:
        timer.join()
    assert pulsed.is_set()
    assert exit_ == out(0x11, 0x47)


def test_kick_interrupts_a_sleeping_hlt(hv: Hypervisor, vm: VM) -> None:
    vm.create_irqchip()
    vcpu = boot(hv, vm, b"\xfa\xf4", "long")  # cli; hlt: only a kick (or NMI/INIT) ends this sleep
    timer = threading.Timer(0.1, vcpu.kick)
    timer.start()
    try:
        assert isinstance(vcpu.run(), hvcore.InterruptedExit)
    finally:
        timer.join()
    assert vcpu.get_mp_state() == MpState.HALTED
    assert vcpu.get_regs().rip == layout.CODE + 2


def _run_in_thread(vcpu: VCPU, exits: list[Exit], count: int) -> threading.Thread:
    def body() -> None:
        for _ in range(count):
            exits.append(vcpu.run())

    thread = threading.Thread(target=body, name=f"vcpu{vcpu.id}")
    thread.start()
    return thread


def test_ipi_from_vcpu0_to_vcpu1(hv: Hypervisor, vm: VM) -> None:
    bsp = start(hv, vm, guests.IPI)
    ap = vm.create_vcpu(1)
    ap.set_sregs(replace(bsp.get_sregs(), apic_base=ap.get_sregs().apic_base))
    ap.set_regs(replace(bsp.get_regs(), rip=guests.IPI_AP_ENTRY, rsp=guests.AP_STACK_TOP))
    ap.set_cpuid(hv.supported_cpuid())
    ap.set_mp_state(MpState.RUNNABLE)  # an application processor otherwise waits for INIT/SIPI
    ap_exits: list[Exit] = []
    thread = _run_in_thread(ap, ap_exits, 2)
    try:
        assert run_until_out(bsp) == out(0x10, 0x10)
    finally:
        thread.join()
    assert ap_exits == [out(0x15, 0x01000000, 4), out(0x12, 0x50)]


def test_init_sipi_starts_vcpu1_in_real_mode(hv: Hypervisor, vm: VM) -> None:
    bsp = start(hv, vm, guests.INIT_SIPI)
    write_guest(vm, guests.SIPI_ADDRESS, guests.SIPI_TRAMPOLINE)
    ap = vm.create_vcpu(1)
    assert ap.get_mp_state() == MpState.UNINITIALIZED
    ap_exits: list[Exit] = []
    thread = _run_in_thread(ap, ap_exits, 2)  # sleeps in run() until INIT and SIPI
    try:
        assert run_until_out(bsp) == out(0x10, 0x10)
    finally:
        thread.join()
    assert ap_exits == [out(0x13, guests.SIPI_VECTOR << 8, 2), out(0x13, 0x5A)]
    sregs = ap.get_sregs()
    assert (sregs.cs.selector, sregs.cs.base, sregs.cr0 & 1) == (0x0E00, 0xE000, 0)


def test_pic_and_ioapic_state_round_trip(hv: Hypervisor, vm: VM) -> None:
    vcpu = start(hv, vm, guests.IOAPIC_ROUTE)
    assert run_until_out(vcpu) == out(0x10, 1)
    for chip in IrqchipId:
        state = vm.get_irqchip(chip)
        vm.set_irqchip(chip, state)
        assert vm.get_irqchip(chip) == state
    ioapic = vm.get_irqchip(IrqchipId.IOAPIC)
    assert isinstance(ioapic, hvcore.IoapicState)
    vm.set_irqchip(IrqchipId.IOAPIC, replace(ioapic, redirtbl=((*ioapic.redirtbl[:5], 1 << 16, *ioapic.redirtbl[6:]))))
    assert vm.irq_line(5, True) == -1  # the pin is masked now: nobody takes it
    vm.irq_line(5, False)


def test_lapic_state_round_trip(hv: Hypervisor, vm: VM) -> None:
    vcpu = start(hv, vm, guests.IOAPIC_ROUTE)
    assert run_until_out(vcpu) == out(0x10, 1)
    lapic = vcpu.get_lapic()
    assert lapic.register(0xF0) == 0x1FF and lapic.register(0x30) & 0xFF == 0x14  # SVR, version
    vcpu.set_lapic(lapic.with_register(0x80, 0x70))  # TPR 0x70 blocks vector 0x45 (class 4 <= 7)
    assert vcpu.get_lapic().register(0x80) == 0x70
    vm.irq_line(5, True)
    vm.irq_line(5, False)
    assert vcpu.get_lapic().register(0x200 + 0x40 // 32 * 0x10) >> (0x45 % 32) & 1  # pending in the IRR
    vcpu.set_lapic(vcpu.get_lapic().with_register(0x80, 0))
    assert run_until_out(vcpu) == out(0x11, 0x45)


def test_pit_state_round_trip(hv: Hypervisor, vm: VM) -> None:
    vm.create_irqchip()
    vm.create_pit()
    state = vm.get_pit()
    assert [c.mode for c in state.channels] == [0xFF, 0xFF, 0xFF]  # never programmed, as KVM resets it
    programmed = replace(
        state, channels=(replace(state.channels[0], mode=2, count=1000, rw_mode=3), *state.channels[1:])
    )
    vm.set_pit(programmed)
    got = vm.get_pit().channels[0]
    assert (got.mode, got.count, got.rw_mode) == (2, 1000, 3)


def test_msi_reaches_the_lapic(hv: Hypervisor, vm: VM) -> None:
    vcpu = start(hv, vm, guests.IOAPIC_ROUTE)
    assert run_until_out(vcpu) == out(0x10, 1)
    assert vm.signal_msi(0xFEE00000 | (5 << 12), 0x45) == 0  # APIC 5 does not exist: nobody took it
    assert vm.signal_msi(0xFEE00000, 0x45) == 1  # destination APIC 0, fixed, vector 0x45
    assert run_until_out(vcpu) == out(0x11, 0x45)


def test_gsi_routing_sends_a_gsi_as_msi(hv: Hypervisor, vm: VM) -> None:
    vcpu = start(hv, vm, guests.IOAPIC_ROUTE)
    assert run_until_out(vcpu) == out(0x10, 1)
    vm.set_gsi_routing([hvcore.MsiRoute(40, 0xFEE00000, 0x45)])
    assert vm.irq_line(5, True) == -1  # its route is gone
    assert vm.irq_line(40, True) == 1
    assert run_until_out(vcpu) == out(0x11, 0x45)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda vm: vm.irq_line(0, True), hvcore.NotFound),
        (lambda vm: vm.get_irqchip(IrqchipId.IOAPIC), hvcore.NotFound),
        (lambda vm: vm.create_pit(), hvcore.NotFound),
        (lambda vm: vm.get_pit(), hvcore.NotFound),
        (lambda vm: vm.signal_msi(0xFEE00000, 0x30), hvcore.InvalidArgument),  # KVM: EINVAL
    ],
    ids=["irq_line", "get_irqchip", "create_pit", "get_pit", "signal_msi"],
)
def test_without_an_irqchip(vm: VM, call: Callable[[VM], object], error: type[Exception]) -> None:
    with pytest.raises(error):
        call(vm)


def test_irqchip_misuse(vm: VM) -> None:
    vm.create_irqchip()
    with pytest.raises(hvcore.AlreadyExists):
        vm.create_irqchip()
    vm.create_pit()
    with pytest.raises(hvcore.AlreadyExists):
        vm.create_pit()
    with pytest.raises(hvcore.InvalidArgument, match="pin 9 does not exist"):
        vm.set_gsi_routing([hvcore.IrqchipRoute(1, IrqchipId.PIC_MASTER, 9)])
    vcpu = vm.create_vcpu(0)
    with pytest.raises(hvcore.NotFound) as info:
        vcpu.interrupt(0x30)  # with an irqchip, interrupts come from its lines
    assert info.value.errno == 6  # ENXIO


@pytest.mark.parametrize(("source", "target"), [("kvm", "sim"), ("sim", "kvm")])
def test_irqchip_state_moves_between_backends(source: str, target: str) -> None:
    """The guest programs PIC, IOAPIC and LAPIC on one backend and carries on, interrupts included, on the other."""
    with open_or_skip(source) as first, open_or_skip(target) as second:
        with first.create_vm() as vm, Watchdog(vm, WATCHDOG_SECONDS):
            vcpu = start(first, vm, guests.IOAPIC_ROUTE)
            assert run_until_out(vcpu) == out(0x10, 1)
            vcpu.immediate_exit = True  # complete the OUT without running on, as before any state save
            assert isinstance(vcpu.run(), hvcore.InterruptedExit)
            chips = {chip: vm.get_irqchip(chip) for chip in IrqchipId}
            regs, sregs, lapic = vcpu.get_regs(), vcpu.get_sregs(), vcpu.get_lapic()
            memory = read_guest(vm, 0, layout.RAM_SIZE)
        with second.create_vm() as vm, Watchdog(vm, WATCHDOG_SECONDS):
            vm.create_irqchip()
            add_ram(vm)
            write_guest(vm, 0, memory)
            vcpu = vm.create_vcpu(0)
            vcpu.set_cpuid(second.supported_cpuid())
            vcpu.set_sregs(sregs)
            vcpu.set_regs(regs)
            vcpu.set_lapic(lapic)
            for chip, state in chips.items():
                vm.set_irqchip(chip, state)
                assert vm.get_irqchip(chip) == state
            assert vm.irq_line(5, True) == 1  # the route the guest wrote on the other backend
            vm.irq_line(5, False)
            assert run_until_out(vcpu) == out(0x11, 0x45)


def test_pit_through_the_ioapic_keeps_ticking(hv: Hypervisor, vm: VM) -> None:
    """Each tick waits for the EOI of the one before (reinjection); the EOI at the LAPIC must reach the PIT."""
    vcpu = start(hv, vm, guests.PIT_IOAPIC_TICKS, pit=True)
    assert run_until_out(vcpu) == out(0x10, 5, 4)


def test_lapic_tsc_deadline_timer(hv: Hypervisor, vm: VM) -> None:
    vcpu = start(hv, vm, guests.TSC_DEADLINE)
    assert run_until_out(vcpu) == out(0x12, 1, 4)  # armed: IA32_TSC_DEADLINE reads back non-zero
    assert run_until_out(vcpu) == out(0x11, 0, 4)  # fired: the MSR reads 0 again
    assert run_until_out(vcpu) == out(0x10, 1, 4)


def test_interrupts_held_by_if_land_in_a_one_instruction_window(hv: Hypervisor, vm: VM) -> None:
    """Self-IPIs wait through a long IF=0 stretch; `sti; nop; cli` takes both at the cli, 0x33 first."""
    vcpu = start(hv, vm, guests.WINDOW_TWO_IPIS)
    by_the_cli = run_until_out(vcpu)
    assert run_until_out(vcpu) == out(0x11, 0x3233, 4)  # by priority, whenever they landed
    rips = [run_until_out(vcpu), run_until_out(vcpu)]
    if irq_window_batched(hv):  # this host looks for the window only between batches of instructions
        assert isinstance(by_the_cli, IoExit) and by_the_cli.port == 0x10
        return
    assert by_the_cli == out(0x10, 2, 4)
    assert rips == [out(0x12, guests.WINDOW_CLI, 4)] * 2


def test_nmis_stay_blocked_until_iret(hv: Hypervisor, vm: VM) -> None:
    """An NMI sent from an NMI handler waits for that handler's IRET and strikes right after it."""
    vcpu = start(hv, vm, guests.NMI_NESTED)
    assert run_until_out(vcpu) == out(0x10, 2, 4)
    assert run_until_out(vcpu) == out(0x11, 1, 4)  # the second NMI did not interrupt the first handler
    rips = [run_until_out(vcpu), run_until_out(vcpu)]
    assert vcpu.get_vcpu_events().nmi_masked == 0  # the last handler's IRET ended the blocking
    if not irq_window_batched(hv):  # (this host injects only between batches of emulated instructions)
        assert rips == [out(0x12, guests.NMI_STRUCK, 4)] * 2


def test_x2apic_mode_through_msrs(hv: Hypervisor, vm: VM) -> None:
    """A guest whose CPUID has x2APIC switches it on and uses ID, LDR, SVR, SELF_IPI, ICR and EOI MSRs."""
    vcpu = start(hv, vm, guests.X2APIC_MSRS)
    assert run_until_out(vcpu) == out(0x10, 0, 4)  # x2APIC ID: the vCPU id
    assert run_until_out(vcpu) == out(0x11, 1, 4)  # LDR: cluster 0, member bit 0
    assert run_until_out(vcpu) == out(0x12, 0xFFFFFFFF, 4)  # the MMIO window is a hole in x2APIC mode
    assert run_until_out(vcpu) == out(0x13, 1)
    assert vm.irq_line(9, True) == 1  # logical destination 0x01 matches the x2APIC LDR
    vm.irq_line(9, False)
    assert run_until_out(vcpu) == out(0x14, 2, 4)  # WRMSR to the ID and RDMSR of DFR: #GP
    assert run_until_out(vcpu) == out(0x15, 0x636162, 4)  # 0x62 (ICR) before 0x61 (SELF_IPI), then the IOAPIC's
    assert vcpu.get_sregs().apic_base == 0xFEE00D00
    lapic = vcpu.get_lapic()
    assert (lapic.register(0x20), lapic.register(0xD0)) == (0, 1)  # KVM_GET_LAPIC: ID << 24, the derived LDR


# mov rax, 5; mov cr8, rax; xor eax, eax; mov rax, cr8; out 0x10, al; hlt
CR8_ROUND_TRIP = bytes.fromhex("48c7c005000000" "440f22c0" "31c0" "440f20c0" "e610" "f4")


@pytest.mark.parametrize("irqchip", [False, True], ids=["no-irqchip", "irqchip"])
def test_guest_cr8_is_the_task_priority(hv: Hypervisor, vm: VM, irqchip: bool) -> None:
    if irqchip:
        vm.create_irqchip()
    vcpu = boot(hv, vm, CR8_ROUND_TRIP, "long")
    assert vcpu.run() == out(0x10, 5)
    assert vcpu.get_sregs().cr8 == 5 and vcpu.cr8 == 5
    if irqchip:
        assert vcpu.get_lapic().register(0x80) == 0x50  # CR8 is TPR bits 7:4
        vcpu.set_lapic(vcpu.get_lapic().with_register(0x80, 0x30))
        assert vcpu.get_sregs().cr8 == 3


def test_cr8_is_the_tpr_with_the_apic_disabled_too(hv: Hypervisor, vm: VM) -> None:
    """KVM's ``kvm_set_cr8`` / ``kvm_get_cr8`` use the TPR register itself, whether or not the APIC is on:
    with IA32_APIC_BASE's enable bit clear (its MMIO page a hole) CR8 still holds what the guest wrote."""
    vm.create_irqchip()
    vcpu = boot(hv, vm, CR8_ROUND_TRIP, "long")
    vcpu.set_msrs({0x1B: vcpu.get_msrs([0x1B])[0x1B] & ~(1 << 11)})  # IA32_APIC_BASE: EN off
    assert vcpu.run() == out(0x10, 5)
    assert vcpu.get_sregs().cr8 == 5 and vcpu.get_lapic().register(0x80) == 0x50


def test_guest_cr8_refuses_reserved_bits(hv: Hypervisor, vm: VM) -> None:
    """``mov cr8, rax`` with bits above 3 set is #GP; with no IDT that is a triple fault."""
    vcpu = boot(hv, vm, bytes.fromhex("48c7c010000000" "440f22c0" "f4"), "long")  # mov rax, 16; mov cr8, rax
    assert isinstance(vcpu.run(), hvcore.ShutdownExit)


# mov esi, 0xfec00000; mov dword [rsi + 0x200], 0x1234; mov eax, [rsi + 0x204]; mov eax, [rsi]; out 0x10, eax; hlt
IOAPIC_PAGE_TAIL = bytes.fromhex("be0000c0fe" "c78600020000" "34120000" "8b8604020000" "8b06" "e710" "f4")


def test_the_ioapic_page_past_its_registers_is_ordinary_mmio(hv: Hypervisor, vm: VM) -> None:
    """KVM's IOAPIC claims 0x100 bytes; the rest of its page reaches the VMM as MMIO exits."""
    vcpu = start(hv, vm, IOAPIC_PAGE_TAIL)
    assert vcpu.run() == hvcore.MmioExit(0xFEC00200, 4, True, (0x1234).to_bytes(4, "little"))
    assert vcpu.run() == hvcore.MmioExit(0xFEC00204, 4, False)
    vcpu.complete(7)
    assert run_until_out(vcpu) == out(0x10, 0, 4)  # IOREGSEL reads back 0: the register window is the IOAPIC's


def test_irqchip_state_misuse_is_the_same_error_on_every_backend(vm: VM) -> None:
    vm.create_irqchip()
    with pytest.raises(hvcore.InvalidArgument, match="is not an irqchip"):
        vm.get_irqchip(7)  # type: ignore[arg-type]
    with pytest.raises(hvcore.InvalidArgument, match="IOAPIC takes a IoapicState, not PicState"):
        vm.set_irqchip(IrqchipId.IOAPIC, hvcore.PicState())
    with pytest.raises(hvcore.InvalidArgument, match="PIC_SLAVE takes a PicState"):
        vm.set_irqchip(IrqchipId.PIC_SLAVE, hvcore.IoapicState())
