"""The host's system files that several hooks write: fstab, account tables, env files.

/etc/fstab lists what the init mounted (the storage and build host hooks
record their mounts here, and each writes the file again); /etc/passwd and
/etc/group are read and written as tables, keeping the mode and owner an
OS image gave them (`add_account`: the build user, and the users initpy's
own services run as); `env_file` is the one way to write KEY=VALUE files that
a shell sources. Nothing here is specific to one hook.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

from initpy.runtime.hook import BootContext, BootFailure, Fact
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


@frozen
class Account:
    """A user and its group of the same name, created unless the OS has them."""

    name: str
    uid: int
    gid: int
    home: str
    gecos: str
    # None: bash if the OS has it, else sh (a user one logs in as)
    shell: str | None = None


def add_account(kernel: Kernel, account: Account) -> tuple[int, int, list[str]]:
    """The account's (uid, gid) and what was done; the OS's own entries are kept.

    Its group is created unless /etc/group has it (with the user's gid if
    only the user is there); the user unless /etc/passwd has it, locked in
    /etc/shadow (never a password). A uid or gid another name holds is a
    BootFailure that says how to fix the image.
    """
    name, k = account.name, kernel
    k.mkdir("/etc")
    passwd = read_table(k, "/etc/passwd")
    group = read_table(k, "/etc/group")
    user_row = next((r for r in passwd if r[0] == name and len(r) >= 7), None)
    group_row = next((r for r in group if r[0] == name and len(r) >= 3), None)
    done = []
    if group_row is not None:
        gid = int(group_row[2])
    else:
        gid = int(user_row[3]) if user_row is not None else account.gid
        taken = [r for r in group if len(r) >= 3 and r[2] == str(gid)]
        if taken:
            raise BootFailure(
                f"cannot create group {name}: gid {gid} already belongs to "
                f"{taken[0][0]!r} in /etc/group",
                f"add group {name} to the OS image (any free gid), then rebuild it",
            )
        if not group:
            group = [ROOT_GROUP.strip().split(":")]
        group.append([name, "x", str(gid), ""])
        write_table(k, "/etc/group", group, 0o644)
        if k.exists("/etc/gshadow"):
            gshadow = read_table(k, "/etc/gshadow")
            gshadow.append([name, "!", "", ""])
            write_table(k, "/etc/gshadow", gshadow, 0o640)
        done.append(f"group {name} ({gid}) created")
    if user_row is not None:
        uid = int(user_row[2])
        done.append(f"user {name} ({uid}) kept from the OS")
        return uid, gid, done
    uid = account.uid
    taken = [r for r in passwd if len(r) >= 3 and r[2] == str(uid)]
    if taken:
        raise BootFailure(
            f"cannot create user {name}: uid {uid} already belongs to "
            f"{taken[0][0]!r} in /etc/passwd",
            f"add user {name} to the OS image (any free uid, home {account.home}), then rebuild it",
        )
    shadowed = k.exists("/etc/shadow")
    shell = account.shell or ("/bin/bash" if k.exists("/bin/bash") else "/bin/sh")
    if not passwd:
        passwd = [ROOT_PASSWD.strip().split(":")]
    passwd.append(
        [name, "x" if shadowed else "*", str(uid), str(gid), account.gecos, account.home, shell]
    )
    write_table(k, "/etc/passwd", passwd, 0o644)
    if shadowed:
        shadow = read_table(k, "/etc/shadow")
        if not any(r[0] == name for r in shadow):
            shadow.append([name, "!", "", "0", "99999", "7", "", "", ""])
            write_table(k, "/etc/shadow", shadow, 0o640)
    done.append(f"user {name} ({uid}) created")
    return uid, gid, done


def join_group(kernel: Kernel, group_name: str, user: str) -> str:
    """Add `user` to the members of the OS's group `group_name`; what was done.

    A group the OS does not have is left alone (the image lacks the package
    that uses it); a member already listed is kept as it is.
    """
    k = kernel
    group = read_table(k, "/etc/group")
    row = next((r for r in group if r[0] == group_name and len(r) >= 4), None)
    if row is None:
        return f"no group {group_name} in the OS"
    members = [m for m in row[3].split(",") if m]
    if user in members:
        return f"{user} already in group {group_name}"
    row[3] = ",".join([*members, user])
    write_table(k, "/etc/group", group, 0o644)
    if k.exists("/etc/gshadow"):
        gshadow = read_table(k, "/etc/gshadow")
        for grow in gshadow:
            listed = [m for m in grow[3].split(",") if m] if len(grow) >= 4 else [user]
            if grow[0] == group_name and user not in listed:
                grow[3] = ",".join([*listed, user])
        write_table(k, "/etc/gshadow", gshadow, 0o640)
    return f"{user} added to group {group_name}"


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
