"""DHCP for the boot: a race on every NIC with carrier, and the lease renewer.

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

pyroute2's `AsyncDHCPClient` does the protocol. Its defaults are wrong for
PID 1 and are overridden here (see docs/network.md):
- `host_name` defaults to `gethostname()`, which in an initrd is "(none)" or
  "localhost": we send no host name, and *request* option 12 instead;
- `release=True` sends a RELEASE and runs the UNBOUND hooks on exit, which
  would remove the winner's lease: release is decided per client at stop;
- `handle_signals=True` installs SIGUSR1/USR2/HUP handlers in the event
  loop, which PID 1 must not take over: off during the boot (on in the
  renewer, which is not PID 1);
- `Lease.default_gateway` raises when no router was offered: the lease is
  read from the options with every field optional;
- the default lease type writes and reloads JSON in the working directory:
  an in-memory lease type is used instead.

After the hand-off, `renew_forever` (run in a process forked by the init,
named `initpy-dhcp`) keeps the lease alive on br0 and records each step in
/run/initpy/dhcp-br0.json.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

from initpy.runtime.record import frozen

from .lease import (
    INFINITE_LEASE,
    BadLease,
    DhcpClient,
    DhcpClients,
    Lease,
    checked,
    classful_prefix,
)

# Re-exported: the states and tests take them from here.
__all__ = ["BadLease", "DhcpClient", "Lease", "classful_prefix"]

# Leases that arrive within this many seconds of the first one compete by MAC.
WINDOW = 0.25
# How long stopping one client may take before it is abandoned.
STOP_TIMEOUT = 2.0
RENEWER_NAME = "initpy-dhcp"
VENDOR_ID = "initpy"


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


def sequential(
    netlink: DhcpClients, nics: Sequence[tuple[str, str]], per_nic_timeout: float
) -> RaceResult:
    """The spec's "tried in (some) order": the baseline for benchmarks only."""
    start = time.monotonic()
    attempts: list[Attempt] = []
    for name, mac in nics:
        result = race(netlink, [(name, mac)], per_nic_timeout)
        attempts.extend(result.attempts)
        if result.winner is not None:
            return RaceResult(result.winner, tuple(attempts), time.monotonic() - start)
    return RaceResult(None, tuple(attempts), time.monotonic() - start)


# -- pyroute2 ----------------------------------------------------------------------


def _quiet_pyroute2() -> None:
    # pyroute2 logs retries as warnings; with no handler configured Python
    # prints them on stderr, the console. The outcome is reported instead.
    log = logging.getLogger("pyroute2")
    if not log.handlers:
        log.addHandler(logging.NullHandler())
        log.propagate = False


def fast_backoff() -> Iterator[float]:
    """Retransmit after 1, 2, 4, then every 8 s: a boot cannot wait 4 s first.

    pyroute2's default starts at 4 s; the first DISCOVER on a link that just
    got carrier is often lost (switch port, tap not yet bridged).
    """
    delay = 1.0
    while True:
        yield delay
        delay = min(delay * 2, 8.0)


def _memory_lease_type() -> type[Any]:
    from pyroute2.dhcp.leases import Lease as PyrouteLease

    class MemoryLease(PyrouteLease):  # type: ignore[misc]
        """A lease kept in memory: nothing written to or read from the cwd."""

        def dump(self) -> None:
            pass

        @classmethod
        def load(cls, interface: str) -> None:
            return None

    return MemoryLease


def _requested() -> tuple[Any, ...]:
    from pyroute2.dhcp.enums.dhcp import Option

    return (
        Option.SUBNET_MASK,
        Option.BROADCAST_ADDRESS,
        Option.ROUTER,
        Option.NAME_SERVER,
        Option.HOST_NAME,
        Option.DOMAIN_NAME,
        Option.LEASE_TIME,
        Option.RENEWAL_TIME,
        Option.REBINDING_TIME,
    )


def requested_options() -> tuple[int, ...]:
    """The options every DHCP request asks for (option 12 among them), as numbers."""
    from .pyroute import lean_pyroute2

    lean_pyroute2()
    return tuple(int(option) for option in _requested())


def _text(value: object) -> str | None:
    """A DHCP string option as pyroute2 decodes it (str, or bytes), padding removed."""
    if isinstance(value, bytes):
        value = value.rstrip(b"\0").decode("ascii", "replace")
    if isinstance(value, str):
        value = value.rstrip("\0").strip()
        return value or None
    return None


def lease_from_options(
    nic: str, mac: str, address: str, options: Mapping[str, Any], raw: Any = None
) -> Lease:
    """A checked `Lease` from decoded DHCP options, none of which is required.

    A value of the wrong shape (pyroute2 hands a string that is not UTF-8 over
    as a list of byte values) is dropped here, one that fails its check in
    `checked()`; either way the lease's `problems` say so. Raises BadLease
    for an address the host cannot take.
    """
    problems: list[str] = []

    def dropped(what: str, value: object, expected: str) -> None:
        problems.append(f"{nic}: {what} {value!r} dropped: expected {expected}")

    prefixlen = classful_prefix(address)
    mask = options.get("subnet_mask")
    if mask:
        try:
            prefixlen = ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen
        except (ValueError, TypeError):
            dropped("subnet mask", mask, f"a contiguous netmask; using the classful /{prefixlen}")

    def strings(key: str, what: str) -> list[str]:
        value = options.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            dropped(what, value, "a list of IPv4 addresses")
            return []
        return value

    def text(key: str, what: str) -> str | None:
        value = options.get(key)
        found = _text(value)
        if value is not None and found is None and value not in ("", b""):
            dropped(what, value, "text (it is not UTF-8)")
        return found

    routers = strings("router", "router")
    lease_time = options.get("lease_time")
    if lease_time == -1:
        lease_time = INFINITE_LEASE  # pyroute2 reads option 51 as signed: all ones
    elif lease_time is not None and not isinstance(lease_time, int):
        dropped("lease time", lease_time, "a number of seconds")
        lease_time = None
    return checked(
        Lease(
            nic=nic,
            mac=mac.lower(),
            address=address,
            prefixlen=prefixlen,
            server=text("server_id", "server identifier"),
            router=routers[0] if routers else None,
            dns=tuple(strings("name_server", "DNS servers")),
            hostname=text("host_name", "host name"),
            domain=text("domain_name", "domain name"),
            broadcast=text("broadcast_address", "broadcast address"),
            lease_time=lease_time,
            raw=raw,
            problems=tuple(problems),
        )
    )


def _describe_state(state: Any) -> str:
    from pyroute2.dhcp.fsm import State

    return {
        State.OFF: "client not started",
        State.INIT: "client started, nothing sent yet",
        State.SELECTING: "no DHCP offer (DISCOVER sent, no answer)",
        State.REQUESTING: "an offer came but no ACK (REQUEST sent, no answer)",
        State.BOUND: "bound",
    }.get(state, f"in DHCP state {getattr(state, 'name', state)}")


class PyrouteDhcpClient:
    """pyroute2's AsyncDHCPClient on one NIC, configured for PID 1."""

    def __init__(self, name: str, mac: str) -> None:
        self.name = name
        self.mac = mac
        self._client: Any = None

    def _config(self, **overrides: Any) -> Any:
        from pyroute2.dhcp.client import ClientConfig

        settings: dict[str, Any] = {
            "interface": self.name,
            "lease_type": _memory_lease_type(),
            "hooks": (),
            "requested_parameters": _requested(),
            "release": False,
            "handle_signals": False,
            "host_name": None,
            "vendor_id": VENDOR_ID,
            "write_pidfile": False,
            "retransmission": fast_backoff,
        }
        settings.update(overrides)
        return ClientConfig(**settings)

    async def start(self) -> None:
        from pyroute2.dhcp.client import AsyncDHCPClient

        _quiet_pyroute2()
        self._client = AsyncDHCPClient(self._config())
        await self._client.__aenter__()
        await self._client.bootstrap()

    async def lease(self) -> Lease:
        from pyroute2.dhcp.fsm import State

        await self._client.wait_for_state(State.BOUND)
        raw = self._client.lease
        return lease_from_options(self.name, self.mac, raw.ip, raw.ack["options"], raw)

    def progress(self) -> str:
        if self._client is None:
            return "client not started"
        return _describe_state(self._client.state)

    async def stop(self, release: bool) -> None:
        if self._client is None:
            return
        self._client.config.release = release
        await self._client.__aexit__(None, None, None)


# -- after the hand-off: the renewer -----------------------------------------------


def renew_forever(
    lease: Lease,
    bridge: str,
    write_status: Callable[[Mapping[str, object]], None],
    apply_address: Callable[[Lease], Awaitable[None]] | None = None,
) -> None:
    """Keep the winning lease alive on the bridge, forever (the renewer process).

    The client starts in INIT-REBOOT with the boot's lease, so its first
    packet re-confirms the lease from br0 (same MAC, same client id), then
    renews at T1, rebinds at T2, and starts over if the lease expires. Each
    step is written to the status file.
    """
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(_renew(lease, bridge, write_status, apply_address))


async def _renew(
    lease: Lease,
    bridge: str,
    write_status: Callable[[Mapping[str, object]], None],
    apply_address: Callable[[Lease], Awaitable[None]] | None,
) -> None:
    from pyroute2.dhcp.client import AsyncDHCPClient
    from pyroute2.dhcp.hooks import Trigger, hook

    _quiet_pyroute2()
    carried = lease.raw
    base = _memory_lease_type()
    events: list[str] = []
    refused: list[str] = []  # what the last BOUND answer had that was not used

    class CarriedLease(base):  # type: ignore[misc, valid-type]
        @classmethod
        def load(cls, interface: str) -> Any:
            if carried is None:
                return None
            return cls(
                ack=carried.ack,
                interface=interface,
                server_mac=carried.server_mac,
                obtained=carried.obtained,
            )

    def status(raw: Any, trigger: str) -> dict[str, object]:
        events.append(f"{time.time():.0f} {trigger}")
        return {
            "pid": os.getpid(),
            "interface": bridge,
            "trigger": trigger,
            "address": raw.ip,
            "server": _text(raw.ack["options"].get("server_id")),
            "obtained": raw.obtained,
            "renewal_in": raw.renewal_in,
            "rebinding_in": raw.rebinding_in,
            "expiration_in": raw.expiration_in,
            "events": events[-20:],
            "dropped": list(refused),
        }

    async def on_bound(lease: Any) -> None:
        # The renewal's answer is checked as the boot's was: what fails is
        # not applied, and the status file says what was dropped or refused.
        try:
            fresh = lease_from_options(bridge, "", lease.ip, lease.ack["options"], lease)
        except BadLease as exc:
            refused[:] = [str(exc)]
            return
        refused[:] = list(fresh.problems)
        if apply_address is not None:
            await apply_address(fresh)

    bound_hook = hook(Trigger.BOUND)(on_bound)
    # One status hook per trigger, so the file names the step that happened.
    hooks = []
    for trigger in (
        Trigger.BOUND,
        Trigger.RENEWED,
        Trigger.REBOUND,
        Trigger.EXPIRED,
        Trigger.UNBOUND,
    ):

        async def named(lease: Any, _t: str = str(trigger)) -> None:
            write_status(status(lease, _t))

        named.__name__ = f"status_{trigger}"
        hooks.append(hook(trigger)(named))
    client_config = PyrouteDhcpClient(bridge, lease.mac)._config(
        lease_type=CarriedLease,
        hooks=(bound_hook, *hooks),
        handle_signals=True,
    )
    async with AsyncDHCPClient(client_config) as client:
        await client.bootstrap()
        await asyncio.Event().wait()


def status_json(status: Mapping[str, object]) -> bytes:
    return (json.dumps(dict(status), indent=2, default=str) + "\n").encode()
