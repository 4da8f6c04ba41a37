"""``Machine`` on every backend: devices on the buses, vCPU threads, pause/resume/stop, statistics."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace

import pytest

import hvcore
from hvcore import Hypervisor, MpState, x86
from hvcore.vmm.loaders import BootPlan
from hvcore.vmm.machine import Machine, MachineResult, OvercommitWarning, vcpu_limits
from hvcore.vmm.pc import PcDevices, add_pc_devices
from tests.conftest import WATCHDOG_SECONDS, open_or_skip, overcommit

# Real mode at 0x1000 (ds = 0): prints "hello, machine\n" on COM1 (polling nothing: the UART's THR
# is always ready), reads unclaimed port 0x99 and echoes it to the debug console (0x402), writes
# unclaimed port 0x98, then writes 0x21 to isa-debug-exit: exit status (0x21 << 1) | 1 = 0x43.
HELLO_EXIT = (
    b"\xba\xf8\x03"  # 1000 mov dx,0x3f8
    b"\xbe\x1b\x10"  # 1003 mov si,0x101b
    b"\xac"  # 1006 lods al,BYTE PTR ds:[si]
    b"\x84\xc0"  # 1007 test al,al
    b"\x74\x03"  # 1009 je 0x100e
    b"\xee"  # 100B out dx,al
    b"\xeb\xf8"  # 100C jmp 0x1006
    b"\xe4\x99"  # 100E in al,0x99
    b"\xba\x02\x04"  # 1010 mov dx,0x402
    b"\xee"  # 1013 out dx,al
    b"\xe6\x98"  # 1014 out 0x98,al
    b"\xb0\x21"  # 1016 mov al,0x21
    b"\xe6\xf4"  # 1018 out 0xf4,al
    b"\xf4"  # 101A hlt
    b"hello, machine\n\x00"  # 101B the string
)

# Real mode at 0x1000: increments the dword at 0x2000 forever.
COUNT_FOREVER = (
    b"\x66\xff\x06\x00\x20"  # 1000 inc DWORD PTR ds:0x2000
    b"\xeb\xf9"  # 1005 jmp 0x1000
)


# Real mode at 0x1000 (ds = ss = 0): the 8259 master at vector 0x20 with only IRQ 5 unmasked, then
# a pulse on line 5 through pc-testdev (port 0x2005: 1, then 0); `sti; hlt` until the ISR (vector
# 0x25: flag 0x25 at 0x600, EOI) ran, then the flag to isa-debug-exit: status (0x25 << 1) | 1.
TESTDEV_IRQ = (
    b"\xfa"  # 1000 cli
    b"\x31\xc0"  # 1001 xor ax,ax
    b"\x8e\xd8"  # 1003 mov ds,ax
    b"\x8e\xd0"  # 1005 mov ss,ax
    b"\xbc\x00\x80"  # 1007 mov sp,0x8000
    b"\xc7\x06\x94\x00\x45\x10"  # 100A mov WORD PTR ds:0x94,0x1045
    b"\xc7\x06\x96\x00\x00\x00"  # 1010 mov WORD PTR ds:0x96,0x0
    b"\xb0\x11"  # 1016 mov al,0x11
    b"\xe6\x20"  # 1018 out 0x20,al
    b"\xb0\x20"  # 101A mov al,0x20
    b"\xe6\x21"  # 101C out 0x21,al
    b"\xb0\x04"  # 101E mov al,0x4
    b"\xe6\x21"  # 1020 out 0x21,al
    b"\xb0\x01"  # 1022 mov al,0x1
    b"\xe6\x21"  # 1024 out 0x21,al
    b"\xb0\xdf"  # 1026 mov al,0xdf
    b"\xe6\x21"  # 1028 out 0x21,al
    b"\xba\x05\x20"  # 102A mov dx,0x2005
    b"\xb0\x01"  # 102D mov al,0x1
    b"\xee"  # 102F out dx,al
    b"\xb0\x00"  # 1030 mov al,0x0
    b"\xee"  # 1032 out dx,al
    b"\x80\x3e\x00\x06\x00"  # 1033 cmp BYTE PTR ds:0x600,0x0
    b"\x75\x05"  # 1038 jne 0x103f
    b"\xfb"  # 103A sti
    b"\xf4"  # 103B hlt
    b"\xfa"  # 103C cli
    b"\xeb\xf4"  # 103D jmp 0x1033
    b"\xa0\x00\x06"  # 103F mov al,ds:0x600
    b"\xe6\xf4"  # 1042 out 0xf4,al
    b"\xf4"  # 1044 hlt
    b"\xc6\x06\x00\x06\x25"  # 1045 mov BYTE PTR ds:0x600,0x25
    b"\xb0\x20"  # 104A mov al,0x20
    b"\xe6\x20"  # 104C out 0x20,al
    b"\xcf"  # 104E iret
)


@pytest.fixture
def machine(hv: Hypervisor) -> Iterator[Machine]:
    """A 16 MiB PC machine with an irqchip on each backend."""
    with Machine(hv, memory=16 << 20) as m:
        yield m


def _start_real(machine: Machine, code: bytes) -> None:
    machine.write(0x1000, code)
    machine.boot(BootPlan("real", entry=0x1000))


def test_devices_on_the_buses_and_debug_exit(machine: Machine) -> None:
    serial, console = io.BytesIO(), io.BytesIO()
    devices: PcDevices = add_pc_devices(machine, serial=serial, debugcon=console)
    _start_real(machine, HELLO_EXIT)
    result = machine.run(timeout=20)
    assert result == MachineResult("debug-exit", (0x21 << 1) | 1)
    assert serial.getvalue() == b"hello, machine\n"
    assert console.getvalue() == b"\xff"  # an unclaimed port reads all-ones
    assert devices.debugcon.data == bytearray(b"\xff")
    stats = machine.statistics()
    assert stats["unclaimed_io_reads"] == 1 and stats["unclaimed_io_writes"] == 1
    assert stats["IoExit"] == len(b"hello, machine\n") + 4  # 15 chars, IN 0x99, OUT 0x402, OUT 0x98, OUT 0xf4


def test_pc_testdev_drives_an_interrupt_line(machine: Machine) -> None:
    """kvm-unit-tests raise and lower GSIs through QEMU's pc-testdev ports 0x2000 + n."""
    add_pc_devices(machine, serial=io.BytesIO())
    _start_real(machine, TESTDEV_IRQ)
    assert machine.run(timeout=20) == MachineResult("debug-exit", (0x25 << 1) | 1)


def test_hlt_without_irqchip_ends_the_run(hv: Hypervisor) -> None:
    with Machine(hv, memory=1 << 20, irqchip=False) as machine:
        _start_real(machine, b"\xf4")
        assert machine.run(timeout=20) == MachineResult("halted")
        assert machine.statistics()["HltExit"] == 1


def test_triple_fault_is_a_shutdown(machine: Machine) -> None:
    vcpu = machine.vcpus[0]
    _start_real(machine, b"\x90")
    sregs = x86.protected_mode_sregs(vcpu.get_sregs(), machine._low, 0x500)  # no IDT: the #UD below triple-faults
    vcpu.set_sregs(replace(sregs, idt=hvcore.DescriptorTable(0, 0)))
    machine.write(0x1000, b"\x0f\x0b")  # ud2
    assert machine.run(timeout=20).reason == "shutdown"


def test_pause_holds_every_vcpu_and_resume_lets_them_go(machine: Machine) -> None:
    _start_real(machine, COUNT_FOREVER)
    machine.start()
    try:
        deadline = time.monotonic() + 10
        while int.from_bytes(machine.read(0x2000, 4), "little") < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        machine.pause()
        time.sleep(0.05)  # the kick lands within a slice
        held = int.from_bytes(machine.read(0x2000, 4), "little")
        time.sleep(0.1)
        assert int.from_bytes(machine.read(0x2000, 4), "little") == held
        assert machine.paused
        machine.resume()
        while int.from_bytes(machine.read(0x2000, 4), "little") == held and time.monotonic() < deadline:
            time.sleep(0.01)
        assert int.from_bytes(machine.read(0x2000, 4), "little") > held
    finally:
        machine.stop()
    assert machine.wait(10) == MachineResult("stopped")


def test_busy_multi_vcpu_machine_stops_cleanly(hv: Hypervisor) -> None:
    before = threading.active_count()
    with overcommit(hv, 3), Machine(hv, memory=16 << 20, cpus=3) as machine:
        _start_real(machine, COUNT_FOREVER)
        boot = machine.vcpus[0]
        for ap in machine.vcpus[1:]:  # as if SIPI'd: all three spin on the same counter
            ap.set_sregs(boot.get_sregs())
            ap.set_regs(boot.get_regs())
            ap.set_mp_state(MpState.RUNNABLE)
        result = machine.run(timeout=0.5)
        assert result == MachineResult("timeout")
        assert int.from_bytes(machine.read(0x2000, 4), "little") > 0
    assert threading.active_count() == before  # every vCPU thread joined


def test_each_vcpu_reports_its_own_apic_id_in_cpuid(hv: Hypervisor) -> None:
    with overcommit(hv, 3), Machine(hv, memory=16 << 20, cpus=3) as machine:
        for vcpu in machine.vcpus:
            leaves = {(e.function, e.index): e for e in vcpu.get_cpuid()}
            assert leaves[(1, 0)].ebx >> 24 == vcpu.id
            assert all(e.edx == vcpu.id for (function, _), e in leaves.items() if function in (0xB, 0x1F))


def test_application_processors_wait_for_sipi(hv: Hypervisor) -> None:
    with Machine(hv, memory=16 << 20, cpus=2) as two:
        _start_real(two, b"\xfa\xf4")  # cli; hlt: vCPU 0 sleeps for good, nobody sends SIPI
        assert two.vcpus[1].get_mp_state() == MpState.UNINITIALIZED
        two.start()
        time.sleep(0.1)  # (on KVM a state call would wait for run() to return: the kernel holds the vCPU)
        two.stop()
        assert two.wait(10) == MachineResult("stopped")
        assert two.vcpus[1].get_mp_state() == MpState.UNINITIALIZED
        assert two.vcpus[0].get_mp_state() == MpState.HALTED


def test_a_failing_device_ends_the_run_with_its_error(machine: Machine) -> None:
    class Broken:
        name = "broken"

        def read(self, offset: int, size: int) -> int:
            raise RuntimeError("device bug")

        def write(self, offset: int, size: int, value: int) -> None:
            raise RuntimeError("device bug")

    machine.add_io_device(0x99, 1, Broken())
    _start_real(machine, HELLO_EXIT)
    result = machine.run(timeout=20)
    assert result.reason == "error" and isinstance(result.error, RuntimeError)


def test_machine_misuse(hv: Hypervisor) -> None:
    with pytest.raises(hvcore.InvalidArgument, match="at least 1 MiB"):
        Machine(hv, memory=4096)
    with pytest.raises(hvcore.InvalidArgument, match="needs the irqchip"):
        Machine(hv, memory=1 << 20, cpus=2, irqchip=False)
    with Machine(hv, memory=1 << 20) as machine:
        with pytest.raises(hvcore.ImageError, match="is not RAM"):
            machine.write(0x100000 - 2, b"1234")
        add_pc_devices(machine)
        with pytest.raises(hvcore.BusConflict, match="overlaps"):
            machine.add_io_device(0x3FC, 2, machine.io_bus.ranges()[0].device)
        _start_real(machine, b"\xf4")
        machine.start()
        with pytest.raises(hvcore.StateError, match="already running"):
            machine.start()
        machine.stop()
        machine.wait(10)
    with pytest.raises(hvcore.StateError, match="closed"):
        machine.start()


def test_load_and_boot_refuse_a_running_machine(machine: Machine) -> None:
    """On KVM, reading a running vCPU's registers waits for KVM_RUN to return (forever, for this
    guest); the simulator would rewrite them under the running guest. Both refuse instead."""
    _start_real(machine, COUNT_FOREVER)
    machine.start()
    guard = threading.Timer(WATCHDOG_SECONDS, machine.stop)  # ends a load() that waits for the vCPU
    guard.start()
    try:
        with pytest.raises(hvcore.StateError, match="stop the machine first"):
            machine.load(b"\xf4")
        with pytest.raises(hvcore.StateError, match="stop the machine first"):
            machine.boot(BootPlan("real", entry=0x1000))
        assert machine.read(0x1000, len(COUNT_FOREVER)) == COUNT_FOREVER  # the image was not written either
    finally:
        guard.cancel()
        machine.stop()
    machine.load(b"\xf4")  # told to stop: load() waits for the vCPU threads, then loads
    assert machine.read(0x1000, 1) == b"\xf4"
    assert machine.wait(10) == MachineResult("stopped")


# Run in a fresh interpreter (the kick handler is process-wide): a thread other than the main one
# opens the hypervisor and runs a guest that never exits for 0.5 s.
_OFF_MAIN_THREAD = """
import sys, threading
import hvcore
from hvcore.vmm.loaders import BootPlan
from hvcore.vmm.machine import Machine

results = []

def main():
    with hvcore.open_hypervisor(sys.argv[1]) as hv, Machine(hv, memory=16 << 20) as machine:
        machine.write(0x1000, bytes.fromhex(sys.argv[2]))
        machine.boot(BootPlan("real", entry=0x1000))
        results.append(machine.run(timeout=0.5).reason)

thread = threading.Thread(target=main)
thread.start()
thread.join()
print(results)
"""


def test_run_times_out_when_the_hypervisor_was_opened_off_the_main_thread(backend_name: str) -> None:
    open_or_skip(backend_name).close()
    proc = subprocess.run(
        [sys.executable, "-c", _OFF_MAIN_THREAD, backend_name, COUNT_FOREVER.hex()],
        capture_output=True,
        text=True,
        timeout=WATCHDOG_SECONDS * 3,
        check=False,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "['timeout']\n", "")


def test_a_vcpu_thread_that_cannot_start_leaves_no_thread_behind(
    hv: Hypervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = set(threading.enumerate())
    start = threading.Thread.start

    def second_fails(thread: threading.Thread) -> None:
        if thread.name == "hvcore-vcpu1":
            raise RuntimeError("can't start new thread")
        start(thread)

    with Machine(hv, memory=16 << 20, cpus=2) as machine:
        _start_real(machine, COUNT_FOREVER)
        with monkeypatch.context() as patch:
            patch.setattr(threading.Thread, "start", second_fails)
            with pytest.raises(hvcore.ResourceExhausted, match="vCPU 1") as failed:
                machine.start()
        assert isinstance(failed.value.__cause__, RuntimeError)
        assert set(threading.enumerate()) == before  # vCPU 0's thread was stopped and joined
        assert machine.read(0x2000, 4) == bytes(4)  # and had not run the guest
        assert machine.run(timeout=0.5) == MachineResult("timeout")  # the machine starts again
    assert set(threading.enumerate()) == before


ROM_READ_WRITE = (
    b"\xb8\xff\xff"  # mov ax, 0xffff
    b"\x8e\xd8"  # mov ds, ax              (ds:0x10 is 0x100000)
    b"\xa0\x10\x00"  # mov al, [0x10]      (a read of the ROM)
    b"\xa2\x14\x00"  # mov [0x14], al      (a write: the device's)
    b"\xf4"  # hlt
)


class _Register:
    """An MMIO device that remembers the last value written."""

    name = "register"

    def __init__(self) -> None:
        self.value = 0

    def read(self, offset: int, size: int) -> int:
        return self.value

    def write(self, offset: int, size: int, value: int) -> None:
        self.value = value


@pytest.mark.parametrize(
    ("base", "length"),
    [(0x1000, 0x10), (0xA0000, 0x20000), ((16 << 20) - 8, 16), (0, 1 << 40)],
    ids=["inside", "legacy-vga-hole", "straddling-the-end", "covering-all"],
)
def test_an_mmio_device_over_ram_is_refused(hv: Hypervisor, base: int, length: int) -> None:
    """RAM answers every access there itself: such a device could never be reached."""
    with Machine(hv, memory=16 << 20) as machine:
        with pytest.raises(
            hvcore.BusConflict, match=r"^register at mmio .* overlaps memory slot \d \(RAM 0x[0-9a-f]+\.\.0x[0-9a-f]+\)"
        ):
            machine.add_mmio_device(base, length, _Register())
        assert machine.mmio_bus.ranges() == ()
        machine.add_mmio_device(16 << 20, 16, _Register())  # right after RAM: reachable


def test_an_mmio_device_over_a_rom_sees_the_guests_writes(hv: Hypervisor) -> None:
    """A device may share a ROM's addresses (a flash chip's command interface): reads hit the ROM, writes exit to it."""
    with Machine(hv, memory=1 << 20, irqchip=False) as machine:
        machine.add_rom(0x100000, b"\x5a" * 16)  # right after RAM
        device = _Register()
        machine.add_mmio_device(0x100000, 16, device)
        _start_real(machine, ROM_READ_WRITE)
        assert machine.run(timeout=20) == MachineResult("halted")
        assert device.value == 0x5A  # the ROM's byte, written to the device
        assert machine.statistics()["MmioExit"] == 1  # the write; the read came from the ROM


def test_the_vcpu_limits_are_a_warning_and_an_error(hv: Hypervisor) -> None:
    soft, hard = vcpu_limits(hv)
    assert (soft, hard) == (hv.recommended_vcpus(), hv.max_vcpus()) and 1 <= soft <= hard
    with pytest.warns(
        OvercommitWarning, match=rf"{soft + 1} vCPUs is more than .* recommends \({soft}.*hard limit is {hard}"
    ):
        Machine(hv, memory=16 << 20, cpus=soft + 1).close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Machine(hv, memory=16 << 20, cpus=soft).close()  # at the soft limit: nothing to say
    for cpus in (0, hard + 1):
        with pytest.raises(
            hvcore.InvalidArgument, match=rf"takes 1 to {hard} \(its hard limit; it recommends at most {soft}"
        ):
            Machine(hv, memory=16 << 20, cpus=cpus)
