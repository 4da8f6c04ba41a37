"""Linux userspace on the simulator: Debian's kernel runs a busybox initramfs as init, which reboots the machine.

``HVCORE_LINUX_KERNEL`` names a bzImage (Debian's ``vmlinuz-6.1.0-*-cloud-amd64``: ``apt-get download
linux-image-6.1.0-57-cloud-amd64``, then ``dpkg-deb --fsys-tarfile ... | tar -x ./boot/``) and
``HVCORE_BUSYBOX`` a static busybox (Debian's ``busybox-static``, ``./bin/busybox``). Without them the
test skips and says so.

``/init`` is a busybox shell script (an initramfs built by :class:`hvcore.vmm.Initramfs`): it mounts
/proc, reads /proc/cpuinfo and runs ``uname -r``, each line on the console (the 8250 UART through the
tty layer), then ``reboot -f``, which resets the machine through the keyboard controller. Getting
there takes user mode and back on the simulator: IRET and SYSRET to CPL 3, SYSCALL, user page faults,
timer interrupts from user mode.

The VM runs on the simulator's default clock (host time). The kernel command line only trims work
that tests nothing of hvcore: ``quiet`` keeps the boot log off the console and
``cryptomgr.notests`` skips the crypto self-tests (RSA with large keys: about two thirds of the
kernel's boot instructions).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from hvcore.cli import main
from hvcore.vmm import Machine, MachineResult, add_pc_devices
from hvcore.vmm.run import ConsoleTee, ExitStatus
from hvcore_sim.system import SimHypervisor
from tests.busybox_init import CMDLINE, INIT_MARKER, initramfs

KERNEL_VARIABLE, BUSYBOX_VARIABLE = "HVCORE_LINUX_KERNEL", "HVCORE_BUSYBOX"
TIMEOUT = 600.0
"""Wall-clock seconds the boot may take (about 15 s on this project's machines)."""


def _input(variable: str, what: str) -> bytes:
    path = os.environ.get(variable, "")
    if not path or not Path(path).is_file():
        pytest.skip(f"set {variable} to {what} to boot Linux userspace on the simulator (about 15 s)")
    return Path(path).read_bytes()


def kernel_release(image: bytes) -> str:
    """The release ``uname -r`` reports: the first word of the bzImage's ``kernel_version`` string."""
    offset = int.from_bytes(image[0x20E:0x210], "little") + 0x200
    return image[offset : image.index(b"\0", offset)].split()[0].decode()


def cpu_vendor(machine: Machine) -> str:
    """The CPUID vendor string vCPU 0 reports (leaf 0: EBX, EDX, ECX)."""
    leaf = next(e for e in machine.vcpus[0].get_cpuid() if e.function == 0)
    return b"".join(r.to_bytes(4, "little") for r in (leaf.ebx, leaf.edx, leaf.ecx)).decode()


@pytest.mark.parametrize("cpus", [1, 2])
def test_busybox_init_runs_commands_and_reboots(monkeypatch: pytest.MonkeyPatch, cpus: int) -> None:
    """With two vCPUs Linux takes both from the ACPI MADT, and the code it patches reaches both (``text_poke``)."""
    kernel = _input(KERNEL_VARIABLE, "a bzImage (e.g. Debian's vmlinuz-6.1.0-57-cloud-amd64)")
    busybox = _input(BUSYBOX_VARIABLE, "a static busybox (e.g. Debian's busybox-static /bin/busybox)")
    monkeypatch.delenv("HVCORE_SIM_CLOCK", raising=False)  # the default clock: host time, as on KVM
    console = io.StringIO()
    with SimHypervisor() as hv, Machine(hv, memory=256 << 20, cpus=cpus) as machine:
        add_pc_devices(machine, serial=ConsoleTee(console, None, lambda: None))  # type: ignore[arg-type]
        machine.load(kernel, cmdline=CMDLINE, initrd=initramfs(busybox))
        vendor = cpu_vendor(machine)
        result = machine.run(timeout=TIMEOUT)
    log = console.getvalue()
    lines = [line.strip() for line in log.splitlines()]
    assert result == MachineResult("reset"), log[-3000:]
    assert "Kernel panic" not in log and "segfault" not in log, log[-3000:]
    assert "[Firmware Bug]" not in log, log[-3000:]  # e.g. "CPU1: APIC id mismatch": the CPUID the VMM set
    assert INIT_MARKER in lines, log[-3000:]
    assert f"hvcore-cpus: {cpus}" in lines, log[-3000:]
    assert f"vendor_id\t: {vendor}" in lines, log[-3000:]  # the CPUID the VMM set
    assert f"hvcore-release: {kernel_release(kernel)}" in lines, log[-3000:]
    assert "reboot: Restarting system" in log  # the kernel's own last word before the reset


def test_the_command_boots_smp_linux(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``hvcore run vmlinuz --initrd ... --cpus 2``: the defaults (ACPI tables included) give an SMP Linux."""
    _input(KERNEL_VARIABLE, "a bzImage (e.g. Debian's vmlinuz-6.1.0-57-cloud-amd64)")
    busybox = _input(BUSYBOX_VARIABLE, "a static busybox (e.g. Debian's busybox-static /bin/busybox)")
    monkeypatch.delenv("HVCORE_SIM_CLOCK", raising=False)
    initrd = tmp_path / "initrd.cpio"
    initrd.write_bytes(initramfs(busybox))
    argv = ["run", os.environ[KERNEL_VARIABLE], "--initrd", str(initrd), "--cmdline", CMDLINE, "--cpus", "2"]
    status = main([*argv, "--backend", "sim", "--timeout", str(TIMEOUT)])
    out = capsys.readouterr().out
    assert status == ExitStatus.OK, out[-3000:]
    assert "hvcore-cpus: 2" in out and "2 vCPUs" in out, out[-3000:]
