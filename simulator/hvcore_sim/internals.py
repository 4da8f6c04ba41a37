"""Unicorn state the exit rules use in place: lazy flags, interrupt shadow, split-access size, intercept bits.

**Lazy flags.** QEMU keeps the arithmetic flags lazily: ``CC_OP`` names the last flag-setting
operation and ``CC_SRC`` / ``CC_DST`` its operands, and EFLAGS is computed from them on demand.
When an instruction is aborted halfway (an MMIO read that stops the run, a refused write to a
read-only or dirty-logged page, a fault raised inside it), QEMU puts ``CC_OP`` back to the value
recorded when the instruction was translated (``restore_state_to_opc``). In a counted run, though,
Unicorn's per-instruction hook has already converted the flags at the start of that instruction
(``gen_compute_eflags``: ``CC_SRC`` = EFLAGS, ``CC_OP`` = ``CC_OP_EFLAGS``) after the translator
recorded the old ``CC_OP``. The restore then pairs the previous instruction's operation (e.g.
``CC_OP_SHLQ``) with ``CC_SRC`` already holding EFLAGS, and the flags read back wrong; leaving the
run then stores those wrong flags in ``env->eflags``, where the next run takes them from. The same
happens inside the IN / OUT / CPUID hooks, which sync the state the same way before calling back.
QEMU's translator never changes ``CC_SRC`` before the last access that can abort an instruction
(else faults would lose flags in plain QEMU too), so at such an abort ``CC_SRC`` holds the flags
the instruction started with, in EFLAGS form: :meth:`Cells.settle` sets ``CC_OP`` to
``CC_OP_EFLAGS`` and copies those flags into ``env->eflags``, and the state is right again.

``CC_OP`` lives in ``CPUX86State``, which the context blob copies. Copying the blob in and out
costs microseconds, more than an MMIO exit can spare, so the cells are read and written where the
CPU keeps them (:func:`hvcore_sim.unicorn_internals.env_cells` finds them and checks them for each
engine); where that is not possible the blob is used instead.

**Split-access size.** Unicorn performs an unaligned or page-crossing access as the two aligned
accesses around it and sets ``uc_struct.size_recur_mem`` to the access size meanwhile (it follows
``emu_count``). An MMIO read callback that sees it non-zero knows Unicorn's address and size are
not the guest's, and decodes the instruction instead (:mod:`hvcore_sim.operand`).

**Intercepts let through once.** Every guest IRET, SMSW, MOV to CR4, SGDT, SIDT, SLDT and STR reaches
the interrupt hook first; to let one run, the hook clears its bit (IRET and the descriptor-table
reads in ``env->intercept``, CR0 in
``env->intercept_cr_read``, CR4 in ``env->intercept_cr_write``) and the tracker sets it again once
the run stopped after it (:mod:`hvcore_sim.resume`, :mod:`hvcore_sim.smsw`,
:mod:`hvcore_sim.cpufeatures`). The bits are written through the same
``env`` pointer, or through the blob where that pointer could not be found.
"""

from __future__ import annotations

import functools
import struct
from typing import TYPE_CHECKING, Final

from hvcore_sim import unicorn_internals
from hvcore_sim.layout import CR0_READ_INTERCEPT, CR4_WRITE_INTERCEPT, HF_INHIBIT_IRQ, IRET_INTERCEPT
from hvcore_sim.unicorn_internals import CC_OP as _CC_OP
from hvcore_sim.unicorn_internals import CC_SRC as _CC_SRC
from hvcore_sim.unicorn_internals import I32Cell, IntCell, U16Cell, U32Cell, U64Cell, U64Cells

if TYPE_CHECKING:
    from hvcore_sim.engine import Engine
    from hvcore_sim.layout import ContextLayout

__all__ = ["CC_MASK", "Cells"]

CC_MASK: Final = 0x8D5
"""The arithmetic flags QEMU keeps lazily: OF SF ZF AF PF CF."""
_CC_OP_EFLAGS: Final = 1
_RFLAGS_IF = 1 << 9


@functools.cache
def _cc_fields(env: int) -> bool:
    """Whether ``cc_src`` / ``cc_op`` sit where QEMU 5.0 puts them (``env`` is regs[0] in the blob)."""
    from unicorn import x86_const as x

    from hvcore_sim.cpumodel import new_uc

    uc = new_uc()
    for flags in (0x8D7, 0x2):
        uc.reg_write(x.UC_X86_REG_RFLAGS, flags)
        blob = bytes(uc.context_save())
        cc_src = struct.unpack_from("<Q", blob, env + _CC_SRC)[0]
        cc_op = struct.unpack_from("<I", blob, env + _CC_OP)[0]
        if (cc_src, cc_op) != (flags & CC_MASK, _CC_OP_EFLAGS):
            return False
    return True


_DR7_WRITE_INTERCEPT = 1 << 7
_HF_CS64 = 1 << 15
_DF = 1 << 10
_JCC_O, _JCC_BE, _JCC_P, _JCC_L, _JCC_LE = 0, 3, 5, 6, 7  # QEMU's jcc_op numbers (the opcode's bits 3:1)
_CC_OP_SUB = frozenset(range(14, 18))  # CC_OP_SUBB .. CC_OP_SUBQ
_GROUP2 = frozenset({0xC0, 0xC1, 0xD0, 0xD1, 0xD2, 0xD3})  # shifts and rotates; /2 RCL, /3 RCR


def _flags_computed_first(cells: Cells) -> bool:
    """The instruction at RIP has QEMU compute EFLAGS before its memory access: RCL/RCR or SETcc on memory.

    (QEMU's translator calls ``gen_compute_eflags``, which labels the flags CC_OP_EFLAGS and drops
    CC_DST, ahead of the load or store; an abort there restores the older CC_OP.)
    """
    from hvcore_sim.decode import fetch_instruction, prefixes

    code = fetch_instruction(cells._engine, cells.rip())
    hflags = cells._hflags
    rex = hflags is not None and bool(hflags.value & _HF_CS64)  # (0x40-0x4f are INC / DEC outside 64-bit code)
    at = prefixes(code, rex=rex).length
    if at + 1 >= len(code):
        return False
    if code[at] in _GROUP2:
        modrm = code[at + 1]
        return modrm >> 6 != 3 and (modrm >> 3) & 7 in (2, 3)
    if code[at] != 0x0F or at + 2 >= len(code) or not 0x90 <= code[at + 1] <= 0x9F or code[at + 2] >> 6 == 3:
        return False
    # SETcc: QEMU computes EFLAGS first for O and P, and for BE, L and LE unless the flags came from a
    # SUB/CMP (gen_prepare_cc). B never, S and Z only when the block starts with the SETcc: not known
    # here, so not put right (hvcore README, simulator: fast runs).
    condition, cc_op = (code[at + 1] >> 1) & 7, cells._cc_op.value if cells._cc_op is not None else 0
    return condition in (_JCC_O, _JCC_P) or (condition in (_JCC_BE, _JCC_L, _JCC_LE) and cc_op not in _CC_OP_SUB)


class Cells:
    """One engine's lazy-flag cells and split-access size, read and written in place."""

    def __init__(self, engine: Engine) -> None:
        layout: ContextLayout = engine.layout
        self._engine = engine
        self._blob_ok = _cc_fields(layout.env)
        self._cc_op: U32Cell | None = None
        self._cc_src: U64Cell | None = None
        self._df: I32Cell | None = None
        self._aborted_eflags: tuple[int, int] | None = None  # (RIP, RFLAGS) noted by note_abort
        self._eflags: U64Cell | None = None
        self._hflags: U32Cell | None = None
        self._rip: U64Cell | None = None
        self._rsi: U64Cell | None = None
        self._cs: U32Cell | None = None
        self._cr0: U64Cell | None = None
        self._intercept: U64Cell | None = None
        self._intercept_cr_read: U16Cell | None = None
        self._intercept_cr_write: U16Cell | None = None
        self._intercept_dr_write: U16Cell | None = None
        self.debug_registers: U64Cells | None = None
        """``env->dr[0..7]`` in place, if found (the I/O trap's DR0, DR6 and DR7: :meth:`Engine.arm_io_trap`)."""
        rax, rip = engine.reg(engine.RAX), engine.reg(engine.RIP)  # (Unicorn creates its CPU on first use)
        found = unicorn_internals.env_cells(engine.uc, layout, rax, rip) if self._blob_ok else None
        if found is not None:
            self._cc_op, self._cc_src, self._df = found.cc_op, found.cc_src, found.df
            self._eflags, self._hflags, self._rip, self._rsi = found.eflags, found.hflags, found.rip, found.rsi
            self._cs, self._cr0, self._intercept = found.cs, found.cr0, found.intercept
            self._intercept_cr_read, self._intercept_cr_write = found.intercept_cr_read, found.intercept_cr_write
            self._intercept_dr_write = found.intercept_dr_write
            self.debug_registers = found.debug_registers
        self.split_size: IntCell | None = unicorn_internals.split_size_cell(engine.uc, layout.count)
        """Unicorn's ``size_recur_mem``: non-zero while it performs an access as two aligned ones."""

    def settle(self) -> None:
        """After an instruction aborted halfway: ``CC_SRC`` holds its starting flags; label them so.

        Also right inside a run (an INTR or CPUID hook), where ``env->eflags`` keeps no flags of its own.
        Counted runs mislabel them at every such stop (the count hook computes the flags before
        each instruction, after the point QEMU restores ``CC_OP`` to). A fast run's state is QEMU's
        own, and right, unless the instruction itself computed the flags before the access that
        stopped it (:func:`_flags_computed_first`), which mislabels them the same way.
        """
        cc_op = self._cc_op
        if self._engine.fast:
            if cc_op is None or cc_op.value == _CC_OP_EFLAGS or not _flags_computed_first(self):
                return
            self._settle_fast_abort(cc_op)
            return
        cc_src, eflags = self._cc_src, self._eflags
        if cc_op is not None and cc_src is not None and eflags is not None:
            if cc_op.value != _CC_OP_EFLAGS:  # else the flags were labelled right, and stored right
                cc_op.value = _CC_OP_EFLAGS
                eflags.value = eflags.value & ~CC_MASK | cc_src.value & CC_MASK
        elif self._blob_ok:
            engine = self._engine
            blob = engine._blob()
            env, at = engine.layout.env, engine.layout.eflags
            flags = struct.unpack_from("<Q", blob, env + _CC_SRC)[0] & CC_MASK
            struct.pack_into("<I", blob, env + _CC_OP, _CC_OP_EFLAGS)
            struct.pack_into("<Q", blob, at, struct.unpack_from("<Q", blob, at)[0] & ~CC_MASK | flags)
            engine._store(blob)

    def note_abort(self) -> None:
        """From a hook about to abort its instruction in a fast run: keep RFLAGS' non-arithmetic bits as they are now.

        When the run then stops, QEMU folds the lazy flags into RFLAGS; mislabelled ones (see
        :meth:`settle`) can fold in any bit, so the relabelling starts again from these.
        """
        eflags = self._eflags
        self._aborted_eflags = None if eflags is None else (self.rip(), eflags.value)

    def _settle_fast_abort(self, cc_op: U32Cell) -> None:
        eflags, cc_src, direction = self._eflags, self._cc_src, self._df
        assert eflags is not None and cc_src is not None and direction is not None
        noted, self._aborted_eflags = self._aborted_eflags, None
        kept = noted[1] if noted is not None and noted[0] == self.rip() else eflags.value  # (noted for this one)
        cc_op.value = _CC_OP_EFLAGS
        eflags.value = kept & ~(CC_MASK | _DF) | cc_src.value & CC_MASK | (_DF if direction.value < 0 else 0)

    def rip_rsi(self) -> tuple[int, int]:
        """RIP and RSI, read in place (the OUT rules read them at every OUT exit); also right inside a hook."""
        rip, rsi = self._rip, self._rsi
        if rip is not None and rsi is not None:
            return rip.value, rsi.value
        engine = self._engine
        return engine.reg(engine.RIP), engine.reg(engine.GPRS_BY_NUMBER[6])

    def out_state(self) -> tuple[int, int, bool]:
        """RIP, RSI and the STI / MOV SS shadow in one call (what an OUT hook records); also right inside a hook."""
        rip, rsi, hflags = self._rip, self._rsi, self._hflags
        if rip is not None and rsi is not None and hflags is not None:
            return rip.value, rsi.value, bool(hflags.value & HF_INHIBIT_IRQ)
        return (*self.rip_rsi(), self.interrupt_shadow())

    @property
    def rip_cell(self) -> U64Cell | None:
        """``env->eip`` in place, if found."""
        return self._rip

    def rip(self) -> int:
        """RIP, read in place; also right inside a hook."""
        cell = self._rip
        if cell is not None:
            return cell.value
        engine = self._engine
        return engine.reg(engine.RIP)

    def set_rip(self, value: int) -> None:
        """Write RIP in place, between runs only.

        Unicorn's own RIP write also asks a run in progress to stop (``quit_request``); between
        runs that changes nothing, as ``emu_start`` writes RIP the same way before it runs.
        """
        cell = self._rip
        if cell is not None:
            cell.value = value
            return
        engine = self._engine
        engine.set_reg(engine.RIP, value)

    def move_rip(self, expected: int, value: int) -> bool:
        """Write RIP (between runs) if it still is ``expected``; whether it was (one call for the OUT rules)."""
        cell = self._rip
        if cell is not None:
            if cell.value != expected:
                return False
            cell.value = value
            return True
        if self.rip() != expected:
            return False
        self.set_rip(value)
        return True

    def interrupts_enabled(self) -> bool:
        """RFLAGS.IF, read in place (QEMU keeps IF in ``env->eflags`` at all times, never lazily)."""
        cell = self._eflags
        if cell is not None:
            return bool(cell.value & _RFLAGS_IF)
        engine = self._engine
        return bool(engine.reg(engine.RFLAGS) & _RFLAGS_IF)

    def every_port_allowed(self) -> bool:
        """CS.RPL 0 or real mode (CR0.PE clear): no I/O permission check; read in place, also inside a hook."""
        cs, cr0 = self._cs, self._cr0
        if cs is not None and cr0 is not None:
            return not cs.value & 3 or not cr0.value & 1
        engine = self._engine
        return not engine.reg(engine.CS) & 3 or not engine.reg(engine.CR0) & 1

    def interrupt_shadow(self) -> bool:
        """The STI / MOV SS shadow (``HF_INHIBIT_IRQ``), read in place; also right inside a hook."""
        cell = self._hflags
        if cell is not None:
            return bool(cell.value & HF_INHIBIT_IRQ)
        return self._engine.interrupt_shadow

    def intercept_iret(self, on: bool) -> None:
        """Set or clear the IRET bit of ``env->intercept``: whether the next guest IRET reaches the hook first."""
        self.intercept(IRET_INTERCEPT, on)

    def intercept(self, bit: int, on: bool) -> None:
        """Set or clear ``bit`` of ``env->intercept``."""
        self._set_bit(self._intercept, self._engine.layout.intercept, "<Q", bit, on)

    def intercept_cr0_read(self, on: bool) -> None:
        """Set or clear the CR0 bit of ``env->intercept_cr_read``: whether the next CR0 read reaches the hook first."""
        self._set_bit(self._intercept_cr_read, self._engine.layout.intercept_cr, "<H", CR0_READ_INTERCEPT, on)

    def intercept_cr4_write(self, on: bool) -> None:
        """Set or clear the CR4 bit of ``env->intercept_cr_write``: whether the next MOV to CR4 reaches the hook."""
        at = self._engine.layout.intercept_cr + 2
        self._set_bit(self._intercept_cr_write, at, "<H", CR4_WRITE_INTERCEPT, on)

    def intercept_dr7_write(self, on: bool) -> None:
        """Set or clear the DR7 bit of ``env->intercept_dr_write``: whether the next MOV to DR7 reaches the hook."""
        self._set_bit(self._intercept_dr_write, self._engine.layout.intercept_cr + 6, "<H", _DR7_WRITE_INTERCEPT, on)

    def _set_bit(self, cell: U64Cell | U16Cell | None, at: int, fmt: str, bit: int, on: bool) -> None:
        if cell is not None:
            cell.value = cell.value | bit if on else cell.value & ~bit
            return
        engine = self._engine
        blob = engine._blob()
        bits = struct.unpack_from(fmt, blob, at)[0]
        struct.pack_into(fmt, blob, at, bits | bit if on else bits & ~bit)
        engine._store(blob)

    def entry_flags(self) -> int:
        """From inside an instruction: the arithmetic flags it started with (``CC_SRC``, EFLAGS form)."""
        cell = self._cc_src
        if cell is not None:
            return cell.value & CC_MASK
        engine = self._engine
        if self._blob_ok:
            return int(struct.unpack_from("<Q", engine._blob(), engine.layout.env + _CC_SRC)[0]) & CC_MASK
        return engine.reg(engine.RFLAGS) & CC_MASK
