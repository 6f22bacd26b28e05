"""The OS tree under the init (`mkinitrd --rootfs TREE`): what it gets from initpy.

Owned by the builder. What the booted host needs from initpy comes with
initpy, so any Debian tree with the packages of os/packages.list makes a
whole host (docs/os.md):

- the kernel's module tree (`--modules`: a build host's share of it,
  re-indexed, by initpy.builder.os_modules; the whole tree as depmod left
  it with `--os-modules all`), so that udev and modprobe load any driver
  after the hand-off: mkinitrd knows the kernel, the tree need not;
- each chosen hook's `os_files` (units, their scripts, config), the units
  enabled;
- no one machine's identity in an image that every host boots: an empty
  /etc/machine-id (systemd makes one per boot) and no SSH host keys (the
  persist hook puts each host's own in place before the hand-off).

And it refuses, at build time, a tree that cannot work: one that carries
another kernel's modules, or that lacks a package a chosen hook needs.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence

from initpy.builder import cpio
from initpy.builder.command import BuildError
from initpy.runtime.hook import Hook

# The initrd's parts (mkinitrd's size split) for what this module adds.
PART_OS_FILES = "os files"
PART_OS_MODULES = "os modules"
# Where a Debian tree keeps module trees (lib is a link to usr/lib when merged).
MODULE_DIRS = ("usr/lib/modules", "lib/modules")
UNIT_DIR = "etc/systemd/system"
MACHINE_ID = "etc/machine-id"
DBUS_MACHINE_ID = "var/lib/dbus/machine-id"
# The build machine's SSH host keys, made by openssh-server's postinst.
HOST_KEYS_PREFIX = "etc/ssh/ssh_host_"


def check(tree: str, modules: str, hooks: Sequence[Hook]) -> None:
    """Refuse a tree that is no folder, has another kernel's modules or lacks a hook's package.

    `modules` is mkinitrd's --modules, a `lib/modules/<version>` folder.
    """
    if not os.path.isdir(tree):
        raise BuildError(f"--rootfs {tree}: not a folder")
    kernel_version = os.path.basename(os.path.realpath(modules))
    others = sorted(
        {
            name
            for folder in MODULE_DIRS
            if os.path.isdir(os.path.join(tree, folder))
            for name in os.listdir(os.path.join(tree, folder))
            if name != kernel_version and os.path.isdir(os.path.join(tree, folder, name))
        }
    )
    if others:
        raise BuildError(
            f"--rootfs {tree} carries the modules of kernel {', '.join(others)}, but the "
            f"initrd is for {kernel_version} (--modules): udev would find no driver after "
            "the hand-off",
            "remove them (rm -rf "
            + " ".join(f"{tree}/usr/lib/modules/{name}" for name in others)
            + "); mkinitrd adds the modules of the kernel it packs",
        )
    missing: dict[str, list[str]] = {}
    for hook in hooks:
        for package in hook.os_packages:
            if not os.path.exists(os.path.join(tree, package.path.lstrip("/"))):
                missing.setdefault(package.name, []).append(hook.name)
    if missing:
        names = sorted(missing)
        raise BuildError(
            f"--rootfs {tree} lacks the package(s) "
            + "; ".join(
                f"{name} (for hook{'s' if len(missing[name]) > 1 else ''} "
                f"{', '.join(missing[name])})"
                for name in names
            ),
            f"install them into the tree (chroot {tree} apt-get install {' '.join(names)}, or "
            f"mmdebstrap --include={','.join(names)}; os/packages.list lists every hook's), "
            "or leave those hooks out with --hooks",
        )


def keeps(path: str) -> bool:
    """Whether a path of the tree goes into the image (no machine's identity does)."""
    return not path.startswith(HOST_KEYS_PREFIX)


def entries(
    tree: str, modules: str, kernel_version: str, hooks: Sequence[Hook]
) -> list[tuple[cpio.Entry, str]]:
    """What initpy puts over the tree: the module tree, the hooks' files, no identity."""
    found = [
        (entry, PART_OS_MODULES)
        for entry in cpio.entries_from_tree(
            os.path.realpath(modules), f"usr/lib/modules/{kernel_version}"
        )
    ]
    owner: dict[str, str] = {}
    files: list[cpio.Entry] = []
    for hook in hooks:
        for os_file in hook.os_files:
            path = os_file.path.lstrip("/")
            if path in owner:
                raise BuildError(
                    f"hooks {owner[path]} and {hook.name} both put {os_file.path} into the OS",
                    "keep the file in one hook",
                )
            owner[path] = hook.name
            files.append(cpio.regular(path, data=os_file.text.encode(), perm=os_file.mode))
            if os_file.wanted_by is not None:
                unit = posixpath.basename(path)
                files.append(
                    cpio.symlink(f"{UNIT_DIR}/{os_file.wanted_by}.wants/{unit}", os_file.path)
                )
    if os.path.lexists(os.path.join(tree, MACHINE_ID)):
        files.append(cpio.regular(MACHINE_ID, data=b"", perm=0o444))
    if os.path.isfile(os.path.join(tree, DBUS_MACHINE_ID)):
        files.append(cpio.symlink(DBUS_MACHINE_ID, "/" + MACHINE_ID))
    folders = {
        parent
        for entry in files
        for parent in _parents(entry.path)
        if not os.path.isdir(os.path.join(tree, parent))
    }
    found += [(cpio.directory(folder, 0o755), PART_OS_FILES) for folder in sorted(folders)]
    return found + [(entry, PART_OS_FILES) for entry in files]


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
