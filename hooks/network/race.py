"""The dhcp state's race: DHCP on every NIC with carrier at once; the first lease wins.

The spec tries "all Ethernet interfaces that have carrier ... in (some)
order"; initpy asks on all of them at once and keeps the first lease. The
selection rule, deterministic when leases arrive together:

    When the first lease arrives, wait WINDOW seconds more (never past the
    deadline, and not at all once every NIC has answered). Among the leases
    in hand then, the NIC with the lowest MAC address wins.

Every other client is stopped: a loser that holds a lease sends a
DHCPRELEASE so the server can reuse the address; the winner's lease is kept
(no release) for br0, which takes the winner's MAC so the lease stays valid.
No client ever configures an address: the network hook applies the winning
lease to br0 itself, so nothing is left on any NIC.

The clients come from the netlink handle (`DhcpClients`): the boot's is
dhcppacket.PacketDhcpClient, a fake kernel's is scripted. Whatever the
client, each lease is checked here (lease.checked) before it may win.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from initpy.runtime.record import frozen

from .lease import DhcpClient, DhcpClients, Lease, checked

# Leases that arrive within this many seconds of the first one compete by MAC.
WINDOW = 0.25
# How long stopping one client may take before it is abandoned.
STOP_TIMEOUT = 2.0


@frozen
class Attempt:
    """What happened on one NIC during the race."""

    nic: str
    mac: str
    outcome: str
    lease: Lease | None = None
    seconds: float | None = None


@frozen
class RaceResult:
    winner: Lease | None
    attempts: tuple[Attempt, ...]
    seconds: float


def mac_key(mac: str) -> int:
    return int(mac.replace(":", "").replace("-", ""), 16)


def choose(leases: Sequence[Lease]) -> Lease:
    """The selection rule among leases that arrived within the window."""
    return min(leases, key=lambda lease: mac_key(lease.mac))


def race(
    netlink: DhcpClients, nics: Sequence[tuple[str, str]], timeout: float, window: float = WINDOW
) -> RaceResult:
    """DHCP on every (name, mac) at once; the first lease wins.

    Runs its own event loop (not `asyncio.run`, which would install a SIGINT
    handler in PID 1) and closes it before returning.
    """
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_race(netlink, nics, timeout, window))
    finally:
        loop.close()


async def _obtain(client: DhcpClient) -> Lease:
    await client.start()
    # Checked here whatever the client (a scripted one too): a lease whose
    # address the host cannot take fails this NIC, and another may win.
    return checked(await client.lease())


async def _race(
    netlink: DhcpClients, nics: Sequence[tuple[str, str]], timeout: float, window: float
) -> RaceResult:
    loop = asyncio.get_running_loop()
    start = loop.time()
    hard_end = start + timeout
    window_end: float | None = None
    clients: dict[str, DhcpClient] = {}
    tasks: dict[asyncio.Task[Lease], str] = {}
    for name, mac in nics:
        client = netlink.dhcp_client(name, mac)
        clients[name] = client
        tasks[asyncio.create_task(_obtain(client), name=f"dhcp {name}")] = name
    leases: dict[str, Lease] = {}
    arrived: dict[str, float] = {}
    errors: dict[str, str] = {}
    pending: set[asyncio.Task[Lease]] = set(tasks)
    while pending:
        remaining = (window_end if window_end is not None else hard_end) - loop.time()
        if remaining <= 0:
            break
        done, pending = await asyncio.wait(
            pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
        )
        for task in done:
            name = tasks[task]
            exc = task.exception()
            if exc is not None:
                errors[name] = f"{type(exc).__name__}: {exc}"
                continue
            leases[name] = task.result()
            arrived[name] = loop.time() - start
            if window_end is None:
                window_end = min(loop.time() + window, hard_end)
    ended = loop.time() - start
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    winner = choose(list(leases.values())) if leases else None

    async def stop(name: str) -> None:
        release = name in leases and (winner is None or name != winner.nic)
        try:
            await asyncio.wait_for(clients[name].stop(release), STOP_TIMEOUT)
        except Exception as exc:  # a stuck client must not hold the boot
            errors.setdefault(name, f"stopping failed: {type(exc).__name__}: {exc}")

    # Progress is read before stopping: stopping resets the client's state.
    progress = {name: clients[name].progress() for name in clients}
    await asyncio.gather(*(stop(name) for name in clients))
    attempts = []
    for name, mac in nics:
        if winner is not None and name == winner.nic:
            lease = leases[name]
            rule = (
                f"lowest MAC among {len(leases)} leases within {window:g} s"
                if len(leases) > 1
                else "first lease"
            )
            outcome = (
                f"lease {lease.cidr} from {lease.server or 'unknown server'} after "
                f"{arrived[name]:.2f} s: chosen ({rule})"
            )
        elif name in leases:
            outcome = (
                f"lease {leases[name].cidr} after {arrived[name]:.2f} s: released, "
                f"{winner.nic if winner else '?'} has the lower MAC"
            )
        elif name in errors:
            outcome = f"failed: {errors[name]}"
        elif winner is not None:
            outcome = f"stopped after {ended:.2f} s, {winner.nic} won ({progress[name]})"
        else:
            outcome = f"no lease within {timeout:g} s: {progress[name]}"
        attempts.append(Attempt(name, mac, outcome, leases.get(name), arrived.get(name)))
    return RaceResult(winner, tuple(attempts), ended)
