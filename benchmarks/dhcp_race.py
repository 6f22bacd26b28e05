#!/usr/bin/env python3
"""Time to the first DHCP lease: initpy's parallel race against trying NICs in turn.

Needs root. Builds, in network namespaces of its own (removed at the end):
a "host" namespace with 4 veth NICs nic0..nic3, each linked to a "lan"
namespace where only nic3's peer has a DHCP server (dnsmasq, with router
and DNS). Then, inside the host namespace, with the code the init uses
(hooks.network.race.race, its clients from hooks.network.netlink.KernelNetlink):

- 1 NIC (nic3 only): parallel race vs sequential;
- 4 NICs, only the last served: parallel race vs the spec's "tried in
  (some) order" baseline, each NIC given --per-nic seconds before the next.

It prints one line per case and run, and a summary table. Usage:

    sudo .venv/bin/python benchmarks/dhcp_race.py [--per-nic 5] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

NICS = ("nic0", "nic1", "nic2", "nic3")

if TYPE_CHECKING:
    from hooks.network.lease import DhcpClients
    from hooks.network.race import RaceResult


def sequential(
    netlink: DhcpClients, nics: Sequence[tuple[str, str]], per_nic_timeout: float
) -> RaceResult:
    """The spec's "tried in (some) order", the baseline: a race of one NIC after another."""
    from hooks.network.race import Attempt, RaceResult, race

    start = time.monotonic()
    attempts: list[Attempt] = []
    for name, mac in nics:
        result = race(netlink, [(name, mac)], per_nic_timeout)
        attempts.extend(result.attempts)
        if result.winner is not None:
            return RaceResult(result.winner, tuple(attempts), time.monotonic() - start)
    return RaceResult(None, tuple(attempts), time.monotonic() - start)


def outer(args: argparse.Namespace) -> int:
    from tests.harness.netns import Netns

    with Netns("bench-host") as host, Netns("bench-lan") as lan:
        for i, nic in enumerate(NICS):
            lan.veth(
                f"srv{i}", host, nic, address=f"10.77.{i}.1/24", peer_mac=f"02:00:00:00:00:0{i + 1}"
            )
        lan.dnsmasq("srv3", "10.77.3.50", "10.77.3.150", router="10.77.3.1", dns="10.77.3.1")
        done = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                host.name,
                sys.executable,
                os.path.abspath(__file__),
                "--inner",
                "--per-nic",
                str(args.per_nic),
                "--runs",
                str(args.runs),
            ]
        )
        if done.returncode != 0:
            print(lan.dnsmasq_log("srv3")[-2000:], file=sys.stderr)
        return done.returncode


def inner(args: argparse.Namespace) -> int:
    from hooks.network.netlink import KernelNetlink, wait_for_carrier
    from hooks.network.race import race
    from initpy.runtime.kernel import Kernel

    nl = KernelNetlink(Kernel())
    links, waited = wait_for_carrier(nl, NICS, 10, time.monotonic)
    print(
        f"carrier on {sum(links[n].carrier for n in NICS)} of {len(NICS)} NICs after "
        f"{waited:.2f} s (link events, as find_nics)"
    )
    macs = {name: link.mac for name, link in links.items()}
    cases = {"1 NIC": [("nic3", macs["nic3"])], "4 NICs": [(n, macs[n]) for n in NICS]}
    figures: dict[tuple[str, str], list[float]] = {}
    for run in range(1, args.runs + 1):
        for case, nics in cases.items():
            for how in ("parallel", "sequential"):
                if how == "parallel":
                    result = race(nl, nics, timeout=30)
                else:
                    result = sequential(nl, nics, args.per_nic)
                assert result.winner is not None, result.attempts
                lease_at = (
                    result.seconds
                    if how == "sequential"
                    else min(a.seconds for a in result.attempts if a.seconds is not None)
                )
                left = {n: nl.ipv4_addresses(n) for n, _ in nics}
                print(
                    f"run {run} {case:7} {how:10} first lease {lease_at:6.2f} s "
                    f"(race ended {result.seconds:6.2f} s) winner {result.winner.nic} "
                    f"{result.winner.cidr} router {result.winner.router}; addresses left "
                    f"on NICs: {sum(len(v) for v in left.values())}",
                    flush=True,
                )
                figures.setdefault((case, how), []).append(lease_at)
    print()
    print(f"| case | parallel (median s) | sequential, {args.per_nic:g} s per NIC (median s) |")
    print("| --- | --- | --- |")
    for case in cases:
        par = statistics.median(figures[(case, "parallel")])
        seq = statistics.median(figures[(case, "sequential")])
        print(f"| {case} | {par:.2f} | {seq:.2f} |")
    nl.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--per-nic",
        type=float,
        default=5.0,
        help="seconds the sequential baseline gives each NIC (default 5)",
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if os.getuid() != 0:
        print("dhcp_race: needs root (network namespaces)", file=sys.stderr)
        return 2
    return inner(args) if args.inner else outer(args)


if __name__ == "__main__":
    sys.exit(main())
