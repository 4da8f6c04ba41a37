"""64-bit guests that program the in-kernel interrupt controllers and timers (issue 5).

Each is loaded at ``layout.CODE`` and started in 64-bit long mode at CPL 0 (see
``tests/guests/long_mode.py`` for the set-up) with the APIC window mapped
(``tests.boot.map_apic_window``: the LAPIC at 0xfee00000, the IOAPIC at 0xfec00000).
They build their IDT at ``IDT`` (64-bit interrupt gates, selector 0x08) and keep their
variables at ``VARS``: ticks/count at +0x10, a flag at +0x14, a vector at +0x18.
Interrupts end with ``iretq`` at CPL 0, which this host's KVM emulates (32-bit ``iret``
fails there). Each byte literal is one instruction, assembled with GNU as (Intel syntax);
the trailing comment is the disassembly at its address. With an irqchip HLT never exits,
so every guest reports through OUT.
"""

IDT = 0x3000
VARS = 0x5000
AP_STACK_TOP = 0x7000
SIPI_VECTOR = 0x0E
SIPI_ADDRESS = SIPI_VECTOR << 12
IPI_AP_ENTRY = 0x1097
"""Where vCPU 1 of ``IPI`` starts."""

# Programs both 8259s the BIOS way (ICW1-4: master at vector 0x20, slave at 0x28, only IRQ 0
# unmasked) and PIT channel 0 at 100 Hz (mode 2, divisor 11932), then `sti; hlt` until its ISR
# (vector 0x20: count, non-specific EOI to port 0x20) has counted 10 ticks; the tenth masks IRQ 0.
# Host: long mode, irqchip and PIT created before the vCPU.
# Exits: OUT port 0x10 size 4 data 10 (the tick count), nothing before it.
PIC_PIT_TICKS = (
    b"\xfa"                                    # 1000 cli
    b"\x48\x8d\x05\xa2\x00\x00\x00"            # 1001 lea rax,[rip+0xa2] # 0x10aa
    b"\x66\x89\x04\x25\x00\x32\x00\x00"        # 1008 mov WORD PTR ds:0x3200,ax
    b"\x66\xc7\x04\x25\x02\x32\x00\x00\x08\x00"# 1010 mov WORD PTR ds:0x3202,0x8
    b"\x66\xc7\x04\x25\x04\x32\x00\x00\x00\x8e"# 101A mov WORD PTR ds:0x3204,0x8e00
    b"\x48\xc1\xe8\x10"                        # 1024 shr rax,0x10
    b"\x66\x89\x04\x25\x06\x32\x00\x00"        # 1028 mov WORD PTR ds:0x3206,ax
    b"\x48\xc1\xe8\x10"                        # 1030 shr rax,0x10
    b"\x89\x04\x25\x08\x32\x00\x00"            # 1034 mov DWORD PTR ds:0x3208,eax
    b"\x66\xc7\x04\x25\x00\x50\x00\x00\xff\x0f"# 103B mov WORD PTR ds:0x5000,0xfff
    b"\xc7\x04\x25\x02\x50\x00\x00\x00\x30\x00\x00"# 1045 mov DWORD PTR ds:0x5002,0x3000
    b"\xc7\x04\x25\x06\x50\x00\x00\x00\x00\x00\x00"# 1050 mov DWORD PTR ds:0x5006,0x0
    b"\x0f\x01\x1c\x25\x00\x50\x00\x00"        # 105B lidt ds:0x5000
    b"\xb0\x11"                                # 1063 mov al,0x11
    b"\xe6\x20"                                # 1065 out 0x20,al
    b"\xe6\xa0"                                # 1067 out 0xa0,al
    b"\xb0\x20"                                # 1069 mov al,0x20
    b"\xe6\x21"                                # 106B out 0x21,al
    b"\xb0\x28"                                # 106D mov al,0x28
    b"\xe6\xa1"                                # 106F out 0xa1,al
    b"\xb0\x04"                                # 1071 mov al,0x4
    b"\xe6\x21"                                # 1073 out 0x21,al
    b"\xb0\x02"                                # 1075 mov al,0x2
    b"\xe6\xa1"                                # 1077 out 0xa1,al
    b"\xb0\x01"                                # 1079 mov al,0x1
    b"\xe6\x21"                                # 107B out 0x21,al
    b"\xe6\xa1"                                # 107D out 0xa1,al
    b"\xb0\xfe"                                # 107F mov al,0xfe
    b"\xe6\x21"                                # 1081 out 0x21,al
    b"\xb0\xff"                                # 1083 mov al,0xff
    b"\xe6\xa1"                                # 1085 out 0xa1,al
    b"\xb0\x34"                                # 1087 mov al,0x34
    b"\xe6\x43"                                # 1089 out 0x43,al
    b"\xb0\x9c"                                # 108B mov al,0x9c
    b"\xe6\x40"                                # 108D out 0x40,al
    b"\xb0\x2e"                                # 108F mov al,0x2e
    b"\xe6\x40"                                # 1091 out 0x40,al
    b"\xfb"                                    # 1093 sti
    b"\xf4"                                    # 1094 hlt
    b"\x83\x3c\x25\x10\x50\x00\x00\x0a"        # 1095 cmp DWORD PTR ds:0x5010,0xa
    b"\x72\xf5"                                # 109D jb 0x1094
    b"\xfa"                                    # 109F cli
    b"\x8b\x04\x25\x10\x50\x00\x00"            # 10A0 mov eax,DWORD PTR ds:0x5010
    b"\xe7\x10"                                # 10A7 out 0x10,eax
    b"\xf4"                                    # 10A9 hlt
    b"\x50"                                    # 10AA push rax
    b"\xff\x04\x25\x10\x50\x00\x00"            # 10AB inc DWORD PTR ds:0x5010
    b"\x83\x3c\x25\x10\x50\x00\x00\x0a"        # 10B2 cmp DWORD PTR ds:0x5010,0xa
    b"\x75\x04"                                # 10BA jne 0x10c0
    b"\xb0\xff"                                # 10BC mov al,0xff
    b"\xe6\x21"                                # 10BE out 0x21,al
    b"\xb0\x20"                                # 10C0 mov al,0x20
    b"\xe6\x20"                                # 10C2 out 0x20,al
    b"\x58"                                    # 10C4 pop rax
    b"\x48\xcf"                                # 10C5 iretq
)

# The PIT at 100 Hz reaching the CPU through IOAPIC pin 0 (vector 0x30, both PICs masked), as an
# APIC-based guest wires it: five ticks, each EOI'd at the LAPIC (the fifth masks the pin). KVM
# reinjects a missed PIT tick only after the previous one was acknowledged, so the IOAPIC path has
# to report those edge EOIs back to the PIT.
# Host: long mode with the APIC window mapped, irqchip and PIT.
# Exits: OUT 0x10 size 4 data 5.
PIT_IOAPIC_TICKS = (
    b"\xfa"                                      # 1000 cli
    b"\x48\x8d\x05\xb2\x00\x00\x00"              # 1001 lea rax,[rip+0xb2] # 0x10ba
    b"\x66\x89\x04\x25\x00\x33\x00\x00"          # 1008 mov WORD PTR ds:0x3300,ax
    b"\x66\xc7\x04\x25\x02\x33\x00\x00\x08\x00"  # 1010 mov WORD PTR ds:0x3302,0x8
    b"\x66\xc7\x04\x25\x04\x33\x00\x00\x00\x8e"  # 101A mov WORD PTR ds:0x3304,0x8e00
    b"\x48\xc1\xe8\x10"                          # 1024 shr rax,0x10
    b"\x66\x89\x04\x25\x06\x33\x00\x00"          # 1028 mov WORD PTR ds:0x3306,ax
    b"\x48\xc1\xe8\x10"                          # 1030 shr rax,0x10
    b"\x89\x04\x25\x08\x33\x00\x00"              # 1034 mov DWORD PTR ds:0x3308,eax
    b"\x66\xc7\x04\x25\x00\x50\x00\x00\xff\x0f"  # 103B mov WORD PTR ds:0x5000,0xfff
    b"\xc7\x04\x25\x02\x50\x00\x00\x00\x30\x00\x00"# 1045 mov DWORD PTR ds:0x5002,0x3000
    b"\xc7\x04\x25\x06\x50\x00\x00\x00\x00\x00\x00"# 1050 mov DWORD PTR ds:0x5006,0x0
    b"\x0f\x01\x1c\x25\x00\x50\x00\x00"          # 105B lidt ds:0x5000
    b"\xb0\xff"                                  # 1063 mov al,0xff
    b"\xe6\x21"                                  # 1065 out 0x21,al
    b"\xe6\xa1"                                  # 1067 out 0xa1,al
    b"\xbb\x00\x00\xe0\xfe"                      # 1069 mov ebx,0xfee00000
    b"\xbe\x00\x00\xc0\xfe"                      # 106E mov esi,0xfec00000
    b"\xc7\x83\xf0\x00\x00\x00\xff\x01\x00\x00"  # 1073 mov DWORD PTR [rbx+0xf0],0x1ff
    b"\xc7\x06\x10\x00\x00\x00"                  # 107D mov DWORD PTR [rsi],0x10
    b"\xc7\x46\x10\x30\x00\x00\x00"              # 1083 mov DWORD PTR [rsi+0x10],0x30
    b"\xc7\x06\x11\x00\x00\x00"                  # 108A mov DWORD PTR [rsi],0x11
    b"\xc7\x46\x10\x00\x00\x00\x00"              # 1090 mov DWORD PTR [rsi+0x10],0x0
    b"\xb0\x34"                                  # 1097 mov al,0x34
    b"\xe6\x43"                                  # 1099 out 0x43,al
    b"\xb0\x9c"                                  # 109B mov al,0x9c
    b"\xe6\x40"                                  # 109D out 0x40,al
    b"\xb0\x2e"                                  # 109F mov al,0x2e
    b"\xe6\x40"                                  # 10A1 out 0x40,al
    b"\xfb"                                      # 10A3 sti
    b"\xf4"                                      # 10A4 hlt
    b"\x83\x3c\x25\x10\x50\x00\x00\x05"          # 10A5 cmp DWORD PTR ds:0x5010,0x5
    b"\x72\xf5"                                  # 10AD jb 0x10a4
    b"\xfa"                                      # 10AF cli
    b"\x8b\x04\x25\x10\x50\x00\x00"              # 10B0 mov eax,DWORD PTR ds:0x5010
    b"\xe7\x10"                                  # 10B7 out 0x10,eax
    b"\xf4"                                      # 10B9 hlt
    b"\xff\x04\x25\x10\x50\x00\x00"              # 10BA inc DWORD PTR ds:0x5010
    b"\x83\x3c\x25\x10\x50\x00\x00\x05"          # 10C1 cmp DWORD PTR ds:0x5010,0x5
    b"\x75\x0d"                                  # 10C9 jne 0x10d8
    b"\xc7\x06\x10\x00\x00\x00"                  # 10CB mov DWORD PTR [rsi],0x10
    b"\xc7\x46\x10\x30\x00\x01\x00"              # 10D1 mov DWORD PTR [rsi+0x10],0x10030
    b"\xc7\x83\xb0\x00\x00\x00\x00\x00\x00\x00"  # 10D8 mov DWORD PTR [rbx+0xb0],0x0
    b"\x48\xcf"                                  # 10E2 iretq
)

# Masks both PICs, enables the LAPIC (SVR 0x1FF) and routes IOAPIC pin 5 to vector 0x45 (edge,
# fixed, physical destination APIC 0), says it is ready, then `sti; hlt` until the ISR ran.
# Host: long mode with the APIC window mapped, irqchip; after the ready exit it pulses GSI 5.
# Exits: OUT 0x10 size 1 data 1 (ready); OUT 0x11 size 1 data 0x45 (the vector the ISR saw).
IOAPIC_ROUTE = (
    b"\xfa"                                      # 1000 cli
    b"\x48\x8d\x05\xaa\x00\x00\x00"              # 1001 lea rax,[rip+0xaa] # 0x10b2
    b"\x66\x89\x04\x25\x50\x34\x00\x00"          # 1008 mov WORD PTR ds:0x3450,ax
    b"\x66\xc7\x04\x25\x52\x34\x00\x00\x08\x00"  # 1010 mov WORD PTR ds:0x3452,0x8
    b"\x66\xc7\x04\x25\x54\x34\x00\x00\x00\x8e"  # 101A mov WORD PTR ds:0x3454,0x8e00
    b"\x48\xc1\xe8\x10"                          # 1024 shr rax,0x10
    b"\x66\x89\x04\x25\x56\x34\x00\x00"          # 1028 mov WORD PTR ds:0x3456,ax
    b"\x48\xc1\xe8\x10"                          # 1030 shr rax,0x10
    b"\x89\x04\x25\x58\x34\x00\x00"              # 1034 mov DWORD PTR ds:0x3458,eax
    b"\x66\xc7\x04\x25\x00\x50\x00\x00\xff\x0f"  # 103B mov WORD PTR ds:0x5000,0xfff
    b"\xc7\x04\x25\x02\x50\x00\x00\x00\x30\x00\x00"# 1045 mov DWORD PTR ds:0x5002,0x3000
    b"\xc7\x04\x25\x06\x50\x00\x00\x00\x00\x00\x00"# 1050 mov DWORD PTR ds:0x5006,0x0
    b"\x0f\x01\x1c\x25\x00\x50\x00\x00"          # 105B lidt ds:0x5000
    b"\xb0\xff"                                  # 1063 mov al,0xff
    b"\xe6\x21"                                  # 1065 out 0x21,al
    b"\xe6\xa1"                                  # 1067 out 0xa1,al
    b"\xbb\x00\x00\xe0\xfe"                      # 1069 mov ebx,0xfee00000
    b"\xbe\x00\x00\xc0\xfe"                      # 106E mov esi,0xfec00000
    b"\xc7\x83\xf0\x00\x00\x00\xff\x01\x00\x00"  # 1073 mov DWORD PTR [rbx+0xf0],0x1ff
    b"\xc7\x06\x1a\x00\x00\x00"                  # 107D mov DWORD PTR [rsi],0x1a
    b"\xc7\x46\x10\x45\x00\x00\x00"              # 1083 mov DWORD PTR [rsi+0x10],0x45
    b"\xc7\x06\x1b\x00\x00\x00"                  # 108A mov DWORD PTR [rsi],0x1b
    b"\xc7\x46\x10\x00\x00\x00\x00"              # 1090 mov DWORD PTR [rsi+0x10],0x0
    b"\xb0\x01"                                  # 1097 mov al,0x1
    b"\xe6\x10"                                  # 1099 out 0x10,al
    b"\xfb"                                      # 109B sti
    b"\xf4"                                      # 109C hlt
    b"\x80\x3c\x25\x14\x50\x00\x00\x00"          # 109D cmp BYTE PTR ds:0x5014,0x0
    b"\x74\xf5"                                  # 10A5 je 0x109c
    b"\xfa"                                      # 10A7 cli
    b"\x8a\x04\x25\x18\x50\x00\x00"              # 10A8 mov al,BYTE PTR ds:0x5018
    b"\xe6\x11"                                  # 10AF out 0x11,al
    b"\xf4"                                      # 10B1 hlt
    b"\xc6\x04\x25\x14\x50\x00\x00\x01"          # 10B2 mov BYTE PTR ds:0x5014,0x1
    b"\xc6\x04\x25\x18\x50\x00\x00\x45"          # 10BA mov BYTE PTR ds:0x5018,0x45
    b"\xc7\x83\xb0\x00\x00\x00\x00\x00\x00\x00"  # 10C2 mov DWORD PTR [rbx+0xb0],0x0
    b"\x48\xcf"                                  # 10CC iretq
)

# LAPIC timer, periodic: vector 0x40, divide by 1, initial count 1,000,000 (1 ms at KVM's 1 ns
# bus cycle) until the ISR counted 5 ticks (the fifth masks and stops it); then one-shot (2 ms): after
# its tick the current-count register reads 0 (a periodic timer would have reloaded).
# Host: long mode with the APIC window mapped, irqchip.
# Exits: OUT 0x10 size 4 data 5; OUT 0x11 size 4 data 0 (current count); OUT 0x10 size 4 data 1.
LAPIC_TIMER = (
    b"\xfa"                                      # 1000 cli
    b"\x48\x8d\x05\xdc\x00\x00\x00"              # 1001 lea rax,[rip+0xdc] # 0x10e4
    b"\x66\x89\x04\x25\x00\x34\x00\x00"          # 1008 mov WORD PTR ds:0x3400,ax
    b"\x66\xc7\x04\x25\x02\x34\x00\x00\x08\x00"  # 1010 mov WORD PTR ds:0x3402,0x8
    b"\x66\xc7\x04\x25\x04\x34\x00\x00\x00\x8e"  # 101A mov WORD PTR ds:0x3404,0x8e00
    b"\x48\xc1\xe8\x10"                          # 1024 shr rax,0x10
    b"\x66\x89\x04\x25\x06\x34\x00\x00"          # 1028 mov WORD PTR ds:0x3406,ax
    b"\x48\xc1\xe8\x10"                          # 1030 shr rax,0x10
    b"\x89\x04\x25\x08\x34\x00\x00"              # 1034 mov DWORD PTR ds:0x3408,eax
    b"\x66\xc7\x04\x25\x00\x50\x00\x00\xff\x0f"  # 103B mov WORD PTR ds:0x5000,0xfff
    b"\xc7\x04\x25\x02\x50\x00\x00\x00\x30\x00\x00"# 1045 mov DWORD PTR ds:0x5002,0x3000
    b"\xc7\x04\x25\x06\x50\x00\x00\x00\x00\x00\x00"# 1050 mov DWORD PTR ds:0x5006,0x0
    b"\x0f\x01\x1c\x25\x00\x50\x00\x00"          # 105B lidt ds:0x5000
    b"\xbb\x00\x00\xe0\xfe"                      # 1063 mov ebx,0xfee00000
    b"\xc7\x83\xf0\x00\x00\x00\xff\x01\x00\x00"  # 1068 mov DWORD PTR [rbx+0xf0],0x1ff
    b"\xc7\x83\xe0\x03\x00\x00\x0b\x00\x00\x00"  # 1072 mov DWORD PTR [rbx+0x3e0],0xb
    b"\xc7\x83\x20\x03\x00\x00\x40\x00\x02\x00"  # 107C mov DWORD PTR [rbx+0x320],0x20040
    b"\xc7\x83\x80\x03\x00\x00\x40\x42\x0f\x00"  # 1086 mov DWORD PTR [rbx+0x380],0xf4240
    b"\xfb"                                      # 1090 sti
    b"\xf4"                                      # 1091 hlt
    b"\x83\x3c\x25\x10\x50\x00\x00\x05"          # 1092 cmp DWORD PTR ds:0x5010,0x5
    b"\x72\xf5"                                  # 109A jb 0x1091
    b"\xfa"                                      # 109C cli
    b"\x8b\x04\x25\x10\x50\x00\x00"              # 109D mov eax,DWORD PTR ds:0x5010
    b"\xe7\x10"                                  # 10A4 out 0x10,eax
    b"\xc7\x04\x25\x10\x50\x00\x00\x00\x00\x00\x00"# 10A6 mov DWORD PTR ds:0x5010,0x0
    b"\xc7\x83\x20\x03\x00\x00\x40\x00\x00\x00"  # 10B1 mov DWORD PTR [rbx+0x320],0x40
    b"\xc7\x83\x80\x03\x00\x00\x80\x84\x1e\x00"  # 10BB mov DWORD PTR [rbx+0x380],0x1e8480
    b"\xfb"                                      # 10C5 sti
    b"\xf4"                                      # 10C6 hlt
    b"\x83\x3c\x25\x10\x50\x00\x00\x01"          # 10C7 cmp DWORD PTR ds:0x5010,0x1
    b"\x72\xf5"                                  # 10CF jb 0x10c6
    b"\xfa"                                      # 10D1 cli
    b"\x8b\x83\x90\x03\x00\x00"                  # 10D2 mov eax,DWORD PTR [rbx+0x390]
    b"\xe7\x11"                                  # 10D8 out 0x11,eax
    b"\x8b\x04\x25\x10\x50\x00\x00"              # 10DA mov eax,DWORD PTR ds:0x5010
    b"\xe7\x10"                                  # 10E1 out 0x10,eax
    b"\xf4"                                      # 10E3 hlt
    b"\xff\x04\x25\x10\x50\x00\x00"              # 10E4 inc DWORD PTR ds:0x5010
    b"\x83\x3c\x25\x10\x50\x00\x00\x05"          # 10EB cmp DWORD PTR ds:0x5010,0x5
    b"\x75\x14"                                  # 10F3 jne 0x1109
    b"\xc7\x83\x20\x03\x00\x00\x40\x00\x01\x00"  # 10F5 mov DWORD PTR [rbx+0x320],0x10040
    b"\xc7\x83\x80\x03\x00\x00\x00\x00\x00\x00"  # 10FF mov DWORD PTR [rbx+0x380],0x0
    b"\xc7\x83\xb0\x00\x00\x00\x00\x00\x00\x00"  # 1109 mov DWORD PTR [rbx+0xb0],0x0
    b"\x48\xcf"                                  # 1113 iretq
)

# LAPIC timer in TSC-deadline mode (LVT timer 0x40040): the guest arms IA32_TSC_DEADLINE 2,000,000
# TSC ticks ahead with WRMSR, reads it back (armed: non-zero), sleeps in HLT until vector 0x40, then
# reads the MSR again: 0 once the deadline has fired.
# Host: long mode, APIC window, irqchip, the CPUID supported_cpuid() gives (TSC-deadline bit).
# Exits: OUT 0x12 size 4 data 1 (armed); OUT 0x11 size 4 data 0; OUT 0x10 size 4 data 1 (one tick).
TSC_DEADLINE = (
    b"\xfa"                                      # 1000 cli
    b"\x48\x8d\x05\xbd\x00\x00\x00"              # 1001 lea rax,[rip+0xbd] # 0x10c5
    b"\x66\x89\x04\x25\x00\x34\x00\x00"          # 1008 mov WORD PTR ds:0x3400,ax
    b"\x66\xc7\x04\x25\x02\x34\x00\x00\x08\x00"  # 1010 mov WORD PTR ds:0x3402,0x8
    b"\x66\xc7\x04\x25\x04\x34\x00\x00\x00\x8e"  # 101A mov WORD PTR ds:0x3404,0x8e00
    b"\x48\xc1\xe8\x10"                          # 1024 shr rax,0x10
    b"\x66\x89\x04\x25\x06\x34\x00\x00"          # 1028 mov WORD PTR ds:0x3406,ax
    b"\x48\xc1\xe8\x10"                          # 1030 shr rax,0x10
    b"\x89\x04\x25\x08\x34\x00\x00"              # 1034 mov DWORD PTR ds:0x3408,eax
    b"\x66\xc7\x04\x25\x00\x50\x00\x00\xff\x0f"  # 103B mov WORD PTR ds:0x5000,0xfff
    b"\xc7\x04\x25\x02\x50\x00\x00\x00\x30\x00\x00"# 1045 mov DWORD PTR ds:0x5002,0x3000
    b"\xc7\x04\x25\x06\x50\x00\x00\x00\x00\x00\x00"# 1050 mov DWORD PTR ds:0x5006,0x0
    b"\x0f\x01\x1c\x25\x00\x50\x00\x00"          # 105B lidt ds:0x5000
    b"\xbb\x00\x00\xe0\xfe"                      # 1063 mov ebx,0xfee00000
    b"\xc7\x83\xf0\x00\x00\x00\xff\x01\x00\x00"  # 1068 mov DWORD PTR [rbx+0xf0],0x1ff
    b"\xc7\x83\x20\x03\x00\x00\x40\x00\x04\x00"  # 1072 mov DWORD PTR [rbx+0x320],0x40040
    b"\x0f\x31"                                  # 107C rdtsc
    b"\x48\xc1\xe2\x20"                          # 107E shl rdx,0x20
    b"\x48\x09\xd0"                              # 1082 or rax,rdx
    b"\x48\x05\x80\x84\x1e\x00"                  # 1085 add rax,0x1e8480
    b"\x48\x89\xc2"                              # 108B mov rdx,rax
    b"\x48\xc1\xea\x20"                          # 108E shr rdx,0x20
    b"\xb9\xe0\x06\x00\x00"                      # 1092 mov ecx,0x6e0
    b"\x0f\x30"                                  # 1097 wrmsr
    b"\x0f\x32"                                  # 1099 rdmsr
    b"\x85\xc0"                                  # 109B test eax,eax
    b"\x0f\x95\xc0"                              # 109D setne al
    b"\x0f\xb6\xc0"                              # 10A0 movzx eax,al
    b"\xe7\x12"                                  # 10A3 out 0x12,eax
    b"\xfb"                                      # 10A5 sti
    b"\xf4"                                      # 10A6 hlt
    b"\x83\x3c\x25\x10\x50\x00\x00\x01"          # 10A7 cmp DWORD PTR ds:0x5010,0x1
    b"\x72\xf5"                                  # 10AF jb 0x10a6
    b"\xfa"                                      # 10B1 cli
    b"\xb9\xe0\x06\x00\x00"                      # 10B2 mov ecx,0x6e0
    b"\x0f\x32"                                  # 10B7 rdmsr
    b"\xe7\x11"                                  # 10B9 out 0x11,eax
    b"\x8b\x04\x25\x10\x50\x00\x00"              # 10BB mov eax,DWORD PTR ds:0x5010
    b"\xe7\x10"                                  # 10C2 out 0x10,eax
    b"\xf4"                                      # 10C4 hlt
    b"\xff\x04\x25\x10\x50\x00\x00"              # 10C5 inc DWORD PTR ds:0x5010
    b"\xc7\x83\xb0\x00\x00\x00\x00\x00\x00\x00"  # 10CC mov DWORD PTR [rbx+0xb0],0x0
    b"\x48\xcf"                                  # 10D6 iretq
)

# IOAPIC pin 6 level-triggered to vector 0x46. While the host holds the line high, every EOI
# re-delivers; the third ISR run asks the host to release it (OUT 0x14) before its EOI, and no
# fourth interrupt comes. Then the count and the redirection entry (remote IRR, bit 14, clear).
# Host: long mode, APIC window, irqchip; after OUT 0x10 it raises GSI 6; at OUT 0x14 lowers it.
# Exits: OUT 0x10 data 1; OUT 0x14 data 3; OUT 0x11 size 4 data 3; OUT 0x12 size 4 data 0x8046.
LEVEL_HELD = (
    b"\xfa"                                      # 1000 cli
    b"\x48\x8d\x05\xbe\x00\x00\x00"              # 1001 lea rax,[rip+0xbe] # 0x10c6
    b"\x66\x89\x04\x25\x60\x34\x00\x00"          # 1008 mov WORD PTR ds:0x3460,ax
    b"\x66\xc7\x04\x25\x62\x34\x00\x00\x08\x00"  # 1010 mov WORD PTR ds:0x3462,0x8
    b"\x66\xc7\x04\x25\x64\x34\x00\x00\x00\x8e"  # 101A mov WORD PTR ds:0x3464,0x8e00
    b"\x48\xc1\xe8\x10"                          # 1024 shr rax,0x10
    b"\x66\x89\x04\x25\x66\x34\x00\x00"          # 1028 mov WORD PTR ds:0x3466,ax
    b"\x48\xc1\xe8\x10"                          # 1030 shr rax,0x10
    b"\x89\x04\x25\x68\x34\x00\x00"              # 1034 mov DWORD PTR ds:0x3468,eax
    b"\x66\xc7\x04\x25\x00\x50\x00\x00\xff\x0f"  # 103B mov WORD PTR ds:0x5000,0xfff
    b"\xc7\x04\x25\x02\x50\x00\x00\x00\x30\x00\x00"# 1045 mov DWORD PTR ds:0x5002,0x3000
    b"\xc7\x04\x25\x06\x50\x00\x00\x00\x00\x00\x00"# 1050 mov DWORD PTR ds:0x5006,0x0
    b"\x0f\x01\x1c\x25\x00\x50\x00\x00"          # 105B lidt ds:0x5000
    b"\xb0\xff"                                  # 1063 mov al,0xff
    b"\xe6\x21"                                  # 1065 out 0x21,al
    b"\xe6\xa1"                                  # 1067 out 0xa1,al
    b"\xbb\x00\x00\xe0\xfe"                      # 1069 mov ebx,0xfee00000
    b"\xbe\x00\x00\xc0\xfe"                      # 106E mov esi,0xfec00000
    b"\xc7\x83\xf0\x00\x00\x00\xff\x01\x00\x00"  # 1073 mov DWORD PTR [rbx+0xf0],0x1ff
    b"\xc7\x06\x1c\x00\x00\x00"                  # 107D mov DWORD PTR [rsi],0x1c
    b"\xc7\x46\x10\x46\x80\x00\x00"              # 1083 mov DWORD PTR [rsi+0x10],0x8046
    b"\xc7\x06\x1d\x00\x00\x00"                  # 108A mov DWORD PTR [rsi],0x1d
    b"\xc7\x46\x10\x00\x00\x00\x00"              # 1090 mov DWORD PTR [rsi+0x10],0x0
    b"\xb0\x01"                                  # 1097 mov al,0x1
    b"\xe6\x10"                                  # 1099 out 0x10,al
    b"\xfb"                                      # 109B sti
    b"\xf4"                                      # 109C hlt
    b"\x83\x3c\x25\x10\x50\x00\x00\x03"          # 109D cmp DWORD PTR ds:0x5010,0x3
    b"\x72\xf5"                                  # 10A5 jb 0x109c
    b"\xb9\xe8\x03\x00\x00"                      # 10A7 mov ecx,0x3e8
    b"\xff\xc9"                                  # 10AC dec ecx
    b"\x75\xfc"                                  # 10AE jne 0x10ac
    b"\xfa"                                      # 10B0 cli
    b"\x8b\x04\x25\x10\x50\x00\x00"              # 10B1 mov eax,DWORD PTR ds:0x5010
    b"\xe7\x11"                                  # 10B8 out 0x11,eax
    b"\xc7\x06\x1c\x00\x00\x00"                  # 10BA mov DWORD PTR [rsi],0x1c
    b"\x8b\x46\x10"                              # 10C0 mov eax,DWORD PTR [rsi+0x10]
    b"\xe7\x12"                                  # 10C3 out 0x12,eax
    b"\xf4"                                      # 10C5 hlt
    b"\xff\x04\x25\x10\x50\x00\x00"              # 10C6 inc DWORD PTR ds:0x5010
    b"\x83\x3c\x25\x10\x50\x00\x00\x03"          # 10CD cmp DWORD PTR ds:0x5010,0x3
    b"\x75\x04"                                  # 10D5 jne 0x10db
    b"\xb0\x03"                                  # 10D7 mov al,0x3
    b"\xe6\x14"                                  # 10D9 out 0x14,al
    b"\xc7\x83\xb0\x00\x00\x00\x00\x00\x00\x00"  # 10DB mov DWORD PTR [rbx+0xb0],0x0
    b"\x48\xcf"                                  # 10E5 iretq
)

# IOAPIC pin 7 edge to vector 0x47, then `sti; hlt`: with an irqchip HLT sleeps inside run()
# until the host (from another thread) pulses GSI 7; the ISR records 0x47.
# Host: long mode, APIC window, irqchip.
# Exits: OUT 0x10 data 1 (ready); then, only after GSI 7 was pulsed, OUT 0x11 size 1 data 0x47.
HLT_WAKE = (
    b"\xfa"                                      # 1000 cli
    b"\x48\x8d\x05\xa0\x00\x00\x00"              # 1001 lea rax,[rip+0xa0] # 0x10a8
    b"\x66\x89\x04\x25\x70\x34\x00\x00"          # 1008 mov WORD PTR ds:0x3470,ax
    b"\x66\xc7\x04\x25\x72\x34\x00\x00\x08\x00"  # 1010 mov WORD PTR ds:0x3472,0x8
    b"\x66\xc7\x04\x25\x74\x34\x00\x00\x00\x8e"  # 101A mov WORD PTR ds:0x3474,0x8e00
    b"\x48\xc1\xe8\x10"                          # 1024 shr rax,0x10
    b"\x66\x89\x04\x25\x76\x34\x00\x00"          # 1028 mov WORD PTR ds:0x3476,ax
    b"\x48\xc1\xe8\x10"                          # 1030 shr rax,0x10
    b"\x89\x04\x25\x78\x34\x00\x00"              # 1034 mov DWORD PTR ds:0x3478,eax
    b"\x66\xc7\x04\x25\x00\x50\x00\x00\xff\x0f"  # 103B mov WORD PTR ds:0x5000,0xfff
    b"\xc7\x04\x25\x02\x50\x00\x00\x00\x30\x00\x00"# 1045 mov DWORD PTR ds:0x5002,0x3000
    b"\xc7\x04\x25\x06\x50\x00\x00\x00\x00\x00\x00"# 1050 mov DWORD PTR ds:0x5006,0x0
    b"\x0f\x01\x1c\x25\x00\x50\x00\x00"          # 105B lidt ds:0x5000
    b"\xb0\xff"                                  # 1063 mov al,0xff
    b"\xe6\x21"                                  # 1065 out 0x21,al
    b"\xe6\xa1"                                  # 1067 out 0xa1,al
    b"\xbb\x00\x00\xe0\xfe"                      # 1069 mov ebx,0xfee00000
    b"\xbe\x00\x00\xc0\xfe"                      # 106E mov esi,0xfec00000
    b"\xc7\x83\xf0\x00\x00\x00\xff\x01\x00\x00"  # 1073 mov DWORD PTR [rbx+0xf0],0x1ff
    b"\xc7\x06\x1e\x00\x00\x00"                  # 107D mov DWORD PTR [rsi],0x1e
    b"\xc7\x46\x10\x47\x00\x00\x00"              # 1083 mov DWORD PTR [rsi+0x10],0x47
    b"\xc7\x06\x1f\x00\x00\x00"                  # 108A mov DWORD PTR [rsi],0x1f
    b"\xc7\x46\x10\x00\x00\x00\x00"              # 1090 mov DWORD PTR [rsi+0x10],0x0
    b"\xb0\x01"                                  # 1097 mov al,0x1
    b"\xe6\x10"                                  # 1099 out 0x10,al
    b"\xfb"                                      # 109B sti
    b"\xf4"                                      # 109C hlt
    b"\xfa"                                      # 109D cli
    b"\x8a\x04\x25\x14\x50\x00\x00"              # 109E mov al,BYTE PTR ds:0x5014
    b"\xe6\x11"                                  # 10A5 out 0x11,al
    b"\xf4"                                      # 10A7 hlt
    b"\xc6\x04\x25\x14\x50\x00\x00\x47"          # 10A8 mov BYTE PTR ds:0x5014,0x47
    b"\xc7\x83\xb0\x00\x00\x00\x00\x00\x00\x00"  # 10B0 mov DWORD PTR [rbx+0xb0],0x0
    b"\x48\xcf"                                  # 10BA iretq
)

# Two vCPUs. vCPU 1 starts at `ap` (RSP 0x7000, mp_state set RUNNABLE by the host), reports its
# APIC ID register (OUT 0x15: 0x01000000), enables its LAPIC, flags 0x501C and sleeps in HLT;
# vCPU 0 waits for the flag, then sends a fixed IPI, vector 0x50, to APIC 1 through the ICR.
# Exits on vCPU 0: OUT 0x10 data 0x10 (sent). On vCPU 1: OUT 0x15 size 4 data 0x01000000, then
# OUT 0x12 data 0x50 (the vector its ISR saw).
IPI = (
    b"\xfa"                                      # 1000 cli
    b"\x48\x8d\x05\xeb\x00\x00\x00"              # 1001 lea rax,[rip+0xeb] # 0x10f3
    b"\x66\x89\x04\x25\x00\x35\x00\x00"          # 1008 mov WORD PTR ds:0x3500,ax
    b"\x66\xc7\x04\x25\x02\x35\x00\x00\x08\x00"  # 1010 mov WORD PTR ds:0x3502,0x8
    b"\x66\xc7\x04\x25\x04\x35\x00\x00\x00\x8e"  # 101A mov WORD PTR ds:0x3504,0x8e00
    b"\x48\xc1\xe8\x10"                          # 1024 shr rax,0x10
    b"\x66\x89\x04\x25\x06\x35\x00\x00"          # 1028 mov WORD PTR ds:0x3506,ax
    b"\x48\xc1\xe8\x10"                          # 1030 shr rax,0x10
    b"\x89\x04\x25\x08\x35\x00\x00"              # 1034 mov DWORD PTR ds:0x3508,eax
    b"\x66\xc7\x04\x25\x00\x50\x00\x00\xff\x0f"  # 103B mov WORD PTR ds:0x5000,0xfff
    b"\xc7\x04\x25\x02\x50\x00\x00\x00\x30\x00\x00"# 1045 mov DWORD PTR ds:0x5002,0x3000
    b"\xc7\x04\x25\x06\x50\x00\x00\x00\x00\x00\x00"# 1050 mov DWORD PTR ds:0x5006,0x0
    b"\x0f\x01\x1c\x25\x00\x50\x00\x00"          # 105B lidt ds:0x5000
    b"\xbb\x00\x00\xe0\xfe"                      # 1063 mov ebx,0xfee00000
    b"\xc7\x83\xf0\x00\x00\x00\xff\x01\x00\x00"  # 1068 mov DWORD PTR [rbx+0xf0],0x1ff
    b"\xf3\x90"                                  # 1072 pause
    b"\x80\x3c\x25\x1c\x50\x00\x00\x00"          # 1074 cmp BYTE PTR ds:0x501c,0x0
    b"\x74\xf4"                                  # 107C je 0x1072
    b"\xc7\x83\x10\x03\x00\x00\x00\x00\x00\x01"  # 107E mov DWORD PTR [rbx+0x310],0x1000000
    b"\xc7\x83\x00\x03\x00\x00\x50\x00\x00\x00"  # 1088 mov DWORD PTR [rbx+0x300],0x50
    b"\xb0\x10"                                  # 1092 mov al,0x10
    b"\xe6\x10"                                  # 1094 out 0x10,al
    b"\xf4"                                      # 1096 hlt
    b"\xfa"                                      # 1097 cli
    b"\x66\xc7\x04\x25\x00\x50\x00\x00\xff\x0f"  # 1098 mov WORD PTR ds:0x5000,0xfff
    b"\xc7\x04\x25\x02\x50\x00\x00\x00\x30\x00\x00"# 10A2 mov DWORD PTR ds:0x5002,0x3000
    b"\xc7\x04\x25\x06\x50\x00\x00\x00\x00\x00\x00"# 10AD mov DWORD PTR ds:0x5006,0x0
    b"\x0f\x01\x1c\x25\x00\x50\x00\x00"          # 10B8 lidt ds:0x5000
    b"\xbb\x00\x00\xe0\xfe"                      # 10C0 mov ebx,0xfee00000
    b"\xc7\x83\xf0\x00\x00\x00\xff\x01\x00\x00"  # 10C5 mov DWORD PTR [rbx+0xf0],0x1ff
    b"\x8b\x43\x20"                              # 10CF mov eax,DWORD PTR [rbx+0x20]
    b"\xe7\x15"                                  # 10D2 out 0x15,eax
    b"\xc6\x04\x25\x1c\x50\x00\x00\x01"          # 10D4 mov BYTE PTR ds:0x501c,0x1
    b"\xfb"                                      # 10DC sti
    b"\xf4"                                      # 10DD hlt
    b"\x80\x3c\x25\x14\x50\x00\x00\x00"          # 10DE cmp BYTE PTR ds:0x5014,0x0
    b"\x74\xf5"                                  # 10E6 je 0x10dd
    b"\xfa"                                      # 10E8 cli
    b"\x8a\x04\x25\x18\x50\x00\x00"              # 10E9 mov al,BYTE PTR ds:0x5018
    b"\xe6\x12"                                  # 10F0 out 0x12,al
    b"\xf4"                                      # 10F2 hlt
    b"\xc6\x04\x25\x14\x50\x00\x00\x01"          # 10F3 mov BYTE PTR ds:0x5014,0x1
    b"\xc6\x04\x25\x18\x50\x00\x00\x50"          # 10FB mov BYTE PTR ds:0x5018,0x50
    b"\xc7\x83\xb0\x00\x00\x00\x00\x00\x00\x00"  # 1103 mov DWORD PTR [rbx+0xb0],0x0
    b"\x48\xcf"                                  # 110D iretq
)

# vCPU 0 sends INIT, then a STARTUP IPI with vector 0x0E to APIC 1, and reports (OUT 0x10).
# vCPU 1 (created with the irqchip, so UNINITIALIZED) sleeps in run() until INIT and SIPI, then
# starts in real mode at 0x0E00:0000, where the host put SIPI_TRAMPOLINE.
# Exits on vCPU 0: OUT 0x10 data 0x10.
INIT_SIPI = (
    b"\xfa"                                      # 1000 cli
    b"\xbb\x00\x00\xe0\xfe"                      # 1001 mov ebx,0xfee00000
    b"\xc7\x83\xf0\x00\x00\x00\xff\x01\x00\x00"  # 1006 mov DWORD PTR [rbx+0xf0],0x1ff
    b"\xc7\x83\x10\x03\x00\x00\x00\x00\x00\x01"  # 1010 mov DWORD PTR [rbx+0x310],0x1000000
    b"\xc7\x83\x00\x03\x00\x00\x00\x45\x00\x00"  # 101A mov DWORD PTR [rbx+0x300],0x4500
    b"\xc7\x83\x10\x03\x00\x00\x00\x00\x00\x01"  # 1024 mov DWORD PTR [rbx+0x310],0x1000000
    b"\xc7\x83\x00\x03\x00\x00\x0e\x46\x00\x00"  # 102E mov DWORD PTR [rbx+0x300],0x460e
    b"\xb0\x10"                                  # 1038 mov al,0x10
    b"\xe6\x10"                                  # 103A out 0x10,al
    b"\xf4"                                      # 103C hlt
)

# Real-mode code at 0xE000 (SIPI vector 0x0E): reports CS (OUT 0x13 size 2: 0x0E00), then 0x5A.
# Exits: OUT 0x13 size 2 data 0x0E00; OUT 0x13 size 1 data 0x5A.
SIPI_TRAMPOLINE = (
    b"\xfa"      # 0000 cli
    b"\x8c\xc8"  # 0001 mov ax,cs
    b"\xe7\x13"  # 0003 out 0x13,ax
    b"\xb0\x5a"  # 0005 mov al,0x5a
    b"\xe6\x13"  # 0007 out 0x13,al
    b"\xf4"      # 0009 hlt
)

# Two self-IPIs (vectors 0x32 and 0x33, fixed, edge) sent with IF=0, then 3,000 loop rounds with
# IF=0, then `sti; nop; cli`: the interrupt window is the one instruction boundary before the cli
# (0x10CB), where both must land, 0x33 first (higher priority) and 0x32 right after its handler's
# EOI and iretq. Each ISR logs its vector (byte log at 0x5020) and its frame's RIP (0x5030, 0x5038).
# Host: long mode with the APIC window mapped, irqchip.
# Exits: OUT 0x10 size 4 data 2 (ISRs run by the cli); then (after `sti; hlt` until both ran)
# OUT 0x11 size 4 data 0x3233 (the log); OUT 0x12 size 4 data 0x10CB twice (the frames' RIPs).
WINDOW_CLI = 0x10CB
"""Where ``WINDOW_TWO_IPIS``'s interrupts strike: the cli after ``sti; nop``."""
WINDOW_TWO_IPIS = (
    b"\xfa"                                          # 1000 cli
    b"\x48\x8d\x05\xfd\x00\x00\x00"                  # 1001 lea rax,[rip+0xfd] # 0x1105
    b"\x66\x89\x04\x25\x30\x33\x00\x00"              # 1008 mov WORD PTR ds:0x3330,ax
    b"\x66\xc7\x04\x25\x32\x33\x00\x00\x08\x00"      # 1010 mov WORD PTR ds:0x3332,0x8
    b"\x66\xc7\x04\x25\x34\x33\x00\x00\x00\x8e"      # 101A mov WORD PTR ds:0x3334,0x8e00
    b"\x48\xc1\xe8\x10"                              # 1024 shr rax,0x10
    b"\x66\x89\x04\x25\x36\x33\x00\x00"              # 1028 mov WORD PTR ds:0x3336,ax
    b"\x48\xc1\xe8\x10"                              # 1030 shr rax,0x10
    b"\x89\x04\x25\x38\x33\x00\x00"                  # 1034 mov DWORD PTR ds:0x3338,eax
    b"\x48\x8d\x05\xbe\x00\x00\x00"                  # 103B lea rax,[rip+0xbe] # 0x1100
    b"\x66\x89\x04\x25\x20\x33\x00\x00"              # 1042 mov WORD PTR ds:0x3320,ax
    b"\x66\xc7\x04\x25\x22\x33\x00\x00\x08\x00"      # 104A mov WORD PTR ds:0x3322,0x8
    b"\x66\xc7\x04\x25\x24\x33\x00\x00\x00\x8e"      # 1054 mov WORD PTR ds:0x3324,0x8e00
    b"\x48\xc1\xe8\x10"                              # 105E shr rax,0x10
    b"\x66\x89\x04\x25\x26\x33\x00\x00"              # 1062 mov WORD PTR ds:0x3326,ax
    b"\x48\xc1\xe8\x10"                              # 106A shr rax,0x10
    b"\x89\x04\x25\x28\x33\x00\x00"                  # 106E mov DWORD PTR ds:0x3328,eax
    b"\x66\xc7\x04\x25\x00\x50\x00\x00\xff\x0f"      # 1075 mov WORD PTR ds:0x5000,0xfff
    b"\xc7\x04\x25\x02\x50\x00\x00\x00\x30\x00\x00"  # 107F mov DWORD PTR ds:0x5002,0x3000
    b"\xc7\x04\x25\x06\x50\x00\x00\x00\x00\x00\x00"  # 108A mov DWORD PTR ds:0x5006,0x0
    b"\x0f\x01\x1c\x25\x00\x50\x00\x00"              # 1095 lidt ds:0x5000
    b"\xbb\x00\x00\xe0\xfe"                          # 109D mov ebx,0xfee00000
    b"\xc7\x83\xf0\x00\x00\x00\xff\x01\x00\x00"      # 10A2 mov DWORD PTR [rbx+0xf0],0x1ff
    b"\xc7\x83\x00\x03\x00\x00\x32\x40\x04\x00"      # 10AC mov DWORD PTR [rbx+0x300],0x44032
    b"\xc7\x83\x00\x03\x00\x00\x33\x40\x04\x00"      # 10B6 mov DWORD PTR [rbx+0x300],0x44033
    b"\xb9\xb8\x0b\x00\x00"                          # 10C0 mov ecx,0xbb8
    b"\xff\xc9"                                      # 10C5 dec ecx
    b"\x75\xfc"                                      # 10C7 jne 0x10c5
    b"\xfb"                                          # 10C9 sti
    b"\x90"                                          # 10CA nop
    b"\xfa"                                          # 10CB cli
    b"\x8b\x04\x25\x10\x50\x00\x00"                  # 10CC mov eax,DWORD PTR ds:0x5010
    b"\xe7\x10"                                      # 10D3 out 0x10,eax
    b"\x83\x3c\x25\x10\x50\x00\x00\x02"              # 10D5 cmp DWORD PTR ds:0x5010,0x2
    b"\x73\x05"                                      # 10DD jae 0x10e4
    b"\xfb"                                          # 10DF sti
    b"\xf4"                                          # 10E0 hlt
    b"\xfa"                                          # 10E1 cli
    b"\xeb\xf1"                                      # 10E2 jmp 0x10d5
    b"\x8b\x04\x25\x20\x50\x00\x00"                  # 10E4 mov eax,DWORD PTR ds:0x5020
    b"\xe7\x11"                                      # 10EB out 0x11,eax
    b"\x8b\x04\x25\x30\x50\x00\x00"                  # 10ED mov eax,DWORD PTR ds:0x5030
    b"\xe7\x12"                                      # 10F4 out 0x12,eax
    b"\x8b\x04\x25\x38\x50\x00\x00"                  # 10F6 mov eax,DWORD PTR ds:0x5038
    b"\xe7\x12"                                      # 10FD out 0x12,eax
    b"\xf4"                                          # 10FF hlt
    b"\x50"                                          # 1100 push rax
    b"\xb0\x32"                                      # 1101 mov al,0x32
    b"\xeb\x03"                                      # 1103 jmp 0x1108
    b"\x50"                                          # 1105 push rax
    b"\xb0\x33"                                      # 1106 mov al,0x33
    b"\x51"                                          # 1108 push rcx
    b"\x8b\x0c\x25\x10\x50\x00\x00"                  # 1109 mov ecx,DWORD PTR ds:0x5010
    b"\x88\x81\x20\x50\x00\x00"                      # 1110 mov BYTE PTR [rcx+0x5020],al
    b"\x48\x8b\x44\x24\x10"                          # 1116 mov rax,QWORD PTR [rsp+0x10]
    b"\x48\x89\x04\xcd\x30\x50\x00\x00"              # 111B mov QWORD PTR [rcx*8+0x5030],rax
    b"\xff\x04\x25\x10\x50\x00\x00"                  # 1123 inc DWORD PTR ds:0x5010
    b"\xc7\x83\xb0\x00\x00\x00\x00\x00\x00\x00"      # 112A mov DWORD PTR [rbx+0xb0],0x0
    b"\x59"                                          # 1134 pop rcx
    b"\x58"                                          # 1135 pop rax
    b"\x48\xcf"                                      # 1136 iretq
)

# An NMI to self (ICR: NMI, physical destination 0) whose handler sends a second one, spins
# 1,000 rounds (the second must wait: NMIs stay blocked until IRET) and records the NMI count
# (0x5014), then returns with iretq: the second NMI strikes right there, at the instruction the
# first one interrupted (0x1086). The main code waits up to 100,000 rounds for both. The handler
# logs each frame's RIP at 0x5030 + 8 * n.
# Host: long mode with the APIC window mapped, irqchip.
# Exits: OUT 0x10 size 4 data 2 (NMIs); OUT 0x11 size 4 data 1 (NMIs by the end of the first
# handler); OUT 0x12 size 4 data 0x1086 twice (the frames' RIPs).
NMI_STRUCK = 0x1086
"""Where both of ``NMI_NESTED``'s NMIs strike: right after the ICR write (the second after the first's iretq)."""
NMI_NESTED = (
    b"\xfa"                                          # 1000 cli
    b"\x48\x8d\x05\xb6\x00\x00\x00"                  # 1001 lea rax,[rip+0xb6] # 0x10be
    b"\x66\x89\x04\x25\x20\x30\x00\x00"              # 1008 mov WORD PTR ds:0x3020,ax
    b"\x66\xc7\x04\x25\x22\x30\x00\x00\x08\x00"      # 1010 mov WORD PTR ds:0x3022,0x8
    b"\x66\xc7\x04\x25\x24\x30\x00\x00\x00\x8e"      # 101A mov WORD PTR ds:0x3024,0x8e00
    b"\x48\xc1\xe8\x10"                              # 1024 shr rax,0x10
    b"\x66\x89\x04\x25\x26\x30\x00\x00"              # 1028 mov WORD PTR ds:0x3026,ax
    b"\x48\xc1\xe8\x10"                              # 1030 shr rax,0x10
    b"\x89\x04\x25\x28\x30\x00\x00"                  # 1034 mov DWORD PTR ds:0x3028,eax
    b"\x66\xc7\x04\x25\x00\x50\x00\x00\xff\x0f"      # 103B mov WORD PTR ds:0x5000,0xfff
    b"\xc7\x04\x25\x02\x50\x00\x00\x00\x30\x00\x00"  # 1045 mov DWORD PTR ds:0x5002,0x3000
    b"\xc7\x04\x25\x06\x50\x00\x00\x00\x00\x00\x00"  # 1050 mov DWORD PTR ds:0x5006,0x0
    b"\x0f\x01\x1c\x25\x00\x50\x00\x00"              # 105B lidt ds:0x5000
    b"\xbb\x00\x00\xe0\xfe"                          # 1063 mov ebx,0xfee00000
    b"\xc7\x83\xf0\x00\x00\x00\xff\x01\x00\x00"      # 1068 mov DWORD PTR [rbx+0xf0],0x1ff
    b"\xc7\x83\x10\x03\x00\x00\x00\x00\x00\x00"      # 1072 mov DWORD PTR [rbx+0x310],0x0
    b"\xc7\x83\x00\x03\x00\x00\x00\x44\x00\x00"      # 107C mov DWORD PTR [rbx+0x300],0x4400
    b"\xb9\xa0\x86\x01\x00"                          # 1086 mov ecx,0x186a0
    b"\x83\x3c\x25\x10\x50\x00\x00\x02"              # 108B cmp DWORD PTR ds:0x5010,0x2
    b"\x73\x04"                                      # 1093 jae 0x1099
    b"\xff\xc9"                                      # 1095 dec ecx
    b"\x75\xf2"                                      # 1097 jne 0x108b
    b"\x8b\x04\x25\x10\x50\x00\x00"                  # 1099 mov eax,DWORD PTR ds:0x5010
    b"\xe7\x10"                                      # 10A0 out 0x10,eax
    b"\x8b\x04\x25\x14\x50\x00\x00"                  # 10A2 mov eax,DWORD PTR ds:0x5014
    b"\xe7\x11"                                      # 10A9 out 0x11,eax
    b"\x8b\x04\x25\x30\x50\x00\x00"                  # 10AB mov eax,DWORD PTR ds:0x5030
    b"\xe7\x12"                                      # 10B2 out 0x12,eax
    b"\x8b\x04\x25\x38\x50\x00\x00"                  # 10B4 mov eax,DWORD PTR ds:0x5038
    b"\xe7\x12"                                      # 10BB out 0x12,eax
    b"\xf4"                                          # 10BD hlt
    b"\x50"                                          # 10BE push rax
    b"\x51"                                          # 10BF push rcx
    b"\x8b\x0c\x25\x10\x50\x00\x00"                  # 10C0 mov ecx,DWORD PTR ds:0x5010
    b"\x48\x8b\x44\x24\x10"                          # 10C7 mov rax,QWORD PTR [rsp+0x10]
    b"\x48\x89\x04\xcd\x30\x50\x00\x00"              # 10CC mov QWORD PTR [rcx*8+0x5030],rax
    b"\xff\x04\x25\x10\x50\x00\x00"                  # 10D4 inc DWORD PTR ds:0x5010
    b"\x85\xc9"                                      # 10DB test ecx,ecx
    b"\x75\x21"                                      # 10DD jne 0x1100
    b"\xc7\x83\x00\x03\x00\x00\x00\x44\x00\x00"      # 10DF mov DWORD PTR [rbx+0x300],0x4400
    b"\xb9\xe8\x03\x00\x00"                          # 10E9 mov ecx,0x3e8
    b"\xff\xc9"                                      # 10EE dec ecx
    b"\x75\xfc"                                      # 10F0 jne 0x10ee
    b"\x8b\x04\x25\x10\x50\x00\x00"                  # 10F2 mov eax,DWORD PTR ds:0x5010
    b"\x89\x04\x25\x14\x50\x00\x00"                  # 10F9 mov DWORD PTR ds:0x5014,eax
    b"\x59"                                          # 1100 pop rcx
    b"\x58"                                          # 1101 pop rax
    b"\x48\xcf"                                      # 1102 iretq
)

# x2APIC through its MSRs. With CPUID x2APIC (supported_cpuid()), the guest sets IA32_APIC_BASE
# bits 10-11 by WRMSR, enables the APIC (SVR MSR 0x80f = 0x1ff) and reports its x2APIC ID (0x802)
# and LDR (0x80d: cluster 0, bit 0), then an MMIO read of the old window (all ones in x2APIC
# mode). Writing the read-only ID MSR and reading DFR (0x80e, absent in x2APIC mode) are #GP: the
# handler (vector 13) counts them at 0x5018 and skips the 2-byte instruction. With IF=0 it sends
# itself 0x61 through SELF_IPI (0x83f) and 0x62 through the 64-bit ICR (0x830, physical
# destination 0), takes both (`sti; hlt` until two ISRs ran), then routes IOAPIC pin 9 to 0x63 in
# logical mode, destination 0x01 (x2APIC cluster 0, member bit 0), and asks the host to pulse
# GSI 9. Each ISR logs its vector (byte log at 0x5020) and EOIs through MSR 0x80b.
# Host: long mode, APIC window, irqchip, supported CPUID; at OUT 0x13 it pulses GSI 9.
# Exits: OUT 0x10 size 4 data 0; OUT 0x11 size 4 data 1; OUT 0x12 size 4 data 0xffffffff;
# OUT 0x13 size 1 data 1; OUT 0x14 size 4 data 2 (#GPs); OUT 0x15 size 4 data 0x636162 (the log).
X2APIC_MSRS = (
    b"\xfa"                                          # 1000 cli
    b"\x48\x8d\x05\xc4\x01\x00\x00"                  # 1001 lea rax,[rip+0x1c4] # 0x11cc
    b"\x66\x89\x04\x25\x10\x36\x00\x00"              # 1008 mov WORD PTR ds:0x3610,ax
    b"\x66\xc7\x04\x25\x12\x36\x00\x00\x08\x00"      # 1010 mov WORD PTR ds:0x3612,0x8
    b"\x66\xc7\x04\x25\x14\x36\x00\x00\x00\x8e"      # 101A mov WORD PTR ds:0x3614,0x8e00
    b"\x48\xc1\xe8\x10"                              # 1024 shr rax,0x10
    b"\x66\x89\x04\x25\x16\x36\x00\x00"              # 1028 mov WORD PTR ds:0x3616,ax
    b"\x48\xc1\xe8\x10"                              # 1030 shr rax,0x10
    b"\x89\x04\x25\x18\x36\x00\x00"                  # 1034 mov DWORD PTR ds:0x3618,eax
    b"\x48\x8d\x05\x8f\x01\x00\x00"                  # 103B lea rax,[rip+0x18f] # 0x11d1
    b"\x66\x89\x04\x25\x20\x36\x00\x00"              # 1042 mov WORD PTR ds:0x3620,ax
    b"\x66\xc7\x04\x25\x22\x36\x00\x00\x08\x00"      # 104A mov WORD PTR ds:0x3622,0x8
    b"\x66\xc7\x04\x25\x24\x36\x00\x00\x00\x8e"      # 1054 mov WORD PTR ds:0x3624,0x8e00
    b"\x48\xc1\xe8\x10"                              # 105E shr rax,0x10
    b"\x66\x89\x04\x25\x26\x36\x00\x00"              # 1062 mov WORD PTR ds:0x3626,ax
    b"\x48\xc1\xe8\x10"                              # 106A shr rax,0x10
    b"\x89\x04\x25\x28\x36\x00\x00"                  # 106E mov DWORD PTR ds:0x3628,eax
    b"\x48\x8d\x05\x5a\x01\x00\x00"                  # 1075 lea rax,[rip+0x15a] # 0x11d6
    b"\x66\x89\x04\x25\x30\x36\x00\x00"              # 107C mov WORD PTR ds:0x3630,ax
    b"\x66\xc7\x04\x25\x32\x36\x00\x00\x08\x00"      # 1084 mov WORD PTR ds:0x3632,0x8
    b"\x66\xc7\x04\x25\x34\x36\x00\x00\x00\x8e"      # 108E mov WORD PTR ds:0x3634,0x8e00
    b"\x48\xc1\xe8\x10"                              # 1098 shr rax,0x10
    b"\x66\x89\x04\x25\x36\x36\x00\x00"              # 109C mov WORD PTR ds:0x3636,ax
    b"\x48\xc1\xe8\x10"                              # 10A4 shr rax,0x10
    b"\x89\x04\x25\x38\x36\x00\x00"                  # 10A8 mov DWORD PTR ds:0x3638,eax
    b"\x48\x8d\x05\x49\x01\x00\x00"                  # 10AF lea rax,[rip+0x149] # 0x11ff
    b"\x66\x89\x04\x25\xd0\x30\x00\x00"              # 10B6 mov WORD PTR ds:0x30d0,ax
    b"\x66\xc7\x04\x25\xd2\x30\x00\x00\x08\x00"      # 10BE mov WORD PTR ds:0x30d2,0x8
    b"\x66\xc7\x04\x25\xd4\x30\x00\x00\x00\x8e"      # 10C8 mov WORD PTR ds:0x30d4,0x8e00
    b"\x48\xc1\xe8\x10"                              # 10D2 shr rax,0x10
    b"\x66\x89\x04\x25\xd6\x30\x00\x00"              # 10D6 mov WORD PTR ds:0x30d6,ax
    b"\x48\xc1\xe8\x10"                              # 10DE shr rax,0x10
    b"\x89\x04\x25\xd8\x30\x00\x00"                  # 10E2 mov DWORD PTR ds:0x30d8,eax
    b"\x66\xc7\x04\x25\x00\x50\x00\x00\xff\x0f"      # 10E9 mov WORD PTR ds:0x5000,0xfff
    b"\xc7\x04\x25\x02\x50\x00\x00\x00\x30\x00\x00"  # 10F3 mov DWORD PTR ds:0x5002,0x3000
    b"\xc7\x04\x25\x06\x50\x00\x00\x00\x00\x00\x00"  # 10FE mov DWORD PTR ds:0x5006,0x0
    b"\x0f\x01\x1c\x25\x00\x50\x00\x00"              # 1109 lidt ds:0x5000
    b"\xb0\xff"                                      # 1111 mov al,0xff
    b"\xe6\x21"                                      # 1113 out 0x21,al
    b"\xe6\xa1"                                      # 1115 out 0xa1,al
    b"\xb9\x1b\x00\x00\x00"                          # 1117 mov ecx,0x1b
    b"\x0f\x32"                                      # 111C rdmsr
    b"\x0d\x00\x0c\x00\x00"                          # 111E or eax,0xc00
    b"\x0f\x30"                                      # 1123 wrmsr
    b"\x31\xd2"                                      # 1125 xor edx,edx
    b"\xb9\x0f\x08\x00\x00"                          # 1127 mov ecx,0x80f
    b"\xb8\xff\x01\x00\x00"                          # 112C mov eax,0x1ff
    b"\x0f\x30"                                      # 1131 wrmsr
    b"\xb9\x02\x08\x00\x00"                          # 1133 mov ecx,0x802
    b"\x0f\x32"                                      # 1138 rdmsr
    b"\xe7\x10"                                      # 113A out 0x10,eax
    b"\xb9\x0d\x08\x00\x00"                          # 113C mov ecx,0x80d
    b"\x0f\x32"                                      # 1141 rdmsr
    b"\xe7\x11"                                      # 1143 out 0x11,eax
    b"\xa1\x30\x00\xe0\xfe\x00\x00\x00\x00"          # 1145 movabs eax,ds:0xfee00030
    b"\xe7\x12"                                      # 114E out 0x12,eax
    b"\xb9\x02\x08\x00\x00"                          # 1150 mov ecx,0x802
    b"\x0f\x30"                                      # 1155 wrmsr
    b"\xb9\x0e\x08\x00\x00"                          # 1157 mov ecx,0x80e
    b"\x0f\x32"                                      # 115C rdmsr
    b"\x31\xd2"                                      # 115E xor edx,edx
    b"\xb9\x3f\x08\x00\x00"                          # 1160 mov ecx,0x83f
    b"\xb8\x61\x00\x00\x00"                          # 1165 mov eax,0x61
    b"\x0f\x30"                                      # 116A wrmsr
    b"\xb9\x30\x08\x00\x00"                          # 116C mov ecx,0x830
    b"\xb8\x62\x00\x00\x00"                          # 1171 mov eax,0x62
    b"\x0f\x30"                                      # 1176 wrmsr
    b"\x83\x3c\x25\x10\x50\x00\x00\x02"              # 1178 cmp DWORD PTR ds:0x5010,0x2
    b"\x73\x05"                                      # 1180 jae 0x1187
    b"\xfb"                                          # 1182 sti
    b"\xf4"                                          # 1183 hlt
    b"\xfa"                                          # 1184 cli
    b"\xeb\xf1"                                      # 1185 jmp 0x1178
    b"\xbe\x00\x00\xc0\xfe"                          # 1187 mov esi,0xfec00000
    b"\xc7\x06\x22\x00\x00\x00"                      # 118C mov DWORD PTR [rsi],0x22
    b"\xc7\x46\x10\x63\x08\x00\x00"                  # 1192 mov DWORD PTR [rsi+0x10],0x863
    b"\xc7\x06\x23\x00\x00\x00"                      # 1199 mov DWORD PTR [rsi],0x23
    b"\xc7\x46\x10\x00\x00\x00\x01"                  # 119F mov DWORD PTR [rsi+0x10],0x1000000
    b"\xb0\x01"                                      # 11A6 mov al,0x1
    b"\xe6\x13"                                      # 11A8 out 0x13,al
    b"\x83\x3c\x25\x10\x50\x00\x00\x03"              # 11AA cmp DWORD PTR ds:0x5010,0x3
    b"\x73\x05"                                      # 11B2 jae 0x11b9
    b"\xfb"                                          # 11B4 sti
    b"\xf4"                                          # 11B5 hlt
    b"\xfa"                                          # 11B6 cli
    b"\xeb\xf1"                                      # 11B7 jmp 0x11aa
    b"\x8b\x04\x25\x18\x50\x00\x00"                  # 11B9 mov eax,DWORD PTR ds:0x5018
    b"\xe7\x14"                                      # 11C0 out 0x14,eax
    b"\x8b\x04\x25\x20\x50\x00\x00"                  # 11C2 mov eax,DWORD PTR ds:0x5020
    b"\xe7\x15"                                      # 11C9 out 0x15,eax
    b"\xf4"                                          # 11CB hlt
    b"\x50"                                          # 11CC push rax
    b"\xb0\x61"                                      # 11CD mov al,0x61
    b"\xeb\x08"                                      # 11CF jmp 0x11d9
    b"\x50"                                          # 11D1 push rax
    b"\xb0\x62"                                      # 11D2 mov al,0x62
    b"\xeb\x03"                                      # 11D4 jmp 0x11d9
    b"\x50"                                          # 11D6 push rax
    b"\xb0\x63"                                      # 11D7 mov al,0x63
    b"\x51"                                          # 11D9 push rcx
    b"\x52"                                          # 11DA push rdx
    b"\x8b\x0c\x25\x10\x50\x00\x00"                  # 11DB mov ecx,DWORD PTR ds:0x5010
    b"\x88\x81\x20\x50\x00\x00"                      # 11E2 mov BYTE PTR [rcx+0x5020],al
    b"\xff\x04\x25\x10\x50\x00\x00"                  # 11E8 inc DWORD PTR ds:0x5010
    b"\xb9\x0b\x08\x00\x00"                          # 11EF mov ecx,0x80b
    b"\x31\xc0"                                      # 11F4 xor eax,eax
    b"\x31\xd2"                                      # 11F6 xor edx,edx
    b"\x0f\x30"                                      # 11F8 wrmsr
    b"\x5a"                                          # 11FA pop rdx
    b"\x59"                                          # 11FB pop rcx
    b"\x58"                                          # 11FC pop rax
    b"\x48\xcf"                                      # 11FD iretq
    b"\x48\x83\x44\x24\x08\x02"                      # 11FF add QWORD PTR [rsp+0x8],0x2
    b"\xff\x04\x25\x18\x50\x00\x00"                  # 1205 inc DWORD PTR ds:0x5018
    b"\x48\x83\xc4\x08"                              # 120C add rsp,0x8
    b"\x48\xcf"                                      # 1210 iretq
)
