"""SMBIOS 2.8 tables for fw_cfg, as QEMU's pc machine gives them to the firmware: :func:`build_smbios`.

QEMU (``hw/smbios/smbios.c``) hands SeaBIOS two fw_cfg files: ``etc/smbios/smbios-tables``, the
structures one after the other, and ``etc/smbios/smbios-anchor``, a 32-bit (``_SM_``) entry point
whose table address and checksums the firmware fills in once it has placed the tables. SeaBIOS
(``smbios_romfile_setup``) copies them to the F-segment and adds its own type 0 when there is
none; without the files it builds every table itself (``smbios_legacy_setup``), slowly.

The structures, with QEMU's handles and default values: 1 (system), 3 (chassis), 4 (one per
vCPU, QEMU's one per socket with one core and thread each), 16 (the memory array), 17 (a
device per 16 GiB), 19 (one per RAM range: below and above 4 GiB), 32 (boot status) and 127
(end). Type 0 (BIOS) describes the firmware, so as on QEMU it is left to the firmware unless
``bios`` is given.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from hvcore import __version__
from hvcore.errors import InvalidArgument

__all__ = [
    "ANCHOR_FILE",
    "TABLES_FILE",
    "BiosInfo",
    "Smbios",
    "SmbiosStructure",
    "build_smbios",
    "entry_point",
    "structures",
]

TABLES_FILE = "etc/smbios/smbios-tables"
"""The fw_cfg file that holds the structures."""
ANCHOR_FILE = "etc/smbios/smbios-anchor"
"""The fw_cfg file that holds the entry point."""

_KIB = 1 << 10
_MIB = 1 << 20
_DIMM_MAX = 16 << 30
_ENTRY_POINT_LENGTH = 0x1F
_UNKNOWN_HANDLE = 0xFFFF
_NO_ERROR_INFO = 0xFFFE
_ARRAY_HANDLE = 0x1000


@dataclass(frozen=True)
class BiosInfo:
    """What a type 0 structure says about the firmware."""

    vendor: str
    version: str
    date: str
    """mm/dd/yyyy."""


@dataclass(frozen=True)
class SmbiosStructure:
    """One structure as :func:`structures` reads it back."""

    type: int
    handle: int
    formatted: bytes
    """The formatted area, header included (its length is the header's length byte)."""
    strings: tuple[str, ...]
    """The string set, in order (string number ``n`` is ``strings[n - 1]``)."""

    def string(self, offset: int) -> str | None:
        """The string whose number is the byte at ``offset`` of the formatted area (``None`` for 0)."""
        number = self.formatted[offset]
        return self.strings[number - 1] if number else None


@dataclass(frozen=True)
class Smbios:
    """The two fw_cfg files' contents."""

    tables: bytes
    """``etc/smbios/smbios-tables``: the structures."""
    anchor: bytes
    """``etc/smbios/smbios-anchor``: the 31-byte ``_SM_`` entry point (table address 0)."""


class _Structure:
    """Formatted fields plus a string set, numbered as strings are added (empty ones get 0)."""

    def __init__(self, type_: int, handle: int) -> None:
        self.type = type_
        self.handle = handle
        self.body = bytearray()
        self.strings: list[bytes] = []

    def string(self, text: str | None) -> int:
        if not text:
            return 0
        self.strings.append(text.encode("ascii", errors="replace"))
        return len(self.strings)

    def add(self, fmt: str, *values: int) -> None:
        self.body += struct.pack("<" + fmt, *values)

    def encode(self) -> bytes:
        header = struct.pack("<BBH", self.type, 4 + len(self.body), self.handle)
        # the string set ends with an extra NUL; with no strings, two NULs stand alone
        strings = b"".join(s + b"\0" for s in self.strings) + b"\0" if self.strings else b"\0\0"
        return header + bytes(self.body) + strings


def _type0(bios: BiosInfo) -> _Structure:
    t = _Structure(0, 0x000)
    vendor, version = t.string(bios.vendor), t.string(bios.version)
    t.add("BBH", vendor, version, 0xE800)  # starting segment, as SeaBIOS says
    t.add("BB", t.string(bios.date), 0)  # ROM size: SeaBIOS's "FIXME" 0
    t.add("Q", 0x08)  # characteristics not supported
    t.add("BB", 0, 0x14)  # targeted content distribution | virtual machine
    t.add("BBBB", 0, 0, 0xFF, 0xFF)  # BIOS release, no embedded controller
    return t


def _type1(manufacturer: str, product: str, version: str) -> _Structure:
    t = _Structure(1, 0x100)
    t.add("BBBB", t.string(manufacturer), t.string(product), t.string(version), 0)
    t.body += bytes(16)  # UUID: none given, zero as on QEMU without -uuid
    t.add("BBB", 0x06, 0, 0)  # woken by the power switch; no SKU, no family
    return t


def _type3(manufacturer: str, version: str) -> _Structure:
    t = _Structure(3, 0x300)
    t.add("BBBBB", t.string(manufacturer), 0x01, t.string(version), 0, 0)  # type "other"
    t.add("BBBB", 0x03, 0x03, 0x03, 0x02)  # boot-up, power, thermal safe; security unknown
    t.add("IBBBBB", 0, 0, 0, 0, 0, 0)  # OEM, height, cords, no contained elements, no SKU
    return t


def _type4(cpu: int, manufacturer: str, version: str, signature: int, features: int) -> _Structure:
    t = _Structure(4, 0x400 + cpu)
    t.add("BBBB", t.string(f"CPU{cpu:2x}"), 0x03, 0x01, t.string(manufacturer))  # CPU, family other
    t.add("II", signature, features)  # CPUID 1: EAX, EDX
    t.add("BBHHH", t.string(version), 0, 0, 2000, 2000)  # voltage, clock unknown; 2000 MHz
    t.add("BB", 0x41, 0x01)  # populated and enabled, upgrade "other"
    t.add("HHH", _UNKNOWN_HANDLE, _UNKNOWN_HANDLE, _UNKNOWN_HANDLE)  # no cache structures
    t.add("BBB", 0, 0, 0)  # serial, asset tag, part number
    t.add("BBBHH", 1, 1, 1, 0x02, 0x01)  # one core, enabled, one thread; characteristics, family 2
    return t


def _type16(ram: int, devices: int) -> _Structure:
    t = _Structure(16, _ARRAY_HANDLE)
    size_kib = -(-ram // _KIB)
    small = size_kib < 0x8000_0000
    t.add("BBB", 0x01, 0x03, 0x06)  # location other, system memory, multi-bit ECC
    t.add("IHHQ", size_kib if small else 0x8000_0000, _NO_ERROR_INFO, devices, 0 if small else ram)
    return t


def _type17(index: int, size: int, manufacturer: str) -> _Structure:
    t = _Structure(17, 0x1100 + index)
    size_mib = -(-size // _MIB)
    small = size_mib < 0x7FFF
    t.add("HHHH", _ARRAY_HANDLE, _NO_ERROR_INFO, 0xFFFF, 0xFFFF)  # widths unknown
    t.add("HBB", size_mib if small else 0x7FFF, 0x09, 0)  # DIMM, in no set
    t.add("BBBHH", t.string(f"DIMM {index}"), 0, 0x07, 0x02, 0)  # no bank; RAM, detail other; speed
    t.add("BBBBB", t.string(manufacturer), 0, 0, 0, 0)  # serial, asset, part, attributes
    t.add("IHHHH", 0 if small else size_mib, 0, 0, 0, 0)  # configured speed, voltages unknown
    return t


def _type19(index: int, start: int, size: int) -> _Structure:
    t = _Structure(19, 0x1300 + index)
    end = start + size - 1
    if start // _KIB < 0xFFFF_FFFF and end // _KIB < 0xFFFF_FFFF:
        t.add("II", start // _KIB, end // _KIB)
        extended = (0, 0)
    else:
        t.add("II", 0xFFFF_FFFF, 0xFFFF_FFFF)
        extended = (start, end)
    t.add("HB", _ARRAY_HANDLE, 1)  # one device per row
    t.add("QQ", *extended)
    return t


def _type32() -> _Structure:
    t = _Structure(32, 0x2000)
    t.body += bytes(7)  # reserved; no errors detected
    return t


def build_smbios(
    *,
    cpus: int,
    memory: Sequence[tuple[int, int]],
    manufacturer: str = "hvcore",
    product: str = "hvcore",
    version: str = __version__,
    cpuid_signature: int = 0,
    cpuid_features: int = 0,
    bios: BiosInfo | None = None,
) -> Smbios:
    """The tables and entry point for ``cpus`` vCPUs and RAM at ``memory`` (``(address, size)`` each).

    ``cpuid_signature`` and ``cpuid_features`` are CPUID leaf 1's EAX and EDX, each processor's
    ID; ``manufacturer`` and ``version`` go in types 1, 3, 4 (and 17's manufacturer), ``product``
    in type 1.
    """
    if cpus < 1 or cpus > 0x100:
        raise InvalidArgument(f"SMBIOS: {cpus} vCPUs (1 to 256: one handle each)", operation="build_smbios")
    if not memory or any(size <= 0 or address < 0 for address, size in memory):
        raise InvalidArgument(f"SMBIOS: RAM ranges {memory!r} must be non-empty", operation="build_smbios")
    ram = sum(size for _, size in memory)
    dimms = -(-ram // _DIMM_MAX)
    parts: list[_Structure] = [] if bios is None else [_type0(bios)]
    parts += [_type1(manufacturer, product, version), _type3(manufacturer, version)]
    parts += [_type4(i, manufacturer, version, cpuid_signature, cpuid_features) for i in range(cpus)]
    parts.append(_type16(ram, dimms))
    parts += [_type17(i, min(_DIMM_MAX, ram - i * _DIMM_MAX), manufacturer) for i in range(dimms)]
    parts += [_type19(i, address, size) for i, (address, size) in enumerate(memory)]
    parts += [_type32(), _Structure(127, 0x7F00)]
    tables = b"".join(part.encode() for part in parts)
    return Smbios(tables, entry_point(tables))


def structures(tables: bytes) -> Iterator[SmbiosStructure]:
    """Read the structures in ``tables`` back (``InvalidArgument`` if one runs past the end)."""
    offset = 0
    while offset < len(tables):
        if offset + 4 > len(tables):
            raise InvalidArgument(f"SMBIOS: truncated header at {offset:#x}", operation="structures")
        type_, length, handle = struct.unpack_from("<BBH", tables, offset)
        end = tables.find(b"\0\0", offset + length)
        if length < 4 or end < 0:
            raise InvalidArgument(f"SMBIOS: structure at {offset:#x} runs past the end", operation="structures")
        text = tables[offset + length : end]
        strings = tuple(s.decode("ascii", errors="replace") for s in text.split(b"\0")) if text else ()
        yield SmbiosStructure(type_, handle, tables[offset : offset + length], strings)
        offset = end + 2


def _fix_checksum(data: bytearray, start: int, end: int, at: int) -> None:
    data[at] = 0
    data[at] = -sum(data[start:end]) & 0xFF


def entry_point(tables: bytes, address: int = 0) -> bytes:
    """The 31-byte SMBIOS 2.8 ``_SM_`` entry point for ``tables`` at guest-physical ``address``."""
    if len(tables) > 0xFFFF or not 0 <= address <= 0xFFFF_FFFF:
        raise InvalidArgument(
            f"SMBIOS: {len(tables)} bytes at {address:#x} do not fit a 32-bit entry point", operation="entry_point"
        )
    parts = list(structures(tables))
    # each structure's size: the formatted area, then its strings and their terminator
    largest = max(len(p.formatted) + (sum(len(s) + 1 for s in p.strings) + 1 if p.strings else 2) for p in parts)
    data = bytearray(
        struct.pack(
            "<4sBBBBHB5s5sBHIHB",
            b"_SM_",
            0,
            _ENTRY_POINT_LENGTH,
            2,
            8,
            largest,
            0,
            bytes(5),
            b"_DMI_",
            0,
            len(tables),
            address,
            len(parts),
            0x28,
        )
    )
    _fix_checksum(data, 0x10, _ENTRY_POINT_LENGTH, 0x15)  # the intermediate (_DMI_) part first
    _fix_checksum(data, 0, 0x10, 0x04)
    return bytes(data)
