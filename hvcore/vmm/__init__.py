"""The portable VMM layer: a ``Machine`` of memory, vCPU threads and device buses, on any backend.

- :mod:`.bios`: the PICs, PIT and IVT a BIOS leaves, for multiboot kernels booted without one.
- :mod:`.bus`: ``Bus`` (port IO or MMIO address space): device ranges, overlap errors, dispatch.
- :mod:`.device`: the ``Device`` protocol and what a device may ask of its machine.
- :mod:`.devices`: device models (UART, debug console, debug exit, i8042, CMOS/RTC, fw_cfg, HPET).
- :mod:`.loaders`: raw, ELF, multiboot, Linux bzImage and firmware images into guest memory.
- :mod:`.machine`: ``Machine``: the VM, its memory layout and vCPU threads, exits to devices.
- :mod:`.pc`: the standard PC devices on a machine; :mod:`.run`: the ``hvcore run`` command.
- :mod:`.timers`: ``DeviceTimers``: callbacks at deadlines of the machine's clock, for devices.
"""

from hvcore.vmm.bus import Bus
from hvcore.vmm.device import Device, DeviceHost, IrqLine, StopRequest
from hvcore.vmm.loaders import BootPlan
from hvcore.vmm.machine import Machine, MachineResult, OvercommitWarning
from hvcore.vmm.pc import PcDevices, add_pc_devices
from hvcore.vmm.timers import DeviceTimers

__all__ = [
    "BootPlan",
    "Bus",
    "Device",
    "DeviceHost",
    "DeviceTimers",
    "IrqLine",
    "Machine",
    "MachineResult",
    "OvercommitWarning",
    "PcDevices",
    "StopRequest",
    "add_pc_devices",
]
