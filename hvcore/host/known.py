"""Every registered host deviation, gathered from the probe modules in :mod:`hvcore.host.probes`."""

from __future__ import annotations

from typing import Final

from hvcore.host.deviation import Deviation
from hvcore.host.probes import control, debug, events, features, hypercall, memory, msrs

__all__ = ["DEVIATIONS", "deviation"]

DEVIATIONS: Final[tuple[Deviation, ...]] = (
    *control.DEVIATIONS,
    *debug.DEVIATIONS,
    *events.DEVIATIONS,
    *msrs.DEVIATIONS,
    *memory.DEVIATIONS,
    *hypercall.DEVIATIONS,
    *features.DEVIATIONS,
)
"""Each known way a host's KVM differs from upstream KVM, with its probe. Names are unique."""

if len({d.name for d in DEVIATIONS}) != len(DEVIATIONS):
    raise RuntimeError("hvcore.host: two registered deviations share a name")


def deviation(name: str) -> Deviation:
    """The registered deviation called ``name``."""
    for entry in DEVIATIONS:
        if entry.name == name:
            return entry
    raise KeyError(f"no host deviation {name!r} (known: {', '.join(d.name for d in DEVIATIONS)})")
