"""The host's system files that several hooks write: fstab, account tables, env files.

/etc/fstab lists what the init mounted (the storage and build host hooks
record their mounts here, and each writes the file again); /etc/passwd and
/etc/group are read and written as tables, keeping the mode and owner an
OS image gave them; `env_file` is the one way to write KEY=VALUE files that
a shell sources. Nothing here is specific to one hook.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

from initpy.runtime.hook import BootContext, Fact
from initpy.runtime.kernel import Kernel
from initpy.runtime.record import frozen

FSTAB = "/etc/fstab"
ROOT_PASSWD = "root:*:0:0:root:/root:/bin/sh\n"
ROOT_GROUP = "root:x:0:\n"


@frozen
class FstabEntry:
    source: str
    target: str
    fstype: str
    options: str

    def line(self) -> str:
        return f"{self.source} {self.target} {self.fstype} {self.options} 0 0"


MOUNTED: Fact[tuple[FstabEntry, ...]] = Fact("fstab_entries")


def mounted(kernel: Kernel) -> dict[str, str]:
    """Mount point -> source, from /proc/self/mounts."""
    table: dict[str, str] = {}
    try:
        text = kernel.read_text("/proc/self/mounts")
    except OSError:
        return table
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 1:
            table[fields[1]] = fields[0]
    return table


def record_mount(ctx: BootContext, entry: FstabEntry) -> None:
    """Remember a mount for /etc/fstab (one entry per mount point)."""
    entries = [e for e in ctx.get(MOUNTED, ()) if e.target != entry.target]
    ctx.put(MOUNTED, (*entries, entry))


FSTAB_HEADER = (
    "# /etc/fstab: written by initpy at boot (initpy/runtime/etc.py). What initpy mounted,\n"
    "# by label; the disks' labels are the storage configuration (docs/storage.md).\n"
)


_FSTAB_DROP = ("# from the image:", "# UNCONFIGURED FSTAB FOR BASE SYSTEM")  # ours, debootstrap's


def write_fstab(ctx: BootContext) -> None:
    """/etc/fstab: the image's own entries kept, ours (by mount point) replaced."""
    k = ctx.kernel
    entries = ctx.get(MOUNTED, ())
    ours = {e.target for e in entries}
    kept: list[str] = []
    if k.exists(FSTAB):
        for line in k.read_text(FSTAB).splitlines():
            fields = line.split()
            if line in FSTAB_HEADER.splitlines() or line in _FSTAB_DROP:
                continue
            if len(fields) > 1 and not line.lstrip().startswith("#") and fields[1] in ours:
                continue
            kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    text = FSTAB_HEADER + "".join(e.line() + "\n" for e in entries)
    if kept:
        text += "\n# from the image:\n" + "\n".join(kept) + "\n"
    k.mkdir("/etc")
    k.write_atomic(FSTAB, text.encode(), 0o644)


def read_table(kernel: Kernel, path: str) -> list[list[str]]:
    """A colon-separated table (/etc/passwd, /etc/group), [] if absent."""
    if not kernel.exists(path):
        return []
    return [line.split(":") for line in kernel.read_text(path).splitlines() if line]


def write_table(kernel: Kernel, path: str, rows: list[list[str]], mode: int) -> None:
    """Write a table atomically, keeping the mode and owner the file had."""
    owner = None
    if kernel.exists(path):
        st = kernel.stat(path)
        mode, owner = st.st_mode & 0o7777, (st.st_uid, st.st_gid)
    kernel.write_atomic(path, "".join(":".join(r) + "\n" for r in rows).encode(), mode)
    if owner is not None:
        kernel.chown(path, *owner)  # /etc/shadow belongs to group shadow


def ensure_root_account(kernel: Kernel) -> None:
    """A locked root in /etc/passwd and its group, where there is no file at all.

    An initrd without an OS image has neither; ssh-keygen exits ("No user
    exists for uid 0") without root, and any OS would have this entry.
    """
    kernel.mkdir("/etc")
    for path, line in (("/etc/passwd", ROOT_PASSWD), ("/etc/group", ROOT_GROUP)):
        if not kernel.exists(path):
            kernel.write_atomic(path, line.encode(), 0o644)


ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"  # compiled at its first use (re's cache)


def env_file(values: Mapping[str, str]) -> str:
    """KEY=VALUE lines that run nothing when a shell sources them (`. FILE`).

    Each value is quoted for the shell (shlex.quote: single quotes unless it
    is all safe characters), which systemd's EnvironmentFile= reads the
    same way. A name that is not a variable name, or a value with a control
    character (a newline would split the line for a reader that is not a
    shell), is a bug in the caller: ValueError, never a file that means
    something else.
    """
    lines = []
    for name, value in values.items():
        if not re.fullmatch(ENV_NAME, name):
            raise ValueError(f"not an environment variable name: {name!r}")
        if not value.isprintable():
            raise ValueError(f"{name}: a control character in {value!r}")
        lines.append(f"{name}={shlex.quote(value)}\n")
    return "".join(lines)
