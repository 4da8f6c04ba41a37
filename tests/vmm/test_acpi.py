"""ACPI tables (``hvcore.vmm.acpi``) and the PM1 registers they point at (``hvcore.vmm.devices.acpi_pm``).

The tables are read back field by field here, and disassembled by ACPICA's ``iasl`` where it is
installed (``.ci/run`` installs it): software nobody here wrote must accept every table.
``tests/vmm/test_linux_virtio.py`` is the other judge: Linux boots from them.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from hvcore import Hypervisor, InvalidArgument
from hvcore.vmm.acpi import AcpiCpuHotplug, AcpiDevice, AcpiPciRoot, aml, build_acpi
from hvcore.vmm.acpi.loader import LOADER_FILE, RSDP_FILE, TABLES_FILE, acpi_files
from hvcore.vmm.acpi.tables import IOAPIC_ADDRESS, LAPIC_ADDRESS, OEM_ID, PM_PORT, SCI_IRQ, checksum
from hvcore.vmm.device import DeviceHost, StopRequest
from hvcore.vmm.devices import AcpiPm
from hvcore.vmm.machine import ACPI_TABLES, Machine
from hvcore.vmm.pc import add_pc_devices
from tests.vmm.test_loaders import make_bzimage

ADDRESS = 0xE0000
VIRTIO = AcpiDevice("LNRO0005", 0, 0xD0000000, 0x200, 5)
PCI = AcpiPciRoot(0xE0000000, 1, (0xC000, 0x4000), (0xC0000000, 0x10000000), ((2, 0, 18), (2, 1, 19), (3, 0, 19)))


def tables(blob: bytes, address: int = ADDRESS) -> dict[bytes, tuple[int, bytes]]:
    """Every table reachable from the RSDP at the start of ``blob``: signature -> (address, bytes)."""

    def at(pointer: int) -> bytes:
        offset = pointer - address
        length = struct.unpack_from("<I", blob, offset + 4)[0]
        return blob[offset : offset + length]

    xsdt_address = struct.unpack_from("<Q", blob, 24)[0]
    xsdt = at(xsdt_address)
    found = {b"XSDT": (xsdt_address, xsdt)}
    for (pointer,) in struct.iter_unpack("<Q", xsdt[36:]):
        found[at(pointer)[:4]] = (pointer, at(pointer))
    dsdt = struct.unpack_from("<Q", found[b"FACP"][1], 140)[0]
    found[b"DSDT"] = (dsdt, at(dsdt))
    return found


def test_the_rsdp_and_every_table_check_out() -> None:
    blob = build_acpi(ADDRESS, 2, [VIRTIO])
    assert blob[:8] == b"RSD PTR " and blob[15] == 2 and struct.unpack_from("<I", blob, 20)[0] == 36
    assert sum(blob[:20]) % 256 == 0 and sum(blob[:36]) % 256 == 0
    found = tables(blob)
    assert set(found) == {b"XSDT", b"FACP", b"APIC", b"DSDT"}
    for signature, (_, table) in found.items():
        assert sum(table) % 256 == 0, signature
        assert table[10:16] == b"HVCORE"
    fadt = found[b"FACP"][1]
    assert fadt[8] == 6 and len(fadt) == 276
    assert struct.unpack_from("<I", fadt, 40)[0] == found[b"DSDT"][0]  # DSDT and X_DSDT agree
    assert struct.unpack_from("<H", fadt, 46)[0] == SCI_IRQ
    assert struct.unpack_from("<II", fadt, 56)[0] == PM_PORT
    flags = struct.unpack_from("<I", fadt, 112)[0]
    assert flags & 1 << 10 and not flags & 1 << 20  # a reset register; not hardware-reduced
    assert struct.unpack_from("<BBBBQ", fadt, 116) == (1, 8, 0, 1, 0x64) and fadt[128] == 0xFE  # i8042 reset


def test_the_madt_lists_every_vcpu_and_the_ioapic() -> None:
    madt = tables(build_acpi(ADDRESS, 3))[b"APIC"][1]
    assert struct.unpack_from("<II", madt, 36) == (LAPIC_ADDRESS, 1)
    entries, offset = [], 44
    while offset < len(madt):
        kind, length = madt[offset], madt[offset + 1]
        entries.append((kind, madt[offset + 2 : offset + length]))
        offset += length
    cpus = [struct.unpack("<BBI", body) for kind, body in entries if kind == 0]
    assert cpus == [(0, 0, 1), (1, 1, 1), (2, 2, 1)]  # UID, APIC ID, enabled
    assert [struct.unpack("<BBII", body) for kind, body in entries if kind == 1] == [(0, 0, IOAPIC_ADDRESS, 0)]
    overrides = [struct.unpack("<BBIH", body) for kind, body in entries if kind == 2]
    assert overrides == [(0, 0, 2, 0), (0, SCI_IRQ, SCI_IRQ, 0xD)]


def _madt_cpus(madt: bytes) -> list[tuple[int, int, int]]:
    """The MADT's processor local APIC entries: (UID, APIC ID, flags)."""
    cpus, offset = [], 44
    while offset < len(madt):
        if madt[offset] == 0:
            cpus.append(struct.unpack_from("<BBI", madt, offset + 2))
        offset += madt[offset + 1]
    return cpus


def test_absent_vcpus_are_disabled_but_online_capable_in_the_madt() -> None:
    madt = tables(build_acpi(ADDRESS, 3, present={0, 2}))[b"APIC"][1]
    assert madt[8] >= 5  # revision 5: ACPI 6.3's online-capable flag counts
    assert _madt_cpus(madt) == [(0, 0, 1), (1, 1, 2), (2, 2, 1)]
    with pytest.raises(InvalidArgument, match="bootstrap"):
        build_acpi(ADDRESS, 2, present={1})
    with pytest.raises(InvalidArgument, match="below 2"):
        build_acpi(ADDRESS, 2, present={0, 2})


def test_cpu_hotplug_puts_the_gpe0_block_in_the_fadt() -> None:
    plain = tables(build_acpi(ADDRESS, 2))[b"FACP"][1]
    assert struct.unpack_from("<I", plain, 80)[0] == 0 and plain[92] == 0 and plain[220:232] == bytes(12)
    fadt = tables(build_acpi(ADDRESS, 2, hotplug=AcpiCpuHotplug()))[b"FACP"][1]
    assert struct.unpack_from("<I", fadt, 80)[0] == 0xAFE0 and fadt[92] == 4  # GPE0_BLK, GPE0_BLK_LEN
    assert struct.unpack_from("<BBBBQ", fadt, 220) == (1, 32, 0, 1, 0xAFE0)  # X_GPE0_BLK: IO, 32 bits, bytes


def test_the_dsdt_describes_each_device_and_s5() -> None:
    dsdt = tables(build_acpi(ADDRESS, 1, [VIRTIO]))[b"DSDT"][1]
    assert aml.name("\\_S5_", aml.package(aml.integer(0), aml.integer(0))) in dsdt
    assert aml.name("_HID", aml.string("LNRO0005")) in dsdt
    assert aml.resource_template(aml.memory32_fixed(0xD0000000, 0x200), aml.interrupt(5)) in dsdt


@pytest.mark.skipif(
    shutil.which("iasl") is None, reason="ACPICA's iasl is not installed (apt-get install acpica-tools)"
)
def test_acpica_disassembles_every_table_without_a_complaint(tmp_path: Path) -> None:
    for signature, (_, table) in tables(build_acpi(ADDRESS, 2, [VIRTIO], PCI)).items():
        path = tmp_path / f"{signature.decode()}.dat"
        path.write_bytes(table)
        run = subprocess.run(["iasl", "-d", str(path)], capture_output=True, text=True, timeout=60, check=False)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "error" not in (run.stdout + run.stderr).lower(), run.stdout
        assert "warning" not in (run.stdout + run.stderr).lower(), run.stdout
    source = (tmp_path / "DSDT.dsl").read_text()
    assert 'Name (_HID, "LNRO0005")' in source
    assert "0xD0000000" in source and "Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive" in source
    assert 'Name (_HID, "PNP0A03" /* PCI Bus */)' in source and '"PNP0C02" /* PNP Motherboard Resources */' in source
    assert "WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode," in source
    assert re.search(r"DWordMemory \(ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,", source)
    assert re.search(r"0x0002FFFF,\s*One,\s*Zero,\s*0x13", source)  # _PRT: slot 2 INTB -> GSI 19
    mcfg = (tmp_path / "MCFG.dsl").read_text()
    assert re.search(r"Base Address : 00000000E0000000", mcfg) and re.search(r"End Bus Number : 00", mcfg)


def test_the_mcfg_and_the_pci_root_describe_the_bus() -> None:
    found = tables(build_acpi(ADDRESS, 1, [], PCI))
    assert set(found) == {b"XSDT", b"FACP", b"APIC", b"MCFG", b"DSDT"}
    assert struct.unpack_from("<QHBB", found[b"MCFG"][1], 44) == (0xE0000000, 0, 0, 0)
    dsdt = found[b"DSDT"][1]
    route = aml.package(aml.integer(0x3FFFF), aml.integer(0), aml.integer(0), aml.integer(19))
    assert route in dsdt and aml.memory32_fixed(0xE0000000, 1 << 20) in dsdt  # ECAM reserved for Linux


def _disassemble(tmp_path: Path, body: bytes) -> str:
    """``body`` as a DSDT's AML, disassembled by iasl (which must not complain), and recompiled without errors."""
    length = 36 + len(body)
    header = struct.pack("<4sIBB6s8sI4sI", b"DSDT", length, 2, 0, OEM_ID, b"HVCORETS", 1, b"HVCR", 1)
    table = bytearray(header + body)
    table[9] = checksum(bytes(table))
    path = tmp_path / "DSDT.dat"
    path.write_bytes(bytes(table))
    run = subprocess.run(["iasl", "-d", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0 and "error" not in (run.stdout + run.stderr).lower(), run.stdout + run.stderr
    assert "warning" not in (run.stdout + run.stderr).lower(), run.stdout
    source = (tmp_path / "DSDT.dsl").read_text()
    compiled = subprocess.run(
        ["iasl", "-p", str(tmp_path / "again"), str(tmp_path / "DSDT.dsl")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert compiled.returncode == 0 and " 0 Errors," in compiled.stdout, compiled.stdout + compiled.stderr
    return re.sub(r"[ \t]+", " ", source)


NEEDS_IASL = pytest.mark.skipif(
    shutil.which("iasl") is None, reason="ACPICA's iasl is not installed (apt-get install acpica-tools)"
)
AML_CODE = {
    "method, store, locals, arguments, return": (
        aml.method("MTHD", 2, aml.store(aml.arg(1), aml.local(3)), aml.return_(aml.local(3)), serialized=True),
        ["Method (MTHD, 2, Serialized)", "Local3 = Arg1", "Return (Local3)"],
    ),
    "if and lequal": (
        aml.method(
            "TEST", 1, aml.if_(aml.lequal(aml.arg(0), aml.integer(5)), aml.return_(aml.ONE)), aml.return_(aml.ZERO)
        ),
        ["Method (TEST, 1, NotSerialized)", "If ((Arg0 == 0x05))", "Return (One)", "Return (Zero)"],
    ),
    "while": (
        aml.method(
            "LOOP",
            0,
            aml.store(aml.ONE, aml.local(0)),
            aml.while_(aml.lequal(aml.local(0), aml.ONE), aml.store(aml.ZERO, aml.local(0))),
        ),
        ["While ((Local0 == One))", "Local0 = Zero"],
    ),
    "operation region and fields": (
        aml.operation_region("REGN", aml.RegionSpace.SYSTEM_IO, 0x0CD8, 0x20)
        + aml.field("REGN", ("WRD0", 32), ("", 32), ("BIG_", 0x40), access=aml.FieldAccess.DWORD)
        + aml.field(
            "REGN", ("", 32), ("FLG0", 1), ("FLG1", 1), ("", 6), ("CMD0", 8), update=aml.FieldUpdate.WRITE_AS_ZEROS
        ),
        [
            "OperationRegion (REGN, SystemIO, 0x0CD8, 0x20)",
            "Field (REGN, DWordAcc, NoLock, Preserve)",
            "WRD0, 32,",
            "Offset (0x08),",
            "BIG, 64",
            "Field (REGN, ByteAcc, NoLock, WriteAsZeros)",
            "Offset (0x04),",
            "FLG0, 1,",
            "FLG1, 1,",
            "CMD0, 8",
        ],
    ),
    "mutex, acquire, release": (
        aml.mutex("MUTX", 3) + aml.method("LOKD", 0, aml.acquire("MUTX", 100), aml.release("MUTX")),
        ["Mutex (MUTX, 0x03)", "Acquire (MUTX, 0x0064)", "Release (MUTX)"],
    ),
    "notify and a call": (
        aml.device("DEV0", aml.name("_HID", aml.string("ACPI0007")))
        + aml.method("NTFY", 2, aml.notify(aml.reference("DEV0"), aml.arg(1)))
        + aml.method("CALR", 0, aml.call("NTFY", aml.ONE, aml.integer(3))),
        ["Notify (DEV0, Arg1)", "NTFY (One, 0x03)"],
    ),
}


@NEEDS_IASL
@pytest.mark.parametrize("case", sorted(AML_CODE))
def test_each_aml_term_disassembles_as_its_asl(tmp_path: Path, case: str) -> None:
    body, expected = AML_CODE[case]
    source = _disassemble(tmp_path, aml.scope("\\_SB_", body))
    for line in expected:
        assert line in source, f"{line!r} not in:\n{source}"


@pytest.mark.parametrize(
    "bad",
    [
        lambda: aml.local(8),
        lambda: aml.arg(7),
        lambda: aml.method("MTHD", 8),
        lambda: aml.mutex("LOCK", 16),
        lambda: aml.acquire("LOCK", 0x10000),
        lambda: aml.field("REGN", ("FLG0", 0)),
        lambda: aml.field("REGN", ("A.B", 1)),
    ],
)
def test_aml_code_refuses_what_aml_cannot_say(bad: object) -> None:
    assert callable(bad)
    with pytest.raises(InvalidArgument):
        bad()


@NEEDS_IASL
def test_the_cpu_hotplug_dsdt_disassembles_and_compiles(tmp_path: Path) -> None:
    dsdt = tables(build_acpi(ADDRESS, 3, [VIRTIO], PCI, present={0}, hotplug=AcpiCpuHotplug()))[b"DSDT"][1]
    source = _disassemble(tmp_path, dsdt[36:])
    for line in (
        "OperationRegion (PRST, SystemIO, 0x0CD8, 0x0C)",
        'Device (C002) { Name (_HID, "ACPI0007" /* Processor Device */)',
        "Return (CSTA (0x02))",
        "Notify (C002, Arg1)",
        "CNFY (Local1, 0x03)",
        "Method (_E02, 0, NotSerialized)",
        "\\_SB.CSCN ()",
    ):
        assert line in re.sub(r"\s+", " ", source), f"{line!r} not in:\n{source}"
    assert source.count("Method (_EJ0, 1") == 2  # C001 and C002; the bootstrap processor stays


def run_table_loader(files: dict[str, bytes], addresses: dict[str, int]) -> dict[str, bytearray]:
    """What firmware does with ``etc/table-loader``, the files placed at ``addresses``."""
    placed: dict[str, bytearray] = {}
    loader = files[LOADER_FILE]
    for at in range(0, len(loader), 128):
        command = loader[at : at + 128]
        kind = struct.unpack_from("<I", command)[0]
        name = command[4:60].rstrip(b"\0").decode()
        if kind == 1:
            placed[name] = bytearray(files[name])
        elif kind == 2:
            source = command[60:116].rstrip(b"\0").decode()
            offset, size = struct.unpack_from("<IB", command, 116)
            value = int.from_bytes(placed[name][offset : offset + size], "little") + addresses[source]
            placed[name][offset : offset + size] = value.to_bytes(size, "little")
        else:
            assert kind == 3
            offset, start, length = struct.unpack_from("<III", command, 60)
            placed[name][offset] = (placed[name][offset] - sum(placed[name][start : start + length])) & 0xFF
    return placed


def test_firmware_loading_the_fw_cfg_files_gets_the_direct_boot_tables() -> None:
    """Run the table loader with the tables right after the RSDP: the bytes a direct boot gets, to the byte."""
    files = acpi_files(2, [VIRTIO], PCI)
    loader = files[LOADER_FILE]
    assert len(loader) % 128 == 0
    # allocations first: the RSDP 16-byte aligned in the F segment (zone 2), the tables in high memory (zone 1)
    assert [struct.unpack_from("<I56sIB", loader, at) for at in (0, 128)] == [
        (1, RSDP_FILE.encode().ljust(56, b"\0"), 16, 2),
        (1, TABLES_FILE.encode().ljust(56, b"\0"), 64, 1),
    ]
    placed = run_table_loader(files, {RSDP_FILE: ADDRESS, TABLES_FILE: ADDRESS + 36})
    assert bytes(placed[RSDP_FILE] + placed[TABLES_FILE]) == build_acpi(ADDRESS, 2, [VIRTIO], PCI)


def test_a_firmware_load_serves_the_tables_in_fw_cfg(hv: Hypervisor) -> None:
    """A firmware load puts the files in fw_cfg; ``tests/vmm/test_firmware.py`` has SeaBIOS run them."""
    with Machine(hv, memory=64 << 20, cpus=2) as machine:
        devices = add_pc_devices(machine)
        machine.load(bytes(0x1FFF0) + b"\xea\x5b\xe0\x00\xf0".ljust(16, b"\0"))
        fw_cfg = devices.fw_cfg
        served = {name: fw_cfg.item(fw_cfg.file_selector(name)) for name in (RSDP_FILE, TABLES_FILE, LOADER_FILE)}
        pci = machine.pci.acpi() if machine.pci else None
        assert served == acpi_files(2, [], pci, present={0, 1}, hotplug=AcpiCpuHotplug())


@pytest.mark.parametrize(
    ("body", "encoded"),
    [
        (0, b"\x01"),
        (62, b"\x3f"),
        (63, b"\x41\x04"),
        (4093, b"\x4f\xff"),
        (4094, b"\x81\x00\x01"),
        (1 << 20, b"\xc4\x00\x00\x01"),
    ],
)
def test_package_lengths_count_themselves(body: int, encoded: bytes) -> None:
    assert aml.package_length(body) == encoded


def test_names_integers_and_their_limits() -> None:
    assert aml.name("\\_SB_.PCI0", b"")[1:] == b"\\\x2e_SB_PCI0"
    assert aml.name("A.B.C", b"")[1:] == b"\x2f\x03A___B___C___"
    assert [aml.integer(v) for v in (0, 1, 2, 0x100, 0x10000, 1 << 32)] == [
        b"\x00",
        b"\x01",
        b"\x0a\x02",
        b"\x0b\x00\x01",
        b"\x0c\x00\x00\x01\x00",
        b"\x0e" + (1 << 32).to_bytes(8, "little"),
    ]
    with pytest.raises(InvalidArgument):
        aml.integer(-1)
    with pytest.raises(InvalidArgument):
        aml.name("TOOLONG", b"")
    with pytest.raises(InvalidArgument):
        aml.string("a\0b")


@pytest.mark.parametrize(
    ("address", "cpus", "devices", "complaint"),
    [
        (ADDRESS + 8, 1, (), "16-byte aligned"),
        (0, 1, (), "16-byte aligned"),
        (ADDRESS, 0, (), "1 to 255"),
        (ADDRESS, 256, (), "1 to 255"),
        (ADDRESS, 1, (AcpiDevice("LNRO0005", 0, 0xFFFFF000, 0x2000, 5),), "below 4 GiB"),
    ],
)
def test_build_acpi_refuses_what_cannot_be_described(
    address: int, cpus: int, devices: tuple[AcpiDevice, ...], complaint: str
) -> None:
    with pytest.raises(InvalidArgument, match=complaint):
        build_acpi(address, cpus, devices)


def test_the_pm1_registers_stay_in_acpi_mode_and_power_off_on_s5() -> None:
    stops: list[StopRequest] = []
    pm = AcpiPm(DeviceHost(irq=lambda gsi: None, request_stop=stops.append))
    assert pm.read(4, 2) & 1  # SCI_EN: always in ACPI mode
    pm.write(4, 2, 0)
    assert pm.read(4, 2) & 1
    pm.write(2, 2, 0x0121)  # enable bits
    assert pm.read(0, 4) == 0x0121 << 16
    pm.write(4, 2, 5 << 10 | 1 << 13)  # SLP_EN with an S-state the DSDT does not offer
    assert stops == [] and not pm.read(4, 2) & 1 << 13  # SLP_EN reads back 0
    pm.write(4, 2, 1 << 13)  # SLP_TYP 0 (\_S5) with SLP_EN
    assert stops == [StopRequest("poweroff")]
    assert pm.read(6, 2) == 0xFFFF  # past the registers


def test_a_direct_kernel_boot_gets_the_tables_and_firmware_does_not(hv: Hypervisor) -> None:
    with Machine(hv, memory=64 << 20) as machine:
        machine.load(make_bzimage())
        zero_page = machine.plan.regs["rsi"] if machine.plan is not None else 0
        assert struct.unpack("<Q", machine.read(zero_page + 0x70, 8))[0] == ACPI_TABLES  # boot_params.acpi_rsdp_addr
        assert machine.read(ACPI_TABLES, 8) == b"RSD PTR "
    with Machine(hv, memory=64 << 20, irqchip=False) as machine:  # no irqchip: nothing for a MADT to list
        machine.load(make_bzimage())
        assert machine.read(ACPI_TABLES, 8) == bytes(8)
