"""hvcore's SMM state-save area against QEMU's: the same boot sector, SMI and dump on both.

QEMU (TCG) is the emulator whose SMM layout KVM's emulator copied (arch/x86/kvm/smm.c keeps
QEMU's offsets), and it wrote neither hvcore nor this test: a judge. Both run QEMU's SeaBIOS
(``bios-256k.bin``, which sets SMM up and moves SMBASE to 0xA0000) and boot the same sector
from a virtio disk. The sector loads known registers and sends an SMI through the APM port,
which SeaBIOS's handler takes and returns from without touching the save area; then it opens
SMRAM (the i440FX's D_OPEN) and writes the 512-byte save area at 0xAFE00 to the debug console.
Every byte must agree but RIP: QEMU's TCG takes the SMI at the end of the translation block (after
the ``jmp`` that follows the OUT), KVM and hvcore right after the OUT, one 2-byte instruction
earlier. The comparison found that hvcore put the GDTR and IDTR limits at +0 of their 16-byte
records instead of +4 (KVM's ``kvm_smm_seg_state_64`` with only limit and base used).

Runs where QEMU and SeaBIOS's 256 KiB build are installed (``bash .ci/run`` installs both) and
the backend has SMM (the simulator; KVM only where ``KVM_CAP_X86_SMM`` is set).
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from hvcore import Hypervisor
from hvcore.vmm.machine import Machine, MachineResult
from hvcore.vmm.pc import add_pc_devices
from hvcore.vmm.virtio import VirtioBlock
from hvcore.vmm.virtio.pci import add_virtio_pci
from tests.vmm.test_firmware import seabios

BOOT_SECTOR = bytes.fromhex(
    "fa31c08ed88ec08ed0bc007c"  # cli; ds = es = ss = 0; sp = 0x7c00
    "66bb22222222" "66b933333333" "66be55555555" "66bf66666666" "66bd77777777"  # ebx ecx esi edi ebp
    "66b85a111111"  # eax = 0x1111115a
    "e6b2"  # 7c30: out 0xb2, al (APM: an SMI, SeaBIOS's handler ignores command 0x5a)
    "eb00"  # 7c32: jmp 7c34
    "66b870000080baf80c66ef"  # conf1 address: 00:00.0 register 0x70
    "bafe0cb04aee"  # SMRAM register (0x72) = 0x4a: D_OPEN | G_SMRAME
    "ba0204be617cb90800f36e"  # the marker "SMMDUMP:" to the debug console (0x402)
    "b8e0af8ed831f6b90002f36e"  # then the 512 bytes at 0xafe0:0 (0xafe00)
    "b031e6f4f4"  # isa-debug-exit 0x31; hlt
) + b"SMMDUMP:"  # fmt: skip
MARKER = b"SMMDUMP:"
RIP = 0x178  # the save area's RIP, from SMBASE + 0xFE00
AFTER_OUT = 0x7C32


def _disk(tmp_path: Path) -> Path:
    sector = BOOT_SECTOR.ljust(510, b"\0") + b"\x55\xaa"
    assert sector[0x61:0x69] == MARKER  # where the code's "mov si, 0x7c61" points
    disk = tmp_path / "smm.img"
    disk.write_bytes(sector.ljust(1 << 20, b"\0"))
    return disk


def _save_area(debugcon: bytes) -> bytes:
    at = debugcon.find(MARKER)
    assert at >= 0, debugcon[-400:]
    area = debugcon[at + len(MARKER) : at + len(MARKER) + 512]
    assert len(area) == 512 and struct.unpack_from("<II", area, 0xFC) == (0x00020064, 0xA0000), area.hex()
    return area


def _qemu(disk: Path, firmware: Path, tmp_path: Path) -> bytes:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("qemu-system-x86_64 is not installed (`bash .ci/run` installs qemu-system-x86)")
    log = tmp_path / "qemu-debugcon.bin"
    done = subprocess.run(
        [
            qemu, "-machine", "pc,accel=tcg", "-m", "128", "-bios", str(firmware), "-nodefaults", "-display", "none",
            "-drive", f"file={disk},format=raw,if=virtio,readonly=on",
            "-chardev", f"file,id=debugcon,path={log}", "-device", "isa-debugcon,iobase=0x402,chardev=debugcon",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
        ],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0x31 << 1 | 1, done.stderr.decode(errors="replace")
    return _save_area(log.read_bytes())


def test_the_save_area_is_qemus_byte_for_byte(hv: Hypervisor, tmp_path: Path) -> None:
    disk, firmware = _disk(tmp_path), seabios("bios-256k.bin")
    debugcon = io.BytesIO()
    with Machine(hv, memory=128 << 20) as machine:
        if not machine.smm:
            pytest.skip(f"backend {hv.name!r} has no SMM (KVM_CAP_X86_SMM is 0): SeaBIOS sends no SMI")
        add_pc_devices(machine, debugcon=debugcon)
        add_virtio_pci(machine, VirtioBlock(disk, read_only=True))
        machine.load(firmware.read_bytes())
        assert machine.run(timeout=120) == MachineResult("debug-exit", 0x31 << 1 | 1)
    ours, qemus = _save_area(debugcon.getvalue()), _qemu(disk, firmware, tmp_path)
    assert struct.unpack_from("<Q", ours, RIP)[0] == AFTER_OUT
    assert struct.unpack_from("<Q", qemus, RIP)[0] == AFTER_OUT + 2  # TCG: at the end of the block
    words = [at for at in range(0, 512, 4) if at // 8 != RIP // 8]
    differ = [hex(0xFE00 + at) for at in words if ours[at : at + 4] != qemus[at : at + 4]]
    assert differ == [], f"save-area words that differ from QEMU's: {differ}"
