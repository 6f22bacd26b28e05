"""A plain Debian tree for acceptance 6 of issue 17: no overlay, no customize.

`mmdebstrap --variant=minbase` (debootstrap's minbase: the Essential and
required packages) plus the packages of os/packages.list, no recommends,
nothing trimmed and nothing fixed afterwards: what an operator who read
docs/os.md would make by hand. Everything else the host needs must come
with initpy (mkinitrd --rootfs). mmdebstrap, not debootstrap: it is what
scripts/bootstrap installs for scripts/mkrootfs, and its minbase is
debootstrap's.

Cached in ~/.cache/initpy/plain-rootfs/<key> (key: the package list, this
command, mmdebstrap's version); `<key>.info` records the cold build's time
and size. Run as a script, it prints the tree's path:
`.venv/bin/python -m tests.vm.plaintree`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .qemu import REPO

SUITE = "bookworm"
MIRROR = os.environ.get("MKROOTFS_MIRROR", "http://deb.debian.org/debian")
SOURCE_DATE_EPOCH = "1704067200"  # scripts/mkrootfs's: 2024-01-01


def packages() -> list[str]:
    """os/packages.list without its comments."""
    text = (REPO / "os" / "packages.list").read_text()
    return [w for line in text.splitlines() for w in line.split("#")[0].split()]


def _argv(root: Path) -> list[str]:
    return [
        "mmdebstrap", "--mode=auto", "--variant=minbase",
        "--include=" + ",".join(packages()),
        "--aptopt=APT::Install-Recommends \"false\"",
        SUITE, str(root), f"deb {MIRROR} {SUITE} main",
    ]  # fmt: skip


def cache_dir() -> Path:
    base = os.environ.get("INITPY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "initpy"
    )
    return Path(base) / "plain-rootfs"


def build_plain_tree() -> Path:
    """The plain tree (cached by its inputs); built with mmdebstrap when missing."""
    if shutil.which("mmdebstrap") is None:
        raise RuntimeError("mmdebstrap is missing; run scripts/bootstrap")
    version = subprocess.run(
        ["mmdebstrap", "--version"], capture_output=True, text=True, check=True
    ).stdout
    key = hashlib.sha256(
        "\n".join([*_argv(Path("ROOT")), version, SOURCE_DATE_EPOCH]).encode()
    ).hexdigest()[:16]
    cache = cache_dir()
    dest = cache / key
    if (cache / f"{key}.complete").exists():
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build.") as work:
        root = Path(work) / "root"
        start = time.monotonic()
        env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}
        done = subprocess.run(_argv(root), capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"mmdebstrap failed ({done.returncode}):\n{done.stderr[-3000:]}")
        seconds = time.monotonic() - start
        size = subprocess.run(["du", "-sm", str(root)], capture_output=True, text=True).stdout
        shutil.rmtree(dest, ignore_errors=True)
        root.rename(dest)
    (cache / f"{key}.info").write_text(f"mmdebstrap_s {seconds:.1f}\ntree_mb {size.split()[0]}\n")
    (cache / f"{key}.complete").touch()
    return dest


if __name__ == "__main__":
    print(build_plain_tree())
    sys.exit(0)
