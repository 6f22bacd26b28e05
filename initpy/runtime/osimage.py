"""What a hook gives the OS after the hand-off, and what it needs there.

Part of the hook contract (initpy.runtime.hook: `Hook.os_files`,
`Hook.os_packages`), in a module of its own because PID 1 only imports
them with the hooks and never reads them: the builder writes and checks
them over a `--rootfs` tree (initpy.builder.rootfs, docs/os.md).
"""

from __future__ import annotations

from initpy.runtime.layout import LIB
from initpy.runtime.record import frozen

# Where hooks put the programs their OS units run (OsFile paths): initpy's
# own folder of the image, not /usr/local, which is the operator's.
OS_PROGRAMS = f"{LIB}/os"


@frozen
class OsFile:
    """A file a hook puts into the OS that systemd runs after the hand-off.

    What the booted host needs from a hook (its units, their scripts, a
    config the host cannot work without) comes with the hook, not with the
    OS tree: mkinitrd writes it over the `--rootfs` tree, and never without
    one (a busybox initrd has no systemd to read it). A unit with
    `wanted_by` is enabled as `systemctl enable` would: a link in
    /etc/systemd/system/TARGET.wants.
    """

    path: str  # absolute, in the OS
    text: str
    mode: int = 0o644
    wanted_by: str | None = None


@frozen
class OsPackage:
    """A Debian package the OS must hold for a hook's work after the hand-off.

    mkinitrd looks for `path`, a file the package installs, in the
    `--rootfs` tree, and names the package when it is missing: at build
    time, not as a failed unit at boot.
    """

    name: str
    path: str


# The sandbox every service initpy ships starts from: its [Service] lines,
# one key each (a tuple is a key given several times). A unit changes the
# keys its job needs and drops (None) those it cannot keep; each unit's
# score and exceptions are in docs/security.md ("The units' sandboxes"),
# and tests/unit/test_unit_scores.py holds every unit to its figure.
SANDBOX: dict[str, str | tuple[str, ...]] = {
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "PrivateMounts": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "ProtectProc": "invisible",
    "RestrictSUIDSGID": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RemoveIPC": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "SystemCallFilter": ("@system-service", "~@privileged @resources"),
    "SystemCallErrorNumber": "EPERM",
    "RestrictAddressFamilies": "AF_UNIX",
    "UMask": "0077",
}

# The address families of a unit that uses the network (netlink: glibc's
# getaddrinfo, dnsmasq's view of the addresses).
NETWORK_FAMILIES = "AF_UNIX AF_INET AF_INET6 AF_NETLINK"
# What a unit that mails through postfix's sendmail needs: NoNewPrivileges
# turns off the setgid postdrop of postdrop and postqueue, so the unit joins
# the group itself and may write the maildrop.
MAIL_NEEDS: dict[str, str | tuple[str, ...] | None] = {
    "SupplementaryGroups": "postdrop",
    "ReadWritePaths": "-/var/spool/postfix/maildrop",
}

# What a build agent needs beyond the sandbox: QEMU with /dev/kvm and tap
# devices, W+X memory for TCG, writes in /build (the machines, /build/tftp,
# which dnsmasq serves: files there stay readable).
AGENT_NEEDS: dict[str, str | tuple[str, ...] | None] = {
    "PrivateDevices": "no",
    "DevicePolicy": "closed",
    "DeviceAllow": ("/dev/kvm rw", "/dev/net/tun rw", "/dev/vhost-net rw"),
    "MemoryDenyWriteExecute": "no",
    "SystemCallFilter": ("@system-service", "~@privileged"),
    "ReadWritePaths": "/build",
    "RestrictAddressFamilies": NETWORK_FAMILIES,
    "UMask": "0022",
}
# The build user (hooks/buildhost.py creates it, or the image has it) and
# its home, where an agent runs.
AGENT_USER = "build"
AGENT_HOME = "/build"


def service_lines(settings: dict[str, str | tuple[str, ...] | None]) -> str:
    """`settings` as unit lines, `Key=value` each (a tuple: the key once per
    value); a None is left out."""
    lines = []
    for key, value in settings.items():
        for one in (value,) if isinstance(value, str) else value or ():
            lines.append(f"{key}={one}\n")
    return "".join(lines)


def sandbox(changes: dict[str, str | tuple[str, ...] | None] | None = None) -> str:
    """The SANDBOX's [Service] lines with `changes`: a value replaces the
    sandbox's, a None drops the key, a new key comes last."""
    merged: dict[str, str | tuple[str, ...] | None] = {**SANDBOX, **(changes or {})}
    return service_lines(merged)


# The [Service] lines every build agent's unit shares, whichever hook ships
# it (bbot-agent.service of hooks/toolchain.py, initpy-agent.service of
# hooks/monitor.py): the build user in its home, started again whenever it
# ends, in the sandbox with AGENT_NEEDS. Each unit adds its ExecStart= and
# its name, and StartLimitIntervalSec=0 in [Unit], so that an agent that
# keeps failing is tried again every RestartSec for ever.
AGENT_SERVICE_LINES = f"""\
User={AGENT_USER}
Group={AGENT_USER}
WorkingDirectory={AGENT_HOME}
Restart=always
RestartSec=10
{sandbox(AGENT_NEEDS)}"""
