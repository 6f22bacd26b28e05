"""What a booted full image holds in RAM, read over SSH, and the comparison's arithmetic.

For benchmarks/full_image.py (issue 21). Nothing here depends on how the OS
is packed (a tree unpacked into the initramfs, a squashfs image, an
overlay): the figures come from the kernel's own accounts:

- /proc/meminfo: MemTotal - MemAvailable (what the OS keeps), Shmem (tmpfs
  and the initramfs's tmpfs root), the file cache (Cached - Shmem), anon,
  slab;
- statfs of / and /usr, and every memory-backed mount (tmpfs, ramfs,
  rootfs): what the unpacked tree and the rest of tmpfs use;
- systemd's cgroups (/sys/fs/cgroup): memory.current of init.scope, the
  slices and each service, with anon/file/shmem from memory.stat;
- the kernel log: whether the initrd's memory was freed, and how much.

`snapshot_commands()` is what the guest runs (one SSH session, sections by
name), `parse_snapshot()` reads it back, `median`/`relative` are the
comparison's arithmetic.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

MB = 1e6
# Memory-backed file systems: their pages are RAM, never written back.
MEMORY_FS = ("tmpfs", "ramfs", "rootfs")
# The cgroups printed beside the total: systemd's own and the top slices.
TOP_CGROUPS = ("init.scope", "system.slice", "user.slice")

# A subshell: its `cd` and its failure stay its own (the sections share one shell).
CGROUP_SCRIPT = r"""(
cd /sys/fs/cgroup || exit 0
for d in init.scope system.slice user.slice system.slice/*/; do
  d=${d%/}
  [ -f "$d/memory.current" ] || continue
  printf '%s %s %s\n' "$d" "$(cat "$d/memory.current")" \
    "$(awk '$1 == "anon" || $1 == "file" || $1 == "shmem" {printf "%s=%s ", $1, $2}' \
       "$d/memory.stat")"
done
)"""


def snapshot_commands(tree_detail: bool = False) -> dict[str, str]:
    """The guest's commands, by section name; `tree_detail` adds du of the tree."""
    commands = {
        "meminfo": "cat /proc/meminfo",
        "statfs": "stat -f -c '%n %T %S %b %f' / /usr",
        "mountpoint": "stat -c '%n %m' / /usr",
        # Each file system's type, use in KiB and target, once (df without -a skips
        # bind mounts and the initramfs's rootfs, which statfs of / counts).
        "mounts": "df -k --output=fstype,used,target 2>/dev/null | tail -n +2",
        "cgroups": CGROUP_SCRIPT,
        "kernel_log": "dmesg | grep -E 'Freeing initrd memory|Memory: [0-9]+K/' || true",
        "modules": "awk '{n++; s += $2} END {print n + 0, s + 0}' /proc/modules",
    }
    if tree_detail:
        # The tree's biggest folders, one file system at a time (a squashfs /usr is
        # its own), each folder once.
        commands["tree"] = "du -xk -d3 / /usr 2>/dev/null | sort -rn | awk '!seen[$2]++' | head -40"
    return commands


@dataclass(frozen=True)
class Cgroup:
    name: str
    current: int  # bytes
    anon: int
    file: int
    shmem: int


@dataclass(frozen=True)
class Mount:
    target: str
    fstype: str
    used: int  # bytes


@dataclass(frozen=True)
class RamSnapshot:
    """One reading of the guest's memory; every size in bytes."""

    meminfo: dict[str, int]
    root: Mount
    usr: Mount | None  # None: /usr is on the root file system
    memory_mounts: tuple[Mount, ...]
    cgroups: tuple[Cgroup, ...]
    initrd_freed: int | None  # None: the kernel log has no "Freeing initrd memory"
    modules: tuple[int, int]  # loaded modules, their bytes
    tree: tuple[tuple[int, str], ...] = field(default=())

    @property
    def used(self) -> int:
        """MemTotal - MemAvailable: what the OS keeps from the build machines."""
        return self.meminfo["MemTotal"] - self.meminfo["MemAvailable"]

    @property
    def file_cache(self) -> int:
        """The page cache of files on disks or images (Cached less Shmem)."""
        return self.meminfo["Cached"] - self.meminfo["Shmem"]

    @property
    def os_tree(self) -> int:
        """The OS's own files: / and a separate /usr as statfs counts them."""
        return self.root.used + (self.usr.used if self.usr else 0)

    @property
    def other_tmpfs(self) -> int:
        """Memory-backed mounts other than / (/run, /dev/shm, /build/tftp, ...)."""
        return sum(m.used for m in self.memory_mounts if m.target != "/")

    def cgroup(self, name: str) -> Cgroup | None:
        return next((c for c in self.cgroups if c.name == name), None)

    def services(self) -> list[Cgroup]:
        """The system.slice's children, largest first."""
        found = [c for c in self.cgroups if c.name.startswith("system.slice/")]
        return sorted(found, key=lambda c: c.current, reverse=True)


class SnapshotError(ValueError):
    """The guest's output lacks something the snapshot needs."""


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo in bytes (its kB are KiB)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"(\w+(?:\(\w+\))?):\s+(\d+)(?: kB)?$", line.strip())
        if m:
            values[m.group(1)] = int(m.group(2)) * (1024 if line.rstrip().endswith("kB") else 1)
    missing = [k for k in ("MemTotal", "MemAvailable", "Cached", "Shmem") if k not in values]
    if missing:
        raise SnapshotError(f"/proc/meminfo lacks {', '.join(missing)}: {text[:200]!r}")
    return values


def parse_statfs(text: str, mountpoints: str) -> tuple[Mount, Mount | None]:
    """`stat -f` lines of / and /usr, and `stat -c '%n %m'`: the root and a separate /usr."""
    found: dict[str, Mount] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 5:
            continue
        path, fstype, bsize, blocks, free = parts
        found[path] = Mount(path, fstype, (int(blocks) - int(free)) * int(bsize))
    if "/" not in found:
        raise SnapshotError(f"no statfs of /: {text!r}")
    mounted_at = dict(line.split() for line in mountpoints.splitlines() if len(line.split()) == 2)
    separate = mounted_at.get("/usr") == "/usr" and "/usr" in found
    return found["/"], found["/usr"] if separate else None


def parse_mounts(text: str) -> tuple[Mount, ...]:
    """`df -k --output=fstype,used,target` rows on memory-backed file systems."""
    mounts = []
    for line in text.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0] in MEMORY_FS and parts[1].isdigit():
            mounts.append(Mount(parts[2], parts[0], int(parts[1]) * 1024))
    return tuple(mounts)


def parse_cgroups(text: str) -> tuple[Cgroup, ...]:
    """CGROUP_SCRIPT's lines: `NAME CURRENT anon=N file=N shmem=N`."""
    groups = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            continue
        stat = dict(p.split("=", 1) for p in parts[2:] if "=" in p)
        groups.append(
            Cgroup(
                parts[0],
                int(parts[1]),
                int(stat.get("anon", 0)),
                int(stat.get("file", 0)),
                int(stat.get("shmem", 0)),
            )
        )
    return tuple(groups)


def parse_initrd_freed(text: str) -> int | None:
    m = re.search(r"Freeing initrd memory: (\d+)K", text)
    return int(m.group(1)) * 1024 if m else None


def parse_tree(text: str) -> tuple[tuple[int, str], ...]:
    rows = (line.split(None, 1) for line in text.splitlines())
    return tuple((int(r[0]) * 1024, r[1]) for r in rows if len(r) == 2 and r[0].isdigit())


def parse_snapshot(sections: Mapping[str, str]) -> RamSnapshot:
    """A snapshot from the outputs of snapshot_commands(), by section name."""
    root, usr = parse_statfs(sections["statfs"], sections["mountpoint"])
    count, size = (int(v) for v in (sections["modules"].split() or ["0", "0"])[:2])
    return RamSnapshot(
        meminfo=parse_meminfo(sections["meminfo"]),
        root=root,
        usr=usr,
        memory_mounts=parse_mounts(sections["mounts"]),
        cgroups=parse_cgroups(sections["cgroups"]),
        initrd_freed=parse_initrd_freed(sections["kernel_log"]),
        modules=(count, size),
        tree=parse_tree(sections.get("tree", "")),
    )


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that were measured; None when none was."""
    seen = [v for v in values if v is not None]
    return statistics.median(seen) if seen else None


def relative(after: float | None, before: float | None) -> float | None:
    """(after - before) / before: -0.30 is 30% lower; None when either is missing or 0."""
    if after is None or before is None or before == 0:
        return None
    return (after - before) / before
