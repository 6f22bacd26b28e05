"""The words of the host's mails to the admin.

initpy-monitor's: a new build, a new toolchain, a refused toolchain, a
failing URL, a recovery;
initpy-toolchain's: a bootstrap that failed.

Each function takes the facts and returns a whole message (initpy.host.mail
builds the headers and hands it to the MTA); none of them reads the loop's
state, so the loop in initpy.host.monitor only says what happened.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage

from initpy.host import mail as mailer


@dataclass(frozen=True)
class Sender:
    """Who writes: the monitor's user on this host, to the admin (or root)."""

    user: str
    hostname: str
    # Without buildos.admin_email root's mail stays on the host (or goes
    # where the image's aliases say).
    recipient: str


def change(
    sender: Sender, url: str | None, old_id: str, new_id: str, uptime: float
) -> EmailMessage:
    return mailer.message(
        sender.user,
        sender.recipient,
        f"{sender.hostname}: new build {new_id[:12]}, rebooting",
        f"The build id at {url} changed; {sender.hostname} reboots "
        "onto the new build now.\n\n"
        f"old build id: {old_id}\n"
        f"new build id: {new_id}\n"
        f"uptime:       {mailer.format_uptime(uptime)}\n",
    )


def toolchain_change(
    sender: Sender, url: str | None, old_key: str, new_key: str, uptime: float
) -> EmailMessage:
    return mailer.message(
        sender.user,
        sender.recipient,
        f"{sender.hostname}: new toolchain {new_key[:12]}, rebooting",
        f"The toolchain's checksums file at {url} changed; {sender.hostname} reboots "
        "now and builds the new toolchain (or takes it from its cache) at boot.\n\n"
        f"old checksums sha256: {old_key}\n"
        f"new checksums sha256: {new_key}\n"
        f"uptime:               {mailer.format_uptime(uptime)}\n",
    )


def toolchain_refused(
    sender: Sender, url: str | None, running_key: str, new_key: str, problem: str
) -> EmailMessage:
    return mailer.message(
        sender.user,
        sender.recipient,
        f"{sender.hostname}: toolchain {new_key[:12]} refused, not rebooting",
        f"The toolchain's checksums file at {url} changed, but {sender.hostname} does not "
        "reboot onto it: it fetched what the file lists, ran nothing, and found\n\n"
        f"  {problem}\n\n"
        "The host keeps running its toolchain and agent. Publish the files, then a new "
        "checksums file (last): the host looks at it at its next poll. It does not look at "
        "this same file again until initpy-monitor restarts.\n\n"
        f"running checksums sha256: {running_key}\n"
        f"refused checksums sha256: {new_key}\n",
    )


def toolchain_failed(sender: Sender, url: str, stage: str, error: str) -> EmailMessage:
    return mailer.message(
        sender.user,
        sender.recipient,
        f"{sender.hostname}: toolchain bootstrap failed ({stage})",
        f"{sender.hostname} could not bootstrap the toolchain from {url}, so no agent "
        "runs on it this boot. The host does not reboot; the toolchains already in its "
        "cache are kept. Fix the toolchain and replace its checksums file: the host "
        "reboots onto it.\n\n"
        f"stage: {stage}\n"
        f"error: {error}\n\n"
        "The whole log: journalctl -u initpy-toolchain -b\n",
        program="initpy-toolchain",
    )


def failing(
    sender: Sender,
    url: str | None,
    failing_for: float,
    failures: int,
    last_error: str,
    running_id: str | None,
    what: str = "build id URL",
) -> EmailMessage:
    follows = "toolchain" if what.startswith("toolchain") else "build"
    return mailer.message(
        sender.user,
        sender.recipient,
        f"{sender.hostname}: {what} failing for {mailer.format_uptime(failing_for)}",
        f"{sender.hostname} cannot read its {what}, so it cannot follow a new "
        f"{follows}; it keeps running the {follows} it has, and keeps trying.\n\n"
        f"URL:          {url}\n"
        f"failing for:  {mailer.format_uptime(failing_for)} ({failures} polls)\n"
        f"last error:   {last_error}\n"
        f"running:      {running_id}\n\n"
        "No other mail about this comes until the URL has answered again.\n",
    )


def recovered(
    sender: Sender, url: str | None, failures: int, what: str = "build id URL"
) -> EmailMessage:
    return mailer.message(
        sender.user,
        sender.recipient,
        f"{sender.hostname}: {what} answers again",
        f"{url} answers again after {failures} failed polls.\n",
    )
