"""The initrd builder: from hooks, a kernel and its modules to the three files.

Owned by the builder; `mkinitrd.py` (and the `mkinitrd` console script) is
its command line. The steps:

1. the registry (initpy.runtime.hook) over the hooks folders gives the
   hooks, their binaries, kernel modules and files;
2. the init is frozen (initpy.builder.freeze, cached) - the step is injectable, so
   tests build without PyInstaller;
3. binaries and included ELF files bring their libraries (initpy.builder.elf) into
   the private folder /usr/lib/initpy/lib, and dynamic executables are
   patched to use the private loader, so nothing of the init's replaces a
   --rootfs library;
4. modules are chosen, decompressed and indexed (initpy.builder.kmod);
5. the layers are merged (busybox applets < --rootfs < the init's files),
   paths below a symlinked folder are moved through it (the initrd is
   merged-/usr: bin, sbin, lib, lib64 are symlinks into usr/), and the
   newc cpio is written (initpy.builder.cpio) and compressed;
6. the manifest (initpy.runtime.layout.Manifest: hooks, modules, build
   id) is the last archive; OUTDIR gets buildos-image, buildos-initrd and
   buildos-buildid (the sha256 of the other archives, uncompressed: it
   changes exactly when the content does).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import posixpath
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from initpy.builder import cpio, elf, freeze, kmod
from initpy.builder import rootfs as os_tree
from initpy.builder.command import BuildError, run
from initpy.runtime import layout
from initpy.runtime.hook import (
    HookError,
    Registry,
    build_registry,
    hook_entries,
    load_hook,
    select,
)

INITRD_HOOK_DIR = layout.HOOKS_DIR
# Hooks every initrd has, whatever --hooks says: module loading, and the
# static busybox plus the rescue tools.
ALWAYS_HOOKS = ("modules", "rescue_tools")
BUSYBOX = "/bin/busybox"
BINARY_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
MERGED_USR = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
# Debian kernels do not mount devtmpfs on the initramfs, and Python aborts
# at start-up without /dev/urandom: the archive carries these.
DEVICE_NODES = (
    ("dev/console", 5, 1, 0o600),
    ("dev/tty", 5, 0, 0o666),
    ("dev/null", 1, 3, 0o666),
    ("dev/zero", 1, 5, 0o666),
    ("dev/random", 1, 8, 0o666),
    ("dev/urandom", 1, 9, 0o666),
    ("dev/kmsg", 1, 11, 0o644),
)
EMPTY_DIRS = ("dev", "proc", "sys", "run", "tmp", "root", "mnt", "etc", "var", "usr/lib64")
# The parts of the initrd, for the benchmark's size split.
PART_INIT, PART_BINARIES, PART_MODULES, PART_ROOTFS, PART_OTHER, PART_MANIFEST = (
    "frozen init",
    "binaries+libraries",
    "modules",
    "rootfs",
    "other",
    "manifest",
)


class Compression(StrEnum):
    """How the initrd's archives are compressed."""

    ZSTD = "zstd"
    LZ4 = "lz4"
    GZIP = "gzip"
    XZ = "xz"
    NONE = "none"


__all__ = ["BuildError", "Compression", "Options", "build", "main"]


@dataclass(frozen=True)
class Options:
    kernel: str
    modules: str
    outdir: str
    rootfs: str | None = None
    includes: tuple[str, ...] = ()
    hooks: tuple[str, ...] | None = None  # None: every hook found
    hook_dirs: tuple[str, ...] = ()  # after the repository's hooks/
    # lz4: the kernel unpacks it about three times faster than zstd -19 under
    # TCG (docs/testing.md); scripts/pxe-layout sends zstd -19 over TFTP.
    compress: Compression = Compression.LZ4
    compress_level: int | None = None  # None: the method's default (lz4 9, zstd 19)
    source_date_epoch: int = 0
    no_cache: bool = False  # compress every part again (the freeze cache stays)
    drivers: kmod.Drivers = kmod.Drivers.GENERIC
    extra_drivers: tuple[str, ...] = ()  # --driver NAME
    firmware_dir: str = "/lib/firmware"
    sys_root: str = "/sys"  # the build machine's devices, for --drivers host
    # The folder whose hooks come first; None for none (tests use their own).
    base_hooks_dir: str | None = field(default_factory=lambda: repo_hooks_dir())


@dataclass
class Layer:
    """Archive entries by path, each with the part of the initrd it belongs to."""

    entries: dict[str, tuple[cpio.Entry, str]] = field(default_factory=dict)

    def add(self, entry: cpio.Entry, part: str) -> None:
        self.entries[entry.path] = (entry, part)


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


Freezer = Callable[[Sequence[str]], freeze.Frozen]


def repo_hooks_dir() -> str:
    return os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "hooks"
    )


def hook_files(folders: Sequence[str]) -> dict[str, str]:
    """Hook name -> the file or folder defining it (a later folder overrides)."""
    found: dict[str, str] = {}
    for folder in folders:
        if not os.path.isdir(folder):
            raise BuildError(
                f"hooks folder {folder} does not exist", "name an existing folder with --hooks-dir"
            )
        for entry in hook_entries(folder):
            path = os.path.join(folder, entry)
            try:
                hook = load_hook(folder, entry)
            except HookError:
                raise
            except Exception as exc:  # a hook's own import error, told as such
                raise BuildError(
                    f"hook {path} does not load: {type(exc).__name__}: {exc}",
                    "fix the hook, or leave it out with --hooks",
                ) from exc
            found[hook.name] = path if os.path.isdir(path) else f"{path}.py"
    return found


def hook_sources(path: str) -> list[str]:
    """The Python files of a hook: the file itself, or every .py in its folder."""
    if not os.path.isdir(path):
        return [path]
    found = []
    for folder, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        found += [os.path.join(folder, n) for n in sorted(names) if n.endswith(".py")]
    return found


def choose_hooks(files: dict[str, str], wanted: Sequence[str] | None) -> list[str]:
    """The hook names in boot-tie order: the always-included first."""
    names = list(wanted) if wanted is not None else sorted(files)
    always = [n for n in ALWAYS_HOOKS if n in files]
    return always + [n for n in names if n not in always]


def build(
    options: Options, freezer: Freezer = freeze.freeze, log: Callable[[str], None] = lambda s: None
) -> BuildResult:
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
    try:
        files = hook_files(folders)
        names = choose_hooks(files, options.hooks)
        found = {}
        for folder in folders:
            for hook_entry in hook_entries(folder):
                hook = load_hook(folder, hook_entry)
                found[hook.name] = hook
        registry = build_registry(select(found, names), found.values())
    except HookError as exc:
        raise BuildError(f"hooks: {exc}", "fix the hooks, or choose others with --hooks") from None
    if options.rootfs:  # before the freeze: a tree that cannot work fails in a second
        os_tree.check(options.rootfs, options.modules, registry.hooks)
    lap("registry")

    frozen = freezer([f for n in names for f in hook_sources(files[n])])
    log(f"frozen init: {'cached' if frozen.cached else 'frozen now'} ({frozen.key})")
    lap("freeze")

    init = Layer()
    fallback = Layer()  # under --rootfs: busybox applets, indexes, folders
    with tempfile.TemporaryDirectory(prefix="initpy-mkinitrd.") as work:
        _add_skeleton(init, fallback)
        _add_frozen(init, frozen)
        hook_files_wanted = _add_hooks(init, registry, files, names)
        wanted = _wanted_binaries(registry)
        _add_elf_files(init, wanted, registry, [*hook_files_wanted, *options.includes], work)
        _add_busybox(init, fallback)
        lap("binaries")
        module_notes, kernel_version, packed_modules = _add_modules(
            init, fallback, registry, options, work
        )
        notes += module_notes
        lap("modules")
        rootfs = Layer()
        if options.rootfs:
            for entry in cpio.entries_from_tree(options.rootfs, keep_owners=True):
                if os_tree.keeps(entry.path):
                    rootfs.add(entry, PART_ROOTFS)
            for entry, part in os_tree.entries(
                options.rootfs, options.modules, kernel_version, registry.hooks
            ):
                rootfs.add(entry, part)
        merged = merge([fallback, rootfs, init])
        lap("layout")
        archives = split_archives(merged, options.source_date_epoch)
        # The build id covers everything but the manifest, which carries it.
        build_id = hashlib.sha256(b"".join(raw for _part, raw in archives)).hexdigest()
        manifest = layout.Manifest(
            build_id,
            tuple(names),
            kernel_version,
            packed_modules,
            str(options.drivers),
            options.extra_drivers,
        )
        archives.append(
            (
                PART_MANIFEST,
                cpio.archive(
                    [cpio.directory(p, 0o755) for p in _parents(layout.MANIFEST)]
                    + [cpio.regular(layout.MANIFEST.lstrip("/"), data=manifest.to_json())],
                    options.source_date_epoch,
                ),
            )
        )
        lap("archive")
        cache = None if options.no_cache else compressed_cache_dir()
        packed = [
            cpio.compress_cached(raw, options.compress, cache, options.compress_level)
            for _part, raw in archives
        ]
        if cache is not None:
            freeze.prune(cache, KEEP_COMPRESSED)
        lap("compress")
    os.makedirs(options.outdir, exist_ok=True)
    image = os.path.join(options.outdir, "buildos-image")
    initrd = os.path.join(options.outdir, "buildos-initrd")
    buildid = os.path.join(options.outdir, "buildos-buildid")
    with open(options.kernel, "rb") as f:
        _write(image, f.read())
    _write(initrd, b"".join(packed))
    _write(buildid, (build_id + "\n").encode())
    lap("write")
    sizes = tuple((part, len(raw), len(p)) for (part, raw), p in zip(archives, packed, strict=True))
    return BuildResult(
        image, initrd, buildid, tuple(merged), frozen, tuple(notes), tuple(timings), sizes
    )


def _write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# -- the layers -----------------------------------------------------------------


def _add_skeleton(layer: Layer, below: Layer) -> None:
    """The merged-/usr links and device nodes; the empty folders go `below`
    a --rootfs, whose own modes win (its /root is 0700)."""
    for link, target in MERGED_USR.items():
        layer.add(cpio.symlink(link, target), PART_OTHER)
    for folder in EMPTY_DIRS:
        perm = {"tmp": 0o1777, "root": 0o700}.get(folder, 0o755)
        below.add(cpio.directory(folder, perm), PART_OTHER)
    for path, major, minor, perm in DEVICE_NODES:
        layer.add(cpio.char_device(path, major, minor, perm), PART_OTHER)


def _add_frozen(layer: Layer, frozen: freeze.Frozen) -> None:
    for entry in cpio.entries_from_tree(os.path.join(frozen.tree, "frozen"), freeze.FROZEN_DIR):
        layer.add(_no_mtime(entry), PART_INIT)
    for entry in cpio.entries_from_tree(os.path.join(frozen.tree, "lib"), freeze.PRIVATE_LIB_DIR):
        layer.add(_no_mtime(entry), PART_INIT)
    # The kernel runs /init as PID 1; PyInstaller finds _internal/ next to
    # the executable's real path, so a symlink is enough.
    layer.add(cpio.symlink("init", freeze.FROZEN_EXE), PART_INIT)


def _no_mtime(entry: cpio.Entry) -> cpio.Entry:
    # The cache's file times say when it was frozen, not what it holds.
    return dataclasses.replace(entry, mtime=None)


def _parents(path: str) -> list[str]:
    """The folders above an initrd path, outermost first (for a lone archive)."""
    parts = path.strip("/").split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _add_hooks(
    layer: Layer, registry: Registry, files: dict[str, str], names: Sequence[str]
) -> list[str]:
    """The hooks' Python files with their bytecode; returns the hooks' `files` specs."""
    for name in names:
        source = files[name]
        top = os.path.dirname(source)
        for path in hook_sources(source):
            relative = os.path.relpath(path, top)
            layer.add(cpio.regular(f"{INITRD_HOOK_DIR}/{relative}", source=path), PART_OTHER)
            layer.add(
                cpio.regular(hook_bytecode_path(relative), data=hook_bytecode(path, relative)),
                PART_OTHER,
            )
    for spec in registry.files():
        source, _dest = _split_spec(spec)
        if not os.path.exists(source):
            owners = [h.name for h in registry.hooks if spec in h.files]
            raise BuildError(
                f"file {source} (wanted by hook {', '.join(owners)}) does not "
                "exist on the build host",
                "install it or fix the hook",
            )
    # They go in as --include does: an ELF file brings its libraries.
    return registry.files()


def hook_bytecode_path(relative: str) -> str:
    """Where the frozen init's import system looks for a hook file's bytecode."""
    folder, base = os.path.split(relative)
    stem = base[: -len(".py")] if base.endswith(".py") else base
    return posixpath.join(
        INITRD_HOOK_DIR, folder, "__pycache__", f"{stem}.{sys.implementation.cache_tag}.pyc"
    )


def hook_bytecode(source: str, relative: str | None = None) -> bytes:
    """A hook file compiled now, as an unchecked-hash .pyc, so PID 1 does not compile it.

    The boot loads hooks from source; compiling them took about 22 ms
    natively, about 0.3 s under TCG, at every boot. "Unchecked": the initrd
    holds this file and its source together, so the loader need not hash
    the source to trust it. The freeze runs this same Python, so the magic
    number matches; a .pyc the frozen Python cannot use is ignored and the
    source compiled, as before. Byte-identical for the same source and
    Python (the reproducible-build test covers it).
    """
    import importlib.util
    from importlib._bootstrap_external import _code_to_hash_pyc  # type: ignore[attr-defined]

    with open(source, "rb") as f:
        text = f.read()
    code = compile(
        text, f"{INITRD_HOOK_DIR}/{relative or os.path.basename(source)}", "exec", dont_inherit=True
    )
    return bytes(_code_to_hash_pyc(code, importlib.util.source_hash(text), checked=False))


def _split_spec(spec: str) -> tuple[str, str]:
    source, _, dest = spec.partition(":")
    return source, dest or source


def _add_host_path(layer: Layer, source: str, dest: str, part: str) -> None:
    if os.path.isdir(source) and not os.path.islink(source):
        for entry in cpio.entries_from_tree(source, dest):
            layer.add(entry, part)
    elif os.path.islink(source):
        layer.add(cpio.symlink(dest, os.readlink(source)), part)
    else:
        layer.add(
            cpio.regular(dest, source=source, perm=stat.S_IMODE(os.stat(source).st_mode)), part
        )


def _find_binary(name: str) -> str | None:
    if name.startswith("/"):
        return name if os.path.lexists(name) else None
    for folder in BINARY_PATH:
        candidate = os.path.join(folder, name)
        if os.path.lexists(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _wanted_binaries(registry: Registry) -> dict[str, str]:
    """Host path of each hook binary -> its path in the initrd."""
    found: dict[str, str] = {}
    missing = []
    for name, hooks in registry.binaries().items():
        host = _find_binary(name)
        if host is None:
            missing.append(f"{name} (wanted by hook {', '.join(hooks)})")
            continue
        found[host] = _initrd_path(host)
    if missing:
        raise BuildError(
            "binaries not found on the build host: "
            + "; ".join(missing)
            + f". Looked in {':'.join(BINARY_PATH)}; install the Debian packages that "
            "provide them (scripts/bootstrap lists them) or fix the hook"
        )
    return found


def _initrd_path(host: str) -> str:
    """Where a host file goes: its folder's real path (merged /usr), same name."""
    folder = os.path.realpath(os.path.dirname(host))
    return os.path.join(folder, os.path.basename(host)).lstrip("/")


def _add_elf_files(
    layer: Layer, binaries: dict[str, str], registry: Registry, includes: Sequence[str], work: str
) -> None:
    """Binaries and --include files; ELF ones bring their libraries.

    Keyed by the path in the initrd: one host file may go to several places
    (boot_time.py includes its guest program as two programs).
    """
    todo: dict[str, str] = {dest: host for host, dest in binaries.items()}  # dest -> host
    for spec in includes:
        source, dest = _split_spec(spec)
        if not os.path.exists(source):
            raise BuildError(f"--include {spec}: {source} does not exist")
        if os.path.isdir(source):
            _add_host_path(layer, source, dest, PART_OTHER)
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
                real_dest = _initrd_path(real_host)
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


def _add_busybox(init: Layer, applets: Layer) -> None:
    """The static busybox in the init's layer; its applets as a fallback layer."""
    if not os.path.exists(BUSYBOX):
        raise BuildError(
            f"{BUSYBOX} is missing; install Debian busybox-static (scripts/bootstrap does)"
        )
    info = elf.read(BUSYBOX)
    if info.is_dynamic:
        raise BuildError(f"{BUSYBOX} is dynamically linked; install busybox-static, not busybox")
    init.add(cpio.regular("usr/bin/busybox", source=BUSYBOX, perm=0o755), PART_BINARIES)
    listing = run([BUSYBOX, "--list-full"]).decode()
    for applet in sorted(listing.split()):
        path = _merged(applet.strip("/"))
        if path != "usr/bin/busybox":
            applets.add(cpio.symlink(path, "/usr/bin/busybox"), PART_BINARIES)
    # The kernel's module autoloader (request_module) runs this; see hooks/modules.py.
    init.add(cpio.symlink(layout.PRIVATE_MODPROBE.lstrip("/"), "/usr/bin/busybox"), PART_BINARIES)


def _merged(path: str) -> str:
    first, _, rest = path.partition("/")
    if first in MERGED_USR:
        return f"{MERGED_USR[first]}/{rest}" if rest else MERGED_USR[first]
    return path


def _add_modules(
    init: Layer, applets: Layer, registry: Registry, options: Options, work: str
) -> tuple[list[str], str, tuple[layout.PackedModule, ...]]:
    """The hooks' modules and the drivers, with their dependencies, the modalias
    index and the firmware found; (notes, kernel, list)."""
    wanted: dict[str, list[str]] = {}
    for hook in registry.hooks:
        for module in hook.modules:
            wanted.setdefault(module, []).append(hook.name)
    tree = kmod.ModuleTree.load(options.modules)
    drivers = kmod.choose_drivers(
        tree, kmod.Drivers(options.drivers), options.extra_drivers, options.sys_root
    )
    selection = kmod.select(tree, wanted, drivers)
    stage_root = os.path.join(work, "modules")
    staged = kmod.stage(tree, selection, stage_root)
    rel = os.path.relpath(staged, stage_root)
    for entry in cpio.entries_from_tree(staged, rel):
        entry = _no_mtime(entry)
        name = os.path.basename(entry.path)
        if name.startswith("modules.") and not entry.is_dir:
            # A --rootfs with the same kernel's full index keeps it.
            applets.add(entry, PART_MODULES)
        else:
            init.add(entry, PART_MODULES)
    index = kmod.alias_index(tree, selection)
    init.add(cpio.regular(layout.MODALIAS_INDEX.lstrip("/"), data=index.to_json()), PART_MODULES)
    found = kmod.firmware(tree, selection, options.firmware_dir)
    for name, host in found.present.items():
        path = posixpath.join(_merged(layout.FIRMWARE_ROOT.lstrip("/")), name)
        init.add(cpio.regular(path, source=host, perm=0o644), PART_MODULES)
    notes = [
        f"module {name} is built into kernel {tree.version}; nothing to load"
        for name in selection.builtin
    ]
    named = sum(1 for m in selection.modules if m.hooks)
    notes.append(
        f"drivers {options.drivers}"
        + (f" + {', '.join(options.extra_drivers)}" if options.extra_drivers else "")
        + f": {len(selection.drivers)} drivers, {len(selection.modules)} modules with "
        f"dependencies ({named} named by hooks); firmware: {len(found.present)} file(s) "
        f"packed, {len(found.missing)} declared but not in {options.firmware_dir}"
    )
    return notes, tree.version, selection.packed()


def merge(layers: Sequence[Layer]) -> list[tuple[cpio.Entry, str]]:
    """Merge layers, later ones winning; move paths below symlinked folders.

    A path whose parent is a symlink in the result (bin -> usr/bin) is moved
    to the link's target, so `bin/ls` of a non-merged --rootfs lands in
    usr/bin/ls, where the kernel would have written it anyway.
    """
    top: dict[str, tuple[cpio.Entry, str, int]] = {}
    for rank, layer in enumerate(layers):
        for path, (entry, part) in layer.entries.items():
            top[path] = (entry, part, rank)
    links = {p: e.data.decode() for p, (e, _part, _r) in top.items() if stat.S_ISLNK(e.mode)}
    result: dict[str, tuple[cpio.Entry, str, int]] = {}
    for rank, layer in enumerate(layers):
        for path, (entry, part) in layer.entries.items():
            if top[path][2] != rank:
                continue
            moved = _through_links(path, links)
            if moved != path:
                entry = dataclasses.replace(entry, path=moved)
            kept = result.get(moved)
            if kept is None or kept[2] <= rank:
                result[moved] = (entry, part, rank)
    # A folder entry may have been replaced by a symlink to it (rootfs "bin").
    return [(e, part) for _p, (e, part, _r) in sorted(result.items())]


# The archives, in the order they are concatenated.
ARCHIVE_ORDER = (PART_ROOTFS, PART_OTHER, PART_MODULES, PART_BINARIES, PART_INIT)


def split_archives(merged: Sequence[tuple[cpio.Entry, str]], mtime: int) -> list[tuple[str, bytes]]:
    """One newc archive per part, to be compressed separately and concatenated.

    The kernel unpacks concatenated (compressed) archives in turn, so the
    initrd can be several; each part then compresses (and is cached) on its
    own. Paths are unique after the merge; each archive repeats the real
    entries of its parent folders, so no folder's mode depends on order.
    """
    by_path = {e.path: e for e, _part in merged}
    groups: dict[str, dict[str, cpio.Entry]] = {}
    for entry, part in merged:
        group = groups.setdefault(part, {})
        group[entry.path] = entry
        parent = posixpath.dirname(entry.path)
        while parent and parent not in group:
            if parent in by_path:
                group[parent] = by_path[parent]
            parent = posixpath.dirname(parent)
    order = [p for p in ARCHIVE_ORDER if p in groups] + sorted(set(groups) - set(ARCHIVE_ORDER))
    return [(part, cpio.archive(groups[part].values(), mtime)) for part in order]


KEEP_COMPRESSED = 40  # a few builds' parts, for every compression


def compressed_cache_dir() -> str:
    return os.path.join(os.path.dirname(freeze.cache_root()), "compressed")


def _through_links(path: str, links: dict[str, str]) -> str:
    parts = path.split("/")
    for _ in range(40):  # symlink loops end here, as in the kernel
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in links:
                target = links[prefix]
                base = "" if target.startswith("/") else posixpath.dirname(prefix)
                resolved = posixpath.normpath(posixpath.join("/", base, target)).lstrip("/")
                parts = resolved.split("/") + parts[i:]
                break
        else:
            return "/".join(parts)
    return "/".join(parts)


# -- the command line --------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="mkinitrd.py",
        description="Build buildos-image, buildos-initrd and buildos-buildid into OUTDIR.",
    )
    parser.add_argument("--kernel", required=True, metavar="VMLINUZ")
    parser.add_argument(
        "--modules", required=True, metavar="DIR", help="the kernel's lib/modules/<version> folder"
    )
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    parser.add_argument(
        "--rootfs",
        metavar="DIR",
        help="an OS tree packed under the init's files (the init's files win)",
    )
    parser.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="SRC[:DST]",
        help="a host file or folder; an ELF file brings its libraries",
    )
    parser.add_argument(
        "--hooks",
        metavar="NAMES",
        help="comma-separated hook names (default: every hook found); "
        + ", ".join(ALWAYS_HOOKS)
        + " are always included",
    )
    parser.add_argument(
        "--hooks-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="another hooks folder, after the repository's hooks/",
    )
    parser.add_argument(
        "--drivers",
        choices=[d.value for d in kmod.Drivers],
        default=kmod.Drivers.GENERIC.value,
        help="device drivers to pack: generic (NICs and storage controllers a build host "
        "may have), host (those this machine's devices use), none (default: generic)",
    )
    parser.add_argument(
        "--driver",
        action="append",
        default=[],
        metavar="NAME",
        help="another driver module to pack (repeatable), e.g. one that "
        "`modprobe -R MODALIAS` names for a device",
    )
    parser.add_argument(
        "--firmware-dir",
        default="/lib/firmware",
        metavar="DIR",
        help="where the firmware the packed drivers declare is looked for (default "
        "/lib/firmware); files found are packed",
    )
    parser.add_argument(
        "--compress",
        default="lz4",
        metavar="METHOD[:LEVEL]",
        help=f"{', '.join(cpio.COMPRESSIONS)}, with a level if wanted (default lz4, at 9: the "
        "fastest to unpack; scripts/pxe-layout recompresses it with zstd -19 for TFTP); "
        "zstd:3 packs a full OS image in seconds rather than minutes (test images)",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="compress every part again instead of reusing earlier output",
    )
    parser.add_argument("--verbose", action="store_true")
    ns = parser.parse_args(argv)
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "0")
    if not epoch.isdigit():
        parser.error(f"SOURCE_DATE_EPOCH={epoch!r} is not a number of seconds")
    try:
        method, level = cpio.parse_compression(ns.compress)
    except cpio.ArchiveError as exc:
        parser.error(f"--compress: {exc.message}")
    options = Options(
        kernel=ns.kernel,
        modules=ns.modules,
        outdir=ns.output,
        rootfs=ns.rootfs,
        includes=tuple(ns.include),
        hooks=tuple(n for n in ns.hooks.split(",") if n) if ns.hooks else None,
        hook_dirs=tuple(ns.hooks_dir),
        compress=Compression(method),
        compress_level=level,
        source_date_epoch=int(epoch),
        no_cache=ns.no_cache,
        drivers=kmod.Drivers(ns.drivers),
        extra_drivers=tuple(ns.driver),
        firmware_dir=ns.firmware_dir,
    )

    def say(message: str) -> None:
        print(f"mkinitrd: {message}", file=sys.stderr)

    started = time.monotonic()
    try:
        result = build(options, log=say)
    except BuildError as exc:
        say(f"error: {exc.message}")
        if exc.hint:
            say(f"hint: {exc.hint}")
        return 1
    for note in result.notes:
        say(f"note: {note}")
    if ns.rootfs:
        say(
            f"note: --rootfs {ns.rootfs} is packed under the init's files; where both have "
            "a path, the init's file wins"
        )
    if ns.verbose:
        for what, seconds in result.timings:
            say(f"{what}: {seconds:.2f} s")
        for part, raw, packed in result.parts:
            say(f"part {part}: {raw / 1e6:.1f} MB -> {packed / 1e6:.1f} MB")
    size = os.path.getsize(result.initrd)
    say(
        f"wrote {result.image}, {result.initrd} ({size / 1e6:.1f} MB, {ns.compress}), "
        f"{result.buildid} in {time.monotonic() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
