"""hvcore's logging (:mod:`hvcore.log`): silent by default, what ``hvcore run -v`` and ``HVCORE_LOG`` show."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hvcore import AlreadyExists, Hypervisor
from hvcore.cli import main
from hvcore.vmm.machine import Machine
from hvcore.vmm.pci import add_pci_host
from hvcore.vmm.virtio import VirtioRng
from hvcore.vmm.virtio.pci import add_virtio_pci
from tests.conftest import open_or_skip
from tests.vmm.test_machine import HELLO_EXIT

ROOT = Path(__file__).parents[1]


def test_the_library_is_silent_until_asked() -> None:
    root = logging.getLogger("hvcore")
    assert any(isinstance(h, logging.NullHandler) for h in root.handlers)
    assert not any(type(h) is logging.StreamHandler for h in root.handlers)


def _hello(tmp_path: Path) -> Path:
    image = tmp_path / "hello.bin"
    image.write_bytes(HELLO_EXIT)
    return image


def test_run_v_says_what_the_machine_did(hv: Hypervisor, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", str(_hello(tmp_path)), "--backend", hv.name, "--format", "raw", "--memory", "16M", "-q"]
    assert main([*argv, "-v"]) == 0x43
    err = capsys.readouterr().err
    assert "hvcore.vmm.machine: io 0x3f8+0x8: uart0" in err  # the devices
    assert "run ended: MachineResult(reason='debug-exit', status=67" in err
    assert "exits: IoExit 19" in err  # by kind
    assert "io accesses: " in err and "uart0 0r/15w" in err and "unclaimed 1r/1w" in err  # by device
    assert "vCPU 0:" not in err  # each exit only with -vv
    root = logging.getLogger("hvcore")
    assert not [h for h in root.handlers if type(h) is logging.StreamHandler] and root.level == logging.NOTSET


def test_run_vv_shows_every_exit_and_access(hv: Hypervisor, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", str(_hello(tmp_path)), "--backend", hv.name, "--format", "raw", "--memory", "16M", "-q"]
    assert main([*argv, "-vv"]) == 0x43
    err = capsys.readouterr().err
    assert err.count("vCPU 0: IoExit(") == 19
    assert "hvcore.vmm.bus: io write 0x3f8/1 = 0x68 (uart0)" in err  # 'h'
    assert "hvcore.vmm.bus: io read 0x99/1: unclaimed, all-ones" in err
    if hv.name == "kvm":
        assert "hvcore.kvm: KVM_CREATE_VM(fd" in err and "KVM_SET_USER_MEMORY_REGION" in err


def test_kvm_ioctls_are_logged_with_their_errors(caplog: pytest.LogCaptureFixture) -> None:
    with open_or_skip("kvm") as kvm, caplog.at_level(logging.DEBUG, logger="hvcore.kvm"), kvm.create_vm() as vm:
        vm.create_irqchip()
        with pytest.raises(AlreadyExists):
            vm.create_irqchip()  # the kernel's EEXIST
    messages = [r.getMessage() for r in caplog.records if r.name == "hvcore.kvm"]
    assert any(re.fullmatch(r"KVM_CREATE_VM\(fd \d+\) = [1-9]\d*", m) for m in messages), messages  # the VM's fd
    assert any(re.fullmatch(r"KVM_CREATE_IRQCHIP\(fd \d+\) = 0", m) for m in messages), messages
    assert any(re.fullmatch(r"KVM_CREATE_IRQCHIP\(fd \d+\) failed: EEXIST", m) for m in messages), messages


def test_a_guest_error_on_a_device_is_a_warning(hv: Hypervisor, caplog: pytest.LogCaptureFixture) -> None:
    with Machine(hv, memory=1 << 20) as machine, caplog.at_level(logging.INFO, logger="hvcore"):
        host = add_pci_host(machine)
        transport = add_virtio_pci(machine, VirtioRng())
        assert any("BAR 4 (memory64, 0x4000 bytes) at 0xc000" in r.getMessage() for r in caplog.records)
        function = transport.function
        function.config_write(0x14, 4, 0x8_0000)  # BAR 1 into RAM
        transport.write_status(1)
        transport.queues[0].size = 3  # not a power of two
        transport.enable(transport.queues[0])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("BAR 1 at 0x80000 decodes nothing" in w for w in warnings), warnings
    assert any("virtio-rng needs a reset: queue size 3" in w for w in warnings), warnings
    assert host.unmapped == 1


def _python(code: str, environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(str(ROOT / p) for p in (".", "backends", "simulator"))
    env = {**os.environ, "PYTHONPATH": path, **environment}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=False
    )


RUN = """
import hvcore
from hvcore.vmm.machine import Machine
with hvcore.open_hypervisor("sim") as hv, Machine(hv, memory=1 << 20, irqchip=False) as machine:
    machine.write(0x1000, b"\\xf4")
    from hvcore.vmm.loaders import BootPlan
    machine.boot(BootPlan("real", entry=0x1000))
    print(machine.run(timeout=30).reason)
"""


def test_hvcore_log_turns_it_on_for_any_program() -> None:
    quiet = _python(RUN, {"HVCORE_LOG": ""})
    assert quiet.stdout.strip() == "halted" and quiet.stderr == ""
    loud = _python(RUN, {"HVCORE_LOG": "debug"})
    assert loud.stdout.strip() == "halted"
    assert "INFO    hvcore.vmm.machine: run ended: MachineResult(reason='halted'" in loud.stderr
    assert "DEBUG   hvcore.vmm.machine: vCPU 0: HltExit" in loud.stderr
    wrong = _python(RUN, {"HVCORE_LOG": "chatty"})
    assert "HVCORE_LOG='chatty' is not a level; say one of debug, info, warning, error" in wrong.stderr
