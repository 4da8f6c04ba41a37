"""The simulator keeps the code Unicorn translated unless guest memory really changed under it.

Dropping the whole translation cache costs the guest a new translation of every block it runs
next: at every event delivered (Linux's timer ticks, its user programs' page faults) that made a
booting kernel crawl. Delivery stores the frame as the processor does and changes only segments,
RIP, RSP and RFLAGS, none of which stale translated code (it is looked up by CS base and hflags).
"""

from __future__ import annotations

import pytest

from hvcore import HltExit
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
