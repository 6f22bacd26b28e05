"""Programs for the initrd: the hooks' binaries, --include files and busybox.

Owned by the builder (mkinitrd). A binary a hook names is looked up on the
build host's PATH (`BINARY_PATH`) and goes to its folder's real path
(merged /usr). ELF files bring their libraries (initpy.builder.elf) into
the private folder /usr/lib/initpy/lib, and dynamic executables are
patched to use the private loader, so nothing of the init's replaces a
--rootfs library. Busybox goes in at layout.BUSYBOX, with its applets as a
fallback layer under a --rootfs: Debian's dynamically linked build, taken
from its package into the cache, unless --busybox names another.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
from collections.abc import Sequence

from initpy.builder import cpio, debfiles, elf, freeze
from initpy.builder.command import BuildError, run
from initpy.builder.hooks import split_spec
from initpy.builder.layers import PART_BINARIES, PART_OTHER, Layer, add_host_path, merged_usr
from initpy.runtime import layout
from initpy.runtime.hook import Registry

# Debian's busybox, dynamically linked: it shares the init's glibc, where
# the static build carries its own (0.50 MB of zstd more). Debian's busybox
# and busybox-static conflict, and the build host keeps busybox-static (the
# boot benchmark's busybox-only initrd needs a static one), so the binary
# comes from the package into the cache, keyed by its version, as
# pxe-layout takes its boot programs (initpy.builder.debfiles).
BUSYBOX_PACKAGE = "busybox"
BUSYBOX_FILES: debfiles.Files = {"busybox": (BUSYBOX_PACKAGE, "bin/busybox")}
BUSYBOX_HINT = "give mkinitrd --busybox FILE (a busybox binary, static or dynamic)"
BINARY_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def find_binary(name: str) -> str | None:
    if name.startswith("/"):
        return name if os.path.lexists(name) else None
    for folder in BINARY_PATH:
        candidate = os.path.join(folder, name)
        if os.path.lexists(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def wanted_binaries(registry: Registry) -> dict[str, str]:
    """Host path of each hook binary -> its path in the initrd."""
    found: dict[str, str] = {}
    missing = []
    for name, hooks in registry.binaries().items():
        host = find_binary(name)
        if host is None:
            missing.append(f"{name} (wanted by hook {', '.join(hooks)})")
            continue
        found[host] = initrd_path(host)
    if missing:
        raise BuildError(
            "binaries not found on the build host: "
            + "; ".join(missing)
            + f". Looked in {':'.join(BINARY_PATH)}; install the Debian packages that "
            "provide them (scripts/bootstrap lists them) or fix the hook"
        )
    return found


def initrd_path(host: str) -> str:
    """Where a host file goes: its folder's real path (merged /usr), same name."""
    folder = os.path.realpath(os.path.dirname(host))
    return os.path.join(folder, os.path.basename(host)).lstrip("/")


def add_elf_files(
    layer: Layer, binaries: dict[str, str], includes: Sequence[str], work: str
) -> None:
    """Binaries and --include files; ELF ones bring their libraries.

    Keyed by the path in the initrd: one host file may go to several places
    (boot_time.py includes its guest program as two programs).
    """
    todo: dict[str, str] = {dest: host for host, dest in binaries.items()}  # dest -> host
    for spec in includes:
        source, dest = split_spec(spec)
        if not os.path.exists(source):
            raise BuildError(f"--include {spec}: {source} does not exist")
        if os.path.isdir(source):
            add_host_path(layer, source, dest, PART_OTHER)
            continue
        todo[dest.lstrip("/")] = source
    # Symlinked binaries (mkfs.ext4 -> mke2fs): keep the link, ship the target.
    pending = list(todo.items())
    while pending:
        dest, host = pending.pop()
        if os.path.islink(host):
            target = os.readlink(host)
            layer.add(cpio.symlink(dest, target), PART_BINARIES)
            real_host = os.path.join(os.path.dirname(host), target)
            if not os.path.exists(real_host):
                raise BuildError(
                    f"{host} is a symlink to {target}, which does not exist; "
                    "reinstall the package that provides it"
                )
            real_dest = posixpath.normpath(posixpath.join(posixpath.dirname(dest), target))
            if target.startswith("/"):
                real_dest = initrd_path(real_host)
            real_dest = real_dest.lstrip("/")
            del todo[dest]
            if real_dest not in todo:
                todo[real_dest] = real_host
                pending.append((real_dest, real_host))
    elf_sources = sorted({h for h in todo.values() if elf.is_elf(h)})
    closure = elf.resolve(elf_sources)
    for soname, host in sorted(closure.libraries.items()):
        path = f"{freeze.PRIVATE_LIB_DIR}/{soname}".lstrip("/")
        if path in layer.entries:  # the frozen init brought it already (same host file)
            continue
        layer.add(cpio.regular(path, source=host, perm=0o755), PART_BINARIES)
    for interpreter in sorted(closure.interpreters):
        if freeze.PRIVATE_LOADER.lstrip("/") in layer.entries:
            continue
        layer.add(
            cpio.regular(freeze.PRIVATE_LOADER, source=interpreter, perm=0o755), PART_BINARIES
        )
    for dest, host in sorted(todo.items()):
        perm = stat.S_IMODE(os.stat(host).st_mode)
        source = host
        if host in elf_sources and elf.read(host).interpreter:
            source = os.path.join(work, "patched", dest)
            os.makedirs(os.path.dirname(source), exist_ok=True)
            shutil.copyfile(host, source)
            freeze.patch_executable(source)
        layer.add(cpio.regular(dest, source=source, perm=perm), PART_BINARIES)


def debian_busybox() -> str:
    """Debian's busybox at apt's candidate version, from the cache or fetched now."""
    versions = debfiles.candidates([BUSYBOX_PACKAGE], BUSYBOX_HINT)
    folder = debfiles.fetch("busybox", BUSYBOX_FILES, versions, BUSYBOX_HINT)
    return os.path.join(folder, "busybox")


def add_busybox(init: Layer, applets: Layer, busybox: str, work: str) -> None:
    """Busybox in the init's layer (a dynamic one with its libraries, patched
    like every binary); its applets as a fallback layer."""
    if not os.path.isfile(busybox) or not elf.is_elf(busybox):
        raise BuildError(
            f"--busybox {busybox}: not an ELF file",
            "give --busybox a busybox program, or leave it out for Debian's busybox package",
        )
    inside = layout.BUSYBOX.lstrip("/")
    add_elf_files(init, {busybox: inside}, (), work)
    listing = run([busybox, "--list-full"], hint=BUSYBOX_HINT).decode()
    for applet in sorted(listing.split()):
        path = merged_usr(applet.strip("/"))
        if path != inside:
            applets.add(cpio.symlink(path, layout.BUSYBOX), PART_BINARIES)
    # The kernel's module autoloader (request_module) runs this; hooks/modules/
    # points the kernel's modprobe path at it.
    init.add(cpio.symlink(layout.PRIVATE_MODPROBE.lstrip("/"), layout.BUSYBOX), PART_BINARIES)
