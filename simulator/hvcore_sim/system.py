"""``SimHypervisor`` and the ``sim`` backend entry: the simulator's answers to the system ioctls."""

from __future__ import annotations

import os
import threading
import weakref
from typing import Final

from hvcore.arguments import check_int
from hvcore.caps import Capability
from hvcore.errors import BackendUnavailable, ClosedError
from hvcore.lifetime import Closeable
from hvcore.types import CpuidEntry
from hvcore_sim import cpuid, guestdebug
from hvcore_sim.clock import Clock, clock_from_environment
from hvcore_sim.layout import ContextLayout, LayoutError, calibrate
from hvcore_sim.msrs import MSRS
from hvcore_sim.vm import MAX_SLOTS, MAX_VCPU_ID, MAX_VCPUS, SimVM

__all__ = ["BACKEND", "SimBackend", "SimHypervisor"]

CALIBRATED_UNICORN: Final = ("2.1.4",)
"""The Unicorn releases whose private structures the simulator was calibrated and tested against.

pyproject.toml pins the same. ``HVCORE_UNICORN_UNPINNED=1`` (set by ``nox -s unicorn-latest``) lets
another release through to the calibration, which still refuses one whose structures moved.
"""
RECOMMENDED_VCPUS: Final = 4
RUN_MMAP_SIZE: Final = 3 * 4096  # what KVM reports here; the simulator has no mmap, but VMMs size buffers by it

_CAPABILITIES: Final = {
    Capability.USER_MEMORY: 1,
    Capability.READONLY_MEM: 1,
    Capability.SET_GUEST_DEBUG: 1,
    Capability.SET_GUEST_DEBUG2: int(guestdebug.SUPPORTED),  # the flags set_guest_debug takes
    Capability.IMMEDIATE_EXIT: 1,
    Capability.DEBUGREGS: 1,
    Capability.XSAVE: 1,
    Capability.XCRS: 1,
    Capability.VCPU_EVENTS: 1,
    Capability.MP_STATE: 1,
    Capability.USER_NMI: 1,
    Capability.X86_SMM: 1,  # KVM_SMI, SMM entry and RSM (hvcore_sim.smm)
    Capability.MULTI_ADDRESS_SPACE: 2,  # address space 1 is what a vCPU in SMM sees
    Capability.EXT_CPUID: 1,
    Capability.ADJUST_CLOCK: 1,
    Capability.CLOCKSOURCE: 1,  # kvmclock (hvcore_sim.kvmclock)
    Capability.NOP_IO_DELAY: 1,
    Capability.SET_TSS_ADDR: 1,
    Capability.SET_IDENTITY_MAP_ADDR: 1,
    Capability.SYNC_MMU: 1,
    Capability.INTERNAL_ERROR_DATA: 1,
    Capability.CHECK_EXTENSION_VM: 1,
    Capability.IRQCHIP: 1,
    Capability.IRQ_INJECT_STATUS: 1,
    Capability.IRQ_ROUTING: 1,
    Capability.PIT2: 1,
    Capability.PIT_STATE2: 1,
    Capability.SIGNAL_MSI: 1,
    Capability.NR_VCPUS: RECOMMENDED_VCPUS,
    Capability.MAX_VCPUS: MAX_VCPUS,
    Capability.MAX_VCPU_ID: MAX_VCPU_ID,
    Capability.NR_MEMSLOTS: MAX_SLOTS,
}


def _unicorn_problem() -> str | None:
    try:
        import unicorn
    except ImportError as exc:
        return f"unicorn is not installed ({exc}); pip install 'unicorn=={CALIBRATED_UNICORN[-1]}'"
    if unicorn.__version__ not in CALIBRATED_UNICORN and os.environ.get("HVCORE_UNICORN_UNPINNED") != "1":
        return (
            f"unicorn {unicorn.__version__} is not one the simulator was calibrated against "
            f"({', '.join(CALIBRATED_UNICORN)}); pip install 'unicorn=={CALIBRATED_UNICORN[-1]}'"
        )
    try:
        calibrate()
    except LayoutError as exc:
        return f"unicorn {unicorn.__version__}'s internals are not laid out as expected: {exc}"
    return None


class SimHypervisor(Closeable):
    """The simulator; see :class:`hvcore.Hypervisor` for the contract."""

    name: Final = "sim"

    def __init__(self) -> None:
        problem = _unicorn_problem()
        if problem is not None:
            raise BackendUnavailable(problem)
        self.context_layout: ContextLayout = calibrate()
        self._vms: weakref.WeakSet[SimVM] = weakref.WeakSet()
        self._closed = False
        self._lock = threading.Lock()

    def _live(self) -> None:
        if self._closed:
            raise ClosedError("the simulator hypervisor is closed; open a new one", operation="hypervisor")

    def api_version(self) -> int:
        """12, the KVM API the simulator follows."""
        self._live()
        return 12

    def check_extension(self, capability: Capability | int) -> int:
        """What the simulator has (a count for the ``NR_*`` / ``MAX_*`` capabilities)."""
        check_int("capability", capability, "check_extension")
        self._live()
        try:
            return _CAPABILITIES.get(Capability(capability), 0)
        except ValueError:
            return 0

    def capabilities(self) -> frozenset[Capability]:
        """Every capability the simulator has."""
        self._live()
        return frozenset(_CAPABILITIES)

    def vcpu_mmap_size(self) -> int:
        """The size KVM reports for its run area (kept for VMMs that size buffers by it)."""
        self._live()
        return RUN_MMAP_SIZE

    def msr_index_list(self) -> tuple[int, ...]:
        """The MSRs the simulator models."""
        self._live()
        return MSRS

    def supported_cpuid(self) -> tuple[CpuidEntry, ...]:
        """The CPUID leaves of the simulated CPU (Unicorn's model, vendor and features as it executes them)."""
        self._live()
        return cpuid.supported()

    def recommended_vcpus(self) -> int:
        """Recommended vCPUs per VM."""
        self._live()
        return RECOMMENDED_VCPUS

    def max_vcpus(self) -> int:
        """Most vCPUs per VM (``KVM_CAP_MAX_VCPUS``; their ids go up to ``KVM_CAP_MAX_VCPU_ID`` - 1)."""
        self._live()
        return MAX_VCPUS

    def create_vm(self, *, clock: Clock | None = None) -> SimVM:
        """An empty VM whose timers run on ``clock`` (default: ``HVCORE_SIM_CLOCK``, else the host's time).

        ``HVCORE_SIM_CLOCK=virtual`` (or ``virtual:N``, N ns per instruction) makes every VM's time
        count guest instructions, so timer interrupts land at the same instruction on every run.
        """
        self._live()
        vm = SimVM(self, clock if clock is not None else clock_from_environment())
        self._vms.add(vm)
        return vm

    def close(self) -> None:
        """Close every VM."""
        if self._closed:
            return
        for vm in list(self._vms):
            vm.close()
        self._closed = True

    def __repr__(self) -> str:
        return f"SimHypervisor({'closed' if self._closed else 'unicorn'})"


class SimBackend:
    """The ``sim`` registry entry."""

    name: Final = "sim"

    def unavailable_reason(self) -> str | None:
        """None when Unicorn is installed, of a supported version, and laid out as calibrated."""
        return _unicorn_problem()

    def open(self) -> SimHypervisor:
        """Open the simulator."""
        return SimHypervisor()


BACKEND: Final = SimBackend()
"""The object the ``sim`` entry point names."""
