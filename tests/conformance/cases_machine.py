"""Whole machines: mode switches by the guest, boot from the reset vector, dirty logging, several vCPUs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from hvcore import Exit, HltExit, IoExit, SlotFlags, x86
from tests.conformance.cases_events import words
from tests.conformance.harness import (
    Case,
    Host,
    Note,
    Outcome,
    SlotSpec,
    hlt,
    mmio_write,
    out,
    script,
    shutdown,
    window,
)
from tests.flags import undefined_after
from tests.guests import boot, layout, real_mode

CODE, DATA, STACK_TOP = layout.CODE, layout.DATA, layout.STACK_TOP


def long_mode_ready(host: Host) -> None:
    """Set-up for a guest that enters long mode itself: CPUID (for EFER.LME) and identity tables at PML4."""
    host.vcpu.set_cpuid(host.hv.supported_cpuid())
    x86.write_identity_page_tables(host.memory[0], layout.PML4)


# --- mode switches -------------------------------------------------------------------------------------

# Real mode -> 32-bit protected mode -> 64-bit long mode, all by the guest (its own GDT: 0x08
# code32, 0x10 data, 0x18 code64, at 0x1056). The host only provides CPUID and page tables.
# Exits: OUT 0x70 0x32 (rip 0x1020, in 32-bit code), OUT 0x70 0x64 (rip 0x1055, 64-bit), HLT 0x1056.
REAL_TO_LONG = (
    b"\xfa"                              # 1000 cli
    b"\x2e\x0f\x01\x16\x76\x10"          # 1001 lgdt cs:[gdtr]
    b"\x0f\x20\xc0"                      # 1007 mov eax, cr0
    b"\x0c\x01"                          # 100A or al, 1
    b"\x0f\x22\xc0"                      # 100C mov cr0, eax
    b"\xea\x14\x10\x08\x00"              # 100F jmp 0x08:pm32
    b"\x66\xb8\x10\x00"                  # 1014 pm32: mov ax, 0x10   (.code32 from here)
    b"\x8e\xd8"                          # 1018 mov ds, ax
    b"\x8e\xd0"                          # 101A mov ss, ax
    b"\xb0\x32"                          # 101C mov al, 0x32
    b"\xe6\x70"                          # 101E out 0x70, al
    b"\x0f\x20\xe0"                      # 1020 mov eax, cr4
    b"\x83\xc8\x20"                      # 1023 or eax, 0x20
    b"\x0f\x22\xe0"                      # 1026 mov cr4, eax
    b"\xb8\x00\x90\x00\x00"              # 1029 mov eax, 0x9000
    b"\x0f\x22\xd8"                      # 102E mov cr3, eax
    b"\xb9\x80\x00\x00\xc0"              # 1031 mov ecx, 0xC0000080
    b"\x0f\x32"                          # 1036 rdmsr
    b"\x0d\x00\x01\x00\x00"              # 1038 or eax, 0x100
    b"\x0f\x30"                          # 103D wrmsr
    b"\x0f\x20\xc0"                      # 103F mov eax, cr0
    b"\x0d\x00\x00\x00\x80"              # 1042 or eax, 0x80000000
    b"\x0f\x22\xc0"                      # 1047 mov cr0, eax
    b"\xea\x51\x10\x00\x00\x18\x00"      # 104A jmp 0x18:lm64
    b"\xb0\x64"                          # 1051 lm64: mov al, 0x64   (.code64 from here)
    b"\xe6\x70"                          # 1053 out 0x70, al
    b"\xf4"                              # 1055 hlt
    b"\x00\x00\x00\x00\x00\x00\x00\x00"  # 1056 gdt: .quad 0
    b"\xff\xff\x00\x00\x00\x9b\xcf\x00"  # 105E .quad 0x00CF9B000000FFFF
    b"\xff\xff\x00\x00\x00\x93\xcf\x00"  # 1066 .quad 0x00CF93000000FFFF
    b"\xff\xff\x00\x00\x00\x9b\xaf\x00"  # 106E .quad 0x00AF9B000000FFFF
    b"\x1f\x00"                          # 1076 gdtr: .word 0x1F
    b"\x56\x10\x00\x00"                  # 1078 .long gdt
)

REAL_TO_LONG_CASE = Case(
    "real_to_long_mode",
    "the guest switches itself from real to 32-bit protected to 64-bit long mode",
    "real",
    REAL_TO_LONG,
    setup=long_mode_ready,
    expect=Outcome(
        steps=(out(0x70, 0x32, 0x1020), out(0x70, 0x64, 0x1055), hlt(0x1056)),
        state={"cs.selector": 0x18, "cs.l": 1, "cs.db": 0, "ds.selector": 0x10, "ss.selector": 0x10,
               "cr0": 0xE0000011, "cr3": layout.PML4, "cr4": 0x20, "efer": 0x500, "gdt.base": 0x1056,
               "gdt.limit": 0x1F, "rcx": 0xC0000080, "rdx": 0},
    ),
    undefined_flags={"rflags": undefined_after("or eax, 0x80000000")},
    covers=frozenset({"mode-switch", "paging"}),
)

# 32-bit protected mode -> 16-bit protected mode -> real mode (its own GDT at 0x1031: 0x08 16-bit
# code, 0x10 16-bit data, both base 0, limit 0xFFFF).
# Exits: OUT 0x71 0x32 (rip 0x1004), OUT 0x71 0x16 (rip 0x1030), HLT 0x1031.
PROTECTED_TO_REAL = (
    b"\xb0\x32"                          # 1000 mov al, 0x32   (.code32)
    b"\xe6\x71"                          # 1002 out 0x71, al
    b"\x0f\x01\x15\x49\x10\x00\x00"      # 1004 lgdt [gdtr]
    b"\xea\x12\x10\x00\x00\x08\x00"      # 100B jmp 0x08:pm16
    b"\xb8\x10\x00"                      # 1012 pm16: mov ax, 0x10   (.code16 from here)
    b"\x8e\xd8"                          # 1015 mov ds, ax
    b"\x8e\xd0"                          # 1017 mov ss, ax
    b"\x0f\x20\xc0"                      # 1019 mov eax, cr0
    b"\x24\xfe"                          # 101C and al, 0xFE
    b"\x0f\x22\xc0"                      # 101E mov cr0, eax
    b"\xea\x26\x10\x00\x00"              # 1021 jmp 0:real16
    b"\x31\xc0"                          # 1026 real16: xor ax, ax
    b"\x8e\xd8"                          # 1028 mov ds, ax
    b"\x8e\xd0"                          # 102A mov ss, ax
    b"\xb0\x16"                          # 102C mov al, 0x16
    b"\xe6\x71"                          # 102E out 0x71, al
    b"\xf4"                              # 1030 hlt
    b"\x00\x00\x00\x00\x00\x00\x00\x00"  # 1031 gdt: .quad 0
    b"\xff\xff\x00\x00\x00\x9b\x00\x00"  # 1039 .quad 0x00009B000000FFFF
    b"\xff\xff\x00\x00\x00\x93\x00\x00"  # 1041 .quad 0x000093000000FFFF
    b"\x17\x00"                          # 1049 gdtr: .word 0x17
    b"\x31\x10\x00\x00"                  # 104B .long gdt
)

PROTECTED_TO_REAL_CASE = Case(
    "protected_to_real_mode",
    "the guest leaves 32-bit protected mode through 16-bit protected mode back to real mode",
    "protected",
    PROTECTED_TO_REAL,
    expect=Outcome(
        steps=(out(0x71, 0x32, 0x1004), out(0x71, 0x16, 0x1030), hlt(0x1031)),
        state={"cr0": 0x60000010, "cs.selector": 0, "cs.base": 0, "ds.selector": 0, "ds.base": 0,
               "ss.selector": 0, "ss.base": 0, "gdt.base": 0x1031, "gdt.limit": 0x17, "rip": 0x1031},
    ),
    undefined_flags={"rflags": undefined_after("xor ax, ax")},
    covers=frozenset({"mode-switch"}),
)

# 64-bit -> 32-bit compatibility mode (retfq to selector 0x18, hvcore.x86's code32) -> 64-bit
# (a far jump to 0x08). Exits: OUT 0x72 0x33 (rip 0x1010), OUT 0x72 0x64 (rip 0x101B), HLT 0x101C.
LONG_TO_COMPAT = (
    b"\x48\x8d\x05\x05\x00\x00\x00"  # 1000 lea rax, [rip + compat]
    b"\x6a\x18"                      # 1007 push 0x18
    b"\x50"                          # 1009 push rax
    b"\x48\xcb"                      # 100A retfq
    b"\xb0\x33"                      # 100C compat: mov al, 0x33   (.code32)
    b"\xe6\x72"                      # 100E out 0x72, al
    b"\xea\x17\x10\x00\x00\x08\x00"  # 1010 jmp 0x08:back
    b"\xb0\x64"                      # 1017 back: mov al, 0x64   (.code64)
    b"\xe6\x72"                      # 1019 out 0x72, al
    b"\xf4"                          # 101B hlt
)

LONG_TO_COMPAT_CASE = Case(
    "long_to_compat_and_back",
    "64-bit code far-returns to 32-bit compatibility mode, which far-jumps back",
    "long",
    LONG_TO_COMPAT,
    expect=Outcome(
        steps=(out(0x72, 0x33, 0x1010), out(0x72, 0x64, 0x101B), hlt(0x101C)),
        state={"cs.selector": 0x08, "cs.l": 1, "rsp": STACK_TOP, "rax": 0x1064, "rip": 0x101C},
    ),
    covers=frozenset({"mode-switch"}),
)

# 32-bit protected mode turns on legacy (non-PAE) paging with 4 MiB pages (CR4.PSE): PD at DATA
# (host-written), PDE 0 and PDE 1 both map physical 0, so linear 0x410100 aliases 0x10100.
# Host: flat 32-bit, CPUID set (for PSE). Exits: OUT 0x70 size 4 0x12345678 (rip 0x102D), HLT 0x102E.
LEGACY_PAGING = (
    b"\x0f\x20\xe0"                              # 1000 mov eax, cr4
    b"\x83\xc8\x10"                              # 1003 or eax, 0x10
    b"\x0f\x22\xe0"                              # 1006 mov cr4, eax
    b"\xb8\x00\x00\x01\x00"                      # 1009 mov eax, 0x10000
    b"\x0f\x22\xd8"                              # 100E mov cr3, eax
    b"\x0f\x20\xc0"                              # 1011 mov eax, cr0
    b"\x0d\x00\x00\x00\x80"                      # 1014 or eax, 0x80000000
    b"\x0f\x22\xc0"                              # 1019 mov cr0, eax
    b"\xc7\x05\x00\x01\x41\x00\x78\x56\x34\x12"  # 101C mov dword ptr [0x410100], 0x12345678
    b"\xa1\x00\x01\x01\x00"                      # 1026 mov eax, dword ptr [0x10100]
    b"\xe7\x70"                                  # 102B out 0x70, eax
    b"\xf4"                                      # 102D hlt
)


def _pse_tables(host: Host) -> None:
    host.vcpu.set_cpuid(host.hv.supported_cpuid())
    host.write(DATA, words(0x83, 0x83, size=4))  # present, writable, 4 MiB page at 0


PROTECTED_LEGACY_PAGING = Case(
    "protected_legacy_paging",
    "32-bit code turns on non-PAE paging with 4 MiB pages and writes through an alias",
    "protected",
    LEGACY_PAGING,
    setup=_pse_tables,
    memory={"pd": (DATA, 8), "data": (DATA + 0x100, 4)},
    expect=Outcome(
        steps=(out(0x70, 0x12345678, 0x102D, size=4), hlt(0x102E)),
        state={"cr0": 0xE0000011, "cr3": DATA, "cr4": 0x10, "rax": 0x12345678},
        memory={"pd": words(0x83 | 0x20, 0x83 | 0x60, size=4), "data": (0x12345678).to_bytes(4, "little")},
    ),
    quirks=("legacy_paging_shutdown",),
    variants={
        "legacy_paging_shutdown": lambda o: replace(
            o,
            steps=(shutdown(0x1019),),
            state={**o.state, "cr0": 0x60000011, "cr3": DATA, "cr4": 0x10, "rax": 0xE0000011, "rip": 0x1019,
                   "rflags": 0x10086},
            memory={"pd": words(0x83, 0x83, size=4), "data": bytes(4)},
        )
    },
    undefined_flags={"rflags": undefined_after("or eax, 0x80000000")},  # before the mov to CR0 too
    covers=frozenset({"mode-switch", "paging"}),
)

# --- from the reset vector -----------------------------------------------------------------------------


def _boot_script(host: Host, exit_: Exit) -> None:
    if isinstance(exit_, IoExit) and exit_.port == boot.CR2_PORT:
        host.note("#PF frame", host.read(0x8000 - 48, 48))
    elif isinstance(exit_, IoExit) and exit_.port == boot.READY_PORT:
        host.vcpu.request_interrupt_window = True
    elif exit_.reason == 7:  # IRQ_WINDOW_OPEN
        host.vcpu.interrupt(0x20)
        host.vcpu.request_interrupt_window = False
    elif isinstance(exit_, HltExit) or exit_.reason in (8, 17):
        host.stop()


RESET_BOOT = Case(
    "reset_boot_to_long_mode",
    "firmware in a read-only ROM boots from the reset vector to long mode, takes a #PF and an interrupt",
    "reset",
    boot.BOOT,
    slots=(
        SlotSpec(0, 0, boot.BOOT_RAM_SIZE, contents=((boot.DEMAND_PAGE, boot.DEMAND_VALUE.to_bytes(8, "little")),)),
        SlotSpec(1, boot.ROM_BASE, boot.ROM_SIZE, SlotFlags.READONLY, contents=((0, boot.rom_image()),)),
    ),
    script=_boot_script,
    memory={"stack": (0x8000 - 48, 48), "rom gdt": (boot.BOOT_GDT, 0x28), "pd": (0xB000, 16)},
    expect=Outcome(
        steps=(
            out(boot.CR2_PORT, boot.DEMAND_PAGE, 0xFFFFE0F3, size=4),
            out(boot.ERROR_CODE_PORT, 0, 0xFFFFE0F6, size=4),
            out(boot.READY_PORT, 1, 0xFFFFE0EB),
            window(boot.BOOT_SPIN),
            out(boot.IRQ_PORT, 0x20, 0xFFFFE107),
            mmio_write(boot.BOOT_MMIO, boot.DEMAND_VALUE, 0xFFFFE10F, length=8),
            hlt(boot.BOOT_HLT_END),
        ),
        state={"rax": 0x20, "rbx": boot.DEMAND_VALUE, "rcx": 0xC0000080, "rdx": 0, "rdi": boot.BOOT_MMIO,
               "rsp": 0x7FD8, "rip": boot.BOOT_HLT_END, "rflags": 0x46, "cs.selector": 0x18, "cs.l": 1,
               "ss.selector": 0x10, "cr0": 0xE0000011, "cr2": boot.DEMAND_PAGE, "cr3": 0x9000, "cr4": 0x20,
               "efer": 0x500, "gdt.base": boot.BOOT_GDT, "gdt.limit": 0x1F, "idt.base": boot.BOOT_IDT,
               "idt.limit": 0xFFF},
        memory={
            "stack": words(0, boot.BOOT_SPIN, 0x18, 0x246, 0x8000, 0x10, size=8),  # the interrupt's frame
            "rom gdt": boot.rom_image()[boot.BOOT_GDT - boot.ROM_BASE :][:0x28],  # unchanged: accessed bits preset
            "pd": words(0x83 | 0x60, boot.DEMAND_PAGE | 0x83 | 0x20, size=8),
        },
        notes=((0, "#PF frame", words(0, boot.BOOT_FAULT, 0x18, 0x10046, 0x8000, 0x10, size=8)),),
    ),
    covers=frozenset({"mode-switch", "paging", "interrupt-window", "readonly-slot", "mmio"}),
)

# --- dirty logging -------------------------------------------------------------------------------------

SPLIT_RAM = (
    SlotSpec(0, 0, DATA),
    SlotSpec(1, DATA, layout.DATA_SIZE, SlotFlags.LOG_DIRTY_PAGES, contents=((0x3000, b"\x5c"), (0x7000, b"\x5c"))),
    SlotSpec(2, DATA + layout.DATA_SIZE, layout.RAM_SIZE - DATA - layout.DATA_SIZE),
)
"""RAM split in three slots: the code's, DATA's (logging dirty pages, nothing but data in it) and the rest."""

def _writes_only(pages: dict[int, tuple[int, ...]], notes: tuple[Note, ...] = ()) -> Callable[[Outcome], Outcome]:
    """The ``first_access_logged: writes_only`` outcome: the read-only pages' first accesses are not logged."""

    def effect(outcome: Outcome) -> Outcome:
        return replace(outcome, dirty=pages, notes=notes or outcome.notes)

    return effect


REAL_DIRTY_PAGES = Case(
    "real_dirty_pages",
    "writes to two pages of a logging slot are logged, and so is the first read of a third the host wrote",
    "real",
    real_mode.DIRTY_PAGES,
    slots=SPLIT_RAM,
    expect=Outcome(steps=(hlt(0x1016),), state={"rax": 0x105C}, dirty={1: (DATA, DATA + 0x2000, DATA + 0x3000)}),
    quirks=("first_access_logged",),
    variants={"first_access_logged": _writes_only({1: (DATA, DATA + 0x2000)})},
    covers=frozenset({"dirty-log"}),
)

# 64-bit: writes to DATA pages 0 and 1, OUT (the host reads and so clears the log), writes to page 1
# again and, with `rep stosq`, across pages 5 and 6, reads page 7, OUT (the host reads the log), HLT.
# Exits: OUT 0x60 0 (rip 0x1012), OUT 0x60 0x5C (rip 0x1039), HLT 0x103A; the final log is empty.
DIRTY_CLEARS = (
    b"\xc6\x04\x25\x00\x00\x01\x00\x01"  # 1000 mov byte ptr [0x10000], 1
    b"\xc6\x04\x25\xff\x1f\x01\x00\x02"  # 1008 mov byte ptr [0x11fff], 2
    b"\xe6\x60"                          # 1010 out 0x60, al
    b"\xc6\x04\x25\x00\x10\x01\x00\x03"  # 1012 mov byte ptr [0x11000], 3
    b"\x48\xc7\xc7\xf8\x5f\x01\x00"      # 101A mov rdi, 0x15ff8
    b"\x48\xc7\xc0\xff\xff\xff\xff"      # 1021 mov rax, -1
    b"\xb9\x02\x00\x00\x00"              # 1028 mov ecx, 2
    b"\xf3\x48\xab"                      # 102D rep stosq
    b"\x8b\x04\x25\x00\x70\x01\x00"      # 1030 mov eax, [0x17000]
    b"\xe6\x60"                          # 1037 out 0x60, al
    b"\xf4"                              # 1039 hlt
)


def _note_dirty(host: Host) -> None:
    host.note("dirty", host.dirty_pages(1))


LONG_DIRTY_CLEARS = Case(
    "long_dirty_log_clears",
    "reading the dirty log clears it; a string store logs both pages it spans; a first read of a host-written page "
    "is logged",
    "long",
    DIRTY_CLEARS,
    slots=SPLIT_RAM,
    script=script(actions={0: _note_dirty, 1: _note_dirty}),
    memory={"data": (DATA + 0x5FF8, 16)},
    expect=Outcome(
        steps=(out(0x60, 0, 0x1012), out(0x60, 0x5C, 0x1039), hlt(0x103A)),
        state={"rax": 0x5C, "rcx": 0, "rdi": DATA + 0x6008},
        memory={"data": b"\xff" * 16},
        dirty={1: ()},
        notes=(
            (0, "dirty", (DATA, DATA + 0x1000)),
            (1, "dirty", (DATA + 0x1000, DATA + 0x5000, DATA + 0x6000, DATA + 0x7000)),
        ),
    ),
    quirks=("first_access_logged",),
    variants={
        "first_access_logged": _writes_only(
            {1: ()}, ((0, "dirty", (DATA, DATA + 0x1000)), (1, "dirty", (DATA + 0x1000, DATA + 0x5000, DATA + 0x6000)))
        )
    },
    covers=frozenset({"dirty-log", "string-io"}),
)

LONG_PAGE_TABLES_LOGGED = Case(
    "long_page_table_bits_logged",
    "page tables in a logging slot: the accessed/dirty bits the MMU sets are logged",
    "long",
    b"\x48\x89\x04\x25\x00\x00\x01\x00"  # 1000 mov qword ptr [0x10000], rax
    b"\xf4",  # 1008 hlt
    slots=(
        SlotSpec(0, 0, layout.PML4),
        SlotSpec(1, layout.PML4, DATA - layout.PML4, SlotFlags.LOG_DIRTY_PAGES),
        SlotSpec(2, DATA, layout.RAM_SIZE - DATA),
    ),
    memory={"pd": (layout.PD, 8)},
    expect=Outcome(
        steps=(hlt(0x1009),),
        memory={"pd": (0x7 | 0x80 | 0x60).to_bytes(8, "little")},  # the 2 MiB page: accessed, dirty
        dirty={1: (layout.PML4, layout.PDPT, layout.PD)},
    ),
    quirks=("page_table_writes_not_logged",),
    covers=frozenset({"dirty-log", "paging"}),
)

CASES = (
    REAL_TO_LONG_CASE,
    PROTECTED_TO_REAL_CASE,
    LONG_TO_COMPAT_CASE,
    PROTECTED_LEGACY_PAGING,
    RESET_BOOT,
    REAL_DIRTY_PAGES,
    LONG_DIRTY_CLEARS,
    LONG_PAGE_TABLES_LOGGED,
)
