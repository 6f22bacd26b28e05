"""The initrd builder: from hooks, a kernel and its modules to the three files.

Owned by the builder; `build()` runs the steps, each in its own module, and
initpy.builder.mkinitrd_cli is its command line (`mkinitrd`, `mkinitrd.py`):

1. the hooks are found once and the registry built (initpy.builder.hooks);
2. the init is frozen (initpy.builder.freeze, cached) - the step is
   injectable, so tests build without PyInstaller;
3. the hooks' binaries, --include files and busybox go in, ELF files with
   their libraries (initpy.builder.binaries);
4. modules are chosen, decompressed and indexed (initpy.builder.drivers,
   kmod, kernel_modules);
5. the layers are merged (busybox applets < --rootfs < the init's files)
   and split into one newc archive per part (initpy.builder.layers), each
   compressed (initpy.builder.cpio); with --rootfs, the tree's /usr goes
   into the OS image instead, a squashfs in an uncompressed archive of its
   own, first (initpy.builder.os_image);
6. the manifest (initpy.runtime.layout.Manifest: hooks, modules, build
   id) is the last archive; OUTDIR gets buildos-image, buildos-initrd and
   buildos-buildid (the sha256 of the other archives, uncompressed: it
   changes exactly when the content does).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from initpy.builder import cpio, freeze, hooks, layers, os_image, os_modules, size_report
from initpy.builder import rootfs as os_tree
from initpy.builder.binaries import add_busybox, add_elf_files, debian_busybox, wanted_binaries
from initpy.builder.command import BuildError
from initpy.builder.kernel_modules import add_modules
from initpy.builder.layers import PART_MANIFEST, PART_ROOTFS, Layer
from initpy.builder.options import Compression, Options
from initpy.builder.os_image import ImageCompression
from initpy.builder.os_modules import OsModules
from initpy.runtime import layout

__all__ = [
    "BuildError",
    "BuildResult",
    "Compression",
    "Freezer",
    "ImageCompression",
    "Options",
    "build",
]


@dataclass(frozen=True)
class BuildResult:
    image: str
    initrd: str
    buildid: str
    entries: tuple[tuple[cpio.Entry, str], ...]  # what the archive holds, with parts
    frozen: freeze.Frozen
    notes: tuple[str, ...]
    timings: tuple[tuple[str, float], ...]
    parts: tuple[tuple[str, int, int], ...]  # (part, raw bytes, compressed bytes)
    # Under --rootfs, what each part costs (initpy.builder.size_report), else ().
    report: tuple[tuple[str, int, int], ...] = ()


Freezer = Callable[[Sequence[str]], freeze.Frozen]
KEEP_COMPRESSED = 40  # a few builds' parts, for every compression
KEEP_OS_IMAGES = 4  # the OS images of a few trees or compressors (100+ MB each)


def compressed_cache_dir() -> str:
    return os.path.join(os.path.dirname(freeze.cache_root()), "compressed")


def os_image_cache_dir() -> str:
    # Apart from the compressed parts: a few builds of small parts would
    # push out an image that took minutes to make.
    return os.path.join(os.path.dirname(freeze.cache_root()), "os-image")


def build(
    options: Options,
    freezer: Freezer | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> BuildResult:
    """Build OUTDIR's three files; `freezer` is freeze.freeze unless a test gives its own."""
    timings: list[tuple[str, float]] = []
    notes: list[str] = []
    clock = time.monotonic()

    def lap(what: str) -> None:
        nonlocal clock
        now = time.monotonic()
        timings.append((what, now - clock))
        clock = now

    for path, what in ((options.kernel, "--kernel"), (options.modules, "--modules")):
        if not os.path.exists(path):
            raise BuildError(f"{what} {path}: no such file or folder")
    if options.compress not in cpio.COMPRESSIONS:
        raise BuildError(
            f"--compress {options.compress}: unknown", "use one of " + ", ".join(cpio.COMPRESSIONS)
        )
    folders = [*([options.base_hooks_dir] if options.base_hooks_dir else []), *options.hook_dirs]
    with_image = bool(options.rootfs) and options.os_image != ImageCompression.NONE
    chosen = hooks.choose(folders, options.hooks, os_image=with_image)
    registry = chosen.registry
    if options.rootfs:  # before the freeze: a tree that cannot work fails in a second
        os_tree.check(options.rootfs, options.modules, registry.hooks)
    lap("registry")

    frozen = (freezer or freeze.freeze)(chosen.sources())
    log(f"frozen init: {'cached' if frozen.cached else 'frozen now'} ({frozen.key})")
    lap("freeze")

    init = Layer()
    fallback = Layer()  # under --rootfs: busybox applets, indexes, folders
    with tempfile.TemporaryDirectory(prefix="initpy-mkinitrd.") as work:
        layers.add_skeleton(init, fallback)
        layers.add_frozen(init, frozen)
        hook_files = hooks.add_hooks(init, chosen)
        wanted = wanted_binaries(registry)
        add_elf_files(init, wanted, [*hook_files, *options.includes], work)
        add_busybox(init, fallback, options.busybox or debian_busybox(), work)
        lap("binaries")
        packed_modules = add_modules(
            init,
            fallback,
            registry,
            options.modules,
            options.drivers,
            options.extra_drivers,
            options.firmware_dir,
            options.sys_root,
            work,
        )
        notes += packed_modules.notes
        lap("modules")
        rootfs = Layer()
        if options.rootfs:
            if not os.path.isdir(options.rootfs):
                raise BuildError(f"--rootfs {options.rootfs}: not a folder")
            layers.add_tree(rootfs, options.rootfs, PART_ROOTFS, keep=os_tree.keeps)
            os_modules_dir = options.modules
            if options.os_modules == OsModules.BUILD_HOST:
                os_modules_dir, note = os_modules.for_rootfs(
                    options.modules, (m.name for m in packed_modules.modules), work
                )
                notes.append(note)
            for entry, part in os_tree.entries(
                options.rootfs, os_modules_dir, packed_modules.kernel_version, registry.hooks
            ):
                rootfs.add(entry, part)
        merged = layers.merge([fallback, rootfs, init])
        in_initramfs = merged
        if with_image:
            in_image, in_initramfs = os_image.split(merged, layers.merge([fallback, init]))
        lap("layout")
        archives = layers.split_archives(in_initramfs, options.source_date_epoch)
        if with_image:
            raw_image = cpio.archive([e for e, _part in in_image], options.source_date_epoch)
            squashed = os_image.squash(
                [e for e, _part in in_image],
                raw_image,
                options.os_image,
                options.os_image_level,
                options.source_date_epoch,
                None if options.no_cache else os_image_cache_dir(),
            )
            del raw_image
            # First: the kernel reads an uncompressed archive at a 4-byte boundary.
            archives.insert(
                0, (os_image.PART_OS_IMAGE, os_image.segment(squashed, options.source_date_epoch))
            )
            notes.append(
                f"OS image: {len(in_image)} entries of --rootfs's /usr in "
                f"{len(squashed) / 1e6:.1f} MB (squashfs, "
                f"{' '.join(os_image.compressor_args(options.os_image, options.os_image_level))}, "
                f"{os_image.BLOCK_SIZE // 1024} KiB blocks)"
            )
            lap("os image")
        # The build id covers everything but the manifest, which carries it.
        build_id = hashlib.sha256(b"".join(raw for _part, raw in archives)).hexdigest()
        manifest = layout.Manifest(
            build_id,
            chosen.names,
            packed_modules.kernel_version,
            packed_modules.modules,
            str(options.drivers),
            options.extra_drivers,
        )
        archives.append(
            (
                PART_MANIFEST,
                cpio.archive(
                    [cpio.directory(p, 0o755) for p in layers.parents(layout.MANIFEST)]
                    + [cpio.regular(layout.MANIFEST.lstrip("/"), data=manifest.to_json())],
                    options.source_date_epoch,
                ),
            )
        )
        lap("archive")
        cache = None if options.no_cache else compressed_cache_dir()
        packed = [
            raw
            if part == os_image.PART_OS_IMAGE  # compressed already
            else cpio.compress_cached(raw, options.compress, cache, options.compress_level)
            for part, raw in archives
        ]
        lap("compress")
        report: tuple[tuple[str, int, int], ...] = ()
        if options.rootfs:
            report = size_report.measure(
                merged, options.compress, options.compress_level, cache, options.source_date_epoch
            )
            lap("size report")
        if cache is not None:
            freeze.prune(cache, KEEP_COMPRESSED)
            if with_image:
                freeze.prune(os_image_cache_dir(), KEEP_OS_IMAGES)
    image = os.path.join(options.outdir, "buildos-image")
    initrd = os.path.join(options.outdir, "buildos-initrd")
    buildid = os.path.join(options.outdir, "buildos-buildid")
    try:
        os.makedirs(options.outdir, exist_ok=True)
        with open(options.kernel, "rb") as f:
            _write(image, f.read())
        _write(initrd, b"".join(packed))
        _write(buildid, (build_id + "\n").encode())
    except OSError as exc:
        raise BuildError(
            f"cannot write {exc.filename or options.outdir}: {exc.strerror or exc}",
            f"give -o a folder you may write to (-o {options.outdir} was given)",
        ) from exc
    lap("write")
    sizes = tuple((part, len(raw), len(p)) for (part, raw), p in zip(archives, packed, strict=True))
    return BuildResult(
        image, initrd, buildid, tuple(merged), frozen, tuple(notes), tuple(timings), sizes, report
    )


def _write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
