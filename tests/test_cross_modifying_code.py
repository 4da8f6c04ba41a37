"""Code one vCPU patches reaches another vCPU once that one serializes (SDM 8.1.3, cross-modifying code).

vCPU 0 runs ``mov al, 1; out 0x10, al`` in a loop that serializes with an IRET to itself, as
Linux's ``sync_core`` does after ``text_poke``; vCPU 1 rewrites the ``mov``'s immediate. The
simulator keeps a translation cache per vCPU, and Unicorn drops translations only for the stores
of the engine that made them: without the rule in ``hvcore_sim.exits.Tracker._serialized`` vCPU 0
would go on printing 1.
"""

from __future__ import annotations

import struct
from dataclasses import replace

from hvcore import HltExit, Hypervisor, IoExit
from tests.boot import boot
from tests.guests import layout

LOOP = (
    b"\xb0\x01"  # 1000 mov al, 1            (vCPU 1 rewrites the immediate at 0x1001)
    b"\xe6\x10"  # 1002 out 0x10, al
    b"\x8c\xd0\x50"  # mov eax, ss; push rax
    b"\x54\x48\x83\x04\x24\x08"  # push rsp; add qword [rsp], 8
    b"\x9c\x8c\xc8\x50"  # pushfq; mov eax, cs; push rax
    b"\x48\x8d\x05\x03\x00\x00\x00\x50"  # lea rax, [rip + 3] (after the iretq); push rax
    b"\x48\xcf"  # iretq                      (to the next instruction: serializing)
)
LOOP += b"\xeb" + struct.pack("<b", -(len(LOOP) + 2))  # jmp 0x1000
PATCHER_AT = layout.CODE + 0x100
PATCHER = b"\xc6\x04\x25" + struct.pack("<I", layout.CODE + 1) + b"\x02" + b"\xf4"  # mov byte [0x1001], 2; hlt


def test_a_vcpu_runs_code_another_vcpu_patched_once_it_serializes(hv: Hypervisor) -> None:
    with hv.create_vm() as vm:
        image = LOOP.ljust(0x100, b"\x90") + PATCHER
        runner = boot(hv, vm, image, "long")
        patcher = boot(hv, vm, image, "long", vcpu_id=1)
        patcher.set_regs(replace(patcher.get_regs(), rip=PATCHER_AT))
        first = runner.run()
        assert isinstance(first, IoExit) and (first.port, first.data) == (0x10, b"\x01")
        assert patcher.run() == HltExit()
        after = runner.run()
        assert isinstance(after, IoExit) and (after.port, after.data) == (0x10, b"\x02")
