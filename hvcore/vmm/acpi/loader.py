"""ACPI tables for firmware, through fw_cfg: QEMU's table-loader protocol, which SeaBIOS and OVMF run.

Firmware reads three fw_cfg files: ``etc/acpi/rsdp`` and ``etc/acpi/tables`` (the tables laid out
from address 0), and ``etc/table-loader``, a list of 128-byte commands: allocate each file in
guest memory (the RSDP in the F segment, where an OS scans for it), add each file's address to
the fields that point into it, then compute each table's checksum. The tables are the ones a
directly booted kernel gets (:func:`~hvcore.vmm.acpi.tables.build_acpi`).
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Sequence
from typing import Final

from hvcore.vmm.acpi.tables import RSDP_SIZE, AcpiCpuHotplug, AcpiDevice, AcpiPciRoot, lay_out, rsdp

__all__ = ["LOADER_FILE", "RSDP_FILE", "TABLES_FILE", "acpi_files"]

RSDP_FILE: Final = "etc/acpi/rsdp"
"""The fw_cfg file holding the RSDP (firmware allocates it in the F segment)."""
TABLES_FILE: Final = "etc/acpi/tables"
"""The fw_cfg file holding every other table, laid out from 0."""
LOADER_FILE: Final = "etc/table-loader"
"""The fw_cfg file of table-loader commands (allocate, add pointer, add checksum)."""
_ALLOCATE, _ADD_POINTER, _ADD_CHECKSUM = 1, 2, 3
_ZONE_HIGH, _ZONE_FSEG = 1, 2
_NAME: Final = 56
_ENTRY: Final = 128
_XSDT_ADDRESS: Final = 24  # in the RSDP


def _name(file: str) -> bytes:
    return file.encode().ljust(_NAME, b"\0")


def _command(kind: int, body: bytes) -> bytes:
    return struct.pack("<I", kind) + body.ljust(_ENTRY - 4, b"\0")


def _allocate(file: str, align: int, zone: int) -> bytes:
    return _command(_ALLOCATE, _name(file) + struct.pack("<IB", align, zone))


def _add_pointer(destination: str, source: str, offset: int, size: int) -> bytes:
    return _command(_ADD_POINTER, _name(destination) + _name(source) + struct.pack("<IB", offset, size))


def _add_checksum(file: str, offset: int, start: int, length: int) -> bytes:
    return _command(_ADD_CHECKSUM, _name(file) + struct.pack("<III", offset, start, length))


def acpi_files(
    cpus: int,
    devices: Sequence[AcpiDevice] = (),
    pci: AcpiPciRoot | None = None,
    *,
    present: Collection[int] | None = None,
    hotplug: AcpiCpuHotplug | None = None,
) -> dict[str, bytes]:
    """The three fw_cfg files, by name, that give firmware the machine's ACPI tables (arguments as
    :func:`~hvcore.vmm.acpi.tables.lay_out`)."""
    layout = lay_out(0, cpus, devices, pci, present=present, hotplug=hotplug)
    tables = bytearray(layout.data)
    for at, _ in layout.tables:
        tables[at + 9] = 0  # the loader sets each checksum once the addresses are in
    root = bytearray(rsdp(0))
    root[8] = root[32] = 0
    commands = [_allocate(RSDP_FILE, 16, _ZONE_FSEG), _allocate(TABLES_FILE, 64, _ZONE_HIGH)]
    commands += [_add_pointer(TABLES_FILE, TABLES_FILE, at, size) for at, size in layout.pointers]
    commands.append(_add_pointer(RSDP_FILE, TABLES_FILE, _XSDT_ADDRESS, 8))
    commands += [_add_checksum(TABLES_FILE, at + 9, at, length) for at, length in layout.tables]
    commands += [_add_checksum(RSDP_FILE, 8, 0, 20), _add_checksum(RSDP_FILE, 32, 0, RSDP_SIZE)]
    return {RSDP_FILE: bytes(root), TABLES_FILE: bytes(tables), LOADER_FILE: b"".join(commands)}
