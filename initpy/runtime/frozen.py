"""The frozen init's entry script: what PyInstaller runs as PID 1 (/init).

initpy.builder.freeze hands this file to PyInstaller; it runs only inside
the initrd, and calls initpy.runtime.entry. It
teaches `ctypes.util.find_library` where libraries are inside the initrd:
the stock version asks ldconfig, gcc and ld, none of which exist there, so
pyudev could not find libudev.so.1. The patch is applied when something
first imports ctypes.util (pyroute2 does, in a network state), not here:
importing it costs about 20 ms natively, 15 times that under TCG, before
the first state line.
"""

from __future__ import annotations

import os
import sys


def stamp(what: str) -> None:
    """With INITPY_STAMPS=1 on the kernel command line, a kernel-log line for `what`.

    The kernel hands init the words it does not know as environment, and
    stamps each /dev/kmsg line with its clock: benchmarks/early_boot.py --python
    reads them to split "/init -> first line" in the guest itself.
    """
    if os.environ.get("INITPY_STAMPS") == "1":
        try:
            fd = os.open("/dev/kmsg", os.O_WRONLY)
            try:
                os.write(fd, f"<6>initpy-stamp: {what}\n".encode())
            finally:
                os.close(fd)
        except OSError:
            pass


if __name__ == "__main__":
    stamp("frozen.py")

from types import ModuleType  # noqa: E402
from typing import Any  # noqa: E402

from initpy.runtime import layout  # noqa: E402

# The folders mkinitrd fills: the frozen tree's own files, then the private
# loader's folder (glibc, libcrypto, ... and the hook binaries' libraries).
LIBRARY_DIRS = (
    getattr(sys, "_MEIPASS", layout.FROZEN_INTERNAL),
    layout.PRIVATE_LIB_DIR,
)


def find_in(folders: tuple[str, ...], name: str) -> str | None:
    """The first lib<name>.so.* (else lib<name>.so) in the folders.

    A versioned name first: a bare lib<name>.so may be a linker script.
    """
    for folder in folders:
        try:
            entries = sorted(os.listdir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.startswith(f"lib{name}.so."):
                return os.path.join(folder, entry)
        if f"lib{name}.so" in entries:
            return os.path.join(folder, f"lib{name}.so")
    return None


def patch(util: Any) -> None:
    """Wrap `util.find_library` (ctypes.util) to look in LIBRARY_DIRS first."""
    stock = util.find_library

    def find_library(name: str) -> str | None:
        return find_in(LIBRARY_DIRS, name) or stock(name)

    util.find_library = find_library


class _Loader:
    """Hands the import system the module that was imported and patched."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module

    def create_module(self, spec: Any) -> ModuleType:
        return self.module

    def exec_module(self, module: ModuleType) -> None:
        pass


class PatchOnImport:
    """A meta-path finder that patches ctypes.util when it is first imported."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "ctypes.util":
            return None
        sys.meta_path.remove(self)
        import ctypes.util
        from importlib.machinery import ModuleSpec

        patch(ctypes.util)
        # Out of sys.modules again, or the import system would prefer the
        # module's own spec and execute the file a second time, unpatched.
        del sys.modules[name]
        loader: Any = _Loader(ctypes.util)
        return ModuleSpec(name, loader, origin=ctypes.util.__file__)


def teach_pkgutil(pkgutil: Any, importers: Any) -> None:
    """Let `pkgutil.iter_modules` list the modules of a package frozen in the PYZ.

    PyInstaller's finder for the PYZ has no `iter_modules`, so pkgutil would
    list nothing there; its runtime hook pyi_rth_pkgutil teaches it, but
    runs before the entry script and imports pkgutil (with typing, re and
    enum) at every start. The freeze drops that hook, and this does the same
    job when something first imports pkgutil: pyroute2 lists its ifinfmsg
    plugins with it, in a network state. `importers` is PyInstaller's
    pyimod02_importers.
    """

    def frozen_modules(finder: Any, prefix: str = "") -> Any:
        node = importers.get_pyz_toc_tree()
        for part in finder._pyz_entry_prefix.split(".") if finder._pyz_entry_prefix else ():
            node = node.get(part) if isinstance(node, dict) else None
        for name, below in (node if isinstance(node, dict) else {}).items():
            yield prefix + name, isinstance(below, dict)
        if finder.fallback_finder is not None:  # the package's files beside the PYZ
            yield from pkgutil.iter_importer_modules(finder.fallback_finder, prefix)

    pkgutil.iter_importer_modules.register(importers.PyiFrozenFinder, frozen_modules)


class PkgutilOnImport:
    """A meta-path finder that applies `teach_pkgutil` when pkgutil is first imported."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "pkgutil":
            return None
        sys.meta_path.remove(self)
        import pkgutil
        from importlib.machinery import ModuleSpec

        import pyimod02_importers  # type: ignore[import-not-found]  # PyInstaller's bootstrap

        teach_pkgutil(pkgutil, pyimod02_importers)
        del sys.modules[name]  # as in PatchOnImport
        loader: Any = _Loader(pkgutil)
        return ModuleSpec(name, loader, origin=pkgutil.__file__)


class NoSslOnImport:
    """A meta-path finder that answers `import ssl` with initpy.runtime.nossl.

    The freeze excludes ssl (and OpenSSL with it); see initpy/runtime/nossl.py.
    """

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "ssl":
            return None
        sys.meta_path.remove(self)
        from importlib.machinery import ModuleSpec

        import initpy.runtime.nossl

        loader: Any = _Loader(initpy.runtime.nossl)
        return ModuleSpec(name, loader, origin=initpy.runtime.nossl.__file__)


if __name__ == "__main__":
    # Until the driver installs PID 1's handlers (Kernel.take_signals), a
    # SIGINT must not raise KeyboardInterrupt during the imports: that
    # would end PID 1, and the kernel would panic.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.meta_path.insert(0, NoSslOnImport())
    sys.meta_path.insert(0, PatchOnImport())
    sys.meta_path.insert(0, PkgutilOnImport())
    # First, before the engine and the hooks import: the kernel loads the
    # hooks' modules on another CPU meanwhile (initpy/runtime/preload.py).
    from initpy.runtime import preload

    preload.start()
    stamp("preload started")
    from initpy.runtime.entry import main

    stamp("imported entry")
    main()
