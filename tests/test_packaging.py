"""What an installed hvcore puts in site-packages, and that a user's own modules cannot shadow it.

The repository keeps ``hvcore/``, ``backends/`` and ``simulator/`` side by side; the import
names are ``hvcore``, ``hvcore_kvm`` (``backends/hvcore_kvm``) and ``hvcore_sim``
(``simulator/hvcore_sim``), so no generic top-level name is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCE_ROOTS = (REPO, REPO / "backends", REPO / "simulator")
INSTALLED = {"hvcore", "hvcore_kvm", "hvcore_sim"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from this tree (no build isolation: the test environment's setuptools)."""
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out)]
    done = subprocess.run([*command, str(REPO)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"building the wheel failed:\n{done.stdout}\n{done.stderr}"
    (built,) = out.glob("hvcore-*.whl")
    return built


def test_the_wheel_installs_only_namespaced_packages(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == INSTALLED
    for package in INSTALLED:
        assert f"{package}/py.typed" in names, f"{package} is not marked typed"
    assert "hvcore_sim/irqchip/lapic.py" in names and "hvcore_kvm/vcpu.py" in names


def test_the_wheel_registers_the_backends_by_their_namespaced_modules(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    (entry_points,) = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = archive.read(entry_points).decode()
    assert "[hvcore.backends]" in text
    assert "kvm = hvcore_kvm:BACKEND" in text and "sim = hvcore_sim:BACKEND" in text


def test_local_modules_with_generic_names_change_nothing(tmp_path: Path) -> None:
    for name in ("simulator", "backends", "kvm", "sim"):
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('the user\\'s own {name}.py was imported')\n")
    code = (
        "import json, hvcore\n"
        "reasons = hvcore.available_backends()\n"
        "with hvcore.open_hypervisor('sim') as hv:\n"
        "    reasons['opened'] = hv.name\n"
        "print(json.dumps(reasons))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, SOURCE_ROOTS)))  # cwd still comes first
    command = [sys.executable, "-c", code]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    reasons = json.loads(done.stdout)
    assert reasons["sim"] is None
    assert reasons["opened"] == "sim"
    assert reasons["kvm"] is None or "imported" not in reasons["kvm"]


def test_a_required_simulator_that_cannot_start_stops_the_run_with_its_reason(tmp_path: Path) -> None:
    """What ``nox -s tests`` (HVCORE_REQUIRE=sim) does on a machine whose Unicorn is not the calibrated one."""
    fake = tmp_path / "unicorn"
    fake.mkdir()
    (fake / "__init__.py").write_text("__version__ = '9.9.9'\n")
    (fake / "x86_const.py").write_text("def __getattr__(name):\n    return 0\n")
    env = {k: v for k, v in os.environ.items() if k != "HVCORE_UNICORN_UNPINNED"}
    env.update(HVCORE_REQUIRE="sim", PYTHONPATH=os.pathsep.join(map(str, (tmp_path, *SOURCE_ROOTS))))
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests/test_protocol.py"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 1, done.stdout[-2000:]
    assert "backend 'sim' is required (HVCORE_REQUIRE) but unusable: unicorn 9.9.9" in done.stdout + done.stderr
    assert " passed" not in done.stdout
