"""The simulator's in-kernel interrupt controllers and timers, modelled on KVM's.

- :mod:`.pic`: the 8259A pair (ports 0x20/0x21, 0xa0/0xa1, ELCR 0x4d0/0x4d1), KVM's ``i8259.c``.
- :mod:`.ioapic`: the IOAPIC at 0xfec00000, KVM's ``ioapic.c``.
- :mod:`.lapic`: one local APIC per vCPU at 0xfee00000, KVM's ``lapic.c``.
- :mod:`.pit`: the 8254 PIT (ports 0x40-0x43, 0x61) on IRQ 0, KVM's ``i8254.c``.
- :mod:`.message`: an interrupt on its way to local APICs.

Each model is plain Python with no Unicorn in it: registers in, state out, timers driven by a
:class:`hvcore_sim.clock.Clock`. :mod:`.chip` wires them to each other and to the vCPUs.
"""
