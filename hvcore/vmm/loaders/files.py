"""Image files from disk: regular files only, and never more bytes than the machine can hold.

A path such as ``/dev/zero``, a FIFO or a directory is refused before anything is read (a
character device or a pipe never ends); a regular file larger than ``limit`` is refused from
its size, and the read stops at ``limit + 1`` bytes in case the file grows meanwhile. Both raise
:class:`hvcore.ImageError` naming the file.
"""

from __future__ import annotations

import os
import stat
from typing import Final

from hvcore.errors import ImageError

__all__ = ["check_image_file", "read_image_file"]

_KINDS: Final = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)
_CHUNK: Final = 1 << 20


def _check_regular(path: str, mode: int, what: str) -> None:
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise ImageError(f"{what} {path} is {kind}, not a regular file: give the {what}'s file", operation="read")


def _too_big(path: str, what: str, found: str, limit: int) -> ImageError:
    return ImageError(
        f"{what} {path} {found}: larger than the {limit} bytes ({limit / (1 << 20):g} MiB) the machine can "
        f"hold; give it more memory or use a smaller {what}",
        operation="read",
    )


def check_image_file(path: str, what: str = "image") -> None:
    """``ImageError`` unless ``path`` is a regular file this process may read (``what`` names it in the message)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise ImageError(f"cannot read {what} {path}: {exc.strerror}", errno=exc.errno, operation="read") from None
    _check_regular(path, mode, what)
    if not os.access(path, os.R_OK):
        raise ImageError(f"cannot read {what} {path}: permission denied", operation="read")


def read_image_file(path: str, limit: int, what: str = "image") -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them (else ``ImageError``)."""
    try:
        # O_NONBLOCK: opening a FIFO put there after a check must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ImageError(f"cannot read {what} {path}: {exc.strerror}", errno=exc.errno, operation="read") from None
    try:
        info = os.fstat(fd)
        _check_regular(path, info.st_mode, what)
        if info.st_size > limit:
            raise _too_big(path, what, f"is {info.st_size} bytes", limit)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(_CHUNK, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise _too_big(path, what, "grew while it was read", limit)
        return b"".join(chunks)
    except OSError as exc:
        raise ImageError(f"cannot read {what} {path}: {exc.strerror}", errno=exc.errno, operation="read") from None
    finally:
        os.close(fd)
