"""The OS image: the --rootfs tree's /usr as a squashfs, an archive of its own.

Owned by the builder (mkinitrd). Unpacked into the initramfs, every byte of
the OS tree stays in RAM for the host's life; packed into a compressed
read-only image, only the image does, and the OS's files are read from it
when used, their page cache reclaimable (docs/os.md, "The OS image").

- `split`: of the merged layers, what goes into the image (the tree's
  entries below /usr that won the merge: the OS's files, the kernel's
  module tree, the hooks' files there) and what stays in the initramfs
  (the init's files, busybox's applets, the tree outside /usr). At boot
  the image is the overlay's upper lower layer and the initramfs's /usr
  the lower one (hooks/os_image.py), so /usr shows what the merge chose:
  the init's files are not in the image, and the applets the tree
  replaces are hidden under it.
- `squash`: mksquashfs over a staging folder of hard links (copies across
  file systems), with every entry's mode and numeric owners given as
  pseudo definitions, so the image does not depend on who builds it;
  reproducible (sorted, SOURCE_DATE_EPOCH clamps the times, no xattrs, as
  in the cpio). Cached by the sha256 of the entries' newc archive, in a
  folder of its own (mkinitrd.os_image_cache_dir).
- `segment`: the image as the initrd's first archive, uncompressed: the
  image is compressed already, and the kernel reads an uncompressed newc
  archive only at a 4-byte boundary, which the start of the file is.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Sequence
from enum import StrEnum

from initpy.builder import cpio
from initpy.builder.command import BuildError, run
from initpy.builder.layers import PART_ROOTFS, parents
from initpy.builder.rootfs import PART_OS_FILES, PART_OS_MODULES
from initpy.runtime import layout

PART_OS_IMAGE = "os image"
# The parts whose entries come from the --rootfs tree (and what initpy puts over it).
TREE_PARTS = (PART_ROOTFS, PART_OS_MODULES, PART_OS_FILES)
IMAGE_TOP = layout.OS_OVERLAID.strip("/")
# squashfs's block: the unit it compresses and reads back (docs/os.md has
# the measurements that chose it with the compressor).
BLOCK_SIZE = 1 << 20
MKSQUASHFS = "mksquashfs"


class ImageCompression(StrEnum):
    """How the OS image is compressed (mkinitrd --os-image), or no image at all."""

    ZSTD = "zstd"
    XZ = "xz"
    NONE = "none"


ZSTD_MAX_LEVEL = 22
ZSTD_LEVEL = 19  # the release default; tests give zstd:3, which packs in seconds


def compressor_args(compression: ImageCompression, level: int | None) -> tuple[str, ...]:
    """mksquashfs's compressor options: xz with the x86 branch filter, which
    makes machine code compress better; zstd at `level`."""
    if compression == ImageCompression.XZ:
        return ("-comp", "xz", "-Xbcj", "x86")
    return ("-comp", "zstd", "-Xcompression-level", str(level or ZSTD_LEVEL))


def _in_image(entry: cpio.Entry, part: str) -> bool:
    return part in TREE_PARTS and (entry.path + "/").startswith(IMAGE_TOP + "/")


def split(
    merged: Sequence[tuple[cpio.Entry, str]], without_tree: Sequence[tuple[cpio.Entry, str]]
) -> tuple[list[tuple[cpio.Entry, str]], list[tuple[cpio.Entry, str]]]:
    """(the image's entries, the initramfs's entries).

    `merged` is the merge of every layer; `without_tree` the merge of the
    layers but the tree's, which the initramfs keeps whole, with the tree's
    winners outside /usr over it.
    """
    image = [(e, p) for e, p in merged if _in_image(e, p)]
    rest = {e.path: (e, p) for e, p in without_tree}
    for entry, part in merged:
        if part in TREE_PARTS and not _in_image(entry, part):
            rest[entry.path] = (entry, part)
    return image, [rest[path] for path in sorted(rest)]


def _pseudo_name(path: str) -> str:
    if "\n" in path:
        raise BuildError(
            f"--rootfs: {path!r} has a newline in its name, which the OS image cannot hold",
            "rename or remove it in the tree",
        )
    return "".join("\\" + c if c.isspace() or c in '\\"' else c for c in path)


def _stage(entries: Sequence[cpio.Entry], top: str) -> list[str]:
    """Write `entries` below `top`; returns their pseudo definitions (mode, owners)."""
    os.chmod(top, 0o755)
    lines = []
    for entry in sorted(cpio.with_parents(entries), key=lambda e: e.path.split("/")):
        where = os.path.join(top, entry.path)
        kind = stat.S_IFMT(entry.mode)
        if kind == stat.S_IFDIR:
            os.makedirs(where, exist_ok=True)
        elif kind == stat.S_IFLNK:
            os.symlink(entry.data, where)
        elif kind == stat.S_IFREG and entry.source is not None:
            try:
                os.link(entry.source, where)  # the tree's own file: no copy
            except OSError:
                shutil.copyfile(entry.source, where)
        elif kind == stat.S_IFREG:
            with open(where, "wb") as f:
                f.write(entry.data)
        else:
            raise BuildError(
                f"--rootfs: {entry.path} is a device node or fifo, which /usr does not hold",
                "remove it from the tree",
            )
        if kind != stat.S_IFLNK:  # a symlink's mode and owners mean nothing
            perm = stat.S_IMODE(entry.mode)
            lines.append(f"{_pseudo_name(entry.path)} m {perm:o} {entry.uid} {entry.gid}\n")
    return lines


def squash(
    entries: Sequence[cpio.Entry],
    raw: bytes,
    compression: ImageCompression,
    level: int | None,
    mtime: int,
    cache_dir: str | None,
) -> bytes:
    """The squashfs image of `entries`; `raw` (their newc archive) keys the cache."""
    args = (*compressor_args(compression, level), "-b", str(BLOCK_SIZE))
    key = hashlib.sha256(raw + " ".join(args).encode() + str(mtime).encode()).hexdigest()
    cached = os.path.join(cache_dir, f"{key}.squashfs") if cache_dir else None
    hit = cpio.cache_get(cached) if cached is not None else None
    if hit is not None:
        return hit
    if shutil.which(MKSQUASHFS) is None:
        raise BuildError(
            f"{MKSQUASHFS} is missing; the OS image needs it",
            "install Debian squashfs-tools (scripts/bootstrap does), or build without the "
            "image with --os-image none",
        )
    with tempfile.TemporaryDirectory(prefix="initpy-osimage.") as work:
        top = os.path.join(work, "tree")
        os.mkdir(top)
        pseudo = os.path.join(work, "pseudo")
        with open(pseudo, "w") as f:
            f.writelines(_stage(entries, top))
        out = os.path.join(work, "os.squashfs")
        run(
            [
                MKSQUASHFS, top, out, "-noappend", "-quiet", "-no-progress", "-no-xattrs",
                "-reproducible", *args, "-pf", pseudo,
            ],
            env={**os.environ, "SOURCE_DATE_EPOCH": str(mtime)},
        )  # fmt: skip
        with open(out, "rb") as f:
            image = f.read()
    if cached is not None:
        cpio.cache_put(cached, image)
    return image


def segment(image: bytes, mtime: int) -> bytes:
    """The initrd's archive that carries the image (uncompressed, first in the initrd)."""
    inside = layout.OS_IMAGE.lstrip("/")
    return cpio.archive(
        [cpio.directory(p, 0o755) for p in parents(inside)]
        + [cpio.regular(inside, data=image, perm=0o444)],
        mtime,
    )
