"""Netlink for the network states: links, carrier, bridges, addresses, routes.

The network states never talk to a library directly: `opened(kernel)` asks
the kernel seam for the "rtnetlink" library (`Kernel.library`), a `Netlink`,
this thin typed wrapper. The real one, `KernelNetlink`, sends plain
rtnetlink messages (rtnetlink.py, on the seam's `netlink_requests` socket)
and reads link events from the seam's netlink socket, so that waiting for
carrier sleeps in `select()` until the kernel says something changed. A
fake kernel hands out its scripted network instead
(initpy/devtools/fake_network.py).

DHCP clients are handed out here as well (`dhcp_client()`): the real one is
the packet-socket client (dhcppacket.py beside this file), whose imports
(asyncio, pyroute2's DHCP messages) `start_prefetch` begins in a thread
before the first state.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

from initpy.runtime.hook import BootContext
from initpy.runtime.kernel import Kernel, NetlinkSocket

from .lease import DhcpClient
from .pyroute import lean_pyroute2
from .rtnetlink import NETLINK_ROUTE, Link, RtNetlink

__all__ = ["NETLINK_ROUTE", "KernelNetlink", "Link", "Netlink", "lean_pyroute2", "opened"]

RTMGRP_LINK = 1


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

    def add_address(
        self, name: str, address: str, prefixlen: int, broadcast: str | None
    ) -> None: ...

    def ipv4_addresses(self, name: str) -> list[str]:
        """The IPv4 addresses on a link, as "a.b.c.d/prefix"."""

    def add_default_route(self, gateway: str, name: str) -> None: ...

    def dhcp_client(self, name: str, mac: str) -> DhcpClient: ...

    def close(self) -> None: ...


# -- the DHCP code's imports, early ---------------------------------------------------

_imports = threading.Lock()
_imported = False


def import_dhcp() -> None:
    """Import what the dhcp state needs, once, whoever asks first.

    asyncio, pyroute2's DHCP message class, the race and the boot's client:
    about 65 ms natively, about 1 s of one vCPU under TCG. The hook starts
    this in a thread before the first state (`start_prefetch`, its
    `on_start`); the first DHCP client and the renewer's fork call it again,
    and so wait for the thread if it is still importing, or import here if
    it never ran (a fake kernel records threads without running them).
    After it returns no import is in flight, so PID 1 may fork.
    """
    global _imported
    with _imports:
        if _imported:
            return
        try:
            lean_pyroute2()
            import pyroute2.dhcp.dhcp4msg  # noqa: F401

            from . import dhcppacket, race  # noqa: F401
        except Exception:  # the state that needs it imports it again and reports
            pass
        _imported = True


def start_prefetch(ctx: BootContext) -> None:
    """Run `import_dhcp` in a thread of PID 1, in the shadow of the states before dhcp.

    They wait on the kernel at times (disks, carrier). pyroute2 imports
    multiprocessing, whose os.urandom(32) waits for the kernel's random
    pool; the thread takes that wait too, off the boot's path.
    """
    ctx.kernel.start_thread("prefetch pyroute2", import_dhcp)


# -- the real one ------------------------------------------------------------------


class KernelNetlink(RtNetlink):
    """rtnetlink in plain messages (rtnetlink.py), link events from the seam, DHCP clients."""

    def __init__(self, kernel: Kernel) -> None:
        super().__init__(kernel)
        self._kernel = kernel
        self._events: NetlinkSocket | None = None

    def watch_links(self) -> None:
        if self._events is None:
            self._events = self._kernel.netlink_socket(NETLINK_ROUTE, RTMGRP_LINK)

    def wait_link_change(self, timeout: float) -> bool:
        if self._events is None:
            raise RuntimeError("watch_links() first")
        # The content does not matter: the caller re-reads every link. The
        # seam reads a bounded batch, so a flapping link cannot hold us here.
        return bool(self._events.receive(timeout))

    def dhcp_client(self, name: str, mac: str) -> DhcpClient:
        import_dhcp()
        from .dhcppacket import PacketDhcpClient

        return PacketDhcpClient(self._kernel, name, mac)

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None
        super().close()


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


def wait_for_carrier(
    nl: Netlink, names: Sequence[str], timeout: float, monotonic: Callable[[], float]
) -> tuple[dict[str, Link], float]:
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
    handle: Netlink = kernel.library("rtnetlink", lambda: KernelNetlink(kernel))
    try:
        yield handle
    finally:
        handle.close()
