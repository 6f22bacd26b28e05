"""br1's firewall and NAT: the nft file the bridges state loads, as a pure function.

Build machines on br1 run whatever a package's build does (issue 19), so
the host treats br1 as hostile. The text is a function of br1's subnet,
the lease's subnet and `initpy.br1_lan` only, so a test loads exactly what
a host gets (tests/root/test_br1_filter.py). The rules, and why each is
there, are in docs/network.md ("br1's firewall"); the findings they answer
are in docs/security.md.

One table of our own, `inet initpy_br1`, declared and deleted before it is
written, so loading the file twice leaves one copy and no table the OS adds
is touched. Every base chain's policy is accept and every rule names br1 (or
its subnet): traffic that has nothing to do with br1 passes this table
unchanged, and the OS's own tables still decide about it.
"""

from __future__ import annotations

import enum
import ipaddress

from initpy.runtime.layout import AGENT_TFTP_PORTS

from .files import BR0, BR1

# The file's first line points back here (tests/unit/test_network.py checks it exists).
SOURCE = "hooks/network/firewall.py"
NFT_TABLE = "initpy_br1"


class LanAccess(enum.StrEnum):
    """`initpy.br1_lan`: whether build machines may reach the LAN's private ranges."""

    DENY = "deny"
    ALLOW = "allow"


# The ranges no Internet host has, where the site's own services live (the
# SMTP relay that trusts the host by its address, file servers, printers,
# management ports): RFC 1918, the carrier-grade NAT range (RFC 6598) and
# link-local (cloud metadata services answer at 169.254.169.254).
PRIVATE_RANGES = tuple(
    map(
        ipaddress.IPv4Network,
        ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16"),
    )
)

# What a build machine may ask of the host itself: DHCP and DNS from
# dnsmasq, TFTP from dnsmasq (port 69) and from the agent's per-task
# in.tftpd (hooks/buildhost.py).
DHCP_PORT, DNS_PORT, TFTP_PORT = 67, 53, 69


def lan_ranges(lan: ipaddress.IPv4Network) -> list[ipaddress.IPv4Network]:
    """The private ranges and the LAN's own subnet (public on some sites), merged."""
    return list(ipaddress.collapse_addresses([*PRIVATE_RANGES, lan]))


def nft_ruleset(
    br1: ipaddress.IPv4Interface, lan: ipaddress.IPv4Network, lan_access: LanAccess
) -> str:
    """The nft file: br1's input and forward filters and its masquerade out of br0.

    `br1`: br1's address and subnet; `lan`: the lease's subnet on br0.
    """
    subnet, host = br1.network, br1.ip
    first, last = AGENT_TFTP_PORTS
    if lan_access is LanAccess.DENY:
        ranges = ", ".join(map(str, lan_ranges(lan)))
        lan_rule = f"""\
        # initpy.br1_lan=deny: not the LAN's private ranges nor its own subnet
        # ({lan}), whose services trust the host's address.
        ip daddr {{ {ranges} }} drop"""
    else:
        lan_rule = "        # initpy.br1_lan=allow: the LAN's private ranges too."
    return f"""\
# Written by initpy ({SOURCE}): br1's firewall and NAT; see docs/network.md.
table inet {NFT_TABLE}
delete table inet {NFT_TABLE}
table inet {NFT_TABLE} {{
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "{BR1}" jump input_from_br1
        # br1's own address belongs to br1: not reachable from the LAN by a route.
        iifname != {{ "lo", "{BR1}" }} ip daddr {subnet} drop
    }}

    # The host, seen from br1: only what build machines need.
    chain input_from_br1 {{
        # No IPv6 on br1: the host's link-local address would answer on every port.
        meta nfproto ipv6 drop
        # Answers to the host's own packets, TFTP's data included: the server
        # sends each block from a new port, and the client's ACKs answer it.
        ct state established,related accept
        # DHCP: before a lease, the client's source is 0.0.0.0.
        udp dport {DHCP_PORT} accept
        ip saddr != {subnet} drop
        ip daddr != {host} drop
        udp dport {{ {DNS_PORT}, {TFTP_PORT}, {first}-{last} }} accept
        tcp dport {DNS_PORT} accept
        icmp type echo-request accept
        drop
    }}

    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname "{BR1}" jump forward_from_br1
        oifname "{BR1}" jump forward_to_br1
    }}

    # Out of br1: only br1's own addresses, only out of {BR0} (then the masquerade).
    chain forward_from_br1 {{
        meta nfproto ipv6 drop
        ip saddr != {subnet} drop
        oifname != "{BR0}" drop
{lan_rule}
        accept
    }}

    # Into br1: only answers to what a build machine began; nothing from the LAN.
    chain forward_to_br1 {{
        ct state established,related accept
        drop
    }}

    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {subnet} oifname "{BR0}" masquerade
    }}
}}
"""
