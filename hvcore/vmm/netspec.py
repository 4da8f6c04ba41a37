"""``hvcore run --net``: what a NIC is plugged into, parsed from the command line, and its backend.

- ``tap[=IFNAME]``: a TAP interface (:class:`~hvcore.vmm.virtio.net_backends.TapBackend`; the
  kernel names it when ``IFNAME`` is left out). Needs ``CAP_NET_ADMIN``.
- ``udp=LOCALPORT:HOST:PORT``: every frame one UDP datagram, received on ``LOCALPORT`` (all local
  addresses) and sent to ``HOST:PORT``; two ``hvcore run`` with mirrored ports make a two-machine
  network without privileges (as QEMU's ``-netdev dgram``).

Either takes ``,mac=MAC`` (default: a random locally administered address).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from hvcore.errors import BackendUnavailable, InvalidArgument
from hvcore.vmm.virtio.net import parse_mac
from hvcore.vmm.virtio.net_backends import NetBackend, SocketBackend, TapBackend

__all__ = ["NetSpec", "parse_net"]


@dataclass(frozen=True)
class NetSpec:
    """One ``--net``: ``kind`` ``"tap"`` (``interface``) or ``"udp"`` (``local_port``, ``remote``), and a MAC."""

    kind: str
    interface: str = ""
    local_port: int = 0
    remote: tuple[str, int] = ("", 0)
    mac: bytes | None = None

    def describe(self) -> str:
        """One line for ``hvcore run``'s summary."""
        where = (
            f"TAP {self.interface or '(kernel-named)'}"
            if self.kind == "tap"
            else (f"UDP :{self.local_port} <-> {self.remote[0]}:{self.remote[1]}")
        )
        return where + (f", mac {':'.join(f'{b:02x}' for b in self.mac)}" if self.mac else "")

    def open(self) -> NetBackend:
        """The backend: the TAP interface opened, or the UDP socket bound and connected."""
        if self.kind == "tap":
            return TapBackend(self.interface)
        try:
            family = socket.getaddrinfo(*self.remote, type=socket.SOCK_DGRAM)[0][0]
        except OSError as error:
            raise BackendUnavailable(f"--net udp: cannot resolve {self.remote[0]}: {error}", operation="net") from None
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind(("", self.local_port))
            sock.connect(self.remote)
        except OSError as error:
            sock.close()
            raise BackendUnavailable(
                f"--net udp: cannot use local port {self.local_port} with {self.remote[0]}:{self.remote[1]}: "
                f"{error.strerror}; pick a free port",
                errno=error.errno,
                operation="net",
            ) from None
        return SocketBackend(sock, name=f"udp:{self.local_port}")


def _port(text: str, what: str, spec: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise InvalidArgument(f"--net {spec}: {what} {text!r} is not a port (1-65535)", operation="net")
    return int(text)


def parse_net(spec: str) -> NetSpec:
    """A ``--net`` argument (see the module docstring); ``InvalidArgument`` saying what is wrong."""
    head, *options = spec.split(",")
    mac = None
    for option in options:
        key, _, value = option.partition("=")
        if key != "mac":
            raise InvalidArgument(f"--net {spec}: unknown option {key!r} (only mac=MAC)", operation="net")
        mac = parse_mac(value)
    kind, _, value = head.partition("=")
    if kind == "tap":
        return NetSpec("tap", interface=value, mac=mac)
    if kind == "udp":
        local, _, remote = value.partition(":")
        host, _, port = remote.rpartition(":")
        if not host:
            raise InvalidArgument(
                f"--net {spec}: write udp=LOCALPORT:HOST:PORT, e.g. udp=5555:127.0.0.1:5556", operation="net"
            )
        return NetSpec(
            "udp",
            local_port=_port(local, "local port", spec),
            remote=(host.strip("[]"), _port(port, "port", spec)),
            mac=mac,
        )
    raise InvalidArgument(f"--net {spec}: say tap[=IFNAME] or udp=LOCALPORT:HOST:PORT", operation="net")
