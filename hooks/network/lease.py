"""A DHCP lease: read from a reply's options, checked, and the client interface the race drives.

Only the standard library: the DHCP clients (dhcppacket.py at boot,
renewer.py after the hand-off), the race and the states all name these
without importing asyncio or pyroute2.

Whoever answers DHCP on a build host's network decides every value of a
lease, so `checked()` holds each one to what it must be before any of it
reaches a file (/etc/resolv.conf, /etc/hosts, /etc/hostname,
/etc/network/interfaces, timesyncd's drop-in) or a route: a value that fails is dropped and the
lease says so in `problems` (the dhcp state turns each into a warning); an
address the host cannot take makes the whole lease unusable (`BadLease`).
docs/security.md lists the checks.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any, Protocol

from initpy.runtime.record import field, frozen, replace

# A host name (RFC 1123): dot-separated labels of letters, digits and '-',
# neither starting nor ending with '-', 63 characters each, 253 in all.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = rf"{_LABEL}(?:\.{_LABEL})*"  # compiled at its first use (re's cache)
HOSTNAME_MAX = 253
# DHCP's lease time is 32 bits; all ones is "infinite" (RFC 2131).
INFINITE_LEASE = 0xFFFFFFFF
# Prefixes a lease may carry: a subnet mask shorter than /8 is no LAN.
PREFIXES = range(8, 33)


@frozen
class Lease:
    """What the winning DHCP server granted; every option may be absent."""

    nic: str
    mac: str
    address: str
    prefixlen: int
    server: str | None = None
    router: str | None = None
    dns: tuple[str, ...] = ()
    # NTP servers (option 42), for systemd-timesyncd (files.timesyncd_conf).
    ntp: tuple[str, ...] = ()
    hostname: str | None = None
    domain: str | None = None
    broadcast: str | None = None
    lease_time: int | None = None
    # The reply as the client bound it (dhcppacket.BoundLease): the renewer
    # carries it into pyroute2's client.
    raw: Any = field(default=None, compare=False, repr=False)
    # What checked() dropped, each naming the value (escaped) and what was expected.
    problems: tuple[str, ...] = field(default=(), compare=False)

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefixlen}"

    @property
    def broadcast_or_computed(self) -> str:
        if self.broadcast:
            return self.broadcast
        net = ipaddress.IPv4Network(self.cidr, strict=False)
        return str(net.broadcast_address)


class BadLease(ValueError):
    """A lease the host cannot take at all (its address); the text says why."""


def classful_prefix(address: str) -> int:
    """The prefix RFC 2131 clients assume without option 1: the address's class."""
    try:
        first = int(ipaddress.IPv4Address(address)) >> 24
    except ValueError:
        return 24  # no address at all: checked() refuses the lease anyway
    return 8 if first < 128 else 16 if first < 192 else 24


def is_hostname(text: str) -> bool:
    return len(text) <= HOSTNAME_MAX and re.fullmatch(HOSTNAME, text) is not None


def _unicast(text: str) -> ipaddress.IPv4Address | None:
    """The address if it is one a host or server on a LAN may have, else None."""
    try:
        ip = ipaddress.IPv4Address(text)
    except ValueError:
        return None
    if ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip.is_reserved:
        return None  # is_reserved: 240.0.0.0/4, 255.255.255.255 included
    if ip.is_link_local:
        return None  # a DHCP server never hands out 169.254/16 (RFC 3927)
    return ip


def checked(lease: Lease) -> Lease:
    """`lease` with every value that fails its check dropped, and a problem naming it.

    Idempotent: a checked lease passes again unchanged. Raises BadLease when
    the address cannot be the host's (then nothing of the lease is used).
    """
    problems = list(lease.problems)

    def dropped(what: str, value: object, expected: str) -> None:
        # repr() escapes what a console or a file must not get raw.
        problems.append(f"{lease.nic}: {what} {value!r} dropped: expected {expected}")

    address = _unicast(lease.address)
    if address is None:
        raise BadLease(
            f"{lease.nic}: the offered address {lease.address!r} is not one a host may have "
            "(unspecified, loopback, link-local, multicast or reserved)"
        )
    prefixlen = lease.prefixlen
    if prefixlen not in PREFIXES:
        prefixlen = classful_prefix(lease.address)
        dropped(
            "prefix", lease.prefixlen, f"a subnet of /8 to /32; using the classful /{prefixlen}"
        )
    subnet = ipaddress.IPv4Network(f"{address}/{prefixlen}", strict=False)
    # /31 and /32 have no network or broadcast address to avoid (RFC 3021).
    ends = (subnet.network_address, subnet.broadcast_address) if prefixlen <= 30 else ()
    if address in ends:
        raise BadLease(
            f"{lease.nic}: the offered address {lease.address!r} is the network or broadcast "
            f"address of its subnet {subnet}"
        )

    broadcast = lease.broadcast
    if broadcast is not None and broadcast != str(subnet.broadcast_address):
        dropped("broadcast address", broadcast, f"{subnet.broadcast_address}, that of {subnet}")
        broadcast = None

    router = lease.router
    if router is not None:
        ip = _unicast(router)
        if ip is None or ip not in subnet or ip == address or ip in ends:
            dropped(
                "router",
                router,
                f"another host's address inside {subnet}; no default route is set",
            )
            router = None

    def servers(what: str, addresses: tuple[str, ...]) -> tuple[str, ...]:
        kept = []
        for server in addresses:
            if _unicast(server) is None:
                dropped(what, server, "a unicast IPv4 address")
            else:
                kept.append(server)
        return tuple(kept)

    dns = servers("DNS server", lease.dns)
    ntp = servers("NTP server", lease.ntp)

    server_id = lease.server
    if server_id is not None and _unicast(server_id) is None:
        dropped("server identifier", server_id, "a unicast IPv4 address")
        server_id = None

    hostname = lease.hostname
    if hostname is not None and not is_hostname(hostname.rstrip(".")):
        dropped(
            "host name",
            hostname,
            "a host name: letters, digits and '-' in dot-separated labels; "
            "the name comes from the MAC instead",
        )
        hostname = None

    domain = lease.domain
    if domain is not None and not is_hostname(domain.rstrip(".")):
        dropped(
            "domain name", domain, "a domain name: letters, digits and '-' in dot-separated labels"
        )
        domain = None

    lease_time = lease.lease_time
    if lease_time is not None and (
        isinstance(lease_time, bool) or not 1 <= lease_time <= INFINITE_LEASE
    ):
        dropped("lease time", lease_time, f"1 to {INFINITE_LEASE} seconds")
        lease_time = None

    return replace(
        lease,
        prefixlen=prefixlen,
        broadcast=broadcast,
        router=router,
        dns=dns,
        ntp=ntp,
        server=server_id,
        hostname=hostname,
        domain=domain,
        lease_time=lease_time,
        problems=tuple(problems),
    )


def option_text(value: object) -> str | None:
    """A DHCP string option as pyroute2 decodes it (str, or bytes), padding removed."""
    if isinstance(value, bytes):
        value = value.rstrip(b"\0").decode("ascii", "replace")
    if isinstance(value, str):
        value = value.rstrip("\0").strip()
        return value or None
    return None


def lease_from_options(
    nic: str, mac: str, address: str, options: Mapping[str, Any], raw: Any = None
) -> Lease:
    """A checked `Lease` from decoded DHCP options, none of which is required.

    A value of the wrong shape (pyroute2 hands a string that is not UTF-8 over
    as a list of byte values) is dropped here, one that fails its check in
    `checked()`; either way the lease's `problems` say so. Raises BadLease
    for an address the host cannot take.
    """
    problems: list[str] = []

    def dropped(what: str, value: object, expected: str) -> None:
        problems.append(f"{nic}: {what} {value!r} dropped: expected {expected}")

    prefixlen = classful_prefix(address)
    mask = options.get("subnet_mask")
    if mask:
        try:
            prefixlen = ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen
        except (ValueError, TypeError):
            dropped("subnet mask", mask, f"a contiguous netmask; using the classful /{prefixlen}")

    def strings(key: str, what: str) -> list[str]:
        value = options.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            dropped(what, value, "a list of IPv4 addresses, 4 bytes each")
            return []
        return value

    def text(key: str, what: str) -> str | None:
        value = options.get(key)
        found = option_text(value)
        if value is not None and found is None and value not in ("", b""):
            dropped(what, value, "text (it is not UTF-8)")
        return found

    routers = strings("router", "router")
    lease_time = options.get("lease_time")
    if lease_time == -1:
        lease_time = INFINITE_LEASE  # pyroute2 reads option 51 as signed: all ones
    elif lease_time is not None and not isinstance(lease_time, int):
        dropped("lease time", lease_time, "a number of seconds")
        lease_time = None
    return checked(
        Lease(
            nic=nic,
            mac=mac.lower(),
            address=address,
            prefixlen=prefixlen,
            server=text("server_id", "server identifier"),
            router=routers[0] if routers else None,
            dns=tuple(strings("name_server", "DNS servers")),
            ntp=tuple(strings("ntp_servers", "NTP servers")),
            hostname=text("host_name", "host name"),
            domain=text("domain_name", "domain name"),
            broadcast=text("broadcast_address", "broadcast address"),
            lease_time=lease_time,
            raw=raw,
            problems=tuple(problems),
        )
    )


class DhcpClient(Protocol):
    """One NIC's DHCP client, as the race drives it."""

    async def start(self) -> None: ...

    async def lease(self) -> Lease:
        """Wait until the client is bound; return the lease."""

    def progress(self) -> str:
        """Where the client got to, in words, for a failure message."""

    async def stop(self, release: bool) -> None: ...


class DhcpClients(Protocol):
    """Where DHCP clients come from: the netlink handle (real or scripted)."""

    def dhcp_client(self, name: str, mac: str) -> DhcpClient: ...
