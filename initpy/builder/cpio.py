"""The initrd's archive: a reproducible newc cpio, and its compression.

Owned by the builder (mkinitrd), never run at boot. The archive is written
here rather than by GNU cpio because reproducibility is a property of the
writer: entries sorted by path with every parent directory before its
contents, uid/gid 0, mtimes clamped to SOURCE_DATE_EPOCH, inode numbers
renumbered from 1 in archive order, nlink 1 (hard links are stored as
separate copies, which the kernel unpacks just the same), no dev/rdev of
the build host. GNU cpio keeps host inodes and needs a sorted file list and
`--reproducible` to approach that; a hundred lines of struct packing do it
exactly and are tested byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from initpy.builder.command import BuildError, run

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"
COMPRESSIONS = ("zstd", "lz4", "gzip", "xz", "none")
# The levels each tool accepts, and the level used when none is given: the
# smallest output the kernel's unpacker still reads fast (release images).
LEVELS = {"zstd": (1, 19, 19), "lz4": (1, 12, 9), "gzip": (1, 9, 9), "xz": (0, 9, 6)}


class ArchiveError(BuildError):
    """An entry cannot be archived; the message names it."""


@dataclass(frozen=True)
class Entry:
    """One member of the archive. `path` is relative, without a leading slash."""

    path: str
    mode: int  # full st_mode: type bits and permissions
    data: bytes = b""  # file content, or the target of a symlink
    source: str | None = None  # read the content from this host file instead
    rdevmajor: int = 0
    rdevminor: int = 0
    mtime: int | None = None  # the source's mtime, clamped when archived
    # Owners: 0 for the init's files; a --rootfs keeps its own (postfix
    # refuses a spool it does not own). Numeric, so the archive does not
    # depend on the build host's passwd.
    uid: int = 0
    gid: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    def content(self) -> bytes:
        if self.source is not None:
            with open(self.source, "rb") as f:
                return f.read()
        return self.data


def directory(path: str, perm: int = 0o755) -> Entry:
    return Entry(path.strip("/"), stat.S_IFDIR | perm)


def regular(
    path: str,
    source: str | None = None,
    data: bytes = b"",
    perm: int = 0o644,
    mtime: int | None = None,
) -> Entry:
    return Entry(path.strip("/"), stat.S_IFREG | perm, data=data, source=source, mtime=mtime)


def symlink(path: str, target: str) -> Entry:
    return Entry(path.strip("/"), stat.S_IFLNK | 0o777, data=target.encode())


def char_device(path: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(path.strip("/"), stat.S_IFCHR | perm, rdevmajor=major, rdevminor=minor)


def with_parents(entries: Iterable[Entry]) -> list[Entry]:
    """Add a 0755 directory entry for every missing parent."""
    by_path: dict[str, Entry] = {}
    for entry in entries:
        if entry.path in by_path:
            raise ArchiveError(f"cpio: {entry.path} is listed twice")
        by_path[entry.path] = entry
    for path in list(by_path):
        parent = os.path.dirname(path)
        while parent and parent not in by_path:
            by_path[parent] = directory(parent)
            parent = os.path.dirname(parent)
    return list(by_path.values())


def _sort_key(entry: Entry) -> tuple[str, ...]:
    # Sorting by path components puts a directory right before its contents
    # ("a" < "a/b" < "a-b" would fail with plain string order, since "-" < "/").
    return tuple(entry.path.split("/"))


def _header(ino: int, entry: Entry, size: int, mtime: int, name: bytes) -> bytes:
    fields = (
        ino,
        entry.mode,
        entry.uid,
        entry.gid,
        1,
        mtime,
        size,
        0,
        0,
        entry.rdevmajor,
        entry.rdevminor,
        len(name) + 1,
        0,
    )
    return NEWC_MAGIC + b"".join(b"%08X" % f for f in fields)


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def write_newc(entries: Iterable[Entry], mtime: int) -> Iterator[bytes]:
    """The newc stream of `entries` (parents added, sorted), trailer included.

    `mtime` is SOURCE_DATE_EPOCH: an entry's own mtime is clamped to it, an
    entry without one gets it.
    """
    ordered = sorted(with_parents(entries), key=_sort_key)
    for ino, entry in enumerate(ordered, start=1):
        if not entry.path or entry.path.startswith("/") or ".." in entry.path.split("/"):
            raise ArchiveError(f"cpio: bad path {entry.path!r} (relative, no '..')")
        has_data = stat.S_ISREG(entry.mode) or stat.S_ISLNK(entry.mode)
        data = entry.content() if has_data else b""
        name = entry.path.encode()
        when = mtime if entry.mtime is None else min(entry.mtime, mtime)
        head = _header(ino, entry, len(data), when, name) + name + b"\0"
        yield head + _pad(len(head))
        if data:
            yield data + _pad(len(data))
    name = TRAILER.encode()
    trailer = Entry(TRAILER, 0)
    head = _header(0, trailer, 0, 0, name) + name + b"\0"
    yield head + _pad(len(head))


def archive(entries: Iterable[Entry], mtime: int) -> bytes:
    return b"".join(write_newc(entries, mtime))


@dataclass(frozen=True)
class Member:
    """One member read back from an archive (for tests and the benchmark)."""

    path: str
    mode: int
    mtime: int
    ino: int
    data: bytes
    rdevmajor: int
    rdevminor: int
    uid: int = 0
    gid: int = 0


def _member_at(stream: bytes, pos: int) -> tuple[Member, int]:
    """The member whose header is at `pos`, and where the next one starts."""
    if stream[pos : pos + 6] != NEWC_MAGIC or pos + 110 > len(stream):
        raise ArchiveError(f"cpio: no newc header at offset {pos}")
    fields = [int(stream[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
    ino, mode, mtime, size = fields[0], fields[1], fields[5], fields[6]
    namesize = fields[11]
    name_start = pos + 110
    name = stream[name_start : name_start + namesize - 1].decode()
    data_start = name_start + namesize
    data_start += -data_start % 4
    data = stream[data_start : data_start + size]
    if len(data) != size:
        raise ArchiveError(f"cpio: {name}: truncated data")
    end = data_start + size
    member = Member(name, mode, mtime, ino, data, fields[9], fields[10], fields[2], fields[3])
    return member, end + -end % 4


def read_newc(stream: bytes) -> list[Member]:
    """Every member of one or more concatenated newc archives (trailers dropped).

    Zero padding between archives is skipped, as the kernel does.
    """
    members: list[Member] = []
    pos = 0
    while pos < len(stream):
        if stream[pos] == 0:
            pos += 1
            continue
        member, pos = _member_at(stream, pos)
        if member.path != TRAILER:
            members.append(member)
    return members


def plain_length(stream: bytes) -> int:
    """How many leading bytes are uncompressed newc archives (the OS image's), padding included.

    The kernel reads such archives, then the compressed ones after them; the
    tools that decompress or recompress an initrd leave these bytes as they are.
    """
    pos = plain = 0
    while stream.startswith(NEWC_MAGIC, pos):
        member, pos = _member_at(stream, pos)
        if member.path == TRAILER:
            while pos < len(stream) and stream[pos] == 0:
                pos += 1
            plain = pos
    return plain


def decompress(data: bytes) -> bytes:
    """Undo `compress` for concatenated parts (by each part's magic).

    Leading uncompressed archives (the OS image's) are kept as they are.
    """
    plain = plain_length(data)
    if plain:
        return data[:plain] + decompress(data[plain:])
    tools = (
        (b"\x28\xb5\x2f\xfd", ["zstd", "-d", "-c", "-q"]),
        (b"\x1f\x8b", ["gzip", "-d", "-c"]),
        (b"\x02\x21\x4c\x18", ["lz4", "-d", "-c", "-q"]),
        (b"\xfd7zXZ", ["xz", "-d", "-c"]),
    )
    for magic, argv in tools:
        if data.startswith(magic):
            # Each tool decompresses concatenated members/frames of its kind.
            return run(argv, input=data)
    return data


def parse_compression(spec: str) -> tuple[str, int | None]:
    """`METHOD` or `METHOD:LEVEL` (`zstd:3`) -> (method, level or None for the default).

    Raises ArchiveError naming the methods or the level range.
    """
    method, colon, level_text = spec.partition(":")
    if method not in COMPRESSIONS:
        raise ArchiveError(
            f"unknown compression {method!r}; use one of {', '.join(COMPRESSIONS)}, "
            "optionally with a level, e.g. zstd:3"
        )
    if not colon:
        return method, None
    if method == "none":
        raise ArchiveError(f"compression {spec!r}: 'none' takes no level")
    low, high, _default = LEVELS[method]
    if not level_text.isdigit() or not low <= int(level_text) <= high:
        raise ArchiveError(f"compression {spec!r}: {method}'s level is {low} to {high}")
    return method, int(level_text)


def compress(data: bytes, method: str, level: int | None = None) -> bytes:
    """Compress with the command-line tool (zstd, lz4, gzip, xz) or not at all.

    The `zstd` binary (Debian zstd) is used, not a Python binding: it is
    multi-threaded, always present in scripts/bootstrap, and its output for a
    given level is stable. The kernel's initramfs unpacker accepts zstd
    frames; `--check` is off for xz since the kernel wants CRC32.
    """
    if method == "none":
        return data
    argv = {
        "zstd": ["zstd", "-q", "-c", "-T0"],
        # -l: the legacy frame, the only lz4 format the kernel's unpacker reads.
        "lz4": ["lz4", "-l", "-q", "-c"],
        "gzip": ["gzip", "-n", "-c"],
        "xz": ["xz", "-c", "--check=crc32", "-T1"],
    }.get(method)
    if argv is None:
        raise ArchiveError(f"unknown compression {method!r}; use one of {', '.join(COMPRESSIONS)}")
    return run([*argv, f"-{LEVELS[method][2] if level is None else level}"], input=data)


def compress_cached(
    data: bytes, method: str, cache_dir: str | None, level: int | None = None
) -> bytes:
    """`compress`, remembered by the sha256 of the input, method and level.

    A warm rebuild recompresses only the parts whose bytes changed: the
    frozen init (the bulk) compresses once at a high level. Output for a
    given input is deterministic, so the cache cannot change the bytes.
    """
    if method == "none" or cache_dir is None:
        return compress(data, method, level)
    # The default level keeps the name it always had, so old entries still serve.
    suffix = method if level is None else f"{method}{level}"
    key = hashlib.sha256(data + method.encode()).hexdigest()
    path = os.path.join(cache_dir, f"{key}.{suffix}")
    packed = cache_get(path)
    if packed is None:
        packed = compress(data, method, level)
        cache_put(path, packed)
    return packed


def cache_get(path: str) -> bytes | None:
    """A build cache's entry, or None; a hit is marked recently used (kept when pruned)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        os.utime(path)
        return data
    except OSError:
        return None


def cache_put(path: str, data: bytes) -> None:
    """Store a build cache's entry whole: written aside, then renamed (no torn entry)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def entries_from_tree(top: str, prefix: str = "", keep_owners: bool = False) -> list[Entry]:
    """Every file, folder, symlink, device node and fifo below `top`.

    Permissions (setuid included) are kept; so are numeric owners when
    `keep_owners` (a --rootfs), else they are 0. Times are clamped later;
    inode numbers are not kept. Device nodes and fifos are recreated from
    their numbers (a debootstrap tree has /dev/null and friends); sockets
    are skipped, as they are created by whoever listens.
    """
    found: list[Entry] = []
    for folder, dirs, files in os.walk(top):
        dirs.sort()
        for name in sorted(dirs) + sorted(files):
            host = os.path.join(folder, name)
            rel = os.path.relpath(host, top)
            path = f"{prefix.strip('/')}/{rel}".strip("/")
            st = os.lstat(host)
            perm = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                entry = symlink(path, os.readlink(host))
            elif stat.S_ISDIR(st.st_mode):
                entry = directory(path, perm)
            elif stat.S_ISREG(st.st_mode):
                entry = regular(path, source=host, perm=perm, mtime=int(st.st_mtime))
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                entry = Entry(
                    path, st.st_mode, rdevmajor=os.major(st.st_rdev), rdevminor=os.minor(st.st_rdev)
                )
            elif stat.S_ISFIFO(st.st_mode):
                entry = Entry(path, st.st_mode)
            else:
                continue  # a socket
            if keep_owners:
                entry = replace(entry, uid=st.st_uid, gid=st.st_gid)
            found.append(entry)
    return found
