"""The legacy SMRAM window (0xA0000-0xBFFFF) in the two address spaces, as a PC chipset maps it.

Where the VM has SMM (``Capability.X86_SMM``), a :class:`~hvcore.vmm.machine.Machine` maps every
slot in address space 1 too, as QEMU's "kvm-smram" listener does, so a vCPU in SMM sees the same
RAM, ROMs and MMIO as outside. The window differs: the i440FX's SMRAM register
(:mod:`hvcore.vmm.pci.chipset`) shows the RAM behind it outside SMM only with D_OPEN (else the
window is the VGA hole: MMIO), and in SMM with G_SMRAME or D_OPEN. The RAM is the machine's low
RAM at 0xA0000, as QEMU aliases it. A machine without that chipset keeps the window plain RAM in
both spaces.
"""

from __future__ import annotations

from typing import Final

from hvcore.errors import InvalidArgument
from hvcore.memory import SMM_ADDRESS_SPACE, GuestMemory
from hvcore.protocol import VM

__all__ = ["SMRAM_BASE", "SMRAM_END", "SmramWindow"]

SMRAM_BASE: Final = 0xA0000
"""The window's first byte (the i440FX's C_BASE_SEG)."""
SMRAM_END: Final = 0xC0000
"""The first byte past it."""
_D_OPEN, _G_SMRAME = 1 << 6, 1 << 3


class SmramWindow:
    """Slot ``slot`` of each address space, mapping ``memory`` at the window while the register allows it."""

    def __init__(self, vm: VM, memory: GuestMemory, slot: int, *, smm: bool) -> None:
        self._vm, self._memory, self._slot = vm, memory, slot
        self._size = min(memory.size, SMRAM_END) - SMRAM_BASE
        self.smm = smm
        """Whether the VM has address space 1 (SMM)."""
        self.mapped: dict[int, bool] = {0: False, SMM_ADDRESS_SPACE: False}
        """Whether each address space maps the RAM at the window now."""
        self.show(outside=True, inside=True)

    def show(self, *, outside: bool, inside: bool) -> None:
        """Map the RAM outside SMM (address space 0) and in it (address space 1, where the VM has SMM)."""
        wanted = {0: outside, SMM_ADDRESS_SPACE: inside and self.smm}
        for space, mapped in wanted.items():
            if mapped == self.mapped[space]:
                continue
            if mapped:
                self._vm.set_memory_slot(
                    self._slot, SMRAM_BASE, self._memory, offset=SMRAM_BASE, size=self._size, address_space=space
                )
            else:
                self._vm.delete_memory_slot(self._slot, address_space=space)
            self.mapped[space] = mapped

    def read(self, offset: int, length: int) -> bytes:
        """The SMRAM's bytes from ``offset`` (0 is 0xA0000), whichever address space maps them now."""
        if not 0 <= offset <= offset + length <= self._size:
            raise InvalidArgument(
                f"SMRAM range {offset:#x}+{length:#x} is outside the window's {self._size:#x} bytes",
                operation="smram.read",
            )
        return self._memory.read(SMRAM_BASE + offset, length)

    def register_written(self, value: int) -> None:
        """The i440FX's SMRAM register now reads ``value``: D_OPEN and G_SMRAME decide what maps the window."""
        self.show(outside=bool(value & _D_OPEN), inside=bool(value & (_D_OPEN | _G_SMRAME)))
