#!/usr/bin/env python3
"""The OS image's compressor and block size: served size, RAM and boot time.

    .venv/bin/python benchmarks/os_image.py [--runs N] [--variants none,zstd:19@1M,...]

Each variant is one `mkinitrd --rootfs` build of the cached OS tree
(scripts/mkrootfs) with the cloud kernel: `none` unpacks the tree into the
initramfs (the design before the image); `METHOD[:LEVEL]@BLOCK` packs its
/usr into the squashfs (initpy.builder.os_image) with that compressor and
block size (128K or 1M). Printed per variant:

- the initrd as mkinitrd wrote it, and as pxe-layout serves it (every part
  but the image recompressed with zstd -19: `pxe.for_tftp`);
- per boot under TCG (the VM tests' arguments, tests/harness/fullos.py),
  the variants alternating within each round: the hand-off and
  multi-user.target on the guest's clock, and over SSH once the host is up
  the RAM the OS holds (MemTotal - MemAvailable), Shmem, and what the
  initramfs (rootfs, `/`) holds.

The squashfs images are cached by content (~/.cache/initpy/os-image), so
a second run builds in seconds; a first build at zstd:19 or xz takes
minutes per variant.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from full_os import kernel_files  # noqa: E402  (this folder is on the path)

from initpy.builder import mkinitrd, os_image, pxe  # noqa: E402
from initpy.builder.options import parse_compression, parse_image_compression  # noqa: E402
from tests.harness.fullos import TEST_COMPRESS, boot_full, build_tree  # noqa: E402
from tests.harness.guest_ram import parse_meminfo  # noqa: E402
from tests.harness.images import InitrdFiles  # noqa: E402

BLOCKS = {"128K": 128 << 10, "1M": 1 << 20}
# What the booted host holds: the kernel's view of RAM, and the initramfs's use.
MEMORY = {"meminfo": "cat /proc/meminfo", "rootfs": "df -k --output=used / | tail -1"}
MIB = 1 << 20


@dataclass(frozen=True)
class Boot:
    handoff_s: float
    multi_user_s: float
    used_mb: float  # MemTotal - MemAvailable
    shmem_mb: float
    rootfs_mb: float


def build(variant: str, vmlinuz: Path, modules: Path, tree: Path, out: Path) -> Path:
    method, _, block = variant.partition("@")
    compress, level = parse_compression(TEST_COMPRESS)
    image, image_level = parse_image_compression(method)
    if block:
        # The block size is a constant of the builder (docs/os.md says why);
        # the benchmark alone tries the others.
        os_image.BLOCK_SIZE = BLOCKS[block]
    options = mkinitrd.Options(
        kernel=str(vmlinuz),
        modules=str(modules),
        outdir=str(out),
        rootfs=str(tree),
        compress=compress,
        compress_level=level,
        os_image=image,
        os_image_level=image_level,
    )
    mkinitrd.build(options)
    return out


def boot_once(out: Path, workdir: Path, name: str) -> Boot:
    files = InitrdFiles(out, out / "buildos-image", out / "buildos-initrd", out / "buildos-buildid")
    host = boot_full(files, workdir, name)
    try:
        found = host.sections(MEMORY)
    finally:
        host.close()
    mem = parse_meminfo(found["meminfo"])
    return Boot(
        int(host.ready.group(3)) / 1000,
        int(host.ready.group(2)) / 1000,
        (mem["MemTotal"] - mem["MemAvailable"]) / MIB,
        mem["Shmem"] / MIB,
        int(found["rootfs"].strip()) / 1024,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--variants", default="none,zstd:19@1M,xz@1M,zstd:19@128K")
    parser.add_argument("--no-boot", action="store_true")
    ns = parser.parse_args()
    vmlinuz, modules = kernel_files()
    tree = build_tree()
    variants = ns.variants.split(",")
    with tempfile.TemporaryDirectory(prefix="initpy-osimage-", dir=os.environ.get("TMPDIR")) as tmp:
        built: dict[str, Path] = {}
        for variant in variants:
            out = build(variant, vmlinuz, modules, tree, Path(tmp) / variant.replace(":", "-"))
            initrd = out / "buildos-initrd"
            served = pxe.for_tftp(str(initrd))
            served_size = len(served) if served is not None else initrd.stat().st_size
            print(
                f"{variant:>14}: initrd {initrd.stat().st_size / 1e6:6.1f} MB "
                f"({TEST_COMPRESS} around the image), served {served_size / 1e6:6.1f} MB",
                flush=True,
            )
            built[variant] = out
        if ns.no_boot:
            return
        boots: dict[str, list[Boot]] = {v: [] for v in variants}
        for run in range(ns.runs):
            for variant in variants:
                work = Path(tmp) / f"boot-{run}-{variant.replace(':', '-')}"
                boot = boot_once(built[variant], work, f"bench-osimage-{variant}")
                boots[variant].append(boot)
                print(
                    f"{variant:>14} #{run + 1}: hand-off {boot.handoff_s:5.1f} s, multi-user "
                    f"{boot.multi_user_s:5.1f} s; RAM used {boot.used_mb:5.0f} MB, Shmem "
                    f"{boot.shmem_mb:4.0f} MB, rootfs {boot.rootfs_mb:4.0f} MB",
                    flush=True,
                )
        med = statistics.median
        print("medians:")
        for variant, found in boots.items():
            print(
                f"{variant:>14}: hand-off {med(b.handoff_s for b in found):5.1f} s, multi-user "
                f"{med(b.multi_user_s for b in found):5.1f} s, RAM used "
                f"{med(b.used_mb for b in found):5.0f} MB, rootfs "
                f"{med(b.rootfs_mb for b in found):4.0f} MB"
            )


if __name__ == "__main__":
    main()
