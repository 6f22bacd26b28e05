"""Services: the mail relay and root's SSH key.

The spec's Email and SSH sections. postfix relays everything through
`buildos.smtp_relay`, with no authentication, and root's mail goes to
`buildos.admin_email`: postfix is a null client (nothing is delivered on
the host), so aliases, which apply only to local delivery, cannot do it;
/etc/postfix/admin rewrites root and postmaster to the admin, in the
envelope (virtual_alias_maps) and in the To: header
(recipient_canonical_maps). `buildos.ssh_key` is added to root's
authorized_keys, and sshd refuses passwords. The init only writes the
configuration into the in-memory root; systemd starts the daemons.

A bad key or a missing relay does not stop a build host from building, so
they are warnings on the console and in the report, never a rescue. The
key is checked the way sshd would read it: the type word, base64 that
decodes, and a blob that starts with the same type name.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct

from initpy.runtime import cmdline, etc, layout
from initpy.runtime.cmdline import BadValue, Parameter
from initpy.runtime.hook import BootContext, Hook, Milestone, State
from initpy.runtime.record import frozen

from .os_files import OS_FILES, OS_PACKAGES, POSTFIX_ADMIN_MAP, POSTFIX_MAIN

# -- the relay and the admin address: strict, because postfix reads them as syntax

# A host name (RFC 1123) or a dotted IPv4 address.
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*"
# Patterns are text, compiled at their first use (re's cache), not at every
# boot's import of the hook.
_RELAY = rf"(?:\[(?P<bracketed>{_HOST})\]|(?P<host>{_HOST}))(?::(?P<port>[0-9]{{1,5}}))?"
# local@domain: no commas, pipes, slashes, quotes, spaces or colons, which
# /etc/aliases would read as more recipients, a command, a file or an include.
_ADDRESS = rf"[A-Za-z0-9][A-Za-z0-9_+-]*(?:\.[A-Za-z0-9_+-]+)*@{_HOST}"


@frozen
class Relay:
    """buildos.smtp_relay: a host and, if given, a port."""

    host: str
    port: int | None = None

    @property
    def relayhost(self) -> str:
        """postfix's form: [host] or [host]:port (brackets: no MX lookup)."""
        return f"[{self.host}]" + (f":{self.port}" if self.port is not None else "")

    def __str__(self) -> str:
        return self.host + (f":{self.port}" if self.port is not None else "")


def relay(raw: str | None) -> Relay:
    expected = "a host, host:port, [host] or [host]:port such as mail.example.org:587"
    match = re.fullmatch(_RELAY, raw or "")
    if match is None or len(match.group("bracketed") or match.group("host")) > 253:
        raise BadValue(f"expected {expected}, got {raw!r}")
    port = int(match.group("port")) if match.group("port") else None
    if port is not None and not 1 <= port <= 65535:
        raise BadValue(f"expected {expected} (a port of 1 to 65535), got {raw!r}")
    return Relay(match.group("bracketed") or match.group("host"), port)


def address(raw: str | None) -> str:
    if raw is None or len(raw) > 254 or not re.fullmatch(_ADDRESS, raw):
        raise BadValue(
            "expected an email address such as admin@example.org (letters, digits, '.', '_', "
            f"'+' and '-' before the @; no commas, pipes, quotes or spaces), got {raw!r}"
        )
    return raw


SMTP_RELAY: Parameter[Relay | None] = Parameter(
    "buildos.smtp_relay",
    relay,
    None,
    "SMTP relay that postfix forwards all mail to: host, host:port, [host] or [host]:port",
    "buildos.smtp_relay=mail.example.org",
)
ADMIN_EMAIL: Parameter[str | None] = Parameter(
    "buildos.admin_email",
    address,
    None,
    "address that receives root's mail and notifications",
    "buildos.admin_email=admin@example.org",
)
# What initpy/host/fetch.py fetches with.
URL_SCHEMES = ("tftp", "http", "https", "file")
BUILDID_URL: Parameter[str | None] = Parameter(
    "buildos.buildid_url",
    cmdline.url(*URL_SCHEMES),
    None,
    "URL of buildos-buildid, polled by the monitor; a change reboots the host",
    "buildos.buildid_url=tftp://10.0.0.1/buildos/buildos-buildid",
)
TOOLCHAIN_URL: Parameter[str | None] = Parameter(
    "buildos.toolchain_url",
    cmdline.url(*URL_SCHEMES),
    None,
    "URL of the toolchain's checksums file (sha256sum format, build2's toolchain.sha256); "
    "built at boot, a change reboots the host",
    "buildos.toolchain_url=https://download.build2.org/toolchain.sha256",
)
TOOLCHAIN_TRUST: Parameter[str | None] = Parameter(
    "buildos.toolchain_trust",
    cmdline.text(
        "a SHA256 certificate fingerprint (32 hex pairs joined by ':')",
        r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){31}",
    ),
    None,
    "fingerprint of the repository certificate the agent's package is trusted by (bpkg --trust)",
    "buildos.toolchain_trust=" + ":".join(["AB"] * 32),
)
SSH_KEY: Parameter[str | None] = Parameter(
    "buildos.ssh_key",
    cmdline.text("an OpenSSH public key", r"(ssh|ecdsa|sk)-\S+ \S+.*"),
    None,
    "public key added to root's authorized_keys (quote it: it has spaces)",
    'buildos.ssh_key="ssh-ed25519 AAAA... user@host"',
)

KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
ALIASES = "/etc/aliases"
AUTHORIZED_KEYS = "/root/.ssh/authorized_keys"
SSHD_DROPIN = "/etc/ssh/sshd_config.d/initpy.conf"
BOOT_ENV = layout.BUILDOS_ENV


def check_ssh_key(key: str) -> str | None:
    """None if `key` is an OpenSSH public key line, else what is wrong with it."""
    words = key.split()
    if len(words) < 2:
        return "expected '<type> <base64> [comment]'"
    kind, body = words[0], words[1]
    if kind not in KEY_TYPES:
        return f"unknown key type {kind!r} (expected one of {', '.join(KEY_TYPES[:3])}, ...)"
    try:
        blob = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return "the key's base64 does not decode (was it cut short or wrapped?)"
    if len(blob) < 4:
        return "the key is truncated"
    (length,) = struct.unpack(">I", blob[:4])
    if blob[4 : 4 + length] != kind.encode():
        return f"the key's data does not match its type {kind!r} (was it cut short?)"
    return None


def set_postfix_options(text: str, options: dict[str, str]) -> str:
    """Set `key = value` lines in main.cf, keeping every other line."""
    lines = text.splitlines()
    done: set[str] = set()
    for i, line in enumerate(lines):
        key = line.split("=", 1)[0].strip()
        if "=" in line and not line.lstrip().startswith("#") and key in options:
            lines[i] = f"{key} = {options[key]}"
            done.add(key)
    lines += [f"{k} = {v}" for k, v in options.items() if k not in done]
    return "\n".join(lines) + "\n"


def set_alias(text: str, name: str, target: str) -> str:
    kept = [ln for ln in text.splitlines() if not ln.startswith(f"{name}:")]
    return "\n".join([*kept, f"{name}: {target}"]) + "\n"


def mail_relay(ctx: BootContext) -> str:
    relay, admin = ctx.value(SMTP_RELAY), ctx.value(ADMIN_EMAIL)
    k = ctx.kernel
    _write_boot_env(ctx)
    if relay is None:
        if admin is not None:
            ctx.warn(
                "mail_relay: buildos.admin_email is set but buildos.smtp_relay is not, "
                "so mail stays on the host; add buildos.smtp_relay=HOST"
            )
        return "no buildos.smtp_relay: mail stays local"
    k.mkdir("/etc/postfix")
    current = k.read_text(POSTFIX_MAIN) if k.exists(POSTFIX_MAIN) else ""
    host = relay.relayhost
    k.write_text(
        POSTFIX_MAIN,
        set_postfix_options(
            current,
            {
                "relayhost": host,
                **_mail_names(ctx, admin),
                "inet_interfaces": "loopback-only",
                "mydestination": "",
                "local_transport": "error:local delivery is disabled on a buildos host",
                "alias_maps": "",
                "virtual_alias_maps": f"texthash:{POSTFIX_ADMIN_MAP}",
                "recipient_canonical_maps": f"texthash:{POSTFIX_ADMIN_MAP}",
                "smtp_sasl_auth_enable": "no",
            },
        ),
    )
    k.write_text(POSTFIX_ADMIN_MAP, admin_map(admin))
    detail = f"postfix relays through {host}"
    if admin is not None:
        aliases = k.read_text(ALIASES) if k.exists(ALIASES) else ""
        k.write_text(ALIASES, set_alias(aliases, "root", admin))
        detail += f"; root's mail goes to {admin}"
    return detail


def admin_map(admin: str | None) -> str:
    """/etc/postfix/admin: root and postmaster of this host -> the admin.

    A bare key matches the local part in any domain that is this host's
    ($myorigin, $myhostname), which is where postfix puts a bare `root`.
    """
    head = "# Written by initpy from buildos.admin_email (hooks/services).\n"
    if admin is None:
        return (
            head + "# No buildos.admin_email: root's mail goes to root@ the host, via the relay.\n"
        )
    return head + "".join(f"{name}\t{admin}\n" for name in ("root", "postmaster"))


def _mail_names(ctx: BootContext, admin: str | None) -> dict[str, str]:
    """myhostname and mydomain: the host's name, fully qualified.

    The mail names the host as <name>.<domain>, where the domain is the
    DHCP lease's (in /etc/hosts, or the resolver's search domain), else the
    admin address's: a relay may refuse a sender without a dot, and postfix
    would otherwise add `.localdomain`. Nothing is set before the network
    hook has named the host.
    """
    k = ctx.kernel
    short = k.read_text("/etc/hostname").strip() if k.exists("/etc/hostname") else ""
    if not short:
        return {}
    names: list[str] = []
    if k.exists("/etc/hosts"):
        for line in k.read_text("/etc/hosts").splitlines():
            words = line.split()
            if words and words[0] == "127.0.1.1":
                names += words[1:]
    fqdn = next((n for n in names if "." in n and n.split(".")[0] == short), None)
    if fqdn is None:
        domain = _search_domain(ctx) or (admin.rpartition("@")[2] if admin else "")
        fqdn = f"{short}.{domain}" if domain else short
    options = {"myhostname": fqdn}
    if "." in fqdn:
        options["mydomain"] = fqdn.partition(".")[2]
    return options


def _search_domain(ctx: BootContext) -> str:
    k = ctx.kernel
    if not k.exists("/etc/resolv.conf"):
        return ""
    for line in k.read_text("/etc/resolv.conf").splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in ("search", "domain"):
            return words[1]
    return ""


def _write_boot_env(ctx: BootContext) -> None:
    """The buildos parameters for the OS's services (the monitor reads it)."""
    relay = ctx.value(SMTP_RELAY)
    values = {
        "BUILDOS_SMTP_RELAY": str(relay) if relay is not None else None,
        "BUILDOS_ADMIN_EMAIL": ctx.value(ADMIN_EMAIL),
        "BUILDOS_BUILDID_URL": ctx.value(BUILDID_URL),
        "BUILDOS_TOOLCHAIN_URL": ctx.value(TOOLCHAIN_URL),
        "BUILDOS_TOOLCHAIN_TRUST": ctx.value(TOOLCHAIN_TRUST),
        # What mkinitrd wrote into buildos-buildid; the boot mail names it.
        "BUILDOS_BUILD_ID": (ctx.manifest.build_id or None) if ctx.manifest else None,
    }
    ctx.kernel.mkdir(layout.ETC_DIR)
    # Quoted: a service that sources it (`. /etc/initpy/buildos.env`) must
    # run nothing a URL's $( ) or ; would otherwise say.
    ctx.kernel.write_text(
        BOOT_ENV, etc.env_file({k: v for k, v in values.items() if v is not None})
    )


def ssh_key(ctx: BootContext) -> str:
    k = ctx.kernel
    k.mkdir("/etc/ssh/sshd_config.d")
    k.write_text(
        SSHD_DROPIN,
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\n",
    )
    key = ctx.value(SSH_KEY)
    if key is None:
        return "no buildos.ssh_key: root has no key (passwords are refused)"
    problem = check_ssh_key(key)
    if problem is not None:
        ctx.warn(
            f"ssh_key: buildos.ssh_key not installed: {problem}; pass the whole line "
            'of your id_*.pub, quoted: buildos.ssh_key="ssh-ed25519 AAAA... you@host"'
        )
        return f"key rejected: {problem}"
    k.mkdir("/root/.ssh", 0o700)
    k.chmod("/root/.ssh", 0o700)
    present = k.read_text(AUTHORIZED_KEYS).splitlines() if k.exists(AUTHORIZED_KEYS) else []
    if key not in present:
        present.append(key)
    k.write_text(AUTHORIZED_KEYS, "\n".join(present) + "\n", 0o600)
    return f"{key.split()[0]} key added for root ({len(present)} in authorized_keys)"


def mail_rescue(ctx: BootContext) -> None:
    """At a rescue after the network is up: mail the report to the admin through the relay.

    A headless host says why it stopped. There is no postfix yet, so the
    init speaks SMTP itself (initpy.runtime.mail), bounded to 10 s in all;
    whatever goes wrong is one console line, and the rescue goes on.
    """
    if Milestone.NETWORK not in ctx.reached:
        return
    relay, admin = ctx.value(SMTP_RELAY), ctx.value(ADMIN_EMAIL)
    if relay is None or admin is None:
        ctx.say("rescue: the report is not mailed: set buildos.smtp_relay and buildos.admin_email")
        return
    import smtplib  # smtplib and email: only a rescue needs them, not every boot

    from initpy.runtime import mail

    host = mail.hostname(ctx.kernel)
    port = relay.port or mail.SMTP_PORT
    ctx.say(f"rescue: mailing the report to {admin} through {relay}")
    start = ctx.kernel.monotonic()
    try:
        message = mail.rescue_message(ctx.report, host, admin)
        mail.send(ctx.kernel, relay.host, port, message, host)
    except (OSError, smtplib.SMTPException) as exc:
        ctx.say(
            f"rescue: cannot mail the report through {relay}: {type(exc).__name__}: {exc} "
            f"(after {ctx.kernel.monotonic() - start:.1f} s)"
        )
        return
    ctx.say(f"rescue: report mailed to {admin} ({ctx.kernel.monotonic() - start:.1f} s)")


HOOK = Hook(
    name="services",
    description="postfix relay and root's mail; root's SSH key; the buildos environment file",
    states=(
        State(
            "mail_relay",
            mail_relay,
            "configure postfix to relay to buildos.smtp_relay and "
            "root's mail to buildos.admin_email",
            wants=(Milestone.NETWORK,),
        ),
        State("ssh_key", ssh_key, "add buildos.ssh_key to root's authorized_keys; no passwords"),
    ),
    parameters=(SMTP_RELAY, ADMIN_EMAIL, BUILDID_URL, TOOLCHAIN_URL, TOOLCHAIN_TRUST, SSH_KEY),
    on_rescue=(mail_rescue,),
    os_files=OS_FILES,
    os_packages=OS_PACKAGES,
)
