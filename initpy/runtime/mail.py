"""Mail from PID 1: a rescue's report, to the admin, straight through the relay.

At a rescue there is no postfix yet (systemd starts it after the hand-off),
so the init speaks SMTP itself with the standard library's `smtplib`:
plain SMTP, no authentication, no TLS (the initrd carries no OpenSSL:
nossl.py), as postfix is configured to relay (hooks/services). The
connection comes from the kernel seam (`Kernel.connect_tcp`), so a fake
kernel sends nowhere but to a test's sink.

A rescue must never hang on the network: `send` has one deadline for the
whole conversation (connect, EHLO, MAIL, RCPT, DATA, QUIT). Each step's
socket timeout is what is left of it, so a relay that answers slowly, or
never, costs at most the deadline. smtplib's own default HELO name would
look up the host's FQDN in DNS (`socket.getfqdn`), which can block: the
name is given.
"""

from __future__ import annotations

import json
import smtplib
import socket
from email.message import EmailMessage
from email.utils import formatdate
from typing import TYPE_CHECKING

from initpy.runtime.kernel import Kernel
from initpy.runtime.report import Report, one_line, printable

# The whole conversation with the relay, connect included.
if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

SEND_TIMEOUT = 10.0
SMTP_PORT = 25
SUBJECT_CHARACTERS = 150


class _BoundedSMTP(smtplib.SMTP):
    """smtplib's client over the seam's socket, with one deadline for everything."""

    def __init__(self, kernel: Kernel, local_hostname: str, deadline: float) -> None:
        self._kernel = kernel
        self._deadline = deadline
        super().__init__(local_hostname=local_hostname, timeout=self._left())

    def _left(self) -> float:
        left = self._deadline - self._kernel.monotonic()
        if left <= 0:
            raise TimeoutError("the relay took longer than the rescue allows")
        return left

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return self._kernel.connect_tcp(host, port, self._left())

    def send(self, s: ReadableBuffer | str) -> None:
        # Every command is a send followed by a reply on the same socket:
        # both get what is left of the deadline.
        if self.sock is not None:
            self.sock.settimeout(self._left())
        super().send(s)


def send(
    kernel: Kernel,
    host: str,
    port: int,
    mail: EmailMessage,
    local_hostname: str,
    timeout: float | None = None,
) -> None:
    """Hand `mail` to the relay; OSError or smtplib.SMTPException if it does not take it.

    `timeout` (default SEND_TIMEOUT) bounds the whole conversation.
    """
    deadline = kernel.monotonic() + (SEND_TIMEOUT if timeout is None else timeout)
    client = _BoundedSMTP(kernel, local_hostname, deadline)
    try:
        client.connect(host, port)
        client.send_message(mail)
        client.quit()
    finally:
        client.close()


def hostname(kernel: Kernel) -> str:
    """The host's name as the kernel has it, for HELO and the sender; `localhost` if none."""
    try:
        name = kernel.read_text("/proc/sys/kernel/hostname").strip()
    except OSError:
        name = ""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.")
    return name if name and name != "(none)" and set(name) <= allowed else "localhost"


def rescue_message(report: Report, host: str, recipient: str) -> EmailMessage:
    """The rescue's mail: why the host stopped and the fix in the body, report.json attached."""
    reason = report.reason or "no reason given"
    mail = EmailMessage()
    mail["From"] = f"initpy on {host} <root@{host}>"
    mail["To"] = recipient
    subject = printable(one_line(f"{host}: initpy rescue: {reason}"))
    if len(subject) > SUBJECT_CHARACTERS:
        subject = subject[: SUBJECT_CHARACTERS - 3] + "..."
    mail["Subject"] = subject
    mail["Date"] = formatdate(localtime=False)
    mail["Auto-Submitted"] = "auto-generated"
    body = [
        f"The build host {host} stopped its boot in initpy's rescue.",
        "",
        f"Reason: {reason}",
        f"Fix: {report.fix or '(none given)'}",
    ]
    count = report.extra.get("failed_boots")
    if count is not None:
        body.append(f"Failed boots in a row (this one included): {count}")
    if report.extra.get("stayed"):
        body.append("The host stays in the rescue shell on its console (the loop guard).")
    history = report.extra.get("failed_boots_history")
    if isinstance(history, list) and history:
        body += ["", "History, newest first:", *(f"  {line}" for line in history)]
    body += ["", "The boot report (also /run/initpy/report.json on the host) is attached."]
    mail.set_content("\n".join(body) + "\n")
    mail.add_attachment(
        (json.dumps(report.as_json(), indent=2) + "\n").encode(),
        maintype="application",
        subtype="json",
        filename="report.json",
    )
    return mail
