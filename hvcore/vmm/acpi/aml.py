"""Just enough ACPI Machine Language (ACPI 6.5, chapter 20) for a DSDT that describes devices.

Each function returns the encoded bytes of one term; nest them as the ASL would:
``scope("\\\\_SB_", device("VR00", name("_HID", string("LNRO0005")), ...))``.
"""

from __future__ import annotations

import struct
from typing import Final

from hvcore.errors import InvalidArgument

__all__ = [
    "buffer",
    "device",
    "dword_memory",
    "end_tag",
    "integer",
    "interrupt",
    "io",
    "memory32_fixed",
    "name",
    "package",
    "package_length",
    "resource_template",
    "scope",
    "string",
    "word_bus_number",
    "word_io",
]

_ZERO, _ONE, _BYTE, _WORD, _DWORD, _QWORD = 0x00, 0x01, 0x0A, 0x0B, 0x0C, 0x0E
_STRING, _NAME, _SCOPE, _BUFFER, _PACKAGE = 0x0D, 0x08, 0x10, 0x11, 0x12
_DEVICE: Final = b"\x5b\x82"
_ROOT, _PARENT = ord("\\"), ord("^")


def package_length(body: int) -> bytes:
    """The PkgLength of a package whose contents after the PkgLength take ``body`` bytes (it counts itself)."""
    if body + 1 < 0x40:
        return bytes([body + 1])
    for extra in (1, 2, 3):
        total = body + 1 + extra
        if total < 1 << (4 + 8 * extra):
            return bytes([extra << 6 | total & 0xF]) + (total >> 4).to_bytes(extra, "little")
    raise InvalidArgument(f"an AML package of {body} bytes is larger than PkgLength can say (256 MiB)")


def _name_string(path: str) -> bytes:
    prefix = b""
    while path and ord(path[0]) in (_ROOT, _PARENT):
        prefix, path = prefix + path[0].encode(), path[1:]
    segments = [s for s in path.split(".") if s] if path else []
    for segment in segments:
        if len(segment) > 4 or not segment.replace("_", "A").isalnum() or segment[0].isdigit():
            raise InvalidArgument(f"AML name segment {segment!r}: 1-4 of A-Z, 0-9, _ and not starting with a digit")
    encoded = [s.upper().ljust(4, "_").encode() for s in segments]
    if not encoded:
        return prefix + b"\x00"
    if len(encoded) == 1:
        return prefix + encoded[0]
    if len(encoded) == 2:
        return prefix + b"\x2e" + b"".join(encoded)
    return prefix + b"\x2f" + bytes([len(encoded)]) + b"".join(encoded)


def integer(value: int) -> bytes:
    """The shortest AML integer constant for ``value`` (0 to 2**64 - 1)."""
    if not 0 <= value < 1 << 64:
        raise InvalidArgument(f"AML integer {value} is outside 0..2**64-1")
    if value in (0, 1):
        return bytes([_ZERO if value == 0 else _ONE])
    for prefix, size in ((_BYTE, 1), (_WORD, 2), (_DWORD, 4), (_QWORD, 8)):
        if value < 1 << (8 * size):
            return bytes([prefix]) + value.to_bytes(size, "little")
    raise AssertionError("unreachable")


def string(text: str) -> bytes:
    """An AML string constant (ASCII, no NUL inside)."""
    data = text.encode("ascii")
    if b"\x00" in data:
        raise InvalidArgument("an AML string cannot hold NUL")
    return bytes([_STRING]) + data + b"\x00"


def name(path: str, value: bytes) -> bytes:
    """``Name(path, value)``: ``value`` is an encoded data object."""
    return bytes([_NAME]) + _name_string(path) + value


def scope(path: str, *terms: bytes) -> bytes:
    """``Scope(path) { terms }``."""
    body = _name_string(path) + b"".join(terms)
    return bytes([_SCOPE]) + package_length(len(body)) + body


def device(path: str, *terms: bytes) -> bytes:
    """``Device(path) { terms }``."""
    body = _name_string(path) + b"".join(terms)
    return _DEVICE + package_length(len(body)) + body


def buffer(data: bytes) -> bytes:
    """``Buffer() { data }``."""
    body = integer(len(data)) + data
    return bytes([_BUFFER]) + package_length(len(body)) + body


def package(*elements: bytes) -> bytes:
    """``Package() { elements }`` (each an encoded data object; at most 255)."""
    if len(elements) > 255:
        raise InvalidArgument(f"an AML package of {len(elements)} elements: at most 255")
    body = bytes([len(elements)]) + b"".join(elements)
    return bytes([_PACKAGE]) + package_length(len(body)) + body


def memory32_fixed(base: int, length: int, *, writable: bool = True) -> bytes:
    """The ``Memory32Fixed`` resource descriptor."""
    return struct.pack("<BHBII", 0x86, 9, int(writable), base, length)


def interrupt(*gsis: int, level: bool = True, active_low: bool = False, shared: bool = False) -> bytes:
    """The extended ``Interrupt(ResourceConsumer, ...)`` resource descriptor for ``gsis``."""
    flags = 0x01 | (0 if level else 0x02) | (0x04 if active_low else 0) | (0x08 if shared else 0)
    return struct.pack("<BHBB", 0x89, 2 + 4 * len(gsis), flags, len(gsis)) + b"".join(
        struct.pack("<I", gsi) for gsi in gsis
    )


def _address_space(layout: str, tag: int, kind: int, type_flags: int, minimum: int, length: int) -> bytes:
    # general flags 0x0C: a producer (a bridge's window) with fixed minimum and maximum, positive decode
    fields = struct.pack(layout, 0, minimum, minimum + length - 1, 0, length)
    return struct.pack("<BHBBB", tag, 3 + len(fields), kind, 0x0C, type_flags) + fields


def word_bus_number(first: int, count: int) -> bytes:
    """``WordBusNumber(ResourceProducer, MinFixed, MaxFixed, PosDecode, ...)``: a bridge's bus range."""
    return _address_space("<HHHHH", 0x88, 2, 0, first, count)


def word_io(base: int, length: int) -> bytes:
    """``WordIO(ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, ...)``: a bridge's IO window."""
    return _address_space("<HHHHH", 0x88, 1, 0x03, base, length)


def dword_memory(base: int, length: int) -> bytes:
    """``DWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite, ...)``."""
    return _address_space("<IIIII", 0x87, 0, 0x01, base, length)


def io(base: int, length: int) -> bytes:
    """``IO(Decode16, base, base, 1, length)``: fixed ports a device uses."""
    return struct.pack("<BBHHBB", 0x47, 1, base, base, 1, length)


def end_tag() -> bytes:
    """The end tag that closes a resource template (checksum 0: "treat as correct")."""
    return b"\x79\x00"


def resource_template(*descriptors: bytes) -> bytes:
    """``ResourceTemplate() { descriptors }``: a buffer of them and the end tag."""
    return buffer(b"".join(descriptors) + end_tag())
