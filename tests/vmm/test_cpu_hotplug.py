"""Guest-visible CPU hotplug: the GPE0 block and the SCI, QEMU's CPU hotplug registers, the Machine's
wiring, on both backends; and the judge, Linux on the simulator.

Linux boots with vCPU 1 possible but not present (``Machine(cpus=2, present=1)``: the MADT lists
it disabled but online-capable). Its ``/init`` says it is ready; the test plugs vCPU 1 in while
the guest runs (an insert event, GPE 2, the SCI; ``\\_GPE._E02`` notifies ``\\_SB.C001``); the
guest waits for ``/sys/devices/system/cpu/cpu1``, onlines it (INIT/SIPI to the new vCPU's thread),
counts the processors in ``/proc/cpuinfo``, and ejects it through
``/sys/bus/acpi/devices/ACPI0007:01/eject`` (the kernel offlines it and runs ``_EJ0``, which
unplugs the vCPU from the machine). Then the VMM's side of a removal: the test plugs vCPU 1 in
again, the guest onlines it, and the test asks for it back (``request_vcpu_unplug``: a remove
event, ``Notify(C001, 3)``, the kernel offlines and ejects it); then the guest reboots. Inputs as
``test_linux_machine.py`` (``HVCORE_LINUX_KERNEL``, ``HVCORE_BUSYBOX``; no modules).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hvcore import Hypervisor, InvalidArgument, InvalidType, StateError
from hvcore.vmm import Machine, MachineResult, add_pc_devices
from hvcore.vmm.devices.cpu_hotplug import CPU_HOTPLUG_GPE, CpuHotplug, Gpe0Block
from hvcore.vmm.loaders import BootPlan
from hvcore.vmm.run import ConsoleTee
from hvcore_sim.system import SimHypervisor
from tests.busybox_init import CMDLINE, initramfs_with_modules
from tests.vmm.test_linux_userspace import BUSYBOX_VARIABLE, KERNEL_VARIABLE, _input

TIMEOUT = 180.0
"""Wall-clock seconds for the whole Linux run."""
READY, AGAIN, ONLINE_AGAIN = "hvcore-ready-for-cpu1", "hvcore-ready-for-cpu1-again", "hvcore-cpu1-online-again"
INIT = f"""#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
cpu1=/sys/devices/system/cpu/cpu1
appear() {{ n=0; while [ ! -e $cpu1 ] && [ $n -lt 120 ]; do sleep 1; n=$((n + 1)); done; }}
vanish() {{ n=0; while [ -e $cpu1 ] && [ $n -lt 120 ]; do sleep 1; n=$((n + 1)); done; }}
echo "hvcore-possible: $(cat /sys/devices/system/cpu/possible)"
echo "hvcore-cpus-before: $(grep -c ^processor /proc/cpuinfo)"
echo {READY}
appear
echo "hvcore-cpu1-appeared: $(ls -d $cpu1)"
echo 1 > $cpu1/online
echo "hvcore-online: $(cat /sys/devices/system/cpu/online)"
echo "hvcore-cpus: $(grep -c ^processor /proc/cpuinfo)"
echo 1 > /sys/bus/acpi/devices/ACPI0007:01/eject
vanish
echo "hvcore-cpu1-gone: $(ls /sys/devices/system/cpu | grep -c '^cpu[0-9]')"
echo "hvcore-cpus-after: $(grep -c ^processor /proc/cpuinfo)"
echo {AGAIN}
appear
echo 1 > $cpu1/online
echo "hvcore-cpus-again: $(grep -c ^processor /proc/cpuinfo)"
echo {ONLINE_AGAIN}
vanish
echo "hvcore-cpus-on-request: $(grep -c ^processor /proc/cpuinfo)"
reboot -f
""".encode()
APPLETS = ("sh", "mount", "cat", "grep", "ls", "sleep", "reboot")


class _Line:
    """An IrqLine that records its levels."""

    def __init__(self) -> None:
        self.levels: list[bool] = []

    def set(self, level: bool) -> None:
        self.levels.append(level)

    def pulse(self) -> None:
        self.levels += [True, False]


# -- the GPE0 block ---------------------------------------------------------------------------------


def test_the_gpe0_block_holds_the_sci_while_an_enabled_event_is_pending() -> None:
    line = _Line()
    gpe = Gpe0Block(line)
    gpe.trigger(CPU_HOTPLUG_GPE)
    assert gpe.read(0, 4) == 1 << CPU_HOTPLUG_GPE and line.levels == []  # pending, not enabled: no SCI
    gpe.write(2, 1, 1 << CPU_HOTPLUG_GPE)  # the guest enables GPE 2 (the enable byte)
    assert line.levels == [True] and gpe.sci
    gpe.write(0, 1, 1 << 3)  # clearing another status bit changes nothing
    assert line.levels == [True] and gpe.status == 1 << CPU_HOTPLUG_GPE
    gpe.write(0, 1, 1 << CPU_HOTPLUG_GPE)  # write 1 to clear: the SCI falls
    assert line.levels == [True, False] and gpe.read(0, 2) == 0 and gpe.read(2, 2) == 1 << CPU_HOTPLUG_GPE
    gpe.write(2, 2, 0)  # disabled: a new event raises nothing ...
    gpe.trigger(CPU_HOTPLUG_GPE)
    assert line.levels == [True, False]
    gpe.write(2, 2, 1 << CPU_HOTPLUG_GPE)  # ... until it is enabled
    assert line.levels == [True, False, True] and gpe.read(0, 4) == (1 << CPU_HOTPLUG_GPE) * 0x10001
    gpe.write(0, 4, 0x0001_FFFF)  # a dword write reaches status (cleared) and enable (GPE 0 only) alike
    assert gpe.read(0, 4) == 1 << 16 and line.levels[-1] is False
    assert gpe.read(4, 2) == 0  # past the block
    with pytest.raises(InvalidArgument):
        gpe.trigger(16)


# -- the register block -----------------------------------------------------------------------------


def _select(hotplug: CpuHotplug, cpu: int) -> int:
    """What ``CSTA`` does: select ``cpu``, read its flags."""
    hotplug.write(0, 4, cpu)
    return hotplug.read(4, 1)


def test_the_registers_report_presence_and_scan_for_events() -> None:
    line = _Line()
    gpe = Gpe0Block(line)
    gpe.write(2, 1, 1 << CPU_HOTPLUG_GPE)
    hotplug = CpuHotplug(4, gpe, present={0, 2})
    assert [_select(hotplug, cpu) & 1 for cpu in range(4)] == [1, 0, 1, 0]
    hotplug.write(0, 4, 0)
    hotplug.write(5, 1, 0)  # select the next CPU with an event: none, the selector stays
    assert hotplug.read(8, 4) == 0 and hotplug.read(4, 1) == 1 and line.levels == []
    hotplug.insert(3)
    assert line.levels == [True] and hotplug.present == {0, 2, 3}
    hotplug.write(5, 1, 0)
    assert hotplug.read(8, 4) == 3 and hotplug.read(4, 1) == 0b011  # enabled, insert event
    hotplug.write(4, 1, 0b010)  # the guest took the insert event
    assert hotplug.read(4, 1) == 0b001 and hotplug.pending(3) == (False, False)
    hotplug.write(5, 1, 3)  # its APIC ID
    assert hotplug.read(8, 4) == 3 and hotplug.read(0, 4) == 0
    hotplug.write(0, 4, 200)  # a selector past the CPUs: reads 0, writes ignored
    assert hotplug.read(4, 1) == 0 and hotplug.read(8, 4) == 0
    hotplug.write(4, 1, 0b1000)
    assert hotplug.present == {0, 2, 3}
    with pytest.raises(InvalidArgument):
        hotplug.insert(4)
    with pytest.raises(InvalidType):
        CpuHotplug(4, gpe, present=["1"])  # type: ignore[list-item]


def test_a_removal_request_and_the_guests_eject() -> None:
    ejected: list[int] = []
    gpe = Gpe0Block(None)
    hotplug = CpuHotplug(3, gpe, eject=ejected.append)
    with pytest.raises(InvalidArgument):
        hotplug.request_removal(0)  # the bootstrap processor stays
    hotplug.request_removal(2)
    assert gpe.status == 1 << CPU_HOTPLUG_GPE and hotplug.pending(2) == (False, True)
    hotplug.write(0, 4, 0)
    hotplug.write(5, 1, 0)
    assert hotplug.read(8, 4) == 2 and hotplug.read(4, 1) == 0b101  # enabled, remove event
    hotplug.write(4, 1, 0b100)  # the guest took it (Notify 3) ...
    assert hotplug.pending(2) == (False, False) and ejected == []
    hotplug.write(4, 1, 0b1000)  # ... and, the CPU offline, its _EJ0 ejects
    assert ejected == [2] and hotplug.present == {0, 1} and _select(hotplug, 2) == 0
    hotplug.write(4, 1, 0b1000)  # absent: nothing more to eject
    _select(hotplug, 0)
    hotplug.write(4, 1, 0b1000)  # nor vCPU 0
    assert ejected == [2]
    with pytest.raises(StateError, match="not present"):
        hotplug.request_removal(2)
    hotplug.removed(1)
    assert hotplug.present == {0}


# Real mode, at 0x1000: the ISR for vector 0x29 in the IVT; both PICs set up (master 0x20, slave 0x28, only
# IRQ 2 (cascade) and IRQ 9 (the SCI) unmasked); GPE 2 enabled (0xAFE2); 1 at 0x700 says "ready"; `sti; hlt`
# until the ISR ran. The ISR does what \\_GPE._E02 does: reads the GPE0 status (to 0x601), selects CPU 0,
# command 0 (the next CPU with an event), reads its selector (0x602) and flags (0x603), clears its insert
# event, clears GPE 2 (the SCI falls), EOIs both PICs and sets 0x29 at 0x600; then isa-debug-exit with it.
SCI_GUEST = (
    b"\xfa"  # 1000 cli
    b"\x31\xc0"  # 1001 xor %ax,%ax
    b"\x8e\xd8"  # 1003 mov %ax,%ds
    b"\x8e\xd0"  # 1005 mov %ax,%ss
    b"\xbc\x00\x80"  # 1007 mov $0x8000,%sp
    b"\xc7\x06\xa4\x00\x56\x10"  # 100A movw $0x1056,0xa4
    b"\xc7\x06\xa6\x00\x00\x00"  # 1010 movw $0x0,0xa6
    b"\xb0\x11"  # 1016 mov $0x11,%al
    b"\xe6\x20"  # 1018 out %al,$0x20
    b"\xe6\xa0"  # 101A out %al,$0xa0
    b"\xb0\x20"  # 101C mov $0x20,%al
    b"\xe6\x21"  # 101E out %al,$0x21
    b"\xb0\x28"  # 1020 mov $0x28,%al
    b"\xe6\xa1"  # 1022 out %al,$0xa1
    b"\xb0\x04"  # 1024 mov $0x4,%al
    b"\xe6\x21"  # 1026 out %al,$0x21
    b"\xb0\x02"  # 1028 mov $0x2,%al
    b"\xe6\xa1"  # 102A out %al,$0xa1
    b"\xb0\x01"  # 102C mov $0x1,%al
    b"\xe6\x21"  # 102E out %al,$0x21
    b"\xe6\xa1"  # 1030 out %al,$0xa1
    b"\xb0\xfb"  # 1032 mov $0xfb,%al
    b"\xe6\x21"  # 1034 out %al,$0x21
    b"\xb0\xfd"  # 1036 mov $0xfd,%al
    b"\xe6\xa1"  # 1038 out %al,$0xa1
    b"\xba\xe2\xaf"  # 103A mov $0xafe2,%dx
    b"\xb0\x04"  # 103D mov $0x4,%al
    b"\xee"  # 103F out %al,(%dx)
    b"\xc6\x06\x00\x07\x01"  # 1040 movb $0x1,0x700
    b"\x80\x3e\x00\x06\x00"  # 1045 cmpb $0x0,0x600
    b"\x75\x05"  # 104A jne 0x1051
    b"\xfb"  # 104C sti
    b"\xf4"  # 104D hlt
    b"\xfa"  # 104E cli
    b"\xeb\xf4"  # 104F jmp 0x1045
    b"\xa0\x00\x06"  # 1051 mov 0x600,%al
    b"\xe6\xf4"  # 1054 out %al,$0xf4
    b"\xba\xe0\xaf"  # 1056 mov $0xafe0,%dx
    b"\xec"  # 1059 in (%dx),%al
    b"\xa2\x01\x06"  # 105A mov %al,0x601
    b"\xba\xd8\x0c"  # 105D mov $0xcd8,%dx
    b"\x66\x31\xc0"  # 1060 xor %eax,%eax
    b"\x66\xef"  # 1063 out %eax,(%dx)
    b"\xba\xdd\x0c"  # 1065 mov $0xcdd,%dx
    b"\xee"  # 1068 out %al,(%dx)
    b"\xba\xe0\x0c"  # 1069 mov $0xce0,%dx
    b"\x66\xed"  # 106C in (%dx),%eax
    b"\xa2\x02\x06"  # 106E mov %al,0x602
    b"\xba\xdc\x0c"  # 1071 mov $0xcdc,%dx
    b"\xec"  # 1074 in (%dx),%al
    b"\xa2\x03\x06"  # 1075 mov %al,0x603
    b"\xb0\x02"  # 1078 mov $0x2,%al
    b"\xee"  # 107A out %al,(%dx)
    b"\xba\xe0\xaf"  # 107B mov $0xafe0,%dx
    b"\xb0\x04"  # 107E mov $0x4,%al
    b"\xee"  # 1080 out %al,(%dx)
    b"\xb0\x20"  # 1081 mov $0x20,%al
    b"\xe6\xa0"  # 1083 out %al,$0xa0
    b"\xe6\x20"  # 1085 out %al,$0x20
    b"\xc6\x06\x00\x06\x29"  # 1087 movb $0x29,0x600
    b"\xcf"  # 108C iret
)


# -- the machine ------------------------------------------------------------------------------------


def test_a_machine_can_start_with_fewer_vcpus_present(hv: Hypervisor) -> None:
    with Machine(hv, memory=16 << 20, cpus=2, present=1) as machine:
        assert machine.unplugged == {1} and machine.vm.parked_vcpus() == {1}
        devices = add_pc_devices(machine, pci=False)
        assert devices.cpu_hotplug is machine.cpu_hotplug and machine.cpu_hotplug is not None
        assert machine.cpu_hotplug.present == {0}
        devices.cmos.write(0, 1, 0x5F)
        assert devices.cmos.read(1, 1) == 0  # the CPUs present, less one: what SeaBIOS waits for
    for present in (0, 3):
        with pytest.raises(InvalidArgument, match="present"):
            Machine(hv, memory=16 << 20, cpus=2, present=present)


def test_plugging_and_unplugging_tell_the_guest_through_the_gpe(hv: Hypervisor) -> None:
    with Machine(hv, memory=16 << 20, cpus=2, present=1) as machine:
        devices = add_pc_devices(machine, pci=False)
        hotplug, gpe = devices.cpu_hotplug, devices.gpe0
        assert hotplug is not None and gpe is not None
        machine.io_bus.write(Gpe0Block.PORT + 2, 1, 1 << CPU_HOTPLUG_GPE)  # as the guest's ACPICA does
        machine.plug_vcpu(1)
        assert hotplug.present == {0, 1} and hotplug.pending(1) == (True, False) and gpe.sci
        machine.io_bus.write(Gpe0Block.PORT, 1, 1 << CPU_HOTPLUG_GPE)
        machine.request_vcpu_unplug(1)
        assert hotplug.pending(1) == (True, True) and gpe.sci
        machine.io_bus.write(CpuHotplug.PORT, 4, 1)  # the guest's _EJ0: select vCPU 1, eject
        machine.io_bus.write(CpuHotplug.PORT + 4, 1, 0b1000)
        assert machine.unplugged == {1} and hotplug.present == {0} and machine.vm.parked_vcpus() == {1}
        with pytest.raises(StateError, match="unplugged already"):
            machine.request_vcpu_unplug(1)
        machine.plug_vcpu(1)
        machine.unplug_vcpu(1)  # the VMM's own unplug: the registers say absent, no event
        assert hotplug.present == {0} and hotplug.pending(1) == (False, False)
    with Machine(hv, memory=16 << 20, cpus=2) as machine, pytest.raises(StateError, match="add_pc_devices"):
        machine.request_vcpu_unplug(1)


def test_a_guest_takes_the_sci_of_a_plug_and_finds_the_new_vcpu(hv: Hypervisor) -> None:
    """On both backends: the GPE drives IRQ 9 through the machine's irqchip to a guest's handler."""
    with Machine(hv, memory=16 << 20, cpus=2, present=1) as machine:
        devices = add_pc_devices(machine, pci=False)
        assert devices.cpu_hotplug is not None and devices.gpe0 is not None
        machine.write(0x1000, SCI_GUEST)
        machine.boot(BootPlan("real", entry=0x1000))
        machine.start()
        try:
            deadline = time.monotonic() + 20
            while machine.read(0x700, 1) != b"\x01" and time.monotonic() < deadline and machine.wait(0.01) is None:
                pass  # until the guest enabled GPE 2 and waits
            assert machine.read(0x600, 1) == b"\x00"  # no interrupt before the plug
            machine.plug_vcpu(1)
            result = machine.wait(20)
        finally:
            machine.stop()
        assert result == MachineResult("debug-exit", 0x29 << 1 | 1)
        assert machine.read(0x601, 3) == bytes([1 << CPU_HOTPLUG_GPE, 1, 0b011])  # GPE 2; vCPU 1: present, inserted
        assert devices.cpu_hotplug.pending(1) == (False, False) and not devices.gpe0.sci


# -- Linux ------------------------------------------------------------------------------------------


def _until(condition: Callable[[], bool], machine: Machine, deadline: float) -> bool:
    """Poll ``condition`` until it holds (True), the deadline passes or the run ends (False)."""
    while not condition():
        if time.monotonic() >= deadline or machine.wait(0.05) is not None:
            return False
    return True


def test_linux_onlines_a_hot_added_vcpu_and_ejects_it(monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = _input(KERNEL_VARIABLE, "a bzImage (e.g. Debian's vmlinuz-6.1.0-57-cloud-amd64)")
    busybox = _input(BUSYBOX_VARIABLE, "a static busybox (e.g. Debian's busybox-static /bin/busybox)")
    monkeypatch.delenv("HVCORE_SIM_CLOCK", raising=False)
    serial = io.StringIO()
    started = time.monotonic()
    deadline = started + TIMEOUT
    steps: list[str] = []

    def said(marker: str) -> Callable[[], bool]:
        return lambda: marker in serial.getvalue().splitlines()

    with SimHypervisor() as hv, Machine(hv, memory=256 << 20, cpus=2, present=1) as machine:
        add_pc_devices(machine, serial=ConsoleTee(serial, None, lambda: None))  # type: ignore[arg-type]
        initrd = initramfs_with_modules(busybox, INIT, APPLETS, Path(), (), directories=("/proc", "/sys"))
        machine.load(kernel, cmdline=CMDLINE, initrd=initrd)
        machine.start()
        try:
            if _until(said(READY), machine, deadline) and machine.unplugged == {1}:
                machine.plug_vcpu(1)  # while the guest runs: it onlines the CPU, then ejects it
                steps.append(f"plugged after {time.monotonic() - started:.1f} s")
            # the guest sees cpu1 go when the kernel removes it, just before its _EJ0: the unplug follows
            ejected = lambda: machine.unplugged == {1}  # noqa: E731
            if steps and _until(said(AGAIN), machine, deadline) and _until(ejected, machine, deadline):
                steps.append(f"ejected by the guest after {time.monotonic() - started:.1f} s")
                machine.plug_vcpu(1)
            if len(steps) == 2 and _until(said(ONLINE_AGAIN), machine, deadline):
                machine.request_vcpu_unplug(1)  # the guest offlines and ejects it
                steps.append(f"removal requested after {time.monotonic() - started:.1f} s")
            result = machine.wait(max(0.0, deadline - time.monotonic()))
        finally:
            machine.stop(MachineResult("timeout"))  # no effect when the guest ended the run first
        result = result or machine.wait()
        elapsed = time.monotonic() - started
        unplugged = machine.unplugged
    log = serial.getvalue()
    lines = [line.strip() for line in log.splitlines()]
    context = f"after {elapsed:.1f} s, {result}, steps {steps}; serial console:\n{log[-3000:]}"
    assert len(steps) == 3, context
    assert result == MachineResult("reset"), context
    assert "Kernel panic" not in log, context
    assert "hvcore-possible: 0-1" in lines and "hvcore-cpus-before: 1" in lines, context
    assert "hvcore-cpu1-appeared: /sys/devices/system/cpu/cpu1" in lines, context
    assert "hvcore-online: 0-1" in lines and "hvcore-cpus: 2" in lines, context
    assert "hvcore-cpu1-gone: 1" in lines and "hvcore-cpus-after: 1" in lines, context
    assert "hvcore-cpus-again: 2" in lines and "hvcore-cpus-on-request: 1" in lines, context
    assert unplugged == {1}, context
    print(f"Linux CPU hotplug: {', '.join(steps)}, reset after {elapsed:.1f} s")
