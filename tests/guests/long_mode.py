"""64-bit long-mode x86 guest programs, as `bytes`.

Each guest is loaded at ``layout.CODE`` (0x1000) and started at RIP = 0x1000 in 64-bit
mode (EFER = LME | LMA, CR0 = PE | PG, CR4.PAE, CR3 = ``layout.PML4``, CS with L = 1, flat
data segments), with the identity map of the first 1 GiB described in ``layout`` (2 MiB
pages, user bit set). CPL 0 unless the comment says otherwise. The comment above each
guest says what the host must set up and the exact exit sequence it sees. Each byte
literal is one instruction, assembled with GNU as (``.code64``, Intel syntax) at 0x1000;
the trailing comment is the source line.
"""

# MMIO writes of 1, 2, 4 and 8 bytes, then MMIO reads of 1, 2, 4 and 8 bytes into
# registers, then the read values are sent to port 0x30, then hlt.
# Plain `mov`s to absolute addresses (MMIO + offset); no RAM access at all.
# Host: 64-bit long mode, rip=CODE; no register presets.
# No memory slot may cover MMIO (0xD0000).
# Exits (the host answers the reads; suggested answers shown as A1/A2/A4/A8):
#    1. MMIO write 0xD0000 len 1 data 0x12
#    2. MMIO write 0xD0008 len 2 data 0x3456
#    3. MMIO write 0xD0010 len 4 data 0x789ABCDE
#    4. MMIO write 0xD0018 len 8 data 0x1122334455667788
#    5. MMIO read  0xD0020 len 1   -> A1 (e.g. 0xA1)                 into bl
#    6. MMIO read  0xD0028 len 2   -> A2 (e.g. 0xB2C3)               into cx
#    7. MMIO read  0xD0030 len 4   -> A4 (e.g. 0xD4E5F607)           into esi
#    8. MMIO read  0xD0038 len 8   -> A8 (e.g. 0x0123456789ABCDEF)   into rdi
#    9. OUT port 0x30 size 1 data A1   (get_regs here: bl=A1, cx=A2, esi=A4)
#   10. OUT port 0x30 size 2 data A2
#   11. OUT port 0x30 size 4 data A4
#   12. OUT port 0x30 size 4 data A8 & 0xFFFFFFFF
#   13. OUT port 0x30 size 4 data A8 >> 32
#   14. HLT
# Each read exit leaves rip at the reading instruction; the value lands on the next run.
# Measured on this host's KVM: exactly that sequence.
MMIO_RW = (
    b"\xc6\x04\x25\x00\x00\x0d\x00\x12"              # mov byte ptr ds:[0xD0000], 0x12
    b"\x66\xc7\x04\x25\x08\x00\x0d\x00\x56\x34"      # mov word ptr ds:[0xD0008], 0x3456
    b"\xc7\x04\x25\x10\x00\x0d\x00\xde\xbc\x9a\x78"  # mov dword ptr ds:[0xD0010], 0x789ABCDE
    b"\x48\xb8\x88\x77\x66\x55\x44\x33\x22\x11"      # mov rax, 0x1122334455667788
    b"\x48\x89\x04\x25\x18\x00\x0d\x00"              # mov qword ptr ds:[0xD0018], rax
    b"\x8a\x1c\x25\x20\x00\x0d\x00"                  # mov bl, ds:[0xD0020]
    b"\x66\x8b\x0c\x25\x28\x00\x0d\x00"              # mov cx, ds:[0xD0028]
    b"\x8b\x34\x25\x30\x00\x0d\x00"                  # mov esi, ds:[0xD0030]
    b"\x48\x8b\x3c\x25\x38\x00\x0d\x00"              # mov rdi, ds:[0xD0038]
    b"\x88\xd8"                                      # mov al, bl
    b"\xe6\x30"                                      # out 0x30, al
    b"\x66\x89\xc8"                                  # mov ax, cx
    b"\x66\xe7\x30"                                  # out 0x30, ax
    b"\x89\xf0"                                      # mov eax, esi
    b"\xe7\x30"                                      # out 0x30, eax
    b"\x48\x89\xf8"                                  # mov rax, rdi
    b"\xe7\x30"                                      # out 0x30, eax
    b"\x48\xc1\xe8\x20"                              # shr rax, 32
    b"\xe7\x30"                                      # out 0x30, eax
    b"\xf4"                                          # hlt
)

# Read-modify-write of an MMIO dword: `add dword [MMIO + 0x40], 5`, then hlt.
# Host: 64-bit long mode, rip=CODE.
# Exits: MMIO read 0xD0040 len 4 -> answer X; MMIO write 0xD0040 len 4 data (X + 5) mod 2**32;
# HLT.
# Measured on this host's KVM: exactly that; rip CODE (read), CODE+8 (write), CODE+9 (HLT).
MMIO_RMW = (
    b"\x83\x04\x25\x40\x00\x0d\x00\x05"  # add dword ptr ds:[0xD0040], 5
    b"\xf4"                              # hlt
)

# OUT of each size to port 0x10, then, with rax = 0x1122334455667788 (loaded by the guest),
# IN of each size from port 0x10, each IN followed by two OUTs of eax to port 0x11: the low
# half of rax, then the high half (`ror rax, 32` around the second OUT, rax is restored).
# This shows that `in al`/`in ax` keep the upper bits and `in eax` zero-extends rax.
# Host: 64-bit long mode, rip=CODE, no presets.
# Exits, with the host answering the INs with 0x5A, 0x1234, 0xCAFEBABE:
#    1. OUT port 0x10 size 1 data 0x11
#    2. OUT port 0x10 size 2 data 0x2233
#    3. OUT port 0x10 size 4 data 0x44556677
#    4. IN  port 0x10 size 1 count 1   -> 0x5A        (rax = 0x1122334455667788 before)
#    5. OUT port 0x11 size 4 data 0x5566775A     (rax = 0x112233445566775A)
#    6. OUT port 0x11 size 4 data 0x11223344
#    7. IN  port 0x10 size 2 count 1   -> 0x1234
#    8. OUT port 0x11 size 4 data 0x55661234     (rax = 0x1122334455661234)
#    9. OUT port 0x11 size 4 data 0x11223344
#   10. IN  port 0x10 size 4 count 1   -> 0xCAFEBABE
#   11. OUT port 0x11 size 4 data 0xCAFEBABE     (rax = 0x00000000CAFEBABE)
#   12. OUT port 0x11 size 4 data 0x00000000
#   13. HLT with rax = 0xCAFEBABE
# Measured on this host's KVM: exactly that.
IO_SIZES = (
    b"\x66\xba\x10\x00"                          # mov dx, 0x10
    b"\xb0\x11"                                  # mov al, 0x11
    b"\xee"                                      # out dx, al
    b"\x66\xb8\x33\x22"                          # mov ax, 0x2233
    b"\x66\xef"                                  # out dx, ax
    b"\xb8\x77\x66\x55\x44"                      # mov eax, 0x44556677
    b"\xef"                                      # out dx, eax
    b"\x48\xb8\x88\x77\x66\x55\x44\x33\x22\x11"  # mov rax, 0x1122334455667788
    b"\xec"                                      # in al, dx
    b"\xe7\x11"                                  # out 0x11, eax
    b"\x48\xc1\xc8\x20"                          # ror rax, 32
    b"\xe7\x11"                                  # out 0x11, eax
    b"\x48\xc1\xc8\x20"                          # ror rax, 32
    b"\x66\xed"                                  # in ax, dx
    b"\xe7\x11"                                  # out 0x11, eax
    b"\x48\xc1\xc8\x20"                          # ror rax, 32
    b"\xe7\x11"                                  # out 0x11, eax
    b"\x48\xc1\xc8\x20"                          # ror rax, 32
    b"\xed"                                      # in eax, dx
    b"\xe7\x11"                                  # out 0x11, eax
    b"\x48\xc1\xc8\x20"                          # ror rax, 32
    b"\xe7\x11"                                  # out 0x11, eax
    b"\x48\xc1\xc8\x20"                          # ror rax, 32
    b"\xf4"                                      # hlt
)

# Endless loop of `out 0x80, al` (one OUT exit per iteration), for the exit-rate benchmark.
# Works at CPL0 and at CPL3.
# Host: 64-bit long mode, rip=CODE, al = any byte. For CPL3: cs/ss with DPL 3 (selector
# RPL 3), page tables with the U bit (the identity map has it), rflags IOPL=3 (0x3002);
# with IOPL < 3 the OUT must raise #GP on upstream KVM (no I/O bitmap in the TSS).
# Exits: OUT port 0x80 size 1 data al, forever; rip after each exit is CODE+2.
# Measured on this host's KVM: as above at CPL0 and CPL3. Round trip per exit from Python
# (ctypes/fcntl harness): ~11-13 us at CPL0 (instruction emulator), ~33-38 us at CPL3
# (native execution: the exit costs more here than the emulator).
# Host quirk seen here: at CPL3 with IOPL=0 (rflags=0x2) the OUT still gave an OUT exit
# instead of #GP; do not rely on that.
OUT_LOOP = (
    b"\xe6\x80"  # loop: out 0x80, al
    b"\xeb\xfc"  # jmp loop
)

# `ud2`: raises #UD; with an IDT limit of 0 (host sets idt.limit = 0) the #UD cannot be
# delivered, #DF cannot either, so the CPU triple-faults.
# Host: 64-bit long mode, rip=CODE, idt.base = 0, idt.limit = 0.
# Exits: SHUTDOWN (running again gives SHUTDOWN again).
# Measured on this host's KVM: SHUTDOWN with rip=CODE, then SHUTDOWN again.
TRIPLE_FAULT = (
    b"\x0f\x0b"  # ud2
)

# Tight infinite loop (`jmp $`), for kick / immediate_exit tests.
# Host: 64-bit long mode, rip=CODE (CPL0 or CPL3).
# Measured on this host's KVM: SIGALRM -> EINTR (rip=CODE) at CPL0 and CPL3;
# immediate_exit=1 -> EINTR.
SPIN = (
    b"\xeb\xfe"  # spin: jmp spin
)

# RDMSR of an MSR no CPU has, then the value read is sent out.
# Host: 64-bit long mode, rip=CODE, an IDT whose #GP gate reports (tests.test_exceptions).
# Exits: #GP(0) on the rdmsr (RIP at CODE + 0xA; eax and edx unchanged), so the #GP handler's
# exits; never the OUT.
# Measured on this host's KVM: exactly that.
RDMSR_UNKNOWN = (
    b"\xb9\xef\xbe\xad\xde"  # mov ecx, 0xdeadbeef
    b"\xb8\x55\x55\x55\x55"  # mov eax, 0x55555555
    b"\x0f\x32"              # rdmsr
    b"\xe7\x20"              # out 0x20, eax
    b"\xf4"                  # hlt
)

# WRMSR of an MSR no CPU has.
# Host: 64-bit long mode, rip=CODE, an IDT whose #GP gate reports (tests.test_exceptions).
# Exits: #GP(0) on the wrmsr (RIP at CODE + 0x9), so the #GP handler's exits; never the OUT.
# Measured on this host's KVM: exactly that.
WRMSR_UNKNOWN = (
    b"\xb9\xef\xbe\xad\xde"  # mov ecx, 0xdeadbeef
    b"\x31\xc0"              # xor eax, eax
    b"\x31\xd2"              # xor edx, edx
    b"\x0f\x30"              # wrmsr
    b"\xe6\x20"              # out 0x20, al
    b"\xf4"                  # hlt
)

# Two RDTSCs, and the difference between them (low 32 bits) sent out.
# Host: 64-bit long mode, rip=CODE. rbx holds the first TSC at the end, rax the difference.
# Exits: OUT port 0x20 size 4 data (a positive difference); HLT.
# Measured on this host's KVM: a difference of about 10^5 (the host emulates CPL0 code).
RDTSC_TWICE = (
    b"\x0f\x31"              # rdtsc
    b"\x48\xc1\xe2\x20"      # shl rdx, 32
    b"\x48\x09\xd0"          # or rax, rdx
    b"\x48\x89\xc3"          # mov rbx, rax
    b"\x0f\x31"              # rdtsc
    b"\x48\xc1\xe2\x20"      # shl rdx, 32
    b"\x48\x09\xd0"          # or rax, rdx
    b"\x48\x29\xd8"          # sub rax, rbx
    b"\xe7\x20"              # out 0x20, eax
    b"\xf4"                  # hlt
)

SYSCALL_TARGET = 0x1010
"""Where ``SYSCALL_TO_HLT``'s kernel entry (LSTAR) is: its CPL0 `hlt`."""

# SYSCALL from CPL3 into the kernel entry at SYSCALL_TARGET, which halts.
# Host: 64-bit long mode at CPL3 (tests.test_exceptions' IDT and TSS), rip=CODE, EFER.SCE,
# STAR[47:32] = 0x08 (CS 0x08, SS 0x10), LSTAR = SYSCALL_TARGET, FMASK as the test says.
# Exits: HLT with rip = SYSCALL_TARGET + 1, rcx = CODE + 2, r11 = the RFLAGS of the syscall,
# RFLAGS without FMASK's bits, CPL0 (CS 0x08 64-bit code, SS 0x10). If FMASK leaves TF set,
# the single-step trap comes after the syscall: #DB with RIP = SYSCALL_TARGET. With EFER.SCE
# clear: #UD on the syscall (RIP = CODE). Never the OUT (a syscall that did nothing).
SYSCALL_TO_HLT = (
    b"\x0f\x05"          # syscall
    b"\xe6\x10"          # out 0x10, al
    b"\xf4"              # hlt (at CPL3: #GP)
    + b"\x90" * 11       # (to SYSCALL_TARGET)
    + b"\xf4"            # SYSCALL_TARGET: hlt
)

# An `iretq` to the next instruction with RF set in the RFLAGS image, then the flags are pushed and
# sent out: the `pushfq` runs with RF set, yet PUSHF never stores RF, and RF is clear after it.
# Host: 64-bit long mode at CPL0, rip=CODE, rsp=STACK_TOP, rflags=0x2.
# Exits: OUT port 0x10 size 4 data 0x00000002 (rflags = 0x2 there); HLT.
# Measured on this host's KVM: exactly that.
IRETQ_RF_PUSHF = (
    b"\x48\x89\xe0"                  # 1000 mov rax, rsp
    b"\x6a\x10"                      # 1003 push 0x10                 (SS)
    b"\x50"                          # 1005 push rax                  (RSP)
    b"\x9c"                          # 1006 pushfq
    b"\x48\x81\x0c\x24\x00\x00\x01\x00"  # 1007 or qword ptr [rsp], 0x10000   (RF)
    b"\x6a\x08"                      # 100F push 0x08                 (CS)
    b"\x48\x8d\x05\x03\x00\x00\x00"  # 1011 lea rax, [rip + 3]        (after)
    b"\x50"                          # 1018 push rax                  (RIP)
    b"\x48\xcf"                      # 1019 iretq
    b"\x9c"                          # 101B after: pushfq             (runs with RF set)
    b"\x58"                          # 101C pop rax
    b"\xe7\x10"                      # 101D out 0x10, eax
    b"\xf4"                          # 101F hlt
)

BREAKPOINT_AT = 0x1020
"""Where ``BREAKPOINT_RESUME``'s instruction breakpoint (DR0) is: its `out 0x10, al`."""

# An instruction breakpoint on the `out 0x10, al` at BREAKPOINT_AT; the #DB handler (vector 1,
# BREAKPOINT_HANDLER) reports itself, sets RF in its frame's RFLAGS and returns to the `out`,
# which now runs: RF keeps the breakpoint from firing again.
# Host: 64-bit long mode at CPL0, rip=CODE, an IDT (tests.test_exceptions) whose vector 1 runs
# BREAKPOINT_HANDLER.
# Exits: OUT port 0x11 (the handler), OUT port 0x10, HLT with rflags = 0x2.
# Measured on this host's KVM: exactly that.
BREAKPOINT_RESUME = (
    b"\x48\xc7\xc0\x20\x10\x00\x00"  # 1000 mov rax, BREAKPOINT_AT
    b"\x0f\x23\xc0"                  # 1007 mov dr0, rax
    b"\xb8\x01\x00\x00\x00"          # 100A mov eax, 1           (DR7.L0, execute, 1 byte)
    b"\x0f\x23\xf8"                  # 100F mov dr7, rax
    + b"\x90" * 14                   # 1012 (to BREAKPOINT_AT)
    + b"\xe6\x10"                    # 1020 out 0x10, al
    b"\xf4"                          # 1022 hlt
)
BREAKPOINT_HANDLER = (
    b"\xe6\x11"                              # out 0x11, al
    b"\x48\x81\x4c\x24\x10\x00\x00\x01\x00"  # or qword ptr [rsp + 16], 0x10000   (RF in the frame's RFLAGS)
    b"\x48\xcf"                              # iretq
)

# SMSW into a 64-, 32- and 16-bit register and MOV from CR0, each result sent out as two halves.
# Host: 64-bit long mode at CPL0, rip=CODE.
# Exits (OUT port 0x10 size 4 each, low half then high half of rax):
# CR0 (smsw rax); CR0 (smsw eax: zero-extended, so the high half is 0);
# 0x11223344 << 32 | 0x5566 << 16 | CR0 & 0xFFFF (smsw ax keeps the rest); CR0 (mov rax, cr0); HLT.
# Measured on this host's KVM: exactly that.
SMSW_64 = (
    b"\x48\xb8\x88\x77\x66\x55\x44\x33\x22\x11"  # 1000 mov rax, 0x1122334455667788
    b"\x48\x0f\x01\xe0"                          # 100A smsw rax
    b"\xe8\x3a\x00\x00\x00"                      # 100E call report
    b"\x48\xb8\x88\x77\x66\x55\x44\x33\x22\x11"  # 1013 mov rax, 0x1122334455667788
    b"\x0f\x01\xe0"                              # 101D smsw eax
    b"\xe8\x28\x00\x00\x00"                      # 1020 call report
    b"\x48\xb8\x88\x77\x66\x55\x44\x33\x22\x11"  # 1025 mov rax, 0x1122334455667788
    b"\x66\x0f\x01\xe0"                          # 102F smsw ax
    b"\xe8\x15\x00\x00\x00"                      # 1033 call report
    b"\x0f\x20\xc0"                              # 1038 mov rax, cr0
    b"\xe8\x0d\x00\x00\x00"                      # 103B call report
    b"\xf4"                                      # 1040 hlt
    + b"\x90" * 0xC                              # 1041 (to report)
    + b"\xe7\x10"                                # 104D report: out 0x10, eax
    b"\x48\xc1\xe8\x20"                          # 104F shr rax, 32
    b"\xe7\x10"                                  # 1053 out 0x10, eax
    b"\xc3"                                      # 1055 ret
)
