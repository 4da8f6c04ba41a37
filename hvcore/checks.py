"""Argument checks and messages every backend shares, so both raise the same error for the same misuse."""

from __future__ import annotations

import errno as _errno
from collections.abc import Iterable
from dataclasses import fields
from typing import Any, Final

from hvcore.errors import InvalidArgument, StateError
from hvcore.exits import Exit, IoExit, MmioExit

__all__ = [
    "MAX_CPUID_ENTRIES",
    "check_cpuid",
    "check_msr",
    "check_vector",
    "check_width",
    "completion_bytes",
    "msr_refused",
    "msr_unreadable",
]

MAX_CPUID_ENTRIES: Final = 256
"""KVM's limit for ``KVM_SET_CPUID2`` (more is E2BIG)."""


def check_width(what: str, value: Any, bits: int, operation: str) -> None:
    """Every int field of dataclass ``value`` must be an unsigned ``bits``-bit number."""
    for f in fields(value):
        field_value = getattr(value, f.name)
        if isinstance(field_value, int) and not 0 <= field_value < 1 << bits:
            raise InvalidArgument(
                f"{what}.{f.name} = {field_value:#x} is not an unsigned {bits}-bit number", operation=operation
            )


def check_msr(index: int, value: int = 0) -> None:
    """An MSR index is 32-bit, a value 64-bit."""
    if not 0 <= index < 1 << 32:
        raise InvalidArgument(f"MSR index {index:#x} is not a 32-bit number", operation="msrs")
    if not 0 <= value < 1 << 64:
        raise InvalidArgument(f"MSR {index:#x}: value {value:#x} is not an unsigned 64-bit number", operation="msrs")


def msr_unreadable(index: int) -> InvalidArgument:
    """The error for reading an MSR the vCPU does not have."""
    return InvalidArgument(f"MSR {index:#x} cannot be read on this vCPU", operation="get_msrs")


def msr_refused(index: int, value: int) -> InvalidArgument:
    """The error for an MSR write the vCPU refused."""
    return InvalidArgument(f"MSR {index:#x} refused the value {value:#x}", operation="set_msrs")


def check_vector(vector: int, operation: str) -> None:
    """An interrupt vector is 0-255."""
    if not 0 <= vector < 256:
        raise InvalidArgument(f"interrupt vector {vector} is out of range 0-255", operation=operation)


def check_cpuid(entries: Iterable[Any]) -> list[Any]:
    """At most 256 entries (E2BIG past that, as KVM), every register 32-bit."""
    wanted = list(entries)
    if len(wanted) > MAX_CPUID_ENTRIES:
        raise InvalidArgument(
            f"{len(wanted)} CPUID entries are too many; KVM takes at most {MAX_CPUID_ENTRIES}",
            errno=_errno.E2BIG,
            operation="set_cpuid",
        )
    for entry in wanted:
        check_width("CpuidEntry", entry, 32, "set_cpuid")
    return wanted


def completion_bytes(vcpu_id: int, pending: Exit | None, data: bytes | int) -> bytes:
    """The answer to the pending IN (``size * count`` bytes) or MMIO read (``length`` bytes), checked.

    An int is packed little-endian to the access size (negative values as two's complement).
    """
    if not isinstance(pending, (IoExit, MmioExit)):
        raise StateError(f"vCPU {vcpu_id} has no IN or MMIO read waiting for data", operation="complete")
    length = pending.size * pending.count if isinstance(pending, IoExit) else pending.length
    if isinstance(data, int):
        if not -(1 << (8 * length - 1)) <= data < 1 << (8 * length):
            raise InvalidArgument(f"value {data:#x} does not fit the {length}-byte access", operation="complete")
        return (data & ((1 << (8 * length)) - 1)).to_bytes(length, "little")
    if len(data) != length:
        raise InvalidArgument(f"{pending!r} needs exactly {length} bytes, got {len(data)}", operation="complete")
    return bytes(data)
