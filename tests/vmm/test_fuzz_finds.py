"""What the guest-driven device fuzzer (tests/fuzz_devices) found, each as a minimal guest, on both backends.

1. Simulator: a store that straddles the end of a read-only slot into unbacked memory, or the
   start of one from unbacked memory (``mov word [ROM_END - 1], ax``), ended the run with
   ``HypervisorFault("... UC_ERR_WRITE_PROT")`` (ROM first: Unicorn asks about the whole store at
   once) or repeated its first exit forever (unbacked first: the instruction was taken as
   complete, though the ROM part had aborted it). KVM gives one MMIO write exit per part, as
   for a store across pages, and goes on.
2. Simulator: an ``in`` whose code page the guest had just unmapped (Unicorn still ran it from a
   stale translation) raised the simulator's internal ``PageFault`` out of ``run()`` (through a
   Unicorn hook: "Exception ignored ... ctypes callback"). The IN's decoder now raises the #PF
   at the IN, as KVM's emulator does when it fetches it (no TLB has to keep a translation).
3. Simulator: code in the last bytes of RAM (before unbacked memory) that a guest jumped to failed
   with ``InternalErrorExit`` (a fetch fault) before any of it ran; KVM runs it, up to the first
   instruction it cannot fetch. Unicorn translates straight-line code as one block before it runs
   any of it and failed the whole block on the instruction after the last one in RAM; the simulator
   now translates such a block again one instruction at a time. Its IN decoder also read 16 bytes
   from RIP, past the end of RAM. Minimal forms: tests/test_memory.py ``..._end_of_ram_...``.
4. Simulator: a ``rep insw`` into RAM whose batch overwrote its own code (the fuzzer's: 0x1000
   words from port 0x3f8 to 0, over the code at 0x1000) ended the Machine's run with
   ``ExitNotCompleted``: the simulator replayed an answered batch element by element in Unicorn,
   which decoded the overwritten bytes anew in the middle of it, ran them, and dropped the MMIO
   read they made (recorded as pending, never returned). Unicorn also kept running the INS from
   its stale translation on the next run. KVM's emulator writes the whole batch at once and the
   next entry runs whatever the INS left at RIP; the simulator now completes every INS that way.
5. Simulator: a ``rep insw`` backwards whose next word straddled unbacked memory and a ROM (the
   QEMU INS's dummy store went to MMIO first, then the ROM) was taken for a ROM store: the
   write exit came first and the INS's IN was left pending (``ExitNotCompleted``). KVM: the IN
   exit, then one write exit per part (tests/test_io.py ``rep-insw-backwards-mmio-then-rom``).
6. Simulator: ``rep insb`` of 3 bytes into the IOAPIC raised ``InvalidArgument("IOAPIC access
   size 3 ...")`` out of ``run()``: the in-kernel devices took the INS's odd-sized write as a
   misuse. KVM's IOAPIC and LAPIC ignore a write of a size they do not take.
"""

from __future__ import annotations

import io

import pytest

from hvcore import (
    VCPU,
    VM,
    Exit,
    GuestMemory,
    Hypervisor,
    IoDirection,
    IoExit,
    IrqchipId,
    MmioExit,
    ShutdownExit,
    SlotFlags,
)
from hvcore.vmm import Machine, add_pc_devices
from hvcore.vmm.loaders import load_raw
from tests.boot import boot, map_apic_window, read_guest, run_exits
from tests.fuzz_devices import guestgen as g
from tests.fuzz_devices.harness import run_guest
from tests.guests import layout

_VALUE = 0x1122334455667788
_STORE = {2: b"\x66\x89\x03", 4: b"\x89\x03", 8: b"\x48\x89\x03"}  # mov [rbx], ax / eax / rax


def _store_at(address: int, size: int) -> bytes:
    """``mov rbx, address; mov rax, _VALUE; mov [rbx], <size bytes of rax>; hlt``."""
    return (
        b"\x48\xbb" + address.to_bytes(8, "little")  # movabs rbx, address
        + b"\x48\xb8" + _VALUE.to_bytes(8, "little")  # movabs rax, _VALUE
        + _STORE[size]
        + b"\xf4"  # hlt
    )  # fmt: skip


ROM_END = layout.ROM + layout.ROM_SIZE  # unbacked after it (layout.MMIO)


@pytest.mark.parametrize(
    ("address", "size", "split"),
    [
        (ROM_END - 1, 2, 1),  # ROM, then unbacked: was HypervisorFault (UC_ERR_WRITE_PROT)
        (ROM_END - 3, 8, 3),
        (ROM_END - 2, 4, 2),
        (layout.ROM - 1, 2, 1),  # unbacked, then ROM: was the first exit forever
        (layout.ROM - 3, 8, 3),
    ],
)
def test_store_across_the_edge_of_a_rom(hv: Hypervisor, vm: VM, address: int, size: int, split: int) -> None:
    rom = GuestMemory(layout.ROM_SIZE)
    rom.write(0, b"\xaa" * layout.ROM_SIZE)
    vm.set_memory_slot(1, layout.ROM, rom, flags=SlotFlags.READONLY)
    vcpu = boot(hv, vm, _store_at(address, size), "long")
    exits = run_exits(vcpu, limit=10)
    data = _VALUE.to_bytes(8, "little")[:size]
    assert exits[:-1] == [
        MmioExit(address, split, True, data[:split]),
        MmioExit(address + split, size - split, True, data[split:]),
    ]
    assert vcpu.get_regs().rip == layout.CODE + len(_store_at(address, size))  # past the hlt
    assert rom.read(0, layout.ROM_SIZE) == b"\xaa" * layout.ROM_SIZE  # the ROM kept its bytes


def test_machine_store_across_the_edge_of_a_rom(hv: Hypervisor) -> None:
    """The fuzzer's form: a Machine with its devices and a ROM; the guest goes on to its debug exit."""
    rom, end = 0x800000, 0x810000
    code = (
        _store_at(end - 1, 2)[:-1]  # ROM, then unbacked
        + _store_at(rom - 1, 2)[:-1]  # unbacked, then ROM
        + b"\xb0\x42\xe6\xf4"  # mov al, 0x42; out 0xf4, al
        + b"\xf4"
    )
    with Machine(hv, memory=4 << 20) as machine:
        add_pc_devices(machine, serial=io.BytesIO(), debugcon=io.BytesIO())
        machine.add_rom(rom, b"\xaa" * (end - rom))
        machine.boot(load_raw(code, machine, mode="long"))
        result = machine.run(timeout=20)
        assert (result.reason, result.status, result.error) == ("debug-exit", 0x85, None)
        assert machine.statistics()["unclaimed_mmio_writes"] == 4  # one per part


# movabs rbx, layout.PD; mov qword [rbx], 0 (the 2 MiB page of this code is gone); mov dx, 0x4312; in al, dx; hlt
IN_FROM_UNMAPPED_CODE = (
    b"\x48\xbb" + layout.PD.to_bytes(8, "little")
    + b"\x48\xc7\x03\x00\x00\x00\x00"
    + b"\x66\xba\x12\x43"
    + b"\xec"
    + b"\xf4"
)  # fmt: skip


def test_in_from_code_just_unmapped(hv: Hypervisor, vm: VM) -> None:
    """KVM's emulator faults fetching the IN (here: #PF, no IDT: SHUTDOWN); hardware may run it from its TLB."""
    vcpu = boot(hv, vm, IN_FROM_UNMAPPED_CODE, "long")
    exit_ = vcpu.run()  # was, on the simulator: the simulator's internal PageFault raised from run()
    assert isinstance(exit_, ShutdownExit | IoExit), exit_
    if isinstance(exit_, IoExit):
        assert (exit_.port, exit_.is_in) == (0x4312, True)


def test_code_written_at_the_end_of_ram(hv: Hypervisor) -> None:
    """The fuzzer's machine (tests/fuzz_devices/harness.py); the guest writes ``nop x3; in al, dx; mov al, 0x42;
    out 0xf4, al`` into the last 8 bytes of its 4 MiB of RAM and jumps there: the IN, then the debug exit.

    Was, on the simulator: ``InternalErrorExit`` before the first nop ran (code written by the host too).
    """
    end = g.RAM_SIZE - 8
    code = bytes.fromhex("909090ecb042e6f4")  # nop x3; in al, dx; mov al, 0x42; out 0xf4, al
    store = g.join(g.mov_imm("rbx", end), g.mov_imm("rax", int.from_bytes(code, "little")), g.mmio(8, True))
    guest = g.Program((g.join(store, g.mov_imm("rdx", 0x4312), g.Op(b"\xff\xe3", "jmp rbx")),))
    outcome = run_guest(hv, guest, 20.0)
    assert outcome.result is not None
    assert (outcome.result.reason, outcome.result.status, outcome.result.error) == ("debug-exit", g.END_STATUS, None)


# 64-bit, identity paging: mov eax, MMIO; mov edi, 0xc00; mov ecx, 0x400; mov edx, 0x3f8; rep insw; hlt.
# The second batch (0x1000..0x1400) overwrites all of this code: the zeros left at the INS run as
# `add [rax], al` (00 00), an MMIO read then a write of layout.MMIO.
REP_INSW_OVER_ITS_OWN_CODE = (
    b"\xb8" + layout.MMIO.to_bytes(4, "little")
    + b"\xbf\x00\x0c\x00\x00"
    + b"\xb9\x00\x04\x00\x00"
    + b"\xba\xf8\x03\x00\x00"
    + b"\x66\xf3\x6d"
    + b"\xf4"
)  # fmt: skip
_INSW_AT = layout.CODE + 0x14


def test_rep_insw_over_its_own_code(hv: Hypervisor, vm: VM) -> None:
    """KVM writes each answered batch at once, RIP stays at the INS; the next entry runs the bytes now there."""
    vcpu = boot(hv, vm, REP_INSW_OVER_ITS_OWN_CODE, "long")
    batches = []
    for _ in range(2):
        exit_ = vcpu.run()
        assert isinstance(exit_, IoExit) and exit_.is_in, exit_
        batches.append((exit_.port, exit_.size, exit_.count))
        vcpu.complete(bytes(exit_.size * exit_.count))
    assert batches == [(0x3F8, 2, 512), (0x3F8, 2, 512)]
    # was, on the simulator: the stale `rep insw` ran again (RCX = 0: nothing), then the zeros after it
    assert vcpu.run() == MmioExit(layout.MMIO, 1, False)
    regs = vcpu.get_regs()
    assert (regs.rip, regs.rcx, regs.rdi) == (_INSW_AT, 0, 0x1400)
    assert read_guest(vm, 0xC00, 0x800) == bytes(0x800)
    vcpu.complete(0x11)
    assert vcpu.run() == MmioExit(layout.MMIO, 1, True, b"\x11")  # add [rax], al with al = 0
    assert vcpu.get_regs().rip == _INSW_AT + 2


def test_machine_rep_insw_over_its_own_code(hv: Hypervisor) -> None:
    """The fuzzer's guest: the zeros the INS left run as `add [rax], al` to unbacked memory until the timeout.

    Was, on the simulator: ``ExitNotCompleted`` (an MMIO read recorded as pending, never returned).
    """
    dma = g.join(
        g.mov_imm("rbx", 0x100008),
        g.mov_imm("rax", 0x2000000),
        g.Op(b"\x48\x89\x03", "mov [rbx], rax"),
        g.mov_imm("rax", 0x80100000000000),
        g.Op(b"\x48\x89\x43\x08", "mov [rbx+8], rax"),
        g.mov_imm("rax", 0x8001000),
        g.port_io(0x518, 4, False, False),
    )
    ins = g.join(
        g.mov_imm("rdx", 0x3F8), g.mov_imm("rcx", 0x1000), g.mov_imm("rdi", 0), g.CLD, g.string_io(2, True, True, True)
    )
    outcome = run_guest(hv, g.Program((dma, ins)), 0.5)
    assert not outcome.problems, outcome.problems
    assert outcome.result is not None
    # KVM may get to bytes it cannot emulate (an internal error) before the timeout
    assert outcome.result.reason in ("timeout", "internal-error"), outcome.result
    assert outcome.statistics["IoExit"] == 6  # the DMA start, then 5 batches: the 5th overwrote the code
    assert outcome.statistics["unclaimed_mmio_reads"] > 0


# 64-bit: rep insb of 3 bytes from port 0x4312 into the IOAPIC's IOREGSEL, then into the LAPIC's TPR; out 0x10, al
REP_INSB_3_INTO_THE_APICS = (
    b"\xba\x12\x43\x00\x00"  # mov edx, 0x4312
    b"\xfc"  # cld
    b"\xb9\x03\x00\x00\x00"  # mov ecx, 3
    b"\xbf\x00\x00\xc0\xfe"  # mov edi, 0xfec00000 (IOREGSEL)
    b"\xf3\x6c"  # rep insb
    b"\xb9\x03\x00\x00\x00"  # mov ecx, 3
    b"\xbf\x80\x00\xe0\xfe"  # mov edi, 0xfee00080 (TPR)
    b"\xf3\x6c"  # rep insb
    b"\xe6\x10"  # out 0x10, al
)


def test_odd_sized_string_in_into_the_in_kernel_apics(hv: Hypervisor, vm: VM) -> None:
    """A 3-byte write is none the IOAPIC or the LAPIC takes: KVM drops it (was, on the simulator: InvalidArgument)."""
    vm.create_irqchip()
    vcpu = boot(hv, vm, REP_INSB_3_INTO_THE_APICS, "long")
    map_apic_window(vm)
    ins = IoExit(0x4312, 1, 3, IoDirection.IN)
    exits = run_exits_until_out(vcpu, b"\x2d\x70\x00")
    assert exits == [ins, ins, IoExit(0x10, 1, 1, IoDirection.OUT, b"\x00")]
    assert vm.get_irqchip(IrqchipId.IOAPIC).ioregsel == 0  # type: ignore[union-attr]
    assert vcpu.get_lapic().register(0x80) == 0  # TPR


def run_exits_until_out(vcpu: VCPU, answer: bytes) -> list[Exit]:
    """Exits up to the first OUT (with an irqchip a HLT would sleep), answering each IN with ``answer``."""
    exits: list[Exit] = []
    while not exits or not (isinstance(exits[-1], IoExit) and not exits[-1].is_in):
        exits.append(vcpu.run())
        if isinstance(exits[-1], IoExit) and exits[-1].is_in:
            vcpu.complete(answer)
    return exits
