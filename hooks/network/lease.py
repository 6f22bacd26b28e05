"""A DHCP lease and the client interface the race drives: types only.

Kept apart from dhcpclient.py (pyroute2's client, asyncio) and netlink.py
(IPRoute) so that neither needs the other to name them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Lease:
    """What the winning DHCP server granted; every option may be absent."""

    nic: str
    mac: str
    address: str
    prefixlen: int
    server: str | None = None
    router: str | None = None
    dns: tuple[str, ...] = ()
    hostname: str | None = None
    domain: str | None = None
    broadcast: str | None = None
    lease_time: int | None = None
    # pyroute2's own lease object, kept so the renewer can carry it on.
    raw: Any = field(default=None, compare=False, repr=False)

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefixlen}"

    @property
    def broadcast_or_computed(self) -> str:
        if self.broadcast:
            return self.broadcast
        net = ipaddress.IPv4Network(self.cidr, strict=False)
        return str(net.broadcast_address)


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
