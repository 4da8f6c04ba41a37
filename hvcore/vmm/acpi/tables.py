"""ACPI tables for a direct kernel boot: RSDP, XSDT, FADT, MADT and DSDT (ACPI 6.5, chapter 5).

The machine is a PC (PIC, PIT, i8042, CMOS) with the smallest ACPI fixed hardware: the PM1
event and control registers of :class:`~hvcore.vmm.devices.acpi_pm.AcpiPm` (always in ACPI
mode, power-off through ``\\_S5``), SCI on IRQ 9, and a reset register that is the i8042's
reset command (port 0x64, value 0xFE), so ``reboot`` works without ``reboot=`` on the command
line. (A hardware-reduced FADT, as Firecracker builds, makes Linux drop the PIC and PIT and
reboot through EFI, then the BIOS reset vector, which a direct boot does not have.) The MADT
lists every vCPU's local APIC and the IOAPIC, IRQ 0 routed to GSI 2 and the SCI level-triggered,
as on a PC, so Linux brings up every vCPU; a possible vCPU that is not present (``present``) is listed
disabled but online-capable (ACPI 6.3), so Linux counts it as a CPU to hot-add. With ``hotplug``
(:class:`~hvcore.vmm.acpi.cpus.AcpiCpuHotplug`) the FADT has a GPE0 block and the DSDT a processor
device per possible vCPU with QEMU's CPU hotplug methods (:mod:`hvcore.vmm.acpi.cpus`).
The DSDT describes what the kernel cannot probe, such as
virtio-mmio transports (``LNRO0005``), and, on a machine with PCI, the root bridge ``PCI0`` (its bus
range, IO and memory windows, and a ``_PRT`` giving each slot's INTx GSI) with the MCFG pointing
at ECAM (reserved as a motherboard resource, ``PNP0C02``, which Linux wants before it uses ECAM).

:func:`build_acpi` lays the tables out from one guest-physical address, the RSDP first; Linux
finds it through ``boot_params.acpi_rsdp_addr`` or by scanning 0xE0000-0xFFFFF.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Final

from hvcore.errors import InvalidArgument
from hvcore.vmm.acpi import aml
from hvcore.vmm.acpi.cpus import AcpiCpuHotplug, cpu_devices, gpe_methods
from hvcore.vmm.devices.acpi_pm import SLEEP_TYPE_S5, AcpiPm

__all__ = [
    "IOAPIC_ADDRESS",
    "LAPIC_ADDRESS",
    "OEM_ID",
    "PM_PORT",
    "SCI_IRQ",
    "AcpiCpuHotplug",
    "AcpiDevice",
    "AcpiLayout",
    "AcpiPciRoot",
    "RSDP_SIZE",
    "build_acpi",
    "checksum",
    "lay_out",
    "rsdp",
]

OEM_ID: Final = b"HVCORE"
"""The OEM ID every table carries."""
LAPIC_ADDRESS: Final = 0xFEE00000
"""Where the MADT says the local APICs are."""
IOAPIC_ADDRESS: Final = 0xFEC00000
"""Where the MADT says the IOAPIC is (GSI base 0)."""
_OEM_TABLE_ID: Final = b"HVCOREVM"
_CREATOR: Final = b"HVCR"
_HEADER = struct.Struct("<4sIBB6s8sI4sI")
_FADT_LENGTH: Final = 276
# FADT flags: WBINVD, PROC_C1, PWR_BUTTON and SLP_BUTTON (none), FIX_RTC, RESET_REG_SUP
_FADT_FLAGS: Final = 1 << 0 | 1 << 2 | 1 << 4 | 1 << 5 | 1 << 6 | 1 << 10
_IAPC_LEGACY_DEVICES, _IAPC_8042 = 1 << 0, 1 << 1
_MADT_PCAT_COMPAT: Final = 1
_LAPIC_ENABLED, _LAPIC_ONLINE_CAPABLE = 1, 2
SCI_IRQ: Final = 9
"""The SCI's ISA IRQ (and GSI), level-triggered and active-high as on a PC."""
PM_PORT: Final = AcpiPm.PORT
"""Where the PM1a event block (4 bytes), control block (2 bytes, at +4) and PM timer (at +8) are."""
_SYSTEM_IO: Final = 1
_RESET_PORT, _RESET_VALUE = 0x64, 0xFE  # the i8042's pulse-reset command


@dataclass(frozen=True)
class AcpiDevice:
    """A device the DSDT describes: ``hid`` (e.g. ``"LNRO0005"``, virtio-mmio), an MMIO range and a level GSI."""

    hid: str
    uid: int
    base: int
    length: int
    gsi: int


@dataclass(frozen=True)
class AcpiPciRoot:
    """PCI bus 0 for the DSDT (``PNP0A03`` with its windows and ``_PRT``) and the MCFG (ECAM)."""

    ecam: int
    """Bus 0's ECAM base."""
    buses: int
    """How many buses ECAM covers, from 0."""
    io: tuple[int, int]
    """The IO window BARs are placed in (base, length)."""
    memory: tuple[int, int]
    """The memory window BARs are placed in (base, length), below 4 GiB."""
    routes: tuple[tuple[int, int, int], ...]
    """``(slot, pin, gsi)``: INTx pin ``pin`` (0-3 for INTA-INTD) of slot ``slot`` interrupts on ``gsi``."""


def checksum(data: bytes) -> int:
    """The byte that makes ``data`` plus it sum to zero (mod 256)."""
    return -sum(data) & 0xFF


def _table(signature: bytes, revision: int, body: bytes) -> bytes:
    length = _HEADER.size + len(body)
    header = _HEADER.pack(signature, length, revision, 0, OEM_ID, _OEM_TABLE_ID, 1, _CREATOR, 1)
    table = header + body
    return table[:9] + bytes([checksum(table)]) + table[10:]


def _madt(cpus: int, present: Collection[int]) -> bytes:
    body = struct.pack("<II", LAPIC_ADDRESS, _MADT_PCAT_COMPAT)
    for cpu in range(cpus):
        flags = _LAPIC_ENABLED if cpu in present else _LAPIC_ONLINE_CAPABLE
        body += struct.pack("<BBBBI", 0, 8, cpu, cpu, flags)  # processor local APIC: UID, APIC ID, flags
    body += struct.pack("<BBBBII", 1, 12, 0, 0, IOAPIC_ADDRESS, 0)  # IOAPIC 0, GSI base 0
    body += struct.pack("<BBBBIH", 2, 10, 0, 0, 2, 0)  # ISA IRQ 0 -> GSI 2, bus-conforming
    body += struct.pack("<BBBBIH", 2, 10, 0, SCI_IRQ, SCI_IRQ, 0xD)  # the SCI: level, active-high
    body += struct.pack("<BBBHB", 4, 6, 0xFF, 0, 1)  # every local APIC: NMI on LINT1
    return _table(b"APIC", 5, body)


def _gas(port: int, width: int, access: int = 0) -> bytes:
    """A generic address structure in system IO space."""
    return struct.pack("<BBBBQ", _SYSTEM_IO, width, 0, access, port)


def _fadt(dsdt: int, hotplug: AcpiCpuHotplug | None) -> bytes:
    body = bytearray(_FADT_LENGTH - _HEADER.size)

    def put(offset: int, layout: str, *values: int) -> None:
        struct.pack_into(layout, body, offset - _HEADER.size, *values)

    put(40, "<I", dsdt)
    put(46, "<H", SCI_IRQ)
    put(56, "<I", PM_PORT)  # PM1a_EVT_BLK
    put(64, "<I", PM_PORT + 4)  # PM1a_CNT_BLK
    put(76, "<I", PM_PORT + AcpiPm.TIMER_OFFSET)  # PM_TMR_BLK
    put(88, "<BB", 4, 2)  # PM1_EVT_LEN, PM1_CNT_LEN
    put(91, "<B", 4)  # PM_TMR_LEN (24-bit: TMR_VAL_EXT clear)
    if hotplug is not None:
        put(80, "<I", hotplug.gpe0)  # GPE0_BLK
        put(92, "<B", hotplug.gpe0_length)  # GPE0_BLK_LEN
        body[220 - _HEADER.size : 232 - _HEADER.size] = _gas(hotplug.gpe0, 8 * hotplug.gpe0_length, 1)  # X_GPE0_BLK
    put(96, "<HH", 101, 1001)  # no C2, no C3
    put(109, "<H", _IAPC_LEGACY_DEVICES | _IAPC_8042)
    put(112, "<I", _FADT_FLAGS)
    body[116 - _HEADER.size : 128 - _HEADER.size] = _gas(_RESET_PORT, 8, 1)
    put(128, "<B", _RESET_VALUE)
    put(131, "<B", 5)  # FADT minor version: ACPI 6.5
    put(140, "<Q", dsdt)  # X_DSDT
    body[148 - _HEADER.size : 160 - _HEADER.size] = _gas(PM_PORT, 32)  # X_PM1a_EVT_BLK
    body[172 - _HEADER.size : 184 - _HEADER.size] = _gas(PM_PORT + 4, 16)  # X_PM1a_CNT_BLK
    body[208 - _HEADER.size : 220 - _HEADER.size] = _gas(PM_PORT + AcpiPm.TIMER_OFFSET, 32)  # X_PM_TMR_BLK
    body[268 - _HEADER.size :] = b"HVCORE\x00\x00"  # hypervisor vendor identity
    return _table(b"FACP", 6, bytes(body))


def _mcfg(pci: AcpiPciRoot) -> bytes:
    return _table(b"MCFG", 1, bytes(8) + struct.pack("<QHBBI", pci.ecam, 0, 0, pci.buses - 1, 0))


def _pci_devices(pci: AcpiPciRoot) -> list[bytes]:
    """``PCI0`` (the root bridge: bus range, windows, routes) and ``MRES`` (ECAM, reserved: Linux then uses it)."""
    io_low = (0, 0xCF8)  # everything but the configuration ports
    io_high = (0xD00, 0x10000 - 0xD00)
    routes = aml.package(
        *(
            aml.package(aml.integer(slot << 16 | 0xFFFF), aml.integer(pin), aml.integer(0), aml.integer(gsi))
            for slot, pin, gsi in pci.routes
        )
    )
    crs = aml.resource_template(
        aml.word_bus_number(0, pci.buses),
        aml.io(0xCF8, 8),
        aml.word_io(*io_low),
        aml.word_io(*io_high),
        aml.dword_memory(*pci.memory),
    )
    root = aml.device(
        "PCI0",
        aml.name("_HID", aml.string("PNP0A03")),
        aml.name("_UID", aml.integer(0)),
        aml.name("_SEG", aml.integer(0)),
        aml.name("_BBN", aml.integer(0)),
        aml.name("_ADR", aml.integer(0)),
        aml.name("_CRS", crs),
        aml.name("_PRT", routes),
    )
    reserved = aml.device(
        "MRES",
        aml.name("_HID", aml.string("PNP0C02")),
        aml.name("_UID", aml.integer(1)),
        aml.name("_CRS", aml.resource_template(aml.memory32_fixed(pci.ecam, pci.buses << 20, writable=True))),
    )
    return [root, reserved]


def _dsdt(cpus: int, devices: Sequence[AcpiDevice], pci: AcpiPciRoot | None, hotplug: AcpiCpuHotplug | None) -> bytes:
    entries = [
        aml.device(
            f"D{index:03X}",
            aml.name("_HID", aml.string(d.hid)),
            aml.name("_UID", aml.integer(d.uid)),
            aml.name("_CRS", aml.resource_template(aml.memory32_fixed(d.base, d.length), aml.interrupt(d.gsi))),
        )
        for index, d in enumerate(devices)
    ]
    if pci is not None:
        entries += _pci_devices(pci)
    if hotplug is not None:
        entries += cpu_devices(cpus, hotplug)
    s5 = aml.name("\\_S5_", aml.package(aml.integer(SLEEP_TYPE_S5), aml.integer(SLEEP_TYPE_S5)))
    gpe = gpe_methods(hotplug) if hotplug is not None else b""
    return _table(b"DSDT", 2, s5 + (aml.scope("\\_SB_", *entries) if entries else b"") + gpe)


RSDP_SIZE: Final = 36
"""Bytes of an ACPI 2.0+ RSDP."""


@dataclass(frozen=True)
class AcpiLayout:
    """The tables after the RSDP (XSDT, FADT, MADT, MCFG, DSDT) laid out from one address, and where in
    them the addresses and checksums are (what a firmware's table loader patches)."""

    data: bytes
    pointers: tuple[tuple[int, int], ...]
    """``(offset, size)`` of each field that holds an address inside ``data``."""
    tables: tuple[tuple[int, int], ...]
    """``(offset, length)`` of each table (its checksum byte at ``offset + 9``)."""


def _check(cpus: int, devices: Sequence[AcpiDevice], present: Collection[int]) -> None:
    if not 1 <= cpus <= 255:
        raise InvalidArgument(f"{cpus} vCPUs: the MADT's local APIC entries take 1 to 255")
    if 0 not in present or not set(present) <= set(range(cpus)):
        raise InvalidArgument(
            f"present vCPUs {sorted(present)}: vCPU 0 (the bootstrap processor) and only ids below {cpus}"
        )
    for d in devices:
        if d.base + d.length > 1 << 32 or d.length <= 0:
            raise InvalidArgument(f"ACPI device {d.hid}: MMIO {d.base:#x}+{d.length:#x} must lie below 4 GiB")


def lay_out(
    base: int,
    cpus: int,
    devices: Sequence[AcpiDevice] = (),
    pci: AcpiPciRoot | None = None,
    *,
    present: Collection[int] | None = None,
    hotplug: AcpiCpuHotplug | None = None,
) -> AcpiLayout:
    """The XSDT (first), FADT, MADT, MCFG (with ``pci``) and DSDT, their addresses counted from ``base``;
    ``present`` (default: all) are the vCPUs up at boot, ``hotplug`` adds the CPU hotplug AML and GPE0."""
    present = range(cpus) if present is None else present
    _check(cpus, devices, present)
    madt, mcfg = _madt(cpus, present), _mcfg(pci) if pci is not None else b""
    dsdt = _dsdt(cpus, devices, pci, hotplug)
    entries = 3 if mcfg else 2
    fadt_at = _HEADER.size + entries * 8
    madt_at = fadt_at + _FADT_LENGTH
    mcfg_at = madt_at + len(madt)
    dsdt_at = mcfg_at + len(mcfg)
    xsdt = _table(b"XSDT", 1, struct.pack(f"<{entries}Q", *(base + at for at in (fadt_at, madt_at, mcfg_at)[:entries])))
    data = xsdt + _fadt(base + dsdt_at, hotplug) + madt + mcfg + dsdt
    pointers = [(_HEADER.size + 8 * i, 8) for i in range(entries)] + [(fadt_at + 40, 4), (fadt_at + 140, 8)]
    sizes = [(0, len(xsdt)), (fadt_at, _FADT_LENGTH), (madt_at, len(madt)), (mcfg_at, len(mcfg)), (dsdt_at, len(dsdt))]
    return AcpiLayout(data, tuple(pointers), tuple((at, n) for at, n in sizes if n))


def rsdp(xsdt: int) -> bytes:
    """The RSDP (ACPI 2.0+, 36 bytes) pointing at the XSDT at ``xsdt``, both checksums set."""
    table = bytearray(struct.pack("<8sB6sBIIQB3s", b"RSD PTR ", 0, OEM_ID, 2, 0, RSDP_SIZE, xsdt, 0, b""))
    table[8] = checksum(bytes(table[:20]))
    table[32] = checksum(bytes(table))
    return bytes(table)


def build_acpi(
    address: int,
    cpus: int,
    devices: Sequence[AcpiDevice] = (),
    pci: AcpiPciRoot | None = None,
    *,
    present: Collection[int] | None = None,
    hotplug: AcpiCpuHotplug | None = None,
) -> bytes:
    """The RSDP at ``address`` (16-byte aligned, below 4 GiB) followed by the XSDT, FADT, MADT, MCFG
    (with ``pci``) and DSDT (see :func:`lay_out` for ``present`` and ``hotplug``)."""
    if address % 16 or not 0 < address < 1 << 32:
        raise InvalidArgument(f"ACPI tables at {address:#x}: the RSDP needs a 16-byte aligned address below 4 GiB")
    layout = lay_out(address + RSDP_SIZE, cpus, devices, pci, present=present, hotplug=hotplug)
    return rsdp(address + RSDP_SIZE) + layout.data
