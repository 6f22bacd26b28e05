"""The monitor and the operator's agent: their units in the OS that the init hands off to.

Its units come with the hook (`os_files`), which mkinitrd --rootfs writes
into the OS with the other hooks' (initpy.builder.rootfs), and it needs
python3 there (`os_packages`, checked at build time):
- `initpy-monitor.service` (Type=notify, User=initpy-monitor,
  Restart=always, a systemd watchdog), enabled in multi-user.target;
- `initpy-reboot.path` and `initpy-reboot.service`, root's half of a
  reboot: the monitor, unprivileged, drops a request file and systemd runs
  `systemctl reboot` (initpy/host/systemd.py says why). Root reads
  nothing there, and the start has a timeout, so nothing the monitor's
  user puts in its folder can make root read a file or block the reboot;
- `initpy-agent.service`, the operator's own build agent
  (`initpy.monitor.agent`), as `build` in /build, in the sandbox of every
  build agent (osimage.AGENT_SERVICE_LINES, bbot-agent.service's too),
  started again whenever it ends; enabled, but it starts only when the
  agent is set (ConditionPathExists= on the agent's file). It runs
  `initpy.host.agent`, which reads the command line and execs it.

Every service runs in the sandbox of initpy.runtime.osimage (`sandbox`),
less what its job needs; docs/security.md lists their scores.

One state, `monitor`, when the hand-off goes to systemd: the
`initpy-monitor` user; `/etc/initpy/monitor.env` with
`initpy.monitor.interval`, which the monitor reads with the `buildos.env`
of hooks/services; and, only with `initpy.monitor.agent`,
`/etc/initpy/agent.env` with its command line.

The monitor has a uid of its own, and each agent (bbot-agent.service of
hooks/toolchain.py, initpy-agent.service here) a unit of its own as
`build`, so that no agent can signal the monitor nor write what it reads.

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
import shlex
import sys

from initpy.runtime import cmdline, etc, layout
from initpy.runtime.cmdline import BadValue, Parameter
from initpy.runtime.handoff import handoff_to_systemd
from initpy.runtime.hook import BootContext, Hook, Milestone, State
from initpy.runtime.osimage import (
    AGENT_SERVICE_LINES,
    AGENT_USER,
    MAIL_NEEDS,
    NETWORK_FAMILIES,
    OsFile,
    OsPackage,
    sandbox,
)

UNIT_DIR = "/etc/systemd/system"
MONITOR_UNIT = "initpy-monitor.service"
REBOOT_PATH_UNIT = "initpy-reboot.path"
REBOOT_SERVICE_UNIT = "initpy-reboot.service"
AGENT_UNIT = "initpy-agent.service"
PYTHON3 = "/usr/bin/python3"
# The runtime modules initpy/host imports, all stdlib leaves: the image gets
# them beside initpy/host (tests/unit/test_imports.py holds host to these).
HOST_RUNTIME = ("layout", "record", "escape", "exit_status")
MONITOR = etc.Account("initpy-monitor", 1102, 1102, "/", "initpy monitor", "/usr/sbin/nologin")
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
    try:
        shlex.split(raw)  # as initpy.host.agent will: at boot, a warning in the report
    except ValueError as exc:
        raise BadValue(f"cannot split it into words as a shell would: {exc}") from None
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
    "the build agent: a program of the image (with arguments, quoted) that "
    "initpy-agent.service runs as the build user and starts again whenever it ends",
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
Description=initpy monitor: reboot onto a new build or toolchain
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

# The operator's agent: initpy.host.agent reads its command line and execs
# it, so systemd watches, restarts and stops the agent itself. Without
# initpy.monitor.agent there is no AGENT_ENV, and the unit is skipped.
AGENT_SERVICE = f"""\
# Shipped by initpy (hooks/monitor.py): the build agent of initpy.monitor.agent.
[Unit]
Description=build agent of initpy.monitor.agent
ConditionPathExists={layout.AGENT_ENV}
Wants=network-online.target
After=network-online.target
StartLimitIntervalSec=0

[Service]
Environment=PYTHONPATH={layout.HOST_PYTHONPATH}
ExecStart={PYTHON3} -s -B -P -m initpy.host.agent
SyslogIdentifier=initpy-agent
{AGENT_SERVICE_LINES}
[Install]
WantedBy=multi-user.target
"""


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
    k.mkdir(layout.ETC_DIR)
    k.write_text(layout.MONITOR_ENV, etc.env_file({"INITPY_MONITOR_INTERVAL": f"{interval:g}"}))
    done = f"{MONITOR_UNIT} enabled (poll every {interval:g} s, as {MONITOR.name}); "
    if agent is None:
        if k.exists(layout.AGENT_ENV):  # a root that an earlier boot with an agent wrote
            k.remove(layout.AGENT_ENV)
        return done + f"no initpy.monitor.agent: {AGENT_UNIT} is skipped"
    k.write_text(layout.AGENT_ENV, etc.env_file({"INITPY_MONITOR_AGENT": agent}))
    return done + f"{AGENT_UNIT} runs {agent.split()[0]} as {AGENT_USER}"


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
    "a new build; initpy-agent runs the operator's build agent",
    states=(
        State(
            "monitor",
            install_monitor,
            "write initpy-monitor's settings and the agent's command line "
            "(when the hand-off is systemd)",
            wants=(Milestone.OS,),  # systemd is in the OS image, when there is one
        ),
    ),
    files=host_python_files(),
    parameters=(INTERVAL, AGENT),
    os_files=(
        OsFile(f"{UNIT_DIR}/{MONITOR_UNIT}", MONITOR_SERVICE, wanted_by="multi-user.target"),
        OsFile(f"{UNIT_DIR}/{REBOOT_PATH_UNIT}", REBOOT_PATH),
        OsFile(f"{UNIT_DIR}/{REBOOT_SERVICE_UNIT}", REBOOT_SERVICE),
        OsFile(f"{UNIT_DIR}/{AGENT_UNIT}", AGENT_SERVICE, wanted_by="multi-user.target"),
    ),
    # postfix: the monitor's mail, and the postdrop group its unit joins.
    os_packages=(OsPackage("python3", PYTHON3), OsPackage("postfix", "/usr/sbin/postdrop")),
)
