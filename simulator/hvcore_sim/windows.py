"""Interrupt and NMI windows: QEMU's own interrupt check says when the guest can take a blocked event.

When an interrupt waits while the guest has IF=0 or sits in the STI / MOV SS shadow, or an NMI
waits while NMIs are blocked, KVM asks the processor for an interrupt-window or NMI-window exit
and injects the event right where the guest unblocks it. The simulator asks QEMU the same: it
raises ``CPU_INTERRUPT_HARD`` or ``CPU_INTERRUPT_NMI`` in ``CPUState.interrupt_request``. QEMU's
CPU loop looks at them between translation blocks, and every instruction that can unblock an
event ends its block (STI and the one instruction in its shadow, POPF, IRET, ...), so the look
comes right after it. QEMU would then take the event itself, but the engine runs in SVM guest
mode (for its MSR intercepts, see :mod:`hvcore_sim.engine`) with the INTR and NMI intercepts
set: taking it becomes ``EXCP_VMEXIT`` + ``SVM_EXIT_INTR`` / ``SVM_EXIT_NMI`` in the interrupt
hook, with RIP at the instruction the event interrupts. The simulator stops there and delivers
the event through the guest's IDT itself.

NMI blocking is QEMU's own ``HF2_NMI_MASK`` in ``hflags2``: the simulator sets it when it
delivers an NMI, and any IRET clears it, wherever it returns to (as on hardware).

``interrupt_request`` is in QEMU's ``CPUState``, which the context blob does not copy; it follows
``cflags_next_tb`` (-1 between runs), where :func:`hvcore_sim.unicorn_internals.interrupt_request_offset`
finds it. :func:`request_offset` checks both windows with a run; where that is not possible it
gives None and the vCPU single-steps while an event is blocked instead.
"""

from __future__ import annotations

import functools
import struct
from typing import Any, Final

from hvcore_sim import unicorn_internals
from hvcore_sim.cpumodel import new_uc
from hvcore_sim.layout import EXCP_VMEXIT, HF_GUEST, SVM_EXIT_INTR, SVM_EXIT_NMI, SVM_INTERCEPT_BASE, calibrate

__all__ = ["HF2_NMI_MASK", "INTERCEPTS", "REQUEST_INTERRUPT", "REQUEST_NMI", "request_offset"]

REQUEST_INTERRUPT: Final = 0x0002
"""QEMU's ``CPU_INTERRUPT_HARD``: an external interrupt waits for IF=1 and no shadow."""
REQUEST_NMI: Final = 0x0200
"""QEMU's ``CPU_INTERRUPT_NMI`` (``CPU_INTERRUPT_TGT_EXT_3``): an NMI waits for NMIs to be unblocked."""
HF2_NMI_MASK: Final = 1 << 2
"""QEMU's ``hflags2`` bit for "serving an NMI": NMIs are blocked until the next IRET."""
INTERCEPTS: Final = 1 << (SVM_EXIT_INTR - SVM_INTERCEPT_BASE) | 1 << (SVM_EXIT_NMI - SVM_INTERCEPT_BASE)
"""The SVM intercept bits that turn QEMU's taking of a requested event into a hook call."""

_RSP: Final = 0x1F00
# sti; nop; nop; hlt -- the window opens after the nop in the shadow of the sti
_STI_CODE: Final = 0x1000
_STI: Final = b"\xfb\x90\x90\xf4"
# iretq (to 0x1020, NMIs blocked until it ran); then nop; hlt
_IRET_CODE, _IRET_TARGET = 0x1010, 0x1020
_IRET: Final = b"\x48\xcf"
_CODE64: Final = 0x00209A0000000000  # GDT entry 1: 64-bit code, DPL 0, present


def _engine(intercept: int, hflags: int) -> Any:
    """A 64-bit engine in SVM guest mode with the window intercepts, its first 8 KiB RAM."""
    import unicorn
    from unicorn import x86_const as x

    layout = calibrate()
    uc = new_uc()
    uc.ctl_exits_enabled(True)
    page = bytearray(0x2000)
    struct.pack_into("<Q", page, 8, _CODE64)
    for at, code in ((_STI_CODE, _STI), (_IRET_CODE, _IRET), (_IRET_TARGET, b"\x90\xf4")):  # nop; hlt
        page[at : at + len(code)] = code
    struct.pack_into("<5Q", page, _RSP, _IRET_TARGET, 0x8, 0x2, _RSP + 0x80, 0)  # RIP, CS, RFLAGS, RSP, SS
    uc.mem_map(0, 0x2000, unicorn.UC_PROT_ALL)
    uc.mem_write(0, bytes(page))
    uc.reg_write(x.UC_X86_REG_GDTR, (0, 0, 0xF, 0))
    uc.reg_write(x.UC_X86_REG_RSP, _RSP)
    uc.reg_write(x.UC_X86_REG_RFLAGS, 0x2)
    ctx = uc.context_save()
    blob = unicorn_internals.read_context(ctx, layout.size)
    struct.pack_into("<Q", blob, layout.intercept, intercept)
    struct.pack_into("<I", blob, layout.hflags, struct.unpack_from("<I", blob, layout.hflags)[0] | HF_GUEST)
    struct.pack_into("<I", blob, layout.hflags2, struct.unpack_from("<I", blob, layout.hflags2)[0] | hflags)
    unicorn_internals.write_context(ctx, blob)
    uc.context_restore(ctx)
    return uc


def _window_run(request_at: int, request: int, start: int, *, nmi_blocked: bool) -> list[tuple[int, int]]:
    """Run from ``start`` with ``request`` raised; the (hook number, RIP) pairs the window hook saw."""
    import unicorn
    from unicorn import x86_const as x

    uc = _engine(INTERCEPTS, HF2_NMI_MASK if nmi_blocked else 0)
    cell = unicorn_internals.cpu_u32_cell(uc, request_at)
    if cell is None:
        return []
    seen: list[tuple[int, int]] = []

    def on_interrupt(engine: Any, number: int, _: object) -> None:
        seen.append((number, engine.reg_read(x.UC_X86_REG_RIP)))
        cell.value &= ~request
        engine.emu_stop()

    uc.hook_add(unicorn.UC_HOOK_INTR, on_interrupt)
    cell.value |= request
    uc.emu_start(start, 0, 0, 10)
    cell.value &= ~request
    return seen


@functools.cache
def request_offset() -> int | None:
    """Offset of ``interrupt_request`` in QEMU's CPU object, checked with both windows; None if not found."""
    request_at = unicorn_internals.interrupt_request_offset(_engine(0, 0))
    if request_at is None:
        return None
    window = _window_run(request_at, REQUEST_INTERRUPT, _STI_CODE, nmi_blocked=False)
    nmi = _window_run(request_at, REQUEST_NMI, _IRET_CODE, nmi_blocked=True)
    if window != [(EXCP_VMEXIT + SVM_EXIT_INTR, _STI_CODE + 2)] or nmi != [(EXCP_VMEXIT + SVM_EXIT_NMI, _IRET_TARGET)]:
        return None
    return request_at
