"""The PXE layout: one TFTP folder that boots mkinitrd's three files, BIOS and UEFI.

`pxe-layout OUTDIR TFTPDIR [options]` (initpy.builder.pxe_cli) lays out,
from mkinitrd's OUTDIR:

```
TFTPDIR/pxelinux.0                 Debian pxelinux (BIOS's network boot program)
TFTPDIR/ldlinux.c32                Debian syslinux-common (pxelinux's core module)
TFTPDIR/pxelinux.cfg/default       or 01-<mac> per --mac: one `label buildos`
TFTPDIR/shimx64.efi, grubx64.efi,  UEFI's: shim and Debian's signed network GRUB,
TFTPDIR/grub/...                   the same choice by MAC and append line
                                   (initpy.builder.grub)
TFTPDIR/buildos/buildos-image      the kernel
TFTPDIR/buildos/buildos-initrd
TFTPDIR/buildos/buildos-buildid    what initpy-monitor polls; written last
```

The boot programs come from Debian's packages, fetched with `apt-get
download` and unpacked with `dpkg-deb -x` into the cache
(initpy.builder.debfiles), never installed on the host; `--syslinux DIR`
and `--efi DIR` take them from folders instead. With `--http-base URL`,
GRUB fetches the kernel and initrd from a web server serving TFTPDIR.

**The append line.** pxelinux hands it to the kernel verbatim, and the
kernel splits it at spaces, with double quotes grouping. So a value that
holds a space or a double quote cannot be carried, and is refused here,
except `buildos.ssh_key` and `initpy.monitor.agent` (a program and its
arguments), which are written quoted (and may not hold a quote). Each
value is also checked with the very parameter the boot parses it with
(the hooks' declarations), and the whole line is tokenised as the boot
will tokenise it: what the host reads is what the operator typed, or the
layout is not written. GRUB's quoting differs (initpy.builder.grub): a
value it cannot carry is refused too, so both loaders hand the kernel
the same values.

**Writing.** Every file is written under a temporary name in its folder
and renamed into place, and the three buildos files are renamed image,
initrd, buildid: a host (by TFTP or HTTP) never sees half a file, and the build id (what
makes the fleet reboot) changes only once the files it names are there.
`--build-only` does just that step: rolling out, or back.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from initpy.builder import cpio, debfiles, grub
from initpy.builder.command import BuildError
from initpy.builder.mkinitrd import compressed_cache_dir
from initpy.runtime import cmdline
from initpy.runtime.cmdline import BadValue, Parameter
from initpy.runtime.hook import HookError, discover

BUILD_FILES = ("buildos-image", "buildos-initrd", "buildos-buildid")  # the order of renaming
BUILD_DIR = "buildos"
CONFIG_DIR = "pxelinux.cfg"
# What the network boot program needs, and where Debian's packages keep it.
SYSLINUX_FILES = {
    "pxelinux.0": ("pxelinux", "usr/lib/PXELINUX/pxelinux.0"),
    "ldlinux.c32": ("syslinux-common", "usr/lib/syslinux/modules/bios/ldlinux.c32"),
}
# x86's COMMAND_LINE_SIZE is 2048, and pxelinux adds BOOT_IMAGE= and
# initrd= to what we write.
APPEND_LIMIT = 1900
MAC = re.compile(r"[0-9a-f]{2}([:-][0-9a-f]{2}){5}")
# The values that may hold spaces: written in double quotes.
QUOTED = ("buildos.ssh_key", "initpy.monitor.agent")
DEFAULT_TIMEOUT = 50  # tenths of a second, as in the spec's example
# How the initrd travels over TFTP. mkinitrd's default (lz4) unpacks fast
# but is about half again as large as zstd -19: over TFTP the bytes cost more
# than the kernel's unpacking (docs/builder.md, docs/testing.md).
TFTP_COMPRESSION = "zstd"
# The first bytes of each compressed part mkinitrd writes, and of an
# uncompressed newc archive: an initrd that starts otherwise is copied as it is.
REPACKABLE = (b"\x02\x21\x4c\x18", b"\x1f\x8b", b"\xfd7zXZ", cpio.NEWC_MAGIC)
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class BootValues:
    """The buildos.* parameters for the append line (None: left out)."""

    buildid_url: str | None = None
    smtp_relay: str | None = None
    admin_email: str | None = None
    ssh_key: str | None = None
    agent: str | None = None  # initpy.monitor.agent: "PROGRAM ARGS"
    extra: tuple[str, ...] = ()  # further words, as given (console=ttyS0, initpy.*)


def mac_config_name(mac: str) -> str:
    """pxelinux's per-host file name: `01-` (Ethernet) and the MAC with dashes."""
    lowered = mac.strip().lower()
    if not MAC.fullmatch(lowered):
        raise BuildError(
            f"--mac {mac!r} is not a MAC address", "give six hex pairs: de:ad:be:ef:b8:da"
        )
    return "01-" + lowered.replace(":", "-")


def boot_parameters(hooks_dirs: Sequence[str]) -> dict[str, Parameter[object]]:
    """Every parameter the hooks declare, by name: the boot's own parsers."""
    try:
        hooks = discover(hooks_dirs)
    except HookError as exc:
        raise BuildError(f"hooks: {exc}") from None
    return {p.name: p for hook in hooks.values() for p in hook.parameters}


def append_line(values: BootValues, parameters: dict[str, Parameter[object]]) -> str:
    """The kernel command line for `append`, or BuildError naming what cannot be carried."""
    words: list[str] = []
    wanted: list[tuple[str, str | None]] = []
    given = (
        ("buildos.smtp_relay", values.smtp_relay),
        ("buildos.admin_email", values.admin_email),
        ("buildos.buildid_url", values.buildid_url),
        ("buildos.ssh_key", values.ssh_key),
        ("initpy.monitor.agent", values.agent),
    )
    for name, value in given:
        if value is None:
            continue
        _check_carriable(name, value, quoted=name in QUOTED)
        parameter = parameters.get(name)
        if parameter is not None:
            try:
                parameter.parse(value)
            except BadValue as exc:
                raise BuildError(
                    f"{name}: {exc}", f"the boot would ignore it: {parameter.help}"
                ) from None
        words.append(f'{name}="{value}"' if name in QUOTED else f"{name}={value}")
        wanted.append((name, value))
    for word in values.extra:
        _check_carriable("--append", word, quoted=False)
        words.append(word)
    line = " ".join(words)
    if len(line) > APPEND_LIMIT:
        raise BuildError(
            f"the append line is {len(line)} characters; the kernel takes about {APPEND_LIMIT}",
            "shorten it (a shorter URL, an ed25519 key rather than RSA)",
        )
    pairs, after, problems = cmdline.tokenize(line)
    read = dict(pairs)
    lost = [name for name, value in wanted if read.get(name) != value]
    if problems or after or lost:
        raise BuildError(
            f"the boot would not read the append line as given: {line!r}"
            + (f" ({'; '.join(problems)})" if problems else "")
            + (f"; wrong: {', '.join(lost)}" if lost else ""),
            "drop the words that hold quotes or a lone --",
        )
    return line


def _check_carriable(name: str, value: str, quoted: bool) -> None:
    if not value:
        raise BuildError(f"{name}: empty value")
    if '"' in value:
        raise BuildError(
            f"{name}: {value!r} holds a double quote, which neither pxelinux nor the kernel "
            "can carry inside a value",
            "remove it",
        )
    bad = [c for c in value if not (" " <= c <= "~")]
    if bad:
        raise BuildError(
            f"{name}: {value!r} holds {bad[0]!r}; the append line carries printable ASCII only"
        )
    if " " in value and not quoted:
        raise BuildError(
            f"{name}: {value!r} holds a space, and the kernel would split it there",
            "give the value without spaces"
            + (
                f" (only {' and '.join(QUOTED)} are quoted)"
                if name.startswith(("buildos.", "initpy."))
                else ""
            ),
        )


def config_text(append: str, timeout: int = DEFAULT_TIMEOUT) -> str:
    """A pxelinux.cfg file as the spec's Network Boot section writes it."""
    prompt = 1 if timeout > 0 else 0
    return (
        "# Written by initpy's scripts/pxe-layout; `append` is one line.\n"
        "default buildos\n"
        f"prompt {prompt}\n"
        f"timeout {timeout}\n"
        "label buildos\n"
        "  menu label buildos\n"
        f"  kernel /{BUILD_DIR}/buildos-image\n"
        f"  initrd /{BUILD_DIR}/buildos-initrd\n"
        f"  append {append}\n"
    )


# -- syslinux from Debian ---------------------------------------------------------------


def fetch_syslinux() -> str:
    """A folder with pxelinux.0 and ldlinux.c32 from Debian's packages, cached by version."""
    hint = "give --syslinux DIR"
    packages = sorted({package for package, _ in SYSLINUX_FILES.values()})
    return debfiles.fetch("syslinux", SYSLINUX_FILES, debfiles.candidates(packages, hint), hint)


# -- writing ------------------------------------------------------------------------------


def _staged(
    source: str | None, dest: str, text: str | None = None, data: bytes | None = None
) -> str:
    """A copy of `source` (or `text`, or `data`) beside `dest`, under a temporary name."""
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dest)}.", dir=os.path.dirname(dest))
    with os.fdopen(fd, "wb") as f:
        if data is not None:
            f.write(data)
        elif source is not None:
            with open(source, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 20)
        else:
            f.write((text or "").encode())
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    return tmp


def check_outdir(outdir: str) -> str:
    """mkinitrd's OUTDIR has the three files and a build id; the build id."""
    missing = [n for n in BUILD_FILES if not os.path.isfile(os.path.join(outdir, n))]
    if missing:
        raise BuildError(
            f"{outdir} has no {', '.join(missing)}", "give mkinitrd's -o folder (mkinitrd.py -o)"
        )
    with open(os.path.join(outdir, "buildos-buildid"), "rb") as f:
        build_id = f.read().decode(errors="replace").strip()
    if not re.fullmatch(r"[0-9a-f]{64}", build_id):
        raise BuildError(
            f"{outdir}/buildos-buildid holds {build_id[:80]!r}, not a build id",
            "build again with mkinitrd.py",
        )
    return build_id


def for_tftp(initrd: str) -> bytes | None:
    """The initrd recompressed with TFTP_COMPRESSION, or None to copy it as it is.

    The archives inside stay byte for byte, so the build id (their sha256)
    still names them. The result is cached as mkinitrd caches its parts.
    """
    with open(initrd, "rb") as f:
        data = f.read()
    # The OS image's archive comes first, uncompressed, and stays so: it is
    # compressed inside, and the kernel unpacks no compressed archive inside
    # another. An initrd of plain archives only (--compress none) is
    # compressed whole.
    plain = cpio.plain_length(data)
    plain = 0 if plain == len(data) else plain
    head = data[plain : plain + 8]
    if head.startswith(ZSTD_MAGIC) or not head.startswith(REPACKABLE):
        return None
    raw = cpio.decompress(data[plain:])
    return data[:plain] + cpio.compress_cached(raw, TFTP_COMPRESSION, compressed_cache_dir())


def install_build(
    outdir: str,
    tftp_dir: str,
    rename: Callable[[str, str], None] = os.replace,
    repack: bool = True,
) -> str:
    """Copy the three files into TFTPDIR/buildos, the build id last; the build id.

    With `repack`, the initrd is recompressed for TFTP (`for_tftp`).
    """
    build_id = check_outdir(outdir)
    folder = os.path.join(tftp_dir, BUILD_DIR)
    staged = []
    for name in BUILD_FILES:
        source = os.path.join(outdir, name)
        data = for_tftp(source) if repack and name == "buildos-initrd" else None
        staged.append(
            (_staged(source, os.path.join(folder, name), data=data), os.path.join(folder, name))
        )
    for tmp, dest in staged:
        rename(tmp, dest)
    return build_id


def lay_out(
    outdir: str,
    tftp_dir: str,
    values: BootValues,
    *,
    macs: Sequence[str] = (),
    timeout: int = DEFAULT_TIMEOUT,
    syslinux: str,
    efi: str,
    http_base: str | None = None,
    parameters: dict[str, Parameter[object]],
    rename: Callable[[str, str], None] = os.replace,
    repack: bool = True,
) -> tuple[str, list[str]]:
    """The whole folder, BIOS and UEFI; returns the append line and the config files written.

    Every file is staged before the first rename: a line either loader
    cannot carry leaves the folder as it was.
    """
    check_outdir(outdir)
    append = append_line(values, parameters)
    arguments = grub.linux_arguments(append)
    root, base = grub.http_root(http_base) if http_base else ("", "")
    kernel = f"{root}{base}/{BUILD_DIR}/buildos-image"
    grub.check_kernel_line(kernel, arguments, append, APPEND_LIMIT)
    names = [mac_config_name(m) for m in macs] or ["default"]
    debfiles.check_folder(syslinux, SYSLINUX_FILES, "--syslinux")
    debfiles.check_folder(efi, grub.EFI_FILES, "--efi")
    loaders = [(syslinux, n) for n in SYSLINUX_FILES] + [(efi, n) for n in grub.EFI_FILES]
    staged = [
        (_staged(os.path.join(folder, n), os.path.join(tftp_dir, n)), os.path.join(tftp_dir, n))
        for folder, n in loaders
    ]
    text = config_text(append, timeout)
    configs = [os.path.join(tftp_dir, CONFIG_DIR, n) for n in names]
    staged += [(_staged(None, path, text), path) for path in configs]
    grub_dir = os.path.join(tftp_dir, grub.GRUB_DIR)
    grub_configs = [os.path.join(grub_dir, grub.config_name(n)) for n in names]
    for path in grub_configs:
        entry = grub.entry_text(
            os.path.basename(path), f"{root}{base}", BUILD_DIR, arguments, http=bool(http_base)
        )
        staged.append((_staged(None, path, entry), path))
    chooser = os.path.join(grub_dir, "grub.cfg")
    staged.append((_staged(None, chooser, grub.chooser_text(timeout)), chooser))
    for tmp, dest in staged:
        rename(tmp, dest)
    install_build(outdir, tftp_dir, rename, repack)
    return append, configs + grub_configs
