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
from types import ModuleType
from typing import Any

from initpy.runtime import layout

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


class NoSslOnImport:
    """A meta-path finder that answers `import ssl` with initpy.runtime.nossl.

    The freeze excludes ssl (and OpenSSL with it); see initpy/nossl.py.
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
    from initpy.runtime.entry import main

    main()
