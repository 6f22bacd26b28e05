"""What the OS after the hand-off needs from the network hook: the renewer's adoption.

The lease renewer (process name initpy-dhcp) is forked before the hand-off,
so it starts life in init.scope, where systemd neither lists it nor stops
it in order. `initpy-dhcp.service` moves it into a transient scope,
`initpy-dhcp.scope`, a unit systemd knows: `systemctl status` shows it and
a shutdown sends it SIGTERM before the network goes. A scope, not a
service: systemd cannot restart what it did not start.

mkinitrd writes these over the --rootfs tree (initpy.builder.rootfs) and
checks that the tree has the packages they and br1 use.
"""

from __future__ import annotations

from initpy.runtime.osimage import OS_PROGRAMS, OsFile, OsPackage, sandbox

from .files import RENEWER_NAME, RENEWER_STATUS

ADOPT = f"{OS_PROGRAMS}/initpy-dhcp-adopt"

ADOPT_SERVICE = f"""\
# Shipped by initpy (hooks/network/adopt.py).
[Unit]
Description=Adopt initpy's DHCP lease renewer for br0 as initpy-dhcp.scope
Documentation=file:{RENEWER_STATUS}
Wants=dbus.service
After=dbus.service
ConditionPathExists={RENEWER_STATUS}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={ADOPT}
# One D-Bus call as root (systemd lets uid 0 manage units without a
# capability) after pgrep has found the renewer, root's too.
PrivateNetwork=yes
IPAddressDeny=any
{sandbox()}
[Install]
WantedBy=multi-user.target
"""

ADOPT_SCRIPT = f"""\
#!/bin/sh
# Shipped by initpy (hooks/network/adopt.py): move initpy's lease renewer
# (process name {RENEWER_NAME}) into a transient scope, initpy-dhcp.scope.
set -eu
pid=$(pgrep -x {RENEWER_NAME}) || {{ echo "no {RENEWER_NAME} process to adopt" >&2; exit 1; }}
busctl call org.freedesktop.systemd1 /org/freedesktop/systemd1 \\
  org.freedesktop.systemd1.Manager StartTransientUnit 'ssa(sv)a(sa(sv))' \\
  initpy-dhcp.scope fail 2 \\
  PIDs au 1 "$pid" \\
  Description s "initpy DHCP lease renewer for br0 (pid $pid)" \\
  0 >/dev/null
echo "{RENEWER_NAME} (pid $pid) is now initpy-dhcp.scope"
"""

OS_FILES = (
    OsFile("/etc/systemd/system/initpy-dhcp.service", ADOPT_SERVICE, wanted_by="multi-user.target"),
    OsFile(ADOPT, ADOPT_SCRIPT, 0o755),
)
# dnsmasq: br1's DHCP (the bridges state writes its config); timesyncd:
# the clock, from the lease's NTP servers (files.timesyncd_conf); dbus and
# procps: busctl's system bus and pgrep in the adoption.
OS_PACKAGES = (
    OsPackage("dnsmasq", "/lib/systemd/system/dnsmasq.service"),
    OsPackage("systemd-timesyncd", "/lib/systemd/system/systemd-timesyncd.service"),
    OsPackage("dbus", "/usr/bin/dbus-daemon"),
    OsPackage("procps", "/usr/bin/pgrep"),
)
