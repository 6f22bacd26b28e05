"""The monitor's two words with systemd: its status, and a reboot request.

**Status.** The unit is `Type=notify`: `notify()` sends `READY=1` and
`STATUS=...` lines as one datagram to `$NOTIFY_SOCKET` (sd_notify(3), with
the standard library's socket; a name starting with `@` is in the abstract
namespace), so `systemctl status initpy-monitor` shows what the monitor
last did. Without `$NOTIFY_SOCKET` (a test, a run by hand) it does nothing.

**Reboot.** The monitor runs as `build`, and an unprivileged process
cannot call `systemctl reboot`: systemd asks polkit, which a minimal image
does not carry (nor the D-Bus daemon systemctl needs to ask as a user). So
the monitor asks root's side, by file: `request_reboot()` writes
`REBOOT_REQUEST` (the reason, atomically) into its runtime folder, and the
path unit `initpy-reboot.path` (written by hooks/monitor.py) starts
`initpy-reboot.service`, which runs `systemctl reboot` as root: a clean
shutdown, every unit stopped in order.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

# The monitor's RuntimeDirectory= (systemd creates it, owned by `build`).
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


def request_reboot(reason: str, path: str = REBOOT_REQUEST) -> None:
    """Ask initpy-reboot.path to reboot the host; OSError if the request cannot be written."""
    folder = os.path.dirname(path)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(reason.rstrip("\n") + "\n")
    os.replace(tmp, path)
