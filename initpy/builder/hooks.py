"""The hooks of one build: found once, chosen, and packed with their bytecode.

Owned by the builder (mkinitrd). The hooks are found by the runtime's own
discovery (initpy.runtime.hook.discover_with_paths: the same import PID 1
does), once per build; from them come the registry, the Python files the
freeze reads for hidden imports, and the files that go to
/usr/lib/initpy/hooks (layout.HOOKS_DIR) with a compiled .pyc beside each.
"""

from __future__ import annotations

import os
import posixpath
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass

from initpy.builder import cpio
from initpy.builder.command import BuildError
from initpy.builder.layers import PART_OTHER, Layer
from initpy.runtime import layout
from initpy.runtime.hook import (
    Hook,
    HookError,
    Registry,
    build_registry,
    discover_with_paths,
    select,
)

# Hooks every initrd has, whatever --hooks says: module loading and the
# rescue tools (busybox comes with every initrd, hook or not).
ALWAYS_HOOKS = ("modules", "rescue_tools")
_HOOKS_HINT = "fix the hooks, or choose others with --hooks"


def default_hooks_dir() -> str:
    """The hooks that come with initpy: a wheel installs them inside the
    package (pyproject.toml maps hooks/ to initpy/hooks), a checkout or an
    editable install has them beside it."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    installed = os.path.join(package, "hooks")
    return (
        installed if os.path.isdir(installed) else os.path.join(os.path.dirname(package), "hooks")
    )


@dataclass(frozen=True)
class ChosenHooks:
    """The chosen hooks' names (boot-tie order), their registry, and where each is defined."""

    names: tuple[str, ...]
    registry: Registry
    paths: dict[str, str]  # hook name -> its .py file or folder

    def sources(self) -> list[str]:
        """Every Python file of the chosen hooks (what the freeze reads)."""
        return [f for name in self.names for f in hook_sources(self.paths[name])]


def choose(
    folders: Sequence[str], wanted: Sequence[str] | None, os_image: bool = False
) -> ChosenHooks:
    """Find the hooks in `folders` (each imported once) and build the registry of `wanted`.

    `os_image`: the initrd carries the OS image, and so the hook that mounts it.
    """
    for folder in folders:
        if not os.path.isdir(folder):
            raise BuildError(
                f"hooks folder {folder} does not exist", "name an existing folder with --hooks-dir"
            )
    try:
        found = discover_with_paths(folders)
    except HookError as exc:
        raise BuildError(f"hooks: {exc}", _HOOKS_HINT) from None
    except Exception as exc:  # a hook's own import error, told as such
        raise BuildError(
            f"hook {_failing_file(exc, folders)} does not load: {type(exc).__name__}: {exc}",
            "fix the hook, or leave it out with --hooks",
        ) from exc
    hooks = {name: hook for name, (hook, _path) in found.items()}
    names = choose_names(hooks, wanted, os_image)
    try:
        registry = build_registry(select(hooks, names), hooks.values())
    except HookError as exc:
        raise BuildError(f"hooks: {exc}", _HOOKS_HINT) from None
    return ChosenHooks(tuple(names), registry, {name: path for name, (_h, path) in found.items()})


def _failing_file(exc: BaseException, folders: Sequence[str]) -> str:
    """The hook file where an import failed: the innermost frame in a hooks folder."""
    tops = tuple(os.path.join(os.path.realpath(f), "") for f in folders)
    named = getattr(exc, "filename", None)  # SyntaxError names its file
    frames = [f.filename for f in traceback.extract_tb(exc.__traceback__)]
    for path in [*([named] if isinstance(named, str) else []), *reversed(frames)]:
        if os.path.realpath(path).startswith(tops):
            return path
    return "in " + ", ".join(folders)


def choose_names(
    found: dict[str, Hook], wanted: Sequence[str] | None, os_image: bool = False
) -> list[str]:
    """The hook names in boot-tie order: the always-included first.

    The OS image's hook comes with the image and only with it, right after
    the module loading whose modules it needs: its state then runs before
    every other hook's, which may use the OS.
    """
    image_hook = layout.OS_IMAGE_HOOK
    if wanted is not None and image_hook in wanted and not os_image:
        raise BuildError(
            f"--hooks names {image_hook}, but this initrd carries no OS image",
            f"leave {image_hook} out of --hooks: mkinitrd --rootfs TREE chooses it with the "
            "image it packs",
        )
    names = [n for n in (list(wanted) if wanted is not None else sorted(found)) if n != image_hook]
    always = [n for n in ALWAYS_HOOKS if n in found]
    if os_image:
        if image_hook not in found:
            raise BuildError(
                f"hook {image_hook} (which mounts the OS image) is not in the hooks folders",
                "keep initpy's own hooks folder (--hooks-dir adds to it)",
            )
        always.insert(always.index("modules") + 1 if "modules" in always else 0, image_hook)
    return always + [n for n in names if n not in always]


def hook_sources(path: str) -> list[str]:
    """The Python files of a hook: the file itself, or every .py in its folder."""
    if not os.path.isdir(path):
        return [path]
    found = []
    for folder, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        found += [os.path.join(folder, n) for n in sorted(names) if n.endswith(".py")]
    return found


def add_hooks(layer: Layer, chosen: ChosenHooks) -> list[str]:
    """The hooks' Python files with their bytecode; returns the hooks' `files` specs."""
    for name in chosen.names:
        source = chosen.paths[name]
        top = os.path.dirname(source)
        for path in hook_sources(source):
            relative = os.path.relpath(path, top)
            layer.add(cpio.regular(f"{layout.HOOKS_DIR}/{relative}", source=path), PART_OTHER)
            layer.add(
                cpio.regular(hook_bytecode_path(relative), data=hook_bytecode(path, relative)),
                PART_OTHER,
            )
    registry = chosen.registry
    for spec in registry.files():
        source, _dest = split_spec(spec)
        if not os.path.exists(source):
            owners = [h.name for h in registry.hooks if spec in h.files]
            raise BuildError(
                f"file {source} (wanted by hook {', '.join(owners)}) does not "
                "exist on the build host",
                "install it or fix the hook",
            )
    # They go in as --include does: an ELF file brings its libraries.
    return registry.files()


def split_spec(spec: str) -> tuple[str, str]:
    """A hook's file or an --include, "SRC[:DST]": (SRC, DST or SRC)."""
    source, _, dest = spec.partition(":")
    return source, dest or source


def hook_bytecode_path(relative: str) -> str:
    """Where the frozen init's import system looks for a hook file's bytecode."""
    folder, base = os.path.split(relative)
    stem = base[: -len(".py")] if base.endswith(".py") else base
    return posixpath.join(
        layout.HOOKS_DIR, folder, "__pycache__", f"{stem}.{sys.implementation.cache_tag}.pyc"
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
        text,
        f"{layout.HOOKS_DIR}/{relative or os.path.basename(source)}",
        "exec",
        dont_inherit=True,
    )
    return bytes(_code_to_hash_pyc(code, importlib.util.source_hash(text), checked=False))
