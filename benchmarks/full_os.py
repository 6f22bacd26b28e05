#!/usr/bin/env python3
"""The full image: its size, its build, and its boot against the floor.

    .venv/bin/python benchmarks/full_os.py [--runs N] [--levels zstd:3,zstd:19]
                                           [--no-boot]

- the OS tree: scripts/mkrootfs (cached; its <key>.info holds the cold
  build time and the sizes);
- mkinitrd --rootfs at each compression level, the compression cache off:
  the build time and the initrd's size, by part;
- boots under TCG (the first level's image), N times each:
  - initpy: the full image as it ships: initpy, then systemd;
  - floor: the same initrd plus a trivial `/floor-init` that execs
    systemd (`rdinit=/floor-init`): the same tree and kernel, without
    initpy (no disks mounted, no network, no host keys: systemd ends
    `degraded`, which is what a floor is).
  Per boot, on the guest's clock (CLOCK_MONOTONIC, as systemd records
  it): the hand-off (systemd's start, UserspaceTimestampMonotonic) and
  multi-user.target (its ActiveEnterTimestampMonotonic), from the line
  buildos-ready.service prints; and the wall time from QEMU's start.

The VM arguments are the VM tests' (tests/harness/fullos.py). One VM at a time,
in one of the machine's two VM slots. The images unpack the whole tree
(`--os-image none`, the design before issue 21): the floor execs systemd with
no initpy to mount the OS image. benchmarks/full_image.py and os_image.py
measure the image as it ships.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from initpy.builder import cpio  # noqa: E402
from tests.harness import qemu  # noqa: E402
from tests.harness.fullos import (  # noqa: E402
    BOOT_TIMEOUT,
    READY,
    build_image,
    build_tree,
    free_port,
    full_os_args,
    make_key,
)

FLOOR_INIT = "#!/bin/sh\n# The floor: no initpy, systemd at once.\nexec /lib/systemd/systemd\n"


@dataclass(frozen=True)
class Boot:
    state: str
    handoff_s: float
    multi_user_s: float
    wall_s: float


def kernel_files() -> tuple[Path, Path]:
    import subprocess

    folder = Path(
        subprocess.run(
            [str(REPO / "scripts" / "fetch-kernel")], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    return folder / "vmlinuz", (folder / "modules").resolve()


def floor_initrd(initrd: Path, out: Path) -> Path:
    """The full initrd with /floor-init appended (a later archive adds to the first)."""
    extra = cpio.archive([cpio.regular("floor-init", data=FLOOR_INIT.encode(), perm=0o755)], 0)
    out.write_bytes(initrd.read_bytes() + cpio.compress(extra, "zstd", 3))
    return out


def boot_once(image: Path, initrd: Path, workdir: Path, name: str, floor: bool) -> Boot:
    workdir.mkdir(parents=True, exist_ok=True)
    key = make_key(workdir)
    mail = workdir / "mail"
    mail.mkdir(exist_ok=True)
    args = full_os_args(workdir, free_port(), key.with_suffix(".pub").read_text().strip(), mail)
    with qemu.boot(
        image, initrd, args.plus(["rdinit=/floor-init"] if floor else []), name=name
    ) as vm:
        match = vm.expect(READY, BOOT_TIMEOUT)
        wall = vm.seconds
    state, multi_user_ms, systemd_ms = match.group(1), match.group(2), match.group(3)
    return Boot(state, int(systemd_ms) / 1000, int(multi_user_ms) / 1000, wall)


def show(label: str, boots: list[Boot]) -> None:
    for i, b in enumerate(boots, 1):
        print(
            f"  {label} #{i}: hand-off {b.handoff_s:6.1f} s  multi-user {b.multi_user_s:6.1f} s  "
            f"(userspace {b.multi_user_s - b.handoff_s:5.1f} s)  wall {b.wall_s:6.1f} s  "
            f"{b.state}"
        )
    if boots:
        med = statistics.median
        print(
            f"  {label} median: hand-off {med(b.handoff_s for b in boots):.1f} s, multi-user "
            f"{med(b.multi_user_s for b in boots):.1f} s, wall {med(b.wall_s for b in boots):.1f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--levels", default="zstd:3,zstd:19")
    parser.add_argument("--no-boot", action="store_true")
    ns = parser.parse_args()
    vmlinuz, modules = kernel_files()
    started = time.monotonic()
    tree = build_tree()
    print(f"OS tree {tree} ({time.monotonic() - started:.1f} s now; cached when fast)")
    info = Path(f"{tree}.info")
    if info.exists():
        print("  " + info.read_text().strip().replace("\n", "\n  "))
    images: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="initpy-fullos-", dir=os.environ.get("TMPDIR")) as tmp:
        for level in ns.levels.split(","):
            out = Path(tmp) / level.replace(":", "-")
            started = time.monotonic()
            # The tree unpacked (--os-image none): the floor has no initpy to mount an OS image.
            build_image(vmlinuz, modules, tree, out, level, no_cache=True, os_image="none")
            took = time.monotonic() - started
            size = (out / "buildos-initrd").stat().st_size
            print(f"mkinitrd --rootfs --compress {level}: {took:.1f} s, initrd {size / 1e6:.1f} MB")
            images.append(out)
        if ns.no_boot:
            return
        image = images[0]
        floor = floor_initrd(image / "buildos-initrd", Path(tmp) / "floor-initrd")
        results: dict[str, list[Boot]] = {"initpy": [], "floor": []}
        for run in range(ns.runs):
            for label, initrd in (("initpy", image / "buildos-initrd"), ("floor", floor)):
                work = Path(tmp) / f"{label}-{run}"
                boot = boot_once(
                    image / "buildos-image", initrd, work, f"bench-full-{label}", label == "floor"
                )
                results[label].append(boot)
        print(f"boots under TCG ({ns.levels.split(',')[0]} image), uptime when reached:")
        for label, boots in results.items():
            show(label, boots)


if __name__ == "__main__":
    main()
