"""Model-specific registers of one vCPU, with KVM's rules, for the guest and for the VMM.

Guest ``rdmsr``, ``wrmsr``, ``rdtsc`` and ``rdtscp`` reach :meth:`MsrEmulator.intercepted` as SVM
intercepts (see :meth:`hvcore_sim.engine.Engine._intercept_msrs`): the instruction has not run, RIP
is at it. The emulator does what KVM does and moves RIP past it, or returns the #GP(0) (#UD for an
``rdtscp`` the vCPU's CPUID lacks) the run loop delivers. ``get_msrs`` / ``set_msrs`` use the same
rules with KVM's ``host_initiated`` relaxations.

- Most MSRs live in Unicorn's own state, read and written through its MSR helpers
  (:meth:`hvcore_sim.engine.Engine.read_msr`), with KVM's checks in front: canonical addresses,
  valid PAT memory types, EFER bits the vCPU's CPUID allows.
- The TSC is the VM clock (:mod:`hvcore_sim.clock`) at ``TSC_HZ`` plus a per-vCPU offset; writing
  IA32_TSC sets the offset, as upstream KVM does. Under a virtual clock a guest read also counts
  the instructions the current slice has run, so the TSC moves on between two ``rdtsc``.
- KVM's paravirtual clock MSRs (MSR_KVM_WALL_CLOCK(_NEW), MSR_KVM_SYSTEM_TIME(_NEW)) go to the vCPU's
  :class:`hvcore_sim.kvmclock.PvClock`; a VMM write of IA32_TSC makes every vCPU refresh its clock.
- IA32_APIC_BASE, IA32_TSC_DEADLINE and the x2APIC MSRs (0x800-0x8ff) belong to the local APIC:
  they go to the vCPU's :class:`MsrHandler` (:class:`DefaultMsrHandler` behaves as KVM without an
  in-kernel LAPIC: no x2APIC MSR).
- MSRs KVM emulates for every guest without saving them (MTRRs, IA32_MISC_ENABLE, MCG and the 32
  machine-check banks, PLATFORM_INFO)
  are plain storage with KVM's reset values and MTRR type checks.
- Any other index is unknown: #GP(0) for the guest, an error naming it for the VMM. That includes
  IA32_SPEC_CTRL, IA32_PRED_CMD and IA32_FLUSH_CMD: the simulated host has none of their features
  (its supported CPUID lists none), and KVM gives them to a guest only where its CPUID has one and
  the host has it too (``guest_cpu_cap_has``), so the guest's accesses raise #GP as upstream's do.

Where KVM's answer depends on the host, this follows the AMD host the project measures on:
IA32_SYSENTER_CS keeps 64 bits (VMX keeps 32, Unicorn 16), and EFER accepts SCE, LME, LMA and NX only.
Addresses are checked for 57 bits (the engine's CPU has LA57: :mod:`hvcore_sim.cpumodel`).
IA32_SYSENTER_ESP/EIP follow SVM's rule on the vCPU's CPUID vendor
(:func:`hvcore.cpuid_rules.sysenter_esp_eip`): made canonical, and an AMD-compatible vCPU keeps and
reads only the low 32 bits.

One module: KVM's MSR rules (the index list, what each MSR accepts) and the emulator that
applies them to the guest's instructions and the VMM's calls alike change together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Final, Protocol

from hvcore import cpuid_rules
from hvcore.checks import check_msr, msr_refused, msr_unreadable
from hvcore.errors import HypervisorFault, InvalidArgument
from hvcore_sim import kvmclock
from hvcore_sim.clock import Clock, VirtualClock
from hvcore_sim.decode import fetch_instruction, prefixes
from hvcore_sim.exits import Stop, StopKind
from hvcore_sim.kvmclock import NO_MEMORY, KvmClock, PvClock
from hvcore_sim.layout import SVM_EXIT_MSR, SVM_EXIT_RDTSC
from hvcore_sim.smm import MSR_SMBASE, MSR_SMI_COUNT, SMBASE_RESET

if TYPE_CHECKING:
    from hvcore_sim.engine import Engine
    from hvcore_sim.irqchip.lapic import LocalApic
    from hvcore_sim.state import VcpuState

__all__ = [
    "MSRS",
    "TSC_HZ",
    "GP_FAULT",
    "DefaultMsrHandler",
    "LapicMsrHandler",
    "MsrEmulator",
    "MsrHandler",
]

IA32_TSC: Final = 0x10
IA32_APIC_BASE: Final = 0x1B
IA32_TSC_ADJUST: Final = 0x3B
IA32_SYSENTER_CS: Final = 0x174
IA32_SYSENTER_ESP: Final = 0x175
IA32_SYSENTER_EIP: Final = 0x176
IA32_PAT: Final = 0x277
IA32_TSC_DEADLINE: Final = 0x6E0
EFER: Final = 0xC0000080
STAR: Final = 0xC0000081
LSTAR: Final = 0xC0000082
CSTAR: Final = 0xC0000083
FMASK: Final = 0xC0000084
FS_BASE: Final = 0xC0000100
GS_BASE: Final = 0xC0000101
KERNEL_GS_BASE: Final = 0xC0000102
TSC_AUX: Final = 0xC0000103

MSRS: Final = (
    IA32_TSC,
    IA32_APIC_BASE,
    IA32_TSC_ADJUST,
    IA32_SYSENTER_CS,
    IA32_SYSENTER_ESP,
    IA32_SYSENTER_EIP,
    IA32_PAT,
    IA32_TSC_DEADLINE,
    EFER,
    STAR,
    LSTAR,
    CSTAR,
    FMASK,
    FS_BASE,
    GS_BASE,
    KERNEL_GS_BASE,
    TSC_AUX,
    *kvmclock.MSRS,
    MSR_SMBASE,
    MSR_SMI_COUNT,
)
"""Every MSR the simulator has (its KVM_GET_MSR_INDEX_LIST); any other index is unknown, as on KVM."""

IA32_MTRRCAP: Final = 0xFE
IA32_MTRR_DEF_TYPE: Final = 0x2FF
_MTRR_FIXED: Final = frozenset({0x250, 0x258, 0x259, *range(0x268, 0x270)})
_MTRR_VARIABLE: Final = frozenset(range(0x200, 0x210))
_EMULATED: Final = {
    IA32_MTRRCAP: 0x508,  # 8 variable ranges, fixed ranges, write-combining (read-only)
    0x8B: 0,  # IA32_BIOS_SIGN_ID (microcode revision)
    0xCE: 0x80000000,  # MSR_PLATFORM_INFO
    0x179: 0x20,  # IA32_MCG_CAP (read-only)
    0x17A: 0,  # IA32_MCG_STATUS
    0x1A0: 0x1,  # IA32_MISC_ENABLE: fast strings
    IA32_MTRR_DEF_TYPE: 0,
    **dict.fromkeys(_MTRR_FIXED | _MTRR_VARIABLE, 0),
    **dict.fromkeys(range(0x400, 0x480), 0),  # 32 machine-check banks: MCi_CTL, _STATUS, _ADDR, _MISC
}
"""MSRs KVM emulates for every guest beyond the saved list, with their values on a new vCPU (as measured)."""
_READ_ONLY: Final = frozenset({IA32_MTRRCAP, 0x179})
_MEMORY_TYPES: Final = frozenset({0, 1, 4, 5, 6})  # UC, WC, WT, WP, WB: what an MTRR may hold

TSC_HZ: Final = 1_000_000_000
"""The guest's TSC frequency: one tick per nanosecond of VM clock."""

_MASK64: Final = (1 << 64) - 1
_CANONICAL: Final = frozenset({LSTAR, CSTAR, FS_BASE, GS_BASE, KERNEL_GS_BASE})  # KVM: #GP if non-canonical
_EFER_SCE, _EFER_LME, _EFER_LMA, _EFER_NX = 1, 1 << 8, 1 << 10, 1 << 11
_EFER_KNOWN: Final = _EFER_SCE | _EFER_LME | _EFER_LMA | _EFER_NX
_APIC_BASE_RESERVED: Final = 0x2FF
_APIC_X2APIC, _APIC_ENABLE = 1 << 10, 1 << 11
_X2APIC_MSRS: Final = range(0x800, 0x900)
_LAPIC_MSRS: Final = frozenset({IA32_APIC_BASE, IA32_TSC_DEADLINE, *_X2APIC_MSRS})
_CR0_PG: Final = 1 << 31
_ADDRESS_BITS: Final = 57  # KVM's max_host_virt_addr_bits(): the engine's CPU (its supported CPUID) has LA57


def _emulated_valid(index: int, value: int, host: bool) -> bool:
    """What KVM accepts for its emulated MSRs: MTRR types; MCi_CTL all or nothing; MCi_STATUS only cleared."""
    if 0x400 <= index < 0x480:
        if index % 4 == 0:
            return value in (0, _MASK64)
        return host or index % 4 != 1 or value == 0
    return _mtrr_valid(index, value)


def _mtrr_valid(index: int, value: int) -> bool:
    """KVM's ``kvm_mtrr_valid``: memory types every field may hold, reserved bits clear."""
    if index in _MTRR_FIXED:
        return all((value >> (8 * i)) & 0xFF in _MEMORY_TYPES for i in range(8))
    if index == IA32_MTRR_DEF_TYPE:
        return not value & ~0xCFF and value & 0xFF in _MEMORY_TYPES
    if index in _MTRR_VARIABLE:
        if index % 2 == 0 and value & 0xFF not in _MEMORY_TYPES:  # PHYSBASE: type in the low byte
            return False
        return not value & (0xF00 if index % 2 == 0 else 0x7FF)
    return True


def _pat_valid(value: int) -> bool:
    """Every byte a memory type KVM accepts: 0 (UC), 1 (WC), 4 (WT), 5 (WP), 6 (WB), 7 (UC-)."""
    return all((value >> (8 * i)) & 0xFF in (0, 1, 4, 5, 6, 7) for i in range(8))


class _Cpuid:
    """The vCPU's CPUID as KVM's ``guest_cpuid_has`` reads it (leaves the VMM set; none: no features)."""

    def __init__(self, state: VcpuState) -> None:
        self._state = state

    def _leaf(self, function: int, index: int = 0) -> tuple[int, int, int, int] | None:
        for e in self._state.cpuid:
            if e.function == function and (not e.flags & 1 or e.index == index):
                return e.eax, e.ebx, e.ecx, e.edx
        return None

    def has(self, function: int, register: int, bit: int, index: int = 0) -> bool:
        """Bit ``bit`` of register ``register`` (0 EAX .. 3 EDX) of leaf ``function``."""
        leaf = self._leaf(function, index)
        return leaf is not None and bool(leaf[register] >> bit & 1)

    @property
    def long_mode(self) -> bool:
        """CPUID.80000001H:EDX.LM (also: KVM's SMM state-save area has the 64-bit layout)."""
        return self.has(0x80000001, 3, 29)

    @property
    def nx(self) -> bool:
        """CPUID.80000001H:EDX.NX."""
        return self.has(0x80000001, 3, 20)

    @property
    def rdtscp(self) -> bool:
        """CPUID.80000001H:EDX.RDTSCP."""
        return self.has(0x80000001, 3, 27)

    @property
    def tsc_aux(self) -> bool:
        """RDTSCP or RDPID (CPUID.7.0:ECX bit 22): the guest may use IA32_TSC_AUX."""
        return self.rdtscp or self.has(7, 2, 22)

    @property
    def tsc_adjust(self) -> bool:
        """CPUID.7.0:EBX.TSC_ADJUST."""
        return self.has(7, 1, 1)

    @property
    def x2apic(self) -> bool:
        """CPUID.1:ECX.x2APIC."""
        return self.has(1, 2, 21)

    @property
    def vendor(self) -> str | None:
        """The vendor string of leaf 0, or None without it."""
        return cpuid_rules.vendor(self._state.cpuid)

    @property
    def amd(self) -> bool:
        """An AMD-compatible vendor (KVM applies Intel's rules to every other vendor, and to no CPUID)."""
        return cpuid_rules.amd_compatible(self.vendor)

    @property
    def maxphyaddr(self) -> int:
        """Physical-address width: CPUID.80000008H:EAX[7:0], or 36 without that leaf (KVM's default)."""
        top = self._leaf(0x80000000)
        width = self._leaf(0x80000008) if top is not None and top[0] >= 0x80000008 else None
        return width[0] & 0xFF if width is not None else 36


class MsrHandler(Protocol):
    """Where the MSRs of the local APIC go (IA32_APIC_BASE, IA32_TSC_DEADLINE, the x2APIC MSRs)."""

    def read(self, index: int) -> int | None:
        """The MSR's value; None if this handler does not have ``index`` (the read is refused)."""
        ...

    def write(self, index: int, value: int, *, host: bool) -> bool:
        """Take a write (``host``: from ``set_msrs``, else from the guest); False refuses it (#GP)."""
        ...


class DefaultMsrHandler:
    """The local-APIC MSRs of a vCPU without an in-kernel LAPIC, as KVM has them.

    IA32_APIC_BASE is checked as ``kvm_set_apic_base`` does (reserved bits, the x2APIC bit only
    with CPUID x2APIC, no x2APIC without xAPIC, and for the guest no x2APIC -> xAPIC or disabled ->
    x2APIC transition) and kept in the vCPU state. IA32_TSC_DEADLINE reads 0, as KVM without a
    LAPIC; the last value written is kept in :attr:`tsc_deadline` for a timer model to pick up.
    """

    def __init__(self, state: VcpuState) -> None:
        self._state = state
        self.cpuid = _Cpuid(state)
        """The vCPU's CPUID, as the checks read it."""
        self.tsc_deadline = 0
        """The last value written to IA32_TSC_DEADLINE."""

    def read(self, index: int) -> int | None:
        """IA32_APIC_BASE from the vCPU state; IA32_TSC_DEADLINE 0."""
        if index == IA32_APIC_BASE:
            return self._state.apic_base
        if index == IA32_TSC_DEADLINE:
            return 0
        return None

    def write(self, index: int, value: int, *, host: bool) -> bool:
        """Check and keep a new APIC base; note a TSC deadline."""
        if index == IA32_TSC_DEADLINE:
            self.tsc_deadline = value
            return True
        if index != IA32_APIC_BASE:
            return False
        reserved = _APIC_BASE_RESERVED | (_MASK64 ^ ((1 << self.cpuid.maxphyaddr) - 1))
        if not self.cpuid.x2apic:
            reserved |= _APIC_X2APIC
        if value & reserved or (value & (_APIC_ENABLE | _APIC_X2APIC)) == _APIC_X2APIC:
            return False
        if not host:
            old = self._state.apic_base
            x2apic_to_xapic = old & _APIC_X2APIC and value & (_APIC_ENABLE | _APIC_X2APIC) == _APIC_ENABLE
            disabled_to_x2apic = not old & _APIC_ENABLE and value & _APIC_X2APIC
            if x2apic_to_xapic or disabled_to_x2apic:
                return False
        self._state.apic_base = value
        return True


class LapicMsrHandler:
    """The local-APIC MSRs of a vCPU with an in-kernel LAPIC (:mod:`hvcore_sim.irqchip.lapic`).

    The APIC base is checked as without a LAPIC, then given to the LAPIC too. A TSC deadline is in
    the guest's TSC, which runs ``emulator.tsc_offset`` ahead of the LAPIC's clock-derived TSC.
    The x2APIC MSRs are the LAPIC's registers in x2APIC mode. ``changed`` tells the run loop to
    look again (a new deadline may be due soon, an EOI or IPI may make an interrupt pending).
    """

    def __init__(
        self,
        default: DefaultMsrHandler,
        lapic: LocalApic,
        emulator: MsrEmulator,
        lock: AbstractContextManager[object],
        changed: Callable[[], None],
    ) -> None:
        self._default, self._lapic, self._emulator = default, lapic, emulator
        self._lock, self._changed = lock, changed

    def read(self, index: int) -> int | None:
        """The LAPIC's armed deadline (in guest TSC), an x2APIC register, or the APIC base."""
        if index == IA32_TSC_DEADLINE:
            with self._lock:
                deadline = self._lapic.read_tsc_deadline()
            return (deadline + self._emulator.tsc_offset) & _MASK64 if deadline else 0
        if index in _X2APIC_MSRS:
            with self._lock:
                return self._lapic.msr_read(index)
        return self._default.read(index)

    def write(self, index: int, value: int, *, host: bool) -> bool:
        """Arm or disarm the TSC-deadline timer; or check and apply a new APIC base."""
        if index == IA32_TSC_DEADLINE:
            with self._lock:
                self._lapic.write_tsc_deadline((value - self._emulator.tsc_offset) & _MASK64 if value else 0)
            self._changed()
            return True
        if index in _X2APIC_MSRS:
            with self._lock:
                accepted = self._lapic.msr_write(index, value)
            if accepted:  # (a refused one is a #GP, which the look-again stop must not hide)
                self._changed()
            return accepted
        if not self._default.write(index, value, host=host):
            return False
        try:
            with self._lock:
                cpuid = self._default.cpuid
                self._lapic.x2apic_allowed, self._lapic.maxphyaddr = cpuid.x2apic, cpuid.maxphyaddr
                self._lapic.set_apic_base(value)
        except InvalidArgument:
            return False
        self._changed()
        return True


class MsrEmulator:
    """One vCPU's MSRs and TSC, for intercepted guest instructions and for ``get_msrs`` / ``set_msrs``."""

    def __init__(
        self, state: VcpuState, clock: Clock, handler: MsrHandler | None = None, pvclock: PvClock | None = None
    ) -> None:
        self._cpuid = _Cpuid(state)
        self._clock = clock
        self.handler: MsrHandler = handler if handler is not None else DefaultMsrHandler(state)
        """Where IA32_APIC_BASE and IA32_TSC_DEADLINE go; a LAPIC model replaces the default."""
        self.tsc_offset = 0
        """Added to the VM clock's ticks to give this vCPU's TSC (KVM's per-vCPU TSC offset)."""
        self.tsc_adjust = 0
        """IA32_TSC_ADJUST: what guest writes to IA32_TSC added to the TSC."""
        self._emulated: dict[int, int] = {}  # KVM-emulated MSRs written so far (the rest have their reset values)
        self._sysenter_cs_upper = 0  # Unicorn keeps 16 bits of IA32_SYSENTER_CS (the selector); KVM on AMD keeps 64
        self.pvclock = pvclock if pvclock is not None else KvmClock(NO_MEMORY, TSC_HZ).add_vcpu(0, self._offset)
        """This vCPU's kvmclock (the VM's, or one of its own with no guest memory)."""
        self.smbase = SMBASE_RESET
        """SMBASE (MSR 0x9E, the VMM's only): where SMM saves the state and runs its handler."""
        self.smi_count = 0
        """SMIs taken (MSR_SMI_COUNT)."""

    @property
    def long_mode(self) -> bool:
        """The vCPU's CPUID has long mode."""
        return self._cpuid.long_mode

    @property
    def maxphyaddr(self) -> int:
        """The vCPU's physical-address width as KVM reads it from its CPUID (36 without leaf 0x80000008)."""
        return self._cpuid.maxphyaddr

    # -- the TSC -----------------------------------------------------------------------

    def _offset(self) -> int:
        return self.tsc_offset

    def _clock_ns(self, engine: Engine | None) -> int:
        """The VM clock; from inside a run (``engine``), with the slice's instructions so far."""
        clock = self._clock
        ns = clock.now()
        if engine is not None and isinstance(clock, VirtualClock):
            ns += max(engine.counter_cell.value - 1, 0) * clock.ns_per_instruction
        return ns

    def _ticks(self, engine: Engine | None) -> int:
        """The VM clock in TSC ticks (``engine``: as :meth:`_clock_ns`)."""
        return self._clock_ns(engine) * TSC_HZ // 1_000_000_000

    def tsc(self, engine: Engine | None = None) -> int:
        """This vCPU's TSC (``engine``: read by the guest during a run)."""
        return (self._ticks(engine) + self.tsc_offset) & _MASK64

    def refresh_pvclock(self, engine: Engine | None = None) -> None:
        """Fill this vCPU's kvmclock structure, if enabled, from the TSC and the VM clock of this instant."""
        ns = self._clock_ns(engine)
        self.pvclock.refresh((ns * TSC_HZ // 1_000_000_000 + self.tsc_offset) & _MASK64, ns)

    # -- one MSR ---------------------------------------------------------------------------

    def read(self, engine: Engine, index: int, *, host: bool, running: bool = False) -> int | None:
        """MSR ``index`` as KVM's ``kvm_get_msr`` gives it; None where KVM refuses (#GP for the guest)."""
        if index == IA32_TSC:
            return self.tsc(engine if running else None)
        if index in _LAPIC_MSRS:
            return self.handler.read(index)
        if index == IA32_TSC_ADJUST:
            return self.tsc_adjust & _MASK64
        if index in kvmclock.MSRS:
            return self.pvclock.read(index)
        if index == MSR_SMBASE:
            return self.smbase if host else None
        if index == MSR_SMI_COUNT:
            return self.smi_count
        if index == TSC_AUX and not host and not self._cpuid.tsc_aux:
            return None
        if index in _EMULATED:
            return self._emulated.get(index, _EMULATED[index])
        if index not in MSRS:
            return None
        value = engine.read_msr(index)
        if index == IA32_SYSENTER_CS:
            value = self._sysenter_cs_upper | value & 0xFFFF
        elif index in (IA32_SYSENTER_ESP, IA32_SYSENTER_EIP) and self._cpuid.amd:
            value &= 0xFFFFFFFF  # SVM adds the upper half kept aside only for an Intel-compatible vendor
        return value

    def write(self, engine: Engine, index: int, value: int, *, host: bool, running: bool = False) -> bool:
        """Write MSR ``index`` as KVM's ``kvm_set_msr`` does; False where KVM refuses (#GP for the guest)."""
        if index == IA32_TSC:
            offset = (value - self._ticks(engine if running else None)) & _MASK64
            if not host:  # a guest write moves IA32_TSC_ADJUST by as much (SDM, and KVM)
                self.tsc_adjust = (self.tsc_adjust + offset - self.tsc_offset) & _MASK64
            self.tsc_offset = offset
            if host:  # KVM's TSC synchronisation updates the master clock, and with it every vCPU's kvmclock
                self.pvclock.vm.request_update()
            return True
        if index in _LAPIC_MSRS:
            return self.handler.write(index, value, host=host)
        if index == IA32_TSC_ADJUST:
            if self._cpuid.tsc_adjust:  # without the CPUID bit KVM drops the write, with no #GP
                if not host:
                    self.tsc_offset = (self.tsc_offset + value - self.tsc_adjust) & _MASK64
                self.tsc_adjust = value
            return True
        if index in (MSR_SMBASE, MSR_SMI_COUNT):  # both the VMM's to write only, as KVM's host_initiated check
            if not host:
                return False
            if index == MSR_SMBASE:
                self.smbase = value
            else:
                self.smi_count = value
            return True
        if index in kvmclock.MSRS:
            self.pvclock.write(index, value, self._clock_ns(engine if running else None), host=host)
            if running and self.pvclock.pending:  # the guest's next instruction sees the refreshed clock
                self.refresh_pvclock(engine)
            return True
        if index in _EMULATED:
            if index in _READ_ONLY:
                return host and value == _EMULATED[index]
            if not _emulated_valid(index, value, host):
                return False
            self._emulated[index] = value
            return True
        if index not in MSRS:
            return False
        if index in _CANONICAL and not cpuid_rules.is_canonical(value, _ADDRESS_BITS):
            return False
        if index in (IA32_SYSENTER_ESP, IA32_SYSENTER_EIP):  # made canonical rather than refused; vendor rule
            value = cpuid_rules.sysenter_esp_eip(value, self._cpuid.vendor, _ADDRESS_BITS)
        elif index == IA32_SYSENTER_CS:
            self._sysenter_cs_upper = value & ~0xFFFF
        elif (index == IA32_PAT and not _pat_valid(value)) or (
            index == EFER and not self._efer_allowed(engine, value, host)
        ):
            return False
        elif index == TSC_AUX:
            if not host and not self._cpuid.tsc_aux:
                return False
            if value >> 32 and not self._cpuid.amd:  # reserved on Intel; AMD ignores the upper half
                return False
            value &= 0xFFFFFFFF
        engine.write_msr(index, value)  # Unicorn keeps EFER.LMA itself, as KVM does
        return True

    def _efer_allowed(self, engine: Engine, value: int, host: bool) -> bool:
        if value & ~_EFER_KNOWN:
            return False
        if host:
            return True
        if value & (_EFER_LME | _EFER_LMA) and not self._cpuid.long_mode:
            return False
        if value & _EFER_NX and not self._cpuid.nx:
            return False
        paging = engine.reg(engine.CR0) & _CR0_PG
        return not (paging and (engine.read_msr(EFER) ^ value) & _EFER_LME)

    # -- the VMM's view ---------------------------------------------------------------------------

    def get_msrs(self, engine: Engine, indices: Iterable[int]) -> dict[int, int]:
        """``KVM_GET_MSRS``: an unknown index raises InvalidArgument naming it."""
        result = {}
        for index in indices:
            check_msr(index)
            value = self.read(engine, index, host=True)
            if value is None:
                raise msr_unreadable(index)
            result[index] = value
        return result

    def set_msrs(self, engine: Engine, msrs: Mapping[int, int]) -> None:
        """``KVM_SET_MSRS``: stops at the first MSR KVM would refuse, raising InvalidArgument naming it."""
        for index, value in msrs.items():
            check_msr(index, value)
            if not self.write(engine, index, value, host=True):
                raise msr_refused(index, value)

    # -- intercepted guest instructions ----------------------------------------------------------

    def intercepted(self, engine: Engine, exit_code: int) -> Stop | None:
        """Emulate the RDMSR / WRMSR / RDTSC / RDTSCP at RIP and step past it; or the fault to deliver."""
        if exit_code not in (SVM_EXIT_MSR, SVM_EXIT_RDTSC):
            raise HypervisorFault(f"unexpected SVM intercept {exit_code:#x} in the simulator", operation="run")
        rip = engine.reg(engine.RIP)
        length, opcode = _decode(fetch_instruction(engine, rip))
        reg = engine.reg
        if opcode == 0x32:  # rdmsr
            value = self.read(engine, reg(engine.RCX) & 0xFFFFFFFF, host=False, running=True)
            if value is None:
                return GP_FAULT
            engine.set_reg(engine.RAX, value & 0xFFFFFFFF)
            engine.set_reg(engine.RDX, value >> 32)
        elif opcode == 0x30:  # wrmsr
            value = (reg(engine.RDX) & 0xFFFFFFFF) << 32 | reg(engine.RAX) & 0xFFFFFFFF
            if not self.write(engine, reg(engine.RCX) & 0xFFFFFFFF, value, host=False, running=True):
                return GP_FAULT
        else:  # rdtsc, rdtscp
            if opcode == 0xF9:
                if not self._cpuid.rdtscp:
                    return _UD
                engine.set_reg(engine.RCX, engine.read_msr(TSC_AUX) & 0xFFFFFFFF)
            value = self.tsc(engine)
            engine.set_reg(engine.RAX, value & 0xFFFFFFFF)
            engine.set_reg(engine.RDX, value >> 32)
        engine.set_reg(engine.RIP, rip + length)
        return None


GP_FAULT: Final = Stop(StopKind.EXCEPTION, vector=13, error_code=0)
_UD: Final = Stop(StopKind.EXCEPTION, vector=6)


def _decode(code: bytes) -> tuple[int, int]:
    """Length and last opcode byte of the RDMSR (0x32), WRMSR (0x30), RDTSC (0x31) or RDTSCP (0xF9) in ``code``."""
    at = prefixes(code, rex=True).length  # (a REX there: the instruction is 64-bit code)
    body = code[at : at + 3]
    if body[:2] in (b"\x0f\x30", b"\x0f\x31", b"\x0f\x32"):
        return at + 2, body[1]
    if body == b"\x0f\x01\xf9":
        return at + 3, 0xF9
    raise HypervisorFault(f"an intercepted instruction is not RDMSR/WRMSR/RDTSC/RDTSCP: {code.hex()}", operation="run")
