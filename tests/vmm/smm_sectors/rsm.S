# SMM with its own handler: SMRAM opened and a handler copied to 0xA8000 (SeaBIOS's SMBASE + 0x8000)
# that rewrites the saved RAX and R9 and returns; from long mode, an SMI through the APM port, then
# RAX RBX R8 R9 RSP CR0 CR3 CR4 RFLAGS SS after RSM to the debug console after "REGDUMP:".
.include "common.inc"
.code16
.globl _start
_start:
    boot_sector_start
    open_smram
    mov $0xa800, %ax
    mov %ax, %es
    xor %di, %di
    mov $handler, %si
    mov $(handler_end - handler), %cx
    rep movsb
    enter_long_mode long64
handler:                       # 16-bit, at SMBASE + 0x8000: rewrite saved RAX and R9, then RSM
    addr32 movl $0x5a5a5a5a, (0xafff8)
    addr32 movl $0x12345678, (0xafffc)
    addr32 movl $0x99999999, (0xaffb0)
    rsm
handler_end:
.code64
long64:
    long_mode_registers
    mov $0x9191919191919191, %r9
    mov $0x1111115a, %eax
    outb %al, $0xb2
    jmp after_smi
after_smi:
    mov %rax, (0x5000)
    mov %rbx, (0x5008)
    mov %r8, (0x5010)
    mov %r9, (0x5018)
    mov %rsp, (0x5020)
    mov %cr0, %rax
    mov %rax, (0x5028)
    mov %cr3, %rax
    mov %rax, (0x5030)
    mov %cr4, %rax
    mov %rax, (0x5038)
    pushfq
    pop %rax
    mov %rax, (0x5040)
    mov %ss, %ax
    mov %ax, (0x5048)
    mov $0x402, %dx
    mov $marker, %esi
    mov $8, %ecx
    rep outsb
    mov $0x5000, %esi
    mov $0x50, %ecx
    rep outsb
    mov $0x31, %al
    outb %al, $0xf4
    hlt
    long_mode_gdt
marker:
    .ascii "REGDUMP:"
    boot_signature
