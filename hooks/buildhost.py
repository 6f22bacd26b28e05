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
    uid, gid, done = etc.add_account(
        k, etc.Account(BUILD_USER, BUILD_UID, BUILD_GID, BUILD_HOME, "build")
    )
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
