"""tests/harness/guest_ram.py: reading the guest's memory, and the comparison's arithmetic.

The inputs are what a booted full image printed (trimmed); the benchmark
that boots it is benchmarks/full_image.py.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.harness.fullos import read_sections, sections_script
from tests.harness.guest_ram import (
    Cgroup,
    Mount,
    SnapshotError,
    median,
    parse_snapshot,
    relative,
    snapshot_commands,
)

KIB = 1024
MEMINFO = """\
MemTotal:        2011352 kB
MemFree:          900000 kB
MemAvailable:     950000 kB
Buffers:            2000 kB
Cached:           700000 kB
Shmem:            600000 kB
Active(anon):      10000 kB
AnonPages:        120000 kB
Slab:              50000 kB
HugePages_Total:       0
"""
SECTIONS = {
    "meminfo": MEMINFO,
    "statfs": "/ tmpfs 4096 250000 100000\n/usr tmpfs 4096 250000 100000\n",
    "mountpoint": "/ /\n/usr /\n",
    "mounts": (
        "devtmpfs        0 /dev\n"
        "tmpfs        1024 /dev/shm\n"
        "tmpfs        2048 /run\n"
        "ext4       123456 /state\n"
        "tmpfs          16 /build/tftp\n"
    ),
    "cgroups": (
        "init.scope 9000000 anon=5000000 file=4000000 shmem=0 \n"
        "system.slice 80000000 anon=60000000 file=20000000 shmem=1000 \n"
        "user.slice 0 anon=0 file=0 shmem=0 \n"
        "system.slice/ssh.service 3000000 anon=2000000 file=1000000 shmem=0 \n"
        "system.slice/postfix@-.service 12000000 anon=9000000 file=3000000 shmem=0 \n"
    ),
    "kernel_log": (
        "[    0.138392] Memory: 260860K/2096608K available (14343K kernel code)\n"
        "[    8.916500] Freeing initrd memory: 173868K\n"
    ),
    "modules": "35 4400000\n",
}


def test_a_snapshot_gives_the_used_ram_the_tree_the_caches_and_the_services() -> None:
    snap = parse_snapshot(SECTIONS)
    assert snap.used == (2011352 - 950000) * KIB
    assert snap.meminfo["AnonPages"] == 120000 * KIB
    assert snap.meminfo["HugePages_Total"] == 0  # a count, not KiB
    assert snap.file_cache == (700000 - 600000) * KIB
    # /usr on the root file system: counted once.
    assert snap.usr is None
    assert snap.os_tree == snap.root.used == 150000 * 4096
    assert snap.root == Mount("/", "tmpfs", 150000 * 4096)
    assert snap.other_tmpfs == (1024 + 2048 + 16) * KIB
    assert snap.initrd_freed == 173868 * KIB
    assert snap.modules == (35, 4400000)
    assert snap.cgroup("system.slice") == Cgroup("system.slice", 80000000, 60000000, 20000000, 1000)
    assert [c.name for c in snap.services()] == [
        "system.slice/postfix@-.service",
        "system.slice/ssh.service",
    ]
    assert snap.tree == ()


def test_a_separate_usr_counts_in_the_os_tree_and_no_log_line_means_not_freed() -> None:
    sections = dict(
        SECTIONS,
        statfs="/ tmpfs 4096 1000 900\n/usr squashfs 1024 300000 0\n",
        mountpoint="/ /\n/usr /usr\n",
        kernel_log="[    0.1] Memory: 260860K/2096608K available\n",
        tree="460000\t/usr\n90000\t/usr/lib/modules\n",
    )
    snap = parse_snapshot(sections)
    assert snap.usr == Mount("/usr", "squashfs", 300000 * 1024)
    assert snap.os_tree == 100 * 4096 + 300000 * 1024
    assert snap.initrd_freed is None
    assert snap.tree == ((460000 * KIB, "/usr"), (90000 * KIB, "/usr/lib/modules"))


def test_a_meminfo_without_memavailable_is_refused_by_name() -> None:
    sections = dict(SECTIONS, meminfo="MemTotal: 1 kB\nCached: 1 kB\nShmem: 1 kB\n")
    with pytest.raises(SnapshotError, match="MemAvailable"):
        parse_snapshot(sections)


def test_no_statfs_of_the_root_is_refused() -> None:
    with pytest.raises(SnapshotError, match="statfs of /"):
        parse_snapshot(dict(SECTIONS, statfs="stat: cannot read file system information\n"))


def test_every_command_the_parser_reads_is_asked_for() -> None:
    assert set(snapshot_commands()) == set(SECTIONS)
    assert set(snapshot_commands(tree_detail=True)) == set(SECTIONS) | {"tree"}


def test_the_comparison_is_the_median_and_the_relative_change() -> None:
    assert median([3.0, None, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0]) == 2.5
    assert median([None]) is None
    assert relative(70.0, 100.0) == pytest.approx(-0.30)
    assert relative(130.0, 100.0) == pytest.approx(0.30)
    assert relative(None, 100.0) is None
    assert relative(1.0, 0.0) is None


def test_the_commands_run_as_one_shell_script_and_every_section_comes_back() -> None:
    # The harness runs them as Ssh.sections does, in one `sh -s`: one command
    # that ends the shell or breaks its syntax would lose every later section.
    commands = snapshot_commands(tree_detail=True)
    commands["tree"] = commands["tree"].replace("/ /usr", "/proc/self/fdinfo")
    done = subprocess.run(
        ["sh", "-s"], input=sections_script(commands), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    found = read_sections(commands, done.stdout)
    assert set(found) == set(commands)
    assert "MemTotal:" in found["meminfo"]
    assert found["statfs"].startswith("/ ")
