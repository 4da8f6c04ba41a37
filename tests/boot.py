"""Put a test guest into a VM: RAM at 0, code at ``layout.CODE``, the vCPU in the guest's mode.

Also a small exit loop (``run_exits``) that answers INs and MMIO reads from a
callback and collects every exit until the guest halts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Literal

from hvcore import VCPU, VM, Exit, GuestMemory, HltExit, Hypervisor, IoExit, MmioExit, ShutdownExit, SlotFlags, x86
from tests.guests import layout

Mode = Literal["real", "protected", "long", "user"]


def add_ram(vm: VM, flags: SlotFlags = SlotFlags(0)) -> GuestMemory:
    """Slot 0: ``layout.RAM_SIZE`` bytes of RAM at guest-physical 0. Closed with the VM."""
    ram = GuestMemory(layout.RAM_SIZE)  # unmapped when the VM drops the slot and the test its reference
    vm.set_memory_slot(0, layout.RAM_BASE, ram, flags=flags)
    return ram


def slot_memory(vm: VM, slot: int = 0) -> GuestMemory:
    """The GuestMemory behind ``slot``."""
    return next(s.memory for s in vm.memory_slots() if s.slot == slot)


def read_guest(vm: VM, address: int, length: int) -> bytes:
    """Read guest-physical memory through the slot that maps ``address``."""
    for s in vm.memory_slots():
        if s.contains(address):
            return s.memory.read(s.offset + address - s.guest_address, length)
    raise LookupError(f"no slot maps {address:#x}")


def write_guest(vm: VM, address: int, data: bytes) -> None:
    """Write guest-physical memory through the slot that maps ``address``."""
    for s in vm.memory_slots():
        if s.contains(address):
            s.memory.write(s.offset + address - s.guest_address, data)
            return
    raise LookupError(f"no slot maps {address:#x}")


def map_apic_window(vm: VM) -> None:
    """Identity-map 3-4 GiB (the IOAPIC at 0xfec00000, the LAPIC at 0xfee00000) in the long-mode tables."""
    flags = 0x87  # present, writable, user, 2 MiB
    entries = b"".join(((0xC0000000 + (i << 21)) | flags | 0x10).to_bytes(8, "little") for i in range(512))  # +PCD
    write_guest(vm, layout.APIC_PD, entries)
    write_guest(vm, layout.PDPT + 3 * 8, (layout.APIC_PD | 0x7).to_bytes(8, "little"))


def boot(
    hv: Hypervisor,
    vm: VM,
    code: bytes,
    mode: Mode = "real",
    *,
    vcpu_id: int = 0,
    ram_flags: SlotFlags = SlotFlags(0),
    **regs: int,
) -> VCPU:
    """Load ``code`` at ``layout.CODE`` (adding RAM as slot 0 if there is none) and start a vCPU there in ``mode``."""
    if all(s.slot != 0 for s in vm.memory_slots()):
        add_ram(vm, ram_flags)
    write_guest(vm, layout.CODE, code)
    vcpu = vm.create_vcpu(vcpu_id)
    sregs = vcpu.get_sregs()
    ram = slot_memory(vm)
    if mode == "real":
        sregs = x86.real_mode_sregs(sregs)
    elif mode == "protected":
        sregs = x86.protected_mode_sregs(sregs, ram, layout.GDT)
    else:
        vcpu.set_cpuid(hv.supported_cpuid())
        sregs = x86.long_mode_sregs(sregs, ram, layout.GDT, layout.PML4, user=mode == "user")
    vcpu.set_sregs(sregs)
    rflags = regs.pop("rflags", 0x2 | (x86.RFLAGS_IOPL3 if mode == "user" else 0))
    vcpu.set_regs(replace(vcpu.get_regs(), rip=layout.CODE, rsp=layout.STACK_TOP, rflags=rflags, **regs))
    return vcpu


Answer = Callable[[Exit], "bytes | int"]


def run_exits(vcpu: VCPU, answer: Answer | None = None, limit: int = 10_000) -> list[Exit]:
    """Run until HLT or SHUTDOWN (included in the list), answering INs and MMIO reads with ``answer``."""
    exits: list[Exit] = []
    for _ in range(limit):
        exit_ = vcpu.run()
        exits.append(exit_)
        if isinstance(exit_, (HltExit, ShutdownExit)):
            return exits
        if (isinstance(exit_, IoExit) and exit_.is_in) or (isinstance(exit_, MmioExit) and not exit_.is_write):
            if answer is None:
                raise AssertionError(f"guest asked for data, the test gave no answer: {exit_!r}")
            vcpu.complete(answer(exit_))
    raise AssertionError(f"no HLT within {limit} exits; last: {exits[-3:]!r}")
