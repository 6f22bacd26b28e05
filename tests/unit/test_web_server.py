"""tests/harness/web_server.py: the test's web server, and the relay QEMU's guestfwd runs.

Each guest connection is one run of the relay on stdin/stdout (QEMU's
`cmd:` guestfwd); here two runs fetch two files whole, as GRUB fetches the
kernel and the initrd, and the server records both.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.harness import web_server


def test_each_relayed_connection_gets_its_file_whole(tmp_path: Path) -> None:
    files = {"kernel": b"k" * 300_000, "initrd": bytes(range(256)) * 2000}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with web_server.WebServer(tmp_path) as web:
        option = web_server.guestfwd("10.0.2.100", web)
        assert option.startswith("guestfwd=tcp:10.0.2.100:80-cmd:") and "," not in option
        command = option.split("-cmd:", 1)[1].split()
        for name, data in files.items():
            request = f"GET /{name} HTTP/1.1\r\nHost: 10.0.2.100\r\nConnection: close\r\n\r\n"
            done = subprocess.run(
                command, input=request.encode(), capture_output=True, timeout=30, check=True
            )
            head, _, body = done.stdout.partition(b"\r\n\r\n")
            # GRUB reads no other status line than HTTP/1.1's.
            assert head.startswith(b"HTTP/1.1 200 ") and body == data
        served = web.served
    assert [(s.path, s.status) for s in served] == [("/kernel", 200), ("/initrd", 200)]
    assert all(s.finished >= s.started for s in served)
    assert sys.executable in command
