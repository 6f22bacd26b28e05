"""The real kernel seam, on this machine, as root: mounts, device nodes, sysctl.

The unit tests replace the seam; these check that the real one does what
the fake one pretends: a mount shows in /proc/self/mounts and goes away
again, a device node is a character device with the right numbers, and
the kernel-log rate limit can be lifted and put back as early_mounts does.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from initpy.runtime.kernel import Kernel, KernelError

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.getuid() != 0, reason="needs root (mount, mknod)"),
]


def mounted(target: str) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


def test_mount_and_umount_a_tmpfs(tmp_path: Path) -> None:
    k = Kernel()
    target = str(tmp_path / "run")
    k.mkdir(target)
    k.mount("tmpfs", target, "tmpfs", 2 | 4, "mode=0755,size=1m")
    try:
        assert mounted(target)
        k.write_atomic(f"{target}/report.json", b"{}\n")
        assert (tmp_path / "run" / "report.json").read_bytes() == b"{}\n"
    finally:
        k.umount(target)
    assert not mounted(target)
    assert not (tmp_path / "run" / "report.json").exists()


def test_a_failed_mount_names_the_call(tmp_path: Path) -> None:
    k = Kernel()
    with pytest.raises(KernelError) as failed:
        k.mount("/dev/nonexistent", str(tmp_path), "ext4")
    assert failed.value.errno in (errno.ENOENT, errno.ENOTBLK, errno.ENODEV)
    assert f"mount -t ext4 /dev/nonexistent {tmp_path}" in str(failed.value)


def test_mknod_makes_the_console_node(tmp_path: Path) -> None:
    k = Kernel()
    node = str(tmp_path / "console")
    k.mknod(node, stat.S_IFCHR | 0o600, 5, 1)
    info = os.stat(node)
    assert stat.S_ISCHR(info.st_mode)
    assert (os.major(info.st_rdev), os.minor(info.st_rdev)) == (5, 1)


def test_kmsg_rate_limit_can_be_lifted_and_restored() -> None:
    k = Kernel()
    path = "/proc/sys/kernel/printk_devkmsg"
    if not os.path.exists(path):
        pytest.skip("this kernel has no printk_devkmsg")
    found = k.read_text(path).strip()
    try:
        k.write_text(path, "on\n")
        assert k.read_text(path).strip() == "on"
        k.kmsg("initpy: root test line")  # must not raise, whatever the level
    finally:
        k.write_text(path, found + "\n")
    assert k.read_text(path).strip() == found


def test_write_atomic_on_a_really_full_filesystem_leaves_no_temporary(tmp_path: Path) -> None:
    """Issue 9, finding 5, on a real ENOSPC: a 64 KiB tmpfs and a 1 MiB write."""
    k = Kernel()
    target = str(tmp_path / "state")
    k.mkdir(target)
    k.mount("tmpfs", target, "tmpfs", 2 | 4, "mode=0700,size=64k")
    try:
        seed = f"{target}/random-seed"
        k.write_atomic(seed, b"old seed", 0o600)
        with pytest.raises(OSError) as full:
            k.write_atomic(seed, b"x" * (1 << 20), 0o600)
        assert full.value.errno == errno.ENOSPC
        assert os.listdir(target) == ["random-seed"]
        assert (tmp_path / "state" / "random-seed").read_bytes() == b"old seed"
    finally:
        k.umount(target)
