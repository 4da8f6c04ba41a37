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
CPU keeps them: ``uc_struct.cpu`` points to QEMU's ``X86CPU``, and ``env`` is at a fixed offset in
it. Both offsets are found once by calibration (reading candidates through ``/proc/self/mem``,
which reports an unmapped address as an error instead of crashing) and checked for each engine;
where that is not possible the blob is used instead.

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

import ctypes
import functools
import os
import struct
from typing import TYPE_CHECKING, Any, Final

from hvcore_sim.layout import CR0_READ_INTERCEPT, CR4_WRITE_INTERCEPT, HF_INHIBIT_IRQ, IRET_INTERCEPT

if TYPE_CHECKING:
    from hvcore_sim.engine import Engine
    from hvcore_sim.layout import ContextLayout

__all__ = ["CC_MASK", "Cells", "cpu_offsets", "handle"]

CC_MASK: Final = 0x8D5
"""The arithmetic flags QEMU keeps lazily: OF SF ZF AF PF CF."""
_CC_OP_EFLAGS: Final = 1
# QEMU 5.0 CPUX86State, relative to regs[0]: cc_src and cc_op (checked by calibration)
_CC_SRC, _CC_OP = 152, 168
_EIP, _EFLAGS = 128, 136
_RSI = 6 * 8  # regs[R_ESI]
_R_CS = 1  # segs[R_CS]
_RFLAGS_IF = 1 << 9
_MARKERS: Final = (0x1122334455667788, 0x99AABBCCDDEEFF01, 0x0123456789ABCDEF, 0x7766554433221100)
_RIP_MARKER: Final = 0x0000123456789ABC
_SCAN_STRUCT = 2048  # bytes of uc_struct searched for the CPU pointer
_SCAN_OBJECT = 1 << 18  # bytes of each candidate object searched for the register file


def _engine() -> Any:
    from hvcore_sim.cpumodel import new_uc

    return new_uc()


def handle(uc: Any) -> int:
    """The address of an engine's ``uc_struct``."""
    address = ctypes.cast(uc._uch, ctypes.c_void_p).value
    assert address is not None
    return address


@functools.cache
def _cc_fields(env: int) -> bool:
    """Whether ``cc_src`` / ``cc_op`` sit where QEMU 5.0 puts them (``env`` is regs[0] in the blob)."""
    from unicorn import x86_const as x

    uc = _engine()
    for flags in (0x8D7, 0x2):
        uc.reg_write(x.UC_X86_REG_RFLAGS, flags)
        blob = bytes(uc.context_save())
        cc_src = struct.unpack_from("<Q", blob, env + _CC_SRC)[0]
        cc_op = struct.unpack_from("<I", blob, env + _CC_OP)[0]
        if (cc_src, cc_op) != (flags & CC_MASK, _CC_OP_EFLAGS):
            return False
    return True


def _peek(fd: int, address: int, length: int) -> bytes:
    try:
        return os.pread(fd, length, address)
    except (OSError, OverflowError):
        return b""


def _candidates(fd: int, markers: tuple[int, ...]) -> tuple[Any, set[tuple[int, int]]]:
    """``(offset in uc_struct, offset of env in the object it points to)`` pairs that fit one engine."""
    from unicorn import x86_const as x

    uc = _engine()
    for reg, value in zip(
        (x.UC_X86_REG_RAX, x.UC_X86_REG_RCX, x.UC_X86_REG_RDX, x.UC_X86_REG_RBX), markers, strict=True
    ):
        uc.reg_write(reg, value)
    uc.reg_write(x.UC_X86_REG_RIP, _RIP_MARKER)
    pattern = struct.pack("<4Q", *markers)
    rip = struct.pack("<Q", _RIP_MARKER)
    fields = ctypes.string_at(handle(uc), _SCAN_STRUCT)
    found: set[tuple[int, int]] = set()
    for offset in range(0, _SCAN_STRUCT, 8):
        pointer = struct.unpack_from("<Q", fields, offset)[0]
        if pointer % 8 or not 1 << 16 <= pointer < 1 << 47:
            continue
        data = _peek(fd, pointer, _SCAN_OBJECT)
        at = data.find(pattern)
        while at >= 0:
            # the CPU object holds env and, before it, CPUState.env_ptr pointing at it
            if at % 8 == 0 and data[at + _EIP : at + _EIP + 8] == rip:
                env_ptr = struct.pack("<Q", pointer + at)
                if any(data[i : i + 8] == env_ptr for i in range(0, at, 8)):
                    found.add((offset, at))
            at = data.find(pattern, at + 1)
    return uc, found


@functools.cache
def cpu_offsets() -> tuple[int, int] | None:
    """Where ``uc_struct`` points to the CPU, and where ``env`` is in it; None if they cannot be found safely."""
    try:
        fd = os.open("/proc/self/mem", os.O_RDONLY)
    except OSError:
        return None
    try:
        first, found = _candidates(fd, _MARKERS)
        second, again = _candidates(fd, tuple(m ^ 0x5A5A5A5A5A5A5A5A for m in _MARKERS))
        common = sorted(found & again, key=lambda pair: pair[1])
        if not common:
            return None
        offset, env = common[0]  # the nearest object start: the X86CPU itself
        from unicorn import x86_const as x

        for uc in (first, second):  # the cells are live: a register write shows through them
            pointer = struct.unpack("<Q", ctypes.string_at(handle(uc) + offset, 8))[0]
            uc.reg_write(x.UC_X86_REG_RAX, 0x5EED)
            if _peek(fd, pointer + env, 8) != struct.pack("<Q", 0x5EED):
                return None
        return offset, env
    finally:
        os.close(fd)


@functools.cache
def _split_size_offset(count: int) -> int | None:
    """Offset of ``size_recur_mem`` in ``uc_struct`` (after ``emu_count`` at ``count``), if it checks out."""
    import unicorn

    uc = _engine()
    page = ctypes.create_string_buffer(0x2000)
    uc.mem_map_ptr(0, 0x2000, unicorn.UC_PROT_ALL, ctypes.addressof(page))
    cell = ctypes.c_int.from_address(handle(uc) + count + 8)
    seen: list[tuple[int, int]] = []

    def read(_uc: Any, offset: int, size: int, _data: object) -> int:
        seen.append((offset, cell.value))
        return 0

    uc.mmio_map(0x10000, 0x1000, read, None, lambda *_: None, None)
    uc.ctl_exits_enabled(True)
    # mov eax, [0x10000]; mov eax, [0x10001]; hlt
    code = b"\x8b\x04\x25\x00\x00\x01\x00\x8b\x04\x25\x01\x00\x01\x00\xf4"
    ctypes.memmove(ctypes.addressof(page) + 0x1000, code, len(code))
    uc.emu_start(0x1000, 0, 0, 10)
    return count + 8 if seen == [(0, 0), (0, 4), (4, 4)] and cell.value == 0 else None


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
    from hvcore_sim.decode import LEGACY_PREFIXES, fetch_instruction

    code = fetch_instruction(cells._engine, cells.rip())
    hflags = cells._hflags
    rex = hflags is not None and bool(hflags.value & _HF_CS64)  # (0x40-0x4f are INC / DEC outside 64-bit code)
    at = 0
    while at < len(code) and (code[at] in LEGACY_PREFIXES or (rex and 0x40 <= code[at] <= 0x4F)):
        at += 1
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


_DR_MARKS = (0x5EED_0D06_0000_0DB0, 0x5EED_0D06_0000_0DB7)


def _debug_registers(engine: Engine, env: int, size: int) -> ctypes.Array[ctypes.c_uint64] | None:
    """``env->dr`` in place: found where Unicorn's writes of DR0 and DR7 land (56 bytes apart), else None."""
    dr0, dr7 = engine.reg(engine.DR0), engine.reg(engine.DR7)
    engine.set_reg(engine.DR0, _DR_MARKS[0])
    engine.set_reg(engine.DR7, _DR_MARKS[1])
    try:
        state = ctypes.string_at(env, size)
        at = state.find(_DR_MARKS[0].to_bytes(8, "little"))
        if at < 0 or at % 8 or state[at + 56 : at + 64] != _DR_MARKS[1].to_bytes(8, "little"):
            return None
        return (ctypes.c_uint64 * 8).from_address(env + at)
    finally:
        engine.set_reg(engine.DR0, dr0)
        engine.set_reg(engine.DR7, dr7)


class Cells:
    """One engine's lazy-flag cells and split-access size, read and written in place."""

    def __init__(self, engine: Engine) -> None:
        layout: ContextLayout = engine.layout
        self._engine = engine
        self._blob_ok = _cc_fields(layout.env)
        self._cc_op: ctypes.c_uint32 | None = None
        self._cc_src: ctypes.c_uint64 | None = None
        self._df: ctypes.c_int32 | None = None
        self._aborted_eflags: tuple[int, int] | None = None  # (RIP, RFLAGS) noted by note_abort
        self._eflags: ctypes.c_uint64 | None = None
        self._hflags: ctypes.c_uint32 | None = None
        self._rip: ctypes.c_uint64 | None = None
        self._rsi: ctypes.c_uint64 | None = None
        self._cs: ctypes.c_uint32 | None = None
        self._cr0: ctypes.c_uint64 | None = None
        self._intercept: ctypes.c_uint64 | None = None
        self._intercept_cr_read: ctypes.c_uint16 | None = None
        self._intercept_cr_write: ctypes.c_uint16 | None = None
        self._intercept_dr_write: ctypes.c_uint16 | None = None
        self.debug_registers: ctypes.Array[ctypes.c_uint64] | None = None
        """``env->dr[0..7]`` in place, if found (the I/O trap's DR0, DR6 and DR7: :meth:`Engine.arm_io_trap`)."""
        base = handle(engine.uc)
        offsets = cpu_offsets() if self._blob_ok else None
        rax, rip = engine.reg(engine.RAX), engine.reg(engine.RIP)  # (Unicorn creates its CPU on first use)
        cpu = ctypes.c_uint64.from_address(base + offsets[0]).value if offsets is not None else 0
        if offsets is not None and cpu:
            env = cpu + offsets[1]
            if ctypes.c_uint64.from_address(env).value == rax and ctypes.c_uint64.from_address(env + _EIP).value == rip:
                self._cc_op = ctypes.c_uint32.from_address(env + _CC_OP)
                self._cc_src = ctypes.c_uint64.from_address(env + _CC_SRC)
                self._df = ctypes.c_int32.from_address(env + _CC_OP + 4)  # QEMU's df (+1 / -1) follows cc_op
                self._eflags = ctypes.c_uint64.from_address(env + _EFLAGS)
                self._hflags = ctypes.c_uint32.from_address(env + layout.hflags - layout.env)
                self._rip = ctypes.c_uint64.from_address(env + _EIP)
                self._rsi = ctypes.c_uint64.from_address(env + _RSI)
                self._cs = ctypes.c_uint32.from_address(env + layout.segment(_R_CS) - layout.env)  # the selector
                self._cr0 = ctypes.c_uint64.from_address(env + layout.cr - layout.env)
                self._intercept = ctypes.c_uint64.from_address(env + layout.intercept - layout.env)
                self._intercept_cr_read = ctypes.c_uint16.from_address(env + layout.intercept_cr - layout.env)
                self._intercept_cr_write = ctypes.c_uint16.from_address(env + layout.intercept_cr + 2 - layout.env)
                self._intercept_dr_write = ctypes.c_uint16.from_address(env + layout.intercept_cr + 6 - layout.env)
                self.debug_registers = _debug_registers(engine, env, layout.size)
        split = _split_size_offset(layout.count)
        self.split_size: ctypes.c_int | None = None if split is None else ctypes.c_int.from_address(base + split)
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

    def _settle_fast_abort(self, cc_op: ctypes.c_uint32) -> None:
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
    def rip_cell(self) -> ctypes.c_uint64 | None:
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

    def _set_bit(self, cell: ctypes.c_uint64 | ctypes.c_uint16 | None, at: int, fmt: str, bit: int, on: bool) -> None:
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
