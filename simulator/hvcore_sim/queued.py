"""The events KVM keeps queued on a vCPU between runs, as ``KVM_GET_VCPU_EVENTS`` shows them.

Upstream KVM (``arch/x86/kvm/x86.c``) with ``KVM_CAP_EXCEPTION_PAYLOAD`` disabled, which the
simulator never enables:

- ``vcpu->arch.exception``: ``KVM_SET_VCPU_EVENTS`` writes its vector and error code whatever
  ``exception.injected`` says, and ignores ``exception.pending`` (only the payload capability
  gives it a meaning). The next ``KVM_RUN`` hands an injected exception to the processor before
  any guest instruction (``kvm_check_and_inject_events``). Once it is delivered only the injected
  flag is cleared (``kvm_clear_exception_queue``): the vector and error code still read back.
- ``KVM_GET_VCPU_EVENTS`` folds a pending exception (``KVM_GUESTDBG_INJECT_DB``) into
  ``exception.injected``, and reports a software exception (#BP, #OF) as not injected, since
  the ABI has no instruction length for it.
- ``process_nmi``: up to two NMIs may be pending, one while NMIs are blocked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["SOFTWARE_EXCEPTIONS", "QueuedException", "nmi_limit"]

SOFTWARE_EXCEPTIONS: Final = frozenset({3, 4})
"""``kvm_exception_is_soft``: #BP and #OF."""


@dataclass(frozen=True, slots=True)
class QueuedException:
    """``vcpu->arch.exception`` as the VMM sees it: what was last queued, and whether it still waits."""

    vector: int = 0
    has_error_code: bool = False
    error_code: int = 0
    injected: bool = False
    """Set by ``KVM_SET_VCPU_EVENTS``; the next run delivers it first and clears this."""

    @property
    def error_code_pushed(self) -> int | None:
        """The error code the delivery pushes (outside real mode), None for none."""
        return self.error_code if self.has_error_code else None


def nmi_limit(*, blocked: bool) -> int:
    """How many NMIs may be pending (``process_nmi``): two, or one while NMIs are blocked."""
    return 1 if blocked else 2
