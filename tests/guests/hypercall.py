"""Guests that make KVM hypercalls (VMCALL ``0f 01 c1``, VMMCALL ``0f 01 d9``), as `bytes`.

Each is loaded at ``layout.CODE`` and takes the hypercall instruction to use (the host's own, or
the other vendor's); the host puts the hypercall number and arguments in RAX, RBX, RCX, RDX and
RSI with ``set_regs``. Each byte literal is one instruction, assembled with GNU as (Intel
syntax) at 0x1000; the trailing comment is the source line. The bytes mean the same in 16-,
32- and 64-bit code.
"""

PORT = 0x10
"""Where :func:`then_out` sends AL."""
KICKED_PORT = 0x11
"""Where :data:`HALT_THEN_REPORT` reports that its HLT ended."""


def then_hlt(instruction: bytes) -> bytes:
    """The hypercall, then `hlt`. Exits: HLT with RIP = CODE + length + 1 and the result in RAX."""
    return instruction + b"\xf4"  # vmcall / vmmcall; hlt


def then_out(instruction: bytes) -> bytes:
    """The hypercall, then `out 0x10, al` (for CPL3 with IOPL 3). Exits: OUT 0x10 (AL), the result in RAX."""
    return (
        instruction      # vmcall / vmmcall
        + b"\xe6\x10"    # out 0x10, al
        + b"\xf4"        # hlt
    )  # fmt: skip


def prefixed(prefix: bytes, instruction: bytes) -> bytes:
    """``instruction`` with ``prefix`` bytes before it, then `hlt`."""
    return prefix + then_hlt(instruction)


# 64-bit CPL0 with an irqchip, IF=0: halts, and reports once the HLT is over (a KVM_HC_KICK_CPU
# ends it even though no interrupt can come in).
# Exits: OUT 0x11 size 1 data 1 once kicked (with an irqchip a HLT never exits to the VMM).
HALT_THEN_REPORT = (
    b"\xfa"          # 1000 cli
    b"\xf4"          # 1001 hlt
    b"\xb0\x01"      # 1002 mov al, 1
    b"\xe6\x11"      # 1004 out 0x11, al
    b"\xf4"          # 1006 hlt
)  # fmt: skip
