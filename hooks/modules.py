"""Kernel modules: load what mkinitrd put into the initrd, right after cmdline.

Owns the `load_modules` state. mkinitrd lists the modules it packed in the
initrd's manifest (initpy.runtime.layout.Manifest), in dependency order,
each with the modules it needs first. They are loaded with finit_module through the kernel
seam, concurrently where the dependency graph allows (a module starts as
soon as everything it needs is in), since loading is mostly waiting on the
kernel's relocation and init work and independent drivers need not queue.
Every module is recorded in the boot report with its result and time.

A module already loaded or built into the kernel is fine. Any other
failure is a BootFailure naming the module; modules that need it are
skipped and named too. /proc/sys/kernel/modprobe is pointed at a modprobe
that exists in the initrd, so the kernel can autoload (crc32c, nft
expressions) through request_module.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from initpy.runtime import layout
from initpy.runtime.hook import BootContext, BootFailure, Hook, Milestone, State
from initpy.runtime.layout import PackedModule

if TYPE_CHECKING:
    from concurrent.futures import Future

MODPROBE_SETTING = "/proc/sys/kernel/modprobe"
# The kernel's default; busybox's applet there when there is no --rootfs.
SYSTEM_MODPROBE = "/sbin/modprobe"
PRIVATE_MODPROBE = layout.PRIVATE_MODPROBE
# Loading is syscall-bound; a few threads overlap the kernel's waits without
# starving the boot on a 1-CPU VM.
WORKERS = 4


def _modprobe(ctx: BootContext) -> str:
    k = ctx.kernel
    chosen = SYSTEM_MODPROBE if k.exists(SYSTEM_MODPROBE) else PRIVATE_MODPROBE
    try:
        k.write_text(MODPROBE_SETTING, chosen + "\n")
    except OSError as exc:
        ctx.say(f"load_modules: warning: cannot set {MODPROBE_SETTING}: {exc}")
    return chosen


def load_modules(ctx: BootContext) -> str:
    # Imported here: hook files are imported before the first state line,
    # and imports are about 15 times slower under TCG.
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    k = ctx.kernel
    modprobe = _modprobe(ctx)
    modules = list(ctx.manifest.modules) if ctx.manifest is not None else []
    if not modules:
        return f"no modules in the initrd; autoload via {modprobe}"
    version = k.read_text("/proc/sys/kernel/osrelease").strip()
    folder = f"{layout.MODULES_ROOT}/{version}"
    if modules and not k.is_dir(folder):
        shipped = k.listdir("/lib/modules") if k.is_dir("/lib/modules") else []
        raise BootFailure(
            f"this kernel is {version}, but the initrd's modules are for "
            f"{', '.join(shipped) or 'no kernel'}",
            f"rebuild the initrd with --modules of kernel {version} "
            "(its lib/modules/<version> folder), or boot the kernel it was built for",
        )

    results: dict[str, tuple[str, int, str]] = {}  # name -> (result, ms, error)

    def load(module: PackedModule) -> tuple[str, int, str]:
        start = k.uptime()
        try:
            k.finit_module(f"{folder}/{module.path}")
            result, error = "loaded", ""
        except OSError as exc:
            if exc.errno == errno.EEXIST or k.exists(f"/sys/module/{module.name}"):
                result, error = "already loaded", ""
            else:
                result = "failed"
                error = os.strerror(exc.errno) if exc.errno else str(exc)
        return result, int((k.uptime() - start) * 1000), error

    pending = {m.name: m for m in modules}
    listed = set(pending)
    running: dict[Future[tuple[str, int, str]], str] = {}
    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="modules") as pool:
        while pending or running:
            for name, module in list(pending.items()):
                needs = [n for n in module.needs if n in listed]
                if any(results.get(n, ("",))[0] in ("failed", "skipped") for n in needs):
                    failed = [n for n in needs if results[n][0] in ("failed", "skipped")]
                    results[name] = ("skipped", 0, "needs " + ", ".join(failed))
                    del pending[name]
                elif all(n in results for n in needs):
                    running[pool.submit(load, module)] = name
                    del pending[name]
            if not running:
                for name in pending:  # a cycle in the list: nothing can start
                    results[name] = ("skipped", 0, "dependency cycle in " + layout.MANIFEST)
                pending.clear()
                continue
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                results[running.pop(future)] = future.result()
    for module in modules:
        result, ms, error = results[module.name]
        entry: dict[str, object] = {"name": module.name, "result": result, "ms": ms}
        if error:
            entry["error"] = error
        ctx.report.modules.append(entry)
    failed = [m.name for m in modules if results[m.name][0] == "failed"]
    skipped = [m.name for m in modules if results[m.name][0] == "skipped"]
    if failed:
        first = failed[0]
        raise BootFailure(
            "cannot load module "
            + ", ".join(f"{n} ({results[n][2]})" for n in failed)
            + (f"; not loaded because of it: {', '.join(skipped)}" if skipped else ""),
            f"read `dmesg | tail` for why {first} was refused; a module from another kernel "
            f"build is refused: rebuild the initrd with --modules of kernel {version}",
        )
    total_ms = sum(results[m.name][1] for m in modules)
    loaded = sum(1 for m in modules if results[m.name][0] == "loaded")
    ctx.say(
        f"load_modules: {loaded} loaded, {len(modules) - loaded} already present, "
        f"{total_ms} ms of loading across {WORKERS} threads"
    )
    return f"{len(modules)} modules; autoload via {modprobe}"


HOOK = Hook(
    name="modules",
    description="load the initrd's kernel modules in dependency order, concurrently",
    states=(
        State(
            "load_modules",
            load_modules,
            "load the kernel modules listed by mkinitrd (finit_module), concurrently where the "
            "dependency order allows; set the kernel's modprobe for autoloading",
            provides=(Milestone.MODULES,),
        ),
    ),
    modules=("virtio_pci", "virtio_blk", "virtio_net"),
)
