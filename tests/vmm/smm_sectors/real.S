# A boot sector (real mode): known registers, an SMI through the APM port (SeaBIOS ignores command
# 0x5a), then SMRAM opened (the i440FX D_OPEN) and the save area at 0xAFE00 written to the debug
# console after "SMMDUMP:"; isa-debug-exit 0x31. tests/vmm/test_smm_qemu.py assembles it.
.include "common.inc"
.code16
.globl _start
_start:
    boot_sector_start
    mov $0x22222222, %ebx
    mov $0x33333333, %ecx
    mov $0x55555555, %esi
    mov $0x66666666, %edi
    mov $0x77777777, %ebp
    mov $0x1111115a, %eax
    outb %al, $0xb2
    jmp after_smi
after_smi:
    open_smram
    mov $0x402, %dx
    mov $marker, %si
    mov $8, %cx
    rep outsb
    mov $0xafe0, %ax
    mov %ax, %ds
    xor %si, %si
    mov $512, %cx
    rep outsb
    mov $0x31, %al
    outb %al, $0xf4
    hlt
marker:
    .ascii "SMMDUMP:"
    boot_signature
