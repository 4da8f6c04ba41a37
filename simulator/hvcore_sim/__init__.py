"""The ``sim`` backend: KVM's semantics on the Unicorn CPU emulator.

One Unicorn engine per vCPU (:mod:`.engine`, calibrated by :mod:`.layout`), slots
mapped in place with MMIO everywhere else (:mod:`.memory`), KVM's exit rules
(:mod:`.exits`), event delivery through the guest's IVT/IDT (:mod:`.delivery`,
:mod:`.mmu`). Importing this package does not import Unicorn; opening it does.
"""

from hvcore_sim.system import BACKEND, SimBackend, SimHypervisor

__all__ = ["BACKEND", "SimBackend", "SimHypervisor"]
