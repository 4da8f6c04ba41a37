"""What a PC BIOS leaves for the kernel it boots, for multiboot kernels loaded without one.

GRUB and QEMU start a multiboot kernel after SeaBIOS has run, and such kernels may rely on it
(kvm-unit-tests' ``realmode`` sleeps in ``hlt`` until the BIOS timer ticks). Before such a boot
:func:`set_up_bios_state` leaves the machine as SeaBIOS does: the 8259 PICs initialised with
interrupt vectors 0x08 and 0x70 and SeaBIOS's masks, the PIT's channel 0 in mode 3 at 18.2 Hz,
and a real-mode IVT whose hardware-interrupt entries acknowledge the PIC (others just return).
The PICs and the PIT are programmed by the guest's own port writes, run on vCPU 0 in real mode,
so the in-kernel devices of either backend take them as from any guest.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from hvcore.errors import StateError
from hvcore.exits import IoDirection, IoExit
from hvcore.protocol import VCPU
from hvcore.types import Regs
from hvcore.vmm.loaders import LoadTarget
from hvcore.x86 import real_mode_sregs

__all__ = ["BIOS_SEGMENT", "set_up_bios_state"]

BIOS_SEGMENT: Final = 0xF000
"""Where the handlers and the set-up code go (guest-physical 0xF0000, RAM the e820 map reserves)."""
_BASE: Final = BIOS_SEGMENT << 4
_IRET, _MASTER_EOI, _SLAVE_EOI, _SET_UP = 0x00, 0x10, 0x20, 0x100  # offsets in the segment
_DONE_PORT: Final = 0x80

_HANDLERS: Final = {
    _IRET: b"\xcf",  # iret
    _MASTER_EOI: b"\x50\xb0\x20\xe6\x20\x58\xcf",  # push ax; mov al, 0x20; out 0x20, al; pop ax; iret
    _SLAVE_EOI: b"\x50\xb0\x20\xe6\xa0\xe6\x20\x58\xcf",  # ...; out 0xa0, al; out 0x20, al; ...
}
_SET_UP_CODE: Final = (
    b"\xb0\x11\xe6\x20\xe6\xa0"  # mov al, 0x11; out 0x20, al; out 0xa0, al   ICW1: edge, cascade, ICW4
    b"\xb0\x08\xe6\x21"          # mov al, 0x08; out 0x21, al                 ICW2: master at vector 0x08
    b"\xb0\x70\xe6\xa1"          # mov al, 0x70; out 0xa1, al                 ICW2: slave at vector 0x70
    b"\xb0\x04\xe6\x21"          # mov al, 0x04; out 0x21, al                 ICW3: slave on IRQ 2
    b"\xb0\x02\xe6\xa1"          # mov al, 0x02; out 0xa1, al                 ICW3: slave id 2
    b"\xb0\x01\xe6\x21\xe6\xa1"  # mov al, 0x01; out 0x21, al; out 0xa1, al   ICW4: 8086 mode
    b"\xb0\xb8\xe6\x21"          # mov al, 0xb8; out 0x21, al                 masks: timer, keyboard, cascade, FDC on
    b"\xb0\x8e\xe6\xa1"          # mov al, 0x8e; out 0xa1, al                 masks: RTC, mouse, FPU, IDE on
    b"\xb0\x36\xe6\x43"          # mov al, 0x36; out 0x43, al                 PIT channel 0: mode 3, binary
    b"\x30\xc0\xe6\x40\xe6\x40"  # xor al, al; out 0x40, al; out 0x40, al     count 65536: 18.2 Hz
    b"\xe6\x80"                  # out 0x80, al                               done
)  # fmt: skip


def _vector_handler(vector: int) -> int:
    if 0x08 <= vector < 0x10:
        return _MASTER_EOI
    if 0x70 <= vector < 0x78:
        return _SLAVE_EOI
    return _IRET


def set_up_bios_state(vcpu: VCPU, memory: LoadTarget) -> None:
    """Leave the PICs, the PIT and the IVT as SeaBIOS does, by running a few instructions on ``vcpu``.

    Call it before loading the kernel's own start state into ``vcpu`` (it changes vCPU 0's
    registers). ``StateError`` if the set-up code stops anywhere but its last port write.
    """
    for offset, code in _HANDLERS.items():
        memory.write(_BASE + offset, code)
    memory.write(_BASE + _SET_UP, _SET_UP_CODE)
    ivt = b"".join((_vector_handler(v) | BIOS_SEGMENT << 16).to_bytes(4, "little") for v in range(256))
    memory.write(0, ivt)
    sregs = real_mode_sregs(vcpu.get_sregs())
    vcpu.set_sregs(replace(sregs, cs=replace(sregs.cs, selector=BIOS_SEGMENT, base=_BASE)))
    vcpu.set_regs(Regs(rip=_SET_UP, rflags=0x2, rsp=0x7000))
    exit_ = vcpu.run()
    if not (isinstance(exit_, IoExit) and exit_.port == _DONE_PORT and exit_.direction is IoDirection.OUT):
        raise StateError(f"setting the PICs and the PIT up as a BIOS does stopped with {exit_!r}", operation="boot")
