"""``SimVCPU``: one vCPU on its own Unicorn engine, giving KVM's exits.

``run()`` runs the guest in counted slices under the VM's execution lock (so two
engines never execute at once and guest ``lock`` operations stay atomic), and
turns what stopped a slice into KVM's exit. The instruction-level rules live in
:mod:`hvcore_sim.exits`; this module owns the run loop, the kick and the state API.

One module for now, though long: ``SimVCPU`` is both the public vCPU and the run loop over its
engine, tracker, MSRs and LAPIC, and it splits cleanly only together with the exit tracker
(:mod:`hvcore_sim.exits`) and ``SimVM``'s role as the vCPUs' service locator (issue 15).
"""

from __future__ import annotations

import errno as _errno
import functools
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar, cast

from hvcore.arguments import (
    check_enum,
    check_flag,
    check_instances,
    check_int,
    check_int_list,
    check_int_mapping,
)
from hvcore.checks import check_vector, check_xcrs
from hvcore.errors import (
    ClosedError,
    ExitNotCompleted,
    HypervisorFault,
    InvalidArgument,
    NotFound,
    StateError,
    VcpuBusy,
)
from hvcore.exits import (
    DebugExit,
    Exit,
    HltExit,
    InternalErrorExit,
    InterruptedExit,
    IoExit,
    IrqWindowOpenExit,
    MmioExit,
    ShutdownExit,
)
from hvcore.lifetime import Closeable
from hvcore.state_checks import check_state_argument
from hvcore.types import (
    CpuidEntry,
    DebugRegs,
    Fpu,
    GuestDebug,
    Lapic,
    MpState,
    Regs,
    Sregs,
    Translation,
    VcpuEvents,
    Xsave,
)
from hvcore_sim import cpufeatures, guestdebug, hypercall, smm, state, syscall, validity
from hvcore_sim.blocks import ExitDensity
from hvcore_sim.decode import fetch_instruction, prefixes
from hvcore_sim.engine import EFER_LMA, Engine
from hvcore_sim.exits import Stop, StopKind, Tracker
from hvcore_sim.msrs import GP_FAULT, IA32_APIC_BASE, DefaultMsrHandler, LapicMsrHandler, MsrEmulator
from hvcore_sim.queued import SOFTWARE_EXCEPTIONS, QueuedException, nmi_limit
from hvcore_sim.windows import REQUEST_INTERRUPT, REQUEST_NMI

if TYPE_CHECKING:
    from hvcore_sim.internals import Cells
    from hvcore_sim.irqchip.chip import Irqchip
    from hvcore_sim.irqchip.lapic import LocalApic
    from hvcore_sim.vm import SimVM

__all__ = ["ParkedVcpu", "SimVCPU"]

_get_ident = threading.get_ident
_Method = TypeVar("_Method", bound=Callable[..., Any])


def _between_runs(method: _Method) -> _Method:
    """Run a state method as KVM runs a vCPU ioctl: after a ``run()`` in another thread has returned.

    KVM_RUN holds the vCPU's mutex until it returns, so on KVM ``get_regs`` from another thread
    waits for the exit and sees the state at it, never the state of a guest still running.
    """

    @functools.wraps(method)
    def between_runs(self: SimVCPU, *args: Any, **kwargs: Any) -> Any:
        with self._claim:
            return method(self, *args, **kwargs)

    return cast(_Method, between_runs)


SLICE = 65521
"""Instructions per slice: the longest a kick, another vCPU or a window check waits.

A prime, not 2**16: vCPUs take turns at slice ends, and a spin loop whose length divides the
slice would always be cut at the same instruction. SeaBIOS's SMP bring-up is such a loop: the
BSP frees its lock for two of its eight instructions, and with 2**16 the application processor
never got it. With a prime, successive cuts walk through every position of any shorter loop."""
RFLAGS_IF = 1 << 9
_INTERRUPTED = InterruptedExit()
_HLT = HltExit()
_SHUTDOWN = ShutdownExit()
_WINDOW = IrqWindowOpenExit()
_CR0_ET, _CR0_CD_NW, _CR0_PG = 0x10, 0x60000000, 1 << 31
_RESET_RDX = 0x600  # KVM's CPU signature when the VMM set no CPUID
_IDLE_POLL = 0.05  # seconds: a sleeping vCPU looks again at least this often
_UD = 6
_VALID_NMI_PENDING, _VALID_SHADOW, _VALID_SMM = 1, 4, 8  # KVM_VCPUEVENT_VALID_*: set_vcpu_events applies these then
_RSM = b"\x0f\xaa"
_LOCK = 0xF0
_DR6_TRAPS, _DR6_ACTIVE_LOW, _DR6_BS, _DR6_BIT12 = 0xF, 0xFFFF0FF0, 1 << 14, 1 << 12  # kvm_deliver_exception_payload


def _completed(exit_: Exit) -> bool:
    """An exit after which the instruction is complete (OUT, MMIO write): under single-step, a step."""
    return (isinstance(exit_, IoExit) and not exit_.is_in) or (isinstance(exit_, MmioExit) and exit_.is_write)


_NO_LAPIC = "there is no in-kernel LAPIC: call vm.create_irqchip() before creating vCPUs"
_TAKES_SMI = (MpState.RUNNABLE, MpState.HALTED)  # a vCPU waiting for INIT / SIPI keeps its SMI pending
_SETTABLE_MP_STATES = (
    MpState.RUNNABLE,
    MpState.UNINITIALIZED,
    MpState.INIT_RECEIVED,
    MpState.HALTED,
    MpState.SIPI_RECEIVED,
)


@dataclass(frozen=True)
class ParkedVcpu:
    """What KVM keeps of a closed (parked) vCPU beyond its reset state: its CPUID, and whether it ran."""

    cpuid: tuple[CpuidEntry, ...]
    has_run: bool


class SimVCPU(Closeable):
    """A simulated vCPU; see :class:`hvcore.VCPU` for the contract."""

    def __init__(self, vm: SimVM, vcpu_id: int, parked: ParkedVcpu | None = None) -> None:
        self._vm = vm
        self._id = vcpu_id
        self._closed = False
        self._thread: int | None = None
        # held by the thread inside run() (taken without waiting, or VcpuBusy) and, as KVM's vcpu->mutex,
        # by a state call, which waits for a run in another thread to return
        self._claim = threading.RLock()
        self._kick_lock = threading.Lock()
        self._kicked = False
        self._immediate_exit = False
        self._request_window = False
        self._cr8 = 0
        self._queued_interrupt: int | None = None
        self._interrupt_nr = 0  # KVM's interrupt.nr: the last vector queued, kept after delivery (get_vcpu_events)
        self._nmi_pending = 0  # KVM's nmi_pending: at most nmi_limit(), applied as process_nmi does
        self._exception = QueuedException()  # vcpu->arch.exception (hvcore_sim.queued)
        self._stepping = False
        self._debug_exception: int | None = None  # INJECT_DB / INJECT_BP: the vector the next run delivers
        self._event_length = 0  # VMX's event_exit_inst_len: the instruction length of the last #BP/#DB exit
        self._ready_snapshot = False  # kvm_run.ready_for_interrupt_injection / if_flag: zero until the first exit
        self._if_snapshot = False
        self._step_owed = False
        self._density = ExitDensity()
        self._smm = False  # HF_SMM: in System Management Mode, seeing address space 1
        self._smm_inside_nmi = False  # HF_SMM_INSIDE_NMI: NMIs were blocked already when SMM was entered
        self._smi_pending = False
        self._has_run = parked is not None and parked.has_run  # KVM's kvm_vcpu_has_run: it entered the guest
        self._state = state.VcpuState(apic_base=0xFEE00800 | (0x100 if vcpu_id == 0 else 0))  # BSP bit: vCPU 0
        pvclock = vm.kvmclock.add_vcpu(vcpu_id, lambda: self.msrs.tsc_offset)
        self.msrs = MsrEmulator(self._state, vm.clock, pvclock=pvclock)
        """Guest RDMSR / WRMSR / RDTSC and get_msrs / set_msrs (``msrs.handler``: the LAPIC's MSRs)."""
        self._engine: Engine | None = None
        self._cells: Cells | None = None
        self._layout_generation = -1
        self._versions: dict[int, int] = {}
        self._host_writes = -1
        chip = vm.irqchip
        self._lapic = chip.add_lapic(vcpu_id) if chip is not None else None
        # with an irqchip, as on KVM, vCPUs other than 0 wait for INIT and SIPI
        self._mp_state = MpState.RUNNABLE if chip is None or vcpu_id == 0 else MpState.UNINITIALIZED
        self.tracker = Tracker(self, vm.spaces[0], self._state)
        if chip is not None and self._lapic is not None:
            default = self.msrs.handler
            assert isinstance(default, DefaultMsrHandler)
            self.msrs.handler = LapicMsrHandler(default, self._lapic, self.msrs, chip.lock, self._timers_changed)
        self._engine = self._new_engine(None)
        self._engine.reset()
        self._state.reset_fpu(self._engine)
        if parked is not None and parked.cpuid:
            self._state.set_cpuid(self._engine, list(parked.cpuid))

    # -- engine lifetime -------------------------------------------------------

    def _new_engine(self, old: Engine | None) -> Engine:
        engine = Engine(self._vm.context_layout)
        if old is not None:
            engine.adopt(old)
        self._state.limit_xcr0(engine)
        self.tracker.install(engine)
        self._cells = self.tracker.cells  # the new engine's (read at every exit)
        self._vm.map_into(engine, self.tracker)
        self.tracker.mapped_writable({slot: set(pages) for slot, pages in self._vm.dirty.pages.items()})
        self._layout_generation = self._vm.layout_generation
        return engine

    def engine(self) -> Engine:
        """The engine, rebuilt first when the VM's slot layout changed (call under the VM lock)."""
        engine, vm = self._engine, self._vm
        assert engine is not None
        if self._layout_generation != vm.layout_generation:
            engine = self._engine = self._new_engine(engine)
        if vm.dirty.generation != self.tracker.dirty_generation:
            self.tracker.sync_dirty(engine)
        if vm.host_writes.count != self._host_writes:  # any host write since the last look
            self._host_writes = vm.host_writes.count
            self._drop_stale_code(engine)
        return engine

    def _drop_stale_code(self, engine: Engine) -> None:
        """Forget translations of guest memory the host wrote since the last run.

        Unicorn removes cached code by linear address, translated through the guest's MMU as an
        instruction fetch (which sets CR2 where it fails): one write is forgotten on its own only
        while paging is off, where linear and physical addresses are the same; otherwise all is.
        """
        paging = bool(engine.reg(engine.CR0) & _CR0_PG)
        for slot in self.tracker.guest.memory_slots_unchecked():
            memory = slot.memory
            seen = self._versions.get(id(memory))
            if seen == memory.version:
                continue
            self._versions[id(memory)] = memory.version
            if seen is None:
                continue
            offset, length = memory.last_write
            if not paging and seen + 1 == memory.version and slot.offset <= offset < slot.offset + slot.size:
                start = slot.guest_address + offset - slot.offset
                engine.uc.ctl_remove_cache(start, start + max(length, 1))
            else:
                engine.uc.ctl_flush_tb()

    @property
    def id(self) -> int:
        """The vCPU id."""
        return self._id

    def _live(self) -> Engine:
        if self._closed:
            raise ClosedError(f"vCPU {self._id} is closed", operation="vcpu")
        self._vm.check_alive()
        assert self._engine is not None
        return self._engine

    # -- running -----------------------------------------------------------------

    def run(self) -> Exit:
        """Run the guest until it needs the VMM (see :class:`hvcore.VCPU`)."""
        if not self._claim.acquire(False):  # atomic: of two threads at once exactly one gets in
            raise VcpuBusy(f"vCPU {self._id} is already running in another thread", operation="run")
        try:
            pending = self.tracker.pending
            if pending is not None:
                raise ExitNotCompleted(
                    f"vCPU {self._id} still waits for the answer to {pending!r}; call complete(data) first",
                    operation="run",
                )
            self._thread = _get_ident()
            if self._closed:
                raise ClosedError(f"vCPU {self._id} is closed", operation="run")
            self._vm.check_alive()
            exit_ = self._run()
            self._save_after_run()
            if type(exit_) is DebugExit:
                self._event_length = 1 if exit_.exception == 3 else 0  # an int3 is one byte
            return exit_
        finally:
            if self._kicked:  # as on KVM, a kick is consumed by the run it hit, whatever that run returned
                with self._kick_lock:
                    self._kicked = False
            self._thread = None
            self._claim.release()

    @property
    def started(self) -> bool:
        """Whether the vCPU has left the wait for INIT / SIPI (an application processor before its SIPI has not)."""
        return self._mp_state not in (MpState.UNINITIALIZED, MpState.INIT_RECEIVED)

    def _consume_kick(self) -> bool:
        with self._kick_lock:
            kicked = self._kicked or self._immediate_exit
            self._kicked = self._immediate_exit = False
            return kicked

    def _run(self) -> Exit:
        lock, stepping, tracker = self._vm.exec_lock, self._stepping, self.tracker
        acquire, release = lock.raw.acquire, lock.raw.release  # the C lock itself: this is the hot path
        first = True
        vm = self._vm
        chip, clock = vm.irqchip, vm.clock
        virtual = clock.virtual
        msrs = self.msrs
        pvclock = msrs.pvclock
        density = self._density
        host_writes = vm.host_writes
        while True:
            if chip is not None and self._mp_state is not MpState.RUNNABLE and not first and self._sleep(chip):
                return _INTERRUPTED
            if not acquire(False):
                lock.acquire()  # busy: wait as a counted waiter
            try:
                engine = self._engine
                if (  # engine(), its checks inline: the hot path
                    self._layout_generation != vm.layout_generation
                    or vm.dirty.generation != tracker.dirty_generation
                    or host_writes.count != self._host_writes
                ):
                    engine = self.engine()
                assert engine is not None
                if first:  # finish what the last exit left, then honour a kick, before any new guest code
                    first = False
                    kicked = self._kicked or self._immediate_exit
                    if tracker.has_unfinished:
                        tracker.completed_instruction = False
                        queued = tracker.finish_instruction(engine, now=kicked)
                        if queued is not None:
                            return queued
                        if stepping and tracker.completed_instruction:  # finishing the IN was the step
                            return self._step_exit(engine)
                    if stepping and self._step_owed:  # the OUT / MMIO write that exited was a step too
                        self._step_owed = False
                        return self._step_exit(engine)
                    if kicked:
                        self._consume_kick()
                        return _INTERRUPTED
                    self._process_nmi(engine)
                    self._state.xfeatures = 0  # from here XSTATE_BV is what the guest's state is (XSAVES)
                    if self._exception.injected and not self._deliver_injected_exception(engine):
                        return _SHUTDOWN
                    if self._debug_exception is not None and not self._deliver_debug_exception(engine):
                        return _SHUTDOWN
                if self._lapic is not None and self._lapic.smi_pending:
                    self._take_lapic_smi(chip)
                if self._smi_pending and not self._smm and self._mp_state in _TAKES_SMI:
                    engine = self._enter_smm(engine)
                count = 1 if stepping else SLICE
                if chip is not None:
                    count = self._irqchip_events(chip, engine, count)
                    if count == 0:
                        continue  # not runnable: sleep (outside the execution lock)
                if self._nmi_pending or self._queued_interrupt is not None:
                    exit_ = self._inject(engine)
                    if exit_ is not None:
                        return exit_
                    if self._nmi_pending and not self._nmi_window(engine):
                        count = 1  # step until NMIs are unblocked: the NMI lands right then
                if chip is None and self._request_window:
                    if self._ready(engine):
                        return _WINDOW
                    if not engine.open_window(REQUEST_INTERRUPT):
                        count = 1  # step until the guest can take an interrupt: the exit comes right then
                if virtual:
                    deadline = chip.deadline() if chip is not None else None
                    if deadline is not None:
                        count = min(count, clock.instructions_until(deadline))
                if tracker.watch_resume_flag:
                    count = tracker.resume_flag_budget(engine, count)
                if pvclock.pending:  # as KVM's clock-update request, before the guest runs on
                    msrs.refresh_pvclock()
                # blocks, not instructions, where no rule needs each instruction counted (:mod:`hvcore_sim.blocks`)
                engine.set_fast(
                    not (
                        stepping
                        or virtual
                        or tracker.breakpoints.watching
                        or vm.vcpu_count > 1
                        or (density.dense and engine.switches_freely)
                    )
                )
                fast = engine.fast
                self._has_run = True
                stop = tracker.run(engine, count)
                engine.close_windows()
                executed = engine.counter_cell.value
                used_up = stop.kind is StopKind.SLICE and not engine.within_budget
                density.ran(executed, fast, not used_up)
                if virtual:
                    clock.executed(min(executed, count))
                exit_ = stop.exit if stop.kind is StopKind.EXIT else self._handle(engine, stop)
                if used_up and fast:
                    engine.drop_tlb()  # a used-up slice: see Engine.drop_tlb
            finally:
                release()
            if lock.waiting:
                lock.yield_if_wanted()
            if exit_ is not None and not (stepping and exit_ is _HLT):
                if stepping and _completed(exit_):
                    self._step_owed = True  # upstream KVM reports the step on the next run
                return exit_
            if stepping:  # KVM reports a stepped HLT as a step, and the vCPU does not halt
                return self._step_exit(engine)
            if self._kicked and self._consume_kick():
                return _INTERRUPTED

    # -- with an irqchip -------------------------------------------------------------

    def _irqchip_events(self, chip: Irqchip, engine: Engine, count: int) -> int:
        """Fire due timers, take INIT / SIPI / NMI, and take an interrupt the guest can accept now.

        Returns how many instructions to run: 0 when the vCPU is not runnable (it must sleep). An
        interrupt that waits for IF or the STI shadow opens an interrupt window (single steps where
        :mod:`hvcore_sim.windows` is not available), so it lands right then.
        """
        lapic = self._lapic
        assert lapic is not None
        with chip.lock:
            deadline = chip.deadline()
            if deadline is not None and deadline <= chip.clock.now():
                chip.advance()
            if lapic.init_pending and not self._smm:  # in SMM an INIT is latched until RSM
                lapic.init_pending = False
                self._init(engine)
            if lapic.sipi_vector is not None:
                vector, lapic.sipi_vector = lapic.sipi_vector, None
                if self._mp_state is MpState.INIT_RECEIVED and not self._smm:  # in SMM a SIPI is dropped
                    self._start_at(engine, vector)
            if lapic.nmi_pending:
                lapic.nmi_pending = False
                self._nmi_pending += 1
                self._process_nmi(engine)
                if self._mp_state is MpState.HALTED:
                    self._unhalt()
            if self._mp_state is not MpState.RUNNABLE:
                return 0
            if self._nmi_pending and self._nmi_allowed(engine):
                return count  # the NMI goes first, as KVM injects it before it takes an interrupt
            if self._queued_interrupt is None and chip.has_interrupt(self._id):
                if self._ready(engine):
                    taken = chip.acknowledge(self._id)
                    if taken is not None:
                        self._queue_interrupt(taken)
                    return count
                # QEMU stops the run right where IF and the shadow let it in, as KVM's interrupt window
                return count if engine.open_window(REQUEST_INTERRUPT) else 1
        return count

    # -- System Management Mode (:mod:`hvcore_sim.smm`) -------------------------------

    def _switch_space(self, entering: bool) -> None:
        """KVM's ``kvm_smm_changed``: in SMM the vCPU sees address space 1 (its engine is mapped anew)."""
        self._smm = entering
        if not entering:
            self._smm_inside_nmi = False
        self.tracker.guest = self._vm.spaces[1 if entering else 0]
        self._layout_generation = -1

    def _engine_sregs(self, engine: Engine) -> Sregs:
        return engine.get_sregs(apic_base=self._state.apic_base, interrupt_bitmap=(0, 0, 0, 0), cr8=0)

    def _enter_smm(self, engine: Engine) -> Engine:
        """Take the pending SMI (KVM's ``enter_smm``); the engine mapping address space 1."""
        msrs, long_mode = self.msrs, self.msrs.long_mode
        regs, sregs = engine.get_regs(), self._engine_sregs(engine)
        shadow = int(engine.interrupt_shadow)
        area = smm.save(
            regs, sregs, engine.reg(engine.DR6), engine.reg(engine.DR7), msrs.smbase & 0xFFFFFFFF, shadow,
            long_mode=long_mode,
        )  # fmt: skip
        self._smi_pending = False
        msrs.smi_count += 1
        self._switch_space(True)
        if not self._vm.spaces[1].physical.store(msrs.smbase + smm.SAVE_AREA_OFFSET, area):
            self._vm.kill(
                f"vCPU {self._id} took an SMI, but address space 1 has no writable RAM at SMBASE + 0xFE00 "
                f"({msrs.smbase + smm.SAVE_AREA_OFFSET:#x}) for the state-save area; map SMRAM with "
                "set_memory_slot(..., address_space=1) before sending SMIs"
            )
            self._vm.check_alive()
        if engine.nmi_blocked:
            self._smm_inside_nmi = True
        else:
            engine.nmi_blocked = True
        regs, sregs = smm.entry_state(regs, sregs, msrs.smbase, long_mode=long_mode)
        engine.set_sregs(sregs)
        engine.set_regs(regs)
        engine.interrupt_shadow = False
        engine.set_reg(engine.DR7, smm.DR7_AT_ENTRY)
        if self._mp_state is MpState.HALTED:
            self._mp_state = MpState.RUNNABLE
        return self.engine()

    def _take_lapic_smi(self, chip: Irqchip | None) -> None:
        """An SMI the LAPIC accepted (an IPI, an IOAPIC pin, an MSI) becomes pending, as ``KVM_SMI`` makes it."""
        assert chip is not None and self._lapic is not None
        with chip.lock:
            self._lapic.smi_pending = False
        self._smi_pending = True  # a halted vCPU leaves HLT as it enters SMM

    def _at_rsm(self, engine: Engine) -> bool:
        """The instruction at RIP is RSM (prefixes allowed but LOCK, as KVM's emulator decodes it)."""
        code = fetch_instruction(engine, engine.reg(engine.RIP))
        found = prefixes(code, rex=True)
        return code[found.length : found.length + 2] == _RSM and _LOCK not in found.legacy

    def _rsm(self, engine: Engine) -> bool:
        """RSM in SMM (KVM's ``emulator_leave_smm``); False where the state cannot be loaded (a triple fault)."""
        msrs = self.msrs
        area = self._vm.spaces[1].physical.load(msrs.smbase + smm.SAVE_AREA_OFFSET, smm.SAVE_AREA_SIZE)
        if area is None:
            return False
        if not self._smm_inside_nmi:
            engine.nmi_blocked = False
        self._switch_space(False)
        saved = smm.load(area, long_mode=msrs.long_mode)
        if saved.dr6 >> 32 or saved.dr7 >> 32:  # kvm_set_dr refuses them
            return False
        msrs.smbase = saved.smbase
        regs, sregs = smm.resumed_state(saved, engine.get_regs(), self._engine_sregs(engine))
        try:
            validity.check_sregs(sregs, self._state.cpuid, msrs.maxphyaddr)
        except InvalidArgument:  # kvm_set_cr0 / cr4 / EFER refused one of them
            return False
        engine.set_sregs(sregs)
        engine.set_regs(regs)
        engine.set_reg(engine.DR6, saved.dr6)
        engine.set_reg(engine.DR7, saved.dr7)
        engine.interrupt_shadow = bool(saved.interrupt_shadow)
        return True

    @_between_runs
    def smi(self) -> None:
        """Queue an SMI (``KVM_SMI``): the next run enters SMM, or the first after RSM if in SMM already."""
        self._live()
        self._smi_pending = True

    @property
    def in_smm(self) -> bool:
        """In System Management Mode (``KVM_RUN_X86_SMM``)."""
        self._live()
        return self._smm

    # -- CR8: the task priority ----------------------------------------------------

    def _task_priority(self) -> int:
        """CR8: the LAPIC's TPR bits 7:4 with an irqchip (as KVM's ``kvm_get_cr8``), else the vCPU's own."""
        chip, lapic = self._vm.irqchip, self._lapic
        if chip is None or lapic is None:
            return self._cr8
        with chip.lock:  # the register itself: KVM reads it whether or not the APIC is enabled
            return lapic.get_cr8()

    def _set_task_priority(self, value: int) -> None:
        chip, lapic = self._vm.irqchip, self._lapic
        if chip is None or lapic is None:
            self._cr8 = value
            return
        with chip.changed:  # kvm_lapic_set_tpr: the register itself, enabled or not
            lapic.set_cr8(value)
            chip.changed.notify_all()

    def cr8_intercepted(self, engine: Engine, *, write: bool) -> Stop | None:
        """A guest ``mov cr8, reg`` / ``mov reg, cr8`` (an SVM intercept, RIP at it): done, RIP past it; or #GP."""
        rip = engine.reg(engine.RIP)
        code = fetch_instruction(engine, rip)
        found = prefixes(code, rex=True)  # (LOCK MOV CR0 is AMD's CR8 outside 64-bit mode)
        at, rex = found.length, found.rex
        if code[at : at + 2] not in (b"\x0f\x20", b"\x0f\x22") or at + 2 >= len(code):
            raise HypervisorFault(f"CR8 intercept at {rip:#x}: not MOV to/from CR8: {code.hex()}", operation="run")
        modrm = code[at + 2]
        register = engine.GPRS_BY_NUMBER[(modrm & 7) | (rex & 1) << 3]
        if write:
            value = engine.reg(register)
            if value & ~0xF:
                return GP_FAULT
            self._set_task_priority(value)
            self.tracker.reevaluate()  # a lower priority may let a pending interrupt in
        else:
            engine.set_reg(register, self._task_priority())
        engine.set_reg(engine.RIP, rip + at + 3)
        return None

    def cr4_write_allowed(self, engine: Engine) -> bool:
        """Whether KVM takes the guest's ``mov cr4, reg`` at RIP (an SVM intercept): else it raises #GP(0)."""
        rip = engine.reg(engine.RIP)
        code = fetch_instruction(engine, rip)
        found = prefixes(code, rex=True)
        at, rex = found.length, found.rex
        if code[at : at + 2] != b"\x0f\x22" or at + 2 >= len(code):
            raise HypervisorFault(f"CR4 write intercept at {rip:#x}: not MOV to CR4: {code.hex()}", operation="run")
        value = engine.reg(engine.GPRS_BY_NUMBER[(code[at + 2] & 7) | (rex & 1) << 3])
        view = engine.view()
        if view.code_bits != 64:
            value &= 0xFFFFFFFF
        paging = view.paging
        long_mode = bool(paging.efer & EFER_LMA)
        error = cpufeatures.cr4_error(
            value, old=paging.cr4, long_mode=long_mode, cr3=paging.cr3, cpuid=self._state.cpuid
        )
        return error is None

    def syscall(self, engine: Engine) -> Stop | None:
        """A guest SYSCALL (Unicorn's hook, RIP at it) performed in place (:mod:`hvcore_sim.syscall`); or its #UD."""
        vector = syscall.emulate(engine)
        return None if vector is None else Stop(StopKind.EXCEPTION, vector=vector)

    def _timers_changed(self) -> None:
        if self._thread == _get_ident():  # from the guest's own WRMSR: end the slice after it
            self.tracker.reevaluate()
        self._wake()

    def _init(self, engine: Engine) -> None:
        """INIT: KVM's ``kvm_vcpu_reset(init_event)``; an application processor then waits for SIPI.

        As KVM, INIT keeps CR0.CD/NW and loads RDX with the CPU signature (CPUID.1:EAX) the VMM set.
        """
        cache_bits = engine.reg(engine.CR0) & _CR0_CD_NW
        engine.reset()
        sregs = engine.get_sregs(apic_base=self._state.apic_base, interrupt_bitmap=(0, 0, 0, 0), cr8=0)
        engine.set_sregs(replace(sregs, cr0=_CR0_ET | cache_bits))
        signature = next((e.eax for e in self._state.cpuid if e.function == 1), _RESET_RDX)
        engine.set_reg(engine.RDX, signature)
        self._queued_interrupt = None
        self._nmi_pending = 0
        self._smi_pending = False  # kvm_vcpu_reset; SMBASE stays (INIT is latched in SMM, so the vCPU is not in it)
        self.msrs.smi_count = 0
        self._exception = replace(self._exception, injected=False)
        self._mp_state = MpState.RUNNABLE if self._id == 0 else MpState.INIT_RECEIVED

    def _start_at(self, engine: Engine, vector: int) -> None:
        """SIPI: real mode at ``vector << 12`` (CS = vector << 8, IP = 0)."""
        sregs = engine.get_sregs(apic_base=self._state.apic_base, interrupt_bitmap=(0, 0, 0, 0), cr8=self._cr8)
        engine.set_sregs(replace(sregs, cs=replace(sregs.cs, selector=vector << 8, base=vector << 12)))
        engine.set_reg(engine.RIP, 0)
        self._mp_state = MpState.RUNNABLE

    def _wakeable(self, chip: Irqchip) -> bool:
        """Whether what is pending ends this vCPU's sleep (call with ``chip.lock`` held)."""
        lapic = self._lapic
        assert lapic is not None and self._engine is not None
        if (lapic.init_pending and not self._smm) or lapic.nmi_pending or lapic.smi_pending:
            return True
        state = self._mp_state
        if self._smi_pending and not self._smm and state is MpState.HALTED:
            return True
        if state is MpState.INIT_RECEIVED:
            return lapic.sipi_vector is not None
        if state is MpState.HALTED:
            engine = self._engine
            if lapic.pv_unhalted:  # a paravirtual kick (KVM_HC_KICK_CPU) ends HLT whatever IF says
                return True
            return bool(engine.reg(engine.RFLAGS) & RFLAGS_IF) and chip.has_interrupt(self._id)
        return state is MpState.RUNNABLE

    def _unhalt(self) -> None:
        """Leave HLT: runnable again, and a paravirtual kick is used up (KVM's ``vcpu_block``; ``chip.lock`` held)."""
        self._mp_state = MpState.RUNNABLE
        if self._lapic is not None:
            self._lapic.pv_unhalted = False

    def _sleep(self, chip: Irqchip) -> bool:
        """Wait, outside the execution lock, until this vCPU can run again; True if a kick ended the wait."""
        clock, vm = chip.clock, self._vm
        with chip.changed:
            vm.sleeping.add(self._id)
            try:
                while True:
                    if self._kicked or self._immediate_exit:
                        self._consume_kick()
                        return True
                    if self._wakeable(chip):
                        if self._mp_state is MpState.HALTED:
                            self._unhalt()
                        return False
                    deadline = chip.deadline()
                    now = clock.now()
                    if deadline is not None and deadline <= now:
                        chip.advance()
                        continue
                    if clock.virtual and deadline is not None and vm.all_asleep():
                        clock.idle_until(deadline)  # nobody runs: virtual time skips to the next timer
                        continue
                    timeout = _IDLE_POLL if deadline is None or clock.virtual else (deadline - now) / 1e9
                    chip.changed.wait(min(timeout, _IDLE_POLL))
            finally:
                vm.sleeping.discard(self._id)

    def _step_exit(self, engine: Engine) -> DebugExit:
        dr7 = self.tracker.breakpoints.settings.dr7  # under USE_HW_BP KVM runs the guest with debugreg[7]
        pc = engine.code_address(engine.reg(engine.RIP))
        return DebugExit(exception=1, pc=pc, dr6=0xFFFF4FF0, dr7=self._state.debugregs.dr7 if dr7 is None else dr7)

    def _handle(self, engine: Engine, stop: Stop) -> Exit | None:
        kind = stop.kind
        if kind is StopKind.SLICE:
            return None
        if kind is StopKind.EXIT:
            return stop.exit
        if kind is StopKind.HLT:
            if self._lapic is not None:  # with an irqchip, HLT sleeps in run() until an interrupt
                self._mp_state = MpState.HALTED
                return None
            return _HLT
        if kind is StopKind.EXCEPTION:
            if stop.vector == _UD and stop.event_kind == "exception":
                if self._smm and self._at_rsm(engine):
                    return None if self._rsm(engine) else _SHUTDOWN
                outcome = hypercall.emulate(engine, self.tracker.guest, self._state.cpuid)
                if outcome is not None:
                    return self._after_hypercall(engine, outcome)
            if not self._vm.deliver(
                self, engine, stop.vector, stop.event_kind, stop.error_code, stop.instruction_length, cr2=stop.cr2
            ):
                return _SHUTDOWN
            return None
        if kind is StopKind.FETCH_FAULT:
            return InternalErrorExit(suberror=1, data=(0,))
        raise AssertionError(f"unhandled stop {stop!r}")

    def _after_hypercall(self, engine: Engine, outcome: hypercall.Fault | hypercall.Done | MmioExit) -> Exit | None:
        """What a VMCALL / VMMCALL came to (:mod:`hvcore_sim.hypercall`): an exception, an MMIO exit, or done.

        Done with RFLAGS.TF set is followed by the single-step #DB that KVM queues
        (``kvm_vcpu_do_singlestep``); when the VMM single-steps, the run loop reports the step instead.
        """
        if isinstance(outcome, MmioExit):
            return outcome
        if isinstance(outcome, hypercall.Fault):
            delivered = self._vm.deliver(self, engine, outcome.vector, "exception", outcome.error_code, cr2=outcome.cr2)
            return None if delivered else _SHUTDOWN
        if outcome.single_step and not self._stepping:
            dr6 = engine.reg(engine.DR6)
            engine.set_reg(engine.DR6, ((dr6 & ~_DR6_TRAPS) | _DR6_ACTIVE_LOW | _DR6_BS) & ~_DR6_BIT12)
            if not self._vm.deliver(self, engine, 1, "exception", None):
                return _SHUTDOWN
        return None

    def _save_after_run(self) -> None:
        """Snapshot what KVM's ``post_kvm_run_save`` puts in ``kvm_run`` as the run returns.

        With an in-kernel irqchip KVM reports ready_for_interrupt_injection = 1 (userspace injects
        nothing then); without one, IF=1, no STI / MOV SS shadow and no interrupt queued.
        """
        cells = self._cells
        if cells is not None:
            if_flag = cells.interrupts_enabled()
        else:
            engine = self._engine
            assert engine is not None
            if_flag = bool(engine.reg(engine.RFLAGS) & RFLAGS_IF)
        self._if_snapshot = if_flag
        self._ready_snapshot = self._vm.irqchip is not None or (if_flag and self._unblocked())

    def _deliver_injected_exception(self, engine: Engine) -> bool:
        """Deliver the exception ``set_vcpu_events`` injected, before any guest instruction (False on a triple fault).

        As ``kvm_check_and_inject_events``: the exception goes first, with the error code the VMM
        gave (pushed outside real mode) and RFLAGS as they are. An interrupt queued beside it is
        lost: KVM does not inject it on that entry, and the exit that follows clears it
        (``kvm_clear_interrupt_queue`` in ``vmx/svm_complete_interrupts``). A pending NMI lands on
        top, at the handler's first instruction, as after KVM's immediate exit.
        """
        queued = self._exception
        self._exception = replace(queued, injected=False)
        self._queued_interrupt = None
        return self._vm.deliver(self, engine, queued.vector, "exception", queued.error_code_pushed, injected=True)

    def _queue_interrupt(self, vector: int) -> None:
        """Queue ``vector`` for delivery on the next entry (``kvm_queue_interrupt``)."""
        self._queued_interrupt = self._interrupt_nr = vector

    def _process_nmi(self, engine: Engine) -> None:
        """Drop the NMIs beyond what may be pending (``process_nmi``: two, one while NMIs are blocked)."""
        if self._nmi_pending > 1:  # one is never too many: no need to read the blocking state
            self._nmi_pending = min(self._nmi_pending, nmi_limit(blocked=engine.nmi_blocked))

    def _deliver_debug_exception(self, engine: Engine) -> bool:
        """Deliver what INJECT_DB / INJECT_BP queued (False on a triple fault).

        #DB as a trap (return address RIP, RF not set); #BP as KVM's VMX code injects a software
        exception, with the instruction length of the last #BP / #DB exit (:mod:`hvcore_sim.guestdebug`).
        """
        vector, self._debug_exception = self._debug_exception, None
        if vector == 1:
            return self._vm.deliver(self, engine, 1, "exception", None)
        length = self._event_length
        engine.set_reg(engine.RIP, engine.reg(engine.RIP) + length)
        return self._vm.deliver(self, engine, 3, "software_exception", None, length)

    def _ready(self, engine: Engine) -> bool:
        return bool(engine.reg(engine.RFLAGS) & RFLAGS_IF) and self._unblocked()

    def _unblocked(self) -> bool:
        """No interrupt queued and no STI / MOV SS shadow (IF aside)."""
        if self._queued_interrupt is not None:
            return False
        cells = self._cells
        if cells is not None:
            return not cells.interrupt_shadow()
        engine = self._engine
        return engine is not None and not engine.interrupt_shadow

    def _nmi_allowed(self, engine: Engine) -> bool:
        """An NMI can be delivered now: NMIs are not blocked (since the last NMI's IRET) and no STI / MOV SS shadow."""
        return not engine.nmi_blocked and not engine.interrupt_shadow

    def _nmi_window(self, engine: Engine) -> bool:
        """For a pending NMI that NMI blocking holds back: let QEMU stop at the IRET that ends it (False: step)."""
        return engine.nmi_blocked and engine.open_window(REQUEST_NMI)

    def _inject(self, engine: Engine) -> Exit | None:
        """Deliver the queued interrupt (even with IF=0), then a pending NMI if NMIs are not blocked, as KVM.

        The interrupt is one KVM already injects (``KVM_INTERRUPT``, or taken from the irqchip), so
        it goes first; an NMI then lands on top of it, where KVM's NMI window would. Delivering an
        NMI blocks NMIs until the next IRET.
        """
        vector = self._queued_interrupt
        if vector is not None:
            self._queued_interrupt = None
            if not self._vm.deliver(self, engine, vector, "external", None):
                return _SHUTDOWN
        if self._nmi_pending and self._nmi_allowed(engine):
            self._nmi_pending -= 1
            if not self._vm.deliver(self, engine, 2, "nmi", None):
                return _SHUTDOWN
            engine.nmi_blocked = True
        return None

    def complete(self, data: bytes | int) -> None:
        """Answer the pending IN or MMIO read."""
        if self._closed:
            raise ClosedError(f"vCPU {self._id} is closed", operation="complete")
        self.tracker.complete(data)

    def kick(self) -> None:
        """Make the current or next ``run()`` return ``InterruptedExit`` (checked between slices).

        As on KVM, kicks coalesce: while one is pending another adds nothing (the first one
        wakes a sleeping vCPU), so a kicker in a tight loop never holds up the run.
        """
        if self._kicked:
            return
        with self._kick_lock:
            if not self._closed:
                self._kicked = True
        self._wake()

    def _wake(self) -> None:
        chip = self._vm.irqchip
        if chip is not None:  # a vCPU asleep in HLT or waiting for SIPI looks at its kick flag
            with chip.changed:
                chip.changed.notify_all()

    @property
    def immediate_exit(self) -> bool:
        """KVM's ``immediate_exit``: the next ``run()`` returns ``InterruptedExit`` at once."""
        self._live()
        return self._immediate_exit or self._kicked

    @immediate_exit.setter
    def immediate_exit(self, value: bool) -> None:
        value = check_flag("immediate_exit", value, "immediate_exit")
        self._live()
        with self._kick_lock:
            self._immediate_exit = bool(value)
            if not value:
                self._kicked = False

    @property
    def request_interrupt_window(self) -> bool:
        """When set, ``run()`` returns ``IrqWindowOpenExit`` once the guest can take an interrupt."""
        self._live()
        return self._request_window

    @request_interrupt_window.setter
    def request_interrupt_window(self, value: bool) -> None:
        value = check_flag("request_interrupt_window", value, "request_interrupt_window")
        self._live()
        self._request_window = bool(value)

    @property
    def ready_for_interrupt_injection(self) -> bool:
        """As the last ``run()`` returned: 1 with an irqchip, else IF=1, no STI/MOV SS shadow, none queued."""
        self._live()
        return self._ready_snapshot

    @property
    def if_flag(self) -> bool:
        """The guest's RFLAGS.IF as the last ``run()`` returned."""
        self._live()
        return self._if_snapshot

    @property
    def cr8(self) -> int:
        """CR8 (task priority)."""
        self._live()
        return self._task_priority()

    @cr8.setter
    def cr8(self, value: int) -> None:
        check_int("cr8", value, "cr8")
        self._live()
        if not 0 <= value < 16:
            raise InvalidArgument(f"CR8 is a 4-bit task priority; {value} is out of range", operation="cr8")
        self._set_task_priority(value)

    @property
    def apic_base(self) -> int:
        """IA32_APIC_BASE."""
        self._live()
        return self._state.apic_base

    # -- state ---------------------------------------------------------------------

    @_between_runs
    def get_regs(self) -> Regs:
        """General-purpose registers, RIP, RFLAGS."""
        with self._vm.exec_lock:
            return self._live().get_regs()

    @_between_runs
    def set_regs(self, regs: Regs) -> None:
        """Set general-purpose registers, RIP, RFLAGS."""
        check_state_argument("regs", regs, Regs, "set_regs")
        with self._vm.exec_lock:
            self._live().set_regs(regs)
            self.tracker.watch_resume_flag = True  # RF may be set: it is for the next instruction

    @_between_runs
    def get_sregs(self) -> Sregs:
        """Segments, descriptor tables, control registers, EFER, APIC base."""
        bitmap = [0, 0, 0, 0]
        if self._queued_interrupt is not None:
            bitmap[self._queued_interrupt // 64] = 1 << (self._queued_interrupt % 64)
        with self._vm.exec_lock:
            return self._live().get_sregs(
                apic_base=self._state.apic_base,
                interrupt_bitmap=(bitmap[0], bitmap[1], bitmap[2], bitmap[3]),
                cr8=self._task_priority(),
            )

    @_between_runs
    def set_sregs(self, sregs: Sregs) -> None:
        """Load segments, descriptor tables, control registers, EFER; a new APIC base as the host's WRMSR."""
        check_state_argument("sregs", sregs, Sregs, "set_sregs")
        validity.check_sregs(sregs, self._state.cpuid, self.msrs.maxphyaddr)
        apic_base = sregs.apic_base
        with self._vm.exec_lock:
            engine = self._live()
            changed = apic_base and apic_base != self._state.apic_base
            if changed and not self.msrs.handler.write(IA32_APIC_BASE, apic_base, host=True):  # kvm_apic_set_base
                raise InvalidArgument(
                    f"apic_base {apic_base:#x} sets reserved bits or x2APIC without the APIC", operation="set_sregs"
                )
            engine.set_sregs(sregs)
        self._set_task_priority(sregs.cr8 & 0xF)
        pending = [i * 64 + b for i, w in enumerate(sregs.interrupt_bitmap) for b in range(64) if w >> b & 1]
        if pending:  # as KVM's __set_sregs: an empty bitmap keeps what is queued
            self._queue_interrupt(pending[0])

    @_between_runs
    def get_fpu(self) -> Fpu:
        """x87/SSE state; ``mxcsr`` reads 0, as KVM_GET_FPU never fills it in (MXCSR is in ``get_xsave``)."""
        with self._vm.exec_lock:
            return replace(self._state.get_fpu(self._live()), mxcsr=0)

    @_between_runs
    def set_fpu(self, fpu: Fpu) -> None:
        """Set x87/SSE state but MXCSR, which KVM_SET_FPU leaves as it is (``set_xsave`` sets it)."""
        check_state_argument("fpu", fpu, Fpu, "set_fpu")
        with self._vm.exec_lock:
            engine = self._live()
            self._state.set_fpu(engine, replace(fpu, mxcsr=self._state.get_fpu(engine).mxcsr))

    @_between_runs
    def get_xsave(self) -> Xsave:
        """The XSAVE area (legacy region and header)."""
        with self._vm.exec_lock:
            return self._state.get_xsave(self._live())

    @_between_runs
    def set_xsave(self, xsave: Xsave) -> None:
        """Set the XSAVE area."""
        check_state_argument("xsave", xsave, Xsave, "set_xsave")
        with self._vm.exec_lock:
            self._state.set_xsave(self._live(), xsave)

    @_between_runs
    def get_xcrs(self) -> dict[int, int]:
        """XCR0."""
        with self._vm.exec_lock:
            return {0: self._live().xcr0()}

    @_between_runs
    def set_xcrs(self, xcrs: Mapping[int, int]) -> None:
        """Set XCR0, with KVM's checks against the vCPU's CPUID; other XCRs are ignored, as KVM."""
        items = check_xcrs(xcrs)
        with self._vm.exec_lock:
            self._state.set_xcrs(self._live(), dict(items))

    @_between_runs
    def get_msrs(self, indices: Iterable[int]) -> dict[int, int]:
        """Read MSRs (``hvcore_sim.msrs.MSRS``), as KVM_GET_MSRS."""
        wanted = check_int_list("indices", indices, "get_msrs")
        with self._vm.exec_lock:
            return self.msrs.get_msrs(self._live(), wanted)

    @_between_runs
    def set_msrs(self, msrs: Mapping[int, int]) -> None:
        """Write MSRs with KVM's checks, as KVM_SET_MSRS."""
        items = check_int_mapping("msrs", msrs, "set_msrs")
        with self._vm.exec_lock:
            self.msrs.set_msrs(self._live(), dict(items))

    @_between_runs
    def set_cpuid(self, entries: Iterable[CpuidEntry]) -> None:
        """What CPUID returns to the guest."""
        wanted = check_instances("entries", entries, (CpuidEntry,), "set_cpuid")
        with self._vm.exec_lock:
            self._state.set_cpuid(self._live(), wanted, has_run=self._has_run)

    @_between_runs
    def get_cpuid(self) -> tuple[CpuidEntry, ...]:
        """What CPUID returns to the guest (the bits KVM keeps in step with CR4, XCR0 and the APIC base, current)."""
        with self._vm.exec_lock:
            return self._state.current_cpuid(self._live())

    def _chip_lapic(self, operation: str) -> tuple[Irqchip, LocalApic]:
        self._live()
        chip = self._vm.irqchip
        if chip is None or self._lapic is None:
            raise InvalidArgument(_NO_LAPIC, operation=operation)  # KVM: EINVAL
        return chip, self._lapic

    @_between_runs
    def get_lapic(self) -> Lapic:
        """The LAPIC register page (``KVM_GET_LAPIC``); EINVAL without an irqchip, as KVM."""
        chip, lapic = self._chip_lapic("get_lapic")
        with chip.lock:
            return lapic.get_state()

    @_between_runs
    def set_lapic(self, lapic: Lapic) -> None:
        """Load the LAPIC register page (``KVM_SET_LAPIC``); EINVAL without an irqchip, as KVM."""
        check_state_argument("lapic", lapic, Lapic, "set_lapic")
        chip, local = self._chip_lapic("set_lapic")
        with chip.changed:
            local.set_state(lapic)
            chip.changed.notify_all()

    @_between_runs
    def get_debugregs(self) -> DebugRegs:
        """DR0-3, DR6, DR7."""
        self._live()
        return self._state.debugregs

    @_between_runs
    def set_debugregs(self, debugregs: DebugRegs) -> None:
        """Set DR0-3, DR6, DR7."""
        check_state_argument("debugregs", debugregs, DebugRegs, "set_debugregs")
        validity.check_debugregs(debugregs)
        self._live()
        self._state.debugregs = debugregs

    @_between_runs
    def get_vcpu_events(self) -> VcpuEvents:
        """Queued exception and interrupt, pending NMIs, NMI blocking, interrupt shadow (:mod:`hvcore_sim.queued`).

        ``interrupt_nr`` is the last vector queued, kept after its delivery, as KVM's ``interrupt.nr``.
        """
        with self._vm.exec_lock:
            engine = self._live()
            shadow, nmi_masked = int(engine.interrupt_shadow), int(engine.nmi_blocked)
            self._process_nmi(engine)
        chip, lapic = self._vm.irqchip, self._lapic
        latched_init = 0
        if chip is not None and lapic is not None:
            with chip.lock:
                latched_init = int(lapic.init_pending)
        queued, exception = self._queued_interrupt, self._exception
        waiting = exception.injected or self._debug_exception is not None  # KVM folds pending into injected
        return VcpuEvents(
            exception_injected=int(waiting and exception.vector not in SOFTWARE_EXCEPTIONS),
            exception_nr=exception.vector,
            exception_has_error_code=int(exception.has_error_code),
            exception_error_code=exception.error_code,
            interrupt_injected=int(queued is not None),
            interrupt_nr=self._interrupt_nr,
            interrupt_shadow=shadow,
            nmi_pending=self._nmi_pending,
            nmi_masked=nmi_masked,
            flags=0xD,
            smi_smm=int(self._smm),
            smi_pending=int(self._smi_pending),
            smi_inside_nmi=int(self._smm_inside_nmi),
            smi_latched_init=latched_init,
        )

    @_between_runs
    def set_vcpu_events(self, events: VcpuEvents) -> None:
        """Set the queued exception and interrupt, NMI blocking and, as ``flags`` says, the shadow and pending NMIs.

        An injected exception is delivered first on the next run (:mod:`hvcore_sim.queued`); it
        replaces an exception ``set_guest_debug`` queued. ``exception_pending`` means nothing
        without ``KVM_CAP_EXCEPTION_PAYLOAD``, as on KVM.
        """
        check_state_argument("events", events, VcpuEvents, "set_vcpu_events")
        validity.check_vcpu_events(events)
        smm_part = bool(events.flags & _VALID_SMM)
        if smm_part and (events.smi_smm or events.smi_pending) and self._mp_state is MpState.INIT_RECEIVED:
            raise InvalidArgument(
                "smi_smm / smi_pending on a vCPU waiting for SIPI (INIT_RECEIVED): KVM latches INIT in SMM, "
                "so the two cannot be; set the MP state first",
                operation="set_vcpu_events",
            )
        with self._vm.exec_lock:
            engine = self._live()
            if events.flags & _VALID_SHADOW:
                engine.interrupt_shadow = bool(events.interrupt_shadow)
            engine.nmi_blocked = bool(events.nmi_masked)
            if smm_part:
                if bool(events.smi_smm) != self._smm:
                    self._switch_space(bool(events.smi_smm))
                self._smi_pending = bool(events.smi_pending)
                if events.smi_smm:
                    self._smm_inside_nmi = bool(events.smi_inside_nmi)
        chip, lapic = self._vm.irqchip, self._lapic
        if smm_part and chip is not None and lapic is not None:
            with chip.changed:
                lapic.init_pending = bool(events.smi_latched_init)
                chip.changed.notify_all()
        self._exception = QueuedException(
            events.exception_nr,
            bool(events.exception_has_error_code),
            events.exception_error_code,
            injected=bool(events.exception_injected),
        )
        self._debug_exception = None
        self._queued_interrupt = events.interrupt_nr if events.interrupt_injected else None
        self._interrupt_nr = events.interrupt_nr  # kept whether or not it is injected, as KVM
        if events.flags & _VALID_NMI_PENDING:
            self._nmi_pending = events.nmi_pending

    @_between_runs
    def get_mp_state(self) -> MpState:
        """RUNNABLE, HALTED, UNINITIALIZED or INIT_RECEIVED (always RUNNABLE without an irqchip).

        As KVM, a halted vCPU that a paravirtual kick will wake reads as RUNNABLE.
        """
        self._live()
        chip, lapic = self._vm.irqchip, self._lapic
        if self._mp_state is MpState.HALTED and chip is not None and lapic is not None:
            with chip.lock:
                if lapic.pv_unhalted:
                    return MpState.RUNNABLE
        return self._mp_state

    @_between_runs
    def set_mp_state(self, state_: MpState) -> None:
        """Set the MP state; without an irqchip only RUNNABLE is valid, as on KVM. RUNNABLE drops a pending kick."""
        value = check_enum("state", state_, MpState, "set_mp_state")
        self._live()
        if self._lapic is None and value is not MpState.RUNNABLE:
            raise InvalidArgument(
                f"{value.name} needs an in-kernel LAPIC; without an irqchip only RUNNABLE is valid",
                operation="set_mp_state",
            )
        if value not in _SETTABLE_MP_STATES:
            raise InvalidArgument(
                f"{value.name} is not an x86 MP state; use one of {', '.join(m.name for m in _SETTABLE_MP_STATES)}",
                operation="set_mp_state",
            )
        self._mp_state = MpState.INIT_RECEIVED if value is MpState.SIPI_RECEIVED else value
        chip, lapic = self._vm.irqchip, self._lapic
        if value is MpState.RUNNABLE and chip is not None and lapic is not None:
            with chip.lock:
                lapic.pv_unhalted = False  # as KVM's kvm_set_mp_state: a pending paravirtual kick is dropped
        self._wake()

    @_between_runs
    def interrupt(self, vector: int) -> None:
        """Queue external interrupt ``vector``; delivered on the next ``run()`` even with IF=0.

        With an irqchip, interrupts come from its lines: ENXIO, as KVM.
        """
        check_vector(vector, "interrupt")
        self._live()
        if self._lapic is not None:
            raise NotFound(
                "with an in-kernel irqchip, inject through vm.irq_line() or vm.signal_msi(), not interrupt()",
                errno=_errno.ENXIO,
                operation="interrupt",
            )
        self._queue_interrupt(vector)

    @_between_runs
    def nmi(self) -> None:
        """Queue an NMI (two may be pending, as on KVM; one while NMIs are blocked)."""
        self._live()
        self._nmi_pending += 1

    @_between_runs
    def set_guest_debug(self, debug: GuestDebug) -> None:
        """Single-step, hardware and software breakpoints, injected #DB / #BP (:mod:`hvcore_sim.guestdebug`).

        BLOCKIRQ and DR7.GD raise ``Unsupported``; an injection while one is queued: EBUSY, as KVM.
        """
        check_state_argument("debug", debug, GuestDebug, "set_guest_debug")
        self._live()
        settings = guestdebug.parse(debug)
        with self._vm.exec_lock:
            engine = self._live()
            if settings.inject is not None:
                if self._debug_exception is not None:
                    raise StateError(
                        f"vCPU {self._id} already has exception {self._debug_exception} queued for its next run",
                        errno=_errno.EBUSY,
                        operation="set_guest_debug",
                    )
                self._debug_exception = settings.inject
                self._exception = QueuedException(settings.inject)  # kvm_queue_exception
            self.tracker.breakpoints.configure(engine, settings)
            self._stepping = settings.singlestep

    @property
    def stepping(self) -> bool:
        """Single-stepping (``KVM_GUESTDBG_SINGLESTEP`` with ENABLE) is on."""
        return self._stepping

    @_between_runs
    def translate(self, linear_address: int) -> Translation:
        """Walk the guest's page tables."""
        check_int("linear_address", linear_address, "translate")
        if not 0 <= linear_address < 1 << 64:
            raise InvalidArgument(f"linear address {linear_address:#x} is not 64-bit", operation="translate")
        sregs = self.get_sregs()
        return self._vm.translate(sregs, linear_address, self.tracker.guest.physical)

    # -- lifetime ------------------------------------------------------------------

    def close(self) -> None:
        """Close the vCPU; a run in another thread is kicked and stops at its next slice boundary."""
        with self._kick_lock:
            if self._closed:
                return
            self._closed = True
            self._kicked = True
        self._wake()
        self._vm.wait_idle(self)
        self._engine = None
        self._vm._forget_vcpu(self._id, ParkedVcpu(tuple(self._state.cpuid), self._has_run))

    @property
    def running(self) -> bool:
        """True while a thread is inside ``run()``."""
        return self._thread is not None

    @property
    def running_elsewhere(self) -> bool:
        """True while a thread other than the caller's is inside ``run()``."""
        thread = self._thread
        return thread is not None and thread != _get_ident()

    def __repr__(self) -> str:
        return f"SimVCPU(id={self._id}{', closed' if self._closed else ''})"
