"""The layer contracts (``[tool.importlinter]`` in pyproject.toml, checked by ``nox -s lint``) hold, and bite.

A copy of the packages with one forbidden import added must fail ``lint-imports`` naming the
contract it breaks: the core importing a backend, a backend importing the other, the core
importing the VMM layer, a simulator module reaching into Unicorn's memory itself (``ctypes``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
NO_BACKEND = "hvcore (core, VMM layer, CLI) imports no backend: backends are reached by name through the registry"
INDEPENDENT = "The backends are independent of each other"
NO_VMM = "The core and the backends import neither the VMM layer nor the CLI"
UNICORN_INTERNALS = (
    "Only hvcore_sim.unicorn_internals reaches into Unicorn's memory (and hvcore_sim.memory into the host's):"
    " no other simulator module imports ctypes"
)
CONTRACTS = (NO_BACKEND, INDEPENDENT, NO_VMM, UNICORN_INTERNALS)
"""pyproject.toml's contracts, by name."""
PACKAGES = {
    "hvcore": ROOT / "hvcore",
    "hvcore_kvm": ROOT / "backends/hvcore_kvm",
    "hvcore_sim": ROOT / "simulator/hvcore_sim",
}


def _broken(output: str) -> set[str]:
    """The contracts ``lint-imports`` reported broken (its lines wrap: compared with whitespace collapsed)."""
    text = " ".join(output.split())
    found = {name for name in CONTRACTS if f"{name} BROKEN" in text}
    assert found | {name for name in CONTRACTS if f"{name} KEPT" in text} == set(CONTRACTS), output
    return found


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if executable is None:
        pytest.skip("import-linter is not installed (pip install import-linter; nox -s lint installs it)")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([executable], cwd=tree, env=env, capture_output=True, text=True, timeout=300, check=False)


def _copy(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy(ROOT / "pyproject.toml", tree)
    for name, source in PACKAGES.items():
        shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    return tree


def test_the_tree_keeps_every_contract(tmp_path: Path) -> None:
    run = _lint_imports(_copy(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    assert _broken(run.stdout) == set()


@pytest.mark.parametrize(
    ("module", "line", "contracts"),
    [
        # the core importing a backend also joins the backends through it
        ("hvcore/types.py", "import hvcore_sim", {NO_BACKEND, INDEPENDENT}),
        ("hvcore/vmm/bus.py", "import hvcore_kvm", {NO_BACKEND}),
        ("hvcore_kvm/convert.py", "import hvcore_sim.engine", {INDEPENDENT}),
        ("hvcore/memory.py", "import hvcore.vmm.bus", {NO_VMM}),
        ("hvcore_sim/vm.py", "from hvcore.cli import main", {NO_VMM}),
        ("hvcore_sim/engine.py", "import ctypes", {UNICORN_INTERNALS}),
        ("hvcore_sim/blocks.py", "from ctypes import c_uint64", {UNICORN_INTERNALS}),
    ],
)
def test_a_forbidden_import_breaks_its_contract(tmp_path: Path, module: str, line: str, contracts: set[str]) -> None:
    tree = _copy(tmp_path)
    path = tree / module
    path.write_text(path.read_text() + f"\n{line}  # the layer this test breaks\n")
    run = _lint_imports(tree)
    assert run.returncode != 0, run.stdout
    assert _broken(run.stdout) == contracts
