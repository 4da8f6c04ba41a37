"""Linux finds virtio-mmio devices in the machine's ACPI tables and uses them, on the simulator.

The judge is Debian's kernel: its ACPI code parses the RSDP, XSDT, FADT, MADT and DSDT hvcore built
(``hvcore.vmm.acpi``), its ``virtio_mmio`` driver binds the DSDT's two ``LNRO0005`` devices,
negotiates features and sets up their queues through hvcore's transport; ``virtio-rng`` reads
``/dev/hwrng`` (the device's source is a known pattern, so the bytes userspace prints prove they
came from it) and ``virtio_blk`` reads the disk image's first sector as ``/dev/vda``, then writes
and syncs it, which the test finds in the image file.

Inputs as for ``test_linux_userspace.py``, plus ``HVCORE_LINUX_MODULES``: a directory with the
kernel's ``virtio_ring.ko``, ``virtio.ko``, ``virtio_mmio.ko``, ``virtio-rng.ko`` and ``virtio_blk.ko`` (``.ci/run``
copies them from the same package). The simulator only: this host's KVM cannot run the kernel.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from hvcore.vmm import Machine, add_pc_devices
from hvcore.vmm.run import ConsoleTee
from hvcore.vmm.virtio import VirtioBlock, VirtioRng, add_virtio_mmio
from hvcore_sim.system import SimHypervisor
from tests.busybox_init import CMDLINE, initramfs_with_modules
from tests.vmm.test_linux_userspace import BUSYBOX_VARIABLE, KERNEL_VARIABLE, TIMEOUT, _input

MODULES_VARIABLE = "HVCORE_LINUX_MODULES"
MODULES = ("virtio_ring.ko", "virtio.ko", "virtio_mmio.ko", "virtio-rng.ko", "virtio_blk.ko")
"""In load order: each needs the ones before it."""
INIT = b"""#!/bin/sh
export PATH=/bin
mount -t sysfs sysfs /sys
for module in /lib/*.ko; do insmod $module; done
echo "hvcore-rng: $(cat /sys/devices/virtual/misc/hw_random/rng_current)"
echo "hvcore-bytes: $(head -c 8 /dev/hwrng | od -An -tx1 | tr -d ' ')"
mount -t devtmpfs devtmpfs /devices
echo "hvcore-disk: $(head -c 15 /devices/vda)"
printf 'written-by-linux' > /devices/vda
sync
reboot -f
"""
APPLETS = ("sh", "mount", "cat", "insmod", "head", "od", "tr", "printf", "sync", "reboot")
DISK_MARKER = b"hvcore-disk-ok!"


def pattern(length: int) -> bytes:
    """What the device hands out: 1, 2, 3, ..."""
    return bytes((i + 1) & 0xFF for i in range(length))


def test_linux_binds_virtio_rng_and_blk_on_virtio_mmio_from_the_dsdt(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kernel = _input(KERNEL_VARIABLE, "a bzImage (e.g. Debian's vmlinuz-6.1.0-57-cloud-amd64)")
    busybox = _input(BUSYBOX_VARIABLE, "a static busybox (e.g. Debian's busybox-static /bin/busybox)")
    modules = Path(os.environ.get(MODULES_VARIABLE, ""))
    if not all((modules / m).is_file() for m in MODULES):
        pytest.skip(f"set {MODULES_VARIABLE} to a directory with the kernel's {', '.join(MODULES)}")
    monkeypatch.delenv("HVCORE_SIM_CLOCK", raising=False)
    console = io.StringIO()
    with SimHypervisor() as hv, Machine(hv, memory=256 << 20) as machine:
        add_pc_devices(machine, serial=ConsoleTee(console, None, lambda: None))  # type: ignore[arg-type]
        rng = VirtioRng(source=pattern)
        transport = add_virtio_mmio(machine, rng)
        disk = tmp_path / "disk.img"
        disk.write_bytes(DISK_MARKER.ljust(1 << 20, b"\0"))
        disk_transport = add_virtio_mmio(machine, VirtioBlock(disk))
        machine.load(
            kernel,
            cmdline=CMDLINE,
            initrd=initramfs_with_modules(
                busybox,
                INIT,
                APPLETS,
                modules,
                MODULES,
                directories=("/sys", "/devices"),
                devices=[("/dev/hwrng", 10, 183)],
            ),
        )
        result = machine.run(timeout=TIMEOUT)
    text = console.getvalue()
    assert result.reason == "reset", (result, text[-2000:])
    assert "hvcore-rng: virtio_rng.0" in text, text[-2000:]
    assert f"hvcore-bytes: {pattern(8).hex()}" in text, text[-2000:]
    assert rng.bytes_given >= 8
    assert transport.problem is None
    assert f"hvcore-disk: {DISK_MARKER.decode()}" in text, text[-2000:]
    assert disk.read_bytes()[:16] == b"written-by-linux"
    assert disk_transport.problem is None
