"""The initrd's layers: entries by path, merged, then split into archives.

Owned by the builder (mkinitrd). Each step adds entries to a `Layer`,
tagging each with the part of the initrd it belongs to (the benchmark's
size split, and one compressed archive per part). `merge` stacks the
layers, later ones winning (busybox applets < --rootfs < the init's
files), and moves paths below a symlinked folder through it: the initrd is
merged-/usr (bin, sbin, lib, lib64 are symlinks into usr/).
`split_archives` writes one newc archive per part.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from initpy.builder import cpio, freeze

MERGED_USR = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
# Debian kernels do not mount devtmpfs on the initramfs, and Python aborts
# at start-up without /dev/urandom: the archive carries these.
DEVICE_NODES = (
    ("dev/console", 5, 1, 0o600),
    ("dev/tty", 5, 0, 0o666),
    ("dev/null", 1, 3, 0o666),
    ("dev/zero", 1, 5, 0o666),
    ("dev/random", 1, 8, 0o666),
    ("dev/urandom", 1, 9, 0o666),
    ("dev/kmsg", 1, 11, 0o644),
)
EMPTY_DIRS = ("dev", "proc", "sys", "run", "tmp", "root", "mnt", "etc", "var", "usr/lib64")
# The parts of the initrd, for the benchmark's size split.
PART_INIT, PART_BINARIES, PART_MODULES, PART_ROOTFS, PART_OTHER, PART_MANIFEST = (
    "frozen init",
    "binaries+libraries",
    "modules",
    "rootfs",
    "other",
    "manifest",
)
# The archives, in the order they are concatenated.
ARCHIVE_ORDER = (PART_ROOTFS, PART_OTHER, PART_MODULES, PART_BINARIES, PART_INIT)


@dataclass
class Layer:
    """Archive entries by path, each with the part of the initrd it belongs to."""

    entries: dict[str, tuple[cpio.Entry, str]] = field(default_factory=dict)

    def add(self, entry: cpio.Entry, part: str) -> None:
        self.entries[entry.path] = (entry, part)


def add_skeleton(layer: Layer, below: Layer) -> None:
    """The merged-/usr links and device nodes; the empty folders go `below`
    a --rootfs, whose own modes win (its /root is 0700)."""
    for link, target in MERGED_USR.items():
        layer.add(cpio.symlink(link, target), PART_OTHER)
    for folder in EMPTY_DIRS:
        perm = {"tmp": 0o1777, "root": 0o700}.get(folder, 0o755)
        below.add(cpio.directory(folder, perm), PART_OTHER)
    for path, major, minor, perm in DEVICE_NODES:
        layer.add(cpio.char_device(path, major, minor, perm), PART_OTHER)


def add_frozen(layer: Layer, frozen: freeze.Frozen) -> None:
    for entry in cpio.entries_from_tree(os.path.join(frozen.tree, "frozen"), freeze.FROZEN_DIR):
        layer.add(no_mtime(entry), PART_INIT)
    for entry in cpio.entries_from_tree(os.path.join(frozen.tree, "lib"), freeze.PRIVATE_LIB_DIR):
        layer.add(no_mtime(entry), PART_INIT)
    # The kernel runs /init as PID 1; PyInstaller finds _internal/ next to
    # the executable's real path, so a symlink is enough.
    layer.add(cpio.symlink("init", freeze.FROZEN_EXE), PART_INIT)


def add_tree(
    layer: Layer, top: str, part: str, keep: Callable[[str], bool] = lambda _path: True
) -> None:
    """A whole host folder (a --rootfs), owners kept, but for the paths `keep` refuses."""
    for entry in cpio.entries_from_tree(top, keep_owners=True):
        if keep(entry.path):
            layer.add(entry, part)


def add_host_path(layer: Layer, source: str, dest: str, part: str) -> None:
    if os.path.isdir(source) and not os.path.islink(source):
        for entry in cpio.entries_from_tree(source, dest):
            layer.add(entry, part)
    elif os.path.islink(source):
        layer.add(cpio.symlink(dest, os.readlink(source)), part)
    else:
        layer.add(
            cpio.regular(dest, source=source, perm=stat.S_IMODE(os.stat(source).st_mode)), part
        )


def no_mtime(entry: cpio.Entry) -> cpio.Entry:
    # The cache's file times say when it was frozen, not what it holds.
    return dataclasses.replace(entry, mtime=None)


def parents(path: str) -> list[str]:
    """The folders above an initrd path, outermost first (for a lone archive)."""
    parts = path.strip("/").split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def merged_usr(path: str) -> str:
    """An initrd path with its first folder taken through the merged-/usr links."""
    first, _, rest = path.partition("/")
    if first in MERGED_USR:
        return f"{MERGED_USR[first]}/{rest}" if rest else MERGED_USR[first]
    return path


def merge(layers: Sequence[Layer]) -> list[tuple[cpio.Entry, str]]:
    """Merge layers, later ones winning; move paths below symlinked folders.

    A path whose parent is a symlink in the result (bin -> usr/bin) is moved
    to the link's target, so `bin/ls` of a non-merged --rootfs lands in
    usr/bin/ls, where the kernel would have written it anyway.
    """
    top: dict[str, tuple[cpio.Entry, str, int]] = {}
    for rank, layer in enumerate(layers):
        for path, (entry, part) in layer.entries.items():
            top[path] = (entry, part, rank)
    links = {p: e.data.decode() for p, (e, _part, _r) in top.items() if stat.S_ISLNK(e.mode)}
    result: dict[str, tuple[cpio.Entry, str, int]] = {}
    for rank, layer in enumerate(layers):
        for path, (entry, part) in layer.entries.items():
            if top[path][2] != rank:
                continue
            moved = _through_links(path, links)
            if moved != path:
                entry = dataclasses.replace(entry, path=moved)
            kept = result.get(moved)
            if kept is None or kept[2] <= rank:
                result[moved] = (entry, part, rank)
    # A folder entry may have been replaced by a symlink to it (rootfs "bin").
    return [(e, part) for _p, (e, part, _r) in sorted(result.items())]


def _through_links(path: str, links: dict[str, str]) -> str:
    parts = path.split("/")
    for _ in range(40):  # symlink loops end here, as in the kernel
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in links:
                target = links[prefix]
                base = "" if target.startswith("/") else posixpath.dirname(prefix)
                resolved = posixpath.normpath(posixpath.join("/", base, target)).lstrip("/")
                parts = resolved.split("/") + parts[i:]
                break
        else:
            return "/".join(parts)
    return "/".join(parts)


def split_archives(merged: Sequence[tuple[cpio.Entry, str]], mtime: int) -> list[tuple[str, bytes]]:
    """One newc archive per part, to be compressed separately and concatenated.

    The kernel unpacks concatenated (compressed) archives in turn, so the
    initrd can be several; each part then compresses (and is cached) on its
    own. Paths are unique after the merge; each archive repeats the real
    entries of its parent folders, so no folder's mode depends on order.
    """
    by_path = {e.path: e for e, _part in merged}
    groups: dict[str, dict[str, cpio.Entry]] = {}
    for entry, part in merged:
        group = groups.setdefault(part, {})
        group[entry.path] = entry
        parent = posixpath.dirname(entry.path)
        while parent and parent not in group:
            if parent in by_path:
                group[parent] = by_path[parent]
            parent = posixpath.dirname(parent)
    order = [p for p in ARCHIVE_ORDER if p in groups] + sorted(set(groups) - set(ARCHIVE_ORDER))
    return [(part, cpio.archive(groups[part].values(), mtime)) for part in order]
