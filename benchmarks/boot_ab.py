#!/usr/bin/env python3
"""Two initpy initrds, booted in turns: where a change moved the boot's time.

    .venv/bin/python benchmarks/boot_ab.py --before OUTDIR --after OUTDIR
                                           [--runs N] [--shared]

OUTDIR is an mkinitrd output folder built with the VM tests' guest program
(as benchmarks/boot_time.py builds one: `--include GUEST:/usr/local/bin/initpy-guest`,
e.g. from a `git archive` tree of the commit to compare). Each round boots both, with
the whole-boot arguments of boot_time.py (fresh disks each boot), so that
both see the same load on the host; which goes first alternates. It prints, per
boot and as medians of the rounds, on the kernel's clock (seconds):

- to /init ("Run /init"), /init -> first `initpy:` line, first line ->
  first state (the hooks, the registry and the state machine: report.json's
  first start_ms), the states' own time, the gaps between states (the
  driver's per-state work: report, console, reaping, the machine), the last
  state -> hand-off, and kernel start -> hand-off;

then the per-round differences (after - before) and each state's median.
By default it holds both VM slots while it boots (as boot_time.py); --shared
takes one.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import boot_time  # noqa: E402

from tests.harness import qemu  # noqa: E402
from tests.harness.guest_output import read_sections, report  # noqa: E402
from tests.harness.scenario import GUEST_PATH, full_boot_args  # noqa: E402

COLUMNS = (
    "to_init",
    "init_to_first",
    "first_to_state",
    "states",
    "gaps",
    "last_to_handoff",
    "to_handoff",
)


Figures = dict[str, float | None]


def boot(vmlinuz: Path, initrd: Path, work: Path, name: str) -> tuple[Figures, dict[str, int]]:
    args = full_boot_args(work, GUEST_PATH)
    with qemu.boot(vmlinuz, initrd, args.plus(["quiet", "printk.devkmsg=on"]), name=name) as vm:
        vm.expect("initpy: handoff: exec", boot_time.BOOT_TIMEOUT, fail_on=r"initpy: rescue: .*")
        sections = read_sections(vm, boot_time.BOOT_TIMEOUT)
        vm.wait_exit(60)
    to_init, to_first, to_handoff = boot_time.kernel_times(
        sections["kmsg"], "initpy:", "initpy: handoff: exec"
    )
    states = report(sections, vm)["states"]
    ends = [(s["start_ms"] + s["duration_ms"]) / 1000 for s in states]
    starts = [s["start_ms"] / 1000 for s in states]
    figures: Figures = {
        "to_init": to_init,
        "init_to_first": to_first - to_init if to_first and to_init else None,
        "first_to_state": starts[0] - to_first if to_first else None,
        "states": sum(s["duration_ms"] for s in states) / 1000,
        "gaps": sum(b - a for a, b in zip(ends, starts[1:], strict=False)),
        "last_to_handoff": to_handoff - ends[-1] if to_handoff else None,
        "to_handoff": to_handoff,
    }
    return figures, {s["name"]: s["duration_ms"] for s in states}


def cell(value: float | None) -> str:
    return f"{value:8.2f}" if value is not None else "       -"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", type=Path, required=True, help="mkinitrd OUTDIR")
    parser.add_argument("--after", type=Path, required=True, help="mkinitrd OUTDIR")
    parser.add_argument("--runs", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--shared", action="store_true", help="take one VM slot, not both")
    ns = parser.parse_args()
    vmlinuz, _ = boot_time.kernel_files()
    kinds = {"before": ns.before / "buildos-initrd", "after": ns.after / "buildos-initrd"}
    for kind, initrd in kinds.items():
        print(f"{kind}: {initrd} ({initrd.stat().st_size / 1e6:.2f} MB)")
    boots: dict[str, list[Figures]] = {k: [] for k in kinds}
    per_state: dict[str, list[dict[str, int]]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="initpy-ab-") as tmp:
        with contextlib.nullcontext() if ns.shared else boot_time.holding_both_slots():
            for i in range(ns.runs):
                # Which goes first alternates: the second boot of a round
                # was slower in parts no initrd change touches (to /init).
                order = list(kinds.items())
                for kind, initrd in order if i % 2 == 0 else order[::-1]:
                    work = Path(tmp) / f"{kind}{i}"
                    work.mkdir()
                    figures, states = boot(vmlinuz, initrd, work, f"ab-{kind}-{i}")
                    boots[kind].append(figures)
                    per_state[kind].append(states)
                    print(f"{kind} #{i + 1}: " + " ".join(cell(figures[c]) for c in COLUMNS))
    print()
    print(f"{'seconds':<16}" + "".join(f"{c[:15]:>16}" for c in COLUMNS))
    for kind, runs in boots.items():
        medians: list[float | None] = []
        for c in COLUMNS:
            known = [v for r in runs if (v := r[c]) is not None]
            medians.append(statistics.median(known) if known else None)
        print(f"{kind + ' median':<16}" + "".join(f"{cell(m):>16}" for m in medians))
    diffs: list[float | None] = []
    for c in COLUMNS:
        pairs = [
            x - y
            for a, b in zip(boots["after"], boots["before"], strict=True)
            if (x := a[c]) is not None and (y := b[c]) is not None
        ]
        diffs.append(statistics.median(pairs) if pairs else None)
    print(f"{'after-before':<16}" + "".join(f"{cell(d):>16}" for d in diffs))
    print("\nper state, ms, median (before -> after):")
    for name in per_state["before"][0]:
        line = []
        for kind in kinds:
            known = [v for r in per_state[kind] if (v := r.get(name)) is not None]
            line.append(f"{statistics.median(known):7.0f}" if known else "      -")
        print(f"  {name:<16}{line[0]} -> {line[1]}")


if __name__ == "__main__":
    main()
