"""What the network hook leaves for the OS: the names, paths and texts it sees.

The bridges' names, the renewer's process name and status file (the OS's
initpy-dhcp.service adopts the renewer by them), the files' paths, and each
file's text as a pure function of the lease and br1's subnet, so that a
test reads exactly what a host gets (br1's nft rules: firewall.py). The
states decide when each is written (hooks/network/__init__.py). The files
an operator reads on a booted host (/etc/network/interfaces, dnsmasq's
configuration; the nft rules name firewall.py) name this module in their
first line.
"""

from __future__ import annotations

import ipaddress

from .lease import Lease

# The first line's pointer back here: a repository path, so keep it true
# when this file moves (tests/unit/test_network.py checks it exists).
SOURCE = "hooks/network/files.py"

BR0 = "br0"
BR1 = "br1"
RENEWER_NAME = "initpy-dhcp"
RENEWER_STATUS = "/run/initpy/dhcp-br0.json"
NFT_RULES = "/etc/initpy/br1.nft"
DNSMASQ_CONF = "/etc/dnsmasq.d/initpy-br1.conf"
SYSCTL_CONF = "/etc/sysctl.d/60-initpy-forward.conf"
INTERFACES = "/etc/network/interfaces"
RESOLV_CONF = "/etc/resolv.conf"
TIMESYNCD_CONF = "/etc/systemd/timesyncd.conf.d/initpy.conf"

SYSCTL_TEXT = "# Written by initpy: br1's NAT needs forwarding.\nnet.ipv4.ip_forward = 1\n"


def hosts_file(short: str, fqdn: str | None) -> str:
    names = f"{fqdn} {short}" if fqdn else short
    # 127.0.1.1 is Debian's convention for the host's own name: it stays
    # right when the lease's address changes.
    return (
        "127.0.0.1\tlocalhost\n"
        f"127.0.1.1\t{names}\n\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "ff02::1\tip6-allnodes\n"
        "ff02::2\tip6-allrouters\n"
    )


def resolv_conf(lease: Lease) -> str:
    text = f"# Written by initpy from the DHCP lease on {BR0} (server {lease.server or '?'}).\n"
    if not lease.dns:
        return text + "# The lease offered no DNS servers.\n"
    if lease.domain:
        text += f"search {lease.domain}\n"
    return text + "".join(f"nameserver {server}\n" for server in lease.dns)


def timesyncd_conf(lease: Lease) -> str | None:
    """systemd-timesyncd's drop-in naming the lease's NTP servers; None when it gave none.

    Without the file timesyncd uses Debian's default servers (the
    debian.pool.ntp.org names in its timesyncd.conf), which need DNS and a
    route to the Internet.
    """
    if not lease.ntp:
        return None
    return (
        f"# Written by initpy ({SOURCE}) from the DHCP lease on {BR0} "
        f"(server {lease.server or '?'}, option 42).\n"
        "[Time]\n"
        f"NTP={' '.join(lease.ntp)}\n"
    )


def interfaces_file(lease: Lease, br1: ipaddress.IPv4Interface) -> str:
    return f"""\
# Written by initpy at boot ({SOURCE}); see docs/network.md.
# The init configured these interfaces itself: br0 holds {lease.nic} and its
# DHCP lease ({lease.cidr} from {lease.server or "?"}), renewed after the
# hand-off by the {RENEWER_NAME} process (status: {RENEWER_STATUS}).
# They are not "auto", so `ifup -a` leaves them alone.

auto lo
iface lo inet loopback

# br0: the public bridge ({lease.nic}, MAC {lease.mac}, configured by DHCP).
iface {BR0} inet dhcp
    bridge_ports {lease.nic}
    bridge_hw {lease.mac}
    bridge_stp off
    bridge_fd 0

# br1: the private bridge for build machines: a firewall and NAT out through
# br0 ({NFT_RULES}), DHCP from dnsmasq ({DNSMASQ_CONF}).
iface {BR1} inet static
    address {br1.with_prefixlen}
    bridge_ports none
    bridge_stp off
    bridge_fd 0
"""


def dhcp_pool(br1: ipaddress.IPv4Interface) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    """The pool dnsmasq hands out: the subnet less its bottom ten and br1's address."""
    net = br1.network
    first, last = net.network_address + 1, net.broadcast_address - 1
    if net.num_addresses > 32:
        first += 10  # room for hosts given static addresses by hand
    if br1.ip == last:
        last -= 1
    elif first <= br1.ip <= last:
        first = br1.ip + 1
    return first, last


def dnsmasq_conf(br1: ipaddress.IPv4Interface) -> str:
    first, last = dhcp_pool(br1)
    return f"""\
# Written by initpy ({SOURCE}): DHCP for build machines on {BR1} only.
interface={BR1}
bind-dynamic
except-interface=lo
no-dhcp-interface={BR0}
dhcp-range={first},{last},{br1.netmask},12h
dhcp-option=option:router,{br1.ip}
dhcp-option=option:dns-server,{br1.ip}
dhcp-authoritative
"""
