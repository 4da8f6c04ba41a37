"""Argument checks and messages every backend shares, so both raise the same error for the same misuse."""

from __future__ import annotations

import errno as _errno
from collections.abc import Iterable, Sequence
from typing import Any, Final

from hvcore.arguments import check_data, check_instance, check_instances, check_int, check_int_mapping
from hvcore.errors import InvalidArgument, InvalidType, StateError
from hvcore.exits import Exit, IoExit, MmioExit
from hvcore.state_checks import check_state, check_state_argument
from hvcore.types import CpuidEntry, GsiRoute, IoapicState, IrqchipId, IrqchipRoute, MsiRoute, PicState, PitState

__all__ = [
    "IDENTITY_MAP_TOO_LATE",
    "MAX_CPUID_ENTRIES",
    "MAX_XCRS",
    "check_cpuid",
    "check_gsi_routes",
    "check_irqchip",
    "check_msi",
    "check_pit_state",
    "check_msr",
    "check_vector",
    "check_xcrs",
    "completion_bytes",
    "msr_refused",
    "msr_unreadable",
]

IDENTITY_MAP_TOO_LATE: Final = (
    "set the identity map address before creating any vCPU: KVM refuses KVM_SET_IDENTITY_MAP_ADDR once one exists"
)
"""The error for ``set_identity_map_address`` after ``create_vcpu`` (EINVAL on KVM, closed vCPUs count too)."""
MAX_XCRS: Final = 16
"""KVM_MAX_XCRS: ``KVM_SET_XCRS`` takes at most this many entries (EINVAL past that)."""
MAX_CPUID_ENTRIES: Final = 256
"""KVM's limit for ``KVM_SET_CPUID2`` (more is E2BIG)."""


def check_msr(index: int, value: int = 0) -> None:
    """An MSR index is 32-bit, a value 64-bit."""
    if not 0 <= index < 1 << 32:
        raise InvalidArgument(f"MSR index {index:#x} is not a 32-bit number", operation="msrs")
    if not 0 <= value < 1 << 64:
        raise InvalidArgument(f"MSR {index:#x}: value {value:#x} is not an unsigned 64-bit number", operation="msrs")


def check_xcrs(xcrs: object) -> list[tuple[int, int]]:
    """At most ``MAX_XCRS`` pairs of a 32-bit XCR number and a 64-bit value (``struct kvm_xcrs``)."""
    items = check_int_mapping("xcrs", xcrs, "set_xcrs")
    if len(items) > MAX_XCRS:
        raise InvalidArgument(f"{len(items)} XCRs; struct kvm_xcrs holds at most {MAX_XCRS}", operation="set_xcrs")
    for index, value in items:
        if not 0 <= index < 1 << 32:
            raise InvalidArgument(
                f"XCR index {index:#x} does not fit struct kvm_xcr.xcr, an unsigned 32-bit number", operation="set_xcrs"
            )
        if not 0 <= value < 1 << 64:
            raise InvalidArgument(
                f"XCR{index} = {value:#x} does not fit struct kvm_xcr.value, an unsigned 64-bit number",
                operation="set_xcrs",
            )
    return items


def msr_unreadable(index: int) -> InvalidArgument:
    """The error for reading an MSR the vCPU does not have."""
    return InvalidArgument(f"MSR {index:#x} cannot be read on this vCPU", operation="get_msrs")


def msr_refused(index: int, value: int) -> InvalidArgument:
    """The error for an MSR write the vCPU refused."""
    return InvalidArgument(f"MSR {index:#x} refused the value {value:#x}", operation="set_msrs")


def check_vector(vector: int, operation: str) -> None:
    """An interrupt vector is 0-255."""
    check_int("vector", vector, operation)
    if not 0 <= vector < 256:
        raise InvalidArgument(f"interrupt vector {vector} is out of range 0-255", operation=operation)


def check_cpuid(entries: Iterable[Any]) -> list[Any]:
    """At most 256 entries (E2BIG past that, as KVM), every register 32-bit."""
    wanted = check_instances("entries", entries, (CpuidEntry,), "set_cpuid")
    if len(wanted) > MAX_CPUID_ENTRIES:
        raise InvalidArgument(
            f"{len(wanted)} CPUID entries are too many; KVM takes at most {MAX_CPUID_ENTRIES}",
            errno=_errno.E2BIG,
            operation="set_cpuid",
        )
    for entry in wanted:
        check_state(entry, "set_cpuid")
    return wanted


def completion_bytes(vcpu_id: int, pending: Exit | None, data: bytes | int) -> bytes:
    """The answer to the pending IN (``size * count`` bytes) or MMIO read (``length`` bytes), checked.

    An int is packed little-endian to the access size (negative values as two's complement).
    """
    check_data("data", data, "complete")
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


MAX_GSI: Final = 1024
"""KVM_MAX_IRQ_ROUTES on x86: GSIs are below this (``irq_line`` takes the same range)."""
_PINS = {IrqchipId.PIC_MASTER: 8, IrqchipId.PIC_SLAVE: 8, IrqchipId.IOAPIC: 24}


def check_pit_state(state: PitState, operation: str) -> None:
    """Three channels of 8254 state with counts up to 65536 and valid modes."""
    check_state_argument("state", state, PitState, operation)
    for i, channel in enumerate(state.channels):
        if (
            not 0 <= channel.count <= 0x10000
            or not (0 <= channel.mode <= 5 or channel.mode == 0xFF)
            or not 0 <= channel.rw_mode <= 3
        ):
            raise InvalidArgument(
                f"PIT channel {i}: count {channel.count} (0..65536), mode {channel.mode} "
                f"(0..5, or 0xff: never programmed) or rw_mode {channel.rw_mode} (0..3) out of range",
                operation=operation,
            )


def check_msi(address: int, data: int, operation: str) -> None:
    """An x86 MSI: a 64-bit address in the 0xfeexxxxx window and 32-bit data."""
    check_int("address", address, operation)
    check_int("data", data, operation)
    if not 0 <= address < 1 << 64 or not 0 <= data < 1 << 32:
        raise InvalidArgument(f"MSI address {address:#x} / data {data:#x} out of range", operation=operation)


def check_gsi_routes(routes: Sequence[GsiRoute], operation: str) -> list[GsiRoute]:
    """GSIs below ``MAX_GSI``, irqchip pins that exist, MSI fields in range; at most ``MAX_GSI`` routes."""
    checked: list[GsiRoute] = check_instances("routes", routes, (IrqchipRoute, MsiRoute), operation)
    if len(checked) > MAX_GSI:
        raise InvalidArgument(f"{len(checked)} routes; KVM takes at most {MAX_GSI}", operation=operation)
    for route in checked:
        if not isinstance(route, IrqchipRoute | MsiRoute) or not 0 <= route.gsi < MAX_GSI:
            raise InvalidArgument(f"{route!r}: a GSI route with a GSI below {MAX_GSI}", operation=operation)
        if isinstance(route, IrqchipRoute):
            pins = _PINS.get(route.chip)
            if pins is None or not 0 <= route.pin < pins:
                raise InvalidArgument(
                    f"{route!r}: pin {route.pin} does not exist on {route.chip!r} (PICs have 8, the IOAPIC 24)",
                    operation=operation,
                )
        else:
            check_msi(route.address, route.data, operation)
    return checked


_NO_STATE: Final = object()


def check_irqchip(chip: IrqchipId | int, operation: str, state: object = _NO_STATE) -> IrqchipId:
    """``chip`` as an IrqchipId; with a ``state`` (``set_irqchip``), one of the right type for that chip."""
    number = check_int("chip", chip, operation)
    try:
        which = IrqchipId(number)
    except ValueError:
        raise InvalidArgument(
            f"{chip!r} is not an irqchip; use IrqchipId.PIC_MASTER, PIC_SLAVE or IOAPIC", operation=operation
        ) from None
    if state is not _NO_STATE:
        wanted = IoapicState if which is IrqchipId.IOAPIC else PicState
        if not isinstance(state, wanted):
            raise InvalidType(
                f"{which.name} takes a {wanted.__name__}, not {type(state).__name__}", operation=operation
            )
        check_instance("state", state, wanted, operation)
    return which
