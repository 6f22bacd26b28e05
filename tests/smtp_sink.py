"""A minimal SMTP sink for the tests: it takes every message and keeps it.

Enough of RFC 5321 for smtplib's client (EHLO/HELO, MAIL, RCPT, DATA with
dot-unstuffing, RSET, NOOP, QUIT), nothing more. One conversation runs
over any pair of binary streams, so the same code serves:

- the unit tests: `SmtpSink()` listens on 127.0.0.1 in a thread
  (socketserver), and `messages` holds what arrived;
- the VM tests: QEMU's `guestfwd=tcp:IP:25-cmd:python3 tests/smtp_sink.py DIR`
  runs one process per connection with the connection on stdin/stdout;
  each message is written to DIR as a file.

Why not aiosmtpd: it is not in the environment, it would be one more test
dependency, and QEMU's guestfwd needs a process speaking on stdin/stdout,
which it does not do.
"""

from __future__ import annotations

import email.policy
import io
import os
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import BinaryIO


@dataclass
class Received:
    """One message as the sink took it."""

    sender: str
    recipients: list[str]
    data: bytes

    @property
    def message(self) -> Message:
        return message_from_bytes(self.data, policy=email.policy.default)


@dataclass
class Conversation:
    """One SMTP session over `rfile`/`wfile`; `keep` gets each message."""

    rfile: BinaryIO | io.BufferedIOBase
    wfile: BinaryIO | io.BufferedIOBase
    keep: Callable[[Received], None]
    sender: str = ""
    recipients: list[str] = field(default_factory=list)

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")
        self.wfile.flush()

    def run(self) -> None:
        self.reply("220 initpy-test-sink ESMTP")
        while True:
            line = self.rfile.readline()
            if not line:
                return
            command = line.decode(errors="replace").strip()
            verb = command.split(" ", 1)[0].upper()
            if verb == "EHLO":
                self.reply("250-initpy-test-sink")
                self.reply("250 8BITMIME")
            elif verb == "HELO":
                self.reply("250 initpy-test-sink")
            elif verb == "MAIL":
                self.sender = command.partition(":")[2].strip().strip("<>").split(">")[0]
                self.recipients = []
                self.reply("250 OK")
            elif verb == "RCPT":
                self.recipients.append(command.partition(":")[2].strip().strip("<>"))
                self.reply("250 OK")
            elif verb == "DATA":
                self.reply("354 end with <CRLF>.<CRLF>")
                lines = []
                while True:
                    data_line = self.rfile.readline()
                    if not data_line or data_line in (b".\r\n", b".\n"):
                        break
                    lines.append(data_line[1:] if data_line.startswith(b".") else data_line)
                self.keep(Received(self.sender, list(self.recipients), b"".join(lines)))
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


def main(folder: str) -> None:
    """One conversation on stdin/stdout (QEMU guestfwd); each message a file in `folder`."""

    def keep(received: Received) -> None:
        name = f"{time.time_ns()}-{os.getpid()}.eml"
        path = os.path.join(folder, name)
        with open(path + ".part", "wb") as f:
            f.write(received.data)
        os.rename(path + ".part", path)

    Conversation(sys.stdin.buffer, sys.stdout.buffer, keep).run()


if __name__ == "__main__":
    main(sys.argv[1])
