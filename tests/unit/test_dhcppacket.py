"""The boot's DHCP client on a packet socket: what goes on the wire, what it accepts.

The exchange itself runs against dnsmasq in benchmarks/dhcp_race.py (root,
network namespaces) and in the VM tests (QEMU's DHCP, dnsmasq over a tap,
a hostile dnsmasq); here: the frames, the filter and the messages.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hooks.network import dhcppacket
from hooks.network.dhcppacket import PacketDhcpClient, backoff, checksum, ip_udp, udp_payload
from hooks.network.files import timesyncd_conf
from hooks.network.lease import checked, lease_from_options

MAC = "52:54:00:12:34:56"


def _client() -> PacketDhcpClient:
    return PacketDhcpClient(None, "eth0", MAC.upper())  # type: ignore[arg-type]  # no socket


def _decode(payload: bytes) -> Any:
    return dhcppacket._dhcp4msg()(buf=payload).decode()


def test_frames_carry_valid_ip_and_udp_checksums_and_come_back_out() -> None:
    payload = b"x" * 301
    packet = ip_udp(payload, "0.0.0.0", "255.255.255.255")
    assert checksum(packet[:20]) == 0  # the header's own checksum is right
    assert packet[9] == socket.IPPROTO_UDP
    sport, dport, length, _ = struct.unpack_from("!HHHH", packet, 20)
    assert (sport, dport, length) == (68, 67, 8 + len(payload))
    pseudo = socket.inet_aton("0.0.0.0") + socket.inet_aton("255.255.255.255")
    pseudo += struct.pack("!BBH", 0, socket.IPPROTO_UDP, length)
    assert checksum(pseudo + packet[20:]) == 0
    # A reply is addressed to port 68: swap the ports, and it is accepted.
    reply = packet[:20] + struct.pack("!HH", 67, 68) + packet[24:]
    assert udp_payload(reply) == payload
    assert udp_payload(packet) is None  # to port 67: not for a client
    assert udp_payload(reply[:9] + bytes([6]) + reply[10:]) is None  # TCP
    fragment = reply[:6] + struct.pack("!H", 0x2000) + reply[8:]  # more fragments
    assert udp_payload(fragment) is None
    assert udp_payload(b"\x60" + reply[1:]) is None  # IPv6
    assert udp_payload(reply[:25]) is None  # truncated


def test_discover_asks_for_the_hostname_and_sends_none() -> None:
    client = _client()
    sent = _decode(client._asking(dhcppacket.DISCOVER))
    options = sent["options"]
    assert options["message_type"] == dhcppacket.DISCOVER
    assert 12 in options["parameter_list"]  # option 12 requested ...
    assert 42 in options["parameter_list"]  # and the NTP servers, for timesyncd
    assert "host_name" not in options  # ... never sent
    assert options["vendor_id"] == "initpy"
    assert options["client_id"] == {"type": 1, "key": MAC}
    assert sent["chaddr"] == MAC and sent["flags"] == dhcppacket.BROADCAST_FLAG
    assert sent["xid"] == client._xid


def test_release_names_the_address_and_the_server() -> None:
    client = _client()
    sent = _decode(client._message(dhcppacket.RELEASE, server_id="10.0.2.2", ciaddr="10.0.2.15"))
    assert sent["options"]["message_type"] == dhcppacket.RELEASE
    assert sent["options"]["server_id"] == "10.0.2.2"
    assert sent["ciaddr"] == "10.0.2.15" and sent["flags"] == 0


def _reply(client: PacketDhcpClient, **changes: Any) -> bytes:
    fields: dict[str, Any] = {
        "op": dhcppacket.BOOTREPLY,
        "xid": client._xid,
        "chaddr": MAC,
        "yiaddr": "10.0.2.15",
        "options": {
            "message_type": dhcppacket.ACK,
            "server_id": "10.0.2.2",
            "subnet_mask": "255.255.255.0",
            "domain_name": "lab.example\nnameserver 6.6.6.6",
        },
    }
    fields.update(changes)
    payload = bytes(dhcppacket._dhcp4msg()(fields).encode().buf)
    packet = ip_udp(payload, "10.0.2.2", "255.255.255.255")
    return packet[:20] + struct.pack("!HH", 67, 68) + packet[24:]


def test_only_replies_to_this_client_are_taken_and_their_lease_is_checked() -> None:
    client = _client()
    reply = client._answer(_reply(client))
    assert reply is not None and reply["yiaddr"] == "10.0.2.15"
    assert client._answer(_reply(client, xid=client._xid ^ 1)) is None  # another exchange
    assert client._answer(_reply(client, chaddr="52:54:00:00:00:01")) is None  # another NIC
    assert client._answer(_reply(client, op=dhcppacket.BOOTREQUEST)) is None  # a client's
    assert client._answer(_reply(client)[:200]) is None  # truncated
    lease = checked(lease_from_options("eth0", MAC, reply["yiaddr"], reply["options"], reply))
    assert (lease.cidr, lease.server) == ("10.0.2.15/24", "10.0.2.2")
    assert lease.domain is None  # the hostile domain name was dropped ...
    assert any("domain name" in problem for problem in lease.problems)  # ... and said


def _with_option(packet: bytes, code: int, value: bytes) -> bytes:
    """`packet` (from `_reply`) with one more raw option before END; lengths fixed up."""
    payload = udp_payload(packet)
    assert payload is not None and payload.endswith(b"\xff")
    payload = payload[:-1] + bytes([code, len(value)]) + value + b"\xff"
    fixed = ip_udp(payload, "10.0.2.2", "255.255.255.255")
    return fixed[:20] + struct.pack("!HH", 67, 68) + fixed[24:]


def _lease_of(client: PacketDhcpClient, packet: bytes) -> Any:
    reply = client._answer(packet)
    assert reply is not None
    return lease_from_options("eth0", MAC, reply["yiaddr"], reply["options"], reply)


def test_option_42_in_the_ack_becomes_timesyncds_drop_in() -> None:
    client = _client()
    servers = bytes([10, 0, 2, 5, 10, 0, 2, 6])
    lease = _lease_of(client, _with_option(_reply(client), 42, servers))
    assert lease.ntp == ("10.0.2.5", "10.0.2.6")
    text = timesyncd_conf(lease)
    assert text is not None
    assert text.splitlines()[1:] == ["[Time]", "NTP=10.0.2.5 10.0.2.6"]


def test_an_ack_without_option_42_gives_no_drop_in() -> None:
    client = _client()
    lease = _lease_of(client, _reply(client))
    assert lease.ntp == ()
    assert timesyncd_conf(lease) is None


@pytest.mark.parametrize(
    "value",
    [
        bytes([10, 0, 2, 5, 7]),  # 5 bytes: pyroute2 alone would keep 10.0.2.5
        bytes([10, 0, 2]),
        b"",
        bytes([10, 0, 2, 5, 10, 0, 2, 6, 1, 2]),
    ],
)
def test_an_option_42_of_a_bad_length_is_dropped_and_said(value: bytes) -> None:
    client = _client()
    lease = _lease_of(client, _with_option(_reply(client), 42, value))
    assert lease.ntp == () and timesyncd_conf(lease) is None
    assert any(f"NTP servers {value!r} dropped" in p for p in lease.problems), lease.problems


def test_a_router_or_dns_list_of_a_bad_length_is_dropped_too() -> None:
    client = _client()
    packet = _with_option(_with_option(_reply(client), 3, bytes([10, 0, 2, 2, 9])), 6, b"\n\0")
    lease = _lease_of(client, packet)
    assert lease.router is None and lease.dns == ()
    problems = "\n".join(lease.problems)
    assert "router b'\\n\\x00\\x02\\x02\\t' dropped" in problems
    assert "DNS servers b'\\n\\x00' dropped" in problems


class _Wire:
    """A packet socket stand-in: what the client sends, and the server's answers."""

    def __init__(self, client: PacketDhcpClient, offer_server_id: bool = True) -> None:
        self.client = client
        self.offer_server_id = offer_server_id
        self.sent: list[Any] = []
        self._ours, self._server = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._ours.setblocking(False)

    def fileno(self) -> int:
        return self._ours.fileno()

    def gettimeout(self) -> float:
        return 0.0

    def recvfrom(self, size: int) -> tuple[bytes, Any]:
        return self._ours.recv(size), ("eth0", 0x800, 0, 1, bytes.fromhex("525400000002"))

    def sendto(self, data: bytes, address: Any) -> None:
        message = _decode(udp_payload(data[:20] + struct.pack("!HH", 67, 68) + data[24:]) or b"")
        self.sent.append(message)
        kind = message["options"]["message_type"]
        if kind == dhcppacket.DISCOVER:
            self._server.send(b"noise from the link")  # not DHCP: ignored
            offer: dict[str, Any] = {"message_type": dhcppacket.OFFER}
            if self.offer_server_id:
                offer["server_id"] = "10.0.2.2"
            self._server.send(_reply(self.client, options=offer))
        elif kind == dhcppacket.REQUEST:
            self._server.send(_reply(self.client))

    def close(self) -> None:
        self._ours.close()
        self._server.close()


def test_discover_offer_request_ack_gives_the_lease() -> None:
    client = _client()
    wire = _Wire(client)
    client._sock = wire  # type: ignore[assignment]
    lease = asyncio.run(client.lease())
    assert lease.cidr == "10.0.2.15/24"
    assert client.progress() == "bound"
    kinds = [m["options"]["message_type"] for m in wire.sent]
    assert kinds == [dhcppacket.DISCOVER, dhcppacket.REQUEST]
    request = wire.sent[1]["options"]
    assert (request["requested_ip"], request["server_id"]) == ("10.0.2.15", "10.0.2.2")
    assert client._bound is not None and client._bound.server_mac == "52:54:00:00:00:02"
    asyncio.run(client.stop(release=True))  # a loser releases: one RELEASE to the server
    assert wire.sent[-1]["options"]["message_type"] == dhcppacket.RELEASE
    assert client.progress() == "client not started"


def test_an_offer_without_a_server_id_is_still_requested() -> None:
    client = _client()
    wire = _Wire(client, offer_server_id=False)
    client._sock = wire  # type: ignore[assignment]
    lease = asyncio.run(client.lease())
    assert lease.cidr == "10.0.2.15/24"
    request = wire.sent[1]["options"]
    assert request["requested_ip"] == "10.0.2.15" and "server_id" not in request
    wire.close()


@given(st.binary(max_size=700), st.binary(max_size=400))
@settings(max_examples=300, deadline=None)
def test_any_bytes_off_the_wire_are_ignored_or_a_reply_to_this_client(
    noise: bytes, options: bytes
) -> None:
    # Anyone on the link can send anything: a frame that is not a well-formed
    # reply to this client is None, never an exception in the dhcp state.
    client = _client()
    header = struct.pack("!BBBBI", dhcppacket.BOOTREPLY, 1, 6, 0, client._xid)
    header += bytes(20) + bytes.fromhex(MAC.replace(":", "")) + bytes(10 + 192)
    for payload in (noise, header + b"\x63\x82\x53\x63" + options):
        for packet in (payload, ip_udp(payload, "10.0.2.2", "255.255.255.255")):
            swapped = packet[:20] + struct.pack("!HH", 67, 68) + packet[24:]
            for frame in (packet, swapped):
                reply = client._answer(frame)
                if reply is not None:
                    assert reply["xid"] == client._xid
                    assert str(reply["chaddr"]).lower() == MAC.lower()


def test_retransmission_starts_at_one_second() -> None:
    assert list(itertools.islice(backoff(), 6)) == [1, 2, 4, 8, 8, 8]
