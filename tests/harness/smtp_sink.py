"""The tests' one SMTP sink: it takes every message and keeps it.

Enough of RFC 5321 for smtplib's client and postfix (EHLO/HELO, MAIL, RCPT,
DATA with dot-unstuffing, RSET, NOOP, QUIT), nothing more. One conversation
runs over any pair of binary streams, so the same code serves:

- the unit tests: `SmtpSink()` listens on 127.0.0.1 in a thread
  (socketserver), and `messages` holds what arrived;
- the VM tests: `guestfwd(FOLDER)` is the `-netdev user` option that makes
  QEMU run this file once for each connection the guest opens to
  SINK_ADDRESS:25, with the connection on stdin/stdout, so the guest's
  postfix (or PID 1's rescue mail) talks to it as to a relay and nothing
  leaves the machine. Each message is written to FOLDER as its own .eml
  file, once whole (a temporary name, then renamed), its envelope first as
  `X-Sink-Mail-From:` and `X-Sink-Rcpt-To:` headers (as the client sent
  them, ESMTP parameters included) and `X-Sink-Received-Ns:` (the host's
  time.time_ns() at the end of DATA). `read_mail(FOLDER)` parses them.

Why not aiosmtpd: it is not in the environment, it would be one more test
dependency, and QEMU's guestfwd needs a process speaking on stdin/stdout,
which it does not do.
"""

from __future__ import annotations

import email
import email.policy
import io
import os
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import BinaryIO

SINK_ADDRESS = "10.0.2.100"  # on QEMU's user network, where guestfwd listens


@dataclass
class Received:
    """One message as the sink took it; the envelope as the client wrote it."""

    mail_from: str  # after "MAIL FROM:", e.g. "<root@host> BODY=8BITMIME"
    rcpt_to: list[str]  # after each "RCPT TO:", e.g. "<admin@example.org>"
    data: bytes
    received_ns: int

    @property
    def sender(self) -> str:
        return self.mail_from.strip().split(">")[0].lstrip("<")

    @property
    def recipients(self) -> list[str]:
        return [r.strip().strip("<>") for r in self.rcpt_to]

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    def as_file(self) -> bytes:
        """The .eml a VM test reads back: the envelope as headers, then the message."""
        envelope = (
            f"X-Sink-Mail-From: {self.mail_from}\r\n"
            + "".join(f"X-Sink-Rcpt-To: {r}\r\n" for r in self.rcpt_to)
            + f"X-Sink-Received-Ns: {self.received_ns}\r\n"
        )
        return envelope.encode() + self.data


@dataclass
class Conversation:
    """One SMTP session over `rfile`/`wfile`; `keep` gets each message."""

    rfile: BinaryIO | io.BufferedIOBase
    wfile: BinaryIO | io.BufferedIOBase
    keep: Callable[[Received], None]
    mail_from: str = ""
    rcpt_to: list[str] = field(default_factory=list)

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")
        self.wfile.flush()

    def run(self) -> None:
        self.reply("220 sink ESMTP")
        while line := self.rfile.readline():
            command = line.decode(errors="replace").strip()
            verb = command.split(" ", 1)[0].upper()
            if verb == "EHLO":
                self.reply("250-sink")
                self.reply("250 8BITMIME")
            elif verb == "HELO":
                self.reply("250 sink")
            elif verb == "MAIL":
                self.mail_from, self.rcpt_to = command.partition(":")[2].strip(), []
                self.reply("250 OK")
            elif verb == "RCPT":
                self.rcpt_to.append(command.partition(":")[2].strip())
                self.reply("250 OK")
            elif verb == "DATA":
                self.reply("354 end with <CRLF>.<CRLF>")
                lines = []
                while (data := self.rfile.readline()) and data.rstrip(b"\r\n") != b".":
                    lines.append(data[1:] if data.startswith(b".") else data)
                received = Received(
                    self.mail_from, list(self.rcpt_to), b"".join(lines), time.time_ns()
                )
                self.keep(received)
                self.reply("250 OK queued")
            elif verb in ("RSET", "NOOP"):
                self.reply("250 OK")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("502 not implemented")


class SmtpSink:
    """A sink on 127.0.0.1 in a thread: `with SmtpSink() as sink: ... sink.messages`."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.arrived = threading.Condition()
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                Conversation(self.rfile, self.wfile, sink._keep).run()

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _keep(self, received: Received) -> None:
        with self.arrived:
            self.messages.append(received)
            self.arrived.notify_all()

    def __enter__(self) -> SmtpSink:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def command(folder: Path) -> str:
    """The `cmd:` of a guestfwd that runs this sink into `folder` (no commas)."""
    text = f"{sys.executable} {Path(__file__).resolve()} {folder}"
    if "," in text:
        raise ValueError(f"{text!r}: QEMU's option syntax forbids commas here")
    return text


def guestfwd(folder: Path, port: int = 25) -> str:
    """The -netdev user option that puts the sink at SINK_ADDRESS:port."""
    return f"guestfwd=tcp:{SINK_ADDRESS}:{port}-cmd:{command(folder)}"


def read_mail(folder: Path) -> list[EmailMessage]:
    """Every message the sink has written to `folder` so far, oldest first."""
    found = []
    for path in sorted(folder.glob("*.eml")):
        with open(path, "rb") as f:
            parsed = email.message_from_binary_file(f, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        found.append(parsed)
    return found


def serve_into(folder: Path) -> None:
    """One conversation on stdin/stdout (QEMU's guestfwd); each message a file in `folder`."""

    def keep(received: Received) -> None:
        stem = f"{received.received_ns}-{os.getpid()}"
        tmp = folder / f".{stem}.tmp"
        tmp.write_bytes(received.as_file())
        tmp.rename(folder / f"{stem}.eml")

    Conversation(sys.stdin.buffer, sys.stdout.buffer, keep).run()


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    serve_into(target)
