"""64-bit guests that use the HPET (``hvcore.vmm.devices.Hpet`` at 0xfed00000) on a ``Machine``.

Each is loaded at ``layout.CODE`` and started in 64-bit long mode at CPL 0 by
``Machine.boot(BootPlan("long", entry=0x1000))`` (its page tables are ``layout``'s: PML4 at
0x9000), with the 4th GiB mapped by ``tests.boot.map_apic_window`` (the HPET at 0xfed00000, the
IOAPIC at 0xfec00000, the LAPIC at 0xfee00000, uncached) and the PC devices plugged in. Each ends
by writing 0x21 to isa-debug-exit (the run ends with status 0x43) and leaves its results at
``VARS``. Each byte literal is one instruction, assembled with GNU as (Intel syntax) at 0x1000;
the trailing comment is the disassembly at its address.
"""

VARS = 0x5000
HPET_EXIT_STATUS = (0x21 << 1) | 1
"""The isa-debug-exit status both guests end with."""

# Reads the capabilities (two 4-byte reads) and the halted counter (8 bytes), sets ENABLE_CNF,
# reads the counter with 8-byte reads until it moves, then its high and low halves with 4-byte
# reads, clears ENABLE_CNF and reads the halted counter twice.
# VARS: +0x00 capabilities low, +0x04 period (fs), +0x08 counter before enabling, +0x10 first
# running read, +0x18 the first read that differs, +0x20 high half, +0x24 low half (in that
# order), +0x28 and +0x30 the two halted reads.
HPET_COUNTER_READS = (
    b"\xbb\x00\x00\xd0\xfe"              # 1000 mov ebx,0xfed00000
    b"\x8b\x03"                          # 1005 mov eax,DWORD PTR [rbx]
    b"\x89\x04\x25\x00\x50\x00\x00"      # 1007 mov DWORD PTR ds:0x5000,eax
    b"\x8b\x43\x04"                      # 100E mov eax,DWORD PTR [rbx+0x4]
    b"\x89\x04\x25\x04\x50\x00\x00"      # 1011 mov DWORD PTR ds:0x5004,eax
    b"\x48\x8b\x83\xf0\x00\x00\x00"      # 1018 mov rax,QWORD PTR [rbx+0xf0]
    b"\x48\x89\x04\x25\x08\x50\x00\x00"  # 101F mov QWORD PTR ds:0x5008,rax
    b"\xc7\x43\x10\x01\x00\x00\x00"      # 1027 mov DWORD PTR [rbx+0x10],0x1
    b"\x48\x8b\x8b\xf0\x00\x00\x00"      # 102E mov rcx,QWORD PTR [rbx+0xf0]
    b"\x48\x8b\x93\xf0\x00\x00\x00"      # 1035 mov rdx,QWORD PTR [rbx+0xf0]
    b"\x48\x39\xca"                      # 103C cmp rdx,rcx
    b"\x74\xf4"                          # 103F je 0x1035
    b"\x48\x89\x0c\x25\x10\x50\x00\x00"  # 1041 mov QWORD PTR ds:0x5010,rcx
    b"\x48\x89\x14\x25\x18\x50\x00\x00"  # 1049 mov QWORD PTR ds:0x5018,rdx
    b"\x8b\x83\xf4\x00\x00\x00"          # 1051 mov eax,DWORD PTR [rbx+0xf4]
    b"\x89\x04\x25\x20\x50\x00\x00"      # 1057 mov DWORD PTR ds:0x5020,eax
    b"\x8b\x83\xf0\x00\x00\x00"          # 105E mov eax,DWORD PTR [rbx+0xf0]
    b"\x89\x04\x25\x24\x50\x00\x00"      # 1064 mov DWORD PTR ds:0x5024,eax
    b"\xc7\x43\x10\x00\x00\x00\x00"      # 106B mov DWORD PTR [rbx+0x10],0x0
    b"\x48\x8b\x83\xf0\x00\x00\x00"      # 1072 mov rax,QWORD PTR [rbx+0xf0]
    b"\x48\x89\x04\x25\x28\x50\x00\x00"  # 1079 mov QWORD PTR ds:0x5028,rax
    b"\x48\x8b\x83\xf0\x00\x00\x00"      # 1081 mov rax,QWORD PTR [rbx+0xf0]
    b"\x48\x89\x04\x25\x30\x50\x00\x00"  # 1088 mov QWORD PTR ds:0x5030,rax
    b"\xb0\x21"                          # 1090 mov al,0x21
    b"\xe6\xf4"                          # 1092 out 0xf4,al
    b"\xf4"                              # 1094 hlt
)

# Masks both PICs, enables the LAPIC (SVR 0x1FF), routes IOAPIC pin 16 to vector 0x50 (edge,
# fixed, APIC 0), and programs HPET timer 0: route 16, periodic, INT_ENB_CNF, VAL_SET_CNF
# (config 0x204c), then the comparator twice with 8-byte writes of 100,000 ticks (1 ms): the first
# (VAL_SET_CNF) sets the first expiry, the second the period. It sets ENABLE_CNF and waits in
# `sti; hlt` until its ISR (vector 0x50: count, EOI) has run three times, then clears ENABLE_CNF
# and reads timer 0's comparator and the halted counter.
# VARS: +0x10 interrupts counted, +0x18 comparator, +0x20 counter.
HPET_PERIODIC_IRQ = (
    b"\xfa"                                          # 1000 cli
    b"\x48\x8d\x05\xf2\x00\x00\x00"                  # 1001 lea rax,[rip+0xf2] # 0x10fa
    b"\x66\x89\x04\x25\x00\x35\x00\x00"              # 1008 mov WORD PTR ds:0x3500,ax
    b"\x66\xc7\x04\x25\x02\x35\x00\x00\x08\x00"      # 1010 mov WORD PTR ds:0x3502,0x8
    b"\x66\xc7\x04\x25\x04\x35\x00\x00\x00\x8e"      # 101A mov WORD PTR ds:0x3504,0x8e00
    b"\x48\xc1\xe8\x10"                              # 1024 shr rax,0x10
    b"\x66\x89\x04\x25\x06\x35\x00\x00"              # 1028 mov WORD PTR ds:0x3506,ax
    b"\x48\xc1\xe8\x10"                              # 1030 shr rax,0x10
    b"\x89\x04\x25\x08\x35\x00\x00"                  # 1034 mov DWORD PTR ds:0x3508,eax
    b"\x66\xc7\x04\x25\x00\x50\x00\x00\xff\x0f"      # 103B mov WORD PTR ds:0x5000,0xfff
    b"\xc7\x04\x25\x02\x50\x00\x00\x00\x30\x00\x00"  # 1045 mov DWORD PTR ds:0x5002,0x3000
    b"\xc7\x04\x25\x06\x50\x00\x00\x00\x00\x00\x00"  # 1050 mov DWORD PTR ds:0x5006,0x0
    b"\x0f\x01\x1c\x25\x00\x50\x00\x00"              # 105B lidt ds:0x5000
    b"\xb0\xff"                                      # 1063 mov al,0xff
    b"\xe6\x21"                                      # 1065 out 0x21,al
    b"\xe6\xa1"                                      # 1067 out 0xa1,al
    b"\xbb\x00\x00\xe0\xfe"                          # 1069 mov ebx,0xfee00000
    b"\xbe\x00\x00\xc0\xfe"                          # 106E mov esi,0xfec00000
    b"\xbf\x00\x00\xd0\xfe"                          # 1073 mov edi,0xfed00000
    b"\xc7\x83\xf0\x00\x00\x00\xff\x01\x00\x00"      # 1078 mov DWORD PTR [rbx+0xf0],0x1ff
    b"\xc7\x06\x30\x00\x00\x00"                      # 1082 mov DWORD PTR [rsi],0x30
    b"\xc7\x46\x10\x50\x00\x00\x00"                  # 1088 mov DWORD PTR [rsi+0x10],0x50
    b"\xc7\x06\x31\x00\x00\x00"                      # 108F mov DWORD PTR [rsi],0x31
    b"\xc7\x46\x10\x00\x00\x00\x00"                  # 1095 mov DWORD PTR [rsi+0x10],0x0
    b"\xc7\x87\x00\x01\x00\x00\x4c\x20\x00\x00"      # 109C mov DWORD PTR [rdi+0x100],0x204c
    b"\x48\xc7\x87\x08\x01\x00\x00\xa0\x86\x01\x00"  # 10A6 mov QWORD PTR [rdi+0x108],0x186a0
    b"\x48\xc7\x87\x08\x01\x00\x00\xa0\x86\x01\x00"  # 10B1 mov QWORD PTR [rdi+0x108],0x186a0
    b"\xc7\x47\x10\x01\x00\x00\x00"                  # 10BC mov DWORD PTR [rdi+0x10],0x1
    b"\xfb"                                          # 10C3 sti
    b"\xf4"                                          # 10C4 hlt
    b"\x83\x3c\x25\x10\x50\x00\x00\x03"              # 10C5 cmp DWORD PTR ds:0x5010,0x3
    b"\x72\xf5"                                      # 10CD jb 0x10c4
    b"\xfa"                                          # 10CF cli
    b"\xc7\x47\x10\x00\x00\x00\x00"                  # 10D0 mov DWORD PTR [rdi+0x10],0x0
    b"\x48\x8b\x87\x08\x01\x00\x00"                  # 10D7 mov rax,QWORD PTR [rdi+0x108]
    b"\x48\x89\x04\x25\x18\x50\x00\x00"              # 10DE mov QWORD PTR ds:0x5018,rax
    b"\x48\x8b\x87\xf0\x00\x00\x00"                  # 10E6 mov rax,QWORD PTR [rdi+0xf0]
    b"\x48\x89\x04\x25\x20\x50\x00\x00"              # 10ED mov QWORD PTR ds:0x5020,rax
    b"\xb0\x21"                                      # 10F5 mov al,0x21
    b"\xe6\xf4"                                      # 10F7 out 0xf4,al
    b"\xf4"                                          # 10F9 hlt
    b"\xff\x04\x25\x10\x50\x00\x00"                  # 10FA inc DWORD PTR ds:0x5010
    b"\xc7\x83\xb0\x00\x00\x00\x00\x00\x00\x00"      # 1101 mov DWORD PTR [rbx+0xb0],0x0
    b"\x48\xcf"                                      # 110B iretq
)
