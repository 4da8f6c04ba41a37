"""``KvmVCPU``: a vCPU file descriptor and its mmapped ``kvm_run``."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import mmap
import os
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hvcore.arguments import check_enum, check_flag, check_int, check_int_list, check_int_mapping
from hvcore.checks import (
    check_cpuid,
    check_msr,
    check_vector,
    check_xcrs,
    completion_bytes,
    msr_refused,
    msr_unreadable,
)
from hvcore.errors import (
    ClosedError,
    ExitNotCompleted,
    HvError,
    InvalidArgument,
    StateError,
    Unsupported,
    VcpuBusy,
    error_for_errno,
)
from hvcore.exits import Exit
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
from hvcore_kvm import convert, ioctls, kick, kvm_run, uapi
from hvcore_kvm._sys import ioctl

if TYPE_CHECKING:
    from hvcore_kvm.vm import KvmVM

__all__ = ["KvmVCPU", "ResetState"]

_get_ident = threading.get_ident
_KVM_RUN = ioctls.KVM_RUN
_fcntl_ioctl = fcntl.ioctl
_IMMEDIATE_EXIT = kvm_run.IMMEDIATE_EXIT
_EXIT_REASON = kvm_run.EXIT_REASON
_EXIT_IO = kvm_run.EXIT_IO
_reason_io = kvm_run.REASON_IO
_out_exit = kvm_run.out_exit
_MAX_CPUID_ENTRIES = 256


def _release(fd: int, run: mmap.mmap) -> None:
    run.close()
    os.close(fd)


@dataclass(frozen=True)
class ResetState:
    """A vCPU's state as KVM created it: what a re-plugged vCPU is given back."""

    regs: Regs
    sregs: Sregs
    fpu: Fpu
    debugregs: DebugRegs
    events: VcpuEvents
    mp_state: MpState
    lapic: Lapic | None
    xcrs: dict[int, int] | None
    msrs: dict[int, int]


class KvmVCPU(Closeable):
    """A KVM vCPU. Create it with ``KvmVM.create_vcpu``; see :class:`hvcore.VCPU` for the contract."""

    def __init__(self, vm: KvmVM, vcpu_id: int, fd: int, mmap_size: int, run: mmap.mmap | None = None) -> None:
        if run is None:
            try:
                run = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            except OSError as exc:
                os.close(fd)
                raise error_for_errno(exc.errno or 0, "mmap(kvm_run)", f"vCPU {vcpu_id}") from exc
        self._vm = vm
        self._id = vcpu_id
        self._fd = fd
        self._run = run
        self._pending_exit: Exit | None = None  # an IN or MMIO read waiting for complete()
        self._answer_at = -1  # where in kvm_run its answer goes
        self._thread: int | None = None  # the thread inside KVM_RUN
        self._claim = threading.Lock()  # held by the thread inside run(): taken without waiting, or VcpuBusy
        self._kick_lock = threading.Lock()  # kick() against the end of a run; held for one signal at most
        self._closing = False
        self._kicked = False  # a kick() is pending (immediate_exit is set): later kicks add nothing
        self._signal_owed = False  # the pending kick's signal could not be queued: the next kick() retries
        self._smm = vm.smm
        self._finalizer = weakref.finalize(self, _release, fd, run)

    @property
    def id(self) -> int:
        """The vCPU id."""
        return self._id

    def _live(self) -> int:
        if self._fd < 0:
            raise ClosedError(f"vCPU {self._id} is closed", operation="vcpu")
        return self._fd

    # -- running -----------------------------------------------------------

    def run(self) -> Exit:
        """Enter the guest (``KVM_RUN``) and decode the exit."""
        if not self._claim.acquire(False):  # atomic: of two threads at once exactly one gets in
            raise VcpuBusy(f"vCPU {self._id} is already running in another thread", operation="run")
        try:
            if self._pending_exit is not None:
                raise ExitNotCompleted(
                    f"vCPU {self._id} still waits for the answer to {self._pending_exit!r}; call complete(data) first",
                    operation="run",
                )
            # Publish the thread, then look at _closing: close() sets _closing first and then waits
            # for _thread to be None, so one of the two always sees the other. The fast path takes
            # no kick lock (see kick() for why that is safe under the GIL's sequential ordering).
            self._thread = _get_ident()
            if self._closing:
                self._thread = None
                raise ClosedError(f"vCPU {self._id} is closed", operation="run")
            fd, run = self._fd, self._run
            while True:
                try:
                    _fcntl_ioctl(fd, _KVM_RUN, 0)
                    break
                except InterruptedError:
                    self._leave_run()
                    return kvm_run.INTERRUPTED
                except BlockingIOError:
                    # EAGAIN: a vCPU waiting for INIT/SIPI woke up for an event; KVM wants KVM_RUN again
                    if self._kicked or run[_IMMEDIATE_EXIT]:
                        self._leave_run()
                        return kvm_run.INTERRUPTED
                except OSError as exc:
                    self._leave_run()
                    raise error_for_errno(exc.errno or 0, "KVM_RUN", f"vCPU {self._id}") from exc
            # Decode while still claimed (close() waits for us). An OUT, the most frequent exit, is
            # decoded here: one unpack and a lookup of the shared exit value (kvm_run.out_exit).
            reason, direction, size, port, count, data_offset = _reason_io(run, _EXIT_REASON)
            if reason == _EXIT_IO and direction:
                out = _out_exit(run, size, port, count, data_offset)
                self._thread = None
                if self._kicked:  # a kick that raced with this exit is consumed by it
                    self._leave_run()
                return out
            exit_, answer_at = kvm_run.decode_exit(run)
            self._thread = None
            if self._kicked:
                self._leave_run()
            if answer_at >= 0:
                self._pending_exit = exit_
                self._answer_at = answer_at
            return exit_
        finally:
            self._claim.release()

    def _leave_run(self) -> None:
        with self._kick_lock:  # waits at most for one kick() to finish sending its signal
            self._thread = None
            self._kicked = False
            self._signal_owed = False
            if self._fd >= 0:  # close() may have unmapped kvm_run once _thread was None
                self._run[_IMMEDIATE_EXIT] = 0

    def complete(self, data: bytes | int) -> None:
        """Answer the pending IN (``size * count`` bytes) or MMIO read (``length`` bytes)."""
        self._live()
        answer = completion_bytes(self._id, self._pending_exit, data)
        self._run[self._answer_at : self._answer_at + len(answer)] = answer
        self._pending_exit = None

    def kick(self) -> None:
        """Make the current or next ``run()`` return ``InterruptedExit``; callable from any thread.

        Sets ``_kicked`` and ``immediate_exit`` before looking at ``_thread``, while ``run()``
        clears ``_thread`` before looking at ``_kicked``: whichever order the two threads run
        in, a kick is either seen by the returning ``run()`` (and consumed by it) or left in
        ``immediate_exit`` for the next one; it is never lost and never outlives the run it hit.

        Kicks coalesce: while one is pending (until the run it hit returns), another adds
        nothing and takes no lock, so a kicker in a tight loop sends one signal per run and
        never holds up the vCPU thread. A signal the kernel would not queue (EAGAIN) is sent
        again by the next kick; ``immediate_exit`` is set either way.
        """
        if self._kicked and not self._signal_owed:
            return
        with self._kick_lock:
            if self._fd < 0:
                return
            self._kicked = True
            self._run[_IMMEDIATE_EXIT] = 1
            running = self._thread
            self._signal_owed = running is not None and running != _get_ident() and not kick.send_kick(running)

    # -- kvm_run fields ----------------------------------------------------

    @property
    def immediate_exit(self) -> bool:
        """``kvm_run.immediate_exit``."""
        self._live()
        return bool(self._run[kvm_run.IMMEDIATE_EXIT])

    @immediate_exit.setter
    def immediate_exit(self, value: bool) -> None:
        value = check_flag("immediate_exit", value, "immediate_exit")
        self._live()
        with self._kick_lock:
            self._run[kvm_run.IMMEDIATE_EXIT] = int(bool(value))
            if not value:  # clearing it withdraws a pending kick too, so the next kick() is not coalesced away
                self._kicked = self._signal_owed = False

    @property
    def request_interrupt_window(self) -> bool:
        """``kvm_run.request_interrupt_window``."""
        self._live()
        return bool(self._run[kvm_run.REQUEST_INTERRUPT_WINDOW])

    @request_interrupt_window.setter
    def request_interrupt_window(self, value: bool) -> None:
        value = check_flag("request_interrupt_window", value, "request_interrupt_window")
        self._live()
        self._run[kvm_run.REQUEST_INTERRUPT_WINDOW] = int(bool(value))

    @property
    def ready_for_interrupt_injection(self) -> bool:
        """``kvm_run.ready_for_interrupt_injection``."""
        self._live()
        return bool(self._run[kvm_run.READY_FOR_INJECTION])

    @property
    def if_flag(self) -> bool:
        """``kvm_run.if_flag``."""
        self._live()
        return bool(self._run[kvm_run.IF_FLAG])

    @property
    def cr8(self) -> int:
        """``kvm_run.cr8``."""
        self._live()
        return int.from_bytes(self._run[kvm_run.CR8 : kvm_run.CR8 + 8], "little")

    @cr8.setter
    def cr8(self, value: int) -> None:
        check_int("cr8", value, "cr8")
        self._live()
        if not 0 <= value < 16:
            raise InvalidArgument(f"CR8 is a 4-bit task priority; {value} is out of range", operation="cr8")
        self._run[kvm_run.CR8 : kvm_run.CR8 + 8] = value.to_bytes(8, "little")

    @property
    def apic_base(self) -> int:
        """``kvm_run.apic_base``."""
        self._live()
        return int.from_bytes(self._run[kvm_run.APIC_BASE : kvm_run.APIC_BASE + 8], "little")

    # -- register state ----------------------------------------------------

    def _get(self, request: int, raw: ctypes.Structure) -> None:
        ioctl(self._live(), request, raw, f"vCPU {self._id}")

    def get_regs(self) -> Regs:
        """``KVM_GET_REGS``."""
        raw = uapi.KvmRegs()
        self._get(ioctls.KVM_GET_REGS, raw)
        return convert.regs_from_kvm(raw)

    def set_regs(self, regs: Regs) -> None:
        """``KVM_SET_REGS``."""
        check_state_argument("regs", regs, Regs, "set_regs")
        self._get(ioctls.KVM_SET_REGS, convert.regs_to_kvm(regs))

    def get_sregs(self) -> Sregs:
        """``KVM_GET_SREGS``."""
        raw = uapi.KvmSregs()
        self._get(ioctls.KVM_GET_SREGS, raw)
        return convert.sregs_from_kvm(raw)

    def set_sregs(self, sregs: Sregs) -> None:
        """``KVM_SET_SREGS``."""
        check_state_argument("sregs", sregs, Sregs, "set_sregs")
        self._get(ioctls.KVM_SET_SREGS, convert.sregs_to_kvm(sregs))

    def get_fpu(self) -> Fpu:
        """``KVM_GET_FPU``."""
        raw = uapi.KvmFpu()
        self._get(ioctls.KVM_GET_FPU, raw)
        return convert.fpu_from_kvm(raw)

    def set_fpu(self, fpu: Fpu) -> None:
        """``KVM_SET_FPU``."""
        check_state_argument("fpu", fpu, Fpu, "set_fpu")
        self._get(ioctls.KVM_SET_FPU, convert.fpu_to_kvm(fpu))

    def get_xsave(self) -> Xsave:
        """``KVM_GET_XSAVE``."""
        raw = uapi.KvmXsave()
        self._get(ioctls.KVM_GET_XSAVE, raw)
        return convert.xsave_from_kvm(raw)

    def set_xsave(self, xsave: Xsave) -> None:
        """``KVM_SET_XSAVE``."""
        check_state_argument("xsave", xsave, Xsave, "set_xsave")
        self._get(ioctls.KVM_SET_XSAVE, convert.xsave_to_kvm(xsave))

    def get_xcrs(self) -> dict[int, int]:
        """``KVM_GET_XCRS``."""
        raw = uapi.KvmXcrs()
        self._get(ioctls.KVM_GET_XCRS, raw)
        return {raw.xcrs[i].xcr: raw.xcrs[i].value for i in range(raw.nr_xcrs)}

    def set_xcrs(self, xcrs: Mapping[int, int]) -> None:
        """``KVM_SET_XCRS``."""
        items = check_xcrs(xcrs)
        raw = uapi.KvmXcrs()
        raw.nr_xcrs = len(items)
        for i, (index, value) in enumerate(items):
            raw.xcrs[i].xcr, raw.xcrs[i].value = index, value
        self._get(ioctls.KVM_SET_XCRS, raw)

    def get_msrs(self, indices: Iterable[int]) -> dict[int, int]:
        """``KVM_GET_MSRS``; an MSR KVM does not know raises InvalidArgument naming it."""
        wanted = check_int_list("indices", indices, "get_msrs")
        for index in wanted:
            check_msr(index)
        raw = uapi.msrs_with(len(wanted))()
        raw.nmsrs = len(wanted)
        for i, index in enumerate(wanted):
            raw.entries[i].index = index
        done = ioctl(self._live(), ioctls.KVM_GET_MSRS, raw, f"vCPU {self._id}")
        if done < len(wanted):
            raise msr_unreadable(wanted[done])
        return {raw.entries[i].index: raw.entries[i].data for i in range(len(wanted))}

    def set_msrs(self, msrs: Mapping[int, int]) -> None:
        """``KVM_SET_MSRS``; stops at the first MSR refused and raises InvalidArgument naming it."""
        items = check_int_mapping("msrs", msrs, "set_msrs")
        for index, value in items:
            check_msr(index, value)
        raw = uapi.msrs_with(len(items))()
        raw.nmsrs = len(items)
        for i, (index, value) in enumerate(items):
            raw.entries[i].index, raw.entries[i].data = index, value
        done = ioctl(self._live(), ioctls.KVM_SET_MSRS, raw, f"vCPU {self._id}")
        if done < len(items):
            raise msr_refused(*items[done])

    def set_cpuid(self, entries: Iterable[CpuidEntry]) -> None:
        """``KVM_SET_CPUID2``."""
        wanted = check_cpuid(entries)
        raw = uapi.cpuid2_with(len(wanted))()
        raw.nent = len(wanted)
        for i, entry in enumerate(wanted):
            convert.cpuid_to_kvm(entry, raw.entries[i])
        self._get(ioctls.KVM_SET_CPUID2, raw)

    def get_cpuid(self) -> tuple[CpuidEntry, ...]:
        """``KVM_GET_CPUID2``."""
        raw = uapi.cpuid2_with(_MAX_CPUID_ENTRIES)()
        raw.nent = _MAX_CPUID_ENTRIES
        self._get(ioctls.KVM_GET_CPUID2, raw)
        return tuple(convert.cpuid_from_kvm(raw.entries[i]) for i in range(raw.nent))

    def get_lapic(self) -> Lapic:
        """``KVM_GET_LAPIC``."""
        raw = uapi.KvmLapicState()
        self._get(ioctls.KVM_GET_LAPIC, raw)
        return convert.lapic_from_kvm(raw)

    def set_lapic(self, lapic: Lapic) -> None:
        """``KVM_SET_LAPIC``."""
        check_state_argument("lapic", lapic, Lapic, "set_lapic")
        self._get(ioctls.KVM_SET_LAPIC, convert.lapic_to_kvm(lapic))

    def get_debugregs(self) -> DebugRegs:
        """``KVM_GET_DEBUGREGS``."""
        raw = uapi.KvmDebugregs()
        self._get(ioctls.KVM_GET_DEBUGREGS, raw)
        return convert.debugregs_from_kvm(raw)

    def set_debugregs(self, debugregs: DebugRegs) -> None:
        """``KVM_SET_DEBUGREGS``."""
        check_state_argument("debugregs", debugregs, DebugRegs, "set_debugregs")
        self._get(ioctls.KVM_SET_DEBUGREGS, convert.debugregs_to_kvm(debugregs))

    def get_vcpu_events(self) -> VcpuEvents:
        """``KVM_GET_VCPU_EVENTS``."""
        raw = uapi.KvmVcpuEvents()
        self._get(ioctls.KVM_GET_VCPU_EVENTS, raw)
        return convert.events_from_kvm(raw)

    def set_vcpu_events(self, events: VcpuEvents) -> None:
        """``KVM_SET_VCPU_EVENTS``."""
        check_state_argument("events", events, VcpuEvents, "set_vcpu_events")
        self._get(ioctls.KVM_SET_VCPU_EVENTS, convert.events_to_kvm(events))

    def get_mp_state(self) -> MpState:
        """``KVM_GET_MP_STATE``."""
        raw = uapi.KvmMpState()
        self._get(ioctls.KVM_GET_MP_STATE, raw)
        return MpState(raw.mp_state)

    def set_mp_state(self, state: MpState) -> None:
        """``KVM_SET_MP_STATE``."""
        value = check_enum("state", state, MpState, "set_mp_state")
        self._get(ioctls.KVM_SET_MP_STATE, uapi.KvmMpState(int(value)))

    def interrupt(self, vector: int) -> None:
        """``KVM_INTERRUPT``: queue external interrupt ``vector`` (no irqchip)."""
        check_vector(vector, "KVM_INTERRUPT")
        self._get(ioctls.KVM_INTERRUPT, uapi.KvmInterrupt(vector))

    def nmi(self) -> None:
        """``KVM_NMI``."""
        ioctl(self._live(), ioctls.KVM_NMI, 0, f"vCPU {self._id}")

    def smi(self) -> None:
        """``KVM_SMI``; ``Unsupported`` where the host's KVM has no SMM (``KVM_CAP_X86_SMM`` is 0)."""
        fd = self._live()
        if not self._smm:
            raise Unsupported(
                "this host's KVM has no SMM (KVM_CAP_X86_SMM is 0): it takes no SMI; use the simulator "
                "or a kernel built with CONFIG_KVM_SMM",
                operation="KVM_SMI",
            )
        ioctl(fd, ioctls.KVM_SMI, 0, f"vCPU {self._id}")

    @property
    def in_smm(self) -> bool:
        """``KVM_RUN_X86_SMM`` in ``kvm_run.flags``."""
        self._live()
        return bool(int.from_bytes(self._run[kvm_run.FLAGS : kvm_run.FLAGS + 2], "little") & uapi.KVM_RUN_X86_SMM)

    def set_guest_debug(self, debug: GuestDebug) -> None:
        """``KVM_SET_GUEST_DEBUG``."""
        check_state_argument("debug", debug, GuestDebug, "set_guest_debug")
        self._get(ioctls.KVM_SET_GUEST_DEBUG, convert.guest_debug_to_kvm(debug))

    def translate(self, linear_address: int) -> Translation:
        """``KVM_TRANSLATE``."""
        check_int("linear_address", linear_address, "translate")
        if not 0 <= linear_address < 1 << 64:
            raise InvalidArgument(f"linear address {linear_address:#x} is not 64-bit", operation="KVM_TRANSLATE")
        raw = uapi.KvmTranslation()
        raw.linear_address = linear_address
        self._get(ioctls.KVM_TRANSLATE, raw)
        return Translation(
            linear_address, raw.physical_address, bool(raw.valid), bool(raw.writeable), bool(raw.usermode)
        )

    # -- lifetime ----------------------------------------------------------

    def capture_reset_state(self, msr_indices: Iterable[int]) -> ResetState:
        """The state KVM created this vCPU in (before the VMM set anything), to give it back when re-plugged."""
        msrs: dict[int, int] = {}
        for index in msr_indices:  # one at a time: KVM_GET_MSRS stops at the first it does not know
            with contextlib.suppress(HvError):
                msrs.update(self.get_msrs([index]))
        lapic = None
        with contextlib.suppress(HvError):  # no irqchip, no LAPIC
            lapic = self.get_lapic()
        xcrs = None
        with contextlib.suppress(HvError):  # a host without XSAVE
            xcrs = self.get_xcrs()
        return ResetState(
            self.get_regs(), self.get_sregs(), self.get_fpu(), self.get_debugregs(), self.get_vcpu_events(),
            self.get_mp_state(), lapic, xcrs, msrs,
        )  # fmt: skip

    def restore_reset_state(self, state: ResetState) -> None:
        """Put the vCPU back in ``state`` (a re-plugged vCPU: KVM has no reset of its own)."""
        self.set_sregs(state.sregs)
        self.set_regs(state.regs)
        self.set_fpu(state.fpu)
        if state.xcrs is not None:
            self.set_xcrs(state.xcrs)
        self.set_debugregs(state.debugregs)
        for index, value in state.msrs.items():  # each on its own: some take only values the CPUID allows
            with contextlib.suppress(HvError):
                self.set_msrs({index: value})
        if state.lapic is not None:
            self.set_lapic(state.lapic)
        self.set_vcpu_events(state.events)
        self.set_mp_state(state.mp_state)

    def close(self) -> None:
        """Unplug the vCPU: the VM parks its fd and ``kvm_run`` (KVM keeps the vCPU until the VM goes),
        and ``create_vcpu`` of its id brings it back. A ``run()`` in another thread is kicked until it
        returns (up to 5 s); from then on ``run()`` raises ClosedError."""
        with self._kick_lock:
            if self._fd < 0:
                return
            self._closing = True
            fd = self._fd
        deadline = time.monotonic() + 5.0
        while True:
            with self._kick_lock:
                running = self._thread
                if running is None or running == _get_ident():
                    self._fd = -1
                    self._pending_exit = None
                    break
                self._run[_IMMEDIATE_EXIT] = 1
                kick.send_kick(running)
            if time.monotonic() > deadline:
                raise StateError(
                    f"vCPU {self._id} did not leave run() after 5 s of kicks; close it from its own thread"
                )
            time.sleep(0.001)
        self._finalizer.detach()  # the VM keeps the fd and kvm_run now (parked)
        self._vm._park(self._id, fd, self._run)

    def __repr__(self) -> str:
        return f"KvmVCPU(id={self._id}{', closed' if self._fd < 0 else ''})"
