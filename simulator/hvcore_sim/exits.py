"""Hook callbacks -> KVM exits, with KVM's instruction-level rules.

- **OUT**: the hook sees the value; one exit per element for ``rep outs``. A plain OUT is
  completed the way upstream KVM's fast path does it (``kvm_fast_pio_out``): at the exit RIP is
  still at the OUT, with the STI / MOV SS shadow it ran under, and the next ``run()`` moves RIP
  past it (``complete_fast_pio_out``) if the VMM left RIP there. Port 0x7E keeps the old order
  (RIP past it at the exit: KVM_X86_QUIRK_OUT_7E_INC_RIP, on by default); string OUTs go
  through KVM's emulator, which completes them before the exit.
- **IN**: the hook answers with what the destination already holds, the run stops, and the
  registers are put back: RIP stays at the IN until the VMM answers, as on KVM; the next
  ``run()`` replays the IN with the answer. An INS follows KVM's emulator instead
  (:mod:`hvcore_sim.stringin`): ``rep ins`` is batched by KVM's rule (``min(rcx, 1024 // size,
  elements left in the page of rdi)``), the IN exit comes first, then the whole answer is
  written at once: into RAM in place (code translated from it is dropped, so an INS that
  overwrote its own code runs the new bytes next, as on KVM), MMIO and read-only slots as
  MMIO write exits. Known divergence: QEMU's INS stores a dummy 0 at its first element before
  the IN, so that element of a RAM destination reads 0 until the answer (KVM leaves it as it
  was); where the INS's pages do not all map, Unicorn replays it element by element and faults.
- **MMIO**: every access to a gap, or a write to a read-only slot, is recorded and aborts the
  instruction (Unicorn leaves RIP at it, with no register effects). Reads wait for the VMM's
  answer; the next ``run()`` replays the instruction for exactly one step, answering known
  reads and swallowing known writes, and the first new access becomes the next exit
  (a read-modify-write gives a read exit, then a write exit). An 8-byte access arrives as
  two 4-byte callbacks and is merged into one exit. After a write exit the instruction is
  completed at once, so RIP is past it, as on KVM; a write that spans pages, or more than
  8 bytes, gives one exit per page and 8 bytes, as on KVM.
- **Split MMIO reads**: Unicorn performs an unaligned or page-crossing read as the aligned
  words around it. KVM reports the guest's own address and length (one exit per page), so
  such a read is located by decoding the instruction (:mod:`hvcore_sim.operand`), and on
  replay each of Unicorn's words gets its share of the VMM's answer.
- **cmpxchg8b / cmpxchg16b** run as one Unicorn helper that a stop cannot abort. When one
  goes on storing after its MMIO read stopped the run, its register and flag effects are
  undone and the read is reported; the replay then gives the write exits.
- **Flags**: an instruction aborted halfway leaves Unicorn's lazy flags mislabelled
  (:mod:`hvcore_sim.internals`); they are put right after every such abort.
- **Dirty logging**: the first write to a write-protected page of a logging slot is let
  through and the page recorded; the slice ends after that instruction, and the page is made
  writable (refusing the write would lose it where one helper runs a whole instruction).

One module for now, though long: :class:`Tracker` holds the per-vCPU state that every rule
reads and writes; it reaches the VM only through the :class:`~hvcore_sim.context.GuestContext`
it is handed (and the vCPU's state through ``state``), which the rules take with them when they
are split out by exit kind.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from hvcore._intern import InternTable
from hvcore.checks import completion_bytes
from hvcore.errors import HvError, HypervisorFault, StateError
from hvcore.exits import DebugExit, Exit, IoDirection, IoExit, MmioExit
from hvcore.memory import PAGE_SIZE
from hvcore.types import SlotFlags
from hvcore.x86 import CR0_PG
from hvcore_sim import decode, mmu, operand, resume, smsw, stringin, umip
from hvcore_sim.events import HAS_ERROR_CODE
from hvcore_sim.faults import NonCanonical, PageFault
from hvcore_sim.guestdebug import Breakpoints
from hvcore_sim.internals import CC_MASK, Cells
from hvcore_sim.layout import (
    EXCP_VMEXIT,
    SVM_EXIT_INTR,
    SVM_EXIT_IRET,
    SVM_EXIT_NMI,
    SVM_EXIT_READ_CR0,
    SVM_EXIT_READ_CR8,
    SVM_EXIT_WRITE_CR4,
    SVM_EXIT_WRITE_CR8,
    SVM_EXIT_WRITE_DR7,
    SVM_INTERCEPT_BASE,
)
from hvcore_sim.memory import host_page_populated, store_in_place
from hvcore_sim.unicorn_internals import IntCell

if TYPE_CHECKING:
    from hvcore_sim.context import GuestContext
    from hvcore_sim.engine import Engine
    from hvcore_sim.state import VcpuState
    from hvcore_sim.vcpu import SimVCPU

__all__ = ["Stop", "StopKind", "Tracker"]

_PIO_BATCH = 1024  # bytes: the size of KVM's pio data page
_U64 = (1 << 64) - 1
_OUT_7E = 0x7E  # the port whose OUT KVM completes before the exit (KVM_X86_QUIRK_OUT_7E_INC_RIP)
_OUT = IoDirection.OUT
_MMIO_EXIT_MAX = 8  # bytes: KVM's kvm_run.mmio.data


def _gpr_ids() -> tuple[int, ...]:
    from unicorn import x86_const as x

    names = ("RAX", "RCX", "RDX", "RBX", "RSP", "RBP", "RSI", "RDI", *(f"R{i}" for i in range(8, 16)))
    return tuple(getattr(x, f"UC_X86_REG_{name}") for name in names)


_GPRS = _gpr_ids()  # Unicorn's ids of the GPRs in x86 encoding order


class StopKind(Enum):
    """Why a counted run ended."""

    SLICE = "slice"
    EXIT = "exit"
    HLT = "hlt"
    EXCEPTION = "exception"
    FETCH_FAULT = "fetch"


@dataclass(frozen=True, slots=True)
class Stop:
    """What ended a run; ``exit`` for EXIT, the event for EXCEPTION."""

    kind: StopKind
    exit: Exit | None = None
    vector: int = 0
    event_kind: str = "exception"
    error_code: int | None = None
    instruction_length: int = 0
    cr2: int | None = None  # a #PF the simulator raised itself: its linear address


@dataclass(slots=True)
class _Access:
    write: bool
    address: int
    size: int
    value: int | None = None
    rom: bool = False  # a write to a read-only slot (lands only on replay, then the ROM bytes go back)
    span: tuple[int, int] | None = None  # a read Unicorn split: the aligned words it reads for this one


def _share(access: _Access, address: int, size: int) -> int:
    """What Unicorn's word ``address``/``size`` of a split read holds of the answer (0 outside the access)."""
    data = (access.value or 0).to_bytes(access.size, "little")
    at = address - access.address
    return int.from_bytes(bytes(data[i] if 0 <= i < access.size else 0 for i in range(at, at + size)), "little")


def _exits(pieces: list[_Access]) -> list[tuple[int, list[_Access]]]:
    """Contiguous pieces of one kind merged into KVM's exits: at most 8 bytes each, never across a page."""
    groups: list[tuple[int, list[_Access]]] = []
    length = 0
    for piece in pieces:
        if groups:
            start, parts = groups[-1]
            head = parts[0]
            if (
                piece.write == head.write
                and piece.address == start + length
                and length + piece.size <= _MMIO_EXIT_MAX
                and piece.address // PAGE_SIZE == start // PAGE_SIZE
            ):
                parts.append(piece)
                length += piece.size
                continue
        groups.append((piece.address, [piece]))
        length = piece.size
    return groups


@dataclass(slots=True)
class _PendingIn:
    exit: IoExit
    data: list[int] = field(default_factory=list)
    string: bool = False  # an INS: completed by :mod:`hvcore_sim.stringin`


_MMIO = Stop(StopKind.EXIT)  # an MMIO access is being recorded; the exit is built after the run
_WRITABLE = Stop(StopKind.SLICE)  # a page of a logging slot was written: end the slice, make it writable
_LOOK_AGAIN = Stop(StopKind.SLICE)  # the guest changed interrupt state: end the slice so run() looks again
_LET_THROUGH = Stop(StopKind.SLICE)  # an intercepted IRET or SMSW ran on its own: the run ends right after it
_LOCAL_STRING_IN = Stop(StopKind.EXIT)  # an INS from the simulator's own port into MMIO: read, completed after the run
_RETRY = Stop(StopKind.SLICE)  # a fast run aborted an instruction the exact rules must see: it runs again alone


def _soft(stop: Stop | None) -> bool:
    """Whether a stop may replace ``stop``: none yet, or one a fast run lets run on to the end of its block."""
    return stop is None or stop is _WRITABLE or stop is _LOOK_AGAIN  # (identity: equal Stops are not the same stop)


def _assign(old: int, value: int, bits: int) -> int:
    """A register written with an address-size result, as KVM's ``assign_register`` (32 bits zero-extend)."""
    if bits == 16:
        return (old & ~0xFFFF) | (value & 0xFFFF)
    return value & ((1 << bits) - 1)


class Tracker:
    """The instruction in progress on one vCPU, and the hooks that see it."""

    def __init__(self, vcpu: SimVCPU, guest: GuestContext, state: VcpuState) -> None:
        import unicorn

        self._unicorn = unicorn
        self._fetch_faults = (unicorn.UC_ERR_FETCH_UNMAPPED, unicorn.UC_ERR_FETCH_PROT)
        self._iret_at: int | None = None  # RIP of an IRET let through on a VM of several vCPUs
        self.vcpu = vcpu
        self.guest = guest
        """The VM as the rules see it: slots, memory, dirty log, irqchip, clock, the other vCPUs."""
        self.state = state
        """The vCPU's architectural state beyond the engine's (CPUID, APIC base, ...)."""
        self.local_ports: frozenset[int] = guest.irqchip_ports
        """Ports the simulator's own devices answer (the PIC, the PIT); the VM updates it."""
        self.pending: Exit | None = None  # an IN or MMIO read waiting for complete()
        self._engine: Engine | None = None
        self._stop: Stop | None = None
        self._known: list[_Access] = []  # accesses of the current instruction already reported
        self._cursor = 0
        self._new: list[_Access] = []
        self._in: _PendingIn | None = None
        self._in_answers: list[int] = []
        self._queued: list[Exit] = []  # exits of an instruction already completed, given by the next runs
        self._saved: dict[int, int] = {}
        self._restore: list[tuple[int, bytes]] = []
        self._unprotect: list[tuple[int, bool]] = []  # (page, writable) to map once the run is over
        self._io_fault_rip: int | None = None
        self._out_stops: InternTable[tuple[int, int, int], Stop] = InternTable()  # equal exits are shared values
        self.completed_instruction = False  # finish_instruction() just completed an IN (a step, when stepping)
        self._read_stops: InternTable[tuple[int, int], Stop] = InternTable()
        self._write_stops: InternTable[tuple[int, int, bytes], Stop] = InternTable()
        self._answer_parts: list[_Access] = []  # the pieces of the pending MMIO read
        self.watch_resume_flag = False
        """RFLAGS.RF may be set: after an event delivery, an IRET, or the VMM's set_regs (:mod:`hvcore_sim.resume`)."""
        self._let_through: int | None = None  # the exit code of an intercept let through: the run stops after it
        self._resume_step: int | None = None  # RIP of the instruction the next run makes alone, with RF set
        self._unprotected: dict[int, set[int]] = {}
        self.dirty_generation = -1
        self._cells: Cells | None = None
        self._split: IntCell | None = None  # Unicorn's size of the access it is splitting, in place
        self._swallow = False  # a split read is recorded: the rest of Unicorn's words for it are not new
        self._undo: tuple[int, int, int, int, int] | None = None  # before a cmpxchg8b/16b: see _undo_point
        self._rom_rip = 0  # where the instruction that wrote to a read-only slot is
        self._rom_landing: tuple[int, int] | None = None  # the known store to a read-only slot let through
        self._out_seen: tuple[int, int, bool] | None = None  # a plain OUT's (rip, rsi, shadow) in its hook
        self._out_unfinished: tuple[int, int, bool] | None = None  # (rip at the OUT, rip past it, shadow)
        self._cut = False  # the run ended at a block Unicorn could not translate: a slice, not a HLT
        self._replay = False  # finishing an IN or MMIO instruction that already exited (not a new one)
        self._string_in = False  # this run's IN exit is an INS (:mod:`hvcore_sim.stringin`)
        self._discard_writes = False  # that INS's own stores (Unicorn's) are not the guest's: KVM writes after the IN
        self._ins_rom = False  # an INS's first (dummy) store went to a read-only slot and was let through
        self._local_in = (1, b"")  # (size, data) the simulator's own port gave a string IN into MMIO
        self._fast = False  # this run counts blocks (:mod:`hvcore_sim.blocks`)
        self._single = False  # this run's first block is one instruction, and the run ends after it
        self._lead = False  # this fast run's first block is one instruction (a replay), the rest as usual
        self._io_trap: tuple[int, int, int, int] | None = None  # RIP, RSI, RDI, RCX at an I/O hook that armed the trap
        self.breakpoints = Breakpoints(self._replaying, self._break, self._end_after_instruction)
        """The vCPU's guest-debug settings and hardware-breakpoint hooks (:mod:`hvcore_sim.guestdebug`)."""

    # -- hooks -------------------------------------------------------------------

    def install(self, engine: Engine) -> None:
        """Add this tracker's hooks to a new engine."""
        import unicorn
        from unicorn import x86_const as x

        uc = engine.uc
        uc.hook_add(unicorn.UC_HOOK_INSN, self._on_out, None, 1, 0, x.UC_X86_INS_OUT)
        uc.hook_add(unicorn.UC_HOOK_INSN, self._on_in, None, 1, 0, x.UC_X86_INS_IN)
        uc.hook_add(unicorn.UC_HOOK_INSN, self._on_cpuid, None, 1, 0, x.UC_X86_INS_CPUID)
        uc.hook_add(unicorn.UC_HOOK_INSN, self._on_syscall, None, 1, 0, x.UC_X86_INS_SYSCALL)
        uc.hook_add(unicorn.UC_HOOK_INTR, self._on_interrupt)
        for begin, end in self._watched_ranges():
            uc.hook_add(unicorn.UC_HOOK_MEM_WRITE_PROT, self._on_write_protected, None, begin, end)
            reads = unicorn.UC_HOOK_MEM_READ_PROT | unicorn.UC_HOOK_MEM_FETCH_PROT
            uc.hook_add(reads, self._on_first_access, None, begin, end)
        self._unprotected = {}
        self.dirty_generation = -1
        self._cells = Cells(engine)
        engine.rip_cell = self._cells.rip_cell
        engine.debug_registers = self._cells.debug_registers
        self._split = self._cells.split_size
        self.breakpoints.install(engine)

    def _watched_ranges(self) -> list[tuple[int, int]]:
        """Guest-physical ranges (inclusive) the protection hooks cover: everything but plain RAM slots.

        Unicorn keeps every store to a page any memory hook covers on its slow path (it never
        marks the page's TLB entry dirty), so plain RAM, where no protection ever applies, is left out.
        """
        plain = sorted(
            (slot.guest_address, slot.end)
            for slot in self.guest.memory_slots_unchecked()
            if not slot.readonly and not slot.flags & SlotFlags.LOG_DIRTY_PAGES
        )
        ranges, at = [], 0
        for start, end in plain:
            if start > at:
                ranges.append((at, start - 1))
            at = max(at, end)
        ranges.append((at, _U64))
        return ranges

    @property
    def cells(self) -> Cells | None:
        """The current engine's in-place state cells (None before the first engine)."""
        return self._cells

    def reevaluate(self) -> None:
        """From a device callback: end the slice after this instruction, so ``run()`` looks for interrupts."""
        if self._stop is None:
            self._stop = _LOOK_AGAIN
            assert self._engine is not None
            self._engine.stop_after_this_instruction()

    def _replaying(self) -> bool:
        """The instruction running now completes an earlier exit: its breakpoints were checked when it first ran."""
        if self._replay:
            return True
        engine = self._engine
        return bool(self._known) and engine is not None and engine.counter_cell.value <= 1

    def _break(self, exit_: DebugExit) -> None:
        """From a code hook: end the run before this instruction starts (nothing to undo) with ``exit_``."""
        self._halt(Stop(StopKind.EXIT, exit_))

    def _end_after_instruction(self) -> None:
        assert self._engine is not None
        self._engine.stop_after_this_instruction()

    def _halt(self, stop: Stop) -> None:
        if _soft(self._stop):
            self._stop = stop
        assert self._engine is not None
        self._engine.stop()

    def _io_forbidden(self, port: int, size: int) -> bool:
        """Raise #GP(0) instead of the access when CPL > IOPL and the TSS bitmap forbids the ports."""
        engine, cells = self._engine, self._cells
        assert engine is not None and cells is not None
        if cells.every_port_allowed():
            return False  # CPL0 (CS.RPL) or real mode
        rflags = engine.reg(engine.RFLAGS)
        if not rflags >> 17 & 1 and engine.reg(engine.CS) & 3 <= (rflags >> 12) & 3:
            return False
        view = engine.view()
        if decode.io_permitted(view, self.guest.linear_reader(view), port, size):
            return False
        self._io_fault_rip = engine.reg(engine.RIP)
        self._halt(Stop(StopKind.EXCEPTION, vector=13, error_code=0))
        return True

    def _on_out(self, uc: Any, port: int, size: int, value: int, _: object) -> None:
        self._port_out(port, size, value)
        if self._stop is not None and not self._exact_here():
            self._trap_io(port)

    def _on_in(self, uc: Any, port: int, size: int, _: object) -> int:
        value = self._port_in(port, size)
        if self._stop is not None and not self._exact_here():
            self._trap_io(port)
        return value

    def _trap_io(self, port: int) -> None:
        """In a fast run: end the run right after the I/O instruction whose hook stopped it (``Engine.arm_io_trap``).

        Without it the rest of the block would run first. RIP is right in these hooks.
        """
        engine, cells = self._engine, self._cells
        assert engine is not None and cells is not None
        if self._io_trap is None:
            rip, rsi = cells.rip_rsi()
            self._io_trap = (rip, rsi, engine.reg(_GPRS[7]), engine.reg(engine.RCX))
            engine.arm_io_trap(port)

    def _io_trapped(self, engine: Engine) -> None:
        """The trap's #DB: the guest's debug registers back; a REP string element counted down, RIP at the instruction.

        QEMU raises it before REP counts the element down, with RIP past the instruction; the
        next run's REP with RCX 0 then moves past it, as KVM completes a string OUT.
        """
        assert self._io_trap is not None
        rip, rsi, rdi, rcx = self._io_trap
        self._io_trap = None
        engine.disarm_io_trap()  # (a #DB leaves QEMU's old_exception alone: nothing else to clear)
        if self._io_fault_rip is not None or (engine.reg(_GPRS[6]) == rsi and engine.reg(_GPRS[7]) == rdi):
            return  # IN or OUT (or refused by the I/O permission check, which puts the instruction back): done
        code = decode.fetch_instruction(engine, rip)
        found = decode.prefixes(code, rex=True)
        if not found.rep:
            return
        bits = engine.view().code_bits
        if found.address_override:
            bits = 32 if bits != 32 else 16
        engine.set_reg(engine.RCX, _assign(rcx, rcx - 1, bits))
        engine.set_reg(engine.RIP, rip)  # at the instruction even after its last element, as KVM's exit has it

    def _port_out(self, port: int, size: int, value: int) -> None:
        cells = self._cells
        assert cells is not None
        if not cells.every_port_allowed() and self._io_forbidden(port, size):  # (the common case without a call)
            return
        if port in self.local_ports:  # the in-kernel PIC / PIT: never the VMM's
            chip = self.guest.irqchip
            assert chip is not None
            chip.port_write(port, value)
            self._halt(_LOOK_AGAIN)
            return
        if port != _OUT_7E:
            self._out_seen = cells.out_state()
        stop = self._out_stops.get((port, size, value))
        if stop is None:  # equal exits are shared values, as in the KVM backend
            exit_ = IoExit(port, size, 1, IoDirection.OUT, value.to_bytes(size, "little"))
            stop = self._out_stops.put((port, size, value), Stop(StopKind.EXIT, exit_))
        if _soft(self._stop):  # (_halt, inline: the hot path)
            self._stop = stop
        engine = self._engine
        assert engine is not None
        engine.stop()

    def _port_in(self, port: int, size: int) -> int:
        if self._in_answers:
            return self._in_answers.pop(0)
        # An INS first stores 0 at its destination (QEMU's restartability probe): when that reached
        # MMIO or a ROM, the destination is not RAM and KVM's emulator order applies.
        probed = bool(self._new) or self._ins_rom
        if port in self.local_ports and not probed:
            chip = self.guest.irqchip
            assert chip is not None
            return chip.port_read(port)
        engine = self._engine
        assert engine is not None
        if self._io_forbidden(port, size):
            self._saved = {reg: engine.reg(reg) for reg in decode.IN_SAVED}
            return 0
        rip = engine.reg(engine.RIP)
        view = engine.view()
        try:
            insn = decode.io_instruction(engine, rip, view, self.guest.linear_reader(view))
            count, current = 1, engine.reg(engine.RAX) & ((1 << (8 * size)) - 1)
            if insn.string:
                if insn.rep:
                    # KVM's rule (pio_in_emulated): bytes, not elements, left in RDI's page -- RDI's own
                    # offset in the page, not the linear address; going down, the offset itself
                    offset = insn.rdi & 0xFFF
                    in_page = offset if insn.backwards else PAGE_SIZE - offset
                    count = max(1, min(insn.rcx, _PIO_BATCH // size, in_page))
                if probed or self._batch_maps(engine, view, insn, size, count):
                    return self._string_in_exit(engine, port, size, count)
                current = insn.current_value(size)
        except (PageFault, NonCanonical) as fault:
            # The IN's bytes are no longer mapped (the guest changed its page tables; Unicorn ran it
            # from a stale translation, which no TLB has to keep): the fault KVM's emulator raises
            # when it fetches the instruction. Nothing of the IN happened.
            self._saved = {reg: engine.reg(reg) for reg in decode.IN_SAVED}
            self._io_fault_rip = rip
            cr2 = fault.linear if isinstance(fault, PageFault) else None
            self._halt(Stop(StopKind.EXCEPTION, vector=fault.vector, error_code=fault.error_code, cr2=cr2))
            return 0
        self._saved = {reg: engine.reg(reg) for reg in decode.IN_SAVED}
        self._halt(Stop(StopKind.EXIT, IoExit(port, size, count, IoDirection.IN)))
        return current

    def _batch_maps(self, engine: Engine, view: Any, insn: decode.IoInstruction, size: int, count: int) -> bool:
        """Every page an INS batch writes maps for a write (a page that faults: Unicorn's to raise, as before).

        Such a batch is completed as KVM's emulator does it, RAM included: the whole answer written
        at once (:mod:`hvcore_sim.stringin`). Unicorn's element-by-element replay differs once the
        INS overwrites its own code: QEMU decodes the instruction again between two elements.
        """
        vm = self.guest
        user = bool(view.paging.cr0 & 1) and engine.reg(engine.CS) & 3 == 3
        low = insn.destination - (count - 1) * size if insn.backwards else insn.destination
        try:
            mmu.translate_range(view.paging, vm.physical, low, count * size, write=True, user=user)
        except (HvError, PageFault, NonCanonical):
            return False
        return True

    def _writable(self, physical: int, length: int) -> bool:
        slot = self.guest.slot_at(physical)
        return slot is not None and not slot.readonly and physical + length <= slot.end

    def _string_in_exit(self, engine: Engine, port: int, size: int, count: int) -> int:
        """End the run with the INS's IN exit (its stores are not the guest's); the answer is written later."""
        self._new.clear()  # the dummy store
        self._ins_rom = False
        self._discard_writes = True
        self._saved = {reg: engine.reg(reg) for reg in decode.IN_SAVED}
        if port in self.local_ports:  # the simulator's own device answers at once, as KVM's kernel_pio
            chip = self.guest.irqchip
            assert chip is not None
            self._local_in = size, b"".join(chip.port_read(port).to_bytes(size, "little") for _ in range(count))
            self._stop = _LOCAL_STRING_IN
        else:
            self._string_in = True
            self._stop = Stop(StopKind.EXIT, IoExit(port, size, count, IoDirection.IN))
        engine.stop()
        return 0

    def _complete_string_in(self, engine: Engine, size: int, data: bytes) -> Exit | None:
        """Write an answered INS batch as KVM's emulator; RCX, RDI (and RIP without REP) as its writeback."""
        vm = self.guest
        rip = engine.reg(engine.RIP)
        view = engine.view()
        insn = decode.io_instruction(engine, rip, view, vm.linear_reader(view))
        user = bool(view.paging.cr0 & 1) and engine.reg(engine.CS) & 3 == 3

        def translate(linear: int, length: int) -> list[tuple[int, int]]:
            return mmu.translate_range(view.paging, vm.physical, linear, length, write=True, user=user)

        writes = stringin.element_writes(
            insn.destination, size, len(data) // size, rep=insn.rep, backwards=insn.backwards
        )

        def store(physical: int, data: bytes) -> None:
            self._store_ram(engine, physical, data)

        destination = stringin.Destination(self._writable, store, self._device_write)
        result = stringin.complete(writes, data, translate, destination)
        bits, moved = insn.address_bits, result.consumed * size
        if moved:
            low = insn.destination - moved + size if insn.backwards else insn.destination
            self._drop_code(engine, view, low, moved, user=user)
        rdi = _GPRS[7]
        engine.set_reg(rdi, _assign(engine.reg(rdi), insn.rdi - moved if insn.backwards else insn.rdi + moved, bits))
        if insn.rep:
            engine.set_reg(engine.RCX, _assign(engine.reg(engine.RCX), insn.rcx - result.consumed, bits))
        else:
            engine.set_reg(engine.RIP, rip + insn.length)
            if self.watch_resume_flag:
                self._resume_flag_done(engine, None)
        if not result.exits:
            return None
        self._queued.extend(result.exits[1:])
        return result.exits[0]

    def _store_ram(self, engine: Engine, physical: int, data: bytes) -> None:
        """An INS's store into RAM, as the processor's: through the engine, which drops code translated from it.

        Not a host write (``vm.physical.store``), which would make the next run drop every
        translation (the INS may have overwritten code, its own included: KVM's next entry runs
        the new bytes). A logging slot's pages are logged dirty, as KVM's emulator write does.
        """
        engine.uc.mem_write(physical, data)
        slot = self.guest.slot_at(physical)
        if slot is not None and slot.flags & SlotFlags.LOG_DIRTY_PAGES:
            offset = physical - slot.guest_address
            for page in range(offset // PAGE_SIZE, (offset + len(data) - 1) // PAGE_SIZE + 1):
                self.guest.dirty.record(slot.kvm_slot, page)

    def _drop_code(self, engine: Engine, view: Any, linear: int, length: int, *, user: bool) -> None:
        """Forget code translated from ``length`` bytes at ``linear`` that the simulator wrote for the guest.

        Unicorn drops translations by linear address, walking the guest's tables as a fetch
        (which sets CR2 and a pending #PF where it fails): a page the guest may not execute
        from here is checked by the simulator's own walk first, and then all code is dropped.
        """
        uc, paging = engine.uc, view.paging
        paged = bool(paging.cr0 & CR0_PG)
        end = linear + length
        while linear < end:
            piece = min(end, (linear | (PAGE_SIZE - 1)) + 1)
            start = linear if paged else linear & 0xFFFFFFFF  # without paging: physical, wrapping at 4 GiB
            if paged and not mmu.fetchable(paging, linear, self.guest.physical, user=user):
                uc.ctl_flush_tb()
                return
            uc.ctl_remove_cache(start, start + piece - linear)
            linear = piece

    def _device_write(self, physical: int, data: bytes) -> list[MmioExit]:
        """An INS's write to MMIO: the simulator's devices take their part in place; exits for the rest."""
        chip = self.guest.irqchip
        if chip is not None and self.guest.slot_at(physical) is None:
            exits: list[MmioExit] = []

            def outside(uc: Any, offset: int, size: int, value: int, base: int) -> None:
                exits.append(MmioExit(base + offset, size, True, value.to_bytes(size, "little")))

            for region in chip.regions(self.vcpu.id, self.on_mmio_read, outside):
                if region.base <= physical < region.base + region.size:
                    for at in range(0, len(data), _MMIO_EXIT_MAX):
                        part = data[at : at + _MMIO_EXIT_MAX]
                        region.write(None, physical + at - region.base, len(part), int.from_bytes(part, "little"), None)
                    return exits
        return stringin.mmio_exits(physical, data)

    def _on_cpuid(self, uc: Any, _: object) -> int:
        engine = self._engine
        assert engine is not None
        self.state.serve_cpuid(engine)
        if self._cells is not None:  # Unicorn synced the state for this hook the way an abort does
            self._cells.settle()
        return 1  # skip Unicorn's own CPUID model

    def _on_syscall(self, uc: Any, _: object) -> None:
        engine = self._engine
        assert engine is not None
        if self._cells is not None:  # Unicorn synced the state for this hook the way an abort does
            self._cells.settle()
        stop = self.vcpu.syscall(engine)
        if stop is not None:
            self._halt(stop)

    def _on_interrupt(self, uc: Any, vector: int, _: object) -> None:
        engine = self._engine
        assert engine is not None
        if vector == 1 and self._io_trap is not None:
            self._io_trapped(engine)
            return
        if vector >= EXCP_VMEXIT:
            self._on_intercept(engine, vector - EXCP_VMEXIT)
            return
        error_code, next_rip = engine.take_exception()
        if next_rip is None:  # a fault or trap: RIP is where it happened
            self._settle_after_fault(engine, vector)
            code = error_code if vector in HAS_ERROR_CODE else None
            self._halt(Stop(StopKind.EXCEPTION, vector=vector, error_code=code))
            return
        # INT n / INT3 / INTO: deliver with the next instruction as the return address
        view = engine.view()
        try:
            last = self.guest.linear_reader(view)(view.cs_base + next_rip - 1, 1)[0]
        except Exception:
            last = 0
        kind, length = ("software_exception", 1) if last in (0xCC, 0xCE) and vector in (3, 4) else ("software", 2)
        if vector == 3 and kind == "software_exception" and self.breakpoints.settings.software_breakpoints:
            rip = next_rip - length  # KVM intercepts the #BP: a DEBUG exit at the int3, nothing delivered
            engine.set_reg(engine.RIP, rip)
            self._halt(Stop(StopKind.EXIT, self.breakpoints.breakpoint_exit(engine.code_address(rip))))
            return
        engine.set_reg(engine.RIP, next_rip)
        self._halt(Stop(StopKind.EXCEPTION, vector=vector, event_kind=kind, instruction_length=length))

    def _on_intercept(self, engine: Engine, exit_code: int) -> None:
        """A guest RDMSR / WRMSR / RDTSC (:mod:`hvcore_sim.msrs`) or MOV to/from CR8 caught as an SVM intercept.

        QEMU restored the state to the instruction's start before the hook, which leaves the lazy
        flags mislabelled as after any mid-instruction stop: they are settled first. Emulated, RIP
        moves past it and the run goes on; else #GP / #UD. An interrupt or NMI window that opened
        (:mod:`hvcore_sim.windows`) comes between instructions instead: the slice ends there, so
        ``run()`` delivers the event at that point.
        """
        if exit_code in (SVM_EXIT_INTR, SVM_EXIT_NMI):  # between blocks: the lazy flags are in order
            engine.close_windows()
            self._halt(_LOOK_AGAIN)
            return
        if self._cells is not None:
            self._cells.settle()  # the restore to the instruction's start mislabels the lazy flags (see settle)
        if exit_code == SVM_EXIT_IRET:
            self._let_run_once(engine, exit_code)
            self.watch_resume_flag = True  # RF as the IRET loads it
            self._iret_at = engine.reg(engine.RIP) if self.guest.vcpu_count > 1 else None
            return
        if exit_code == SVM_EXIT_READ_CR0:
            self._cr0_read(engine)
            return
        if exit_code in umip.EXIT_CODES:  # SGDT / SIDT / SLDT / STR: #GP under UMIP at CPL > 0, else Unicorn's
            if umip.faults(engine):
                self._halt(Stop(StopKind.EXCEPTION, vector=13, error_code=0))
            else:
                self._let_run_once(engine, exit_code)
            return
        if exit_code == SVM_EXIT_WRITE_DR7:  # Unicorn's MOV writes it; then HF_IOBPT again (Engine.arm_io_trap)
            self._let_run_once(engine, exit_code)
            return
        if exit_code == SVM_EXIT_WRITE_CR4:  # KVM's checks first; a value it takes, Unicorn's MOV writes
            if self.vcpu.cr4_write_allowed(engine):
                self._let_run_once(engine, exit_code)
            else:
                self._halt(Stop(StopKind.EXCEPTION, vector=13, error_code=0))
            return
        if exit_code in (SVM_EXIT_READ_CR8, SVM_EXIT_WRITE_CR8):
            stop = self.vcpu.cr8_intercepted(engine, write=exit_code == SVM_EXIT_WRITE_CR8)
        else:
            stop = self.vcpu.msrs.intercepted(engine, exit_code)
        if stop is not None:
            self._halt(stop)

    def _cr0_read(self, engine: Engine) -> None:
        """A MOV from CR0 or an SMSW, caught before it ran (:mod:`hvcore_sim.smsw`)."""
        outcome = smsw.emulate(engine)
        if outcome is smsw.Outcome.STORE:
            self._let_run_once(engine, SVM_EXIT_READ_CR0)
        elif outcome is smsw.Outcome.GP:
            self._halt(Stop(StopKind.EXCEPTION, vector=13, error_code=0))

    def _serialized(self, engine: Engine) -> None:
        """After an IRET: an IRET to the next instruction is a ``sync_core``; drop code another vCPU may have changed.

        Each vCPU's engine keeps its own translated code, and Unicorn drops it only for stores that
        engine makes: a kernel that patches code on one CPU (Linux's ``text_poke``) would leave the
        others running the old bytes. The architecture asks the executing CPU to serialize before it
        runs code another CPU modified (SDM 8.1.3), and Linux's patching makes every CPU do so with an
        IRET to itself; that is where this vCPU drops its translations, once another vCPU runs.
        """
        at, self._iret_at = self._iret_at, None
        if at is None:
            return
        rip = engine.reg(engine.RIP)
        if rip - at not in (1, 2) or not any(v is not self.vcpu and v.started for v in self.guest.vcpus()):
            return
        engine.uc.ctl_flush_tb()

    def _let_run_once(self, engine: Engine, exit_code: int) -> None:
        """An intercepted instruction Unicorn does right: let this one run, and end the run right after it."""
        self._set_intercept(exit_code, False)  # set again once the run stops
        engine.retry_then_stop()
        self._let_through = exit_code

    def _set_intercept(self, exit_code: int, on: bool) -> None:
        assert self._cells is not None
        if exit_code == SVM_EXIT_IRET:
            self._cells.intercept_iret(on)
        elif exit_code == SVM_EXIT_WRITE_CR4:
            self._cells.intercept_cr4_write(on)
        elif exit_code == SVM_EXIT_WRITE_DR7:
            self._cells.intercept_dr7_write(on)
        elif exit_code in umip.EXIT_CODES:
            self._cells.intercept(1 << (exit_code - SVM_INTERCEPT_BASE), on)
        else:
            self._cells.intercept_cr0_read(on)

    def resume_flag_budget(self, engine: Engine, count: int) -> int:
        """How many instructions the next run may take: one alone while RFLAGS.RF is set (it is for that one)."""
        if engine.reg(engine.RFLAGS) & resume.RFLAGS_RF:
            self._resume_step = engine.reg(engine.RIP)
            return 1
        self.watch_resume_flag = False
        return count

    def _settle_after_fault(self, engine: Engine, vector: int) -> None:
        """A fault raised inside an instruction leaves the lazy flags mislabelled; one raised fetching it does not."""
        cells = self._cells
        if cells is None:
            return
        split = cells.split_size
        if split is not None and split.value:
            split.value = 0  # the fault cut a split access short; Unicorn does not reset it then
        if vector in (13, 14):
            rip = engine.reg(engine.RIP)
            signed = rip - (1 << 64) if rip >> 63 else rip
            if vector == 13 and not -(1 << 47) <= signed < 1 << 47:
                return  # a non-canonical RIP: the fetch faulted
            if vector == 14:
                from unicorn import x86_const as x

                linear = operand.cpu_state(engine).bases[operand.CS] + rip
                if 0 <= engine.reg(x.UC_X86_REG_CR2) - linear < 16:
                    return  # the fetch faulted, before any of the instruction ran
        cells.settle()

    def on_mmio_read(self, uc: Any, offset: int, size: int, base: int) -> int:
        """Unicorn's MMIO read callback for the gap at ``base``: answered if replayed, else the instruction aborts."""
        address = base + offset
        known = self._known
        if known:
            assert self._engine is not None
            if self._engine.counter_cell.value > 1:
                self._known, self._cursor = [], 0  # the replayed instruction has finished
            else:
                access = known[self._cursor] if self._cursor < len(known) else None
                if access is not None and not access.write:
                    span = access.span
                    if span is None:
                        if access.address == address and access.size == size:
                            self._cursor += 1
                            return access.value or 0
                    elif span[0] <= address and address + size <= span[1]:
                        if address + size == span[1]:
                            self._cursor += 1
                        return _share(access, address, size)
        if self._swallow:
            return 0  # another of Unicorn's words for the split read already recorded
        split = self._split
        if split is not None and split.value:
            access = self._split_read(address, split.value)
            if access is not None:
                self._swallow = True
                self._new.append(access)
                self._halt(_MMIO)
                return 0
        self._new.append(_Access(False, address, size))
        if self._stop is None:  # (_halt, inline: the hot path)
            self._stop = _MMIO
        engine = self._engine
        assert engine is not None
        engine.stop()
        return 0

    def _split_read(self, address: int, size: int) -> _Access | None:
        """The guest's read (its part in one page) that Unicorn reads as aligned words, one of them at ``address``."""
        engine = self._engine
        assert engine is not None
        memory = self.guest.physical
        try:
            cpu = operand.cpu_state(engine)
            rip = engine.reg(engine.RIP)  # synced to the instruction's start in a counted run
            insn = operand.decode(self._code(cpu, rip), cpu.code_bits)
            for memory_operand in insn.operands:
                linear = operand.effective_linear(memory_operand, self._gpr, rip + insn.length, cpu)
                for physical, length in operand.physical_pieces(linear, size, cpu, memory):
                    low, high = physical & -size, (physical + length + size - 1) & -size
                    if low <= address < high:
                        return _Access(False, physical, length, span=(low, high))
        except (HvError, PageFault, NonCanonical):
            pass
        return None

    def _code(self, cpu: operand.CpuState, rip: int) -> bytes:
        """Up to 15 bytes of the instruction at ``rip`` (fewer where the next page is not readable)."""
        memory = self.guest.physical
        linear = cpu.bases[operand.CS] + rip
        first = min(15, PAGE_SIZE - linear % PAGE_SIZE)
        user = cpu.cpl == 3
        code = mmu.read_linear(cpu.paging, memory, linear, first, user=user)
        if first < 15:
            with contextlib.suppress(HvError, PageFault, NonCanonical):
                code += mmu.read_linear(cpu.paging, memory, linear + first, 15 - first, user=user)
        return code

    def _gpr(self, number: int) -> int:
        engine = self._engine
        assert engine is not None
        return engine.reg(_GPRS[number])

    def on_mmio_write(self, uc: Any, offset: int, size: int, value: int, base: int) -> None:
        """Unicorn's MMIO write callback for the gap starting at ``base``."""
        self.mmio_write(base + offset, size, value)

    def mmio_write(self, address: int, size: int, value: int) -> None:
        """An MMIO write callback: swallowed if replayed; else the instruction completes, then the run stops."""
        if not self._exact_here():  # abort it (the stop lands after the store), and run it alone
            if _soft(self._stop):
                self._stop = _RETRY
            if self._cells is not None:
                self._cells.note_abort()
            assert self._engine is not None
            self._engine.stop()
            return
        if self._discard_writes:
            return  # an INS's store after its IN exit: KVM writes the answer later
        if self._next_known(True, address, size) is not None:
            return
        new = self._new
        if new and not new[0].write and self._stop is _MMIO:
            # Its read stopped the run, yet the instruction stores: one helper runs all of it
            # (cmpxchg8b / cmpxchg16b). Undo it after the run; the replay gives this write.
            if self._undo is None:
                self._undo = self._undo_point()
            return
        new.append(_Access(True, address, size, value & ((1 << (8 * size)) - 1)))
        if self._stop is None:
            self._stop = _MMIO
            assert self._engine is not None
            self._engine.stop_after_this_instruction()  # RIP goes past the store, as on KVM

    def _undo_point(self) -> tuple[int, int, int, int, int]:
        """RIP, RAX, RDX, RFLAGS as a cmpxchg8b/16b found them (read inside it, before it writes them), its count."""
        engine, cells = self._engine, self._cells
        assert engine is not None and cells is not None
        rflags = engine.reg(engine.RFLAGS) & ~CC_MASK | cells.entry_flags()
        rip, rax, rdx = engine.reg(engine.RIP), engine.reg(engine.RAX), engine.reg(_GPRS[2])
        return rip, rax, rdx, rflags, engine.counter_cell.value

    def _next_known(self, write: bool, address: int, size: int) -> _Access | None:
        if not self._known:
            return None
        if self._engine is not None and self._engine.counter_cell.value > 1:
            self._known, self._cursor = [], 0  # the replayed instruction has finished
        if self._cursor < len(self._known):
            known = self._known[self._cursor]
            if (known.write, known.address, known.size) == (write, address, size):
                self._cursor += 1
                return known
        return None

    def _on_write_protected(self, uc: Any, access: int, address: int, size: int, value: int, _: object) -> bool:
        slot = self.guest.slot_at(address)
        if slot is None:
            return self._gate()  # a device's region (write-protected in engines that can run fast)
        engine, cells = self._engine, self._cells
        assert engine is not None
        if cells is not None:  # Unicorn synced the state for this hook the way an abort does
            cells.settle()
        if slot.readonly:
            # Unicorn asks once for a store that runs past the slot's end; KVM exits for each part
            inside = min(size, slot.end - address)
            landing = self._rom_landing
            if landing is not None and landing[0] <= address and address + inside <= landing[1]:
                return True  # a byte of the store just let through (Unicorn asks again as it splits it)
            # an INS's dummy store; its first bytes may have gone to MMIO already (a store across a page)
            probe = (
                not self._discard_writes
                and self._stop in (None, _MMIO)
                and all(piece.write and not piece.rom for piece in self._new)
                and self._at_string_in(engine)
            )
            if probe or self._discard_writes or self._next_known(True, address, inside) is not None:
                self._ins_rom = self._ins_rom or probe  # an INS's dummy store: its IN hook takes KVM's order
                offset = slot.offset + address - slot.guest_address
                self._restore.append((address, slot.memory.read(offset, inside)))
                self._rom_landing = (address, address + inside)
                return True  # let it land (the part past the slot goes its own way), then put the ROM bytes back
            if not any(piece.rom for piece in self._new):
                self._rom_rip = engine.reg(engine.RIP)
            value &= (1 << (8 * size)) - 1
            self._new.append(_Access(True, address, inside, value & ((1 << (8 * inside)) - 1), rom=True))
            if inside < size and self.guest.slot_at(slot.end) is None:  # the rest is MMIO too, stored bytewise
                self._new += [_Access(True, slot.end + i, 1, value >> (8 * (inside + i)) & 0xFF)
                              for i in range(size - inside)]  # fmt: skip
            self._halt(_MMIO)
            return False
        page = (address - slot.guest_address) // PAGE_SIZE
        # Unicorn drops the store itself once mem_protect has marked the page read-only (QEMU's
        # TLB_DISCARD_WRITE for a read-only region), so it is stored here; where it does land
        # (a page never protected by mem_protect), it lands with the same bytes.
        host = slot.memory.address + slot.offset + address - slot.guest_address
        store_in_place(host, (value & _U64).to_bytes(8, "little")[:size])
        self.guest.dirty.map_first(slot.kvm_slot, page, populated=True)
        self._unprotect.append((slot.guest_address + page * PAGE_SIZE, True))
        self._unprotected.setdefault(slot.kvm_slot, set()).add(page)
        # The store lands: refused, it would be lost where one helper runs the whole instruction
        # (cmpxchg8b goes on without it). The page is made writable once the instruction is done
        # (mem_protect cannot be called from a hook); an IN being completed finishes its batch first.
        if self._stop is None and not self._in_answers:
            self._stop = _WRITABLE
            engine.stop_after_this_instruction()
        return True

    def _at_string_in(self, engine: Engine) -> bool:
        """The instruction storing now is an INS (whose first store is QEMU's dummy one).

        Read by the simulator's own page walk: Unicorn's (``fetch_instruction``) refills the TLB
        entry the store in progress is using, which crashes the process.
        """
        try:
            return decode.is_string_in(self._code(operand.cpu_state(engine), engine.reg(engine.RIP)))
        except (HvError, PageFault, NonCanonical):
            return False

    def _gate(self) -> bool:
        """An MMIO read, or a write to one of the simulator's devices: caught first (RIP at the instruction).

        In a fast run's block of many instructions it is refused, which aborts the instruction, and
        the run gives it a one-instruction block of its own (:meth:`run`): the exact rules (an exit
        right after it, the answer on replay, a device's interrupt right after it) need that.
        Elsewhere it goes on to its MMIO callback.
        """
        if self._exact_here():
            return True
        if _soft(self._stop):
            self._stop = _RETRY
        if self._cells is not None:
            self._cells.note_abort()
        return False

    def _gate_read(self, address: int, size: int) -> bool:
        """An MMIO read caught first (:meth:`_gate`); an aligned one of up to 8 bytes becomes its exit at once.

        At once in every run, counted or fast: Unicorn's MMIO callback would only see it again.
        Refused, it aborts the instruction (also inside a one-helper instruction such as
        cmpxchg8b), and the hook has the guest's own address and size: the pieces are the ones
        Unicorn's callbacks ask for when the read is replayed with its answer.
        """
        if self._known and self._replaying():
            return True  # the replay of a read that exited: its callback answers it
        if size in (1, 2, 4, 8) and not address % size and _soft(self._stop):
            if self._cells is not None:
                self._cells.note_abort()
            if size == 8:  # Unicorn's callbacks take it as two 4-byte words
                self._new += [_Access(False, address, 4), _Access(False, address + 4, 4)]
            else:
                self._new.append(_Access(False, address, size))
            self._stop = _MMIO
            return False
        return self._exact_here() or self._gate()

    def _exact_here(self) -> bool:
        """The instruction running now is alone in its block: a counted run, a single, or a replay's first block."""
        if not self._fast or self._single:
            return True
        engine = self._engine
        return self._lead and engine is not None and engine.counter_cell.value <= 1

    def _on_first_access(self, uc: Any, access: int, address: int, size: int, value: int, _: object) -> bool:
        """A read or fetch from a page of a logging slot KVM has not mapped yet (:class:`DirtyLog`); an MMIO read."""
        slot = self.guest.slot_at(address)
        if slot is None and access == self._unicorn.UC_MEM_READ_PROT:
            return self._gate_read(address, size)
        if slot is None or slot.readonly or not slot.flags & SlotFlags.LOG_DIRTY_PAGES:
            return False
        engine, cells = self._engine, self._cells
        assert engine is not None
        if cells is not None:
            cells.settle()
        page = (address - slot.guest_address) // PAGE_SIZE
        host = slot.memory.address + slot.offset + page * PAGE_SIZE
        logged = self.guest.dirty.map_first(slot.kvm_slot, page, populated=host_page_populated(host))
        self._unprotect.append((slot.guest_address + page * PAGE_SIZE, logged))  # writable if logged, as KVM maps it
        if logged:
            self._unprotected.setdefault(slot.kvm_slot, set()).add(page)
        if self._stop is None and not self._in_answers:
            self._stop = _WRITABLE
            engine.stop_after_this_instruction()
        return True

    # -- running -------------------------------------------------------------------

    def run(self, engine: Engine, count: int) -> Stop:
        """One run from the current RIP of at most ``count`` instructions (blocks, when the engine is fast).

        In a fast run an instruction the exact rules must see is aborted and run again in a block
        of its own (:meth:`_gate`); the run then goes on. So does it after an IRET let through
        (:meth:`_let_run_once`) that loaded no RF, as if it had never been cut: the run loop would
        find nothing new there (an interrupt the IRET unmasks stops the run at its window), and a
        boot that serializes with IRET-to-self after each code patch (Linux's ``sync_core``) runs
        ~100,000 of them.
        """
        single = False
        while True:
            stop = self._run_once(engine, 1 if single else count, single=single)
            count -= 1 if single else min(engine.counter_cell.value, count)
            if stop is _RETRY:
                single = True
                if count > 0:
                    continue
                return Stop(StopKind.SLICE)  # the next run meets it again
            resumed, single = single, False
            if count <= 0 or (self._stop is not None and self._stop is not _RETRY):
                return stop
            if stop is _LET_THROUGH and self._let_through == SVM_EXIT_IRET:
                if self.guest.clock.virtual or engine.reg(engine.RFLAGS) & resume.RFLAGS_RF:
                    return stop  # (virtual time is counted per run; an RF the IRET loaded is for the run loop)
                self.watch_resume_flag = False
            elif not (resumed and stop.kind is StopKind.SLICE and stop is not _LET_THROUGH):
                return stop

    def _run_once(self, engine: Engine, count: int, *, single: bool = False) -> Stop:
        unicorn = self._unicorn
        self._engine = engine
        fast = self._fast = engine.fast
        self._single = single = fast and (single or count == 1)
        self._stop = None
        self._let_through = None
        self._discard_writes = self._ins_rom = self._string_in = False
        resume_step, self._resume_step = self._resume_step, None
        if self._new:
            self._new = []
        self._cursor = 0
        self._rom_landing = None
        if self.breakpoints.watching:
            vm = self.guest
            self.breakpoints.arm(engine, vm.physical, lambda physical: vm.slot_at(physical) is not None)
        self._cut = False
        cells = self._cells
        self._lead = fast and bool(self._known or self._in_answers)
        if single or self._lead:
            engine.one_instruction_block()  # the block that answers or repeats an instruction: that one alone
        try:
            status = engine.start_status(engine.reg(engine.RIP) if cells is None else cells.rip(), count)
            if status in self._fetch_faults:  # see _after_fetch_fault
                if not self._after_fetch_fault(engine, count):
                    return Stop(StopKind.FETCH_FAULT)
            elif status and (self._stop is None or status == unicorn.UC_ERR_INSN_INVALID):
                raise unicorn.UcError(status)  # (a hook that stopped the run may have refused its access)
        except unicorn.UcError as err:
            if err.errno == unicorn.UC_ERR_INSN_INVALID:
                return Stop(StopKind.EXCEPTION, vector=6)
            if self._stop is None:
                raise HypervisorFault(f"the simulator's engine failed: {err}", operation="run") from err
        finally:
            if fast:
                engine.withdraw_one_instruction_block()
                if self._io_trap is not None:  # armed, not taken (the run ended another way)
                    self._io_trap = None
                    engine.disarm_io_trap()
            if self._let_through is not None:
                self._set_intercept(self._let_through, True)
                if self._let_through == SVM_EXIT_WRITE_DR7:
                    engine.keep_io_trap_translated()
            if self._restore:
                self._put_back_rom()
            if self._unprotect:  # pages of logging slots first touched during the run
                for page, writable in self._unprotect:
                    perms = unicorn.UC_PROT_ALL if writable else unicorn.UC_PROT_READ | unicorn.UC_PROT_EXEC
                    engine.uc.mem_protect(page, PAGE_SIZE, perms)
                self._unprotect = []
        return self._after(engine, count, resume_step)

    def _after_fetch_fault(self, engine: Engine, count: int) -> bool:
        """The run's start failed to fetch code: go on as KVM would; False if the instruction at RIP cannot be fetched.

        Unicorn translates a block of straight-line code before it runs any of it, and fails the
        whole block when the bytes of a later instruction are not in RAM (code up to the end of a
        slot, then unbacked memory): nothing of the block runs, RIP stays at its start. KVM runs
        the instructions up to the one it cannot fetch. So a block that fails after others ran
        ends the run there (``_cut``: the next run starts with it), and one that fails first is
        translated again as one instruction; only if that fails too is RIP's own fetch at fault.
        """
        unicorn = self._unicorn
        if engine.counter_cell.value:
            self._cut = True
            return True
        if not engine.one_instruction_block():
            return False
        try:
            engine.start(engine.reg(engine.RIP), count)  # the blocks after the first one: as usual
        except unicorn.UcError as err:
            if err.errno not in (unicorn.UC_ERR_FETCH_UNMAPPED, unicorn.UC_ERR_FETCH_PROT):
                raise
            if not engine.counter_cell.value:
                return False
            self._cut = True
        finally:
            engine.withdraw_one_instruction_block()
        return True

    def _completed(self, stop: Stop | None) -> bool:
        """Whether the run's last instruction completed (an OUT or MMIO write exit, a single-step trap, ...)."""
        if stop is None or stop.kind is StopKind.SLICE:
            return True
        if stop is _MMIO:
            return self._new[0].write and not self._new[0].rom
        if stop.kind is StopKind.EXCEPTION:
            return stop.vector == 1 and stop.event_kind == "exception"  # the trap after an instruction
        return isinstance(stop.exit, IoExit) and not stop.exit.is_in

    def _resume_flag_done(self, engine: Engine, pushed_by: int | None) -> None:
        """An instruction completed: RF goes, as on hardware (Unicorn keeps it); out of the image of a PUSHF too."""
        rflags = engine.reg(engine.RFLAGS)
        if rflags & resume.RFLAGS_RF:
            engine.set_reg(engine.RFLAGS, rflags & ~resume.RFLAGS_RF)
        if pushed_by is not None:  # (it ran with RF; a block of its own may have ended with QEMU clearing RF)
            resume.clear_pushed_rf(engine, self.guest.physical, pushed_by)
        self.watch_resume_flag = False

    def _put_back_rom(self) -> None:
        for address, data in reversed(self._restore):  # an undo log: a byte stored twice gets its first value
            slot = self.guest.slot_at(address)
            if slot is not None:
                slot.memory.write(slot.offset + address - slot.guest_address, data)
        self._restore = []

    def _after(self, engine: Engine, count: int, resume_step: int | None) -> Stop:
        stop = self._stop
        hits = self.breakpoints.hits
        if hits:
            self.breakpoints.hits = 0
        if self._known and stop is not _MMIO and (engine.counter_cell.value > 1 or self._cut):
            self._known, self._cursor = [], 0  # the replayed instruction finished before this stop
        if stop is _RETRY:
            if self._cells is not None:
                self._cells.settle()  # (only an instruction that computes the flags first needs it here)
            return stop
        out_seen, self._out_seen = self._out_seen, None
        if out_seen is not None and stop is not None and isinstance(stop.exit, IoExit) and stop.exit.direction is _OUT:
            rip, rsi, shadow = out_seen
            assert self._cells is not None
            past, rsi_now = self._cells.rip_rsi()
            if rsi_now == rsi:  # a plain OUT (OUTS moves RSI): finished by the next run
                self._out_unfinished = (rip, past, shadow)
                self._cells.set_rip(rip)
                if shadow:
                    engine.interrupt_shadow = True
                return stop
        if hits and (stop is None or stop.kind is StopKind.SLICE):  # watchpoints: a trap after the instruction
            if self.watch_resume_flag and self._let_through != SVM_EXIT_IRET:  # (an IRET's RF stays as it loaded it)
                self._resume_flag_done(engine, resume_step)
            return Stop(StopKind.EXIT, self.breakpoints.watch_exit(engine, hits, stepping=self.vcpu.stepping))
        if self._let_through == SVM_EXIT_IRET and stop is None:
            self._serialized(engine)
            return _LET_THROUGH  # RF stays as the IRET loaded it
        if self.watch_resume_flag and self._completed(stop):
            self._resume_flag_done(engine, resume_step if stop is None or stop.kind is StopKind.SLICE else None)
        if stop is None and self._let_through is not None:
            return _LET_THROUGH  # the run was cut right after it: not a HLT
        soft = stop is _WRITABLE or stop is _LOOK_AGAIN
        if soft and self._fast and not self._cut and not engine.stop_requested and engine.within_budget:
            return Stop(StopKind.HLT)  # the budget was lowered, and the block went on to a HLT before it ran out
        if stop is None:
            return Stop(StopKind.HLT) if engine.counter_cell.value <= count and not self._cut else Stop(StopKind.SLICE)
        if self._io_fault_rip is not None:  # IN/OUT refused by the I/O permission check: nothing happened
            for reg, value in self._saved.items():
                engine.set_reg(reg, value)
            engine.set_reg(engine.RIP, self._io_fault_rip)
            self._io_fault_rip = None
            self._saved = {}
            return stop
        if stop is _MMIO:
            return self._mmio_exit(engine)
        if stop is _LOCAL_STRING_IN:
            for reg, value in self._saved.items():
                engine.set_reg(reg, value)
            (size, data), self._local_in = self._local_in, (1, b"")
            exit_ = self._complete_string_in(engine, size, data)
            return Stop(StopKind.SLICE) if exit_ is None else Stop(StopKind.EXIT, exit_)
        if isinstance(stop.exit, IoExit) and stop.exit.is_in:
            for reg, value in self._saved.items():
                engine.set_reg(reg, value)
            self._in = _PendingIn(stop.exit, string=self._string_in)
            self.pending = stop.exit
        return stop

    def _mmio_exit(self, engine: Engine) -> Stop:
        new = self._new
        first = new[0]
        parts = [first]
        length = first.size
        # Unicorn splits an 8-byte access in two and an unaligned write in bytes; KVM reports one
        # access of up to 8 bytes within a page, so contiguous pieces of the same kind are merged.
        for piece in new[1:] if len(new) > 1 else ():
            if (
                piece.write != first.write
                or piece.address != first.address + length
                or length + piece.size > _MMIO_EXIT_MAX
                or piece.address // PAGE_SIZE != first.address // PAGE_SIZE
            ):
                break
            parts.append(piece)
            length += piece.size
        self._answer_parts = parts
        self._swallow = False
        undo = self._undo
        if undo is None:
            counter = engine.counter_cell.value
        else:
            self._undo = None
            counter = undo[4]  # the count when the access was made
        # accesses of this instruction answered so far stay known; another instruction's are forgotten
        answered = self._known[: self._cursor] if counter <= 1 else []
        if not first.write:
            if undo is not None:  # a cmpxchg8b/16b completed: put back what it changed
                for reg, value in zip((engine.RIP, engine.RAX, _GPRS[2], engine.RFLAGS), undo[:4], strict=True):
                    engine.set_reg(reg, value)
            elif self._cells is not None:
                self._cells.settle()  # the read aborted the instruction halfway
            self._known = answered + parts
            stop = self._read_stops.get((first.address, length))
            if stop is None:
                exit_ = MmioExit(first.address, length, False)
                stop = self._read_stops.put((first.address, length), Stop(StopKind.EXIT, exit_))
            self.pending = stop.exit
            return stop
        if len(parts) == 1:
            data = (first.value or 0).to_bytes(length, "little")
        else:
            data = b"".join((p.value or 0).to_bytes(p.size, "little") for p in parts)
        stop = self._write_stops.get((first.address, length, data))
        if stop is None:
            exit_ = MmioExit(first.address, length, True, data)
            stop = self._write_stops.put((first.address, length, data), Stop(StopKind.EXIT, exit_))
        rom = first.rom if len(new) == 1 else any(piece.rom for piece in new)  # a store to a read-only slot aborted it
        if rom and engine.reg(engine.RIP) != self._rom_rip:
            self._known = []  # a helper (cmpxchg8b) went on without the store: the instruction is complete
        elif rom:  # the instruction was aborted: finish it now, so RIP is past the write as on KVM
            if self._cells is not None:
                self._cells.settle()
            self._known = answered + new
            queued = len(self._queued)
            self._queue_writes(new[len(parts) :])  # the other parts of a store across a slot's end, as KVM
            following = self._step(engine)
            if following is not None:
                self._queued.insert(queued, following)
                self.pending = None  # a read among them waits from when it is given (finish_instruction)
        else:
            self._known = []  # stopped after the instruction: it is complete
            if len(new) > len(parts):
                self._queue_writes(new[len(parts) :])  # the rest of a write across pages, or of more than 8 bytes
        return stop

    def _queue_writes(self, pieces: list[_Access]) -> None:
        """The exits of the write pieces after the first exit's, for the next runs to give."""
        for address, more in _exits(pieces):
            if not more[0].write:
                break
            data = b"".join((p.value or 0).to_bytes(p.size, "little") for p in more)
            self._queued.append(MmioExit(address, len(data), True, data))

    def _step(self, engine: Engine) -> Exit | None:
        """Replay the current instruction for one step; the next new access's exit, if any."""
        self._replay = True
        try:
            stop = self.run(engine, 1)
        finally:
            self._replay = False
        if stop.kind is StopKind.EXIT:
            return stop.exit
        self._known = []
        if stop.kind is not StopKind.SLICE and stop.kind is not StopKind.HLT:
            raise StateError(f"replaying an MMIO instruction stopped with {stop.kind}", operation="run")
        return None

    @property
    def has_unfinished(self) -> bool:
        """A queued exit, an answered IN, or known MMIO accesses wait for the next run."""
        return self._out_unfinished is not None or bool(self._known) or bool(self._queued) or self._in is not None

    def finish_instruction(self, engine: Engine, *, now: bool) -> Exit | None:
        """At the start of ``run()``: return a queued exit, or complete the answered IN / MMIO read.

        An answered MMIO read is replayed by the next slice itself (its callback answers from the
        known accesses); ``now`` (a kick or ``immediate_exit``) replays it at once instead, as KVM
        completes a pending read even when it does not enter the guest.
        """
        if self._out_unfinished is not None:
            self._finish_out(engine)
        if self._queued:
            queued = self._queued.pop(0)
            if (isinstance(queued, MmioExit) and not queued.is_write) or (isinstance(queued, IoExit) and queued.is_in):
                self.pending = queued
            return queued
        if self._in is not None:
            pending_in, self._in = self._in, None
            if pending_in.string:
                size = pending_in.exit.size
                data = b"".join(value.to_bytes(size, "little") for value in pending_in.data)
                self.completed_instruction = True
                return self._complete_string_in(engine, size, data)
            self._in_answers = pending_in.data
            self._engine = engine
            self._replay = True
            try:
                self.run(engine, pending_in.exit.count)
            finally:
                self._replay = False
            self._in_answers = []
            self.completed_instruction = True
            return None
        if self._known and now:
            return self._step(engine)
        return None

    def _finish_out(self, engine: Engine) -> None:
        """Move RIP past the OUT that exited, unless the VMM moved it (KVM's ``complete_fast_pio_out``)."""
        assert self._out_unfinished is not None
        rip, past, shadow = self._out_unfinished
        self._out_unfinished = None
        cells = self._cells
        if cells is None:
            engine.set_reg(engine.RIP, past)
        elif not cells.move_rip(rip, past):
            return
        if shadow:
            engine.interrupt_shadow = False  # the shadowed instruction is done (skip_emulated_instruction)
        if self.watch_resume_flag:
            self._resume_flag_done(engine, None)

    def complete(self, data: bytes | int) -> None:
        """Take the VMM's answer to the pending IN or MMIO read."""
        pending = self.pending
        if (  # the common case: a small read in one piece, answered with an int
            type(data) is int
            and type(pending) is MmioExit
            and len(self._answer_parts) == 1
            and 0 <= data < 1 << (8 * pending.length)
        ):
            self._answer_parts[0].value = data
            self.pending = None
            return
        data = completion_bytes(self.vcpu.id, pending, data)
        length = len(data)
        if isinstance(pending, IoExit):
            assert self._in is not None
            size = pending.size
            self._in.data = [int.from_bytes(data[i : i + size], "little") for i in range(0, length, size)]
        else:
            at = 0
            for access in self._answer_parts:
                access.value = int.from_bytes(data[at : at + access.size], "little")
                at += access.size
        self.pending = None

    def mapped_writable(self, pages: dict[int, set[int]]) -> None:
        """The logged pages a new engine mapped writable (so a later log read protects them again)."""
        self._unprotected = pages

    def sync_dirty(self, engine: Engine) -> None:
        """Write-protect again the pages a read of the dirty log cleared."""
        import unicorn

        dirty = self.guest.dirty
        if dirty.generation == self.dirty_generation:
            return
        for slot, pages in self._unprotected.items():
            still = dirty.writable_pages(slot)
            entry = self.guest.slot_by_id(slot)
            for page in pages - still:
                if entry is not None:
                    engine.uc.mem_protect(
                        entry.guest_address + page * PAGE_SIZE, PAGE_SIZE, unicorn.UC_PROT_READ | unicorn.UC_PROT_EXEC
                    )
            pages.intersection_update(still)
        self.dirty_generation = dirty.generation
