"""Root's side of the agent's TFTP servers: one `initpy-agent-tftp@.service` per request.

systemd accepts each connection on `initpy-agent-tftp.socket` (root:build,
0660: only `build` and root may ask) and starts this program as root with
the connection as its standard input and output (Accept=yes). It reads
one request (initpy/host/tftp_request.py says what it may ask), checks it,
enters the folder through the descriptor it checked, and runs

    in.tftpd --ipv4 --foreground --address ADDRESS:PORT --user USER --secure
             --create --permissive --umask 022 .

in a process group of its own: `.` is the checked folder (no path is
looked up again), `--secure` chroots each transfer into it, `--user` drops
each transfer's child to the agent's user, so that what a machine writes
is the agent's, mode 0644; `--permissive` lets that child do what the
agent's user may do in its own folder, rather than tftpd's stricter rule
(only world-readable files read, only world-writable ones overwritten),
under which a machine's retried upload would be refused.

It answers `ok` once that in.tftpd holds the port (its socket, found in
/proc/net/udp and among its descriptors), and stops the whole group when
the agent closes the connection, when in.tftpd ends (then it says so), or
when systemd stops the unit. Each line it logs goes to the journal of
that instance.
"""

from __future__ import annotations

import argparse
import errno
import os
import pwd
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

from initpy.cli import CommandError, die
from initpy.host import tftp_request
from initpy.runtime.exit_status import describe_exit

IN_TFTPD = "/usr/sbin/in.tftpd"
# A request is one short line: an agent that sends none in this time is gone.
REQUEST_TIMEOUT = 10.0
# in.tftpd binds at once; this bounds a start that hangs.
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
UMASK = "022"


def log(text: str) -> None:
    print(f"initpy-agent-tftp: {text}", file=sys.stderr, flush=True)


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end of a unix socket (SO_PEERCRED)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def read_line(conn: socket.socket) -> str:
    conn.settimeout(REQUEST_TIMEOUT)
    data = b""
    try:
        while b"\n" not in data and len(data) <= tftp_request.MAX_LINE:
            chunk = conn.recv(tftp_request.MAX_LINE + 1)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        die(f"no request within {REQUEST_TIMEOUT:g} s", tftp_request.USAGE)
    finally:
        conn.settimeout(None)
    if len(data) > tftp_request.MAX_LINE:
        die(f"a request longer than {tftp_request.MAX_LINE} bytes", tftp_request.USAGE)
    try:
        return data.split(b"\n", 1)[0].decode("ascii")
    except UnicodeDecodeError:
        die("a request that is not ASCII", tftp_request.USAGE)


def check_port_free(address: str, port: int) -> None:
    """A port another program holds gets a clear answer (in.tftpd would only log it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            die(
                f"UDP port {port} on {address} is taken (another of the agent's servers?)",
                "close that server's connection, or ask for another port",
            )


def udp_inode(address: str, port: int, table: str = "/proc/net/udp") -> str | None:
    """The socket inode bound to address:port in /proc/net/udp, if any."""
    (packed,) = struct.unpack("=I", socket.inet_aton(address))
    wanted = f"{packed:08X}:{port:04X}"
    with open(table, encoding="ascii") as f:
        for row in f.readlines()[1:]:
            fields = row.split()
            if fields[1] == wanted:
                return fields[9]
    return None


def holds_socket(pid: int, inode: str) -> bool:
    target = f"socket:[{inode}]"
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for name in names:
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}") == target:
                return True
        except OSError:
            continue
    return False


def start(argv: Sequence[str], address: str, port: int) -> subprocess.Popen[bytes]:
    """in.tftpd started in its own process group, once it holds the port."""
    proc = subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        code = proc.poll()
        if code is not None:
            die(
                f"in.tftpd ended ({describe_exit(code)}) before it listened on {address}:{port}",
                "its reason is in the journal: journalctl -t in.tftpd",
            )
        inode = udp_inode(address, port)
        if inode is not None and holds_socket(proc.pid, inode):
            return proc
        if time.monotonic() > deadline:
            stop(proc)
            die(
                f"in.tftpd did not listen on {address}:{port} within {READY_TIMEOUT:g} s",
                "journalctl -t in.tftpd says why",
            )
        time.sleep(0.005)


def stop(proc: subprocess.Popen[bytes]) -> str:
    """End in.tftpd and its transfers (its whole group); how it ended."""
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return describe_exit(proc.wait(wait))
        except subprocess.TimeoutExpired:
            continue
    return describe_exit(proc.wait())


def hold(conn: socket.socket, proc: subprocess.Popen[bytes]) -> str | None:
    """Wait for the agent to close the connection (None) or in.tftpd to end (how)."""
    pidfd = os.pidfd_open(proc.pid)
    try:
        while True:
            ready, _, _ = select.select([conn.fileno(), pidfd], [], [])
            if pidfd in ready:
                return describe_exit(proc.wait())
            if not conn.recv(4096):  # the agent sends nothing more: only its close counts
                return None
    finally:
        os.close(pidfd)


def serve(conn: socket.socket, args: argparse.Namespace) -> int:
    user = pwd.getpwnam(args.user)
    peer = peer_uid(conn)
    try:
        if peer not in (0, user.pw_uid):
            die(f"uid {peer} may not ask for a TFTP server", f"ask as {args.user}")
        line = read_line(conn)
        asked = time.monotonic()
        request = tftp_request.parse_request(line, args.root)
        folder = tftp_request.open_folder(args.root, request.subdir, user.pw_uid)
        held = tftp_request.interface_addresses(args.interface)
        address = tftp_request.choose_address(request.address, args.interface, held)
        check_port_free(address, request.port)
        # The checked descriptor becomes the working folder: in.tftpd gets `.`,
        # no path that could be swapped after the check.
        os.fchdir(folder)
        os.close(folder)
        # --ipv4: without it in.tftpd 5.2 also opens an IPv6 socket and ends
        # (71) when that fails, as it does under the unit's
        # RestrictAddressFamilies; the address is IPv4 anyway.
        argv = [args.in_tftpd, "--ipv4", "--foreground", "--address", f"{address}:{request.port}"]
        argv += ["--user", args.user, "--secure", "--create", "--permissive"]
        argv += ["--umask", UMASK, "."]
        proc = start(argv, address, request.port)
    except CommandError as exc:
        log(f"refused uid {peer}: {exc.message}")
        conn.sendall(tftp_request.refusal_lines(exc).encode())
        return 1
    where = f"{address}:{request.port} {args.root}/{request.subdir}"
    ms = (time.monotonic() - asked) * 1000
    log(f"serving {where} for uid {peer} (in.tftpd pid {proc.pid}, ready in {ms:.0f} ms)")
    try:
        conn.sendall(f"{tftp_request.OK}{where} (ready in {ms:.0f} ms)\n".encode())
        ended = hold(conn, proc)
    except OSError:
        ended = None  # the agent is gone: stop as if it had closed
    finally:
        how = stop(proc)
    if ended is None:
        log(f"stopped {where}: the agent closed the connection (in.tftpd {how})")
        return 0
    log(f"in.tftpd for {where} ended by itself ({ended})")
    refusal = CommandError(f"in.tftpd ended ({ended})", "journalctl -t in.tftpd says why")
    try:
        conn.sendall(tftp_request.refusal_lines(refusal).encode())
    except OSError:
        pass
    return 1


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through serve's `finally`: in.tftpd stops


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="initpy-agent-tftp-broker",
        description="serve one agent's TFTP request on the connection at standard input",
    )
    parser.add_argument("--user", required=True, help="the agent's user: owner and transfers")
    parser.add_argument("--root", required=True, help="the TFTP root the folders are below")
    parser.add_argument("--interface", required=True, help="the interface to listen on")
    parser.add_argument("--in-tftpd", default=IN_TFTPD, help=f"the server (default {IN_TFTPD})")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    with socket.socket(fileno=os.dup(0)) as conn:
        return serve(conn, args)


if __name__ == "__main__":
    sys.exit(main())
