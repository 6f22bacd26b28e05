"""pyudev and blkinfo against initpy's own uevent socket and sysfs walk.

Issue 8 asks whether the user's packages can do a boot job without udevd:
pyudev's kernel-source monitor and sysfs enumeration could replace
hooks/storage/blockdev.py's NETLINK_KOBJECT_UEVENT socket and /sys walk,
and blkinfo could list the disks. This prints, on this machine (no udevd):

1. the native import time of each, in a fresh interpreter, against the
   modules initpy's own code needs (under TCG multiply by about 15);
2. what each adds to the initrd (libudev.so.1 and the packages' files);
3. whether they work without udevd: pyudev's enumeration of block devices
   and its kernel-source monitor (a loop device is attached and must be
   seen), and what blkinfo reports for a labelled loop device.

Run as root: .venv/bin/python benchmarks/udev_libs.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

ROUNDS = 7
LIBUDEV = "/usr/lib/x86_64-linux-gnu/libudev.so.1"


def import_time(statement: str) -> float:
    """Median seconds for `statement` in a fresh interpreter (site and the venv loaded)."""
    times = []
    for _ in range(ROUNDS):
        script = (
            f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
        )
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout
        times.append(float(out))
    return statistics.median(times)


def package_bytes(name: str) -> int:
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return 0
    total = 0
    for folder in spec.submodule_search_locations:
        for top, _dirs, files in os.walk(folder):
            total += sum(os.path.getsize(os.path.join(top, f)) for f in files if f.endswith(".py"))
    return total


def main() -> None:
    udevd = os.path.exists("/run/udev/control")
    print(f"udevd running: {udevd}\n")
    print("1. native import time (median of fresh interpreters; TCG is about 15x)")
    for what, statement in (
        ("initpy's socket + sysfs walk (socket, select)", "import socket, select"),
        ("pyudev", "import pyudev"),
        ("pyudev + Context()", "import pyudev; pyudev.Context()"),
        ("blkinfo", "import blkinfo"),
    ):
        print(f"   {what:48} {import_time(statement) * 1000:7.1f} ms")
    print("\n2. what each would add to the initrd (uncompressed)")
    lib = os.path.getsize(os.path.realpath(LIBUDEV)) if os.path.exists(LIBUDEV) else 0
    print(
        f"   libudev.so.1 {lib / 1024:.0f} KiB + pyudev {package_bytes('pyudev') / 1024:.0f} KiB"
        " of Python"
    )
    print(
        f"   blkinfo {package_bytes('blkinfo') / 1024:.0f} KiB of Python + lsblk and its "
        "libraries (libsmartcols, libmount, libblkid)"
    )
    if os.getuid() != 0:
        print("\n(3. skipped: needs root for loop devices)")
        return
    print("\n3. without udevd")
    import pyudev

    context = pyudev.Context()
    block = [d.sys_name for d in context.list_devices(subsystem="block")]
    print(f"   pyudev enumeration of block devices: {len(block)} found ({', '.join(block[:6])})")
    monitor = pyudev.Monitor.from_netlink(context, source="kernel")
    monitor.filter_by("block")
    monitor.start()
    with tempfile.TemporaryDirectory() as folder:
        image = os.path.join(folder, "state.img")
        with open(image, "wb") as f:
            f.truncate(64 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "buildos.state", image], check=True)
        start = time.monotonic()
        loop = subprocess.run(
            ["losetup", "-f", "--show", image], check=True, capture_output=True, text=True
        ).stdout.strip()
        try:
            seen = None
            while time.monotonic() - start < 5:
                device = monitor.poll(timeout=1)
                if device is not None and device.device_node == loop:
                    seen = device
                    break
            if seen is not None:
                print(
                    f"   pyudev kernel monitor: saw {seen.action} {seen.device_node} after "
                    f"{(time.monotonic() - start) * 1000:.0f} ms; ID_FS_LABEL="
                    f"{seen.properties.get('ID_FS_LABEL', '(none)')}"
                )
            else:
                print("   pyudev kernel monitor: saw nothing within 5 s")
            from blkinfo import BlkDiskInfo

            # blkinfo lists whole disks only (not loop devices): its view of
            # this machine's disks, against blkid's reading of the superblock.
            for disk in BlkDiskInfo().get_disks():
                node = f"/dev/{disk.get('name')}"
                blkid = subprocess.run(
                    ["blkid", "-p", "-o", "value", "-s", "TYPE", node],
                    capture_output=True,
                    text=True,
                ).stdout.strip()
                print(
                    f"   blkinfo (lsblk) {node}: fstype={disk.get('fstype') or '(none)'} "
                    f"label={disk.get('label') or '(none)'}; blkid -p TYPE={blkid or '(none)'}"
                )
        finally:
            subprocess.run(["losetup", "-d", loop], capture_output=True)


if __name__ == "__main__":
    main()
