"""Part of the kernel seam: the sockets PID 1 opens (netlink, packet, TCP).

`Kernel` (kernel.py) hands these out and documents what each is for; the
code that opens and reads them is here. `BatchReader` is also what the fake
kernel drives with a socket that never empties (tests/unit/test_drains.py).

A leaf: the standard library only.
"""

from __future__ import annotations

import select
import socket
from typing import Protocol

_SO_RCVBUFFORCE = 33


class NetlinkSocket(Protocol):
    """Datagrams from a netlink multicast group, as the kernel sends them."""

    def receive(self, timeout: float, limit: int = 256) -> list[bytes]:
        """The messages that arrive within `timeout` s, at most `limit` of them.

        b"" stands for messages the kernel dropped (ENOBUFS): the reader
        must look at the whole state again.
        """
        ...

    def close(self) -> None: ...


class DatagramSocket(Protocol):
    """What BatchReader reads: a socket, or a fake one (initpy.devtools.fake)."""

    def fileno(self) -> int: ...

    def recv(self, bufsize: int, flags: int = 0, /) -> bytes: ...

    def close(self) -> None: ...


class BatchReader:
    """A NetlinkSocket: at most `limit` datagrams per receive, whatever keeps arriving.

    A device that flaps forever keeps the socket readable; a reader that
    drained it "until empty" never came back to its caller's deadline, and
    held every message in memory. The fake kernel drives this same class
    with a socket that is never empty (tests/unit/test_drains.py).
    """

    def __init__(self, sock: DatagramSocket) -> None:
        self._sock = sock

    def receive(self, timeout: float, limit: int = 256) -> list[bytes]:
        messages: list[bytes] = []
        readable, _, _ = select.select([self._sock], [], [], max(timeout, 0.0))
        while readable and len(messages) < limit:
            try:
                messages.append(self._sock.recv(65536, socket.MSG_DONTWAIT))
            except BlockingIOError:
                break
            except OSError:  # ENOBUFS: messages were lost
                messages.append(b"")
        return messages

    def close(self) -> None:
        self._sock.close()


def netlink_listener(protocol: int, groups: int) -> NetlinkSocket:
    """A datagram netlink socket bound to multicast `groups`, read in batches."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, protocol)
    try:
        # A burst of disks and partitions must not overflow the queue.
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 4 << 20)
    except OSError:
        pass
    sock.bind((0, groups))
    return BatchReader(sock)


def netlink_requests(protocol: int, timeout: float) -> socket.socket:
    """A netlink socket bound to no group, every receive bounded by `timeout`."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
    try:
        sock.bind((0, 0))
        sock.settimeout(timeout)
    except OSError:
        sock.close()
        raise
    return sock


def packet_socket(interface: str, ethertype: int) -> socket.socket:
    """A non-blocking AF_PACKET, SOCK_DGRAM socket bound to `interface`."""
    sock = socket.socket(
        socket.AF_PACKET,
        socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK,
        socket.htons(ethertype),
    )
    try:
        sock.bind((interface, ethertype))
    except OSError:
        sock.close()
        raise
    return sock


def connect_tcp(host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection; a host name that is not ASCII is an OSError."""
    # As ASCII bytes: a str host would go through the idna codec, which
    # needs unicodedata, and the freeze leaves that out (1.1 MB).
    try:
        name = host.encode("ascii")
    except UnicodeEncodeError:
        raise OSError(f"host name {host!r} is not ASCII; give its punycode form") from None
    return socket.create_connection((name, port), timeout=timeout)  # type: ignore[arg-type]
