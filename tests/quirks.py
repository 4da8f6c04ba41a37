"""Known ways this host's KVM differs from upstream KVM (see ../shared/kvm-notes.md).

Each quirk is detected at run time, so a test asserts the exact behaviour of
the host it runs on: upstream's where the quirk is absent, the quirk's where
it is present. The full registry with the simulator's divergences is issue 4's.
"""

from __future__ import annotations

import os

import pytest

from hvcore import VM, Capability, Hypervisor, Unsupported


def is_pvm_host(hv: Hypervisor) -> bool:
    """True for KVM from the ``kvm_pvm`` module (nested KVM without VMX/SVM: an emulating host)."""
    return hv.name == "kvm" and os.path.isdir("/sys/module/kvm_pvm")


def single_step_dr7(hv: Hypervisor) -> int:
    """DR7 in a single-step DEBUG exit: upstream reports 0x400; kvm_pvm reports 0."""
    return 0 if is_pvm_host(hv) else 0x400


def has_irqchip(hv: Hypervisor, vm: VM) -> bool:
    """Create the in-kernel irqchip where the backend has one; where it has none, assert that it says so.

    Divergence: the simulator has no PIC/IOAPIC/LAPIC/PIT yet (issue 5), so it does not claim
    ``Capability.IRQCHIP`` and ``create_irqchip()`` raises ``Unsupported``. Tests that need an
    irqchip check the refusal and end there.
    """
    if Capability.IRQCHIP in hv.capabilities():
        vm.create_irqchip()
        return True
    with pytest.raises(Unsupported, match="irqchip"):
        vm.create_irqchip()
    return False


def unknown_msr_faults(hv: Hypervisor) -> bool:
    """Whether a guest RDMSR/WRMSR of an unknown MSR raises #GP.

    Divergence: KVM raises #GP; Unicorn 2.1 cannot hook RDMSR/WRMSR, so on the simulator the read
    gives 0 and the write is ignored.
    """
    return hv.name != "sim"


def full_guest_debug(hv: Hypervisor) -> bool:
    """Whether hardware and software breakpoints are accepted (the simulator single-steps only)."""
    return hv.name != "sim"
