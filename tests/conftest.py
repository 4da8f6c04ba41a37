"""Shared fixtures: one ``hv`` per backend, and a watchdog around every VM.

``hv`` is parametrised over every registered backend, so each test body runs
on KVM and on the simulator. A backend that cannot be opened here is skipped
with its own reason (``/dev/kvm`` missing); a backend named in ``HVCORE_REQUIRE``
(``sim`` for ``nox -s tests``, ``kvm`` for ``nox -s hardware``) that cannot be
opened stops the whole session with that reason instead.

The session header shows each usable backend's host profile (:mod:`hvcore.host`: kernel,
CPU, KVM module and the deviations from upstream KVM its probes found); the summary lists
which registered variants the tests relied on (``tests.quirks.host_variant``).
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import threading
from collections.abc import Iterator

import pytest

import hvcore
from hvcore import VM, Hypervisor
from hvcore.host import UPSTREAM, host_profile
from hvcore.vmm.machine import OvercommitWarning
from tests.quirks import VARIANTS_SEEN

WATCHDOG_SECONDS = float(os.environ.get("HVCORE_WATCHDOG", "20"))
"""How long one test's guests may run before the watchdog kicks every vCPU."""


def _required() -> set[str]:
    return {n for n in os.environ.get("HVCORE_REQUIRE", "").split(",") if n}


def overcommit(hv: Hypervisor, cpus: int) -> contextlib.AbstractContextManager[object]:
    """What a machine of ``cpus`` vCPUs says on ``hv``: an ``OvercommitWarning`` above its soft limit, else nothing."""
    return pytest.warns(OvercommitWarning) if cpus > hv.recommended_vcpus() else contextlib.nullcontext()


def open_or_skip(name: str) -> Hypervisor:
    """Open backend ``name``, or skip (fail, if required) with the backend's own reason."""
    try:
        return hvcore.open_hypervisor(name)
    except hvcore.BackendUnavailable as exc:
        if name in _required():
            pytest.fail(f"backend {name!r} is required (HVCORE_REQUIRE) but unusable: {exc.message}")
        pytest.skip(f"backend {name!r} unusable here: {exc.message}")


@pytest.fixture(params=hvcore.backend_names())
def backend_name(request: pytest.FixtureRequest) -> str:
    """Each registered backend's name in turn."""
    return str(request.param)


@pytest.fixture
def hv(backend_name: str) -> Iterator[Hypervisor]:
    """An open hypervisor of each backend in turn."""
    with open_or_skip(backend_name) as hypervisor:
        yield hypervisor


@pytest.fixture
def kvm() -> Iterator[Hypervisor]:
    """The KVM backend only (for KVM-specific tests)."""
    with open_or_skip("kvm") as hypervisor:
        yield hypervisor


class Watchdog:
    """Kicks every vCPU of ``vm`` repeatedly once ``seconds`` have passed, so no guest hangs a test.

    A hang that kicks cannot end (a thread stuck outside ``run()``) is cut by
    faulthandler, which dumps every thread's stack and exits.
    """

    def __init__(self, vm: VM, seconds: float) -> None:
        self.vm = vm
        self.seconds = seconds
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="hvcore-watchdog", daemon=True)

    def _watch(self) -> None:
        if self._stop.wait(self.seconds):
            return
        self.fired = True
        while not self._stop.wait(0.05):
            for vcpu in self.vm.vcpus():
                vcpu.kick()

    def __enter__(self) -> Watchdog:
        faulthandler.dump_traceback_later(self.seconds * 3, exit=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def vm(hv: Hypervisor) -> Iterator[VM]:
    """A fresh VM on each backend, under a watchdog; the test fails if the watchdog had to fire."""
    with hv.create_vm() as machine, Watchdog(machine, WATCHDOG_SECONDS) as dog:
        yield machine
    if dog.fired:
        pytest.fail(f"watchdog: the guest ran longer than {WATCHDOG_SECONDS} s and was kicked")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop at once, saying why, when a required backend cannot be opened (never a silent skip of a suite)."""
    reasons = hvcore.available_backends()
    for name in sorted(_required()):
        reason = reasons.get(name, "not registered")
        if reason is not None:
            pytest.exit(f"backend {name!r} is required (HVCORE_REQUIRE) but unusable: {reason}", returncode=1)


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Each backend's status and, where usable, its host profile (probed once for the session)."""
    lines = []
    for name, reason in hvcore.available_backends().items():
        if reason is not None:
            lines.append(f"hvcore {name}: unusable here ({reason}); its tests skip")
            continue
        try:
            with hvcore.open_hypervisor(name) as hv:
                profile = host_profile(hv)
        except hvcore.HvError as exc:
            lines.append(f"hvcore {name}: failed to open ({exc.message})")
            continue
        lines.append(f"hvcore {name}: host profile")
        lines.extend(f"  {line}" for line in profile.describe())
    return lines


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Which registered host variants (not upstream) the tests accepted, and how often."""
    used = sorted((key, count) for key, count in VARIANTS_SEEN.items() if key[2] != UPSTREAM)
    if not used:
        return
    terminalreporter.section("hvcore host variants accepted")
    for (backend, deviation, variant), count in used:
        terminalreporter.write_line(f"{backend}: {deviation} = {variant} ({count} checks)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that runs on real KVM with ``kvm`` (``nox -s hardware`` runs ``-m kvm``)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_kvm = callspec is not None and callspec.params.get("backend_name") == "kvm"
        if on_kvm or "kvm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kvm)
