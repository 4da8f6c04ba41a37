"""Probes for memory slots and dirty logging."""

from __future__ import annotations

from hvcore.exits import HltExit
from hvcore.host.deviation import UPSTREAM, Deviation, Unrecognised
from hvcore.host.guest import ProbeGuest
from hvcore.memory import GuestMemory
from hvcore.protocol import Hypervisor
from hvcore.types import SlotFlags

__all__ = ["DEVIATIONS"]

_LOGGED = 0x80000
"""A two-page slot created with dirty logging, inside the probe guest's identity map."""

# 64-bit CPL0 jumps into the logging slot's first page (written by the host before the slot was
# added), reads its second page (never written by anyone) and halts. Upstream: the first page is
# logged (the fetch maps it writable), the second is not (it maps the zero page read-only).
_JUMP = (
    b"\xb8" + _LOGGED.to_bytes(4, "little")  # 1000 mov eax, 0x80000
    + b"\xff\xe0"                           # 1005 jmp rax
)  # fmt: skip
_IN_SLOT = (
    b"\x8a\x04\x25" + (_LOGGED + 0x1000).to_bytes(4, "little")  # 80000 mov al, [0x81000]
    + b"\xf4"                                                  # 80007 hlt
)  # fmt: skip


def _first_access_logged(hv: Hypervisor) -> str:
    with ProbeGuest(hv, _JUMP, "long") as guest, GuestMemory(0x2000) as page:
        page.write(0, _IN_SLOT)
        guest.vm.set_memory_slot(1, _LOGGED, page, flags=SlotFlags.LOG_DIRTY_PAGES)
        exit_ = guest.run()
        logged = guest.vm.get_dirty_log(1).pages()
        guest.vm.delete_memory_slot(1)
    if not isinstance(exit_, HltExit):
        raise Unrecognised(f"executing from a new logging slot gave {exit_!r}, not HLT")
    if logged == [0]:
        return UPSTREAM
    if logged == []:
        return "writes_only"
    raise Unrecognised(f"executing one page of a new logging slot and reading another logged pages {logged}")


DEVIATIONS: tuple[Deviation, ...] = (
    Deviation(
        "first_access_logged",
        upstream="the guest's first access of any kind to a page of a logging slot logs it when the host's page is "
        "populated (a fetch or read maps it writable, make_spte logs writable mappings); a page nobody wrote maps "
        "the zero page read-only and is not logged; after KVM_GET_DIRTY_LOG only writes log",
        variants={"writes_only": "only guest writes are logged: code the guest only executes is never logged"},
        reason="seen on nested kvm_pvm (AMD EPYC), whose shadow paging write-protects logging slots and maps reads "
        "read-only; rust-vmm kvm-ioctls' test_run_code expects upstream's logged code page",
        probe=_first_access_logged,
    ),
)
"""The deviations from upstream KVM this module's probes detect (memory)."""
