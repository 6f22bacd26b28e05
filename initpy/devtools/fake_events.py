"""The fake kernel's event sockets: scripted uevents, and a flood that never ends.

`FakeKernel.netlink_socket` (fake.py) hands out one of these: the uevents a
test scripts, one step per receive, or a socket that is never empty, which
the seam's own BatchReader reads (tests/unit/test_drains.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from initpy.runtime.uevent import Uevent, uevent_message

# A scripted step of uevents: the events, or a function that changes the
# fake machine (adds a disk to its /sys) and returns them.
UeventStep = list[Uevent] | Callable[[], list[Uevent]]


@dataclass
class ScriptedUevents:
    """The fake kernel's uevent socket: one scripted step per `receive`.

    When the script runs out, `receive` lets the clock run for the whole
    timeout, as a machine where nothing more arrives would.
    """

    script: list[UeventStep]
    advance: Callable[[float], None]
    closed: bool = False

    def receive(self, timeout: float, limit: int = 256) -> list[bytes]:
        if self.script:
            step = self.script.pop(0)
            events = step() if callable(step) else list(step)
            return [b"" if e.action == "overflow" else uevent_message(e) for e in events][:limit]
        if timeout > 0:
            self.advance(timeout)
        return []

    def close(self) -> None:
        self.closed = True


# How many datagrams one receive() may take from a flooding socket before the
# flood calls it a drain without a bound (the seam's bound is 256).
FLOOD_TRIPWIRE = 100_000


class FloodingSocket:
    """A netlink socket that is never empty: a device flapping forever.

    The seam's own BatchReader reads it, so a test drives the real batching.
    select() always finds it readable (a pipe with a byte in it stands for
    its fd), and every recv() returns `datagram` and lets the fake clock run
    `every` seconds, the time between two events. A receive() that took
    FLOOD_TRIPWIRE datagrams without returning to its caller fails the test,
    where a reader without a bound would hang it.
    """

    def __init__(self, datagram: bytes, advance: Callable[[float], None], every: float) -> None:
        self.datagram = datagram
        self.advance = advance
        self.every = every
        self.received = 0
        self._in_a_row = 0
        self._read, self._write = os.pipe()
        os.write(self._write, b"x")

    def fileno(self) -> int:
        self._in_a_row = 0  # select() comes first in every receive()
        return self._read

    def recv(self, bufsize: int, flags: int = 0, /) -> bytes:
        self._in_a_row += 1
        if self._in_a_row > FLOOD_TRIPWIRE:
            raise AssertionError(
                f"one receive() drained {FLOOD_TRIPWIRE} events of an endless stream: "
                "the reader has no bound"
            )
        self.received += 1
        self.advance(self.every)
        return self.datagram[:bufsize]

    def close(self) -> None:
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)
