"""The simulator keeps the code Unicorn translated unless guest memory really changed under it.

Dropping the whole translation cache costs the guest a new translation of every block it runs
next: at every event delivered (Linux's timer ticks, its user programs' page faults) that made a
booting kernel crawl. Delivery stores the frame as the processor does and changes only segments,
RIP, RSP and RFLAGS, none of which stale translated code (it is looked up by CS base and hflags).
"""

from __future__ import annotations

import pytest

from hvcore import GuestMemory, HltExit
from hvcore_sim import system
from hvcore_sim.system import SimHypervisor
from tests.boot import write_guest
from tests.test_exceptions import long_mode_guest, stub

pytestmark = pytest.mark.skipif(
    system._unicorn_problem() is not None, reason=f"simulator unusable: {system._unicorn_problem()}"
)

# 64-bit, CPL0: `int 0x21` 100 times, then hlt. The handler (at vector 0x21's stub) is one iretq.
INT21_LOOP = (
    b"\xb9\x64\x00\x00\x00"  # mov ecx, 100
    b"\xcd\x21"  # again: int 0x21
    b"\xff\xc9"  # dec ecx
    b"\x75\xfa"  # jnz again
    b"\xf4"  # hlt
)
IRETQ = b"\x48\xcf"


def count_tb_flushes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, every drop of Unicorn's whole translation cache appends to the list returned."""
    unicorn = pytest.importorskip("unicorn")
    flushes: list[int] = []
    flush_tb = unicorn.Uc.ctl_flush_tb

    def counted(uc: object) -> None:
        flushes.append(1)
        flush_tb(uc)

    monkeypatch.setattr(unicorn.Uc, "ctl_flush_tb", counted)
    return flushes


def test_delivering_events_keeps_translated_code(monkeypatch: pytest.MonkeyPatch) -> None:
    with SimHypervisor() as hv, hv.create_vm() as vm:
        vcpu = long_mode_guest(hv, vm, INT21_LOOP, user=False)
        write_guest(vm, stub(0x21), IRETQ)
        flushes = count_tb_flushes(monkeypatch)
        assert vcpu.run() == HltExit()
        assert vcpu.get_regs().rcx == 0  # all 100 delivered and returned from
    assert flushes == []


def test_host_writes_count_for_the_vm_whose_slots_hold_the_memory() -> None:
    with SimHypervisor() as hv, hv.create_vm() as vm, hv.create_vm() as other:
        ram, elsewhere = GuestMemory(0x1000), GuestMemory(0x1000)
        vm.set_memory_slot(0, 0, ram)
        vm.set_memory_slot(1, 0x1000, ram)  # one memory in two slots
        other.set_memory_slot(0, 0, elsewhere)
        count = vm.host_writes.count
        elsewhere.write(0, b"\x01")  # another VM's memory
        assert vm.host_writes.count == count
        ram.write(0, b"\x01")
        assert vm.host_writes.count == count + 1
        vm.delete_memory_slot(0)
        ram.write(0, b"\x02")  # still in slot 1
        assert vm.host_writes.count == count + 2
        vm.delete_memory_slot(1)
        ram.write(0, b"\x03")  # in no slot of the VM
        assert vm.host_writes.count == count + 2
