"""A plain web server on 127.0.0.1 serving a folder, and how a QEMU guest reaches it.

`WebServer(folder)` is `python3 -m http.server` in a thread (the issue's
"any plain web server"), recording each GET it finished and when.
`guestfwd(address, server)` is the -netdev user option that puts it at
ADDRESS:80 in the guest: QEMU's `cmd:` guestfwd runs this file once per
TCP connection (GRUB opens one per file), and it relays the connection's
bytes between stdin/stdout and the server's port; a `tcp:` guestfwd would
carry only the first connection.
"""

from __future__ import annotations

import http.server
import os
import selectors
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Served:
    path: str
    status: int
    started: float  # time.monotonic()
    finished: float


class _Handler(http.server.SimpleHTTPRequestHandler):
    # GRUB's http.mod accepts only an `HTTP/1.1 ` status line (as nginx and
    # Apache send); http.server answers HTTP/1.0 unless told
    # (`python3 -m http.server --protocol HTTP/1.1`).
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        started = time.monotonic()
        super().do_GET()
        self.wfile.flush()
        self.server.record(Served(self.path, self._status, started, time.monotonic()))

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        super().send_response(code, message)


class _Server(http.server.ThreadingHTTPServer):
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.served: list[Served] = []
        self.lock = threading.Lock()
        super().__init__(
            ("127.0.0.1", 0),
            lambda *a: _Handler(*a, directory=str(folder)),
        )

    def record(self, served: Served) -> None:
        with self.lock:
            self.served.append(served)


class WebServer:
    """`with WebServer(folder) as web:` serves `folder` on 127.0.0.1:web.port."""

    def __init__(self, folder: Path) -> None:
        self.server = _Server(folder)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def served(self) -> list[Served]:
        with self.server.lock:
            return list(self.server.served)

    def __enter__(self) -> WebServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def guestfwd(address: str, server: WebServer) -> str:
    """The -netdev user option that puts `server` at ADDRESS:80 for the guest."""
    text = (
        f"guestfwd=tcp:{address}:80-cmd:{sys.executable} {Path(__file__).resolve()} {server.port}"
    )
    if "," in text:
        raise ValueError(f"{text!r}: QEMU's option syntax forbids commas here")
    return text


def relay(port: int) -> None:
    """One guest connection on stdin/stdout, relayed to 127.0.0.1:port until either side ends."""
    upstream = socket.create_connection(("127.0.0.1", port))
    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ, upstream)
    selector.register(upstream, selectors.EVENT_READ, 1)
    while True:
        for key, _events in selector.select():
            if key.fileobj == 0:
                data = os.read(0, 1 << 16)
                if not data:
                    upstream.shutdown(socket.SHUT_WR)
                    selector.unregister(0)
                    continue
                upstream.sendall(data)
            else:
                data = upstream.recv(1 << 16)
                if not data:
                    return
                view = memoryview(data)
                while view:
                    view = view[os.write(1, view) :]


if __name__ == "__main__":
    relay(int(sys.argv[1]))
