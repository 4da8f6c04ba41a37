"""The ``sim`` backend: KVM's semantics on the Unicorn CPU emulator (not built yet: see issue 3)."""

from __future__ import annotations

from typing import Final

from hvcore.errors import BackendUnavailable
from hvcore.protocol import Hypervisor

__all__ = ["BACKEND", "SimBackend"]


class SimBackend:
    """The ``sim`` registry entry. The simulator is not implemented yet, so it reports itself unusable."""

    name: Final = "sim"

    def unavailable_reason(self) -> str | None:
        """Why the simulator cannot be opened (it does not exist yet)."""
        return "the simulator backend is not implemented yet (tracked as issue 3); use 'kvm'"

    def open(self) -> Hypervisor:
        """Refuse: the simulator is not implemented yet."""
        raise BackendUnavailable(self.unavailable_reason() or "")


BACKEND: Final = SimBackend()
"""The object the ``sim`` entry point names."""
