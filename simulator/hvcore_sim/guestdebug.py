"""``KVM_SET_GUEST_DEBUG`` in the simulator: hardware breakpoints and watchpoints, ``int3`` exits, injected #DB.

What upstream KVM does (``kvm_arch_vcpu_ioctl_set_guest_debug`` and ``kvm_update_dr7`` in x86.c,
``handle_exception_nmi`` in vmx.c, ``db_interception`` / ``bp_interception`` in svm.c, the
selftest ``debug_regs.c``), and how the simulator gets the same exits out of Unicorn:

- **USE_HW_BP**: ``debugreg[0..3]`` are linear addresses, ``debugreg[7]`` enables them (L or G
  bit) and says what each one watches (R/W and LEN fields). KVM loads them into the debug
  registers while the guest runs and turns the #DB into a DEBUG exit: exception 1, ``pc`` the
  linear RIP, ``dr6`` = 0xffff0ff0 (DR6_ACTIVE_LOW) with B0-B3 of the breakpoints hit (and BS when
  single-stepping too), ``dr7`` = ``debugreg[7]``.

  - *execute* (R/W 00): fault-like, before the instruction runs; RIP stays at it, so running
    again hits it again. KVM does not set RF (the selftest moves RIP on itself); RFLAGS.RF set
    by the VMM (``set_regs``) or loaded by an IRET lets that one instruction run. A
    ``UC_HOOK_CODE`` over each breakpoint's address (code hooks see the linear address of the
    instruction) stops the run before the instruction.
  - *data write* (01) and *read or write* (11) of 1, 2, 4 or 8 bytes (LEN 00, 01, 11, 10; the
    address aligned down to the length, as the processor masks it): trap-like, after the access's
    instruction (after the iteration of a REP string instruction), ``pc`` the next RIP. Only
    guest accesses to slot memory: MMIO and port IO go through KVM's emulator, which checks no
    data breakpoints. Unicorn's memory hooks see guest-physical addresses, so each watched
    range is translated through the guest's page tables at the start of every run (a walk that
    sets no accessed bits) and a ``UC_HOOK_MEM_WRITE`` (or ``_READ | _WRITE``) hook covers it:
    a page-table change takes effect at the next run slice, and another linear alias of the
    same bytes triggers the watchpoint too.
  - *I/O* (10, with CR4.DE): never fires. KVM intercepts every port access and completes it
    without looking at DR7 (the VM exit drops the breakpoint the instruction would have raised).
  - *general detect* (DR7.GD) is refused with :class:`hvcore.Unsupported`.

- **USE_SW_BP**: ``int3`` exits with exception 3, ``pc`` its linear address, RIP left at it;
  nothing is delivered. KVM writes neither ``dr6`` nor ``dr7`` for this exit (``kvm_run`` keeps
  older bytes); the simulator reports 0 for both.
- **INJECT_DB / INJECT_BP** queue #DB / #BP for the next run (EBUSY while one is still queued),
  with or without ENABLE. #DB is a trap: the frame's return address is RIP, and RF is not set.
  #BP is injected as a software exception whose length is VMX's ``event_exit_inst_len``: that
  of the last #BP/#DB DEBUG exit (1 after an ``int3`` exit, 0 before any or after a #DB), so
  re-injecting an ``int3`` the VMM does not own returns past it. (SVM pushes the address past
  whatever instruction is at RIP instead.)
- **BLOCKIRQ** is refused with :class:`hvcore.Unsupported`; ``Capability.SET_GUEST_DEBUG2``
  lists the flags the simulator takes (:data:`SUPPORTED`).

Without USE_HW_BP no hook is installed, and guest debug costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Final

from hvcore.errors import Unsupported
from hvcore.exits import DebugExit
from hvcore.types import GuestDebug, GuestDebugFlags
from hvcore_sim import mmu

if TYPE_CHECKING:
    from hvcore_sim.engine import Engine

__all__ = [
    "DR6_ACTIVE_LOW",
    "DR6_BS",
    "KVM_VALID",
    "SUPPORTED",
    "Breakpoint",
    "Breakpoints",
    "Kind",
    "Settings",
    "parse",
]

DR6_ACTIVE_LOW: Final = 0xFFFF0FF0
"""DR6 with no condition reported: the bits that are 1 when clear (KVM's DR6_ACTIVE_LOW)."""
DR6_BS: Final = 1 << 14
"""DR6.BS: the #DB of a single step."""
_DR7_GD: Final = 1 << 13
_RF: Final = 1 << 16
_DB, _BP = 1, 3
_Flags = GuestDebugFlags
KVM_VALID: Final = (
    _Flags.ENABLE
    | _Flags.SINGLESTEP
    | _Flags.USE_SW_BP
    | _Flags.USE_HW_BP
    | _Flags.INJECT_DB
    | _Flags.INJECT_BP
    | _Flags.BLOCKIRQ
)
"""x86 KVM's ``KVM_GUESTDBG_VALID_MASK``: what ``KVM_CAP_SET_GUEST_DEBUG2`` reports. KVM ignores other bits."""
SUPPORTED: Final = KVM_VALID & ~_Flags.BLOCKIRQ
"""The flags the simulator carries out (its ``KVM_CAP_SET_GUEST_DEBUG2``)."""
_LENGTHS: Final = {0b00: 1, 0b01: 2, 0b11: 4, 0b10: 8}


class Kind(Enum):
    """What a hardware breakpoint watches (DR7's R/W field)."""

    EXECUTE = 0b00
    WRITE = 0b01
    IO = 0b10
    ACCESS = 0b11


@dataclass(frozen=True, slots=True)
class Breakpoint:
    """An enabled hardware breakpoint: DR``index``, its kind, and the linear bytes (or port) it covers."""

    index: int
    kind: Kind
    address: int
    length: int


@dataclass(frozen=True, slots=True)
class Settings:
    """What one ``set_guest_debug`` asked for, as the run loop uses it."""

    singlestep: bool = False
    software_breakpoints: bool = False
    breakpoints: tuple[Breakpoint, ...] = ()
    dr7: int | None = None
    """``debugreg[7]`` under USE_HW_BP: the DR7 KVM loads, and reports in #DB exits (else the guest's own)."""
    inject: int | None = None
    """The exception vector INJECT_DB (1) or INJECT_BP (3) queues, if any."""


def parse(debug: GuestDebug) -> Settings:
    """The settings for ``debug``; :class:`hvcore.Unsupported` for what the simulator cannot do (nothing changes)."""
    flags = int(debug.flags) & int(KVM_VALID)  # as KVM, bits outside its mask are ignored
    inject = _DB if flags & _Flags.INJECT_DB else _BP if flags & _Flags.INJECT_BP else None
    if not flags & _Flags.ENABLE:
        return Settings(inject=inject)  # KVM: without ENABLE, guest debug is off (an injection still queues)
    if flags & _Flags.BLOCKIRQ:
        raise Unsupported(
            "the simulator does not block interrupts while debugging (KVM_GUESTDBG_BLOCKIRQ); "
            "Capability.SET_GUEST_DEBUG2 lists the flags it takes",
            operation="set_guest_debug",
        )
    breakpoints: tuple[Breakpoint, ...] = ()
    dr7 = debug.debugreg[7]
    if flags & _Flags.USE_HW_BP:
        if dr7 & _DR7_GD:
            raise Unsupported(
                "the simulator has no general-detect breakpoints (DR7.GD, bit 13, in debugreg[7])",
                operation="set_guest_debug",
            )
        breakpoints = tuple(_decode(debug.debugreg, dr7))
    return Settings(
        singlestep=bool(flags & _Flags.SINGLESTEP),
        software_breakpoints=bool(flags & _Flags.USE_SW_BP),
        breakpoints=breakpoints,
        dr7=dr7 if flags & _Flags.USE_HW_BP else None,
        inject=inject,
    )


def _decode(debugreg: tuple[int, ...], dr7: int) -> list[Breakpoint]:
    found = []
    for index in range(4):
        if not dr7 >> (2 * index) & 3:  # neither L nor G
            continue
        field = dr7 >> (16 + 4 * index) & 0xF
        kind = Kind(field & 3)
        length = 1 if kind is Kind.EXECUTE else _LENGTHS[field >> 2]
        address = debugreg[index] & ~(length - 1) & ((1 << 64) - 1)
        found.append(Breakpoint(index, kind, address, length))
    return found


class Breakpoints:
    """One vCPU's guest-debug settings and the Unicorn hooks that carry out its hardware breakpoints.

    The tracker passes three callables: ``replaying()`` says whether the instruction running now
    completes an earlier exit (its breakpoints were checked when it first ran); ``halt(exit)`` ends
    the run before the current instruction with that DEBUG exit; ``end_after_instruction()`` ends
    the run once the current instruction completes.
    """

    def __init__(
        self,
        replaying: Callable[[], bool],
        halt: Callable[[DebugExit], None],
        end_after_instruction: Callable[[], None],
    ) -> None:
        self.settings = Settings()
        self.watching = False
        """Data watchpoints are set: each run calls :meth:`arm` first."""
        self.hits = 0
        """B0-B3 of the watchpoints the current run's last instruction hit."""
        self._replaying = replaying
        self._halt = halt
        self._end_after_instruction = end_after_instruction
        self._engine: Engine | None = None
        self._code_hooks: list[int] = []
        self._data_hooks: dict[tuple[int, int, bool], int] = {}  # (first, last, reads too) -> hook
        self._armed: tuple[tuple[Breakpoint, int], ...] = ()  # watchpoints mapped now: (breakpoint, physical)

    def configure(self, engine: Engine, settings: Settings) -> None:
        """Take new settings: drop the old hooks, add the new execute breakpoints' hooks."""
        hooked = bool(self._code_hooks)
        self._remove()
        self.settings = settings
        self.watching = any(bp.kind in (Kind.WRITE, Kind.ACCESS) for bp in settings.breakpoints)
        self.install(engine)
        if hooked or self._code_hooks:
            engine.uc.ctl_flush_tb()  # code translated before carries no call to a new hook (or one to an old)

    def install(self, engine: Engine) -> None:
        """Add the execute breakpoints' hooks to ``engine`` (a new engine: the old one's hooks went with it)."""
        import unicorn

        self._engine = engine
        self._code_hooks, self._data_hooks, self._armed = [], {}, ()
        bits: dict[int, int] = {}
        for bp in self.settings.breakpoints:
            if bp.kind is Kind.EXECUTE:
                bits[bp.address] = bits.get(bp.address, 0) | 1 << bp.index
        for address, hit in bits.items():
            hook = engine.uc.hook_add(unicorn.UC_HOOK_CODE, self._on_execute, hit, address, address)
            self._code_hooks.append(hook)

    def _remove(self) -> None:
        engine = self._engine
        if engine is not None:
            for hook in [*self._code_hooks, *self._data_hooks.values()]:
                engine.uc.hook_del(hook)
        self._code_hooks, self._data_hooks, self._armed = [], {}, ()

    def arm(self, engine: Engine, memory: mmu.PhysicalMemory, backed: Callable[[int], bool]) -> None:
        """Before a run: hook the guest-physical bytes each watchpoint's linear range maps to now.

        ``backed(physical)`` says whether slot memory is there (elsewhere accesses are MMIO, which KVM
        emulates without checking data breakpoints).
        """
        import unicorn

        self.hits = 0
        paging = engine.view().paging
        armed = []
        for bp in self.settings.breakpoints:
            if bp.kind not in (Kind.WRITE, Kind.ACCESS):
                continue
            physical = mmu.lookup(paging, bp.address, memory)
            if physical is not None and backed(physical):
                armed.append((bp, physical))
        wanted = {(max(0, p - 7), p + bp.length - 1, bp.kind is Kind.ACCESS) for bp, p in armed}  # 8-byte accesses
        if wanted != set(self._data_hooks):
            for key in set(self._data_hooks) - wanted:
                engine.uc.hook_del(self._data_hooks.pop(key))
            for key in wanted - set(self._data_hooks):
                first, last, reads = key
                kinds = unicorn.UC_HOOK_MEM_WRITE | (unicorn.UC_HOOK_MEM_READ if reads else 0)
                self._data_hooks[key] = engine.uc.hook_add(kinds, self._on_access, None, first, last)
            engine.uc.ctl_flush_tb()  # accesses translated before call no new hook
        self._armed = tuple(armed)

    def _on_execute(self, uc: Any, address: int, size: int, hit: int) -> None:
        engine = self._engine
        assert engine is not None
        if engine.reg(engine.RFLAGS) & _RF or self._replaying():
            return  # RF: this instruction runs once without its breakpoint
        self._halt(DebugExit(exception=_DB, pc=address, dr6=DR6_ACTIVE_LOW | hit, dr7=self.settings.dr7 or 0))

    def _on_access(self, uc: Any, access: int, address: int, size: int, value: int, _: object) -> None:
        import unicorn

        write = access == unicorn.UC_MEM_WRITE
        hit = 0
        for bp, physical in self._armed:
            if address < physical + bp.length and physical < address + size and (write or bp.kind is Kind.ACCESS):
                hit |= 1 << bp.index
        if hit and not self._replaying():
            self.hits |= hit
            self._end_after_instruction()

    def watch_exit(self, engine: Engine, hits: int, *, stepping: bool) -> DebugExit:
        """The DEBUG exit of watchpoints ``hits`` after their instruction (RIP is the next one)."""
        dr6 = DR6_ACTIVE_LOW | hits | (DR6_BS if stepping else 0)
        pc = engine.code_address(engine.reg(engine.RIP))
        return DebugExit(exception=_DB, pc=pc, dr6=dr6, dr7=self.settings.dr7 or 0)

    @staticmethod
    def breakpoint_exit(pc: int) -> DebugExit:
        """The DEBUG exit of an ``int3`` at linear ``pc`` under USE_SW_BP (dr6 and dr7: KVM leaves them unset)."""
        return DebugExit(exception=_BP, pc=pc, dr6=0, dr7=0)
