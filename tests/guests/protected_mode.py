"""32-bit protected-mode x86 guest programs, as `bytes`.

Each guest is loaded at ``layout.CODE`` (0x1000) and started at EIP = 0x1000 with flat
4 GiB code (32-bit) and data segments and paging off (CR0.PE = 1, CR0.PG = 0). The guests
do not depend on the GDT contents. The comment above each guest says what the host must
set up and the exact exit sequence it sees. Each byte literal is one instruction,
assembled with GNU as (``.code32``, Intel syntax) at 0x1000; the trailing comment is the
source line.
"""

# MMIO writes of 1, 2, 4 and 8 bytes, then MMIO reads of 1, 2, 4 and 8 bytes into
# registers, then the read values are sent to port 0x30, then hlt.
# Flat addresses (MMIO + offset, DATA + offset).
# The 8-byte accesses use MMX `movq` (0F 6F / 0F 7F), which KVM's instruction emulator
# supports in every mode (no CR4 setup needed; CR0.EM and CR0.TS must be 0, as they are
# after reset). The 8-byte value written comes from DATA[0:8], which the guest fills first
# (plain RAM writes, no exit); the 8-byte value read is stored to DATA[8:16] (RAM) before
# being sent out. Alternatives measured on this host: `movq xmm0, m64` (F3 0F 7E) ->
# INTERNAL_ERROR (emulation failure) even with CR4.OSFXSR; `movdqu` (with CR4.OSFXSR) gives
# two 8-byte MMIO exits (16 bytes); `cmpxchg8b` gives an 8-byte read exit then always an
# 8-byte write exit (of the new value if equal, of the value read back if not).
# Host: 32-bit protected mode, flat segments, paging off, rip=CODE; no register presets.
# No memory slot may cover MMIO (0xD0000).
# Exits (the host answers the reads; suggested answers shown as A1/A2/A4/A8):
#    1. MMIO write 0xD0000 len 1 data 0x12
#    2. MMIO write 0xD0008 len 2 data 0x3456
#    3. MMIO write 0xD0010 len 4 data 0x789ABCDE
#    4. MMIO write 0xD0018 len 8 data 0x1122334455667788
#    5. MMIO read  0xD0020 len 1   -> A1 (e.g. 0xA1)                 into bl
#    6. MMIO read  0xD0028 len 2   -> A2 (e.g. 0xB2C3)               into cx
#    7. MMIO read  0xD0030 len 4   -> A4 (e.g. 0xD4E5F607)           into esi
#    8. MMIO read  0xD0038 len 8   -> A8 (e.g. 0x0123456789ABCDEF)   into mm1
#    9. OUT port 0x30 size 1 data A1   (get_regs here: bl=A1, cx=A2, esi=A4)
#   10. OUT port 0x30 size 2 data A2
#   11. OUT port 0x30 size 4 data A4
#   12. OUT port 0x30 size 4 data A8 & 0xFFFFFFFF
#   13. OUT port 0x30 size 4 data A8 >> 32
#   14. HLT
# After HLT, DATA[8:16] = A8 (little-endian).
# Each read exit leaves rip at the reading instruction; the value lands on the next run.
# Measured on this host's KVM: exactly that sequence,
# with 8-byte exits from MMX movq (no CPUID or CR4 setup needed).
MMIO_RW = (
    b"\xc7\x05\x00\x00\x01\x00\x88\x77\x66\x55"  # mov dword ptr ds:[0x10000], 0x55667788
    b"\xc7\x05\x04\x00\x01\x00\x44\x33\x22\x11"  # mov dword ptr ds:[0x10004], 0x11223344
    b"\xc6\x05\x00\x00\x0d\x00\x12"              # mov byte ptr ds:[0xD0000], 0x12
    b"\x66\xc7\x05\x08\x00\x0d\x00\x56\x34"      # mov word ptr ds:[0xD0008], 0x3456
    b"\xc7\x05\x10\x00\x0d\x00\xde\xbc\x9a\x78"  # mov dword ptr ds:[0xD0010], 0x789ABCDE
    b"\x0f\x6f\x05\x00\x00\x01\x00"              # movq mm0, ds:[0x10000]
    b"\x0f\x7f\x05\x18\x00\x0d\x00"              # movq ds:[0xD0018], mm0
    b"\x8a\x1d\x20\x00\x0d\x00"                  # mov bl, ds:[0xD0020]
    b"\x66\x8b\x0d\x28\x00\x0d\x00"              # mov cx, ds:[0xD0028]
    b"\x8b\x35\x30\x00\x0d\x00"                  # mov esi, ds:[0xD0030]
    b"\x0f\x6f\x0d\x38\x00\x0d\x00"              # movq mm1, ds:[0xD0038]
    b"\x0f\x7f\x0d\x08\x00\x01\x00"              # movq ds:[0x10008], mm1
    b"\x88\xd8"                                  # mov al, bl
    b"\xe6\x30"                                  # out 0x30, al
    b"\x66\x89\xc8"                              # mov ax, cx
    b"\x66\xe7\x30"                              # out 0x30, ax
    b"\x89\xf0"                                  # mov eax, esi
    b"\xe7\x30"                                  # out 0x30, eax
    b"\xa1\x08\x00\x01\x00"                      # mov eax, ds:[0x10008]
    b"\xe7\x30"                                  # out 0x30, eax
    b"\xa1\x0c\x00\x01\x00"                      # mov eax, ds:[0x1000C]
    b"\xe7\x30"                                  # out 0x30, eax
    b"\xf4"                                      # hlt
)

# OUT of each size to port 0x10, then IN of each size from port 0x10, each IN followed by
# an OUT of the whole eax to port 0x11 (so the host sees the register effect of each IN both
# in that OUT's data and in get_regs at that exit). No memory access besides code fetch.
# Host: 32-bit protected mode, rip=CODE, no register presets (the guest loads eax itself).
# Exits, with the host answering the three INs with 0x5A, 0x1234, 0xCAFEBABE:
#    1. OUT port 0x10 size 1 data 0x11
#    2. OUT port 0x10 size 2 data 0x2233
#    3. OUT port 0x10 size 4 data 0x44556677
#    4. IN  port 0x10 size 1 count 1         (eax = 0xAABBCCDD before it)  -> answer 0x5A
#    5. OUT port 0x11 size 4 data 0xAABBCC5A (in al keeps bits 8..31)
#    6. IN  port 0x10 size 2 count 1         -> answer 0x1234
#    7. OUT port 0x11 size 4 data 0xAABB1234 (in ax keeps bits 16..31)
#    8. IN  port 0x10 size 4 count 1         -> answer 0xCAFEBABE
#    9. OUT port 0x11 size 4 data 0xCAFEBABE
#   10. HLT
# At each IN exit rip is still at the IN instruction (it completes on the next KVM_RUN).
# Measured on this host's KVM: exactly that sequence, in real and in 32-bit mode.
IO_SIZES = (
    b"\x66\xba\x10\x00"      # mov dx, 0x10
    b"\xb0\x11"              # mov al, 0x11
    b"\xee"                  # out dx, al
    b"\x66\xb8\x33\x22"      # mov ax, 0x2233
    b"\x66\xef"              # out dx, ax
    b"\xb8\x77\x66\x55\x44"  # mov eax, 0x44556677
    b"\xef"                  # out dx, eax
    b"\xb8\xdd\xcc\xbb\xaa"  # mov eax, 0xAABBCCDD
    b"\xec"                  # in al, dx
    b"\xe7\x11"              # out 0x11, eax
    b"\x66\xed"              # in ax, dx
    b"\xe7\x11"              # out 0x11, eax
    b"\xed"                  # in eax, dx
    b"\xe7\x11"              # out 0x11, eax
    b"\xf4"                  # hlt
)
