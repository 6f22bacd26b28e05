"""Freezing the init: PyInstaller onedir, cached, with a private loader.

Owned by the builder (mkinitrd). The init is frozen with PyInstaller in
onedir mode (onefile forks to unpack itself, so Python would not be PID 1).
Hooks are loaded from .py files at boot, so PyInstaller cannot see what
they import: their imports (module level and inside functions) are read
with `ast` and passed as hidden imports.

The product is cached in ~/.cache/initpy/freeze/<key>, where the key hashes
what decides the frozen bytes: initpy's sources and this file, the modules the hooks
import (not the hooks' text: editing a hook's body does not refreeze), the
Python and PyInstaller versions and every installed distribution with its
version. A warm build copies nothing and freezes nothing.

Private loader: glibc and the loader that the frozen tree needs are copied
into the product's lib/ (in the initrd: /usr/lib/initpy/lib), and the
executable's PT_INTERP and DT_RPATH are pointed there with patchelf, so the
init runs over a --rootfs whose glibc differs from the build host's.
PyInstaller on Linux keeps its archive in an ELF section (`pydata`), which
patchelf preserves.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

from initpy.builder import elf, frozen_modules
from initpy.builder.command import BuildError, run
from initpy.builder.frozen_modules import BASE_IMPORTS, EXCLUDES
from initpy.runtime import layout

# Inside the initrd.
FROZEN_DIR = layout.FROZEN_DIR
FROZEN_EXE = layout.FROZEN_EXE
PRIVATE_LIB_DIR = layout.PRIVATE_LIB_DIR
PRIVATE_LOADER = layout.PRIVATE_LOADER

# Debian's libudev, for pyudev (found by the entry script's find_library).
LIBUDEV = "/usr/lib/x86_64-linux-gnu/libudev.so.1"


class FreezeError(BuildError):
    """Freezing failed; the message says why and what to do."""


@dataclass(frozen=True)
class Frozen:
    """A frozen init: `tree` holds initpy (the executable), _internal/ and lib/."""

    tree: str
    key: str
    cached: bool  # True when it came from the cache


def _package_dir() -> str:
    return os.path.dirname(os.path.abspath(__file__))


def runtime_dir() -> str:
    """initpy/runtime: the package the freeze collects, and nothing else of initpy."""
    return os.path.join(os.path.dirname(_package_dir()), "runtime")


def hook_imports(hook_files: Sequence[str]) -> dict[str, list[str]]:
    """Every absolute module a hook file imports -> the hook files importing it.

    Imports inside functions count: that is where heavy ones (pyroute2) go.
    """
    found: dict[str, list[str]] = {}
    for path in hook_files:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
                # `from pyroute2 import ndb` may name a submodule.
                names += [f"{node.module}.{a.name}" for a in node.names if a.name != "*"]
            for name in names:
                found.setdefault(name, []).append(path)
    return found


def hidden_imports(hook_files: Sequence[str]) -> list[str]:
    """The importable modules the hooks use, plus BASE_IMPORTS, sorted.

    `from x import name` is tried as a submodule x.name and dropped when it
    is an attribute. A top-level package that is not installed fails the
    build, naming the hook.
    """
    wanted = set(BASE_IMPORTS)
    for name, files in sorted(hook_imports(hook_files).items()):
        top = name.split(".")[0]
        if top == "initpy":  # initpy.runtime is collected whole; nothing else may be
            continue
        if _find_spec(top) is None:
            raise FreezeError(
                f"{', '.join(sorted(set(files)))} imports {name!r}, which is not installed; "
                "add it to pyproject.toml's dependencies and run scripts/bootstrap"
            )
        if _find_spec(name) is not None:  # else an attribute: `from x import function`
            wanted.add(name)
    return sorted(wanted)


def _find_spec(name: str) -> object | None:
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError, AttributeError):
        return None


# What a build needs beyond initpy's own dependencies (pyproject.toml's extra).
BUILD_EXTRA_HINT = "pip install 'initpy[build]' (scripts/bootstrap installs it into .venv)"


def _tool_versions() -> str:
    try:
        import PyInstaller
    except ImportError:
        raise FreezeError(
            "PyInstaller is not installed, and the init is frozen with it", BUILD_EXTRA_HINT
        ) from None

    dists = sorted(
        f"{d.metadata['Name']}=={d.version}"
        for d in importlib.metadata.distributions()
        if d.metadata["Name"]
    )
    return "\n".join([sys.version, f"pyinstaller {PyInstaller.__version__}", *dists])


def cache_key(imports: Sequence[str]) -> str:
    digest = hashlib.sha256()
    top = runtime_dir()
    for name in sorted(os.listdir(top)):
        if name.endswith(".py"):
            digest.update(name.encode() + b"\0")
            with open(os.path.join(top, name), "rb") as f:
                digest.update(f.read())
    digest.update("\n".join(imports).encode())
    # This file and the module list too: the options, the excludes and the
    # spec edits decide the bytes.
    for source in (__file__, frozen_modules.__file__):
        with open(os.path.abspath(source), "rb") as f:
            digest.update(f.read())
    digest.update(_tool_versions().encode())
    for lib in (LIBUDEV,):
        if os.path.exists(lib):
            digest.update(os.path.realpath(lib).encode())
    return digest.hexdigest()[:24]


def cache_root() -> str:
    base = os.environ.get("INITPY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "initpy"
    )
    return os.path.join(base, "freeze")


def freeze(hook_files: Sequence[str], log: bool = False) -> Frozen:
    """The frozen init for these hooks: from the cache, or frozen now."""
    imports = hidden_imports(hook_files)
    key = cache_key(imports)
    dest = os.path.join(cache_root(), key)
    if os.path.exists(os.path.join(dest, ".complete")):
        os.utime(dest)  # recently used: kept by prune()
        return Frozen(dest, key, True)
    os.makedirs(cache_root(), exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{key}.", dir=cache_root())
    try:
        _run_pyinstaller(imports, work, log)
        product = os.path.join(work, "product")
        os.makedirs(product)
        os.rename(os.path.join(work, "dist", "initpy"), os.path.join(product, "frozen"))
        _strip(os.path.join(product, "frozen"))
        _privatize(product)
        with open(os.path.join(product, ".complete"), "w") as f:
            f.write("\n".join(imports) + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        try:
            os.rename(product, dest)
        except OSError:
            # Another build froze the same inputs meanwhile: use its tree.
            if not os.path.exists(os.path.join(dest, ".complete")):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    prune(cache_root(), KEEP_FROZEN)
    return Frozen(dest, key, False)


KEEP_FROZEN = 4


def prune(folder: str, keep: int) -> None:
    """Remove all but the `keep` most recently used entries of a cache folder."""
    try:
        names = [n for n in os.listdir(folder) if not n.startswith(".")]
    except OSError:
        return
    names.sort(key=lambda n: os.path.getmtime(os.path.join(folder, n)), reverse=True)
    for name in names[keep:]:
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)


# PyInstaller runtime hooks that run before our entry script and serve
# nothing at boot: pyi_rth_inspect imports inspect and lists
# base_library.zip (for inspect.getsource); pyi_rth_multiprocessing imports
# multiprocessing for spawned children, which the init never makes. Together
# about 25 ms natively, so about 0.4 s under TCG before the first state line.
# pyi_rth_pkgutil imports pkgutil, and with it typing, re and enum (13 ms
# natively) at every start; pyroute2 lists its ifinfmsg plugins with pkgutil,
# so the entry script does its job when pkgutil is first imported
# (initpy.runtime.frozen.PkgutilOnImport).
DROPPED_RUNTIME_HOOKS = ("pyi_rth_inspect", "pyi_rth_multiprocessing", "pyi_rth_pkgutil")
# The frozen modules' bytecode optimisation level (_run_pyinstaller says why).
FROZEN_OPTIMIZE = 2


def _run_pyinstaller(imports: Sequence[str], work: str, log: bool) -> None:
    entry = os.path.join(runtime_dir(), "frozen.py")
    argv = [
        os.path.join(os.path.dirname(sys.executable), "pyi-makespec"),
        "--onedir",
        "--name",
        "initpy",
        "--contents-directory",
        "_internal",
        "--specpath",
        work,
        "--collect-submodules",
        "initpy.runtime",
        "--paths",
        os.path.dirname(os.path.dirname(_package_dir())),
        # A fixed str hash seed: otherwise Python reads /dev/urandom as it
        # starts, and before the kernel's random pool is ready (no RDRAND the
        # kernel trusts, as under QEMU's default CPU) that read waits for the
        # kernel to make entropy: 1.5-1.7 s under TCG before the entry
        # script's first line. PID 1's dicts hold only the boot's own small
        # inputs, so hash flooding is no risk worth that wait.
        "--python-option",
        "hash_seed=0",
    ]
    for name in imports:
        argv += ["--hidden-import", name]
    for name in EXCLUDES:
        argv += ["--exclude-module", name]
    if any(i.split(".")[0] == "pyudev" for i in imports) and os.path.exists(LIBUDEV):
        argv += ["--add-binary", f"{LIBUDEV}:."]
    argv.append(entry)
    # PYZ entries stored, not zlib'ed: the initrd's zstd compresses them far
    # better as plain bytecode, and TCG-slow boots skip the inflate per import.
    env = dict(
        os.environ,
        PYTHONHASHSEED="0",
        PYINSTALLER_ZLIB_COMPRESSION_LEVEL="0",
        SOURCE_DATE_EPOCH=os.environ.get("SOURCE_DATE_EPOCH", "0"),
    )
    _pyinstaller_step(argv, env, log)
    spec = os.path.join(work, "initpy.spec")
    with open(spec) as f:
        text = f.read()
    anchor = "pyz = PYZ(a.pure)"
    text = _edit_spec(
        spec,
        text,
        anchor,
        f"a.scripts = [s for s in a.scripts if s[0] not in {DROPPED_RUNTIME_HOOKS!r}]\n{anchor}",
    )
    # The frozen modules' bytecode without docstrings and asserts (what
    # `python -OO` compiles): 0.17 MB less zstd in every initrd. The
    # interpreter itself stays at level 0, which makespec's --optimize would
    # change too: then it would look for the hooks' bytecode under another
    # name (X.cpython-311.opt-2.pyc) and compile every hook at boot, and the
    # hooks' own asserts would go. No frozen module needs its docstrings
    # (pyroute2 copies them when they are there) or an assert to decide
    # anything on the boot path.
    text = _edit_spec(spec, text, "optimize=0,", f"optimize={FROZEN_OPTIMIZE},")
    with open(spec, "w") as f:
        f.write(text)
    _pyinstaller_step(
        [
            sys.executable,
            "-m",
            "PyInstaller",
            "--noconfirm",
            "--clean",
            "--log-level",
            "WARN",
            "--distpath",
            os.path.join(work, "dist"),
            "--workpath",
            os.path.join(work, "build"),
            spec,
        ],
        env,
        log,
    )


def _edit_spec(spec: str, text: str, old: str, new: str) -> str:
    if old not in text:
        raise FreezeError(
            f"{spec}: no {old!r}; this PyInstaller's spec layout is "
            "unknown to initpy.builder.freeze"
        )
    return text.replace(old, new)


def _pyinstaller_step(argv: Sequence[str], env: dict[str, str], log: bool) -> None:
    run(
        argv,
        env=env,
        capture=not log,
        hint="run scripts/bootstrap to install the build extras (PyInstaller)",
    )


def _strip(tree: str) -> None:
    """Strip the shared objects' symbols (not the executable: its archive section stays)."""
    files = []
    for folder, _dirs, names in os.walk(tree):
        for name in names:
            path = os.path.join(folder, name)
            if ".so" in name and not os.path.islink(path) and elf.is_elf(path):
                files.append(path)
    if files and shutil.which("strip"):
        try:
            run(["strip", "--strip-unneeded", *sorted(files)])
        except BuildError:  # unstripped libraries still work, only larger
            pass


def _privatize(product: str) -> None:
    """Copy the loader and the libraries the frozen tree lacks into lib/; patch the exe."""
    frozen = os.path.join(product, "frozen")
    internal = os.path.join(frozen, "_internal")
    elf_files = []
    for folder, _dirs, names in os.walk(frozen):
        for name in sorted(names):
            path = os.path.join(folder, name)
            if not os.path.islink(path) and elf.is_elf(path):
                elf_files.append(path)
    lib = os.path.join(product, "lib")
    os.makedirs(lib)
    # The shared libraries PyInstaller collected (libcrypto, libsqlite3, ...)
    # move to the private folder, where the hook binaries' libraries go: one
    # copy of libcrypto serves both the init and ssh-keygen. libpython stays:
    # the bootloader loads it from _internal by path.
    for name in sorted(os.listdir(internal)):
        path = os.path.join(internal, name)
        if ".so" in name and not name.startswith("libpython") and os.path.isfile(path):
            os.rename(path, os.path.join(lib, name))
    elf_files = [p for p in elf_files if os.path.exists(p)]
    elf_files += [os.path.join(lib, n) for n in sorted(os.listdir(lib))]
    closure = elf.resolve(sorted(elf_files), extra_dirs=[lib, internal])
    for soname, host in sorted(closure.libraries.items()):
        if os.path.realpath(host).startswith(
            (os.path.realpath(frozen) + os.sep, os.path.realpath(lib) + os.sep)
        ):
            continue
        shutil.copy2(host, os.path.join(lib, soname))
    for interpreter in closure.interpreters:
        shutil.copy2(interpreter, os.path.join(lib, os.path.basename(PRIVATE_LOADER)))
    search = f"{PRIVATE_LIB_DIR}:{FROZEN_DIR}/_internal"
    exe = os.path.join(frozen, "initpy")
    patch_executable(exe, rpath=search)
    # Libraries built with a RUNPATH (pyenv's libpython and extensions point
    # at the build host's prefix) would ignore the executable's RPATH; point
    # theirs at the initrd's folders.
    for path in elf_files:
        info = elf.read(path)
        if path != exe and (info.runpath or info.rpath):
            _patchelf(["--set-rpath", search, path])


def _patchelf(args: Sequence[str]) -> None:
    run(["patchelf", *args])


def patch_executable(path: str, rpath: str = PRIVATE_LIB_DIR) -> None:
    """Point a dynamic executable at the private loader and library folder.

    DT_RPATH (not RUNPATH) so that it also applies to the libraries'
    own dependencies, and to dlopen() from libraries without a RUNPATH.
    """
    _patchelf(["--set-interpreter", PRIVATE_LOADER, "--force-rpath", "--set-rpath", rpath, path])
