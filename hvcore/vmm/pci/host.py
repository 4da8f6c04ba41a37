"""``PciHost``: PCI bus 0 of a machine, its configuration access, BAR decoding and interrupts.

Configuration space is reached two ways, both to the same functions: mechanism #1 (address at
port 0xCF8, data at 0xCFC-0xCFF; a byte write to 0xCF9 is PIIX's reset control register) and
ECAM (memory-mapped, 4 KiB per function, at :data:`ECAM_BASE`; the MCFG table points at it).
Slot 0 is the i440FX host bridge and slot 1 the PIIX3 ISA bridge; :meth:`PciHost.add` plugs a
function into the next free slot and assigns its BARs as firmware would (IO from 0xC000, memory
in :data:`MEMORY_WINDOW`), so a directly booted kernel finds them ready. When the guest moves a
BAR or turns decoding off, the range moves on the machine's bus; a BAR placed over RAM or another
device decodes nothing until it is moved again (counted in ``unmapped``), as the guest's mistake.

INTx: slot ``s`` pin ``p`` (1-4) drives PIRQ ``(s + p - 1) % 4``, which is GSI 16-19 on the IOAPIC
(the DSDT's ``_PRT`` says so) and, where the PIIX3's routing register enables it, an ISA IRQ
(what SeaBIOS sets up). A line stays asserted while any function on it asserts. MSI and MSI-X
go through ``signal_msi`` (:mod:`hvcore.vmm.pci.msi`).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Final

from hvcore.errors import BusConflict, InvalidArgument, ResourceExhausted
from hvcore.log import get_logger
from hvcore.vmm.acpi import AcpiPciRoot
from hvcore.vmm.device import StopRequest
from hvcore.vmm.pci.chipset import I440fxHostBridge, Piix3IsaBridge
from hvcore.vmm.pci.function import BAR_IO, COMMAND_IO, COMMAND_MASTER, COMMAND_MEMORY, CONFIG_SIZE, PciFunction

_log = get_logger("vmm.pci")

if TYPE_CHECKING:
    from hvcore.vmm.machine import Machine

__all__ = ["CONFIG_PORT", "ECAM_BASE", "FIRST_PCI_GSI", "IO_WINDOW", "MEMORY_WINDOW", "PciHost", "add_pci_host"]

CONFIG_PORT: Final = 0xCF8
"""Mechanism #1: the address register (0xCF8), reset control (0xCF9), data (0xCFC-0xCFF)."""
ECAM_BASE: Final = 0xE000_0000
"""Bus 0's ECAM window (1 MiB: 32 slots x 8 functions x 4 KiB)."""
ECAM_SIZE: Final = 32 * 8 * CONFIG_SIZE
MEMORY_WINDOW: Final = (0xC000_0000, 0x1000_0000)
"""Where :meth:`PciHost.add` puts memory BARs (base, length), in the 32-bit hole."""
IO_WINDOW: Final = (0xC000, 0x4000)
"""Where :meth:`PciHost.add` puts IO BARs (base, length)."""
FIRST_PCI_GSI: Final = 16
"""PIRQA's IOAPIC input; B-D follow."""
SLOTS: Final = 32
_ENABLE: Final = 1 << 31
_RESET_CONTROL_RESET: Final = 0x04


def _devfn(slot: int, function: int = 0) -> int:
    return slot << 3 | function


class PciHost:
    """Bus 0: its functions by device/function number, their BARs on ``machine``'s buses, their interrupts."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.name = "pci-host"
        self.functions: dict[int, PciFunction] = {}
        """Plugged-in functions by ``slot << 3 | function``."""
        self.unmapped = 0
        """BAR placements the guest made that could not decode (over RAM or another device)."""
        self._lock = threading.RLock()
        self.config_address = 0
        """Mechanism #1's address register (0xCF8): enable bit, bus, device, function, register."""
        self._mapped: dict[tuple[int, int], int] = {}  # (devfn, BAR) -> address it decodes at
        self._asserted: list[set[int]] = [set() for _ in range(4)]  # per PIRQ: devfns asserting
        self._isa_routes: list[int | None] = [None] * 4
        self._next_io, self._next_memory = IO_WINDOW[0], MEMORY_WINDOW[0]
        self.host_bridge = I440fxHostBridge(machine.smram.register_written)
        machine.smram.register_written(self.host_bridge.smram)  # its reset value: the VGA hole outside SMM
        self.isa_bridge = Piix3IsaBridge(self._reroute)
        self.plug(self.host_bridge, 0)
        self.plug(self.isa_bridge, 1)
        machine.add_io_device(CONFIG_PORT, 8, _ConfigPorts(self))
        machine.add_mmio_device(ECAM_BASE, ECAM_SIZE, _Ecam(self))

    # -- plugging ---------------------------------------------------------------------------------

    def add(self, function: PciFunction) -> int:
        """Plug ``function`` into the next free slot, assign its BARs and turn decoding and bus mastering
        on, as firmware would; its ``slot << 3`` device/function number."""
        slot = next((s for s in range(SLOTS) if _devfn(s) not in self.functions), None)
        if slot is None:
            raise ResourceExhausted(f"{function.name}: every one of the {SLOTS} PCI slots is taken", operation="add")
        devfn = self.plug(function, slot)
        for bar in function.bars:
            if bar is not None:
                function.set_bar_address(bar.index, self._allocate(function, bar.kind, bar.size))
        function.enable(COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER)
        return devfn

    def plug(self, function: PciFunction, slot: int, number: int = 0) -> int:
        """Plug ``function`` in at ``slot``/``number`` as it is (no BAR assigned); its device/function number."""
        if not 0 <= slot < SLOTS or not 0 <= number < 8:
            raise InvalidArgument(f"{function.name}: PCI slot {slot} function {number} is not 0-31/0-7")
        devfn = _devfn(slot, number)
        with self._lock:
            if devfn in self.functions:
                raise BusConflict(
                    f"{function.name}: PCI 00:{slot:02x}.{number} holds {self.functions[devfn].name}; "
                    "pick another slot",
                    operation="plug",
                )
            self.functions[devfn] = function
        pirq = self.pirq(slot, function.config[0x3D])
        function.intx = lambda level: self._intx(devfn, pirq, level)
        function.bars_changed = lambda changed: self._remap(devfn, changed)
        if self.machine.irqchip:
            function.msi = self._signal_msi
        if pirq is not None:
            function.config[0x3C] = FIRST_PCI_GSI + pirq
        return devfn

    @staticmethod
    def pirq(slot: int, pin: int) -> int | None:
        """The PIRQ (0-3) slot ``slot``'s INTx pin ``pin`` (1-4) drives; ``None`` for no pin."""
        return (slot + pin - 1) % 4 if pin else None

    def _allocate(self, function: PciFunction, kind: str, size: int) -> int:
        io = kind == BAR_IO
        base, length = IO_WINDOW if io else MEMORY_WINDOW
        at = -(-(self._next_io if io else self._next_memory) // size) * size
        if at + size > base + length:
            raise ResourceExhausted(
                f"{function.name}: no room for a {size:#x}-byte {kind} BAR in {base:#x}+{length:#x}", operation="add"
            )
        if io:
            self._next_io = at + size
        else:
            self._next_memory = at + size
        return at

    # -- configuration access ---------------------------------------------------------------------

    def config_read(self, bus: int, devfn: int, offset: int, size: int) -> int:
        """A configuration read; all-ones where no function answers."""
        function = self.functions.get(devfn) if bus == 0 else None
        if function is None or offset + size > CONFIG_SIZE:
            return (1 << (8 * size)) - 1
        with self._lock:
            return function.config_read(offset, size)

    def config_write(self, bus: int, devfn: int, offset: int, size: int, value: int) -> None:
        """A configuration write; dropped where no function answers."""
        function = self.functions.get(devfn) if bus == 0 else None
        if function is not None and offset + size <= CONFIG_SIZE:
            with self._lock:
                function.config_write(offset, size, value)

    # -- BARs ---------------------------------------------------------------------------------------

    def _remap(self, devfn: int, function: PciFunction) -> None:
        with self._lock:
            for bar in function.bars:
                if bar is None:
                    continue
                key = (devfn, bar.index)
                want, have = function.bar_address(bar.index), self._mapped.get(key)
                if want == have:
                    continue
                bus = self.machine.io_bus if bar.kind == BAR_IO else self.machine.mmio_bus
                if have is not None:
                    bus.unregister(bar.device)
                    del self._mapped[key]
                if want is None:
                    continue
                try:
                    if bar.kind == BAR_IO:
                        self.machine.add_io_device(want, bar.size, bar.device)
                    else:
                        self.machine.add_mmio_device(want, bar.size, bar.device)
                except (BusConflict, InvalidArgument) as refused:
                    self.unmapped += 1
                    _log.warning("%s BAR %d at %#x decodes nothing: %s", function.name, bar.index, want, refused)
                    continue
                self._mapped[key] = want
                _log.info("%s BAR %d (%s, %#x bytes) at %#x", function.name, bar.index, bar.kind, bar.size, want)

    def bar_address(self, devfn: int, index: int) -> int | None:
        """Where BAR ``index`` of function ``devfn`` decodes on its bus now, if anywhere."""
        return self._mapped.get((devfn, index))

    # -- interrupts ---------------------------------------------------------------------------------

    def _intx(self, devfn: int, pirq: int | None, level: bool) -> None:
        if pirq is None:
            return
        with self._lock:
            asserting = self._asserted[pirq]
            was = bool(asserting)
            if level:
                asserting.add(devfn)
            else:
                asserting.discard(devfn)
            if bool(asserting) != was:
                self._drive(pirq, bool(asserting))

    def _drive(self, pirq: int, level: bool) -> None:
        for gsi in (FIRST_PCI_GSI + pirq, self._isa_routes[pirq]):
            line = self.machine.irq(gsi) if gsi is not None else None
            if line is not None:
                line.set(level)

    def _reroute(self) -> None:
        with self._lock:
            for pirq in range(4):
                route = self.isa_bridge.isa_irq(pirq)
                old = self._isa_routes[pirq]
                if route == old:
                    continue
                if old is not None and self._asserted[pirq]:
                    line = self.machine.irq(old)
                    if line is not None:
                        line.set(False)
                self._isa_routes[pirq] = route
                if route is not None and self._asserted[pirq]:
                    line = self.machine.irq(route)
                    if line is not None:
                        line.set(True)

    def _signal_msi(self, address: int, data: int) -> None:
        self.machine.vm.signal_msi(address, data)

    # -- what the ACPI tables say -------------------------------------------------------------------

    def acpi(self) -> AcpiPciRoot:
        """Bus 0 for the DSDT and MCFG: ECAM, the windows and each slot's INTx routes."""
        routes = tuple((slot, pin, FIRST_PCI_GSI + (slot + pin) % 4) for slot in range(SLOTS) for pin in range(4))
        return AcpiPciRoot(ECAM_BASE, 1, IO_WINDOW, MEMORY_WINDOW, routes)

    def reset_requested(self, value: int) -> None:
        """PIIX's reset control register (0xCF9): bit 2 resets the machine."""
        if value & _RESET_CONTROL_RESET:
            self.machine.request_stop(StopRequest("reset"))

    def close(self) -> None:
        """Close every plugged-in function (the machine calls this when it closes)."""
        for function in list(self.functions.values()):
            function.close()


class _ConfigPorts:
    """Ports 0xCF8-0xCFF: mechanism #1's address and data registers, and PIIX's reset control at 0xCF9."""

    def __init__(self, host: PciHost) -> None:
        self.host = host
        self.name = "pci-config"

    def read(self, offset: int, size: int) -> int:
        if offset == 0 and size == 4:
            return self.host.config_address
        if offset >= 4 and self.host.config_address & _ENABLE:
            return self._data(offset, size, None)
        return (1 << (8 * size)) - 1 if offset != 1 else 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == 4:
            self.host.config_address = value & 0x80FF_FFFC
        elif offset == 1 and size == 1:
            self.host.reset_requested(value)
        elif offset >= 4 and self.host.config_address & _ENABLE:
            self._data(offset, size, value)

    def _data(self, offset: int, size: int, value: int | None) -> int:
        address = self.host.config_address
        bus, devfn, register = address >> 16 & 0xFF, address >> 8 & 0xFF, (address & 0xFC) + offset - 4
        if value is None:
            return self.host.config_read(bus, devfn, register, size)
        self.host.config_write(bus, devfn, register, size, value)
        return 0


class _Ecam:
    """Bus 0's memory-mapped configuration space: 4 KiB per function."""

    def __init__(self, host: PciHost) -> None:
        self.host = host
        self.name = "pci-ecam"

    def read(self, offset: int, size: int) -> int:
        if size > 4:
            return (1 << (8 * size)) - 1
        return self.host.config_read(0, offset >> 12, offset & 0xFFF, size)

    def write(self, offset: int, size: int, value: int) -> None:
        if size <= 4:
            self.host.config_write(0, offset >> 12, offset & 0xFFF, size, value)


def add_pci_host(machine: Machine) -> PciHost:
    """Give ``machine`` a PCI bus (i440FX and PIIX3, mechanism #1 and ECAM), described in its ACPI tables."""
    host = PciHost(machine)
    machine.pci = host
    return host
