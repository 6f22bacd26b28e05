"""The monitor's words with systemd: its status, its watchdog, and a reboot request.

**Status.** The unit is `Type=notify`: `notify()` sends `READY=1` and
`STATUS=...` lines as one datagram to `$NOTIFY_SOCKET` (sd_notify(3), with
the standard library's socket; a name starting with `@` is in the abstract
namespace), so `systemctl status initpy-monitor` shows what the monitor
last did. Without `$NOTIFY_SOCKET` (a test, a run by hand) it does nothing.

**Watchdog.** The unit has `WatchdogSec=`: systemd kills and restarts a
monitor that has not sent `WATCHDOG=1` for that long (a hang, or an agent
of the same uid that SIGSTOPped it). `Watchdog` pings from the work itself
(the loop, a long transfer's chunks), never from a thread of its own,
which would keep pinging while the loop hangs.

**Reboot.** The monitor runs as its own user, and an unprivileged process
cannot call `systemctl reboot`: systemd asks polkit, which a minimal image
does not carry (nor the D-Bus daemon systemctl needs to ask as a user). So
the monitor asks root's side, by file: `request_reboot()` says why on
stderr (the journal), then puts an empty `REBOOT_REQUEST` in its runtime
folder, and the path unit `initpy-reboot.path` (written by hooks/monitor.py)
starts `initpy-reboot.service`, which runs `systemctl reboot` as root: a
clean shutdown, every unit stopped in order. Root reads nothing there: the
request's name is all it says, so whatever is at that name (a symlink, a
FIFO) is only a request.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping

# The monitor's RuntimeDirectory= (systemd creates it, owned by its user).
RUN_DIR = "/run/initpy-monitor"
REBOOT_REQUEST = f"{RUN_DIR}/reboot"


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send `state` ("READY=1\\nSTATUS=...") to systemd; False when not under systemd."""
    address = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False  # a status line is never worth failing for
    return True


def status(text: str) -> str:
    """A STATUS= line: one line, as systemctl shows it."""
    return "STATUS=" + " ".join(text.split())


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """The unit's WatchdogSec= in seconds when systemd watches this process
    (sd_watchdog_enabled(3): `WATCHDOG_USEC`, and `WATCHDOG_PID` if set is
    ours); None otherwise."""
    env = os.environ if env is None else env
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


class Watchdog:
    """`WATCHDOG=1` to systemd from the work's own progress.

    `ping()` is cheap to call often (a transfer calls it for every chunk):
    it sends at most once per quarter of the interval. `nap` is the longest
    the loop may sleep between two pings. Without a watchdog (no interval)
    it sends nothing and sets no bound.
    """

    def __init__(
        self,
        interval: float | None,
        send: Callable[[str], bool] = notify,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval, self.send, self.clock = interval, send, clock
        self.last: float | None = None

    @property
    def nap(self) -> float:
        return self.interval / 2 if self.interval is not None else float("inf")

    def ping(self) -> None:
        if self.interval is None:
            return
        now = self.clock()
        if self.last is None or now - self.last >= self.interval / 4:
            self.last = now
            self.send("WATCHDOG=1")


def request_reboot(reason: str, path: str = REBOOT_REQUEST) -> None:
    """Say why on stderr (the journal), then ask initpy-reboot.path to reboot
    the host; OSError if the request cannot be made."""
    print(f"asking initpy-reboot.path for a reboot: {reason}", file=sys.stderr, flush=True)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    os.replace(tmp, path)
