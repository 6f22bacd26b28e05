"""The network hook: NICs, DHCP, the hostname, br0 and br1 (spec: Network).

States, in order:
- `find_nics`: the Ethernet NICs (not lo, wireless, bridges or virtual
  links), brought up, carrier awaited on netlink link events until every
  NIC has it or `initpy.timeout.carrier` passes. Chosen by MAC and carrier,
  never by name: names follow driver load order without udev.
- `dhcp`: DHCP on every NIC with carrier at once (hooks.network.dhcpclient); the first
  lease wins (lowest MAC among leases within 0.25 s of the first).
- `hostname`: DHCP option 12, else `build-` + the last 10 hex digits of the
  winning NIC's MAC; in the kernel, /etc/hostname and /etc/hosts.
- `bridges`: br0 with the winning NIC and its MAC, carrying the lease's
  address, route and DNS; br1 private with NAT (nft) and a dnsmasq config;
  /etc/network/interfaces; then the lease renewer `initpy-dhcp` is forked
  to keep br0's lease after the hand-off.

Only the standard library and initpy are imported at module level: this
file is imported on PID 1's start-up path. The DHCP client's imports
(asyncio, pyroute2's message class) run in a background thread started here
(PID 1 only), joined by the first DHCP client and before the renewer's fork.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import Any

from initpy.runtime import cmdline
from initpy.runtime.cmdline import BadValue, Parameter
from initpy.runtime.hook import (
    DRIVERLESS,
    BootContext,
    BootFailure,
    Fact,
    Hook,
    Milestone,
    State,
)
from initpy.runtime.layout import DEFAULT_PATH
from initpy.runtime.record import frozen
from initpy.runtime.report import printable
from initpy.runtime.run import run

# The DHCP client (dhcpclient.py) pulls in asyncio (about 0.5 s under TCG): the
# states import it when they run, in the prefetch thread's shadow; the
# lease type alone is light.
from .adopt import OS_FILES, OS_PACKAGES
from .lease import Lease, is_hostname
from .netlink import opened, start_prefetch, sysfs_is_ethernet, wait_for_carrier, wait_prefetch

# As PID 1, start importing pyroute2 now, in the shadow of the states that
# run before find_nics (see hooks.network.netlink.start_prefetch); tests, the walk
# and mkinitrd import this file too, and need no such thing.
if os.getpid() == 1:
    start_prefetch()

BR0 = "br0"
BR1 = "br1"
NFT_RULES = "/etc/initpy/nat.nft"
NFT_TABLE = "initpy_nat"
DNSMASQ_CONF = "/etc/dnsmasq.d/initpy-br1.conf"
SYSCTL_CONF = "/etc/sysctl.d/60-initpy-forward.conf"
RENEWER_STATUS = "/run/initpy/dhcp-br0.json"
DEFAULT_BR1 = "172.23.0.1/16"


def _br1_address(raw: str | None) -> ipaddress.IPv4Interface:
    try:
        iface = ipaddress.IPv4Interface(raw or "")
    except ValueError:
        raise BadValue(f"expected ADDRESS/PREFIX such as {DEFAULT_BR1}, got {raw!r}") from None
    if not iface.network.is_private or iface.network.prefixlen > 30:
        raise BadValue(f"expected a private IPv4 subnet of /30 or larger, got {raw!r}")
    if iface.ip in (iface.network.network_address, iface.network.broadcast_address):
        raise BadValue(f"expected a host address inside the subnet, got {raw!r}")
    return iface


CARRIER_TIMEOUT: Parameter[float] = Parameter(
    "initpy.timeout.carrier",
    cmdline.seconds(0, 600),
    5.0,
    "seconds to wait for carrier on the Ethernet NICs (the wait ends early once all have it)",
    "initpy.timeout.carrier=10",
)
DHCP_TIMEOUT: Parameter[float] = Parameter(
    "initpy.timeout.dhcp",
    cmdline.seconds(1, 3600),
    30.0,
    "seconds to wait for a DHCP lease on any NIC before rescue",
    "initpy.timeout.dhcp=60",
)
BR1_ADDRESS: Parameter[ipaddress.IPv4Interface] = Parameter(
    "initpy.br1",
    _br1_address,
    ipaddress.IPv4Interface(DEFAULT_BR1),
    "address/prefix of br1, the private NAT bridge; dnsmasq serves DHCP in that subnet",
    "initpy.br1=192.168.77.1/24",
)


PARAMETERS: tuple[Parameter[Any], ...] = (CARRIER_TIMEOUT, DHCP_TIMEOUT, BR1_ADDRESS)


@frozen
class Nic:
    """An Ethernet NIC found at boot."""

    name: str
    mac: str
    carrier: bool

    def label(self) -> str:
        return f"{self.name} ({self.mac}, {'carrier' if self.carrier else 'no carrier'})"


NICS: Fact[tuple[Nic, ...]] = Fact("network.nics")
LEASE: Fact[Lease | None] = Fact("network.lease")
HOSTNAME: Fact[str] = Fact("network.hostname")


def _report(ctx: BootContext) -> dict[str, object]:
    """The "network" section of report.json (the VM tests read it)."""
    section = ctx.report.extra.setdefault("network", {})
    assert isinstance(section, dict)
    return section


# -- find_nics -----------------------------------------------------------------------


def _ethernet_nics(ctx: BootContext) -> tuple[list[str], list[str]]:
    """The Ethernet NICs in /sys/class/net, and the other links with why not."""
    k = ctx.kernel
    names = k.listdir("/sys/class/net") if k.exists("/sys/class/net") else []
    ethernet: list[str] = []
    skipped: list[str] = []
    for name in names:
        ok, why = sysfs_is_ethernet(k, name)
        if ok:
            ethernet.append(name)
        else:
            skipped.append(f"{name}: {why}")
    return ethernet, skipped


def find_nics(ctx: BootContext) -> str:
    k = ctx.kernel
    timeout = ctx.value(CARRIER_TIMEOUT)
    with opened(k) as nl:
        # A driver may register its NIC after its module loaded (firmware,
        # deferred probe): with none yet, new-link events are awaited until
        # the carrier deadline.
        nl.watch_links()
        deadline = k.monotonic() + timeout
        while True:
            ethernet, skipped = _ethernet_nics(ctx)
            remaining = deadline - k.monotonic()
            if ethernet or remaining <= 0:
                break
            nl.wait_link_change(remaining)
        if not ethernet:
            explain = ctx.get(DRIVERLESS, None)
            missing = explain("network") if explain is not None else ""
            raise BootFailure(
                "no Ethernet interface found ("
                + ("; ".join(skipped) if skipped else "/sys/class/net is empty")
                + ")"
                + (f"; {missing}" if missing else ""),
                "the NIC's driver is missing from the initrd or failed to load (see the "
                "load_modules lines); rebuild the initrd with its module (mkinitrd.py "
                "--driver NAME, or the default --drivers generic), then exit this shell to "
                "reboot",
            )
        links, waited = wait_for_carrier(
            nl, ethernet, max(0.0, deadline - k.monotonic()), k.monotonic
        )
    nics = tuple(
        Nic(
            name,
            (links[name].mac if name in links else "").lower(),
            name in links and links[name].carrier,
        )
        for name in ethernet
    )
    ctx.put(NICS, nics)
    _report(ctx)["nics"] = [{"name": n.name, "mac": n.mac, "carrier": n.carrier} for n in nics]
    if not any(n.carrier for n in nics):
        raise BootFailure(
            f"no Ethernet NIC has carrier after {timeout:g} s: "
            + "; ".join(f"{n.label()}: not tried" for n in nics),
            "plug a cable into a NIC whose switch port is up (check the link lights), or "
            "wait longer with initpy.timeout.carrier=SECONDS; then exit this shell to reboot",
        )
    return (
        ", ".join(n.label() for n in nics)
        + f" after {waited:.2f} s"
        + (f"; skipped {', '.join(skipped)}" if skipped else "")
    )


# -- dhcp ------------------------------------------------------------------------------


def dhcp(ctx: BootContext) -> str:
    from .dhcpclient import race

    nics = ctx.get(NICS, ())
    candidates = [(n.name, n.mac) for n in nics if n.carrier]
    timeout = ctx.value(DHCP_TIMEOUT)
    with opened(ctx.kernel) as nl:
        result = race(nl, candidates, timeout)
    attempts = {a.nic: a for a in result.attempts}
    lines = []
    for nic in nics:
        outcome = attempts[nic.name].outcome if nic.name in attempts else "not tried"
        lines.append(f"{nic.label()}: {outcome}")
        ctx.say(f"dhcp: {nic.label()}: {outcome}")
    _report(ctx)["dhcp"] = lines
    if result.winner is None:
        raise BootFailure(
            f"no DHCP lease on any NIC within {timeout:g} s: " + "; ".join(lines),
            "make a DHCP server answer on one of these networks (switch port, VLAN, the "
            "server's log), or wait longer with initpy.timeout.dhcp=SECONDS; then exit this "
            "shell to reboot",
        )
    lease = result.winner
    # The race checked the lease (hooks/network/lease.py); what it dropped is
    # said here, the value escaped, with what was expected.
    for problem in lease.problems:
        ctx.warn(f"dhcp: {problem}")
    ctx.put(LEASE, lease)
    _report(ctx)["lease"] = {
        "nic": lease.nic,
        "mac": lease.mac,
        "address": lease.cidr,
        "server": lease.server,
        "router": lease.router,
        "dns": list(lease.dns),
        "hostname": lease.hostname,
        "domain": lease.domain,
        "lease_time": lease.lease_time,
    }
    return (
        f"{lease.nic} {lease.cidr} from {lease.server or '?'} in {result.seconds:.2f} s"
        f" (router {lease.router or 'none'}, dns {' '.join(lease.dns) or 'none'})"
    )


# -- hostname ------------------------------------------------------------------------


def fallback_hostname(mac: str) -> str:
    """`build-` and the last 10 hex digits of the MAC (spec: Network)."""
    return "build-" + mac.replace(":", "").replace("-", "").lower()[-10:]


def choose_hostname(lease: Lease) -> tuple[str, str | None, str]:
    """(short name, fully qualified name or None, where it came from)."""
    # The lease was checked (lease.checked); checked again here, because the
    # name goes into the kernel and /etc/hosts whoever built the lease.
    offered = (lease.hostname or "").strip().rstrip(".")
    if offered and is_hostname(offered):
        short = offered.split(".")[0]
        if "." in offered:
            return short, offered, "DHCP"
        domain = (lease.domain or "").strip().rstrip(".")
        fqdn = f"{short}.{domain}" if domain and is_hostname(f"{short}.{domain}") else None
        return short, fqdn, "DHCP"
    why = "no hostname offered" if not offered else f"offered hostname {offered!r} is invalid"
    return fallback_hostname(lease.mac), None, f"{why}: from the MAC of {lease.nic}"


def hostname(ctx: BootContext) -> str:
    lease = ctx.get(LEASE, None)
    if lease is None:
        raise BootFailure(
            "no DHCP lease to name the host from",
            "the dhcp state must run before hostname; this is a hook bug",
        )
    short, fqdn, source = choose_hostname(lease)
    k = ctx.kernel
    k.sethostname(short)
    k.mkdir("/etc")
    k.write_text("/etc/hostname", short + "\n")
    names = f"{fqdn} {short}" if fqdn else short
    # 127.0.1.1 is Debian's convention for the host's own name: it stays
    # right when the lease's address changes.
    k.write_text(
        "/etc/hosts",
        "127.0.0.1\tlocalhost\n"
        f"127.0.1.1\t{names}\n\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "ff02::1\tip6-allnodes\n"
        "ff02::2\tip6-allrouters\n",
    )
    ctx.put(HOSTNAME, short)
    _report(ctx)["hostname"] = short
    return f"{short} ({source})"


# -- bridges -------------------------------------------------------------------------


def resolv_conf(lease: Lease) -> str:
    text = f"# Written by initpy from the DHCP lease on {BR0} (server {lease.server or '?'}).\n"
    if not lease.dns:
        return text + "# The lease offered no DNS servers.\n"
    if lease.domain:
        text += f"search {lease.domain}\n"
    return text + "".join(f"nameserver {server}\n" for server in lease.dns)


def interfaces_file(lease: Lease, br1: ipaddress.IPv4Interface) -> str:
    from .dhcpclient import RENEWER_NAME

    return f"""\
# Written by initpy at boot (hooks/network.py); see docs/network.md.
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

# br1: the private bridge for build machines: NAT out through br0
# ({NFT_RULES}), DHCP from dnsmasq ({DNSMASQ_CONF}).
iface {BR1} inet static
    address {br1.with_prefixlen}
    bridge_ports none
    bridge_stp off
    bridge_fd 0
"""


def nft_ruleset(br1: ipaddress.IPv4Interface) -> str:
    # Declare-then-delete makes the file idempotent: loading it twice leaves
    # one table, and it never touches tables the OS adds.
    return f"""\
# Written by initpy (hooks/network.py): masquerade br1's subnet out through br0.
table ip {NFT_TABLE}
delete table ip {NFT_TABLE}
table ip {NFT_TABLE} {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {br1.network} oifname "{BR0}" masquerade
    }}
}}
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
# Written by initpy (hooks/network.py): DHCP for build machines on {BR1} only.
interface={BR1}
bind-dynamic
except-interface=lo
no-dhcp-interface={BR0}
dhcp-range={first},{last},{br1.netmask},12h
dhcp-option=option:router,{br1.ip}
dhcp-option=option:dns-server,{br1.ip}
dhcp-authoritative
"""


# Where br1 may go when its default subnet collides with the lease: the
# default first, then the rest of 172.16.0.0/12, then 10/8 and 192.168/16.
BR1_CANDIDATES = (
    *(f"172.{n}.0.1/16" for n in (*range(23, 32), *range(16, 23))),
    *(f"10.{n}.0.1/16" for n in (*range(23, 256), *range(0, 23))),
    *(f"192.168.{n}.1/24" for n in range(256)),
)


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


def choose_br1(ctx: BootContext, lease: Lease) -> ipaddress.IPv4Interface:
    """initpy.br1, or the default moved clear of the lease (docs/network.md says why).

    A subnet the operator chose is never moved: an overlap is a rescue with
    the fix. The default nobody chose moves to a free private subnet, and the
    report says so.
    """
    br1 = ctx.value(BR1_ADDRESS)
    conflicts = br1_conflicts(br1, lease)
    if not conflicts:
        return br1
    free = free_br1(lease)
    overlap = (
        f"br1's subnet {br1.network} overlaps the DHCP lease on {lease.nic} "
        f"({lease.cidr}): " + ", ".join(conflicts)
    )
    if BR1_ADDRESS.key in ctx.config.values or free is None:
        raise BootFailure(
            f"{overlap} (from initpy.br1)" if free else f"{overlap}; no free private subnet",
            f"boot with initpy.br1={free or 'ADDRESS/PREFIX'} (any private subnet clear of "
            f"{lease.cidr} and its servers), then exit this shell to reboot",
        )
    ctx.warn(
        f"bridges: {overlap}; br1 moved to {free.with_prefixlen}; to choose its subnet, "
        "boot with initpy.br1=ADDRESS/PREFIX"
    )
    return free


def bridges(ctx: BootContext) -> str:
    from .dhcpclient import RENEWER_NAME

    lease = ctx.get(LEASE, None)
    if lease is None:
        raise BootFailure(
            "no DHCP lease to configure br0 with",
            "the dhcp state must run before bridges; this is a hook bug",
        )
    # Before any link changes: an overlap is found, and the fix said, first.
    br1 = choose_br1(ctx, lease)
    _report(ctx)["br1"] = br1.with_prefixlen
    k = ctx.kernel
    with opened(k) as nl:
        nl.add_bridge(BR0, lease.mac)
        nl.flush_ipv4(lease.nic)
        nl.set_master(lease.nic, BR0)
        nl.add_address(BR0, lease.address, lease.prefixlen, lease.broadcast_or_computed)
        if lease.router:
            nl.add_default_route(lease.router, BR0)
        nl.add_bridge(BR1, "")
        nl.add_address(BR1, str(br1.ip), br1.network.prefixlen, str(br1.network.broadcast_address))
        left = nl.ipv4_addresses(lease.nic)
    if left:
        raise BootFailure(
            f"{lease.nic} still has {', '.join(left)} after joining {BR0}",
            "this is a bug in the network hook; report it with report.json",
        )
    # A bridge port carries no addresses of its own, IPv6 link-local included.
    port_v6 = f"/proc/sys/net/ipv6/conf/{lease.nic}/disable_ipv6"
    if k.exists(port_v6):
        k.write_text(port_v6, "1\n")
    k.write_text("/proc/sys/net/ipv4/ip_forward", "1\n")
    for folder in ("/etc/sysctl.d", "/etc/initpy", "/etc/dnsmasq.d", "/etc/network"):
        k.mkdir(folder)
    k.write_text(
        SYSCTL_CONF, "# Written by initpy: br1's NAT needs forwarding.\nnet.ipv4.ip_forward = 1\n"
    )
    k.write_text(NFT_RULES, nft_ruleset(br1))
    run(
        k,
        [_binary(ctx, "nft"), "-f", NFT_RULES],
        fix="the initrd needs nft and the nf_tables, nft_chain_nat and nft_masq modules "
        "(the network hook declares them); rebuild it, then exit this shell to reboot",
    )
    k.write_text(DNSMASQ_CONF, dnsmasq_conf(br1))
    _write_resolv_conf(ctx, lease)
    k.write_text("/etc/network/interfaces", interfaces_file(lease, br1))
    pid = _start_renewer(ctx, lease)
    _report(ctx)["renewer_pid"] = pid
    return (
        f"{BR0} = {lease.nic} + {lease.cidr}"
        + (f" via {lease.router}" if lease.router else " (no router)")
        + f"; {BR1} = {br1.with_prefixlen} with NAT; {RENEWER_NAME} pid {pid}"
    )


def _binary(ctx: BootContext, name: str) -> str:
    """The binary's path: PID 1 has no PATH, and Python's default lacks the sbins."""
    for folder in DEFAULT_PATH.split(":"):
        if ctx.kernel.exists(f"{folder}/{name}"):
            return f"{folder}/{name}"
    return name


def _write_resolv_conf(ctx: BootContext, lease: Lease) -> None:
    k = ctx.kernel
    # A rootfs built for systemd-resolved has a symlink here that dangles in
    # the initrd; the lease's servers replace it.
    try:
        k.readlink("/etc/resolv.conf")
        k.remove("/etc/resolv.conf")
    except OSError:
        pass
    k.write_text("/etc/resolv.conf", resolv_conf(lease))


def _start_renewer(ctx: BootContext, lease: Lease) -> int:
    """Fork the process that keeps br0's lease alive after the hand-off."""
    from .dhcpclient import RENEWER_NAME, renew_forever, status_json

    # No thread may be in the middle of an import when PID 1 forks.
    wait_prefetch()
    k = ctx.kernel

    def write_status(status: Mapping[str, object]) -> None:
        try:
            k.mkdir(os.path.dirname(RENEWER_STATUS))
            k.write_atomic(RENEWER_STATUS, status_json(status))
        except OSError:
            pass

    async def apply_address(fresh: Lease) -> None:
        import asyncio

        def apply() -> None:
            with opened(k) as nl:
                if fresh.cidr in nl.ipv4_addresses(BR0):
                    return
                nl.flush_ipv4(BR0)
                nl.add_address(BR0, fresh.address, fresh.prefixlen, fresh.broadcast_or_computed)
                if fresh.router:
                    nl.add_default_route(fresh.router, BR0)

        await asyncio.to_thread(apply)

    def renewer() -> None:
        try:
            renew_forever(lease, BR0, write_status, apply_address)
        except BaseException as exc:  # noqa: B036 - say why renewal stopped, then exit
            write_status(
                {
                    "pid": os.getpid(),
                    "interface": BR0,
                    "trigger": "stopped",
                    "error": f"{type(exc).__name__}: {exc}",
                }
            )
            k.kmsg(printable(f"initpy: {RENEWER_NAME}: stopped: {type(exc).__name__}: {exc}"))
            raise

    # The status file exists from here on, whenever the renewer gets the CPU
    # for its first exchange (it runs at nice 10): the OS's
    # initpy-dhcp.service adopts the renewer on this file's condition, and
    # systemd may check it before the renewer has said anything.
    write_status({"interface": BR0, "trigger": "starting"})
    return k.spawn_daemon(RENEWER_NAME, renewer)


HOOK = Hook(
    name="network",
    description="Ethernet NICs, DHCP on all of them at once, hostname, br0 and br1 with NAT",
    states=(
        State(
            "find_nics",
            find_nics,
            "bring up the Ethernet NICs and wait for carrier (by MAC, never by name)",
            needs=(Milestone.MODULES,),
            wants=(Milestone.RESTORED,),
        ),
        State(
            "dhcp",
            dhcp,
            "DHCP on every NIC with carrier at once; the first lease wins",
        ),
        State(
            "hostname",
            hostname,
            "hostname from DHCP, else build-<MAC>; kernel, /etc/hostname, /etc/hosts",
            provides=(Milestone.HOSTNAME,),
        ),
        State(
            "bridges",
            bridges,
            "br0 with the NIC and the lease, br1 private with NAT and dnsmasq, "
            "/etc/network/interfaces, the lease renewer",
            provides=(Milestone.NETWORK,),
        ),
    ),
    binaries=("nft",),
    # NIC drivers come from the devices' modaliases (hooks/modules); these are
    # the features the network states use, loaded at every boot.
    modules=("bridge", "nf_tables", "nft_chain_nat", "nft_masq"),
    parameters=PARAMETERS,
    os_files=OS_FILES,
    os_packages=OS_PACKAGES,
)
