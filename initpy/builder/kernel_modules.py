"""The kernel-module part of the initrd: what kmod chose, as archive entries.

Owned by the builder (mkinitrd). The modules the hooks name and the
drivers (initpy.builder.drivers), with their dependencies, go into the
init's layer, staged by initpy.builder.kmod, with the modalias index
(layout.MODALIAS_INDEX) and the firmware the build machine has; depmod's
index files go to the layer under a --rootfs, so that a rootfs carrying
the same kernel's full index keeps it.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

from initpy.builder import cpio, kmod
from initpy.builder.drivers import Drivers, choose_drivers
from initpy.builder.layers import PART_MODULES, Layer, merged_usr, no_mtime
from initpy.runtime import layout
from initpy.runtime.hook import Registry


@dataclass(frozen=True)
class PackedKernelModules:
    """What went in: notes for the operator, the kernel version, the manifest's list."""

    notes: tuple[str, ...]
    kernel_version: str
    modules: tuple[layout.PackedModule, ...]


def add_modules(
    init: Layer,
    below: Layer,
    registry: Registry,
    modules_dir: str,
    drivers: Drivers,
    extra_drivers: Sequence[str],
    firmware_dir: str,
    sys_root: str,
    work: str,
) -> PackedKernelModules:
    """The hooks' modules and the drivers, with their dependencies, the modalias
    index and the firmware found."""
    wanted: dict[str, list[str]] = {}
    for hook in registry.hooks:
        for module in hook.modules:
            wanted.setdefault(module, []).append(hook.name)
    tree = kmod.ModuleTree.load(modules_dir)
    chosen = choose_drivers(tree, Drivers(drivers), extra_drivers, sys_root)
    selection = kmod.select(tree, wanted, chosen)
    stage_root = os.path.join(work, "modules")
    staged = kmod.stage(tree, selection, stage_root)
    rel = os.path.relpath(staged, stage_root)
    for entry in cpio.entries_from_tree(staged, rel):
        entry = no_mtime(entry)
        name = os.path.basename(entry.path)
        if name.startswith("modules.") and not entry.is_dir:
            # A --rootfs with the same kernel's full index keeps it.
            below.add(entry, PART_MODULES)
        else:
            init.add(entry, PART_MODULES)
    index = kmod.alias_index(tree, selection)
    init.add(cpio.regular(layout.MODALIAS_INDEX.lstrip("/"), data=index.to_json()), PART_MODULES)
    found = kmod.firmware(tree, selection, firmware_dir)
    for name, host in found.present.items():
        path = posixpath.join(merged_usr(layout.FIRMWARE_ROOT.lstrip("/")), name)
        init.add(cpio.regular(path, source=host, perm=0o644), PART_MODULES)
    notes = [
        f"module {name} is built into kernel {tree.version}; nothing to load"
        for name in selection.builtin
    ]
    unsigned = kmod.unsigned(staged, selection)
    if unsigned:
        # A kernel of one's own build may sign nothing; under Secure Boot
        # the boot would then name each refusal (hooks/modules/signature.py).
        notes.append(
            f"{len(unsigned)} of {len(selection.modules)} modules carry no signature "
            f"(Secure Boot's lockdown refuses them): {', '.join(unsigned[:10])}"
            + (" ..." if len(unsigned) > 10 else "")
        )
    named = sum(1 for m in selection.modules if m.hooks)
    notes.append(
        f"drivers {drivers}"
        + (f" + {', '.join(extra_drivers)}" if extra_drivers else "")
        + f": {len(selection.drivers)} drivers, {len(selection.modules)} modules with "
        f"dependencies ({named} named by hooks); firmware: {len(found.present)} file(s) "
        f"packed, {len(found.missing)} declared but not in {firmware_dir}; "
        f"{len(selection.modules) - len(unsigned)} signed"
    )
    return PackedKernelModules(tuple(notes), tree.version, selection.packed())
