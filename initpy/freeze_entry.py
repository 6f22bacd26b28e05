"""The frozen init's entry script: what PyInstaller runs as PID 1 (/init).

Owned by the builder: initpy.freeze hands this file to PyInstaller. Before
the boot starts it teaches `ctypes.util.find_library` where libraries are
inside the initrd: the stock version asks ldconfig, gcc and ld, none of
which exist there, so pyudev could not find libudev.so.1.
"""

from __future__ import annotations

import ctypes.util
import os
import sys

# The folders mkinitrd fills: the frozen tree's own libraries, then the
# private loader's folder (glibc and the libraries of hook binaries).
LIBRARY_DIRS = (
    getattr(sys, "_MEIPASS", "/usr/lib/initpy/frozen/_internal"),
    "/usr/lib/initpy/lib",
)

_stock_find_library = ctypes.util.find_library


def find_library(name: str) -> str | None:
    """`find_library` that also looks in the initrd's library folders."""
    for folder in LIBRARY_DIRS:
        try:
            entries = sorted(os.listdir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry == f"lib{name}.so" or entry.startswith(f"lib{name}.so."):
                return os.path.join(folder, entry)
    return _stock_find_library(name)


ctypes.util.find_library = find_library

if __name__ == "__main__":
    from initpy.__main__ import main

    main()
