"""Netlink for the network states: links, carrier, bridges, addresses, routes.

The network hook never talks to pyroute2 directly: it asks the kernel seam
(`Kernel.netlink()`) for a `Netlink`, a thin typed wrapper. The real one,
`IPRouteNetlink`, drives pyroute2's `IPRoute` (imported only when the first
network state runs: pyroute2's package import is slow under TCG) and keeps a
plain rtnetlink socket subscribed to link events, so that waiting for
carrier sleeps in `select()` until the kernel says something changed.
`FakeNetlink` is a scripted machine for the unit tests and the no-root walk:
NICs are "plugged" with a MAC, a carrier (now or later) and a DHCP answer,
and every change the boot makes (bridges, masters, addresses, routes) is
kept in a model the tests read back.

DHCP clients are handed out here as well (`dhcp_client()`): the real one is
pyroute2's raw-socket client (see `initpy.dhcp`), the fake one answers from
the script.
"""

from __future__ import annotations

import select
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from initpy.dhcp import DhcpClient, Lease
    from initpy.kernel import Kernel

NETLINK_ROUTE = 0
RTMGRP_LINK = 1
IFF_UP = 1


@dataclass(frozen=True)
class Link:
    """One network interface as netlink reports it."""

    index: int
    name: str
    mac: str
    up: bool
    carrier: bool
    master: int | None = None


class Netlink(Protocol):
    """What the network states need from the kernel's rtnetlink."""

    def links(self) -> list[Link]: ...

    def set_up(self, name: str) -> None: ...

    def watch_links(self) -> None:
        """Subscribe to link events; call before changing links, so none is lost."""

    def wait_link_change(self, timeout: float) -> bool:
        """Sleep until a link event arrives (True) or `timeout` passes (False)."""

    def add_bridge(self, name: str, mac: str) -> None: ...

    def set_master(self, port: str, bridge: str) -> None: ...

    def flush_ipv4(self, name: str) -> None: ...

    def add_address(self, name: str, address: str, prefixlen: int,
                    broadcast: str | None) -> None: ...

    def ipv4_addresses(self, name: str) -> list[str]:
        """The IPv4 addresses on a link, as "a.b.c.d/prefix"."""

    def add_default_route(self, gateway: str, name: str) -> None: ...

    def dhcp_client(self, name: str, mac: str) -> DhcpClient: ...

    def close(self) -> None: ...


# -- pyroute2, imported early --------------------------------------------------------

_prefetch: threading.Thread | None = None


def lean_pyroute2() -> None:
    """Let `import pyroute2.<sub>` skip the package's own __init__.

    That __init__ imports every pyroute2 API (NDB with sqlite3, IPDB,
    conntrack, ipset, nl80211, plan9, ...) to re-export them: about a third
    of the import time (about 50 ms natively, 0.75 s under TCG), for names
    the boot never uses. The package is put in sys.modules as an empty module
    with its real __path__, so its submodules import as usual. pyroute2's
    logger gets its NullHandler from pyroute2.config.log, as the __init__
    would (else its warnings reach the console through logging's last
    resort). Afterwards, take names from submodules (pyroute2.iproute.linux),
    never from the package.
    """
    if "pyroute2" in sys.modules:
        return
    import importlib.util

    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.submodule_search_locations is None:
        return  # not installed: the state that needs it says so
    sys.modules["pyroute2"] = importlib.util.module_from_spec(spec)
    try:
        import pyroute2.config.log  # noqa: F401
    except Exception:  # the import system cannot do it here: take the whole package
        for name in [m for m in sys.modules if m == "pyroute2" or m.startswith("pyroute2.")]:
            del sys.modules[name]


def _import_pyroute2() -> None:
    try:
        lean_pyroute2()
        import pyroute2.dhcp.client  # noqa: F401
        import pyroute2.dhcp.hooks  # noqa: F401
        import pyroute2.iproute.linux  # noqa: F401

        # The dhcp state's client (about 0.3 s of imports under TCG): here it
        # fills the main thread's waits on disks and carrier instead.
        import initpy.dhcp  # noqa: F401
    except Exception:  # the state that needs it imports it again and reports
        pass


def start_prefetch() -> None:
    """Import pyroute2 in a thread while the states before the network run.

    Under TCG the import takes seconds (pyroute2's package __init__ pulls in
    ndb and friends); the states before find_nics mostly wait on the kernel
    and on child processes, so the import runs in their shadow.
    """
    global _prefetch
    if _prefetch is None:
        _prefetch = threading.Thread(target=_import_pyroute2, name="prefetch pyroute2",
                                     daemon=True)
        _prefetch.start()


def wait_prefetch() -> None:
    """Join the import thread (before any fork: no thread may be mid-import)."""
    if _prefetch is not None:
        _prefetch.join()


# -- the real one ------------------------------------------------------------------


class IPRouteNetlink:
    """rtnetlink through pyroute2's IPRoute, plus a raw socket for link events."""

    def __init__(self) -> None:
        wait_prefetch()
        lean_pyroute2()
        from pyroute2.iproute.linux import IPRoute

        self._ipr: Any = IPRoute()
        self._events: socket.socket | None = None

    def _index(self, name: str) -> int:
        found = self._ipr.link_lookup(ifname=name)
        if not found:
            raise OSError(f"no network interface named {name}")
        return int(found[0])

    def links(self) -> list[Link]:
        found = []
        for msg in self._ipr.get_links():
            master = msg.get("IFLA_MASTER")
            found.append(Link(
                index=int(msg["index"]),
                name=str(msg.get("IFLA_IFNAME")),
                mac=str(msg.get("IFLA_ADDRESS") or ""),
                up=bool(msg["flags"] & IFF_UP),
                # IFLA_CARRIER turns on before the kernel's linkwatch gives the
                # link a real qdisc; until then packets are dropped (a lost
                # first DISCOVER costs a 1 s retransmission). The operstate
                # turns UP only after linkwatch, so carrier counts from then.
                carrier=bool(msg.get("IFLA_CARRIER"))
                and str(msg.get("IFLA_OPERSTATE")) in ("UP", "UNKNOWN"),
                master=int(master) if master else None,
            ))
        return found

    def set_up(self, name: str) -> None:
        self._ipr.link("set", index=self._index(name), state="up")

    def watch_links(self) -> None:
        if self._events is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                 NETLINK_ROUTE)
            sock.bind((0, RTMGRP_LINK))
            sock.setblocking(False)
            self._events = sock

    def wait_link_change(self, timeout: float) -> bool:
        if self._events is None:
            raise RuntimeError("watch_links() first")
        ready, _, _ = select.select([self._events], [], [], max(0.0, timeout))
        if not ready:
            return False
        # The content does not matter: the caller re-reads every link.
        try:
            while self._events.recv(65536):
                pass
        except BlockingIOError:
            pass
        return True

    def add_bridge(self, name: str, mac: str) -> None:
        # STP off and no forward delay: the port forwards at once, so the
        # lease's first renewal and the OS's first packets are not dropped.
        self._ipr.link("add", ifname=name, kind="bridge", br_stp_state=0,
                       br_forward_delay=0)
        index = self._index(name)
        if mac:
            self._ipr.link("set", index=index, address=mac)
        self._ipr.link("set", index=index, state="up")

    def set_master(self, port: str, bridge: str) -> None:
        self._ipr.link("set", index=self._index(port), master=self._index(bridge))

    def flush_ipv4(self, name: str) -> None:
        self._ipr.flush_addr(index=self._index(name), family=socket.AF_INET)

    def add_address(self, name: str, address: str, prefixlen: int,
                    broadcast: str | None) -> None:
        spec: dict[str, object] = {
            "index": self._index(name), "address": address, "prefixlen": prefixlen,
        }
        if broadcast:
            spec["broadcast"] = broadcast
        self._ipr.addr("replace", **spec)

    def ipv4_addresses(self, name: str) -> list[str]:
        index = self._index(name)
        return [
            f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}"
            for msg in self._ipr.get_addr(family=socket.AF_INET, index=index)
        ]

    def add_default_route(self, gateway: str, name: str) -> None:
        self._ipr.route("replace", dst="0.0.0.0/0", gateway=gateway, oif=self._index(name))

    def dhcp_client(self, name: str, mac: str) -> DhcpClient:
        from initpy.dhcp import PyrouteDhcpClient

        return PyrouteDhcpClient(name, mac)

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None
        self._ipr.close()


# -- the fake one ------------------------------------------------------------------


class FakeClock(Protocol):
    clock: float

    def write_text(self, path: str, text: str, mode: int = 0o644) -> None: ...

    def mkdir(self, path: str, mode: int = 0o755) -> None: ...


@dataclass
class FakeNic:
    """A scripted interface: its MAC, when it gets carrier, what DHCP answers."""

    name: str
    mac: str
    carrier_at: float | None = 0.0  # fake-clock time carrier appears; None: never
    lease: Lease | None = None  # the DHCP answer; None: silence
    lease_delay: float = 0.01  # real seconds before the answer
    dhcp_error: str | None = None  # the client fails with this OSError text
    kind: str = "ethernet"  # ethernet, wireless, virtual, bridge
    appear_at: float = 0.0  # fake-clock time the driver registers the NIC


@dataclass
class FakeDhcpClient:
    """Answers like a DHCP server on the scripted NIC would."""

    nic: FakeNic
    started: bool = False
    stopped: bool = False
    released: bool = False

    async def start(self) -> None:
        self.started = True

    async def lease(self) -> Lease:
        # Imported here: this module is imported on PID 1's start-up path
        # (the network hook's prefetch), asyncio is not needed until dhcp.
        import asyncio

        if self.nic.dhcp_error:
            raise OSError(self.nic.dhcp_error)
        await asyncio.sleep(self.nic.lease_delay)
        if self.nic.lease is None:
            await asyncio.Event().wait()  # silence until cancelled
        assert self.nic.lease is not None
        return self.nic.lease

    def progress(self) -> str:
        return "no DHCP offer (DISCOVER sent, no answer)"

    async def stop(self, release: bool) -> None:
        self.stopped = True
        self.released = release


@dataclass
class FakeNetlink:
    """A scripted network: NICs, and the model of what the boot built."""

    nics: list[FakeNic] = field(default_factory=list)
    up: set[str] = field(default_factory=set)
    bridges: dict[str, str] = field(default_factory=dict)  # name -> mac
    masters: dict[str, str] = field(default_factory=dict)  # port -> bridge
    addresses: dict[str, list[str]] = field(default_factory=dict)
    routes: list[tuple[str, str, str]] = field(default_factory=list)  # dst, gateway, dev
    clients: dict[str, FakeDhcpClient] = field(default_factory=dict)
    watching: bool = False
    closed: bool = False
    kernel: FakeClock | None = None

    @classmethod
    def qemu_user(cls) -> FakeNetlink:
        """One NIC answered like QEMU's user network, with router and DNS."""
        from initpy.dhcp import Lease

        lease = Lease(nic="eth0", mac="52:54:00:12:34:56", address="10.0.2.15", prefixlen=24,
                      server="10.0.2.2", router="10.0.2.2", dns=("10.0.2.3",),
                      lease_time=86400)
        return cls(nics=[FakeNic("eth0", "52:54:00:12:34:56", lease=lease)])

    def attach(self, kernel: FakeClock) -> None:
        """Bind to the fake kernel: its clock, and /sys/class/net in its root."""
        if self.kernel is kernel:
            return
        self.kernel = kernel
        kernel.mkdir("/sys/class/net")
        self._sysfs_link("lo", "00:00:00:00:00:00", "virtual", 772)
        self._appear()

    def _appear(self) -> None:
        """Write /sys/class/net for every NIC whose driver has registered it by now."""
        for nic in self.nics:
            if nic.appear_at <= self._now():
                self._sysfs(nic)

    def _sysfs(self, nic: FakeNic) -> None:
        self._sysfs_link(nic.name, nic.mac, nic.kind, 1)

    def _sysfs_link(self, name: str, mac: str, kind: str, arp_type: int) -> None:
        assert self.kernel is not None
        base = f"/sys/class/net/{name}"
        self.kernel.mkdir(base)
        self.kernel.write_text(f"{base}/address", mac + "\n")
        self.kernel.write_text(f"{base}/type", f"{arp_type}\n")
        if kind in ("ethernet", "wireless"):
            self.kernel.mkdir(f"{base}/device")
        if kind == "wireless":
            self.kernel.mkdir(f"{base}/wireless")
        if kind == "bridge":
            self.kernel.mkdir(f"{base}/bridge")

    def _now(self) -> float:
        return self.kernel.clock if self.kernel is not None else 0.0

    def _nic(self, name: str) -> FakeNic:
        for nic in self.nics:
            if nic.name == name:
                return nic
        raise OSError(f"no network interface named {name}")

    def links(self) -> list[Link]:
        now = self._now()
        found = [Link(1, "lo", "00:00:00:00:00:00", "lo" in self.up, "lo" in self.up)]
        names = [n.name for n in self.nics] + list(self.bridges)
        for i, name in enumerate(names, start=2):
            if name in self.bridges:
                found.append(Link(i, name, self.bridges[name], name in self.up, True))
                continue
            nic = self._nic(name)
            carrier = (name in self.up and nic.carrier_at is not None
                       and nic.carrier_at <= now)
            master = names.index(self.masters[name]) + 2 if name in self.masters else None
            found.append(Link(i, name, nic.mac, name in self.up, carrier, master))
        return found

    def set_up(self, name: str) -> None:
        if name not in self.bridges and name != "lo":
            self._nic(name)
        self.up.add(name)

    def watch_links(self) -> None:
        self.watching = True

    def wait_link_change(self, timeout: float) -> bool:
        """Jump the fake clock to the next NIC or carrier change, or by `timeout`."""
        assert self.watching, "watch_links() first"
        now = self._now()
        changes = [n.carrier_at for n in self.nics
                   if n.name in self.up and n.carrier_at is not None]
        changes += [n.appear_at for n in self.nics]
        upcoming = sorted(t for t in changes if now < t <= now + timeout)
        step = (upcoming[0] - now) if upcoming else timeout
        if self.kernel is not None:
            self.kernel.clock = now + step
            self._appear()
        return bool(upcoming)

    def add_bridge(self, name: str, mac: str) -> None:
        if name in self.bridges:
            raise OSError(f"{name} exists")
        self.bridges[name] = mac
        self.up.add(name)
        if self.kernel is not None:
            self._sysfs_link(name, mac, "bridge", 1)

    def set_master(self, port: str, bridge: str) -> None:
        if bridge not in self.bridges:
            raise OSError(f"no bridge named {bridge}")
        self.masters[port] = bridge

    def flush_ipv4(self, name: str) -> None:
        self.addresses.pop(name, None)

    def add_address(self, name: str, address: str, prefixlen: int,
                    broadcast: str | None) -> None:
        self.addresses.setdefault(name, []).append(f"{address}/{prefixlen}")

    def ipv4_addresses(self, name: str) -> list[str]:
        return list(self.addresses.get(name, []))

    def add_default_route(self, gateway: str, name: str) -> None:
        self.routes.append(("default", gateway, name))

    def dhcp_client(self, name: str, mac: str) -> DhcpClient:
        client = FakeDhcpClient(self._nic(name))
        self.clients[name] = client
        return client

    def close(self) -> None:
        self.closed = True


def sysfs_is_ethernet(kernel: Kernel, name: str) -> tuple[bool, str]:
    """Is /sys/class/net/NAME a physical Ethernet NIC? (yes/no, and why not)."""
    base = f"/sys/class/net/{name}"
    if name == "lo":
        return False, "loopback"
    if kernel.exists(f"{base}/wireless") or kernel.exists(f"{base}/phy80211"):
        return False, "wireless"
    if kernel.exists(f"{base}/bridge"):
        return False, "bridge"
    if not kernel.exists(f"{base}/device"):
        return False, "virtual (no device)"
    try:
        arp_type = kernel.read_text(f"{base}/type").strip()
    except OSError:
        arp_type = "1"
    if arp_type != "1":  # ARPHRD_ETHER
        return False, f"link type {arp_type}, not Ethernet"
    return True, ""


def wait_for_carrier(nl: Netlink, names: Sequence[str], timeout: float,
                     monotonic: Callable[[], float]) -> tuple[dict[str, Link], float]:
    """Bring `names` up and wait until all have carrier or `timeout` passes.

    Sleeps in link events (`wait_link_change`), never in fixed steps.
    Returns the links as last seen and the seconds waited.
    """
    nl.watch_links()  # before the links go up: no carrier event is missed
    for name in names:
        nl.set_up(name)
    start = monotonic()
    deadline = start + timeout
    while True:
        links = {link.name: link for link in nl.links()}
        if all(links[n].carrier for n in names if n in links):
            break
        remaining = deadline - monotonic()
        if remaining <= 0:
            break
        nl.wait_link_change(remaining)
    return links, monotonic() - start


@contextmanager
def opened(kernel: Kernel) -> Iterator[Netlink]:
    """A netlink handle from the seam, closed afterwards."""
    handle = kernel.netlink()
    try:
        yield handle
    finally:
        handle.close()

