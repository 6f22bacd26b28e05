"""The monitor's TFTP client: one read request (RFC 1350), with the
`blksize` and `tsize` options (RFC 2347, 2348, 2349), under one deadline.

Why not a library: tftpy 0.8.7 logs "Discarding" for a DATA packet from
another address or port and then uses it, so whoever answers the request
first (a LAN host, a build machine) would set the build id. Here a packet
counts only when it comes from the server's address, and, once the
server's first reply has fixed its port (its transfer ID), from that port;
any other is answered with ERROR 5 ("unknown transfer ID", as the RFC
says) and otherwise ignored, and the transfer goes on with the server.
That is all TFTP can do: anyone who can send packets with the server's
address and port can still answer in its place (docs/security.md).

The server may answer from a port of its own (tftpd-hpa, QEMU's user
network) or from the one asked (dnsmasq); it may accept the options with
an OACK or ignore them and send 512-byte blocks. Every wait is bounded by
both the per-packet `wait` (after which the last packet is sent again,
`tries` times in all) and the transfer's `deadline`.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable

RRQ, DATA, ACK, ERROR, OACK = 1, 3, 4, 5, 6
NOT_FOUND, ILLEGAL, UNKNOWN_TID, BAD_OPTION = 1, 4, 5, 8
DEFAULT_BLKSIZE = 512
# An Ethernet frame's worth (1500 bytes less IPv6's and UDP's headers and
# TFTP's 4): no fragments on either family.
BLKSIZE = 1428
MAX_PACKET = 65536


class TftpError(Exception):
    """The server answered with ERROR `code`, or broke the protocol (`code` None)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class TftpTimeout(Exception):
    """No packet from the server within the tries, or (`late`) not done by the deadline."""

    def __init__(self, message: str, late: bool) -> None:
        super().__init__(message)
        self.late = late


def _error_packet(code: int, message: str) -> bytes:
    return struct.pack("!HH", ERROR, code) + message.encode("ascii") + b"\0"


def _strings(payload: bytes) -> list[str]:
    """The NUL-terminated strings of an OACK or an ERROR (a missing last NUL forgiven)."""
    parts = payload.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    return [p.decode("ascii", "replace") for p in parts]


class _Transfer:
    """One read request's state: the server's address, its TID once known, the block."""

    def __init__(self, sock: socket.socket, server: tuple[str, int], deadline: float) -> None:
        self.sock, self.server, self.deadline = sock, server, deadline
        self.tid: int | None = None  # the server's port, fixed by its first reply
        self.blksize = DEFAULT_BLKSIZE
        self.block = 0  # the last block written (and acknowledged)

    def peer(self) -> tuple[str, int]:
        return (self.server[0], self.tid if self.tid is not None else self.server[1])

    def receive(self, wait: float) -> tuple[int, bytes] | None:
        """The next packet from the server (opcode, rest) within `wait`, or None.

        Packets from anyone else are answered with ERROR 5 and skipped; the
        wait for the server's goes on until its own end.
        """
        until = min(time.monotonic() + wait, self.deadline)
        while (left := until - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                packet, (address, port, *_) = self.sock.recvfrom(MAX_PACKET)
            except TimeoutError:
                return None
            except ConnectionRefusedError:  # an ICMP error for the last packet sent
                continue
            if address != self.server[0] or (self.tid is not None and port != self.tid):
                try:
                    self.sock.sendto(
                        _error_packet(UNKNOWN_TID, "unknown transfer ID"), (address, port)
                    )
                except OSError:
                    pass  # a source that cannot be answered: ignored all the same
                continue
            if len(packet) < 4:
                continue
            (opcode,) = struct.unpack("!H", packet[:2])
            if self.tid is None and opcode in (DATA, ERROR, OACK):
                self.tid = port
            return opcode, packet[2:]
        return None

    def fail(self, code: int, message: str) -> TftpError:
        """Tell the server why the transfer stops; the error to raise."""
        self.sock.sendto(_error_packet(code, message), self.peer())
        return TftpError(message)

    def accept_options(self, payload: bytes, announce: Callable[[int], object]) -> None:
        """The server's OACK: the block size it chose, and the size it announced."""
        words = _strings(payload)
        options = dict(zip(words[0::2], words[1::2], strict=False))
        for name, value in options.items():
            if name.lower() == "blksize" and value.isdigit() and 8 <= int(value) <= BLKSIZE:
                self.blksize = int(value)
            elif name.lower() == "tsize" and value.isdigit():
                try:
                    announce(int(value))
                except Exception:
                    self.fail(BAD_OPTION, f"a file of {value} bytes is refused")
                    raise
            else:
                raise self.fail(BAD_OPTION, f"option {name}={value} was not asked for")


def download(
    host: str,
    port: int,
    filename: str,
    write: Callable[[bytes], object],
    *,
    announce: Callable[[int], object],
    wait: float,
    tries: int,
    deadline: float,
) -> int:
    """Read `filename` from `host`:`port` into `write`; the number of bytes.

    `announce` gets the size the server announces (`tsize`), and may refuse
    it by raising; `write` still counts what arrives. TftpError for the
    server's error (its code) or a broken exchange; TftpTimeout when the
    server stays silent for `tries` waits of `wait` seconds, or the
    transfer passes `deadline` (a time.monotonic() value). OSError for a
    name that does not resolve.
    """
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    request = (
        struct.pack("!H", RRQ)
        + b"\0".join(s.encode() for s in (filename, "octet", "blksize", str(BLKSIZE), "tsize", "0"))
        + b"\0"
    )
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        transfer = _Transfer(sock, (str(address[0]), int(address[1])), deadline)
        last, received = request, 0
        sock.sendto(last, transfer.peer())
        silent = 0
        while True:
            if time.monotonic() >= deadline:
                raise TftpTimeout(f"not done by the deadline ({received} bytes so far)", True)
            got = transfer.receive(wait)
            if got is None:
                silent += 1
                if silent >= tries:
                    raise TftpTimeout(
                        f"no answer from {host}:{transfer.peer()[1]} within "
                        f"{wait * tries:g} s ({tries} tries, {received} bytes so far)",
                        False,
                    )
                sock.sendto(last, transfer.peer())
                continue
            opcode, payload = got
            if opcode == ERROR:
                (code,) = struct.unpack("!H", payload[:2])
                text = _strings(payload[2:])
                raise TftpError(f"error {code}: {text[0] if text else ''}", code)
            if opcode == OACK and transfer.block == 0 and last is request:
                transfer.accept_options(payload, announce)
                last = struct.pack("!HH", ACK, 0)
            elif opcode == DATA:
                (block,) = struct.unpack("!H", payload[:2])
                data = payload[2:]
                if block == transfer.block:  # our ACK was lost: the server sent it again
                    sock.sendto(last, transfer.peer())
                    continue
                if block != (transfer.block + 1) & 0xFFFF:
                    continue  # a stray block: the ACK sent stands
                if len(data) > transfer.blksize:
                    raise transfer.fail(ILLEGAL, f"block {block} is longer than {transfer.blksize}")
                write(data)
                received += len(data)
                transfer.block = block
                last = struct.pack("!HH", ACK, block)
                if len(data) < transfer.blksize:
                    sock.sendto(last, transfer.peer())
                    return received
            else:
                continue  # a repeated OACK, or an opcode a server does not send
            silent = 0
            sock.sendto(last, transfer.peer())
