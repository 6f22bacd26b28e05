#!/usr/bin/env python3
"""The full image against another: size as served, RAM after boot, boot times.

    .venv/bin/python benchmarks/full_image.py [IMAGE] (--compare IMAGE | --compare-commit REV)
                                              [--runs N] [--no-agent] [--compress C]
                                              [--tree-detail]

IMAGE is an mkinitrd OUTDIR (buildos-image and buildos-initrd) or an
initrd file (the kernel beside it as buildos-image, else scripts/fetch-kernel's);
without it, this checkout's image is built as tests/vm/test_fullos.py builds
it (scripts/mkrootfs, mkinitrd --rootfs at --compress, zstd:3 by default).
`--compare-commit REV` builds REV's image the same way, from `git archive REV`
(its own scripts/mkrootfs and mkinitrd.py, this checkout's kernel).

Per image: the initrd and kernel sizes, and the initrd as served over TFTP
(scripts/pxe-layout's zstd -19, initpy.builder.pxe.for_tftp, cached). Then
N rounds of boots under TCG, the two images alternating (ABBA: each goes
first every other round), booted as the VM tests boot the full image
(boot_full, tests/harness/fullos.py) with the stand-in toolchain of
tests/vm/test_toolchain.py served, so that bbot-agent.service runs. Per boot:

- times, guest uptime: the hand-off (systemd's start), multi-user.target,
  the agent's start (ExecMainStartTimestampMonotonic); and from QEMU's
  start (wall): the hand-off (its console line), the others as the
  hand-off's wall time plus their uptime after it;
- RAM (tests/harness/guest_ram.py), read over SSH twice: `up` at once after
  the console's `buildos: up` line (the toolchain's install may still be
  running), `agent` once the agent runs and the install has exited.

Then medians per image and the relative change of IMAGE against the other.
One VM at a time, in one of the machine's two VM slots.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from full_image_report import Boot, Image, show_boots, show_breakdown, show_progress  # noqa: E402
from full_os import kernel_files  # noqa: E402

from initpy.builder import cpio, pxe  # noqa: E402
from initpy.builder.mkinitrd import compressed_cache_dir  # noqa: E402
from tests.harness.fullos import Host, boot_full, build_image, build_tree  # noqa: E402
from tests.harness.guest_ram import parse_snapshot, snapshot_commands  # noqa: E402
from tests.harness.images import InitrdFiles  # noqa: E402
from tests.harness.toolchain_boot import boot_args, serve, wait_for_agent  # noqa: E402

HANDOFF = re.compile(r"initpy: handoff: exec \S+ \(uptime ([\d.]+)s\)")


@dataclass(frozen=True)
class Source:
    """Where an image comes from: its files, and what to call it."""

    label: str
    files: InitrdFiles


def given_image(path: Path) -> InitrdFiles:
    """An OUTDIR or an initrd file, checked; the kernel beside it, else the fetched one."""
    initrd = path / "buildos-initrd" if path.is_dir() else path
    if not initrd.is_file():
        sys.exit(
            f"full_image: {path} is neither an initrd file nor a folder with buildos-initrd; "
            "give mkinitrd's OUTDIR (-o) or its buildos-initrd"
        )
    kernel = initrd.parent / "buildos-image"
    if not kernel.is_file():
        kernel = kernel_files()[0]
    return InitrdFiles(initrd.parent, kernel, initrd, initrd.parent / "buildos-buildid")


def built_image(source: Path, outdir: Path, compress: str) -> InitrdFiles:
    """`source`'s OS tree packed by its mkinitrd --rootfs (the VM tests' way) into `outdir`."""
    vmlinuz, modules = kernel_files()
    tree = build_tree(source)
    # mkinitrd's own default for the OS image (what a release serves), not the tests' fast one.
    build_image(vmlinuz, modules, tree, outdir, compress, source=source, os_image=None)
    return InitrdFiles(
        outdir, outdir / "buildos-image", outdir / "buildos-initrd", outdir / "buildos-buildid"
    )


def archived(rev: str, folder: Path) -> Path:
    """`git archive REV` of this repository, unpacked into `folder`."""
    folder.mkdir(parents=True)
    # A checkout's modes (umask 022), not git archive's default 664/775:
    # scripts/mkrootfs keys its cache by os/overlay's modes too, and copies them.
    argv = ["git", "-C", str(REPO), "-c", "tar.umask=0022", "archive", "--format=tar", rev]
    archive = subprocess.run(argv, capture_output=True)
    if archive.returncode != 0:
        sys.exit(
            f"full_image: git archive {rev} failed: {archive.stderr.decode().strip()}; "
            "give a commit, branch or tag of this repository"
        )
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def served_size(initrd: Path) -> int:
    """The initrd's bytes as scripts/pxe-layout serves a release build of it.

    A release build is mkinitrd's default (lz4), which pxe-layout recompresses
    with zstd -19 (pxe.for_tftp). It copies a zstd initrd as it is, so a
    zstd:3 build here is unpacked and recompressed the same way: the same
    archives, the same bytes served, and the same cache entry.
    """
    data = pxe.for_tftp(str(initrd))
    if data is None and initrd.read_bytes()[:4] == pxe.ZSTD_MAGIC:
        raw = cpio.decompress(initrd.read_bytes())
        data = cpio.compress_cached(raw, pxe.TFTP_COMPRESSION, compressed_cache_dir())
    return len(data) if data is not None else initrd.stat().st_size


def measure(source: Source) -> Image:
    files = source.files
    print(f"{source.label}: {files.initrd} ...", flush=True)
    return Image(
        source.label,
        files.initrd.stat().st_size,
        served_size(files.initrd),
        files.image.stat().st_size,
    )


def boot_once(
    source: Source, workdir: Path, tftp: Path | None, tree_detail: bool, run: int
) -> Boot:
    """One boot of `source`: its times and its RAM at `up` and with the agent running."""
    host: Host = boot_full(
        source.files,
        workdir,
        f"full-image-{source.label}-{run}",
        tftp=tftp,
        append=boot_args() if tftp is not None else [],
    )
    try:
        up = parse_snapshot(host.sections(snapshot_commands(tree_detail)))
        handoff = HANDOFF.search(host.vm.console)
        agent_us = None
        settled = None
        if tftp is not None:
            wait_for_agent(host)
            agent_us = int(
                host.ssh.run(
                    "systemctl show -p ExecMainStartTimestampMonotonic --value bbot-agent"
                ).stdout
            )
            settled = parse_snapshot(host.sections(snapshot_commands()))
        state, multi_user_ms, systemd_ms = host.ready.group(1, 2, 3)
        return Boot(
            label=source.label,
            run=run,
            state=state,
            handoff_s=int(systemd_ms) / 1000,
            multi_user_s=int(multi_user_ms) / 1000,
            agent_s=agent_us / 1e6 if agent_us else None,
            wall_offset_s=(
                host.vm.seconds_at(handoff.start()) - float(handoff.group(1)) if handoff else None
            ),
            up_line_wall_s=host.vm.seconds_at(host.ready.start()),
            up=up,
            settled=settled,
        )
    finally:
        host.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", nargs="?", type=Path, help="OUTDIR or initrd (default: build)")
    other = parser.add_mutually_exclusive_group(required=True)
    other.add_argument("--compare", type=Path, help="the other image: OUTDIR or initrd")
    other.add_argument("--compare-commit", metavar="REV", help="build REV's image to compare")
    parser.add_argument("--runs", type=int, default=2, help="rounds (one boot of each)")
    parser.add_argument("--compress", default="zstd:3", help="for the images built here")
    parser.add_argument("--no-agent", action="store_true", help="no toolchain, no agent")
    parser.add_argument("--tree-detail", action="store_true", help="du of the tree, first boot")
    ns = parser.parse_args()
    if ns.runs < 1:
        sys.exit("full_image: --runs must be at least 1")
    scratch = os.environ.get("TMPDIR")
    with tempfile.TemporaryDirectory(prefix="initpy-full-image-", dir=scratch) as folder:
        tmp = Path(folder)
        if ns.compare is not None:
            base = Source(f"base:{ns.compare.name}", given_image(ns.compare))
        else:
            src = archived(ns.compare_commit, tmp / "src")
            base = Source(f"base:{ns.compare_commit}", built_image(src, tmp / "base", ns.compress))
        if ns.image is not None:
            image = Source(f"image:{ns.image.name}", given_image(ns.image))
        else:
            image = Source("image:this", built_image(REPO, tmp / "image", ns.compress))
        sources = (base, image)
        images = [measure(s) for s in sources]
        tftp = None
        if not ns.no_agent:
            tftp = tmp / "tftp"
            tftp.mkdir()
            serve(tftp)
        boots: list[Boot] = []
        for run in range(ns.runs):
            order = sources if run % 2 == 0 else sources[::-1]
            for source in order:
                work = tmp / f"{source.label.replace(':', '-')}-{run}"
                detail = ns.tree_detail and run == 0
                boots.append(boot_once(source, work, tftp, detail, run + 1))
                show_progress(boots[-1])
        show_boots(images, boots)
        show_breakdown([s.label for s in sources], boots)


if __name__ == "__main__":
    main()
