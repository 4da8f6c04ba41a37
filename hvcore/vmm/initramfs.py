"""Initramfs archives: the cpio "newc" format Linux unpacks into its root file system at boot.

An :class:`Initramfs` is built in memory from files, directories, symlinks and device nodes,
and :meth:`Initramfs.to_bytes` writes the archive. Device nodes are only headers, so an
initramfs with ``/dev/console`` needs neither root nor ``mknod``. Format: the kernel's
``Documentation/driver-api/early-userspace/buffer-format.rst``.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Final

from hvcore.errors import ImageError

__all__ = ["Initramfs"]

_MAGIC: Final = b"070701"
_TRAILER: Final = "TRAILER!!!"
_FIELD_MAX: Final = 0xFFFF_FFFF


@dataclass(frozen=True)
class _Entry:
    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _header(ino: int, entry: _Entry, name: bytes) -> bytes:
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (ino, entry.mode, 0, 0, nlink, 0, len(entry.data), 0, 0, *entry.rdev, len(name), 0)
    return _MAGIC + b"".join(b"%08X" % value for value in fields)


class Initramfs:
    """A cpio newc archive under construction; paths are absolute or relative to the root.

    Parent directories are added as needed (mode 0755). Adding a path twice raises
    :class:`hvcore.ImageError`, as does a path that escapes the root.
    """

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def _add(self, path: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        name = self._name(path)
        if name in self._entries:
            raise ImageError(f"initramfs: {path!r} is already in the archive; add each path once")
        if len(data) > _FIELD_MAX:
            raise ImageError(f"initramfs: {path!r} is {len(data)} bytes; cpio newc holds at most 4 GiB - 1 per file")
        parent = PurePosixPath(name).parent
        if str(parent) != "." and str(parent) not in self._entries:
            self.directory(str(parent))
        self._entries[name] = _Entry(name, mode, data, rdev)

    @staticmethod
    def _name(path: str) -> str:
        parts = PurePosixPath("/" + path).parts[1:]
        if not parts or any(part in (".", "..") for part in parts):
            raise ImageError(f"initramfs: {path!r} is not a path inside the archive (no '.', '..' or empty names)")
        return "/".join(parts)

    def directory(self, path: str, mode: int = 0o755) -> Initramfs:
        """Add a directory."""
        self._add(path, stat.S_IFDIR | (mode & 0o7777))
        return self

    def file(self, path: str, data: bytes, mode: int = 0o644) -> Initramfs:
        """Add a regular file holding ``data`` (``mode=0o755`` for a program or script)."""
        self._add(path, stat.S_IFREG | (mode & 0o7777), data)
        return self

    def symlink(self, path: str, target: str) -> Initramfs:
        """Add a symbolic link to ``target``."""
        self._add(path, stat.S_IFLNK | 0o777, target.encode())
        return self

    def char_device(self, path: str, major: int, minor: int, mode: int = 0o600) -> Initramfs:
        """Add a character device node, e.g. ``("/dev/console", 5, 1)``."""
        self._add(path, stat.S_IFCHR | (mode & 0o7777), rdev=(major, minor))
        return self

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and self._name(path) in self._entries

    def to_bytes(self) -> bytes:
        """The archive: every entry in the order added (parents first), then the trailer."""
        out = bytearray()
        entries = [*self._entries.values(), _Entry(_TRAILER, 0)]
        for ino, entry in enumerate(entries, start=1):
            name = entry.name.encode() + b"\0"
            header = _header(0 if entry.name == _TRAILER else ino, entry, name)
            out += header + name + _pad4(len(header) + len(name))
            out += entry.data + _pad4(len(entry.data))
        return bytes(out)
