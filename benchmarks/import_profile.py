#!/usr/bin/env python3
"""What PID 1 imports and builds before its first state, and what it costs, natively.

    .venv/bin/python benchmarks/import_profile.py [--top N] [--runs N] [--against REV]

Every measurement runs in a fresh `python -S` (no site module, so no .pth
file imports anything; site-packages comes by PYTHONPATH) with bytecode
written beforehand and PYTHONDONTWRITEBYTECODE dropped: modules load from
their .pyc, as the frozen init loads its PYZ and mkinitrd's hook .pyc files.
With the variable set, every hook file would be compiled at each run, and
the compiler's time would be most of the "hooks" figure.

First, the wall time of each phase (perf_counter in one process, median of
--runs processes), for this tree and, with --against, for REV (a `git
archive` of it in a temporary folder), the two run in turns:

- boot: `import initpy.runtime.entry` (the driver, the kernel seam...);
- hooks: every hook file loaded and the registry built;
- transitions: the state machine's package imported;
- machine: Boot() (the report, the context, the Machine);
- advance: the machine stepped through every state (the driver's trigger);
- network: what the network states import (pyroute2 the lean way, the DHCP
  client), which the prefetch thread imports as PID 1.

Then, for this tree, `python -X importtime` of each cumulative phase: the
modules it imports and the largest self times (a module's self time
includes its body: classes, records, patterns). Under TCG, Python costs
about 15 times as much as natively (docs/testing.md, "Speed"), so 10 ms
here is about 0.15 s in the VM. Figures move with the host's load:
compare runs made together.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# One process: each phase's wall time, in order; `HOOKS` is the hooks folder.
TIMED = """
import json, time
marks = [time.perf_counter()]
import initpy.runtime.entry
marks.append(time.perf_counter())
from initpy.runtime.driver import Boot, load_registry
from initpy.runtime.kernel import Kernel
registry = load_registry([HOOKS])
marks.append(time.perf_counter())
import transitions
marks.append(time.perf_counter())
boot = Boot(Kernel(watch_orphans=False), registry)
marks.append(time.perf_counter())
for _ in registry.order:
    boot.trigger("advance")
marks.append(time.perf_counter())
from hooks.network.netlink import import_dhcp
import_dhcp()
marks.append(time.perf_counter())
print(json.dumps([b - a for a, b in zip(marks, marks[1:])]))
"""
TIMED_PHASES = ("boot", "hooks", "transitions", "machine", "advance", "network")

# Cumulative phases for -X importtime.
PHASES: dict[str, str] = {
    "boot": "import initpy.runtime.entry",
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
        "from hooks.network.netlink import import_dhcp; import_dhcp()"
    ),
}
LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$")


def environment(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    packages = [p for p in sys.path if "-packages" in p]
    env["PYTHONPATH"] = os.pathsep.join([str(tree), *packages])
    return env


def prepare(tree: Path) -> None:
    """Write the tree's bytecode once, so that no run compiles."""
    for part in ("initpy", "hooks"):
        compileall.compile_dir(str(tree / part), quiet=1)


def python(tree: Path, code: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-S", *options, "-c", code.replace("HOOKS", repr(str(tree / "hooks")))],
        cwd=tree,
        env=environment(tree),
        capture_output=True,
        text=True,
        check=True,
    )


def timed(tree: Path) -> list[float]:
    return [float(s) for s in json.loads(python(tree, TIMED).stdout)]


def importtime(tree: Path, code: str) -> list[tuple[int, int, str]]:
    rows = []
    for line in python(tree, code, "-X", "importtime").stderr.splitlines():
        m = LINE.match(line)
        if m:
            rows.append((int(m.group(1)), int(m.group(2)), m.group(4)))
    return rows


def print_wall(runs: dict[str, list[list[float]]]) -> None:
    names = list(runs)
    print(f"wall ms, median of {len(runs[names[0]])} (min)")
    print(f"{'phase':<12}" + "".join(f"{n:>22}" for n in names))
    for i, phase in enumerate((*TIMED_PHASES, "to the first state")):
        cells = []
        for name in names:
            if phase == "to the first state":
                values = [sum(r[:5]) * 1000 for r in runs[name]]
            else:
                values = [r[i] * 1000 for r in runs[name]]
            cells.append(f"{statistics.median(values):9.1f} ({min(values):7.1f})")
        print(f"{phase:<12}" + "".join(f"{c:>22}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--top", type=int, default=12, help="largest self times shown per phase")
    parser.add_argument("--runs", type=int, default=15, help="processes per tree (default 15)")
    parser.add_argument("--against", metavar="REV", help="also measure this git revision")
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="initpy-imports-") as tmp:
        trees = {"this tree": REPO}
        if ns.against:
            other = Path(tmp) / "against"
            other.mkdir()
            archive = subprocess.run(
                ["git", "archive", ns.against], cwd=REPO, capture_output=True, check=True
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(other)], input=archive, check=True)
            trees = {ns.against: other, "this tree": REPO}
        for tree in trees.values():
            prepare(tree)
            timed(tree)  # a first run warms the page cache
        runs: dict[str, list[list[float]]] = {name: [] for name in trees}
        for _ in range(ns.runs):
            for name, tree in trees.items():
                runs[name].append(timed(tree))
        print_wall(runs)
    print()
    startup = {name for _, _, name in importtime(REPO, "pass")}  # the interpreter's own
    for phase, code in PHASES.items():
        rows = [r for r in importtime(REPO, code) if r[2] not in startup]
        total_us = sum(self_us for self_us, _, _ in rows)
        print(
            f"{phase:<8} {len(rows):4d} modules, {total_us / 1000:7.1f} ms importing "
            f"(about {total_us * 15 / 1e6:4.1f} s under TCG), this tree, -X importtime"
        )
        for self_us, _, name in sorted(rows, reverse=True)[: ns.top]:
            print(f"    {self_us / 1000:6.1f} ms  {name}")


if __name__ == "__main__":
    main()
