"""Storage: disks by label, /state and the machines disks, listed in /etc/fstab.

States, in boot order:
- `find_disks` (after load_modules): wait for block devices with kernel
  uevents until `buildos.state` and a machines disk are present (or
  `initpy.timeout.disks` passes), read every superblock, check the layout;
  any problem, including missing labels, is a rescue whose reason lists the
  disks and whose fix gives the exact commands.
- `mount_state`: the `buildos.state` filesystem at /state.
- `mount_machines`: `buildos.machines` at /build/machines, or each
  `buildos.machines.<name>` at /build/machines/<name>; btrfs only, every
  member of a multi-device filesystem handed to the mount. /etc/fstab.

What is kept on /state is the persist hook's (hooks/persist.py); the build
user and /build/tftp are the build host hook's (hooks/buildhost.py).
The init never formats, deletes or overwrites anything on /state or a
machines disk. docs/storage.md is the operator's side of this file.
"""

from __future__ import annotations

import re
import shlex

from initpy.runtime import cmdline, etc, layout
from initpy.runtime.cmdline import Parameter
from initpy.runtime.hook import (
    DRIVERLESS,
    BootContext,
    BootFailure,
    Fact,
    Hook,
    Milestone,
    State,
)
from initpy.runtime.record import frozen
from initpy.runtime.report import one_line, printable

from .blockdev import BlockDevice, listing, wait_for_devices

STATE_LABEL = "buildos.state"
MACHINES_LABEL = "buildos.machines"
MACHINES_PREFIX = "buildos.machines."
STATE_MOUNT = layout.STATE_MOUNT
MACHINES_MOUNT = "/build/machines"

# Filesystems /state may use. xfs and vfat are probed too (for the disk
# listing) but cannot carry the label: xfs labels hold 12 bytes, FAT 11.
STATE_FILESYSTEMS = ("ext2", "ext3", "ext4", "btrfs")
# A <name> of buildos.machines.<name> becomes a folder name. (Patterns are
# text, compiled at their first use by re's cache, not at every boot's import.)
SAFE_NAME = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
# A label that a fix command may show as it is.
SHELL_SAFE = r"[A-Za-z0-9_][A-Za-z0-9._-]*"


DISKS_TIMEOUT: Parameter[float] = Parameter(
    "initpy.timeout.disks",
    cmdline.seconds(0, 3600),
    10.0,
    "seconds to wait for the buildos.state and buildos.machines disks to appear",
    "initpy.timeout.disks=30",
)
# -- what was found ---------------------------------------------------------------


@frozen
class Filesystem:
    """One filesystem: one device, or every member of a multi-device btrfs."""

    label: str
    fstype: str
    uuid: str
    members: tuple[BlockDevice, ...]  # btrfs: ordered by devid
    num_devices: int

    @property
    def device(self) -> str:
        return self.members[0].path

    @property
    def shown_label(self) -> str:
        """The label as a message quotes it: from the disk, so it brings no line break.

        say() escapes its other control characters when it prints the message.
        """
        return one_line(self.label)

    @property
    def label_word(self) -> str:
        """The label as one shell word, for a fix the operator may paste."""
        if re.fullmatch(SHELL_SAFE, self.label):
            return self.label
        return shlex.quote(printable(self.label))

    @property
    def paths(self) -> str:
        return ", ".join(m.path for m in self.members)

    @property
    def complete(self) -> bool:
        return len({m.superblock.devid for m in self.members if m.superblock}) >= self.num_devices

    def mount_type(self) -> str:
        # The ext4 driver mounts ext2 and ext3 too (CONFIG_EXT4_USE_FOR_EXT2).
        return "ext4" if self.fstype in ("ext2", "ext3") else self.fstype

    def mount_options(self) -> str:
        # btrfs's device= option scans each member during the mount, which is
        # what `btrfs device scan` would do beforehand, without the binary.
        if self.fstype == "btrfs" and len(self.members) > 1:
            return ",".join(f"device={m.path}" for m in self.members)
        return ""


def filesystems(devices: tuple[BlockDevice, ...] | list[BlockDevice]) -> list[Filesystem]:
    """Group devices into filesystems: btrfs members by fsid, others one each."""
    found: list[Filesystem] = []
    btrfs: dict[str, list[BlockDevice]] = {}
    for device in devices:
        sb = device.superblock
        if sb is None or sb.fstype == "swap":
            continue
        if sb.fstype == "btrfs":
            btrfs.setdefault(sb.uuid, []).append(device)
        else:
            found.append(Filesystem(sb.label, sb.fstype, sb.uuid, (device,), 1))
    for uuid, members in btrfs.items():
        members.sort(key=lambda m: (m.superblock.devid if m.superblock else 0, m.name))
        first = members[0].superblock
        assert first is not None
        found.append(Filesystem(first.label, "btrfs", uuid, tuple(members), first.num_devices))
    return sorted(found, key=lambda f: f.device)


def _is_ours(label: str) -> bool:
    return label in (STATE_LABEL, MACHINES_LABEL) or label.startswith(MACHINES_PREFIX)


def _is_machines(label: str) -> bool:
    return label == MACHINES_LABEL or label.startswith(MACHINES_PREFIX)


@frozen
class MachinesMount:
    target: str  # /build/machines or /build/machines/<name>
    filesystem: Filesystem


@frozen
class StoragePlan:
    """What find_disks decided: the state filesystem and the machines mounts."""

    state: Filesystem
    machines: tuple[MachinesMount, ...]


PLAN: Fact[StoragePlan] = Fact("storage_plan")


def required_present(devices: list[BlockDevice]) -> bool:
    """The wait's goal: a state and a machines filesystem, with every btrfs member in."""
    found = [f for f in filesystems(devices) if _is_ours(f.label)]
    has_state = any(f.label == STATE_LABEL for f in found)
    has_machines = any(_is_machines(f.label) for f in found)
    return has_state and has_machines and all(f.complete for f in found)


# -- the labelling rescue -----------------------------------------------------------


LABELLING_FIX = (
    "label or format disks from the list above, then leave this shell (exit or Ctrl-D) "
    "to reboot; the next boot picks up the new labels.\n"
    "  inspect:  fdisk -l; blkid; hdparm -N /dev/sdX (over-provisioning, as the manual)\n"
    "  state (any of ext2/3/4 or btrfs; mkfs ERASES the disk):\n"
    "            mkfs.ext4 -L buildos.state /dev/sdX   (on a USB flash drive or card add "
    "-O ^has_journal)\n"
    "            or keep an existing ext4 and relabel it: e2label /dev/sdX buildos.state\n"
    "  machines (btrfs only; mkfs ERASES the disk):\n"
    "            mkfs.btrfs -L buildos.machines -m single /dev/sdY\n"
    "            or several disks: mkfs.btrfs -L buildos.machines.NAME -m single /dev/sdZ "
    "(one per disk, mounted at /build/machines/NAME)\n"
    "            or keep an existing btrfs and relabel it: "
    "btrfs filesystem label /dev/sdY buildos.machines"
)


def plan_storage(
    devices: tuple[BlockDevice, ...], waited: float, driverless: str = ""
) -> StoragePlan:
    """Check the disks against the spec's rules; every problem at once, or the plan."""
    problems: list[str] = []
    fixes: list[str] = []
    found = filesystems(devices)
    ours = [f for f in found if _is_ours(f.label)]
    by_label: dict[str, list[Filesystem]] = {}
    for fs in ours:
        by_label.setdefault(fs.label, []).append(fs)

    for label, group in sorted(by_label.items()):
        if len(group) > 1:
            problems.append(
                f"{len(group)} filesystems are labelled {one_line(label)}: "
                + "; ".join(f"{fs.paths} ({fs.fstype}, uuid {fs.uuid})" for fs in group)
            )
            fixes.append(
                f"keep one {one_line(label)} and relabel the others, e.g. "
                + ("btrfs filesystem label" if group[1].fstype == "btrfs" else "e2label")
                + f" {group[1].device} OTHER-LABEL (or detach that disk)"
            )
    for fs in ours:
        devids = [m.superblock.devid for m in fs.members if m.superblock]
        clones = sorted({d for d in devids if devids.count(d) > 1})
        if clones:
            problems.append(
                f"{fs.paths} are copies of the same btrfs device (label {fs.shown_label}, fsid "
                f"{fs.uuid}, devid {', '.join(map(str, clones))})"
            )
            fixes.append("detach the copy, or give it a new fsid: btrfstune -u /dev/sdX")

    single = by_label.get(MACHINES_LABEL, [])
    named = {
        label[len(MACHINES_PREFIX) :]: group
        for label, group in by_label.items()
        if label.startswith(MACHINES_PREFIX)
    }
    for name, group in sorted(named.items()):
        if not re.fullmatch(SAFE_NAME, name):
            problems.append(
                f"{group[0].paths} is labelled {group[0].shown_label}, but {name!r} is not a "
                "safe folder name under /build/machines"
            )
            fixes.append(
                f"relabel it: btrfs filesystem label {group[0].device} {MACHINES_PREFIX}NAME, "
                "with NAME of letters, digits, '.', '_' and '-', not starting with '.' or '-'"
            )
    if single and named:
        problems.append(
            f"both {MACHINES_LABEL} ({', '.join(f.paths for f in single)}) and "
            f"{MACHINES_PREFIX}<name> ("
            + ", ".join(f"{f.paths} as {f.shown_label}" for g in named.values() for f in g)
            + ") are present; use one form"
        )
        fixes.append(
            f"relabel the single disk as a named one: btrfs filesystem label "
            f"{single[0].device} {MACHINES_PREFIX}NAME (or relabel the named ones away)"
        )
    for fs in ours:
        if _is_machines(fs.label) and fs.fstype != "btrfs":
            problems.append(
                f"{fs.paths} is labelled {fs.shown_label} but holds {fs.fstype}; machines disks "
                "must be btrfs"
            )
            fixes.append(
                f"format it as btrfs (this ERASES it): mkfs.btrfs -f -L {fs.label_word} -m single "
                f"{fs.device}"
            )
        if fs.label == STATE_LABEL and fs.fstype not in STATE_FILESYSTEMS:
            problems.append(
                f"{fs.paths} is labelled {STATE_LABEL} but holds {fs.fstype}, which initpy "
                f"does not mount; use one of {', '.join(STATE_FILESYSTEMS)}"
            )
            fixes.append(f"format it (this ERASES it): mkfs.ext4 -L {STATE_LABEL} {fs.device}")
        if fs.fstype == "btrfs" and not fs.complete:
            have = ", ".join(
                f"{m.path} (devid {m.superblock.devid})" for m in fs.members if m.superblock
            )
            problems.append(
                f"btrfs {fs.shown_label} (fsid {fs.uuid}) has {len(fs.members)} of its "
                f"{fs.num_devices} devices after {waited:.1f} s: {have}"
            )
            fixes.append(
                "attach the missing disk(s) and reboot, or wait longer with "
                "initpy.timeout.disks=SECONDS"
            )

    missing = []
    if STATE_LABEL not in by_label:
        missing.append(f"no disk labelled {STATE_LABEL} (for /state)")
    if not single and not named:
        missing.append(
            f"no disk labelled {MACHINES_LABEL} or {MACHINES_PREFIX}<name> (for /build/machines)"
        )
    if missing:
        problems = missing + problems
        fixes.append(LABELLING_FIX)

    if problems:
        lines = "\n".join("  " + line for line in listing(devices)) or (
            "  (none: no block device appeared; is the disk driver in the initrd? "
            "virtio_blk, sd_mod, nvme ...)"
        )
        if missing and driverless:
            lines += "\n" + driverless
        raise BootFailure(
            "; ".join(problems) + f".\nDisks found (after waiting {waited:.1f} s):\n" + lines,
            "\n".join(fixes),
        )

    state = by_label[STATE_LABEL][0]
    if single:
        machines: tuple[MachinesMount, ...] = (MachinesMount(MACHINES_MOUNT, single[0]),)
    else:
        machines = tuple(
            MachinesMount(f"{MACHINES_MOUNT}/{name}", group[0])
            for name, group in sorted(named.items())
        )
    return StoragePlan(state, machines)


# -- the states ---------------------------------------------------------------------


def find_disks(ctx: BootContext) -> str:
    timeout = ctx.value(DISKS_TIMEOUT)
    waited = wait_for_devices(ctx.kernel, required_present, timeout)
    if waited.polled:
        ctx.warn("find_disks: no uevent socket; polled /sys/class/block instead")
    ctx.report.extra["disks"] = listing(waited.devices)
    explain = ctx.get(DRIVERLESS, None)
    satisfied = required_present(list(waited.devices))
    missing = explain("storage") if explain is not None and not satisfied else ""
    plan = plan_storage(waited.devices, waited.seconds, missing)
    ctx.put(PLAN, plan)
    machines = "; ".join(f"{m.target} <- {m.filesystem.paths}" for m in plan.machines)
    return (
        f"{len(waited.devices)} block device(s) in {waited.seconds:.2f} s "
        f"({waited.uevents} uevent(s)); /state <- {plan.state.paths} "
        f"({plan.state.fstype}); {machines}"
    )


def _mount(ctx: BootContext, fs: Filesystem, target: str) -> str:
    k = ctx.kernel
    already = etc.mounted(ctx.kernel)
    if target in already:
        return f"{target} was already mounted (from {already[target]})"
    k.mkdir(target)
    try:
        k.mount(fs.device, target, fs.mount_type(), 0, fs.mount_options())
    except OSError as exc:
        check = "btrfs check --readonly" if fs.fstype == "btrfs" else f"fsck.{fs.fstype} -f"
        raise BootFailure(
            f"cannot mount {fs.paths} ({fs.fstype}, label {fs.shown_label}) on {target}: "
            f"{exc.strerror or exc}",
            f"look at dmesg, then check the filesystem: {check} {fs.device}; "
            "leave this shell (exit or Ctrl-D) to reboot",
        ) from exc
    return f"{target} <- {fs.paths}"


# `nofail`: the init has mounted these already; on the booted OS, systemd must
# not stop in emergency mode if udev is slow to name a device by label.
FSTAB_OPTIONS = "defaults,nofail"


def mount_state(ctx: BootContext) -> str:
    plan = ctx.require(PLAN, "find_disks")
    detail = _mount(ctx, plan.state, STATE_MOUNT)
    etc.record_mount(
        ctx,
        etc.FstabEntry(f"LABEL={STATE_LABEL}", STATE_MOUNT, plan.state.mount_type(), FSTAB_OPTIONS),
    )
    return detail


def mount_machines(ctx: BootContext) -> str:
    plan = ctx.require(PLAN, "find_disks")
    details = []
    for mount in plan.machines:
        details.append(_mount(ctx, mount.filesystem, mount.target))
        etc.record_mount(
            ctx,
            etc.FstabEntry(f"LABEL={mount.filesystem.label}", mount.target, "btrfs", FSTAB_OPTIONS),
        )
    etc.write_fstab(ctx)
    return "; ".join(details)


HOOK = Hook(
    name="storage",
    description="disks by label: /state and the machines storage, listed in /etc/fstab",
    states=(
        State(
            "find_disks",
            find_disks,
            "wait (kernel uevents) for the buildos.state and buildos.machines disks; read "
            "their superblocks; rescue with a disk listing and the commands if wrong",
            needs=(Milestone.MODULES,),
        ),
        State(
            "mount_state",
            mount_state,
            "mount the buildos.state disk at /state",
            provides=(Milestone.STATE,),
        ),
        State(
            "mount_machines",
            mount_machines,
            "mount buildos.machines (btrfs) at /build/machines or each "
            "buildos.machines.<name> at /build/machines/<name>; write /etc/fstab",
            provides=(Milestone.MACHINES,),
        ),
    ),
    # Disk drivers come from the devices' modaliases (hooks/modules); these are
    # the filesystems: ext4 for /state (built into the cloud kernel, a module
    # of the generic one), btrfs for the machines disks.
    modules=("ext4", "btrfs"),
    parameters=(DISKS_TIMEOUT,),
)
