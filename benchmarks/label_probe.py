"""Label probing: how fast hooks.storage.labels reads superblocks, and who else sees labels.

Makes small real filesystems with mkfs on image files (ext4, btrfs, xfs,
vfat), then prints:
1. the time hooks.storage.labels.probe_all takes per image (one 68 KiB read and
   the parsing), against `blkid -p` run as a command on the same image;
2. with root and losetup (and no udevd running, as in the initrd), what
   lsblk, pyudev and blkid report for the same images attached as loop
   devices: the evidence for docs/storage.md that only a superblock
   reader (blkid, or hooks.storage.labels) sees labels without udev.

Run: .venv/bin/python benchmarks/label_probe.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hooks.storage.labels import PROBE_BYTES, probe_all  # noqa: E402

IMAGES = (
    ("ext4", ["mkfs.ext4", "-q", "-F", "-L", "buildos.state"], 64),
    ("btrfs", ["mkfs.btrfs", "-q", "-f", "-L", "buildos.machines"], 128),
    ("xfs", ["mkfs.xfs", "-q", "-f", "-L", "scratch"], 320),
    ("vfat", ["mkfs.vfat", "-n", "ESP"], 64),
)
ROUNDS = 200


def make_images(folder: str) -> list[tuple[str, str]]:
    made = []
    for name, argv, mib in IMAGES:
        if shutil.which(argv[0]) is None:
            print(f"({argv[0]} not installed: no {name} image)")
            continue
        path = os.path.join(folder, f"{name}.img")
        with open(path, "wb") as f:
            f.truncate(mib << 20)
        subprocess.run([*argv, path], check=True, capture_output=True)
        made.append((name, path))
    return made


def time_probes(images: list[tuple[str, str]]) -> None:
    print(f"{'image':8} {'hooks.storage.labels':>16} {'blkid -p':>12}  result")
    for name, path in images:

        def read(offset: int, size: int, path: str = path) -> bytes:
            with open(path, "rb", buffering=0) as f:
                f.seek(offset)
                return f.read(size)

        start = time.perf_counter()
        for _ in range(ROUNDS):
            found = probe_all(read)
        ours = (time.perf_counter() - start) / ROUNDS
        start = time.perf_counter()
        for _ in range(20):
            subprocess.run(["blkid", "-p", path], capture_output=True)
        theirs = (time.perf_counter() - start) / 20
        result = ", ".join(f"{s.fstype} {s.label!r}" for s in found)
        print(f"{name:8} {ours * 1e6:13.0f} us {theirs * 1e3:9.1f} ms  {result}")
    print(
        f"(hooks.storage.labels: {ROUNDS} rounds, one {PROBE_BYTES}-byte read each, "
        "page cache warm)"
    )


def evidence(images: list[tuple[str, str]]) -> None:
    if os.getuid() != 0 or shutil.which("losetup") is None:
        print("\n(evidence skipped: needs root and losetup)")
        return
    udevd = os.path.exists("/run/udev/control")
    print(f"\nWho sees the labels on loop devices (udevd running: {udevd}):")
    loops = []
    try:
        for name, path in images:
            dev = subprocess.run(
                ["losetup", "-f", "--show", "-r", path], check=True, capture_output=True, text=True
            ).stdout.strip()
            loops.append((name, dev))
        print(
            f"{'device':12} {'lsblk LABEL':14} {'pyudev ID_FS_LABEL':20} {'blkid LABEL':18} "
            "hooks.storage.labels"
        )
        try:
            import pyudev

            context = pyudev.Context()
        except Exception as exc:  # libudev missing
            context = None
            print(f"(pyudev unavailable: {exc})")
        for _name, dev in loops:
            lsblk = subprocess.run(
                ["lsblk", "-n", "-o", "LABEL", dev], capture_output=True, text=True
            ).stdout.strip()
            udev = ""
            if context is not None:
                udev = pyudev.Devices.from_device_file(context, dev).properties.get(
                    "ID_FS_LABEL", ""
                )
            blkid = subprocess.run(
                ["blkid", "-o", "value", "-s", "LABEL", dev], capture_output=True, text=True
            ).stdout.strip()

            def read(offset: int, size: int, dev: str = dev) -> bytes:
                with open(dev, "rb", buffering=0) as f:
                    f.seek(offset)
                    return f.read(size)

            ours = ", ".join(s.label for s in probe_all(read))
            print(
                f"{dev:12} {lsblk or '(none)':14} {udev or '(none)':20} "
                f"{blkid or '(none)':18} {ours}"
            )
    finally:
        for _name, dev in loops:
            subprocess.run(["losetup", "-d", dev], capture_output=True)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="initpy-labels-") as folder:
        images = make_images(folder)
        time_probes(images)
        evidence(images)


if __name__ == "__main__":
    main()
