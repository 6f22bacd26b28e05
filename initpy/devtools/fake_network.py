"""A scripted network for the fake machine: NICs, carrier, DHCP answers.

Dev tools only. `FakeNetlink` is what the fake kernel hands out for the
network hook's "rtnetlink" library: NICs are "plugged" with a MAC, a
carrier (now or later) and a DHCP answer, and every change the boot makes
(bridges, masters, addresses, routes) is kept in a model the tests read back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from hooks.network.lease import DhcpClient, Lease
from hooks.network.netlink import Link


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

        lease = Lease(
            nic="eth0",
            mac="52:54:00:12:34:56",
            address="10.0.2.15",
            prefixlen=24,
            server="10.0.2.2",
            router="10.0.2.2",
            dns=("10.0.2.3",),
            lease_time=86400,
        )
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
            carrier = name in self.up and nic.carrier_at is not None and nic.carrier_at <= now
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
        changes = [
            n.carrier_at for n in self.nics if n.name in self.up and n.carrier_at is not None
        ]
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

    def add_address(self, name: str, address: str, prefixlen: int, broadcast: str | None) -> None:
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
