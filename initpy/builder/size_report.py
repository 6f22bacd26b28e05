"""What each part of a full image costs: mkinitrd --rootfs's size report.

Owned by the builder. The operator of a build host trades RAM for what the
OS holds; this says what each part holds, raw (as unpacked in RAM) and
compressed with the image's own compressor and level. Each part's entries
are archived (newc) and compressed alone, so a part's figure does not
depend on how the image groups its bytes (one archive per layer today, or
a filesystem image): the parts' compressed figures add up to about the
image's size, not exactly to it.

The parts, by path in the merged image:
- `modules`: the kernel's modules and firmware (the OS's and the init's);
- `Python`: the OS's python3 (interpreter, standard library, libpython);
- `the init`: the frozen init, its binaries and libraries, the hooks, the
  manifest and the skeleton (busybox's applets, device nodes);
- `the rest of the OS`: everything else of the --rootfs tree, and the
  hooks' files for it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from initpy.builder import cpio, layers
from initpy.builder.rootfs import PART_OS_FILES, PART_OS_MODULES

MODULES, PYTHON, INIT, REST = "modules", "Python", "the init", "the rest of the OS"
PARTS = (MODULES, PYTHON, REST, INIT)
MODULE_PATHS = re.compile(r"usr/lib/(modules|firmware)(/|$)")
PYTHON_PATHS = re.compile(
    r"usr/lib/python3[.\d]*(/|$)|usr/bin/python3[.\d]*$|usr/share/python3(/|$)"
    r"|usr/lib/x86_64-linux-gnu/libpython3"
)
# The init's own layers; the skeleton (PART_OTHER) is the init's too.
INIT_LAYERS = (layers.PART_INIT, layers.PART_BINARIES, layers.PART_OTHER)


def part_of(path: str, layer: str) -> str:
    """The report's part for an entry of the merged image, from its path and layer."""
    if MODULE_PATHS.match(path) or layer in (layers.PART_MODULES, PART_OS_MODULES):
        return MODULES
    if layer in INIT_LAYERS:
        return INIT
    if layer != PART_OS_FILES and PYTHON_PATHS.match(path):
        return PYTHON
    return REST


def measure(
    merged: Sequence[tuple[cpio.Entry, str]],
    method: str,
    level: int | None,
    cache_dir: str | None,
    mtime: int,
) -> tuple[tuple[str, int, int], ...]:
    """(part, raw bytes, compressed bytes) for each part, in PARTS order.

    Raw is the bytes of the part's files and symlinks (what they take in
    RAM, but for the filesystem's own overhead); compressed is the part's
    own newc archive through `method`.
    """
    regrouped = [(entry, part_of(entry.path, layer)) for entry, layer in merged]
    raw = dict.fromkeys(PARTS, 0)
    for entry, part in regrouped:
        if not entry.is_dir:
            raw[part] += len(entry.data) if entry.source is None else os.path.getsize(entry.source)
    archives = dict(layers.split_archives(regrouped, mtime))
    return tuple(
        (part, raw[part], len(cpio.compress_cached(archives[part], method, cache_dir, level)))
        for part in PARTS
        if part in archives
    )


def lines(parts: Sequence[tuple[str, int, int]], compression: str) -> list[str]:
    """The report: one line per part, and the total."""
    total_raw = sum(raw for _p, raw, _c in parts)
    total_packed = sum(packed for _p, _r, packed in parts)
    width = max(len(part) for part, _r, _c in parts)
    return [
        f"{part:<{width}}  {raw / 1e6:7.1f} MB raw  {packed / 1e6:6.1f} MB {compression}"
        for part, raw, packed in parts
    ] + [
        f"{'total':<{width}}  {total_raw / 1e6:7.1f} MB raw  {total_packed / 1e6:6.1f} MB "
        f"{compression} (each part compressed alone)"
    ]
