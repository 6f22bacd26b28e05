"""The network hook: NICs, DHCP, the hostname, br0 and br1 (spec: Network).

States, in order:
- `find_nics`: the Ethernet NICs (not lo, wireless, bridges or virtual
  links), brought up, carrier awaited on netlink link events until every
  NIC has it or `initpy.timeout.carrier` passes. Chosen by MAC and carrier,
  never by name: names follow driver load order without udev.
- `dhcp`: DHCP on every NIC with carrier at once (race.py, with the
  packet-socket client of dhcppacket.py); the first lease wins (lowest MAC
  among leases within 0.25 s of the first).
- `hostname`: DHCP option 12, else `build-` + the last 10 hex digits of the
  winning NIC's MAC; in the kernel, /etc/hostname and /etc/hosts.
- `bridges`: br0 with the winning NIC and its MAC, carrying the lease's
  address, route and DNS; br1 private with NAT and a firewall (nft, the
  rules: firewall.py) and a dnsmasq config (its subnet: br1.py);
  /etc/network/interfaces and, when the lease names NTP servers (option
  42), systemd-timesyncd's drop-in (the texts: files.py); then the lease
  renewer `initpy-dhcp` is forked to keep br0's lease after the hand-off
  (renewer.py).

This file holds the hook's parameters, its states and `HOOK` (at the end).
Only the standard library, initpy and light helpers are imported at module
level: this file is imported on PID 1's start-up path, and it starts
nothing. The DHCP code's imports (asyncio, pyroute2's message class) begin
in a thread before the first state (`on_start`: netlink.start_prefetch), in
the shadow of the states before dhcp, and dhcp joins them.
"""

from __future__ import annotations

import ipaddress
import posixpath
from typing import Any

from initpy.runtime import cmdline
from initpy.runtime.cmdline import Parameter
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
from initpy.runtime.run import run

from .adopt import OS_FILES, OS_PACKAGES
from .br1 import DEFAULT_BR1, br1_address, choose_br1
from .files import (
    BR0,
    BR1,
    DNSMASQ_CONF,
    INTERFACES,
    NFT_RULES,
    RENEWER_NAME,
    RESOLV_CONF,
    SYSCTL_CONF,
    SYSCTL_TEXT,
    TIMESYNCD_CONF,
    dnsmasq_conf,
    hosts_file,
    interfaces_file,
    resolv_conf,
    timesyncd_conf,
)
from .firewall import LanAccess, nft_ruleset
from .lease import Lease, is_hostname
from .netlink import opened, start_prefetch, sysfs_is_ethernet, wait_for_carrier

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
    br1_address,
    ipaddress.IPv4Interface(DEFAULT_BR1),
    "address/prefix of br1, the private NAT bridge; dnsmasq serves DHCP in that subnet",
    "initpy.br1=192.168.77.1/24",
)


def _lan_access(raw: str | None) -> LanAccess:
    return LanAccess(cmdline.choice(*LanAccess)(raw))


# Deny by default: build machines run untrusted code, and the LAN's services
# (the SMTP relay first) trust the host's address, which the masquerade gives
# them (docs/network.md, "br1's firewall").
BR1_LAN: Parameter[LanAccess] = Parameter(
    "initpy.br1_lan",
    _lan_access,
    LanAccess.DENY,
    "whether build machines on br1 may reach the LAN's private ranges and its own subnet "
    "(the SMTP relay among them): deny or allow; the Internet is reached either way",
    "initpy.br1_lan=allow",
)


PARAMETERS: tuple[Parameter[Any], ...] = (CARRIER_TIMEOUT, DHCP_TIMEOUT, BR1_ADDRESS, BR1_LAN)


@frozen
class Nic:
    """An Ethernet NIC found at boot."""

    name: str
    mac: str
    carrier: bool

    def label(self) -> str:
        return f"{self.name} ({self.mac}, {'carrier' if self.carrier else 'no carrier'})"


NICS: Fact[tuple[Nic, ...]] = Fact("network.nics")
LEASE: Fact[Lease] = Fact("network.lease")
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
    from .race import race  # asyncio: imported by the prefetch thread, or here

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
        "ntp": list(lease.ntp),
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
    lease = ctx.require(LEASE, "dhcp")
    short, fqdn, source = choose_hostname(lease)
    k = ctx.kernel
    k.sethostname(short)
    k.mkdir("/etc")
    k.write_text("/etc/hostname", short + "\n")
    k.write_text("/etc/hosts", hosts_file(short, fqdn))
    ctx.put(HOSTNAME, short)
    _report(ctx)["hostname"] = short
    return f"{short} ({source})"


# -- bridges -------------------------------------------------------------------------


def bridges(ctx: BootContext) -> str:
    # Imported here: the renewer module brings the boot's DHCP client (asyncio),
    # which the dhcp state has imported by now.
    from .renewer import start_renewer

    lease = ctx.require(LEASE, "dhcp")
    # Before any link changes: an overlap is found, and the fix said, first.
    br1, moved = choose_br1(ctx.value(BR1_ADDRESS), BR1_ADDRESS.key in ctx.config.values, lease)
    if moved:
        ctx.warn(moved)
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
    k.write_text(SYSCTL_CONF, SYSCTL_TEXT)
    lan = ipaddress.IPv4Network(lease.cidr, strict=False)
    k.write_text(NFT_RULES, nft_ruleset(br1, lan, ctx.value(BR1_LAN)))
    run(
        k,
        [_binary(ctx, "nft"), "-f", NFT_RULES],
        fix="the initrd needs nft and the nf_tables, nft_ct, nft_chain_nat and nft_masq "
        "modules (the network hook declares them); rebuild it, then exit this shell to reboot",
    )
    k.write_text(DNSMASQ_CONF, dnsmasq_conf(br1))
    _write_resolv_conf(ctx, lease)
    timesyncd = timesyncd_conf(lease)
    if timesyncd is not None:
        k.mkdir(posixpath.dirname(TIMESYNCD_CONF))
        k.write_text(TIMESYNCD_CONF, timesyncd)
    k.write_text(INTERFACES, interfaces_file(lease, br1))
    pid = start_renewer(k, lease)
    _report(ctx)["renewer_pid"] = pid
    return (
        f"{BR0} = {lease.nic} + {lease.cidr}"
        + (f" via {lease.router}" if lease.router else " (no router)")
        + f"; {BR1} = {br1.with_prefixlen} with NAT and firewall "
        + f"({BR1_LAN.name}={ctx.value(BR1_LAN)}); {RENEWER_NAME} pid {pid}"
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
        k.readlink(RESOLV_CONF)
        k.remove(RESOLV_CONF)
    except OSError:
        pass
    k.write_text(RESOLV_CONF, resolv_conf(lease))


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
    modules=("bridge", "nf_tables", "nft_ct", "nft_chain_nat", "nft_masq"),
    parameters=PARAMETERS,
    # The dhcp state's imports begin in a thread before the first state.
    on_start=(start_prefetch,),
    os_files=OS_FILES,
    os_packages=OS_PACKAGES,
)
