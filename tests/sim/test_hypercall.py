"""The simulator's hypercalls (hvcore_sim.hypercall) where no host here can show upstream KVM's side.

tests/test_hypercall.py runs the common cases on both backends with the host's vendor. These
cover the rest of upstream's rules on the simulator alone: an AMD vCPU (the simulator then plays
an SVM host), real mode, where KVM's patch lands (RIP as a linear address, CS's base not added),
patches that fault or hit read-only memory, dirty logging, the VMM's single-step, and a
KVM_HC_KICK_CPU that wakes a vCPU halted in another thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest

import hvcore
from hvcore import (
    VM,
    CpuidEntry,
    DebugExit,
    GuestDebug,
    GuestDebugFlags,
    GuestMemory,
    HltExit,
    Hypervisor,
    InterruptedExit,
    IoDirection,
    IoExit,
    MmioExit,
    MpState,
    ShutdownExit,
    SlotFlags,
    cpuid_rules,
)
from hvcore_sim import system
from hvcore_sim.hypercall import Instruction, decode
from tests.boot import boot, read_guest, run_exits, write_guest
from tests.guests import hypercall, layout
from tests.test_exceptions import (
    KERNEL_CS,
    KERNEL_SS,
    RF,
    RSP0,
    USER_CS,
    USER_SS,
    delivered,
    frame,
    long_mode_guest,
    real_mode_guest,
)
from tests.test_hypercall import SECOND, second_vcpu

pytestmark = pytest.mark.skipif(
    system._unicorn_problem() is not None, reason=f"simulator unusable: {system._unicorn_problem()}"
)

VMCALL, VMMCALL = cpuid_rules.VMCALL, cpuid_rules.VMMCALL
CODE, STACK_TOP = layout.CODE, layout.STACK_TOP
U32, U64 = (1 << 32) - 1, (1 << 64) - 1
KVM_ENOSYS, KVM_HC_KICK_CPU = 1000, 5
ALIAS = 0x200000
"""Linear 2 MiB page that ``read_only_alias`` maps onto physical 0, read-only."""


@pytest.fixture
def hv() -> Iterator[Hypervisor]:
    """The simulator only (the ``vm`` fixture of tests/conftest.py builds on this)."""
    with hvcore.open_hypervisor("sim") as sim:
        yield sim


def amd(hv: Hypervisor) -> list[CpuidEntry]:
    """The supported CPUID with an AMD vendor: the simulator plays an SVM host, whose own hypercall is VMMCALL."""
    entries = list(hv.supported_cpuid())
    leaf0 = next(e for e in entries if e.function == 0)
    return [cpuid_rules.vendor_leaf(cpuid_rules.AMD, leaf0.eax) if e.function == 0 else e for e in entries]


def test_decode_reads_prefixes_as_kvms_decoder() -> None:
    assert decode(VMCALL + b"\xf4", 64) == Instruction(VMCALL, 3, lock=False)
    assert decode(b"\x66\xf0" + VMMCALL, 32) == Instruction(VMMCALL, 5, lock=True)
    assert decode(b"\x48" + VMCALL, 64) == Instruction(VMCALL, 4, lock=False)  # REX
    assert decode(b"\x48" + VMCALL, 32) is None  # `dec eax` outside 64-bit code
    assert decode(b"\x0f\x01\xc8", 64) is None  # monitor
    assert decode(b"\x66" * 13 + VMCALL, 64) is None  # 16 bytes: no instruction is that long


# --- an AMD vCPU: the simulator plays an SVM host ------------------------------------------------------


def test_an_amd_vcpu_runs_vmmcall_and_patches_vmcall_into_it(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, hypercall.then_hlt(VMMCALL), "long", rax=0)
    vcpu.set_cpuid(amd(hv))
    assert run_exits(vcpu) == [HltExit()]
    assert (vcpu.get_regs().rax, read_guest(vm, CODE, 3)) == (-KVM_ENOSYS & U64, VMMCALL)
    write_guest(vm, CODE, hypercall.then_hlt(VMCALL))
    vcpu.set_regs(replace(vcpu.get_regs(), rip=CODE, rax=0))
    assert run_exits(vcpu) == [HltExit()]
    assert (vcpu.get_regs().rax, read_guest(vm, CODE, 3)) == (-KVM_ENOSYS & U64, VMMCALL)


def test_an_amd_vcpu_refuses_vmcall_at_cpl3(hv: Hypervisor, vm: VM) -> None:
    """VMCALL is privileged in KVM's emulator: #GP(0) on it, not patched (an Intel vCPU patches VMMCALL)."""
    vcpu = long_mode_guest(hv, vm, hypercall.then_hlt(VMCALL), user=True)
    vcpu.set_cpuid(amd(hv))
    assert run_exits(vcpu) == delivered(13)
    assert frame(vm, RSP0, 6) == [0, CODE, USER_CS, RF | 0x2, STACK_TOP, USER_SS]
    assert read_guest(vm, CODE, 3) == VMCALL


# --- real mode -----------------------------------------------------------------------------------------


def test_real_mode_hypercall_is_32_bits(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, hypercall.then_hlt(VMCALL), "real", rax=1 << 32)
    assert run_exits(vcpu) == [HltExit()]
    assert (vcpu.get_regs().rax, vcpu.get_regs().rip) == (-KVM_ENOSYS & U32, CODE + 4)


def test_real_mode_vmmcall_on_an_intel_vcpu_is_ud(hv: Hypervisor, vm: VM) -> None:
    """VMMCALL is a protected-mode instruction for KVM's emulator: #UD, not patched."""
    vcpu = real_mode_guest(hv, vm, hypercall.then_hlt(VMMCALL))
    assert run_exits(vcpu) == delivered(6)
    assert frame(vm, STACK_TOP, 3, size=2) == [CODE, 0, 0x202]  # IP, CS, FLAGS
    assert read_guest(vm, CODE, 3) == VMMCALL


def test_an_amd_vcpu_patches_real_mode_vmcall_at_ip_not_at_cs_ip(hv: Hypervisor, vm: VM) -> None:
    """``emulator_fix_hypercall`` writes at RIP as a linear address: with CS's base 0x1000 it misses the VMCALL.

    The VMCALL stays, so every run raises #UD again and patches again: the guest never moves on.
    """
    vcpu = boot(hv, vm, hypercall.then_hlt(VMCALL), "real")
    vcpu.set_cpuid(amd(hv))
    sregs = vcpu.get_sregs()
    vcpu.set_sregs(replace(sregs, cs=replace(sregs.cs, selector=CODE >> 4, base=CODE)))
    vcpu.set_regs(replace(vcpu.get_regs(), rip=0))
    kick = threading.Timer(0.3, vcpu.kick)
    kick.start()
    try:
        assert vcpu.run() == InterruptedExit()
    finally:
        kick.cancel()
    assert vcpu.get_regs().rip == 0
    assert read_guest(vm, 0, 3) == VMMCALL  # the real-mode IVT's first bytes
    assert read_guest(vm, CODE, 3) == VMCALL


# --- where the patch lands -----------------------------------------------------------------------------


def test_a_patch_into_read_only_memory_is_an_mmio_write_every_time(hv: Hypervisor, vm: VM) -> None:
    rom = GuestMemory(layout.ROM_SIZE)
    rom.write(0, hypercall.then_hlt(VMMCALL))
    vm.set_memory_slot(1, layout.ROM, rom, flags=SlotFlags.READONLY)
    vcpu = boot(hv, vm, b"", "long")
    vcpu.set_regs(replace(vcpu.get_regs(), rip=layout.ROM))
    patch = MmioExit(layout.ROM, 3, True, VMCALL)
    assert [vcpu.run(), vcpu.run()] == [patch, patch]  # KVM's write goes to the VMM; the VMMCALL stays
    assert (vcpu.get_regs().rip, rom.read(0, 3)) == (layout.ROM, VMMCALL)


def read_only_alias(vm: VM) -> None:
    """Map linear ALIAS..ALIAS + 2 MiB onto physical 0 without write permission (PD entry 1)."""
    write_guest(vm, layout.PD + 8, (0x80 | 0x4 | 0x1).to_bytes(8, "little"))  # 2 MiB page, user, present


def test_a_patch_into_a_read_only_page_is_a_page_fault(hv: Hypervisor, vm: VM) -> None:
    vcpu = long_mode_guest(hv, vm, hypercall.then_hlt(VMMCALL), user=False)  # CR0.WP: CPL0 writes are checked
    read_only_alias(vm)
    vcpu.set_regs(replace(vcpu.get_regs(), rip=ALIAS + CODE))
    assert run_exits(vcpu) == delivered(14)
    assert frame(vm, STACK_TOP, 6) == [0x3, ALIAS + CODE, KERNEL_CS, RF | 0x2, STACK_TOP, KERNEL_SS]  # write, present
    assert vcpu.get_sregs().cr2 == ALIAS + CODE
    assert read_guest(vm, CODE, 3) == VMMCALL


def test_a_patch_through_page_tables_outside_memory_is_a_page_fault(hv: Hypervisor, vm: VM) -> None:
    """32-bit paging, CS based at -4 MiB: the VMCALL at EIP 0x801000 runs at linear 0x401000, but KVM writes the
    patch at linear EIP, whose page table lies where no memory is: the walk fails, a #PF (with an empty IDT,
    a triple fault), not a simulator error.
    """
    vcpu = boot(hv, vm, hypercall.then_hlt(VMCALL), "protected")
    vcpu.set_cpuid(amd(hv))
    big_page_at_0, table_in_mmio = 0x83, layout.MMIO | 0x3  # PDE 0 and 1: 4 MiB at physical 0; PDE 2: no memory
    entries = (big_page_at_0, big_page_at_0, table_in_mmio)
    write_guest(vm, layout.DATA, b"".join(e.to_bytes(4, "little") for e in entries))
    sregs = vcpu.get_sregs()
    cs = replace(sregs.cs, base=0xFFC00000)
    vcpu.set_sregs(replace(sregs, cs=cs, cr3=layout.DATA, cr4=sregs.cr4 | 0x10, cr0=sregs.cr0 | 1 << 31))
    vcpu.set_regs(replace(vcpu.get_regs(), rip=0x800000 + CODE))
    assert vcpu.run() == ShutdownExit()
    assert read_guest(vm, CODE, 3) == VMCALL


def test_a_patch_is_logged_dirty(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, hypercall.then_hlt(VMMCALL), "long", ram_flags=SlotFlags.LOG_DIRTY_PAGES)
    vm.get_dirty_log(0)
    assert run_exits(vcpu) == [HltExit()]
    assert CODE // 0x1000 in vm.get_dirty_log(0).pages()


# --- the VMM's single-step ------------------------------------------------------------------------------


def test_the_vmm_single_steps_over_a_patch_then_the_hypercall(hv: Hypervisor, vm: VM) -> None:
    vcpu = boot(hv, vm, hypercall.then_hlt(VMMCALL), "long", rax=0)
    vcpu.set_guest_debug(GuestDebug(GuestDebugFlags.ENABLE | GuestDebugFlags.SINGLESTEP))
    first, second = vcpu.run(), vcpu.run()
    assert isinstance(first, DebugExit) and isinstance(second, DebugExit)
    assert (first.pc, second.pc) == (CODE, CODE + 3)  # the patch is one step, the hypercall the next
    assert vcpu.get_regs().rax == -KVM_ENOSYS & U64


# --- KVM_HC_KICK_CPU, live ----------------------------------------------------------------------------


def test_kick_cpu_wakes_a_vcpu_halted_in_another_thread(hv: Hypervisor, vm: VM) -> None:
    vm.create_irqchip()
    kicker = boot(hv, vm, hypercall.then_out(VMCALL), "long", rax=KVM_HC_KICK_CPU, rcx=1)
    write_guest(vm, SECOND, hypercall.HALT_THEN_REPORT)
    sleeper = second_vcpu(hv, vm, kicker, SECOND)
    exits: list[object] = []
    thread = threading.Thread(target=lambda: exits.append(sleeper.run()))
    thread.start()
    try:
        while sleeper._mp_state is not MpState.HALTED:  # type: ignore[attr-defined]  # it reached its HLT (get_mp_state waits for the run, as on KVM)
            thread.join(0.01)
        assert kicker.run() == IoExit(hypercall.PORT, 1, 1, IoDirection.OUT, b"\x00")
        thread.join(5)
    finally:
        if thread.is_alive():
            sleeper.kick()
            thread.join()
    assert exits == [IoExit(hypercall.KICKED_PORT, 1, 1, IoDirection.OUT, b"\x01")]


def test_making_a_vcpu_runnable_drops_a_kick_it_has_not_used(hv: Hypervisor, vm: VM) -> None:
    """KVM's ``kvm_set_mp_state(RUNNABLE)`` clears ``pv_unhalted``: the vCPU's next HLT sleeps again."""
    vm.create_irqchip()
    kicker = boot(hv, vm, hypercall.then_out(VMCALL), "long", rax=KVM_HC_KICK_CPU, rcx=1)
    write_guest(vm, SECOND, hypercall.HALT_THEN_REPORT)
    sleeper = second_vcpu(hv, vm, kicker, SECOND)
    assert kicker.run() == IoExit(hypercall.PORT, 1, 1, IoDirection.OUT, b"\x00")  # kicks the vCPU before it halts
    sleeper.set_mp_state(MpState.RUNNABLE)
    kick = threading.Timer(0.3, sleeper.kick)
    kick.start()
    try:
        assert sleeper.run() == InterruptedExit()  # its HLT sleeps: the kick went with the state change
    finally:
        kick.cancel()
    assert sleeper.get_mp_state() is MpState.HALTED
