"""Known ways this host's KVM differs from upstream KVM (see ../shared/kvm-notes.md).

Each quirk is detected at run time, so a test asserts the exact behaviour of
the host it runs on: upstream's where the quirk is absent, the quirk's where
it is present. The full registry with the simulator's divergences is issue 4's.
"""

from __future__ import annotations

import os

from hvcore import Hypervisor


def is_pvm_host(hv: Hypervisor) -> bool:
    """True for KVM from the ``kvm_pvm`` module (nested KVM without VMX/SVM: an emulating host)."""
    return hv.name == "kvm" and os.path.isdir("/sys/module/kvm_pvm")


def single_step_dr7(hv: Hypervisor) -> int:
    """DR7 in a single-step DEBUG exit: upstream reports 0x400; kvm_pvm reports 0."""
    return 0 if is_pvm_host(hv) else 0x400
