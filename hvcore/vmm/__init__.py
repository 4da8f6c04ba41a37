"""The portable VMM layer: a ``Machine`` of memory, vCPU threads and device buses, on any backend.

- :mod:`.bus`: ``Bus`` (port IO or MMIO address space): device ranges, overlap errors, dispatch.
- :mod:`.device`: the ``Device`` protocol and what a device may ask of its machine.
- :mod:`.devices`: device models (UART, debug console, debug exit, i8042, CMOS/RTC, fw_cfg).
- :mod:`.loaders`: raw, ELF, multiboot, Linux bzImage and firmware images into guest memory.
- :mod:`.machine`: ``Machine``: the VM, its memory layout and vCPU threads, exits to devices.
"""
