"""Put a test guest into a VM: RAM at 0, code at ``layout.CODE``, the vCPU in the guest's mode.

Also a small exit loop (``run_exits``) that answers INs and MMIO reads from a
callback and collects every exit until the guest halts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Literal

from hvcore import (
    VCPU,
    VM,
    Exit,
    GuestMemory,
    HltExit,
    Hypervisor,
    IoExit,
    MmioExit,
    Regs,
    ShutdownExit,
    SlotFlags,
    x86,
)
from tests.guests import layout
from tests.quirks import host_variant

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


_OUT_OPCODES = {0xE6: 2, 0xE7: 2, 0xEE: 1, 0xEF: 1}  # out imm8, al/eax; out dx, al/eax
_OPERAND_SIZE = 0x66


def out_length(vm: VM, vcpu: VCPU) -> int:
    """The length of the plain OUT instruction at the vCPU's RIP (0 when there is none)."""
    sregs = vcpu.get_sregs()
    linear = sregs.cs.base + vcpu.get_regs().rip
    if sregs.cr0 & x86.CR0_PG:
        translation = vcpu.translate(linear)
        if not translation.valid:
            return 0
        linear = translation.physical_address
    code = read_guest(vm, linear, 2)
    prefix = 1 if code[0] == _OPERAND_SIZE else 0
    return prefix + _OUT_OPCODES[code[prefix]] if code[prefix] in _OUT_OPCODES else 0


def completed_regs(hv: Hypervisor, vm: VM, vcpu: VCPU, exit_: Exit) -> Regs:
    """The registers as they are once the exit's instruction is complete (upstream completes an OUT on the next run).

    Upstream KVM leaves RIP at a plain OUT, with RFLAGS.RF as the OUT found it, until the next
    ``run()`` (hvcore's host deviation ``out_completed_at_exit``); hosts with the ``rip_past_out``
    variant, and string OUTs, show the OUT complete: RIP past it, RF clear. Tests that compare
    whole runs record this view, and tests/test_io.py checks the exit-time state apart.
    """
    regs = vcpu.get_regs()
    if isinstance(exit_, IoExit) and not exit_.is_in and exit_.port != 0x7E:
        length = out_length(vm, vcpu)
        if length and host_variant(hv, "out_completed_at_exit") == "upstream":
            return replace(regs, rip=regs.rip + length, rflags=regs.rflags & ~x86.RFLAGS_RF)
    return regs


def completed_rip(hv: Hypervisor, vm: VM, vcpu: VCPU, exit_: Exit) -> int:
    """``completed_regs(...).rip``."""
    return completed_regs(hv, vm, vcpu, exit_).rip
