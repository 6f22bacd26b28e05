#!/usr/bin/env python3
"""Measure the initrd build: compressed size per part, cold and warm times.

Usage: .venv/bin/python benchmarks/initrd_build.py [--full] [--compress zstd]

Builds the minimal initrd of issue 3 (the init, busybox, the rescue tools
and the modules for virtio, btrfs, ext4, bridge and nftables NAT) twice:
cold (empty freeze and compression caches, in a temporary INITPY_CACHE) and
warm (the same caches again). The size is split by attributing every file to
a part; mkinitrd compresses each part as its own archive, so the split is
exact, not an estimate. With --full, all the repository's hooks are built
too (warm only, with the normal cache). The kernel comes from
scripts/fetch-kernel. Targets (issue 3, not asserted): <= 12 MB with zstd,
warm rebuild <= 3 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TOP)

from initpy.builder import mkinitrd  # noqa: E402
from initpy.builder.drivers import Drivers  # noqa: E402
from initpy.builder.hooks import default_hooks_dir  # noqa: E402

MINIMAL_HOOK = '''
"""Benchmark only: the modules of issue 3's minimal initrd."""
from initpy.runtime.hook import Hook

HOOK = Hook(
    name="bench_minimal",
    description="modules for virtio, btrfs, ext4, bridge and nftables NAT",
    modules=("virtio_pci", "virtio_blk", "virtio_net", "btrfs", "ext4", "bridge",
             "nf_tables", "nft_chain_nat", "nft_masq"),
)
'''


def fetch_kernel() -> str:
    done = subprocess.run(
        [os.path.join(TOP, "scripts", "fetch-kernel")], capture_output=True, text=True, check=True
    )
    return done.stdout.strip().splitlines()[-1]


def timed_build(options: mkinitrd.Options) -> tuple[float, mkinitrd.BuildResult]:
    start = time.monotonic()
    result = mkinitrd.build(options)
    return time.monotonic() - start, result


def show(title: str, result: mkinitrd.BuildResult) -> None:
    total = os.path.getsize(result.initrd)
    print(f"{title}: {total / 1e6:.2f} MB compressed ({total} bytes)")
    files = {part: sum(1 for _e, p in result.entries if p == part) for part, _r, _c in result.parts}
    for part, raw, packed in sorted(result.parts, key=lambda p: -p[2]):
        print(
            f"  {part:<20} {packed / 1e6:6.2f} MB  (uncompressed {raw / 1e6:6.2f} MB, "
            f"{files[part]} entries)"
        )
    modules = sum(1 for e, _p in result.entries if e.path.endswith(".ko"))
    print(f"  kernel modules: {modules}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compress", default="zstd")
    parser.add_argument("--full", action="store_true", help="also build with every hook")
    ns = parser.parse_args()
    kernel = fetch_kernel()
    with tempfile.TemporaryDirectory(prefix="initpy-bench.") as work:
        hooks = os.path.join(work, "hooks")
        os.makedirs(hooks)
        with open(os.path.join(hooks, "bench_minimal.py"), "w") as f:
            f.write(MINIMAL_HOOK)
        # Only the hooks of the minimal initrd: the other hooks' files are not
        # even loaded, so the figures do not depend on them.
        shutil.copytree(os.path.join(TOP, "hooks", "modules"), os.path.join(hooks, "modules"))
        shutil.copy(os.path.join(TOP, "hooks", "rescue_tools.py"), hooks)
        options = mkinitrd.Options(
            kernel=os.path.join(kernel, "vmlinuz"),
            modules=os.path.join(kernel, "modules"),
            outdir=os.path.join(work, "out"),
            hooks=("modules", "rescue_tools", "bench_minimal"),
            base_hooks_dir=None,
            hook_dirs=(hooks,),
            compress=ns.compress,
            # Issue 3's module list only (virtio is in it): not the generic
            # driver set that mkinitrd packs by default.
            drivers=Drivers.NONE,
            source_date_epoch=1_700_000_000,
        )
        saved = os.environ.get("INITPY_CACHE")
        os.environ["INITPY_CACHE"] = os.path.join(work, "cache")
        try:
            cold, result = timed_build(options)
            warm, result = timed_build(options)
        finally:
            if saved is None:
                del os.environ["INITPY_CACHE"]
            else:
                os.environ["INITPY_CACHE"] = saved
        print(f"kernel: {kernel}")
        show(f"minimal initrd ({ns.compress})", result)
        print(f"cold build (empty caches): {cold:.1f} s", flush=True)
        for what, seconds in result.timings:
            if seconds >= 0.05:
                print(f"  warm {what}: {seconds:.2f} s")
        print(f"warm rebuild: {warm:.2f} s")
        if ns.full:
            full = mkinitrd.Options(
                **{
                    **options.__dict__,
                    "hooks": None,
                    "hook_dirs": (),
                    "base_hooks_dir": default_hooks_dir(),
                }
            )
            seconds, result = timed_build(full)
            show(f"full initrd, every hook in hooks/ ({ns.compress})", result)
            print(f"full build (normal cache): {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
