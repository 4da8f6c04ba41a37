"""virtio-blk (block device, ID 2; virtio spec 1.2, section 5.2) over a disk image file.

Each request is a chain: a 16-byte device-readable header (type, reserved, sector), the data
(device-readable for a write, device-writable for a read) and a device-writable status byte at
its very end. Reads, writes, flushes (``fsync``) and the device ID are served, and on a writable
disk DISCARD (holes punched where the file system can, else nothing: a hint) and WRITE_ZEROES
(holes, or zeros written), one segment of up to :data:`MAX_ZEROED_SECTORS` each; anything else
answers UNSUPP. A host IO error answers IOERR, as does a request outside the disk, of a length
that is not whole sectors, larger than :data:`MAX_REQUEST`, or a write to a read-only disk; a
chain without room for the status byte is the guest's error (``GuestDataError``: the device then
needs a reset).
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Final

from hvcore.arguments import check_flag, check_str
from hvcore.errors import GuestDataError, ImageError
from hvcore.vmm.virtio.queue import Chain, SplitQueue

__all__ = ["MAX_REQUEST", "SECTOR", "VirtioBlock"]

SECTOR: Final = 512
"""Bytes per sector: virtio-blk counts in 512-byte sectors whatever the block size."""
MAX_REQUEST: Final = 1 << 20
"""The most data bytes one request may move (``size_max`` x ``seg_max`` as the config says)."""
VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_GEOMETRY = 1 << 1, 1 << 2, 1 << 4
VIRTIO_BLK_F_RO, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH = 1 << 5, 1 << 6, 1 << 9
VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES = 1 << 13, 1 << 14
MAX_ZEROED_SECTORS: Final = 1 << 16
"""The most sectors one discard or write-zeroes segment may cover (32 MiB), one segment per request."""
_CONFIG_SIZE: Final = 60  # struct virtio_blk_config up to write_zeroes_may_unmap and its padding
_HEADS, _SECTORS_PER_TRACK = 16, 63
_IN, _OUT, _FLUSH, _GET_ID, _DISCARD, _WRITE_ZEROES = 0, 1, 4, 8, 11, 13
_SEGMENT = struct.Struct("<QII")  # sector, num_sectors, flags (bit 0: unmap)
_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
_OK, _IOERR, _UNSUPP = 0, 1, 2
_HEADER = struct.Struct("<IIQ")
_ID_LENGTH: Final = 20


class VirtioBlock:
    """A disk: the image file at ``path`` (its size rounded down to whole sectors), read-only if asked."""

    device_id = 2

    def __init__(self, path: str | os.PathLike[str], *, read_only: bool = False, queue_size: int = 128) -> None:
        check_str("path", os.fspath(path), "VirtioBlock")
        check_flag("read_only", read_only, "VirtioBlock")
        self.path = Path(path)
        self.name = f"virtio-blk:{self.path.name}"
        self.read_only = read_only
        try:
            self._fd = os.open(self.path, os.O_RDONLY if read_only else os.O_RDWR)
        except OSError as error:
            raise ImageError(
                f"virtio-blk: cannot open {self.path}: {error.strerror}", operation="VirtioBlock"
            ) from None
        self.sectors = os.fstat(self._fd).st_size // SECTOR
        self.queue_sizes: tuple[int, ...] = (queue_size,)
        self.features = (
            VIRTIO_BLK_F_SIZE_MAX
            | VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_GEOMETRY
            | VIRTIO_BLK_F_BLK_SIZE
            | VIRTIO_BLK_F_FLUSH
            | (VIRTIO_BLK_F_RO if read_only else VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES)
        )
        cylinders = min(self.sectors // (_HEADS * _SECTORS_PER_TRACK), 0xFFFF)  # what QEMU reports to a BIOS
        geometry = struct.pack(
            "<QIIHBBI", self.sectors, MAX_REQUEST, queue_size - 2, cylinders, _HEADS, _SECTORS_PER_TRACK, SECTOR
        )
        # at 36: max_discard_sectors, max_discard_seg, discard_sector_alignment, max_write_zeroes_sectors,
        # max_write_zeroes_seg, write_zeroes_may_unmap
        zeroing = struct.pack("<IIIIIB", MAX_ZEROED_SECTORS, 1, 1, MAX_ZEROED_SECTORS, 1, 1)
        self._config = (geometry.ljust(36, b"\0") + zeroing).ljust(_CONFIG_SIZE, b"\0")
        self._serial = self.path.name.encode()[:_ID_LENGTH]

    def close(self) -> None:
        """Close the image (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def read_config(self, offset: int, size: int) -> int:
        """``capacity`` (sectors), ``size_max``, ``seg_max``, the geometry, ``blk_size``; zeros for the
        rest of ``virtio_blk_config``, all-ones beyond it."""
        data = self._config[offset : offset + size]
        return int.from_bytes(data.ljust(size, b"\xff"), "little")

    def write_config(self, offset: int, size: int, value: int) -> None:
        """Read-only configuration: ignored."""

    def reset(self) -> None:
        """Nothing to forget: requests complete before the notify returns."""

    def process(self, index: int, queue: SplitQueue) -> None:
        """Serve every available request and return it with its status."""
        for chain in queue:
            if not chain.writable_length:
                raise GuestDataError(f"virtio-blk request {chain.head} has no room for its status byte")
            status, data = self._serve(queue, chain)
            room = chain.writable_length - 1
            written = queue.write(chain, data[:room]) if data else 0
            queue.write(chain, bytes([status]), offset=room)
            queue.push(chain, written + 1)

    def _serve(self, queue: SplitQueue, chain: Chain) -> tuple[int, bytes]:
        header = queue.read(chain, limit=_HEADER.size)
        if len(header) < _HEADER.size:
            return _IOERR, b""
        kind, _, sector = _HEADER.unpack(header)
        if kind == _GET_ID:
            return _OK, self._serial.ljust(_ID_LENGTH, b"\0")
        if kind == _FLUSH:
            if not self.read_only:
                os.fsync(self._fd)
            return _OK, b""
        if kind in (_DISCARD, _WRITE_ZEROES):
            return self._zero(queue, chain, kind), b""
        if kind not in (_IN, _OUT):
            return _UNSUPP, b""
        length = chain.writable_length - 1 if kind == _IN else chain.readable_length - _HEADER.size
        if length % SECTOR or length > MAX_REQUEST or sector + length // SECTOR > self.sectors:
            return _IOERR, b""
        try:
            if kind == _IN:
                return _OK, os.pread(self._fd, length, sector * SECTOR)
            if self.read_only:
                return _IOERR, b""
            os.pwrite(self._fd, queue.read(chain, limit=_HEADER.size + length)[_HEADER.size :], sector * SECTOR)
        except OSError:  # the host's disk failed: the guest's request did
            return _IOERR, b""
        return _OK, b""

    def _zero(self, queue: SplitQueue, chain: Chain, kind: int) -> int:
        """DISCARD (a hint: the range's blocks are freed where the host can) or WRITE_ZEROES, one segment."""
        segments = queue.read(chain, limit=_HEADER.size + 2 * _SEGMENT.size)[_HEADER.size :]
        if self.read_only or len(segments) != _SEGMENT.size:
            return _IOERR  # read-only, or not exactly one segment (max_*_seg is 1)
        sector, count, flags = _SEGMENT.unpack(segments)
        if count > MAX_ZEROED_SECTORS or sector + count > self.sectors or flags & ~1:
            return _IOERR if flags & ~1 == 0 else _UNSUPP
        offset, length = sector * SECTOR, count * SECTOR
        try:
            if _punch_hole(self._fd, offset, length):
                return _OK
            if kind == _WRITE_ZEROES:  # no holes here: write the zeros
                os.pwrite(self._fd, bytes(length), offset)
        except OSError:
            return _IOERR
        return _OK

    def attach(self, wake: Callable[[int], None]) -> None:
        """Nothing comes unasked: the device only answers the driver's requests."""


_libc = ctypes.CDLL(None, use_errno=True)


def _punch_hole(fd: int, offset: int, length: int) -> bool:
    """Free ``length`` bytes at ``offset`` of the file (they read as zeros); False where the file system cannot."""
    if not length:
        return True
    done = _libc.fallocate(
        fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, ctypes.c_int64(offset), ctypes.c_int64(length)
    )
    return bool(done == 0)
