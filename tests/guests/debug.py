"""Guests for guest debugging (``KVM_SET_GUEST_DEBUG``): hardware breakpoints, watchpoints, ``int3``.

Each is loaded at ``layout.CODE`` (0x1000) and started there in the mode its comment names
(``tests.boot.boot``; 64-bit ones at CPL 0 with the identity map of ``layout``). Each byte
literal is one instruction, assembled with GNU as (Intel syntax) at 0x1000; the trailing
comment is the source line with its address. "Upstream" is what KVM on VMX/SVM gives (the
simulator too); tests/test_debug.py asserts it, or the host's registered variant.
"""

from tests.guests import layout

# 64-bit. `cmp` sets ZF; an execute breakpoint on the `je` after it stops the guest there; the
# `je` must still see ZF when the guest runs on, so only the 0x42 path is taken.
# Host: debugreg[i] = BREAK_AT, DR7 with Gi (R/W 00, LEN 00).
# Upstream exits: DEBUG exception 1, pc 0x1008, dr6 0xffff0ff0 | 1 << i, dr7 = debugreg[7]
# (RIP 0x1008, eax 1), the same again on every run; with RFLAGS.RF set: OUT 0x80 data 0x42, HLT.
EXECUTE = (
    b"\xb8\x01\x00\x00\x00"  # 1000 mov eax, 1
    b"\x83\xf8\x01"          # 1005 cmp eax, 1
    b"\x74\x04"              # 1008 je ok          <- execute breakpoint
    b"\xb0\xee"              # 100a mov al, 0xee
    b"\xe6\x80"              # 100c out 0x80, al
    b"\xb0\x42"              # 100e ok: mov al, 0x42
    b"\xe6\x80"              # 1010 out 0x80, al
    b"\xf4"                  # 1012 hlt
)  # fmt: skip
BREAK_AT = layout.CODE + 0x8

# Real mode with CS = 0x0100 (base 0x1000) and IP = 0: linear addresses are CS base + IP.
# Host: cs.selector 0x100, cs.base 0x1000, rip 0; an execute breakpoint at linear 0x1003.
# Upstream exits: DEBUG exception 1, pc 0x1003 (rip 3); single-stepping instead: pc 0x1003, 0x1004, 0x1006.
SEGMENTED = (
    b"\xb8\x01\x00"  # 0000 mov ax, 1
    b"\x90"          # 0003 nop        <- execute breakpoint at linear 0x1003
    b"\xe6\x80"      # 0004 out 0x80, al
    b"\xf4"          # 0006 hlt
)  # fmt: skip
SEGMENT_BASE = 0x1000

# 64-bit: writes beside the watched dword, reads it, then writes its upper half. DATA starts zeroed.
# A 4-byte write watchpoint on DATA (or DATA + 1, which the processor aligns down) fires after
# the word store only; a read/write watchpoint of 8 bytes on DATA after the load and the word store
# (the dword at DATA + 8 is outside both).
# Upstream exits, write watchpoint: DEBUG pc 0x101b; OUT 0x80 data 0x44; HLT.
# Read/write watchpoint: DEBUG pc 0x1013; DEBUG pc 0x101b; OUT 0x80 data 0x44; HLT.
# Either way: [DATA] = 0x33440000, [DATA + 8] = 0x11223344, ebx = 0.
WATCHED = (
    b"\xb8\x44\x33\x22\x11"                  # 1000 mov eax, 0x11223344
    b"\x89\x04\x25\x08\x00\x01\x00"          # 1005 mov dword ptr [0x10008], eax
    b"\x8b\x1c\x25\x00\x00\x01\x00"          # 100c mov ebx, dword ptr [0x10000]   <- a read
    b"\x66\x89\x04\x25\x02\x00\x01\x00"      # 1013 mov word ptr [0x10002], ax     <- a write
    b"\xe6\x80"                              # 101b out 0x80, al
    b"\xf4"                                  # 101d hlt
)  # fmt: skip
AFTER_READ = layout.CODE + 0x13
AFTER_WRITE = layout.CODE + 0x1B

# 64-bit, through a second mapping of the first GiB at 1 GiB (the host copies PDPT[0] to PDPT[1]):
# the store to linear 0x40010000 lands in DATA. A write watchpoint on linear ALIAS fires; one on an
# unmapped linear address (2 GiB, PDPT[2] is empty) never does.
# Upstream exits: DEBUG pc 0x100c (dr6 B of the ALIAS watchpoint only); OUT 0x80 data 0x88; HLT.
ALIASED = (
    b"\xb8\x88\x77\x66\x55"              # 1000 mov eax, 0x55667788
    b"\x89\x04\x25\x00\x00\x01\x40"      # 1005 mov dword ptr [0x40010000], eax
    b"\xe6\x80"                          # 100c out 0x80, al
    b"\xf4"                              # 100e hlt
)  # fmt: skip
ALIAS = 0x40000000 + layout.DATA
UNMAPPED = 0x80000000

# 64-bit port IO under I/O breakpoints on both ports (CR4.DE, R/W 10).
# Exits, upstream and every host: OUT 0x80 data 1; IN 0x71 (size 1); HLT. KVM intercepts every port
# access and completes it without looking at DR7, so no DEBUG exit comes.
PORT_IO = (
    b"\xb0\x01"  # 1000 mov al, 1
    b"\xe6\x80"  # 1002 out 0x80, al
    b"\xe4\x71"  # 1004 in al, 0x71
    b"\xf4"      # 1006 hlt
)  # fmt: skip

# Real mode (CS = 0): an int3, and handlers for #BP and #DB that report and halt. The host points
# IVT[3] at BP_HANDLER and IVT[1] at DB_HANDLER; SS:SP = 0:STACK_TOP, so a frame is IP, CS, FLAGS
# at STACK_TOP - 6.
# With USE_SW_BP, upstream: DEBUG exception 3, pc 0x1001, RIP 0x1001 (nothing delivered); with RIP
# moved to 0x1002: OUT 0x81 data 1, HLT. Without guest debug: OUT 0x83 data 3, HLT (frame IP 0x1002).
# An injected #DB: OUT 0x83 data 1, HLT.
INT3 = (
    b"\x90"              # 1000 nop
    b"\xcc"              # 1001 int3
    b"\xb0\x01"          # 1002 mov al, 1
    b"\xe6\x81"          # 1004 out 0x81, al
    b"\xf4"              # 1006 hlt
    + bytes(9)           # 1007 (padding)
    + b"\xb0\x03"        # 1010 bp_handler: mov al, 3
    b"\xe6\x83"          # 1012 out 0x83, al
    b"\xf4"              # 1014 hlt
    + bytes(3)           # 1015 (padding)
    + b"\xb0\x01"        # 1018 db_handler: mov al, 1
    b"\xe6\x83"          # 101a out 0x83, al
    b"\xf4"              # 101c hlt
)  # fmt: skip
INT3_AT = layout.CODE + 1
BP_HANDLER = layout.CODE + 0x10
DB_HANDLER = layout.CODE + 0x18
