"""br1's firewall against the attacks of issue 19, with the real nft, dnsmasq and kernel, as root.

Three network namespaces of this process (tests/harness/netns.py):
- `lan`, a machine on br0's network (10.9.0.50/24): the SMTP relay's
  stand-in on port 25; an "Internet" server at 198.51.100.10 and another
  private network's server at 192.168.5.5 (addresses on its loopback: the
  host's default route is lan); and the route to br1's subnet through the
  host that an attacker on the LAN adds;
- `host`: br0 (10.9.0.1/24, a veth to lan), br1 (172.23.0.1/16 and IPv6
  link-local fe80::1, a veth to vm); the sysctl file and the nft file the
  network hook writes, loaded with `sysctl -p` and `nft -f` (twice: the
  file is idempotent), rp_filter 0 as on Debian 12; the real dnsmasq with
  initpy's br1 configuration and buildos-tftp.conf; in.tftpd on an agent
  port; stand-ins for the host's TCP services (sshd 22, postfix 25, 8080
  for any other) on every IPv4 and IPv6 address; UDP echo servers just
  outside the agent's port range;
- `vm`, a build machine on br1 (172.23.0.50/16, default route the host).

Every check runs against the rules of both `initpy.br1_lan` values and
against main's rules (NAT only, MAIN_RULES): each attack the new rules stop
gets through main's, so each check can fail. What must work (NAT, DHCP,
DNS, TFTP) works under all three.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import selectors
import shutil
import socket
import struct
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from hooks import buildhost
from hooks.network.files import SYSCTL_TEXT, dnsmasq_conf
from hooks.network.firewall import LanAccess, nft_ruleset
from initpy.runtime.layout import AGENT_TFTP_PORTS
from tests.harness.netns import Netns, entered, local_conf

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.getuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(
        not all(shutil.which(p) for p in ("ip", "nft", "sysctl", "dnsmasq", "busybox", "in.tftpd")),
        reason="needs ip, nft, sysctl, dnsmasq, busybox and in.tftpd",
    ),
]

BR1 = ipaddress.IPv4Interface("172.23.0.1/16")
LAN_NET = ipaddress.IPv4Network("10.9.0.0/24")
HOST_BR0, HOST_BR1, HOST_BR1_V6 = "10.9.0.1", str(BR1.ip), "fe80::1"
LAN, VM = "10.9.0.50", "172.23.0.50"
INTERNET, OTHER_PRIVATE = "198.51.100.10", "192.168.5.5"
AGENT_PORT = AGENT_TFTP_PORTS[1]
HOST_TCP = {"sshd": 22, "postfix": 25, "other": 8080}
# A refused packet is dropped: this long without an answer is "refused".
WAIT = 1.5

# main's nft_ruleset (hooks/network/files.py before issue 19) for this br1: NAT only.
MAIN_RULES = """\
table ip initpy_nat
delete table ip initpy_nat
table ip initpy_nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr 172.23.0.0/16 oifname "br0" masquerade
    }
}
"""

RULES = {
    "deny": nft_ruleset(BR1, LAN_NET, LanAccess.DENY),
    "allow": nft_ruleset(BR1, LAN_NET, LanAccess.ALLOW),
    "main": MAIN_RULES,
}


class Servers:
    """TCP and UDP servers in namespaces, served by one thread; each records its peers.

    A TCP server sends "ok" on each connection; a UDP one answers "ok" when
    it echoes. `peers[label]` lists the source address of each arrival.
    """

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self.peers: dict[str, list[str]] = defaultdict(list)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def tcp(self, ns: Netns, label: str, port: int, address: str = "::") -> None:
        with entered(ns):
            sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
        # On "::" IPv4 too, as sshd and postfix listen on every address.
        if ":" in address:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(16)
        self._add(sock, (label, "tcp"))

    def udp(self, ns: Netns, label: str, port: int, echo: bool, address: str = "0.0.0.0") -> None:
        with entered(ns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((address, port))
        self._add(sock, (label, "echo" if echo else "udp"))

    def _add(self, sock: socket.socket, what: tuple[str, str]) -> None:
        sock.setblocking(False)
        self._selector.register(sock, selectors.EVENT_READ, what)

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.1):
                sock, (label, kind) = key.fileobj, key.data
                assert isinstance(sock, socket.socket)
                with contextlib.suppress(OSError):
                    if kind == "tcp":
                        conn, peer = sock.accept()
                        with conn:
                            self.peers[label].append(peer[0].removeprefix("::ffff:"))
                            conn.sendall(b"ok")
                    else:
                        _, peer = sock.recvfrom(512)
                        self.peers[label].append(peer[0])
                        if kind == "echo":
                            sock.sendto(b"ok", peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()


def tcp_ok(ns: Netns, address: str, port: int, interface: str = "eth0") -> bool:
    """Does a TCP connection from `ns` reach a server that says "ok"?"""
    with entered(ns):
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        target = (address, port, 0, socket.if_nametoindex(interface)) if ":" in address else None
    with sock:
        sock.settimeout(WAIT)
        try:
            sock.connect(target or (address, port))
            return sock.recv(2) == b"ok"
        except OSError:
            return False


def udp_ok(ns: Netns, address: str, port: int, source: str = "0.0.0.0") -> bool:
    """Does a datagram from `ns` (from `source`) get an "ok" back?"""
    with entered(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.bind((source, 0))
        sock.settimeout(WAIT)
        sock.sendto(b"hi", (address, port))
        try:
            return sock.recv(2) == b"ok"
        except OSError:
            return False


def all_of(checks: dict[str, Callable[[], bool]]) -> dict[str, bool]:
    """Run the checks at once (each refused one waits WAIT): their outcomes by name."""
    with ThreadPoolExecutor(len(checks)) as pool:
        futures = {name: pool.submit(check) for name, check in checks.items()}
        return {name: future.result() for name, future in futures.items()}


def dns_answers(address: str, tcp: bool, ns: Netns, name: str = "build.test") -> list[str]:
    """The A records dnsmasq at `address` gives for `name`, over UDP or TCP."""
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    query = struct.pack("!6H", 0x1919, 0x0100, 1, 0, 0, 0) + question + struct.pack("!2H", 1, 1)
    with entered(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(5)
        if tcp:
            sock.connect((address, 53))
            sock.sendall(struct.pack("!H", len(query)) + query)
            size = struct.unpack("!H", sock.recv(2))[0]
            reply = b""
            while len(reply) < size:
                reply += sock.recv(size - len(reply))
        else:
            sock.sendto(query, (address, 53))
            reply = sock.recv(512)
    # The answers follow the question; each A record ends with its 4 bytes.
    count = struct.unpack("!H", reply[6:8])[0]
    return [str(ipaddress.IPv4Address(reply[-4 * (i + 1) :][:4])) for i in range(count)][::-1]


@dataclass
class World:
    rules: str
    host: Netns
    lan: Netns
    vm: Netns
    servers: Servers
    tftp_root: Path

    @property
    def filtered(self) -> bool:
        return self.rules != "main"


def _link(host: Netns, port: str, peer: Netns, bridge: str, address: str) -> None:
    host.veth(port, peer, "eth0")
    host.run(["ip", "link", "set", port, "master", bridge])
    peer.run(["ip", "addr", "add", address, "dev", "eth0"])
    peer.run(["ip", "link", "set", "eth0", "up"])


def _build(rules: str, tmp: Path, host: Netns, lan: Netns, vm: Netns) -> None:
    for bridge, address in (("br0", f"{HOST_BR0}/24"), ("br1", BR1.with_prefixlen)):
        host.run(["ip", "link", "add", bridge, "type", "bridge"])
        host.run(["ip", "addr", "add", address, "dev", bridge])
        host.run(["ip", "link", "set", bridge, "up"])
    host.run(["ip", "-6", "addr", "add", f"{HOST_BR1_V6}/64", "dev", "br1", "nodad"])
    _link(host, "p0", lan, "br0", f"{LAN}/24")
    _link(host, "p1", vm, "br1", f"{VM}/16")
    vm.run(["ip", "-6", "addr", "add", "fe80::50/64", "dev", "eth0", "nodad"])
    vm.run(["ip", "route", "add", "default", "via", HOST_BR1])
    host.run(["ip", "route", "add", "default", "via", LAN])
    for address in (INTERNET, OTHER_PRIVATE):
        lan.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"])
    lan.run(["ip", "route", "add", str(BR1.network), "via", HOST_BR0])  # the attacker's route
    (tmp / "sysctl.conf").write_text(SYSCTL_TEXT)
    host.run(["sysctl", "-q", "-p", str(tmp / "sysctl.conf")])
    for conf in ("all", "default", "br0", "br1"):
        host.run(["sysctl", "-q", "-w", f"net.ipv4.conf.{conf}.rp_filter=0"])
    (tmp / "rules.nft").write_text(RULES[rules])
    for _ in range(2):
        host.run(["nft", "-f", str(tmp / "rules.nft")])


@pytest.fixture(scope="module", params=list(RULES))
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    rules: str = request.param
    tmp = tmp_path_factory.mktemp(f"br1-{rules}")
    with Netns("fw-host") as host, Netns("fw-lan") as lan, Netns("fw-vm") as vm:
        _build(rules, tmp, host, lan, vm)
        root = tmp / "tftp"
        root.mkdir()
        conf = dnsmasq_conf(BR1) + buildhost.TFTP_CONF
        # Answers from its own records only: no upstream, not this machine's hosts.
        conf += "user=root\nno-resolv\nno-hosts\nhost-record=build.test,172.23.0.1\n"
        host.dnsmasq_conf("br1", local_conf(conf, str(root)), "TFTP root is")
        agent = ["in.tftpd", "-L", "-a", f"{HOST_BR1}:{AGENT_PORT}", "-u", "root", "-c", "-s"]
        host.spawn([*agent, str(root)], str(tmp / "in.tftpd.log"))
        servers = Servers()
        try:
            for label, port in HOST_TCP.items():
                servers.tcp(host, label, port)
            for port in (AGENT_TFTP_PORTS[0] - 1, AGENT_TFTP_PORTS[1] + 1):
                servers.udp(host, f"udp{port}", port, echo=True)
            servers.tcp(lan, "relay", 25, LAN)
            servers.tcp(lan, "internet", 80, INTERNET)
            servers.udp(lan, "internet-udp", 9999, echo=False, address=INTERNET)
            servers.tcp(lan, "other-private", 80, OTHER_PRIVATE)
            servers.tcp(vm, "vm", 8022, VM)
            yield World(rules, host, lan, vm, servers, root)
        finally:
            servers.close()


def test_the_lan_cannot_reach_br1(world: World) -> None:
    # An attacker on the LAN with a route to br1's subnet through the host:
    # the build machine's port, and the host's own address on br1.
    outcome = all_of(
        {
            "build machine": lambda: tcp_ok(world.lan, VM, 8022),
            "host's br1 address": lambda: tcp_ok(world.lan, HOST_BR1, HOST_TCP["other"]),
        }
    )
    assert outcome == dict.fromkeys(outcome, not world.filtered)
    assert (world.servers.peers["vm"] == [LAN]) is not world.filtered


def test_a_build_machine_reaches_the_internet_through_the_nat(world: World) -> None:
    assert tcp_ok(world.vm, INTERNET, 80)
    # The server sees the host's br0 address, never the build machine's.
    assert world.servers.peers["internet"][-1] == HOST_BR0


def test_a_spoofed_source_gets_nothing_out(world: World) -> None:
    spoofed = ("203.0.113.5", "10.9.0.77")  # an Internet address, a LAN neighbour's
    for address in spoofed:
        world.vm.run(["ip", "addr", "add", f"{address}/32", "dev", "eth0"])
    for source in (VM, *spoofed):
        udp_ok(world.vm, INTERNET, 9999, source)
    time.sleep(0.5)
    seen = world.servers.peers["internet-udp"]
    # The genuine source arrives masqueraded under every ruleset; main's let
    # the spoofed ones out as they were.
    assert seen.count(HOST_BR0) >= 1
    assert sorted(set(seen) - {HOST_BR0}) == ([] if world.filtered else sorted(spoofed))


def test_a_build_machine_reaches_none_of_the_hosts_other_services(world: World) -> None:
    checks: dict[str, Callable[[], bool]] = {}
    for label, port in HOST_TCP.items():
        for where, address in (("br1", HOST_BR1), ("br0", HOST_BR0), ("br1 IPv6", HOST_BR1_V6)):
            checks[f"{label} on {where}"] = partial(tcp_ok, world.vm, address, port)
    # Just outside the agent's TFTP ports.
    for port in (AGENT_TFTP_PORTS[0] - 1, AGENT_TFTP_PORTS[1] + 1):
        checks[f"udp {port}"] = partial(udp_ok, world.vm, HOST_BR1, port)
    outcome = all_of(checks)
    assert outcome == dict.fromkeys(checks, not world.filtered)


def test_dhcp_dns_and_tftp_work_for_a_build_machine(world: World, tmp_path: Path) -> None:
    script = tmp_path / "udhcpc.sh"
    script.write_text('#!/bin/sh\n[ "$1" = bound ] && echo "lease $ip router $router"\n')
    script.chmod(0o755)
    udhcpc = ["busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "5", "-T", "1"]
    out = world.vm.run(["timeout", "30", *udhcpc, "-s", str(script)])
    lease, router = out.split()[1::2]
    assert ipaddress.IPv4Address(lease) in BR1.network and router == HOST_BR1, out
    for tcp in (False, True):
        assert dns_answers(HOST_BR1, tcp, world.vm) == [HOST_BR1]
    # 100 KiB: 200 blocks, each ACK sent to the server's own new port, which
    # only the answer to its first DATA (conntrack: established) lets in.
    payload = os.urandom(100 * 1024)
    (world.tftp_root / "big.bin").write_bytes(payload)
    for port in (69, AGENT_PORT):
        got = tmp_path / f"got-{port}.bin"
        get = ["busybox", "tftp", "-g", "-r", "big.bin", "-l", str(got), HOST_BR1, str(port)]
        world.vm.run(["timeout", "20", *get])
        assert got.read_bytes() == payload, port
    # The agent's server takes a build machine's upload too (DATA to its new port).
    (tmp_path / "up.bin").write_bytes(payload)
    put = ["busybox", "tftp", "-p", "-l", str(tmp_path / "up.bin"), "-r", "up.bin"]
    world.vm.run(["timeout", "20", *put, HOST_BR1, str(AGENT_PORT)])
    assert (world.tftp_root / "up.bin").read_bytes() == payload
    assert "0% packet loss" in world.vm.run(["busybox", "ping", "-c", "1", "-W", "2", HOST_BR1])


def test_the_lans_private_ranges_follow_the_parameter(world: World) -> None:
    outcome = all_of(
        {
            "relay": lambda: tcp_ok(world.vm, LAN, 25),
            "another private range": lambda: tcp_ok(world.vm, OTHER_PRIVATE, 80),
        }
    )
    assert outcome == dict.fromkeys(outcome, world.rules != "deny")
    # Through the NAT: the relay would take the build machine for the host.
    assert world.servers.peers["relay"] == ([] if world.rules == "deny" else [HOST_BR0])
