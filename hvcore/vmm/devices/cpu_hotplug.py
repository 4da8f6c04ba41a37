"""ACPI CPU hotplug: QEMU's "modern" CPU hotplug registers and the GPE0 block that raises the SCI.

:class:`CpuHotplug` (ports 0x0CD8-0x0CE3, QEMU's ICH9 address) is the subset of QEMU's interface
(``docs/specs/acpi_cpu_hotplug.rst``) that the DSDT's methods (:mod:`hvcore.vmm.acpi.cpus`) use,
byte by byte, little-endian:

| offset | read | write |
|---|---|---|
| 0-3 | command data 2: 0 | CPU selector (a vCPU id; another makes reads 0, writes ignored) |
| 4 | bit 0 enabled (present), 1 insert event, 2 remove event | 1 in bit 1 / 2 clears that event; bit 3 ejects |
| 5 | 0 | command: 0 selects the next CPU with an event (none: no change), 3 its APIC ID |
| 8-11 | after command 0 the selector, after 3 the APIC ID (the vCPU id), else 0 | ignored (OST) |

An insert (:meth:`CpuHotplug.insert`) or a removal request (:meth:`CpuHotplug.request_removal`)
sets the GPE bit :data:`CPU_HOTPLUG_GPE` in :class:`Gpe0Block` (0xAFE0, 4 ports: two status bytes,
write 1 to clear, then two enable bytes), which holds the SCI line while a status bit is set
and enabled. A guest eject (bit 3, from ``_EJ0``) marks the CPU absent and calls ``eject(cpu)``
(``add_pc_devices`` passes one that unplugs the vCPU from the machine).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import ClassVar, Final

from hvcore.arguments import check_int
from hvcore.errors import StateError
from hvcore.log import get_logger
from hvcore.vmm.device import IrqLine

__all__ = ["CPU_HOTPLUG_GPE", "CpuHotplug", "Gpe0Block"]

CPU_HOTPLUG_GPE: Final = 2
"""The GPE bit of a CPU hotplug event (QEMU's: ``\\_GPE._E02``)."""
_ENABLED, _INSERT, _REMOVE, _EJECT = 1, 2, 4, 8
_FLAGS, _COMMAND, _DATA = 4, 5, 8
_NEXT_WITH_EVENT, _GET_ID = 0, 3
_log = get_logger("vmm.cpu_hotplug")


class Gpe0Block:
    """The FADT's GPE0 block: ``LENGTH // 2`` status bytes then as many enable bytes, the SCI held while
    any event is both pending and enabled."""

    PORT: ClassVar[int] = 0xAFE0
    LENGTH: ClassVar[int] = 4

    def __init__(self, sci: IrqLine | None, name: str = "gpe0") -> None:
        self.name = name
        self._sci = sci
        self._lock = threading.Lock()
        self._status = 0
        self._enable = 0
        self._level = False

    def trigger(self, bit: int) -> None:
        """Set status bit ``bit`` (an event happened): the SCI rises if the guest enabled it."""
        check_int("bit", bit, "trigger", 0, self.LENGTH * 4)
        with self._lock:
            self._status |= 1 << bit
            self._update()

    @property
    def status(self) -> int:
        """The status bits (pending events)."""
        return self._status

    @property
    def enable(self) -> int:
        """The enable bits the guest set."""
        return self._enable

    @property
    def sci(self) -> bool:
        """Whether the block holds the SCI line now."""
        return self._level

    def read(self, offset: int, size: int) -> int:
        """Status then enable bytes, little-endian (zeros past them)."""
        half = self.LENGTH // 2
        with self._lock:
            data = self._status.to_bytes(half, "little") + self._enable.to_bytes(half, "little")
        return int.from_bytes(data[offset : offset + size].ljust(size, b"\0"), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        """A 1 written to a status bit clears it; enable bytes take the value."""
        half = self.LENGTH // 2
        with self._lock:
            for index, byte in enumerate(value.to_bytes(size, "little")):
                at = offset + index
                if at < half:
                    self._status &= ~(byte << 8 * at)
                elif at < self.LENGTH:
                    shift = 8 * (at - half)
                    self._enable = self._enable & ~(0xFF << shift) | byte << shift
            self._update()

    def _update(self) -> None:
        level = bool(self._status & self._enable)
        if level != self._level:
            self._level = level
            if self._sci is not None:
                self._sci.set(level)


class CpuHotplug:
    """QEMU's modern CPU hotplug registers for ``cpus`` possible vCPUs (see the module docstring)."""

    PORT: ClassVar[int] = 0x0CD8
    LENGTH: ClassVar[int] = 12

    def __init__(
        self,
        cpus: int,
        gpe: Gpe0Block,
        *,
        present: Iterable[int] | None = None,
        eject: Callable[[int], None] | None = None,
        name: str = "cpu-hotplug",
    ) -> None:
        self.cpus = check_int("cpus", cpus, "CpuHotplug", 1, 256)
        self.name = name
        self._gpe = gpe
        self._eject = eject
        self._lock = threading.Lock()
        present = range(cpus) if present is None else present
        self._flags = [0] * cpus
        for cpu in present:
            self._flags[check_int("present", cpu, "CpuHotplug", 0, cpus)] = _ENABLED
        self._selector = 0
        self._command = _NEXT_WITH_EVENT

    @property
    def present(self) -> frozenset[int]:
        """The vCPUs ``_STA`` reports present."""
        with self._lock:
            return frozenset(cpu for cpu, flags in enumerate(self._flags) if flags & _ENABLED)

    def pending(self, cpu: int) -> tuple[bool, bool]:
        """Whether ``cpu`` has an insert event and a remove event the guest has not taken yet."""
        check_int("cpu", cpu, "pending", 0, self.cpus)
        with self._lock:
            return bool(self._flags[cpu] & _INSERT), bool(self._flags[cpu] & _REMOVE)

    def insert(self, cpu: int) -> None:
        """vCPU ``cpu`` is plugged in: present, with an insert event, and the hotplug GPE raised."""
        check_int("cpu", cpu, "insert", 0, self.cpus)
        with self._lock:
            self._flags[cpu] = _ENABLED | _INSERT
        self._gpe.trigger(CPU_HOTPLUG_GPE)

    def request_removal(self, cpu: int) -> None:
        """Ask the guest to give vCPU ``cpu`` back: a remove event and the GPE; the guest offlines the
        CPU and ejects it (``_EJ0``), which calls ``eject``. ``StateError`` if it is not present."""
        check_int("cpu", cpu, "request_removal", 1, self.cpus)
        with self._lock:
            if not self._flags[cpu] & _ENABLED:
                raise StateError(f"vCPU {cpu} is not present: plug it in first", operation="request_removal")
            self._flags[cpu] |= _REMOVE
        self._gpe.trigger(CPU_HOTPLUG_GPE)

    def removed(self, cpu: int) -> None:
        """vCPU ``cpu`` is out (the VMM unplugged it): absent from now on, its events dropped."""
        check_int("cpu", cpu, "removed", 0, self.cpus)
        with self._lock:
            self._flags[cpu] = 0

    def read(self, offset: int, size: int) -> int:
        """Little-endian bytes of the selected CPU's registers (all zero for a selector past the CPUs)."""
        with self._lock:
            data = bytearray(self.LENGTH)
            if self._selector < self.cpus:
                data[_FLAGS] = self._flags[self._selector] & (_ENABLED | _INSERT | _REMOVE)
                if self._command in (_NEXT_WITH_EVENT, _GET_ID):
                    data[_DATA : _DATA + 4] = self._selector.to_bytes(4, "little")
        return int.from_bytes(bytes(data[offset : offset + size]).ljust(size, b"\0"), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        """Selector, control (clear events, eject) and command bytes; the rest is ignored."""
        ejected: list[int] = []
        with self._lock:
            for index, byte in enumerate(value.to_bytes(size, "little")):
                at = offset + index
                if at < _FLAGS:
                    shift = 8 * at
                    self._selector = self._selector & ~(0xFF << shift) | byte << shift
                elif self._selector >= self.cpus:
                    continue
                elif at == _FLAGS:
                    ejected += self._control(byte)
                elif at == _COMMAND:
                    self._run(byte)
        for cpu in ejected:
            _log.info("the guest ejected vCPU %d", cpu)
            if self._eject is not None:
                self._eject(cpu)

    def _control(self, byte: int) -> list[int]:
        cpu = self._selector
        self._flags[cpu] &= ~(byte & (_INSERT | _REMOVE))
        if byte & _EJECT and cpu and self._flags[cpu] & _ENABLED:
            self._flags[cpu] = 0
            return [cpu]
        return []

    def _run(self, command: int) -> None:
        self._command = command
        if command == _NEXT_WITH_EVENT:
            for step in range(self.cpus):
                cpu = (self._selector + step) % self.cpus
                if self._flags[cpu] & (_INSERT | _REMOVE):
                    self._selector = cpu
                    break
