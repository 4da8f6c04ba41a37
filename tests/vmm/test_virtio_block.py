"""virtio-blk (:mod:`hvcore.vmm.virtio.block`) behind virtio-mmio, requests built by hand in RAM, on each backend."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from hvcore import GuestDataError, Hypervisor, ImageError
from hvcore.vmm.machine import Machine
from hvcore.vmm.virtio import (
    STATUS_DEVICE_NEEDS_RESET,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VirtioBlock,
    VirtioMmio,
    add_virtio_mmio,
)
from hvcore.vmm.virtio import block as block_module
from hvcore.vmm.virtio.block import MAX_ZEROED_SECTORS
from tests.vmm.test_virtio_mmio import AVAIL, BUFFER, STATUS, TABLE, USED, _driver_up

HEADER, DATA, STATUS_BYTE = BUFFER, BUFFER + 0x1000, BUFFER + 0x3000
IN, OUT, FLUSH, GET_ID = 0, 1, 4, 8
SECTORS = 64


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(b"".join(bytes([sector]) * 512 for sector in range(SECTORS)))
    return path


@pytest.fixture
def machine(hv: Hypervisor) -> Iterator[Machine]:
    with Machine(hv, memory=1 << 20, irqchip=False) as m:
        yield m


class Disk:
    """A driver for one virtio-blk device: each request is descriptors 0 (header), 1 (data), 2 (status)."""

    def __init__(self, machine: Machine, device: VirtioMmio) -> None:
        self.machine, self.device, self.index = machine, device, 0
        _driver_up(device)

    def request(self, kind: int, sector: int, data: bytes | int = b"") -> tuple[int, bytes, int]:
        """Send one request; returns (status, data read, used length)."""
        m = self.machine
        m.write(HEADER, struct.pack("<IIQ", kind, 0, sector))
        m.write(STATUS_BYTE, b"\xee")
        descriptors = [(HEADER, 16, 0)]
        if isinstance(data, int):  # a read of this many bytes
            descriptors.append((DATA, data, VIRTQ_DESC_F_WRITE))
        elif data:
            m.write(DATA, data)
            descriptors.append((DATA, len(data), 0))
        descriptors.append((STATUS_BYTE, 1, VIRTQ_DESC_F_WRITE))
        for index, (address, length, flags) in enumerate(descriptors):
            last = index == len(descriptors) - 1
            m.write(
                TABLE + 16 * index,
                struct.pack("<QIHH", address, length, flags | (0 if last else VIRTQ_DESC_F_NEXT), index + 1),
            )
        m.write(AVAIL + 4 + 2 * (self.index % 8), struct.pack("<H", 0))
        self.index += 1
        m.write(AVAIL + 2, struct.pack("<H", self.index))
        self.device.write(0x50, 4, 0)
        assert struct.unpack("<H", m.read(USED + 2, 2))[0] == self.index
        used_length = struct.unpack("<I", m.read(USED + 4 + 8 * ((self.index - 1) % 8) + 4, 4))[0]
        status = m.read(STATUS_BYTE, 1)[0]
        read = m.read(DATA, data) if isinstance(data, int) and status == 0 else b""
        return status, read, used_length


def test_reads_writes_flushes_and_the_id(machine: Machine, disk: Path) -> None:
    block = VirtioBlock(disk)
    device = add_virtio_mmio(machine, block)
    assert device.read(0x100, 4) == SECTORS and device.read(0x104, 4) == 0  # capacity in sectors
    driver = Disk(machine, device)
    assert driver.request(IN, 3, 1024) == (0, bytes([3]) * 512 + bytes([4]) * 512, 1025)
    assert driver.request(OUT, 5, b"hvcore!!" * 64) == (0, b"", 1)
    assert driver.request(FLUSH, 0) == (0, b"", 1)
    assert disk.read_bytes()[5 * 512 : 6 * 512] == b"hvcore!!" * 64
    status, ident, used = driver.request(GET_ID, 0, 20)
    assert (status, ident, used) == (0, b"disk.img".ljust(20, b"\0"), 21)
    machine.close()
    assert block._fd == -1  # the machine closed the device, and with it the image


@pytest.mark.parametrize(
    ("kind", "sector", "data", "status"),
    [
        (IN, SECTORS - 1, 1024, 1),  # past the end of the disk
        (IN, 0, 100, 1),  # not whole sectors
        (OUT, 0, b"x" * 100, 1),
        (IN, 0, 2 << 20, 1),  # larger than one request may be
        (0x99, 0, b"", 2),  # unsupported
    ],
)
def test_bad_requests_answer_an_error_and_the_device_goes_on(
    machine: Machine, disk: Path, kind: int, sector: int, data: bytes | int, status: int
) -> None:
    driver = Disk(machine, VirtioMmio(VirtioBlock(disk), machine))
    assert driver.request(kind, sector, data)[0] == status
    assert driver.request(IN, 1, 512) == (0, bytes([1]) * 512, 513)


def test_a_read_only_disk_refuses_writes_and_says_so(machine: Machine, disk: Path) -> None:
    device = VirtioMmio(VirtioBlock(disk, read_only=True), machine)
    assert device.read(0x10, 4) & 1 << 5  # VIRTIO_BLK_F_RO offered
    driver = Disk(machine, device)
    assert driver.request(OUT, 0, b"y" * 512)[0] == 1
    assert disk.read_bytes()[:512] == bytes(512)


def test_a_request_without_a_status_byte_needs_a_reset(machine: Machine, disk: Path) -> None:
    device = VirtioMmio(VirtioBlock(disk), machine)
    _driver_up(device)
    machine.write(TABLE, struct.pack("<QIHH", HEADER, 16, 0, 0))  # header only
    machine.write(AVAIL + 2, struct.pack("<H", 1))
    device.write(0x50, 4, 0)
    assert device.read(STATUS, 4) & STATUS_DEVICE_NEEDS_RESET
    assert isinstance(device.problem, GuestDataError) and "status byte" in str(device.problem)


DISCARD, WRITE_ZEROES = 11, 13


def _segment(sector: int, count: int, flags: int = 0) -> bytes:
    return struct.pack("<QII", sector, count, flags)


@pytest.mark.parametrize("holes", [True, False])
def test_write_zeroes_and_discard(machine: Machine, disk: Path, holes: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not holes:  # a file system that cannot punch holes: the zeros are written
        monkeypatch.setattr(block_module, "_punch_hole", lambda fd, offset, length: False)
    device = VirtioMmio(VirtioBlock(disk), machine)
    device.write(0x14, 4, 0)
    assert device.read(0x10, 4) & (1 << 13 | 1 << 14) == 1 << 13 | 1 << 14  # DISCARD, WRITE_ZEROES offered
    assert device.read(0x100 + 36, 4) == MAX_ZEROED_SECTORS and device.read(0x100 + 40, 4) == 1
    driver = Disk(machine, device)
    assert driver.request(WRITE_ZEROES, 0, _segment(2, 2, flags=1))[0] == 0
    assert driver.request(DISCARD, 0, _segment(5, 1))[0] == 0  # a hint: its content is not checked
    image = disk.read_bytes()
    assert image[2 * 512 : 4 * 512] == bytes(1024) and image[4 * 512 : 5 * 512] == bytes([4]) * 512
    assert len(image) == SECTORS * 512  # the disk keeps its size
    assert driver.request(WRITE_ZEROES, 0, _segment(SECTORS - 1, 2))[0] == 1  # past the end
    assert driver.request(WRITE_ZEROES, 0, _segment(0, MAX_ZEROED_SECTORS + 1))[0] == 1
    assert driver.request(WRITE_ZEROES, 0, _segment(0, 1) + _segment(3, 1))[0] == 1  # one segment at most
    assert driver.request(DISCARD, 0, _segment(0, 1, flags=2))[0] == 2  # a flag that does not exist
    assert disk.read_bytes()[:512] == bytes([0]) * 512 and disk.read_bytes()[512:1024] == bytes([1]) * 512


def test_a_read_only_disk_offers_no_discard_and_refuses_it(machine: Machine, disk: Path) -> None:
    device = VirtioMmio(VirtioBlock(disk, read_only=True), machine)
    assert not device.read(0x10, 4) & (1 << 13 | 1 << 14)
    driver = Disk(machine, device)
    assert driver.request(WRITE_ZEROES, 0, _segment(1, 1))[0] == 1
    assert disk.read_bytes()[512:1024] == bytes([1]) * 512


def test_a_missing_image_is_an_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="cannot open"):
        VirtioBlock(tmp_path / "none.img")
