"""Finding backends: built-ins, entry points, registration, 'auto', and unavailability with reasons."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points

import pytest

import hvcore
from hvcore import registry


@pytest.fixture
def clean_registry() -> Iterator[None]:
    saved = dict(registry._targets)
    yield
    registry._targets.clear()
    registry._targets.update(saved)


def test_builtin_backends_are_registered_through_entry_points() -> None:
    names = {ep.name for ep in entry_points(group=registry.ENTRY_POINT_GROUP)}
    assert {"kvm", "sim"} <= names
    assert {"kvm", "sim"} <= set(hvcore.backend_names())


def test_available_backends_gives_a_reason_for_each_unusable_one() -> None:
    status = hvcore.available_backends()
    assert set(status) >= {"kvm", "sim"}
    for reason in status.values():
        assert reason is None or len(reason) > 10


def test_auto_opens_the_first_usable_backend() -> None:
    status = hvcore.available_backends()
    expected = next((n for n in registry.AUTO_ORDER if status.get(n) is None), None)
    if expected is None:
        with pytest.raises(hvcore.BackendUnavailable, match="no backend is usable"):
            hvcore.open_hypervisor("auto")
        return
    with hvcore.open_hypervisor() as hv:
        assert hv.name == expected


class _FakeBackend:
    name = "fake"

    def unavailable_reason(self) -> str | None:
        return "fake hardware is not plugged in"

    def open(self) -> hvcore.Hypervisor:
        raise AssertionError("never opened")


FAKE = _FakeBackend()


@pytest.mark.usefixtures("clean_registry")
def test_third_party_backend_registers_and_explains_itself() -> None:
    hvcore.register_backend("fake", f"{__name__}:FAKE")
    assert "fake" in hvcore.backend_names()
    assert hvcore.available_backends()["fake"] == "fake hardware is not plugged in"
    with pytest.raises(hvcore.BackendUnavailable, match="fake hardware is not plugged in"):
        hvcore.open_hypervisor("fake")
    with pytest.raises(hvcore.InvalidArgument, match="already registered"):
        hvcore.register_backend("fake", "elsewhere:X")
    hvcore.register_backend("fake", "elsewhere:X", clobber=True)
    with pytest.raises(hvcore.BackendUnavailable, match="cannot be loaded"):
        hvcore.open_hypervisor("fake")


def test_unknown_backend_lists_the_known_ones() -> None:
    with pytest.raises(hvcore.InvalidArgument, match=r"known: .*kvm"):
        hvcore.open_hypervisor("hyperv-on-a-toaster")


def test_importing_hvcore_imports_no_backend() -> None:
    code = "import sys, hvcore; print(any(m.startswith(('hvcore_kvm', 'hvcore_sim', 'unicorn')) for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
