"""System Management Mode and address spaces: ``KVM_SMI``, RSM, and slots in address space 1.

A vCPU in SMM sees address space 1, where the VMM maps SMRAM (QEMU's "kvm-smram" listener maps
RAM there too, with SMRAM over it). These tests put other bytes at the same guest-physical
addresses in the two spaces and check which one the guest sees, the state-save area KVM's
emulator writes at SMBASE + 0xFE00 (64-bit layout when the CPUID has long mode, 32-bit
otherwise), and that RSM comes back to the interrupted code with its state intact. On a KVM
without SMM (``KVM_CAP_X86_SMM`` is 0, as on this project's hosts with ``kvm_pvm``) the guest
tests skip with that reason, and the calls are checked to raise ``Unsupported``.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest

import hvcore
from hvcore import VCPU, VM, Capability, GuestMemory, Hypervisor, IoExit, MpState, SlotFlags, x86

SMBASE = 0x30000
SAVE = 0xFE00  # the state-save area, from SMBASE
MARKER = 0x100  # from SMBASE: 0xA0 in address space 0, 0x5A in SMRAM
MSR_SMBASE, MSR_SMI_COUNT = 0x9E, 0x34
RAM_SIZE = 2 << 20
GDT, PML4 = 0x800, 0x10000

LONG_MODE_GUEST = (
    b"\x48\xbb\x88\x77\x66\x55\x44\x33\x22\x11"  # mov rbx, 0x1122334455667788
    b"\x49\xbf\x11\x22\x33\x44\x55\x66\x77\x88"  # mov r15, 0x8877665544332211
    b"\x8a\x04\x25\x00\x01\x03\x00"  # mov al, [0x30100]
    b"\xe6\x10"  # out 0x10, al         <- the test sends the SMI here
    b"\x8a\x04\x25\x00\x01\x03\x00"  # mov al, [0x30100]
    b"\xe6\x11"  # out 0x11, al
    b"\xf4"  # hlt
)
HANDLER_PORT = 0x99
AT_FIRST_OUT = 0x1000 + 27  # where RIP is at the exit; the OUT is finished by the next run, before the SMI
HANDLER = (  # 16-bit, at SMBASE + 0x8000 (CS base SMBASE, data segments flat from 0)
    b"\x67\xa0\x00\x01\x03\x00"  # addr32 mov al, [0x30100]
    b"\xe6\x99"  # out 0x99, al (not 0x20: the in-kernel PIC's)
    b"\x0f\xaa"  # rsm
)


PROTECTED_GUEST = (
    b"\xbb\x44\x33\x22\x11"  # mov ebx, 0x11223344
    b"\xe6\x10"  # out 0x10, al
    b"\xe6\x11"  # out 0x11, al
    b"\xf4"  # hlt
)


@dataclass
class SmmGuest:
    """A VM with RAM in address space 0 and, in address space 1, the same RAM with 64 KiB of SMRAM at SMBASE."""

    vm: VM
    vcpu: VCPU
    ram: GuestMemory
    smram: GuestMemory


def _require_smm(vm: VM) -> None:
    if not vm.check_extension(Capability.X86_SMM):
        pytest.skip(
            "this KVM has no SMM (KVM_CAP_X86_SMM is 0: a kernel without CONFIG_KVM_SMM, or kvm_pvm); "
            "test_the_smm_calls_follow_the_capability checks that it says so"
        )


@pytest.fixture
def smm_guest(hv: Hypervisor, vm: VM) -> Iterator[SmmGuest]:
    _require_smm(vm)
    with GuestMemory(RAM_SIZE) as ram, GuestMemory(0x10000) as smram:
        ram.fill(SMBASE, 0x10000, 0xF4)  # what address space 0 holds where SMRAM is: HLTs
        ram.write(SMBASE + MARKER, b"\xa0")
        smram.write(MARKER, b"\x5a")
        smram.write(0x8000, HANDLER)
        vm.set_memory_slot(0, 0, ram)
        vm.set_memory_slot(0, 0, ram, size=SMBASE, address_space=1)
        vm.set_memory_slot(1, SMBASE, smram, address_space=1)
        vm.set_memory_slot(2, SMBASE + 0x10000, ram, offset=SMBASE + 0x10000, address_space=1)
        vm.create_irqchip()  # a LAPIC, which latches an INIT in SMM
        vcpu = vm.create_vcpu(0)
        yield SmmGuest(vm, vcpu, ram, smram)


def _long_mode(hv: Hypervisor, guest: SmmGuest) -> None:
    vcpu = guest.vcpu
    vcpu.set_cpuid(hv.supported_cpuid())
    guest.ram.write(0x1000, LONG_MODE_GUEST)
    vcpu.set_sregs(x86.long_mode_sregs(vcpu.get_sregs(), guest.ram, GDT, PML4))
    vcpu.set_regs(hvcore.Regs(rip=0x1000, rsp=0x8000, rflags=0x2))


def _protected_mode(guest: SmmGuest) -> hvcore.Sregs:
    """PROTECTED_GUEST at 0x1000 in flat 32-bit protected mode, run to its first OUT; the segments it has."""
    vcpu = guest.vcpu
    guest.ram.write(0x1000, PROTECTED_GUEST)
    sregs = x86.protected_mode_sregs(vcpu.get_sregs(), guest.ram, GDT)
    vcpu.set_sregs(sregs)
    vcpu.set_regs(hvcore.Regs(rip=0x1000, rsp=0x8000, rflags=0x2))
    _out(vcpu, 0x10)
    return sregs


def _into_the_handler(hv: Hypervisor, guest: SmmGuest) -> None:
    """The 64-bit guest to its first OUT, then an SMI: the run stops at the handler's OUT."""
    _long_mode(hv, guest)
    _out(guest.vcpu, 0x10)
    guest.vcpu.smi()
    _out(guest.vcpu, HANDLER_PORT)


def _out(vcpu: VCPU, port: int) -> IoExit:
    exit_ = vcpu.run()
    assert isinstance(exit_, IoExit) and exit_.port == port and not exit_.is_in, exit_
    return exit_


def _saved(smram: GuestMemory, offset: int, layout: str) -> int:
    value: int = struct.unpack_from(layout, smram.read(SAVE, 512), offset - SAVE)[0]
    return value


def test_an_smi_runs_the_handler_from_smram_and_rsm_resumes_the_interrupted_code(
    hv: Hypervisor, smm_guest: SmmGuest
) -> None:
    vcpu = smm_guest.vcpu
    _long_mode(hv, smm_guest)
    assert _out(vcpu, 0x10).data == b"\xa0"  # address space 0 at 0x30100
    regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
    assert regs.rip == AT_FIRST_OUT and not vcpu.in_smm
    vcpu.smi()
    assert vcpu.get_vcpu_events().smi_pending == 1

    assert _out(vcpu, HANDLER_PORT).data == b"\x5a"  # the handler, in SMRAM, reads SMRAM
    assert vcpu.in_smm
    events = vcpu.get_vcpu_events()
    assert (events.smi_smm, events.smi_pending, events.nmi_masked) == (1, 0, 1)
    inside = vcpu.get_sregs()
    assert (inside.cs.base, inside.cs.selector, inside.cs.limit, inside.cs.db) == (SMBASE, SMBASE >> 4, 0xFFFFFFFF, 0)
    assert (inside.ds.base, inside.cr4, inside.efer, inside.idt.limit) == (0, 0, 0, 0)
    assert inside.cr0 & (x86.CR0_PE | x86.CR0_PG) == 0
    assert vcpu.get_regs().rip == 0x8006 and vcpu.get_regs().rbx == regs.rbx  # at the OUT
    assert vcpu.get_msrs([MSR_SMBASE, MSR_SMI_COUNT]) == {MSR_SMBASE: SMBASE, MSR_SMI_COUNT: 1}

    # the 64-bit state-save area (struct kvm_smram_state_64)
    smram = smm_guest.smram
    assert _saved(smram, 0xFEFC, "<I") == 0x00020064 and _saved(smram, 0xFF00, "<I") == SMBASE
    assert _saved(smram, 0xFF78, "<Q") == AT_FIRST_OUT + 2  # RIP: past the OUT
    assert _saved(smram, 0xFF58, "<Q") == sregs.cr0 and _saved(smram, 0xFF50, "<Q") == sregs.cr3
    assert _saved(smram, 0xFF48, "<Q") == sregs.cr4 and _saved(smram, 0xFED0, "<Q") == sregs.efer
    assert _saved(smram, 0xFF80, "<Q") == regs.r15 and _saved(smram, 0xFF80 + 12 * 8, "<Q") == regs.rbx
    assert _saved(smram, 0xFE10, "<H") == sregs.cs.selector and _saved(smram, 0xFE68, "<Q") == sregs.gdt.base
    assert (_saved(smram, 0xFE64, "<I"), _saved(smram, 0xFE84, "<I")) == (sregs.gdt.limit, sregs.idt.limit)
    assert _saved(smram, 0xFE88, "<Q") == sregs.idt.base
    assert smm_guest.ram.read(SMBASE + SAVE, 16) == b"\xf4" * 16  # address space 0 untouched

    assert _out(vcpu, 0x11).data == b"\xa0"  # back in address space 0, after the interrupted OUT
    assert not vcpu.in_smm and vcpu.get_vcpu_events().smi_smm == 0
    after = vcpu.get_regs()
    assert (after.rbx, after.r15, after.rip) == (regs.rbx, regs.r15, AT_FIRST_OUT + 9)
    back = vcpu.get_sregs()
    assert (back.cs, back.ss, back.gdt, back.idt) == (sregs.cs, sregs.ss, sregs.gdt, sregs.idt)
    assert (back.cr0, back.cr3, back.cr4, back.efer) == (sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer)
    assert vcpu.get_vcpu_events().nmi_masked == 0  # RSM unblocks NMIs that SMM entry blocked


def test_the_handler_relocates_smbase_as_firmware_does(hv: Hypervisor, smm_guest: SmmGuest) -> None:
    """SeaBIOS's handler writes a new SMBASE into the save area; after RSM the next SMI enters there."""
    vcpu = smm_guest.vcpu
    relocating = HANDLER[:8] + b"\x67\x66\xc7\x05\x00\xff\x03\x00\x00\x00\x0a\x00" + HANDLER[8:]
    smm_guest.smram.write(0x8000, relocating)
    _into_the_handler(hv, smm_guest)
    _out(vcpu, 0x11)
    assert vcpu.get_msrs([MSR_SMBASE]) == {MSR_SMBASE: 0xA0000}


def test_an_smi_in_smm_waits_for_rsm_and_nmis_wait_too(hv: Hypervisor, smm_guest: SmmGuest) -> None:
    vcpu = smm_guest.vcpu
    _into_the_handler(hv, smm_guest)
    vcpu.smi()
    vcpu.nmi()
    events = vcpu.get_vcpu_events()
    assert (events.smi_smm, events.smi_pending, events.nmi_pending, events.nmi_masked) == (1, 1, 1, 1)
    assert _out(vcpu, HANDLER_PORT).data == b"\x5a"  # RSM, then straight into SMM again: the handler runs twice
    assert vcpu.get_msrs([MSR_SMI_COUNT]) == {MSR_SMI_COUNT: 2}
    assert vcpu.get_vcpu_events().smi_pending == 0


def test_smm_state_round_trips_through_vcpu_events(smm_guest: SmmGuest) -> None:
    vcpu = smm_guest.vcpu
    events = vcpu.get_vcpu_events()
    assert events.flags & 0x8 and (events.smi_smm, events.smi_pending, events.smi_inside_nmi) == (0, 0, 0)
    vcpu.set_vcpu_events(replace(events, smi_smm=1, smi_inside_nmi=1))
    got = vcpu.get_vcpu_events()
    assert (got.smi_smm, got.smi_inside_nmi) == (1, 1)
    vcpu.set_vcpu_events(replace(got, smi_smm=0, smi_pending=1))
    got = vcpu.get_vcpu_events()
    assert (got.smi_smm, got.smi_pending, got.smi_inside_nmi) == (0, 1, 0)


def test_smm_refuses_a_vcpu_waiting_for_sipi(vm: VM) -> None:
    _require_smm(vm)
    vm.create_irqchip()
    vm.create_vcpu(0)
    ap = vm.create_vcpu(1)
    ap.set_mp_state(MpState.INIT_RECEIVED)
    with pytest.raises(hvcore.InvalidArgument) as caught:
        ap.set_vcpu_events(replace(ap.get_vcpu_events(), flags=0x8, smi_pending=1))
    assert caught.value.errno == errno.EINVAL


def test_without_long_mode_the_save_area_has_the_32_bit_layout(smm_guest: SmmGuest) -> None:
    """KVM picks the layout by the CPUID: a vCPU without LM (here: no CPUID set) gets ``kvm_smram_state_32``."""
    vcpu = smm_guest.vcpu
    sregs = _protected_mode(smm_guest)
    vcpu.smi()
    _out(vcpu, HANDLER_PORT)
    smram = smm_guest.smram
    assert _saved(smram, 0xFEFC, "<I") == 0x00020000 and _saved(smram, 0xFEF8, "<I") == SMBASE
    assert _saved(smram, 0xFFF0, "<I") == 0x1007  # EIP
    assert _saved(smram, 0xFFFC, "<I") == vcpu.get_sregs().cr0 | x86.CR0_PE  # CR0 as it was
    assert _saved(smram, 0xFFD0 + 3 * 4, "<I") == 0x11223344  # EBX: gprs in the natural order
    assert _saved(smram, 0xFFAC, "<I") == sregs.cs.selector
    _out(vcpu, 0x11)
    assert vcpu.get_regs().rbx == 0x11223344 and vcpu.get_sregs().cs == sregs.cs


def test_address_spaces_have_their_own_slots_and_dirty_logs(smm_guest: SmmGuest) -> None:
    vm = smm_guest.vm
    spaces = [(s.address_space, s.slot, s.guest_address) for s in vm.memory_slots()]
    assert spaces == [(0, 0, 0), (1, 0, 0), (1, 1, SMBASE), (1, 2, SMBASE + 0x10000)]
    with pytest.raises(hvcore.SlotOverlap):
        vm.set_memory_slot(3, SMBASE, smm_guest.smram, size=0x1000, address_space=1)
    with pytest.raises(hvcore.InvalidArgument, match="address space 2"):
        vm.set_memory_slot(3, 0, smm_guest.smram, address_space=2)
    vm.set_slot_flags(1, SlotFlags.LOG_DIRTY_PAGES, address_space=1)
    assert vm.get_dirty_log(1, address_space=1).pages() == []
    vcpu = smm_guest.vcpu
    _protected_mode(smm_guest)
    vcpu.smi()
    _out(vcpu, HANDLER_PORT)
    assert 0xF in vm.get_dirty_log(1, address_space=1).pages()  # the save area's page, written by SMM entry
    vm.delete_memory_slot(1, address_space=1)
    assert [s.slot for s in vm.memory_slots() if s.address_space == 1] == [0, 2]


def test_an_smi_with_no_smram_mapped_kills_the_vm(smm_guest: SmmGuest) -> None:
    """``enter_smm`` cannot write the save area: KVM marks the VM dead, and KVM_RUN fails with EIO."""
    vm, vcpu = smm_guest.vm, smm_guest.vcpu
    vm.delete_memory_slot(1, address_space=1)
    _protected_mode(smm_guest)
    vcpu.smi()
    with pytest.raises(hvcore.HvError) as caught:
        vcpu.run()
    assert caught.value.errno == errno.EIO
    for call in (vcpu.get_regs, vcpu.run, vm.get_clock, lambda: vm.create_vcpu(1)):  # every call but close: EIO
        with pytest.raises(hvcore.HvError) as caught:
            call()
        assert caught.value.errno == errno.EIO
    vm.close()


def test_the_smm_calls_follow_the_capability(vm: VM) -> None:
    """Where KVM has SMM it has two address spaces and takes KVM_SMI; where not, both say Unsupported."""
    vcpu = vm.create_vcpu(0)
    with GuestMemory(0x10000) as smram:
        if vm.check_extension(Capability.X86_SMM):
            assert vm.check_extension(Capability.MULTI_ADDRESS_SPACE) == 2
            vm.set_memory_slot(0, SMBASE, smram, address_space=1)
            vcpu.smi()
            assert vcpu.get_vcpu_events().smi_pending == 1
        else:
            assert vm.check_extension(Capability.MULTI_ADDRESS_SPACE) <= 1
            with pytest.raises(hvcore.Unsupported, match="SMM"):
                vm.set_memory_slot(0, SMBASE, smram, address_space=1)
            with pytest.raises(hvcore.Unsupported, match="KVM_CAP_X86_SMM"):
                vcpu.smi()
            assert vm.memory_slots() == ()
        with pytest.raises(hvcore.InvalidArgument, match="address space -1"):
            vm.set_memory_slot(1, 0, smram, address_space=-1)
        with pytest.raises(hvcore.InvalidType):
            vm.set_memory_slot(1, 0, smram, address_space=1.0)  # type: ignore[arg-type]


UD_GUEST = b"\x0f\xaa"  # rsm, outside SMM
UD_HANDLER = b"\xe6\x30\xf4"  # out 0x30, al; hlt


def test_rsm_outside_smm_raises_ud(vm: VM) -> None:
    """On every backend, SMM or not: RSM is #UD outside SMM (the emulator's ``em_rsm``)."""
    with GuestMemory(0x10000) as ram:
        ram.write(6 * 4, struct.pack("<HH", 0x2000, 0))  # IVT[6] -> 0000:2000
        ram.write(0x1000, UD_GUEST)
        ram.write(0x2000, UD_HANDLER)
        vm.set_memory_slot(0, 0, ram)
        vcpu = vm.create_vcpu(0)
        vcpu.set_sregs(x86.real_mode_sregs(vcpu.get_sregs()))
        vcpu.set_regs(hvcore.Regs(rip=0x1000, rsp=0x8000, rflags=0x2))
        _out(vcpu, 0x30)
        assert struct.unpack("<HHH", ram.read(0x8000 - 6, 6)) == (0x1000, 0, 0x2)  # IP, CS, FLAGS of the #UD


SMI_IPI_GUEST = (  # 32-bit protected mode, no paging
    b"\xc7\x05\x10\x03\xe0\xfe\x00\x00\x00\x00"  # mov dword [0xfee00310], 0 (destination: APIC 0)
    b"\xc7\x05\x00\x03\xe0\xfe\x00\x42\x00\x00"  # mov dword [0xfee00300], 0x4200 (SMI, assert)
    b"\xe6\x10"  # out 0x10, al
    b"\xf4"  # hlt
)


def test_an_smi_ipi_from_the_guest_enters_smm_at_the_next_instruction(hv: Hypervisor, vm: VM) -> None:
    """The LAPIC takes an SMI IPI as ``KVM_SMI`` (``APIC_DM_SMI``): the handler runs before the next instruction."""
    _require_smm(vm)
    vm.create_irqchip()
    with GuestMemory(RAM_SIZE) as ram, GuestMemory(0x10000) as smram:
        smram.write(0x8000, HANDLER)
        smram.write(MARKER, b"\x5a")
        ram.write(0x1000, SMI_IPI_GUEST)
        vm.set_memory_slot(0, 0, ram)
        vm.set_memory_slot(0, 0, ram, size=SMBASE, address_space=1)
        vm.set_memory_slot(1, SMBASE, smram, address_space=1)
        vcpu = vm.create_vcpu(0)
        vcpu.set_cpuid(hv.supported_cpuid())
        vcpu.set_sregs(x86.protected_mode_sregs(vcpu.get_sregs(), ram, GDT))
        vcpu.set_regs(hvcore.Regs(rip=0x1000, rsp=0x8000, rflags=0x2))
        assert _out(vcpu, HANDLER_PORT).data == b"\x5a" and vcpu.in_smm
        assert _saved(smram, 0xFF78, "<Q") == 0x1000 + 20  # RIP: the instruction after the ICR write
        assert _out(vcpu, 0x10) and not vcpu.in_smm


def test_an_init_in_smm_waits_for_rsm(hv: Hypervisor, smm_guest: SmmGuest) -> None:
    """INIT is latched in SMM (``smi_latched_init``) and taken after RSM: the BSP resets then."""
    vcpu = smm_guest.vcpu
    _into_the_handler(hv, smm_guest)
    events = vcpu.get_vcpu_events()
    vcpu.set_vcpu_events(replace(events, flags=0x8, smi_latched_init=1))
    assert vcpu.get_vcpu_events().smi_latched_init == 1
    vcpu.run()  # RSM, then the INIT: the BSP starts over at the reset vector, where no memory is
    assert not vcpu.in_smm
    sregs = vcpu.get_sregs()
    assert (sregs.cs.selector, sregs.cs.base, vcpu.get_regs().rip) == (0xF000, 0xFFFF0000, 0xFFF0)
