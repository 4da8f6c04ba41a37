"""Guests for the boot test and the exception-delivery tests, as `bytes`.

Each byte literal is one instruction (or one datum), assembled with GNU as (Intel syntax,
``.code16`` / ``.code32`` / ``.code64`` as the comment says); the trailing comment is the
source line. The comment above each guest says what the host must set up and the exact exit
sequence it sees.

**BOOT** is firmware: it starts from the reset vector and needs no vCPU set-up at all::

    0x00000000  RAM, slot 0, BOOT_RAM_SIZE (4 MiB)
       0x3000   IDT built by the guest (gates 14 and 0x20)
       0x8000   stack top
       0x9000   PML4 -> 0xA000 PDPT -> 0xB000 PD (0-2 MiB: one 2 MiB page; 2-4 MiB: PD[1] not present)
                  and PDPT[3] -> 0xC000 PD of the 4th GiB: MMIO (0xD0000000) and ROM pages
     0x200000   DEMAND_PAGE: mapped only by the #PF handler; the host puts DEMAND_VALUE there
    0xD0000000  MMIO (no slot)
    0xFFFF0000  ROM, slot 1, read-only, 64 KiB: BOOT at 0xFFFFE000, RESET_VECTOR at 0xFFFFFFF0

**Exception guests** run at ``layout.CODE`` in the mode their comment says; their handlers
are :func:`vector_stub` copies, one per vector at ``STUBS + 8 * vector``, each reporting its
vector with one OUT to ``EVENT_PORT`` and halting.
"""

ROM_BASE = 0xFFFF0000
ROM_SIZE = 0x10000
BOOT_ENTRY = 0xFFFFE000
RESET = 0xFFFFFFF0
BOOT_RAM_SIZE = 0x400000
BOOT_IDT = 0x3000
DEMAND_PAGE = 0x200000
BOOT_MMIO = 0xD0000000
CR2_PORT, ERROR_CODE_PORT, READY_PORT, IRQ_PORT = 0x10, 0x11, 0x12, 0x13
BOOT_GDT = 0xFFFFE110
BOOT_FAULT = 0xFFFFE0DF
"""RIP of the `mov rbx, [DEMAND_PAGE]` that page-faults (and runs again after the handler's iretq)."""
BOOT_SPIN = 0xFFFFE0EC
BOOT_HLT_END = 0xFFFFE110
"""RIP after the final hlt."""

# Reset vector -> real mode -> 32-bit protected mode -> long mode with paging, all from ROM.
# Real mode (CS.base = 0xFFFF0000 from reset, so IP 0xE000 is linear 0xFFFFE000): lgdt with a
# 32-bit base through a CS override, CR0.PE, far jump to 0x08 (flat 32-bit code). 32-bit: flat
# data, stack 0x8000, identity page tables in RAM (see above), CR4.PAE, CR3, EFER.LME with
# rdmsr/wrmsr (needs set_cpuid), CR0.PG, far jump to 0x18 (64-bit code). 64-bit: IDT gates 14
# and 0x20 (selector 0x18, interrupt gates) built at BOOT_IDT from the handlers' addresses,
# lidt, then a read of DEMAND_PAGE: #PF. The handler sends CR2 and the error code, maps PD[1]
# and iretqs to the faulting instruction, which now loads DEMAND_VALUE into rbx. Then the guest
# reports ready, sti, spins. The interrupt-0x20 handler sends a marker, writes rbx to MMIO, halts.
# The GDT's descriptors have their accessed bits set, so loading them writes nothing to ROM.
# Host: RAM (BOOT_RAM_SIZE) at 0, rom_image() read-only at ROM_BASE, DEMAND_VALUE at
# DEMAND_PAGE, set_cpuid(supported_cpuid()); the vCPU stays in its reset state.
# Exits (rip, rsp, rflags at each exit):
#   1. OUT CR2_PORT size 4 data 0x200000             0xFFFFE0F3 0x7FD0 0x46
#      (the #PF frame at 0x7FD0: error 0, RIP 0xFFFFE0DF, CS 0x18, RFLAGS 0x10046, RSP 0x8000, SS 0x10)
#   2. OUT ERROR_CODE_PORT size 4 data 0             0xFFFFE0F6 0x7FD8 0x46
#   3. OUT READY_PORT size 1 data 1                  0xFFFFE0EB 0x8000 0x46   (RF cleared again)
#      host: request_interrupt_window = True
#   4. IRQ_WINDOW_OPEN                               0xFFFFE0EC 0x8000 0x246
#      host: interrupt(0x20), request_interrupt_window = False
#   5. OUT IRQ_PORT size 1 data 0x20                 0xFFFFE107 0x7FD8 0x46
#   6. MMIO write BOOT_MMIO len 8 data DEMAND_VALUE  0xFFFFE10F 0x7FD8 0x46
#   7. HLT                                           0xFFFFE110 0x7FD8 0x46
# Final: rax 0x20, rbx DEMAND_VALUE, rcx 0xC0000080, rdx 0, rdi 0xD0000000; CS 0x18 (L=1),
# SS 0x10, CR0 0xE0000011, CR3 0x9000, CR4 0x20, EFER 0x500, CR2 0x200000,
# GDT (0xFFFFE110, 0x1F), IDT (0x3000, 0xFFF); ROM unchanged.
# Measured on this host's KVM: exactly that (iretq at CPL0 works in its emulator).
DEMAND_VALUE = 0x1122334455667788
BOOT = (
    b"\xfa"                                          # FFFFE000 start16: cli
    b"\x2e\x66\x0f\x01\x16\x30\xe1"                  # FFFFE001 lgdt cs:[gdtr]  (o32: 32-bit base)
    b"\x0f\x20\xc0"                                  # FFFFE008 mov eax, cr0
    b"\x0c\x01"                                      # FFFFE00B or al, 1
    b"\x0f\x22\xc0"                                  # FFFFE00D mov cr0, eax
    b"\x66\xea\x18\xe0\xff\xff\x08\x00"              # FFFFE010 jmp dword 0x08:start32
    b"\x66\xb8\x10\x00"                              # FFFFE018 start32: mov ax, 0x10
    b"\x8e\xd8"                                      # FFFFE01C mov ds, ax
    b"\x8e\xc0"                                      # FFFFE01E mov es, ax
    b"\x8e\xd0"                                      # FFFFE020 mov ss, ax
    b"\xbc\x00\x80\x00\x00"                          # FFFFE022 mov esp, 0x8000
    b"\xc7\x05\x00\x90\x00\x00\x03\xa0\x00\x00"      # FFFFE027 mov dword ptr [0x9000], 0xA003
    b"\xc7\x05\x00\xa0\x00\x00\x03\xb0\x00\x00"      # FFFFE031 mov dword ptr [0xA000], 0xB003
    b"\xc7\x05\x18\xa0\x00\x00\x03\xc0\x00\x00"      # FFFFE03B mov dword ptr [0xA018], 0xC003
    b"\xc7\x05\x00\xb0\x00\x00\x83\x00\x00\x00"      # FFFFE045 mov dword ptr [0xB000], 0x83
    b"\xc7\x05\x00\xc4\x00\x00\x83\x00\x00\xd0"      # FFFFE04F mov dword ptr [0xC400], 0xD0000083
    b"\xc7\x05\xf8\xcf\x00\x00\x83\x00\xe0\xff"      # FFFFE059 mov dword ptr [0xCFF8], 0xFFE00083
    b"\x0f\x20\xe0"                                  # FFFFE063 mov eax, cr4
    b"\x83\xc8\x20"                                  # FFFFE066 or eax, 0x20
    b"\x0f\x22\xe0"                                  # FFFFE069 mov cr4, eax
    b"\xb8\x00\x90\x00\x00"                          # FFFFE06C mov eax, 0x9000
    b"\x0f\x22\xd8"                                  # FFFFE071 mov cr3, eax
    b"\xb9\x80\x00\x00\xc0"                          # FFFFE074 mov ecx, 0xC0000080
    b"\x0f\x32"                                      # FFFFE079 rdmsr
    b"\x0d\x00\x01\x00\x00"                          # FFFFE07B or eax, 0x100
    b"\x0f\x30"                                      # FFFFE080 wrmsr
    b"\x0f\x20\xc0"                                  # FFFFE082 mov eax, cr0
    b"\x0d\x00\x00\x00\x80"                          # FFFFE085 or eax, 0x80000000
    b"\x0f\x22\xc0"                                  # FFFFE08A mov cr0, eax
    b"\xea\x94\xe0\xff\xff\x18\x00"                  # FFFFE08D jmp 0x18:start64
    b"\x48\x8d\x05\x53\x00\x00\x00"                  # FFFFE094 start64: lea rax, [rip + pf_handler]
    b"\x89\x04\x25\xe4\x30\x00\x00"                  # FFFFE09B mov dword ptr [0x30E4], eax
    b"\x66\x89\x04\x25\xe0\x30\x00\x00"              # FFFFE0A2 mov word ptr [0x30E0], ax
    b"\xc7\x04\x25\xe2\x30\x00\x00\x18\x00\x00\x8e"  # FFFFE0AA mov dword ptr [0x30E2], 0x8E000018
    b"\x48\x8d\x05\x47\x00\x00\x00"                  # FFFFE0B5 lea rax, [rip + irq_handler]
    b"\x89\x04\x25\x04\x32\x00\x00"                  # FFFFE0BC mov dword ptr [0x3204], eax
    b"\x66\x89\x04\x25\x00\x32\x00\x00"              # FFFFE0C3 mov word ptr [0x3200], ax
    b"\xc7\x04\x25\x02\x32\x00\x00\x18\x00\x00\x8e"  # FFFFE0CB mov dword ptr [0x3202], 0x8E000018
    b"\x0f\x01\x1d\x59\x00\x00\x00"                  # FFFFE0D6 lidt [rip + idtr]
    b"\x39\xc0"                                      # FFFFE0DD cmp eax, eax
    b"\x48\x8b\x1c\x25\x00\x00\x20\x00"              # FFFFE0DF fault: mov rbx, [0x200000]  (#PF: PD[1] not present)
    b"\xb0\x01"                                      # FFFFE0E7 mov al, 1
    b"\xe6\x12"                                      # FFFFE0E9 out 0x12, al
    b"\xfb"                                          # FFFFE0EB sti
    b"\xeb\xfe"                                      # FFFFE0EC spin: jmp spin
    b"\x0f\x20\xd0"                                  # FFFFE0EE pf_handler: mov rax, cr2
    b"\xe7\x10"                                      # FFFFE0F1 out 0x10, eax
    b"\x58"                                          # FFFFE0F3 pop rax
    b"\xe7\x11"                                      # FFFFE0F4 out 0x11, eax
    b"\xc7\x04\x25\x08\xb0\x00\x00\x83\x00\x20\x00"  # FFFFE0F6 mov dword ptr [0xB008], 0x200083
    b"\x48\xcf"                                      # FFFFE101 iretq
    b"\xb0\x20"                                      # FFFFE103 irq_handler: mov al, 0x20
    b"\xe6\x13"                                      # FFFFE105 out 0x13, al
    b"\xbf\x00\x00\x00\xd0"                          # FFFFE107 mov edi, 0xD0000000
    b"\x48\x89\x1f"                                  # FFFFE10C mov [rdi], rbx
    b"\xf4"                                          # FFFFE10F hlt
    b"\x00\x00\x00\x00\x00\x00\x00\x00"              # FFFFE110 gdt: .quad 0
    b"\xff\xff\x00\x00\x00\x9b\xcf\x00"              # FFFFE118 .quad 0x00CF9B000000FFFF
    b"\xff\xff\x00\x00\x00\x93\xcf\x00"              # FFFFE120 .quad 0x00CF93000000FFFF
    b"\xff\xff\x00\x00\x00\x9b\xaf\x00"              # FFFFE128 .quad 0x00AF9B000000FFFF
    b"\x1f\x00"                                      # FFFFE130 gdtr: .word 0x1F
    b"\x10\xe1\xff\xff"                              # FFFFE132 .long gdt  (0xFFFFE110)
    b"\xff\x0f"                                      # FFFFE136 idtr: .word 0xFFF
    b"\x00\x30\x00\x00\x00\x00\x00\x00"              # FFFFE138 .quad 0x3000
)

# At 0xFFFFFFF0, the first instruction after reset (.code16): a near jump keeps CS.base.
RESET_VECTOR = (
    b"\xe9\x0d\xe0"                                  # FFFFFFF0 reset: jmp start16
)


def rom_image() -> bytes:
    """The 64 KiB ROM: BOOT at BOOT_ENTRY, RESET_VECTOR at RESET, zeros elsewhere."""
    image = bytearray(ROM_SIZE)
    image[BOOT_ENTRY - ROM_BASE : BOOT_ENTRY - ROM_BASE + len(BOOT)] = BOOT
    image[RESET - ROM_BASE : RESET - ROM_BASE + len(RESET_VECTOR)] = RESET_VECTOR
    return bytes(image)


# --- exception guests ------------------------------------------------------------------------

EVENT_PORT = 0xE0
STUBS = 0x2000
"""Guest-physical address of the handler stubs (vector v at STUBS + 8 * v)."""


def vector_stub(vector: int) -> bytes:
    """A handler that reports ``vector`` and halts; the same bytes in 16-, 32- and 64-bit code."""
    return (
        b"\xb0" + bytes([vector])  # mov al, vector
        + b"\xe6\xe0"  # out EVENT_PORT, al
        + b"\xf4"  # hlt
    )


# Every exception guest below: the host installs a vector_stub per vector (IVT entries
# 0x200:8v in real mode; 16-byte interrupt gates in 64-bit mode, with a 64-bit TSS in TR for
# RSP0/IST), so a delivery gives exactly the exits OUT EVENT_PORT size 1 data <vector>, HLT.
# Frames are listed lowest address first.

# Real mode, rip=CODE, FLAGS 0x202: `int 0x21`.
# Exits: OUT 0x21, HLT; frame IP CODE+2, CS 0, FLAGS 0x202; the handler runs with IF clear.
# Measured on this host's KVM: exactly that, with the IVT at 0 and at IDTR.base = 0x10000.
# Host quirk: IDTR.limit is ignored (0x83 still vectors 0x21; upstream: #GP, vector 13, IP CODE).
INT21 = (
    b"\xcd\x21"  # int 0x21
    b"\xf4"      # hlt
)

# Real mode, rip=CODE, FLAGS 0x202: #DE from `div cx` (a fault: the frame's IP is the div).
# Exits: OUT 0, HLT; frame IP CODE+2, CS 0, FLAGS 0x246. With IDTR.limit = 0 upstream
# triple-faults (SHUTDOWN); this host's KVM ignores the limit and delivers it.
# Measured on this host's KVM: exactly that.
DIVIDE_ERROR = (
    b"\x31\xc9"  # xor cx, cx
    b"\xf7\xf1"  # div cx
    b"\xf4"      # hlt
)

# 64-bit CPL3, rip=CODE, RFLAGS 0x2: `int 0x80`. Upstream, through a DPL3 gate: OUT 0x80, HLT,
# frame on RSP0 RIP CODE+2, CS 0x2B, RFLAGS 0x2, RSP, SS 0x23; through a DPL0 gate: OUT 13
# (#GP, error 0x402, RIP CODE). Host quirk measured here: #UD on the int (OUT 6, RIP CODE,
# RFLAGS 0x10002) whatever the gate; `int 0x21` and `int 0x0d` do the same.
INT80 = (
    b"\xcd\x80"  # int 0x80
    b"\xf4"      # hlt
)

# 64-bit CPL3, rip=CODE: `int3`, a trap: OUT 3, HLT, frame RIP CODE+1, RFLAGS without RF.
# Upstream through a DPL0 gate: #GP(0x1A) on the int3. Host quirk measured here: #BP anyway.
# (At CPL0 this host's emulator refuses int3 with INTERNAL_ERROR.)
INT3 = (
    b"\xcc"  # int3
    b"\xf4"  # hlt
)

# 64-bit, rip=CODE: #UD. Exits: OUT 6, HLT; frame RIP CODE, RFLAGS = the old one | RF.
# Measured on this host's KVM: exactly that at CPL3 and CPL0.
UD2 = (
    b"\x0f\x0b"  # ud2
    b"\xf4"      # hlt
)

# 64-bit CPL3, rip=CODE: loading DS with the DPL0 data selector 0x10.
# Exits: OUT 13, HLT; frame error 0x10, RIP CODE+4, CS 0x2B, RFLAGS 0x10002, RSP, SS 0x23.
# Measured on this host's KVM: exactly that.
LOAD_KERNEL_DS = (
    b"\x66\xb8\x10\x00"  # mov ax, 0x10
    b"\x8e\xd8"          # mov ds, ax
    b"\xf4"              # hlt
)

# 64-bit, rip=CODE: a non-canonical read. Exits: OUT 13, HLT; frame error 0, RIP CODE+10.
# Measured on this host's KVM: exactly that at CPL3 and CPL0.
NONCANONICAL_READ = (
    b"\x48\xb8\x00\x00\x00\x00\x00\x00\x00\x80"  # mov rax, 0x8000000000000000
    b"\x48\x8b\x00"                              # mov rax, [rax]
    b"\xf4"                                      # hlt
)

# 64-bit, rip=CODE: a read / write of UNMAPPED, beyond the identity map of the first GiB.
# Exits: OUT 14, HLT; CR2 = UNMAPPED; frame error 4 / 6 at CPL3, 0 / 2 at CPL0, RIP CODE.
# Measured on this host's KVM: exactly that.
UNMAPPED = 0x40000000
READ_UNMAPPED = (
    b"\x48\x8b\x04\x25\x00\x00\x00\x40"  # mov rax, [0x40000000]
    b"\xf4"                              # hlt
)
WRITE_UNMAPPED = (
    b"\xc6\x04\x25\x00\x00\x00\x40\x01"  # mov byte ptr [0x40000000], 1
    b"\xf4"                              # hlt
)
