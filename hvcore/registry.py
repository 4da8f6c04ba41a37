"""Find and open hypervisor backends by name.

Backends are ``"module:attribute"`` strings, imported on first use, that name
an object following :class:`Backend`. hvcore's own (``kvm``, ``sim``) are
built in; others arrive through the ``hvcore.backends`` entry-point group::

    [project.entry-points."hvcore.backends"]
    whpx = "hvcore_whpx:BACKEND"

or at run time with :func:`register_backend`. ``"auto"`` picks KVM where it is
usable and the simulator otherwise.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Protocol, runtime_checkable

from hvcore.errors import BackendUnavailable, InvalidArgument
from hvcore.protocol import Hypervisor

__all__ = [
    "AUTO_ORDER",
    "ENTRY_POINT_GROUP",
    "Backend",
    "available_backends",
    "backend_names",
    "load_backend",
    "open_hypervisor",
    "register_backend",
    "registered_backends",
]

ENTRY_POINT_GROUP = "hvcore.backends"
"""The entry-point group backends register in (``pyproject.toml``: ``[project.entry-points."hvcore.backends"]``)."""
AUTO_ORDER = ("kvm", "sim")
"""What ``"auto"`` tries, in order."""

_BUILTIN: Mapping[str, str] = MappingProxyType({"kvm": "hvcore_kvm:BACKEND", "sim": "hvcore_sim:BACKEND"})


@runtime_checkable
class Backend(Protocol):
    """What a backend module exports: a name, a probe and a way to open it."""

    @property
    def name(self) -> str:
        """The registry name."""
        ...

    def unavailable_reason(self) -> str | None:
        """None when the backend can be opened here; otherwise why not and how to fix it."""
        ...

    def open(self) -> Hypervisor:
        """Open a new, independent hypervisor object."""
        ...


_lock = threading.Lock()
_targets: dict[str, str] = {}
_entry_points_read = False


def _ensure_entry_points() -> None:
    global _entry_points_read
    with _lock:
        if _entry_points_read:
            return
        for name, target in _BUILTIN.items():
            _targets.setdefault(name, target)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            _targets.setdefault(ep.name, ep.value)
        _entry_points_read = True


def registered_backends() -> Mapping[str, str]:
    """A read-only view of name -> ``"module:attribute"``."""
    _ensure_entry_points()
    return MappingProxyType(_targets)


def backend_names() -> tuple[str, ...]:
    """Every registered backend name, sorted."""
    return tuple(sorted(registered_backends()))


def register_backend(name: str, target: str, *, clobber: bool = False) -> None:
    """Register ``target`` (``"module:attribute"``) under ``name``; refuses to replace one unless ``clobber``."""
    _ensure_entry_points()
    if name == "auto" or ":" not in target:
        raise InvalidArgument(
            f"cannot register backend {name!r} -> {target!r}: need a name other than 'auto' and 'module:attribute'"
        )
    with _lock:
        if name in _targets and not clobber and _targets[name] != target:
            raise InvalidArgument(
                f"backend {name!r} is already registered as {_targets[name]!r}; pass clobber=True to replace it"
            )
        _targets[name] = target


def load_backend(name: str) -> Backend:
    """Import and return the backend object registered as ``name``."""
    targets = registered_backends()
    if name not in targets:
        raise InvalidArgument(f"unknown backend {name!r}; known: {', '.join(sorted(targets))} or 'auto'")
    module_name, _, attribute = targets[name].partition(":")
    try:
        backend = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise BackendUnavailable(f"backend {name!r} ({targets[name]}) cannot be loaded: {exc}") from exc
    if not isinstance(backend, Backend):
        raise BackendUnavailable(f"backend {name!r} ({targets[name]}) is not an hvcore Backend")
    return backend


def available_backends() -> dict[str, str | None]:
    """Each backend name with None if it is usable here, or the reason it is not."""
    result: dict[str, str | None] = {}
    for name in backend_names():
        try:
            result[name] = load_backend(name).unavailable_reason()
        except BackendUnavailable as exc:
            result[name] = exc.message
    return result


def open_hypervisor(name: str = "auto") -> Hypervisor:
    """Open the backend called ``name`` (``"kvm"``, ``"sim"``, a third party's, or ``"auto"``).

    Raises :class:`hvcore.BackendUnavailable` with every reason when nothing
    can be opened.
    """
    if name != "auto":
        backend = load_backend(name)
        reason = backend.unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(f"backend {name!r} is not usable here: {reason}")
        return backend.open()
    reasons = []
    for candidate in AUTO_ORDER:
        try:
            backend = load_backend(candidate)
        except BackendUnavailable as exc:
            reasons.append(f"{candidate}: {exc.message}")
            continue
        reason = backend.unavailable_reason()
        if reason is None:
            return backend.open()
        reasons.append(f"{candidate}: {reason}")
    raise BackendUnavailable("no backend is usable here:\n  " + "\n  ".join(reasons))
