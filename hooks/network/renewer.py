"""The lease renewer: the process PID 1 forks to keep br0's lease after the hand-off.

At the end of `bridges`, `start_renewer` forks a daemon named initpy-dhcp
(files.RENEWER_NAME). It runs pyroute2's AsyncDHCPClient on br0, starting
in INIT-REBOOT with the boot's ACK, so its first packet re-confirms the
lease from br0 (same MAC, same client id); then it renews at T1, rebinds at
T2, and starts over if the lease expires. A renewed address goes on br0
through the same netlink wrapper as the boot's, and each step is written
to files.RENEWER_STATUS, which the OS's initpy-dhcp.service waits for.

pyroute2's client defaults are wrong here and are overridden
(`client_config`; docs/network.md lists the pitfalls): it sends what the
boot's client sends (dhcppacket.py), keeps its lease in memory rather than
in the working directory, and never releases the lease when it stops. It
handles SIGUSR1/USR2/HUP (renew, rebind, start over): the renewer is not
PID 1. asyncio and pyroute2's client are imported in the forked process.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from initpy.runtime.kernel import Kernel
from initpy.runtime.report import printable

from .dhcppacket import VENDOR_ID, backoff, requested_options
from .files import BR0, RENEWER_NAME, RENEWER_STATUS
from .lease import BadLease, Lease, lease_from_options, option_text
from .netlink import import_dhcp, opened


def start_renewer(kernel: Kernel, lease: Lease) -> int:
    """Fork the process that keeps br0's lease alive after the hand-off; its PID."""
    # No thread may be in the middle of an import when PID 1 forks.
    import_dhcp()
    k = kernel

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


def status_json(status: Mapping[str, object]) -> bytes:
    return (json.dumps(dict(status), indent=2, default=str) + "\n").encode()


# -- in the forked process -----------------------------------------------------------


def _quiet_pyroute2() -> None:
    # pyroute2 logs retries as warnings; with no handler configured Python
    # prints them on stderr, the console. The status file says what happened.
    import logging

    log = logging.getLogger("pyroute2")
    if not log.handlers:
        log.addHandler(logging.NullHandler())
        log.propagate = False


def carried_lease_type(carried: Any) -> type[Any]:
    """pyroute2's lease type, kept in memory and starting from the boot's ACK.

    pyroute2's default writes `<ifname>.lease.json` in the working directory
    and loads it at start. This one writes nothing, and loads `carried` (a
    dhcppacket.BoundLease, or None: then the client starts with a DISCOVER).
    """
    from pyroute2.dhcp.leases import Lease as PyrouteLease

    class CarriedLease(PyrouteLease):  # type: ignore[misc]
        def dump(self) -> None:
            pass

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

    return CarriedLease


def client_config(bridge: str, carried: Any, hooks: Sequence[Any]) -> Any:
    """pyroute2's ClientConfig for the renewer, against its defaults' pitfalls."""
    from pyroute2.dhcp.client import ClientConfig

    return ClientConfig(
        interface=bridge,
        lease_type=carried_lease_type(carried),
        hooks=tuple(hooks),
        requested_parameters=requested_options(),
        # Not gethostname()'s "(none)": option 12 is requested instead.
        host_name=None,
        vendor_id=VENDOR_ID,
        # A stopped renewer leaves the address on br0 and the lease with it.
        release=False,
        handle_signals=True,
        write_pidfile=False,
        retransmission=backoff,
    )


def renew_forever(
    lease: Lease,
    bridge: str,
    write_status: Callable[[Mapping[str, object]], None],
    apply_address: Callable[[Lease], Awaitable[None]] | None = None,
) -> None:
    """Keep the winning lease alive on the bridge, forever (the renewer process).

    Each step is written with `write_status`; a renewal that passes the
    lease's checks is applied with `apply_address`.
    """
    import asyncio

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(_renew(lease, bridge, write_status, apply_address))


async def _renew(
    lease: Lease,
    bridge: str,
    write_status: Callable[[Mapping[str, object]], None],
    apply_address: Callable[[Lease], Awaitable[None]] | None,
) -> None:
    import asyncio

    from pyroute2.dhcp.client import AsyncDHCPClient
    from pyroute2.dhcp.hooks import Trigger, hook

    _quiet_pyroute2()
    events: list[str] = []
    refused: list[str] = []  # what the last BOUND answer had that was not used

    def status(raw: Any, trigger: str) -> dict[str, object]:
        events.append(f"{time.time():.0f} {trigger}")
        return {
            "pid": os.getpid(),
            "interface": bridge,
            "trigger": trigger,
            "address": raw.ip,
            "server": option_text(raw.ack["options"].get("server_id")),
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
    async with AsyncDHCPClient(client_config(bridge, lease.raw, (bound_hook, *hooks))) as client:
        await client.bootstrap()
        await asyncio.Event().wait()
