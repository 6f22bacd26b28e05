"""What the OS after the hand-off gets from the services hook, and must hold for it.

mkinitrd writes these over the --rootfs tree (initpy.builder.rootfs):
postfix's null-client main.cf (mail_relay fills in the host's part at
boot; without it a tree's own main.cf would deliver locally or not start),
the boot mail and the console's `buildos: up` line, each a unit and its
script. The packages: postfix and `mail` (bsd-mailx) for the mail, sshd
for root's key.
"""

from __future__ import annotations

from initpy.runtime.osimage import MAIL_NEEDS, OS_PROGRAMS, OsFile, OsPackage, sandbox

POSTFIX_MAIN = "/etc/postfix/main.cf"
POSTFIX_ADMIN_MAP = "/etc/postfix/admin"
BOOT_MAIL = f"{OS_PROGRAMS}/buildos-boot-mail"
READY = f"{OS_PROGRAMS}/buildos-ready"
UNIT_DIR = "/etc/systemd/system"

POSTFIX_NULL_CLIENT = """\
# Shipped by initpy (hooks/services/os_files.py). A buildos host is a null
# client (docs/manual.md, "Mail"). Everything goes to the relay; nothing is
# delivered on the host. initpy sets relayhost from buildos.smtp_relay,
# myhostname and mydomain from the host's name, and writes
# /etc/postfix/admin from buildos.admin_email: root and postmaster
# are rewritten there, in the envelope (virtual_alias_maps, which applies to
# every recipient, local domain or not, where aliases apply only to local
# delivery) and in the To: header (recipient_canonical_maps).
compatibility_level = 3.6
myorigin = $myhostname
mydestination =
relayhost =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
local_transport = error:local delivery is disabled on a buildos host
virtual_alias_maps = texthash:/etc/postfix/admin
recipient_canonical_maps = texthash:/etc/postfix/admin
alias_maps =
alias_database =
smtp_sasl_auth_enable = no
smtpd_relay_restrictions = permit_mynetworks, reject
smtp_tls_security_level = may
smtp_tls_CAfile = /etc/ssl/certs/ca-certificates.crt
biff = no
append_dot_mydomain = no
readme_directory = no
"""

# postfix's queue folders that its start-up check would make (hold,
# trace): the image's tree skips that check (os/customize's quick-start,
# 13 s under TCG), and without `hold` `postqueue -p` fails, so the monitor
# could not tell whether its mail had left before it reboots (initpy/host/
# mail.py took "cannot tell" as "empty"). systemd-tmpfiles makes them at
# every boot, before postfix starts; on a tree that has them it does nothing.
POSTFIX_TMPFILES = "/etc/tmpfiles.d/initpy-postfix.conf"
POSTFIX_TMPFILES_TEXT = """\
# Shipped by initpy (hooks/services/os_files.py): postfix's queue folders
# that its skipped start-up check would make.
d /var/spool/postfix/hold 0700 postfix root -
d /var/spool/postfix/trace 0700 postfix root -
"""

BOOT_MAIL_SANDBOX = sandbox(
    {**MAIL_NEEDS, "SystemCallFilter": ("@system-service", "~@privileged @resources", "@setuid")}
)
BOOT_MAIL_SERVICE = f"""\
# Shipped by initpy (hooks/services/os_files.py).
[Unit]
Description=Mail the admin that this build host is up (hostname, build id, boot report)
Documentation=file:/run/initpy/report.json
# sendmail only drops the message into postfix's queue; ordering after
# postfix and the network lets it leave at once.
After=postfix.service postfix@-.service network-online.target
Wants=postfix.service

[Service]
Type=oneshot
ExecStart={BOOT_MAIL}
# As root with no capability: postfix's sendmail drops the message as group
# postdrop (its setgid is off under NoNewPrivileges). bsd-mailx calls
# setuid() (to root, which it is): @setuid back from @privileged.
PrivateNetwork=yes
IPAddressDeny=any
{BOOT_MAIL_SANDBOX}
[Install]
WantedBy=multi-user.target
"""

# The boot mail: hostname, build id and the report's summary, once per boot.
BOOT_MAIL_SCRIPT = r"""#!/bin/sh
# Shipped by initpy (hooks/services/os_files.py).
# Mail root (which postfix rewrites to buildos.admin_email) once per boot:
# the hostname, the build id and the boot report's summary. Without a relay
# there is nowhere to send it: say so and succeed (no failed unit).
set -eu
# (The two variables are for tests/unit/test_os_image.py.)
env=${BUILDOS_ENV_FILE:-/etc/initpy/buildos.env}
report=${INITPY_REPORT:-/run/initpy/report.json}
[ -r "$env" ] && . "$env"
if [ -z "${BUILDOS_SMTP_RELAY:-}" ]; then
  echo "buildos-boot-mail: no buildos.smtp_relay, no boot mail"
  exit 0
fi
host=$(hostname)
buildid=${BUILDOS_BUILD_ID:-unknown}
{
  echo "Build host $host is up."
  echo
  echo "build id:   $buildid"
  echo "uptime:     $(cut -d' ' -f1 /proc/uptime) s"
  echo "kernel:     $(uname -r)"
  echo "relay:      $BUILDOS_SMTP_RELAY"
  echo
  echo "initpy's boot report ($report):"
  # The report is JSON as initpy writes it (json.dumps, indent=2): the
  # outcome, the warnings, then each state's name, time, result and detail.
  awk '
    /"outcome":/                  { gsub(/[",]/, "", $2); print "  outcome: " $2 }
    /"warnings": \[\]/            { next }
    /"warnings": \[/              { w = 1; next }
    w && /^  \]/                  { w = 0; next }
    w                             { sub(/^ */, ""); print "  warning: " $0 }
    /"states": \[/                { s = 1; next }
    s && /^  \]/                  { s = 0 }
    s && /"name":/                { gsub(/[",]/, "", $2); name = $2 }
    s && /"duration_ms":/         { gsub(/,/, "", $2); ms = $2 }
    s && /"result":/              { gsub(/[",]/, "", $2); result = $2 }
    s && /"detail":/              { sub(/^ *"detail": */, ""); sub(/,$/, ""); detail = $0 }
    s && /^    \}/                { printf "  %-14s %-4s %6s ms  %s\n", name, result, ms, detail }
  ' "$report" 2>/dev/null || echo "  (no report)"
} | mail -s "buildos: $host is up (build $(echo "$buildid" | cut -c1-12))" root
echo "buildos-boot-mail: sent to root (build $buildid)"
"""

# The console's line when systemd is done (the VM tests wait for it).
READY_SERVICE = f"""\
# Shipped by initpy (hooks/services/os_files.py).
[Unit]
Description=Say on the console that the build host is up, and how
After=multi-user.target

[Service]
# simple, not oneshot: the boot must finish without waiting for this unit,
# which itself waits for the boot to finish (a oneshot would wait for itself).
Type=simple
StandardOutput=tty
TTYPath=/dev/console
ExecStart={READY}
# It asks systemd (its private socket, as root) and writes the console.
PrivateNetwork=yes
IPAddressDeny=any
{sandbox({"PrivateDevices": None})}
[Install]
WantedBy=multi-user.target
"""

READY_SCRIPT = r"""#!/bin/sh
# Shipped by initpy (hooks/services/os_files.py).
# One line on the console when systemd has finished starting the host: the
# operator at a serial console (and the VM tests) see that it is up, when
# multi-user.target was reached, what failed, and the services' states.
systemctl is-system-running --wait >/dev/null 2>&1
state=$(systemctl is-system-running)
mu=$(systemctl show -P ActiveEnterTimestampMonotonic multi-user.target)
us=$(systemctl show -P UserspaceTimestampMonotonic)
failed=$(systemctl --failed --no-legend --plain | awk '{print $1}' | tr '\n' ' ')
active=$(for u in ssh postfix dnsmasq; do printf '%s=%s ' "$u" "$(systemctl is-active "$u")"; done)
echo "buildos: up: $state; multi-user.target at $((mu / 1000)) ms, systemd at $((us / 1000)) ms;" \
  "failed: [${failed% }]; ${active% }"
"""

OS_FILES = (
    OsFile(POSTFIX_MAIN, POSTFIX_NULL_CLIENT),
    OsFile(POSTFIX_TMPFILES, POSTFIX_TMPFILES_TEXT),
    OsFile(
        POSTFIX_ADMIN_MAP,
        """\
# Shipped by initpy: root's and postmaster's mail -> buildos.admin_email. initpy writes this
# file at boot (hooks/services); without buildos.admin_email it stays empty.
""",
    ),
    OsFile(
        f"{UNIT_DIR}/buildos-boot-mail.service", BOOT_MAIL_SERVICE, wanted_by="multi-user.target"
    ),
    OsFile(BOOT_MAIL, BOOT_MAIL_SCRIPT, 0o755),
    OsFile(f"{UNIT_DIR}/buildos-ready.service", READY_SERVICE, wanted_by="multi-user.target"),
    OsFile(READY, READY_SCRIPT, 0o755),
)
OS_PACKAGES = (
    OsPackage("postfix", "/usr/sbin/postfix"),
    OsPackage("bsd-mailx", "/usr/bin/bsd-mailx"),
    OsPackage("openssh-server", "/usr/sbin/sshd"),
)
