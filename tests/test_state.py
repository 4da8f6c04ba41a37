"""vCPU and VM state: reset values, every get/set pair round-trips, clock, irqchip, system queries."""

from __future__ import annotations

import struct
from dataclasses import fields, replace

import pytest

from hvcore import (
    VM,
    AlreadyExists,
    Capability,
    CpuidEntry,
    Fpu,
    Hypervisor,
    InvalidArgument,
    IoapicState,
    IoExit,
    IrqchipId,
    MpState,
    PicState,
    Regs,
    ShutdownExit,
    Translation,
    Xsave,
    x86,
)
from tests.boot import boot, read_guest, run_exits, write_guest
from tests.guests import layout, long_mode
from tests.quirks import has_irqchip

MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_ESP, MSR_LSTAR, MSR_TSC_AUX = 0x174, 0x175, 0xC0000082, 0xC0000103


def test_new_vcpu_is_in_the_reset_state(hv: Hypervisor, vm: VM) -> None:
    vcpu = vm.create_vcpu(0)
    regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
    assert (regs.rip, regs.rdx & 0xFF00, regs.rflags) == (0xFFF0, 0x600, 0x2)
    assert (sregs.cs.selector, sregs.cs.base, sregs.cs.limit) == (0xF000, 0xFFFF0000, 0xFFFF)
    assert sregs.cr0 == 0x60000010
    assert sregs.efer == 0
    assert sregs.apic_base == 0xFEE00900
    assert vcpu.get_mp_state() == MpState.RUNNABLE


def test_system_queries(hv: Hypervisor) -> None:
    assert hv.api_version() == 12
    caps = hv.capabilities()
    assert {Capability.USER_MEMORY, Capability.SET_GUEST_DEBUG, Capability.IMMEDIATE_EXIT} <= caps
    assert hv.check_extension(Capability.USER_MEMORY) == 1
    assert hv.check_extension(Capability.NR_MEMSLOTS) > 32
    assert 1 <= hv.recommended_vcpus() <= hv.max_vcpus()
    assert hv.vcpu_mmap_size() >= 2 * 4096
    msrs = hv.msr_index_list()
    assert MSR_IA32_SYSENTER_CS in msrs
    assert MSR_LSTAR in msrs
    leaves = {e.function for e in hv.supported_cpuid()}
    assert {0, 1, 0x80000000, 0x80000001} <= leaves


def test_regs_and_sregs_round_trip(hv: Hypervisor, vm: VM) -> None:
    vcpu = vm.create_vcpu(0)
    names = [f.name for f in fields(Regs)]
    regs = Regs(**{n: i for i, n in enumerate(names[:16], 1)}, rip=0x1234, rflags=0x202)
    vcpu.set_regs(regs)
    assert vcpu.get_regs() == regs
    sregs = x86.real_mode_sregs(vcpu.get_sregs(), code_segment=0x2000)
    sregs = replace(sregs, es=replace(sregs.es, selector=0x3000, base=0x30000), cr2=0xDEAD000)
    vcpu.set_sregs(sregs)
    got = vcpu.get_sregs()
    assert (got.cs, got.es, got.cr2, got.gdt, got.idt) == (sregs.cs, sregs.es, sregs.cr2, sregs.gdt, sregs.idt)


def test_long_mode_sregs_round_trip(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, long_mode.SPIN, "long")
    sregs = vcpu.get_sregs()
    assert sregs.efer & (x86.EFER_LME | x86.EFER_LMA) == x86.EFER_LME | x86.EFER_LMA
    assert sregs.cs.l == 1
    assert sregs.cr3 == layout.PML4
    assert vcpu.translate(0x3FFF_F123) == Translation(0x3FFF_F123, 0x3FFF_F123, True, True, False)
    assert vcpu.translate(0x4000_0000) == Translation(0x4000_0000, (1 << 64) - 1, False, True, False)


def test_translate_reports_like_kvm_and_sets_no_dirty_bit(hv: Hypervisor, vm: VM) -> None:
    """KVM_TRANSLATE walks as a read: accessed bits only; writeable is always 1 and usermode 0 (upstream's ioctl)."""
    vcpu = boot(hv, vm, long_mode.SPIN, "long")
    last_pde = layout.PD + 511 * 8  # maps 0x3FE00000, a 2 MiB page the guest never touched
    write_guest(vm, last_pde, (0x3FE0_0000 | 0x87).to_bytes(8, "little"))  # present, writable, user, 2 MiB
    assert vcpu.translate(0x3FFF_F123) == Translation(0x3FFF_F123, 0x3FFF_F123, True, True, False)
    assert int.from_bytes(read_guest(vm, last_pde, 8), "little") & 0x60 == 0x20  # accessed, not dirty


def test_fpu_and_xsave_round_trip(hv: Hypervisor, vm: VM) -> None:
    vcpu = vm.create_vcpu(0)
    xsave = vcpu.get_xsave()
    region = bytearray(xsave.region)
    region[160:176] = bytes(range(16))  # XMM0 in the legacy area
    region[512:520] = (region[512] | 0x2).to_bytes(1, "little") + region[513:520]  # XSTATE_BV: SSE
    vcpu.set_xsave(Xsave(bytes(region)))
    assert vcpu.get_xsave().region[160:176] == bytes(range(16))
    assert vcpu.get_fpu().xmm[0] == bytes(range(16))
    fpu = vcpu.get_fpu()
    vcpu.set_fpu(replace(fpu, xmm=(b"\x11" * 16, *fpu.xmm[1:]), mxcsr=0x1F80))
    assert isinstance(vcpu.get_fpu(), Fpu)


def test_new_vcpu_xsave_area_is_in_its_init_state(hv: Hypervisor, vm: VM) -> None:
    """KVM's fresh guest FPU (``fpu_alloc_guest_fpstate``): XSTATE_BV 0, FCW 0x37F and MXCSR 0x1F80 in the image."""
    region = vm.create_vcpu(0).get_xsave().region
    fcw, fsw, ftw, mxcsr, mxcsr_mask = struct.unpack_from("<HHB19xII", region, 0)
    assert struct.unpack_from("<QQ", region, 512) == (0, 0)  # XSTATE_BV, XCOMP_BV
    assert (fcw, fsw, ftw, mxcsr) == (0x37F, 0, 0, 0x1F80)
    assert mxcsr_mask & 0xFFFF == 0xFFFF  # the CPU's: 0xFFFF on Intel (the simulator's Icelake), 0x2FFFF on AMD
    assert not any(region[32:416])  # ST0-7 and XMM0-15


def test_kvm_fpu_has_no_mxcsr(hv: Hypervisor, vm: VM) -> None:
    """KVM_GET_FPU never fills ``mxcsr`` in (0) and KVM_SET_FPU ignores it: MXCSR is the XSAVE area's alone."""
    vcpu = vm.create_vcpu(0)
    assert vcpu.get_fpu().mxcsr == 0  # though the image holds 0x1F80 (test_new_vcpu_xsave_area_is_in_its_init_state)
    region = bytearray(vcpu.get_xsave().region)
    struct.pack_into("<I", region, 24, 0x1F00)  # MXCSR: every exception unmasked but precision
    struct.pack_into("<Q", region, 512, 0x2)  # XSTATE_BV: SSE
    vcpu.set_xsave(Xsave(bytes(region)))
    assert vcpu.get_fpu().mxcsr == 0
    vcpu.set_fpu(replace(vcpu.get_fpu(), mxcsr=0x1F80))
    assert struct.unpack_from("<I", vcpu.get_xsave().region, 24)[0] == 0x1F00


def test_xsave_keeps_the_xstate_bv_it_was_given(hv: Hypervisor, vm: VM) -> None:
    vcpu = vm.create_vcpu(0)
    region = bytearray(vcpu.get_xsave().region)
    struct.pack_into("<Q", region, 512, 0x3)  # x87 and SSE, both in their init state
    vcpu.set_xsave(Xsave(bytes(region)))
    assert struct.unpack_from("<Q", vcpu.get_xsave().region, 512)[0] == 0x3
    struct.pack_into("<Q", region, 512, 0)
    vcpu.set_xsave(Xsave(bytes(region)))
    assert struct.unpack_from("<Q", vcpu.get_xsave().region, 512)[0] == 0


def test_msrs_round_trip(hv: Hypervisor, vm: VM) -> None:
    vcpu = vm.create_vcpu(0)
    vcpu.set_msrs({MSR_IA32_SYSENTER_CS: 0x10, MSR_IA32_SYSENTER_ESP: 0xFFFF8000})
    assert vcpu.get_msrs([MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_ESP]) == {
        MSR_IA32_SYSENTER_CS: 0x10,
        MSR_IA32_SYSENTER_ESP: 0xFFFF8000,
    }


def test_cpuid_xcrs_and_mp_state(hv: Hypervisor, vm: VM) -> None:
    vcpu = vm.create_vcpu(0)
    supported = hv.supported_cpuid()
    vcpu.set_cpuid(supported)
    leaf0 = next(e for e in vcpu.get_cpuid() if e.function == 0)
    assert isinstance(leaf0, CpuidEntry)
    assert leaf0.eax >= 1
    assert vcpu.get_xcrs()[0] & 1  # x87 state is always enabled in XCR0
    vcpu.set_xcrs({0: 0x3})
    assert vcpu.get_xcrs()[0] == 0x3
    vcpu.set_mp_state(MpState.RUNNABLE)
    with pytest.raises(InvalidArgument):  # without an in-kernel LAPIC only RUNNABLE is valid
        vcpu.set_mp_state(MpState.HALTED)


def test_mp_state_with_irqchip(hv: Hypervisor, vm: VM) -> None:
    if not has_irqchip(hv, vm):
        return
    vcpu = vm.create_vcpu(0)
    vcpu.set_mp_state(MpState.HALTED)
    assert vcpu.get_mp_state() == MpState.HALTED


def test_vcpu_events_round_trip(hv: Hypervisor, vm: VM) -> None:
    vcpu = vm.create_vcpu(0)
    events = vcpu.get_vcpu_events()
    vcpu.set_vcpu_events(replace(events, nmi_masked=1))
    assert vcpu.get_vcpu_events().nmi_masked == 1


def test_triple_fault_is_shutdown_and_stays_so(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, long_mode.TRIPLE_FAULT, "long")
    vcpu.set_sregs(replace(vcpu.get_sregs(), idt=replace(vcpu.get_sregs().idt, base=0, limit=0)))
    assert vcpu.run() == ShutdownExit()
    assert vcpu.run() == ShutdownExit()


def test_clock_get_set(hv: Hypervisor, vm: VM) -> None:
    first = vm.get_clock().clock
    second = vm.get_clock().clock
    assert second >= first
    vm.set_clock(5_000_000_000_000)
    after = vm.get_clock().clock
    assert 5_000_000_000_000 <= after < 5_000_000_000_000 + 10_000_000_000  # set, then advancing


def test_irqchip_state_round_trip(hv: Hypervisor, vm: VM) -> None:
    if not has_irqchip(hv, vm):
        return
    master = vm.get_irqchip(IrqchipId.PIC_MASTER)
    assert isinstance(master, PicState)
    vm.set_irqchip(IrqchipId.PIC_MASTER, replace(master, imr=0xFA, irq_base=0x20, elcr=0x08, elcr_mask=0xF8))
    again = vm.get_irqchip(IrqchipId.PIC_MASTER)
    assert isinstance(again, PicState)
    assert (again.imr, again.irq_base, again.elcr) == (0xFA, 0x20, 0x08)
    ioapic = vm.get_irqchip(IrqchipId.IOAPIC)
    assert isinstance(ioapic, IoapicState)
    assert ioapic.base_address == 0xFEC00000
    assert all(e & (1 << 16) for e in ioapic.redirtbl)
    table = (49, *ioapic.redirtbl[1:])
    vm.set_irqchip(IrqchipId.IOAPIC, replace(ioapic, redirtbl=table, id=2))
    again_io = vm.get_irqchip(IrqchipId.IOAPIC)
    assert isinstance(again_io, IoapicState)
    assert again_io.redirtbl[0] == 0x31
    assert again_io.id == 2


def test_irq_line_status_reports_latched_and_coalesced_edges(hv: Hypervisor, vm: VM) -> None:
    if not has_irqchip(hv, vm):
        return
    assert vm.irq_line(3, True) == 1  # the PIC latched the edge (the IOAPIC pin is masked: adds 0)
    assert vm.irq_line(3, False) > 0
    assert vm.irq_line(3, True) == 0  # still in IRR, never acknowledged: coalesced
    master = vm.get_irqchip(IrqchipId.PIC_MASTER)
    assert isinstance(master, PicState)
    assert master.irr & (1 << 3)


def test_lapic_round_trip(hv: Hypervisor, vm: VM) -> None:
    if not has_irqchip(hv, vm):
        return
    vcpu = vm.create_vcpu(1)
    lapic = vcpu.get_lapic()
    assert lapic.register(0x20) >> 24 == 1  # APIC ID = vCPU id
    vcpu.set_lapic(lapic.with_register(0x80, 0x20))  # TPR
    assert vcpu.get_lapic().register(0x80) == 0x20


@pytest.mark.parametrize("address", [0xFFFBD000])
def test_tss_and_identity_map_addresses(hv: Hypervisor, vm: VM, address: int) -> None:
    vm.set_identity_map_address(address - 0x1000)
    vm.set_tss_address(address)


def test_pit_needs_an_irqchip_and_exists_once(hv: Hypervisor, vm: VM) -> None:
    if not has_irqchip(hv, vm):
        return
    vm.create_pit()
    with pytest.raises(AlreadyExists):
        vm.create_pit()
    with pytest.raises(AlreadyExists):
        vm.create_irqchip()


# cpuid; out 0x10, eax; mov eax, ebx; out; mov eax, ecx; out; mov eax, edx; out; hlt  (16-bit code)
CPUID_REPORT = (
    b"\x0f\xa2"  # cpuid
    b"\x66\xe7\x10"  # out 0x10, eax
    b"\x66\x89\xd8"  # mov eax, ebx
    b"\x66\xe7\x10"  # out 0x10, eax
    b"\x66\x89\xc8"  # mov eax, ecx
    b"\x66\xe7\x10"  # out 0x10, eax
    b"\x66\x89\xd0"  # mov eax, edx
    b"\x66\xe7\x10"  # out 0x10, eax
    b"\xf4"  # hlt
)


def test_guest_cpuid_is_served_from_the_vmm_entries(hv: Hypervisor, vm: VM) -> None:
    vendor = CpuidEntry(0, eax=1, ebx=0x6F637668, edx=0x45542D65, ecx=0x75706354)  # "hvcore-TEcpu" as KVM packs it
    vcpu = boot(hv, vm, CPUID_REPORT, rax=0, rcx=0)
    vcpu.set_cpuid([vendor, *(e for e in hv.supported_cpuid() if e.function != 0)])
    values = [e.values()[0] for e in run_exits(vcpu) if isinstance(e, IoExit)]
    assert values == [1, 0x6F637668, 0x75706354, 0x45542D65]
