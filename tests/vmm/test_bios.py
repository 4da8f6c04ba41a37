"""The BIOS state a multiboot kernel finds (hvcore.vmm.bios), as SeaBIOS leaves it for GRUB or QEMU."""

from __future__ import annotations

from hvcore import Hypervisor, IrqchipId
from hvcore.vmm import Machine
from hvcore.vmm.bios import BIOS_SEGMENT
from tests.vmm.test_boot_images import multiboot_image


def test_a_multiboot_kernel_finds_the_pics_pit_and_ivt_a_bios_leaves(hv: Hypervisor) -> None:
    with Machine(hv, memory=16 << 20) as machine:
        plan = machine.load(multiboot_image())
        assert plan.bios_state and plan.mode == "protected"
        master, slave = machine.vm.get_irqchip(IrqchipId.PIC_MASTER), machine.vm.get_irqchip(IrqchipId.PIC_SLAVE)
        assert (master.irq_base, master.imr) == (0x08, 0xB8)  # type: ignore[union-attr]
        assert (slave.irq_base, slave.imr) == (0x70, 0x8E)  # type: ignore[union-attr]
        timer = machine.vm.get_pit().channels[0]
        assert (timer.mode, timer.count) == (3, 0x10000)  # 18.2 Hz, as SeaBIOS's pit_setup
        ivt = machine.read(0, 0x400)
        segments = {int.from_bytes(ivt[4 * v + 2 : 4 * v + 4], "little") for v in range(256)}
        assert segments == {BIOS_SEGMENT}
        timer_handler = int.from_bytes(ivt[8 * 4 : 8 * 4 + 2], "little")
        assert machine.read((BIOS_SEGMENT << 4) + timer_handler, 7) == b"\x50\xb0\x20\xe6\x20\x58\xcf"  # EOI, iret
        regs = machine.vcpus[0].get_regs()
        assert (regs.rip, regs.rax & 0xFFFFFFFF) == (plan.entry, 0x2BADB002)  # the kernel's own start state after it
