# SMM with its own handler: SMRAM opened and a handler copied to 0xA8000 (SeaBIOS's SMBASE + 0x8000)
# that rewrites the saved RAX and R9 and returns; from long mode, an SMI through the APM port, then
# RAX RBX R8 R9 RSP CR0 CR3 CR4 RFLAGS SS after RSM to the debug console after "REGDUMP:".
.code16
.globl _start
_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $0x7c00, %sp
    mov $0x80000070, %eax     # open SMRAM (D_OPEN | G_SMRAME) and put our handler at 0xA8000
    mov $0xcf8, %dx
    outl %eax, %dx
    mov $0xcfe, %dx
    mov $0x4a, %al
    outb %al, %dx
    mov $0xa800, %ax
    mov %ax, %es
    xor %di, %di
    mov $handler, %si
    mov $(handler_end - handler), %cx
    rep movsb
    xor %ax, %ax
    mov %ax, %es
    mov $0x1000, %di
    mov $0x1800, %cx
    rep stosw
    movw $0x2003, (0x1000)
    movw $0x3003, (0x2000)
    movw $0x0083, (0x3000)
    lgdtl gdtr
    mov $0x20, %eax
    mov %eax, %cr4
    mov $0x1000, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr
    mov $0x80000011, %eax
    mov %eax, %cr0
    ljmpl $0x08, $long64
handler:                       # 16-bit, at SMBASE + 0x8000: rewrite saved RAX and R9, then RSM
    addr32 movl $0x5a5a5a5a, (0xafff8)
    addr32 movl $0x12345678, (0xafffc)
    addr32 movl $0x99999999, (0xaffb0)
    rsm
handler_end:
.code64
long64:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $0x2222222222222222, %rbx
    mov $0x8888888888888888, %r8
    mov $0x9191919191919191, %r9
    mov $0x7000, %rsp
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
.align 8
gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
gdtr:
    .word 23
    .long gdt
marker:
    .ascii "REGDUMP:"
. = _start + 510
    .byte 0x55, 0xaa
