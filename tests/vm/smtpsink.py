"""An SMTP sink for one connection on stdin/stdout, for QEMU's `guestfwd=...-cmd:`.

QEMU spawns it once for each connection the guest opens to the forwarded
address (`guestfwd=tcp:10.0.2.100:25-cmd:python3 smtpsink.py FOLDER`), so
the guest's postfix talks to it as to a relay, and nothing leaves the
machine. Each message is written to FOLDER as its own .eml file, its
envelope first as `X-Sink-Mail-From:` and `X-Sink-Rcpt-To:` headers (and
`X-Sink-Received-Ns:`, the host's time.time_ns() at the end of DATA), once
whole (written to a temporary name, then renamed). `read_mail(FOLDER)`
parses them. Standard library only: the test needs no aiosmtpd.
"""

from __future__ import annotations

import email
import email.policy
import os
import sys
import time
from email.message import EmailMessage
from pathlib import Path
from typing import BinaryIO

SINK_ADDRESS = "10.0.2.100"  # on QEMU's user network, where guestfwd listens


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
    """Every message the sink has received so far, oldest first."""
    found = []
    for path in sorted(folder.glob("*.eml")):
        with open(path, "rb") as f:
            parsed = email.message_from_binary_file(f, policy=email.policy.default)
        found.append(parsed)
    return found


def serve(rin: BinaryIO, wout: BinaryIO, folder: Path) -> None:
    def say(line: str) -> None:
        wout.write(line.encode() + b"\r\n")
        wout.flush()

    say("220 sink ESMTP")
    sender, recipients = "", list[str]()
    while line := rin.readline():
        text = line.decode(errors="replace").strip()
        verb = text.split(" ", 1)[0].upper()
        if verb == "EHLO":
            say("250-sink")
            say("250 8BITMIME")
        elif verb == "MAIL":
            sender, recipients = text[10:].strip(), []
            say("250 ok")
        elif verb == "RCPT":
            recipients.append(text[8:].strip())
            say("250 ok")
        elif verb == "DATA":
            say("354 go on")
            body = []
            while (data := rin.readline()) and data.rstrip(b"\r\n") != b".":
                body.append(data[1:] if data.startswith(b"..") else data)
            received = time.time_ns()
            envelope = (
                f"X-Sink-Mail-From: {sender}\r\n"
                + "".join(f"X-Sink-Rcpt-To: {r}\r\n" for r in recipients)
                + f"X-Sink-Received-Ns: {received}\r\n"
            )
            stem = f"{received}-{os.getpid()}"
            tmp = folder / f".{stem}.tmp"
            tmp.write_bytes(envelope.encode() + b"".join(body))
            tmp.rename(folder / f"{stem}.eml")
            say("250 queued")
        elif verb == "QUIT":
            say("221 bye")
            return
        else:  # HELO, RSET, NOOP, ...
            say("250 ok")


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    serve(sys.stdin.buffer, sys.stdout.buffer, target)
