"""The load a fleet of monitors puts on one TFTP server, from the monitor's own jitter law.

Simulates N hosts (default 1,000) for one day with initpy.host.monitor's
`first_wait`/`next_wait` (the code the hosts run, each with its own random
stream), counts the polls per second and per minute, and turns them into
packets and bytes with the TFTP exchange of one poll (RRQ, one DATA of
the 65-byte build id file, ACK). Then: a new build appears at a random
moment; how are the reboots it causes spread?

    .venv/bin/python benchmarks/fleet_load.py [--hosts 1000] [--interval 600]
"""

from __future__ import annotations

import argparse
import collections
import random

from initpy.host import monitor, monitor_records, settings

DAY = 86400
BUILDID_BYTES = 65  # 64 hex digits and a newline
FILENAME = "buildos/buildos-buildid"
ETHERNET, IPV4, UDP, MIN_FRAME = 14, 20, 8, 60  # bytes; MIN_FRAME without the FCS


def frame(payload: int) -> int:
    return max(ETHERNET + IPV4 + UDP + payload, MIN_FRAME)


def tftp_poll_bytes() -> tuple[int, int, int]:
    """Frames of one poll without TFTP options: RRQ, DATA (one block < 512), ACK."""
    rrq = 2 + len(FILENAME) + 1 + len("octet") + 1
    return frame(rrq), frame(4 + BUILDID_BYTES), frame(4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=settings.DEFAULT_INTERVAL)
    args = parser.parse_args()
    per_second: collections.Counter[int] = collections.Counter()
    schedules = []
    for seed in range(args.hosts):
        host = monitor.Monitor(
            settings.Settings("file:///x", None, args.interval),
            "0" * 64,
            monitor_records.Dependencies(rng=random.Random(seed), clock=lambda: 0.0),
        )
        t = host.first_wait()
        times = []
        while t < DAY:
            per_second[int(t)] += 1
            times.append(t)
            t += host.next_wait()
        schedules.append(times)
    polls = sum(per_second.values())
    seconds = [per_second.get(s, 0) for s in range(DAY)]
    minutes = [sum(seconds[i : i + 60]) for i in range(0, DAY, 60)]
    rrq, data, ack = tftp_poll_bytes()
    per_poll = rrq + data + ack
    rate = polls / DAY
    print(f"{args.hosts} hosts, interval {args.interval:g} s, jitter ±{monitor.JITTER:.0%}:")
    print(f"  polls in a day: {polls} ({rate:.2f}/s on average)")
    print(f"  busiest second: {max(seconds)} polls; busiest minute: {max(minutes)} polls")
    print(f"  quietest minute: {min(minutes)} polls")
    print(f"  one poll: 3 packets, {per_poll} bytes of frames (RRQ {rrq}, DATA {data}, ACK {ack})")
    print(
        f"  on the server: {3 * rate:.1f} packets/s, {rate * per_poll:.0f} bytes/s "
        f"({rate * per_poll * 8 / 1000:.1f} kbit/s), {polls * per_poll / 1e6:.1f} MB a day"
    )
    # A new build appears at noon: each host reboots at its next poll.
    noon = DAY / 2
    delays = sorted(next(t for t in times if t >= noon) - noon for times in schedules)
    reboots_per_minute = collections.Counter(int(d // 60) for d in delays)

    def pct(p: float) -> float:
        return delays[min(len(delays) - 1, int(p * len(delays)))]

    print("  a new build at a random moment: hosts see it after")
    print(
        f"    median {pct(0.5):.0f} s, 90% {pct(0.9):.0f} s, all {delays[-1]:.0f} s; "
        f"at most {max(reboots_per_minute.values())} reboots in one minute"
    )


if __name__ == "__main__":
    main()
