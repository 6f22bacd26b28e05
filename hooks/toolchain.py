"""The toolchain: initpy-toolchain and the build agent's unit in the booted OS.

Its units come with the hook (`os_files`), which mkinitrd --rootfs writes
into the OS with the other hooks' (initpy.builder.rootfs); the packages a
toolchain's install script builds with are checked at build time
(`os_packages`):
- `initpy-toolchain.service`: oneshot, after the network is online, as the
  `initpy-toolchain` user; runs `initpy.host.toolchain` (shipped by
  hooks/monitor.py with the monitor's Python) when buildos.env has
  `BUILDOS_TOOLCHAIN_URL`. It writes `/run/initpy-toolchain/toolchain.env`
  (its RuntimeDirectory, kept after it exits). A failure is a failed unit,
  never a reboot.
- `bbot-agent.service`: the agent that bootstrap built, as `build` in
  /build, with that file as its environment (the toolchain id, prefix and
  trust); systemd starts it again whenever it ends.

Why a uid of its own: the agent runs as `build`, which owns
/build/machines; the cache there (initpy/host/toolchain_cache.py) must be
writable by the bootstrap only, so that one bad build cannot poison every
later boot.

One state, `toolchain`, when the hand-off goes to systemd: the
`initpy-toolchain` user and group, and the cache's root folder, owned by
that user (made by root here, as the user could not make it in
/build/machines).
"""

from __future__ import annotations

from initpy.runtime import etc, layout
from initpy.runtime.handoff import handoff_to_systemd
from initpy.runtime.hook import BootContext, Hook, Milestone, State
from initpy.runtime.osimage import (
    AGENT_SERVICE_LINES,
    MAIL_NEEDS,
    NETWORK_FAMILIES,
    OsFile,
    OsPackage,
    sandbox,
)

UNIT_DIR = "/etc/systemd/system"
TOOLCHAIN_UNIT = "initpy-toolchain.service"
AGENT_UNIT = "bbot-agent.service"
PYTHON3 = "/usr/bin/python3"
TOOLCHAIN = etc.Account(
    "initpy-toolchain", 1101, 1101, "/run/initpy-toolchain", "initpy toolchain", "/usr/sbin/nologin"
)
# initpy/host: its RuntimeDirectory, the result file in it, and the cache.
RUN_DIR_NAME = "initpy-toolchain"
RESULT = f"/run/{RUN_DIR_NAME}/toolchain.env"
CACHE_ROOT = "/build/machines/.toolchain"

# A target waits for the units it wants (systemd's default After=): a
# first build of build2 takes many minutes, and multi-user.target (the
# console's `buildos: up`, the boot mail) must not wait for it, nor for
# the agent ordered after it. So no default dependencies; these are the
# defaults less that one.
NOT_HELD_BY_TARGETS = """\
DefaultDependencies=no
Requires=sysinit.target
After=sysinit.target basic.target
Conflicts=shutdown.target
Before=shutdown.target
"""

# Its sandbox (docs/security.md): the network for its fetches, the cache
# (made at boot by the `toolchain` state, so optional here), group postdrop
# and postfix's maildrop for a failure's mail (sendmail's setgid is off
# under NoNewPrivileges). Compilers need no W+X memory; an install script
# may set its limits (ulimit, nice: @resources); what it builds is the
# agent's to read (UMask, as the bootstrap sets its own).
TOOLCHAIN_SANDBOX = sandbox(
    {
        "RestrictAddressFamilies": NETWORK_FAMILIES,
        "SystemCallFilter": ("@system-service", "~@privileged"),
        "UMask": "0022",
        **MAIL_NEEDS,
        "ReadWritePaths": (f"-{CACHE_ROOT}", str(MAIL_NEEDS["ReadWritePaths"])),
    }
)

TOOLCHAIN_SERVICE = f"""\
# Shipped by initpy (hooks/toolchain.py).
[Unit]
Description=initpy toolchain: build the toolchain and its agent from buildos.toolchain_url
{NOT_HELD_BY_TARGETS}Wants=network-online.target
After=network-online.target postfix.service

[Service]
Type=oneshot
RemainAfterExit=yes
User={TOOLCHAIN.name}
Group={TOOLCHAIN.name}
RuntimeDirectory={RUN_DIR_NAME}
RuntimeDirectoryPreserve=yes
WorkingDirectory=/run/{RUN_DIR_NAME}
EnvironmentFile=-{layout.BUILDOS_ENV}
# No buildos.toolchain_url: skipped, not failed.
ExecCondition=/usr/bin/test -n "${{BUILDOS_TOOLCHAIN_URL}}"
Environment=PYTHONPATH={layout.HOST_PYTHONPATH}
Environment=HOME=/run/{RUN_DIR_NAME}
ExecStart={PYTHON3} -s -B -P -m initpy.host.toolchain
SyslogIdentifier=initpy-toolchain
# Its own steps have deadlines (4 h for an install); a build is not cut short.
TimeoutStartSec=infinity
{TOOLCHAIN_SANDBOX}
[Install]
WantedBy=multi-user.target
"""

AGENT_SERVICE = f"""\
# Shipped by initpy (hooks/toolchain.py): the agent initpy-toolchain built.
[Unit]
Description=build agent (bbot) of the toolchain initpy-toolchain built
{NOT_HELD_BY_TARGETS}Requires={TOOLCHAIN_UNIT}
After={TOOLCHAIN_UNIT}
ConditionPathExists={RESULT}
StartLimitIntervalSec=0

[Service]
EnvironmentFile={RESULT}
ExecStart=/usr/bin/env ${{BUILDOS_TOOLCHAIN_AGENT}}
SyslogIdentifier=bbot-agent
{AGENT_SERVICE_LINES}
[Install]
WantedBy=multi-user.target
"""


def install_toolchain(ctx: BootContext) -> str:
    k = ctx.kernel
    systemd, target = handoff_to_systemd(ctx)
    if not systemd:
        return f"not installed: the hand-off goes to {target}, not systemd"
    if not k.exists(f"{UNIT_DIR}/{TOOLCHAIN_UNIT}"):
        return f"not installed: no {UNIT_DIR}/{TOOLCHAIN_UNIT} (an initrd built without --rootfs)"
    uid, gid, done = etc.add_account(k, TOOLCHAIN)
    if k.exists(CACHE_ROOT):
        # initpy-toolchain checks the owner and mode itself, and refuses a
        # root it does not own: never chown what someone else may have made.
        done.append(f"cache {CACHE_ROOT} kept")
    else:
        k.mkdir(CACHE_ROOT, 0o755)
        k.chown(CACHE_ROOT, uid, gid)
        done.append(f"cache {CACHE_ROOT} created")
    return "; ".join(done)


HOOK = Hook(
    name="toolchain",
    description="initpy-toolchain and bbot-agent on the booted host: the toolchain from "
    "buildos.toolchain_url, cached on the machines disk, and its agent",
    states=(
        State(
            "toolchain",
            install_toolchain,
            "create the initpy-toolchain user and the toolchain cache's root "
            "(when the hand-off is systemd)",
            wants=(Milestone.MACHINES,),
        ),
    ),
    os_files=(
        OsFile(f"{UNIT_DIR}/{TOOLCHAIN_UNIT}", TOOLCHAIN_SERVICE, wanted_by="multi-user.target"),
        OsFile(f"{UNIT_DIR}/{AGENT_UNIT}", AGENT_SERVICE, wanted_by="multi-user.target"),
    ),
    os_packages=(
        OsPackage("python3", PYTHON3),
        OsPackage("coreutils", "/usr/bin/env"),
        OsPackage("g++", "/usr/bin/g++"),
        OsPackage("make", "/usr/bin/make"),
        OsPackage("xz-utils", "/usr/bin/xz"),
        OsPackage("curl", "/usr/bin/curl"),
        # A failure's mail, and the postdrop group the bootstrap's unit joins.
        OsPackage("postfix", "/usr/sbin/postdrop"),
    ),
)
