"""String IN (``ins`` / ``rep ins``), completed as KVM's emulator does it.

Unicorn stores each element as it reads it from the port (after a dummy store of 0, QEMU's
restartability probe), so an INS whose destination is MMIO or a read-only slot would store
before its IN was ever answered, and one that overwrites its own code would be decoded anew
between two elements. KVM's emulator reads the batch from the port first (one IN
exit of ``count`` elements, ``pio_in_emulated``), then writes it (``segmented_write`` ->
``emulator_read_write``): split at page boundaries, RAM pages in place, every other page (no
slot, a read-only slot) as MMIO write exits of at most 8 bytes each (``complete_emulated_mmio``).

- Forward with REP the whole batch is one write; RCX and RDI move by the batch, RIP stays at
  the instruction (the next run goes on with it, or finds RCX = 0 and moves past it).
- Without REP the one element is written and RIP moves past the instruction.
- Backwards (DF = 1) each element is its own write: elements into RAM land, and the first one
  that needs an exit ends the batch. The rest of what KVM read from the port is dropped (the
  next entry reads anew): upstream's behaviour, kept.

The simulator's own devices (the LAPIC page, the IOAPIC) take their part of a write in place,
as KVM's in-kernel devices do (``vcpu_mmio_write``); only the rest becomes exits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hvcore.exits import MmioExit

__all__ = ["Destination", "StringInResult", "complete", "element_writes", "mmio_exits"]

_MMIO_EXIT_MAX = 8  # bytes: kvm_run.mmio.data

Translate = Callable[[int, int], Sequence[tuple[int, int]]]
"""``(linear, length)`` -> ``(physical, length)`` pieces split at pages; raises where a page does not map."""


@dataclass(frozen=True, slots=True)
class Destination:
    """How the guest-physical pages of a string IN's destination take a write."""

    writable: Callable[[int, int], bool]
    """``(physical, length)`` lies in RAM the guest may write (a slot, not read-only)."""
    store: Callable[[int, bytes], object]
    """Write RAM as the processor does (the pages are logged dirty)."""
    device: Callable[[int, bytes], list[MmioExit]]
    """An MMIO write: the simulator's own devices take their part, the rest comes back as exits (<= 8 bytes each)."""


@dataclass(frozen=True, slots=True)
class StringInResult:
    """What completing a string IN did: the exits it owes the VMM and how many elements it consumed."""

    exits: list[MmioExit]
    consumed: int


def element_writes(
    destination: int, size: int, count: int, *, rep: bool, backwards: bool
) -> list[tuple[int, int, int]]:
    """The emulator's writes of a batch: ``(linear, bytes, elements)``, in order."""
    if rep and not backwards:
        return [(destination, size * count, count)]
    step = -size if backwards else size
    return [(destination + i * step, size, 1) for i in range(count)]


def mmio_exits(physical: int, data: bytes) -> list[MmioExit]:
    """KVM's write exits for one page's MMIO fragment: 8 bytes at a time from its start."""
    return [
        MmioExit(physical + at, len(data[at : at + _MMIO_EXIT_MAX]), True, data[at : at + _MMIO_EXIT_MAX])
        for at in range(0, len(data), _MMIO_EXIT_MAX)
    ]


def complete(
    writes: Sequence[tuple[int, int, int]], data: bytes, translate: Translate, destination: Destination
) -> StringInResult:
    """Write the answered ``data`` as KVM's emulator does; stop after the first write that needs exits.

    A page that no longer maps (the VMM changed the page tables between the exit and its
    answer) ends the batch there, with nothing written for it.
    """
    exits: list[MmioExit] = []
    consumed = 0
    at = 0
    for linear, length, elements in writes:
        chunk = data[at : at + length]
        at += length
        try:
            pieces = translate(linear, length)
        except Exception:
            break
        offset = 0
        for physical, piece in pieces:
            part = chunk[offset : offset + piece]
            offset += piece
            if destination.writable(physical, piece):
                destination.store(physical, part)
            else:
                exits.extend(destination.device(physical, part))
        consumed += elements
        if exits:
            break
    return StringInResult(exits, consumed)
