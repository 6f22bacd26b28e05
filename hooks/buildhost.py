"""The build host: the `build` user and group, and /build/tftp.

States, last before the hand-off:
- `build_user`: the `build` user and group (uid/gid 1100, home /build),
  unless the OS image has them; locked, never a password; a member of
  the OS's kvm group, for the build machines' /dev/kvm.
- `tftp`: /build/tftp, a tmpfs of `initpy.tftp_size` owned by build, which
  the OS serves read-only over TFTP on the default port; listed in
  /etc/fstab. On br1 always (the build machines), on br0 too (the LAN, for
  log access, as the spec says) unless `initpy.tftp=br1`: the state writes
  the br0 server's config, whose presence starts its unit.

In the OS (`os_files`), beside the TFTP configs: `initpy-agent-tftp.socket`
and `initpy-agent-tftp@.service`, root's broker that starts an in.tftpd
for the agent on a port of `layout.AGENT_TFTP_PORTS`, and its client
command `initpy-agent-tftp` (initpy/host/tftp_broker.py says how).
"""

from __future__ import annotations

import re

from initpy.runtime import etc, layout
from initpy.runtime.cmdline import BadValue, Parameter, choice
from initpy.runtime.hook import BootContext, BootFailure, Fact, Hook, Milestone, State
from initpy.runtime.kernel import MS_NODEV, MS_NOSUID
from initpy.runtime.osimage import NETWORK_FAMILIES, OS_PROGRAMS, OsFile, OsPackage, sandbox

BUILD_USER = "build"
BUILD_UID = 1100
BUILD_GID = 1100
BUILD_HOME = "/build"
KVM_GROUP = "kvm"
TFTP_MOUNT = "/build/tftp"
# The network hook's bridges (hooks/network/files.py), by name: a hook
# imports no other hook.
BR0, BR1 = "br0", "br1"
# The LAN's TFTP server: a second dnsmasq, TFTP only, on br0 only. The main
# dnsmasq cannot do it: its enable-tftp=br0 serves nothing unless br0 is
# one of its interfaces, which would open its DNS to the LAN too.
TFTP_LAN_UNIT = "initpy-tftp-lan.service"
TFTP_LAN_CONF = f"{layout.ETC_DIR}/tftp-lan.conf"
# dnsmasq's TFTP server (no tftpd package) is read-only: it refuses every
# write request.
TFTP_CONF = f"""\
# Shipped by initpy (hooks/buildhost.py): /build/tftp, read-only over TFTP
# on the default port (69), on the interfaces this dnsmasq serves: {BR1} only
# (initpy-br1.conf, written by initpy at boot). On {BR0}, {TFTP_LAN_UNIT}
# serves it too unless initpy.tftp=br1: docs/manual.md, "TFTP".
enable-tftp
tftp-root={TFTP_MOUNT}
"""
# port=0: no DNS; no dhcp-range: no DHCP. bind-dynamic binds br0's own
# addresses, so port 69 on br1's stays the main dnsmasq's.
TFTP_LAN_TEXT = f"""\
# Written by initpy at boot (hooks/buildhost.py; initpy.tftp=lan, the
# default): /build/tftp, read-only over TFTP on {BR0}, for {TFTP_LAN_UNIT}.
# With initpy.tftp=br1 this file is absent and the unit does not start.
port=0
interface={BR0}
except-interface=lo
bind-dynamic
user=dnsmasq
pid-file=
enable-tftp
tftp-root={TFTP_MOUNT}
"""
# dnsmasq starts as root: it binds port 69 (and again as br0's addresses
# come and go, bind-dynamic), then becomes `dnsmasq`; it reads /build/tftp
# and writes nothing.
TFTP_LAN_SANDBOX = sandbox(
    {
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE CAP_SETUID CAP_SETGID",
        "RestrictAddressFamilies": NETWORK_FAMILIES,
        "SystemCallFilter": ("@system-service", "~@resources"),
        "ProcSubset": "pid",
    }
)
TFTP_LAN_SERVICE = f"""\
# Shipped by initpy (hooks/buildhost.py).
[Unit]
Description=TFTP of {TFTP_MOUNT} on {BR0}, read-only (dnsmasq, initpy.tftp=lan)
ConditionPathExists={TFTP_LAN_CONF}
After=network.target

[Service]
ExecStart=/usr/sbin/dnsmasq --keep-in-foreground --conf-file={TFTP_LAN_CONF}
Restart=on-failure
{TFTP_LAN_SANDBOX}
[Install]
WantedBy=multi-user.target
"""


# The agent's own TFTP servers (issue 18): in.tftpd must start as root (it
# drops to --user in each transfer's child, and initgroups needs CAP_SETGID),
# so `build` asks root's broker over this socket, one instance per request;
# initpy/host/tftp_request.py says what a request may ask, and
# docs/security.md why this shape.
AGENT_TFTP_SOCKET_UNIT = "initpy-agent-tftp.socket"
AGENT_TFTP_SERVICE_UNIT = "initpy-agent-tftp@.service"
# initpy's folder of the image, not /usr/local (the operator's): the agent
# runs it by this path.
AGENT_TFTP_COMMAND = f"{OS_PROGRAMS}/initpy-agent-tftp"
# At most this many servers at once (one per machine the agent runs).
AGENT_TFTP_MAX = 32
PYTHON3 = "/usr/bin/python3"
_FIRST, _LAST = layout.AGENT_TFTP_PORTS
AGENT_TFTP_SOCKET_TEXT = f"""\
# Shipped by initpy (hooks/buildhost.py): the agent ({BUILD_USER}) asks here for
# an in.tftpd on a port of {_FIRST}-{_LAST} serving a folder below {TFTP_MOUNT},
# writable; each connection starts one {AGENT_TFTP_SERVICE_UNIT}.
[Unit]
Description=initpy: requests for the build agent's TFTP servers

[Socket]
ListenStream={layout.AGENT_TFTP_SOCKET}
SocketUser=root
SocketGroup={BUILD_USER}
SocketMode=0660
Accept=yes
MaxConnections={AGENT_TFTP_MAX}

[Install]
WantedBy=sockets.target
"""
# Root, for in.tftpd's drop only: the bounding set holds what that drop
# needs (chroot, setregid, initgroups, setreuid) and nothing else; no
# CAP_NET_BIND_SERVICE (the ports are high), no CAP_DAC_* (the folder
# must be searchable by others), no CAP_KILL (a transfer's child, already
# the agent's user, is ended with the unit's cgroup). /proc stays whole:
# the broker finds in.tftpd's socket in /proc/net/udp.
AGENT_TFTP_SANDBOX = sandbox(
    {
        "CapabilityBoundingSet": "CAP_SETUID CAP_SETGID CAP_SYS_CHROOT",
        "ReadWritePaths": TFTP_MOUNT,
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_NETLINK",
        # in.tftpd's drop (chroot, setregid, initgroups, setreuid) is @privileged.
        "SystemCallFilter": ("@system-service chroot",),
    }
)
AGENT_TFTP_SERVICE_TEXT = f"""\
# Shipped by initpy (hooks/buildhost.py): one request of the build agent
# (initpy/host/tftp_broker.py), on the connection systemd accepted.
[Unit]
Description=initpy: a TFTP server for the build agent
CollectMode=inactive-or-failed

[Service]
Environment=PYTHONPATH={layout.HOST_PYTHONPATH}
ExecStart={PYTHON3} -s -B -P -m initpy.host.tftp_broker --user {BUILD_USER} \\
  --root {TFTP_MOUNT} --interface {BR1}
StandardInput=socket
StandardOutput=journal
StandardError=journal
SyslogIdentifier=initpy-agent-tftp
{AGENT_TFTP_SANDBOX}# in.tftpd forks one child per transfer.
TasksMax=64
"""
AGENT_TFTP_COMMAND_TEXT = f"""\
#!/bin/sh
# Shipped by initpy (hooks/buildhost.py): initpy-agent-tftp PORT SUBDIR holds an
# in.tftpd on PORT serving {TFTP_MOUNT}/SUBDIR for as long as it runs.
PYTHONPATH={layout.HOST_PYTHONPATH} exec {PYTHON3} -s -B -P -m initpy.host.tftp_client "$@"
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


TFTP_ON: Parameter[str] = Parameter(
    "initpy.tftp",
    choice("lan", "br1"),
    "lan",
    "where /build/tftp is served over TFTP: lan (br0 and br1) or br1 (the build machines only)",
    "initpy.tftp=br1",
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
    # /dev/kvm is root:kvm 0660 (udev): the agent's machines need it.
    done.append(etc.join_group(k, KVM_GROUP, BUILD_USER))
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
    return f"{TFTP_MOUNT}: tmpfs {options}; {_serve_on_lan(ctx)}"


def _serve_on_lan(ctx: BootContext) -> str:
    k = ctx.kernel
    if ctx.value(TFTP_ON) == "br1":
        if k.exists(TFTP_LAN_CONF):
            k.remove(TFTP_LAN_CONF)
        return f"TFTP on {BR1} only (initpy.tftp=br1)"
    k.mkdir(layout.ETC_DIR)
    k.write_text(TFTP_LAN_CONF, TFTP_LAN_TEXT)
    return f"TFTP on {BR1} and {BR0} (read-only)"


HOOK = Hook(
    name="buildhost",
    description="the build user and group, and the /build/tftp tmpfs",
    states=(
        State(
            "build_user",
            build_user,
            "create the build user and group (1100, home /build) unless the OS has them; "
            "add it to group kvm",
            wants=(Milestone.MACHINES, Milestone.NETWORK),
        ),
        State(
            "tftp",
            tftp,
            "mount /build/tftp, a tmpfs of initpy.tftp_size owned by build; "
            "serve it on br0 too unless initpy.tftp=br1",
        ),
    ),
    parameters=(TFTP_SIZE, TFTP_ON),
    os_files=(
        OsFile("/etc/dnsmasq.d/buildos-tftp.conf", TFTP_CONF),
        OsFile(
            f"/etc/systemd/system/{TFTP_LAN_UNIT}", TFTP_LAN_SERVICE, wanted_by="multi-user.target"
        ),
        # An empty unit file masks: tftpd-hpa's own daemon (its init script)
        # would take port 69 on every address, /srv/tftp writable or not;
        # the agent's in.tftpd runs on other ports, through the broker.
        OsFile("/etc/systemd/system/tftpd-hpa.service", ""),
        OsFile(
            f"/etc/systemd/system/{AGENT_TFTP_SOCKET_UNIT}",
            AGENT_TFTP_SOCKET_TEXT,
            wanted_by="sockets.target",
        ),
        OsFile(f"/etc/systemd/system/{AGENT_TFTP_SERVICE_UNIT}", AGENT_TFTP_SERVICE_TEXT),
        OsFile(AGENT_TFTP_COMMAND, AGENT_TFTP_COMMAND_TEXT, mode=0o755),
    ),
    os_packages=(
        OsPackage("dnsmasq", "/lib/systemd/system/dnsmasq.service"),
        OsPackage("dnsmasq-base", "/usr/sbin/dnsmasq"),
        # What the agent runs for its build machines.
        OsPackage("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
        OsPackage("qemu-utils", "/usr/bin/qemu-img"),
        OsPackage("tftpd-hpa", "/usr/sbin/in.tftpd"),
        # The broker and its client run under the OS's python3 (the monitor
        # hook ships initpy/host).
        OsPackage("python3", PYTHON3),
        OsPackage("iproute2", "/usr/bin/ip"),
    ),
)
