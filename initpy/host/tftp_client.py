"""`initpy-agent-tftp PORT SUBDIR [--address A]`: the agent's end of its TFTP servers.

Asks `initpy-agent-tftp.socket` (initpy/host/tftp_broker.py) for an
in.tftpd on PORT serving /build/tftp/SUBDIR writable, prints one line when
it is ready (`ready ADDRESS:PORT FOLDER ...`), and holds the server for as
long as it runs: SIGTERM, SIGINT or closing its standard input (with
--stdin) ends it and the server with it. A refused request prints the
broker's error and hint and exits 1; a server that ends by itself does too.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import sys
from collections.abc import Sequence
from types import FrameType

from initpy.cli import DEBUG_FLAG, die, handle
from initpy.host import tftp_request
from initpy.runtime import layout

PROG = "initpy-agent-tftp"


def ask(sock_path: str, line: str) -> tuple[socket.socket, str]:
    """The open connection and the `ok` text; a CommandError for a refusal."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        conn.connect(sock_path)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        conn.close()
        die(
            f"no TFTP broker listens at {sock_path} ({exc.strerror})",
            "check it: systemctl status initpy-agent-tftp.socket",
        )
    except PermissionError:
        conn.close()
        die(f"not allowed to connect to {sock_path}", "ask as the build user (group build)")
    conn.sendall(line.encode() + b"\n")
    reply = conn.makefile("r", encoding="utf-8", errors="replace")
    lines = [reply.readline()]
    if lines[0].startswith(tftp_request.ERROR):
        lines.append(reply.readline())
    reply.close()
    try:
        return conn, tftp_request.read_reply(lines)
    except BaseException:
        conn.close()
        raise


def hold(conn: socket.socket, watch_stdin: bool) -> None:
    """Until the broker ends the server (a CommandError) or our own end comes (return)."""
    stdin = sys.stdin.fileno()
    watched = [conn.fileno(), stdin] if watch_stdin else [conn.fileno()]
    while True:
        ready, _, _ = select.select(watched, [], [])
        if watch_stdin and stdin in ready and not os.read(stdin, 4096):
            return
        if conn.fileno() in ready:
            text = b""
            while chunk := conn.recv(4096):
                text += chunk
            lines = text.decode("utf-8", "replace").splitlines(keepends=True)
            tftp_request.read_reply(lines or ["error: the broker closed the connection\n"])


def _stop(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)  # closing the connection stops the server


def run(argv: list[str]) -> int:
    first, last = layout.AGENT_TFTP_PORTS
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="run an in.tftpd on PORT serving /build/tftp/SUBDIR writable, as long "
        "as this command runs",
    )
    parser.add_argument("port", help=f"a port from {first} to {last}")
    parser.add_argument("subdir", help="a folder below /build/tftp that the agent owns")
    parser.add_argument("--address", help="an IPv4 address of br1 (default: its first)")
    parser.add_argument("--socket", default=layout.AGENT_TFTP_SOCKET, help="the broker")
    parser.add_argument(
        "--stdin", action="store_true", help="also stop when standard input is closed"
    )
    parser.add_argument(DEBUG_FLAG, action="store_true", help="tracebacks on errors")
    args = parser.parse_args(argv)
    words = [args.port, args.subdir, *([args.address] if args.address else [])]
    if any(not w or any(c.isspace() for c in w) for w in words):
        die("a port, folder or address with a space in it", "give each as one word")
    signal.signal(signal.SIGTERM, _stop)
    conn, served = ask(args.socket, " ".join(words))
    with conn:
        print(f"ready {served}", flush=True)
        hold(conn, args.stdin)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return handle(PROG, run, argv)


if __name__ == "__main__":
    sys.exit(main())
