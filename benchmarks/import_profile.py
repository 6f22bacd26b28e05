#!/usr/bin/env python3
"""What PID 1 imports, and what it costs: natively, each phase in a fresh interpreter.

    .venv/bin/python benchmarks/import_profile.py [--top N] [--hooks-dir DIR]

Phases, each measured in its own `python -X importtime` process, so one
phase's imports are not counted in another's (they are cumulative: a phase
includes the ones before it):

- boot: `import initpy.runtime.driver` and the real kernel seam (before "starting");
- hooks: plus every hook file loaded and the registry built (before the
  first state: the network hook's pyroute2 prefetch is not started, as the
  process is not PID 1);
- machine: plus the `transitions` machine (Boot());
- network: plus what the network states import (pyroute2 the lean way, the
  DHCP client).

For each it prints the wall time of the phase, the modules imported and
the largest self times. Under TCG, imports cost about 15 times as much as
natively (docs/testing.md, "Speed"), so 10 ms here is about 0.15 s in the
VM. Figures move with the host's load: compare runs made together.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PHASES: dict[str, str] = {
    "boot": "import initpy.runtime.driver, initpy.runtime.kernel",
    "hooks": "from initpy.runtime.driver import load_registry; load_registry([HOOKS])",
    "machine": (
        "from initpy.runtime.driver import Boot, load_registry; "
        "from initpy.runtime.kernel import Kernel; "
        "Boot(Kernel(watch_orphans=False), load_registry([HOOKS]))"
    ),
    "network": (
        "from initpy.runtime.driver import Boot, load_registry; "
        "from initpy.runtime.kernel import Kernel; "
        "Boot(Kernel(watch_orphans=False), load_registry([HOOKS])); "
        "from hooks.network.netlink import _import_pyroute2; _import_pyroute2()"
    ),
}
LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$")


def measure(code: str) -> tuple[float, list[tuple[int, int, str]]]:
    timed = (
        "import time as _t; _s = _t.perf_counter(); "
        + code
        + "; print(f'PHASE {_t.perf_counter() - _s:.6f}')"
    )
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", timed],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = float(done.stdout.split("PHASE ")[-1])
    rows = []
    for line in done.stderr.splitlines():
        m = LINE.match(line)
        if m:
            rows.append((int(m.group(1)), int(m.group(2)), m.group(4)))
    return seconds, rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--top", type=int, default=12, help="largest self times shown per phase")
    parser.add_argument("--hooks-dir", default=str(REPO / "hooks"))
    ns = parser.parse_args()
    _, startup = measure("pass")
    before = {name for _, _, name in startup}  # the interpreter's own start (site, ...)
    for phase, code in PHASES.items():
        seconds, rows = measure(code.replace("HOOKS", repr(ns.hooks_dir)))
        ours = [r for r in rows if r[2] not in before]
        total_us = sum(self_us for self_us, _, _ in ours)
        print(
            f"{phase:<8} {seconds * 1000:7.1f} ms wall, {len(ours):4d} modules, "
            f"{total_us / 1000:7.1f} ms importing (about {total_us * 15 / 1e6:4.1f} s "
            "under TCG)"
        )
        for self_us, _, name in sorted(ours, reverse=True)[: ns.top]:
            print(f"    {self_us / 1000:6.1f} ms  {name}")


if __name__ == "__main__":
    main()
