"""The boot's DHCP client: pyroute2's DHCP messages on a packet socket from the seam.

The `dhcp` state needs one exchange per NIC: DISCOVER, OFFER, REQUEST,
ACK (and a RELEASE for a loser of the race). pyroute2's AsyncDHCPClient
does that too, but its raw socket looks the interface up through IPRoute,
which brings pyroute2's whole rtnetlink stack and its asyncio machinery:
about a second of CPU under TCG before the first DISCOVER. Here, the
messages are still pyroute2's (`pyroute2.dhcp.dhcp4msg`, which encodes and
decodes every field and option), carried in IPv4/UDP headers packed with
struct on the seam's `Kernel.packet_socket`. The lease renewer after the
hand-off keeps pyroute2's full client (renewer.py): it needs timers,
renewal and rebinding, and runs off the boot's path.

What both clients send follows the pitfalls in docs/network.md, and is
defined here once: no host name (option 12 is requested instead,
`requested_options`), vendor id "initpy", retransmission after 1, 2, 4,
then every 8 s (`backoff`); this one sends the MAC as the client id.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

from initpy.runtime.kernel import Kernel
from initpy.runtime.record import mutable

from .lease import Lease, lease_from_options
from .pyroute import lean_pyroute2

CLIENT_PORT = 68
SERVER_PORT = 67
BROADCAST_MAC = b"\xff" * 6
ETH_P_IP = 0x0800
IP_HEADER = struct.Struct("!BBHHHBBH4s4s")
UDP_HEADER = struct.Struct("!HHHH")
# After this many REQUESTs without an answer, start over with a DISCOVER.
REQUEST_TRIES = 4
VENDOR_ID = "initpy"

# DHCP message types (RFC 2132, option 53) and BOOTP fields.
DISCOVER, OFFER, REQUEST, ACK, NAK, RELEASE = 1, 2, 3, 5, 6, 7
BOOTREQUEST, BOOTREPLY = 1, 2
BROADCAST_FLAG = 0x8000
# The options array follows the fixed BOOTP fields and the magic cookie.
OPTIONS_START = 240
PAD, END = 0, 255
# The address-list options the lease reads, by code, as pyroute2 names them
# in a decoded reply: router (3), DNS (6) and NTP (42) servers.
ADDRESS_LISTS = {3: "router", 6: "name_server", 42: "ntp_servers"}


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ip_udp(payload: bytes, source: str, destination: str) -> bytes:
    """`payload` in a UDP datagram from port 68 to 67, in an IPv4 packet."""
    src, dst = socket.inet_aton(source), socket.inet_aton(destination)
    length = UDP_HEADER.size + len(payload)
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_UDP, length)
    udp_sum = checksum(pseudo + UDP_HEADER.pack(CLIENT_PORT, SERVER_PORT, length, 0) + payload)
    udp = UDP_HEADER.pack(CLIENT_PORT, SERVER_PORT, length, udp_sum or 0xFFFF)
    header = IP_HEADER.pack(
        0x45, 0x10, IP_HEADER.size + length, 0, 0, 64, socket.IPPROTO_UDP, 0, src, dst
    )
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + udp + payload


def udp_payload(packet: bytes) -> bytes | None:
    """The payload of an unfragmented IPv4/UDP packet to port 68, else None."""
    if len(packet) < IP_HEADER.size or packet[0] >> 4 != 4:
        return None
    header_length = (packet[0] & 0x0F) * 4
    total, fragment, protocol = (
        struct.unpack_from("!H", packet, 2)[0],
        struct.unpack_from("!H", packet, 6)[0],
        packet[9],
    )
    if protocol != socket.IPPROTO_UDP or fragment & 0x3FFF:
        return None
    if len(packet) < header_length + UDP_HEADER.size:
        return None
    _, port, length, _ = UDP_HEADER.unpack_from(packet, header_length)
    if port != CLIENT_PORT or length < UDP_HEADER.size:
        return None
    end = min(len(packet), total, header_length + length)
    return packet[header_length + UDP_HEADER.size : end]


def misshapen_lists(payload: bytes) -> dict[str, bytes]:
    """The address-list options whose length is no non-zero multiple of 4, by name, raw.

    pyroute2 decodes such an option as the whole addresses it holds and
    drops the rest without a word (5 bytes give one address); the lease
    must not use a list the server got wrong.
    """
    found: dict[str, bytes] = {}
    at = OPTIONS_START
    while at < len(payload):
        code = payload[at]
        if code == PAD:
            at += 1
            continue
        if code == END or at + 1 >= len(payload):
            break
        length = payload[at + 1]
        value = payload[at + 2 : at + 2 + length]
        if code in ADDRESS_LISTS and (len(value) != length or not length or length % 4):
            found[ADDRESS_LISTS[code]] = value
        at += 2 + length
    return found


def _dhcp4msg() -> Any:
    lean_pyroute2()
    from pyroute2.dhcp.dhcp4msg import dhcp4msg

    return dhcp4msg


def requested_options() -> tuple[Any, ...]:
    """The options every request asks for, option 12 among them (pyroute2's `Option`)."""
    lean_pyroute2()
    from pyroute2.dhcp.enums.dhcp import Option

    return (
        Option.SUBNET_MASK,
        Option.BROADCAST_ADDRESS,
        Option.ROUTER,
        Option.NAME_SERVER,
        Option.HOST_NAME,
        Option.DOMAIN_NAME,
        Option.NTP_SERVERS,
        Option.LEASE_TIME,
        Option.RENEWAL_TIME,
        Option.REBINDING_TIME,
    )


def backoff() -> Iterator[float]:
    """Retransmit after 1, 2, 4, then every 8 s: a boot cannot wait 4 s first.

    pyroute2's default starts at 4 s; the first DISCOVER on a link that just
    got carrier is often lost (switch port, tap not yet bridged).
    """
    delay = 1.0
    while True:
        yield delay
        delay = min(delay * 2, 8.0)


@mutable
class BoundLease:
    """The ACK and where it came from: what the renewer carries into pyroute2's client."""

    ack: Any  # pyroute2's decoded dhcp4msg
    server_mac: str
    obtained: float
    ip: str


class PacketDhcpClient:
    """One NIC's DHCP client for the boot's race (hooks.network.lease.DhcpClient)."""

    def __init__(self, kernel: Kernel, name: str, mac: str) -> None:
        self.name = name
        self.mac = mac.lower()
        self._kernel = kernel
        self._requested = tuple(int(option) for option in requested_options())
        self._sock: socket.socket | None = None
        self._xid = struct.unpack("!I", os.urandom(4))[0]
        self._state = "client not started"
        self._bound: BoundLease | None = None
        self._offers = 0

    # -- messages -------------------------------------------------------------------

    def _message(self, kind: int, **options: Any) -> bytes:
        dhcp4msg = _dhcp4msg()
        fields: dict[str, Any] = {
            "op": BOOTREQUEST,
            "xid": self._xid,
            "chaddr": self.mac,
            "flags": BROADCAST_FLAG,
            "options": {
                "message_type": kind,
                "client_id": {"type": 1, "key": self.mac},
                **options,
            },
        }
        if "ciaddr" in options:
            fields["ciaddr"] = fields["options"].pop("ciaddr")
            fields["flags"] = 0
        return bytes(dhcp4msg(fields).encode().buf)

    def _asking(self, kind: int, **options: Any) -> bytes:
        return self._message(
            kind,
            parameter_list=list(self._requested),
            vendor_id=VENDOR_ID,
            **options,
        )

    def _send(self, payload: bytes, source: str = "0.0.0.0", to: str = "255.255.255.255",
              mac: bytes = BROADCAST_MAC) -> None:  # fmt: skip
        assert self._sock is not None
        self._sock.sendto(ip_udp(payload, source, to), (self.name, ETH_P_IP, 0, 0, mac))

    def _answer(self, packet: bytes) -> Any | None:
        """The decoded DHCP reply to this client, or None for anything else."""
        payload = udp_payload(packet)
        if payload is None or len(payload) < 240:
            return None
        try:
            reply = _dhcp4msg()(buf=payload).decode()
        except Exception:  # a malformed packet from anyone on the link: not ours
            return None
        if reply["op"] != BOOTREPLY or reply["xid"] != self._xid:
            return None
        if str(reply["chaddr"]).lower() != self.mac:
            return None
        # Raw bytes are no list of addresses: lease_from_options drops them
        # and the lease's problems name them.
        reply["options"].update(misshapen_lists(payload))
        return reply

    # -- the exchange ---------------------------------------------------------------

    async def start(self) -> None:
        self._sock = self._kernel.packet_socket(self.name, ETH_P_IP)
        self._state = "client started, nothing sent yet"

    async def _receive(self, until: float) -> tuple[Any, str] | None:
        """The next reply to this client and the sender's MAC, or None at `until`."""
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        while True:
            remaining = until - loop.time()
            if remaining <= 0:
                return None
            try:
                packet, sender = await asyncio.wait_for(
                    loop.sock_recvfrom(self._sock, 4096), remaining
                )
            except TimeoutError:
                return None
            reply = self._answer(packet)
            if reply is not None:
                return reply, ":".join(f"{b:02x}" for b in sender[4][:6])

    async def lease(self) -> Lease:
        loop = asyncio.get_running_loop()
        while True:
            self._state = "no DHCP offer (DISCOVER sent, no answer)"
            offer = None
            for delay in backoff():
                self._send(self._asking(DISCOVER))
                offer = await self._receive_kind(loop.time() + delay, (OFFER,))
                if offer is not None:
                    break
            assert offer is not None
            self._offers += 1
            self._state = "an offer came but no ACK (REQUEST sent, no answer)"
            chosen: dict[str, Any] = {"requested_ip": offer[0]["yiaddr"]}
            server_id = offer[0]["options"].get("server_id")
            if server_id:  # RFC 2131 requires it; a server that leaves it out is still heard
                chosen["server_id"] = server_id
            request = self._asking(REQUEST, **chosen)
            for delay, _ in zip(backoff(), range(REQUEST_TRIES), strict=False):
                self._send(request)
                answer = await self._receive_kind(loop.time() + delay, (ACK, NAK))
                if answer is None:
                    continue
                reply, server_mac = answer
                if reply["options"]["message_type"] == NAK:
                    break  # refused: start over
                self._state = "bound"
                self._bound = BoundLease(reply, server_mac, time.time(), reply["yiaddr"])
                return lease_from_options(
                    self.name, self.mac, reply["yiaddr"], reply["options"], self._bound
                )

    async def _receive_kind(self, until: float, kinds: tuple[int, ...]) -> tuple[Any, str] | None:
        while True:
            answer = await self._receive(until)
            if answer is None or answer[0]["options"].get("message_type") in kinds:
                return answer

    def progress(self) -> str:
        return self._state

    async def stop(self, release: bool) -> None:
        if self._sock is None:
            return
        try:
            bound = self._bound
            if release and bound is not None:
                server = bound.ack["options"].get("server_id")
                if server:
                    payload = self._message(RELEASE, server_id=server, ciaddr=bound.ip)
                    mac = bytes.fromhex(bound.server_mac.replace(":", ""))
                    self._send(payload, bound.ip, server, mac)
        finally:
            self._sock.close()
            self._sock = None
            self._state = "client not started"
