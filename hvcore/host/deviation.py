"""What a host deviation is: upstream KVM's behaviour, the registered variants, and the probe that tells them apart."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from hvcore.protocol import Hypervisor

__all__ = ["UNRECOGNISED", "UPSTREAM", "Deviation", "Probe", "Unrecognised"]

UPSTREAM: Final = "upstream"
"""The variant name of upstream KVM's behaviour (the kernel's api.rst and source; what the simulator does)."""
UNRECOGNISED: Final = "unrecognised"
"""What a profile records when a probe saw neither upstream nor a registered variant."""


class Unrecognised(Exception):
    """Raised by a probe that saw behaviour it cannot place; the message says what it saw."""


Probe = Callable[[Hypervisor], str]
"""Runs a small guest on a hypervisor and returns ``UPSTREAM`` or a registered variant's name.

It raises :class:`Unrecognised` (saying what it saw) for anything else. A probe must bound its
runs (:class:`hvcore.host.guest.ProbeGuest` does) and release what it opens.
"""


@dataclass(frozen=True)
class Deviation:
    """One way a host's KVM is known to differ from upstream KVM, and how to find out."""

    name: str
    upstream: str
    """What upstream KVM does, in words."""
    variants: Mapping[str, str]
    """Each registered variant's name and what a host showing it does instead."""
    reason: str
    """Where the difference was seen and why it happens, as far as known."""
    probe: Probe

    def __post_init__(self) -> None:
        if UPSTREAM in self.variants or UNRECOGNISED in self.variants or not self.variants:
            raise ValueError(f"deviation {self.name!r}: variants must be named and not {UPSTREAM!r}/{UNRECOGNISED!r}")
