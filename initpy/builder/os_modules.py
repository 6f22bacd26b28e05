"""The kernel modules the OS gets under `mkinitrd --rootfs`: a build host's share.

Owned by the builder. After the hand-off udev and modprobe load drivers
from the OS's module tree, which lives in RAM: every module a build host
never loads is RAM the build machines cannot have. `choose()` keeps the
kernel's module tree but for the classes in `DROP` (sound, radios, TV and
cameras, 3D GPUs, sensors, ...: `docs/os.md` has the sizes), so that what
a real build host's hardware may need stays: every NIC, storage controller
and filesystem, USB, kvm, virtio, vhost, tun, bridge, netfilter, loop,
squashfs, overlay, crypto, hwmon and watchdogs. Then it adds back what the
kept modules need (modules.dep, and the `pre:` and `post:` softdeps, which
modprobe loads too) and every module the init itself packs.

`stage()` copies the choice (plain `.ko`, as initpy.builder.kmod stages
the init's) and runs depmod on it, so modules.dep, the alias and symbol
indexes and their `.bin` forms name exactly the kept modules; it then
checks the new index against the choice. `mkinitrd --os-modules all` keeps
the kernel's whole tree, as it came.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from initpy.builder import kmod
from initpy.builder.command import BuildError


class OsModules(StrEnum):
    """mkinitrd --os-modules: which of the kernel's modules the OS gets."""

    BUILD_HOST = "build-host"
    ALL = "all"


# (kernel-tree path prefix, class, why a build host never loads it). A module
# whose path starts with a prefix is dropped, unless a kept module needs it.
DROP: tuple[tuple[str, str, str], ...] = (
    ("kernel/sound/", "sound", "no audio on a build host"),
    ("kernel/drivers/soundwire/", "sound", "the SoundWire audio bus"),
    ("kernel/drivers/base/regmap/regmap-sdw", "sound", "SoundWire codecs' registers"),
    ("kernel/drivers/net/wireless/", "radio", "Wi-Fi NICs: a build host is wired"),
    ("kernel/net/wireless/", "radio", "cfg80211, Wi-Fi's configuration"),
    ("kernel/net/mac80211/", "radio", "the 802.11 stack"),
    ("kernel/drivers/net/wwan/", "radio", "mobile broadband modems"),
    ("kernel/drivers/net/ieee802154/", "radio", "802.15.4 low-rate radios"),
    ("kernel/net/ieee802154/", "radio", "802.15.4 low-rate radios"),
    ("kernel/net/mac802154/", "radio", "802.15.4 low-rate radios"),
    ("kernel/drivers/bluetooth/", "radio", "Bluetooth"),
    ("kernel/net/bluetooth/", "radio", "Bluetooth"),
    ("kernel/drivers/nfc/", "radio", "NFC"),
    ("kernel/net/nfc/", "radio", "NFC"),
    ("kernel/drivers/media/", "media", "TV tuners, webcams, video4linux, IR remotes"),
    ("kernel/drivers/staging/", "staging", "drivers below the kernel's own quality bar"),
    # The console stays: the DRM core, the server BMCs' and the virtual
    # machines' display drivers (ast, mgag200, bochs, cirrus, qxl, virtio),
    # fbdev; these are desktop 3D GPUs.
    ("kernel/drivers/gpu/drm/amd/", "3D GPU", "AMD GPUs (amdgpu)"),
    ("kernel/drivers/gpu/drm/radeon/", "3D GPU", "older AMD GPUs"),
    ("kernel/drivers/gpu/drm/nouveau/", "3D GPU", "NVIDIA GPUs"),
    ("kernel/drivers/gpu/drm/i915/", "3D GPU", "Intel GPUs"),
    ("kernel/drivers/gpu/drm/gma500/", "3D GPU", "Intel GMA500 netbook GPUs"),
    ("kernel/drivers/iio/", "sensors", "industrial I/O: accelerometers, light sensors, ADCs"),
    ("kernel/drivers/comedi/", "sensors", "data-acquisition cards"),
    ("kernel/drivers/w1/", "sensors", "1-Wire buses"),
    ("kernel/drivers/input/joystick/", "desktop input", "game controllers"),
    ("kernel/drivers/input/touchscreen/", "desktop input", "touchscreens"),
    ("kernel/drivers/input/tablet/", "desktop input", "drawing tablets"),
    # The build host's network is Ethernet and IP; the OS has no rdma-core
    # to use RDMA (mlx5_core, the Ethernet half of a Mellanox NIC, stays).
    ("kernel/drivers/infiniband/", "RDMA", "InfiniBand and RDMA verbs"),
    ("kernel/drivers/nvme/host/nvme-rdma.ko", "RDMA", "NVMe over RDMA fabrics"),
    ("kernel/drivers/nvme/target/nvmet-rdma.ko", "RDMA", "NVMe over RDMA fabrics"),
    ("kernel/net/sunrpc/xprtrdma/", "RDMA", "NFS over RDMA"),
    ("kernel/net/9p/9pnet_rdma.ko", "RDMA", "9p over RDMA"),
    ("kernel/net/rds/", "RDMA", "Reliable Datagram Sockets over RDMA"),
    ("kernel/net/smc/", "RDMA", "SMC sockets over RDMA"),
    ("kernel/drivers/isdn/", "old links", "ISDN"),
    ("kernel/drivers/atm/", "old links", "ATM adapters"),
    ("kernel/net/atm/", "old links", "ATM"),
    ("kernel/drivers/net/can/", "old links", "CAN bus (cars, factories)"),
    ("kernel/net/can/", "old links", "CAN bus (cars, factories)"),
    ("kernel/drivers/pcmcia/", "old links", "laptops' PC Card slots"),
    ("kernel/drivers/firewire/", "old links", "FireWire"),
    (
        "kernel/drivers/usb/gadget/",
        "USB gadget",
        "the device side of USB: a build host is the host",
    ),
    ("kernel/drivers/usb/atm/", "old links", "USB ADSL modems"),
    ("kernel/drivers/mtd/", "raw flash", "raw flash chips of embedded boards"),
    ("kernel/fs/ubifs/", "raw flash", "a filesystem for raw flash"),
    ("kernel/fs/jffs2/", "raw flash", "a filesystem for raw flash"),
    ("kernel/fs/ocfs2/", "cluster filesystems", "Oracle's shared-disk cluster filesystem"),
    ("kernel/fs/gfs2/", "cluster filesystems", "Red Hat's shared-disk cluster filesystem"),
)


@dataclass(frozen=True)
class Choice:
    """The kept modules (names), and the dropped ones by class."""

    kept: frozenset[str]
    dropped: dict[str, tuple[str, ...]]  # class -> module names
    pulled: tuple[str, ...]  # of a dropped class, kept because a kept module needs it


def dropped_class(relpath: str) -> str | None:
    """The DROP class a module's path falls in, or None for a kept one."""
    for prefix, what, _why in DROP:
        if relpath.startswith(prefix):
            return what
    return None


def choose(tree: kmod.ModuleTree, always: Iterable[str] = ()) -> Choice:
    """What a build host keeps of `tree`; `always` are kept whatever their class
    (the modules the init packs: the OS's index must name them)."""
    soft = kmod.softdeps(os.path.join(tree.top, "modules.softdep"), ("pre", "post"))
    wanted = {name for name, path in tree.paths.items() if dropped_class(path) is None}
    wanted |= {name for name in always if name in tree.paths}
    kept: set[str] = set()
    todo = sorted(wanted)
    while todo:
        name = todo.pop()
        if name in kept:
            continue
        kept.add(name)
        todo += [d for d in (*tree.deps.get(name, ()), *soft.get(name, ())) if d in tree.paths]
    dropped: dict[str, list[str]] = {}
    for name in sorted(set(tree.paths) - kept):
        dropped.setdefault(dropped_class(tree.paths[name]) or "", []).append(name)
    pulled = sorted(n for n in kept - wanted if dropped_class(tree.paths[n]) is not None)
    return Choice(frozenset(kept), {k: tuple(v) for k, v in dropped.items()}, tuple(pulled))


def stage(tree: kmod.ModuleTree, choice: Choice, root: str) -> str:
    """Copy the kept modules into `root`/usr/lib/modules/<version>, depmod them,
    and check the new index names them and only them; returns that folder."""
    selection = kmod.Selection(
        tuple(kmod.Module(name, tree.paths[name], ()) for name in sorted(choice.kept)), ()
    )
    staged = kmod.stage(tree, selection, root)
    index = kmod.ModuleTree.load(staged)
    unresolved = sorted(
        f"{name} needs {dep}"
        for name, deps in index.deps.items()
        for dep in deps
        if dep not in index.paths
    )
    if set(index.paths) != choice.kept or unresolved:
        raise BuildError(
            f"depmod's index of the OS's modules ({staged}) differs from the choice: "
            f"{len(set(index.paths) ^ choice.kept)} module(s) differ; "
            + ("; ".join(unresolved[:5]) or "no dependency is missing"),
            "use --os-modules all to keep the kernel's whole module tree, and report this",
        )
    return staged


def for_rootfs(modules: str, init_modules: Iterable[str], work: str) -> tuple[str, str]:
    """The folder of the OS's modules for a --rootfs build, and a note saying what went."""
    tree = kmod.ModuleTree.load(modules)
    choice = choose(tree, init_modules)
    staged = stage(tree, choice, os.path.join(work, "os-modules"))

    def megabytes(names: Iterable[str]) -> float:
        return sum(os.path.getsize(os.path.join(tree.top, tree.paths[n])) for n in names) / 1e6

    dropped = ", ".join(
        f"{what} {len(names)} ({megabytes(names):.1f} MB)"
        for what, names in sorted(choice.dropped.items(), key=lambda item: -megabytes(item[1]))
    )
    note = (
        f"os modules: {len(choice.kept)} of {len(tree.paths)} kept "
        f"({megabytes(choice.kept):.1f} of {megabytes(tree.paths):.1f} MB, as the kernel's "
        f"files); dropped: {dropped or 'none'}"
        + (f"; kept for a kept module: {', '.join(choice.pulled)}" if choice.pulled else "")
        + " (--os-modules all keeps every one)"
    )
    return staged, note
