"""Which loader an image is for, and one ``load`` that picks it.

:func:`detect` probes in this order, the first match winning: ``"bzimage"`` (``"HdrS"`` at
``0x202``: a bzImage's setup sectors are not ELF and may hold anything), ``"multiboot"`` (a
valid multiboot header in the first 8 KiB: checked before ELF because a multiboot kernel is
often an ELF file that wants the multiboot handoff), ``"elf"`` (the ELF magic),
``"firmware"`` (a 64 KiB-multiple size up to 16 MiB ending in a reset-vector jump) and
``"raw"`` (anything else).
"""

from __future__ import annotations

from typing import Final, Literal, get_args

from hvcore.errors import InvalidArgument
from hvcore.vmm.loaders import BootPlan, LoadTarget
from hvcore.vmm.loaders.bzimage import load_bzimage, looks_like_bzimage
from hvcore.vmm.loaders.elf import load_elf, looks_like_elf
from hvcore.vmm.loaders.firmware import load_firmware, looks_like_firmware
from hvcore.vmm.loaders.multiboot import load_multiboot, looks_like_multiboot
from hvcore.vmm.loaders.raw import load_raw

__all__ = ["FORMATS", "ImageFormat", "detect", "load"]

ImageFormat = Literal["bzimage", "multiboot", "elf", "firmware", "raw"]
"""The image formats ``detect`` recognises and ``load`` takes."""
FORMATS: Final[tuple[str, ...]] = get_args(ImageFormat)
"""Every format name :func:`detect` returns and :func:`load` takes, in probing order."""


def detect(image: bytes) -> ImageFormat:
    """The format of ``image``: ``"bzimage"``, ``"multiboot"``, ``"elf"``, ``"firmware"`` or ``"raw"``."""
    if looks_like_bzimage(image):
        return "bzimage"
    if looks_like_multiboot(image):
        return "multiboot"
    if looks_like_elf(image):
        return "elf"
    if looks_like_firmware(image):
        return "firmware"
    return "raw"


def load(
    image: bytes,
    target: LoadTarget,
    format: str = "auto",
    cmdline: str = "",
    initrd: bytes | None = None,
    name: str = "",
    acpi_rsdp: int = 0,
) -> BootPlan:
    """Load ``image`` with the loader for ``format`` (``"auto"``: :func:`detect`) and return its plan.

    ``acpi_rsdp`` (not 0) tells a bzImage where the machine's ACPI tables are.

    ``cmdline`` goes to a bzImage or multiboot kernel; ``initrd`` to a bzImage as its initrd or
    to a multiboot kernel as its one module (command line ``"initrd"``). ``name``, the image's
    file, starts a multiboot kernel's command line (as GRUB and QEMU do). Raw images load with
    :func:`~hvcore.vmm.loaders.raw.load_raw`'s defaults (``0x1000``, real mode). Giving a
    command line or initrd to a format that takes none, or an unknown format, raises
    ``InvalidArgument``; a bad image raises ``ImageError``.
    """
    kind = detect(image) if format == "auto" else format
    if kind not in FORMATS:
        raise InvalidArgument(f"unknown image format {format!r}: use 'auto' or one of {', '.join(FORMATS)}")
    if kind == "bzimage":
        return load_bzimage(image, target, cmdline=cmdline, initrd=initrd, acpi_rsdp=acpi_rsdp)
    if kind == "multiboot":
        modules = [] if initrd is None else [(initrd, "initrd")]
        return load_multiboot(image, target, cmdline=cmdline, modules=modules, name=name)
    if cmdline or initrd is not None:
        given = " and ".join(n for n, v in (("a command line", cmdline), ("an initrd", initrd is not None)) if v)
        raise InvalidArgument(
            f"{given} given for {'an' if kind == 'elf' else 'a'} {kind!r} image, which takes none: "
            "only bzImage and multiboot kernels do"
        )
    if kind == "elf":
        return load_elf(image, target)
    if kind == "firmware":
        return load_firmware(image, target)
    return load_raw(image, target)
