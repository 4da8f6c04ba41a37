"""Guest-physical memory layout shared by the test guests and the tests that run them.

::

    0x00000 +---------------------------+  RAM slot: 0x0 .. RAM_SIZE (640 KiB), slot 0
            | IVT (real mode, 0x000-3FF)|
    0x00500 | GDT                       |  GDT (set up by the host; guests don't read it)
    0x01000 | CODE                      |  guest code, loaded here; real mode CS=0 IP=0x1000
            |   ...                     |
            |   stack (grows down)      |
    0x08000 | STACK_TOP                 |  initial rsp / sp
    0x09000 | PML4                      |  long mode page tables: identity map of the
    0x0A000 | PDPT                      |  first 1 GiB with 2 MiB pages, every level
    0x0B000 | PD                        |  with P | RW | U (the user bit is set)
    0x0C000 | APIC_PD                   |  the 4th GiB with 2 MiB pages (map_apic_window)
            |   ...                     |
    0x10000 | DATA                      |  DATA_SIZE (64 KiB) scratch buffer
    0x20000 |   ...                     |
    0xA0000 +---------------------------+  end of RAM
            |  (no slot)                |
    0xC0000 +---------------------------+
            | ROM                       |  ROM_SIZE (64 KiB) read-only slot (KVM_MEM_READONLY),
            |                           |  added by the tests that need it
    0xD0000 +---------------------------+
            | MMIO                      |  no slot: every access is an MMIO exit
            +---------------------------+

Real mode reaches DATA as 0x1000:0, ROM as 0xC000:0 and MMIO as 0xD000:0.
"""

RAM_BASE = 0x0
RAM_SIZE = 0xA0000  # 640 KiB
GDT = 0x500
CODE = 0x1000
STACK_TOP = 0x8000
PML4 = 0x9000
PDPT = 0xA000
PD = 0xB000
APIC_PD = 0xC000
DATA = 0x10000
DATA_SIZE = 0x10000  # 64 KiB
ROM = 0xC0000
ROM_SIZE = 0x10000  # 64 KiB
MMIO = 0xD0000
