"""Storage: disks by label, /state, the machines disks, the build user and /build/tftp.

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
- `restore_state`: feed the saved random seed to the kernel and save a
  fresh one; restore the SSH host keys, or generate them once.
- `build_user` and `tftp` (late, after the network): the `build` user and
  group, and /build/tftp, a size-limited tmpfs owned by it.

The init never formats, deletes or overwrites anything on /state or a
machines disk: it writes only its own files in /state/initpy/, each
replaced atomically (Kernel.write_atomic: temp file, fsync, rename, fsync
of the folder). docs/storage.md is the operator's side of this file.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

from initpy import cmdline
from initpy.blockdev import BlockDevice, listing, wait_for_devices
from initpy.boot import STATE_MOUNTED
from initpy.cmdline import BadValue, Parameter
from initpy.hook import BootContext, BootFailure, Fact, Hook, State
from initpy.kernel import MS_NODEV, MS_NOSUID
from initpy.run import CommandFailed, run

STATE_LABEL = "buildos.state"
MACHINES_LABEL = "buildos.machines"
MACHINES_PREFIX = "buildos.machines."
STATE_MOUNT = "/state"
MACHINES_MOUNT = "/build/machines"
BUILD_HOME = "/build"
TFTP_MOUNT = "/build/tftp"

# The init's own folder on /state: the only place it writes there.
OWN_FOLDER = "/state/initpy"
SEED_PATH = f"{OWN_FOLDER}/random-seed"
HOST_KEY_FOLDER = f"{OWN_FOLDER}/ssh"
SEED_BYTES = 512  # as systemd-random-seed: the pool's size
HOST_KEY_TYPES = ("ed25519", "ecdsa", "rsa")  # what sshd loads by default
KEYGEN_FOLDER = "/run/initpy/hostkeys"
SSH_FOLDER = "/etc/ssh"

BUILD_USER = "build"
BUILD_UID = 1100
BUILD_GID = 1100
FSTAB = "/etc/fstab"

# Filesystems /state may use. xfs and vfat are probed too (for the disk
# listing) but cannot carry the label: xfs labels hold 12 bytes, FAT 11.
STATE_FILESYSTEMS = ("ext2", "ext3", "ext4", "btrfs")
# A <name> of buildos.machines.<name> becomes a folder name.
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def _tmpfs_size(raw: str | None) -> str:
    if raw is None or not re.fullmatch(r"[1-9][0-9]*[kKmMgG%]?", raw):
        raise BadValue(f"expected a tmpfs size like 2G, 512M or 10% (of RAM), got {raw!r}")
    if raw.endswith("%") and int(raw[:-1]) > 100:
        raise BadValue(f"expected at most 100%, got {raw!r}")
    return raw


DISKS_TIMEOUT: Parameter[float] = Parameter(
    "initpy.timeout.disks", cmdline.seconds(0, 3600), 10.0,
    "seconds to wait for the buildos.state and buildos.machines disks to appear",
    "initpy.timeout.disks=30",
)
TFTP_SIZE: Parameter[str] = Parameter(
    "initpy.tftp_size", _tmpfs_size, "10%",
    "size limit of the /build/tftp tmpfs (tmpfs size= syntax: bytes, k, M, G or % of RAM)",
    "initpy.tftp_size=4G",
)


# -- what was found ---------------------------------------------------------------


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class MachinesMount:
    target: str  # /build/machines or /build/machines/<name>
    filesystem: Filesystem


@dataclass(frozen=True)
class StoragePlan:
    """What find_disks decided: the state filesystem and the machines mounts."""

    state: Filesystem
    machines: tuple[MachinesMount, ...]


@dataclass(frozen=True)
class FstabEntry:
    source: str
    target: str
    fstype: str
    options: str

    def line(self) -> str:
        return f"{self.source} {self.target} {self.fstype} {self.options} 0 0"


PLAN: Fact[StoragePlan | None] = Fact("storage_plan")
MOUNTED: Fact[tuple[FstabEntry, ...]] = Fact("storage_mounted")
BUILD_IDS: Fact[tuple[int, int]] = Fact("build_ids")


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


def plan_storage(devices: tuple[BlockDevice, ...], waited: float) -> StoragePlan:
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
                f"{len(group)} filesystems are labelled {label}: "
                + "; ".join(f"{fs.paths} ({fs.fstype}, uuid {fs.uuid})" for fs in group)
            )
            fixes.append(
                f"keep one {label} and relabel the others, e.g. "
                + ("btrfs filesystem label" if group[1].fstype == "btrfs" else "e2label")
                + f" {group[1].device} OTHER-LABEL (or detach that disk)"
            )
    for fs in ours:
        devids = [m.superblock.devid for m in fs.members if m.superblock]
        clones = sorted({d for d in devids if devids.count(d) > 1})
        if clones:
            problems.append(
                f"{fs.paths} are copies of the same btrfs device (label {fs.label}, fsid "
                f"{fs.uuid}, devid {', '.join(map(str, clones))})"
            )
            fixes.append("detach the copy, or give it a new fsid: btrfstune -u /dev/sdX")

    single = by_label.get(MACHINES_LABEL, [])
    named = {label[len(MACHINES_PREFIX):]: group for label, group in by_label.items()
             if label.startswith(MACHINES_PREFIX)}
    for name, group in sorted(named.items()):
        if not SAFE_NAME.fullmatch(name):
            problems.append(
                f"{group[0].paths} is labelled {MACHINES_PREFIX}{name}, but {name!r} is not a "
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
            + ", ".join(f"{f.paths} as {f.label}" for g in named.values() for f in g)
            + ") are present; use one form"
        )
        fixes.append(
            f"relabel the single disk as a named one: btrfs filesystem label "
            f"{single[0].device} {MACHINES_PREFIX}NAME (or relabel the named ones away)"
        )
    for fs in ours:
        if _is_machines(fs.label) and fs.fstype != "btrfs":
            problems.append(
                f"{fs.paths} is labelled {fs.label} but holds {fs.fstype}; machines disks "
                "must be btrfs"
            )
            fixes.append(
                f"format it as btrfs (this ERASES it): mkfs.btrfs -f -L {fs.label} -m single "
                f"{fs.device}"
            )
        if fs.label == STATE_LABEL and fs.fstype not in STATE_FILESYSTEMS:
            problems.append(
                f"{fs.paths} is labelled {STATE_LABEL} but holds {fs.fstype}, which initpy "
                f"does not mount; use one of {', '.join(STATE_FILESYSTEMS)}"
            )
            fixes.append(f"format it (this ERASES it): mkfs.ext4 -L {STATE_LABEL} {fs.device}")
        if fs.fstype == "btrfs" and not fs.complete:
            have = ", ".join(f"{m.path} (devid {m.superblock.devid})"
                             for m in fs.members if m.superblock)
            problems.append(
                f"btrfs {fs.label} (fsid {fs.uuid}) has {len(fs.members)} of its "
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
        raise BootFailure(
            "; ".join(problems) + f".\nDisks found (after waiting {waited:.1f} s):\n" + lines,
            "\n".join(fixes),
        )

    state = by_label[STATE_LABEL][0]
    if single:
        machines: tuple[MachinesMount, ...] = (MachinesMount(MACHINES_MOUNT, single[0]),)
    else:
        machines = tuple(MachinesMount(f"{MACHINES_MOUNT}/{name}", group[0])
                         for name, group in sorted(named.items()))
    return StoragePlan(state, machines)


# -- the states ---------------------------------------------------------------------


def find_disks(ctx: BootContext) -> str:
    timeout = ctx.value(DISKS_TIMEOUT)
    waited = wait_for_devices(ctx.kernel, required_present, timeout)
    if waited.polled:
        ctx.warn("find_disks: no uevent socket; polled /sys/class/block instead")
    ctx.report.extra["disks"] = listing(waited.devices)
    plan = plan_storage(waited.devices, waited.seconds)
    ctx.put(PLAN, plan)
    machines = "; ".join(f"{m.target} <- {m.filesystem.paths}" for m in plan.machines)
    return (f"{len(waited.devices)} block device(s) in {waited.seconds:.2f} s "
            f"({waited.uevents} uevent(s)); /state <- {plan.state.paths} "
            f"({plan.state.fstype}); {machines}")


def _mounted(ctx: BootContext) -> dict[str, str]:
    """Mount point -> source, from /proc/self/mounts."""
    table: dict[str, str] = {}
    try:
        text = ctx.kernel.read_text("/proc/self/mounts")
    except OSError:
        return table
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 1:
            table[fields[1]] = fields[0]
    return table


def _mount(ctx: BootContext, fs: Filesystem, target: str) -> str:
    k = ctx.kernel
    already = _mounted(ctx)
    if target in already:
        return f"{target} was already mounted (from {already[target]})"
    k.mkdir(target)
    try:
        k.mount(fs.device, target, fs.mount_type(), 0, fs.mount_options())
    except OSError as exc:
        check = ("btrfs check --readonly" if fs.fstype == "btrfs"
                 else f"fsck.{fs.fstype} -f")
        raise BootFailure(
            f"cannot mount {fs.paths} ({fs.fstype}, label {fs.label}) on {target}: "
            f"{exc.strerror or exc}",
            f"look at dmesg, then check the filesystem: {check} {fs.device}; "
            "leave this shell (exit or Ctrl-D) to reboot",
        ) from exc
    return f"{target} <- {fs.paths}"


def _record_mount(ctx: BootContext, entry: FstabEntry) -> None:
    entries = [e for e in ctx.get(MOUNTED, ()) if e.target != entry.target]
    ctx.put(MOUNTED, (*entries, entry))


def _plan(ctx: BootContext) -> StoragePlan:
    plan = ctx.get(PLAN, None)
    if plan is None:
        raise BootFailure("the disks were not looked at (find_disks did not run)",
                          "rebuild the initrd with the storage hook's states in order")
    return plan


# `nofail`: the init has mounted these already; on the booted OS, systemd must
# not stop in emergency mode if udev is slow to name a device by label.
FSTAB_OPTIONS = "defaults,nofail"


def mount_state(ctx: BootContext) -> str:
    plan = _plan(ctx)
    detail = _mount(ctx, plan.state, STATE_MOUNT)
    ctx.put(STATE_MOUNTED, True)
    _record_mount(ctx, FstabEntry(f"LABEL={STATE_LABEL}", STATE_MOUNT,
                                  plan.state.mount_type(), FSTAB_OPTIONS))
    return detail


def mount_machines(ctx: BootContext) -> str:
    plan = _plan(ctx)
    details = []
    for mount in plan.machines:
        details.append(_mount(ctx, mount.filesystem, mount.target))
        _record_mount(ctx, FstabEntry(f"LABEL={mount.filesystem.label}", mount.target,
                                      "btrfs", FSTAB_OPTIONS))
    write_fstab(ctx)
    return "; ".join(details)


FSTAB_HEADER = (
    "# /etc/fstab: written by initpy at boot (hooks/storage.py). What initpy mounted,\n"
    "# by label; the disks' labels are the storage configuration (docs/storage.md).\n"
)


_FSTAB_DROP = ("# from the image:", "# UNCONFIGURED FSTAB FOR BASE SYSTEM")  # ours, debootstrap's


def write_fstab(ctx: BootContext) -> None:
    """/etc/fstab: the image's own entries kept, ours (by mount point) replaced."""
    k = ctx.kernel
    entries = ctx.get(MOUNTED, ())
    ours = {e.target for e in entries}
    kept: list[str] = []
    if k.exists(FSTAB):
        for line in k.read_text(FSTAB).splitlines():
            fields = line.split()
            if line in FSTAB_HEADER.splitlines() or line in _FSTAB_DROP:
                continue
            if len(fields) > 1 and not line.lstrip().startswith("#") and fields[1] in ours:
                continue
            kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    text = FSTAB_HEADER + "".join(e.line() + "\n" for e in entries)
    if kept:
        text += "\n# from the image:\n" + "\n".join(kept) + "\n"
    k.mkdir("/etc")
    k.write_atomic(FSTAB, text.encode(), 0o644)


def _feed_seed(ctx: BootContext) -> str:
    k = ctx.kernel
    fed = "no saved seed (first boot on this state disk)"
    if k.exists(SEED_PATH):
        try:
            old = k.read_bytes(SEED_PATH)
            k.feed_urandom(old)
            fed = f"fed {len(old)} saved bytes to the kernel"
        except OSError as exc:
            ctx.warn(f"restore_state: cannot feed {SEED_PATH}: {exc}")
            fed = "saved seed unreadable"
    # Saved at once, so that a boot that dies later never reuses this seed.
    k.write_atomic(SEED_PATH, k.random_bytes(SEED_BYTES), 0o600)
    return f"random seed: {fed}, saved a fresh one"


def _looks_like_key(private: bytes) -> bool:
    return private.startswith(b"-----BEGIN ") and b"PRIVATE KEY-----" in private


ROOT_PASSWD = "root:*:0:0:root:/root:/bin/sh\n"
ROOT_GROUP = "root:x:0:\n"


def _ensure_root_account(ctx: BootContext) -> None:
    """ssh-keygen exits ("No user exists for uid 0") without root in /etc/passwd.

    An initrd without an OS image has no /etc/passwd at all; a locked root
    entry (and its group) is what any OS would have.
    """
    k = ctx.kernel
    k.mkdir("/etc")
    for path, line in (("/etc/passwd", ROOT_PASSWD), ("/etc/group", ROOT_GROUP)):
        if not k.exists(path):
            k.write_atomic(path, line.encode(), 0o644)


def _generate_host_key(ctx: BootContext, kind: str) -> tuple[bytes, bytes]:
    k = ctx.kernel
    _ensure_root_account(ctx)
    k.mkdir(KEYGEN_FOLDER, 0o700)
    path = f"{KEYGEN_FOLDER}/ssh_host_{kind}_key"
    for leftover in (path, path + ".pub"):
        if k.exists(leftover):
            k.remove(leftover)
    argv = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "root@buildos", "-f", path]
    if kind == "rsa":
        argv[4:4] = ["-b", "3072"]
    run(k, argv, timeout=300,
        fix="rebuild the initrd with the storage hook (it ships ssh-keygen)")
    try:
        private, public = k.read_bytes(path), k.read_bytes(path + ".pub")
    except OSError:
        raise OSError(f"{shlex.join(argv)} succeeded but left no key in {path}") from None
    k.remove(path)
    k.remove(path + ".pub")
    return private, public


def _host_keys(ctx: BootContext) -> str:
    k = ctx.kernel
    k.mkdir(HOST_KEY_FOLDER, 0o700)
    k.mkdir(SSH_FOLDER)
    restored, generated = [], []
    for kind in HOST_KEY_TYPES:
        name = f"ssh_host_{kind}_key"
        saved = f"{HOST_KEY_FOLDER}/{name}"
        private = public = b""
        if k.exists(saved) and k.exists(saved + ".pub"):
            private, public = k.read_bytes(saved), k.read_bytes(saved + ".pub")
        if _looks_like_key(private) and public.strip():
            restored.append(kind)
        else:
            if private:
                ctx.warn(f"restore_state: {saved} is not a key; generating a new one")
            private, public = _generate_host_key(ctx, kind)
            # Public first: a private key on /state always has its .pub beside it.
            k.write_atomic(saved + ".pub", public, 0o600)
            k.write_atomic(saved, private, 0o600)
            generated.append(kind)
        k.write_atomic(f"{SSH_FOLDER}/{name}", private, 0o600)
        k.write_atomic(f"{SSH_FOLDER}/{name}.pub", public, 0o644)
    parts = []
    if restored:
        parts.append("restored " + ", ".join(restored))
    if generated:
        parts.append("generated and saved " + ", ".join(generated))
    return "host keys: " + "; ".join(parts)


def restore_state(ctx: BootContext) -> str:
    """The state is persistent but not precious: a problem is a warning, not a rescue."""
    details = []
    ctx.kernel.mkdir(OWN_FOLDER, 0o700)
    for what, step in (("random seed", _feed_seed), ("host keys", _host_keys)):
        try:
            details.append(step(ctx))
        except (OSError, CommandFailed) as exc:
            text = exc.reason if isinstance(exc, CommandFailed) else str(exc)
            ctx.warn(f"restore_state: {what}: {text}")
            details.append(f"{what}: failed ({text})")
    return "; ".join(details)


def _read_table(ctx: BootContext, path: str) -> list[list[str]]:
    if not ctx.kernel.exists(path):
        return []
    return [line.split(":") for line in ctx.kernel.read_text(path).splitlines() if line]


def _write_table(ctx: BootContext, path: str, rows: list[list[str]], mode: int) -> None:
    k = ctx.kernel
    owner = None
    if k.exists(path):
        st = k.stat(path)
        mode, owner = st.st_mode & 0o7777, (st.st_uid, st.st_gid)
    k.write_atomic(path, "".join(":".join(r) + "\n" for r in rows).encode(), mode)
    if owner is not None:
        k.chown(path, *owner)  # /etc/shadow belongs to group shadow


def build_user(ctx: BootContext) -> str:
    """The `build` user and group (uid/gid 1100, home /build), unless the OS has them."""
    k = ctx.kernel
    k.mkdir("/etc")
    passwd = _read_table(ctx, "/etc/passwd")
    group = _read_table(ctx, "/etc/group")
    user_row = next((r for r in passwd if r[0] == BUILD_USER and len(r) >= 7), None)
    group_row = next((r for r in group if r[0] == BUILD_USER and len(r) >= 3), None)
    done = []
    if group_row is not None:
        gid = int(group_row[2])
    else:
        gid = int(user_row[3]) if user_row is not None else BUILD_GID
        taken = [r for r in group if len(r) >= 3 and r[2] == str(gid)]
        if taken:
            raise BootFailure(
                f"cannot create group {BUILD_USER}: gid {gid} already belongs to "
                f"{taken[0][0]!r} in /etc/group",
                f"add group {BUILD_USER} to the OS image (any free gid), then rebuild it",
            )
        if not group:
            group = [ROOT_GROUP.strip().split(":")]
        group.append([BUILD_USER, "x", str(gid), ""])
        _write_table(ctx, "/etc/group", group, 0o644)
        if k.exists("/etc/gshadow"):
            gshadow = _read_table(ctx, "/etc/gshadow")
            gshadow.append([BUILD_USER, "!", "", ""])
            _write_table(ctx, "/etc/gshadow", gshadow, 0o640)
        done.append(f"group {BUILD_USER} ({gid}) created")
    if user_row is not None:
        uid = int(user_row[2])
        done.append(f"user {BUILD_USER} ({uid}) kept from the OS")
    else:
        uid = BUILD_UID
        taken = [r for r in passwd if len(r) >= 3 and r[2] == str(uid)]
        if taken:
            raise BootFailure(
                f"cannot create user {BUILD_USER}: uid {uid} already belongs to "
                f"{taken[0][0]!r} in /etc/passwd",
                f"add user {BUILD_USER} to the OS image (any free uid, home {BUILD_HOME}), "
                "then rebuild it",
            )
        shadowed = k.exists("/etc/shadow")
        shell = "/bin/bash" if k.exists("/bin/bash") else "/bin/sh"
        if not passwd:
            passwd = [ROOT_PASSWD.strip().split(":")]
        passwd.append([BUILD_USER, "x" if shadowed else "*", str(uid), str(gid), "build",
                       BUILD_HOME, shell])
        _write_table(ctx, "/etc/passwd", passwd, 0o644)
        if shadowed:
            shadow = _read_table(ctx, "/etc/shadow")
            if not any(r[0] == BUILD_USER for r in shadow):
                # Locked: build logs in by key or su, never by password.
                shadow.append([BUILD_USER, "!", "", "0", "99999", "7", "", "", ""])
                _write_table(ctx, "/etc/shadow", shadow, 0o640)
        done.append(f"user {BUILD_USER} ({uid}) created")
    k.mkdir(BUILD_HOME)
    k.chown(BUILD_HOME, uid, gid)
    ctx.put(BUILD_IDS, (uid, gid))
    return "; ".join(done) + f"; home {BUILD_HOME}"


def tftp(ctx: BootContext) -> str:
    k = ctx.kernel
    size = ctx.value(TFTP_SIZE)
    uid, gid = ctx.get(BUILD_IDS, (BUILD_UID, BUILD_GID))
    options = f"size={size},mode=0755,uid={uid},gid={gid}"
    if TFTP_MOUNT not in _mounted(ctx):
        k.mkdir(TFTP_MOUNT)
        try:
            k.mount("tmpfs", TFTP_MOUNT, "tmpfs", MS_NOSUID | MS_NODEV, options)
        except OSError as exc:
            raise BootFailure(
                f"cannot mount a tmpfs ({options}) on {TFTP_MOUNT}: {exc.strerror or exc}",
                "give a size tmpfs accepts, e.g. initpy.tftp_size=2G, and reboot",
            ) from exc
    _record_mount(ctx, FstabEntry("tmpfs", TFTP_MOUNT, "tmpfs", f"{options},nosuid,nodev"))
    write_fstab(ctx)
    return f"{TFTP_MOUNT}: tmpfs {options}"


PARAMETERS: tuple[Parameter[Any], ...] = (DISKS_TIMEOUT, TFTP_SIZE)

HOOK = Hook(
    name="storage",
    description="disks by label: /state, /build/machines, fstab, saved state, build user, tftp",
    states=(
        State("find_disks", find_disks,
              "wait (kernel uevents) for the buildos.state and buildos.machines disks; read "
              "their superblocks; rescue with a disk listing and the commands if wrong",
              after=("load_modules",)),
        State("mount_state", mount_state, "mount the buildos.state disk at /state",
              after=("find_disks",)),
        State("mount_machines", mount_machines,
              "mount buildos.machines (btrfs) at /build/machines or each "
              "buildos.machines.<name> at /build/machines/<name>; write /etc/fstab",
              after=("mount_state",)),
        State("restore_state", restore_state,
              "feed the saved random seed and save a fresh one; restore or generate the SSH "
              "host keys", after=("mount_machines",)),
        State("build_user", build_user,
              "create the build user and group (1100, home /build) unless the OS has them",
              after=("bridges",), before=("handoff",)),
        State("tftp", tftp, "mount /build/tftp, a tmpfs of initpy.tftp_size owned by build",
              after=("build_user", "bridges"), before=("handoff",)),
    ),
    binaries=("ssh-keygen",),
    modules=("virtio_blk", "virtio_scsi", "sd_mod", "btrfs"),
    parameters=PARAMETERS,
)
