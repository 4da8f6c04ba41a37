"""End to end: firmware boots from the reset vector in ROM to long mode, takes a #PF and an interrupt, exits by MMIO.

The same host script runs on every backend (``tests.guests.boot.BOOT`` documents the guest),
and a last test runs it on KVM and on the simulator side by side and compares them.
"""

from __future__ import annotations

from dataclasses import dataclass

import hvcore
from hvcore import (
    VM,
    Exit,
    GuestMemory,
    HltExit,
    Hypervisor,
    InternalErrorExit,
    IoDirection,
    IoExit,
    IrqWindowOpenExit,
    MmioExit,
    Regs,
    Segment,
    ShutdownExit,
    SlotFlags,
    Sregs,
)
from tests.boot import completed_regs
from tests.conftest import WATCHDOG_SECONDS, Watchdog
from tests.guests.boot import (
    BOOT,
    BOOT_ENTRY,
    BOOT_FAULT,
    BOOT_GDT,
    BOOT_HLT_END,
    BOOT_IDT,
    BOOT_MMIO,
    BOOT_RAM_SIZE,
    BOOT_SPIN,
    CR2_PORT,
    DEMAND_PAGE,
    DEMAND_VALUE,
    ERROR_CODE_PORT,
    IRQ_PORT,
    READY_PORT,
    RESET,
    RESET_VECTOR,
    ROM_BASE,
    ROM_SIZE,
    rom_image,
)

CODE64 = Segment(base=0, limit=0xFFFFFFFF, selector=0x18, type=0xB, present=1, dpl=0, db=0, s=1, l=1, g=1)
DATA = Segment(base=0, limit=0xFFFFFFFF, selector=0x10, type=0x3, present=1, dpl=0, db=1, s=1, l=0, g=1)
PF_FRAME = 0x8000 - 48  # error code, RIP, CS, RFLAGS, RSP, SS


@dataclass(frozen=True)
class Step:
    """One exit and where the guest stood when it came."""

    exit: Exit
    rip: int
    rsp: int
    rflags: int


def out(port: int, data: bytes) -> IoExit:
    return IoExit(port, len(data), 1, IoDirection.OUT, data)


EXPECTED = [
    Step(out(CR2_PORT, DEMAND_PAGE.to_bytes(4, "little")), 0xFFFFE0F3, 0x7FD0, 0x46),
    Step(out(ERROR_CODE_PORT, bytes(4)), 0xFFFFE0F6, 0x7FD8, 0x46),
    Step(out(READY_PORT, b"\x01"), 0xFFFFE0EB, 0x8000, 0x46),  # RF, restored by iretq, is gone again
    Step(IrqWindowOpenExit(), BOOT_SPIN, 0x8000, 0x246),
    Step(out(IRQ_PORT, b"\x20"), 0xFFFFE107, 0x7FD8, 0x46),
    Step(MmioExit(BOOT_MMIO, 8, True, DEMAND_VALUE.to_bytes(8, "little")), 0xFFFFE10F, 0x7FD8, 0x46),
    Step(HltExit(), BOOT_HLT_END, 0x7FD8, 0x46),
]
EXPECTED_REGS = Regs(
    rax=0x20, rbx=DEMAND_VALUE, rcx=0xC0000080, rdx=0, rdi=BOOT_MMIO, rsp=0x7FD8, rip=BOOT_HLT_END, rflags=0x46
)


@dataclass
class Boot:
    """Everything one boot produced."""

    steps: list[Step]
    regs: Regs
    sregs: Sregs
    pf_frame: list[int]
    irq_frame: list[int]
    reset_regs: Regs
    reset_sregs: Sregs
    rom_unchanged: bool


def words(memory: GuestMemory, address: int, count: int) -> list[int]:
    return [int.from_bytes(memory.read(address + 8 * i, 8), "little") for i in range(count)]


def boot_from_rom(hv: Hypervisor, vm: VM) -> Boot:
    """Map RAM and the ROM, leave the vCPU in its reset state, and drive the guest to its HLT."""
    ram = GuestMemory(BOOT_RAM_SIZE)
    ram.write(DEMAND_PAGE, DEMAND_VALUE.to_bytes(8, "little"))
    vm.set_memory_slot(0, 0, ram)
    rom = GuestMemory(ROM_SIZE)
    rom.write(0, rom_image())
    vm.set_memory_slot(1, ROM_BASE, rom, flags=SlotFlags.READONLY)
    vcpu = vm.create_vcpu(0)
    vcpu.set_cpuid(hv.supported_cpuid())  # lets the guest set EFER.LME itself
    reset_regs, reset_sregs = vcpu.get_regs(), vcpu.get_sregs()
    steps: list[Step] = []
    pf_frame: list[int] = []
    for _ in range(20):
        exit_ = vcpu.run()
        done = completed_regs(hv, vm, vcpu, exit_)
        steps.append(Step(exit_, done.rip, done.rsp, done.rflags))
        match exit_:
            case IoExit(port=port) if port == CR2_PORT:
                pf_frame = words(ram, PF_FRAME, 6)
            case IoExit(port=port) if port == READY_PORT:
                vcpu.request_interrupt_window = True
            case IrqWindowOpenExit():
                vcpu.interrupt(0x20)
                vcpu.request_interrupt_window = False
            case HltExit() | ShutdownExit() | InternalErrorExit():
                break
    return Boot(
        steps=steps,
        regs=vcpu.get_regs(),
        sregs=vcpu.get_sregs(),
        pf_frame=pf_frame,
        irq_frame=words(ram, 0x8000 - 40, 5),
        reset_regs=reset_regs,
        reset_sregs=reset_sregs,
        rom_unchanged=rom.read(0, ROM_SIZE) == rom_image(),
    )


def test_rom_image_layout() -> None:
    image = rom_image()
    assert len(image) == ROM_SIZE
    assert image[RESET - ROM_BASE :].startswith(RESET_VECTOR)
    assert image[BOOT_ENTRY - ROM_BASE :].startswith(BOOT)
    assert image[BOOT_FAULT - ROM_BASE :].startswith(b"\x48\x8b\x1c\x25")  # mov rbx, [DEMAND_PAGE]
    assert image[BOOT_SPIN - ROM_BASE :].startswith(b"\xeb\xfe")
    assert image[BOOT_HLT_END - ROM_BASE - 1] == 0xF4


def test_boot_from_reset_vector_to_long_mode(hv: Hypervisor, vm: VM) -> None:
    result = boot_from_rom(hv, vm)
    assert (result.reset_regs.rip, result.reset_regs.rdx, result.reset_regs.rflags) == (0xFFF0, 0x600, 0x2)
    assert (result.reset_sregs.cs.selector, result.reset_sregs.cs.base) == (0xF000, 0xFFFF0000)
    assert [step.exit for step in result.steps] == [step.exit for step in EXPECTED]
    assert result.pf_frame == [0, BOOT_FAULT, 0x18, 0x10046, 0x8000, 0x10]  # RF set in a fault's frame
    assert result.irq_frame == [BOOT_SPIN, 0x18, 0x246, 0x8000, 0x10]
    assert result.regs == EXPECTED_REGS
    sregs = result.sregs
    assert (sregs.cs, sregs.ss, sregs.ds, sregs.es) == (CODE64, DATA, DATA, DATA)
    assert (sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4, sregs.efer) == (0xE0000011, DEMAND_PAGE, 0x9000, 0x20, 0x500)
    assert (sregs.gdt.base, sregs.gdt.limit) == (BOOT_GDT, 0x1F)
    assert (sregs.idt.base, sregs.idt.limit) == (BOOT_IDT, 0xFFF)
    assert result.rom_unchanged
    assert result.steps == EXPECTED  # rip, rsp and rflags at every exit


def significant(sregs: Sregs) -> tuple[object, ...]:
    """The sregs fields both backends must agree on after the boot."""
    return (sregs.cs, sregs.ss, sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4, sregs.efer, sregs.gdt, sregs.idt)


def test_kvm_and_simulator_boot_alike(kvm: Hypervisor) -> None:
    with hvcore.open_hypervisor("sim") as sim:
        runs = {}
        for hypervisor in (kvm, sim):
            with hypervisor.create_vm() as vm, Watchdog(vm, WATCHDOG_SECONDS) as dog:
                runs[hypervisor.name] = boot_from_rom(hypervisor, vm)
            assert not dog.fired, f"watchdog fired on {hypervisor.name}"
    on_kvm, on_sim = runs["kvm"], runs["sim"]
    assert [s.exit for s in on_sim.steps] == [s.exit for s in on_kvm.steps]
    assert on_sim.regs == on_kvm.regs
    assert significant(on_sim.sregs) == significant(on_kvm.sregs)
    assert (on_sim.pf_frame, on_sim.irq_frame) == (on_kvm.pf_frame, on_kvm.irq_frame)
    assert on_sim.steps == on_kvm.steps
