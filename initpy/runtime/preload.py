"""The hooks' kernel modules, loaded while Python starts: PID 1's first job.

The frozen entry script (frozen.py) calls `start()` before it imports the
engine and the hooks. A thread then loads every module a hook names in
the manifest (btrfs, bridge, nf_tables...), each after what it needs,
while the main thread imports the rest of PID 1 (about 1.5 s under TCG).
The kernel's module work (relocating, initialising; raid6_pq and xor
benchmark themselves) is CPU time, seconds under TCG: with a second CPU
it runs beside Python's start instead of after it. On one CPU it would
only share that CPU, so nothing is preloaded there.

The modules hook's `load_modules` takes over what loaded here (the core
fact PRELOADED, put by the driver: it waits for the thread) and loads
everything else itself, including what failed here: its messages, fixes
and report entries stay in one place. Nothing is loaded here when PID 1
is not process 1, when the command line asks for a break shell
(`initpy.break=`: a debugging boot loads nothing before the shell it
asked for), or when the manifest or the kernel's module folder is
missing (load_modules names those problems).

It mounts /proc to read the command line, with the flags early_mounts
uses (`PROC_MOUNT`); early_mounts then finds it mounted.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from initpy.runtime import layout
from initpy.runtime.kernel import MS_NODEV, MS_NOEXEC, MS_NOSUID, Kernel

# (source, target, fstype, mode, options, flags): early_mounts' row for /proc.
PROC_MOUNT = ("proc", "/proc", "proc", 0o555, "", MS_NOSUID | MS_NODEV | MS_NOEXEC)
BREAK_WORD = "initpy.break="
# How long load_modules waits for the thread at most: a module whose init
# hangs must not hang the boot (load_modules then loads the rest itself).
WAIT = 120.0


class Preload:
    """Loads the hooks' modules in order; `loaded` maps each one loaded to its ms."""

    def __init__(self, kernel: Kernel, folder: str, packed: Mapping[str, layout.PackedModule]):
        self.kernel = kernel
        self.folder = folder  # /lib/modules/<version>
        self.packed = packed
        self.loaded: dict[str, int] = {}
        self.done = threading.Event()

    def plan(self) -> list[str]:
        named = [name for name, module in self.packed.items() if module.hooks]
        return layout.load_order(self.packed, named)

    def run(self) -> None:
        """Load the plan; a module whose hard needs did not all load is left out."""
        k = self.kernel
        try:
            for name in self.plan():
                module = self.packed[name]
                hard = [n for n in module.needs if n in self.packed and n not in module.optional]
                if any(n not in self.loaded for n in hard):
                    continue
                start = k.uptime()
                try:
                    k.finit_module(f"{self.folder}/{module.path}")
                except OSError:
                    continue  # load_modules tries it again and says why it failed
                self.loaded[name] = int((k.uptime() - start) * 1000)
        finally:
            self.done.set()

    def wait(self) -> dict[str, int]:
        """The modules loaded, once the thread is done (or WAIT has passed)."""
        self.done.wait(WAIT)
        return dict(self.loaded) if self.done.is_set() else {}


_started: Preload | None = None


def prepare(kernel: Kernel) -> Preload | None:
    """The preload of this boot, or None where it must not run (see the docstring)."""
    if kernel.getpid() != 1 or kernel.cpus() < 2:
        return None
    try:
        if not kernel.exists("/proc/cmdline"):
            source, target, fstype, mode, options, flags = PROC_MOUNT
            kernel.mkdir(target, mode)
            kernel.mount(source, target, fstype, flags, options)
        if BREAK_WORD in kernel.read_text("/proc/cmdline"):
            return None
        manifest = layout.Manifest.from_json(kernel.read_bytes(layout.MANIFEST))
        version = kernel.read_text("/proc/sys/kernel/osrelease").strip()
    except (OSError, ValueError):
        return None  # early_mounts, the driver and load_modules say what is wrong
    folder = f"{layout.MODULES_ROOT}/{version}"
    if not kernel.is_dir(folder):
        return None
    return Preload(kernel, folder, {m.name: m for m in manifest.modules})


def start() -> None:
    """Start loading the hooks' modules in a thread of PID 1 (frozen.py calls this first)."""
    global _started
    # No SIGCHLD handler of its own: PID 1's Kernel (entry.py) installs that.
    kernel = Kernel(watch_orphans=False)
    preload = prepare(kernel)
    if preload is not None:
        kernel.start_thread("initpy-preload", preload.run)
        _started = preload


def loaded() -> dict[str, int]:
    """The modules `start` loaded (name -> ms), waiting for its thread; {} if none ran."""
    return _started.wait() if _started is not None else {}
