"""The monitor: initpy-monitor in the OS that the init hands off to.

Its units come with the hook (`os_files`), which mkinitrd --rootfs writes
into the OS with the other hooks' (initpy.builder.rootfs), and it needs
python3 there (`os_packages`, checked at build time):
- `initpy-monitor.service` (Type=notify, User=initpy-monitor,
  Restart=always, a systemd watchdog), enabled in multi-user.target;
- `initpy-reboot.path` and `initpy-reboot.service`, root's half of a
  reboot: the monitor, unprivileged, drops a request file and systemd runs
  `systemctl reboot` (initpy/host/systemd.py says why). Root reads
  nothing there, and the start has a timeout, so nothing the monitor's
  user puts in its folder can make root read a file or block the reboot.

Every service runs in the sandbox of initpy.runtime.osimage (`sandbox`),
less what its job needs; docs/security.md lists their scores.

One state, `monitor`, when the hand-off goes to systemd: the
`initpy-monitor` user, and `/etc/initpy/monitor.env` with
`initpy.monitor.interval` and `initpy.monitor.agent`, which the monitor
reads with the `buildos.env` of hooks/services.

The monitor has a uid of its own so that the agent (bbot-agent.service of
hooks/toolchain.py, as `build`) can neither signal it nor write what it
reads. An operator's own agent (`initpy.monitor.agent`) is the monitor's
child and must run as `build`: then a drop-in runs the monitor as `build`,
as before the split, in the agent's sandbox.

The monitor itself (initpy/host and the runtime modules it imports,
HOST_RUNTIME) is not frozen: `files` copies its .py files
from the build host into the image at `layout.HOST_PYTHONPATH`, and the
OS's python3 runs them. Those host paths are computed when the hook is
imported, and the hook is also imported at every boot, inside the frozen
init, where they mean nothing: there the list is empty and nothing is
looked up.
"""

from __future__ import annotations

import os
import posixpath
import sys

from initpy.runtime import cmdline, etc, layout
from initpy.runtime.cmdline import BadValue, Parameter
from initpy.runtime.handoff import handoff_to_systemd
from initpy.runtime.hook import BootContext, Hook, State
from initpy.runtime.osimage import (
    AGENT_NEEDS,
    MAIL_NEEDS,
    NETWORK_FAMILIES,
    OsFile,
    OsPackage,
    sandbox,
    service_lines,
)

UNIT_DIR = "/etc/systemd/system"
MONITOR_UNIT = "initpy-monitor.service"
REBOOT_PATH_UNIT = "initpy-reboot.path"
REBOOT_SERVICE_UNIT = "initpy-reboot.service"
PYTHON3 = "/usr/bin/python3"
# The runtime modules initpy/host imports, all stdlib leaves: the image gets
# them beside initpy/host (tests/unit/test_imports.py holds host to these).
HOST_RUNTIME = ("layout", "record", "exit_status", "escape")
MONITOR = etc.Account("initpy-monitor", 1102, 1102, "/", "initpy monitor", "/usr/sbin/nologin")
# hooks/buildhost.py creates this user (or the image has it).
BUILD_USER = "build"
BUILD_HOME = "/build"
# With initpy.monitor.agent: the monitor, and so its child, runs as build.
AGENT_DROPIN = f"{UNIT_DIR}/{MONITOR_UNIT}.d/initpy-agent.conf"
# Its sandbox is then the agent's (bbot-agent.service's): QEMU, /dev/kvm, /build.
AGENT_DROPIN_TEXT = f"""\
# Written by initpy at boot (hooks/monitor.py): initpy.monitor.agent is
# set, and the agent, the monitor's child, runs as {BUILD_USER}, in the
# sandbox of a build agent.
[Service]
User={BUILD_USER}
Group={BUILD_USER}
WorkingDirectory={BUILD_HOME}
{service_lines(AGENT_NEEDS)}"""
# initpy/host/systemd.py: the monitor's runtime folder and its request file.
RUN_DIR_NAME = "initpy-monitor"
REBOOT_REQUEST = f"/run/{RUN_DIR_NAME}/reboot"


def _agent(raw: str | None) -> str:
    if raw is None or not raw.strip():
        raise BadValue("expected a program of the image, e.g. /usr/local/bin/bbot-agent")
    if not raw.startswith("/"):
        raise BadValue(f"expected an absolute path first, got {raw!r}")
    if any(c in raw for c in "\n\r\0"):
        raise BadValue("expected one line")
    return raw


INTERVAL: Parameter[float] = Parameter(
    "initpy.monitor.interval",
    cmdline.seconds(1, 86400),
    600.0,
    "seconds between the monitor's polls of buildos.buildid_url (each wait jittered by ±25%)",
    "initpy.monitor.interval=600",
)
AGENT: Parameter[str | None] = Parameter(
    "initpy.monitor.agent",
    _agent,
    None,
    "the build agent: a program of the image (with arguments, quoted) that the monitor "
    "runs as the build user and starts again whenever it ends",
    'initpy.monitor.agent="/usr/local/bin/bbot-agent --verbose 3"',
)

# The longest the monitor's loop goes without a WATCHDOG=1: a poll's two
# fetches (15 s each), a mail (60 s) and its queue's flush (60 s); a new
# toolchain's files ping as they arrive (initpy.host.systemd.Watchdog).
# Twice that, so a slow host is not taken for a hung one.
WATCHDOG_SEC = 300
# Its sandbox (docs/security.md): the network for its fetches, group
# postdrop and postfix's maildrop for sendmail and postqueue, whose setgid
# NoNewPrivileges turns off; /proc/uptime for the mails (no ProcSubset=pid).
MONITOR_SANDBOX = sandbox({"RestrictAddressFamilies": NETWORK_FAMILIES, **MAIL_NEEDS})

MONITOR_SERVICE = f"""\
# Shipped by initpy (hooks/monitor.py).
[Unit]
Description=initpy monitor: reboot onto a new build, keep the build agent running
Wants=network-online.target {REBOOT_PATH_UNIT}
After=network-online.target postfix.service {REBOOT_PATH_UNIT}
StartLimitIntervalSec=0

[Service]
Type=notify
User={MONITOR.name}
Group={MONITOR.name}
WorkingDirectory=/
# Only the monitor's uid may write here (the reboot request, a new
# toolchain's files); kept across a restart, so that a request written
# just before a watchdog restart still reboots.
RuntimeDirectory={RUN_DIR_NAME}
RuntimeDirectoryMode=0700
RuntimeDirectoryPreserve=restart
Environment=PYTHONPATH={layout.HOST_PYTHONPATH}
ExecStart={PYTHON3} -s -B -P -m initpy.host.monitor
SyslogIdentifier=initpy-monitor
Restart=always
RestartSec=10
TimeoutStopSec=30
WatchdogSec={WATCHDOG_SEC}
{MONITOR_SANDBOX}
[Install]
WantedBy=multi-user.target
"""

# PathExists= only looks: systemd reads nothing there, so a symlink, a
# FIFO, a folder or a huge file at that name is a request like any other.
REBOOT_PATH = f"""\
# Shipped by initpy (hooks/monitor.py): initpy-monitor, which runs
# unprivileged and may not reboot, asks for a reboot with this file.
[Unit]
Description=initpy monitor's reboot request

[Path]
PathExists={REBOOT_REQUEST}
Unit={REBOOT_SERVICE_UNIT}
"""

# Root's half reads no file: the monitor logged why before it asked. It may
# send one D-Bus call (logind, or systemd's own socket) and reboot.
REBOOT_SERVICE = f"""\
# Shipped by initpy (hooks/monitor.py).
[Unit]
Description=initpy monitor: reboot onto the new build

[Service]
Type=oneshot
ExecStart=/bin/systemctl reboot
TimeoutStartSec=60
PrivateNetwork=yes
IPAddressDeny=any
{sandbox({"CapabilityBoundingSet": "CAP_SYS_BOOT", "ProcSubset": "pid"})}"""


def install_monitor(ctx: BootContext) -> str:
    k = ctx.kernel
    systemd, target = handoff_to_systemd(ctx)
    if not systemd:
        return f"not installed: the hand-off goes to {target}, not systemd"
    unit = f"{UNIT_DIR}/{MONITOR_UNIT}"
    if not k.exists(unit):
        ctx.warn(
            f"monitor: {unit} is not in the image, so this host will not follow new builds; "
            "build the initrd with --rootfs (mkinitrd writes the monitor's units there)"
        )
        return f"not installed: no {unit}"
    etc.add_account(k, MONITOR)
    interval, agent = ctx.value(INTERVAL), ctx.value(AGENT)
    settings = {"INITPY_MONITOR_INTERVAL": f"{interval:g}"}
    if agent is not None:
        settings["INITPY_MONITOR_AGENT"] = agent
        k.mkdir(posixpath.dirname(AGENT_DROPIN))
        k.write_text(AGENT_DROPIN, AGENT_DROPIN_TEXT)
    k.mkdir(layout.ETC_DIR)
    k.write_text(layout.MONITOR_ENV, etc.env_file(settings))
    return f"{MONITOR_UNIT} enabled (poll every {interval:g} s, " + (
        f"agent {agent.split()[0]}, as {BUILD_USER})" if agent else f"as {MONITOR.name}, no agent)"
    )


# -- what mkinitrd copies into the image ------------------------------------------


def host_python_files() -> tuple[str, ...]:
    """ "SRC:DST" for the monitor's Python: initpy/host, HOST_RUNTIME, cli.py.

    Empty inside the frozen init (PID 1 never reads a hook's files). The
    standard library is all they import beside (initpy/host/tftp.py is the
    TFTP client).
    """
    if getattr(sys, "frozen", False):
        return ()
    import glob  # here: PID 1 imports this hook at every boot and never lists files

    package = os.path.dirname(os.path.dirname(os.path.abspath(layout.__file__)))  # initpy/
    sources = [
        os.path.join(package, "__init__.py"),
        os.path.join(package, "cli.py"),  # every command's edge, initpy-monitor's too
        os.path.join(package, "runtime", "__init__.py"),
        *(os.path.join(package, "runtime", f"{name}.py") for name in HOST_RUNTIME),
        *sorted(glob.glob(os.path.join(package, "host", "*.py"))),
    ]
    return tuple(
        f"{path}:{layout.HOST_PYTHONPATH}/initpy/{os.path.relpath(path, package)}"
        for path in sources
    )


HOOK = Hook(
    name="monitor",
    description="initpy-monitor on the booted host: polls buildos.buildid_url, reboots onto "
    "a new build, runs the build agent",
    states=(
        State(
            "monitor",
            install_monitor,
            "write initpy-monitor's settings (when the hand-off is systemd)",
        ),
    ),
    files=host_python_files(),
    parameters=(INTERVAL, AGENT),
    os_files=(
        OsFile(f"{UNIT_DIR}/{MONITOR_UNIT}", MONITOR_SERVICE, wanted_by="multi-user.target"),
        OsFile(f"{UNIT_DIR}/{REBOOT_PATH_UNIT}", REBOOT_PATH),
        OsFile(f"{UNIT_DIR}/{REBOOT_SERVICE_UNIT}", REBOOT_SERVICE),
    ),
    # postfix: the monitor's mail, and the postdrop group its unit joins.
    os_packages=(OsPackage("python3", PYTHON3), OsPackage("postfix", "/usr/sbin/postdrop")),
)
