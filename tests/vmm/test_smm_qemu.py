"""hvcore's SMM state-save area against QEMU's: the same boot sector, SMI and dump on both.

QEMU (TCG) is the emulator whose SMM layout KVM's emulator copied (arch/x86/kvm/smm.c keeps
QEMU's offsets), and it wrote neither hvcore nor this test: a judge. Both run QEMU's SeaBIOS
(``bios-256k.bin``, which sets SMM up and moves SMBASE to 0xA0000) and boot the same sector
from a virtio disk, one in real mode and one that enters 64-bit long mode first
(``smm_sectors/*.S``, assembled here), and the real-mode one again on a CPU without long mode
(QEMU's ``qemu-system-i386 -cpu qemu32``), for the 32-bit layout. The sector loads known
registers and sends an SMI through the APM port, which SeaBIOS's handler takes and returns from
without touching the save area;
then it opens SMRAM (the i440FX's D_OPEN) and writes the 512-byte save area at 0xAFE00 to the
debug console.
Every byte must agree but RIP: QEMU's TCG takes the SMI at the end of the translation block (after
the ``jmp`` that follows the OUT), KVM and hvcore right after the OUT, one 2-byte instruction
earlier. The comparison found that hvcore put the GDTR and IDTR limits at +0 of their 16-byte
records instead of +4 (KVM's ``kvm_smm_seg_state_64`` with only limit and base used).

A third sector puts its own handler at SeaBIOS's SMBASE + 0x8000 (with SMRAM open), which
rewrites saved registers: after RSM, back in long mode, what the guest reads must be the same on
both (RSM, checked against QEMU's).

Runs where QEMU and SeaBIOS's 256 KiB build are installed (``bash .ci/run`` installs both) and
the backend has SMM (the simulator; KVM only where ``KVM_CAP_X86_SMM`` is set).
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from hvcore import Hypervisor
from hvcore.vmm.machine import Machine, MachineResult
from hvcore.vmm.pc import add_pc_devices
from hvcore.vmm.virtio import VirtioBlock
from hvcore.vmm.virtio.pci import add_virtio_pci
from tests.vmm.test_firmware import seabios

SECTORS = Path(__file__).parent / "smm_sectors"
MARKER = b"SMMDUMP:"
REVISION_64, REVISION_32 = 0x00020064, 0x00020000
SEGMENT_FLAGS_32 = (0x12C, 0x138, 0x144, 0x15C, 0x178, 0x184, 0x190, 0x19C)
"""The 32-bit layout's segment attribute words (DS FS GS TR LDTR ES CS SS), from SMBASE + 0xFE00."""
_LM = 1 << 29  # CPUID 0x80000001 EDX: long mode
APM_OUT_THEN_JMP = b"\xe6\xb2\xeb\x00"  # out 0xb2, al; jmp to the next instruction


def _disk(mode: str, tmp_path: Path) -> tuple[Path, int]:
    """The boot sector ``smm_sectors/{mode}.S`` on a 1 MiB disk, and the address right after its APM OUT."""
    tools = [shutil.which(tool) for tool in ("as", "ld")]
    if None in tools:
        pytest.skip("binutils' as and ld assemble the boot sectors (`bash .ci/run` installs gcc, which brings them)")
    source, objects, sector = SECTORS / f"{mode}.S", tmp_path / f"{mode}.o", tmp_path / f"{mode}.bin"
    assemble = [str(tools[0]), "-I", str(SECTORS), str(source), "-o", str(objects)]  # -I: common.inc
    subprocess.run(assemble, check=True, capture_output=True)
    subprocess.run(
        [str(tools[1]), "-Ttext=0x7c00", "--oformat", "binary", "-o", str(sector), str(objects)],
        check=True,
        capture_output=True,
    )
    code = sector.read_bytes()
    assert len(code) == 512 and code.endswith(b"\x55\xaa") and code.count(APM_OUT_THEN_JMP) == 1
    disk = tmp_path / f"{mode}.img"
    disk.write_bytes(code.ljust(1 << 20, b"\0"))
    return disk, 0x7C00 + code.index(APM_OUT_THEN_JMP) + 2


def _dump(debugcon: bytes, marker: bytes, length: int) -> bytes:
    """The ``length`` bytes the sector wrote to the debug console after ``marker``."""
    at = debugcon.find(marker)
    assert at >= 0, debugcon[-400:]
    data = debugcon[at + len(marker) : at + len(marker) + length]
    assert len(data) == length
    return data


def _save_area(debugcon: bytes, revision: int) -> bytes:
    area = _dump(debugcon, MARKER, 512)
    smbase_at = 0x100 if revision == REVISION_64 else 0xF8
    assert struct.unpack_from("<I", area, 0xFC)[0] == revision, area.hex()
    assert struct.unpack_from("<I", area, smbase_at)[0] == 0xA0000, area.hex()
    return area


def _qemu(disk: Path, firmware: Path, tmp_path: Path, *, long_mode: bool = True) -> bytes:
    """QEMU's debug-console output for ``disk`` booted through ``firmware`` (TCG; ``qemu32`` without long mode)."""
    binary, cpu = ("qemu-system-x86_64", "qemu64") if long_mode else ("qemu-system-i386", "qemu32")
    qemu = shutil.which(binary)
    if qemu is None:
        pytest.skip(f"{binary} is not installed (`bash .ci/run` installs qemu-system-x86)")
    log = tmp_path / "qemu-debugcon.bin"
    done = subprocess.run(
        [
            qemu, "-machine", "pc,accel=tcg", "-cpu", cpu, "-m", "128", "-bios", str(firmware), "-nodefaults",
            "-display", "none", "-drive", f"file={disk},format=raw,if=virtio,readonly=on",
            "-chardev", f"file,id=debugcon,path={log}", "-device", "isa-debugcon,iobase=0x402,chardev=debugcon",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
        ],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0x31 << 1 | 1, done.stderr.decode(errors="replace")
    return log.read_bytes()


def _ours(hv: Hypervisor, disk: Path, firmware: Path, *, long_mode: bool = True) -> bytes:
    """hvcore's debug-console output for the same (a CPUID without long mode where ``long_mode`` is false)."""
    debugcon = io.BytesIO()
    with Machine(hv, memory=128 << 20) as machine:
        if not machine.smm:
            pytest.skip(f"backend {hv.name!r} has no SMM (KVM_CAP_X86_SMM is 0): SeaBIOS sends no SMI")
        if not long_mode:
            vcpu = machine.vcpus[0]
            vcpu.set_cpuid([replace(e, edx=e.edx & ~_LM) if e.function == 0x80000001 else e for e in vcpu.get_cpuid()])
        add_pc_devices(machine, debugcon=debugcon)
        add_virtio_pci(machine, VirtioBlock(disk, read_only=True))
        machine.load(firmware.read_bytes())
        assert machine.run(timeout=120) == MachineResult("debug-exit", 0x31 << 1 | 1)
    return debugcon.getvalue()


@pytest.mark.parametrize(
    ("mode", "long_mode"),
    [("real", True), ("long", True), ("real", False)],
    ids=["real-mode", "long-mode", "real-mode-32-bit-layout"],
)
def test_the_save_area_is_qemus(hv: Hypervisor, tmp_path: Path, mode: str, long_mode: bool) -> None:
    """The 64-bit layout (a CPU with long mode) byte for byte; the 32-bit one (a CPU without, as QEMU's
    ``qemu32``) with one difference in KVM's making: its segment attribute words are unshifted
    (``enter_smm_get_segment_flags``), where QEMU's TCG stores them shifted right by 8."""
    (disk, after_out), firmware = _disk(mode, tmp_path), seabios("bios-256k.bin")
    revision, rip, rip_format = (REVISION_64, 0x178, "<Q") if long_mode else (REVISION_32, 0x1F0, "<I")
    ours = _save_area(_ours(hv, disk, firmware, long_mode=long_mode), revision)
    qemus = _save_area(_qemu(disk, firmware, tmp_path, long_mode=long_mode), revision)
    assert struct.unpack_from(rip_format, ours, rip)[0] == after_out
    assert struct.unpack_from(rip_format, qemus, rip)[0] == after_out + 2  # TCG: at the end of the block
    rip_words = (rip, rip + 4) if long_mode else (rip,)
    words = [at for at in range(0, 512, 4) if at not in rip_words]
    differ = [at for at in words if ours[at : at + 4] != qemus[at : at + 4]]
    if not long_mode:
        for at in [at for at in differ if at in SEGMENT_FLAGS_32]:
            assert int.from_bytes(ours[at : at + 4], "little") == int.from_bytes(qemus[at : at + 4], "little") << 8
            differ.remove(at)
    assert differ == [], f"save-area words that differ from QEMU's: {[hex(0xFE00 + at) for at in differ]}"


def test_rsm_loads_what_the_handler_wrote_as_qemus_does(hv: Hypervisor, tmp_path: Path) -> None:
    """A handler of the sector's own (``rsm.S``) rewrites the saved RAX and R9's low half; after RSM, back
    in long mode, the registers, control registers, RFLAGS and SS read the same on both."""
    (disk, _), firmware = _disk("rsm", tmp_path), seabios("bios-256k.bin")
    ours = struct.unpack("<10Q", _dump(_ours(hv, disk, firmware), b"REGDUMP:", 80))
    qemus = struct.unpack("<10Q", _dump(_qemu(disk, firmware, tmp_path), b"REGDUMP:", 80))
    assert ours == qemus
    assert ours[0] == 0x12345678_5A5A5A5A and ours[3] == 0x91919191_99999999  # RAX, R9 as the handler wrote
    assert ours[1] == 0x22222222_22222222 and ours[5:8] == (0x80000011, 0x1000, 0x20)  # RBX; CR0, CR3, CR4
