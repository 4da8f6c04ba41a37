"""Guest memory and memory slots: mapping, moving, dirty logging, host writes seen by the guest."""

from __future__ import annotations

from dataclasses import replace

from hvcore import (
    VM,
    GuestMemory,
    HltExit,
    Hypervisor,
    InternalErrorExit,
    InternalErrorSuberror,
    IoDirection,
    IoExit,
    SlotFlags,
)
from hvcore.host import UPSTREAM
from tests.boot import boot, read_guest, run_exits, slot_memory, write_guest
from tests.guests import layout, real_mode
from tests.quirks import host_variant


def test_guest_memory_is_zeroed_lazy_and_page_aligned() -> None:
    with GuestMemory(4 << 30) as ram:  # 4 GiB declared, only touched pages cost memory
        assert ram.size == 4 << 30
        assert ram.address % 4096 == 0
        assert ram.read(3 << 30, 16) == bytes(16)
        ram.write(0x1234, b"abc")
        assert ram.read(0x1233, 5) == b"\0abc\0"
        ram.fill(0x1233, 2, 0xFF)
        assert ram.read(0x1233, 3) == b"\xff\xffb"
    assert ram.closed


def _vm_flags(address: int) -> set[str]:
    """The kernel's VmFlags for the mapping that starts at ``address`` (from /proc/self/smaps)."""
    flags: set[str] | None = None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            if "-" in line.split(" ", 1)[0] and not line.startswith("VmFlags"):
                start = int(line.split("-", 1)[0], 16)
                flags = None if start != address else set()
            elif line.startswith("VmFlags") and flags is not None:
                return set(line.split()[1:])
    raise AssertionError(f"no mapping starts at {address:#x}")


def test_guest_memory_reserves_no_swap_so_a_large_guest_fits() -> None:
    with GuestMemory(64 << 30) as ram:  # more than this machine's RAM: only works unreserved
        assert "nr" in _vm_flags(ram.address)  # nr: "swap space is not reserved for the area"
        ram.write((64 << 30) - 3, b"end")
        assert ram.read((64 << 30) - 3, 3) == b"end"


def test_slots_are_listed_and_their_memory_stays_alive_while_mapped(hv: Hypervisor, vm: VM) -> None:
    ram, rom = GuestMemory(0x10000), GuestMemory(0x2000)
    vm.set_memory_slot(3, 0x20000, rom, flags=SlotFlags.READONLY)
    vm.set_memory_slot(1, 0, ram, offset=0x1000, size=0x8000)
    assert [(s.slot, s.guest_address, s.size, s.offset, s.flags) for s in vm.memory_slots()] == [
        (1, 0, 0x8000, 0x1000, SlotFlags(0)),
        (3, 0x20000, 0x2000, 0, SlotFlags.READONLY),
    ]
    rom.close()  # deferred: slot 3 still maps it
    assert rom.closed
    vm.delete_memory_slot(3)
    assert [s.slot for s in vm.memory_slots()] == [1]


def test_slot_offset_maps_the_right_bytes(hv: Hypervisor, vm: VM) -> None:
    ram = GuestMemory(layout.RAM_SIZE + 0x4000)
    vm.set_memory_slot(0, 0, ram, offset=0x4000, size=layout.RAM_SIZE)
    vcpu = boot(hv, vm, real_mode.PRINTS_5, rax=2, rbx=3)
    assert ram.read(0x4000 + layout.CODE, len(real_mode.PRINTS_5)) == real_mode.PRINTS_5
    assert run_exits(vcpu)[0] == IoExit(0x3F8, 1, 1, IoDirection.OUT, b"5")


def test_moving_a_slot_changes_what_the_guest_sees(hv: Hypervisor, vm: VM) -> None:
    data = GuestMemory(0x10000)
    data.write(0, b"\x99")
    vm.set_memory_slot(1, layout.ROM, data)
    vcpu = boot(hv, vm, real_mode.ROM_WRITE)  # writes 0x55 to ROM, reads it back, outs it
    vm.set_memory_slot(1, layout.MMIO, data)  # same size and buffer: a move
    assert vm.memory_slots()[1].guest_address == layout.MMIO
    exits = run_exits(vcpu, lambda e: 0x66)
    assert exits[0].reason.name == "MMIO"  # nothing at ROM any more


def test_host_writes_to_guest_code_are_seen(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, real_mode.PRINTS_5, rax=2, rbx=3)
    assert run_exits(vcpu)[0] == IoExit(0x3F8, 1, 1, IoDirection.OUT, b"5")
    write_guest(vm, layout.CODE + 8, b"\xb0\x21")  # patch "mov al, 10" into "mov al, '!'"
    vcpu.set_regs(replace(vcpu.get_regs(), rip=layout.CODE, rax=2, rbx=3))
    assert [e for e in run_exits(vcpu) if isinstance(e, IoExit)][1].data == b"!"


RAM_END = layout.RAM_BASE + layout.RAM_SIZE  # no slot after it: unbacked memory
# 64-bit: mov rbx, <target>; mov dx, 0x4312; jmp rbx (the target is written by the test)
JUMPS_TO_RBX = b"\x48\xbb%b\x66\xba\x12\x43\xff\xe3"
# the last 8 bytes of RAM: nop x3; in al, dx; mov al, 0x42; out 0xf4, al -- then the end of RAM
UP_TO_THE_END = bytes.fromhex("909090ecb042e6f4")


def test_code_up_to_the_end_of_ram_runs(hv: Hypervisor, vm: VM) -> None:
    """Only an instruction KVM cannot fetch fails (emulation failure), not one before it.

    Was, on the simulator: an emulation failure at the first nop (Unicorn translates the code from
    there to the instruction after the OUT, at the end of RAM, before it runs any of it).
    """
    vcpu = boot(hv, vm, JUMPS_TO_RBX % (RAM_END - 8).to_bytes(8, "little"), "long")
    write_guest(vm, RAM_END - 8, UP_TO_THE_END)
    assert vcpu.run() == IoExit(0x4312, 1, 1, IoDirection.IN)
    assert vcpu.get_regs().rip == RAM_END - 5  # at the IN until it is completed
    vcpu.complete(b"\x00")
    assert vcpu.run() == IoExit(0xF4, 1, 1, IoDirection.OUT, b"\x42")
    upstream = host_variant(hv, "out_completed_at_exit") == UPSTREAM
    assert vcpu.get_regs().rip == (RAM_END - 2 if upstream else RAM_END)  # upstream: at the OUT until the next run
    exit_ = vcpu.run()  # RIP itself at the end of RAM: KVM's emulator cannot fetch the instruction
    assert isinstance(exit_, InternalErrorExit) and exit_.suberror == InternalErrorSuberror.EMULATION, exit_
    assert vcpu.get_regs().rip == RAM_END


def test_instruction_across_the_end_of_ram_fails_after_those_before_it(hv: Hypervisor, vm: VM) -> None:
    """``inc ecx`` twice, then ``mov al, imm8`` whose immediate is past the end of RAM: an emulation failure there.

    Was, on the simulator: the failure at the first ``inc``, RCX unchanged.
    """
    vcpu = boot(hv, vm, JUMPS_TO_RBX % (RAM_END - 5).to_bytes(8, "little"), "long", rcx=0)
    write_guest(vm, RAM_END - 5, b"\xff\xc1\xff\xc1\xb0")
    exit_ = vcpu.run()
    assert isinstance(exit_, InternalErrorExit) and exit_.suberror == InternalErrorSuberror.EMULATION, exit_
    regs = vcpu.get_regs()
    assert (regs.rip, regs.rcx) == (RAM_END - 1, 2)
    if exit_.data and exit_.data[0] & 1:  # KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES (newer kernels)
        assert exit_.data[1] & 0xFF == 1 and exit_.data[1] >> 8 & 0xFF == 0xB0  # the one byte it fetched: the opcode


# 64-bit, CPL0: calls a routine at linear 0x80000000 twice, with a HLT after each call. The page
# tables map linear 0x80000000 to guest-physical 0x40000000 (a 2 MiB page), where nothing is mapped
# at its own address. The routine (written by the host): mov al, 1 / out 0x30, al / ret.
CALLS_ALIASED_ROUTINE = (
    b"\xb8\x00\x00\x00\x80"  # mov eax, 0x80000000
    b"\xff\xd0"  # call rax
    b"\xf4"  # hlt
    b"\xb8\x00\x00\x00\x80"  # mov eax, 0x80000000
    b"\xff\xd0"  # call rax
    b"\xf4"  # hlt
)
ROUTINE = b"\xb0\x01\xe6\x30\xc3"  # mov al, 1 / out 0x30, al / ret
ROUTINE_PHYSICAL, ROUTINE_LINEAR, ROUTINE_PD = 0x4000_0000, 0x8000_0000, 0xD000


def test_host_writes_to_code_paging_maps_elsewhere_are_seen_and_leave_cr2_alone(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, CALLS_ALIASED_ROUTINE, "long")
    high = GuestMemory(0x20_0000)
    vm.set_memory_slot(1, ROUTINE_PHYSICAL, high)
    high.write(0, ROUTINE)
    write_guest(vm, ROUTINE_PD, (ROUTINE_PHYSICAL | 0x87).to_bytes(8, "little"))  # present, writable, user, 2 MiB
    write_guest(vm, layout.PDPT + 8 * (ROUTINE_LINEAR >> 30), (ROUTINE_PD | 0x7).to_bytes(8, "little"))
    vcpu.set_sregs(replace(vcpu.get_sregs(), cr2=0x1234))
    assert [e for e in run_exits(vcpu) if isinstance(e, IoExit)] == [IoExit(0x30, 1, 1, IoDirection.OUT, b"\x01")]
    high.write(1, b"\x02")  # one host write: "mov al, 1" becomes "mov al, 2"
    assert [e for e in run_exits(vcpu) if isinstance(e, IoExit)] == [IoExit(0x30, 1, 1, IoDirection.OUT, b"\x02")]
    assert vcpu.get_sregs().cr2 == 0x1234  # a host write is no page fault


# 64-bit, CPL0: jumps to a loop at linear 0x80001000 (guest-physical 0x40001000, as above) that
# sends al to port 0x30 for ever. The loop (written by the host): again: mov al, 1 / out 0x30, al / jmp again.
JUMPS_TO_ALIASED_LOOP = (
    b"\xb8\x00\x10\x00\x80"  # mov eax, 0x80001000
    b"\xff\xe0"  # jmp rax
)
LOOP = b"\xb0\x01\xe6\x30\xeb\xfa"  # again: mov al, 1 / out 0x30, al / jmp again


def test_host_rewrites_of_a_running_loop_under_paging_are_seen(hv: Hypervisor, vm: VM) -> None:
    """The host rewrites the loop between two of its exits (one write, then two): the next run runs the new bytes."""
    vcpu = boot(hv, vm, JUMPS_TO_ALIASED_LOOP, "long")
    high = GuestMemory(0x20_0000)
    vm.set_memory_slot(1, ROUTINE_PHYSICAL, high)
    high.write(0x1000, LOOP)
    write_guest(vm, ROUTINE_PD, (ROUTINE_PHYSICAL | 0x87).to_bytes(8, "little"))  # present, writable, user, 2 MiB
    write_guest(vm, layout.PDPT + 8 * (ROUTINE_LINEAR >> 30), (ROUTINE_PD | 0x7).to_bytes(8, "little"))
    assert vcpu.run() == IoExit(0x30, 1, 1, IoDirection.OUT, b"\x01")
    high.write(0x1001, b"\x02")  # mov al, 2
    assert vcpu.run() == IoExit(0x30, 1, 1, IoDirection.OUT, b"\x02")
    high.write(0x1001, b"\x03")
    high.write(0x1003, b"\x31")  # mov al, 3 / out 0x31, al
    assert vcpu.run() == IoExit(0x31, 1, 1, IoDirection.OUT, b"\x03")


def test_dirty_log_records_written_pages_and_clears_on_read(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, real_mode.DIRTY_PAGES, ram_flags=SlotFlags.LOG_DIRTY_PAGES)
    vm.get_dirty_log(0)  # forget the host's own loading writes
    assert run_exits(vcpu) == [HltExit()]
    log = vm.get_dirty_log(0)
    assert log.page_count == layout.RAM_SIZE // 4096
    # Upstream also logs the code page (page 1): the first fetch maps the host-written page writable.
    # Page 19 is only read and nobody wrote it: it maps the zero page and is not logged.
    fetched = {1} if host_variant(hv, "first_access_logged") == UPSTREAM else set()
    assert set(log.pages()) == {16, 18} | fetched
    assert vm.get_dirty_log(0).pages() == []  # reading cleared it
    assert read_guest(vm, layout.DATA, 1) == b"\xaa"
    vcpu.set_regs(replace(vcpu.get_regs(), rip=layout.CODE))
    assert run_exits(vcpu) == [HltExit()]
    assert set(vm.get_dirty_log(0).pages()) == {16, 18}  # mapped now: only writes log


def test_toggling_dirty_logging_keeps_the_slot(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, real_mode.DIRTY_PAGES)
    slot = vm.set_slot_flags(0, SlotFlags.LOG_DIRTY_PAGES)
    assert slot.flags == SlotFlags.LOG_DIRTY_PAGES
    assert slot_memory(vm).read(layout.CODE, 3) == real_mode.DIRTY_PAGES[:3]
    run_exits(vcpu)
    assert {16, 18} <= set(vm.get_dirty_log(0).pages())


def test_dirty_logging_survives_a_layout_change(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, real_mode.DIRTY_PAGES, ram_flags=SlotFlags.LOG_DIRTY_PAGES)
    vm.get_dirty_log(0)

    def again() -> None:
        vcpu.set_regs(replace(vcpu.get_regs(), rip=layout.CODE))
        assert run_exits(vcpu) == [HltExit()]

    again()  # pages 16 and 18 are dirty and not read yet...
    vm.set_memory_slot(1, layout.ROM, GuestMemory(0x10000))  # ...when the layout changes (the sim rebuilds)
    again()
    assert {16, 18} <= set(vm.get_dirty_log(0).pages())
    again()  # the log was read: the same writes must be caught again
    assert {16, 18} <= set(vm.get_dirty_log(0).pages())


def test_stores_after_a_dirty_log_read_land(hv: Hypervisor, vm: VM) -> None:
    """Reading the log write-protects the page again; the guest's next store must still land (and be logged)."""
    vcpu = boot(hv, vm, real_mode.COUNT_AT_DATA, ram_flags=SlotFlags.LOG_DIRTY_PAGES)
    for count in range(1, 5):
        assert vcpu.run() == IoExit(0x80, 1, 1, IoDirection.OUT, bytes([count]))
        assert read_guest(vm, layout.DATA, 1) == bytes([count])
        assert 16 in vm.get_dirty_log(0).pages()


# Real mode: out 0x10, then a far jump to 0xa000:0, where a slot added later holds a loop the host
# wrote before that slot existed: again: mov al, 1 / out 0x11, al / jmp again.
JUMPS_TO_A_LATER_SLOT = b"\xb0\x01\xe6\x10\xea\x00\x00\x00\xa0"
LATER_LOOP = b"\xb0\x01\xe6\x11\xeb\xfa"


def test_host_writes_to_a_slot_added_after_the_first_run_are_seen(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, JUMPS_TO_A_LATER_SLOT)
    later = GuestMemory(0x1000)
    later.write(0, LATER_LOOP)  # before it is in any slot
    assert vcpu.run() == IoExit(0x10, 1, 1, IoDirection.OUT, b"\x01")
    vm.set_memory_slot(1, layout.RAM_SIZE, later)
    assert [vcpu.run(), vcpu.run()] == [IoExit(0x11, 1, 1, IoDirection.OUT, b"\x01")] * 2
    later.write(1, b"\x02")  # "mov al, 1" becomes "mov al, 2"
    assert vcpu.run() == IoExit(0x11, 1, 1, IoDirection.OUT, b"\x02")


def test_watch_writes_calls_the_watcher_for_each_host_write_until_stopped() -> None:
    calls: list[int] = []
    with GuestMemory(0x2000) as ram:
        stop = ram.watch_writes(lambda: calls.append(1))
        ram.write(0, b"\x01")
        ram.fill(0x1000, 0x10, 0xFF)
        ram.read(0, 1)
        assert len(calls) == 2
        stop()
        stop()  # once is enough
        ram.write(0, b"\x02")
        assert len(calls) == 2
