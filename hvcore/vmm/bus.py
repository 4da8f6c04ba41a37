"""``Bus``: one address space (port IO or MMIO) of device ranges.

A device registers ``[base, base + length)``; ranges may not overlap (``BusConflict``). An
access is dispatched to the device whose range holds its first byte, with the offset into that
range. Unclaimed reads answer all-ones and unclaimed writes are counted, as on a PC. Accesses
are counted per device (``reads``, ``writes``) and logged at DEBUG on ``hvcore.vmm.bus``.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections import Counter
from dataclasses import dataclass

from hvcore.arguments import check_implements, check_int
from hvcore.errors import BusConflict, InvalidArgument, NotFound
from hvcore.log import get_logger
from hvcore.vmm.device import Device

__all__ = ["Bus", "Range", "check_range_arguments"]

_log = get_logger("vmm.bus")


@dataclass(frozen=True)
class Range:
    """A device's range on a bus."""

    base: int
    length: int
    device: Device

    @property
    def end(self) -> int:
        """One past the last address."""
        return self.base + self.length


def check_range_arguments(base: object, length: object, device: object) -> None:
    """``base`` and ``length`` are ints and ``device`` a :class:`Device` (InvalidType otherwise)."""
    check_int("base", base, "register")
    check_int("length", length, "register")
    check_implements("device", device, Device, "register")


def _check_access(address: object, size: object, value: object, operation: str) -> None:
    check_int("address", address, operation)
    check_int("size", size, operation, 1, 9)
    check_int("value", value, operation)


class Bus:
    """Device ranges in an address space of ``limit`` addresses (0x10000 for ports)."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        # (bases, ranges) sorted by base, replaced whole under the lock: a lookup on a vCPU thread
        # reads one consistent pair while a device is being added or removed on another
        self._table: tuple[tuple[int, ...], tuple[Range, ...]] = ((), ())
        self._lock = threading.Lock()
        self.unclaimed_reads = 0
        self.unclaimed_writes = 0
        self.reads: Counter[str] = Counter()
        """Reads each device answered, by device name."""
        self.writes: Counter[str] = Counter()
        """Writes each device took, by device name."""

    def register(self, base: int, length: int, device: Device) -> Range:
        """Put ``device`` at ``[base, base + length)``; ``BusConflict`` if another device is there."""
        check_range_arguments(base, length, device)
        if length <= 0 or base < 0 or base + length > self.limit:
            raise InvalidArgument(
                f"{device.name}: {self.name} range {base:#x}+{length:#x} is outside 0..{self.limit:#x}",
                operation="register",
            )
        entry = Range(base, length, device)
        with self._lock:
            bases, ranges = self._table
            at = bisect.bisect_left(bases, base)
            for neighbour in ranges[max(0, at - 1) : at + 1]:
                if neighbour.base < entry.end and base < neighbour.end:
                    raise BusConflict(
                        f"{device.name} at {self.name} {base:#x}+{length:#x} overlaps {neighbour.device.name} "
                        f"at {neighbour.base:#x}+{neighbour.length:#x}; pick a free range",
                        operation="register",
                    )
            self._table = ((*bases[:at], base, *bases[at:]), (*ranges[:at], entry, *ranges[at:]))
        return entry

    def unregister(self, device: Device) -> None:
        """Remove every range of ``device``."""
        check_implements("device", device, Device, "unregister")
        with self._lock:
            ranges = self._table[1]
            kept = tuple(r for r in ranges if r.device is not device)
            if len(kept) == len(ranges):
                raise NotFound(f"{device.name} is not on the {self.name} bus", operation="unregister")
            self._table = (tuple(r.base for r in kept), kept)

    def find(self, address: int) -> Range | None:
        """The range holding ``address``, if any."""
        if type(address) is not int:
            check_int("address", address, "find")
        bases, ranges = self._table
        at = bisect.bisect_right(bases, address) - 1
        if at >= 0:
            entry = ranges[at]
            if address < entry.end:
                return entry
        return None

    def read(self, address: int, size: int) -> int:
        """Dispatch a read; all-ones when no device claims ``address``."""
        if type(address) is not int or type(size) is not int or not 0 < size <= 8:  # the exit path: one test
            _check_access(address, size, 0, "read")
        entry = self.find(address)
        if entry is None:
            self.unclaimed_reads += 1
            if _log.isEnabledFor(logging.DEBUG):
                _log.debug("%s read %#x/%d: unclaimed, all-ones", self.name, address, size)
            return (1 << (8 * size)) - 1
        name = entry.device.name
        self.reads[name] += 1
        value = entry.device.read(address - entry.base, size) & ((1 << (8 * size)) - 1)
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug("%s read %#x/%d = %#x (%s)", self.name, address, size, value, name)
        return value

    def write(self, address: int, size: int, value: int) -> bool:
        """Dispatch a write; False (and counted) when no device claims ``address``."""
        if type(address) is not int or type(size) is not int or type(value) is not int or not 0 < size <= 8:
            _check_access(address, size, value, "write")
        entry = self.find(address)
        value &= (1 << (8 * size)) - 1
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug(
                "%s write %#x/%d = %#x (%s)",
                self.name,
                address,
                size,
                value,
                entry.device.name if entry else "unclaimed",
            )
        if entry is None:
            self.unclaimed_writes += 1
            return False
        self.writes[entry.device.name] += 1
        entry.device.write(address - entry.base, size, value)
        return True

    def ranges(self) -> tuple[Range, ...]:
        """Every registered range, by base."""
        return self._table[1]
