"""The agent's TFTP requests: the one-line protocol, and what a request may ask.

The build agent runs as `build`, and tftpd-hpa's `in.tftpd` cannot run as
`build`: it drops privileges unconditionally (setregid, initgroups,
setreuid) in each request's child, and initgroups needs CAP_SETGID, so as
`build` every transfer ends with "cannot drop privileges" (exit 71). So
the agent asks root's side, `initpy-agent-tftp.socket`, for a server
(initpy/host/tftp_broker.py; the agent's end is initpy/host/tftp_client.py):

    agent -> broker   PORT SUBDIR [ADDRESS]\\n
    broker -> agent   ok ADDRESS:PORT FOLDER (ready in N ms)\\n
                 or   error: WHAT IS WRONG\\nhint: WHAT TO DO\\n

and the server runs until the agent closes the connection. What a
request may ask, checked here, is all that `build` gains:
- a port of `layout.AGENT_TFTP_PORTS` (the ports br1's filter opens);
- a folder below the TFTP root (/build/tftp), named by plain relative
  components, each reached without following a symbolic link (openat with
  O_NOFOLLOW, so a link swapped in after the check is not followed either),
  a directory, owned by the agent's user and searchable by others (the
  broker holds no CAP_DAC_* and must enter it);
- an IPv4 address the host holds on br1 (by default its first).

A refusal is a `CommandError` (initpy/cli.py): its message and hint are
the two reply lines, and the client raises it again on its side.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import stat
import subprocess
from dataclasses import dataclass

from initpy.cli import CommandError, die
from initpy.runtime import layout

# Longer than any honest request (a port, a few names, an address).
MAX_LINE = 1024
OK = "ok "
ERROR = "error: "
HINT = "hint: "
# One component of a folder's name: no dot first (so no `.`, `..` or
# hidden name), no slash, no space (the request is split on spaces).
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}")
USAGE = "send one line: PORT SUBDIR [ADDRESS], e.g. 23400 machine1"


@dataclass(frozen=True)
class Request:
    """A request as the agent sent it, its words checked but nothing looked up."""

    port: int
    subdir: str
    address: str | None


def parse_request(line: str, root: str) -> Request:
    """`PORT SUBDIR [ADDRESS]`, each word checked; a CommandError says which is wrong."""
    first, last = layout.AGENT_TFTP_PORTS
    words = line.split()
    if len(words) not in (2, 3):
        die(f"expected PORT SUBDIR [ADDRESS], got {line.strip()!r}", USAGE)
    port_word, subdir = words[0], words[1]
    if not port_word.isdigit():
        die(f"port {port_word!r} is not a number", f"ask for a port from {first} to {last}")
    port = int(port_word)
    if not first <= port <= last:
        die(
            f"port {port} is outside the agent's TFTP ports {first}-{last}",
            f"ask for a port from {first} to {last} (layout.AGENT_TFTP_PORTS; br1's filter "
            "opens those only)",
        )
    if subdir.startswith("/"):
        die(
            f"folder {subdir!r} is an absolute path",
            f"name a folder below {root} relative to it, e.g. machine1 for {root}/machine1",
        )
    for part in subdir.split("/"):
        if not NAME.fullmatch(part):
            die(
                f"folder {subdir!r} has a component {part!r} that is not a plain name",
                "use names of letters, digits, `_`, `.`, `+` and `-`, not starting with a "
                f"dot (no `..`), joined by single slashes, e.g. machine1 or task7/m1 below {root}",
            )
    address = words[2] if len(words) == 3 else None
    if address is not None:
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            die(f"address {address!r} is not an IPv4 address", "give br1's address, or none")
    return Request(port, subdir, address)


def open_folder(root: str, subdir: str, owner_uid: int) -> int:
    """An O_PATH descriptor of ROOT/SUBDIR, every component checked as the docstring says.

    Each check is made on the opened descriptor (fstat), so that the folder
    the broker enters is the one that was checked.
    """
    flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(root, flags)
    except OSError as exc:
        die(f"the TFTP root {root} cannot be opened: {exc.strerror}", "mount /build/tftp first")
    path = root
    try:
        for part in subdir.split("/"):
            path = f"{path}/{part}"
            try:
                seen = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                die(f"{path} does not exist", f"create it first, as its owner: mkdir -p {path}")
            if stat.S_ISLNK(seen.st_mode):
                die(
                    f"{path} is a symbolic link",
                    "name a real folder below the TFTP root: a link could lead anywhere",
                )
            if not stat.S_ISDIR(seen.st_mode):
                die(f"{path} is not a folder", f"remove it and make a folder: mkdir {path}")
            try:
                child = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                die(f"{path} changed while it was checked: {exc.strerror}", "ask again")
            os.close(fd)
            fd = child
            held = os.fstat(fd)
            if (held.st_dev, held.st_ino) != (seen.st_dev, seen.st_ino):
                die(f"{path} changed while it was checked", "ask again")
            if held.st_uid != owner_uid:
                die(
                    f"{path} is owned by uid {held.st_uid}, not by the agent's user "
                    f"(uid {owner_uid})",
                    "serve a folder the agent made itself",
                )
            if not held.st_mode & stat.S_IXOTH:
                die(
                    f"{path} has mode {stat.S_IMODE(held.st_mode):04o}: the broker cannot "
                    "enter it (it holds no CAP_DAC_OVERRIDE)",
                    f"chmod o+x {path}",
                )
    except BaseException:
        os.close(fd)
        raise
    return fd


def interface_addresses(interface: str) -> list[str]:
    """The IPv4 addresses of `interface`, in the kernel's order (`ip -j`)."""
    try:
        done = subprocess.run(
            ["ip", "-j", "-4", "addr", "show", "dev", interface],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        die(f"cannot list {interface}'s addresses: {exc}", "check that iproute2 is installed")
    if done.returncode != 0:
        die(
            f"cannot list {interface}'s addresses: {done.stderr.strip()}",
            f"the broker serves on {interface} only: check that it is up (ip addr show "
            f"{interface})",
        )
    return [
        entry["local"]
        for link in json.loads(done.stdout or "[]")
        for entry in link.get("addr_info", ())
        if entry.get("family") == "inet"
    ]


def choose_address(wanted: str | None, interface: str, held: list[str]) -> str:
    """The address to listen on: `wanted` if the host holds it on `interface`, else the first."""
    if not held:
        die(f"{interface} has no IPv4 address", f"wait for {interface} to be configured")
    if wanted is None:
        return held[0]
    if wanted not in held:
        die(
            f"{wanted} is not an address of {interface} (it has {', '.join(held)})",
            "ask for one of those, or give no address",
        )
    return wanted


# -- the replies -------------------------------------------------------------


def refusal_lines(exc: CommandError) -> str:
    """The reply to a refused request: an error line and a hint line."""
    text = ERROR + " ".join(exc.message.split()) + "\n"
    return text + (HINT + " ".join(exc.hint.split()) + "\n" if exc.hint else "")


def read_reply(lines: list[str]) -> str:
    """The text after `ok ` of a reply; a CommandError for an error reply."""
    if lines and lines[0].startswith(OK):
        return lines[0][len(OK) :].rstrip("\n")
    if lines and lines[0].startswith(ERROR):
        hint = next((x[len(HINT) :] for x in lines[1:] if x.startswith(HINT)), "")
        raise CommandError(lines[0][len(ERROR) :].rstrip("\n"), hint.rstrip("\n"))
    die(
        f"the broker answered {''.join(lines)[:200]!r}, not ok or error",
        "journalctl -u 'initpy-agent-tftp@*' says why",
    )
