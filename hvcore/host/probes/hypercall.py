"""Probe for KVM hypercalls: whether a VMCALL / VMMCALL at CPL0 comes back at all."""

from __future__ import annotations

from typing import Final

from hvcore import cpuid_rules
from hvcore.exits import IoDirection, IoExit
from hvcore.host.deviation import UPSTREAM, Deviation, Unrecognised
from hvcore.host.guest import CODE, ProbeGuest, ProbeTimeout
from hvcore.protocol import Hypervisor

__all__ = ["DEVIATIONS", "HANG_SECONDS"]

HANG_SECONDS: Final = 0.5
"""How long a hypercall may take before the probe kicks it: upstream returns in microseconds."""
_NUMBER: Final = 0x4B56_4D00
"""A hypercall number KVM does not define: upstream returns -KVM_ENOSYS (-1000)."""
_ENOSYS: Final = -1000
_PORT: Final = 0x10


def _code(instruction: bytes) -> bytes:
    # 64-bit CPL0. Upstream exits: OUT 0x10 size 4 data -1000 (RAX = -1000, 64 bits), RIP at the OUT.
    # `hangs` hosts: no exit until the watchdog's kick; RIP at the hypercall, RAX unchanged.
    return (
        b"\xb8" + _NUMBER.to_bytes(4, "little")  # 1000 mov eax, 0x4b564d00
        + instruction                            # 1005 vmcall / vmmcall (the host's own)
        + b"\xe7" + bytes([_PORT])               # 1008 out 0x10, eax
        + b"\xf4"                                # 100A hlt
    )  # fmt: skip


def _hypercall_hangs(hv: Hypervisor) -> str:
    instruction = cpuid_rules.native_hypercall(cpuid_rules.vendor(hv.supported_cpuid()))
    with ProbeGuest(hv, _code(instruction), "long", seconds=HANG_SECONDS) as guest:
        try:
            exit_ = guest.run()
        except ProbeTimeout:
            regs = guest.vcpu.get_regs()
            if (regs.rip, regs.rax) == (CODE + 5, _NUMBER):
                return "hangs"
            raise Unrecognised(
                f"a hypercall ran {HANG_SECONDS} s without an exit, then stood at rip {regs.rip:#x} with "
                f"rax {regs.rax:#x}"
            ) from None
        rax = guest.vcpu.get_regs().rax
    result = IoExit(_PORT, 4, 1, IoDirection.OUT, (_ENOSYS & 0xFFFFFFFF).to_bytes(4, "little"))
    if exit_ == result and rax == _ENOSYS & (1 << 64) - 1:
        return UPSTREAM
    raise Unrecognised(f"an unknown hypercall ({instruction.hex()}) gave {exit_!r} with rax {rax:#x}")


DEVIATIONS: tuple[Deviation, ...] = (
    Deviation(
        "hypercall_hangs",
        upstream="VMCALL / VMMCALL is a KVM hypercall: number in RAX, arguments in RBX, RCX, RDX, RSI, the result "
        "in RAX (-KVM_ENOSYS for an unknown number, 32 bits outside 64-bit mode, -KVM_EPERM at CPL > 0), RIP past "
        "it; the other vendor's instruction is patched into the host's and then runs",
        variants={
            "hangs": "at CPL0 the hypercall never runs: KVM_RUN spins until a signal (a kick gives an interrupted exit "
            "with RIP at the hypercall and RAX unchanged), or with RFLAGS.TF ends in a single-step #DB at it; a "
            "VMMCALL is left patched into VMCALL; at CPL3 hypercalls work as upstream"
        },
        reason="seen on nested kvm_pvm (AMD EPYC): CPL0 code runs in the kernel's instruction emulator, whose "
        "hypercall emulation (em_hypercall) patches the instruction into VMCALL and lets it run again, which "
        "emulates it again, forever; with TF each round ends in the emulator's single-step trap",
        probe=_hypercall_hangs,
    ),
)
"""The deviations from upstream KVM this module's probes detect (hypercall)."""
