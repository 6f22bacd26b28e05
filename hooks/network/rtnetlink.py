"""rtnetlink in plain messages: the network states' links, bridges, addresses, routes.

The boot sends about fifteen rtnetlink requests, each once: list the links,
set them up, create br0 and br1, give br0 its port, addresses and route.
pyroute2's IPRoute did this through its asyncio machinery and looked every
interface up with a dump of all links; under TCG its import alone was about
a second of CPU. These are the same requests as packed structs (linux/
rtnetlink.h, if_link.h, if_addr.h), sent on a socket from the kernel seam
(`Kernel.netlink_requests`). Only the standard library is imported here.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator

from initpy.runtime.kernel import Kernel
from initpy.runtime.record import frozen

NETLINK_ROUTE = 0

# linux/netlink.h
NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLA_F_NESTED = 0x8000

# linux/rtnetlink.h
RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE = 0
RTN_UNICAST = 1
RTA_OIF = 4
RTA_GATEWAY = 5

IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MASTER = 10
IFLA_OPERSTATE = 16
IFLA_LINKINFO = 18
IFLA_CARRIER = 33
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
IFLA_BR_FORWARD_DELAY = 1
IFLA_BR_STP_STATE = 5
IFF_UP = 0x1
IF_OPER_UNKNOWN = 0
IF_OPER_UP = 6

IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, index
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_BROADCAST = 4

RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst/src len, tos, table, protocol, scope, type, flags
ATTR = struct.Struct("=HH")


def attr(kind: int, value: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    size = ATTR.size + len(value)
    return ATTR.pack(size, kind) + value + b"\0" * (-size % 4)


def u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def attributes(data: bytes) -> dict[int, bytes]:
    """The attributes of a message body (the first of each type; nesting flag dropped)."""
    found: dict[int, bytes] = {}
    offset = 0
    while offset + ATTR.size <= len(data):
        size, kind = ATTR.unpack_from(data, offset)
        if size < ATTR.size:
            break
        found.setdefault(kind & ~NLA_F_NESTED, data[offset + ATTR.size : offset + size])
        offset += (size + 3) & ~3
    return found


def messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, sequence, body) of each message in one datagram."""
    offset = 0
    while offset + NLMSG_HEADER.size <= len(data):
        length, kind, _, seq, _ = NLMSG_HEADER.unpack_from(data, offset)
        if length < NLMSG_HEADER.size:
            break
        yield kind, seq, data[offset + NLMSG_HEADER.size : offset + length]
        offset += (length + 3) & ~3


@frozen
class Link:
    """One network interface as netlink reports it."""

    index: int
    name: str
    mac: str
    up: bool
    carrier: bool
    master: int | None = None


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


class RtNetlink:
    """The `Netlink` of hooks.network.netlink, for the real kernel."""

    def __init__(self, kernel: Kernel) -> None:
        self._sock = kernel.netlink_requests(NETLINK_ROUTE)
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    # -- one request, its answers ---------------------------------------------------

    def _request(self, kind: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        """Send one request; its answers, up to the ack (or the end of a dump)."""
        self._seq += 1
        seq = self._seq
        dump = flags & NLM_F_DUMP == NLM_F_DUMP
        flags |= NLM_F_REQUEST | (0 if dump else NLM_F_ACK)
        header = NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), kind, flags, seq, 0)
        self._sock.send(header + body)
        answers: list[tuple[int, bytes]] = []
        while True:
            for kind_in, seq_in, payload in messages(self._sock.recv(1 << 16)):
                if seq_in != seq:
                    continue  # an answer to an earlier request that gave up
                if kind_in == NLMSG_DONE:
                    return answers
                if kind_in == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", payload)
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    return answers
                answers.append((kind_in, payload))

    def _link(self, name: str) -> tuple[int, int, dict[int, bytes]]:
        """(index, flags, attributes) of the link called `name`."""
        body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr(
            IFLA_IFNAME, name.encode() + b"\0"
        )
        try:
            answers = self._request(RTM_GETLINK, 0, body)
        except OSError as exc:
            if exc.errno in (errno.ENODEV, errno.ENOENT):
                raise OSError(exc.errno, f"no network interface named {name}") from None
            raise
        for kind, payload in answers:
            if kind == RTM_NEWLINK:
                _, _, index, flags, _ = IFINFOMSG.unpack_from(payload)
                return index, flags, attributes(payload[IFINFOMSG.size :])
        raise OSError(errno.ENODEV, f"no network interface named {name}")

    def _index(self, name: str) -> int:
        return self._link(name)[0]

    def _set_link(self, index: int, flags: int = 0, change: int = 0, extra: bytes = b"") -> None:
        body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change) + extra
        self._request(RTM_NEWLINK, 0, body)

    # -- what the states use -----------------------------------------------------------

    def links(self) -> list[Link]:
        found = []
        body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        for kind, payload in self._request(RTM_GETLINK, NLM_F_DUMP, body):
            if kind != RTM_NEWLINK:
                continue
            _, _, index, flags, _ = IFINFOMSG.unpack_from(payload)
            attrs = attributes(payload[IFINFOMSG.size :])
            operstate = attrs.get(IFLA_OPERSTATE, b"\0")[0]
            carrier = attrs.get(IFLA_CARRIER, b"\0")[0]
            master = attrs.get(IFLA_MASTER)
            found.append(
                Link(
                    index=index,
                    name=attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="replace"),
                    mac=mac_text(attrs.get(IFLA_ADDRESS, b"")),
                    up=bool(flags & IFF_UP),
                    # Carrier counts once the operstate is UP too: see netlink.py.
                    carrier=bool(carrier) and operstate in (IF_OPER_UP, IF_OPER_UNKNOWN),
                    master=struct.unpack("=I", master)[0] or None if master else None,
                )
            )
        return found

    def set_up(self, name: str) -> None:
        self._set_link(self._index(name), IFF_UP, IFF_UP)

    def add_bridge(self, name: str, mac: str) -> None:
        # STP off and no forward delay: the port forwards at once.
        info = attr(IFLA_INFO_KIND, b"bridge") + attr(
            IFLA_INFO_DATA | NLA_F_NESTED,
            u32(IFLA_BR_STP_STATE, 0) + u32(IFLA_BR_FORWARD_DELAY, 0),
        )
        body = (
            IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
            + attr(IFLA_IFNAME, name.encode() + b"\0")
            + attr(IFLA_LINKINFO | NLA_F_NESTED, info)
        )
        self._request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)
        index = self._index(name)
        extra = attr(IFLA_ADDRESS, bytes.fromhex(mac.replace(":", ""))) if mac else b""
        self._set_link(index, IFF_UP, IFF_UP, extra)

    def set_master(self, port: str, bridge: str) -> None:
        self._set_link(self._index(port), extra=u32(IFLA_MASTER, self._index(bridge)))

    def _ipv4(self, index: int) -> list[tuple[int, bytes]]:
        """(prefix length, IFA_LOCAL or IFA_ADDRESS) of each IPv4 address on the link."""
        body = IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0)
        found = []
        for kind, payload in self._request(RTM_GETADDR, NLM_F_DUMP, body):
            if kind != RTM_NEWADDR:
                continue
            family, prefixlen, _, _, on = IFADDRMSG.unpack_from(payload)
            attrs = attributes(payload[IFADDRMSG.size :])
            address = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if family == socket.AF_INET and on == index and address:
                found.append((prefixlen, address))
        return found

    def flush_ipv4(self, name: str) -> None:
        index = self._index(name)
        for prefixlen, address in self._ipv4(index):
            body = IFADDRMSG.pack(socket.AF_INET, prefixlen, 0, 0, index) + attr(IFA_LOCAL, address)
            self._request(RTM_DELADDR, 0, body)

    def add_address(self, name: str, address: str, prefixlen: int, broadcast: str | None) -> None:
        packed = socket.inet_aton(address)
        body = (
            IFADDRMSG.pack(socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, self._index(name))
            + attr(IFA_LOCAL, packed)
            + attr(IFA_ADDRESS, packed)
            + (attr(IFA_BROADCAST, socket.inet_aton(broadcast)) if broadcast else b"")
        )
        self._request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, body)

    def ipv4_addresses(self, name: str) -> list[str]:
        return [
            f"{socket.inet_ntoa(address)}/{prefixlen}"
            for prefixlen, address in self._ipv4(self._index(name))
        ]

    def add_default_route(self, gateway: str, name: str) -> None:
        body = (
            RTMSG.pack(
                socket.AF_INET,
                0,
                0,
                0,
                RT_TABLE_MAIN,
                RTPROT_BOOT,
                RT_SCOPE_UNIVERSE,
                RTN_UNICAST,
                0,
            )
            + attr(RTA_GATEWAY, socket.inet_aton(gateway))
            + u32(RTA_OIF, self._index(name))
        )
        self._request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, body)
