"""A whole Linux machine on the simulator: two vCPUs, a disk, a console and a NIC, on PCI or virtio-mmio.

Debian's kernel boots with ``Machine(hv, memory=256 MiB, cpus=2)``, the PC devices and three
virtio devices, once as PCI functions (``virtio_pci``, MSI-X) and once behind virtio-mmio
transports it finds in the DSDT: virtio-blk over an ext2 image the test builds
(``mke2fs -d``; the kernel mounts it with its built-in ext4 driver), virtio-console and virtio-net
over a socket pair whose other end is the test. The busybox ``/init`` loads the virtio modules,
mounts the disk read-only and prints a file from it and the CPU count; then it talks to the test:

- console: it writes ``hvcore-ping`` to ``/dev/hvc0``; the test sees it in the console's output and
  feeds back a line, which the guest reads from ``/dev/hvc0`` and prints on the serial console;
- network: it brings ``eth0`` up and ``arping``s 10.0.2.2 once; the test receives the ARP request
  from its socket, checks it and sends the reply, which ``arping`` reports.

Then ``reboot -f`` resets the machine. Inputs as ``test_linux_virtio.py`` (``HVCORE_LINUX_KERNEL``,
``HVCORE_BUSYBOX``, ``HVCORE_LINUX_MODULES`` with the transport's modules and :data:`DEVICE_MODULES`),
and ``mke2fs``.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from hvcore.vmm import Machine, MachineResult, add_pc_devices
from hvcore.vmm.run import ConsoleTee
from hvcore.vmm.virtio import SocketBackend, VirtioBlock, VirtioConsole, VirtioNet, add_virtio_mmio
from hvcore.vmm.virtio.net import parse_mac
from hvcore.vmm.virtio.pci import add_virtio_pci
from hvcore_sim.system import SimHypervisor
from tests.busybox_init import CMDLINE, initramfs_with_modules
from tests.vmm.test_linux_userspace import BUSYBOX_VARIABLE, KERNEL_VARIABLE, _input
from tests.vmm.test_linux_virtio import MODULES_VARIABLE

TIMEOUT = 120.0
"""Wall-clock seconds for the whole run (a boot takes about 10 s on the simulator)."""
TRANSPORTS = {
    "pci": (add_virtio_pci, ("virtio_pci_modern_dev.ko", "virtio_pci_legacy_dev.ko", "virtio_pci.ko")),
    "mmio": (add_virtio_mmio, ("virtio_mmio.ko",)),
}
"""Each transport: how the test adds a device, and the kernel modules that drive it (after virtio.ko)."""
DEVICE_MODULES = (
    "virtio_blk.ko",
    "virtio_console.ko",
    "failover.ko",
    "net_failover.ko",
    "virtio_net.ko",
)
"""In load order, after the transport's: each needs some of the ones before it (``modinfo -F depends``)."""
FILE_TEXT = "hello from an ext2 image built by the test"
GUEST_MAC, HOST_MAC = "52:54:00:12:34:56", "52:54:00:ab:cd:ef"
GUEST_IP, HOST_IP = "10.0.2.15", "10.0.2.2"
REPLY = "hvcore-pong from the host"
INIT = f"""#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for module in /lib/*.ko; do insmod $module || echo "hvcore-insmod-failed: $module"; done
mount -t ext2 -o ro /dev/vda /mnt && echo "hvcore-file: $(cat /mnt/hello.txt)"
echo "hvcore-cpus: $(grep -c ^processor /proc/cpuinfo)"
echo "hvcore-msi: $(grep -c PCI-MSI /proc/interrupts)"
exec 3<>/dev/hvc0
stty -echo <&3
echo hvcore-ping >&3
read -r reply <&3
echo "hvcore-reply: $reply"
ip link set eth0 up
ip addr add {GUEST_IP}/24 dev eth0
arping -f -c 10 -w 30 -I eth0 {HOST_IP}
reboot -f
""".encode()
APPLETS = ("sh", "mount", "cat", "insmod", "grep", "stty", "ip", "arping", "reboot")
ETH_P_ARP = 0x0806


def _modules(transport: str) -> tuple[str, ...]:
    return ("virtio_ring.ko", "virtio.ko", *TRANSPORTS[transport][1], *DEVICE_MODULES)


def _ext2_image(tmp_path: Path) -> Path:
    mke2fs = shutil.which("mke2fs") or shutil.which("mke2fs", path="/sbin:/usr/sbin")
    if mke2fs is None:
        pytest.skip("mke2fs (e2fsprogs) is not installed: the test builds its ext2 disk image with it")
    files = tmp_path / "files"
    files.mkdir()
    (files / "hello.txt").write_text(FILE_TEXT + "\n")
    image = tmp_path / "disk.ext2"
    subprocess.run([mke2fs, "-q", "-t", "ext2", "-d", str(files), str(image), "4M"], check=True, capture_output=True)
    return image


def _arp_header(operation: int) -> bytes:
    """The start of an ARP packet for IPv4 over Ethernet (RFC 826): hardware and protocol types and sizes, opcode."""
    return struct.pack(">HHBBH", 1, 0x0800, 6, 4, operation)


def _arp(operation: int, sender: tuple[bytes, str], target: tuple[bytes, str]) -> bytes:
    """An ARP packet: the header, then the sender's and the target's MAC and IPv4 addresses."""
    return _arp_header(operation) + b"".join(mac + socket.inet_aton(ip) for mac, ip in (sender, target))


def _answer_arp(host: socket.socket, machine: Machine, deadline: float) -> bytes | None:
    """Wait for the guest's ARP request for the host's address, and reply; the request, or None if none came."""
    guest_mac, host_mac = parse_mac(GUEST_MAC), parse_mac(HOST_MAC)
    sender, target = guest_mac + socket.inet_aton(GUEST_IP), socket.inet_aton(HOST_IP)
    host.settimeout(0.2)
    while time.monotonic() < deadline and machine.wait(0) is None:
        try:
            frame = host.recv(65536)
        except TimeoutError:
            continue
        arp = frame[14:42]  # IPv6 frames come too; arping sets the target MAC to broadcast, not zero
        if frame[12:14] == struct.pack(">H", ETH_P_ARP) and arp[:18] == _arp_header(1) + sender and arp[24:] == target:
            reply = _arp(2, (host_mac, HOST_IP), (guest_mac, GUEST_IP))
            host.send(guest_mac + host_mac + struct.pack(">H", ETH_P_ARP) + reply)
            return frame
    return None


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
def test_linux_uses_a_disk_a_console_and_a_nic_on_two_vcpus(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, transport: str
) -> None:
    kernel = _input(KERNEL_VARIABLE, "a bzImage (e.g. Debian's vmlinuz-6.1.0-57-cloud-amd64)")
    busybox = _input(BUSYBOX_VARIABLE, "a static busybox (e.g. Debian's busybox-static /bin/busybox)")
    modules, names = Path(os.environ.get(MODULES_VARIABLE, "")), _modules(transport)
    if not all((modules / m).is_file() for m in names):
        pytest.skip(f"set {MODULES_VARIABLE} to a directory with the kernel's {', '.join(names)}")
    add = TRANSPORTS[transport][0]
    image = _ext2_image(tmp_path)
    monkeypatch.delenv("HVCORE_SIM_CLOCK", raising=False)
    serial = io.StringIO()
    guest_end, host = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    started = time.monotonic()
    deadline = started + TIMEOUT
    with host, SimHypervisor() as hv, Machine(hv, memory=256 << 20, cpus=2) as machine:
        add_pc_devices(machine, serial=ConsoleTee(serial, None, lambda: None))  # type: ignore[arg-type]
        disk = add(machine, VirtioBlock(image, read_only=True))
        hvc = VirtioConsole()
        console = add(machine, hvc)
        net = VirtioNet(SocketBackend(guest_end, name="linux-test"), mac=GUEST_MAC)
        nic = add(machine, net)
        machine.load(
            kernel,
            cmdline=CMDLINE,
            initrd=initramfs_with_modules(
                busybox, INIT, APPLETS, modules, names, directories=("/proc", "/sys", "/mnt")
            ),
        )
        machine.start()
        try:
            pinged = hvc.wait_for(b"hvcore-ping", timeout=max(0.0, deadline - time.monotonic()))
            if pinged:
                hvc.feed(REPLY.encode() + b"\n")
            request = _answer_arp(host, machine, deadline) if pinged else None
            result = machine.wait(max(0.0, deadline - time.monotonic()))
        finally:
            machine.stop(MachineResult("timeout"))  # no effect when the guest ended the run first
        result = result or machine.wait()
        elapsed = time.monotonic() - started
    log = serial.getvalue()
    lines = [line.strip() for line in log.splitlines()]
    context = f"after {elapsed:.1f} s, {result}; serial console:\n{log[-3000:]}\nhvc0:\n{hvc.text()[-500:]}"
    assert pinged, f"the guest wrote nothing to /dev/hvc0 ({context})"
    assert request is not None, f"no ARP request from the guest ({context})"
    assert result == MachineResult("reset"), context
    assert "Kernel panic" not in log and not any("hvcore-insmod-failed" in line for line in lines), context
    assert f"hvcore-file: {FILE_TEXT}" in lines, context
    assert "hvcore-cpus: 2" in lines, context
    assert b"hvcore-ping\r\n" in hvc.data, context  # the tty's ONLCR
    assert f"hvcore-reply: {REPLY}" in lines, context
    assert f"Unicast reply from {HOST_IP} [{HOST_MAC}]" in log and "Received 1 response" in log, context
    assert request[:6] == b"\xff" * 6 and request[6:12] == parse_mac(GUEST_MAC)  # broadcast, from the guest's MAC
    assert net.rx_frames >= 1 and net.tx_frames >= 1 and net.tx_errors == net.rx_errors == 0
    assert hvc.queued_input == 0
    assert disk.problem is None and console.problem is None and nic.problem is None
    msi = next(int(line.split()[-1]) for line in lines if line.startswith("hvcore-msi:"))
    assert msi >= 6 if transport == "pci" else msi == 0, context  # per device: a configuration and a queue vector
    print(f"Linux ({transport}): boot to reset in {elapsed:.1f} s")
