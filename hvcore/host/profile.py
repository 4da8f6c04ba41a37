"""A host's profile: who it is, and which known deviations from upstream KVM its probes found.

::

    from hvcore import host

    with hvcore.open_hypervisor("kvm") as hv:
        profile = host.host_profile(hv)          # probes once per process and host identity
    print("\\n".join(profile.describe()))
    if profile.variant("single_step_dr7") != host.UPSTREAM:
        ...

``variant()`` raises :class:`hvcore.UnrecognisedBehaviour` where the probe saw something that is
neither upstream nor a registered variant, so code (and tests) that depend on a behaviour never
carry on with a guess.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from hvcore.errors import HvError, UnrecognisedBehaviour
from hvcore.host.deviation import UNRECOGNISED, UPSTREAM, Deviation, Unrecognised
from hvcore.host.identity import HostIdentity, host_identity
from hvcore.protocol import Hypervisor

__all__ = ["HostProfile", "Observation", "clear_cache", "host_profile", "probe_host"]


@dataclass(frozen=True)
class Observation:
    """What one probe found: ``UPSTREAM``, a registered variant, or ``UNRECOGNISED`` (with what it saw)."""

    deviation: str
    variant: str
    detail: str = ""


@dataclass(frozen=True)
class HostProfile:
    """A backend on a host: its identity and one observation per known deviation."""

    backend: str
    identity: HostIdentity
    observations: Mapping[str, Observation]
    seconds: float = field(default=0.0, compare=False)
    """How long the probes took."""

    def variant(self, name: str) -> str:
        """The variant of deviation ``name`` this host shows; raises where it is unrecognised."""
        try:
            seen = self.observations[name]
        except KeyError:
            raise KeyError(f"no host deviation {name!r} was probed (known: {', '.join(self.observations)})") from None
        if seen.variant == UNRECOGNISED:
            raise UnrecognisedBehaviour(
                f"{self.backend} on this host ({self.identity.cpu_model}, kernel {self.identity.kernel}, "
                f"{self.identity.kvm_module}) shows behaviour for {name!r} that is neither upstream KVM's nor a "
                f"registered variant: {seen.detail}",
                operation=f"probe {name}",
            )
        return seen.variant

    def deviates(self, name: str) -> bool:
        """Whether this host differs from upstream on ``name`` (raises where the behaviour is unrecognised)."""
        return self.variant(name) != UPSTREAM

    def deviations(self) -> tuple[Observation, ...]:
        """Every observation that is not upstream (registered variants and unrecognised behaviour)."""
        return tuple(o for o in self.observations.values() if o.variant != UPSTREAM)

    def describe(self) -> list[str]:
        """The profile as lines of text (``hvcore info --host`` and the test session's header)."""
        ident = self.identity
        lines = [
            f"backend     {self.backend}",
            f"kernel      {ident.kernel}",
            f"CPU         {ident.cpu_vendor}, {ident.cpu_model}",
            f"KVM module  {ident.kvm_module}",
        ]
        found = self.deviations()
        total = len(self.observations)
        if not found:
            lines.append(f"deviations  none: upstream KVM's behaviour on all {total} probes ({self.seconds:.1f} s)")
            return lines
        lines.append(f"deviations  {len(found)} of {total} probes differ from upstream KVM ({self.seconds:.1f} s):")
        for seen in found:
            label = "UNRECOGNISED" if seen.variant == UNRECOGNISED else seen.variant
            lines.append(f"  {seen.deviation}: {label}" + (f" ({seen.detail})" if seen.detail else ""))
        return lines


def _observe(deviation: Deviation, hv: Hypervisor) -> Observation:
    try:
        variant = deviation.probe(hv)
    except Unrecognised as exc:
        return Observation(deviation.name, UNRECOGNISED, str(exc))
    except HvError as exc:
        return Observation(deviation.name, UNRECOGNISED, f"the probe failed: {type(exc).__name__}: {exc.message}")
    if variant != UPSTREAM and variant not in deviation.variants:
        return Observation(deviation.name, UNRECOGNISED, f"the probe returned an unregistered variant {variant!r}")
    return Observation(deviation.name, variant, "" if variant == UPSTREAM else deviation.variants[variant])


def probe_host(
    hv: Hypervisor, deviations: Iterable[Deviation] | None = None, identity: HostIdentity | None = None
) -> HostProfile:
    """Run every deviation's probe on ``hv`` now (no cache) and return the profile."""
    if deviations is None:
        from hvcore.host.known import DEVIATIONS  # noqa: PLC0415 - the probes it imports import this package

        deviations = DEVIATIONS
    started = time.monotonic()
    observations = {d.name: _observe(d, hv) for d in deviations}
    return HostProfile(hv.name, identity or host_identity(), MappingProxyType(observations), time.monotonic() - started)


_cache: dict[tuple[str, ...], HostProfile] = {}
_cache_lock = threading.Lock()


def host_profile(hv: Hypervisor) -> HostProfile:
    """``hv``'s profile, probed once per process for each backend, kernel release, CPU model and KVM module."""
    identity = host_identity()
    key = (hv.name, *identity.key())
    with _cache_lock:
        cached = _cache.get(key)
        if cached is None:
            cached = _cache[key] = probe_host(hv, identity=identity)
        return cached


def clear_cache() -> None:
    """Forget every cached profile (the next :func:`host_profile` probes again)."""
    with _cache_lock:
        _cache.clear()
