"""The busybox initramfs the Linux userspace test and ``bench.workloads`` boot: ``/init`` and how to build it.

``/init`` is a busybox shell script: it mounts /proc, reads /proc/cpuinfo and runs ``uname -r``,
each line on the console, then ``reboot -f``. Its first line, :data:`INIT_MARKER`, says init runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

from hvcore.vmm.initramfs import Initramfs

__all__ = ["APPLETS", "CMDLINE", "INIT", "INIT_MARKER", "initramfs", "initramfs_with_modules"]

CMDLINE: Final = "console=ttyS0 panic=-1 quiet cryptomgr.notests"
"""``panic=-1``: a kernel panic resets at once; ``quiet`` keeps the boot log off the console;
``cryptomgr.notests`` skips the crypto self-tests (about two thirds of the kernel's boot instructions)."""
APPLETS: Final = ("sh", "mount", "cat", "grep", "uname", "reboot")
"""The busybox applets ``/init`` uses (one symlink each)."""
INIT_MARKER: Final = "hvcore-init: running as pid 1"
"""The line ``/init`` prints first: the kernel ran it as init."""

INIT: Final = b"""#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
echo "hvcore-init: running as pid $$"
echo "hvcore-cpus: $(cat /proc/cpuinfo | grep -c ^processor)"
cat /proc/cpuinfo | grep -m1 ^vendor_id
echo "hvcore-release: $(uname -r)"
reboot -f
"""
"""The script run as init."""


def initramfs(busybox: bytes) -> bytes:
    """``/init`` above, busybox with a link per applet it uses, ``/proc`` and ``/dev/console``."""
    archive = Initramfs().char_device("/dev/console", 5, 1).directory("/proc").file("/bin/busybox", busybox, 0o755)
    for applet in APPLETS:
        archive.symlink(f"/bin/{applet}", "busybox")
    return archive.file("/init", INIT, 0o755).to_bytes()


def initramfs_with_modules(
    busybox: bytes,
    init: bytes,
    applets: Sequence[str],
    modules: Path,
    names: Sequence[str],
    *,
    directories: Sequence[str] = ("/proc", "/sys"),
    devices: Sequence[tuple[str, int, int]] = (),
) -> bytes:
    """``init`` as ``/init``, busybox with a link per applet, kernel modules ``names`` from ``modules`` in
    ``/lib`` (numbered in the order given, for ``insmod /lib/*.ko``), the ``directories`` and the
    character ``devices`` (path, major, minor) besides ``/dev/console``."""
    archive = Initramfs().char_device("/dev/console", 5, 1)
    for path, major, minor in devices:
        archive.char_device(path, major, minor)
    for directory in (*directories, "/lib"):
        archive.directory(directory)
    archive.file("/bin/busybox", busybox, 0o755)
    for applet in applets:
        archive.symlink(f"/bin/{applet}", "busybox")
    for index, module in enumerate(names):
        archive.file(f"/lib/{index}-{module}", (modules / module).read_bytes(), 0o644)
    return archive.file("/init", init, 0o755).to_bytes()
