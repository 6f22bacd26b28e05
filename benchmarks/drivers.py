#!/usr/bin/env python3
"""Drivers from the hardware against the fixed module list they replace (issue 11).

    .venv/bin/python benchmarks/drivers.py [--baseline REV] [--skip-boots]

Builds and boots, with the whole-boot VM arguments (tests/harness/scenario.py:
virtio NIC and disks), these initrds:

- `fixed list`: the tree at REV (default 63716c1, the commit before issue
  11), extracted with `git archive`: the cloud kernel and the hooks' fixed
  module list (virtio_pci, virtio_net, virtio_blk, virtio_scsi, sd_mod,
  btrfs, bridge, nft);
- `cloud, generic`: this tree, the cloud kernel, `--drivers generic` (the
  default): drivers from the devices' modaliases;
- `generic kernel, generic`: Debian's generic kernel with every NIC and
  storage driver a build host may need (booted as vmlinux, PVH);
- `generic kernel, host`: `--drivers host`, the drivers this build
  machine's own devices use.

It prints per initrd: its size, the modules packed, the modules loaded at
boot (report.json), the load_modules state's time, and the kernel's
uptime at the hand-off (the console line). One boot each: other VMs on the
machine move TCG timings by tens of percent, so compare within one run.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from initpy.builder import cpio  # noqa: E402
from initpy.runtime import layout  # noqa: E402
from tests.harness import qemu  # noqa: E402
from tests.harness.guest_output import read_sections, report  # noqa: E402
from tests.harness.scenario import GUEST_PATH, GUEST_PROGRAM, full_boot_args  # noqa: E402

BOOT_TIMEOUT = 400
BASELINE = "63716c1"


@dataclass
class Row:
    label: str
    initrd_bytes: int
    packed: int
    loaded: int | None = None
    load_modules_ms: int | None = None
    handoff_uptime: float | None = None


def fetch(*package: str) -> Path:
    out = subprocess.run(
        [str(REPO / "scripts" / "fetch-kernel"), *package],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return Path(out.strip().splitlines()[-1])


def build(tree: Path, kernel: Path, outdir: Path, *options: str) -> Path:
    subprocess.run(
        [
            sys.executable,
            str(tree / "mkinitrd.py"),
            "--kernel",
            str(kernel / "vmlinuz"),
            "--modules",
            str((kernel / "modules").resolve()),
            "-o",
            str(outdir),
            "--include",
            f"{GUEST_PROGRAM}:{GUEST_PATH}",
            *options,
        ],
        check=True,
        cwd=tree,
    )
    return outdir / "buildos-initrd"


def packed_modules(initrd: Path) -> int:
    members = cpio.read_newc(cpio.decompress(initrd.read_bytes()))
    manifest = next(m for m in members if m.path == layout.MANIFEST.lstrip("/"))
    return len(json.loads(manifest.data)["modules"])


def boot(kernel_image: Path, initrd: Path, row: Row, workdir: Path) -> None:
    args = full_boot_args(workdir)
    name = "bench-drivers-" + re.sub(r"\W+", "-", row.label)
    with qemu.boot(kernel_image, initrd, args, name=name) as vm:
        match = vm.expect(
            r"initpy: handoff: exec \S+ \(uptime ([\d.]+)s\)",
            BOOT_TIMEOUT,
            fail_on=r"initpy: rescue: .*",
        )
        row.handoff_uptime = float(match.group(1))
        boot_report = report(read_sections(vm, BOOT_TIMEOUT), vm)
        vm.wait_exit(60)
    row.loaded = sum(1 for m in boot_report["modules"] if m["result"] == "loaded")
    row.load_modules_ms = next(
        s["duration_ms"] for s in boot_report["states"] if s["name"] == "load_modules"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=BASELINE, help="the fixed-list revision")
    parser.add_argument("--skip-boots", action="store_true", help="sizes only")
    ns = parser.parse_args()
    cloud = fetch()
    generic = fetch("linux-image-amd64")
    generic_image = generic / "vmlinux" if (generic / "vmlinux").is_file() else generic / "vmlinuz"
    rows: list[tuple[Row, Path, Path]] = []
    with tempfile.TemporaryDirectory(prefix="initpy-bench-drivers.") as tmp:
        work = Path(tmp)
        old = work / "baseline-tree"
        old.mkdir()
        archive = subprocess.run(
            ["git", "archive", ns.baseline], cwd=REPO, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        for label, tree, kernel, image, options in (
            (f"fixed list ({ns.baseline}), cloud", old, cloud, cloud / "vmlinuz", ()),
            ("cloud, --drivers generic", REPO, cloud, cloud / "vmlinuz", ()),
            ("generic kernel, --drivers generic", REPO, generic, generic_image, ()),
            ("generic kernel, --drivers host", REPO, generic, generic_image, ("--drivers", "host")),
        ):
            outdir = work / re.sub(r"\W+", "-", label)
            initrd = build(tree, kernel, outdir, *options)
            row = Row(label, initrd.stat().st_size, packed_modules(initrd))
            rows.append((row, image, initrd))
        if not ns.skip_boots:
            for i, (row, image, initrd) in enumerate(rows):
                scratch = work / f"disks-{i}"
                scratch.mkdir()
                boot(image, initrd, row, scratch)
    print()
    print(
        f"{'initrd':38} {'size MB':>8} {'packed':>7} {'loaded':>7} "
        f"{'load_modules':>13} {'hand-off':>9}"
    )
    for row, _image, _initrd in rows:
        loaded = "-" if row.loaded is None else str(row.loaded)
        ms = "-" if row.load_modules_ms is None else f"{row.load_modules_ms / 1000:.2f} s"
        up = "-" if row.handoff_uptime is None else f"{row.handoff_uptime:.1f} s"
        print(
            f"{row.label:38} {row.initrd_bytes / 1e6:8.1f} {row.packed:7d} {loaded:>7} "
            f"{ms:>13} {up:>9}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
