"""The init's own folders on /state: root's and private, or moved aside and never used.

/state is a disk the init does not trust (docs/security.md): it may arrive
from another machine, or from a host whose build user (uid 1100) could
write into the init's folder. A folder that anyone but root could write to
may hold a `failed_boots` count or an SSH host key that someone else
planted; a symlink may send the init's writes anywhere.

Two functions, one for each moment:

- `secure`, once, as soon as /state is mounted (the driver calls it before
  the loop guard counts the boot): every entry of the init's tree
  (`layout.STATE_OWN_DIR` and its folders: the reports, the SSH host keys)
  that someone other than root could have written (a foreign owner, group-
  or other-writable, a symlink, a FIFO or device, a hard link) is *moved
  aside*, renamed `NAME.untrusted-N` beside itself, with a warning that
  names what was wrong and where it went. It is never read again, never
  deleted, never written to, and nothing else on /state is touched: a
  fresh root-owned folder or file takes its place, as on a new disk. A
  folder that is root's but readable by others is only tightened to 0700
  (a warning too). Fixing a hostile folder in place (chown, chmod) would
  have kept whatever was planted in it; refusing it without a replacement
  would have left the host without a loop guard or kept host keys until a
  person came.
- `own_folder`, at each use: a writer (failed_boots.py, report.py,
  hooks/persist.py) makes its folder through it. What stands in the way
  (a file where the folder belongs, or anything `secure` would move) is
  moved aside the same way; what cannot be moved (a read-only disk) is an
  OSError instead of a folder, so that nothing is read from or written
  through a folder that is not root's alone.

/state itself belongs to the operator (other things may live there): a
/state that others can write is a warning, never changed.
"""

from __future__ import annotations

import stat
from collections.abc import Callable

from initpy.runtime import layout
from initpy.runtime.kernel import Kernel

FOLDER_MODE = 0o700
SUFFIX = ".untrusted-"
# The init's tree is /state/initpy/{reports,ssh}/FILE: nothing deeper is
# ever read, so nothing deeper is looked at.
DEPTH = 2
# Root's, and nobody else may write (the owner's bits are root's business).
_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


def untrusted(kernel: Kernel, path: str, folder: bool) -> str | None:
    """What makes `path` unfit to be one of the init's own (None: fit).

    `folder`: it must be a folder (else a regular file). A file that is not
    there is fit: whoever writes first makes it, root's.
    """
    try:
        found = kernel.lstat(path)
    except FileNotFoundError:
        return None
    mode = found.st_mode
    if stat.S_ISLNK(mode):
        try:
            return f"a symlink to {kernel.readlink(path)!r}"
        except OSError:
            return "a symlink"
    if folder and not stat.S_ISDIR(mode):
        return "not a folder"
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        return "not a regular file or folder (a FIFO, socket or device)"
    if found.st_uid != 0:
        return f"owned by uid {found.st_uid}, not root"
    if mode & _WRITABLE_BY_OTHERS:
        return f"writable by group or others (mode {stat.S_IMODE(mode):04o})"
    if stat.S_ISREG(mode) and found.st_nlink > 1:
        return f"a file with {found.st_nlink} hard links"
    return None


def own_folder(kernel: Kernel, path: str, warn: Callable[[str], None]) -> None:
    """Make `path` (a folder of the init's tree) and those above it, root's 0700.

    One that is there but not fit (`untrusted`) is moved aside first (a
    warning); when that fails, OSError, so that a caller never reads from
    or writes through it.
    """
    top = layout.STATE_OWN_DIR
    if path != top and not path.startswith(top + "/"):
        raise ValueError(f"{path} is not in the init's folder {top}")
    parts = path[len(top) :].strip("/").split("/")
    chain = [top] + [f"{top}/{'/'.join(parts[: i + 1])}" for i in range(len(parts)) if parts[i]]
    for folder in chain:
        problem = untrusted(kernel, folder, folder=True)
        if problem is not None and not _move_aside(kernel, warn, folder, problem, []):
            raise OSError(f"{folder} is {problem}: not used (docs/security.md)")
        if not kernel.exists(folder):
            kernel.mkdir(folder, FOLDER_MODE)


def secure(kernel: Kernel, warn: Callable[[str], None]) -> list[str]:
    """Move aside what is not fit in the init's tree, tighten loose folders; what changed.

    Every change is a warning (`warn`) naming the path, what was wrong and
    what was done. Never raises for what the disk holds: a rename or chmod
    that fails is a warning, and `own_folder` then refuses the folder.
    """
    changes: list[str] = []
    _check_mount(kernel, warn)
    _secure(kernel, warn, layout.STATE_OWN_DIR, True, 0, changes)
    return changes


def _check_mount(kernel: Kernel, warn: Callable[[str], None]) -> None:
    try:
        found = kernel.lstat(layout.STATE_MOUNT)
    except OSError:
        return
    if found.st_uid != 0 or found.st_mode & _WRITABLE_BY_OTHERS:
        warn(
            f"state: {layout.STATE_MOUNT} is owned by uid {found.st_uid} with mode "
            f"{stat.S_IMODE(found.st_mode):04o}: whoever else can write it can move "
            f"{layout.STATE_OWN_DIR} away (the next boot then moves theirs aside); "
            f"fix: chown root: {layout.STATE_MOUNT} && chmod go-w {layout.STATE_MOUNT}"
        )


def _secure(
    kernel: Kernel,
    warn: Callable[[str], None],
    path: str,
    folder: bool,
    depth: int,
    changes: list[str],
) -> None:
    try:
        problem = untrusted(kernel, path, folder)
        if problem is not None:
            _move_aside(kernel, warn, path, problem, changes)
            return
        if not kernel.exists(path):
            return
        found = kernel.lstat(path)
        if not stat.S_ISDIR(found.st_mode):
            return
        mode = stat.S_IMODE(found.st_mode)
        if mode != FOLDER_MODE:
            kernel.chmod(path, FOLDER_MODE)
            changes.append(f"{path}: mode {mode:04o} -> {FOLDER_MODE:04o}")
            warn(f"state: {path} had mode {mode:04o}; now {FOLDER_MODE:04o} (root's alone)")
        if depth >= DEPTH:
            return
        names = kernel.listdir(path)
    except OSError as exc:
        warn(f"state: cannot check {path}: {exc}")
        return
    for name in names:
        if SUFFIX in name:
            continue  # moved aside by an earlier boot: kept, never looked at again
        _secure(kernel, warn, f"{path}/{name}", False, depth + 1, changes)


def _move_aside(
    kernel: Kernel, warn: Callable[[str], None], path: str, problem: str, changes: list[str]
) -> bool:
    """Rename `path` to the first free `path.untrusted-N`: kept on /state, never used.

    False (a warning) when it cannot be moved.
    """
    number = 1
    while kernel.exists(f"{path}{SUFFIX}{number}"):
        number += 1
    aside = f"{path}{SUFFIX}{number}"
    try:
        kernel.rename(path, aside)
    except OSError as exc:
        warn(f"state: {path} is {problem}, and cannot be moved aside ({exc}); it is not used")
        return False
    changes.append(f"{path}: {problem}; moved to {aside}")
    warn(
        f"state: {path} was {problem}: moved to {aside}, kept but never used; a new one "
        f"is made (look at it, then delete it: rm -r {aside})"
    )
    return True
