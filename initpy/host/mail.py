"""The host's mail to the admin (the monitor's, the toolchain bootstrap's), through its MTA.

The spec's hosts relay everything through postfix (hooks/services
configures it from `buildos.smtp_relay`), so the monitor hands a complete
message to `/usr/sbin/sendmail -t -i` (recipients from the headers) and
never speaks SMTP itself. The host lives in RAM: postfix's queue dies with
the reboot that follows a "new build" mail, so before that reboot the
monitor waits (`wait_for_queue`, bounded) until `postqueue -p` shows the
queue empty.

The messages leave the From address unqualified (`build`), so postfix
completes it with the domain it was configured with, and mark themselves
`Auto-Submitted: auto-generated` (RFC 3834) so that no vacation
responder answers a build host.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import formatdate

SENDMAIL = "/usr/sbin/sendmail"
POSTQUEUE = "/usr/sbin/postqueue"
SEND_TIMEOUT = 60.0
# How long a mail that precedes a reboot may take to leave the queue.
FLUSH_TIMEOUT = 60.0
FLUSH_POLL = 2.0


class MailError(Exception):
    """The MTA did not take the message; the text says why."""


def message(
    sender: str, recipient: str, subject: str, body: str, program: str = "initpy-monitor"
) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = f"{program} <{sender}>"
    mail["To"] = recipient
    mail["Subject"] = subject
    mail["Date"] = formatdate(localtime=True)
    mail["Auto-Submitted"] = "auto-generated"
    mail.set_content(body)
    return mail


def format_uptime(seconds: float) -> str:
    """`3 d 4 h 5 min` style: what an admin reads at a glance."""
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days} d"] if days else []
    if days or hours:
        parts.append(f"{hours} h")
    if days or hours or minutes:
        parts.append(f"{minutes} min")
    if not days and not hours:
        parts.append(f"{secs} s")
    return " ".join(parts)


def sendmail(
    mail: EmailMessage, sendmail_path: str = SENDMAIL, timeout: float = SEND_TIMEOUT
) -> None:
    """Hand the message to the MTA (`sendmail -t -i`), or MailError."""
    argv = [sendmail_path, "-t", "-i"]
    try:
        done = subprocess.run(
            argv, input=mail.as_bytes(), capture_output=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise MailError(
            f"{sendmail_path} is missing: the image needs an MTA (postfix provides it)"
        ) from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MailError(f"{' '.join(argv)}: {exc}") from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
        raise MailError(
            f"{' '.join(argv)}: exit {done.returncode}" + (f": {said[-1]}" if said else "")
        )


def queue_empty(postqueue_path: str = POSTQUEUE) -> bool | None:
    """True when postfix's queue is empty, False when not, None when it cannot tell."""
    if not os.path.exists(postqueue_path):
        return None
    try:
        done = subprocess.run([postqueue_path, "-p"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return b"Mail queue is empty" in done.stdout


def wait_for_queue(
    timeout: float = FLUSH_TIMEOUT,
    *,
    empty: Callable[[], bool | None] = queue_empty,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Wait until the queue is empty (True), or give up after `timeout` (False).

    Without postfix's postqueue there is nothing to ask: True at once.
    """
    deadline = clock() + timeout
    while True:
        state = empty()
        if state is None or state:
            return True
        if clock() >= deadline:
            return False
        sleep(FLUSH_POLL)
