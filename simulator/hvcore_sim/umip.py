"""UMIP as KVM emulates it where the processor lacks it: SGDT, SIDT, SLDT and STR at CPL > 0 raise #GP(0).

QEMU 5.0 has no UMIP, so, as KVM on VMX hosts without it (descriptor-table exiting), the simulator
intercepts the four instructions (SVM's IDTR / GDTR / LDTR / TR read intercepts, always set in
``env->intercept``): with CR4.UMIP set and CPL > 0 the guest gets #GP(0); otherwise the
instruction is let through once and Unicorn performs it. SMSW, the fifth UMIP instruction, is
already intercepted as a CR0 read (:mod:`hvcore_sim.smsw`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from hvcore_sim.layout import SVM_INTERCEPT_BASE

if TYPE_CHECKING:
    from hvcore_sim.engine import Engine

__all__ = ["CR4_UMIP", "EXIT_CODES", "INTERCEPT_BITS", "faults"]

CR4_UMIP: Final = 1 << 11
SVM_EXIT_IDTR_READ, SVM_EXIT_GDTR_READ, SVM_EXIT_LDTR_READ, SVM_EXIT_TR_READ = 0x66, 0x67, 0x68, 0x69
EXIT_CODES: Final = frozenset({SVM_EXIT_IDTR_READ, SVM_EXIT_GDTR_READ, SVM_EXIT_LDTR_READ, SVM_EXIT_TR_READ})
"""The intercepts of SIDT, SGDT, SLDT and STR."""
INTERCEPT_BITS: Final = sum(1 << (code - SVM_INTERCEPT_BASE) for code in EXIT_CODES)
"""Their bits in ``env->intercept``."""


def faults(engine: Engine) -> bool:
    """Whether the intercepted SGDT / SIDT / SLDT / STR at RIP raises #GP(0): CR4.UMIP set, CPL > 0."""
    return bool(engine.view().paging.cr4 & CR4_UMIP and engine.reg(engine.CR0) & 1 and engine.reg(engine.CS) & 3)
