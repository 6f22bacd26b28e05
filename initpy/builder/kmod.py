"""Kernel modules for the initrd: choose, order, stage and index them.

Owned by the builder (mkinitrd); at boot, hooks/modules/ reads what is
written here (the manifest's module list and the modalias index). From a
`lib/modules/<version>` folder it takes

- the modules the hooks name (btrfs, bridge, nf_tables...: loaded at every
  boot), failing on an unknown one with the hook that wanted it;
- the drivers initpy.builder.drivers chose (`--drivers`, `--driver`);

adds their dependencies (modules.dep, which depmod writes transitively)
and their `softdep ... pre:` modules, and notes the ones built into the
kernel (not an error). Names match as the kernel does: `-` and `_` are the
same, and an exact alias from modules.alias (e.g. `crc32c`) counts. The
firmware files the packed modules declare (`.modinfo` `firmware=`) are
packed when the build machine has them. `alias_index()` writes the boot's
modalias index (initpy.runtime.layout.AliasIndex) for exactly the packed
modules and the built-in ones.

`.ko.xz` and `.ko.zst` are decompressed at build time and shipped as plain
`.ko`: Debian's 6.1 cloud kernel is built without CONFIG_MODULE_DECOMPRESS,
so finit_module cannot take compressed files, and the whole cpio is
compressed anyway (smaller than compressing twice). The signature Debian
appends to each module is inside the compressed file, so the plain `.ko`
keeps it; nothing here strips a module (Secure Boot's lockdown would
refuse it): `unsigned()` names the staged modules that carry none.

The staged subset gets its own `depmod -b`, and
/usr/lib/initpy/modules.list: one module per line in dependency order,
`name<TAB>path<TAB>deps` (deps comma-separated, the modules that must be
loaded first), so the boot can load independent modules concurrently.
"""

from __future__ import annotations

import lzma
import os
import shutil
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from initpy.builder.command import BuildError, run
from initpy.runtime.layout import MODULE_SIGNATURE_MAGIC, AliasIndex, PackedModule, module_is_signed

INDEX_FILES_COPIED = ("modules.builtin", "modules.builtin.modinfo", "modules.order")
COMPRESSED_SUFFIXES = (".ko.xz", ".ko.zst", ".ko.gz", ".ko")


class ModuleError(BuildError):
    """A module cannot be provided; the message names it, the hook and the fix."""


# A SCSI host driver (ahci, usb-storage, an HBA) finds disks that only this reads.
SCSI_DISK = "sd_mod"


def canonical(name: str) -> str:
    """The kernel's module name: file stem, with `-` as `_`."""
    base = os.path.basename(name)
    for suffix in COMPRESSED_SUFFIXES:
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
    optional: tuple[str, ...] = ()  # of deps, the softdep pre: ones
    hooks: tuple[str, ...] = ()  # the hooks that named it; () for a driver


@dataclass
class ModuleTree:
    """An unpacked `lib/modules/<version>` folder with depmod's indexes."""

    top: str
    version: str
    paths: dict[str, str] = field(default_factory=dict)  # name -> relpath
    deps: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> dep names
    softdeps_pre: dict[str, tuple[str, ...]] = field(default_factory=dict)
    builtin: set[str] = field(default_factory=set)
    aliases: dict[str, list[str]] = field(default_factory=dict)  # exact alias -> modules
    # Every alias glob of modules.alias and of the built-in modules' modinfo.
    globs: list[tuple[str, str]] = field(default_factory=list)  # (glob, module)

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
        tree.softdeps_pre = softdeps(os.path.join(top, "modules.softdep"))
        builtin = os.path.join(top, "modules.builtin")
        if os.path.exists(builtin):
            with open(builtin) as f:
                tree.builtin = {canonical(line.strip()) for line in f if line.strip()}
        alias_file = os.path.join(top, "modules.alias")
        if os.path.exists(alias_file):
            with open(alias_file) as f:
                for line in f:
                    words = line.split()
                    if len(words) != 3 or words[0] != "alias":
                        continue
                    module = canonical(words[2])
                    tree.globs.append((words[1], module))
                    if not any(c in words[1] for c in "*?["):
                        tree.aliases.setdefault(words[1].replace("-", "_"), []).append(module)
        modinfo = os.path.join(top, "modules.builtin.modinfo")
        if os.path.exists(modinfo):
            with open(modinfo, "rb") as f:
                for entry in f.read().split(b"\0"):
                    key, _, value = entry.decode(errors="replace").partition("=")
                    module, _, what = key.partition(".")
                    if what == "alias" and value:
                        tree.globs.append((value, canonical(module)))
        return tree

    def lookup(self, wanted: str) -> str | None:
        """A module name, or the first module of an exact alias (`crc32c`)."""
        found = self.lookup_all(wanted)
        return found[0] if found else None

    def lookup_all(self, wanted: str) -> list[str]:
        """Every module a name or exact alias stands for, as modprobe loads them all:
        `crc32c` is crc32c_generic and crc32c_intel (which refuses a CPU without SSE4.2)."""
        name = canonical(wanted)
        if name in self.paths or name in self.builtin:
            return [name]
        return list(self.aliases.get(name, ()))

    def full_index(self) -> AliasIndex:
        """Every alias of the kernel, for choosing the build machine's drivers."""
        return AliasIndex.build(self.version, self.globs, self.builtin)


def softdeps(path: str, modes: Sequence[str] = ("pre",)) -> dict[str, tuple[str, ...]]:
    """modules.softdep: module -> the modules of its `modes` (`pre`, `post`) softdeps."""
    found: dict[str, tuple[str, ...]] = {}
    if not os.path.exists(path):
        return found
    with open(path) as f:
        for line in f:
            words = line.split()
            if len(words) < 3 or words[0] != "softdep":
                continue
            named: list[str] = []
            mode = ""
            for word in words[2:]:
                if word.endswith(":"):
                    mode = word[:-1]
                elif mode in modes:
                    named.append(canonical(word))
            if named:
                key = canonical(words[1])
                found[key] = found.get(key, ()) + tuple(named)
    return found


# -- the selection -------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """The modules to ship, in load order, and the built-in ones asked for."""

    modules: tuple[Module, ...]
    builtin: tuple[str, ...]
    drivers: dict[str, str] = field(default_factory=dict)  # driver -> why

    def packed(self) -> tuple[PackedModule, ...]:
        """The modules as the manifest lists them for PID 1, in load order."""
        return tuple(
            PackedModule(m.name, plain_path(m.relpath), m.deps, m.optional, m.hooks)
            for m in self.modules
        )

    def names(self) -> list[str]:
        return [m.name for m in self.modules]


def select(
    tree: ModuleTree,
    wanted: Mapping[str, Sequence[str]],
    drivers: Mapping[str, str] | None = None,
) -> Selection:
    """`wanted`: module name -> the hooks naming it; `drivers`: driver -> why."""
    builtin: dict[str, None] = {}
    order: list[str] = []
    state: dict[str, str] = {}  # name -> "visiting" | "done"

    def soft(name: str) -> list[str]:
        # The softdeps, and the crypto drivers of a library that wraps one
        # (crc64_rocksoft asks the crypto API for crc64-rocksoft, which only
        # crc64_rocksoft_generic provides, through request_module at init).
        words = [*tree.softdeps_pre.get(name, ()), f"crypto-{name}"]
        found = []
        for word in words:
            for pre in tree.lookup_all(word):
                if pre in tree.paths and pre != name and pre not in found:
                    found.append(pre)
        return found

    def needs(name: str) -> list[str]:
        # softdep pre: modules that exist; modules.dep lists real ones.
        hard = [d for d in tree.deps.get(name, ()) if d in tree.paths]
        return list(dict.fromkeys([*soft(name), *hard]))

    def visit(name: str) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":  # a softdep cycle: ld order does not matter
            return
        state[name] = "visiting"
        for dep in needs(name):
            visit(dep)
        state[name] = "done"
        order.append(name)

    named: dict[str, list[str]] = {}
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
        named.setdefault(name, []).extend(h for h in hooks if h not in named.get(name, []))
        visit(name)
    chosen = dict(drivers or {})
    for name in sorted(chosen):
        if name in tree.paths:
            visit(name)
    if any(n in state for n in ("scsi_mod", "libata")) and SCSI_DISK in tree.paths:
        chosen.setdefault(SCSI_DISK, "SCSI disk, for the SCSI host drivers")
        visit(SCSI_DISK)
    modules = tuple(
        Module(
            n,
            tree.paths[n],
            tuple(needs(n)),
            tuple(p for p in soft(n) if p not in tree.deps.get(n, ())),
            tuple(named.get(n, ())),
        )
        for n in order
    )
    return Selection(modules, tuple(builtin), {n: w for n, w in chosen.items() if n in state})


def alias_index(tree: ModuleTree, selection: Selection) -> AliasIndex:
    """The boot's index: the aliases of the packed modules and of the built-in ones."""
    packed = set(selection.names())
    return AliasIndex.build(
        tree.version,
        ((g, m) for g, m in tree.globs if m in packed or m in tree.builtin),
        tree.builtin,
    )


# -- firmware --------------------------------------------------------------------------


def module_bytes(path: str) -> bytes:
    if path.endswith(".xz"):
        with lzma.open(path) as f:
            return f.read()
    if path.endswith(".zst"):
        return run(["zstd", "-q", "-d", "-c", path])
    if path.endswith(".gz"):
        import gzip

        with gzip.open(path) as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def modinfo(elf: bytes, key: str) -> list[str]:
    """Values of `key=` in an ELF64 module's .modinfo section (`modinfo -F key`)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        return []
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        (name,) = struct.unpack_from("<I", elf, base)
        offset, size = struct.unpack_from("<QQ", elf, base + 0x18)
        return name, offset, size

    _, names, _ = section(shstrndx)
    prefix = key.encode() + b"="
    for i in range(shnum):
        name, offset, size = section(i)
        end = elf.index(b"\0", names + name)
        if elf[names + name : end] == b".modinfo":
            return [
                e[len(prefix) :].decode(errors="replace")
                for e in elf[offset : offset + size].split(b"\0")
                if e.startswith(prefix)
            ]
    return []


@dataclass(frozen=True)
class Firmware:
    """The firmware files the packed modules declare: found (name -> host file), missing."""

    present: dict[str, str]
    missing: dict[str, str]  # firmware name -> the module that declares it


def firmware(tree: ModuleTree, selection: Selection, firmware_dir: str) -> Firmware:
    present: dict[str, str] = {}
    missing: dict[str, str] = {}
    for module in selection.modules:
        for name in modinfo(module_bytes(os.path.join(tree.top, module.relpath)), "firmware"):
            for suffix in ("", ".zst", ".xz"):
                host = os.path.join(firmware_dir, name + suffix)
                if os.path.isfile(host):
                    present[name + suffix] = host
                    break
            else:
                missing.setdefault(name, module.name)
    return Firmware(dict(sorted(present.items())), dict(sorted(missing.items())))


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


def unsigned(staged: str, selection: Selection) -> list[str]:
    """The staged modules (in `staged`, as stage() wrote them) without a signature."""
    found = []
    for module in selection.modules:
        with open(os.path.join(staged, plain_path(module.relpath)), "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - len(MODULE_SIGNATURE_MAGIC)))
            if not module_is_signed(f.read()):
                found.append(module.name)
    return found


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
