"""A real Linux kernel through the bzImage loader, on the simulator: opt-in, it takes about 30 s.

``HVCORE_LINUX=/path/to/vmlinuz`` (e.g. Debian's: ``apt-get download linux-image-6.1.0-50-amd64``,
then ``dpkg-deb --fsys-tarfile ... | tar -x ./boot/``). Without it the test skips and says so.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from hvcore.vmm import Machine, MachineResult, add_pc_devices
from hvcore.vmm.run import ConsoleTee
from hvcore_sim.system import SimHypervisor

DONE = "Unable to mount root fs"


def test_linux_boots_to_the_root_mount_on_the_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    path = os.environ.get("HVCORE_LINUX", "")
    if not path or not Path(path).is_file():
        pytest.skip("set HVCORE_LINUX to a bzImage (e.g. Debian's vmlinuz) to boot a real kernel (about 30 s)")
    console = io.StringIO()
    monkeypatch.delenv("HVCORE_SIM_CLOCK", raising=False)  # the default clock: host time, as on KVM
    with SimHypervisor() as hv, Machine(hv, memory=512 << 20) as machine:
        tee = ConsoleTee(console, DONE, lambda: machine.stop(MachineResult("until")))
        add_pc_devices(machine, serial=tee)  # type: ignore[arg-type]
        machine.load(Path(path).read_bytes(), cmdline="console=ttyS0 panic=-1")
        result = machine.run(timeout=600)
    log = console.getvalue()
    assert result == MachineResult("until"), log[-2000:]
    assert "Linux version" in log and "Calibrating delay loop" in log
    assert "Hypervisor detected: KVM" in log and "kvm-clock: Using msrs 4b564d01 and 4b564d00" in log
