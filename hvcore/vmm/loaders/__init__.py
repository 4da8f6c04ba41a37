"""Guest images into a machine's memory: each loader checks its format and says how the vCPU starts.

A loader takes the image bytes and a :class:`LoadTarget` (the machine's RAM and ROM map) and
returns a :class:`BootPlan`. Malformed or oversized images raise :class:`hvcore.ImageError`
naming the problem.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

__all__ = [
    "BootMode",
    "BootPlan",
    "LoadTarget",
    "detect",
    "load",
    "load_bzimage",
    "load_elf",
    "load_firmware",
    "load_multiboot",
    "load_raw",
    "looks_like_bzimage",
    "looks_like_elf",
    "looks_like_firmware",
    "looks_like_multiboot",
    "looks_like_raw",
]

BootMode = Literal["reset", "real", "protected", "long"]
"""The CPU mode a boot plan starts vCPU 0 in (``reset``: as the CPU leaves reset, for firmware)."""


class LoadTarget(Protocol):
    """Where a loader puts an image: the machine's guest-physical RAM (from 0) and ROMs."""

    @property
    def ram_size(self) -> int:
        """Bytes of RAM from guest-physical 0 (below the 32-bit PCI hole; see ``high_ram_size``)."""
        ...

    @property
    def high_ram_size(self) -> int:
        """Bytes of RAM the machine maps from 4 GiB up (0 when all RAM fits below the hole)."""
        ...

    @property
    def cpus(self) -> int:
        """How many vCPUs the machine has."""
        ...

    def write(self, address: int, data: bytes) -> None:
        """Write guest RAM; ``ImageError`` when ``[address, address + len(data))`` is not all RAM."""
        ...

    def read(self, address: int, length: int) -> bytes:
        """Read guest RAM."""
        ...

    def add_rom(self, address: int, data: bytes) -> None:
        """Map ``data`` read-only at ``address`` (page aligned; padded to whole pages)."""
        ...


@dataclass(frozen=True)
class BootPlan:
    """How the boot vCPU starts after a load.

    ``mode``: ``"reset"`` (the vCPU's reset state: firmware at the reset vector), ``"real"``,
    ``"protected"`` (flat 32-bit segments, paging off) or ``"long"`` (64-bit, identity-mapped
    first GiB). ``gdt`` / ``page_tables`` say where the machine builds those (guest-physical,
    in RAM the loader left free); ``regs`` are extra general registers (``rsi`` for Linux's zero
    page, ``eax``/``ebx`` for multiboot).
    """

    mode: BootMode
    entry: int = 0
    regs: Mapping[str, int] = field(default_factory=dict)
    gdt: int = 0x500
    page_tables: int = 0x9000
    description: str = ""
    """One line for the terminal, e.g. ``"ELF64 kernel, entry 0x100000"``."""
    bios_state: bool = False
    """The kernel expects what a PC BIOS leaves (multiboot kernels, which GRUB and QEMU start after one):
    the machine sets the PICs, the PIT and the IVT up first (:mod:`hvcore.vmm.bios`)."""


# The loaders import BootPlan and LoadTarget from this module, so they are imported after them.
from hvcore.vmm.loaders.bzimage import load_bzimage, looks_like_bzimage  # noqa: E402
from hvcore.vmm.loaders.detect import detect, load  # noqa: E402
from hvcore.vmm.loaders.elf import load_elf, looks_like_elf  # noqa: E402
from hvcore.vmm.loaders.firmware import load_firmware, looks_like_firmware  # noqa: E402
from hvcore.vmm.loaders.multiboot import load_multiboot, looks_like_multiboot  # noqa: E402
from hvcore.vmm.loaders.raw import load_raw, looks_like_raw  # noqa: E402
