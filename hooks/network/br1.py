"""br1's subnet: what `initpy.br1` accepts, and where br1 goes when the lease is in the way.

br1 is the private bridge for build machines, behind NAT. Its subnet must be
clear of the site's network, or the kernel sends br0's traffic to br1
(docs/network.md, "When the lease lands inside br1's subnet"). A subnet the
operator chose is never moved: an overlap is a rescue with a free subnet as
the fix. The default, which nobody chose, moves to a free private subnet,
and the warning says so.
"""

from __future__ import annotations

import ipaddress

from initpy.runtime.cmdline import BadValue
from initpy.runtime.hook import BootFailure

from .lease import Lease

DEFAULT_BR1 = "172.23.0.1/16"

# Where br1 may go when its default subnet collides with the lease: the
# default first, then the rest of 172.16.0.0/12, then 10/8 and 192.168/16.
BR1_CANDIDATES = (
    *(f"172.{n}.0.1/16" for n in (*range(23, 32), *range(16, 23))),
    *(f"10.{n}.0.1/16" for n in (*range(23, 256), *range(0, 23))),
    *(f"192.168.{n}.1/24" for n in range(256)),
)


def br1_address(raw: str | None) -> ipaddress.IPv4Interface:
    """The value of `initpy.br1`: a host address in a private subnet of /30 or larger."""
    try:
        iface = ipaddress.IPv4Interface(raw or "")
    except ValueError:
        raise BadValue(f"expected ADDRESS/PREFIX such as {DEFAULT_BR1}, got {raw!r}") from None
    if not iface.network.is_private or iface.network.prefixlen > 30:
        raise BadValue(f"expected a private IPv4 subnet of /30 or larger, got {raw!r}")
    if iface.ip in (iface.network.network_address, iface.network.broadcast_address):
        raise BadValue(f"expected a host address inside the subnet, got {raw!r}")
    return iface


def br1_conflicts(br1: ipaddress.IPv4Interface, lease: Lease) -> list[str]:
    """What of the lease lies inside br1's subnet (then br0's traffic would go to br1)."""
    subnet = br1.network
    found = []
    lease_subnet = ipaddress.IPv4Network(lease.cidr, strict=False)
    if subnet.overlaps(lease_subnet):
        found.append(f"the lease's subnet {lease_subnet}")
    for what, address in (
        ("router", lease.router),
        ("DHCP server", lease.server),
        *(("DNS server", dns) for dns in lease.dns),
    ):
        if address is not None and ipaddress.IPv4Address(address) in subnet:
            found.append(f"its {what} {address}")
    return found


def free_br1(lease: Lease) -> ipaddress.IPv4Interface | None:
    """The first of BR1_CANDIDATES clear of the lease."""
    for candidate in map(ipaddress.IPv4Interface, BR1_CANDIDATES):
        if not br1_conflicts(candidate, lease):
            return candidate
    return None


def choose_br1(
    br1: ipaddress.IPv4Interface, chosen: bool, lease: Lease
) -> tuple[ipaddress.IPv4Interface, str | None]:
    """br1 as configured, or the default moved clear of the lease, and the warning if moved.

    `chosen`: the operator gave `initpy.br1`; then an overlap raises
    BootFailure with a free subnet in the fix.
    """
    conflicts = br1_conflicts(br1, lease)
    if not conflicts:
        return br1, None
    free = free_br1(lease)
    overlap = (
        f"br1's subnet {br1.network} overlaps the DHCP lease on {lease.nic} "
        f"({lease.cidr}): " + ", ".join(conflicts)
    )
    if chosen or free is None:
        raise BootFailure(
            f"{overlap} (from initpy.br1)" if free else f"{overlap}; no free private subnet",
            f"boot with initpy.br1={free or 'ADDRESS/PREFIX'} (any private subnet clear of "
            f"{lease.cidr} and its servers), then exit this shell to reboot",
        )
    return free, (
        f"bridges: {overlap}; br1 moved to {free.with_prefixlen}; to choose its subnet, "
        "boot with initpy.br1=ADDRESS/PREFIX"
    )
