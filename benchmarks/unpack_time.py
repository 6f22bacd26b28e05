#!/usr/bin/env python3
"""Kernel start -> /init in QEMU, for several initrds booted in turn.

    .venv/bin/python benchmarks/unpack_time.py [--runs N] [--shared] [--smp N]
                                               NAME=INITRD [NAME=INITRD ...]

What it measures: the kernel's part of the boot that depends on the initrd,
mostly the unpacking of every byte of the archive into the root tmpfs
before it runs /init. Each initrd boots with a small uncompressed archive
put in front of it (as early microcode is), holding /unpack-probe, and
`rdinit=/unpack-probe`: the probe prints the kernel log's lines about the
unpacking and powers off, so a boot takes a few seconds instead of a whole
initpy boot. The initrd must hold busybox at /usr/bin/busybox (every
mkinitrd initrd does). Boots take turns (A B C, A B C, ...), so that all
see the same load on the host. It prints, per boot and as medians, on the
kernel's clock:

- unpack: "Trying to unpack rootfs image as initramfs..";
- freed: "Freeing initrd memory" (the unpacking is over);
- /init: "Run /unpack-probe as init process".
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from boot_time import holding_both_slots  # noqa: E402

from initpy.builder import cpio  # noqa: E402
from tests.vm import qemu  # noqa: E402

PROBE = """#!/usr/bin/busybox sh
echo ==probe:begin==
/usr/bin/busybox dmesg | /usr/bin/busybox grep -E 'Trying to unpack|Freeing initrd|Run /'
echo ==probe:end==
/usr/bin/busybox poweroff -f
"""
KMSG_LINE = re.compile(r"^\[\s*(\d+\.\d+)\]\s?(.*)$", re.M)
MARKS = (
    ("unpack", "Trying to unpack rootfs"),
    ("freed", "Freeing initrd memory"),
    ("/init", "Run /"),
)


def with_probe(initrd: Path, out: Path) -> None:
    probe = cpio.archive([cpio.regular("unpack-probe", data=PROBE.encode(), perm=0o755)], mtime=0)
    out.write_bytes(probe + initrd.read_bytes())


def kernel_file() -> Path:
    folder = subprocess.run(
        [REPO / "scripts" / "fetch-kernel"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return Path(folder) / "vmlinuz"


def boot(vmlinuz: Path, initrd: Path, smp: int, name: str) -> dict[str, float]:
    extra = ["-smp", str(smp)] if smp != 1 else []
    with qemu.boot(vmlinuz, initrd, "quiet rdinit=/unpack-probe", extra=extra, name=name) as vm:
        vm.expect("==probe:begin==", 300)
        text = vm.expect(r"(?s)(.*?)==probe:end==", 60).group(1)
        vm.wait_exit(60)
    stamps: dict[str, float] = {}
    for stamp, line in KMSG_LINE.findall(text):
        for key, start in MARKS:
            if key not in stamps and line.startswith(start):
                stamps[key] = float(stamp)
    return stamps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("initrds", nargs="+", metavar="NAME=INITRD")
    parser.add_argument("--runs", type=int, default=5, help="boots of each initrd (default 5)")
    parser.add_argument("--smp", type=int, default=1, help="vCPUs (default 1)")
    parser.add_argument(
        "--shared", action="store_true", help="take one VM slot, not both (see boot_time.py)"
    )
    ns = parser.parse_args()
    vmlinuz = kernel_file()
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="initpy-unpack-") as tmp:
        probed: dict[str, Path] = {}
        for spec in ns.initrds:
            name, _, path = spec.partition("=")
            probed[name] = Path(tmp) / f"{name}.img"
            with_probe(Path(path), probed[name])
            size = Path(path).stat().st_size
            print(f"{name}: {path}, {size / 1e6:.2f} MB")
            results[name] = []
        with contextlib.nullcontext() if ns.shared else holding_both_slots():
            for i in range(ns.runs):
                for name, image in probed.items():
                    stamps = boot(vmlinuz, image, ns.smp, f"unpack-{name}-{i}")
                    results[name].append(stamps)
                    print(
                        f"  {name} #{i + 1}: "
                        + " ".join(f"{k} {stamps.get(k, float('nan')):.3f}" for k, _ in MARKS),
                        flush=True,
                    )
    print()
    print(f"median of {ns.runs}, s since kernel start   unpack   freed   /init  freed-unpack")
    for name, runs in results.items():
        med = {k: statistics.median([r[k] for r in runs if k in r]) for k, _ in MARKS}
        spans = [r["freed"] - r["unpack"] for r in runs if "freed" in r and "unpack" in r]
        print(
            f"{name:<38}{med['unpack']:7.2f} {med['freed']:7.2f} {med['/init']:7.2f}"
            f" {statistics.median(spans):9.2f}"
        )


if __name__ == "__main__":
    main()
