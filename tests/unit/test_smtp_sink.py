"""The tests' SMTP sink as QEMU's guestfwd runs it: one process, the connection on stdin/stdout.

The VM tests (test_fullos, test_pxe, test_fleet_guard) read what it writes;
this shows, without a VM, that a message arrives whole, dot-unstuffed, with
the envelope as the client sent it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.harness import smtp_sink

CONVERSATION = (
    b"EHLO guest\r\n"
    b"MAIL FROM:<root@build-1.example.org> BODY=8BITMIME\r\n"
    b"RCPT TO:<admin@example.org>\r\n"
    b"DATA\r\n"
    b"Subject: buildos: build-1 is up\r\n"
    b"To: admin@example.org\r\n"
    b"\r\n"
    b"..a line that began with a dot\r\n"
    b".\r\n"
    b"QUIT\r\n"
)


def test_a_guestfwd_conversation_leaves_one_whole_message(tmp_path: Path) -> None:
    command = smtp_sink.command(tmp_path / "mail").split()
    assert command[0] == sys.executable
    done = subprocess.run(command, input=CONVERSATION, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    replies = done.stdout.decode().splitlines()
    assert replies[0].startswith("220 ") and replies[-1].startswith("221 ")
    (message,) = smtp_sink.read_mail(tmp_path / "mail")
    assert message["X-Sink-Mail-From"] == "<root@build-1.example.org> BODY=8BITMIME"
    assert message["X-Sink-Rcpt-To"] == "<admin@example.org>"
    assert int(message["X-Sink-Received-Ns"]) > 0
    assert message["Subject"] == "buildos: build-1 is up"
    assert message.get_content() == ".a line that began with a dot\n"
    # Written to a temporary name, then renamed: only the .eml is left.
    assert [path.suffix for path in (tmp_path / "mail").iterdir()] == [".eml"]
