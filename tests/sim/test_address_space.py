"""No room for another engine is a typed error, never Unicorn ending the process.

Unicorn calls ``exit(1)`` when it cannot map an engine's translation buffer: the process ended
with status 1, no Python error, and no ``finally`` block ran (under ``ulimit -v``, or with
hundreds of vCPUs). Each case runs in a child process with an address-space limit
(``RLIMIT_AS``) set once the VM exists.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import hvcore
from hvcore_sim import room, system
from hvcore_sim.vcpu import SimVCPU

pytestmark = pytest.mark.skipif(
    system._unicorn_problem() is not None, reason=f"simulator unusable: {system._unicorn_problem()}"
)

_CHILD = textwrap.dedent(
    """
    import resource

    import hvcore

    def vm_size() -> int:
        with open("/proc/self/status") as f:
            return int(f.read().split("VmSize:")[1].split()[0]) * 1024

    with hvcore.open_hypervisor("sim") as hv, hv.create_vm() as vm:
        vm.create_irqchip()
        vm.create_vcpu(0)
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (vm_size() + (1 << 30), hard))  # room for a few engines
        try:
            for vcpu_id in range(1, 64):
                vm.create_vcpu(vcpu_id)
        except hvcore.ResourceExhausted as exc:
            print("typed", exc.operation, vcpu_id, exc.message)
        finally:
            print("finally ran")
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
        vm.create_vcpu(vcpu_id)  # nothing of the failed vCPU stayed behind
        print("vcpus", len(vm.vcpus()))
    print("closed")
    """
)


def test_no_room_for_a_vcpu_engine_is_resource_exhausted() -> None:
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, f"{here}/backends", f"{here}/simulator"]))
    child = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=60, env=env, cwd=here, check=False
    )
    assert child.returncode == 0, child.stderr
    lines = child.stdout.splitlines()
    typed = [line for line in lines if line.startswith("typed ")]
    assert len(typed) == 1, child.stdout
    _, operation, vcpu_id, message = typed[0].split(" ", 3)
    assert operation == "create_vcpu"
    assert 1 < int(vcpu_id) < 64  # a few engines fitted: each takes a bounded buffer, not 1 GiB
    assert f"vCPU {vcpu_id}" in message
    assert "RLIMIT_AS" in message
    assert lines[-3:] == ["finally ran", f"vcpus {int(vcpu_id) + 1}", "closed"]


def test_an_engine_takes_a_bounded_translation_buffer() -> None:
    with hvcore.open_hypervisor("sim") as hv, hv.create_vm() as vm:
        vcpu = vm.create_vcpu(0)
        assert isinstance(vcpu, SimVCPU) and vcpu._engine is not None
        assert vcpu._engine.uc.ctl_get_tcg_buffer_size() == room.TCG_BUFFER_SIZE
