"""Just enough ACPI Machine Language (ACPI 6.5, chapter 20) for a DSDT that describes devices and
the CPU hotplug methods (:mod:`hvcore.vmm.acpi.cpus`).

Each function returns the encoded bytes of one term; nest them as the ASL would:
``scope("\\\\_SB_", device("VR00", name("_HID", string("LNRO0005")), ...))``. Code is written the
same way: ``method("CSTA", 1, store(arg(0), reference("CSEL")), return_(local(0)))`` is
``Method (CSTA, 1) { CSEL = Arg0; Return (Local0) }``; names used as operands go through
:func:`reference` (or :func:`call` with the method's arguments).
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Final

from hvcore.errors import InvalidArgument

__all__ = [
    "ONE",
    "ZERO",
    "FieldAccess",
    "FieldUpdate",
    "RegionSpace",
    "acquire",
    "arg",
    "buffer",
    "call",
    "device",
    "dword_memory",
    "end_tag",
    "field",
    "if_",
    "integer",
    "interrupt",
    "io",
    "lequal",
    "local",
    "memory32_fixed",
    "method",
    "mutex",
    "name",
    "notify",
    "operation_region",
    "package",
    "package_length",
    "reference",
    "release",
    "resource_template",
    "return_",
    "scope",
    "store",
    "string",
    "while_",
    "word_bus_number",
    "word_io",
]

_ZERO, _ONE, _BYTE, _WORD, _DWORD, _QWORD = 0x00, 0x01, 0x0A, 0x0B, 0x0C, 0x0E
_STRING, _NAME, _SCOPE, _BUFFER, _PACKAGE = 0x0D, 0x08, 0x10, 0x11, 0x12
_DEVICE: Final = b"\x5b\x82"
_METHOD, _STORE, _NOTIFY, _LEQUAL, _IF, _WHILE, _RETURN = 0x14, 0x70, 0x86, 0x93, 0xA0, 0xA2, 0xA4
_MUTEX, _ACQUIRE, _RELEASE = b"\x5b\x01", b"\x5b\x23", b"\x5b\x27"
_REGION, _FIELD = b"\x5b\x80", b"\x5b\x81"
_LOCAL0, _ARG0 = 0x60, 0x68
ZERO: Final = b"\x00"
"""``Zero``."""
ONE: Final = b"\x01"
"""``One``."""
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


def _bit_length(bits: int) -> bytes:
    """A field element's width: a PkgLength holding ``bits`` itself (it does not count its own bytes)."""
    if bits < 0x40:
        return bytes([bits])
    for extra in (1, 2, 3):
        if bits < 1 << (4 + 8 * extra):
            return bytes([extra << 6 | bits & 0xF]) + (bits >> 4).to_bytes(extra, "little")
    raise InvalidArgument(f"an AML field element of {bits} bits is wider than PkgLength can say")


def _package(opcode: bytes, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return opcode + package_length(len(body)) + body


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
    return _package(bytes([_SCOPE]), _name_string(path), *terms)


def device(path: str, *terms: bytes) -> bytes:
    """``Device(path) { terms }``."""
    return _package(_DEVICE, _name_string(path), *terms)


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


# -- code: methods, control flow, operands --------------------------------------------------------


def reference(path: str) -> bytes:
    """A named object used as an operand or a target (``CSEL``, ``\\_SB_.C001``): its NameString."""
    return _name_string(path)


def call(path: str, *arguments: bytes) -> bytes:
    """``path(arguments)``: a method invocation (the method must take exactly that many arguments)."""
    return _name_string(path) + b"".join(arguments)


def local(index: int) -> bytes:
    """``Local0`` to ``Local7``."""
    if not 0 <= index <= 7:
        raise InvalidArgument(f"Local{index}: AML has Local0 to Local7")
    return bytes([_LOCAL0 + index])


def arg(index: int) -> bytes:
    """``Arg0`` to ``Arg6``."""
    if not 0 <= index <= 6:
        raise InvalidArgument(f"Arg{index}: AML has Arg0 to Arg6")
    return bytes([_ARG0 + index])


def method(path: str, arguments: int, *terms: bytes, serialized: bool = False) -> bytes:
    """``Method(path, arguments, Serialized or NotSerialized) { terms }`` (0 to 7 arguments)."""
    if not 0 <= arguments <= 7:
        raise InvalidArgument(f"method {path}: {arguments} arguments, AML methods take 0 to 7")
    return _package(bytes([_METHOD]), _name_string(path), bytes([arguments | (0x08 if serialized else 0)]), *terms)


def return_(value: bytes) -> bytes:
    """``Return(value)``."""
    return bytes([_RETURN]) + value


def store(source: bytes, target: bytes) -> bytes:
    """``Store(source, target)``, ``target = source`` in ASL 2.0."""
    return bytes([_STORE]) + source + target


def notify(target: bytes, value: bytes) -> bytes:
    """``Notify(target, value)``: 1 (device check) after an insert, 3 (eject request) to ask for a removal."""
    return bytes([_NOTIFY]) + target + value


def lequal(left: bytes, right: bytes) -> bytes:
    """``LEqual(left, right)``, ``left == right``."""
    return bytes([_LEQUAL]) + left + right


def if_(predicate: bytes, *terms: bytes) -> bytes:
    """``If(predicate) { terms }``."""
    return _package(bytes([_IF]), predicate, *terms)


def while_(predicate: bytes, *terms: bytes) -> bytes:
    """``While(predicate) { terms }``."""
    return _package(bytes([_WHILE]), predicate, *terms)


def mutex(path: str, sync_level: int = 0) -> bytes:
    """``Mutex(path, sync_level)`` (0 to 15)."""
    if not 0 <= sync_level <= 15:
        raise InvalidArgument(f"mutex {path}: sync level {sync_level}, AML takes 0 to 15")
    return _MUTEX + _name_string(path) + bytes([sync_level])


def acquire(path: str, timeout: int = 0xFFFF) -> bytes:
    """``Acquire(path, timeout)``, in milliseconds; 0xFFFF waits for ever."""
    if not 0 <= timeout <= 0xFFFF:
        raise InvalidArgument(f"acquire {path}: timeout {timeout}, AML takes 0 to 0xFFFF ms")
    return _ACQUIRE + _name_string(path) + struct.pack("<H", timeout)


def release(path: str) -> bytes:
    """``Release(path)``."""
    return _RELEASE + _name_string(path)


class RegionSpace(IntEnum):
    """An operation region's address space (ACPI 6.5, 19.6.100)."""

    SYSTEM_MEMORY = 0
    SYSTEM_IO = 1
    PCI_CONFIG = 2


class FieldAccess(IntEnum):
    """A field's access width: how wide each of the guest's accesses to the region is."""

    ANY = 0
    BYTE = 1
    WORD = 2
    DWORD = 3


class FieldUpdate(IntEnum):
    """What a write puts in the bits of an access that lie outside the field written."""

    PRESERVE = 0
    WRITE_AS_ONES = 1
    WRITE_AS_ZEROS = 2


def operation_region(path: str, space: RegionSpace, offset: int, length: int) -> bytes:
    """``OperationRegion(path, space, offset, length)``."""
    return _REGION + _name_string(path) + bytes([space]) + integer(offset) + integer(length)


def field(
    region: str,
    *elements: tuple[str, int],
    access: FieldAccess = FieldAccess.BYTE,
    update: FieldUpdate = FieldUpdate.PRESERVE,
) -> bytes:
    """``Field(region, access, NoLock, update) { elements }``: each ``(name, bits)``, in order from bit 0
    of the region; a name of ``""`` skips the bits (``Offset()`` or an unnamed field in ASL)."""
    body = b""
    for element, bits in elements:
        if bits <= 0:
            raise InvalidArgument(f"field {region}: element {element or '(reserved)'} of {bits} bits")
        segment = _name_string(element) if element else b"\x00"
        if len(segment) != 4 and element:
            raise InvalidArgument(f"field {region}: element {element!r} must be one name segment")
        body += segment + _bit_length(bits)
    return _package(_FIELD, _name_string(region), bytes([access | update << 5]), body)
