"""Host profiles: which of upstream KVM's behaviours a host's KVM deviates from, found by probing.

Hosts differ: nested KVM modules, Intel or AMD, kernel versions. hvcore models upstream KVM (the
kernel's ``Documentation/virt/kvm/api.rst`` and source); each known deviation is a
:class:`Deviation` with a small probe guest that tells upstream behaviour from the registered
variants. Nothing is decided from module or CPU names. ``hvcore info --host`` prints the profile.
"""

from __future__ import annotations

from hvcore.host.deviation import UNRECOGNISED, UPSTREAM, Deviation, Probe, Unrecognised
from hvcore.host.identity import HostIdentity, host_identity
from hvcore.host.profile import HostProfile, Observation, clear_cache, host_profile, probe_host

__all__ = [
    "UNRECOGNISED",
    "UPSTREAM",
    "Deviation",
    "HostIdentity",
    "HostProfile",
    "Observation",
    "Probe",
    "Unrecognised",
    "clear_cache",
    "host_identity",
    "host_profile",
    "probe_host",
]
