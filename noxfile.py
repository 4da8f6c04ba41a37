"""Developer sessions: ``nox -s tests lint typecheck docs`` (what CI runs), ``hardware``, ``bench``,
``kvm-unit-tests``, ``fuzz`` and ``fuzz-devices``."""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = os.environ.get("HVCORE_NOX_PYTHON") or None  # default: the interpreter running nox
SOURCES = ("hvcore", "backends/hvcore_kvm", "simulator/hvcore_sim", "tests", "bench", "docs", "noxfile.py")
"""What lint and typecheck read: the three installed packages (from their source roots), tests, benchmarks,
the documentation's build hooks."""


def _kvm_status() -> str:
    """One line saying whether /dev/kvm is usable here, so a hardware skip is never silent."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"/dev/kvm: NOT usable ({exc.strerror}); real-KVM tests will skip"
    os.close(fd)
    return "/dev/kvm: usable; real-KVM tests will run"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Every test on every backend; KVM skips where unusable (saying why), the simulator must work."""
    session.install("-e", ".[test]")
    session.log(_kvm_status())
    session.run("pytest", *session.posargs, env={"HVCORE_REQUIRE": "sim"})


@nox.session(python=PYTHON)
def hardware(session: nox.Session) -> None:
    """The real-KVM tests only; fails loudly where /dev/kvm is unusable."""
    session.install("-e", ".[test]")
    session.log(_kvm_status())
    session.run("pytest", "-m", "kvm", *session.posargs, env={"HVCORE_REQUIRE": "kvm"})


@nox.session(python=PYTHON, name="unicorn-latest")
def unicorn_latest(session: nox.Session) -> None:
    """The simulator's tests on the newest Unicorn on PyPI, beyond the pinned, calibrated one.

    Reports whether that Unicorn calibrates and passes; a failure here is news about Unicorn, not a
    broken build (the pin in pyproject.toml is what users get).
    """
    session.install("-e", ".[test]")
    session.install("--upgrade", "--no-deps", "unicorn")
    session.run("python", "-c", "import unicorn; print('unicorn', unicorn.__version__)")
    session.run(
        "pytest", "-m", "not kvm", *session.posargs,
        env={"HVCORE_REQUIRE": "sim", "HVCORE_UNICORN_UNPINNED": "1"},
    )  # fmt: skip


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff over the packages, tests, benchmarks and this file; the layer contracts (pyproject.toml's importlinter)."""
    session.install("-e", ".", "ruff>=0.5", "import-linter>=2")
    session.run("ruff", "check", *SOURCES)
    session.run("lint-imports")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the packages, tests and benchmarks."""
    session.install("-e", ".[test]", "mypy>=1.10", "nox>=2024.3")
    session.run("mypy", "--strict", *SOURCES)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """The documentation site: ``mkdocs build --strict`` into ``site/``, where a warning fails the build.

    The build generates the conformance, kvm-unit-tests and performance tables and the API reference
    (``docs/hooks.py``) and checks that every public name rendered. mkdocs arguments pass through
    (``-- --site-dir /tmp/site``).
    """
    session.install("-e", ".[docs]")
    # NO_MKDOCS_2_WARNING: mkdocs-material's banner about MkDocs 2.0, which is not a build warning
    session.run("mkdocs", "build", "--strict", *session.posargs, env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session(python=PYTHON, name="kvm-unit-tests")
def kvm_unit_tests(session: nox.Session) -> None:
    """kvm-unit-tests' x86 suite on each usable backend, as a table against tests/kvm_unit_tests/expected.py.

    ``HVCORE_KVM_UNIT_TESTS`` names a built tree (``git clone`` kvm-unit-tests, ``./configure && make``);
    without it the session says so and runs nothing. Arguments pass through (``-- --backend sim
    --only eventinj,ioapic``, ``--markdown``).
    """
    session.install("-e", ".[test]")
    session.log(_kvm_status())
    session.run("python", "-m", "tests.kvm_unit_tests", *session.posargs)


@nox.session(python=PYTHON)
def fuzz(session: nox.Session) -> None:
    """Differential fuzzing, long: random guests on KVM and the simulator must agree (10,000 unless told).

    ``HVCORE_FUZZ_EXAMPLES=N nox -s fuzz`` runs N guests; pytest arguments pass through
    (``nox -s fuzz -- --hypothesis-seed=1`` repeats a run). Fails where either backend is unusable.
    """
    session.install("-e", ".[test]")
    session.log(_kvm_status())
    examples = os.environ.get("HVCORE_FUZZ_EXAMPLES", "10000")
    session.log(f"differential fuzzing: {examples} random guests on kvm and sim")
    session.run(
        "pytest", "tests/differential", "--hypothesis-show-statistics", *session.posargs,
        env={"HVCORE_FUZZ_EXAMPLES": examples, "HVCORE_REQUIRE": "kvm,sim"},
    )  # fmt: skip


@nox.session(python=PYTHON, name="fuzz-devices")
def fuzz_devices(session: nox.Session) -> None:
    """Guest-driven device fuzzing, timed: hostile guests against a Machine with every device, on KVM and the simulator.

    ``HVCORE_FUZZ_SECONDS`` (300 unless told) per backend; ``HVCORE_FUZZ_RUN_TIMEOUT`` (1 s) per guest.
    Fails where either backend is unusable; pytest arguments pass through (``-- -k sim``).
    """
    session.install("-e", ".[test]")
    session.log(_kvm_status())
    seconds = os.environ.get("HVCORE_FUZZ_SECONDS", "300")
    session.log(f"device fuzzing: {seconds} s of random guests on each of kvm and sim")
    session.run(
        "pytest", "tests/fuzz_devices", "-s", "--hypothesis-show-statistics", *session.posargs,
        env={"HVCORE_FUZZ_SECONDS": seconds, "HVCORE_REQUIRE": "kvm,sim"},
    )  # fmt: skip


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """IO-exit round trips: hvcore against a bare ioctl loop and a C loop, as ratios; simulator exits.

    ``nox -s bench -- --workloads [--only seabios --repeat 3 ...]`` runs the whole-workload benchmark
    instead (``bench/workloads.py``: SeaBIOS and Linux on hvcore sim/kvm and QEMU TCG/KVM).
    """
    session.install("-e", ".")
    session.log(_kvm_status())
    if "--workloads" in session.posargs:
        session.run("python", "-m", "bench.workloads", *session.posargs)
        return
    session.run("python", "-m", "bench.io_exit", *session.posargs)
    session.run("python", "-m", "bench.sim_exits")
