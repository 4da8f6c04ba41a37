"""Real-mode (16-bit) x86 guest programs, as `bytes`.

Each guest is loaded at ``layout.CODE`` (0x1000) and started with CS = 0, IP = 0x1000 and
every other segment register 0 (base 0), unless its comment says otherwise. The comment
above each guest says what the host must set up and the exact exit sequence it sees.
Each byte literal is one instruction (or one data directive), assembled with GNU as
(``.code16``, Intel syntax) and linked at 0x1000; the trailing comment is the source line.
"""

# The guest from LWN's "Using the KVM API": prints the digit al + bl and a newline on
# the serial port, halts.
# Host: real mode, rip=CODE, rax=2, rbx=3 (LWN's rax=2, rbx=2 prints '4' instead).
# Exits: OUT port 0x3f8 size 1 data 0x35 ('5') (rip=CODE+8 at the exit);
# OUT port 0x3f8 size 1 data 0x0a ('\n') (rip=CODE+0xb); HLT (rip=CODE+0xc).
# Measured on this host's KVM: exactly that.
PRINTS_5 = (
    b"\xba\xf8\x03"  # mov dx, 0x3f8
    b"\x00\xd8"      # add al, bl
    b"\x04\x30"      # add al, '0'
    b"\xee"          # out dx, al
    b"\xb0\x0a"      # mov al, 10
    b"\xee"          # out dx, al
    b"\xf4"          # hlt
)

# OUT of each size to port 0x10, then IN of each size from port 0x10, each IN followed by
# an OUT of the whole eax to port 0x11 (so the host sees the register effect of each IN both
# in that OUT's data and in get_regs at that exit). No memory access besides code fetch.
# Host: real mode, rip=CODE, no register presets (the guest loads eax itself).
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
    b"\xba\x10\x00"              # mov dx, 0x10
    b"\xb0\x11"                  # mov al, 0x11
    b"\xee"                      # out dx, al
    b"\xb8\x33\x22"              # mov ax, 0x2233
    b"\xef"                      # out dx, ax
    b"\x66\xb8\x77\x66\x55\x44"  # mov eax, 0x44556677
    b"\x66\xef"                  # out dx, eax
    b"\x66\xb8\xdd\xcc\xbb\xaa"  # mov eax, 0xAABBCCDD
    b"\xec"                      # in al, dx
    b"\x66\xe7\x11"              # out 0x11, eax
    b"\xed"                      # in ax, dx
    b"\x66\xe7\x11"              # out 0x11, eax
    b"\x66\xed"                  # in eax, dx
    b"\x66\xe7\x11"              # out 0x11, eax
    b"\xf4"                      # hlt
)

# `rep insb` of 5000 bytes from port 0x20 into DATA (es:di = 0x1000:0), then hlt.
# Host: real mode, rip=CODE (the guest sets es, di, cx, dx and clears DF itself).
# Exits: IN port 0x20 size 1 with count = min(rcx, 1024 // size, elements left in the
# page of rdi) each, i.e. counts 1024, 1024, 1024, 1024, 904 (the host supplies `count`
# bytes each time); then HLT. After it: DATA[0:5000] holds the supplied bytes in order,
# cx=0, di=5000 (0x1388).
# Upstream KVM batches the same way (the 1024-byte limit is the size of the pio data page).
# Measured on this host's KVM: counts 1024, 1024, 1024, 1024, 904, then HLT; data, cx, di
# as above.
REP_INSB = (
    b"\xfc"          # cld
    b"\xb8\x00\x10"  # mov ax, 0x1000
    b"\x8e\xc0"      # mov es, ax
    b"\x31\xff"      # xor di, di
    b"\xb9\x88\x13"  # mov cx, 5000
    b"\xba\x20\x00"  # mov dx, 0x20
    b"\xf3\x6c"      # rep insb
    b"\xf4"          # hlt
)

def string_in(es: int, di: int, cx: int, *, width: int = 1, rep: bool = True, backwards: bool = False) -> bytes:
    """``[rep] ins{b,w,d}`` from port 0x20 to es:di with cx elements (DF as ``backwards``), then hlt.

    Host: real mode, rip=CODE (the guest sets DF, es, di, cx and dx itself). The string
    instruction is at CODE+0xf (``insd``: an operand-size prefix first), the hlt right after it.
    Upstream KVM (``pio_in_emulated``): one IN exit of count = min(cx, 1024 // width, bytes
    left in di's page) elements; the emulator then writes them: RAM pages in place, any other
    page (no slot, a read-only slot) as MMIO write exits of up to 8 bytes, split at pages.
    Forward with rep the batch is one write; backwards each element is, and the first element
    that exits ends the batch (the rest of what was read is dropped).
    Measured on this host's KVM: exactly that (tests/test_io.py lists the shapes).
    """
    opcode = {1: b"\x6c", 2: b"\x6d", 4: b"\x66\x6d"}[width]  # insb / insw / insd
    return (
        (b"\xfd" if backwards else b"\xfc")  # std / cld
        + b"\xb8" + es.to_bytes(2, "little")  # mov ax, es
        + b"\x8e\xc0"  # mov es, ax
        + b"\xbf" + di.to_bytes(2, "little")  # mov di, di
        + b"\xb9" + cx.to_bytes(2, "little")  # mov cx, cx
        + b"\xba\x20\x00"  # mov dx, 0x20
        + (b"\xf3" if rep else b"")  # rep
        + opcode
        + b"\xf4"  # hlt
    )


# `rep outsw` of 3 words from DATA (ds:si = 0x1000:0) to port 0x22, then hlt.
# Host: real mode, rip=CODE; fill DATA[0:6] first (e.g. words 0x1111, 0x2222, 0x3333).
# Exits: OUT port 0x22 size 2 count 1 data DATA word 0; same for word 1; same for word 2
# (KVM exits once per element for `rep outs`); then HLT with cx=0, si=6.
# Measured on this host's KVM: exactly that; rip stays at the `rep outsw` (CODE+0xe) at
# each of the three OUT exits (cx counts down), and is CODE+0x11 at HLT.
REP_OUTSW = (
    b"\xfc"          # cld
    b"\xb8\x00\x10"  # mov ax, 0x1000
    b"\x8e\xd8"      # mov ds, ax
    b"\x31\xf6"      # xor si, si
    b"\xb9\x03\x00"  # mov cx, 3
    b"\xba\x22\x00"  # mov dx, 0x22
    b"\xf3\x6f"      # rep outsw
    b"\xf4"          # hlt
)

# MMIO writes of 1, 2, 4 and 8 bytes, then MMIO reads of 1, 2, 4 and 8 bytes into
# registers, then the read values are sent to port 0x30, then hlt.
# Segments: ds = 0xD000 (ds:0 = MMIO), es = 0x1000 (es:0 = DATA), set by the guest.
# The 8-byte accesses use MMX `movq` (0F 6F / 0F 7F), which KVM's instruction emulator
# supports in every mode (no CR4 setup needed; CR0.EM and CR0.TS must be 0, as they are
# after reset). The 8-byte value written comes from DATA[0:8], which the guest fills first
# (plain RAM writes, no exit); the 8-byte value read is stored to DATA[8:16] (RAM) before
# being sent out. Alternatives measured on this host: `movq xmm0, m64` (F3 0F 7E) ->
# INTERNAL_ERROR (emulation failure) even with CR4.OSFXSR; `movdqu` (with CR4.OSFXSR) gives
# two 8-byte MMIO exits (16 bytes); `cmpxchg8b` gives an 8-byte read exit then always an
# 8-byte write exit (of the new value if equal, of the value read back if not).
# Host: real mode, rip=CODE; no register presets.
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
    b"\xb8\x00\x10"                              # mov ax, 0x1000
    b"\x8e\xc0"                                  # mov es, ax
    b"\x26\x66\xc7\x06\x00\x00\x88\x77\x66\x55"  # mov dword ptr es:[0], 0x55667788
    b"\x26\x66\xc7\x06\x04\x00\x44\x33\x22\x11"  # mov dword ptr es:[4], 0x11223344
    b"\xb8\x00\xd0"                              # mov ax, 0xD000
    b"\x8e\xd8"                                  # mov ds, ax
    b"\xc6\x06\x00\x00\x12"                      # mov byte ptr ds:[0x00], 0x12
    b"\xc7\x06\x08\x00\x56\x34"                  # mov word ptr ds:[0x08], 0x3456
    b"\x66\xc7\x06\x10\x00\xde\xbc\x9a\x78"      # mov dword ptr ds:[0x10], 0x789ABCDE
    b"\x26\x0f\x6f\x06\x00\x00"                  # movq mm0, es:[0]
    b"\x0f\x7f\x06\x18\x00"                      # movq ds:[0x18], mm0
    b"\x8a\x1e\x20\x00"                          # mov bl, ds:[0x20]
    b"\x8b\x0e\x28\x00"                          # mov cx, ds:[0x28]
    b"\x66\x8b\x36\x30\x00"                      # mov esi, ds:[0x30]
    b"\x0f\x6f\x0e\x38\x00"                      # movq mm1, ds:[0x38]
    b"\x26\x0f\x7f\x0e\x08\x00"                  # movq es:[8], mm1
    b"\x88\xd8"                                  # mov al, bl
    b"\xe6\x30"                                  # out 0x30, al
    b"\x89\xc8"                                  # mov ax, cx
    b"\xe7\x30"                                  # out 0x30, ax
    b"\x66\x89\xf0"                              # mov eax, esi
    b"\x66\xe7\x30"                              # out 0x30, eax
    b"\x26\x66\xa1\x08\x00"                      # mov eax, es:[8]
    b"\x66\xe7\x30"                              # out 0x30, eax
    b"\x26\x66\xa1\x0c\x00"                      # mov eax, es:[12]
    b"\x66\xe7\x30"                              # out 0x30, eax
    b"\xf4"                                      # hlt
)

# Read-modify-write of an MMIO dword: `add dword [ds:0x40], 5` with ds = 0xD000, then hlt.
# Host: real mode, rip=CODE.
# Exits: MMIO read 0xD0040 len 4 -> answer X; MMIO write 0xD0040 len 4 data (X + 5) mod 2**32;
# HLT.
# Measured on this host's KVM: exactly that (X = 0xFFFFFFFE gives a write of 3); rip is
# CODE+5 (the `add`) at the read exit, CODE+0xb at the write exit, CODE+0xc at HLT.
MMIO_RMW = (
    b"\xb8\x00\xd0"              # mov ax, 0xD000
    b"\x8e\xd8"                  # mov ds, ax
    b"\x66\x83\x06\x40\x00\x05"  # add dword ptr ds:[0x40], 5
    b"\xf4"                      # hlt
)

# Writes 0x55 to ROM (es:0 with es = 0xC000), reads it back into al, sends al to port
# 0x40, halts.
# Host: real mode, rip=CODE; a read-only slot (KVM_MEM_READONLY) of 64 KiB at ROM whose
# first byte is B (anything but 0x55, e.g. 0xEA).
# Exits: MMIO write 0xC0000 len 1 data 0x55 (the write to a read-only slot); OUT port 0x40
# size 1 data B (the read is served from the slot, no exit; ROM is unchanged); HLT.
# Measured on this host's KVM: exactly that, ROM[0] still B afterwards.
ROM_WRITE = (
    b"\xb8\x00\xc0"              # mov ax, 0xC000
    b"\x8e\xc0"                  # mov es, ax
    b"\x26\xc6\x06\x00\x00\x55"  # mov byte ptr es:[0], 0x55
    b"\x26\xa0\x00\x00"          # mov al, es:[0]
    b"\xe6\x40"                  # out 0x40, al
    b"\xf4"                      # hlt
)

# Writes 0xAA to DATA+0x0000 and 0xBB to DATA+0x2000 (RAM pages 16 and 18), reads the
# byte at DATA+0x3000 (page 19) into al, halts. es = 0x1000 (DATA), set by the guest.
# Host: real mode, rip=CODE; the RAM slot created with KVM_MEM_LOG_DIRTY_PAGES.
# Exits: HLT only. KVM_GET_DIRTY_LOG on the RAM slot then has bits 16 and 18 set and bit 19
# clear (reads are not logged); al = the byte at DATA+0x3000. Other pages: the code page
# (page 1) is only executed and was not logged here, but upstream may log it, so tests
# should only check pages 16, 18 (set) and 19 (clear).
# Measured on this host's KVM: HLT; dirty log = pages [16, 18] exactly.
DIRTY_PAGES = (
    b"\xb8\x00\x10"              # mov ax, 0x1000
    b"\x8e\xc0"                  # mov es, ax
    b"\x26\xc6\x06\x00\x00\xaa"  # mov byte ptr es:[0x0000], 0xAA
    b"\x26\xc6\x06\x00\x20\xbb"  # mov byte ptr es:[0x2000], 0xBB
    b"\x26\xa0\x00\x30"          # mov al, es:[0x3000]
    b"\xf4"                      # hlt
)

# Interrupt-window test. The guest sets its own stack (ss:sp = 0:STACK_TOP), installs IVT
# entry 0x20 (at 0x80: offset of `handler`, segment 0; position-dependent, load at CODE),
# reports with interrupts off, enables them and spins. The handler outputs 0x42 to port
# 0x81 and halts. Assumes ds = 0.
# Host: real mode, rip=CODE.
# Host flow and exits:
#   run -> OUT port 0x80 size 1 data 0x01; here if_flag == 0 and
#          ready_for_interrupt_injection == 0 (cli).
#   set request_interrupt_window = 1;
#   run -> IRQ_WINDOW_OPEN with if_flag == 1 and ready_for_interrupt_injection == 1.
#   KVM_INTERRUPT(0x20); set request_interrupt_window = 0;
#   run -> OUT port 0x81 size 1 data 0x42 (the handler; FLAGS, CS=0 and the interrupted
#          IP, inside the `spin` loop, are pushed at 0x7FFA..0x7FFF);
#   run -> HLT.
# Measured on this host's KVM: exactly that; the IRQ_WINDOW_OPEN exit came with rip in the
# loop (CODE+0x1a), the pushed IP was that rip, CS 0, FLAGS 0x246.
IRQ_WINDOW = (
    b"\xfa"                      # cli
    b"\x31\xc0"                  # xor ax, ax
    b"\x8e\xd0"                  # mov ss, ax
    b"\xbc\x00\x80"              # mov sp, 0x8000
    b"\xc7\x06\x80\x00\x1c\x10"  # mov word ptr ds:[0x20 * 4], offset handler  ; = 0x101c
    b"\xc7\x06\x82\x00\x00\x00"  # mov word ptr ds:[0x20 * 4 + 2], 0
    b"\xb0\x01"                  # mov al, 1
    b"\xe6\x80"                  # out 0x80, al
    b"\xfb"                      # sti
    b"\x90"                      # spin: nop
    b"\xeb\xfd"                  # jmp spin
    b"\xb0\x42"                  # handler: mov al, 0x42
    b"\xe6\x81"                  # out 0x81, al
    b"\xf4"                      # hlt
)

# Six register-only instructions of lengths 3, 1, 6, 1, 2, 1, then hlt, then a jmp back to
# the hlt (so running on after the hlt halts again instead of running into zeros).
# No IO, no memory access.
# Addresses (loaded at CODE): 0x1000 mov ax, 1 | 0x1003 inc ax | 0x1004 add eax, 0x100 |
# 0x100a xchg bx, ax | 0x100b mov cx, bx | 0x100d nop | 0x100e hlt | 0x100f jmp 0x100e.
# Host: real mode, rip=CODE, rbx=0; KVM_SET_GUEST_DEBUG(ENABLE | SINGLESTEP).
# Exits under single-step: DEBUG (exception 1) once per instruction, pc = the address of
# the next instruction: 0x1003, 0x1004, 0x100a, 0x100b, 0x100d, 0x100e; then the hlt is
# reported as one more step, DEBUG pc=0x100f, and does NOT halt (KVM's halt emulation
# drops the halt when the single-step exit is taken; upstream does the same); stepping on
# gives pc=0x100e (jmp), 0x100f (hlt), ...
# Registers after the nop (pc=0x100e): ax = 0 (old bx), bx = 0x102, cx = 0x102.
# Without single-step: HLT with rip=0x100f.
# Measured on this host's KVM: exactly that, dr6 = 0xffff4ff0, dr7 = 0 (upstream: 0x400).
SINGLE_STEP = (
    b"\xb8\x01\x00"              # mov ax, 1
    b"\x40"                      # inc ax
    b"\x66\x05\x00\x01\x00\x00"  # add eax, 0x100
    b"\x93"                      # xchg bx, ax
    b"\x89\xd9"                  # mov cx, bx
    b"\x90"                      # nop
    b"\xf4"                      # done: hlt
    b"\xeb\xfd"                  # jmp done
)

# Tight infinite loop (`jmp $`), for kick / immediate_exit tests: KVM_RUN only returns on a
# signal (EINTR) or with immediate_exit. rip stays at CODE.
# Host: real mode, rip=CODE.
# Measured on this host's KVM: a SIGALRM after 0.2 s -> KVM_RUN fails with EINTR, rip=CODE;
# immediate_exit=1 -> EINTR at once.
SPIN = (
    b"\xeb\xfe"  # spin: jmp spin
)

# Sends al to port 0x80 bx times, then halts (bx = 0 means no OUT at all).
# Host: real mode, rip=CODE, rax = a byte identifying the vCPU (e.g. its id), rbx = N
# (1..65535). All vCPUs may share the same code at CODE (it writes no memory).
# Exits: N times OUT port 0x80 size 1 data al; then HLT with bx = 0.
# Measured on this host's KVM: 4 vCPUs in 4 Python threads, N = 500 each: each thread saw
# exactly 500 OUTs of its own al, then HLT, bx = 0. bx = 0 gives HLT at once.
COUNTED_OUT = (
    b"\x85\xdb"  # test bx, bx
    b"\x74\x05"  # jz done
    b"\xe6\x80"  # again: out 0x80, al
    b"\x4b"      # dec bx
    b"\x75\xfb"  # jnz again
    b"\xf4"      # done: hlt
)

# An MSR and TSC probe driven by the host: a loop that says it is ready (OUT port 0x3F size 1),
# asks (IN port 0x40) for an MSR index, then (IN port 0x41) for an operation: 0 = rdmsr, 1 = wrmsr
# (the value from IN ports 0x44 low, 0x45 high), 2 = rdtsc. A read answers with OUT port 0x42
# size 4 (eax), then OUT port 0x43 size 4 (edx); a write that succeeds with OUT port 0x46 size 1.
# A #GP (IVT entry 13, set by the guest) drops its frame and answers OUT port 0x47 size 1. Then
# the loop starts again. At the ready OUT no instruction is pending: the host may change state.
# Host: real mode, rip=CODE; the guest sets ss:sp = 0:0x8000 and IVT entry 13 itself.
# Measured on this host's KVM: exactly that (the #GP handler runs at 0:0x104C).
MSR_PROBE = (
    b"\x31\xc0"                      # 1000 xor ax, ax
    b"\x8e\xd0"                      # 1002 mov ss, ax
    b"\xbc\x00\x80"                  # 1004 mov sp, 0x8000
    b"\xc7\x06\x34\x00\x4c\x10"      # 1007 mov word ptr [13*4], offset gp   (0x104C)
    b"\xc7\x06\x36\x00\x00\x00"      # 100D mov word ptr [13*4+2], 0
    b"\xe6\x3f"                      # 1013 next: out 0x3f, al
    b"\x66\xe5\x40"                  # 1015 in eax, 0x40
    b"\x66\x89\xc1"                  # 1018 mov ecx, eax
    b"\x66\xe5\x41"                  # 101B in eax, 0x41
    b"\x3c\x01"                      # 101E cmp al, 1
    b"\x74\x11"                      # 1020 je write
    b"\x3c\x02"                      # 1022 cmp al, 2
    b"\x74\x22"                      # 1024 je tsc
    b"\x0f\x32"                      # 1026 rdmsr
    b"\x66\xe7\x42"                  # 1028 report: out 0x42, eax
    b"\x66\x89\xd0"                  # 102B mov eax, edx
    b"\x66\xe7\x43"                  # 102E out 0x43, eax
    b"\xeb\xe0"                      # 1031 jmp next
    b"\x66\xe5\x44"                  # 1033 write: in eax, 0x44
    b"\x66\x89\xc3"                  # 1036 mov ebx, eax
    b"\x66\xe5\x45"                  # 1039 in eax, 0x45
    b"\x66\x89\xc2"                  # 103C mov edx, eax
    b"\x66\x89\xd8"                  # 103F mov eax, ebx
    b"\x0f\x30"                      # 1042 wrmsr
    b"\xe6\x46"                      # 1044 out 0x46, al
    b"\xeb\xcb"                      # 1046 jmp next
    b"\x0f\x31"                      # 1048 tsc: rdtsc
    b"\xeb\xdc"                      # 104A jmp report
    b"\x83\xc4\x06"                  # 104C gp: add sp, 6
    b"\xe6\x47"                      # 104F out 0x47, al
    b"\xeb\xc0"                      # 1051 jmp next
)

# Host: real mode, rip=CODE, IF=0. `sti`, then an OUT in its one-instruction shadow.
# Exits: OUT 0x80 data 7, then HLT (rip CODE+6). Upstream KVM leaves RIP at the OUT (CODE+3)
# at its exit, shadow in force (ready_for_interrupt_injection 0), and moves RIP past it (CODE+5)
# at the next run; hosts with `out_completed_at_exit: rip_past_out` are at CODE+5 already.
OUT_IN_STI_SHADOW = (
    b"\xb0\x07"  # 1000 mov al, 7
    b"\xfb"      # 1002 sti
    b"\xe6\x80"  # 1003 out 0x80, al
    b"\xf4"      # 1005 hlt
)  # fmt: skip

# Host: real mode, rip=CODE. An OUT to port 0x7E, which KVM completes before the exit
# (KVM_X86_QUIRK_OUT_7E_INC_RIP). Exits: OUT 0x7E data 7 (rip CODE+4), HLT (rip CODE+5).
OUT_7E = (
    b"\xb0\x07"  # 1000 mov al, 7
    b"\xe6\x7e"  # 1002 out 0x7e, al
    b"\xf4"      # 1004 hlt
)  # fmt: skip

# Host: real mode, rip=CODE; RAM logged dirty. Counts at DATA, reporting each count.
# Exits: OUT 0x80 with 1, 2, 3, ... for ever; each store lands in DATA's page (page 16).
COUNT_AT_DATA = (
    b"\xb8\x00\x10"          # 1000 mov ax, 0x1000
    b"\x8e\xc0"              # 1003 mov es, ax
    b"\x26\xfe\x06\x00\x00"  # 1005 top: inc byte ptr es:[0]
    b"\x26\xa0\x00\x00"      # 100a mov al, es:[0]
    b"\xe6\x80"              # 100e out 0x80, al
    b"\xeb\xf3"              # 1010 jmp top
)  # fmt: skip

# An `iretd` whose EFLAGS image has RF set returns to a `jmp`, then the flags are pushed and sent
# out: RF was for the `jmp` only, and PUSHF never stores RF. The guest builds its own iret frame
# (EFLAGS | RF, CS, EIP of the `jmp`) with a 32-bit `call` to the `iretd` (kvm-unit-tests'
# realmode "rflags.rf").
# Host: real mode, rip=CODE, rsp=STACK_TOP, rflags=0x2.
# Exits: OUT port 0x10 size 4 data 0x00000002 (rflags = 0x2 there: RF is clear); HLT.
# Measured on this host's KVM: exactly that.
IRET_RF_THEN_PUSHF = (
    b"\x66\x9c"                      # 1000 pushfd
    b"\x66\x58"                      # 1002 pop eax
    b"\x66\x0d\x00\x00\x01\x00"      # 1004 or eax, 0x10000      (RF)
    b"\x66\x50"                      # 100A push eax
    b"\x66\x0e"                      # 100C push cs              (32-bit)
    b"\x66\xe8\x02\x00\x00\x00"      # 100E call dword back      (pushes EIP 0x1014)
    b"\xeb\x02"                      # 1014 jmp after            (runs with RF set)
    b"\x66\xcf"                      # 1016 back: iretd
    b"\x66\x9c"                      # 1018 after: pushfd
    b"\x66\x58"                      # 101A pop eax
    b"\x66\xe7\x10"                  # 101C out 0x10, eax
    b"\xf4"                          # 101F hlt
)

# As IRET_RF_THEN_PUSHF, but the `iretd` returns straight to the `pushfd`, which runs with RF set
# and must still store the image without it.
# Host: real mode, rip=CODE, rsp=STACK_TOP, rflags=0x2 (or rip=CODE+0x14 with rflags=0x10002:
# the `pushfd` is then the first instruction, with the RF the host set).
# Exits: OUT port 0x10 size 4 data 0x00000002 (rflags = 0x2 there); HLT.
# Measured on this host's KVM: exactly that, from both starts.
IRET_RF_PUSHF = (
    b"\x66\x9c"                      # 1000 pushfd
    b"\x66\x58"                      # 1002 pop eax
    b"\x66\x0d\x00\x00\x01\x00"      # 1004 or eax, 0x10000      (RF)
    b"\x66\x50"                      # 100A push eax
    b"\x66\x0e"                      # 100C push cs              (32-bit)
    b"\x66\xe8\x08\x00\x00\x00"      # 100E call dword back      (pushes EIP 0x1014)
    b"\x66\x9c"                      # 1014 pushfd               (runs with RF set)
    b"\x66\x58"                      # 1016 pop eax
    b"\x66\xe7\x10"                  # 1018 out 0x10, eax
    b"\xf4"                          # 101B hlt
    b"\x66\xcf"                      # 101C back: iretd
)

SMSW_STORE = 0x2000
"""Where ``SMSW``'s memory form stores (16 bits; the host fills the bytes around it)."""

# SMSW into a 32-bit and a 16-bit register, MOV from CR0, and SMSW to memory, each result sent out.
# Host: real mode, rip=CODE; CR0 as set (0x60000010 from reset); bytes of 0xAA at SMSW_STORE.
# Exits: OUT port 0x10 size 4 data CR0 (smsw eax: all of CR0);
# OUT port 0x10 size 4 data 0x1234 << 16 | CR0 & 0xFFFF (smsw ax keeps eax's upper half);
# OUT port 0x10 size 4 data CR0 (mov ebx, cr0); OUT port 0x10 size 2 data CR0 & 0xFFFF (smsw to
# memory: 2 bytes, SMSW_STORE + 2 keeps 0xAA); HLT.
# Measured on this host's KVM: exactly that.
SMSW = (
    b"\x66\xb8\x78\x56\x34\x12"      # 1000 mov eax, 0x12345678
    b"\x66\x0f\x01\xe0"              # 1006 smsw eax
    b"\x66\xe7\x10"                  # 100A out 0x10, eax
    b"\x66\xb8\x78\x56\x34\x12"      # 100D mov eax, 0x12345678
    b"\x0f\x01\xe0"                  # 1013 smsw ax
    b"\x66\xe7\x10"                  # 1016 out 0x10, eax
    b"\x0f\x20\xc3"                  # 1019 mov ebx, cr0
    b"\x66\x89\xd8"                  # 101C mov eax, ebx
    b"\x66\xe7\x10"                  # 101F out 0x10, eax
    b"\x0f\x01\x26\x00\x20"          # 1022 smsw word ptr [SMSW_STORE]
    b"\xa1\x00\x20"                  # 1027 mov ax, [SMSW_STORE]
    b"\xe7\x10"                      # 102A out 0x10, ax
    b"\xf4"                          # 102C hlt
)

# CPUID of the leaf in eax (subleaf 0), each result register sent out: the guest's view of its CPUID.
# Host: real mode, rip=CODE, rax = the leaf.
# Exits: OUT port 0x50 size 4 with eax, ebx, ecx, edx in turn; then HLT.
# Measured on this host's KVM: leaf 0x40000000 gives 0x40000001 and "KVMKVMKVM\0\0\0" from supported_cpuid().
CPUID_OUT = (
    b"\x66\x31\xc9"  # xor ecx, ecx
    b"\x0f\xa2"      # cpuid
    b"\x66\xe7\x50"  # out 0x50, eax
    b"\x66\x89\xd8"  # mov eax, ebx
    b"\x66\xe7\x50"  # out 0x50, eax
    b"\x66\x89\xc8"  # mov eax, ecx
    b"\x66\xe7\x50"  # out 0x50, eax
    b"\x66\x89\xd0"  # mov eax, edx
    b"\x66\xe7\x50"  # out 0x50, eax
    b"\xf4"          # hlt
)
