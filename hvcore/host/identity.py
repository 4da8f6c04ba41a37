"""Who the host is: kernel release, CPU vendor and model, and the module behind ``/dev/kvm``.

Only for reporting and for keying the probe cache. Behaviour is never decided from these:
hosts with the same names behave differently (that is what :mod:`hvcore.host.probes` is for).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

__all__ = ["HostIdentity", "host_identity"]


@dataclass(frozen=True)
class HostIdentity:
    """The names a host goes by (reported, and used as the probe-cache key; never to decide behaviour)."""

    kernel: str
    cpu_vendor: str
    cpu_model: str
    kvm_module: str

    def key(self) -> tuple[str, str, str]:
        """What a cached probe result is valid for: kernel release, CPU model, KVM module."""
        return (self.kernel, self.cpu_model, self.kvm_module)


def _cpuinfo(path: Path) -> dict[str, str]:
    fields: dict[str, str] = {}
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor is enough
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    return fields


def _kvm_module(sys_module: Path) -> str:
    """The loaded vendor module(s) of KVM (``kvm_*``: kvm_intel, kvm_amd, nested variants), else the core."""
    vendors = sorted(entry.name for entry in sys_module.glob("kvm_*") if entry.is_dir())
    if vendors:
        return ", ".join(vendors)
    if (sys_module / "kvm").is_dir():
        return "kvm"
    return "built in" if os.path.exists("/dev/kvm") else "none"


def host_identity(cpuinfo: Path = Path("/proc/cpuinfo"), sys_module: Path = Path("/sys/module")) -> HostIdentity:
    """Read this machine's identity (missing files give ``"unknown"``)."""
    info = _cpuinfo(cpuinfo)
    return HostIdentity(
        kernel=platform.release() or "unknown",
        cpu_vendor=info.get("vendor_id", "unknown"),
        cpu_model=info.get("model name", "unknown"),
        kvm_module=_kvm_module(sys_module),
    )
