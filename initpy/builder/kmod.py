"""Kernel modules for the initrd: choose, order, stage and index them.

Owned by the builder (mkinitrd); at boot, hooks/modules.py reads the list
written here. From a `lib/modules/<version>` folder it takes the modules
the hooks ask for, adds their dependencies (modules.dep, which depmod
writes transitively) and their `softdep ... pre:` modules, notes the ones
that are built into the kernel (not an error), and fails on an unknown one,
naming the hook that wanted it. Names match as the kernel does: `-` and `_`
are the same, and an exact alias from modules.alias (e.g. `crc32c`) counts.

`.ko.xz` and `.ko.zst` are decompressed at build time and shipped as plain
`.ko`: Debian's 6.1 cloud kernel is built without CONFIG_MODULE_DECOMPRESS,
so finit_module cannot take compressed files, and the whole cpio is
compressed anyway (smaller than compressing twice).

The staged subset gets its own `depmod -b`, and
/usr/lib/initpy/modules.list: one module per line in dependency order,
`name<TAB>path<TAB>deps` (deps comma-separated, the modules that must be
loaded first), so the boot can load independent modules concurrently.
"""

from __future__ import annotations

import lzma
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from initpy.builder.command import BuildError, run
from initpy.runtime.layout import PackedModule

INDEX_FILES_COPIED = ("modules.builtin", "modules.builtin.modinfo", "modules.order")


class ModuleError(BuildError):
    """A module cannot be provided; the message names it, the hook and the fix."""


def canonical(name: str) -> str:
    """The kernel's module name: file stem, with `-` as `_`."""
    base = os.path.basename(name)
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def plain_path(relpath: str) -> str:
    """The path a module has in the initrd: compressed suffixes dropped."""
    for suffix in (".xz", ".zst", ".gz"):
        if relpath.endswith(".ko" + suffix):
            return relpath[: -len(suffix)]
    return relpath


@dataclass(frozen=True)
class Module:
    name: str
    relpath: str  # as in the source tree (maybe compressed)
    deps: tuple[str, ...]  # module names that must be loaded first


@dataclass
class ModuleTree:
    """An unpacked `lib/modules/<version>` folder with depmod's indexes."""

    top: str
    version: str
    paths: dict[str, str] = field(default_factory=dict)  # name -> relpath
    deps: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> dep names
    softdeps_pre: dict[str, tuple[str, ...]] = field(default_factory=dict)
    builtin: set[str] = field(default_factory=set)
    aliases: dict[str, str] = field(default_factory=dict)  # exact alias -> module name

    @classmethod
    def load(cls, top: str) -> ModuleTree:
        top = os.path.realpath(top)
        dep_file = os.path.join(top, "modules.dep")
        if not os.path.exists(dep_file):
            raise ModuleError(
                f"{top}: no modules.dep; run `depmod -b ROOT VERSION` on the unpacked "
                "kernel (scripts/fetch-kernel does)"
            )
        tree = cls(top, os.path.basename(top))
        with open(dep_file) as f:
            for line in f:
                if ":" not in line:
                    continue
                path, rest = line.split(":", 1)
                name = canonical(path)
                tree.paths[name] = path.strip()
                tree.deps[name] = tuple(canonical(d) for d in rest.split())
        tree.softdeps_pre = _softdeps(os.path.join(top, "modules.softdep"))
        builtin = os.path.join(top, "modules.builtin")
        if os.path.exists(builtin):
            with open(builtin) as f:
                tree.builtin = {canonical(line.strip()) for line in f if line.strip()}
        alias_file = os.path.join(top, "modules.alias")
        if os.path.exists(alias_file):
            with open(alias_file) as f:
                for line in f:
                    words = line.split()
                    if (
                        len(words) == 3
                        and words[0] == "alias"
                        and not any(c in words[1] for c in "*?[")
                    ):
                        tree.aliases.setdefault(words[1].replace("-", "_"), canonical(words[2]))
        return tree

    def lookup(self, wanted: str) -> str | None:
        name = canonical(wanted)
        if name in self.paths or name in self.builtin:
            return name
        return self.aliases.get(name)


def _softdeps(path: str) -> dict[str, tuple[str, ...]]:
    found: dict[str, tuple[str, ...]] = {}
    if not os.path.exists(path):
        return found
    with open(path) as f:
        for line in f:
            words = line.split()
            if len(words) < 3 or words[0] != "softdep":
                continue
            pre: list[str] = []
            mode = ""
            for word in words[2:]:
                if word.endswith(":"):
                    mode = word[:-1]
                elif mode == "pre":
                    pre.append(canonical(word))
            if pre:
                found[canonical(words[1])] = tuple(pre)
    return found


@dataclass(frozen=True)
class Selection:
    """The modules to ship, in load order, and the built-in ones asked for."""

    modules: tuple[Module, ...]
    builtin: tuple[str, ...]

    def packed(self) -> tuple[PackedModule, ...]:
        """The modules as the manifest lists them for PID 1, in load order."""
        return tuple(
            PackedModule(m.name, plain_path(m.relpath), tuple(m.deps)) for m in self.modules
        )


def select(tree: ModuleTree, wanted: Mapping[str, Sequence[str]]) -> Selection:
    """`wanted`: module name -> the hooks asking for it."""
    builtin: dict[str, None] = {}
    order: list[str] = []
    state: dict[str, str] = {}  # name -> "visiting" | "done"

    def needs(name: str) -> list[str]:
        # softdep pre: modules that exist; modules.dep lists real ones.
        pre = [p for p in tree.softdeps_pre.get(name, ()) if p in tree.paths and p != name]
        return [*pre, *tree.deps.get(name, ())]

    def visit(name: str) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":  # a softdep cycle: ld order does not matter
            return
        state[name] = "visiting"
        for dep in needs(name):
            if dep in tree.paths:
                visit(dep)
        state[name] = "done"
        order.append(name)

    for wanted_name, hooks in wanted.items():
        name = tree.lookup(wanted_name)
        if name is None:
            raise ModuleError(
                f"module {wanted_name!r} (wanted by hook {', '.join(hooks)}) is neither in "
                f"{tree.top}/modules.dep nor built into kernel {tree.version}; fix the name in "
                "the hook, or use a kernel that has it (CONFIG_... =m or =y)"
            )
        if name not in tree.paths:
            builtin[name] = None
            continue
        visit(name)
    modules = tuple(
        Module(n, tree.paths[n], tuple(d for d in needs(n) if d in tree.paths)) for n in order
    )
    return Selection(modules, tuple(builtin))


def stage(tree: ModuleTree, selection: Selection, root: str) -> str:
    """Copy the selection into `root`/usr/lib/modules/<version>, index it.

    Returns the staged folder. `root`/lib must be (a symlink to) usr/lib, so
    that `depmod -b root` finds the tree.
    """
    dest = os.path.join(root, "usr/lib/modules", tree.version)
    os.makedirs(dest, exist_ok=True)
    for module in selection.modules:
        source = os.path.join(tree.top, module.relpath)
        target = os.path.join(dest, plain_path(module.relpath))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        _decompress_copy(source, target)
    for index in INDEX_FILES_COPIED:
        src = os.path.join(tree.top, index)
        if os.path.exists(src):
            shutil.copyfile(src, os.path.join(dest, index))
    if not os.path.exists(os.path.join(root, "lib")):
        os.symlink("usr/lib", os.path.join(root, "lib"))
    run(["depmod", "-b", root, tree.version])
    return dest


def _decompress_copy(source: str, target: str) -> None:
    if source.endswith(".ko.xz"):
        with lzma.open(source) as f, open(target, "wb") as out:
            shutil.copyfileobj(f, out)
    elif source.endswith(".ko.zst"):
        with open(target, "wb") as out:
            run(["zstd", "-q", "-d", "-c", source], stdout=out)
    elif source.endswith(".ko.gz"):
        import gzip

        with gzip.open(source) as f, open(target, "wb") as out:
            shutil.copyfileobj(f, out)
    else:
        shutil.copyfile(source, target)
