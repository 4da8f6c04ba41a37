"""QEMU's firmware configuration device (fw_cfg) on the x86 IO ports: ``FwCfg``.

Layout as in QEMU's ``docs/specs/fw_cfg.rst``, x86:

- 0x510, 2 ports (the device itself): a 16-bit write selects an item and rewinds its offset
  (little-endian; bit 14, the old write channel, is ignored, bit 15 selects the architecture's
  items); a byte read of 0x510 or 0x511 returns the next byte of the item, 0 past its end. Byte
  writes (the data register's write mode, dropped since QEMU 2.4) are ignored; other widths are
  invalid, as on QEMU: reads answer all-ones, writes are ignored.
- 0x514, 8 ports (:attr:`FwCfg.dma_port`, only when built with ``dma_memory``): the big-endian
  DMA address register. A 32-bit write of the low half (0x518) or a 64-bit write of the whole
  runs the ``FWCfgDmaAccess`` at that guest-physical address (select / read / skip; writes are
  refused with the error bit: every item is read-only). Reading it answers "QEMU CFG".

Items: the signature (0x0000, "QEMU"), the feature bitmap (0x0001: bit 0, plus bit 1 with
DMA), the file directory (0x0019, rebuilt as files are added), whatever :meth:`FwCfg.add_item`,
:meth:`FwCfg.set_ram_size`, :meth:`FwCfg.set_cpus` and :meth:`FwCfg.set_kernel` put there, and
named files (:meth:`FwCfg.add_file`) at selectors 0x0020 and up. Files keep the selector they
were given (in the order they were added); the directory lists them sorted by name, as QEMU's.
"""

from __future__ import annotations

import contextlib
import struct
import threading
from enum import IntEnum
from typing import ClassVar, Protocol

from hvcore.errors import AlreadyExists, HvError, InvalidArgument, NotFound
from hvcore.vmm.device import Device

__all__ = ["DmaMemory", "FwCfg", "FwCfgDma", "FwCfgKey"]


class FwCfgKey(IntEnum):
    """The well-known selector keys (QEMU's ``FW_CFG_*``; 0x8000 and up are x86's own)."""

    SIGNATURE = 0x00
    ID = 0x01
    UUID = 0x02
    RAM_SIZE = 0x03
    NOGRAPHIC = 0x04
    NB_CPUS = 0x05
    MACHINE_ID = 0x06
    KERNEL_ADDR = 0x07
    KERNEL_SIZE = 0x08
    KERNEL_CMDLINE = 0x09
    INITRD_ADDR = 0x0A
    INITRD_SIZE = 0x0B
    BOOT_DEVICE = 0x0C
    NUMA = 0x0D
    BOOT_MENU = 0x0E
    MAX_CPUS = 0x0F
    KERNEL_ENTRY = 0x10
    KERNEL_DATA = 0x11
    INITRD_DATA = 0x12
    CMDLINE_ADDR = 0x13
    CMDLINE_SIZE = 0x14
    CMDLINE_DATA = 0x15
    SETUP_ADDR = 0x16
    SETUP_SIZE = 0x17
    SETUP_DATA = 0x18
    FILE_DIR = 0x19
    FILE_FIRST = 0x20
    ACPI_TABLES = 0x8000
    SMBIOS_ENTRIES = 0x8001
    IRQ0_OVERRIDE = 0x8002
    E820_TABLE = 0x8003
    HPET = 0x8004


_WRITE_CHANNEL = 0x4000
_ARCH_LOCAL = 0x8000
_MANAGED = frozenset({FwCfgKey.SIGNATURE, FwCfgKey.ID, FwCfgKey.FILE_DIR})
_MAX_FILES = _WRITE_CHANNEL - FwCfgKey.FILE_FIRST
_NAME_SIZE = 56

_DMA_SIGNATURE = b"QEMU CFG"
_DMA_ERROR = 0x01
_DMA_READ = 0x02
_DMA_SKIP = 0x04
_DMA_SELECT = 0x08
_DMA_WRITE = 0x10
_ZERO_CHUNK = 1 << 16


class DmaMemory(Protocol):
    """Guest-physical memory as the DMA interface reaches it (a machine's RAM; ``LoadTarget`` fits).

    Either call may raise an :class:`hvcore.HvError` for an address that is not RAM; the
    transfer then fails with the error bit.
    """

    def read(self, address: int, length: int) -> bytes:
        """``length`` bytes of guest memory at ``address``."""
        ...

    def write(self, address: int, data: bytes) -> None:
        """Store ``data`` in guest memory at ``address``."""
        ...


class FwCfgDma:
    """The DMA address register of an :class:`FwCfg` (a ``Device``: register at ``FwCfg.DMA_PORT``, 8 ports)."""

    def __init__(self, fw_cfg: FwCfg, name: str) -> None:
        self.name = name
        self.fw_cfg = fw_cfg
        """The device this register belongs to."""

    def read(self, offset: int, size: int) -> int:
        """The "QEMU CFG" signature bytes at ``offset`` (all-ones without DMA)."""
        return self.fw_cfg._dma_read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        """Half or all of the big-endian address; writing the low half starts the transfer."""
        self.fw_cfg._dma_write(offset, size, value)


class FwCfg:
    """The fw_cfg device: register the device at ``PORT`` (``LENGTH`` ports); see :meth:`ports`.

    ``dma_memory`` enables the DMA interface (ID bit 1 and :attr:`dma_port`); without it the
    guest sees the traditional byte interface only.
    """

    PORT: ClassVar[int] = 0x510
    """Where the selector (and the data byte, 0x511) go."""
    LENGTH: ClassVar[int] = 2
    """How many ports to register at ``PORT``."""
    DMA_PORT: ClassVar[int] = 0x514
    """Where the DMA address register goes (with DMA only)."""
    DMA_LENGTH: ClassVar[int] = 8
    """How many ports to register at ``DMA_PORT``."""

    def __init__(self, name: str = "fw_cfg", dma_memory: DmaMemory | None = None) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._memory = dma_memory
        self.dma_port = FwCfgDma(self, f"{name}.dma")
        """The DMA address register device (answers all-ones unless built with ``dma_memory``)."""
        self._items: dict[int, bytes] = {
            FwCfgKey.SIGNATURE: b"QEMU",
            FwCfgKey.ID: struct.pack("<I", 0x03 if dma_memory is not None else 0x01),
            FwCfgKey.FILE_DIR: struct.pack(">I", 0),
        }
        self._files: dict[str, int] = {}
        self._selector = 0
        self._current = self._items[FwCfgKey.SIGNATURE]
        self._offset = 0
        self._dma_address = bytearray(8)

    @property
    def dma_enabled(self) -> bool:
        """Whether the guest sees the DMA interface."""
        return self._memory is not None

    def ports(self) -> tuple[tuple[int, int, Device], ...]:
        """``(base, length, device)`` for each range to register on the IO bus."""
        ranges: list[tuple[int, int, Device]] = [(self.PORT, self.LENGTH, self)]
        if self._memory is not None:
            ranges.append((self.DMA_PORT, self.DMA_LENGTH, self.dma_port))
        return tuple(ranges)

    # -- items ---------------------------------------------------------------------------

    def add_item(self, key: int, data: bytes) -> None:
        """Set (or replace) the item at selector ``key``: 0x02-0x1F except 0x19, or 0x8000-0xBFFF."""
        generic = 0 <= key < FwCfgKey.FILE_FIRST
        arch = _ARCH_LOCAL <= key < _ARCH_LOCAL | _WRITE_CHANNEL
        if not (generic or arch) or key in _MANAGED:
            raise InvalidArgument(
                f"{self.name}: key {key:#x} is not settable (0x02-0x1f except 0x19, or 0x8000-0xbfff; "
                "files go through add_file)",
                operation="add_item",
            )
        with self._lock:
            self._items[key] = bytes(data)

    def item(self, key: int) -> bytes | None:
        """The item at selector ``key`` (files included), or ``None``."""
        with self._lock:
            return self._items.get(key & ~_WRITE_CHANNEL)

    def add_file(self, name: str, data: bytes) -> int:
        """Add a named file (at most 55 bytes of ASCII name); returns its selector, fixed from now on."""
        encoded = name.encode("ascii", errors="replace")
        if not name or len(encoded) >= _NAME_SIZE or "\0" in name:
            raise InvalidArgument(
                f"{self.name}: file name {name!r} must be 1 to {_NAME_SIZE - 1} ASCII characters", operation="add_file"
            )
        with self._lock:
            if name in self._files:
                raise AlreadyExists(f"{self.name}: file {name!r} already exists", operation="add_file")
            if len(self._files) >= _MAX_FILES:
                raise InvalidArgument(f"{self.name}: no selector left for {name!r}", operation="add_file")
            selector = FwCfgKey.FILE_FIRST + len(self._files)
            self._files[name] = selector
            self._items[selector] = bytes(data)
            self._items[FwCfgKey.FILE_DIR] = self._directory()
            return selector

    def put_file(self, name: str, data: bytes) -> int:
        """Add file ``name``, or replace its contents if it exists (its selector stays); its selector."""
        with self._lock:
            selector = self._files.get(name)
            if selector is not None:
                self._items[selector] = bytes(data)
                self._items[FwCfgKey.FILE_DIR] = self._directory()
                return selector
        return self.add_file(name, data)

    def file_selector(self, name: str) -> int:
        """The selector of file ``name``; ``NotFound`` if there is none."""
        with self._lock:
            try:
                return self._files[name]
            except KeyError:
                raise NotFound(f"{self.name}: no file {name!r}", operation="file_selector") from None

    def files(self) -> dict[str, int]:
        """Every file's selector, by name."""
        with self._lock:
            return dict(self._files)

    def _directory(self) -> bytes:
        entries = [struct.pack(">I", len(self._files))]
        for name in sorted(self._files):
            selector = self._files[name]
            entries.append(
                struct.pack(">IHH56s", len(self._items[selector]), selector, 0, name.encode("ascii", errors="replace"))
            )
        return b"".join(entries)

    def set_ram_size(self, size: int) -> None:
        """``RAM_SIZE`` (0x03): the machine's RAM in bytes, u64 little-endian."""
        if not 0 <= size < 1 << 64:
            raise InvalidArgument(f"{self.name}: RAM size {size:#x} does not fit 64 bits", operation="set_ram_size")
        self.add_item(FwCfgKey.RAM_SIZE, struct.pack("<Q", size))

    def set_cpus(self, cpus: int, max_cpus: int | None = None) -> None:
        """``NB_CPUS`` (0x05) and ``MAX_CPUS`` (0x0F, default ``cpus``): u16 little-endian."""
        maximum = cpus if max_cpus is None else max_cpus
        if not 1 <= cpus <= maximum <= 0xFFFF:
            raise InvalidArgument(
                f"{self.name}: need 1 <= cpus ({cpus}) <= max_cpus ({maximum}) <= 65535", operation="set_cpus"
            )
        self.add_item(FwCfgKey.NB_CPUS, struct.pack("<H", cpus))
        self.add_item(FwCfgKey.MAX_CPUS, struct.pack("<H", maximum))

    def set_kernel(
        self,
        kernel: bytes,
        *,
        kernel_addr: int = 0x100000,
        cmdline: bytes | str = b"",
        cmdline_addr: int = 0x20000,
        initrd: bytes | None = None,
        initrd_addr: int = 0,
        setup: bytes | None = None,
        setup_addr: int = 0x10000,
        entry: int | None = None,
    ) -> None:
        """The items QEMU's ``-kernel`` sets for its linuxboot option ROM (all u32 little-endian).

        ``KERNEL_ADDR``/``SIZE``/``DATA`` (0x07/0x08/0x11); ``CMDLINE_ADDR``/``SIZE``/``DATA``
        (0x13/0x14/0x15, the data NUL-terminated and the size counting the NUL); with ``initrd``,
        ``INITRD_ADDR``/``SIZE``/``DATA`` (0x0A/0x0B/0x12); with ``setup`` (a bzImage's real-mode
        part), ``SETUP_ADDR``/``SIZE``/``DATA`` (0x16/0x17/0x18); with ``entry``, ``KERNEL_ENTRY``
        (0x10). The addresses are where the option ROM will copy each part.
        """
        text = cmdline.encode() if isinstance(cmdline, str) else bytes(cmdline)
        if not text.endswith(b"\0"):
            text += b"\0"
        for label, value in (
            ("kernel_addr", kernel_addr),
            ("cmdline_addr", cmdline_addr),
            ("initrd_addr", initrd_addr),
            ("setup_addr", setup_addr),
            ("entry", 0 if entry is None else entry),
            ("kernel size", len(kernel)),
            ("initrd size", len(initrd or b"")),
        ):
            if not 0 <= value <= 0xFFFFFFFF:
                raise InvalidArgument(f"{self.name}: {label} {value:#x} does not fit 32 bits", operation="set_kernel")

        def u32(value: int) -> bytes:
            return struct.pack("<I", value)

        self.add_item(FwCfgKey.KERNEL_ADDR, u32(kernel_addr))
        self.add_item(FwCfgKey.KERNEL_SIZE, u32(len(kernel)))
        self.add_item(FwCfgKey.KERNEL_DATA, kernel)
        self.add_item(FwCfgKey.CMDLINE_ADDR, u32(cmdline_addr))
        self.add_item(FwCfgKey.CMDLINE_SIZE, u32(len(text)))
        self.add_item(FwCfgKey.CMDLINE_DATA, text)
        if initrd is not None:
            self.add_item(FwCfgKey.INITRD_ADDR, u32(initrd_addr))
            self.add_item(FwCfgKey.INITRD_SIZE, u32(len(initrd)))
            self.add_item(FwCfgKey.INITRD_DATA, initrd)
        if setup is not None:
            self.add_item(FwCfgKey.SETUP_ADDR, u32(setup_addr))
            self.add_item(FwCfgKey.SETUP_SIZE, u32(len(setup)))
            self.add_item(FwCfgKey.SETUP_DATA, setup)
        if entry is not None:
            self.add_item(FwCfgKey.KERNEL_ENTRY, u32(entry))

    def seabios_defaults(self) -> None:
        """Skip SeaBIOS's "Press ESC for boot menu" wait: ``etc/show-boot-menu`` = 0.

        SeaBIOS's ``interactive_bootmenu`` reads ``romfile_loadint("etc/show-boot-menu", 1)`` and
        returns at once on 0, before it reads ``etc/boot-menu-wait`` (so that one is not
        needed). The legacy ``BOOT_MENU`` item (0x0E), which SeaBIOS also maps to that name, is
        set to 0 as QEMU does.
        """
        self.add_item(FwCfgKey.BOOT_MENU, struct.pack("<H", 0))
        self.add_file("etc/show-boot-menu", struct.pack("<H", 0))

    # -- the Device protocol (selector and data byte) ------------------------------------

    def read(self, offset: int, size: int) -> int:
        """A byte read at either port: the next data byte (0 past the end); wider: all-ones."""
        if size != 1:
            return (1 << (8 * size)) - 1
        with self._lock:
            return self._next_bytes(1)[0]

    def write(self, offset: int, size: int, value: int) -> None:
        """A 16-bit write selects (little-endian, as the IO port is); others are ignored."""
        if size == 2:
            with self._lock:
                self._select(value & 0xFFFF)

    @property
    def selector(self) -> int:
        """The selector the guest last wrote."""
        with self._lock:
            return self._selector

    # -- with the lock held ---------------------------------------------------------------

    def _select(self, selector: int) -> None:
        self._selector = selector
        self._current = self._items.get(selector & ~_WRITE_CHANNEL, b"")
        self._offset = 0

    def _next_bytes(self, length: int) -> bytes:
        chunk = self._current[self._offset : self._offset + length]
        self._offset += len(chunk)
        return chunk + bytes(length - len(chunk))

    def _dma_read(self, offset: int, size: int) -> int:
        if self._memory is None or not 0 <= offset < 8:
            return (1 << (8 * size)) - 1
        chunk = _DMA_SIGNATURE[offset : offset + size].ljust(size, b"\xff")
        return int.from_bytes(chunk, "little")

    def _dma_write(self, offset: int, size: int, value: int) -> None:
        if self._memory is None or (offset, size) not in ((0, 4), (4, 4), (0, 8)):
            return  # QEMU accepts only these accesses to the register
        with self._lock:
            # the register is big-endian: the bytes the guest stores are its bytes in order
            self._dma_address[offset : offset + size] = value.to_bytes(size, "little")
            if offset + size == 8:
                address = int.from_bytes(self._dma_address, "big")
                self._dma_address[:] = bytes(8)
                self._dma_transfer(address)

    def _dma_transfer(self, address: int) -> None:
        memory = self._memory
        assert memory is not None
        try:
            control, length, target = struct.unpack(">IIQ", memory.read(address, 16))
        except HvError:
            return  # the descriptor itself is not in RAM: there is nowhere to report to
        error = False
        if control & _DMA_SELECT:
            self._select(control >> 16)
        if control & _DMA_READ:
            available = self._current[self._offset : self._offset + length]
            self._offset += len(available)
            try:
                if available:
                    memory.write(target, available)
                done = len(available)
                while done < length:  # past the end of the item: zeros
                    step = min(length - done, _ZERO_CHUNK)
                    memory.write(target + done, bytes(step))
                    done += step
            except HvError:
                error = True
        elif control & _DMA_WRITE:
            error = True  # every item is read-only to the guest
        elif control & _DMA_SKIP:
            self._offset = min(self._offset + length, len(self._current))
        with contextlib.suppress(HvError):
            memory.write(address, struct.pack(">I", _DMA_ERROR if error else 0))
