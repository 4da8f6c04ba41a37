"""``hvcore run --net``: the specs (:mod:`hvcore.vmm.netspec`), the UDP link they open, and the command."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from hvcore import BackendUnavailable, Hypervisor, InvalidArgument
from hvcore.cli import main
from hvcore.vmm.netspec import NetSpec, parse_net
from hvcore.vmm.run import ExitStatus
from tests.vmm.test_machine import HELLO_EXIT


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("tap", NetSpec("tap")),
        ("tap=hv0,mac=52:54:00:00:00:01", NetSpec("tap", interface="hv0", mac=bytes.fromhex("525400000001"))),
        ("udp=5555:127.0.0.1:5556", NetSpec("udp", local_port=5555, remote=("127.0.0.1", 5556))),
        ("udp=1:[::1]:2", NetSpec("udp", local_port=1, remote=("::1", 2))),
    ],
)
def test_specs_parse(spec: str, parsed: NetSpec) -> None:
    assert parse_net(spec) == parsed


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("vde=x", "say tap"),
        ("udp=5555", "udp=LOCALPORT:HOST:PORT"),
        ("udp=0:127.0.0.1:5556", "local port '0'"),
        ("udp=5555:127.0.0.1:70000", "port '70000'"),
        ("tap,speed=10", "unknown option 'speed'"),
        ("tap,mac=01:00:00:00:00:00", "multicast"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, complaint: str) -> None:
    with pytest.raises(InvalidArgument, match=complaint):
        parse_net(spec)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_udp_link_sends_and_receives_datagrams() -> None:
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(10)
    local = _free_udp_port()
    link = parse_net(f"udp={local}:127.0.0.1:{peer.getsockname()[1]}").open()
    got: list[bytes] = []
    arrived = threading.Event()

    def receive(frame: bytes) -> None:
        got.append(frame)
        arrived.set()

    link.attach(receive)
    try:
        link.send(b"frame to the peer")
        assert peer.recv(100) == b"frame to the peer"
        peer.sendto(b"frame from the peer", ("127.0.0.1", local))
        assert arrived.wait(10) and got == [b"frame from the peer"]
    finally:
        link.close()
        peer.close()


def test_a_port_in_use_is_a_backend_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("", 0))
        with pytest.raises(BackendUnavailable, match="pick a free port"):
            NetSpec("udp", local_port=taken.getsockname()[1], remote=("127.0.0.1", 9)).open()


def test_the_command_plugs_a_nic_in(hv: Hypervisor, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "hello.bin"
    image.write_bytes(HELLO_EXIT)
    spec = f"udp={_free_udp_port()}:127.0.0.1:9,mac=52:54:00:12:34:56"
    status = main(["run", str(image), "--backend", hv.name, "--format", "raw", "--memory", "16M", "--net", spec])
    out = capsys.readouterr().out
    assert status == 0x43, out
    assert "virtio-net on UDP" in out and "mac 52:54:00:12:34:56" in out


def test_the_command_refuses_a_bad_net(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "hello.bin"
    image.write_bytes(HELLO_EXIT)
    assert main(["run", str(image), "--net", "udp=5555"]) == ExitStatus.USAGE
    assert "argument --net: --net udp=5555: write udp=LOCALPORT:HOST:PORT" in capsys.readouterr().err
