"""Real firmware nobody here wrote: Debian's SeaBIOS boots to "No bootable device" on every backend,
and from a disk behind virtio-blk on PCI when the machine has one.

``.ci/run`` fetches it (``apt-get download seabios``) into ``~/.cache/hvcore/seabios/bios.bin`` and
exports ``HVCORE_SEABIOS``; without it these tests skip and say so.
"""

from __future__ import annotations

import io
import os
import re
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from hvcore import Hypervisor
from hvcore.cli import main
from hvcore.vmm import smbios
from hvcore.vmm.machine import Machine, MachineResult
from hvcore.vmm.pc import PcDevices, add_pc_devices
from hvcore.vmm.run import ConsoleTee
from hvcore.vmm.virtio import VirtioBlock
from hvcore.vmm.virtio.pci import add_virtio_pci
from tests.conftest import open_or_skip, overcommit

DONE = "No bootable device"
_DIRECTORIES = (Path.home() / ".cache/hvcore/seabios", Path("/usr/share/seabios"))


def seabios(name: str = "bios.bin") -> Path:
    """SeaBIOS's ``name`` (``bios.bin``, 128 KiB, no SMM; ``bios-256k.bin`` with SMM), or skip saying
    where it was looked for: beside ``HVCORE_SEABIOS``, then in the cache and Debian's directory."""
    configured = os.environ.get("HVCORE_SEABIOS", "")
    candidates: list[Path] = []
    if configured:
        candidates.append(Path(configured) if name == "bios.bin" else Path(configured).with_name(name))
    candidates += [directory / name for directory in _DIRECTORIES]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    pytest.skip(f"SeaBIOS {name} not found ({', '.join(map(str, candidates))}); `bash .ci/run` fetches it")


def boot_log(
    hv: Hypervisor,
    *,
    hide_kvm: bool = False,
    cpus: int = 1,
    present: int | None = None,
    memory: int = 256 << 20,
    after: Callable[[Machine, PcDevices], None] | None = None,
) -> str:
    """SeaBIOS's debug-console output up to "No bootable device" (at most 120 s); then ``after``, if given."""
    image = seabios().read_bytes()
    console = io.StringIO()
    with Machine(hv, memory=memory, cpus=cpus, present=present) as machine:
        tee = ConsoleTee(console, DONE, lambda: machine.stop(MachineResult("until")))
        devices = add_pc_devices(machine, debugcon=tee)  # type: ignore[arg-type]  # write/flush suffice
        machine.load(image)
        if hide_kvm:  # as QEMU's `-cpu ...,kvm=off`: no KVM signature leaves, so no kvmclock either
            vcpu = machine.vcpus[0]
            vcpu.set_cpuid([e for e in hv.supported_cpuid() if not 0x40000000 <= e.function < 0x40000100])
        result = machine.run(timeout=120)
        assert result == MachineResult("until"), f"{result}; log so far:\n{console.getvalue()}"
        if after is not None:
            after(machine, devices)
    return console.getvalue()


def test_seabios_through_the_command(hv: Hypervisor, capsys: pytest.CaptureFixture[str]) -> None:
    path = seabios()
    status = main(["run", str(path), "--backend", hv.name, "--until", DONE, "--timeout", "120", "--stats"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert f"backend   {hv.name}" in out
    assert "firmware 128 KiB" in out
    assert "SeaBIOS (version" in out and DONE in out
    assert "the guest printed 'No bootable device'" in out
    assert "IoExit" in out  # --stats


_PS2_THREAD = ("WARNING - Timeout at ps2_recvbyte", "PS2 keyboard initialized")


def _comparable(log: str) -> list[str]:
    # The TSC frequency SeaBIOS reports is the host's on KVM and 1 GHz on the simulator (kvmclock's,
    # or without the KVM leaves calibrated against the PIT on host time, so give or take a few MHz).
    # Its PS/2 probe runs as a thread beside the others: where its last word lands among their lines
    # depends on how fast the backend runs (on a loaded host), so it is counted, not placed.
    lines = [re.sub(r"\d+ MHz", "N MHz", line) for line in log.splitlines() if not line.startswith("CPU Mhz=")]
    return [line for line in lines if not line.startswith(_PS2_THREAD)] + [
        line for line in lines if line.startswith(_PS2_THREAD)
    ]


def test_seabios_console_is_the_same_on_both_backends() -> None:
    with open_or_skip("kvm") as kvm, open_or_skip("sim") as sim:
        simulated = boot_log(sim)
        assert _comparable(boot_log(kvm)) == _comparable(simulated)
        # Shown the KVM signature, SeaBIOS says so and takes its time from kvmclock, on both
        assert "Running on KVM" in simulated
        assert "kvmclock: at" in simulated and "kvmclock: stable tsc, 1000 MHz" in simulated
        hidden = boot_log(sim, hide_kvm=True)
        assert _comparable(boot_log(kvm, hide_kvm=True)) == _comparable(hidden)
        assert "Running on KVM" not in hidden and "kvmclock" not in hidden


def test_seabios_finds_the_keyboard(hv: Hypervisor) -> None:
    """The i8042's keyboard answers SeaBIOS's reset at once: no second-long timeout polling the controller."""
    log = boot_log(hv)
    assert "PS2 keyboard initialized" in log
    assert "Timeout at ps2_recvbyte" not in log


def test_seabios_brings_up_every_vcpu(hv: Hypervisor) -> None:
    """SeaBIOS sends INIT/SIPI to all other APICs and counts the processors that check in."""
    with overcommit(hv, 4):
        log = boot_log(hv, cpus=4)
    assert "Found 4 cpu(s) max supported 4 cpu(s)" in log


def test_seabios_waits_only_for_the_cpus_present(hv: Hypervisor) -> None:
    """With a vCPU unplugged at start (``present=1``), fw_cfg and CMOS count the present ones: SeaBIOS
    expects one CPU (of two possible) and does not wait for the other."""
    log = boot_log(hv, cpus=2, present=1)
    assert "Found 1 cpu(s) max supported 2 cpu(s)" in log


def _smbios_in_f_segment(machine: Machine) -> tuple[bytes, bytes]:
    """The ``_SM_`` entry point SeaBIOS left in the F-segment (checksums verified) and its table."""
    segment = machine.read(0xF0000, 0x10000)
    anchors = [a for a in range(0, len(segment), 16) if segment[a : a + 4] == b"_SM_"]
    assert len(anchors) == 1, f"_SM_ anchors at {anchors}"
    entry = segment[anchors[0] : anchors[0] + segment[anchors[0] + 5]]
    assert len(entry) == 0x1F and entry[0x10:0x15] == b"_DMI_"
    assert sum(entry[:0x10]) & 0xFF == 0 and sum(entry[0x10:]) & 0xFF == 0
    length, address = struct.unpack_from("<HI", entry, 0x16)
    return entry, machine.read(address, length)


def test_seabios_installs_our_acpi_tables(hv: Hypervisor) -> None:
    """SeaBIOS runs fw_cfg's table loader: the RSDP lands in the F segment, every table checks out, and the
    MADT lists both vCPUs (what an OS booted from disk needs for SMP: Debian's kernel reads no MP table)."""
    found: list[dict[bytes, bytes]] = []

    def inspect(machine: Machine, devices: PcDevices) -> None:
        segment = machine.read(0xE0000, 0x20000)
        at = segment.find(b"RSD PTR ")
        assert at >= 0 and at % 16 == 0 and 0xE0000 + at >= 0xF0000
        rsdp = segment[at : at + 36]
        assert sum(rsdp[:20]) & 0xFF == 0 and sum(rsdp) & 0xFF == 0
        xsdt_address = struct.unpack_from("<Q", rsdp, 24)[0]
        xsdt = machine.read(xsdt_address, struct.unpack("<I", machine.read(xsdt_address + 4, 4))[0])
        by_name = {b"XSDT": xsdt}
        for (pointer,) in struct.iter_unpack("<Q", xsdt[36:]):
            table = machine.read(pointer, struct.unpack("<I", machine.read(pointer + 4, 4))[0])
            by_name[table[:4]] = table
        found.append(by_name)

    boot_log(hv, cpus=2, after=inspect)
    [by_name] = found
    assert set(by_name) == {b"XSDT", b"FACP", b"APIC", b"MCFG"}
    assert all(sum(table) & 0xFF == 0 for table in by_name.values())
    madt = by_name[b"APIC"]
    assert madt.count(b"\x00\x08\x00\x00") == 1 and madt.count(b"\x00\x08\x01\x01") == 1  # two local APICs


def test_seabios_copies_our_smbios_tables(hv: Hypervisor) -> None:
    """SeaBIOS takes fw_cfg's SMBIOS files as they are (adding its own type 0), not building its own."""
    found: list[tuple[bytes, bytes, bytes]] = []

    def inspect(machine: Machine, devices: PcDevices) -> None:
        ours = devices.fw_cfg.item(devices.fw_cfg.file_selector(smbios.TABLES_FILE))
        assert ours is not None
        found.append((*_smbios_in_f_segment(machine), ours))

    log = boot_log(hv, cpus=2, memory=(3 << 30) + (256 << 20), after=inspect)
    assert "Copying SMBIOS" in log
    [(entry, table, ours)] = found
    parts = list(smbios.structures(table))
    assert parts[0].type == 0 and parts[0].string(4) == "SeaBIOS"  # its own: ours has no type 0
    assert (
        table.endswith(ours)
        and len(table) - len(ours) == len(parts[0].formatted) + sum(len(s) + 1 for s in parts[0].strings) + 1
    )
    assert struct.unpack_from("<H", entry, 0x1C)[0] == len(parts) == 1 + len(list(smbios.structures(ours)))
    assert [p.type for p in parts] == [0, 1, 3, 4, 4, 16, 17, 19, 19, 32, 127]


# A boot sector (real mode at 0x7C00): sets COM1 up and prints "hvcore boot sector: " through the
# BIOS's serial service (int 14h), reads the disk's second sector to 0x8000 (int 13h, AH=2, from
# the boot drive in DL), prints it the same way and writes 0x31 to isa-debug-exit (0x7F if the
# read failed).
BOOT_SECTOR = (
    b"\xfa\x31\xc0\x8e\xd8\x8e\xc0\x8e\xd0\xbc\x00\x7c"  # cli; ds = es = ss = 0; sp = 0x7c00
    b"\x52\x31\xd2\xb8\xe3\x00\xcd\x14"  # push dx; dx = 0 (COM1); int 14h AH=0: 9600 8N1
    b"\xbe\x47\x7c\xe8\x1f\x00"  # si = the message; call print
    b"\x5a\xb8\x01\x02\xb9\x02\x00\x30\xf6\xbb\x00\x80\xcd\x13"  # pop dx; int 13h: 1 sector, C0 H0 S2 to 0x8000
    b"\x72\x0a\xbe\x00\x80\xe8\x09\x00"  # jc fail; si = 0x8000; call print
    b"\xb0\x31\xe6\xf4"  # isa-debug-exit 0x31
    b"\xb0\x7f\xe6\xf4\xf4"  # fail: isa-debug-exit 0x7f; hlt
    b"\xac\x84\xc0\x74\x08\xb4\x01\x31\xd2\xcd\x14\xeb\xf3\xc3"  # print: lodsb until 0; int 14h AH=1 each
    b"hvcore boot sector: \x00"
).ljust(510, b"\x00") + b"\x55\xaa"
SECOND_SECTOR = b"read from sector 2 via int 13h\r\n\x00"


def boot_disk(
    hv: Hypervisor, tmp_path: Path, firmware: str = "bios.bin", after: Callable[[Machine], None] | None = None
) -> str:
    """Boot :data:`BOOT_SECTOR` from a virtio-blk disk on PCI through SeaBIOS ``firmware``, check what it
    printed, then call ``after`` on the machine; SeaBIOS's debug log."""
    disk = tmp_path / "boot.img"
    disk.write_bytes((BOOT_SECTOR + SECOND_SECTOR).ljust(1 << 20, b"\0"))
    log, serial = io.BytesIO(), io.BytesIO()
    with Machine(hv, memory=128 << 20) as machine:
        add_pc_devices(machine, serial=serial, debugcon=log)
        add_virtio_pci(machine, VirtioBlock(disk, read_only=True))
        machine.load(seabios(firmware).read_bytes())
        result = machine.run(timeout=120)
        text = log.getvalue().decode(errors="replace")
        assert result == MachineResult("debug-exit", 0x31 << 1 | 1), f"{result}; SeaBIOS said:\n{text}"
        assert serial.getvalue() == b"hvcore boot sector: read from sector 2 via int 13h\r\n"
        if after is not None:
            after(machine)
    return text


def test_seabios_boots_a_disk_through_virtio_blk_on_pci(hv: Hypervisor, tmp_path: Path) -> None:
    """SeaBIOS finds the i440FX and PIIX3, assigns the virtio-blk function's BARs, drives it in
    modern (1.0) mode and boots its first sector, which reads the second one through the BIOS."""

    def bars_moved(machine: Machine) -> None:
        assert machine.pci is not None
        # where SeaBIOS moved the BARs to (from the VMM's own assignment), they decode
        moved = [machine.pci.bar_address(2 << 3, bar) for bar in (1, 4)]
        assert all(address is not None and address >= 0x8000_0000 for address in moved), moved

    text = boot_disk(hv, tmp_path, after=bars_moved)
    assert "Unable to unlock ram - bridge not found" not in text  # it found the i440FX
    assert "found virtio-blk at 00:02.0" in text and "using modern (1.0) virtio mode" in text
    assert "Booting from Hard Disk..." in text


def test_the_command_boots_a_disk(hv: Hypervisor, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``hvcore run bios.bin --disk boot.img,ro``: the boot sector's verdict is the command's exit status."""
    disk = tmp_path / "boot.img"
    disk.write_bytes((BOOT_SECTOR + SECOND_SECTOR).ljust(1 << 20, b"\0"))
    status = main(["run", str(seabios()), "--backend", hv.name, "--disk", f"{disk},ro", "--timeout", "120"])
    out = capsys.readouterr().out
    assert status == 0x31 << 1 | 1, out
    assert f"{disk} (virtio-blk, read-only)" in out
    assert "hvcore boot sector: read from sector 2 via int 13h" in out


@pytest.mark.parametrize(
    ("disk", "complaint"),
    [("/nonexistent/disk.img", "no such file"), ("/", "a directory"), ("/proc/self/nonexistent,ro", "no such file")],
)
def test_the_command_refuses_a_disk_it_cannot_open(
    disk: str, complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(seabios()), "--disk", disk]) == 2
    assert complaint in capsys.readouterr().err.lower()
