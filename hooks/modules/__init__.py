"""Kernel modules: the drivers the hardware asks for, and the modules hooks name.

Owns the `load_modules` state, right after cmdline. mkinitrd lists every
module it packed in the manifest (initpy.runtime.layout.Manifest), each with
the modules it needs first and the hooks that named it, and writes the
modalias index of the drivers (layout.MODALIAS_INDEX). At boot:

1. a kernel uevent socket is opened, then every device's modalias is read
   from sysfs (modalias.py) and matched against the index: each match
   is a driver to load, with the device that asked for it;
2. those drivers are loaded with finit_module through the kernel seam,
   then the drivers of the devices they announced meanwhile (read from
   the socket without waiting: virtio's NIC and disks, so find_disks and
   find_nics find them at once), then the modules the hooks name (btrfs,
   bridge, nf_tables: loaded at every boot, whatever the hardware); each
   module after everything it needs, in one thread per CPU (the kernel's
   work is CPU-bound: on one vCPU more threads only contend). The hooks'
   modules have mostly loaded by then: PID 1's first act starts loading
   them while Python imports the rest (initpy.runtime.preload; the core
   fact PRELOADED names them), and they are recorded here, not loaded again;
3. a background thread (`Kernel.start_thread`) keeps reading the socket
   until the hand-off (`ctx.on_exit`): every `add` uevent with a MODALIAS
   loads its drivers. That is how the devices behind a bus driver arrive
   (virtio devices after virtio_pci, USB interfaces after xhci_pci, SCSI
   disks after ahci or usb-storage), and a USB disk plugged in late: the
   storage hook's wait only sees the block device appear, and the network
   hook's the link; no hook knows of another.

Every module goes to the boot report with its result, time and what asked
for it (`device pci/0000:00:03.0`, `hook storage`, or `needed by ahci`).
A module a hook named that fails is a BootFailure; a driver that fails is
a warning (an optional softdep such as crct10dif_pclmul refuses QEMU's
CPU); a module the kernel refuses for its signature (Secure Boot:
signature.py says which case) is a warning that names it even when it
was only a dependency; and a device left without a driver is named by
find_nics or find_disks through the core fact DRIVERLESS
(missing_driver.py).
/proc/sys/kernel/modprobe is pointed at a modprobe that exists in the
initrd, so the kernel can autoload (crc32c, nft expressions) through
request_module.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from initpy.runtime import layout
from initpy.runtime.hook import (
    DRIVERLESS,
    PRELOADED,
    BootContext,
    BootFailure,
    Hook,
    Milestone,
    State,
)
from initpy.runtime.layout import AliasIndex, AliasIndexError, PackedModule, load_order
from initpy.runtime.record import field, mutable
from initpy.runtime.uevent import KERNEL_GROUP, NETLINK_KOBJECT_UEVENT, parse_uevent

from . import missing_driver, modalias, signature

if TYPE_CHECKING:
    from concurrent.futures import Future

    from initpy.runtime.kernel import Kernel, NetlinkSocket

MODPROBE_SETTING = "/proc/sys/kernel/modprobe"
# The kernel's default; busybox's applet there when there is no --rootfs.
SYSTEM_MODPROBE = "/sbin/modprobe"
PRIVATE_MODPROBE = layout.PRIVATE_MODPROBE
# Loading is the kernel's CPU work (relocating, initialising; raid6_pq and xor
# benchmark themselves): more threads than CPUs only contend. One thread per
# CPU, at most this many.
WORKERS = 4
# How often the background loader looks whether the boot is handing off.
FOLLOW_POLL = 0.25
# How long the hand-off waits for a module being loaded in the background.
STOP_WAIT = 10.0


def _modprobe(ctx: BootContext) -> str:
    k = ctx.kernel
    chosen = SYSTEM_MODPROBE if k.exists(SYSTEM_MODPROBE) else PRIVATE_MODPROBE
    try:
        k.write_text(MODPROBE_SETTING, chosen + "\n")
    except OSError as exc:
        ctx.say(f"load_modules: warning: cannot set {MODPROBE_SETTING}: {exc}")
    return chosen


@mutable
class Loader:
    """Loads packed modules, dependencies first, each once, and keeps the record."""

    kernel: Kernel
    folder: str  # /lib/modules/<version>
    packed: Mapping[str, PackedModule]
    results: dict[str, tuple[str, int, str]] = field(default_factory=dict)  # name -> (r, ms, e)
    why: dict[str, str] = field(default_factory=dict)  # name -> what asked for it
    order: list[str] = field(default_factory=list)  # in the order they were planned
    lock: threading.Lock = field(default_factory=threading.Lock)

    def tried(self) -> set[str]:
        with self.lock:
            return set(self.why)

    def _load_one(self, module: PackedModule) -> tuple[str, int, str]:
        k = self.kernel
        start = k.uptime()
        try:
            k.finit_module(f"{self.folder}/{module.path}")
            result, error = "loaded", ""
        except OSError as exc:
            if exc.errno == errno.EEXIST or k.exists(f"/sys/module/{module.name}"):
                result, error = "already loaded", ""
            else:
                result = "failed"
                error = str(exc)
                if exc.errno:
                    error = signature.refusal(
                        k, f"{self.folder}/{module.path}", exc.errno
                    ) or os.strerror(exc.errno)
        return result, int((k.uptime() - start) * 1000), error

    def load(
        self, asked: Mapping[str, str], workers: int = WORKERS, preloaded: Mapping[str, int] = {}
    ) -> list[str]:
        """Load what `asked` (module -> why) needs, in `workers` threads; returns the plan.

        With one worker, in the calling thread, in the plan's order (each
        module after what it needs), without a thread pool to import.
        `preloaded` (name -> ms) were loaded before Python's start
        (initpy.runtime.preload): they are recorded as loaded, not loaded again.
        """
        with self.lock:
            names = load_order(self.packed, list(asked), self.why)
            needers: dict[str, list[str]] = {}
            for wanted in asked:
                for name in load_order(self.packed, [wanted]):
                    if name != wanted:
                        needers.setdefault(name, []).append(wanted)
            for name in names:
                self.why[name] = asked.get(name) or "needed by " + ", ".join(needers[name])
                self.order.append(name)
                if name in preloaded:
                    self.results[name] = ("loaded", preloaded[name], "")

        def blocked(module: PackedModule) -> list[str]:
            hard = [n for n in module.needs if n not in module.optional]
            return [n for n in hard if self.results.get(n, ("",))[0] in ("failed", "skipped")]

        if workers <= 1:
            for name in names:
                if name in preloaded:
                    continue
                bad = blocked(self.packed[name])
                self.results[name] = (
                    ("skipped", 0, "needs " + ", ".join(bad))
                    if bad
                    else self._load_one(self.packed[name])
                )
            return names
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        pending = {n: self.packed[n] for n in names if n not in preloaded}
        running: dict[Future[tuple[str, int, str]], str] = {}

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="modules") as pool:
            while pending or running:
                for name, module in list(pending.items()):
                    bad = blocked(module)
                    if bad:
                        self.results[name] = ("skipped", 0, "needs " + ", ".join(bad))
                        del pending[name]
                    elif all(n in self.results for n in module.needs if n in self.packed):
                        running[pool.submit(self._load_one, module)] = name
                        del pending[name]
                if not running:
                    for name in pending:  # a cycle in the list: nothing can start
                        self.results[name] = ("skipped", 0, "dependency cycle in the manifest")
                    pending.clear()
                    continue
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in done:
                    self.results[running.pop(future)] = future.result()
        return names

    def worth_a_warning(self, name: str) -> bool:
        """A failure the boot names: of a module asked for, or a refusal for its signature.

        A dependency's own failure is in the report only (an optional softdep
        such as crct10dif_pclmul refuses QEMU's CPU); a refused signature is
        named wherever it happens.
        """
        result, _, error = self.results[name]
        if result not in ("failed", "skipped"):
            return False
        return not self.why[name].startswith("needed by") or error.startswith(signature.REFUSED)

    def entry(self, name: str) -> dict[str, object]:
        result, ms, error = self.results[name]
        entry: dict[str, object] = {"name": name, "result": result, "ms": ms, "why": self.why[name]}
        if error:
            entry["error"] = error
        return entry


def _device_reasons(index: AliasIndex, devices: Sequence[modalias.Device]) -> dict[str, str]:
    return {w.module: f"device {w.device.where}" for w in modalias.wanted(index, devices)}


def _read_index(ctx: BootContext) -> AliasIndex | None:
    k = ctx.kernel
    if not k.exists(layout.MODALIAS_INDEX):
        return None
    try:
        return AliasIndex.from_json(k.read_bytes(layout.MODALIAS_INDEX))
    except AliasIndexError as exc:
        ctx.warn(f"load_modules: {layout.MODALIAS_INDEX}: {exc}; drivers load by name only")
        return None


@mutable
class Follower:
    """The background loader: `add` uevents with a MODALIAS load their drivers."""

    ctx: BootContext
    loader: Loader
    index: AliasIndex
    source: NetlinkSocket
    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    loaded: list[str] = field(default_factory=list)

    def step(self, timeout: float) -> list[str]:
        """Read the uevents of up to `timeout` s; load what their devices ask for."""
        from .modalias import uevent_device

        devices = []
        for message in self.source.receive(timeout):
            event = parse_uevent(message)
            device = uevent_device(event.properties) if event is not None else None
            if device is not None:
                devices.append(device)
        if not devices:
            return []
        asked = {
            m: r for m, r in _device_reasons(self.index, devices).items() if m in self.loader.packed
        }
        names = self.loader.load(asked, workers=1)
        said = []
        for name in names:
            entry = self.loader.entry(name)
            self.ctx.report.modules.append(entry)
            if entry["result"] == "failed" and self.loader.worth_a_warning(name):
                self.ctx.warn(f"load_modules: {name} ({entry['why']}) failed: {entry['error']}")
            elif entry["why"] in asked.values():  # what a device asked for; the report has all
                said.append(f"{name} {entry['result']} ({entry['why']})")
        if said:  # one line per batch: a device's dependencies are in the report
            self.ctx.say("load_modules: " + "; ".join(said))
        self.loaded += names
        return names

    def drain(self) -> list[str]:
        """Load the drivers of the devices already announced, without waiting for more."""
        names: list[str] = []
        while True:
            batch = self.step(0.0)
            if not batch:
                return names
            names += batch

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.step(FOLLOW_POLL)
        except Exception as exc:  # noqa: BLE001 - a background thread must not die silently
            self.ctx.warn(f"load_modules: the uevent loader stopped: {type(exc).__name__}: {exc}")
        finally:
            self.source.close()
            self.done.set()

    def finish(self) -> None:
        self.stop.set()
        self.done.wait(STOP_WAIT)


def load_modules(ctx: BootContext) -> str:
    k = ctx.kernel
    modprobe = _modprobe(ctx)
    modules = list(ctx.manifest.modules) if ctx.manifest is not None else []
    if not modules:
        return f"no modules in the initrd; autoload via {modprobe}"
    version = k.read_text("/proc/sys/kernel/osrelease").strip()
    folder = f"{layout.MODULES_ROOT}/{version}"
    if not k.is_dir(folder):
        shipped = k.listdir("/lib/modules") if k.is_dir("/lib/modules") else []
        raise BootFailure(
            f"this kernel is {version}, but the initrd's modules are for "
            f"{', '.join(shipped) or 'no kernel'}",
            f"rebuild the initrd with --modules of kernel {version} "
            "(its lib/modules/<version> folder), or boot the kernel it was built for",
        )
    packed = {m.name: m for m in modules}
    index = _read_index(ctx)
    loader = Loader(k, folder, packed)
    workers = min(WORKERS, k.cpus())

    def driverless(kind: str) -> str:
        def drivers_for(alias: str) -> list[str]:
            hits = index.modules_for(alias) if index is not None and alias else {}
            return [m for m in hits if m in packed or m in index.builtin] if index else []

        found = list(missing_driver.driverless(k, kind, drivers_for))
        return missing_driver.rescue_text(found, version)

    ctx.put(DRIVERLESS, driverless)

    named: dict[str, str] = {}
    for module in modules:
        if module.hooks:
            named[module.name] = "hook " + ", ".join(module.hooks)
    # The devices' drivers first: the devices behind them (virtio's NIC and
    # disks) are announced while the hooks' modules load, and their drivers
    # load before load_modules ends instead of after it (find_disks waited).
    asked: dict[str, str] = {}
    source: NetlinkSocket | None = None
    devices: list[modalias.Device] = []
    if index is None:  # an initrd without an index: every packed module, as named
        named = {m.name: named.get(m.name, "packed") for m in modules}
    else:
        try:
            # Opened before the scan: a device that appears meanwhile is not lost.
            source = k.netlink_socket(NETLINK_KOBJECT_UEVENT, KERNEL_GROUP)
        except OSError as exc:
            ctx.warn(f"load_modules: no uevent socket ({exc}); late devices get no driver")
        start = k.uptime()
        devices = modalias.sysfs_devices(k)
        scan_ms = int((k.uptime() - start) * 1000)
        for name, reason in _device_reasons(index, devices).items():
            if name in packed and name not in named:
                asked[name] = reason
        ctx.say(f"load_modules: {len(devices)} devices with a modalias read in {scan_ms} ms")
    names = loader.load(asked, workers)
    for name in names:
        ctx.report.modules.append(loader.entry(name))
    follower = Follower(ctx, loader, index, source) if source and index else None
    if follower is not None:
        # Devices the bus drivers just announced: their drivers go first too.
        names += follower.drain()  # its failures are warned of by the follower
    # The hooks' modules that loaded while Python started, if the preload ran.
    wait_preload = ctx.get(PRELOADED, None)
    preloaded = wait_preload() if wait_preload is not None else {}
    later = loader.load(named, workers, preloaded)
    for name in later:
        ctx.report.modules.append(loader.entry(name))
    names += later
    results = loader.results
    failed = [n for n in names if results[n][0] == "failed"]
    skipped = [n for n in names if results[n][0] == "skipped"]
    # Without an index (a hand-made manifest) every packed module was asked for by name.
    required = {n for n, m in packed.items() if m.hooks or index is None}
    named_failed = [n for n in failed if n in required]
    named_skipped = [n for n in skipped if n in required]
    if named_failed or named_skipped:
        bad = named_failed or named_skipped
        fix = (
            f"pack the modules of kernel {version} as its build signed them (mkinitrd keeps "
            "the signatures), sign a module of your own with a key enrolled as a MOK, or "
            "boot without Secure Boot"
            if results[bad[0]][2].startswith(signature.REFUSED)
            else f"read `dmesg | tail` for why {bad[0]} was refused; a module from another "
            f"kernel build is refused: rebuild the initrd with --modules of kernel {version}"
        )
        raise BootFailure(
            "cannot load module "
            + ", ".join(f"{n} ({results[n][2]})" for n in bad)
            + (f"; not loaded because of it: {', '.join(skipped)}" if skipped else ""),
            fix,
        )
    drained = set(follower.loaded) if follower is not None else set()
    for name in [*failed, *skipped]:
        if name not in drained and loader.worth_a_warning(name):
            ctx.warn(f"load_modules: driver {name} ({loader.why[name]}): {results[name][2]}")
    if follower is not None:
        k.start_thread("initpy-uevents", follower.run)
        ctx.on_exit(follower.finish)
    total_ms = sum(results[n][1] for n in names)
    loaded = sum(1 for n in names if results[n][0] == "loaded")
    by_device = sum(1 for n in names if loader.why[n].startswith("device "))
    ctx.say(
        f"load_modules: {loaded} loaded, {len(names) - loaded} already present or failed, "
        f"{total_ms} ms of loading in {workers} thread{'s' if workers > 1 else ''}"
        + (
            f" ({len(preloaded)} of them, {sum(preloaded.values())} ms, while Python started)"
            if preloaded
            else ""
        )
    )
    return (
        f"{len(names)} modules ({by_device} for devices, "
        f"{sum(1 for n in names if packed[n].hooks)} named by hooks); "
        + ("late devices followed by uevents; " if source is not None else "")
        + f"autoload via {modprobe}"
    )


HOOK = Hook(
    name="modules",
    description="load the drivers the devices' modaliases ask for, then the modules hooks "
    "name, one thread per CPU; follow uevents for late devices",
    states=(
        State(
            "load_modules",
            load_modules,
            "match every device's modalias against the initrd's drivers and load them "
            "(finit_module), then the drivers of the devices they announce, then the modules "
            "the hooks name, dependencies first, one thread per CPU; keep loading drivers for "
            "devices that arrive later (uevents) until the hand-off; set the kernel's modprobe "
            "for autoloading",
            provides=(Milestone.MODULES,),
        ),
    ),
)
