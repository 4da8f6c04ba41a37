# As real.S, from 64-bit long mode (2 MiB identity map, EFER.LME, a 64-bit code segment): the save
# area then holds long-mode segments, CR3/CR4, EFER and R8-R15.
.code16
.globl _start
_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $0x7c00, %sp
    mov $0x1000, %di          # zero 3 pages of page tables at 0x1000
    mov $0x1800, %cx
    rep stosw
    movw $0x2003, (0x1000)    # PML4[0] -> PDPT
    movw $0x3003, (0x2000)    # PDPT[0] -> PD
    movw $0x0083, (0x3000)    # PD[0]: 2 MiB page at 0
    lgdtl gdtr
    mov $0x20, %eax           # CR4.PAE
    mov %eax, %cr4
    mov $0x1000, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx     # EFER.LME
    rdmsr
    or $0x100, %eax
    wrmsr
    mov $0x80000011, %eax     # PG | ET | PE
    mov %eax, %cr0
    ljmpl $0x08, $long64
.code64
long64:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $0x2222222222222222, %rbx
    mov $0x8888888888888888, %r8
    mov $0xffffffffffffffff, %r15
    mov $0x7000, %rsp
    mov $0x1111115a, %eax
    outb %al, $0xb2
    jmp after_smi
after_smi:
    mov $0x80000070, %eax
    mov $0xcf8, %dx
    outl %eax, %dx
    mov $0xcfe, %dx
    mov $0x4a, %al
    outb %al, %dx
    mov $0x402, %dx
    mov $marker, %esi
    mov $8, %ecx
    rep outsb
    mov $0xafe00, %esi
    mov $512, %ecx
    rep outsb
    mov $0x31, %al
    outb %al, $0xf4
    hlt
.align 8
gdt:
    .quad 0
    .quad 0x00af9a000000ffff   # 0x08: 64-bit code
    .quad 0x00cf92000000ffff   # 0x10: data
gdtr:
    .word 23
    .long gdt
marker:
    .ascii "SMMDUMP:"
. = _start + 510
    .byte 0x55, 0xaa
