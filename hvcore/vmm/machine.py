"""``Machine``: a VM with its memory layout, vCPU threads and device buses, on any backend.

::

    with Machine(hvcore.open_hypervisor("auto"), memory=256 << 20, cpus=2) as machine:
        add_pc_devices(machine, console=sys.stdout.buffer)   # COM1, debugcon, CMOS, fw_cfg, ...
        machine.load(open("bios.bin", "rb").read())
        result = machine.run(timeout=30)                      # start, wait, stop
    print(result.reason, result.status, machine.stats)

Memory: RAM from guest-physical 0 up to the 32-bit hole (3 GiB), the rest from 4 GiB; ROMs
(firmware) read-only where loaders put them. With an irqchip (the default) every vCPU gets a
thread: vCPU 0 starts as the image says, the others wait for INIT/SIPI as on real hardware.
Exits go to the IO and MMIO buses; unclaimed reads answer all-ones, unclaimed writes are
counted. Devices count the VM clock (``clock()``) and arm callbacks at its deadlines on
``timers`` (one thread, started by the first timer; a callback's error ends the run).
``pause()``/``resume()`` hold every vCPU between exits; ``stop()`` (or a device's stop
request, a triple fault, an error) ends the run, and ``close()`` joins every thread and closes
the VM. A Linux kernel booted directly (with an irqchip) gets ACPI tables at ``ACPI_TABLES``:
every vCPU and the IOAPIC in the MADT, ``acpi_devices`` (virtio-mmio) and the PCI bus (``pci``) in
the DSDT and MCFG; firmware gets the same tables through ``fw_cfg`` (QEMU's table loader).
CPU hotplug: ``Machine(cpus=4, present=2)`` starts with vCPUs 2 and 3 unplugged (the MADT lists
them disabled but online-capable); ``plug_vcpu``/``unplug_vcpu`` work on a running machine, and
with the ACPI hotplug device (``cpu_hotplug``, which ``add_pc_devices`` plugs in) the guest is
told: a plug is an insert event and GPE, ``request_vcpu_unplug`` asks the guest to eject a vCPU,
and a guest's eject (``_EJ0``) unplugs it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import TracebackType
from typing import IO, TYPE_CHECKING

from hvcore import x86
from hvcore.arguments import (
    check_bytes,
    check_flag,
    check_implements,
    check_instance,
    check_int,
    check_str,
    check_timeout,
)
from hvcore.caps import Capability
from hvcore.checks import MAX_GSI
from hvcore.errors import (
    BusConflict,
    HvError,
    ImageError,
    InvalidArgument,
    ResourceExhausted,
    StateError,
    Unsupported,
)
from hvcore.exits import (
    DebugExit,
    Exit,
    HltExit,
    InternalErrorExit,
    InternalErrorSuberror,
    InterruptedExit,
    IoExit,
    IrqWindowOpenExit,
    MmioExit,
    ShutdownExit,
)
from hvcore.log import get_logger
from hvcore.memory import PAGE_SIZE, SMM_ADDRESS_SPACE, GuestMemory
from hvcore.protocol import VCPU, VM, Hypervisor
from hvcore.trace import TracingVCPU
from hvcore.types import PIT_FLAGS_HPET_LEGACY, SlotFlags
from hvcore.vmm.acpi import AcpiCpuHotplug, AcpiDevice, build_acpi
from hvcore.vmm.acpi.loader import acpi_files
from hvcore.vmm.bios import set_up_bios_state
from hvcore.vmm.bus import Bus, check_range_arguments
from hvcore.vmm.cpuid import vcpu_cpuid
from hvcore.vmm.device import Device, DeviceHost, IrqLine, StopRequest
from hvcore.vmm.loaders import BootPlan
from hvcore.vmm.loaders.detect import detect
from hvcore.vmm.loaders.detect import load as load_image
from hvcore.vmm.smram import SMRAM_BASE, SMRAM_END, SmramWindow
from hvcore.vmm.timers import DeviceTimers

if TYPE_CHECKING:
    from hvcore.vmm.devices.cpu_hotplug import CpuHotplug
    from hvcore.vmm.devices.fw_cfg import FwCfg
    from hvcore.vmm.pci import PciHost

__all__ = [
    "ACPI_TABLES",
    "HIGH_RAM_START",
    "HOLE_START",
    "Machine",
    "MachineResult",
    "OvercommitWarning",
    "check_vcpu_count",
    "vcpu_limits",
]

HOLE_START = 0xC000_0000
"""RAM below 4 GiB ends here; the hole holds the IOAPIC, LAPIC and firmware ROM."""
HIGH_RAM_START = 1 << 32
"""Where RAM above the hole continues."""
_LOW_SLOT, _HIGH_SLOT, _SMRAM_SLOT, _LOW_TOP_SLOT, _FIRST_ROM_SLOT = 0, 1, 2, 3, 8
ACPI_TABLES = 0xE0000
"""Where a direct kernel boot's ACPI tables go, the RSDP first (E820-reserved; the BIOS area Linux scans)."""
_REGISTER_NAMES = {f"e{r}": f"r{r}" for r in ("ax", "bx", "cx", "dx", "si", "di", "sp", "bp")}
_log = get_logger("vmm.machine")


@dataclass(frozen=True)
class MachineResult:
    """How a run ended: ``reason`` (``"stopped"``, ``"debug-exit"``, ``"reset"``, ``"shutdown"`` (a triple
    fault), ``"internal-error"`` (an instruction the hypervisor could not emulate, e.g. code fetched from
    MMIO), ``"halted"``, ``"timeout"``, ``"error"``), the guest's exit ``status`` where it chose one,
    and the error that ended it, if any."""

    reason: str
    status: int | None = None
    error: BaseException | None = None


def _check_load_arguments(image: object, format: object, cmdline: object, initrd: object, name: object) -> None:
    check_bytes("image", image, "load")
    check_str("format", format, "load")
    check_str("cmdline", cmdline, "load")
    if initrd is not None:
        check_bytes("initrd", initrd, "load")
    check_str("name", name, "load")


def _internal_error(exit_: InternalErrorExit) -> str:
    """``KVM_EXIT_INTERNAL_ERROR`` in words: ``internal error 1 (EMULATION), data 0x0 0x1000``."""
    try:
        name = f" ({InternalErrorSuberror(exit_.suberror).name})"
    except ValueError:
        name = ""
    data = f", data {' '.join(hex(word) for word in exit_.data)}" if exit_.data else ""
    return f"internal error {exit_.suberror}{name}{data}"


class _Line:
    """An irqchip line for devices."""

    def __init__(self, vm: VM, gsi: int) -> None:
        self._vm, self._gsi = vm, gsi

    def set(self, level: bool) -> None:
        self._vm.irq_line(self._gsi, level)

    def pulse(self) -> None:
        self._vm.irq_line(self._gsi, True)
        self._vm.irq_line(self._gsi, False)


def _check_machine_arguments(
    hypervisor: object, memory: object, cpus: object, irqchip: object, present: object
) -> None:
    check_implements("hypervisor", hypervisor, Hypervisor, "Machine")
    check_int("memory", memory, "Machine")
    check_int("cpus", cpus, "Machine")
    check_flag("irqchip", irqchip, "Machine")
    if present is not None:
        check_int("present", present, "Machine")


class OvercommitWarning(UserWarning):
    """More vCPUs than the hypervisor recommends (its soft limit, ``KVM_CAP_NR_VCPUS``: the host's CPUs)."""


def vcpu_limits(hypervisor: Hypervisor) -> tuple[int, int]:
    """The hypervisor's soft limit (recommended vCPUs) and hard limit (most vCPUs per VM)."""
    return hypervisor.recommended_vcpus(), hypervisor.max_vcpus()


def check_vcpu_count(hypervisor: Hypervisor, cpus: int, operation: str) -> None:
    """As QEMU's ``kvm_init``: ``InvalidArgument`` above the hard limit (naming both), an
    :class:`OvercommitWarning` above the soft one (the vCPUs then share host CPUs: slower, not wrong)."""
    soft, hard = vcpu_limits(hypervisor)
    if not 1 <= cpus <= hard:
        raise InvalidArgument(
            f"{cpus} vCPUs: backend {hypervisor.name!r} takes 1 to {hard} (its hard limit; it recommends at most "
            f"{soft}, its soft limit)",
            operation=operation,
        )
    if cpus > soft:
        warnings.warn(
            f"{cpus} vCPUs is more than backend {hypervisor.name!r} recommends ({soft}, its soft limit: the host's "
            f"CPUs); they will share host CPUs (the hard limit is {hard})",
            OvercommitWarning,
            stacklevel=3,
        )


class Machine:
    """A VM, its memory, devices and vCPU threads. See the module docstring."""

    def __init__(
        self,
        hypervisor: Hypervisor,
        *,
        memory: int = 256 << 20,
        cpus: int = 1,
        irqchip: bool = True,
        trace: IO[str] | None = None,
        present: int | None = None,
        smm: bool | None = None,
    ) -> None:
        _check_machine_arguments(hypervisor, memory, cpus, irqchip, present)
        if smm is not None:
            smm = check_flag("smm", smm, "Machine")
        if present is not None and not 1 <= present <= cpus:
            raise InvalidArgument(
                f"present={present} with cpus={cpus}: between 1 (the bootstrap processor) and cpus vCPUs are "
                "present at start; the others start unplugged, for plug_vcpu() to add",
                operation="Machine",
            )
        if memory < (1 << 20) or memory % PAGE_SIZE:
            raise InvalidArgument(
                f"memory must be whole pages and at least 1 MiB, got {memory:#x}", operation="Machine"
            )
        check_vcpu_count(hypervisor, cpus, "Machine")
        if cpus > 1 and not irqchip:
            raise InvalidArgument("more than one vCPU needs the irqchip (for INIT/SIPI)", operation="Machine")
        self.hypervisor = hypervisor
        self.cpus = cpus
        self.io_bus = Bus("io", 0x10000)
        self.mmio_bus = Bus("mmio", 1 << 52)
        self.stats: Counter[str] = Counter()
        self.plan: BootPlan | None = None
        self._trace = trace
        self._memories: list[GuestMemory] = []
        self._rom_slot = _FIRST_ROM_SLOT
        self._lock = threading.Lock()
        self._resumed = threading.Event()
        self._resumed.set()
        self._done = threading.Event()
        self._launched = threading.Event()  # every vCPU thread started: they may enter the guest
        self._threads: list[threading.Thread] = []
        self._thread_of: dict[int, threading.Thread] = {}
        self._unplugged: set[int] = set()
        self._result: MachineResult | None = None
        self._reported = False
        self._closed = False
        self.timers = DeviceTimers(self.clock, on_error=self._device_failed, name="hvcore-device-timers")
        """Device timers on the VM clock (their thread starts with the first timer armed)."""
        self.vm = hypervisor.create_vm()
        self._smi_wanted: set[int] = set()  # vCPUs to send an SMI before their next run
        try:
            has_smm = bool(self.vm.check_extension(Capability.X86_SMM))
            if smm and not has_smm:
                raise Unsupported(
                    f"smm=True: backend {hypervisor.name!r} has no SMM (KVM_CAP_X86_SMM is 0); leave smm unset "
                    "to use it where the backend has it",
                    operation="Machine",
                )
            self.smm = has_smm if smm is None else smm
            """Whether the vCPUs have System Management Mode: then every slot is mapped in address space 1
            too, and the SMRAM window (:attr:`smram`) follows the chipset's SMRAM register there. By default
            where the backend has it; ``Machine(smm=False)`` leaves it out, as QEMU's ``-machine smm=off``."""
            self._spaces = (0, SMM_ADDRESS_SPACE) if self.smm else (0,)
            self.irqchip = irqchip
            if irqchip:
                self.vm.create_irqchip()
                self.vm.create_pit()
            low = min(memory, HOLE_START)
            self._low = GuestMemory(low)
            self._memories.append(self._low)
            self._map(_LOW_SLOT, 0, self._low, size=SMRAM_BASE)
            self.smram = SmramWindow(self.vm, self._low, _SMRAM_SLOT, smm=self.smm)
            """RAM at 0xA0000-0xBFFFF: plain RAM until a chipset's SMRAM register says otherwise."""
            self._map(_LOW_TOP_SLOT, SMRAM_END, self._low, offset=SMRAM_END)
            self._high_size = memory - low
            if self._high_size:
                self._add_ram(_HIGH_SLOT, HIGH_RAM_START, self._high_size)
            self.vcpus: list[VCPU] = [self.vm.create_vcpu(i) for i in range(cpus)]
            for vcpu in self.vcpus:
                vcpu.set_cpuid(vcpu_cpuid(hypervisor.supported_cpuid(), vcpu.id))
            for vcpu in self.vcpus[cpus if present is None else present :]:
                vcpu.close()  # parked: plug_vcpu() brings it in
                self._unplugged.add(vcpu.id)
        except BaseException:
            self._release()
            raise
        self.device_host = DeviceHost(irq=self.irq, request_stop=self.request_stop, timers=self.timers)
        self.acpi_devices: list[AcpiDevice] = []
        """Devices the ACPI tables describe (the DSDT) for a kernel that cannot probe them (virtio-mmio)."""
        self.pci: PciHost | None = None
        """The PCI bus, once :func:`hvcore.vmm.pci.add_pci_host` gave the machine one."""
        self.fw_cfg: FwCfg | None = None
        """The fw_cfg device firmware takes its ACPI tables from (``add_pc_devices`` plugs one in)."""
        self.cpu_hotplug: CpuHotplug | None = None
        """The ACPI CPU hotplug registers (``add_pc_devices`` plugs them in): with them the ACPI tables
        have a processor device per vCPU and a GPE, and plugging and unplugging tell the guest."""

    # -- memory (the loaders' LoadTarget) ------------------------------------------------------

    def _add_ram(self, slot: int, address: int, size: int) -> GuestMemory:
        memory = GuestMemory(size)
        self._memories.append(memory)
        self._map(slot, address, memory)
        return memory

    def _map(
        self,
        slot: int,
        address: int,
        memory: GuestMemory,
        *,
        offset: int = 0,
        size: int | None = None,
        flags: SlotFlags = SlotFlags(0),
    ) -> None:
        """A slot in address space 0 and, where the vCPUs have SMM, the same in address space 1."""
        for space in self._spaces:
            self.vm.set_memory_slot(slot, address, memory, offset=offset, size=size, flags=flags, address_space=space)

    @property
    def ram_size(self) -> int:
        """Bytes of RAM from guest-physical 0."""
        return self._low.size

    @property
    def high_ram_size(self) -> int:
        """Bytes of RAM from 4 GiB."""
        return self._high_size

    def _locate(self, address: int, length: int) -> list[tuple[GuestMemory, int, int]]:
        """``(memory, offset, length)`` pieces of RAM outside SMM covering ``[address, address + length)``;
        adjacent slots join (RAM around the SMRAM window is three)."""
        pieces: list[tuple[GuestMemory, int, int]] = []
        at, end = address, address + length
        while True:
            slot = next(
                (
                    s
                    for s in self.vm.memory_slots()
                    if s.address_space == 0 and not s.readonly and s.guest_address <= at < s.end
                ),
                None,
            )
            if slot is None:
                break
            piece = min(end, slot.end) - at
            pieces.append((slot.memory, slot.offset + at - slot.guest_address, piece))
            at += piece
            if at >= end:
                return pieces
        window = "" if self.smram.mapped[0] else f", but not the SMRAM window {SMRAM_BASE:#x}..{SMRAM_END:#x}"
        raise ImageError(
            f"guest-physical {address:#x}+{length:#x} is not RAM (RAM: 0..{self.ram_size:#x}{window}"
            + (f", {HIGH_RAM_START:#x}..{HIGH_RAM_START + self._high_size:#x}" if self._high_size else "")
            + "); give the machine more memory or load the image elsewhere",
            operation="load",
        )

    def write(self, address: int, data: bytes) -> None:
        """Write guest RAM."""
        check_int("address", address, "write")
        check_bytes("data", data, "write")
        done = 0
        for memory, offset, length in self._locate(address, len(data)):
            memory.write(offset, data[done : done + length])
            done += length

    def read(self, address: int, length: int) -> bytes:
        """Read guest RAM."""
        check_int("address", address, "read")
        check_int("length", length, "read", 0)
        pieces = self._locate(address, length)
        if len(pieces) == 1:
            memory, offset, _ = pieces[0]
            return memory.read(offset, length)
        return b"".join(memory.read(offset, piece) for memory, offset, piece in pieces)

    def add_rom(self, address: int, data: bytes) -> None:
        """Map ``data`` read-only at ``address`` (page aligned, padded to whole pages).

        An MMIO device may share the range: the guest reads the ROM and its writes go to the device.
        """
        check_int("address", address, "add_rom")
        check_bytes("data", data, "add_rom")
        if address % PAGE_SIZE:
            raise ImageError(f"a ROM must start on a page boundary, not {address:#x}", operation="add_rom")
        size = -(-len(data) // PAGE_SIZE) * PAGE_SIZE
        rom = GuestMemory(size)
        self._memories.append(rom)
        rom.write(0, data)
        self._map(self._rom_slot, address, rom, flags=SlotFlags.READONLY)
        self._rom_slot += 1

    # -- devices ---------------------------------------------------------------------------------

    def add_io_device(self, base: int, length: int, device: Device) -> None:
        """Put ``device`` at ports ``[base, base + length)``."""
        self.io_bus.register(base, length, device)
        _log.info("io %#x+%#x: %s", base, length, device.name)

    def add_mmio_device(self, base: int, length: int, device: Device) -> None:
        """Put ``device`` at guest-physical ``[base, base + length)``, outside RAM.

        ``BusConflict`` where the range overlaps RAM (the guest's accesses there reach the RAM, never
        the device) or another device. Over a ROM the device sees the guest's writes (a flash chip's
        command interface); reads come from the ROM.
        """
        check_range_arguments(base, length, device)
        for slot in self.vm.memory_slots():
            outside_smm = slot.address_space == 0  # SMRAM answers only a vCPU in SMM
            if outside_smm and not slot.readonly and slot.guest_address < base + length and base < slot.end:
                raise BusConflict(
                    f"{device.name} at mmio {base:#x}+{length:#x} overlaps memory slot {slot.slot} "
                    f"(RAM {slot.guest_address:#x}..{slot.end:#x}): the guest's accesses there reach the RAM, "
                    f"never the device; pick a range outside RAM (e.g. in the 32-bit hole from {HOLE_START:#x})",
                    operation="add_mmio_device",
                )
        self.mmio_bus.register(base, length, device)
        _log.info("mmio %#x+%#x: %s", base, length, device.name)

    def irq(self, gsi: int) -> IrqLine | None:
        """The irqchip line for GSI ``gsi`` (``None`` without an irqchip)."""
        check_int("gsi", gsi, "irq", 0, MAX_GSI)
        return _Line(self.vm, gsi) if self.irqchip else None

    def clock(self) -> int:
        """The VM clock in nanoseconds (``KVM_GET_CLOCK``): the time device models count."""
        return self.vm.get_clock().clock

    def set_pit_hpet_legacy(self, active: bool) -> None:
        """Take IRQ 0 from the in-kernel PIT while the HPET's legacy replacement route drives it.

        Sets or clears ``PIT_FLAGS_HPET_LEGACY`` (``KVM_SET_PIT2``), as QEMU does when the guest
        flips the HPET's LEG_RT_CNF; nothing without an irqchip (there is no PIT then).
        """
        active = check_flag("active", active, "set_pit_hpet_legacy")
        if not self.irqchip:
            return
        state = self.vm.get_pit()
        flags = state.flags | PIT_FLAGS_HPET_LEGACY if active else state.flags & ~PIT_FLAGS_HPET_LEGACY
        if flags != state.flags:
            self.vm.set_pit(replace(state, flags=flags))

    def _device_failed(self, error: BaseException) -> None:
        self.stop(MachineResult("error", error=error))

    # -- loading -----------------------------------------------------------------------------------

    def load(
        self, image: bytes, *, format: str = "auto", cmdline: str = "", initrd: bytes | None = None, name: str = ""
    ) -> BootPlan:
        """Load ``image`` (format detected unless given) and set vCPU 0 up to start it.

        ``name``, the image's file name, starts a multiboot kernel's command line (as GRUB and QEMU do).
        """
        _check_load_arguments(image, format, cmdline, initrd, name)
        self._require_stopped("load")
        kind = detect(image) if format == "auto" else format
        rsdp = ACPI_TABLES if kind == "bzimage" and self.irqchip else 0  # (the MADT describes the irqchip)
        plan = load_image(image, self, format=kind, cmdline=cmdline, initrd=initrd, name=name, acpi_rsdp=rsdp)
        pci = self.pci.acpi() if self.pci is not None else None
        present = set(range(self.cpus)) - self._unplugged
        hotplug = AcpiCpuHotplug() if self.cpu_hotplug is not None else None
        if rsdp:
            self.write(rsdp, build_acpi(rsdp, self.cpus, self.acpi_devices, pci, present=present, hotplug=hotplug))
        elif kind == "firmware" and self.irqchip and self.fw_cfg is not None:
            for file, data in acpi_files(self.cpus, self.acpi_devices, pci, present=present, hotplug=hotplug).items():
                self.fw_cfg.put_file(file, data)
        self.boot(plan)
        _log.info("loaded %s", plan.description)
        return plan

    def boot(self, plan: BootPlan) -> None:
        """Set vCPU 0 up as ``plan`` says (the reset state for firmware), after the BIOS state it asks for."""
        check_instance("plan", plan, BootPlan, "boot")
        self._require_stopped("boot")
        vcpu = self.vcpus[0]
        if plan.bios_state and self.irqchip:
            set_up_bios_state(vcpu, self)
        if plan.mode != "reset":
            sregs = vcpu.get_sregs()
            memory = self._low
            if plan.mode == "real":
                sregs = x86.real_mode_sregs(sregs)
            elif plan.mode == "protected":
                sregs = x86.protected_mode_sregs(sregs, memory, plan.gdt)
            else:
                sregs = x86.long_mode_sregs(sregs, memory, plan.gdt, plan.page_tables)
            vcpu.set_sregs(sregs)
            named = {_REGISTER_NAMES.get(name, name): value for name, value in plan.regs.items()}  # eax -> rax
            regs = replace(vcpu.get_regs(), rip=plan.entry, rflags=0x2, **named)
            vcpu.set_regs(regs)
        self.plan = plan

    # -- running -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start one thread per vCPU.

        All or nothing: the threads enter the guest once every one of them has started; when one
        cannot be started (the process is out of threads or memory) the others are stopped and
        joined before ``ResourceExhausted`` is raised, and no guest code has run.
        """
        if self._closed:
            raise StateError("the machine is closed", operation="start")
        if self._threads:
            raise StateError("the machine is already running; stop() it first", operation="start")
        self._done.clear()
        self._launched.clear()
        self._result = None
        self._reported = False
        _log.info("starting %d vCPU thread(s) on %s", len(self.vcpus), self.hypervisor.name)
        vcpus: list[VCPU] = self.vcpus
        if self._trace is not None:
            vcpus = [TracingVCPU(vcpus[0], self._trace, vm=self.vm, backend=self.hypervisor.name), *vcpus[1:]]
        for vcpu in vcpus:
            if vcpu.id in self._unplugged:
                continue
            thread = threading.Thread(target=self._vcpu_loop, args=(vcpu,), name=f"hvcore-vcpu{vcpu.id}", daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:  # "can't start new thread"
                started = len(self._threads)
                self.stop(MachineResult("error", error=exc))
                self._launched.set()
                self._join()
                raise ResourceExhausted(
                    f"could not start the thread for vCPU {vcpu.id} ({exc}); the {started} vCPU thread(s) already "
                    "started were stopped before running the guest: free threads or memory, or use fewer vCPUs",
                    operation="start",
                ) from exc
            self._threads.append(thread)
            self._thread_of[vcpu.id] = thread
        self._launched.set()

    def wait(self, timeout: float | None = None) -> MachineResult | None:
        """Wait until the run ends; its result, or ``None`` if ``timeout`` passed first."""
        timeout = check_timeout("timeout", timeout, "wait")
        if not self._done.wait(timeout):
            return None
        self._join()
        if not self._reported:
            self._reported = True
            self._report()
        return self._result

    def _report(self) -> None:
        """The run's end, its exits by kind and the device accesses, at INFO."""
        if not _log.isEnabledFor(logging.INFO):
            return
        result = self._result
        _log.info("run ended: %s", result)
        _log.info("exits: %s", ", ".join(f"{kind} {count}" for kind, count in sorted(self.stats.items())) or "none")
        for bus in (self.io_bus, self.mmio_bus):
            names = sorted(set(bus.reads) | set(bus.writes))
            accesses = [f"{name} {bus.reads[name]}r/{bus.writes[name]}w" for name in names]
            unclaimed = f"unclaimed {bus.unclaimed_reads}r/{bus.unclaimed_writes}w"
            _log.info("%s accesses: %s", bus.name, ", ".join([*accesses, unclaimed]))

    def run(self, timeout: float | None = None) -> MachineResult:
        """Start, wait until the guest stops (or ``timeout`` seconds), stop; how it ended."""
        timeout = check_timeout("timeout", timeout, "run")
        self.start()
        result = self.wait(timeout)
        if result is None:
            self.stop(MachineResult("timeout"))
            result = self.wait()
        assert result is not None
        return result

    def pause(self) -> None:
        """Hold every vCPU at its next exit (kicks them so that comes at once)."""
        self._resumed.clear()
        self._kick_all()

    def resume(self) -> None:
        """Let paused vCPUs run again."""
        self._resumed.set()

    @property
    def paused(self) -> bool:
        """Whether ``pause()`` holds the vCPUs."""
        return not self._resumed.is_set()

    def request_stop(self, request: StopRequest) -> None:
        """A device's stop request (debug exit, reset)."""
        check_instance("request", request, StopRequest, "request_stop")
        self.stop(MachineResult(request.reason, request.status))

    def stop(self, result: MachineResult | None = None) -> None:
        """End the run: every vCPU leaves at its next exit (they are kicked); the first result set wins."""
        if result is not None:
            check_instance("result", result, MachineResult, "stop")
        with self._lock:
            if self._result is None:
                self._result = result or MachineResult("stopped")
        self._done.set()
        self._resumed.set()
        self._kick_all()

    def _kick_all(self) -> None:
        for vcpu in self.vcpus:
            with contextlib.suppress(HvError):  # closed already
                vcpu.kick()

    def _join(self) -> None:
        while any(thread.is_alive() for thread in self._threads):
            self._kick_all()  # a kick can land before a vCPU enters run(): repeat until all left
            for thread in self._threads:
                thread.join(0.05)
        self._threads = []
        self._thread_of = {}

    # -- CPU hotplug -----------------------------------------------------------------------------

    def unplug_vcpu(self, vcpu_id: int) -> None:
        """Take vCPU ``vcpu_id`` out, running or not: its thread leaves at its next exit and is joined,
        and the vCPU is closed (parked in the VM, as KVM keeps it). The rest of the machine runs on.

        The guest is not asked (a surprise removal: unplug a CPU it has offlined, or use
        :meth:`request_vcpu_unplug`); the hotplug registers report it absent from now on. A guest's
        eject (``_EJ0``) ends here too. vCPU 0 (the bootstrap processor) stays, as on QEMU's PC.
        ``StateError`` if it is out already.
        """
        check_int("vcpu_id", vcpu_id, "unplug_vcpu", 1, self.cpus)
        with self._lock:
            if vcpu_id in self._unplugged:
                raise StateError(f"vCPU {vcpu_id} is unplugged already", operation="unplug_vcpu")
            self._unplugged.add(vcpu_id)
            thread = self._thread_of.pop(vcpu_id, None)
        vcpu = self.vcpus[vcpu_id]
        if thread is not None and thread is not threading.current_thread():
            while thread.is_alive():
                with contextlib.suppress(HvError):
                    vcpu.kick()
                thread.join(0.05)
            self._threads = [t for t in self._threads if t is not thread]
        vcpu.close()
        if self.cpu_hotplug is not None:
            self.cpu_hotplug.removed(vcpu_id)
        _log.info("vCPU %d unplugged (parked: %s)", vcpu_id, sorted(self.vm.parked_vcpus()))

    def plug_vcpu(self, vcpu_id: int) -> VCPU:
        """Put an unplugged vCPU back: the parked vCPU comes back in reset state with its CPUID, and a
        running machine gives it a thread, where it waits for INIT/SIPI as an application processor does.

        With the ACPI hotplug device the guest is told (an insert event, the hotplug GPE, the SCI):
        Linux adds the CPU (``/sys/devices/system/cpu/cpuN``) and starts it when it is onlined."""
        check_int("vcpu_id", vcpu_id, "plug_vcpu", 1, self.cpus)
        with self._lock:
            if vcpu_id not in self._unplugged:
                raise StateError(f"vCPU {vcpu_id} is plugged in; unplug_vcpu() it first", operation="plug_vcpu")
        vcpu = self.vm.create_vcpu(vcpu_id)
        if not vcpu.get_cpuid():  # a parked vCPU keeps the CPUID given at start, which KVM may take only once
            vcpu.set_cpuid(vcpu_cpuid(self.hypervisor.supported_cpuid(), vcpu_id))
        self.vcpus[vcpu_id] = vcpu
        with self._lock:
            self._unplugged.discard(vcpu_id)
            running = bool(self._threads) and not self._done.is_set()
            if running:
                thread = threading.Thread(
                    target=self._vcpu_loop, args=(vcpu,), name=f"hvcore-vcpu{vcpu_id}", daemon=True
                )
                self._threads.append(thread)
                self._thread_of[vcpu_id] = thread
                thread.start()
        if self.cpu_hotplug is not None:
            self.cpu_hotplug.insert(vcpu_id)
        _log.info("vCPU %d plugged in%s", vcpu_id, " and running" if running else "")
        return vcpu

    def request_vcpu_unplug(self, vcpu_id: int) -> None:
        """Ask the guest to give vCPU ``vcpu_id`` back, as QEMU's ``device_del``: a remove event and the
        hotplug GPE. The guest offlines the CPU and ejects it (``_EJ0``), which unplugs it: watch
        :attr:`unplugged`. A guest may refuse (its last online CPU, a CPU it pinned work to).

        ``StateError`` without the ACPI hotplug device (``add_pc_devices`` plugs it in; without it use
        :meth:`unplug_vcpu`) or when the vCPU is unplugged already.
        """
        check_int("vcpu_id", vcpu_id, "request_vcpu_unplug", 1, self.cpus)
        if self.cpu_hotplug is None:
            raise StateError(
                "the machine has no ACPI CPU hotplug device to ask the guest through: add_pc_devices() plugs "
                "one in; without it, unplug_vcpu() takes the vCPU out unasked",
                operation="request_vcpu_unplug",
            )
        with self._lock:
            if vcpu_id in self._unplugged:
                raise StateError(f"vCPU {vcpu_id} is unplugged already", operation="request_vcpu_unplug")
        self.cpu_hotplug.request_removal(vcpu_id)

    def raise_smi(self, vcpu_id: int = 0) -> None:
        """Send an SMI to vCPU ``vcpu_id``, as a chipset does (PIIX4 on an APM command: to vCPU 0).

        From that vCPU's own thread (a device answering its exit) the SMI is taken before its next
        instruction; another vCPU is kicked out of its run to take it. ``StateError`` on a machine
        without SMM (:attr:`smm`).
        """
        check_int("vcpu_id", vcpu_id, "raise_smi", 0, self.cpus)
        if not self.smm:
            raise StateError(
                f"the machine has no SMM (backend {self.hypervisor.name!r}: KVM_CAP_X86_SMM is 0), so no SMI",
                operation="raise_smi",
            )
        with self._lock:
            self._smi_wanted.add(vcpu_id)
            thread = self._thread_of.get(vcpu_id)
        if thread is not None and thread is not threading.current_thread() and vcpu_id not in self._unplugged:
            self.vcpus[vcpu_id].kick()

    @property
    def pending_smis(self) -> frozenset[int]:
        """The vCPUs :meth:`raise_smi` sent an SMI to that they have not taken yet (they do before their next run)."""
        with self._lock:
            return frozenset(self._smi_wanted)

    def _send_smi(self, vcpu: VCPU) -> None:
        with self._lock:
            if vcpu.id not in self._smi_wanted:
                return
            self._smi_wanted.discard(vcpu.id)
        vcpu.smi()

    @property
    def unplugged(self) -> frozenset[int]:
        """The ids of the vCPUs unplugged now."""
        return frozenset(self._unplugged)

    def _require_stopped(self, operation: str) -> None:
        """StateError while vCPU threads run; a run already told to stop is waited for."""
        if not self._threads:
            return
        if not self._done.is_set() or threading.current_thread() in self._threads:
            raise StateError(
                f"{operation}() sets vCPU state, which a running machine is using: stop the machine first "
                "(stop(), then wait())",
                operation=operation,
            )
        self._join()

    def _vcpu_loop(self, vcpu: VCPU) -> None:
        self._launched.wait()
        try:
            while not self._done.is_set() and vcpu.id not in self._unplugged:
                if not self._resumed.is_set():
                    self._resumed.wait(0.05)  # (awake now and then: an unplug may be waiting for this thread)
                    continue
                if self._smi_wanted:
                    self._send_smi(vcpu)
                exit_ = vcpu.run()
                self.stats[type(exit_).__name__] += 1
                if _log.isEnabledFor(logging.DEBUG):
                    _log.debug("vCPU %d: %r", vcpu.id, exit_)
                self._dispatch(vcpu, exit_)
        except BaseException as exc:  # a device or backend failure ends the whole run, reported by wait()
            self.stop(MachineResult("error", error=exc))
        finally:
            if isinstance(vcpu, TracingVCPU):
                try:
                    vcpu.flush()  # the last exit's line (written when the next run would have started)
                except BaseException as exc:
                    self.stop(MachineResult("error", error=exc))

    def _dispatch(self, vcpu: VCPU, exit_: Exit) -> None:
        if isinstance(exit_, IoExit):
            bus, size = self.io_bus, exit_.size
            if exit_.is_in:
                vcpu.complete(b"".join(bus.read(exit_.port, size).to_bytes(size, "little") for _ in range(exit_.count)))
            else:
                data = exit_.data
                for at in range(0, len(data), size):
                    bus.write(exit_.port, size, int.from_bytes(data[at : at + size], "little"))
        elif isinstance(exit_, MmioExit):
            if exit_.is_write:
                self.mmio_bus.write(exit_.address, exit_.length, int.from_bytes(exit_.data, "little"))
            else:
                vcpu.complete(self.mmio_bus.read(exit_.address, exit_.length).to_bytes(exit_.length, "little"))
        elif isinstance(exit_, InterruptedExit | IrqWindowOpenExit | DebugExit):
            return  # a kick (pause, stop) or nothing the machine asked for: look at the flags again
        elif isinstance(exit_, HltExit):
            self.stop(MachineResult("halted"))  # without an irqchip nothing can wake it
        elif isinstance(exit_, ShutdownExit):
            self.stop(MachineResult("shutdown"))
        elif isinstance(exit_, InternalErrorExit):  # the guest ran what the hypervisor cannot emulate
            self.stop(MachineResult("internal-error", error=StateError(f"vCPU {vcpu.id}: {_internal_error(exit_)}")))
        else:
            self.stop(MachineResult("error", error=StateError(f"vCPU {vcpu.id}: unexpected exit {exit_!r}")))

    # -- statistics, lifetime ----------------------------------------------------------------------

    def statistics(self) -> Mapping[str, int]:
        """Exits by kind, and accesses no device claimed."""
        counts = dict(self.stats)
        counts["unclaimed_io_reads"] = self.io_bus.unclaimed_reads
        counts["unclaimed_io_writes"] = self.io_bus.unclaimed_writes
        counts["unclaimed_mmio_reads"] = self.mmio_bus.unclaimed_reads
        counts["unclaimed_mmio_writes"] = self.mmio_bus.unclaimed_writes
        return counts

    def close(self) -> None:
        """Stop, join every vCPU thread, close devices that can be closed, close the VM."""
        if self._closed:
            return
        if self._threads:
            self.stop()
            self._join()
        self._closed = True
        self.timers.close()
        if self.pci is not None:
            self.pci.close()
        for bus in (self.io_bus, self.mmio_bus):
            for entry in bus.ranges():
                close = getattr(entry.device, "close", None)
                if callable(close):
                    close()
        self._release()

    def _release(self) -> None:
        self.vm.close()
        for memory in self._memories:
            memory.close()

    def __enter__(self) -> Machine:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Machine({self.hypervisor.name}, ram={self.ram_size + self._high_size:#x}, cpus={self.cpus})"
