"""Reading the mmapped ``struct kvm_run``: exit decoding and the completion of IN / MMIO reads.

Field offsets come from :class:`hvcore_kvm.uapi.KvmRun`; the precompiled
``struct`` formats used on the hot path are checked against them at import.
Nothing here hands out views of the mapping (a live view would make
``mmap.close()`` fail), only copies.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from collections.abc import Callable
from typing import Final

from hvcore._intern import InternTable
from hvcore.exits import (
    DebugExit,
    Exit,
    ExitReason,
    FailEntryExit,
    HltExit,
    InternalErrorExit,
    InterruptedExit,
    IoDirection,
    IoExit,
    IrqWindowOpenExit,
    MmioExit,
    ShutdownExit,
    SystemEventExit,
    UnknownExit,
)
from hvcore_kvm import uapi

__all__ = ["EXIT_IO", "Decoded", "decode_exit", "offset_of", "out_exit"]


def offset_of(cls: type[ctypes.Structure] | type[ctypes.Union], path: str) -> int:
    """Byte offset of a dotted field path, e.g. ``offset_of(KvmRun, "u.io.port")``."""
    offset = 0
    current: type = cls
    for name in path.split("."):
        fields = dict(current._fields_)  # type: ignore[attr-defined]
        offset += getattr(current, name).offset
        current = fields[name]
    return offset


def _checked(prefix: str, *fields: tuple[str, str]) -> tuple[int, struct.Struct]:
    """A ``struct.Struct`` for consecutive kvm_run fields ``(name, format)``, verified against the ctypes layout."""
    base = offset_of(uapi.KvmRun, f"{prefix}.{fields[0][0]}")
    for i, (name, _) in enumerate(fields):
        expected = offset_of(uapi.KvmRun, f"{prefix}.{name}") - base
        if struct.calcsize("<" + "".join(f for _, f in fields[:i])) != expected:
            raise AssertionError(f"kvm_run field {prefix}.{name} is not where uapi.KvmRun puts it")
    return base, struct.Struct("<" + "".join(f for _, f in fields))


REQUEST_INTERRUPT_WINDOW: Final = offset_of(uapi.KvmRun, "request_interrupt_window")
IMMEDIATE_EXIT: Final = offset_of(uapi.KvmRun, "immediate_exit")
EXIT_REASON: Final = offset_of(uapi.KvmRun, "exit_reason")
READY_FOR_INJECTION: Final = offset_of(uapi.KvmRun, "ready_for_interrupt_injection")
IF_FLAG: Final = offset_of(uapi.KvmRun, "if_flag")
FLAGS: Final = offset_of(uapi.KvmRun, "flags")
CR8: Final = offset_of(uapi.KvmRun, "cr8")
APIC_BASE: Final = offset_of(uapi.KvmRun, "apic_base")
MMIO_DATA: Final = offset_of(uapi.KvmRun, "u.mmio.data")

_IO_AT, _IO = _checked("u.io", ("direction", "B"), ("size", "B"), ("port", "H"), ("count", "I"), ("data_offset", "Q"))
_MMIO_AT, _MMIO = _checked("u.mmio", ("phys_addr", "Q"), ("data", "8s"), ("len", "I"), ("is_write", "B"))
_DEBUG_AT, _DEBUG = _checked("u.debug.arch", ("exception", "I"), ("pad", "I"), ("pc", "Q"), ("dr6", "Q"), ("dr7", "Q"))
_INTERNAL_AT, _INTERNAL = _checked("u.internal", ("suberror", "I"), ("ndata", "I"))
_EVENT_AT, _EVENT = _checked("u.system_event", ("type", "I"), ("ndata", "I"))
_FAIL_AT, _FAIL = _checked("u.fail_entry", ("hardware_entry_failure_reason", "Q"), ("cpu", "I"))
_HW_AT, _HW = _checked("u.hw", ("hardware_exit_reason", "Q"))
_REASON = struct.Struct("<I").unpack_from
# exit_reason and the io member of the union in one unpack (the IO hot path)
REASON_IO = struct.Struct(f"<I{_IO_AT - EXIT_REASON - 4}x{_IO.format[1:]}").unpack_from
if REASON_IO(bytes(uapi.KvmRun(exit_reason=7)), EXIT_REASON)[0] != 7:  # pragma: no cover
    raise AssertionError("kvm_run.exit_reason is not where uapi.KvmRun puts it")
_U64 = struct.Struct("<Q")
EXIT_IO: Final = int(ExitReason.IO)
"""``KVM_EXIT_IO``, as the plain int that ``REASON_IO`` unpacks (compared on the hot path)."""

_HLT: Final = HltExit()
_SHUTDOWN: Final = ShutdownExit()
_WINDOW: Final = IrqWindowOpenExit()
INTERRUPTED: Final = InterruptedExit()

Decoded = tuple[Exit, int]
"""An exit and, when it waits for ``complete()``, the kvm_run offset its answer goes to (else -1)."""

_OUT, _IN = IoDirection.OUT, IoDirection.IN


def _mmio(run: mmap.mmap) -> Decoded:
    address, data, length, is_write = _MMIO.unpack_from(run, _MMIO_AT)
    if is_write:
        return MmioExit(address, length, True, data[:length]), -1
    return MmioExit(address, length, False), MMIO_DATA


def _debug(run: mmap.mmap) -> Decoded:
    exception, _, pc, dr6, dr7 = _DEBUG.unpack_from(run, _DEBUG_AT)
    return DebugExit(exception, pc, dr6, dr7), -1


def _array(run: mmap.mmap, at: int, count: int) -> tuple[int, ...]:
    return tuple(_U64.unpack_from(run, at + 8 * i)[0] for i in range(min(count, 16)))


def _internal(run: mmap.mmap) -> Decoded:
    suberror, ndata = _INTERNAL.unpack_from(run, _INTERNAL_AT)
    return InternalErrorExit(suberror, _array(run, _INTERNAL_AT + 8, ndata)), -1


def _system_event(run: mmap.mmap) -> Decoded:
    kind, ndata = _EVENT.unpack_from(run, _EVENT_AT)
    return SystemEventExit(kind, _array(run, _EVENT_AT + 8, max(ndata, 1))), -1


def _fail_entry(run: mmap.mmap) -> Decoded:
    reason, cpu = _FAIL.unpack_from(run, _FAIL_AT)
    return FailEntryExit(reason, cpu), -1


_DECODERS: Final[dict[int, Callable[[mmap.mmap], Decoded]]] = {
    ExitReason.MMIO: _mmio,
    ExitReason.HLT: lambda run: (_HLT, -1),
    ExitReason.SHUTDOWN: lambda run: (_SHUTDOWN, -1),
    ExitReason.IRQ_WINDOW_OPEN: lambda run: (_WINDOW, -1),
    ExitReason.INTR: lambda run: (INTERRUPTED, -1),
    ExitReason.DEBUG: _debug,
    ExitReason.INTERNAL_ERROR: _internal,
    ExitReason.SYSTEM_EVENT: _system_event,
    ExitReason.FAIL_ENTRY: _fail_entry,
}


def _unknown(run: mmap.mmap, reason: int) -> Decoded:
    return UnknownExit(reason, _HW.unpack_from(run, _HW_AT)[0]), -1


OUT_EXITS: Final[InternTable[tuple[int, int, bytes], IoExit]] = InternTable()
"""Single-element OUT exits by (port, size, data): IoExits are immutable values, equal ones are shared (like _HLT)."""
_IN_EXITS: Final[InternTable[tuple[int, int, int], IoExit]] = InternTable()


def out_exit(run: mmap.mmap, size: int, port: int, count: int, data_offset: int) -> IoExit:
    """The OUT exit in ``run``: the shared value when a single-element OUT was seen before.

    Its io fields come as ``REASON_IO`` unpacked them: the one OUT path of ``decode_exit`` and ``KvmVCPU.run``.
    """
    data = run[data_offset : data_offset + size * count]
    exit_ = OUT_EXITS.get((port, size, data))
    if exit_ is None:
        exit_ = IoExit(port, size, count, _OUT, data)
        if count == 1:  # small keys only (string OUTs exit once per element anyway)
            OUT_EXITS.put((port, size, data), exit_)
    return exit_


def _new_in(port: int, size: int, count: int) -> IoExit:
    return _IN_EXITS.put((port, size, count), IoExit(port, size, count, _IN))


def decode_exit(run: mmap.mmap) -> Decoded:
    """Decode the exit in the kvm_run mapping ``run`` (an ``mmap.mmap``)."""
    reason, direction, size, port, count, data_offset = REASON_IO(run, EXIT_REASON)
    if reason == EXIT_IO:  # the hot path: one unpack, and a shared exit when it was seen before
        if direction:
            return out_exit(run, size, port, count, data_offset), -1
        exit_ = _IN_EXITS.get((port, size, count))
        return (exit_ if exit_ is not None else _new_in(port, size, count)), data_offset
    decoder = _DECODERS.get(reason)
    return decoder(run) if decoder is not None else _unknown(run, reason)
