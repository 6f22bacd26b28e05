#!/usr/bin/env python3
"""The boot up to initpy's first line in QEMU, for several initrds booted in turn.

    .venv/bin/python benchmarks/early_boot.py [--python] [--runs N] [--shared]
                                              [--smp N] NAME=INITRD [NAME=INITRD ...]

Without --python, it measures the kernel's part of the boot that depends on the initrd,
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

With --python, it boots each initrd's own /init (an initpy initrd) with
`INITPY_STAMPS=1 initpy.break=load_modules`: the frozen entry script then
writes kernel-log lines (initpy.runtime.frozen.stamp) at its first line and
after importing initpy.runtime.entry, and the boot stops in a shell before
its first hook state, where the benchmark reads the kernel log. Columns:
"Run /init", the entry script's first line (the bootloader, libpython, the
base library and PyInstaller's runtime hooks before it), entry imported,
and initpy's first line ("initpy: starting").
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
from tests.harness import qemu  # noqa: E402

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
PYTHON_MARKS = (
    ("/init", "Run /init"),
    ("script", "initpy-stamp: frozen.py"),
    ("entry", "initpy-stamp: imported entry"),
    ("first", "initpy: starting"),
)
BREAK_STATE = "load_modules"


def with_probe(initrd: Path, out: Path) -> None:
    probe = cpio.archive([cpio.regular("unpack-probe", data=PROBE.encode(), perm=0o755)], mtime=0)
    out.write_bytes(probe + initrd.read_bytes())


def kernel_file() -> Path:
    folder = subprocess.run(
        [REPO / "scripts" / "fetch-kernel"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return Path(folder) / "vmlinuz"


def boot(vmlinuz: Path, initrd: Path, smp: int, name: str, python: bool) -> dict[str, float]:
    append = (
        ["quiet", "printk.devkmsg=on", "INITPY_STAMPS=1", f"initpy.break={BREAK_STATE}"]
        if python
        else ["quiet", "rdinit=/unpack-probe"]
    )
    args = qemu.BootArgs(append, extra=["-smp", str(smp)] if smp != 1 else [])
    with qemu.boot(vmlinuz, initrd, args, name=name) as vm:
        if python:
            vm.expect(re.escape(f"(initpy break before {BREAK_STATE}) # "), 300)
            vm.send(
                "echo ==probe:begin==; dmesg | grep -E 'Run /init|initpy-stamp|initpy: starting';"
                " echo ==probe:end==; poweroff -f"
            )
            vm.expect("==probe:begin==\n", 60)
        else:
            vm.expect("==probe:begin==", 300)
        text = vm.expect(r"(?s)(.*?)==probe:end==", 60).group(1)
        vm.wait_exit(60)
    stamps: dict[str, float] = {}
    for stamp, line in KMSG_LINE.findall(text):
        for key, start in PYTHON_MARKS if python else MARKS:
            if key not in stamps and line.startswith(start):
                stamps[key] = float(stamp)
    return stamps


def median(values: list[float | None]) -> float:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("initrds", nargs="+", metavar="NAME=INITRD")
    parser.add_argument("--runs", type=int, default=5, help="boots of each initrd (default 5)")
    parser.add_argument(
        "--python", action="store_true", help="the frozen Python's start (see above)"
    )
    parser.add_argument("--smp", type=int, default=1, help="vCPUs (default 1)")
    parser.add_argument(
        "--shared", action="store_true", help="take one VM slot, not both (see boot_time.py)"
    )
    ns = parser.parse_args()
    marks = PYTHON_MARKS if ns.python else MARKS
    vmlinuz = kernel_file()
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="initpy-unpack-") as tmp:
        probed: dict[str, Path] = {}
        for spec in ns.initrds:
            name, _, path = spec.partition("=")
            probed[name] = Path(tmp) / f"{name}.img"
            if ns.python:
                probed[name] = Path(path)
            else:
                with_probe(Path(path), probed[name])
            size = Path(path).stat().st_size
            print(f"{name}: {path}, {size / 1e6:.2f} MB")
            results[name] = []
        with contextlib.nullcontext() if ns.shared else holding_both_slots():
            for i in range(ns.runs):
                for name, image in probed.items():
                    stamps = boot(vmlinuz, image, ns.smp, f"early-{name}-{i}", ns.python)
                    results[name].append(stamps)
                    print(
                        f"  {name} #{i + 1}: "
                        + " ".join(f"{k} {stamps.get(k, float('nan')):.3f}" for k, _ in marks),
                        flush=True,
                    )
    first, last = marks[0][0], marks[-1][0]
    print()
    print(
        f"median of {ns.runs}, s since kernel start{''.join(f'{k:>8}' for k, _ in marks)}"
        f"  {last} - {first}"
    )
    for name, runs in results.items():
        med = [median([r.get(k) for r in runs]) for k, _ in marks]
        span = median([r[last] - r[first] for r in runs if last in r and first in r])
        print(f"{name:<39}{''.join(f'{m:8.2f}' for m in med)}  {span:8.2f}")


if __name__ == "__main__":
    main()
