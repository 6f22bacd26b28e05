"""The built toolchain's cache on the machines storage: keyed, sealed, verified before reuse.

The OS lives in RAM, so without a cache every boot would build the
toolchain from source again. The cache keeps it on the machines disk:

    <root>/                       0755, owned by the bootstrap's uid
      <key>/                      key = sha256 of the checksums file's bytes
        toolchain.sha256          the checksums file it was built from
        install/                  the install prefix: bin/ (the toolchain, bbot-agent), lib/, ...
        MANIFEST                  written last: every file, link and folder below <key>/
      .work-<key>/                the downloads and the build, removed once the entry is sealed

An entry is complete only with its MANIFEST (JSON: for each path its kind,
its mode, and a file's sha256 or a link's target). Before reuse the whole
tree is checked against it: the same paths, no more, the same modes and
contents, every one owned by the running uid and writable by nobody else.
Anything else (no MANIFEST: a build that stopped half-way; a difference: a
corrupt disk or a tampered file) is removed and built again, never used.

The install prefix is the entry's own `install/` folder, so the absolute
paths a build writes into its programs (build2's rpaths) stay true on the
next boot: reuse moves nothing.

**Who may write it.** The bootstrap runs under a uid of its own; the agent
runs as `build`, which owns /build/machines. So the root and every entry
must be owned by the running uid and not writable by group or others
(`check_private`): a cache that the agent could write is refused, never
trusted, so that one bad build cannot poison every later boot.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from dataclasses import dataclass

MANIFEST = "MANIFEST"
CHECKSUMS_COPY = "toolchain.sha256"
PREFIX = "install"
WORK_PREFIX = ".work-"
ROOT_MODE = 0o755
_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


class CacheError(Exception):
    """The cache cannot be used or written; the text says why and what to do."""


def check_private(path: str, what: str) -> os.stat_result:
    """`path`'s lstat, or CacheError unless it is a real folder that only this uid may write."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise CacheError(f"{what} {path}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise CacheError(f"{what} {path} is not a folder (a link or a file); remove it")
    if info.st_uid != os.geteuid():
        raise CacheError(
            f"{what} {path} is owned by uid {info.st_uid}, not by this bootstrap's uid "
            f"{os.geteuid()}: not trusted; remove it (it is rebuilt)"
        )
    if info.st_mode & _WRITABLE_BY_OTHERS:
        raise CacheError(
            f"{what} {path} is writable by others (mode {stat.S_IMODE(info.st_mode):o}): "
            "not trusted; remove it (it is rebuilt)"
        )
    return info


def open_root(root: str) -> str:
    """Create the cache root (0755, this uid) if it is missing; refuse one others may write."""
    try:
        os.mkdir(root, ROOT_MODE)
        os.chmod(root, ROOT_MODE)  # the umask may have taken bits away; never added any
    except FileExistsError:
        pass
    except OSError as exc:
        raise CacheError(
            f"cannot create the toolchain cache {root}: {exc.strerror or exc}"
        ) from None
    check_private(root, "toolchain cache")
    return root


@dataclass(frozen=True)
class Entry:
    """One toolchain in the cache: its folder, its install prefix and its manifest."""

    root: str
    key: str

    @property
    def path(self) -> str:
        return os.path.join(self.root, self.key)

    @property
    def prefix(self) -> str:
        return os.path.join(self.path, PREFIX)

    @property
    def work(self) -> str:
        return os.path.join(self.root, WORK_PREFIX + self.key)

    @property
    def manifest(self) -> str:
        return os.path.join(self.path, MANIFEST)

    def complete(self) -> bool:
        return os.path.lexists(self.manifest)

    def verify(self) -> int:
        """The number of paths checked, or CacheError saying the first difference."""
        check_private(self.path, "toolchain cache entry")
        try:
            with open(self.manifest, encoding="utf-8") as f:
                recorded = json.load(f)
        except (OSError, ValueError) as exc:
            raise CacheError(f"{self.manifest}: unreadable ({exc})") from None
        found = tree(self.path)
        if recorded != found:
            raise CacheError(
                f"{self.path} differs from its MANIFEST: {_first_difference(recorded, found)}"
            )
        return len(found)

    def clear(self) -> None:
        """Remove the entry and its work folder (a partial or corrupt build)."""
        for path in (self.path, self.work):
            if os.path.lexists(path):
                try:
                    shutil.rmtree(path)
                except OSError as exc:
                    raise CacheError(
                        f"cannot remove {path}: {exc.strerror or exc}; remove it by hand"
                    ) from None

    def seal(self) -> int:
        """Take write access from group and others, then write the MANIFEST last (atomically)."""
        for folder, dirs, files in os.walk(self.path):
            for name in [*dirs, *files, ""]:
                path = os.path.join(folder, name) if name else folder
                info = os.lstat(path)
                if not stat.S_ISLNK(info.st_mode) and info.st_mode & _WRITABLE_BY_OTHERS:
                    os.chmod(path, stat.S_IMODE(info.st_mode) & ~_WRITABLE_BY_OTHERS)
        found = tree(self.path)
        tmp = self.manifest + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(found, f, indent=0, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.manifest)
        return len(found)


def tree(top: str) -> dict[str, list[object]]:
    """Every path below `top` but the MANIFEST: [kind, mode, sha256 or link target].

    CacheError for anything that is not a file, link or folder, or is owned
    by another uid or writable by group or others.
    """
    found: dict[str, list[object]] = {}
    uid = os.geteuid()
    for folder, dirs, files in os.walk(top):
        dirs.sort()
        for name in sorted([*dirs, *files]):
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, top)
            if relative in (MANIFEST, MANIFEST + ".tmp"):
                continue
            info = os.lstat(path)
            mode = stat.S_IMODE(info.st_mode)
            if info.st_uid != uid:
                raise CacheError(f"{path} is owned by uid {info.st_uid}, not {uid}")
            if stat.S_ISLNK(info.st_mode):
                found[relative] = ["link", 0, os.readlink(path)]
                continue
            if mode & _WRITABLE_BY_OTHERS:
                raise CacheError(f"{path} is writable by others (mode {mode:o})")
            if stat.S_ISDIR(info.st_mode):
                found[relative] = ["dir", mode, ""]
            elif stat.S_ISREG(info.st_mode):
                found[relative] = ["file", mode, _sha256(path)]
            else:
                raise CacheError(f"{path} is neither a file, a link nor a folder")
    return found


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _first_difference(recorded: object, found: dict[str, list[object]]) -> str:
    if not isinstance(recorded, dict):
        return "the MANIFEST is not a table of paths"
    for path in sorted(set(recorded) | set(found)):
        if path not in found:
            return f"{path} is missing"
        if path not in recorded:
            return f"{path} is not in the MANIFEST"
        if recorded[path] != found[path]:
            return f"{path} changed ({recorded[path]} -> {found[path]})"
    return "unknown"
