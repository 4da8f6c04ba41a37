"""Where a virtio-net device's frames go and come from: :class:`NetBackend` and three of them.

A backend is three calls. The device gives it a ``receive`` callback once (:meth:`NetBackend.attach`)
and the backend calls it with every Ethernet frame from the network, from any thread. The device
calls :meth:`NetBackend.send` with every frame the guest transmits, and :meth:`NetBackend.close`
when the device closes. A skeleton::

    class Printer:
        def attach(self, receive: Callable[[bytes], object]) -> None:
            self.receive = receive  # call self.receive(frame) to hand the guest a frame
        def send(self, frame: bytes) -> None:
            print(frame.hex())
        def close(self) -> None:
            pass

    VirtioNet(Printer())

:meth:`NetBackend.send` runs in the vCPU thread that notified the transmit queue, holding the
transport's lock: it must not block for long, and it must not hand frames back to a device
synchronously (a frame for a second machine goes through a thread, as :class:`SocketBackend` does).
It raises ``OSError`` for a frame it could not take; the device drops and counts it.

- :class:`CallbackBackend`: frames to a function, :meth:`CallbackBackend.deliver` for the other way
  (tests, in-process networks).
- :class:`SocketBackend`: a connected ``SOCK_DGRAM`` or ``SOCK_SEQPACKET`` socket, one frame per
  message (``socket.socketpair()`` connects two machines, or a machine and a test, unprivileged).
- :class:`TapBackend`: a Linux TAP interface (``/dev/net/tun``; needs ``CAP_NET_ADMIN``).

The last two read in a thread of their own, which :meth:`close` stops and joins before it closes
the descriptors (idempotent).
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
import threading
import weakref
from collections.abc import Callable
from typing import Final, Protocol, runtime_checkable

from hvcore.arguments import check_bytes, check_instance, check_str
from hvcore.errors import BackendUnavailable, InvalidArgument, StateError

__all__ = ["READ_SIZE", "CallbackBackend", "NetBackend", "SocketBackend", "TapBackend"]

READ_SIZE: Final = 1 << 17
"""Bytes the reader threads ask for per frame: more than the largest frame a device takes, so a
longer one arrives too long (and is dropped by the device) rather than silently cut."""

# <linux/if_tun.h> and <net/if.h>: TUNSETIFF is _IOW('T', 202, int); struct ifreq is the name
# (char ifr_name[IFNAMSIZ]) then a 24-byte union whose first member is short ifr_flags.
TUN_DEVICE: Final = "/dev/net/tun"
TUNSETIFF: Final = 0x400454CA
IFF_TAP: Final = 0x0002
IFF_NO_PI: Final = 0x1000
IFNAMSIZ: Final = 16
_IFREQ = struct.Struct(f"{IFNAMSIZ}sH22x")


@runtime_checkable
class NetBackend(Protocol):
    """The network behind a :class:`~hvcore.vmm.virtio.net.VirtioNet` (see the module docstring)."""

    def attach(self, receive: Callable[[bytes], object]) -> None:
        """The device's callback, given once: call ``receive(frame)`` for each frame from the network, any thread."""
        ...

    def send(self, frame: bytes) -> None:
        """A frame the guest transmitted (no virtio header); ``OSError`` if it cannot go out now. Never blocks long."""
        ...

    def close(self) -> None:
        """Stop receiving and release everything held; idempotent."""
        ...


class CallbackBackend:
    """Frames from the guest go to ``on_send``; :meth:`deliver` hands the guest one.

    ``on_send`` runs in a vCPU thread under the transport's lock (see the module docstring); an
    ``OSError`` it raises drops the frame.
    """

    def __init__(self, on_send: Callable[[bytes], object]) -> None:
        if not callable(on_send):
            raise InvalidArgument(f"on_send must be callable, not {on_send!r}", operation="CallbackBackend")
        self._on_send = on_send
        self._receive: Callable[[bytes], object] | None = None
        self.closed = False

    def attach(self, receive: Callable[[bytes], object]) -> None:
        """Keep the device's callback for :meth:`deliver`."""
        if self._receive is not None:
            raise StateError("the backend is already attached to a device", operation="attach")
        self._receive = receive

    def deliver(self, frame: bytes) -> None:
        """Hand ``frame`` to the device (it waits there for a guest buffer); nothing after close."""
        check_bytes("frame", frame, "deliver")
        if self._receive is None:
            raise StateError("no device attached: give the backend to a VirtioNet first", operation="deliver")
        if not self.closed:
            self._receive(bytes(frame))

    def send(self, frame: bytes) -> None:
        """Pass ``frame`` to ``on_send``."""
        if self.closed:
            raise OSError(f"{type(self).__name__} is closed")
        self._on_send(frame)

    def close(self) -> None:
        """Stop passing frames either way; idempotent."""
        self.closed = True


def _close_all(fds: list[int]) -> None:
    while fds:
        os.close(fds.pop())


class _Reader:
    """A thread that waits for ``fd`` to be readable and passes each frame ``read()`` returns on.

    ``read`` returns a frame, ``None`` at the end of the stream, or raises ``BlockingIOError``
    (nothing after all). :meth:`stop` wakes the thread through a pipe and joins it.
    """

    def __init__(self, fd: int, read: Callable[[], bytes | None], name: str) -> None:
        self._fd = fd
        self._read = read
        self._name = name
        self._wake_read, self._wake_write = os.pipe()
        self._fds = [self._wake_read, self._wake_write]
        self._finalizer = weakref.finalize(self, _close_all, self._fds)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False

    def start(self, receive: Callable[[bytes], object]) -> None:
        with self._lock:
            if self._thread is not None:
                raise StateError("the backend is already attached to a device", operation="attach")
            if self._stopped:
                raise StateError("the backend is closed", operation="attach")
            self._thread = threading.Thread(target=self._run, args=(receive,), name=self._name, daemon=True)
            self._thread.start()

    def _run(self, receive: Callable[[bytes], object]) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        while True:
            events = dict(poller.poll())
            if self._wake_read in events:
                return
            ready = events.get(self._fd, 0)
            try:
                frame = self._read()
            except BlockingIOError:
                continue
            except OSError:
                return  # the descriptor failed: nothing more will come
            if frame is None or (not frame and ready & (select.POLLHUP | select.POLLERR)):
                return  # the peer is gone
            receive(frame)

    def stop(self) -> None:
        """Stop and join the thread (if started), close the pipe; idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            thread = self._thread
        if thread is not None:
            os.write(self._wake_write, b"\0")
            if thread is not threading.current_thread():
                thread.join()
        self._finalizer()


class SocketBackend:
    """Frames as the messages of ``sock``, a connected ``SOCK_DGRAM`` or ``SOCK_SEQPACKET`` socket it now owns.

    Sending does not block: a frame the socket cannot take at once is dropped (``OSError``, counted
    by the device). A ``SOCK_SEQPACKET`` peer that closes ends the reading.
    """

    def __init__(self, sock: socket.socket, name: str = "socket") -> None:
        check_instance("sock", sock, socket.socket, "SocketBackend")
        check_str("name", name, "SocketBackend")
        if sock.type not in (socket.SOCK_DGRAM, socket.SOCK_SEQPACKET):
            raise InvalidArgument(
                f"sock must be a SOCK_DGRAM or SOCK_SEQPACKET socket (one frame per message), not {sock.type!r}",
                operation="SocketBackend",
            )
        self.name = name
        self._sock = sock
        self._reader = _Reader(sock.fileno(), self._read, f"hvcore-net-{name}")

    def _read(self) -> bytes | None:
        return self._sock.recv(READ_SIZE, socket.MSG_DONTWAIT)

    def attach(self, receive: Callable[[bytes], object]) -> None:
        """Start the reader thread: every message received goes to ``receive``."""
        self._reader.start(receive)

    def send(self, frame: bytes) -> None:
        """Send ``frame`` as one message, without blocking."""
        self._sock.send(frame, socket.MSG_DONTWAIT)

    def close(self) -> None:
        """Stop and join the reader thread, then close the socket; idempotent."""
        self._reader.stop()
        self._sock.close()


class TapBackend:
    """A TAP interface (``IFF_TAP | IFF_NO_PI``: bare Ethernet frames), created or attached by name.

    ``interface`` is a name or a pattern (``"hvtap%d"``; empty: the kernel's ``tap%d``); the name it
    got is :attr:`interface`. The interface is not configured here: bring it up, address or bridge it
    with the host's tools (``ip link set <name> up``). ``BackendUnavailable`` when ``/dev/net/tun``
    cannot be opened or the interface made (``EPERM``: the process lacks ``CAP_NET_ADMIN``).
    """

    def __init__(self, interface: str = "") -> None:
        check_str("interface", interface, "TapBackend")
        name = interface.encode()
        if len(name) >= IFNAMSIZ or b"\0" in name or b"/" in name:
            raise InvalidArgument(
                f"interface {interface!r} is not a network interface name (at most {IFNAMSIZ - 1} bytes)",
                operation="TapBackend",
            )
        try:
            fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as error:
            raise BackendUnavailable(
                f"TAP: cannot open {TUN_DEVICE}: {error.strerror} (load the tun module; it needs CAP_NET_ADMIN)",
                errno=error.errno,
                operation="TapBackend",
            ) from error
        self._fds = [fd]
        self._finalizer = weakref.finalize(self, _close_all, self._fds)
        try:
            answer = fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(name, IFF_TAP | IFF_NO_PI))
        except OSError as error:
            self._finalizer()
            raise BackendUnavailable(
                f"TAP: TUNSETIFF {interface or 'tap%d'!r} failed: {error.strerror} "
                "(creating a TAP interface needs CAP_NET_ADMIN; an existing one must not be in use)",
                errno=error.errno,
                operation="TUNSETIFF",
            ) from error
        self.interface = _IFREQ.unpack(answer)[0].rstrip(b"\0").decode()
        """The interface's name, as the kernel gave it."""
        self._fd = fd
        self._send_lock = threading.Lock()  # no write to the descriptor number once it is closed (and reused)
        self._reader = _Reader(fd, self._read, f"hvcore-net-{self.interface}")

    def _read(self) -> bytes | None:
        return os.read(self._fd, READ_SIZE)

    def attach(self, receive: Callable[[bytes], object]) -> None:
        """Start the reader thread: every frame the interface transmits goes to ``receive``."""
        self._reader.start(receive)

    def send(self, frame: bytes) -> None:
        """Hand ``frame`` to the host's network stack as received on the interface (``EIO`` while it is down)."""
        with self._send_lock:
            if not self._fds:
                raise OSError(f"TAP {self.interface} is closed")
            os.write(self._fd, frame)

    def close(self) -> None:
        """Stop and join the reader thread, then close the interface's descriptor; idempotent."""
        self._reader.stop()
        with self._send_lock:
            self._finalizer()
