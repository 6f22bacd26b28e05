"""benchmarks/full_image.py's tables: per boot, the medians, the change, the breakdown.

The readings themselves and their arithmetic are tests/harness/guest_ram.py's;
this module only lays them out.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.harness.guest_ram import (  # noqa: E402
    MB,
    TOP_CGROUPS,
    RamSnapshot,
    median,
    relative,
)


@dataclass(frozen=True)
class Image:
    label: str
    initrd: int  # bytes, as built
    served: int  # bytes, as scripts/pxe-layout serves it
    kernel: int


@dataclass(frozen=True)
class Boot:
    label: str
    run: int
    state: str
    handoff_s: float  # guest uptime
    multi_user_s: float
    agent_s: float | None
    wall_offset_s: float | None  # QEMU's start -> the guest's clock at 0 (from the hand-off)
    up_line_wall_s: float
    up: RamSnapshot
    settled: RamSnapshot | None  # with the agent running

    def wall(self, uptime: float | None) -> float | None:
        """Seconds from QEMU's start to a moment of guest uptime."""
        if uptime is None or self.wall_offset_s is None:
            return None
        return uptime + self.wall_offset_s


LABEL = 24  # the width of a row's name
# The RAM columns: heading, the figure from a snapshot (bytes).
RAM_COLUMNS: tuple[tuple[str, Callable[[RamSnapshot], float | None]], ...] = (
    ("used", lambda s: s.used),
    ("MemTotal", lambda s: s.meminfo["MemTotal"]),
    ("OS tree", lambda s: s.os_tree),
    ("Shmem", lambda s: s.meminfo["Shmem"]),
    ("tmpfs else", lambda s: s.other_tmpfs),
    ("file cache", lambda s: s.file_cache),
    ("anon", lambda s: s.meminfo.get("AnonPages")),
    ("slab", lambda s: s.meminfo.get("Slab")),
    ("services", lambda s: _current(s, "system.slice")),
    ("initrd freed", lambda s: s.initrd_freed),
)
# The times: heading, the figure from a boot (seconds).
TIME_COLUMNS: tuple[tuple[str, Callable[[Boot], float | None]], ...] = (
    ("hand-off", lambda b: b.handoff_s),
    ("multi-user", lambda b: b.multi_user_s),
    ("agent", lambda b: b.agent_s),
    ("| wall: hand-off", lambda b: b.wall(b.handoff_s)),
    ("multi-user", lambda b: b.wall(b.multi_user_s)),
    ("agent", lambda b: b.wall(b.agent_s)),
    ("up line", lambda b: b.up_line_wall_s),
)


def _current(snapshot: RamSnapshot, name: str) -> float | None:
    group = snapshot.cgroup(name)
    return group.current if group else None


def _cell(value: float | None, scale: float = 1.0, width: int = 10) -> str:
    return f"{value / scale:{width}.1f}" if value is not None else f"{'-':>{width}}"


def _change(value: float | None, width: int = 10) -> str:
    return f"{value * 100:+{width - 1}.1f}%" if value is not None else f"{'-':>{width}}"


def _table(
    title: str,
    rows: Sequence[tuple[str, Sequence[float | None]]],
    headings: Sequence[str],
    scale: float,
) -> None:
    print(title)
    widths = _widths(headings)
    print(f"  {'':{LABEL}}" + "".join(f"{h:>{w}}" for h, w in zip(headings, widths, strict=True)))
    for name, values in rows:
        print(
            f"  {name:{LABEL}}"
            + "".join(_cell(v, scale, w) for v, w in zip(values, widths, strict=True))
        )


def _widths(headings: Sequence[str]) -> list[int]:
    return [max(8, len(h) + 2) for h in headings]


def _medians(
    labels: Sequence[str], boots: Sequence[Boot], figures: Sequence[Callable[[Boot], float | None]]
) -> dict[str, list[float | None]]:
    return {
        label: [median(f(b) for b in boots if b.label == label) for f in figures]
        for label in labels
    }


def show_progress(boot: Boot) -> None:
    """One line as each boot ends: a run cut short still leaves its figures."""
    snapshot = boot.settled or boot.up
    agent = f"{boot.agent_s:.1f}" if boot.agent_s is not None else "-"
    print(
        f"  {boot.label} #{boot.run} {boot.state}: hand-off {boot.handoff_s:.1f} s, multi-user "
        f"{boot.multi_user_s:.1f} s, agent {agent} s; used {boot.up.used / MB:.1f} MB at up, "
        f"{snapshot.used / MB:.1f} MB {'with the agent' if boot.settled else 'at up'}, "
        f"OS tree {snapshot.os_tree / MB:.1f} MB",
        flush=True,
    )


def show_boots(images: Sequence[Image], boots: Sequence[Boot]) -> None:
    """Sizes, then per-boot rows, medians and the change (last image against the first)."""
    labels = [i.label for i in images]
    print("\nsize (MB): initrd as built, as served (zstd -19 for TFTP), kernel")
    for i in images:
        print(
            f"  {i.label:20} initrd {i.initrd / MB:7.1f}  served {i.served / MB:7.1f}  "
            f"kernel {i.kernel / MB:5.1f}"
        )
    if len(images) == 2:
        base, this = images
        change = _change(relative(this.served, base.served), 1).strip()
        print(f"  change of the served initrd: {change}")

    time_heads = [h for h, _ in TIME_COLUMNS]
    time_figs = [f for _, f in TIME_COLUMNS]
    _table(
        "\ntimes (s): guest uptime, then wall from QEMU's start",
        [(f"{b.label} #{b.run} {b.state}", [f(b) for f in time_figs]) for b in boots],
        time_heads,
        1.0,
    )
    _show_medians(labels, _medians(labels, boots, time_figs), time_heads, 1.0)

    points: list[tuple[str, Callable[[Boot], RamSnapshot | None]]] = [
        ("at the up line (toolchain install may run)", lambda b: b.up),
        ("with the agent running", lambda b: b.settled),
    ]
    for point, pick in points:
        if not any(pick(b) for b in boots):
            continue
        ram_heads = [h for h, _ in RAM_COLUMNS]
        ram_figs = [_of(pick, f) for _, f in RAM_COLUMNS]
        _table(
            f"\nRAM (MB) {point}: used = MemTotal - MemAvailable; OS tree = statfs of / "
            "(+ a separate /usr); services = system.slice's memory.current",
            [(f"{b.label} #{b.run}", [f(b) for f in ram_figs]) for b in boots],
            ram_heads,
            MB,
        )
        _show_medians(labels, _medians(labels, boots, ram_figs), ram_heads, MB)


def _of(
    pick: Callable[[Boot], RamSnapshot | None], figure: Callable[[RamSnapshot], float | None]
) -> Callable[[Boot], float | None]:
    def value(boot: Boot) -> float | None:
        snapshot = pick(boot)
        return figure(snapshot) if snapshot is not None else None

    return value


def _show_medians(
    labels: Sequence[str],
    medians: dict[str, list[float | None]],
    headings: Sequence[str],
    scale: float,
) -> None:
    widths = _widths(headings)
    for label in labels:
        cells = (_cell(v, scale, w) for v, w in zip(medians[label], widths, strict=True))
        print(f"  {'median ' + label:{LABEL}}" + "".join(cells))
    if len(labels) == 2:
        base, this = (medians[label] for label in labels)
        changes = [relative(t, b) for t, b in zip(this, base, strict=True)]
        cells = (_change(c, w) for c, w in zip(changes, widths, strict=True))
        print(f"  {'change, 2nd vs 1st':{LABEL}}" + "".join(cells))


def show_breakdown(labels: Sequence[str], boots: Sequence[Boot]) -> None:
    """Per image, its last boot's details: cgroups, memory-backed mounts, modules, tree."""
    for label in labels:
        mine = [b for b in boots if b.label == label]
        if not mine:
            continue
        last = mine[-1]
        snapshot = last.settled or last.up
        print(f"\nbreakdown of {label} #{last.run} ({'agent' if last.settled else 'up'}):")
        m = snapshot.meminfo
        print(
            "  meminfo (MB): "
            + ", ".join(
                f"{k} {m[k] / MB:.1f}"
                for k in (
                    "MemTotal",
                    "MemFree",
                    "MemAvailable",
                    "Buffers",
                    "Cached",
                    "Shmem",
                    "Unevictable",
                    "AnonPages",
                    "Slab",
                    "SReclaimable",
                    "KernelStack",
                    "PageTables",
                    "Percpu",
                )  # fmt: skip
                if k in m
            )
        )
        root = snapshot.root
        usr = f"; /usr {snapshot.usr.fstype} {snapshot.usr.used / MB:.1f}" if snapshot.usr else ""
        print(f"  / {root.fstype} {root.used / MB:.1f} MB{usr}")
        mounts = ", ".join(f"{x.target} {x.used / MB:.1f}" for x in snapshot.memory_mounts)
        print(f"  memory-backed mounts (MB): {mounts}")
        freed = snapshot.initrd_freed
        print(
            "  initrd: "
            + (f"{freed / MB:.1f} MB freed by the kernel" if freed else "never freed (no log line)")
        )
        count, size = snapshot.modules
        print(f"  kernel modules loaded: {count}, {size / MB:.1f} MB")
        for name in TOP_CGROUPS:
            group = snapshot.cgroup(name)
            if group:
                print(f"  {name:32} {group.current / MB:7.1f} MB (anon {group.anon / MB:.1f})")
        for group in snapshot.services()[:15]:
            print(
                f"    {group.name.removeprefix('system.slice/'):30} {group.current / MB:7.1f} MB "
                f"(anon {group.anon / MB:.1f}, file {group.file / MB:.1f}, "
                f"shmem {group.shmem / MB:.1f})"
            )
        detail = next((b.up.tree for b in mine if b.up.tree), ())
        if detail:
            print("  the tree's largest folders (MB, du -x per file system):")
            for size_b, path in detail:
                print(f"    {size_b / MB:8.1f}  {path}")
