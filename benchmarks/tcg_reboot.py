#!/usr/bin/env python3
"""TCG's code cache and a reboot inside one QEMU: how fast the next boot unpacks.

    .venv/bin/python benchmarks/tcg_reboot.py [--runs N]

The full image (tests/harness/fullos.py: the OS tree packed at zstd:3) boots
with -kernel in a QEMU allowed to reboot; once it is up, `systemctl
reboot` over SSH (as initpy-monitor's reboot does) boots it again in the
same QEMU, whose cache of translated code is kept. (`system_reset` on
QEMU's monitor instead does not show the slow unpack.) Per boot, on the
kernel's own clock: from `Trying to unpack rootfs` to `Freeing initrd
memory` (the initramfs unpack). Each run does this twice, alternating:
with QEMU's default cache (plain `-accel tcg`) and with the harness's
`qemu_rules.REBOOT_TB_SIZE_MIB`, which `qemu_argv` uses for every guest that
may reboot (tests/vm/test_pxe.py). One VM at a time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.harness import qemu, qemu_rules  # noqa: E402
from tests.harness.fullos import (  # noqa: E402
    BOOT_TIMEOUT,
    READY,
    Ssh,
    build_image,
    build_tree,
    free_port,
    full_os_args,
    make_key,
)

UNPACK_START = r"\[ *([\d.]+)\] Trying to unpack rootfs"
UNPACK_END = r"\[ *([\d.]+)\] Freeing initrd memory"


def kernel_files() -> tuple[Path, Path]:
    folder = Path(
        subprocess.run(
            [str(REPO / "scripts" / "fetch-kernel")], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    return folder / "vmlinuz", (folder / "modules").resolve()


def unpack_times(outdir: Path, workdir: Path, tb_size_mib: int, name: str) -> list[float]:
    """The two boots' unpack seconds, with the given code cache (0: QEMU's default)."""
    key = make_key(workdir)
    mail = workdir / "mail"
    mail.mkdir(exist_ok=True)
    port = free_port()
    args = full_os_args(workdir, port, key.with_suffix(".pub").read_text().strip(), mail)
    qemu_rules.REBOOT_TB_SIZE_MIB = tb_size_mib
    seconds = []
    image, initrd = outdir / "buildos-image", outdir / "buildos-initrd"
    with qemu.boot(image, initrd, args, name=name, reboot=True) as vm:
        for boot in (1, 2):
            start = vm.expect(UNPACK_START, BOOT_TIMEOUT)
            end = vm.expect(UNPACK_END, BOOT_TIMEOUT)
            seconds.append(float(end.group(1)) - float(start.group(1)))
            if boot == 1:
                vm.expect(READY, BOOT_TIMEOUT, fail_on=r"initpy: rescue: .*")
                ssh = Ssh(port, key)
                ssh.wait()
                ssh.run("systemctl reboot", check=False, timeout=60)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    ns = parser.parse_args()
    vmlinuz, modules = kernel_files()
    with tempfile.TemporaryDirectory(prefix="initpy-tcg-reboot.") as tmp:
        outdir = build_image(vmlinuz, modules, build_tree(), Path(tmp) / "image")
        size = (outdir / "buildos-initrd").stat().st_size / 1e6
        print(f"full image: initrd {size:.1f} MB (zstd:3); TCG, one VM at a time")
        cache = qemu_rules.REBOOT_TB_SIZE_MIB
        for run in range(1, ns.runs + 1):
            for label, mib in (("default cache", 0), (f"tb-size={cache}", cache)):
                work = Path(tmp) / f"run{run}-{mib}"
                work.mkdir()
                first, second = unpack_times(outdir, work, mib, f"tcg-reboot-{run}-{mib}")
                print(
                    f"run {run}, {label}: initramfs unpack {first:.1f} s, "
                    f"after the reboot {second:.1f} s",
                    flush=True,
                )


if __name__ == "__main__":
    main()
