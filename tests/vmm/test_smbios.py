"""The SMBIOS 2.8 tables and entry point fw_cfg hands the firmware (``hvcore.vmm.smbios``)."""

from __future__ import annotations

import struct

import pytest

from hvcore import Hypervisor
from hvcore.errors import InvalidArgument
from hvcore.vmm.machine import HIGH_RAM_START, HOLE_START, Machine
from hvcore.vmm.pc import add_pc_devices
from hvcore.vmm.smbios import ANCHOR_FILE, TABLES_FILE, BiosInfo, build_smbios, entry_point, structures

GIB = 1 << 30
LOW_AND_HIGH = [(0, 3 * GIB), (1 << 32, 17 * GIB)]

# Formatted-area lengths for SMBIOS 2.8 (what QEMU's pc machine gives)
LENGTHS = {0: 0x18, 1: 0x1B, 3: 0x16, 4: 0x2A, 16: 0x17, 17: 0x28, 19: 0x1F, 32: 0x0B, 127: 0x04}


def test_structure_order_lengths_and_handles() -> None:
    tables = build_smbios(cpus=3, memory=LOW_AND_HIGH).tables
    parts = list(structures(tables))
    assert [(p.type, p.handle) for p in parts] == [
        (1, 0x100),
        (3, 0x300),
        (4, 0x400),
        (4, 0x401),
        (4, 0x402),
        (16, 0x1000),
        (17, 0x1100),  # 20 GiB: one 16 GiB device and one of 4 GiB
        (17, 0x1101),
        (19, 0x1300),
        (19, 0x1301),
        (32, 0x2000),
        (127, 0x7F00),
    ]
    for part in parts:
        assert len(part.formatted) == LENGTHS[part.type], part
    # the blob is exactly the structures, each ending in its double NUL
    assert tables.endswith(b"\x7f\x04\x00\x7f\0\0")


def test_entry_point_checksums_and_fields() -> None:
    smbios = build_smbios(cpus=2, memory=LOW_AND_HIGH)
    anchor = smbios.anchor
    assert len(anchor) == 0x1F and anchor[:4] == b"_SM_" and anchor[0x10:0x15] == b"_DMI_"
    assert sum(anchor[:0x10]) & 0xFF == 0 and sum(anchor[0x10:]) & 0xFF == 0
    assert sum(anchor) & 0xFF == 0
    length, major, minor, largest, revision = struct.unpack_from("<BBBHB", anchor, 5)
    assert (length, major, minor, revision, anchor[0x1E]) == (0x1F, 2, 8, 0, 0x28)
    table_length, address, count = struct.unpack_from("<HIH", anchor, 0x16)
    assert (table_length, address, count) == (len(smbios.tables), 0, 11)
    sizes = [
        len(p.formatted) + sum(len(s) + 1 for s in p.strings) + (1 if p.strings else 2)
        for p in structures(smbios.tables)
    ]
    assert sum(sizes) == len(smbios.tables) and largest == max(sizes)
    placed = entry_point(smbios.tables, 0xF1234)
    assert struct.unpack_from("<I", placed, 0x18)[0] == 0xF1234
    assert sum(placed[:0x10]) & 0xFF == 0 and sum(placed[0x10:]) & 0xFF == 0


def test_strings_system_chassis_processors() -> None:
    parts = list(
        structures(build_smbios(cpus=17, memory=[(0, GIB)], cpuid_signature=0x806F8, cpuid_features=0x1F8BFBFF).tables)
    )
    system = next(p for p in parts if p.type == 1)
    assert system.strings == ("hvcore", "hvcore", "0.1.0")
    assert (system.string(4), system.string(5), system.string(6), system.string(7)) == (
        "hvcore",
        "hvcore",
        "0.1.0",
        None,
    )
    assert system.formatted[8:24] == bytes(16) and system.formatted[24] == 0x06  # no UUID; power switch
    chassis = next(p for p in parts if p.type == 3)
    assert (chassis.string(4), chassis.formatted[5], chassis.string(6)) == ("hvcore", 0x01, "0.1.0")
    cpus = [p for p in parts if p.type == 4]
    assert len(cpus) == 17
    assert [c.string(4) for c in cpus[:2]] + [cpus[16].string(4)] == ["CPU 0", "CPU 1", "CPU10"]  # QEMU's "%s%2x"
    for cpu in cpus:
        assert struct.unpack_from("<II", cpu.formatted, 8) == (0x806F8, 0x1F8BFBFF)
        assert struct.unpack_from("<HH", cpu.formatted, 0x14) == (2000, 2000)
        assert cpu.formatted[0x18] == 0x41 and cpu.formatted[0x23:0x26] == bytes([1, 1, 1])


def test_memory_array_devices_and_ranges() -> None:
    parts = list(structures(build_smbios(cpus=1, memory=LOW_AND_HIGH).tables))
    array = next(p for p in parts if p.type == 16)
    capacity, _, devices, extended = struct.unpack_from("<IHHQ", array.formatted, 7)
    assert (capacity, devices, extended) == (20 * GIB >> 10, 2, 0)
    dimms = [p for p in parts if p.type == 17]
    assert [struct.unpack_from("<H", d.formatted, 0x0C)[0] for d in dimms] == [16 << 10, 4 << 10]  # MiB
    assert [d.strings for d in dimms] == [("DIMM 0", "hvcore"), ("DIMM 1", "hvcore")]
    assert all(struct.unpack_from("<H", d.formatted, 4)[0] == array.handle for d in dimms)
    ranges = [p for p in parts if p.type == 19]
    # below 4 GiB in KiB; above 4 GiB the KiB fields overflow, so the extended byte addresses hold it
    assert struct.unpack_from("<IIHBQQ", ranges[0].formatted, 4) == (0, (3 * GIB - 1) >> 10, 0x1000, 1, 0, 0)
    assert struct.unpack_from("<IIHBQQ", ranges[1].formatted, 4) == (4 << 20, (21 * GIB - 1) >> 10, 0x1000, 1, 0, 0)


def test_large_memory_uses_the_extended_fields() -> None:
    parts = list(structures(build_smbios(cpus=1, memory=[(0, 3 * GIB), (1 << 32, 5000 * GIB)]).tables))
    array = next(p for p in parts if p.type == 16)
    capacity, _, _, extended = struct.unpack_from("<IHHQ", array.formatted, 7)
    assert (capacity, extended) == (0x80000000, 5003 * GIB)  # 2 TiB and up: the size in bytes
    high = [p for p in parts if p.type == 19][1]
    assert struct.unpack_from("<IIHBQQ", high.formatted, 4) == (
        0xFFFFFFFF,
        0xFFFFFFFF,
        0x1000,
        1,
        1 << 32,
        (1 << 32) + 5000 * GIB - 1,
    )
    dimm = next(p for p in parts if p.type == 17)
    assert struct.unpack_from("<H", dimm.formatted, 0x0C)[0] == 0x4000  # 16 GiB fits the short field


def test_type_0_only_when_asked() -> None:
    parts = list(structures(build_smbios(cpus=1, memory=[(0, GIB)], bios=BiosInfo("Acme", "1.2", "01/02/2003")).tables))
    bios = parts[0]
    assert (bios.type, bios.handle, bios.strings) == (0, 0, ("Acme", "1.2", "01/02/2003"))
    assert struct.unpack_from("<H", bios.formatted, 6)[0] == 0xE800
    assert bios.formatted[0x13] == 0x14  # virtual machine
    assert all(p.type != 0 for p in structures(build_smbios(cpus=1, memory=[(0, GIB)]).tables))


def test_bad_arguments_raise() -> None:
    with pytest.raises(InvalidArgument, match="vCPUs"):
        build_smbios(cpus=0, memory=[(0, GIB)])
    with pytest.raises(InvalidArgument, match="RAM ranges"):
        build_smbios(cpus=1, memory=[])
    with pytest.raises(InvalidArgument, match="past the end"):
        list(structures(b"\x01\x1b\x00\x01" + bytes(23)))


def test_pc_devices_serve_the_machines_tables(hv: Hypervisor) -> None:
    """``add_pc_devices`` puts both files in fw_cfg: a processor per vCPU, RAM as the machine lays it out."""
    with Machine(hv, memory=(3 << 30) + (64 << 20), cpus=2) as machine:
        fw_cfg = add_pc_devices(machine).fw_cfg
        tables = fw_cfg.item(fw_cfg.file_selector(TABLES_FILE))
        anchor = fw_cfg.item(fw_cfg.file_selector(ANCHOR_FILE))
        leaf1 = next(e for e in machine.vcpus[0].get_cpuid() if e.function == 1)
        assert tables is not None and anchor == entry_point(tables)
        parts = list(structures(tables))
        cpus = [p for p in parts if p.type == 4]
        assert len(cpus) == 2
        assert all(struct.unpack_from("<II", c.formatted, 8) == (leaf1.eax, leaf1.edx) for c in cpus)
        ranges = [struct.unpack_from("<II", p.formatted, 4) for p in parts if p.type == 19]
        assert machine.ram_size == HOLE_START and machine.high_ram_size == (3 << 30) + (64 << 20) - HOLE_START
        assert ranges == [(0, (HOLE_START - 1) >> 10), (4 << 20, (HIGH_RAM_START + machine.high_ram_size - 1) >> 10)]
