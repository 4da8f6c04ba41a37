"""Image loaders against a fake machine: where bytes land, the boot plans, and every rejection.

No backend is needed: :class:`FakeTarget` implements ``LoadTarget`` over sparse pages. Every
image is built here with ``struct``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest

from hvcore.errors import ImageError, InvalidArgument
from hvcore.vmm.loaders import (
    BootPlan,
    LoadTarget,
    detect,
    load,
    load_bzimage,
    load_elf,
    load_firmware,
    load_multiboot,
    load_raw,
    looks_like_bzimage,
    looks_like_elf,
    looks_like_firmware,
    looks_like_multiboot,
    looks_like_raw,
)
from hvcore.vmm.loaders.e820 import (
    E820_RAM,
    E820_RESERVED,
    MemoryRegion,
    choose_boot_areas,
    find_free,
    pc_memory_map,
)

MIB = 1 << 20
GIB = 1 << 30
PAGE = 0x1000


class FakeTarget:
    """A ``LoadTarget`` over sparse 4 KiB pages, so a machine of any size costs only what is written."""

    def __init__(self, ram_size: int = 32 * MIB, high_ram_size: int = 0, cpus: int = 1) -> None:
        self._ram_size = ram_size
        self._high_ram_size = high_ram_size
        self._cpus = cpus
        self.pages: dict[int, bytearray] = {}
        self.roms: list[tuple[int, bytes]] = []

    @property
    def ram_size(self) -> int:
        return self._ram_size

    @property
    def high_ram_size(self) -> int:
        return self._high_ram_size

    @property
    def cpus(self) -> int:
        return self._cpus

    def _is_ram(self, address: int, length: int) -> bool:
        end = address + length
        return (address >= 0 and end <= self._ram_size) or (
            address >= 1 << 32 and end <= (1 << 32) + self._high_ram_size
        )

    def write(self, address: int, data: bytes) -> None:
        if not self._is_ram(address, len(data)):
            raise ImageError(f"fake target: write {address:#x}+{len(data):#x} outside RAM")
        done = 0
        while done < len(data):
            page, offset = divmod(address + done, PAGE)
            chunk = min(PAGE - offset, len(data) - done)
            self.pages.setdefault(page, bytearray(PAGE))[offset : offset + chunk] = data[done : done + chunk]
            done += chunk

    def read(self, address: int, length: int) -> bytes:
        out = bytearray()
        while len(out) < length:
            page, offset = divmod(address + len(out), PAGE)
            chunk = min(PAGE - offset, length - len(out))
            out += self.pages.get(page, bytes(PAGE))[offset : offset + chunk]
        return bytes(out)

    def add_rom(self, address: int, data: bytes) -> None:
        assert address % PAGE == 0
        self.roms.append((address, data))

    def u8(self, address: int) -> int:
        return self.read(address, 1)[0]

    def u16(self, address: int) -> int:
        return int.from_bytes(self.read(address, 2), "little")

    def u32(self, address: int) -> int:
        return int.from_bytes(self.read(address, 4), "little")

    def cstring(self, address: int) -> bytes:
        return self.read(address, 4096).split(b"\0", 1)[0]


def short_id(value: object) -> str | None:
    """Test ids: images by their size, not their bytes."""
    return f"{len(value)}B" if isinstance(value, bytes) else None


def test_fake_target_is_a_load_target() -> None:
    target: LoadTarget = FakeTarget()
    target.write(0xFFE, b"abcd")
    assert target.read(0xFFE, 4) == b"abcd"
    with pytest.raises(ImageError):
        target.write(32 * MIB - 2, b"abcd")


# --- ELF images -------------------------------------------------------------------------------


@dataclass
class Seg:
    paddr: int
    data: bytes
    memsz: int | None = None
    vaddr: int | None = None
    p_type: int = 1  # PT_LOAD


def make_elf(
    bits: int,
    segments: list[Seg],
    entry: int,
    *,
    machine: int | None = None,
    e_type: int = 2,
    ident: bytes | None = None,
    phnum: int | None = None,
    shoff: int = 0,
) -> bytes:
    """A minimal little-endian ELF executable: header, program headers, then each segment's bytes."""
    header_size, phentsize = (64, 56) if bits == 64 else (52, 32)
    machine = machine if machine is not None else (62 if bits == 64 else 3)
    ident = ident or (b"\x7fELF" + bytes([2 if bits == 64 else 1, 1, 1]) + bytes(9))
    offset = header_size + phentsize * len(segments)
    phdrs, blobs = b"", b""
    for seg in segments:
        memsz = seg.memsz if seg.memsz is not None else len(seg.data)
        vaddr = seg.vaddr if seg.vaddr is not None else seg.paddr
        at = offset + len(blobs)
        if bits == 64:
            phdrs += struct.pack("<IIQQQQQQ", seg.p_type, 5, at, vaddr, seg.paddr, len(seg.data), memsz, 0x1000)
        else:
            phdrs += struct.pack("<IIIIIIII", seg.p_type, at, vaddr, seg.paddr, len(seg.data), memsz, 5, 0x1000)
        blobs += seg.data
    count = len(segments) if phnum is None else phnum
    if bits == 64:
        header = struct.pack(
            "<16sHHIQQQIHHHHHH", ident, e_type, machine, 1, entry, 64, shoff, 0, 64, 56, count, 64, 0, 0
        )
    else:
        header = struct.pack(
            "<16sHHIIIIIHHHHHH", ident, e_type, machine, 1, entry, 52, shoff, 0, 52, 32, count, 40, 0, 0
        )
    return header + phdrs + blobs


TEXT64 = bytes(range(256)) * 16  # 4 KiB
DATA64 = b"DATA" * 64  # 256 bytes, then 0x1000 - 0x100 bytes of bss


def elf64() -> bytes:
    return make_elf(
        64,
        [
            Seg(0x200000, TEXT64, vaddr=0xFFFFFFFF80200000),
            Seg(0x201000, DATA64, memsz=0x1000, vaddr=0xFFFFFFFF80201000),
            Seg(0, b"note", p_type=4),  # PT_NOTE: ignored
        ],
        entry=0x200010,
    )


def test_elf64_segments_bss_and_long_mode_plan() -> None:
    target = FakeTarget()
    target.write(0x201000, b"\xaa" * 0x1000)  # stale bytes the bss must clear
    plan = load_elf(elf64(), target)
    assert target.read(0x200000, len(TEXT64)) == TEXT64
    assert target.read(0x201000, len(DATA64)) == DATA64
    assert target.read(0x201000 + len(DATA64), 0x1000 - len(DATA64)) == bytes(0x1000 - len(DATA64))
    assert plan.mode == "long"
    assert plan.entry == 0x200010
    assert (plan.gdt, plan.page_tables) == (0x500, 0x9000)
    assert "ELF64" in plan.description
    assert dict(plan.regs) == {}


def test_elf64_virtual_entry_is_translated_to_physical() -> None:
    image = make_elf(64, [Seg(0x200000, TEXT64, vaddr=0xFFFFFFFF80200000)], entry=0xFFFFFFFF80200040)
    assert load_elf(image, FakeTarget()).entry == 0x200040


def test_elf32_protected_mode_plan() -> None:
    code = b"\x90" * 100 + b"\xf4"
    image = make_elf(32, [Seg(0x100000, code, memsz=0x2000)], entry=0x100000)
    target = FakeTarget()
    plan = load_elf(image, target)
    assert plan == BootPlan(
        mode="protected", entry=0x100000, gdt=0x500, page_tables=0x9000, description=plan.description
    )
    assert target.read(0x100000, len(code)) == code
    assert target.read(0x100000 + len(code), 0x2000 - len(code)) == bytes(0x2000 - len(code))
    assert "ELF32" in plan.description


def test_elf_in_high_ram_loads() -> None:
    image = make_elf(64, [Seg(0x200000, TEXT64), Seg((1 << 32) + 0x1000, b"high")], entry=0x200000)
    target = FakeTarget(high_ram_size=GIB)
    load_elf(image, target)
    assert target.read((1 << 32) + 0x1000, 4) == b"high"


def test_elf_over_the_default_page_tables_moves_them() -> None:
    image = make_elf(64, [Seg(0x8000, b"\xf4" * 0x2000)], entry=0x8000)
    plan = load_elf(image, FakeTarget())
    assert plan.gdt == 0x500
    assert plan.page_tables == 0x1000
    assert plan.page_tables + 0x3000 <= 0x8000  # clear of the segment at 0x8000..0xA000


def test_elf_over_the_default_gdt_moves_it() -> None:
    image = make_elf(32, [Seg(0x400, b"\xf4" * 0x200)], entry=0x400)
    plan = load_elf(image, FakeTarget())
    assert plan.gdt == 0x1000


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (b"MZ\x90\x00" + bytes(60), "bad magic"),
        (b"", "bad magic"),
        (b"\x7fELF\x01", "truncated"),
        (b"\x7fELF\x03\x01\x01" + bytes(100), "bad ELF class 3"),
        (b"\x7fELF\x02\x02\x01" + bytes(100), "not little-endian"),
        (b"\x7fELF\x02\x01\x01" + bytes(20), "shorter than the 64-byte ELF64 header"),
        (make_elf(64, [Seg(0x200000, b"x")], 0x200000, machine=40), "wrong machine EM_ARM"),
        (make_elf(32, [Seg(0x200000, b"x")], 0x200000, machine=62), "wrong machine EM_X86_64 for an ELF32"),
        (make_elf(64, [Seg(0x200000, b"x")], 0x200000, machine=3), "wrong machine EM_386 for an ELF64"),
        (make_elf(64, [Seg(0x200000, b"x")], 0x200000, e_type=3), "ET_DYN, not ET_EXEC"),
        (make_elf(64, [Seg(0x200000, b"x")], 0x200000, e_type=1), "ET_REL, not ET_EXEC"),
        (make_elf(64, [], 0x200000), "no PT_LOAD"),
        (make_elf(64, [Seg(0x200000, b"x", p_type=4)], 0x200000), "no PT_LOAD"),
        (make_elf(64, [Seg(0x200000, TEXT64)], 0x200000)[:100], "truncated: the 1 program headers"),
        (make_elf(64, [Seg(0x200000, TEXT64)], 0x200000)[:1000], "truncated: segment 0"),
        (make_elf(64, [Seg(0x200000, b"x" * 16, memsz=8)], 0x200000), "p_filesz 0x10 > p_memsz 0x8"),
        (make_elf(64, [], 0x200000, phnum=0xFFFF, shoff=0xFFFF0), "malformed or truncated ELF file"),
        (make_elf(64, [Seg(0x200000, b"x" * 0x2000), Seg(0x201000, b"y")], 0x200000), "overlap in physical memory"),
        (make_elf(64, [Seg(0x200000, b"x")], 0x300000), "entry point 0x300000 lies in no PT_LOAD"),
        (make_elf(64, [Seg(0x40000000, b"x")], 0x40000000), "out of reach"),
        (make_elf(64, [Seg(31 * MIB, b"x" * MIB, memsz=2 * MIB)], 31 * MIB), "ELF segment 0 at 0x1f00000..0x2100000"),
        (make_elf(64, [Seg(0x100000, b"x"), Seg(1 << 32, b"y")], 0x100000), "outside the machine's RAM"),
        (make_elf(32, [Seg(0, b"\xf4", memsz=0xA0000)], 0), "no room is left for the 256-byte GDT"),
        (make_elf(64, [Seg(0x1000, b"\xf4", memsz=0x9E000)], 0x1000), "identity page tables"),
    ],
    ids=short_id,
)
def test_elf_rejects(image: bytes, message: str) -> None:
    target = FakeTarget()
    with pytest.raises(ImageError, match=message):
        load_elf(image, target)
    assert target.pages == {}  # nothing written before the checks pass


# --- raw images -------------------------------------------------------------------------------


def test_raw_defaults_to_real_mode_at_0x1000() -> None:
    target = FakeTarget()
    plan = load_raw(b"\xf4\x90", target)
    assert target.read(0x1000, 2) == b"\xf4\x90"
    assert (plan.mode, plan.entry) == ("real", 0x1000)


def test_raw_protected_and_long_with_entry() -> None:
    target = FakeTarget()
    plan = load_raw(b"\x90" * 32, target, address=0x100000, mode="protected", entry=0x100010)
    assert (plan.mode, plan.entry, plan.gdt) == ("protected", 0x100010, 0x500)
    plan = load_raw(b"\x90" * 0x3000, target, address=0x8000, mode="long")
    assert plan.mode == "long"
    assert plan.page_tables + 0x3000 <= 0x8000 or plan.page_tables >= 0xB000


@pytest.mark.parametrize(
    ("kwargs", "image", "message"),
    [
        ({}, b"", "empty"),
        ({"address": 32 * MIB - 1}, b"ab", "outside the machine's RAM"),
        ({"address": -16}, b"ab", "negative"),
        ({"entry": 0x2000}, b"ab", "entry point 0x2000 is outside the image"),
        ({"address": 0x100000}, b"ab", "real mode reaches only the first MiB"),
        ({"address": 0x40000000, "mode": "long"}, b"ab", "outside the machine's RAM"),
        ({"mode": "reset"}, b"ab", "load_firmware"),
        ({"address": 0, "mode": "protected"}, bytes(0xA0000), "no room"),
    ],
    ids=short_id,
)
def test_raw_rejects(kwargs: dict[str, object], image: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        load_raw(image, FakeTarget(), **kwargs)  # type: ignore[arg-type]


def test_raw_long_mode_entry_must_be_identity_mapped() -> None:
    with pytest.raises(ImageError, match="identity-mapped"):
        load_raw(b"ab", FakeTarget(ram_size=2 * GIB), address=GIB + 0x1000, mode="long")


# --- multiboot ----------------------------------------------------------------------------------

MB_MAGIC = 0x1BADB002


def mb_header(flags: int, fields: tuple[int, ...] = (), checksum: int | None = None) -> bytes:
    checksum = (-(MB_MAGIC + flags)) & 0xFFFFFFFF if checksum is None else checksum
    return struct.pack("<3I", MB_MAGIC, flags, checksum) + struct.pack(f"<{len(fields)}I", *fields)


AOUT_CODE = b"\xfa\xf4" + b"KERNEL" * 40


def aout_kernel(
    *,
    flags: int = 0x10003,
    load_addr: int = 0x100000,
    bss: int = 0x1800,
    entry: int | None = None,
    header_addr: int | None = None,
    load_end: int | None = None,
    bss_end: int | None = None,
    checksum: int | None = None,
    prefix: bytes = b"",
) -> bytes:
    """``prefix`` (4-aligned), the header with the a.out kludge fields, then code; loads from the file start."""
    size = len(prefix) + 32 + len(AOUT_CODE)
    fields = (
        load_addr + len(prefix) if header_addr is None else header_addr,
        load_addr,
        load_addr + size if load_end is None else load_end,
        load_addr + size + bss if bss_end is None else bss_end,
        load_addr + len(prefix) + 32 if entry is None else entry,
    )
    return prefix + mb_header(flags, fields, checksum) + AOUT_CODE


def multiboot_elf(flags: int = 0x3) -> bytes:
    payload = b"\0" * 8 + mb_header(flags) + b"\xf4" * 64
    return make_elf(32, [Seg(0x100000, payload, memsz=0x3000)], entry=0x100000 + 8 + 12)


@dataclass
class Info:
    flags: int
    mem_lower: int
    mem_upper: int
    cmdline: bytes
    mods: list[tuple[int, int, bytes]]
    mmap: list[tuple[int, int, int, int]]
    loader: bytes


def read_info(target: FakeTarget, address: int) -> Info:
    flags, mem_lower, mem_upper, _boot_device, cmdline = struct.unpack("<5I", target.read(address, 20))
    mods_count, mods_addr = struct.unpack("<2I", target.read(address + 20, 8))
    mmap_length, mmap_addr = struct.unpack("<2I", target.read(address + 44, 8))
    loader = target.u32(address + 64)
    mods = []
    for i in range(mods_count):
        start, end, string, _ = struct.unpack("<4I", target.read(mods_addr + 16 * i, 16))
        mods.append((start, end, target.cstring(string)))
    mmap = []
    at = mmap_addr
    while at < mmap_addr + mmap_length:
        size, base, length, kind = struct.unpack("<IQQI", target.read(at, 24))
        mmap.append((size, base, length, kind))
        at += size + 4
    return Info(flags, mem_lower, mem_upper, target.cstring(cmdline), mods, mmap, target.cstring(loader))


def test_multiboot_aout_kludge_kernel_modules_and_info() -> None:
    image = aout_kernel()
    target = FakeTarget()
    end = 0x100000 + len(image)
    target.write(end, b"\xaa" * 0x1800)
    modules = [(b"module zero" * 100, "mod0 arg=1"), (b"\x01" * 5000, "")]
    plan = load_multiboot(image, target, cmdline="console=ttyS0 quiet", modules=modules)

    assert plan.mode == "protected"
    assert plan.entry == 0x100000 + 32
    assert plan.regs["eax"] == 0x2BADB002
    assert plan.regs["ebx"] == 0x10000
    assert plan.gdt == 0x500
    assert target.read(0x100000, len(image)) == image
    assert target.read(end, 0x1800) == bytes(0x1800)  # bss zeroed

    info = read_info(target, plan.regs["ebx"])
    assert info.flags == (1 << 0) | (1 << 2) | (1 << 3) | (1 << 6) | (1 << 9)
    assert info.mem_lower == 639
    assert info.mem_upper == (32 * MIB - MIB) // 1024
    assert info.cmdline == b"console=ttyS0 quiet"
    assert info.loader == b"hvcore"
    first = (end + 0x1800 + PAGE - 1) & ~(PAGE - 1)
    second = (first + len(modules[0][0]) + PAGE - 1) & ~(PAGE - 1)
    assert info.mods == [
        (first, first + len(modules[0][0]), b"mod0 arg=1"),
        (second, second + 5000, b""),
    ]
    assert target.read(first, len(modules[0][0])) == modules[0][0]
    assert target.read(second, 5000) == modules[1][0]
    assert info.mmap == [
        (20, 0, 0x9FC00, 1),
        (20, 0x9FC00, 0x100000 - 0x9FC00, 2),
        (20, 0x100000, 31 * MIB, 1),
    ]


def test_multiboot_header_after_text_start() -> None:
    # The header 8 bytes into the file: load_addr = header_addr - 8 loads the file from its start.
    image = aout_kernel(prefix=b"\xeb\x1e" + bytes(6))
    target = FakeTarget()
    plan = load_multiboot(image, target)
    assert target.read(0x100000, len(image)) == image
    assert plan.entry == 0x100000 + 8 + 32


def test_multiboot_mmap_has_high_ram() -> None:
    target = FakeTarget(ram_size=3 * GIB, high_ram_size=2 * GIB)
    plan = load_multiboot(aout_kernel(), target)
    info = read_info(target, plan.regs["ebx"])
    assert info.mmap[-1] == (20, 1 << 32, 2 * GIB, 1)
    assert info.mem_upper == (3 * GIB - MIB) // 1024


def test_multiboot_elf_kernel() -> None:
    image = multiboot_elf()
    target = FakeTarget()
    plan = load_multiboot(image, target, cmdline="x")
    assert plan.mode == "protected"
    assert plan.entry == 0x100000 + 20
    assert target.read(0x100000 + 8, 4) == struct.pack("<I", MB_MAGIC)
    assert target.read(0x100000 + 8 + 12 + 64, 0x3000 - 84) == bytes(0x3000 - 84)
    info = read_info(target, plan.regs["ebx"])
    assert info.cmdline == b"x"
    assert info.mods == []


@pytest.mark.parametrize(("cmdline", "expected"), [("vmexit cpuid", b"x86/k.flat vmexit cpuid"), ("", b"x86/k.flat")])
def test_multiboot_command_line_starts_with_the_kernels_name(cmdline: str, expected: bytes) -> None:
    """As GRUB and QEMU pass it: kvm-unit-tests read their arguments after this first word (argv[0])."""
    target = FakeTarget()
    plan = load_multiboot(aout_kernel(), target, cmdline=cmdline, name="x86/k.flat")
    assert read_info(target, plan.regs["ebx"]).cmdline == expected


def test_multiboot_video_flag_is_accepted_without_video_info() -> None:
    image = aout_kernel(flags=0x10007)
    target = FakeTarget()
    plan = load_multiboot(image, target)
    assert read_info(target, plan.regs["ebx"]).flags & ((1 << 11) | (1 << 12)) == 0


def test_multiboot_info_moves_when_the_kernel_is_there() -> None:
    image = aout_kernel(load_addr=0x10000)
    target = FakeTarget()
    plan = load_multiboot(image, target, cmdline="low")
    info_at = plan.regs["ebx"]
    assert not 0x10000 <= info_at < 0x10000 + len(image) + 0x1800
    assert read_info(target, info_at).cmdline == b"low"


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (bytes(64), "no multiboot header"),
        (b"\x7fELF" + bytes(9000) + mb_header(3), "no multiboot header"),  # past the first 8 KiB
        (b"\0\0" + mb_header(3) + bytes(20), "no multiboot header"),  # not 4-byte aligned
        (aout_kernel(checksum=0x12345678), "bad checksum 0x12345678"),
        (aout_kernel(flags=0x10000 | 1 << 3), "flag bits 3 "),
        (aout_kernel(flags=0x10000 | 1 << 15 | 1 << 9), "flag bits 9, 15"),
        (mb_header(0x10000) + b"\0" * 4, "truncated: flag 16"),
        (aout_kernel(load_end=0x100000 + 0x10000), "truncated: load_addr..load_end_addr"),
        (aout_kernel(load_end=0x100000), "load_end_addr 0x100000 is not above load_addr"),
        (aout_kernel(header_addr=0xFFFF0), "load_addr 0x100000 is above header_addr"),
        (aout_kernel(header_addr=0x100010), "before the file's first byte"),
        (aout_kernel(bss_end=0x100010), "bss_end_addr 0x100010 is below the load end"),
        (aout_kernel(entry=0x200000), "entry_addr 0x200000 is outside"),
        (aout_kernel(bss_end=64 * MIB), "multiboot kernel at 0x100000..0x4000000 .* outside the machine's RAM"),
        (aout_kernel(load_addr=32 * MIB - 64), "outside the machine's RAM"),
        (mb_header(3) + bytes(100), "not ELF"),
    ],
    ids=short_id,
)
def test_multiboot_rejects(image: bytes, message: str) -> None:
    target = FakeTarget()
    with pytest.raises(ImageError, match=message):
        load_multiboot(image, target)
    assert target.pages == {}


def test_multiboot_rejects_elf_problems_with_its_own_prefix() -> None:
    payload = mb_header(3) + b"\xf4"
    image = make_elf(32, [Seg(0x100000, payload)], entry=0x100000, machine=40)
    with pytest.raises(ImageError, match="multiboot ELF kernel: wrong machine"):
        load_multiboot(image, FakeTarget())
    image = make_elf(32, [Seg(31 * MIB, payload, memsz=2 * MIB)], entry=31 * MIB)
    with pytest.raises(ImageError, match=r"multiboot ELF kernel segment 0 .* outside"):
        load_multiboot(image, FakeTarget())


def test_multiboot_rejects_modules_too_big_and_nul_in_cmdline() -> None:
    with pytest.raises(ImageError, match=r"multiboot module 1 .* outside the machine's RAM"):
        load_multiboot(aout_kernel(), FakeTarget(), modules=[(b"a", ""), (bytes(31 * MIB), "")])
    with pytest.raises(ImageError, match="NUL"):
        load_multiboot(aout_kernel(), FakeTarget(), cmdline="a\0b")
    with pytest.raises(ImageError, match="command lines are too long"):
        load_multiboot(aout_kernel(), FakeTarget(), cmdline="x" * 0xA0000)


# --- bzImage ------------------------------------------------------------------------------------

KERNEL_PAYLOAD = b"\x90" * 0x200 + b"startup_64" + bytes(range(256)) * 30


def make_bzimage(
    *,
    version: int = 0x20F,
    xloadflags: int = 1,
    loadflags: int = 1,
    setup_sects: int = 4,
    payload: bytes = KERNEL_PAYLOAD,
    cmdline_size: int = 2047,
    init_size: int = 0x200000,
    pref_address: int = 0x1000000,
    initrd_addr_max: int = 0x7FFFFFFF,
    relocatable: int = 1,
    alignment: int = 0x200000,
    magic: bytes = b"HdrS",
    syssize: int | None = None,
) -> bytes:
    setup = bytearray((setup_sects or 4) * 512 + 512)
    setup[0x1F1] = setup_sects
    struct.pack_into("<I", setup, 0x1F4, (len(payload) + 15) // 16 if syssize is None else syssize)
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x200:0x202] = b"\xeb\x6a"  # jmp to 0x26c: the header ends there
    setup[0x202:0x206] = magic
    struct.pack_into("<H", setup, 0x206, version)
    struct.pack_into("<H", setup, 0x20E, 0x200)  # kernel_version string at 0x200 + 0x200
    release = b"6.6.0-hvcore (test@tests) #1\0"
    setup[0x400 : 0x400 + len(release)] = release
    setup[0x211] = loadflags
    struct.pack_into("<I", setup, 0x214, 0x100000)
    struct.pack_into("<I", setup, 0x22C, initrd_addr_max)
    struct.pack_into("<I", setup, 0x230, alignment)
    setup[0x234] = relocatable
    setup[0x235] = 21
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, cmdline_size)
    struct.pack_into("<Q", setup, 0x258, pref_address)
    struct.pack_into("<I", setup, 0x260, init_size)
    setup[0x26C:0x270] = b"JUNK"  # past the header: not copied
    return bytes(setup) + payload


ZERO_PAGE = 0x7000


def e820_entries(target: FakeTarget) -> list[tuple[int, int, int]]:
    count = target.u8(ZERO_PAGE + 0x1E8)
    return [struct.unpack("<QQI", target.read(ZERO_PAGE + 0x2D0 + 20 * i, 20)) for i in range(count)]


def test_bzimage_64bit_boot() -> None:
    image = make_bzimage()
    target = FakeTarget()
    initrd = b"INITRD" * 2000
    plan = load_bzimage(image, target, cmdline="console=ttyS0 root=/dev/vda", initrd=initrd)

    assert plan.mode == "long"
    assert plan.entry == 0x100000 + 0x200
    assert dict(plan.regs) == {"rsi": ZERO_PAGE}
    assert (plan.gdt, plan.page_tables) == (0x500, 0x9000)
    assert "6.6.0-hvcore" in plan.description
    assert "2.15" in plan.description
    # The protected-mode kernel at 1 MiB, startup_64 at +0x200.
    assert target.read(0x100000, len(KERNEL_PAYLOAD)) == KERNEL_PAYLOAD
    assert target.read(plan.entry, 10) == b"startup_64"
    # The setup header copied, and the loader's fields.
    assert target.read(ZERO_PAGE + 0x1F1, 0x26C - 0x1F1)[0x202 - 0x1F1 : 0x206 - 0x1F1] == b"HdrS"
    assert target.read(ZERO_PAGE + 0x26C, 4) == bytes(4)
    assert target.u16(ZERO_PAGE + 0x206) == 0x20F
    assert target.u16(ZERO_PAGE + 0x1FE) == 0xAA55
    assert target.u8(ZERO_PAGE + 0x210) == 0xFF  # type_of_loader
    assert target.u8(ZERO_PAGE + 0x211) == 1  # loadflags: LOADED_HIGH, no CAN_USE_HEAP
    assert target.u32(ZERO_PAGE + 0x214) == 0x100000  # code32_start
    assert target.u32(ZERO_PAGE + 0x228) == 0x20000  # cmd_line_ptr
    assert target.cstring(0x20000) == b"console=ttyS0 root=/dev/vda"
    # The initrd at the top of RAM, page aligned.
    ramdisk = target.u32(ZERO_PAGE + 0x218)
    assert ramdisk == (32 * MIB - len(initrd)) & ~(PAGE - 1)
    assert target.u32(ZERO_PAGE + 0x21C) == len(initrd)
    assert target.u32(ZERO_PAGE + 0xC0) == 0
    assert target.read(ramdisk, len(initrd)) == initrd
    assert e820_entries(target) == [
        (0, 0x9FC00, 1),
        (0x9FC00, 0x100000 - 0x9FC00, 2),
        (0x100000, 31 * MIB, 1),
    ]


def test_bzimage_without_initrd_and_with_high_ram() -> None:
    target = FakeTarget(ram_size=2 * GIB, high_ram_size=GIB)
    load_bzimage(make_bzimage(), target)
    assert target.u32(ZERO_PAGE + 0x218) == 0
    assert target.u32(ZERO_PAGE + 0x21C) == 0
    assert target.cstring(0x20000) == b""
    assert e820_entries(target)[-1] == (1 << 32, GIB, 1)
    assert len(e820_entries(target)) == 4


def test_bzimage_initrd_below_initrd_addr_max() -> None:
    target = FakeTarget(ram_size=64 * MIB)
    load_bzimage(make_bzimage(initrd_addr_max=0x17FFFFF), target, initrd=b"x" * 5000)
    assert target.u32(ZERO_PAGE + 0x218) == 0x1800000 - 2 * PAGE


def test_bzimage_older_protocol_without_xloadflags_and_setup_sects_zero() -> None:
    image = make_bzimage(version=0x20A, xloadflags=0, setup_sects=0)
    target = FakeTarget()
    plan = load_bzimage(image, target)
    assert plan.entry == 0x100200
    assert target.read(0x100000, len(KERNEL_PAYLOAD)) == KERNEL_PAYLOAD  # setup_sects 0 means 4


@pytest.mark.parametrize(
    ("image", "kwargs", "ram", "message"),
    [
        (make_bzimage(magic=b"HdrX"), {}, 32 * MIB, "no setup header: expected 'HdrS'"),
        (b"short", {}, 32 * MIB, "no setup header"),
        (make_bzimage(version=0x205), {}, 32 * MIB, "boot protocol 2.05 is too old"),
        (make_bzimage(version=0x202), {}, 32 * MIB, "too old"),
        (make_bzimage(xloadflags=0x2), {}, 32 * MIB, "no 64-bit support"),
        (make_bzimage(loadflags=0), {}, 32 * MIB, "zImage"),
        (make_bzimage(payload=b""), {}, 32 * MIB, "truncated: no protected-mode kernel"),
        (make_bzimage(syssize=0x10000), {}, 32 * MIB, "truncated: syssize"),
        (make_bzimage()[:0x600], {}, 32 * MIB, "truncated: the 4 setup sectors"),
        (make_bzimage(alignment=0x300000), {}, 32 * MIB, "not a power of two"),
        (make_bzimage(), {"cmdline": "x" * 2048}, 32 * MIB, "command line too long: 2048 bytes.*at most 2047"),
        (make_bzimage(cmdline_size=255), {"cmdline": "y" * 256}, 32 * MIB, "command line too long"),
        (make_bzimage(), {"cmdline": "a\0b"}, 32 * MIB, "NUL"),
        (make_bzimage(), {"initrd": bytes(15 * MIB)}, 32 * MIB, "initrd too big"),
        (make_bzimage(initrd_addr_max=0x12FFFFF), {"initrd": bytes(MIB + 1)}, 32 * MIB, "initrd too big"),
        (make_bzimage(), {}, 16 * MIB, "kernel's run area at 0x1000000..0x1200000 .* does not fit"),
        (make_bzimage(relocatable=0, pref_address=0x1F00000), {}, 32 * MIB, "kernel's run area"),
        (make_bzimage(init_size=GIB), {}, 2 * GIB, "identity-mapped"),
        (make_bzimage(payload=bytes(2 * MIB)), {}, 2 * MIB, "the kernel at 0x100000"),
    ],
    ids=short_id,
)
def test_bzimage_rejects(image: bytes, kwargs: dict[str, object], ram: int, message: str) -> None:
    target = FakeTarget(ram_size=ram)
    with pytest.raises(ImageError, match=message):
        load_bzimage(image, target, **kwargs)  # type: ignore[arg-type]
    assert target.pages == {}


# --- firmware -------------------------------------------------------------------------------------

SEABIOS_RESET = bytes.fromhex("ea5be000f0") + b"06/23/99" + b"\0\xfc\0"


def make_firmware(size: int = 128 * 1024, vector: bytes = SEABIOS_RESET) -> bytes:
    body = (bytes(range(7, 256)) * (size // 249 + 1))[: size - 16]
    return body + vector.ljust(16, b"\0")


@pytest.mark.parametrize(("size", "legacy_at"), [(64 * 1024, 0xF0000), (128 * 1024, 0xE0000), (256 * 1024, 0xE0000)])
def test_firmware_rom_and_legacy_copy(size: int, legacy_at: int) -> None:
    image = make_firmware(size)
    target = FakeTarget()
    plan = load_firmware(image, target)
    assert plan.mode == "reset"
    assert plan.entry == 0xFFFFFFF0
    assert target.roms == [((1 << 32) - size, image)]
    legacy = min(size, 128 * 1024)
    assert target.read(legacy_at, legacy) == image[-legacy:]
    assert target.read(0xFFFF0, 5) == bytes.fromhex("ea5be000f0")  # the far jump's target segment is RAM


def test_firmware_with_nops_before_a_near_jump() -> None:
    image = make_firmware(2 * MIB, b"\x90\x90\xe9\x00\x00")
    assert load_firmware(image, FakeTarget()).mode == "reset"


@pytest.mark.parametrize(
    ("image", "ram", "message"),
    [
        (make_firmware(100 * 1024), 32 * MIB, "firmware size 102400 bytes .* multiple of 64 KiB"),
        (make_firmware(32 * 1024), 32 * MIB, "firmware size"),
        (make_firmware(16 * MIB + 64 * 1024), 32 * MIB, "from 64 KiB to 16 MiB"),
        (b"", 32 * MIB, "firmware size 0"),
        (make_firmware(vector=b"\xf4" * 16), 32 * MIB, "no reset-vector jump"),
        (make_firmware(vector=b"\x90" * 16), 32 * MIB, "no reset-vector jump"),
        (make_firmware(), 512 * 1024, "at least 1 MiB"),
        (make_firmware(), (1 << 32) - 64 * 1024, "overlaps the machine's RAM"),
    ],
    ids=short_id,
)
def test_firmware_rejects(image: bytes, ram: int, message: str) -> None:
    target = FakeTarget(ram_size=ram)
    with pytest.raises(ImageError, match=message):
        load_firmware(image, target)
    assert target.roms == []
    assert target.pages == {}


# --- detect and load ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (make_bzimage(), "bzimage"),
        (aout_kernel(), "multiboot"),
        (multiboot_elf(), "multiboot"),
        (elf64(), "elf"),
        (make_elf(32, [Seg(0x100000, b"\xf4")], 0x100000), "elf"),
        (make_elf(32, [Seg(0x100000, mb_header(3, checksum=1))], 0x100000), "elf"),  # bad checksum: plain ELF
        (make_firmware(), "firmware"),
        (make_firmware(256 * 1024), "firmware"),
        (make_firmware(100 * 1024), "raw"),
        (make_firmware(vector=b"\0" * 16), "raw"),
        (b"\xf4", "raw"),
        (b"", "raw"),
    ],
    ids=short_id,
)
def test_detect(image: bytes, expected: str) -> None:
    assert detect(image) == expected


def test_probes() -> None:
    assert looks_like_bzimage(make_bzimage()) and not looks_like_bzimage(elf64())
    assert looks_like_multiboot(aout_kernel()) and not looks_like_multiboot(aout_kernel(checksum=0))
    assert looks_like_elf(elf64()) and not looks_like_elf(b"\x7fEL")
    assert looks_like_firmware(make_firmware()) and not looks_like_firmware(make_firmware(96 * 1024))
    assert looks_like_raw(b"x") and not looks_like_raw(b"")


def test_load_dispatches() -> None:
    target = FakeTarget()
    plan = load(make_bzimage(), target, cmdline="quiet", initrd=b"rd")
    assert plan.mode == "long"
    assert target.cstring(0x20000) == b"quiet"

    target = FakeTarget()
    plan = load(aout_kernel(), target, cmdline="mb", initrd=b"ramdisk")
    info = read_info(target, plan.regs["ebx"])
    assert info.cmdline == b"mb"
    assert [m[2] for m in info.mods] == [b"initrd"]
    assert target.read(info.mods[0][0], 7) == b"ramdisk"

    assert load(elf64(), FakeTarget()).mode == "long"
    assert load(make_firmware(), FakeTarget()).mode == "reset"
    assert load(b"\xf4", FakeTarget()) == load_raw(b"\xf4", FakeTarget())
    assert load(elf64(), FakeTarget(), format="raw").mode == "real"  # an explicit format wins


def test_load_rejects_misuse() -> None:
    with pytest.raises(InvalidArgument, match="unknown image format 'pe'"):
        load(b"x", FakeTarget(), format="pe")
    with pytest.raises(InvalidArgument, match="a command line given for a 'raw' image"):
        load(b"x", FakeTarget(), cmdline="x")
    with pytest.raises(InvalidArgument, match="an initrd given for an 'elf' image"):
        load(elf64(), FakeTarget(), initrd=b"")
    with pytest.raises(ImageError, match="bad magic"):
        load(b"x", FakeTarget(), format="elf")


# --- the shared memory map ------------------------------------------------------------------------


def test_pc_memory_map() -> None:
    assert pc_memory_map(32 * MIB) == [
        MemoryRegion(0, 0x9FC00, E820_RAM),
        MemoryRegion(0x9FC00, 0x60400, E820_RESERVED),
        MemoryRegion(0x100000, 31 * MIB, E820_RAM),
    ]
    assert pc_memory_map(512 * 1024) == [
        MemoryRegion(0, 512 * 1024, E820_RAM),
        MemoryRegion(0x9FC00, 0x60400, E820_RESERVED),
    ]
    assert pc_memory_map(3 * GIB, GIB)[-1] == MemoryRegion(1 << 32, GIB, E820_RAM)
    assert pc_memory_map(3 * GIB, GIB)[-1].end == (1 << 32) + GIB


def test_find_free_and_boot_areas() -> None:
    assert find_free([], 0x100, preferred=0x500) == 0x500
    assert find_free([(0x400, 0x200)], 0x100, preferred=0x500) == 0x1000
    assert find_free([(0x1000, 0x2800)], 0x3000) == 0x4000
    assert find_free([(0x1000, 0x9F000)], 0x1000) is None
    areas = choose_boot_areas(FakeTarget(), [(0x9000, 0x100)], page_tables=True)
    assert (areas.gdt, areas.page_tables) == (0x500, 0x1000)


def test_a_multiboot_command_line_starts_with_the_image_name() -> None:
    """As GRUB and QEMU pass it: kvm-unit-tests take their arguments after that first word."""
    target = FakeTarget()
    plan = load(aout_kernel(), target, cmdline="10000000 42", name="x86/kvmclock_test.flat")
    assert read_info(target, plan.regs["ebx"]).cmdline == b"x86/kvmclock_test.flat 10000000 42"
    bare = FakeTarget()
    plan = load(aout_kernel(), bare, name="k.elf")
    assert read_info(bare, plan.regs["ebx"]).cmdline == b"k.elf"
