"""The OS image (squashfs): mount_os on the fake kernel, and the builder's side of it.

mount_os attaches the image, mounts it read-only and lays /usr over it, or
goes to rescue naming what is wrong and the fix. The builder splits the
merged layers between the image and the initramfs so that the overlay
shows what the merge chose, chooses the hook with the image and only with
it, packs a reproducible squashfs whose owners do not depend on who
builds, and keeps the image's uncompressed archive whole where initrds are
decompressed or recompressed (pxe-layout).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hooks import os_image as hook
from initpy.builder import cpio, layers, os_image, pxe
from initpy.builder.command import BuildError
from initpy.builder.hooks import choose_names
from initpy.builder.options import parse_image_compression
from initpy.builder.rootfs import PART_OS_MODULES
from initpy.devtools.fake import FakeKernel
from initpy.runtime import layout
from initpy.runtime.hook import BootContext, BootFailure, discover
from initpy.runtime.kernel import MS_RDONLY
from initpy.runtime.report import Report
from tests.unit.conftest import HOOKS_DIR

needs_mksquashfs = pytest.mark.skipif(
    shutil.which("mksquashfs") is None or shutil.which("unsquashfs") is None,
    reason="needs squashfs-tools (scripts/bootstrap installs it)",
)


def with_image(k: FakeKernel) -> None:
    """An image file, and the /usr that mounting it shows (the fake mount shows nothing)."""
    image = k.path(layout.OS_IMAGE)
    os.makedirs(os.path.dirname(image), exist_ok=True)
    Path(image).write_bytes(b"hsqs" + bytes(4092))
    os.makedirs(k.path(hook.OS_USR), exist_ok=True)
    os.utime(k.path(hook.OS_USR), (0, 0))  # mkinitrd clamps the image's times


def mount_os(k: FakeKernel) -> str:
    return hook.mount_os(BootContext(kernel=k, report=Report(k)))


def test_the_image_is_attached_mounted_read_only_and_laid_over_usr(kernel: FakeKernel) -> None:
    with_image(kernel)
    detail = mount_os(kernel)
    assert ("attach_loop", layout.OS_IMAGE) in kernel.calls
    mounts = [c for c in kernel.calls if c[0] == "mount"]
    assert mounts[0] == ("mount", "/dev/loop0", layout.OS_MOUNTED, "squashfs", MS_RDONLY, "")
    assert mounts[1][1:4] == ("tmpfs", layout.OS_WRITES, "tmpfs")
    # The image on top, the initramfs's own /usr below it, writes to the tmpfs.
    assert mounts[2][1:4] == ("overlay", "/usr", "overlay")
    assert mounts[2][5] == (
        f"lowerdir={layout.OS_MOUNTED}/usr:/usr,upperdir={layout.OS_WRITES}/upper,"
        f"workdir={layout.OS_WRITES}/work"
    )
    assert "on /dev/loop0, overlaid on /usr" in detail
    # /usr keeps the image's time, not the boot's (ConditionNeedsUpdate=).
    image_usr = os.stat(kernel.path(hook.OS_USR)).st_mtime
    assert os.stat(kernel.path(hook.UPPER)).st_mtime == image_usr


def test_a_missing_image_names_the_rebuild(kernel: FakeKernel) -> None:
    with pytest.raises(BootFailure) as failed:
        mount_os(kernel)
    assert f"{layout.OS_IMAGE} is not in the initrd" in failed.value.reason
    assert "mkinitrd --rootfs TREE" in failed.value.fix
    assert not any(c[0] == "mount" for c in kernel.calls)


def test_a_loop_device_that_cannot_be_had_names_the_driver(kernel: FakeKernel) -> None:
    with_image(kernel)
    kernel.failures["attach_loop"] = {layout.OS_IMAGE: 2}
    with pytest.raises(BootFailure) as failed:
        mount_os(kernel)
    assert "cannot attach the OS image" in failed.value.reason
    assert "CONFIG_BLK_DEV_LOOP" in failed.value.fix


def test_a_broken_image_names_the_rebuild_and_the_compressor(kernel: FakeKernel) -> None:
    with_image(kernel)
    kernel.failures["mount"] = {layout.OS_MOUNTED: 22}
    with pytest.raises(BootFailure) as failed:
        mount_os(kernel)
    assert "does not mount (squashfs on /dev/loop0)" in failed.value.reason
    assert "mkinitrd --rootfs TREE" in failed.value.fix
    assert "CONFIG_SQUASHFS_ZSTD" in failed.value.fix


def test_an_image_without_usr_is_refused_before_the_overlay(kernel: FakeKernel) -> None:
    with_image(kernel)
    shutil.rmtree(kernel.path(hook.OS_USR))
    with pytest.raises(BootFailure) as failed:
        mount_os(kernel)
    assert "holds no /usr" in failed.value.reason
    assert not any(c[0] == "mount" and c[2] == "/usr" for c in kernel.calls)


def test_an_overlay_the_kernel_refuses_names_overlayfs(kernel: FakeKernel) -> None:
    with_image(kernel)
    kernel.failures["mount"] = {"/usr": 19}
    with pytest.raises(BootFailure) as failed:
        mount_os(kernel)
    assert "cannot lay the OS image over /usr" in failed.value.reason
    assert "CONFIG_OVERLAY_FS" in failed.value.fix


def test_the_hook_asks_for_its_modules_and_runs_before_the_os_is_used() -> None:
    assert set(hook.HOOK.modules) == {"loop", "squashfs", "overlay"}
    found = discover([HOOKS_DIR])
    names = choose_names(found, None, os_image=True)
    assert names[:2] == ["modules", layout.OS_IMAGE_HOOK]
    from initpy.runtime.hook import build_registry, select

    order = build_registry(select(found, names), found.values()).order
    assert order[order.index("load_modules") + 1] == hook.MOUNT_OS


def test_the_hook_comes_with_the_image_only() -> None:
    found = discover([HOOKS_DIR])
    assert layout.OS_IMAGE_HOOK not in choose_names(found, None)
    assert layout.OS_IMAGE_HOOK not in choose_names(found, ["storage"])
    with pytest.raises(BuildError) as refused:
        choose_names(found, ["storage", layout.OS_IMAGE_HOOK])
    assert "carries no OS image" in refused.value.message


def test_split_puts_the_trees_usr_into_the_image_and_keeps_what_it_replaces() -> None:
    fallback, tree, init = layers.Layer(), layers.Layer(), layers.Layer()
    fallback.add(cpio.symlink("usr/bin/ls", "/usr/bin/busybox"), layers.PART_BINARIES)
    fallback.add(cpio.symlink("usr/bin/vi", "/usr/bin/busybox"), layers.PART_BINARIES)
    tree.add(cpio.regular("usr/bin/ls", data=b"ls"), layers.PART_ROOTFS)
    tree.add(cpio.regular("usr/bin/ip", data=b"debian ip"), layers.PART_ROOTFS)
    tree.add(cpio.regular("usr/lib/modules/6/a.ko", data=b"ko"), PART_OS_MODULES)
    tree.add(cpio.regular("etc/hostname", data=b"debian"), layers.PART_ROOTFS)
    init.add(cpio.regular("usr/bin/ip", data=b"init ip"), layers.PART_BINARIES)
    init.add(cpio.regular("usr/bin/busybox", data=b"bb"), layers.PART_BINARIES)
    merged = layers.merge([fallback, tree, init])
    image, rest = os_image.split(merged, layers.merge([fallback, init]))
    assert {e.path for e, _p in image} == {"usr/bin/ls", "usr/lib/modules/6/a.ko"}
    kept = {e.path: e for e, _p in rest}
    # busybox's ls stays below the image's, for the rescue before the mount.
    assert kept["usr/bin/ls"].data == b"/usr/bin/busybox"
    assert kept["usr/bin/vi"].data == b"/usr/bin/busybox"
    assert kept["usr/bin/ip"].data == b"init ip"  # the init's file won: not in the image
    assert kept["etc/hostname"].data == b"debian"  # outside /usr: in the initramfs


def test_parse_image_compression() -> None:
    assert parse_image_compression("zstd") == (os_image.ImageCompression.ZSTD, None)
    assert parse_image_compression("zstd:3") == (os_image.ImageCompression.ZSTD, 3)
    assert parse_image_compression("none") == (os_image.ImageCompression.NONE, None)
    for bad in ("gzip", "xz:3", "zstd:0", "zstd:x"):
        with pytest.raises(ValueError):
            parse_image_compression(bad)


def test_the_images_archive_stays_whole_when_the_initrd_is_decompressed() -> None:
    plain = os_image.segment(b"hsqs-image", 0)
    rest = cpio.archive([cpio.regular("etc/a", data=b"a")], 0)
    initrd = plain + cpio.compress(rest, "lz4")
    assert cpio.plain_length(initrd) == len(plain)
    assert cpio.decompress(initrd) == plain + rest
    members = {m.path: m.data for m in cpio.read_newc(cpio.decompress(initrd))}
    assert members[layout.OS_IMAGE.lstrip("/")] == b"hsqs-image"
    assert members["etc/a"] == b"a"


def test_pxe_layout_recompresses_all_but_the_images_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pxe, "compressed_cache_dir", lambda: str(tmp_path / "cache"))
    plain = os_image.segment(b"hsqs-image", 0)
    rest = cpio.archive([cpio.regular("etc/a", data=b"a")], 0)
    initrd = tmp_path / "initrd"
    initrd.write_bytes(plain + cpio.compress(rest, "lz4"))
    served = pxe.for_tftp(str(initrd))
    assert served is not None
    assert served.startswith(plain)
    assert served[len(plain) :].startswith(pxe.ZSTD_MAGIC)
    assert cpio.decompress(served) == plain + rest


@needs_mksquashfs
def test_the_image_keeps_modes_and_owners_and_is_reproducible(tmp_path: Path) -> None:
    source = tmp_path / "tool"
    source.write_bytes(b"#!/bin/sh\n")
    entries = [
        cpio.directory("usr/lib/odd dir", 0o750),
        cpio.Entry("usr/bin/tool", 0o104755, source=str(source), uid=0, gid=0),
        cpio.Entry("usr/lib/odd dir/data", 0o100640, data=b"x", uid=1234, gid=105),
        cpio.symlink("usr/sbin/tool", "../bin/tool"),
    ]
    raw = cpio.archive(entries, 0)
    zstd = os_image.ImageCompression.ZSTD
    first = os_image.squash(entries, raw, zstd, 3, 0, None)
    again = os_image.squash(entries, raw, zstd, 3, 0, None)
    assert first == again
    image = tmp_path / "os.squashfs"
    image.write_bytes(first)
    listing = subprocess.run(
        ["unsquashfs", "-lln", str(image)], capture_output=True, text=True, check=True
    ).stdout
    lines = {line.split(" squashfs-root/")[-1]: line.split()[:2] for line in listing.splitlines()}
    assert lines["usr/bin/tool"] == ["-rwsr-xr-x", "0/0"]
    assert lines["usr/lib/odd dir"] == ["drwxr-x---", "0/0"]
    assert lines["usr/lib/odd dir/data"] == ["-rw-r-----", "1234/105"]
    assert lines["usr/sbin/tool -> ../bin/tool"][0].startswith("l")
    # The staging folder links the tree's files: their modes stay the tree's.
    assert source.stat().st_mode & 0o7777 != 0o4755


@needs_mksquashfs
def test_the_image_is_cached_by_its_content(tmp_path: Path) -> None:
    entries = [cpio.regular("usr/share/a", data=b"a")]
    raw = cpio.archive(entries, 0)
    zstd = os_image.ImageCompression.ZSTD
    cache = str(tmp_path / "cache")
    built = os_image.squash(entries, raw, zstd, 3, 0, cache)
    (cached,) = os.listdir(cache)
    assert cached.endswith(".squashfs")
    assert os_image.squash(entries, raw, zstd, 3, 0, cache) == built
