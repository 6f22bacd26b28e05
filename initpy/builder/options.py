"""mkinitrd's options: one table (`SETTINGS`), and the `Options` a build takes.

Owned by the builder. Each option is one `Setting` row; the `mkinitrd`
parser (initpy.builder.mkinitrd_cli), the defaults of `Options` and the
options table in docs/builder.md all come from the rows. `Options` also
has the fields no command line sets (the epoch comes from
SOURCE_DATE_EPOCH; tests and benchmarks set the others).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from initpy.builder import cpio
from initpy.builder.drivers import Drivers
from initpy.builder.hooks import ALWAYS_HOOKS, default_hooks_dir
from initpy.builder.os_image import ZSTD_MAX_LEVEL, ImageCompression
from initpy.builder.os_modules import OsModules
from initpy.builder.settings import DEBUG, Setting, default_of


class Compression(StrEnum):
    """How the initrd's archives are compressed."""

    ZSTD = "zstd"
    LZ4 = "lz4"
    GZIP = "gzip"
    XZ = "xz"
    NONE = "none"


def parse_compression(text: str) -> tuple[Compression, int | None]:
    """`METHOD[:LEVEL]`; ValueError names the methods or the levels."""
    try:
        method, level = cpio.parse_compression(text)
    except cpio.ArchiveError as exc:
        raise ValueError(exc.message) from None
    return Compression(method), level


def parse_image_compression(text: str) -> tuple[ImageCompression, int | None]:
    """`zstd[:LEVEL]`, `xz` or `none`; ValueError names what is accepted."""
    method, colon, level = text.partition(":")
    if method not in set(ImageCompression) or (colon and method != ImageCompression.ZSTD):
        raise ValueError(f"{text!r}: use zstd, zstd:LEVEL (1 to 22), xz or none")
    if colon and not (level.isdigit() and 1 <= int(level) <= ZSTD_MAX_LEVEL):
        raise ValueError(f"{text!r}: zstd's level is 1 to {ZSTD_MAX_LEVEL}")
    return ImageCompression(method), int(level) if colon else None


def _names(text: str | None) -> tuple[str, ...] | None:
    return tuple(n for n in text.split(",") if n) if text else None


SETTINGS: tuple[Setting, ...] = (
    Setting(("--kernel",), "kernel", "the kernel image, copied as buildos-image", "VMLINUZ",
            required=True),
    Setting(("--modules",), "modules", "the kernel's lib/modules/<version> folder", "DIR",
            required=True),
    Setting(("-o", "--output"), "outdir",
            "where buildos-image, buildos-initrd and buildos-buildid are written", "OUTDIR",
            required=True),
    Setting(("--rootfs",), "rootfs",
            "an OS tree packed under the init's files (the init's files win)", "DIR"),
    Setting(("--os-modules",), "os_modules",
            "the kernel modules a --rootfs OS gets: build-host (all but sound, radios, media, "
            "3D GPUs, sensors and the like; docs/os.md), all (the kernel's whole tree)",
            default=OsModules.BUILD_HOST.value, choices=tuple(m.value for m in OsModules),
            parse=OsModules, metavar="{" + ",".join(m.value for m in OsModules) + "}"),
    Setting(("--os-image",), "os_image",
            "how --rootfs's /usr travels: a squashfs image compressed with zstd (level 19 "
            "unless given: zstd:3 packs in seconds, for tests) or xz, mounted at boot under "
            "an overlay, so that only the compressed image stays in RAM; none unpacks the "
            "whole tree into the initramfs, as before (docs/os.md)",
            "{zstd[:LEVEL],xz,none}", default=ImageCompression.ZSTD.value,
            parse=parse_image_compression,
            fields=lambda value: {"os_image": value[0], "os_image_level": value[1]}),
    Setting(("--include",), "includes",
            "a host file or folder; an ELF file brings its libraries", "SRC[:DST]",
            repeatable=True),
    Setting(("--hooks",), "hooks",
            "comma-separated hook names; " + ", ".join(ALWAYS_HOOKS) + " are always included",
            "NAMES", parse=_names, shown_default="every hook found"),
    Setting(("--hooks-dir",), "hook_dirs",
            "another hooks folder, after the hooks that come with initpy", "DIR",
            repeatable=True),
    Setting(("--drivers",), "drivers",
            "device drivers to pack: generic (NICs and storage controllers a build host may "
            "have), host (those this machine's devices use), none",
            default=Drivers.GENERIC.value, choices=tuple(d.value for d in Drivers),
            parse=Drivers, metavar="{" + ",".join(d.value for d in Drivers) + "}"),
    Setting(("--driver",), "extra_drivers",
            "another driver module to pack, e.g. one that `modprobe -R MODALIAS` names for "
            "a device", "NAME", repeatable=True),
    Setting(("--firmware-dir",), "firmware_dir",
            "where the firmware the packed drivers declare is looked for; files found are "
            "packed", "DIR", default="/lib/firmware"),
    Setting(("--busybox",), "busybox",
            "the busybox for /bin/sh, the applets and the kernel's modprobe, static or dynamic",
            "FILE", shown_default="Debian's busybox package (dynamic: it shares the init's "
            "glibc), fetched with apt-get into the cache"),
    Setting(("--compress",), "compress",
            f"{', '.join(cpio.COMPRESSIONS)}, with a level if wanted (lz4 at 9 is the fastest "
            "to unpack; scripts/pxe-layout recompresses it with zstd -19 for TFTP); zstd:3 "
            "packs a full OS image in seconds rather than minutes (test images)",
            "METHOD[:LEVEL]", default="lz4", parse=parse_compression,
            fields=lambda value: {"compress": value[0], "compress_level": value[1]}),
    Setting(("--no-cache",), "no_cache",
            "compress every part again instead of reusing earlier output (the freeze cache "
            "stays)", switch=True, default=False),
    Setting(("--verbose",), "verbose", "print each step's time and each part's size",
            switch=True, option=False),
    DEBUG,
)  # fmt: skip


@dataclass(frozen=True)
class Options:
    """One build's inputs; the defaults are the SETTINGS rows'."""

    kernel: str
    modules: str
    outdir: str
    rootfs: str | None = default_of(SETTINGS, "rootfs")
    os_modules: OsModules = default_of(SETTINGS, "os_modules")
    os_image: ImageCompression = default_of(SETTINGS, "os_image")
    os_image_level: int | None = default_of(SETTINGS, "os_image_level")  # None: zstd's 19
    includes: tuple[str, ...] = default_of(SETTINGS, "includes")
    hooks: tuple[str, ...] | None = default_of(SETTINGS, "hooks")  # None: every hook found
    hook_dirs: tuple[str, ...] = default_of(SETTINGS, "hook_dirs")  # after base_hooks_dir
    compress: Compression = default_of(SETTINGS, "compress")
    compress_level: int | None = default_of(SETTINGS, "compress_level")  # None: the method's
    no_cache: bool = default_of(SETTINGS, "no_cache")
    drivers: Drivers = default_of(SETTINGS, "drivers")
    extra_drivers: tuple[str, ...] = default_of(SETTINGS, "extra_drivers")
    firmware_dir: str = default_of(SETTINGS, "firmware_dir")
    busybox: str | None = default_of(SETTINGS, "busybox")  # None: Debian's busybox package
    # Not on the command line:
    source_date_epoch: int = 0  # SOURCE_DATE_EPOCH
    sys_root: str = "/sys"  # the build machine's devices, for --drivers host
    # The folder whose hooks come first; None for none (tests use their own).
    base_hooks_dir: str | None = field(default_factory=default_hooks_dir)
