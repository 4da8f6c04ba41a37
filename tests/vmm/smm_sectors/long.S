# As real.S, from 64-bit long mode (2 MiB identity map, EFER.LME, a 64-bit code segment): the save
# area then holds long-mode segments, CR3/CR4, EFER and R8-R15.
.include "common.inc"
.code16
.globl _start
_start:
    boot_sector_start
    enter_long_mode long64
.code64
long64:
    long_mode_registers
    mov $0xffffffffffffffff, %r15
    mov $0x1111115a, %eax
    outb %al, $0xb2
    jmp after_smi
after_smi:
    open_smram
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
    long_mode_gdt
marker:
    .ascii "SMMDUMP:"
    boot_signature
