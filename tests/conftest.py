"""Shared fixtures: one ``hv`` per backend, and a watchdog around every VM.

``hv`` is parametrised over every registered backend, so each test body runs
on KVM and on the simulator. A backend that cannot be opened here is skipped
with its own reason (``/dev/kvm`` missing, simulator not built); with
``HVCORE_REQUIRE=kvm`` (set by ``nox -s hardware``) that backend failing to
open is an error instead of a skip.
"""

from __future__ import annotations

import faulthandler
import os
import threading
from collections.abc import Iterator

import pytest

import hvcore
from hvcore import VM, Hypervisor

WATCHDOG_SECONDS = float(os.environ.get("HVCORE_WATCHDOG", "20"))
"""How long one test's guests may run before the watchdog kicks every vCPU."""


def _required() -> set[str]:
    return {n for n in os.environ.get("HVCORE_REQUIRE", "").split(",") if n}


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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that runs on real KVM with ``kvm`` (``nox -s hardware`` runs ``-m kvm``)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_kvm = callspec is not None and callspec.params.get("backend_name") == "kvm"
        if on_kvm or "kvm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kvm)
