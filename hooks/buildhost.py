"""The build host: the `build` user and group, and /build/tftp.

States, last before the hand-off:
- `build_user`: the `build` user and group (uid/gid 1100, home /build),
  unless the OS image has them; locked, never a password.
- `tftp`: /build/tftp, a tmpfs of `initpy.tftp_size` owned by build, which
  the OS serves read-only over TFTP; listed in /etc/fstab.
"""

from __future__ import annotations

import re

from initpy.runtime import etc
from initpy.runtime.cmdline import BadValue, Parameter
from initpy.runtime.hook import BootContext, BootFailure, Fact, Hook, Milestone, State
from initpy.runtime.kernel import MS_NODEV, MS_NOSUID
from initpy.runtime.osimage import OsFile, OsPackage

BUILD_USER = "build"
BUILD_UID = 1100
BUILD_GID = 1100
BUILD_HOME = "/build"
TFTP_MOUNT = "/build/tftp"
# The OS serves /build/tftp with dnsmasq's own TFTP server (no tftpd package).
TFTP_CONF = """\
# Shipped by initpy (hooks/buildhost.py): /build/tftp, read-only over TFTP
# on the default port (69), on the interfaces this dnsmasq serves: br1 only
# (initpy-br1.conf, written by initpy at boot). Why not br0: docs/manual.md,
# "TFTP".
enable-tftp
tftp-root=/build/tftp
"""


def _tmpfs_size(raw: str | None) -> str:
    if raw is None or not re.fullmatch(r"[1-9][0-9]*[kKmMgG%]?", raw):
        raise BadValue(f"expected a tmpfs size like 2G, 512M or 10% (of RAM), got {raw!r}")
    if raw.endswith("%") and int(raw[:-1]) > 100:
        raise BadValue(f"expected at most 100%, got {raw!r}")
    return raw


TFTP_SIZE: Parameter[str] = Parameter(
    "initpy.tftp_size",
    _tmpfs_size,
    "10%",
    "size limit of the /build/tftp tmpfs (tmpfs size= syntax: bytes, k, M, G or % of RAM)",
    "initpy.tftp_size=4G",
)


BUILD_IDS: Fact[tuple[int, int]] = Fact("build_ids")


def build_user(ctx: BootContext) -> str:
    """The `build` user and group (uid/gid 1100, home /build), unless the OS has them."""
    k = ctx.kernel
    k.mkdir("/etc")
    passwd = etc.read_table(ctx.kernel, "/etc/passwd")
    group = etc.read_table(ctx.kernel, "/etc/group")
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
            group = [etc.ROOT_GROUP.strip().split(":")]
        group.append([BUILD_USER, "x", str(gid), ""])
        etc.write_table(ctx.kernel, "/etc/group", group, 0o644)
        if k.exists("/etc/gshadow"):
            gshadow = etc.read_table(ctx.kernel, "/etc/gshadow")
            gshadow.append([BUILD_USER, "!", "", ""])
            etc.write_table(ctx.kernel, "/etc/gshadow", gshadow, 0o640)
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
            passwd = [etc.ROOT_PASSWD.strip().split(":")]
        passwd.append(
            [BUILD_USER, "x" if shadowed else "*", str(uid), str(gid), "build", BUILD_HOME, shell]
        )
        etc.write_table(ctx.kernel, "/etc/passwd", passwd, 0o644)
        if shadowed:
            shadow = etc.read_table(ctx.kernel, "/etc/shadow")
            if not any(r[0] == BUILD_USER for r in shadow):
                # Locked: build logs in by key or su, never by password.
                shadow.append([BUILD_USER, "!", "", "0", "99999", "7", "", "", ""])
                etc.write_table(ctx.kernel, "/etc/shadow", shadow, 0o640)
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
    if TFTP_MOUNT not in etc.mounted(ctx.kernel):
        k.mkdir(TFTP_MOUNT)
        try:
            k.mount("tmpfs", TFTP_MOUNT, "tmpfs", MS_NOSUID | MS_NODEV, options)
        except OSError as exc:
            raise BootFailure(
                f"cannot mount a tmpfs ({options}) on {TFTP_MOUNT}: {exc.strerror or exc}",
                "give a size tmpfs accepts, e.g. initpy.tftp_size=2G, and reboot",
            ) from exc
    etc.record_mount(ctx, etc.FstabEntry("tmpfs", TFTP_MOUNT, "tmpfs", f"{options},nosuid,nodev"))
    etc.write_fstab(ctx)
    return f"{TFTP_MOUNT}: tmpfs {options}"


HOOK = Hook(
    name="buildhost",
    description="the build user and group, and the /build/tftp tmpfs",
    states=(
        State(
            "build_user",
            build_user,
            "create the build user and group (1100, home /build) unless the OS has them",
            wants=(Milestone.MACHINES, Milestone.NETWORK),
        ),
        State("tftp", tftp, "mount /build/tftp, a tmpfs of initpy.tftp_size owned by build"),
    ),
    parameters=(TFTP_SIZE,),
    os_files=(OsFile("/etc/dnsmasq.d/buildos-tftp.conf", TFTP_CONF),),
    os_packages=(OsPackage("dnsmasq", "/lib/systemd/system/dnsmasq.service"),),
)
