"""Every read and write of Unicorn's private memory: ``uc_struct``, QEMU's CPU object, hook records, the context.

Unicorn 2.1's public API does not reach what the simulator needs to be exact and fast, so it reads
and writes some of Unicorn's (and QEMU 5.0's) own structures in place. All of it is here: no other
simulator module imports ``ctypes`` but :mod:`hvcore_sim.memory`, for the host's own memory (an
import-linter contract in pyproject.toml keeps it so). Nothing is trusted blindly: each field is
located or checked on a scratch engine, once per process; where a check fails, the feature that
needs the field is turned off (and where the context layout does not fit, the backend refuses to
run: :mod:`hvcore_sim.layout`, whose offsets into the ``context_save()`` copy are not Unicorn's
memory and stay there).

What is reached, and how it is found:

The binding's handles
    ``Uc._uch`` is the address of the engine's ``uc_struct`` (:func:`handle`); a ``UcContext``'s
    ``context`` is the buffer ``context_save()`` copies the CPU state into (:func:`read_context`,
    :func:`write_context`).

``uc_struct``
    - ``emu_counter`` and ``emu_count``: what a counted run has run so far and its budget (u64 each,
      8 bytes apart). Two counted runs of ``jmp $`` leave ``count + 1`` and ``count`` in them
      (:func:`counter_offsets`). Read and lowered in place on every exit (:func:`counter_cells`).
    - ``size_recur_mem`` (int, right after ``emu_count``): the size of an access Unicorn performs as
      the two aligned accesses around it, 0 otherwise; checked with an unaligned MMIO read on a
      scratch engine (:func:`split_size_cell`).
    - ``count_hook`` (right before ``emu_counter``): the ``struct hook *`` of Unicorn's
      per-instruction counting hook, added at the first counted run (:func:`count_hook`).
    - ``cpu``: the pointer to QEMU's ``X86CPU`` (:func:`cpu_offsets`, below).

QEMU's ``X86CPU`` object (``CPUState`` first, ``CPUX86State env`` after it)
    - Where ``uc_struct`` points to it and where ``env`` is in it (:func:`cpu_offsets`): marker
      values are written to RAX..RBX and RIP, and every pointer in the first 2 KiB of ``uc_struct``
      is followed (reading through ``/proc/self/mem``, which reports an unmapped address as an
      error instead of crashing) to an object holding the markers, RIP 128 bytes after RAX (QEMU
      5.0's ``eip``) and, before them, ``CPUState.env_ptr`` pointing at them. Two engines must
      agree and a register write must show through; else None, and the blob is used instead.
    - ``env`` fields, as cells (:func:`env_cells`): ``regs[]``, ``eip``, ``eflags``, ``cc_src``
      (+152), ``cc_op`` (+168) and ``df`` (after ``cc_op``) at QEMU 5.0's offsets from ``regs[0]``
      (RAX and RIP must read back; ``cc_src``/``cc_op`` are also checked in the blob by
      :mod:`hvcore_sim.internals`); ``hflags``, CS's selector, CR0, ``intercept``,
      ``intercept_cr_read``/``_write`` and ``intercept_dr_write`` at the context layout's offsets;
      ``dr[0..7]`` where marker writes of DR0 and DR7 land, 56 bytes apart.
    - ``env->features`` (QEMU's ``FeatureWordArray``, u64 words): found by the words CPUID leaves 1
      and 7 report, checked against leaves 0x80000001 and 0xD and by changing the XSAVE component
      word and asking CPUID 0xD again (:func:`set_xsave_components`).
    - ``CPUState.cluster_index``: QEMU 5 has ``int cpu_index, cluster_index; uint32_t halted,
      can_do_io; int32_t exception_index;`` then ``struct uc_struct *uc``: the one pointer to the
      engine's own ``uc_struct`` with ``can_do_io`` 1 and no exception before it
      (:func:`cluster_index_cell`). Translated blocks are looked up by it; Unicorn leaves it unused.
    - ``CPUState.cflags_next_tb`` and ``interrupt_request``: the first u32 of -1 in CPUState's first
      256 bytes (``cflags_next_tb`` between runs), followed by a 0 (:func:`interrupt_request_offset`;
      :mod:`hvcore_sim.windows` checks it with two window runs before it is used).

Unicorn's ``struct hook`` (``int type, insn, refs, op, op_flags; bool to_delete; u64 begin, end; void *callback``)
    The counting hook's type, range and callback are read and its range moved in place
    (:class:`Hook`); a block hook on the same callback is added through the C ``uc_hook_add``
    (:func:`add_block_hook`).

The C API past the binding (:class:`DirectCalls`)
    ``uc_reg_read``, ``uc_reg_write``, ``uc_reg_read_batch``, ``uc_emu_start``, ``uc_emu_stop`` and
    ``uc_vmem_read`` called with the binding's handle: the binding's generic path costs ~2 us a call.

One module despite its length: every assumption about Unicorn's memory in one place, to be checked
in one file when Unicorn changes.
"""

from __future__ import annotations

import ctypes
import functools
import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from hvcore.types import Regs

if TYPE_CHECKING:
    from hvcore_sim.layout import ContextLayout

__all__ = [
    "CC_OP",
    "CC_SRC",
    "DirectCalls",
    "EnvCells",
    "Hook",
    "I32Cell",
    "IntCell",
    "U16Cell",
    "U32Cell",
    "U64Cell",
    "U64Cells",
    "add_block_hook",
    "cflags_next_tb_cell",
    "cluster_index_cell",
    "count_hook",
    "counter_cells",
    "counter_offsets",
    "cpu_offsets",
    "cpu_u32_cell",
    "env_cells",
    "handle",
    "interrupt_request_cell",
    "interrupt_request_offset",
    "read_context",
    "set_xsave_components",
    "split_size_cell",
    "write_context",
    "xsave_components_found",
]

U64Cell: TypeAlias = ctypes.c_uint64
"""A u64 field of Unicorn's memory in place (``.value`` reads and writes it)."""
U32Cell: TypeAlias = ctypes.c_uint32
"""A u32 field in place."""
U16Cell: TypeAlias = ctypes.c_uint16
"""A u16 field in place."""
I32Cell: TypeAlias = ctypes.c_int32
"""An int32_t field in place."""
IntCell: TypeAlias = ctypes.c_int
"""A C ``int`` field in place."""
U64Cells: TypeAlias = "ctypes.Array[ctypes.c_uint64]"
"""Consecutive u64 fields in place (``env->dr``)."""

# QEMU 5.0 CPUX86State, relative to regs[0]
_EIP, _EFLAGS = 128, 136
CC_SRC: Final = 152
"""``env->cc_src``, relative to ``regs[0]`` (the lazy flags' source operand, or EFLAGS)."""
CC_OP: Final = 168
"""``env->cc_op``, relative to ``regs[0]`` (which operation set the lazy flags); ``df`` follows it."""
_RSI = 6 * 8  # regs[R_ESI]
_R_CS = 1  # segs[R_CS]
_MARKERS: Final = (0x1122334455667788, 0x99AABBCCDDEEFF01, 0x0123456789ABCDEF, 0x7766554433221100)
_RIP_MARKER: Final = 0x0000123456789ABC
_SCAN_STRUCT = 2048  # bytes of uc_struct searched for the CPU pointer
_SCAN_OBJECT = 1 << 18  # bytes of each candidate object searched for the register file
_HEAD: Final = 256  # bytes of CPUState searched for cflags_next_tb / interrupt_request
_CFLAGS_NEXT_TB_IDLE: Final = b"\xff\xff\xff\xff"
_DR_MARKS = (0x5EED_0D06_0000_0DB0, 0x5EED_0D06_0000_0DB7)
# QEMU 5.0's FeatureWordArray, u64 words in FeatureWord order: FEAT_1_EDX, FEAT_1_ECX, FEAT_7_0_EBX, ...
_FEAT_8000_0001_EDX, _FEAT_XSAVE, _FEAT_XSAVE_COMP_LO = 6, 19, 21
_SCAN_FEATURES: Final = 1 << 14  # bytes of the CPU object after env searched for the feature words
_OSXSAVE: Final = 1 << 27
_OSPKE: Final = 1 << 4
# Unicorn 2.1's struct hook: int type, insn, refs, op, op_flags; bool to_delete; u64 begin, end; void *callback
_TYPE, _BEGIN, _END, _CALLBACK = 0, 24, 32, 40


def _engine() -> Any:
    from hvcore_sim.cpumodel import new_uc

    return new_uc()


def _scratch_engine(size: int, code: dict[int, bytes]) -> Any:
    """A fresh engine with ``size`` bytes of RAM at 0 holding ``code`` (address -> bytes), and no `until` stops."""
    import unicorn

    uc = _engine()
    uc.mem_map(0, size, unicorn.UC_PROT_ALL)
    for at, data in code.items():
        uc.mem_write(at, data)
    uc.ctl_exits_enabled(True)
    return uc


def handle(uc: Any) -> int:
    """The address of an engine's ``uc_struct``."""
    address = ctypes.cast(uc._uch, ctypes.c_void_p).value
    assert address is not None
    return address


def _peek(fd: int, address: int, length: int) -> bytes:
    try:
        return os.pread(fd, length, address)
    except (OSError, OverflowError):
        return b""


# -- the context buffer ------------------------------------------------------------------------


def read_context(context: Any, size: int) -> bytearray:
    """A copy of the first ``size`` bytes of a ``UcContext`` (``context_save()`` / ``context_update()`` fill it)."""
    return bytearray(ctypes.string_at(context.context, size))


def write_context(context: Any, data: bytes | bytearray) -> None:
    """Write ``data`` over the start of a ``UcContext``'s buffer (``context_restore()`` then loads it)."""
    ctypes.memmove(context.context, bytes(data), len(data))


# -- uc_struct ---------------------------------------------------------------------------------


def counter_offsets() -> tuple[int, int] | None:
    """Where ``emu_counter`` and ``emu_count`` are in ``uc_struct``; None unless two counted runs find one pair."""
    uc = _scratch_engine(0x1000, {0: b"\xeb\xfe"})  # jmp $
    base = handle(uc)
    span = 1 << 16

    def offsets(blob: bytes, value: int) -> set[int]:
        return {i for i in range(0, len(blob) - 7, 4) if struct.unpack_from("<Q", blob, i)[0] == value}

    def counted(count: int) -> tuple[set[int], set[int]]:
        uc.emu_start(0, 0, 0, count)
        blob = ctypes.string_at(base, span)
        return offsets(blob, count + 1), offsets(blob, count)

    counters_a, counts_a = counted(1234)
    counters_b, counts_b = counted(4321)
    counters, counts = counters_a & counters_b, counts_a & counts_b
    pairs = [(c, n) for c in counters for n in counts if n == c + 8]
    return pairs[0] if len(pairs) == 1 else None


def counter_cells(uc: Any, counter: int, count: int) -> tuple[U64Cell, U64Cell]:
    """``emu_counter`` and ``emu_count`` of ``uc`` in place (offsets from :func:`counter_offsets`)."""
    base = handle(uc)
    return ctypes.c_uint64.from_address(base + counter), ctypes.c_uint64.from_address(base + count)


@functools.cache
def _split_size_offset(count: int) -> int | None:
    """Offset of ``size_recur_mem`` in ``uc_struct`` (after ``emu_count`` at ``count``), if it checks out."""
    # mov eax, [0x10000]; mov eax, [0x10001]; hlt
    uc = _scratch_engine(0x2000, {0x1000: b"\x8b\x04\x25\x00\x00\x01\x00\x8b\x04\x25\x01\x00\x01\x00\xf4"})
    cell = ctypes.c_int.from_address(handle(uc) + count + 8)
    seen: list[tuple[int, int]] = []

    def read(_uc: Any, offset: int, size: int, _data: object) -> int:
        seen.append((offset, cell.value))
        return 0

    uc.mmio_map(0x10000, 0x1000, read, None, lambda *_: None, None)
    uc.emu_start(0x1000, 0, 0, 10)
    return count + 8 if seen == [(0, 0), (0, 4), (4, 4)] and cell.value == 0 else None


def split_size_cell(uc: Any, count: int) -> IntCell | None:
    """``size_recur_mem`` of ``uc`` in place (``count``: where ``emu_count`` is), if it was found."""
    at = _split_size_offset(count)
    return None if at is None else ctypes.c_int.from_address(handle(uc) + at)


def count_hook(uc: Any, counter: int) -> int:
    """The address of Unicorn's counting hook (``uc_struct.count_hook``, before ``emu_counter``); 0 if none yet."""
    return ctypes.c_uint64.from_address(handle(uc) + counter - 8).value


# -- QEMU's CPU object --------------------------------------------------------------------------


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


def _cpu(uc: Any) -> int:
    """The address of ``uc``'s ``X86CPU`` object; 0 where it is not known (or not created yet)."""
    offsets = cpu_offsets()
    return 0 if offsets is None else ctypes.c_uint64.from_address(handle(uc) + offsets[0]).value


def _env(uc: Any) -> int | None:
    offsets = cpu_offsets()
    cpu = _cpu(uc)
    return cpu + offsets[1] if offsets is not None and cpu else None


def cpu_u32_cell(uc: Any, offset: int) -> U32Cell | None:
    """The u32 at ``offset`` in ``uc``'s CPU object, in place; None where the object is not known."""
    cpu = _cpu(uc)
    return ctypes.c_uint32.from_address(cpu + offset) if cpu else None


@dataclass(frozen=True)
class EnvCells:
    """Fields of one engine's ``CPUX86State`` in place (see the module docstring for where each is)."""

    cc_op: U32Cell
    cc_src: U64Cell
    df: I32Cell
    """QEMU's direction flag, +1 or -1."""
    eflags: U64Cell
    hflags: U32Cell
    rip: U64Cell
    rsi: U64Cell
    cs: U32Cell
    """CS's selector."""
    cr0: U64Cell
    intercept: U64Cell
    intercept_cr_read: U16Cell
    intercept_cr_write: U16Cell
    intercept_dr_write: U16Cell
    debug_registers: U64Cells | None
    """``dr[0..7]``, where found."""


def _debug_registers(uc: Any, env: int, size: int) -> U64Cells | None:
    """``env->dr`` in place: found where Unicorn's writes of DR0 and DR7 land (56 bytes apart), else None."""
    from unicorn import x86_const as x

    dr0, dr7 = uc.reg_read(x.UC_X86_REG_DR0), uc.reg_read(x.UC_X86_REG_DR7)
    uc.reg_write(x.UC_X86_REG_DR0, _DR_MARKS[0])
    uc.reg_write(x.UC_X86_REG_DR7, _DR_MARKS[1])
    try:
        state = ctypes.string_at(env, size)
        at = state.find(_DR_MARKS[0].to_bytes(8, "little"))
        if at < 0 or at % 8 or state[at + 56 : at + 64] != _DR_MARKS[1].to_bytes(8, "little"):
            return None
        return (ctypes.c_uint64 * 8).from_address(env + at)
    finally:
        uc.reg_write(x.UC_X86_REG_DR0, dr0)
        uc.reg_write(x.UC_X86_REG_DR7, dr7)


def env_cells(uc: Any, layout: ContextLayout, rax: int, rip: int) -> EnvCells | None:
    """``uc``'s ``env`` fields in place; None where ``env`` was not found or does not hold ``rax`` and ``rip``.

    Read RAX and RIP through the API first: Unicorn creates its CPU on first use.
    """
    env = _env(uc)
    if env is None:
        return None

    def at(offset: int) -> int:  # a context-layout offset, as an address in env
        return env + offset - layout.env

    u64, u32, u16 = ctypes.c_uint64.from_address, ctypes.c_uint32.from_address, ctypes.c_uint16.from_address
    if u64(env).value != rax or u64(env + _EIP).value != rip:
        return None
    return EnvCells(
        cc_op=u32(env + CC_OP),
        cc_src=u64(env + CC_SRC),
        df=ctypes.c_int32.from_address(env + CC_OP + 4),
        eflags=u64(env + _EFLAGS),
        hflags=u32(at(layout.hflags)),
        rip=u64(env + _EIP),
        rsi=u64(env + _RSI),
        cs=u32(at(layout.segment(_R_CS))),
        cr0=u64(at(layout.cr)),
        intercept=u64(at(layout.intercept)),
        intercept_cr_read=u16(at(layout.intercept_cr)),
        intercept_cr_write=u16(at(layout.intercept_cr + 2)),
        intercept_dr_write=u16(at(layout.intercept_cr + 6)),
        debug_registers=_debug_registers(uc, env, layout.size),
    )


_UC_POINTER_AT: dict[tuple[int, int], int] = {}  # where CPUState.uc is, by cpu_offsets()


def cluster_index_cell(uc: Any) -> I32Cell | None:
    """``CPUState.cluster_index`` of ``uc``'s CPU in place, if found (the module docstring says how)."""
    offsets = cpu_offsets()
    cpu = _cpu(uc)
    if offsets is None or not cpu:
        return None
    base = handle(uc)
    known = _UC_POINTER_AT.get(offsets)
    candidates = range(24, offsets[1], 8) if known is None else (known,)
    found = [
        at
        for at in candidates
        if ctypes.c_uint64.from_address(cpu + at).value == base
        and ctypes.c_int32.from_address(cpu + at - 8).value == -1
        and ctypes.c_uint32.from_address(cpu + at - 12).value == 1
    ]
    if len(found) != 1:
        return None
    _UC_POINTER_AT[offsets] = found[0]  # the same in every engine of this Unicorn
    return ctypes.c_int32.from_address(cpu + found[0] - 20)


def interrupt_request_offset(uc: Any) -> int | None:
    """Where ``interrupt_request`` is in the CPU object of ``uc`` (an engine between runs), by its place after
    ``cflags_next_tb``; None if not found. Unchecked: :func:`hvcore_sim.windows.request_offset` checks it."""
    offsets = cpu_offsets()
    cpu = _cpu(uc)
    if offsets is None or not cpu:
        return None
    head = ctypes.string_at(cpu, min(_HEAD, offsets[1]))  # CPUState starts the object; env comes after it
    at = head.find(_CFLAGS_NEXT_TB_IDLE)
    if at < 0 or at % 4 or struct.unpack_from("<I", head, at + 4)[0] != 0:
        return None
    return at + 4


def interrupt_request_cell(uc: Any, offset: int | None, rax: int) -> U32Cell | None:
    """``CPUState.interrupt_request`` of ``uc`` in place (``offset`` checked), where its CPU holds ``rax``."""
    offsets = cpu_offsets()
    cpu = _cpu(uc)
    if offset is None or offsets is None or not cpu or ctypes.c_uint64.from_address(cpu + offsets[1]).value != rax:
        return None
    return ctypes.c_uint32.from_address(cpu + offset)


def cflags_next_tb_cell(requests: U32Cell | None) -> U32Cell | None:
    """``CPUState.cflags_next_tb`` in place: right before ``interrupt_request``."""
    return None if requests is None else ctypes.c_uint32.from_address(ctypes.addressof(requests) - 4)


def _cpuid(uc: Any, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
    from hvcore_sim.cpumodel import run_cpuid

    return run_cpuid(uc, leaf, subleaf)


@functools.cache
def _features_offset() -> int | None:
    """Where ``env->features`` starts, relative to ``env``; checked by changing the XSAVE word and asking CPUID."""
    from hvcore_sim.cpumodel import cpuid_engine

    uc = cpuid_engine()
    env = _env(uc)
    if env is None:
        return None
    leaf1, leaf7 = _cpuid(uc, 1), _cpuid(uc, 7)
    xsave0, xsave1, ext = _cpuid(uc, 0xD), _cpuid(uc, 0xD, 1), _cpuid(uc, 0x80000001)
    head = struct.pack("<5Q", leaf1[3], leaf1[2] & ~_OSXSAVE, leaf7[1], leaf7[2] & ~_OSPKE, leaf7[3])
    try:
        fd = os.open("/proc/self/mem", os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.pread(fd, _SCAN_FEATURES, env)
    except OSError:
        return None
    finally:
        os.close(fd)
    found = [i for i in range(0, len(data) - 8 * 23, 8) if data[i : i + 40] == head]
    if len(found) != 1:
        return None
    words = struct.unpack_from("<23Q", data, found[0])
    if (words[_FEAT_8000_0001_EDX], words[_FEAT_XSAVE], words[_FEAT_XSAVE_COMP_LO]) != (ext[3], xsave1[0], xsave0[0]):
        return None
    cell = ctypes.c_uint64.from_address(env + found[0] + 8 * _FEAT_XSAVE_COMP_LO)
    cell.value = 0x3
    return found[0] if _cpuid(uc, 0xD)[0] == 0x3 else None


def xsave_components_found() -> bool:
    """Whether :func:`set_xsave_components` works with this Unicorn here (it needs ``/proc/self/mem`` to calibrate)."""
    return _features_offset() is not None


def set_xsave_components(uc: Any, mask: int) -> bool:
    """Make ``mask`` the XSAVE components ``uc``'s CPU model has (CPUID 0xD, what XSETBV accepts); False if unknown."""
    offset, env = _features_offset(), _env(uc)
    if offset is None or env is None:
        return False
    ctypes.c_uint64.from_address(env + offset + 8 * _FEAT_XSAVE_COMP_LO).value = mask & 0xFFFFFFFF
    ctypes.c_uint64.from_address(env + offset + 8 * (_FEAT_XSAVE_COMP_LO + 1)).value = mask >> 32
    return True


# -- hooks ---------------------------------------------------------------------------------------


class Hook:
    """One of Unicorn's ``struct hook`` records, in place."""

    __slots__ = ("_begin", "_end", "address")

    def __init__(self, address: int) -> None:
        self.address = address
        self._begin = ctypes.c_uint64.from_address(address + _BEGIN)
        self._end = ctypes.c_uint64.from_address(address + _END)

    @property
    def type(self) -> int:
        """``UC_HOOK_*``."""
        return ctypes.c_int.from_address(self.address + _TYPE).value

    @property
    def callback(self) -> int:
        """The C function it calls."""
        return ctypes.c_uint64.from_address(self.address + _CALLBACK).value

    @property
    def bounds(self) -> tuple[int, int]:
        """``(begin, end)``: the addresses it fires for (``begin > end``: every address)."""
        return self._begin.value, self._end.value

    @bounds.setter
    def bounds(self, where: tuple[int, int]) -> None:
        self._begin.value, self._end.value = where


def add_block_hook(uc: Any, callback: int, begin: int, end: int) -> Hook | None:
    """Add a ``UC_HOOK_BLOCK`` hook calling the C function at ``callback`` (with no user data); None if refused."""
    import unicorn
    from unicorn.unicorn_py3.unicorn import uclib

    added = ctypes.c_size_t()
    status = uclib.uc_hook_add(
        uc._uch,
        ctypes.byref(added),
        unicorn.UC_HOOK_BLOCK,
        ctypes.c_void_p(callback),
        None,
        ctypes.c_uint64(begin),
        ctypes.c_uint64(end),
    )
    return None if status or not added.value else Hook(added.value)


# -- the C API -----------------------------------------------------------------------------------


class DirectCalls:
    """Unicorn's C API for one engine, called past the Python binding, and the engine's cells in place.

    The binding's generic path costs ~2 us a call; these are the same C functions with the
    binding's handle. Also the instruction counter and budget in ``uc_struct``
    (:attr:`counter_cell`), and RIP and DR0-DR7 in ``env`` where found.
    """

    def __init__(self, uc: Any, layout: ContextLayout, registers: tuple[int, ...]) -> None:
        import unicorn
        from unicorn import x86_const as x
        from unicorn.unicorn_py3.unicorn import uclib

        self.uc: Any = uc
        self.layout = layout
        self.RIP: Final = x.UC_X86_REG_RIP
        self._ctx: Any = uc.context_save()
        self._context_size = layout.size
        self.counter_cell, self._count = counter_cells(uc, layout.counter, layout.count)
        """``counter_cell``: Unicorn's instruction counter in place (``.value``): read on every MMIO access."""
        self._handle = uc._uch
        self._read_one = uclib.uc_reg_read
        self._write_one = uclib.uc_reg_write
        self._read_many = uclib.uc_reg_read_batch
        self._emu_start = uclib.uc_emu_start
        self._emu_stop = uclib.uc_emu_stop
        self._vmem_read = uclib.uc_vmem_read
        self._prot_exec = unicorn.UC_PROT_EXEC
        self._code = ctypes.create_string_buffer(16)
        self._uc_error = unicorn.UcError
        self._scratch = ctypes.c_uint64()
        self._scratch_ref = ctypes.byref(self._scratch)
        self._gprs = registers
        n = len(registers)
        self._gpr_ids = (ctypes.c_int * n)(*registers)
        self._gpr_values = (ctypes.c_uint64 * n)()
        at = ctypes.addressof(self._gpr_values)
        self._gpr_pointers = (ctypes.c_void_p * n)(*(at + 8 * i for i in range(n)))
        self.stop_requested = False
        """The run in progress (or the last one) was asked to stop by :meth:`stop`."""
        self.rip_cell: U64Cell | None = None
        """RIP in the CPU state, in place (:class:`hvcore_sim.internals.Cells` finds it)."""
        self.debug_registers: U64Cells | None = None
        """DR0-DR7 in the CPU state, in place (:class:`hvcore_sim.internals.Cells` finds them)."""

    def _blob(self) -> bytearray:
        self.uc.context_update(self._ctx)
        return bytearray(ctypes.string_at(self._ctx.context, self._context_size))

    def _store(self, blob: bytearray) -> None:
        ctypes.memmove(self._ctx.context, bytes(blob), self._context_size)
        self.uc.context_restore(self._ctx)

    def get_regs(self) -> Regs:
        """RAX..R15, RIP, RFLAGS."""
        if self._read_many(self._handle, self._gpr_ids, self._gpr_pointers, len(self._gprs)):
            read = self.uc.reg_read
            return Regs(*(read(r) for r in self._gprs))
        return Regs(*self._gpr_values)

    def reg(self, reg: int) -> int:
        """One 64-bit register by Unicorn id."""
        if self._read_one(self._handle, reg, self._scratch_ref):
            return int(self.uc.reg_read(reg))
        return self._scratch.value

    def set_reg(self, reg: int, value: int) -> None:
        """Write one 64-bit register by Unicorn id.

        RIP goes straight into the CPU state where :attr:`rip_cell` is known: Unicorn's own write
        of the PC from a hook also stops syncing RIP for every later hook of the run
        (``skip_sync_pc_on_exit``), which a fast run's I/O and protection hooks rely on. The
        simulator writes RIP only between runs and from hooks after which the CPU looks the next
        block up again (exceptions, intercepts, SYSCALL), where the CPU state's RIP is the one used.
        """
        if reg == self.RIP and self.rip_cell is not None:
            self.rip_cell.value = value & 0xFFFF_FFFF_FFFF_FFFF
            return
        if self._write_one(self._handle, reg, ctypes.byref(ctypes.c_uint64(value))):
            self.uc.reg_write(reg, value)

    def read_code(self, linear: int, length: int) -> bytes | None:
        """``length`` (<= 16) bytes at ``linear`` through Unicorn's MMU, as instruction fetch; None if unmapped.

        Only for code the CPU has just fetched: a failed walk sets CR2, as Unicorn's MMU faults do.
        """
        if self._vmem_read(self._handle, ctypes.c_uint64(linear), self._prot_exec, self._code, ctypes.c_size_t(length)):
            return None
        return self._code.raw[:length]

    def start(self, rip: int, count: int) -> None:
        """Run from ``rip`` for at most ``count`` instructions (stops and hooks may end it earlier).

        This is the binding's ``emu_start`` without its Python wrapper: the same C call, the same
        error and the same re-raise of an exception a hook raised.
        """
        status = self.start_status(rip, count)
        if status:
            raise self._uc_error(status)

    def start_status(self, rip: int, count: int) -> int:
        """:meth:`start`, with Unicorn's error as its status (0: none) instead of a ``UcError``.

        A run that a hook ended by refusing an access fails; raising and catching that costs more
        than the rest of an exit. An exception a hook raised is still raised.
        """
        uc = self.uc
        uc._hook_exception = None
        self.stop_requested = False
        status: int = self._emu_start(self._handle, rip, 0, 0, count)
        if uc._hook_exception is not None:
            raise uc._hook_exception
        return status

    def stop(self) -> None:
        """Ask the running engine to stop at the next instruction boundary (the binding's ``emu_stop``, unwrapped)."""
        self.stop_requested = True
        status = self._emu_stop(self._handle)
        if status:
            raise self._uc_error(status)
