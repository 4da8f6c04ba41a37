"""Firmware ROMs (SeaBIOS ``bios.bin`` style): an image whose last 16 bytes hold the x86 reset vector.

An x86 CPU leaves reset fetching at ``0xFFFFFFF0``, so a firmware image is mapped (read-only)
to end at 4 GiB: at ``4 GiB - size``. Its last 128 KiB (the whole image when smaller) is also
the legacy BIOS that real-mode code reaches below 1 MiB — the reset vector's far jump
(SeaBIOS: ``jmp f000:e05b``) lands there — so the loader copies that part into RAM ending
at 1 MiB (``0xE0000`` for 128 KiB, ``0xF0000`` for 64 KiB).

Why a RAM copy and not a second ROM alias, as on QEMU's PC: QEMU maps the BIOS read-only at
``0xE0000`` and SeaBIOS "shadows" itself by making that range writable through the chipset's
PAM registers (it must: it keeps its variables in that segment). A hvcore machine has no PAM
registers, so the legacy copy is plain RAM from the start — already shadowed and writable,
which SeaBIOS accepts ("Unable to unlock ram - bridge not found" and carries on). Firmware that
relies on that region being read-only will not notice the difference except that writes stick.

Checked: size a multiple of 64 KiB, from 64 KiB up to 16 MiB (QEMU's rule; ROMs are mapped in
whole pages); the reset vector at ``size - 16`` starts with a jump (``EA`` far, ``E9`` near or
``EB`` short, after any ``90`` NOPs); RAM reaches 1 MiB (for the legacy copy) and ends below
the ROM. The plan is ``"reset"``: the boot vCPU keeps its reset state.
"""

from __future__ import annotations

from typing import Final

from hvcore.errors import ImageError
from hvcore.vmm.loaders import BootPlan, LoadTarget
from hvcore.vmm.loaders.e820 import FOUR_GIB, HIGH_MEMORY

__all__ = ["LEGACY_BIOS_SIZE", "MAX_FIRMWARE_SIZE", "MIN_FIRMWARE_SIZE", "load_firmware", "looks_like_firmware"]

MIN_FIRMWARE_SIZE: Final = 64 * 1024
"""Smallest firmware image, and the unit its size must be a multiple of."""
MAX_FIRMWARE_SIZE: Final = 16 * 1024 * 1024
"""Largest firmware image (the top 16 MiB below 4 GiB, as on a PC's flash window)."""
LEGACY_BIOS_SIZE: Final = 128 * 1024
"""How much of the image's end is copied below 1 MiB (``0xE0000``-``0xFFFFF``)."""
RESET_VECTOR: Final = 0xFFFFFFF0
_JUMPS: Final = {0xEA: "far", 0xE9: "near", 0xEB: "short"}
_NOP: Final = 0x90


def _size_problem(size: int) -> str | None:
    if size % MIN_FIRMWARE_SIZE or not MIN_FIRMWARE_SIZE <= size <= MAX_FIRMWARE_SIZE:
        return (
            f"firmware size {size} bytes ({size / 1024:g} KiB) is wrong: it must be a multiple of 64 KiB "
            "from 64 KiB to 16 MiB (e.g. SeaBIOS bios.bin: 128 or 256 KiB); pad the image at its start"
        )
    return None


def _reset_vector_problem(image: bytes) -> str | None:
    vector = image[-16:]
    code = vector.lstrip(bytes([_NOP]))
    if not code or code[0] not in _JUMPS:
        return (
            f"firmware has no reset-vector jump: the 16 bytes at {len(image) - 16:#x} (address {RESET_VECTOR:#x} "
            f"once mapped) are {vector.hex(' ')}, expected a jump (ea far / e9 near / eb short); "
            "is this a firmware image?"
        )
    return None


def looks_like_firmware(image: bytes) -> bool:
    """True when ``image`` has a firmware's size (64 KiB multiple up to 16 MiB) and a reset-vector jump."""
    return _size_problem(len(image)) is None and _reset_vector_problem(image) is None


def load_firmware(image: bytes, target: LoadTarget) -> BootPlan:
    """Map ``image`` read-only to end at 4 GiB and copy its last 128 KiB into RAM ending at 1 MiB.

    Returns a ``"reset"`` plan (entry ``0xFFFFFFF0``, informational). ``ImageError`` for a
    wrong size, no reset-vector jump, or a machine whose RAM does not reach 1 MiB or runs into
    the ROM.
    """
    problem = _size_problem(len(image)) or _reset_vector_problem(image)
    if problem:
        raise ImageError(problem)
    size = len(image)
    rom_at = FOUR_GIB - size
    if target.ram_size < HIGH_MEMORY:
        raise ImageError(
            f"firmware needs RAM up to 1 MiB for its legacy copy at {HIGH_MEMORY - min(size, LEGACY_BIOS_SIZE):#x}; "
            f"the machine has {target.ram_size:#x} bytes: give it at least 1 MiB"
        )
    if target.ram_size > rom_at:
        raise ImageError(
            f"firmware ROM at {rom_at:#x}..{FOUR_GIB:#x} overlaps the machine's RAM (up to {target.ram_size:#x}): "
            "use less RAM below 4 GiB or a smaller firmware image"
        )
    legacy = min(size, LEGACY_BIOS_SIZE)
    legacy_at = HIGH_MEMORY - legacy
    target.add_rom(rom_at, bytes(image))
    target.write(legacy_at, bytes(image[-legacy:]))
    jump = _JUMPS[image[-16:].lstrip(bytes([_NOP]))[0]]
    return BootPlan(
        mode="reset",
        entry=RESET_VECTOR,
        description=(
            f"firmware {size // 1024} KiB, ROM at {rom_at:#x}, legacy copy in RAM at {legacy_at:#x}..{HIGH_MEMORY:#x}, "
            f"reset vector {jump} jump"
        ),
    )
