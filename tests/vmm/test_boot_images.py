"""Each loader's image booted on every backend: the guest sees the boot protocol's promises.

The images are built here (``tests.vmm.test_loaders``' builders) around small hand-assembled entry
points that report what they find through the debug console and isa-debug-exit.
"""

from __future__ import annotations

import io
import struct

from hvcore import Hypervisor
from hvcore.vmm import Machine, MachineResult, add_pc_devices
from tests.vmm.test_loaders import MB_MAGIC, Seg, make_bzimage, make_elf

# 64-bit, at the kernel's load address + 0x200 (startup_64): prints the command line the zero page
# (RSI) points at, then exits with the zero page's type_of_loader.
BZIMAGE_ENTRY = (
    b"\x89\xf6"  # 100200 mov esi,esi
    b"\x8b\xbe\x28\x02\x00\x00"  # 100202 mov edi,DWORD PTR [rsi+0x228]   cmd_line_ptr
    b"\x66\xba\x02\x04"  # 100208 mov dx,0x402
    b"\x8a\x07"  # 10020C mov al,BYTE PTR [rdi]
    b"\x84\xc0"  # 10020E test al,al
    b"\x74\x06"  # 100210 je 0x100218
    b"\xee"  # 100212 out dx,al
    b"\x48\xff\xc7"  # 100213 inc rdi
    b"\xeb\xf4"  # 100216 jmp 0x10020c
    b"\x8a\x86\x10\x02\x00\x00"  # 100218 mov al,BYTE PTR [rsi+0x210]   type_of_loader
    b"\xe6\xf4"  # 10021E out 0xf4,al
    b"\xf4"  # 100220 hlt
)

# 32-bit protected mode at 0x100020 (after the a.out-kludge header): with EAX = the multiboot magic,
# prints the command line of the info block (EBX) and exits with its flags' low byte; else 0xEE.
MULTIBOOT_ENTRY = (
    b"\x66\xba\x02\x04"  # 100020 mov dx,0x402
    b"\x3d\x02\xb0\xad\x2b"  # 100024 cmp eax,0x2badb002
    b"\x75\x12"  # 100029 jne 0x10003d
    b"\x8b\x4b\x10"  # 10002B mov ecx,DWORD PTR [ebx+0x10]   cmdline
    b"\x8a\x01"  # 10002E mov al,BYTE PTR [ecx]
    b"\x84\xc0"  # 100030 test al,al
    b"\x74\x04"  # 100032 je 0x100038
    b"\xee"  # 100034 out dx,al
    b"\x41"  # 100035 inc ecx
    b"\xeb\xf6"  # 100036 jmp 0x10002e
    b"\x8a\x03"  # 100038 mov al,BYTE PTR [ebx]   flags
    b"\xe6\xf4"  # 10003A out 0xf4,al
    b"\xf4"  # 10003C hlt
    b"\xb0\xee"  # 10003D mov al,0xee
    b"\xe6\xf4"  # 10003F out 0xf4,al
    b"\xf4"  # 100041 hlt
)

# 64-bit at 0x200000: prints its message, exits with 0x2a.
ELF64_CODE = (
    b"\x66\xba\x02\x04"  # 200000 mov dx,0x402
    b"\x48\x8d\x35\x0d\x00\x00\x00"  # 200004 lea rsi,[rip+0xd]   the message at 0x200018
    b"\xac"  # 20000B lods al,BYTE PTR ds:[rsi]
    b"\x84\xc0"  # 20000C test al,al
    b"\x74\x03"  # 20000E je 0x200013
    b"\xee"  # 200010 out dx,al
    b"\xeb\xf8"  # 200011 jmp 0x20000b
    b"\xb0\x2a"  # 200013 mov al,0x2a
    b"\xe6\xf4"  # 200015 out 0xf4,al
    b"\xf4"  # 200017 hlt
    b"hello from ELF64\x00"  # 200018 the message
)


def boot(hv: Hypervisor, image: bytes, **load: object) -> tuple[MachineResult, bytes]:
    """Load ``image`` on a 64 MiB PC machine and run it; how it ended and its debug-console output."""
    console = io.BytesIO()
    with Machine(hv, memory=64 << 20) as machine:
        add_pc_devices(machine, debugcon=console)
        machine.load(image, **load)  # type: ignore[arg-type]
        return machine.run(timeout=30), console.getvalue()


def test_bzimage_64bit_boot_protocol(hv: Hypervisor) -> None:
    image = make_bzimage(payload=b"\x90" * 0x200 + BZIMAGE_ENTRY)
    result, console = boot(hv, image, cmdline="console=ttyS0 quiet")
    assert console == b"console=ttyS0 quiet"
    assert result == MachineResult("debug-exit", (0xFF << 1) | 1)  # type_of_loader 0xff: "undefined" loader


def multiboot_image() -> bytes:
    """An a.out-kludge multiboot kernel at 0x100000 running ``MULTIBOOT_ENTRY``."""
    flags = 0x10003  # page-aligned modules, memory info, a.out kludge
    header = struct.pack("<8I", MB_MAGIC, flags, (-(MB_MAGIC + flags)) & 0xFFFFFFFF, 0x100000, 0x100000, 0, 0, 0x100020)
    return header + MULTIBOOT_ENTRY


def test_multiboot_protocol(hv: Hypervisor) -> None:
    result, console = boot(hv, multiboot_image(), cmdline="root=/dev/hvc0")
    assert console == b"root=/dev/hvc0"
    assert result.reason == "debug-exit" and result.status is not None
    info_flags = result.status >> 1
    assert info_flags & 0x4D == 0x4D  # mem_lower/upper, cmdline, mods, mmap (low byte)


def test_elf64(hv: Hypervisor) -> None:
    result, console = boot(hv, make_elf(64, [Seg(0x200000, ELF64_CODE, memsz=0x2000)], entry=0x200000))
    assert console == b"hello from ELF64"
    assert result == MachineResult("debug-exit", (0x2A << 1) | 1)
