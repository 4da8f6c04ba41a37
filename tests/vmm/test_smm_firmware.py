"""SeaBIOS's System Management Mode on a hvcore PC: software nobody here wrote drives SMM.

QEMU's default SeaBIOS build (``bios-256k.bin``; the 128 KiB ``bios.bin`` leaves SMM out) finds
PIIX4's power-management function and the i440FX, opens SMRAM (the SMRAM register), copies its
SMI entry to the default SMBASE's handler address, enables SMIs on the APM control port and
writes to it. Its handler, running in SMM from the 64-bit state-save area hvcore laid out, moves
SMBASE to 0xA0000 by writing the save area and says so through the APM status port; SeaBIOS then
closes SMRAM, so that outside SMM 0xA0000 is the VGA hole again while SMM sees its handler there.
Later, its 16-bit code calls 32-bit code (the virtio-blk driver) through SMIs ("call32 via SMM"):
each call and each return is an SMI whose handler rewrites the save area, so RSM lands in the
other mode. A run only passes if every one of those entries and returns worked.

Where the VM has no SMM (KVM with ``KVM_CAP_X86_SMM`` 0, as on this project's hosts), PIIX4 reads
APMC_EN as set from reset, as QEMU's does with SMM off: SeaBIOS takes SMM as set up and never
sends an SMI. Both outcomes are asserted.
"""

from __future__ import annotations

import io
from pathlib import Path

from hvcore import Capability, Hypervisor
from hvcore.memory import SMM_ADDRESS_SPACE
from hvcore.vmm.machine import Machine, MachineResult
from hvcore.vmm.pc import add_pc_devices
from hvcore.vmm.run import ConsoleTee
from tests.vmm.test_firmware import DONE, boot_disk, seabios

MSR_SMBASE, MSR_SMI_COUNT = 0x9E, 0x34
SMRAM_CLOSED = 0x0A  # G_SMRAME, C_BASE_SEG 0xA0000: what SeaBIOS leaves
SMRAM_RESET = 0x02
SMI_ENTRY = b"\x8c\xc8\xea"  # SeaBIOS's SMI_INSN: movw %cs, %ax; ljmpw $SEG_BIOS, $entry_smi


def test_seabios_relocates_smbase_through_an_smi(hv: Hypervisor) -> None:
    console = io.StringIO()
    with Machine(hv, memory=256 << 20) as machine:
        tee = ConsoleTee(console, DONE, lambda: machine.stop(MachineResult("until")))
        devices = add_pc_devices(machine, debugcon=tee)  # type: ignore[arg-type]  # write/flush suffice
        machine.load(seabios("bios-256k.bin").read_bytes())
        result = machine.run(timeout=120)
        assert result == MachineResult("until"), f"{result}; log so far:\n{console.getvalue()}"
        assert machine.pci is not None and devices.power_management is not None
        smram = machine.pci.host_bridge.smram
        if not machine.smm:
            assert not machine.vm.check_extension(Capability.X86_SMM)
            assert smram == SMRAM_RESET  # SeaBIOS saw APMC_EN set and left SMM alone
            assert machine.smram.mapped == {0: False, SMM_ADDRESS_SPACE: False}
            return
        msrs = machine.vcpus[0].get_msrs([MSR_SMBASE, MSR_SMI_COUNT])
        assert msrs == {MSR_SMBASE: 0xA0000, MSR_SMI_COUNT: 1}  # the relocation SMI, handled by SeaBIOS
        assert smram == SMRAM_CLOSED
        assert machine.smram.mapped == {0: False, SMM_ADDRESS_SPACE: True}
        assert machine.smram.read(0x8000, 3) == SMI_ENTRY  # its handler at the new SMBASE + 0x8000


def test_seabios_calls_its_32_bit_disk_driver_through_smm(hv: Hypervisor, tmp_path: Path) -> None:
    smis: list[int] = []

    def count_smis(machine: Machine) -> None:
        if machine.smm:
            smis.append(machine.vcpus[0].get_msrs([MSR_SMI_COUNT])[MSR_SMI_COUNT])

    boot_disk(hv, tmp_path, "bios-256k.bin", after=count_smis)
    if smis:  # the relocation, then an SMI into 32-bit mode and one back for each int 13h the driver served
        assert smis[0] >= 3 and smis[0] % 2 == 1, smis
